//! Issue 20 item 2 (ECP-0136): a hung filesystem behind a descriptor of a
//! lock holder, or of any process holding a flock on the lock directory's
//! filesystem, hangs neither `run` nor `status`. A FUSE server that is
//! stopped (SIGSTOP) stands in for a dead NFS or sshfs server: every request to
//! its filesystem (a `stat` through `/proc/<pid>/fd/N` included) blocks.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::testenv::{
    BUSY, Guard, PATIENCE, TestEnv, build_support_program, describe, holders, require_root,
    wait_until,
};

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";
/// What "promptly" means here: a hang never ends, an answer takes milliseconds.
const PROMPTLY: Duration = Duration::from_secs(10);

/// The FUSE server of `tests/support/hung_fuse.c`, built for the test and
/// mounted in the environment; resumed, stopped and unmounted when dropped.
struct HungFuse {
    server: Child,
    mount: PathBuf,
}

impl HungFuse {
    #[track_caller]
    fn mount(env: &TestEnv) -> Self {
        let binary = build_support_program(env, "hung_fuse", Some("fuse3"));
        let mount = env.path("fuse");
        std::fs::create_dir(&mount).unwrap();
        let server = Command::new(&binary)
            .arg(&mount)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let fuse = Self { server, mount };
        assert!(
            wait_until(PATIENCE, || fuse.file().exists()),
            "the FUSE filesystem never came up"
        );
        fuse
    }

    fn file(&self) -> PathBuf {
        self.mount.join("file")
    }

    /// From now on every request to the filesystem blocks.
    fn hang(&self) {
        self.signal(Signal::SIGSTOP);
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.server.id()).unwrap());
        kill(pid, signal).unwrap();
    }
}

impl Drop for HungFuse {
    fn drop(&mut self) {
        self.signal(Signal::SIGCONT);
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mount)
            .status();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Runs `command` and returns its output, or fails the test when it has
/// not finished within [`PROMPTLY`] (and kills it).
#[track_caller]
fn promptly(command: &mut Command, what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > PROMPTLY {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("{what} hung: {}", describe(&output));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A program that opens the FUSE file, keeps it open and runs on.
fn keeps_open(fuse: &HungFuse) -> Vec<String> {
    TestEnv::sh(&format!(
        "exec 7<'{}'; touch ready; exec sleep 300",
        fuse.file().display()
    ))
}

fn status(env: &TestEnv) -> Command {
    let mut command = env.ec_launch();
    command
        .args(["status", "--json", "--lock-dir"])
        .arg(env.lock_dir());
    command
}

// Failed before the fix: the duplicate, describing the holder, stat'ed its
// descriptors and hung on the FUSE one; so did the waiting standby.
#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_holder_with_a_descriptor_on_a_hung_filesystem_hangs_neither_run_nor_status() {
    require_root!("mount a FUSE filesystem");
    let env = TestEnv::new();
    let fuse = HungFuse::mount(&env);
    let holder = env.launch(SOURCE).program(keeps_open(&fuse)).spawn();
    assert!(wait_until(PATIENCE, || env.path("ready").exists()));
    fuse.hang();

    let skipped = promptly(&mut env.launch(SOURCE).to_command(), "a skipped duplicate");
    assert_eq!(skipped.status.code(), Some(BUSY), "{}", describe(&skipped));
    assert!(
        String::from_utf8_lossy(&skipped.stderr).contains(&format!("pid {}", holder.pid())),
        "{}",
        describe(&skipped)
    );
    let report = promptly(&mut status(&env), "status");
    let json: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(
        json["locks"][0]["holders"][0]["pid"],
        u64::from(holder.pid()),
        "{json:#}"
    );

    // A standby announces its wait, and runs once the holder is gone.
    let standby = Guard::spawn(
        &mut env
            .launch(SOURCE)
            .args(["--on-busy", "wait"])
            .program(TestEnv::sh("touch standby-ran"))
            .to_command(),
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(holder);
    assert!(
        wait_until(PROMPTLY, || env.path("standby-ran").exists()),
        "the standby never ran"
    );
    drop(standby);
}

// Failed before the fix: status stat'ed the descriptors of the process
// holding another file's flock on the lock directory's filesystem.
#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_flock_elsewhere_on_the_filesystem_held_with_a_hung_descriptor_hangs_nothing() {
    require_root!("mount a FUSE filesystem");
    let env = TestEnv::new();
    let fuse = HungFuse::mount(&env);
    // Another program's lock beside ours (as /run/xtables.lock is on
    // /run), taken by a process that has the FUSE file open.
    let other_lock = env.path("other.lock");
    let other = Guard::spawn(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec 7<'{}'; exec flock '{}' sleep 300",
                fuse.file().display(),
                other_lock.display()
            ))
            .current_dir(env.path("")),
    );
    assert!(wait_until(PATIENCE, || holders(&other_lock)
        == vec![i64::from(other.pid())]));
    let holder = env.hold(SOURCE, &["sleep", "300"]);
    fuse.hang();

    let report = promptly(&mut status(&env), "status");
    let json: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(
        json["locks"][0]["holders"][0]["pid"],
        u64::from(holder.pid()),
        "{json:#}"
    );
    let skipped = promptly(&mut env.launch(SOURCE).to_command(), "a skipped duplicate");
    assert_eq!(skipped.status.code(), Some(BUSY), "{}", describe(&skipped));
    drop(other);
}
