//! Tests that need root: run as root, skip (saying so) for a developer who
//! is not, and fail instead of skipping where [`REQUIRE_ROOT_ENV`] is set.
//! `.ci/run` sets it, so CI can never pass by skipping them.
//!
//! Shared by the test crates through this crate: one rule, one variable name.

/// Set to `1` to turn every root-only skip into a failure.
pub const REQUIRE_ROOT_ENV: &str = "EC_LAUNCH_TEST_REQUIRE_ROOT";

/// Why a test that needs root to `what` does not run here, or `None` when
/// it must run: as root, or wherever [`REQUIRE_ROOT_ENV`] demands it (it then
/// fails on its own for lack of root).
#[must_use]
pub fn root_skip_reason(what: &str) -> Option<String> {
    if nix::unistd::geteuid().is_root() || required() {
        return None;
    }
    Some(format!(
        "needs root to {what}; run the tests as root, as CI does ({REQUIRE_ROOT_ENV}=1 makes this a failure instead of a skip)"
    ))
}

fn required() -> bool {
    std::env::var_os(REQUIRE_ROOT_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Says, past the test harness's output capture, that a test was skipped.
pub fn announce_skip(test: &str, reason: &str) {
    use std::io::Write as _;
    // Written to the descriptor, not through `eprintln!`, which libtest
    // captures and shows only for failing tests.
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {reason}");
}
