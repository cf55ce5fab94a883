//! Every value the parser accepts works or is refused in one line, before
//! the lock directory is touched, with a hint that fits the command
//! (ECP-0129).

use std::fs;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::testenv::{BUSY, Guard, PATIENCE, TestEnv, describe, require_root, text, wait_until};

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";

/// Runs `command` under a 512 MiB address-space limit, so a launcher that
/// reads without a bound fails instead of eating the machine.
fn bounded(command: &Command) -> Command {
    let mut wrapped = Command::new("sh");
    wrapped
        .args(["-c", "ulimit -v 524288; exec \"$@\"", "sh"])
        .arg(command.get_program())
        .args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(name, value),
            None => wrapped.env_remove(name),
        };
    }
    wrapped
}

/// Waits at most `limit` for `child`; a child still running then is killed
/// and reported as `None`.
fn finish_within(limit: Duration, mut child: Guard) -> Option<(Option<i32>, String)> {
    if wait_until(limit, || !child.running()) {
        Some(child.finish())
    } else {
        None
    }
}

#[track_caller]
fn assert_one_line_error(output: &Output, code: i32, message: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{}", describe(output));
    assert!(
        stderr.starts_with("error: ") && stderr.contains(message),
        "{}",
        describe(output)
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn run_with_source_file(env: &TestEnv, path: &str) -> Command {
    let mut command = env.ec_launch();
    command
        .args(["run", "--lock-dir"])
        .arg(env.lock_dir())
        .args(["--source-file", path, "--", "sh", "-c", "touch ran"]);
    command
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
        let child = Guard::spawn(&mut bounded(&run_with_source_file(&env, path)));
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
    let output = bounded(&run_with_source_file(&env, "big"))
        .output()
        .unwrap();
    assert_one_line_error(&output, 66, "is larger than 65536 bytes");
    assert!(!env.lock_dir().exists());
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
        let output = env
            .ec_launch()
            .args(["run", "--lock-dir"])
            .arg(env.lock_dir())
            .args(extra)
            .args(["--source-file", "nul", "--", "sh", "-c", "touch ran"])
            .output()
            .unwrap();
        assert_one_line_error(&output, code, message);
        assert!(!text(&output.stderr).contains("starting"));
        assert!(!env.path("ran").exists());
        assert!(
            !env.lock_dir().exists(),
            "{extra:?}: the lock directory was touched before validation"
        );
    }
}

#[test]
fn wait_timeout_zero_takes_a_free_lock_every_time() {
    let env = TestEnv::new();
    for value in ["0", "0.000001"] {
        for round in 0..40 {
            let output = env
                .run(
                    SOURCE,
                    &["--on-busy", "wait", &format!("--wait-timeout={value}")],
                    &["true"],
                )
                .output()
                .unwrap();
            assert_eq!(
                output.status.code(),
                Some(0),
                "--wait-timeout {value}, round {round}: {}",
                describe(&output)
            );
        }
    }
}

#[test]
fn every_wait_timeout_the_parser_accepts_works_and_none_panics() {
    let env = TestEnv::new();
    let accepted = ["0", "-0", "1e-300", "0.5", "1e19", "1.8e19"];
    for value in accepted {
        let output = env
            .run(
                SOURCE,
                &["--on-busy", "wait", &format!("--wait-timeout={value}")],
                &["true"],
            )
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "free lock, --wait-timeout {value}: {}",
            describe(&output)
        );
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
        let output = env
            .run(
                SOURCE,
                &["--on-busy", "wait", &format!("--wait-timeout={value}")],
                &["true"],
            )
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "--wait-timeout {value}: {}",
            describe(&output)
        );
        assert!(
            !text(&output.stderr).contains("panicked"),
            "{}",
            describe(&output)
        );
    }
    // Held: tiny timeouts give up with the busy code, naming the real holder;
    // a huge one waits like no timeout at all.
    let holder = env.hold(
        SOURCE,
        &TestEnv::sh("while [ ! -e release ]; do sleep 0.02; done"),
    );
    for value in ["0", "1e-9", "0.01"] {
        let output = env
            .run(
                SOURCE,
                &["--on-busy", "wait", &format!("--wait-timeout={value}")],
                &["true"],
            )
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(BUSY),
            "{value}: {}",
            describe(&output)
        );
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains(&format!("pid {}", holder.pid())),
            "{value}: {stderr}"
        );
    }
    let mut waiter = env.run(
        SOURCE,
        &["--on-busy", "wait", "--wait-timeout", "1e19"],
        &TestEnv::sh("touch waited"),
    );
    let mut waiter = Guard::spawn(&mut waiter);
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
    let output = env.run(SOURCE, &[&verbose], &["true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    for code in ["256", "-1", "1e2"] {
        let output = env
            .run(SOURCE, &["--busy-exit-code", code], &["true"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        assert!(!text(&output.stderr).contains("panicked"));
    }
}

#[test]
fn an_empty_program_name_is_called_empty() {
    let env = TestEnv::new();
    let output = env.run(SOURCE, &[], &[""]).output().unwrap();
    assert_one_line_error(&output, 64, "the program name is empty");
    assert!(
        !text(&output.stderr).contains("NUL"),
        "{}",
        describe(&output)
    );
    assert!(!env.lock_dir().exists());
}

#[test]
fn key_and_status_errors_suggest_only_what_those_commands_take() {
    let env = TestEnv::new();
    fs::create_dir(env.lock_dir()).unwrap();
    for command in ["key", "status"] {
        let output = env
            .ec_launch()
            .arg(command)
            .arg("--lock-dir")
            .arg(env.lock_dir())
            .arg("mailto:a@b.c")
            .output()
            .unwrap();
        assert_one_line_error(&output, 65, "has no host");
        let stderr = text(&output.stderr);
        assert!(
            !stderr.contains("--source") && !stderr.contains("--key"),
            "{command}: {stderr}"
        );
        assert!(stderr.contains("SOURCE"), "{command}: {stderr}");
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
        let output = env
            .ec_launch()
            .env("EC_LAUNCH_LOCK_DIR", "")
            .args(&command)
            .output()
            .unwrap();
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains("EC_LAUNCH_LOCK_DIR") && !stderr.contains("--lock-dir <DIR>"),
            "{command:?}: {}",
            describe(&output)
        );
        assert_eq!(
            output.status.code(),
            Some(64),
            "{command:?}: {}",
            describe(&output)
        );
    }
}

#[test]
fn busy_exit_codes_that_mean_something_else_are_refused_and_sane_ones_work() {
    let env = TestEnv::new();
    for code in [
        "2", "3", "4", "5", "6", "64", "65", "66", "69", "71", "73", "77", "78", "126", "127",
    ] {
        let output = env
            .run(
                SOURCE,
                &["--busy-exit-code", code],
                &TestEnv::sh("touch ran"),
            )
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{code}: {}",
            describe(&output)
        );
        assert!(
            text(&output.stderr).contains("already means"),
            "{code}: {}",
            describe(&output)
        );
        assert!(!env.path("ran").exists());
    }
    let _holder = env.hold(
        SOURCE,
        &TestEnv::sh("while [ ! -e release ]; do sleep 0.02; done"),
    );
    for code in ["0", "1", "75", "100", "255"] {
        let output = env
            .run(SOURCE, &["--busy-exit-code", code], &["true"])
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(code.parse().unwrap()),
            "{code}: {}",
            describe(&output)
        );
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
        let mut command = env.ec_launch();
        command
            .args(["run", "--lock-dir"])
            .arg(read_only.0.join(lock_dir))
            .args(["--source", SOURCE, "--", "true"]);
        let output = command.output().unwrap();
        assert_one_line_error(&output, 73, "Read-only file system");
        assert!(
            text(&output.stderr).contains("read-only filesystem")
                && !text(&output.stderr).contains("make the"),
            "{}",
            describe(&output)
        );
    }

    // Room for the root and the lock directory, no inode for a lock file.
    let full = Mount::tmpfs(env.path("full"), "nr_inodes=2,mode=755");
    fs::create_dir(full.0.join("locks")).unwrap();
    let mut command = env.ec_launch();
    command
        .args(["run", "--lock-dir"])
        .arg(full.0.join("locks"))
        .args(["--source", SOURCE, "--", "true"]);
    let output = command.output().unwrap();
    assert_one_line_error(&output, 73, "No space left on device");
    assert!(
        text(&output.stderr).contains("full") && !text(&output.stderr).contains("make the"),
        "{}",
        describe(&output)
    );
    drop(full);
    drop(read_only);
}
