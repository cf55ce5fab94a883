//! Every value the parser accepts works or is refused in one line, before
//! the lock directory is touched, with a hint that fits the command
//! (ECP-0129).

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::testenv::{BUSY, Guard, PATIENCE, TOUCH_RAN, TestEnv, require_root, wait_until};

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";

/// Under a 512 MiB address-space limit, so a launcher that reads without a
/// bound fails instead of eating the machine.
const BOUNDED: &str = "ulimit -v 524288; exec \"$@\"";

/// Waits at most `limit` for `child`; a child still running then is killed
/// and reported as `None`.
fn finish_within(limit: Duration, mut child: Guard) -> Option<(Option<i32>, String)> {
    if wait_until(limit, || !child.running()) {
        Some(child.finish())
    } else {
        None
    }
}

#[test]
fn a_source_file_that_is_not_a_regular_file_is_refused_without_reading_or_blocking() {
    let env = TestEnv::new();
    nix::unistd::mkfifo(
        &env.path("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    for (path, kind) in [("/dev/zero", "device node"), ("fifo", "FIFO")] {
        let child = env.launch_from_file(path).through_shell(BOUNDED).spawn();
        let Some((code, stderr)) = finish_within(Duration::from_secs(10), child) else {
            panic!("--source-file {path} blocked");
        };
        assert_eq!(code, Some(66), "{path}: {stderr}");
        assert!(
            stderr.starts_with("error: ")
                && stderr.contains(&format!("not a regular file (it is a {kind})")),
            "{path}: {stderr}"
        );
        assert!(!env.lock_dir().exists(), "{path}: lock directory touched");
    }
}

#[test]
fn a_source_file_larger_than_64_kib_is_refused() {
    let env = TestEnv::new();
    fs::write(
        env.path("big"),
        format!("{SOURCE}?pad={}\n", "x".repeat(70_000)),
    )
    .unwrap();
    env.launch_from_file("big")
        .through_shell(BOUNDED)
        .expect_status(66)
        .one_line_error("is larger than 65536 bytes")
        .lock_dir_untouched()
        .run();
}

#[test]
fn a_nul_byte_in_the_source_is_refused_before_the_lock_directory_is_touched() {
    let env = TestEnv::new();
    fs::write(env.path("nul"), format!("{SOURCE}?a=b\0c\n")).unwrap();
    // The source rules refuse control characters, also with --key; behind
    // them, the program's argv and environment are built before the lock
    // directory is touched, so nothing a C string cannot carry gets further.
    let cases: [(&[&str], i32, &str); 2] = [
        (&[], 65, "control character"),
        (&["--key", "studio"], 65, "control character"),
    ];
    for (extra, code, message) in cases {
        env.command(["run", "--lock-dir"])
            .arg(env.lock_dir())
            .args(extra)
            .args(["--source-file", "nul"])
            .program(TOUCH_RAN)
            .label(format!("{extra:?}"))
            .expect_status(code)
            .one_line_error(message)
            .stderr_lacks("starting")
            .program_did_not_run()
            .lock_dir_untouched()
            .run();
    }
}

#[test]
fn wait_timeout_zero_takes_a_free_lock_every_time() {
    let env = TestEnv::new();
    for value in ["0", "0.000001"] {
        for round in 0..40 {
            env.launch(SOURCE)
                .args(["--on-busy", "wait", &format!("--wait-timeout={value}")])
                .program(["true"])
                .label(format!("--wait-timeout {value}, round {round}"))
                .run();
        }
    }
}

#[test]
fn every_wait_timeout_the_parser_accepts_works_and_none_panics() {
    let env = TestEnv::new();
    let accepted = ["0", "-0", "1e-300", "0.5", "1e19", "1.8e19"];
    for value in accepted {
        env.launch(SOURCE)
            .args(["--on-busy", "wait", &format!("--wait-timeout={value}")])
            .program(["true"])
            .label(format!("free lock, --wait-timeout {value}"))
            .run();
    }
    let rejected = [
        "1e300",
        "inf",
        "NaN",
        "-1",
        "",
        "1e",
        "18446744073709551615",
        "99999999999999999999999",
    ];
    for value in rejected {
        env.launch(SOURCE)
            .args(["--on-busy", "wait", &format!("--wait-timeout={value}")])
            .program(["true"])
            .label(format!("--wait-timeout {value}"))
            .expect_status(2)
            .stderr_lacks("panicked")
            .run();
    }
    // Held: tiny timeouts give up with the busy code, naming the real holder;
    // a huge one waits like no timeout at all.
    let holder = env.hold(
        SOURCE,
        &TestEnv::sh("while [ ! -e release ]; do sleep 0.02; done"),
    );
    for value in ["0", "1e-9", "0.01"] {
        env.launch(SOURCE)
            .args(["--on-busy", "wait", &format!("--wait-timeout={value}")])
            .program(["true"])
            .label(value)
            .expect_status(BUSY)
            .stderr_contains(format!("pid {}", holder.pid()))
            .run();
    }
    let mut waiter = env
        .launch(SOURCE)
        .args(["--on-busy", "wait", "--wait-timeout", "1e19"])
        .program(TestEnv::sh("touch waited"))
        .spawn();
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiter.running(), "a huge timeout must keep waiting");
    fs::write(env.path("release"), "").unwrap();
    let Some((code, stderr)) = finish_within(PATIENCE, waiter) else {
        panic!("the waiter never ran after the holder let go");
    };
    assert_eq!(code, Some(0), "{stderr}");
    assert!(env.path("waited").exists());
    drop(holder);
}

#[test]
fn extreme_flag_values_never_panic() {
    let env = TestEnv::new();
    let verbose = format!("-{}", "v".repeat(300));
    env.launch(SOURCE).arg(&verbose).program(["true"]).run();
    for code in ["256", "-1", "1e2"] {
        env.launch(SOURCE)
            .args(["--busy-exit-code", code])
            .program(["true"])
            .expect_status(2)
            .stderr_lacks("panicked")
            .run();
    }
}

#[test]
fn an_empty_program_name_is_called_empty() {
    let env = TestEnv::new();
    env.launch(SOURCE)
        .program([""])
        .expect_status(64)
        .one_line_error("the program name is empty")
        .stderr_lacks("NUL")
        .lock_dir_untouched()
        .run();
}

#[test]
fn key_and_status_errors_suggest_only_what_those_commands_take() {
    let env = TestEnv::new();
    fs::create_dir(env.lock_dir()).unwrap();
    for command in ["key", "status"] {
        env.command([command, "--lock-dir"])
            .arg(env.lock_dir())
            .arg("mailto:a@b.c")
            .label(command)
            .expect_status(65)
            .one_line_error("has no host")
            .stderr_lacks("--source")
            .stderr_lacks("--key")
            .stderr_contains("SOURCE")
            .run();
    }
}

#[test]
fn an_empty_lock_dir_variable_is_blamed_on_the_variable() {
    let env = TestEnv::new();
    for command in [
        vec!["run", "--source", SOURCE, "--", "true"],
        vec!["key", SOURCE],
        vec!["status"],
    ] {
        env.command(&command)
            .env("EC_LAUNCH_LOCK_DIR", "")
            .label(format!("{command:?}"))
            .expect_status(64)
            .stderr_contains("EC_LAUNCH_LOCK_DIR")
            .stderr_lacks("--lock-dir <DIR>")
            .run();
    }
}

#[test]
fn busy_exit_codes_that_mean_something_else_are_refused_and_sane_ones_work() {
    let env = TestEnv::new();
    for code in [
        "2", "3", "4", "5", "6", "64", "65", "66", "69", "71", "73", "77", "78", "126", "127",
    ] {
        env.launch(SOURCE)
            .args(["--busy-exit-code", code])
            .label(code)
            .expect_status(2)
            .stderr_contains("already means")
            .program_did_not_run()
            .run();
    }
    let _holder = env.hold(
        SOURCE,
        &TestEnv::sh("while [ ! -e release ]; do sleep 0.02; done"),
    );
    for code in ["0", "1", "75", "100", "255"] {
        env.launch(SOURCE)
            .args(["--busy-exit-code", code])
            .program(["true"])
            .label(code)
            .expect_status(code.parse().unwrap())
            .run();
    }
    fs::write(env.path("release"), "").unwrap();
}

/// A tmpfs mounted on a directory of the test environment, unmounted on drop.
struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(at: std::path::PathBuf, options: &str) -> Self {
        fs::create_dir_all(&at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&at)
            .stderr(Stdio::inherit())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs -o {options}");
        Self(at)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_read_only_or_full_filesystem_is_named_as_such() {
    require_root!("mount small and read-only filesystems");
    let env = TestEnv::new();
    let read_only = Mount::tmpfs(env.path("ro"), "mode=755");
    // One lock directory to open a file in, one to create.
    fs::create_dir(read_only.0.join("locks")).unwrap();
    let remount = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&read_only.0)
        .status()
        .unwrap();
    assert!(remount.success());
    for lock_dir in ["locks", "new/locks"] {
        env.launch_in(read_only.0.join(lock_dir), SOURCE)
            .program(["true"])
            .label(lock_dir)
            .expect_status(73)
            .one_line_error("Read-only file system")
            .stderr_contains("read-only filesystem")
            .stderr_lacks("make the")
            .run();
    }

    // Room for the root and the lock directory, no inode for a lock file.
    let full = Mount::tmpfs(env.path("full"), "nr_inodes=2,mode=755");
    fs::create_dir(full.0.join("locks")).unwrap();
    env.launch_in(full.0.join("locks"), SOURCE)
        .program(["true"])
        .expect_status(73)
        .one_line_error("No space left on device")
        .stderr_contains("full")
        .stderr_lacks("make the")
        .run();
    drop(full);
    drop(read_only);
}
