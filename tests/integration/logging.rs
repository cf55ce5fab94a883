//! Diagnostics: stderr only, `-v` and `EC_LAUNCH_LOG`, journald format.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;

use crate::testenv::TestEnv;

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";

#[test]
fn logs_go_to_stderr_and_stdout_belongs_to_the_program() {
    let env = TestEnv::new();
    env.launch(SOURCE)
        .arg("-vv")
        .program(["echo", "program output"])
        .stdout_is("program output\n")
        .stderr_contains("source lock acquired")
        .run();
}

#[test]
fn ec_launch_log_overrides_verbosity_and_rust_log_is_left_to_the_program() {
    let env = TestEnv::new();
    // EC_LAUNCH_LOG=off must silence -vv; RUST_LOG passes to the program
    // untouched.
    env.launch(SOURCE)
        .arg("-vv")
        .program(["sh", "-c", "echo \"$RUST_LOG\""])
        .env("EC_LAUNCH_LOG", "off")
        .env("RUST_LOG", "trace")
        .stderr_is("")
        .stdout_is("trace\n")
        .run();

    env.launch(SOURCE)
        .program(["true"])
        .env("EC_LAUNCH_LOG", "debug")
        .any_status()
        .stderr_contains("DEBUG")
        .run();
    env.launch(SOURCE)
        .program(["true"])
        .env("EC_LAUNCH_LOG", "loud")
        .any_status()
        .stderr_contains("EC_LAUNCH_LOG=\"loud\" is not a level")
        .run();
}

#[test]
fn under_journald_lines_carry_no_timestamp_or_colour() {
    let env = TestEnv::new();
    // JOURNAL_STREAM names the device and inode of the stream stderr is
    // connected to (systemd.exec(5)); point it at a file we give as stderr.
    let log = env.path("journal");
    let stderr = File::create(&log).unwrap();
    let metadata = stderr.metadata().unwrap();
    env.launch(SOURCE)
        .program(["true"])
        .env(
            "JOURNAL_STREAM",
            format!("{}:{}", metadata.dev(), metadata.ino()),
        )
        .stderr_to(stderr)
        .run();
    let line = fs::read_to_string(&log).unwrap();
    assert!(
        line.trim_start().starts_with("INFO source lock acquired"),
        "{line:?}"
    );
    assert!(!line.contains('\u{1b}'), "no colour codes: {line:?}");

    // The same variable naming some other stream changes nothing.
    env.launch(SOURCE)
        .program(["true"])
        .env("JOURNAL_STREAM", "1:1")
        .label("a timestamp leads when not under journald")
        .any_status()
        .stderr_starts_with("20")
        .run();
}
