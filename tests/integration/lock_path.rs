//! Who may change the lock path, what lock files look like, and which
//! descriptor the lock lands on (ECP-0129).

use std::fs;
use std::process::Command;

use crate::testenv::{BIN, Guard, PATIENCE, TestEnv, describe, holders, wait_until};

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";

/// `sh -c 'exec <closing> ec-launch run … -- PROGRAM'`.
fn launch_with_closed(env: &TestEnv, closing: &str, extra: &[&str], program: &str) -> Command {
    let mut command = Command::new("sh");
    command
        .args(["-c", &format!("exec {closing} \"$@\""), "sh", BIN])
        .args(["run", "--lock-dir"])
        .arg(env.lock_dir())
        .args(["--source", SOURCE])
        .args(extra)
        .args(["--", "sh", "-c", program])
        .current_dir(env.path(""))
        .env_remove("EC_LAUNCH_LOG")
        .env_remove("JOURNAL_STREAM");
    command
}

#[test]
fn with_descriptors_0_to_2_closed_the_lock_is_on_3_or_above_and_survives_the_programs_redirections()
{
    let env = TestEnv::new();
    let program = "echo $EC_SOURCE_LOCK_FD > fd; exec </dev/null >/dev/null 2>/dev/null; \
                   touch redirected; while [ ! -e release ]; do sleep 0.02; done";
    let holder = Guard::spawn(&mut launch_with_closed(&env, "<&- >&- 2>&-", &[], program));
    assert!(wait_until(PATIENCE, || env.path("redirected").exists()));
    let fd: i32 = fs::read_to_string(env.path("fd"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        fd >= 3,
        "the lock descriptor is {fd}, a standard descriptor"
    );
    assert_eq!(
        holders(&env.lock_file_of(SOURCE)),
        vec![i64::from(holder.pid())],
        "the program's redirections dropped the lock"
    );
    fs::write(env.path("release"), "").unwrap();
}

#[test]
fn with_stderr_closed_no_log_line_is_written_into_the_lock_file() {
    let env = TestEnv::new();
    let output = launch_with_closed(&env, "2>&-", &["-v"], "true")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let content = fs::read_to_string(env.lock_file_of(SOURCE)).unwrap();
    assert!(
        !content.contains("lock acquired") && !content.contains("DEBUG"),
        "the log went into the lock file: {content}"
    );
}
