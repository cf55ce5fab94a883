//! Acceptance under a real systemd (issue 5): the 503 incident reproduced,
//! then prevented by the unit policy and `ec-launch run`.
//!
//! This test has its own `main` (`harness = false`) because the binary plays
//! several parts. Run by cargo, it is the suite: it boots the host's systemd
//! as PID 1 of a throw-away container (see `harness`), runs the scenarios
//! (see `scenarios`) and tears everything down. Copied into the container
//! under other names, it is the tuner emulator, the stand-in publisher and
//! its stubborn helper (see `tuner_emulator`, shared with the
//! `tuner-emulator` example, and `programs`).
//!
//! A missing requirement (root, overlayfs, systemd-nspawn, unshare) is a
//! failure with a message. The one exception is a developer who is not root:
//! the suite is then reported as ignored, with the reason, unless
//! `EC_LAUNCH_TEST_REQUIRE_ROOT` is set, which `.ci/run` does so that CI can
//! never pass by skipping it.
//!
//! `EC_SYSTEMD_ONLY=<scenario>[,…]` runs only those scenarios in the boot
//! (see `scenarios`), to iterate on one; CI leaves it unset.

// Figures are small counts and durations shown with two decimals.
#![allow(clippy::cast_precision_loss)]
// The scenarios read best as one story per phase.
#![allow(clippy::too_many_lines)]

mod harness;
mod programs;
mod scenarios;
mod tuner;

// The suites' shared support (ECP-0138), under the names the tests use.
use ec_test_support::{policy, privilege, tuner_emulator};

use std::path::Path;
use std::process::ExitCode;

/// The one test this binary holds.
const TEST_NAME: &str =
    "the_503_incident_reproduces_under_systemd_and_the_policy_with_ec_launch_prevents_it";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let role = args
        .first()
        .and_then(|arg0| Path::new(arg0).file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rest = args.get(1..).unwrap_or_default();
    match role.as_str() {
        "tuner-emulator" => return tuner_emulator::main(rest),
        "http-get" => return tuner::http_get_main(rest),
        "publisher" => return programs::publisher_main(rest),
        "reader" => return programs::reader_main(rest),
        "stubborn-helper" => return programs::helper_main(rest),
        "detacher" => return programs::detacher_main(rest),
        "record-exit" => return programs::record_exit_main(rest),
        "inspect" => return programs::inspect_main(rest),
        _ => {}
    }
    if rest.first().map(String::as_str) == Some(harness::CONTAINER_ROOT_ROLE) {
        return harness::container_root_main(&rest[1..]);
    }
    run_as_test_suite()
}

/// The suite as `cargo test` sees it: libtest's command line, filters and
/// summary, through `libtest-mimic`.
fn run_as_test_suite() -> ExitCode {
    let arguments = libtest_mimic::Arguments::from_args();
    let skip_reason = privilege::root_skip_reason(
        "boot systemd as PID 1 of a container (it mounts, unshares and runs systemd-nspawn)",
    );
    if let Some(reason) = &skip_reason {
        privilege::announce_skip(TEST_NAME, reason);
    }
    let suite = libtest_mimic::Trial::test(TEST_NAME, || {
        if scenarios::run_suite() {
            Ok(())
        } else {
            Err("checks failed; see the lines marked FAIL above".into())
        }
    })
    .with_ignored_flag(skip_reason.is_some());
    libtest_mimic::run(&arguments, vec![suite]).exit_code()
}
