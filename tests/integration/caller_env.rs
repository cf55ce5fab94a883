//! What the caller of `cargo test` passes down that would change what the
//! tests observe, undone once before any test (or thread) starts.
//!
//! - Signal dispositions: a signal ignored by the caller (`nohup`, a script
//!   run in the background by a non-interactive shell ignores SIGINT and
//!   SIGQUIT) stays ignored across fork and exec, so a launcher under test
//!   would never see the SIGINT a test sends it. Ignoring is the caller's
//!   choice for *its* processes, not a property of the product under test.
//! - `PATH`: a directory this user cannot search makes `execvp` report
//!   EACCES where the tests expect "not found" (ENOENT). Such entries are
//!   dropped; the rest of the caller's `PATH` is kept, in order.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::sys::signal::{SigHandler, Signal, signal};
use nix::unistd::{AccessFlags, access};

/// The signals a test sends to launchers and programs.
const SENT_BY_TESTS: [Signal; 5] = [
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
];

extern "C" fn reset_caller_environment() {
    for sent in SENT_BY_TESTS {
        // SAFETY: SIG_DFL installs no handler, so nothing runs in signal
        // context; this runs before `main`, when no other thread exists.
        let _ = unsafe { signal(sent, SigHandler::SigDfl) };
    }
    if let Some(path) = std::env::var_os("PATH") {
        let searchable = searchable_entries(&path);
        if searchable != path {
            // SAFETY: `.init_array` runs before `main`: the process has one
            // thread, so nothing can read the environment concurrently.
            unsafe { std::env::set_var("PATH", searchable) };
        }
    }
}

/// The entries of `path` this process can search, in order.
fn searchable_entries(path: &OsString) -> OsString {
    let kept: Vec<&[u8]> = path
        .as_bytes()
        .split(|&b| b == b':')
        .filter(|entry| {
            entry.starts_with(b"/")
                && CString::new(*entry)
                    .is_ok_and(|dir| access(dir.as_c_str(), AccessFlags::X_OK).is_ok())
        })
        .collect();
    OsString::from_vec(kept.join(&b':'))
}

// Before `main`, so before the test harness starts any thread.
#[used]
#[unsafe(link_section = ".init_array")]
static RESET_CALLER_ENVIRONMENT: extern "C" fn() = reset_caller_environment;

#[test]
fn the_tests_see_default_dispositions_and_a_searchable_path() {
    for sent in SENT_BY_TESTS {
        // SAFETY: reading the disposition back by installing the same one.
        let now = unsafe { signal(sent, SigHandler::SigDfl) }.expect("sigaction");
        assert!(
            matches!(now, SigHandler::SigDfl),
            "{sent} is not at its default"
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    assert_eq!(searchable_entries(&path), path);
}

/// A root-only test (one that starts with `require_root!`) must also carry
/// the attribute that lists it as ignored in a non-root run; without it, a
/// non-root run would count its skip as a pass.
#[test]
fn every_root_only_test_is_listed_as_ignored_in_a_non_root_run() {
    const MARK: &str = "ec_tests_without_root";
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration");
    let mut unmarked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read tests/integration") {
        let path = entry.expect("dir entry").path();
        let text = std::fs::read_to_string(&path).expect("read test source");
        let lines: Vec<&str> = text.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            if !line.trim_start().starts_with("require_root!(") || at == 0 {
                continue;
            }
            // What stands between the previous item and the `fn` line.
            let attributes = lines[..at - 1]
                .iter()
                .rev()
                .take_while(|l| !l.trim().is_empty() && !l.trim_end().ends_with('}'));
            if !attributes.clone().any(|l| l.contains(MARK)) {
                unmarked.push(format!("{}: {}", path.display(), lines[at - 1].trim()));
            }
        }
    }
    assert!(
        unmarked.is_empty(),
        "root-only tests without `#[cfg_attr({MARK}, ignore = …)]`:\n{}",
        unmarked.join("\n")
    );
}
