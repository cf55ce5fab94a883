//! Issue #8, "status must not lie": locks found by device and inode wherever
//! their file went, processes named only when the kernel and their start
//! time agree, unknowable states said out loud, and text from processes and
//! files escaped before it reaches a terminal.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::testenv::{
    BIN, BUSY, Guard, KillOnDrop, NOBODY, PATIENCE, TestEnv, describe, holders, text, wait_until,
};

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";
const KEY: &str = "hdhomerun://10.0.0.5/v5.1";

/// Names the lock directory: by `--lock-dir`, or, for a name that is not
/// UTF-8 (which the command line refuses), by `EC_LAUNCH_LOCK_DIR`.
fn lock_dir_of<'c>(command: &'c mut Command, lock_dir: &Path) -> &'c mut Command {
    if lock_dir.to_str().is_some() {
        command.arg("--lock-dir").arg(lock_dir)
    } else {
        command.env("EC_LAUNCH_LOCK_DIR", lock_dir)
    }
}

fn status_in(env: &TestEnv, lock_dir: &Path, args: &[&str]) -> Output {
    let mut command = env.ec_launch();
    lock_dir_of(command.arg("status"), lock_dir)
        .args(args)
        .output()
        .unwrap()
}

fn status(env: &TestEnv, args: &[&str]) -> Output {
    status_in(env, &env.lock_dir(), args)
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", describe(output)))
}

fn holder_pids(lock: &serde_json::Value) -> Vec<u64> {
    lock["holders"]
        .as_array()
        .unwrap_or_else(|| panic!("no holders array: {lock:#}"))
        .iter()
        .map(|h| h["pid"].as_u64().unwrap())
        .collect()
}

/// The one entry of a report, asserting there is exactly one.
#[track_caller]
fn only_lock(report: &serde_json::Value) -> &serde_json::Value {
    let locks = report["locks"].as_array().unwrap();
    assert_eq!(locks.len(), 1, "{report:#}");
    &locks[0]
}

/// `ec-launch run --lock-dir DIR --source SOURCE -- PROGRAM…`.
fn run_in<S: AsRef<OsStr>>(env: &TestEnv, lock_dir: &Path, program: &[S]) -> Command {
    let mut command = env.ec_launch();
    lock_dir_of(command.arg("run"), lock_dir)
        .arg("--source")
        .arg(SOURCE)
        .arg("--")
        .args(program);
    command
}

/// Like [`TestEnv::leave_helper_holding`], through another lock directory
/// path: the launcher forks a helper that inherits the lock, and exits.
#[track_caller]
fn leave_helper_holding_in(env: &TestEnv, lock_dir: &Path) -> KillOnDrop {
    let program = TestEnv::sh("sleep 300 </dev/null >/dev/null 2>&1 & echo $! > helper.pid");
    let output = run_in(env, lock_dir, &program).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let pid = fs::read_to_string(env.path("helper.pid")).unwrap();
    KillOnDrop(pid.trim().parse().unwrap())
}

/// A launch of SOURCE that only touches `ran`: the harm a lying status hides.
fn second_launch_runs(env: &TestEnv) -> bool {
    let output = env.launch(SOURCE).any_status().run();
    output.code == Some(0) && env.path("ran").exists()
}

// --- item 8: moved, renamed, bind-mounted, non-UTF-8 ------------------------

#[test]
fn a_held_lock_file_renamed_inside_the_directory_is_reported_as_orphaned() {
    for new_name in ["renamed.lock", "renamed.lock.bak"] {
        let env = TestEnv::new();
        let holder = env.hold(SOURCE, &["sleep", "300"]);
        let lock_file = env.lock_file_of(SOURCE);
        let moved = env.lock_dir().join(new_name);
        fs::rename(&lock_file, &moved).unwrap();
        assert!(second_launch_runs(&env), "the harm: a second reader ran");

        let output = status(&env, &["--json"]);
        assert_eq!(
            output.status.code(),
            Some(4),
            "{new_name}: {}",
            describe(&output)
        );
        let report = json(&output);
        let orphan = report["locks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["orphaned"] == true)
            .unwrap_or_else(|| panic!("{new_name}: no orphan in {report:#}"));
        assert_eq!(orphan["lock_file"], moved.to_str().unwrap(), "{report:#}");
        assert_eq!(orphan["key"], KEY, "{report:#}");
        assert_eq!(holder_pids(orphan), vec![u64::from(holder.pid())]);
        assert!(
            orphan["warnings"].to_string().contains("moved"),
            "{orphan:#}"
        );
        let one = status(&env, &[SOURCE]);
        assert_eq!(one.status.code(), Some(4), "{new_name}: {}", describe(&one));
    }
}

#[test]
fn a_held_lock_file_moved_out_of_the_directory_is_reported_as_orphaned() {
    let env = TestEnv::new();
    let holder = env.hold(SOURCE, &["sleep", "300"]);
    let moved = env.path("elsewhere");
    fs::rename(env.lock_file_of(SOURCE), &moved).unwrap();

    let output = status(&env, &["--json", SOURCE]);
    assert_eq!(output.status.code(), Some(4), "{}", describe(&output));
    let report = json(&output);
    let lock = only_lock(&report);
    assert_eq!(lock["orphaned"], true, "{report:#}");
    assert_eq!(lock["state"], "held");
    assert_eq!(lock["lock_file"], moved.to_str().unwrap());
    assert_eq!(holder_pids(lock), vec![u64::from(holder.pid())]);
}

#[test]
fn a_moved_lock_held_by_a_helper_of_an_exited_launcher_is_still_found() {
    let env = TestEnv::new();
    let helper = env.leave_helper_holding(SOURCE);
    let moved = env.path("elsewhere.lock");
    fs::rename(env.lock_file_of(SOURCE), &moved).unwrap();

    let output = status(&env, &["--json"]);
    assert_eq!(output.status.code(), Some(4), "{}", describe(&output));
    let report = json(&output);
    let lock = only_lock(&report);
    assert_eq!(lock["lock_file"], moved.to_str().unwrap());
    assert_eq!(holder_pids(lock), vec![u64::from(helper.0)], "{report:#}");
}

/// Bind-mounts `from` at `to`; unmounts when dropped.
struct BindMount(PathBuf);

impl BindMount {
    fn new(from: &Path, to: &Path) -> Self {
        fs::create_dir_all(to).unwrap();
        let status = Command::new("mount")
            .arg("--bind")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success(), "mount --bind failed");
        Self(to.to_owned())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_lock_directory_reached_through_a_bind_mount_shows_the_same_holders_and_orphans() {
    crate::testenv::require_root!("bind-mount the lock directory");
    let env = TestEnv::new();
    fs::create_dir(env.lock_dir()).unwrap();
    let bound = env.path("bound");
    let _mount = BindMount::new(&env.lock_dir(), &bound);
    // The launcher opens the lock through the bind mount, forks a helper and
    // exits; status looks through the real directory.
    let helper = leave_helper_holding_in(&env, &bound);

    let output = status(&env, &["--json", SOURCE]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let report = json(&output);
    assert_eq!(holder_pids(only_lock(&report)), vec![u64::from(helper.0)]);

    fs::remove_file(env.lock_file_of(SOURCE)).unwrap();
    let output = status(&env, &["--json"]);
    assert_eq!(output.status.code(), Some(4), "{}", describe(&output));
    let report = json(&output);
    let lock = only_lock(&report);
    assert_eq!(lock["orphaned"], true, "{report:#}");
    assert_eq!(holder_pids(lock), vec![u64::from(helper.0)]);
}

#[test]
fn a_lock_directory_with_a_non_utf8_name_is_scanned_and_reported() {
    let env = TestEnv::new();
    // The command line takes UTF-8 only, so the directory's real name is
    // reached through a link; descriptors show the real one.
    let mut name = env.path("").into_os_string().into_vec();
    name.extend_from_slice(b"real-\xff\x1b");
    let real = PathBuf::from(OsString::from_vec(name));
    fs::create_dir(&real).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&real, env.path("link")).unwrap();
    let lock_dir = env.path("link").join("locks");
    let helper = leave_helper_holding_in(&env, &lock_dir);
    let output = status_in(&env, &lock_dir, &["--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let report = json(&output);
    let lock = only_lock(&report);
    assert_eq!(holder_pids(lock), vec![u64::from(helper.0)], "{report:#}");
    let shown = lock["lock_file"].as_str().unwrap();
    assert!(shown.contains("link/locks/"), "{shown}");

    let file = fs::read_dir(&lock_dir).unwrap().next().unwrap().unwrap();
    fs::remove_file(file.path()).unwrap();
    let output = status_in(&env, &lock_dir, &[]);
    assert_eq!(output.status.code(), Some(4), "{}", describe(&output));
    assert!(
        !output.stdout.contains(&0x1b) && !output.stdout.contains(&0xff),
        "raw bytes of the name reached the terminal: {}",
        describe(&output)
    );
}

// --- item 9: pid namespaces and reused pids ---------------------------------

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_holder_started_in_a_pid_namespace_is_matched_to_its_record_from_the_host() {
    crate::testenv::require_root!("create a pid namespace");
    let env = TestEnv::new();
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(BIN)
        .args(["run", "--lock-dir"])
        .arg(env.lock_dir())
        .args(["--source", SOURCE, "--", "sleep", "300"]);
    let _launcher = Guard::spawn(&mut command);
    let lock_file = env.lock_file_of(SOURCE);
    assert!(
        wait_until(PATIENCE, || holders(&lock_file).len() == 1
            && fs::read(&lock_file).is_ok_and(|r| !r.is_empty())),
        "the namespaced launcher never took the lock"
    );

    let output = status(&env, &["--json", SOURCE]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let report = json(&output);
    let lock = only_lock(&report);
    let host_pid = u64::try_from(holders(&lock_file)[0]).unwrap();
    assert_eq!(holder_pids(lock), vec![host_pid], "{report:#}");
    assert_eq!(lock["metadata"]["pid"], 1, "the pid as the launcher saw it");
    assert_eq!(
        lock["warnings"].as_array().unwrap().len(),
        0,
        "the recorded launcher is the holder: {report:#}"
    );
    assert!(
        lock["metadata"]["start_ticks"].as_u64().is_some(),
        "{report:#}"
    );
    assert_eq!(
        lock["holders"][0]["start_ticks"], lock["metadata"]["start_ticks"],
        "one process, one start time, from both namespaces: {report:#}"
    );
}

/// Runs `script` as PID 1 of a fresh pid namespace with its own /proc, in
/// the environment's directory; everything in it dies when it ends.
fn in_pid_namespace(env: &TestEnv, script: &str) -> Output {
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", script])
        .current_dir(env.path(""))
        .env("EC", BIN)
        .env("LOCKS", env.lock_dir())
        .env("SOURCE", SOURCE)
        .output()
        .unwrap()
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_reused_pid_of_an_exited_taker_is_never_named_as_the_holder() {
    crate::testenv::require_root!("create a pid namespace and write its ns_last_pid");
    let env = TestEnv::new();
    // The launcher forks a helper and exits; its pid is then handed to an
    // impostor through ns_last_pid. Both the busy message and status must
    // name the helper, and never the impostor.
    let script = r#"
        "$EC" run --lock-dir "$LOCKS" --source "$SOURCE" -- sh -c 'sleep 300 </dev/null >/dev/null 2>&1 & echo $! > helper.pid' || exit 90
        taker=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$LOCKS"/*.lock)
        echo "$taker" > taker.pid
        echo $((taker - 1)) > /proc/sys/kernel/ns_last_pid
        sleep 300 </dev/null >/dev/null 2>&1 &
        echo $! > impostor.pid
        "$EC" run --lock-dir "$LOCKS" --source "$SOURCE" -- true 2> busy.txt
        echo $? > busy.code
        "$EC" status --json --lock-dir "$LOCKS" > status.json
        echo $? > status.code
    "#;
    let output = in_pid_namespace(&env, script);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let read = |name: &str| {
        fs::read_to_string(env.path(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(
        read("taker.pid"),
        read("impostor.pid"),
        "pid reuse was not forced"
    );
    let (helper, impostor) = (read("helper.pid"), read("impostor.pid"));
    assert_eq!(read("busy.code"), BUSY.to_string());
    let busy = read("busy.txt");
    assert!(busy.contains(&format!("pid {helper} ")), "{busy}");
    assert!(!busy.contains(&format!("pid {impostor} ")), "{busy}");
    let report: serde_json::Value = serde_json::from_str(&read("status.json")).unwrap();
    let lock = only_lock(&report);
    assert_eq!(
        holder_pids(lock),
        vec![helper.parse::<u64>().unwrap()],
        "{report:#}"
    );
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_reused_pid_in_the_hosts_lock_table_is_never_named_as_the_holder() {
    crate::testenv::require_root!("write the initial namespace's ns_last_pid");
    // Only the initial PID namespace's /proc/locks shows an exited taker's
    // PID as it was (a child namespace leaves the row out), so this reuse
    // has to happen there. The write races other forks on the host: a
    // process of another test that gets the PID first may exit before
    // status looks (then "exited" is the truth, and the test proves
    // nothing), so the taker's PID must go to our own impostor, which
    // lives until the test ends; a lost race starts over with a new taker.
    let (env, helper, taker, _impostor) = (0..10)
        .find_map(|_| {
            let env = TestEnv::new();
            let helper = env.leave_helper_holding(SOURCE);
            let record: serde_json::Value =
                serde_json::from_slice(&fs::read(env.lock_file_of(SOURCE)).unwrap()).unwrap();
            let taker = record["pid"].as_u64().unwrap();
            // Prints "ours" when our impostor got the PID, "theirs" when
            // another process did first (which is never killed here).
            let script = format!(
                r#"for i in $(seq 1 200); do
                     [ -e /proc/{taker} ] && echo theirs && exit 0
                     echo {previous} > /proc/sys/kernel/ns_last_pid
                     sleep 300 </dev/null >/dev/null 2>&1 &
                     [ "$!" = {taker} ] && echo ours && exit 0
                     kill $!
                   done
                   exit 1"#,
                previous = taker - 1
            );
            let forced = Command::new("sh").args(["-c", &script]).output().unwrap();
            assert!(forced.status.success(), "pid {taker} could not be reused");
            (text(&forced.stdout).trim() == "ours").then(|| {
                let impostor = KillOnDrop(u32::try_from(taker).unwrap());
                (env, helper, taker, impostor)
            })
        })
        .expect("another process took the exited taker's PID in 10 tries of 10");
    assert!(Path::new(&format!("/proc/{taker}")).exists());

    env.launch(SOURCE)
        .program(["true"])
        .expect_status(BUSY)
        .stderr_contains(format!("pid {} (sleep)", helper.0))
        .stderr_lacks(format!("pid {taker} ("))
        .run();

    let output = status(&env, &["--json", SOURCE]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let report = json(&output);
    let lock = only_lock(&report);
    assert_eq!(holder_pids(lock), vec![u64::from(helper.0)], "{report:#}");
    assert!(
        lock["warnings"]
            .to_string()
            .contains(&format!("pid {taker}, named by the lock table")),
        "{report:#}"
    );
}

// --- item 10: what status cannot know ---------------------------------------

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_held_lock_file_this_user_cannot_open_is_still_reported_held() {
    crate::testenv::require_root!("hold a lock as root and run status as another user");
    let env = TestEnv::new();
    let holder = env.hold(SOURCE, &["sleep", "300"]);
    fs::set_permissions(env.lock_file_of(SOURCE), fs::Permissions::from_mode(0o600)).unwrap();
    let output = env
        .ec_launch()
        .args(["status", "--json", "--lock-dir"])
        .arg(env.lock_dir())
        .arg(SOURCE)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let report = json(&output);
    let lock = only_lock(&report);
    assert_eq!(lock["state"], "held", "{report:#}");
    // Neither its descriptors nor the record can confirm the taker, so it
    // is mentioned as the lock table's claim, not named as the holder.
    assert_eq!(holder_pids(lock), Vec::<u64>::new(), "{report:#}");
    let warnings = lock["warnings"].to_string();
    assert!(
        warnings.contains("cannot read the launch record"),
        "{report:#}"
    );
    assert!(
        warnings.contains(&format!("pid {} as the taker", holder.pid())),
        "{report:#}"
    );
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_lock_file_status_cannot_examine_is_unknown_with_its_own_exit_code() {
    crate::testenv::require_root!("make a directory listable but not searchable for another user");
    let env = TestEnv::new();
    let _holder = env.hold(SOURCE, &["sleep", "300"]);
    // Others may list the names but not look at the files.
    fs::set_permissions(env.lock_dir(), fs::Permissions::from_mode(0o744)).unwrap();
    let as_nobody = |args: &[&str]| {
        env.ec_launch()
            .args(["status", "--lock-dir"])
            .arg(env.lock_dir())
            .args(args)
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap()
    };
    for args in [vec![SOURCE], vec![], vec!["--json", SOURCE]] {
        let output = as_nobody(&args);
        assert_eq!(
            output.status.code(),
            Some(5),
            "{args:?}: {}",
            describe(&output)
        );
    }
    let report = json(&as_nobody(&["--json"]));
    let lock = only_lock(&report);
    assert_eq!(lock["state"], "unknown", "{report:#}");
    assert!(
        lock["warnings"].to_string().contains("cannot"),
        "{report:#}"
    );
    let table = text(&as_nobody(&[]).stdout);
    assert!(table.contains("unknown"), "{table}");
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_lock_held_outside_a_pid_namespace_is_unknown_there_never_free() {
    crate::testenv::require_root!("create a pid namespace");
    let env = TestEnv::new();
    let _holder = env.hold(SOURCE, &["sleep", "300"]);
    // Inside, /proc/locks leaves out the host holder's row altogether.
    let output = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(BIN)
        .args(["status", "--json", "--lock-dir"])
        .arg(env.lock_dir())
        .arg(SOURCE)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(5), "{}", describe(&output));
    let report = json(&output);
    assert_eq!(only_lock(&report)["state"], "unknown", "{report:#}");
    assert!(
        report["warnings"].to_string().contains("PID namespace"),
        "{report:#}"
    );
}

// --- item 11: control characters ---------------------------------------------

fn has_raw_control(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .any(|b| (*b < 0x20 && *b != b'\n') || *b == 0x7f)
}

#[test]
fn a_holders_command_name_is_escaped_in_status_text_and_the_busy_message() {
    let env = TestEnv::new();
    // The holder renames itself (comm) to a terminal escape and a carriage return.
    let holder = env.hold(
        SOURCE,
        // The sleep does not inherit the lock, so it holds nothing once sh dies.
        &TestEnv::sh(
            "printf 'x\\033[2Jy\\rz' > /proc/$$/comm; eval \"sleep 300 $EC_SOURCE_LOCK_FD>&-\"; exit 0",
        ),
    );
    let comm = format!("/proc/{}/comm", holder.pid());
    assert!(wait_until(PATIENCE, || fs::read(&comm)
        .is_ok_and(|c| c.starts_with(b"x\x1b"))));

    let table = status(&env, &[]);
    assert_eq!(table.status.code(), Some(0), "{}", describe(&table));
    assert!(!has_raw_control(&table.stdout), "{:?}", text(&table.stdout));
    assert!(
        text(&table.stdout).contains("x\\x1b[2Jy\\rz"),
        "{:?}",
        text(&table.stdout)
    );
    // Raw bytes, not the builder's text: escaping is about bytes.
    let busy = env
        .launch(SOURCE)
        .program(["true"])
        .to_command()
        .output()
        .unwrap();
    assert_eq!(busy.status.code(), Some(BUSY), "{}", describe(&busy));
    let stderr = busy.stderr.strip_suffix(b"\n").unwrap_or(&busy.stderr);
    assert!(!has_raw_control(stderr), "{:?}", text(&busy.stderr));
    assert!(text(stderr).contains("\\rz"), "{:?}", text(&busy.stderr));
}

#[test]
fn record_fields_are_escaped_in_status_text() {
    let env = TestEnv::new();
    fs::create_dir(env.lock_dir()).unwrap();
    let record = serde_json::json!({
        "pid": 999_999, "unit": "u\u{1b}]0;title\u{7}.service",
        "source": "http://h\u{1b}[31m/x\r", "key": "k\u{1b}[2J\n",
        "program": "p", "started_at": "2026\u{1b}[1A", "started_unix": 0,
        "ec_launch_version": "0.1.0"
    });
    fs::write(env.lock_dir().join("forged.lock"), format!("{record}\n")).unwrap();
    // Held, so the warning quoting the record's launch time is printed too.
    let file = fs::File::open(env.lock_dir().join("forged.lock")).unwrap();
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map(|held| {
            let table = status(&env, &[]);
            assert!(!has_raw_control(&table.stdout), "{:?}", text(&table.stdout));
            assert!(
                text(&table.stdout).contains("k\\x1b[2J\\n"),
                "{:?}",
                text(&table.stdout)
            );
            drop(held);
        })
        .map_err(|(_, e)| e)
        .unwrap();
}

#[test]
fn non_utf8_bytes_in_json_paths_do_not_empty_the_report() {
    let env = TestEnv::new();
    fs::create_dir(env.lock_dir()).unwrap();
    let name = OsStr::from_bytes(b"odd-\xfe.lock");
    fs::write(env.lock_dir().join(name), b"").unwrap();
    let output = status(&env, &["--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let report = json(&output);
    assert!(
        only_lock(&report)["lock_file"]
            .as_str()
            .unwrap()
            .ends_with("odd-\\xfe.lock"),
        "{report:#}"
    );
}

// --- issue #16 item 8: a slot is reported as a slot ---------------------------

/// Channel `n` of the device at 10.0.0.5.
fn channel(n: usize) -> String {
    format!("http://10.0.0.5:5004/auto/v{n}.1")
}

/// The slot files of the lock directory, sorted.
fn slot_files(env: &TestEnv) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(env.lock_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "slot"))
        .collect();
    files.sort();
    files
}

/// Launches channel `n` with `--tuners 2` running `sleep 300`, and waits
/// until the kernel shows it holding a slot file.
#[track_caller]
fn hold_slot(env: &TestEnv, n: usize) -> Guard {
    let holder = env
        .launch(channel(n))
        .args(["--tuners", "2"])
        .program(["sleep", "300"])
        .spawn();
    let pid = i64::from(holder.pid());
    assert!(
        wait_until(PATIENCE, || slot_files(env)
            .iter()
            .any(|f| holders(f).contains(&pid))),
        "channel {n} never took a slot"
    );
    holder
}

#[test]
fn a_held_slot_file_deleted_by_hand_is_an_orphaned_slot_and_the_device_counts_every_reader() {
    let env = TestEnv::new();
    let _first = hold_slot(&env, 1);
    let second = hold_slot(&env, 2);
    let deleted = slot_files(&env).remove(1);
    assert!(
        holders(&deleted).contains(&i64::from(second.pid())),
        "{deleted:?}"
    );
    fs::remove_file(&deleted).unwrap();
    // The harm this item reports: a third reader on a two-tuner device (the
    // launcher now refuses to be it: one that does not check, an older
    // version or a hand-made flock, still can).
    let third = Guard::spawn(
        Command::new("flock")
            .arg("-n")
            .arg(&deleted)
            .args(["sleep", "300"]),
    );
    let third_pid = i64::from(third.pid());
    assert!(
        wait_until(PATIENCE, || holders(&deleted).contains(&third_pid)),
        "the third launcher never took the recreated slot file"
    );

    let output = status(&env, &["--json"]);
    assert_eq!(output.status.code(), Some(4), "{}", describe(&output));
    let report = json(&output);
    let locks = report["locks"].as_array().unwrap();
    assert_eq!(locks.len(), 2, "one row per source: {report:#}");
    for lock in locks {
        let file = lock["lock_file"].as_str().unwrap();
        assert!(
            Path::new(file).extension().is_some_and(|x| x == "lock"),
            "a slot in locks[]: {report:#}"
        );
        assert_eq!(lock["orphaned"], false, "{report:#}");
    }
    let devices = report["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{report:#}");
    let device = &devices[0];
    assert_eq!(device["tuners"], 2, "{report:#}");
    assert_eq!(device["held"], 3, "what the kernel shows: {report:#}");
    let orphans: Vec<&serde_json::Value> = device["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["orphaned"] == true)
        .collect();
    assert_eq!(orphans.len(), 1, "{report:#}");
    assert_eq!(orphans[0]["slot"], 1, "{report:#}");
    assert_eq!(orphans[0]["state"], "held", "{report:#}");
    assert_eq!(holder_pids(orphans[0]), vec![u64::from(second.pid())]);
    let in_place: Vec<&serde_json::Value> = device["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["orphaned"] == false && s["slot"] == 1)
        .collect();
    assert_eq!(in_place.len(), 1, "no duplicate row: {report:#}");
    assert!(
        device["warnings"]
            .to_string()
            .contains("slot file was deleted while held"),
        "{report:#}"
    );

    let text_output = status(&env, &[]);
    assert_eq!(text_output.status.code(), Some(4));
    let shown = text(&text_output.stdout);
    assert!(shown.contains("tuners 3/2 held"), "{shown}");
    assert!(
        !shown.lines().any(|l| l.starts_with("ORPHANED")),
        "the table is for source locks: {shown}"
    );
    assert!(
        !shown.contains("lock file was"),
        "a source-lock message: {shown}"
    );
    assert!(shown.contains("slot 1 ORPHANED"), "{shown}");
    assert!(
        shown.contains("slot file was deleted while held"),
        "{shown}"
    );
    drop(third);
}

/// A slot or lock file made between status's listing of the directory and
/// its scan of the holders is the directory's, not a moved lock: status
/// run while launchers come up never says ORPHANED (looped: the window is
/// small).
#[test]
fn files_created_while_status_runs_are_never_reported_as_moved_or_orphaned() {
    let env = TestEnv::new();
    // The lock directory exists before the first status (which needs it).
    env.launch(channel(99)).run();
    let mut launchers = Vec::new();
    for n in 0..24 {
        launchers.push(
            env.launch(channel(n))
                .args(["--tuners", "64", "--device", &format!("box-{n}")])
                .program(["sleep", "300"])
                .spawn(),
        );
        let output = status(&env, &["--json"]);
        let report = json(&output);
        assert_ne!(output.status.code(), Some(4), "round {n}: {report:#}");
        for lock in report["locks"].as_array().unwrap() {
            assert!(
                Path::new(lock["lock_file"].as_str().unwrap())
                    .extension()
                    .is_some_and(|x| x == "lock"),
                "round {n}: a slot in locks[]: {report:#}"
            );
        }
    }
}
