//! Who may change the lock path, what lock files look like, and which
//! descriptor the lock lands on (ECP-0129).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::testenv::{
    Invocation, NOBODY, PATIENCE, TestEnv, describe, holders, require_root, text, wait_until,
};

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";

/// A group the test user `nobody` is not a member of.
const STRANGERS: u32 = 4242;

/// A launch that must be refused with 73 naming `message`, in one line,
/// without running the program.
#[track_caller]
fn assert_refused(launch: Invocation<'_>, message: &str) {
    launch
        .expect_status(73)
        .stderr_contains(message)
        .stderr_lines(1)
        .program_did_not_run()
        .run();
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `script` with `sh -c` as `nobody`.
fn as_nobody(env: &TestEnv, script: &str) -> std::process::Output {
    Command::new("sh")
        .args(["-c", script])
        .current_dir(env.path(""))
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap()
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_lock_file_another_user_planted_in_a_sticky_directory_is_refused() {
    require_root!("plant a lock file as another user");
    let env = TestEnv::new();
    let lock_file = env.lock_file_of(SOURCE);
    fs::create_dir(env.lock_dir()).unwrap();
    chmod(&env.lock_dir(), 0o1777);
    // The planter could delete it while we hold it: a second reader.
    let planted = as_nobody(&env, &format!("touch '{}'", lock_file.display()));
    assert!(planted.status.success(), "{}", describe(&planted));
    assert_refused(env.launch(SOURCE), "is owned by uid 65534");
}

#[test]
fn a_lock_file_with_a_second_hard_link_is_refused() {
    let env = TestEnv::new();
    env.launch(SOURCE).program(["true"]).run();
    let lock_file = env.lock_file_of(SOURCE);
    fs::hard_link(&lock_file, env.path("someones-file")).unwrap();
    assert_refused(env.launch(SOURCE), "has 2 hard links");
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_lock_directory_owned_by_another_user_is_refused() {
    require_root!("give the lock directory to another user");
    let env = TestEnv::new();
    fs::create_dir(env.lock_dir()).unwrap();
    chown(&env.lock_dir(), NOBODY, NOBODY);
    assert_refused(env.launch(SOURCE), "is owned by uid 65534");
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_directory_above_the_lock_directory_that_others_may_rename_in_is_refused() {
    require_root!("give a parent directory to another user");
    let env = TestEnv::new();
    let parent = env.path("parent");
    let lock_dir = parent.join("locks");
    fs::create_dir_all(&lock_dir).unwrap();
    let launch = || env.launch_in(&lock_dir, SOURCE);
    // Writable by everyone, not sticky: anyone can rename `locks` away.
    chmod(&parent, 0o777);
    assert_refused(launch(), "is writable by others");
    // Owned by someone else: they can.
    chmod(&parent, 0o755);
    chown(&parent, NOBODY, NOBODY);
    assert_refused(launch(), "is owned by uid 65534");
    // Writable by a group the launcher is not in.
    chown(&parent, 0, STRANGERS);
    chmod(&parent, 0o775);
    chown(&lock_dir, NOBODY, NOBODY);
    assert_refused(launch().uid(NOBODY), "is writable by group 4242");
    // A symlink on the way is followed, and its target checked too.
    chmod(&parent, 0o755);
    chown(&parent, 0, 0);
    chown(&lock_dir, 0, 0);
    let open = env.path("open");
    fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    fs::create_dir(open.join("locks")).unwrap();
    fs::remove_dir(&lock_dir).unwrap();
    fs::remove_dir(&parent).unwrap();
    std::os::unix::fs::symlink(&open, &parent).unwrap();
    assert_refused(launch(), "is writable by others");
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn the_modules_setgid_group_directory_serves_root_and_the_service_user_read_write() {
    require_root!("run as root and as the service user");
    let env = TestEnv::new();
    // What the module's tmpfiles line makes: `d DIR 2775 root <group>`.
    fs::create_dir(env.lock_dir()).unwrap();
    chown(&env.lock_dir(), 0, NOBODY);
    chmod(&env.lock_dir(), 0o2775);
    // The program writes its pid file here as the service user.
    chmod(&env.path(""), 0o1777);

    // A manual run as root, under a strict umask, creates the file…
    env.launch(SOURCE)
        .program(["true"])
        .through_shell("umask 077; exec \"$@\"")
        .run();
    let lock_file = env.lock_file_of(SOURCE);
    let metadata = fs::metadata(&lock_file).unwrap();
    assert_eq!(metadata.mode() & 0o7777, 0o660, "lock file mode");
    assert_eq!((metadata.uid(), metadata.gid()), (0, NOBODY));

    // …and the service user later takes it read-write (its record is written).
    let (pid, stderr) = env.hold_as_service_user(SOURCE, "the service user must hold the lock");
    assert!(!stderr.contains("read-only descriptor"), "{stderr}");
    assert!(
        fs::read_to_string(&lock_file)
            .unwrap()
            .contains(&format!("\"pid\":{pid}")),
        "the service user's launch record"
    );
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn users_outside_the_files_user_and_group_cannot_open_a_lock_file_to_block_it() {
    require_root!("try the lock file as another user");
    let env = TestEnv::new();
    env.launch(SOURCE).program(["true"]).run();
    let lock_file = env.lock_file_of(SOURCE);
    let attempt = as_nobody(
        &env,
        &format!("exec 3<'{}' && flock -n 3", lock_file.display()),
    );
    assert!(
        !attempt.status.success() && text(&attempt.stderr).contains("Permission denied"),
        "another user opened the lock file: {}",
        describe(&attempt)
    );
}

#[test]
fn lock_files_and_directories_get_their_documented_modes_whatever_the_umask() {
    for umask in ["000", "077"] {
        let env = TestEnv::new();
        env.launch(SOURCE)
            .program(["true"])
            .through_shell(format!("umask {umask}; exec \"$@\""))
            .run();
        let dir_mode = fs::metadata(env.lock_dir()).unwrap().mode() & 0o7777;
        assert_eq!(dir_mode, 0o755, "lock directory under umask {umask}");
        let file_mode = fs::metadata(env.lock_file_of(SOURCE)).unwrap().mode() & 0o7777;
        assert_eq!(file_mode, 0o660, "lock file under umask {umask}");
    }
}

/// `sh -c 'exec <closing> ec-launch run … -- sh -c PROGRAM'`.
fn launch_with_closed<'e>(env: &'e TestEnv, closing: &str, program: &str) -> Invocation<'e> {
    env.launch(SOURCE)
        .program(TestEnv::sh(program))
        .through_shell(format!("exec {closing} \"$@\""))
}

#[test]
fn with_descriptors_0_to_2_closed_the_lock_is_on_3_or_above_and_survives_the_programs_redirections()
{
    let env = TestEnv::new();
    let program = "echo $EC_SOURCE_LOCK_FD > fd; exec </dev/null >/dev/null 2>/dev/null; \
                   touch redirected; while [ ! -e release ]; do sleep 0.02; done";
    let holder = launch_with_closed(&env, "<&- >&- 2>&-", program).spawn();
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
    launch_with_closed(&env, "2>&-", "true").arg("-v").run();
    let content = fs::read_to_string(env.lock_file_of(SOURCE)).unwrap();
    assert!(
        !content.contains("lock acquired") && !content.contains("DEBUG"),
        "the log went into the lock file: {content}"
    );
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn status_of_a_source_refuses_what_run_refuses_instead_of_opening_it() {
    require_root!("plant a device node");
    let env = TestEnv::new();
    let lock_file = env.lock_file_of(SOURCE);
    fs::create_dir(env.lock_dir()).unwrap();
    // A char device like /dev/null (1:3); opening a real one can have effects.
    nix::sys::stat::mknod(
        &lock_file,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let status = || env.status().arg(SOURCE).expect_status(73);
    status()
        .stderr_contains("not a regular file (it is a device node)")
        .run();
    fs::remove_file(&lock_file).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &lock_file).unwrap();
    status().stderr_contains("is a symlink").run();
}
