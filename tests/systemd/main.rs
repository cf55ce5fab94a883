//! Acceptance under a real systemd (issue 5): the 503 incident reproduced,
//! then prevented by the unit policy and `ec-launch run`.
//!
//! This test has its own `main` (`harness = false`) because the binary plays
//! several parts. Run by cargo, it is the suite: it boots the host's systemd
//! as PID 1 of a throw-away container (see `harness`), runs the scenarios
//! (see `scenarios`) and tears everything down. Copied into the container
//! under other names, it is the tuner emulator, the stand-in publisher and
//! its stubborn helper (see `tuner` and `programs`).
//!
//! A missing requirement (root, overlayfs, systemd-nspawn, unshare) is a
//! failure with a message, never a skip: CI runs this as root.

// Figures are small counts and durations shown with two decimals.
#![allow(clippy::cast_precision_loss)]
// The scenarios read best as one story per phase.
#![allow(clippy::too_many_lines)]

mod harness;
mod policy;
mod programs;
mod scenarios;
mod tuner;

use std::path::Path;
use std::process::ExitCode;

/// The one test this binary holds, named as libtest would list it.
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
        "tuner-emulator" => return tuner::emulator_main(rest),
        "http-get" => return tuner::http_get_main(rest),
        "publisher" => return programs::publisher_main(rest),
        "stubborn-helper" => return programs::helper_main(rest),
        "record-exit" => return programs::record_exit_main(rest),
        "inspect" => return programs::inspect_main(rest),
        _ => {}
    }
    if rest.first().map(String::as_str) == Some(harness::CONTAINER_ROOT_ROLE) {
        return harness::container_root_main(&rest[1..]);
    }
    libtest_like_main(rest)
}

/// Honours the libtest arguments `cargo test` may pass (`--list`, a name
/// filter, `--skip`, `--exact`), so `cargo test some_other_test` does not boot
/// a container.
fn libtest_like_main(args: &[String]) -> ExitCode {
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let (mut list, mut exact, mut ignored_only) = (false, false, false);
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--list" => list = true,
            "--exact" => exact = true,
            "--ignored" => ignored_only = true,
            "--skip" => skips.extend(iter.next().cloned()),
            // Options that take a value.
            "--test-threads" | "--format" | "--color" | "-Z" | "--logfile" | "--report-time" => {
                iter.next();
            }
            other if other.starts_with('-') => {}
            filter => filters.push(filter.to_owned()),
        }
    }
    let matches = |pattern: &str| {
        if exact {
            pattern == TEST_NAME
        } else {
            TEST_NAME.contains(pattern)
        }
    };
    let selected = !ignored_only
        && (filters.is_empty() || filters.iter().any(|f| matches(f)))
        && !skips.iter().any(|s| matches(s));
    if list {
        if selected {
            println!("{TEST_NAME}: test");
        }
        return ExitCode::SUCCESS;
    }
    if !selected {
        println!("\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 1 filtered out\n");
        return ExitCode::SUCCESS;
    }
    println!("\nrunning 1 test: {TEST_NAME}");
    let passed = scenarios::run_suite();
    println!(
        "\ntest {TEST_NAME} ... {}",
        if passed { "ok" } else { "FAILED" }
    );
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
