//! `ec-launch run`: lock, exec, busy, wait, refusal and exit-code behaviour.

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use crate::testenv::{
    BUSY, Guard, NOBODY, Outcome, PATIENCE, TOUCH_RAN, TestEnv, describe, holders, is_root,
    kernel_locks, kernel_locks_on, release_together, require_root, settle, wait_until,
};

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";

/// A program that records its PID and then waits for `release` to appear.
fn held_until_release(pid_file: &str) -> Vec<String> {
    TestEnv::sh(&format!(
        "echo $$ > {pid_file}; while [ ! -e release ]; do sleep 0.02; done"
    ))
}

/// Starts a holder of SOURCE that runs until `release` appears.
fn start_holder(env: &TestEnv, source: &str) -> Guard {
    env.hold(source, &held_until_release("holder.pid"))
}

/// Runs a launch that must be refused with `code` and `message`, and checks
/// the program did not run.
#[track_caller]
fn assert_refused(env: &TestEnv, code: i32, message: &str) {
    env.launch(SOURCE)
        .expect_status(code)
        .stderr_contains(message)
        .program_did_not_run()
        .run();
}

#[test]
fn exec_keeps_the_launchers_pid_and_the_program_holds_the_lock() {
    let env = TestEnv::new();
    let holder = start_holder(&env, SOURCE);
    let pid = holder.pid();
    let recorded = env.written_pid("holder.pid");
    assert_eq!(
        recorded, pid,
        "the program must run as the launcher's process"
    );
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        !exe.to_string_lossy().contains("ec-launch"),
        "no ec-launch process may remain, found {exe:?}"
    );
    assert_eq!(holders(&env.lock_file_of(SOURCE)), vec![i64::from(pid)]);
}

#[test]
fn a_second_launch_on_a_held_source_exits_75_without_running_and_names_the_holder() {
    let env = TestEnv::new();
    let holder = start_holder(&env, SOURCE);
    env.launch(SOURCE)
        .expect_status(BUSY)
        .program_did_not_run()
        .stderr_contains(format!("pid {}", holder.pid()))
        .stderr_contains("since ")
        .stderr_contains("ec-launch status")
        .stderr_lines(1)
        .run();
}

#[test]
fn the_busy_exit_code_is_configurable() {
    let env = TestEnv::new();
    let _holder = start_holder(&env, SOURCE);
    env.launch(SOURCE)
        .args(["--busy-exit-code", "0"])
        .expect_status(0)
        .program_did_not_run()
        .run();
}

#[test]
fn equivalent_spellings_collide_and_different_sources_do_not() {
    let env = TestEnv::new();
    let _holder = start_holder(&env, SOURCE);
    for same in [
        "http://10.0.0.5:5004/tuner1/v5.1",
        "http://10.0.0.5:5004/auto/v5.1?duration=600&transcode=mobile",
        "http://user:pw@10.0.0.5:5004/auto/v05.1#x",
    ] {
        env.launch(same)
            .program(["true"])
            .label(format!("{same} must share the lock"))
            .expect_status(BUSY)
            .run();
    }
    for different in [
        "http://10.0.0.5:5004/auto/v4.1",
        "http://10.0.0.6:5004/auto/v5.1",
        "http://10.0.0.5:5004/auto/ch573000000",
    ] {
        env.launch(different)
            .program(["true"])
            .label(format!("{different} is another source"))
            .run();
    }
}

#[test]
fn sigkill_of_the_holder_frees_the_lock_at_once() {
    let env = TestEnv::new();
    // A holder with no children: a child would hold the inherited lock on
    // after the parent dies, which is the point of another test.
    let mut holder = env.launch(SOURCE).program(["sleep", "300"]).spawn();
    let lock_file = env.lock_file_of(SOURCE);
    let pid = i64::from(holder.pid());
    assert!(
        wait_until(PATIENCE, || holders(&lock_file) == vec![pid]),
        "holder never locked"
    );
    holder.0.kill().unwrap();
    holder.0.wait().unwrap();
    // No retry loop: once the holder is reaped its descriptor is closed.
    env.launch(SOURCE).program(["true"]).run();
}

#[test]
fn a_child_that_inherits_the_descriptor_keeps_the_lock_after_its_parent_exits_and_frees_it_when_it_dies()
 {
    let env = TestEnv::new();
    let kill_helper = env.leave_helper_holding(SOURCE);
    let helper = kill_helper.0;

    env.launch(SOURCE)
        .label("the helper must still hold the lock")
        .expect_status(BUSY)
        .stderr_contains(format!("held by pid {helper} (sleep)"))
        .stderr_contains("inherited from exited pid")
        .run();

    drop(kill_helper);
    let lock_file = env.lock_file_of(SOURCE);
    assert!(
        wait_until(PATIENCE, || holders(&lock_file).is_empty()),
        "the lock must end with the helper"
    );
    env.launch(SOURCE).program(["true"]).run();
}

#[test]
fn wait_mode_blocks_in_flock_until_the_holder_lets_go_then_runs() {
    let env = TestEnv::new();
    let holder = start_holder(&env, SOURCE);
    let mut waiter = env.launch(SOURCE).args(["--on-busy", "wait"]).spawn();
    let lock_file = env.lock_file_of(SOURCE);
    let waiter_pid = i64::from(waiter.pid());
    // Blocked in flock(2): the kernel lists it as a waiter, not a poller.
    assert!(
        wait_until(PATIENCE, || kernel_locks(&lock_file)
            .iter()
            .any(|l| l.waiting && l.pid == waiter_pid)),
        "the waiter never blocked in flock"
    );
    assert!(waiter.running());
    assert!(!env.path("ran").exists());
    fs::write(env.path("release"), "").unwrap();
    let (code, stderr) = holder.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = waiter.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(env.path("ran").exists());
}

#[test]
fn wait_mode_times_out_with_the_busy_code_without_running() {
    let env = TestEnv::new();
    let _holder = start_holder(&env, SOURCE);
    env.launch(SOURCE)
        .args(["--on-busy", "wait", "--wait-timeout", "0.3"])
        .expect_status(BUSY)
        .program_did_not_run()
        .stderr_contains("gave up waiting after 0.3s")
        .run();
}

#[test]
fn a_missing_program_exits_127_and_a_non_executable_one_126() {
    let env = TestEnv::new();
    let output = env
        .launch(SOURCE)
        .program(["ec-launch-no-such-program"])
        .expect_status(127)
        .run();
    let last_line = |o: &Outcome| o.stderr.lines().last().unwrap_or_default().to_owned();
    assert!(
        last_line(&output).starts_with("error: cannot run"),
        "{}",
        output.describe()
    );

    let script = env.path("not-executable");
    fs::write(&script, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    let output = env
        .launch(SOURCE)
        .program([&script])
        .expect_status(126)
        .run();
    assert!(
        last_line(&output).contains("Permission denied"),
        "{}",
        output.describe()
    );
    // A failed exec leaves no lock held.
    assert!(holders(&env.lock_file_of(SOURCE)).is_empty());
}

#[test]
fn a_symlink_at_the_lock_path_is_refused() {
    let env = TestEnv::new();
    let lock_file = env.lock_file_of(SOURCE);
    fs::create_dir_all(env.lock_dir()).unwrap();
    let target = env.path("elsewhere");
    fs::write(&target, "").unwrap();
    std::os::unix::fs::symlink(&target, &lock_file).unwrap();
    assert_refused(&env, 73, "is a symlink");
}

#[test]
fn a_planted_fifo_at_the_lock_path_is_refused_without_hanging() {
    let env = TestEnv::new();
    let lock_file = env.lock_file_of(SOURCE);
    fs::create_dir_all(env.lock_dir()).unwrap();
    nix::unistd::mkfifo(&lock_file, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    assert_refused(&env, 73, "not a regular file (it is a FIFO)");
}

#[test]
fn an_unsafe_lock_directory_is_refused() {
    let env = TestEnv::new();
    let real = env.path("real-locks");
    fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, env.lock_dir()).unwrap();
    assert_refused(&env, 73, "is a symlink");

    fs::remove_file(env.lock_dir()).unwrap();
    fs::create_dir(env.lock_dir()).unwrap();
    fs::set_permissions(env.lock_dir(), fs::Permissions::from_mode(0o777)).unwrap();
    assert_refused(&env, 73, "writable by others");

    // A sticky world-writable directory owned by the launcher (root or not)
    // is acceptable: there only an entry's owner may remove it, and the
    // lock files must be ours or root's (ECP-0129; a planted file is
    // refused, see lock_path.rs).
    fs::set_permissions(env.lock_dir(), fs::Permissions::from_mode(0o1777)).unwrap();
    env.launch(SOURCE)
        .program(["true"])
        .label("sticky dir owned by the launcher")
        .run();
}

#[test]
fn an_unwritable_lock_directory_is_a_clear_error_and_the_program_does_not_run() {
    let env = TestEnv::new();
    fs::create_dir(env.lock_dir()).unwrap();
    fs::set_permissions(env.lock_dir(), fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(env.path(""), fs::Permissions::from_mode(0o1777)).unwrap();
    let mut launch = env.launch(SOURCE);
    if is_root() {
        // Root ignores directory permissions; an unprivileged user does not.
        launch = launch.uid(NOBODY);
    }
    launch
        .expect_status(77)
        .one_line_error("Permission denied")
        .stderr_contains("make the lock directory writable")
        .stderr_starts_with("error: cannot open lock file")
        .program_did_not_run()
        .run();
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_root_owned_lock_file_the_service_user_may_only_read_still_locks() {
    require_root!("create a lock file as root and run as another user");
    let env = TestEnv::new();
    env.launch(SOURCE).program(["true"]).run();
    let lock_file = env.lock_file_of(SOURCE);
    assert_eq!(fs::metadata(&lock_file).unwrap().uid(), 0);
    // As versions before ECP-0129 created them; today's are 0660 and, in
    // the module's setgid directory, writable by the service's group (see
    // lock_path.rs).
    fs::set_permissions(&lock_file, fs::Permissions::from_mode(0o644)).unwrap();

    // The service user may traverse but not write the directory or the file.
    fs::set_permissions(env.path(""), fs::Permissions::from_mode(0o1777)).unwrap();
    // It holds the lock and excludes others like any lock.
    let (_, stderr) = env.hold_as_service_user(
        SOURCE,
        "the service user must hold the lock through a read-only descriptor",
    );
    assert!(
        stderr.contains("read-only descriptor"),
        "a warning must say the record is stale: {stderr}"
    );
}

#[test]
fn non_utf8_and_dash_arguments_arrive_byte_exact() {
    let env = TestEnv::new();
    let args: Vec<OsString> = vec![
        OsString::from_vec(b"\xff\xfe-not-utf8".to_vec()),
        "--".into(),
        "-v".into(),
        "".into(),
        " spaced  out ".into(),
        "{sourc}".into(),
    ];
    let mut program: Vec<OsString> = ["sh", "-c", "printf '%s\\0' \"$@\" > argv", "sh"]
        .iter()
        .map(OsString::from)
        .collect();
    program.extend(args.iter().cloned());
    env.launch(SOURCE).program(program).run();
    let mut expected = Vec::new();
    for arg in &args {
        expected.extend_from_slice(arg.as_bytes());
        expected.push(0);
    }
    assert_eq!(fs::read(env.path("argv")).unwrap(), expected);
}

#[test]
fn the_program_gets_the_lock_descriptor_the_source_and_the_key() {
    let env = TestEnv::new();
    let source = "http://admin:pw@10.0.0.5:5004/auto/v5.1";
    let script = "{ echo \"$EC_SOURCE_URL\"; echo \"$EC_SOURCE_KEY\"; echo \"$EC_SOURCE_LOCK\"; \
                  readlink /proc/$$/fd/$EC_SOURCE_LOCK_FD; echo '{source}'; } > env.out";
    env.launch(source).program(TestEnv::sh(script)).run();
    let lock_file = env.lock_file_of(source);
    let lock_file = lock_file.to_str().unwrap();
    let seen = fs::read_to_string(env.path("env.out")).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], source, "EC_SOURCE_URL is the real source");
    assert_eq!(lines[1], "hdhomerun://10.0.0.5/v5.1");
    assert_eq!(lines[2], lock_file);
    assert!(
        lines[3].ends_with(lock_file.trim_start_matches("./")),
        "lock fd must survive exec: {seen}"
    );
    assert_eq!(lines[4], source, "{{source}} is replaced");
}

#[test]
fn sigpipe_is_back_to_default_for_the_program_even_if_we_inherit_it_ignored() {
    let env = TestEnv::new();
    let mut command = env
        .launch(SOURCE)
        // Read by the shell itself: no child of it in between (issue 16 item 13).
        .program(TestEnv::sh(
            "while read -r l; do case $l in SigIgn:*) echo \"$l\";; esac; done < /proc/self/status > sigign",
        ))
        .to_command();
    // SAFETY: between fork and exec only async-signal-safe calls are
    // allowed; sigaction(2) (via signal) is one. An ignored disposition
    // survives exec, so ec-launch starts with SIGPIPE ignored, as it would
    // under a supervisor that ignores it.
    unsafe {
        command.pre_exec(|| {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigIgn,
            )
            .map(|_| ())
            .map_err(std::io::Error::from)
        });
    }
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let line = fs::read_to_string(env.path("sigign")).unwrap();
    let mask = u64::from_str_radix(line.trim().trim_start_matches("SigIgn:").trim(), 16).unwrap();
    let sigpipe_bit = 1 << (nix::sys::signal::Signal::SIGPIPE as u32 - 1);
    assert_eq!(
        mask & sigpipe_bit,
        0,
        "SIGPIPE must not be ignored after exec: {line}"
    );
}

#[test]
fn a_source_file_keeps_the_url_off_the_command_line() {
    let env = TestEnv::new();
    let secret_url = "http://admin:hunter2@10.0.0.5:5004/auto/v5.1";
    fs::write(env.path("source"), format!("{secret_url}\n")).unwrap();
    env.launch_from_file(env.path("source"))
        .program(["sh", "-c", "echo \"$EC_SOURCE_URL\" > url"])
        .stderr_lacks("hunter2")
        .run();
    assert_eq!(
        fs::read_to_string(env.path("url")).unwrap().trim(),
        secret_url
    );
}

#[test]
fn bad_input_is_one_line_with_a_documented_code_and_no_lock_is_taken() {
    let env = TestEnv::new();
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec!["--source".into(), "  ".into()],
            65,
            "the source is empty",
        ),
        (
            vec!["--source".into(), "not-a-url".into()],
            65,
            "not a valid URL",
        ),
        (
            vec!["--source".into(), "mailto:a@b.c".into()],
            65,
            "has no host",
        ),
        (
            vec!["--source".into(), "/dev/ec-launch-absent".into()],
            66,
            "cannot be resolved",
        ),
        (
            vec!["--source-file".into(), "absent-file".into()],
            66,
            "cannot read --source-file",
        ),
        (
            vec![
                "--source".into(),
                SOURCE.into(),
                "--key".into(),
                "\t".into(),
            ],
            65,
            "--key value is empty",
        ),
    ];
    fs::write(env.path("empty-file"), "\n\n").unwrap();
    let mut cases = cases;
    cases.push((
        vec!["--source-file".into(), "empty-file".into()],
        65,
        "holds no source",
    ));
    for (args, code, message) in cases {
        env.command(["run", "--lock-dir"])
            .arg(env.lock_dir())
            .args(&args)
            .program(TOUCH_RAN)
            .label(format!("{args:?}"))
            .expect_status(code)
            .one_line_error(message)
            .program_did_not_run()
            .lock_dir_untouched()
            .run();
    }
    env.command(["run", "--source", SOURCE, "true"])
        .expect_status(2)
        .run();
}

#[test]
fn the_lock_dir_variable_overrides_the_default() {
    let env = TestEnv::new();
    env.command(["run", "--source", SOURCE, "--", "true"])
        .env("EC_LAUNCH_LOCK_DIR", env.lock_dir())
        .run();
    assert!(env.lock_file_of(SOURCE).exists());
}

#[test]
fn a_lock_directory_created_by_ec_launch_is_0755() {
    let env = TestEnv::new();
    env.launch(SOURCE).program(["true"]).run();
    let mode = fs::metadata(env.lock_dir()).unwrap().mode() & 0o7777;
    // umask may only remove bits.
    assert_eq!(mode & !0o755, 0, "mode {mode:o}");
    assert_eq!(mode & 0o700, 0o700);
}

#[test]
fn launchers_started_together_let_exactly_one_program_run_every_round() {
    const LAUNCHERS: usize = 256;
    const ROUNDS: usize = 20;
    let env = TestEnv::new();
    for round in 0..ROUNDS {
        let _ = fs::remove_file(env.path("release"));
        let _ = fs::remove_file(env.path("runs"));
        let script = format!(
            "read _; exec {bin} run --lock-dir {dir} --source {SOURCE} -- \
             sh -c 'echo $$ >> runs; while [ ! -e release ]; do sleep 0.02; done'",
            bin = crate::testenv::BIN,
            dir = env.lock_dir().display(),
        );
        let mut launchers = release_together(&env, std::iter::repeat_n(script, LAUNCHERS));
        // Every loser exits 75; the winner runs until released.
        settle(
            &mut launchers,
            LAUNCHERS - 1,
            Duration::from_secs(120),
            &format!("round {round}"),
        );
        assert_eq!(
            launchers.len(),
            1,
            "round {round}: exactly one launcher must still run"
        );
        let runs = fs::read_to_string(env.path("runs")).unwrap_or_default();
        assert_eq!(
            runs.lines().count(),
            1,
            "round {round}: programs that ran: {runs:?}"
        );
        fs::write(env.path("release"), "").unwrap();
        let winner = launchers.pop().unwrap();
        let (code, stderr) = winner.finish();
        assert_eq!(code, Some(0), "round {round}: {stderr}");
    }
}

#[test]
fn waiters_recheck_the_path_so_a_deleted_lock_file_never_yields_two_programs() {
    const WAITERS: usize = 8;
    const NEWCOMERS: usize = 8;
    let env = TestEnv::new();
    let lock_file = env.lock_file_of(SOURCE);
    fs::create_dir_all(env.lock_dir()).unwrap();
    let held = File::create(&lock_file).unwrap();
    held.lock().unwrap();
    let old = fs::metadata(&lock_file).unwrap();

    let program = TestEnv::sh("echo $$ >> runs; while [ ! -e release ]; do sleep 0.02; done");
    let mut waiters: Vec<Guard> = (0..WAITERS)
        .map(|_| {
            env.launch(SOURCE)
                .args(["--on-busy", "wait"])
                .program(&program)
                .spawn()
        })
        .collect();
    let waiter_pids: Vec<i64> = waiters.iter().map(|w| i64::from(w.pid())).collect();
    assert!(
        wait_until(PATIENCE, || {
            let locks = kernel_locks_on(old.dev(), old.ino());
            waiter_pids
                .iter()
                .all(|p| locks.iter().any(|l| l.waiting && l.pid == *p))
        }),
        "all waiters must be blocked on the old inode"
    );

    // Delete the file while held, release it, then send newcomers.
    fs::remove_file(&lock_file).unwrap();
    drop(held);
    let mut newcomers: Vec<Guard> = (0..NEWCOMERS)
        .map(|_| env.launch(SOURCE).program(&program).spawn())
        .collect();

    // Settle: every launcher has either exited busy, or runs the program, or
    // is blocked in flock on the inode the path names now.
    let settled = wait_until(PATIENCE, || {
        let Ok(current) = fs::metadata(&lock_file) else {
            return false;
        };
        let locks = kernel_locks_on(current.dev(), current.ino());
        let blocked = |pid: i64| locks.iter().any(|l| l.waiting && l.pid == pid);
        let runs = fs::read_to_string(env.path("runs")).unwrap_or_default();
        let running: Vec<i64> = runs.lines().filter_map(|l| l.parse().ok()).collect();
        let newcomers_done = newcomers
            .iter_mut()
            .all(|n| !n.running() || running.contains(&i64::from(n.pid())));
        let waiters_done = waiters.iter_mut().all(|w| {
            let pid = i64::from(w.pid());
            !w.running() || running.contains(&pid) || blocked(pid)
        });
        newcomers_done && waiters_done && !running.is_empty()
    });
    assert!(settled, "launchers did not settle");
    let runs = fs::read_to_string(env.path("runs")).unwrap();
    assert_eq!(
        runs.lines().count(),
        1,
        "exactly one program may run, ran: {runs:?}"
    );
    let runner: i64 = runs.trim().parse().unwrap();
    assert_eq!(
        holders(&lock_file),
        vec![runner],
        "the runner holds the lock on the file the path names"
    );
    fs::write(env.path("release"), "").unwrap();
    drop(newcomers);
    drop(waiters);
}

#[test]
fn a_launch_record_is_written_into_the_lock_file_in_place() {
    let env = TestEnv::new();
    env.launch(SOURCE).program(["true"]).run();
    let lock_file = env.lock_file_of(SOURCE);
    let inode = fs::metadata(&lock_file).unwrap().ino();
    env.launch(SOURCE).program(["true"]).run();
    assert_eq!(
        fs::metadata(&lock_file).unwrap().ino(),
        inode,
        "the lock file must never be replaced"
    );
    let record: serde_json::Value = serde_json::from_slice(&fs::read(&lock_file).unwrap()).unwrap();
    assert_eq!(record["key"], "hdhomerun://10.0.0.5/v5.1");
    assert_eq!(record["program"], "true");
    assert!(
        record["pid"].as_u64().is_some() && record["started_at"].as_str().is_some(),
        "{record}"
    );
}
