//! Diagnostics: stderr only, `-v` and `EC_LAUNCH_LOG`, journald format.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;

use crate::testenv::{TestEnv, describe, text};

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";

#[test]
fn logs_go_to_stderr_and_stdout_belongs_to_the_program() {
    let env = TestEnv::new();
    let output = env
        .run(SOURCE, &["-vv"], &["echo", "program output"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(text(&output.stdout), "program output\n");
    assert!(
        text(&output.stderr).contains("source lock acquired"),
        "{}",
        describe(&output)
    );
}

#[test]
fn ec_launch_log_overrides_verbosity_and_rust_log_is_left_to_the_program() {
    let env = TestEnv::new();
    let quiet = env
        .run(SOURCE, &["-vv"], &["sh", "-c", "echo \"$RUST_LOG\""])
        .env("EC_LAUNCH_LOG", "off")
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert_eq!(quiet.status.code(), Some(0), "{}", describe(&quiet));
    assert_eq!(
        text(&quiet.stderr),
        "",
        "EC_LAUNCH_LOG=off must silence -vv"
    );
    assert_eq!(
        text(&quiet.stdout),
        "trace\n",
        "RUST_LOG passes to the program untouched"
    );

    let debug = env
        .run(SOURCE, &[], &["true"])
        .env("EC_LAUNCH_LOG", "debug")
        .output()
        .unwrap();
    assert!(
        text(&debug.stderr).contains("DEBUG"),
        "{}",
        describe(&debug)
    );
    let bad = env
        .run(SOURCE, &[], &["true"])
        .env("EC_LAUNCH_LOG", "loud")
        .output()
        .unwrap();
    assert!(
        text(&bad.stderr).contains("EC_LAUNCH_LOG=\"loud\" is not a level"),
        "{}",
        describe(&bad)
    );
}

#[test]
fn under_journald_lines_carry_no_timestamp_or_colour() {
    let env = TestEnv::new();
    // JOURNAL_STREAM names the device and inode of the stream stderr is
    // connected to (systemd.exec(5)); point it at a file we give as stderr.
    let log = env.path("journal");
    let stderr = File::create(&log).unwrap();
    let metadata = stderr.metadata().unwrap();
    let output = env
        .run(SOURCE, &[], &["true"])
        .env(
            "JOURNAL_STREAM",
            format!("{}:{}", metadata.dev(), metadata.ino()),
        )
        .stderr(stderr)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let line = fs::read_to_string(&log).unwrap();
    assert!(
        line.trim_start().starts_with("INFO source lock acquired"),
        "{line:?}"
    );
    assert!(!line.contains('\u{1b}'), "no colour codes: {line:?}");

    // The same variable naming some other stream changes nothing.
    let elsewhere = env
        .run(SOURCE, &[], &["true"])
        .env("JOURNAL_STREAM", "1:1")
        .output()
        .unwrap();
    let line = text(&elsewhere.stderr);
    assert!(
        line.starts_with("20"),
        "a timestamp leads when not under journald: {line:?}"
    );
}
