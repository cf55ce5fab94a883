//! Issue 20 items 4 and 5 (ECP-0136): lock directories on filesystems
//! whose locks are not local flock(2) locks are refused, local ones are
//! accepted; a read-only filesystem's free lock file is locked through a
//! read-only descriptor; arguments over exec's limits are refused before
//! the lock directory is touched. Real mounts (root): tmpfs, overlayfs on
//! a tmpfs, btrfs on a loop image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::testenv::{BUSY, Guard, PATIENCE, TestEnv, holders, require_root, wait_until};

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";

/// A filesystem mounted for one test, unmounted (lazily) when dropped.
struct Mounted(PathBuf);

impl Mounted {
    #[track_caller]
    fn new(at: &Path, args: &[&str]) -> Self {
        fs::create_dir_all(at).unwrap();
        let output = Command::new("mount").args(args).arg(at).output().unwrap();
        assert!(
            output.status.success(),
            "mount {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self(at.to_owned())
    }

    fn tmpfs(at: &Path) -> Self {
        Self::new(at, &["-t", "tmpfs", "-o", "mode=755", "tmpfs"])
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A launch in `lock_dir` that must run the program.
#[track_caller]
fn accepted(env: &TestEnv, lock_dir: &Path) {
    let _ = fs::remove_file(env.path("ran"));
    env.launch_in(lock_dir, SOURCE).program_ran().run();
}

// Failed before the fix: the overlay's merged directory was used (exit 0),
// and the same file reached through the upper directory was a second lock.
#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn an_overlayfs_lock_directory_is_refused_naming_the_filesystem_and_the_fix() {
    require_root!("mount an overlay filesystem");
    let env = TestEnv::new();
    let base = Mounted::tmpfs(&env.path("base"));
    for dir in ["lower", "upper", "work", "merged"] {
        fs::create_dir(base.0.join(dir)).unwrap();
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        base.0.join("lower").display(),
        base.0.join("upper").display(),
        base.0.join("work").display()
    );
    let merged = Mounted::new(
        &base.0.join("merged"),
        &["-t", "overlay", "-o", &options, "overlay"],
    );
    env.launch_in(merged.0.join("locks"), SOURCE)
        .expect_status(73)
        .stderr_contains("is on overlayfs, whose locks are not local flock(2) locks")
        .stderr_contains("/run/ec-launch")
        .program_did_not_run()
        .run();
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn tmpfs_and_btrfs_lock_directories_are_accepted_and_exclude_duplicates() {
    require_root!("mount tmpfs and a btrfs loop image");
    let env = TestEnv::new();
    let tmpfs = Mounted::tmpfs(&env.path("tmpfs"));
    accepted(&env, &tmpfs.0.join("locks"));

    let image = env.path("btrfs.img");
    let file = fs::File::create(&image).unwrap();
    file.set_len(128 << 20).unwrap();
    let mkfs = Command::new("mkfs.btrfs")
        .arg("-q")
        .arg(&image)
        .stdout(Stdio::null())
        .status()
        .expect("mkfs.btrfs (btrfs-progs)");
    assert!(mkfs.success());
    let btrfs = Mounted::new(&env.path("btrfs"), &["-o", "loop", image.to_str().unwrap()]);
    // A subvolume reports its own st_dev: the lock and its holder are
    // still found and a duplicate is refused.
    let subvolume = btrfs.0.join("sub");
    let created = Command::new("btrfs")
        .args(["-q", "subvolume", "create"])
        .arg(&subvolume)
        .status()
        .unwrap();
    assert!(created.success());
    for lock_dir in [btrfs.0.join("locks"), subvolume.join("locks")] {
        accepted(&env, &lock_dir);
        let holder = Guard::spawn(
            &mut env
                .launch_in(&lock_dir, SOURCE)
                .program(["sleep", "300"])
                .to_command(),
        );
        let lock_file = fs::read_dir(&lock_dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "lock"))
            .unwrap();
        assert!(
            wait_until(PATIENCE, || holders(&lock_file)
                == vec![i64::from(holder.pid())]),
            "the holder never showed in /proc/locks"
        );
        let _ = fs::remove_file(env.path("ran"));
        env.launch_in(&lock_dir, SOURCE)
            .expect_status(BUSY)
            .stderr_contains(format!("pid {}", holder.pid()))
            .program_did_not_run()
            .run();
        let status = env
            .command(["status", "--json", "--lock-dir"])
            .arg(&lock_dir)
            .run()
            .json();
        assert_eq!(
            status["locks"][0]["holders"][0]["pid"],
            u64::from(holder.pid()),
            "{status:#}"
        );
    }
}

// Failed before the fix: exit 73, "lock directory unusable", though flock
// works on a read-only descriptor.
#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_free_lock_file_on_a_read_only_filesystem_is_locked_read_only() {
    require_root!("remount a tmpfs read-only");
    let env = TestEnv::new();
    let fs_root = Mounted::tmpfs(&env.path("ro"));
    let lock_dir = fs_root.0.join("locks");
    accepted(&env, &lock_dir);
    let remount = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&fs_root.0)
        .status()
        .unwrap();
    assert!(remount.success());
    accepted(&env, &lock_dir);
}

// Failed before the fix: "source lock acquired; starting" was logged, then
// exec failed with E2BIG (exit 126) and permission advice.
#[test]
fn arguments_over_execs_limit_are_refused_before_locking_naming_the_limit() {
    let env = TestEnv::new();
    let source = format!("http://10.0.0.5:5004/auto/v5.1?pad={}", "x".repeat(100_000));
    let touch = |args: &[&str]| {
        let mut program = vec!["sh", "-c", "touch ran", "sh"];
        program.extend_from_slice(args);
        program.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>()
    };
    // One argument over MAX_ARG_STRLEN (128 KiB).
    env.launch(&source)
        .program(touch(&["{source}{source}"]))
        .expect_status(64)
        .stderr_contains("argument 4 (with {source} expanded) is")
        .stderr_contains("MAX_ARG_STRLEN")
        .stderr_lacks("acquired")
        .lock_dir_untouched()
        .run();
    assert!(!env.path("ran").exists());
    // A source that fits in an argument (131,072 bytes with its NUL) but
    // not in `EC_SOURCE_URL=<source>`: the entry is named by its variable.
    let prefix = "http://10.0.0.5:5004/auto/v5.1?pad=";
    let longest = format!("{prefix}{}", "x".repeat(131_071 - prefix.len()));
    env.launch(&longest)
        .program(touch(&[]))
        .expect_status(64)
        .stderr_contains("the environment variable EC_SOURCE_URL is")
        .stderr_contains("MAX_ARG_STRLEN")
        .stderr_lacks("acquired")
        .lock_dir_untouched()
        .run();
    assert!(!env.path("ran").exists());
    // All of them over ARG_MAX.
    env.launch(&source)
        .program(touch(&["{source}"; 80]))
        .expect_status(64)
        .stderr_contains("ARG_MAX")
        .stderr_lacks("acquired")
        .lock_dir_untouched()
        .run();
    assert!(!env.path("ran").exists());
}

// Failed before the fix: at `ulimit -n 5` the busy launcher could not open
// the holder's /proc/<pid>/fd (EMFILE) and said "held by a process this
// user cannot see, inherited from exited pid N" while N ran.
#[test]
fn a_launcher_out_of_descriptors_says_so_instead_of_blaming_visibility() {
    let env = TestEnv::new();
    let holder = env.hold(SOURCE, &["sleep", "300"]);
    let _ = holder;
    for limit in [5, 6] {
        let _ = fs::remove_file(env.path("ran"));
        env.launch(SOURCE)
            .through_shell(format!("ulimit -n {limit}; exec \"$@\""))
            .label(format!("ulimit -n {limit}"))
            .expect_status(BUSY)
            .stderr_lacks("cannot see")
            .stderr_lacks("inherited from exited pid")
            .program_did_not_run()
            .run();
    }
}
