//! The test environment: a private temp directory with a lock directory,
//! the built `ec-launch` binary, and helpers that look at the kernel's view
//! (`/proc/locks`) independently of the code under test.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ec-launch");

/// The UID/GID the privilege tests drop to when running as root.
pub const NOBODY: u32 = 65534;

/// The default busy status.
pub const BUSY: i32 = 75;

pub use crate::invocation::{Invocation, Outcome, TOUCH_RAN};

/// A temp directory (world-traversable, so a dropped-privilege launcher can
/// reach it) with `locks/` inside as the lock directory.
#[derive(Debug)]
pub struct TestEnv {
    dir: tempfile::TempDir,
}

impl TestEnv {
    #[must_use]
    pub fn new() -> Self {
        // `ec-launch run --etcd` execs it: a stale one would test old code.
        static CLUSTER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        CLUSTER.get_or_init(|| ec_test_support::executables::cluster_beside(Path::new(BIN)));
        let dir = tempfile::Builder::new()
            .prefix("ec-launch-test")
            .tempdir()
            .expect("create temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        Self { dir }
    }

    /// A path inside the environment.
    #[must_use]
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    #[must_use]
    pub fn lock_dir(&self) -> PathBuf {
        self.path("locks")
    }

    /// `ec-launch` with a clean environment for our variables.
    #[must_use]
    pub fn ec_launch(&self) -> Command {
        self.executable(BIN)
    }

    /// The executable at `path` (a copy of `ec-launch`, or
    /// `ec-launch-cluster`) run as [`TestEnv::ec_launch`] runs ours.
    #[must_use]
    pub fn executable(&self, path: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(path);
        command
            .current_dir(self.dir.path())
            .env_remove("EC_LAUNCH_LOCK_DIR")
            .env_remove("EC_LAUNCH_LOG")
            .env_remove("JOURNAL_STREAM");
        command
    }

    /// A shell program: `sh -c SCRIPT`, run in the environment's directory.
    #[must_use]
    pub fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    /// Launches `program` on `source` and waits until the kernel shows its
    /// process holding the lock.
    #[track_caller]
    pub fn hold<S: AsRef<OsStr>>(&self, source: &str, program: &[S]) -> Guard {
        let holder = self.launch(source).program(program).spawn();
        let lock_file = self.lock_file_of(source);
        let pid = i64::from(holder.pid());
        assert!(
            wait_until(PATIENCE, || holders(&lock_file) == vec![pid]),
            "holder pid {pid} never showed in /proc/locks"
        );
        holder
    }

    /// The PID a test program wrote to `name` (`echo $$ > name`), once its
    /// whole line is there: the shell creates the file before it writes,
    /// so a file that exists may still be empty.
    #[track_caller]
    pub fn written_pid(&self, name: &str) -> u32 {
        let path = self.path(name);
        let mut pid = None;
        assert!(
            wait_until(PATIENCE, || {
                pid = fs::read_to_string(&path)
                    .ok()
                    .filter(|text| text.ends_with('\n'))
                    .and_then(|text| text.trim().parse().ok());
                pid.is_some()
            }),
            "{name} never held a PID line"
        );
        pid.expect("checked above")
    }

    /// Launches a program on `source` that forks a helper (which inherits
    /// the lock descriptor) and exits at once; returns the helper, killed
    /// when dropped.
    #[track_caller]
    pub fn leave_helper_holding(&self, source: &str) -> KillOnDrop {
        self.launch(source)
            .program(Self::sh(
                "sleep 300 </dev/null >/dev/null 2>&1 & echo $! > helper.pid",
            ))
            .run();
        let pid = fs::read_to_string(self.path("helper.pid")).expect("helper.pid");
        KillOnDrop(pid.trim().parse().expect("helper pid"))
    }

    /// Launches a program on `source` as [`NOBODY`] (the service user) that
    /// holds the lock until the file `release` appears; checks that the
    /// kernel shows it holding the lock (`holding` is the failure message)
    /// and that another launch is busy meanwhile; then releases it. Returns
    /// its PID and stderr once it exited 0.
    #[track_caller]
    pub fn hold_as_service_user(&self, source: &str, holding: &str) -> (i64, String) {
        let lock_file = self.lock_file_of(source);
        let service = self
            .launch(source)
            .program(Self::sh(
                "echo $$ > service.pid; while [ ! -e release ]; do sleep 0.02; done",
            ))
            .uid(NOBODY)
            .spawn();
        let pid = i64::from(service.pid());
        assert!(
            wait_until(PATIENCE, || holders(&lock_file) == vec![pid]),
            "{holding}"
        );
        self.launch(source)
            .program(["true"])
            .expect_status(BUSY)
            .run();
        fs::write(self.path("release"), "").expect("write release");
        let (code, stderr) = service.finish();
        assert_eq!(code, Some(0), "{stderr}");
        (pid, stderr)
    }

    /// The lock file `ec-launch key` names for a source.
    #[must_use]
    #[track_caller]
    pub fn lock_file_of(&self, source: &str) -> PathBuf {
        let json = self.key(source).arg("--json").run().json();
        PathBuf::from(json["lock_file"].as_str().expect("lock_file"))
    }
}

/// Kills (SIGKILL) and reaps a child when dropped, so a failing test leaves
/// no process behind.
#[derive(Debug)]
pub struct Guard(pub Child);

impl Guard {
    pub fn spawn(command: &mut Command) -> Self {
        Self::spawn_with_stdin(command, Stdio::null())
    }

    pub fn spawn_with_stdin(command: &mut Command, stdin: Stdio) -> Self {
        Self(
            command
                .stdin(stdin)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn"),
        )
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits for exit and returns (status code, stderr).
    pub fn finish(mut self) -> (Option<i32>, String) {
        let mut stderr = String::new();
        if let Some(mut pipe) = self.0.stderr.take() {
            pipe.read_to_string(&mut stderr).expect("read stderr");
        }
        let status = self.0.wait().expect("wait");
        (status.code(), stderr)
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[must_use]
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Output's status code, stdout and stderr, for assertion messages.
#[must_use]
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// Starts `sh -c SCRIPT` in the environment's directory for each script,
/// each blocked reading a pipe it inherited as stdin (a script starts with
/// `read _;`), then releases all of them at once by closing the pipe's
/// only write end: the closest thing to launchers started together.
pub fn release_together(env: &TestEnv, scripts: impl IntoIterator<Item = String>) -> Vec<Guard> {
    let (gate, gate_writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let launchers = scripts
        .into_iter()
        .map(|script| {
            let mut command = Command::new("sh");
            command.arg("-c").arg(&script).current_dir(env.path(""));
            Guard::spawn_with_stdin(&mut command, Stdio::from(gate.try_clone().expect("dup")))
        })
        .collect();
    drop(gate);
    drop(gate_writer);
    launchers
}

/// Waits up to `limit` until `losers` of `launchers` have exited, keeping
/// the ones still running in `launchers`, and checks that they did, each
/// with the busy status; `case` names the case in failure messages.
#[track_caller]
pub fn settle(launchers: &mut Vec<Guard>, losers: usize, limit: Duration, case: &str) {
    let mut outcome = Settled::default();
    let in_time = wait_until(limit, || {
        launchers.retain_mut(|l| match l.0.try_wait().expect("try_wait") {
            None => true,
            Some(status) if status.code() == Some(BUSY) => {
                outcome.busy += 1;
                false
            }
            Some(status) => {
                outcome.others.push(status.code());
                false
            }
        });
        outcome.busy + outcome.others.len() == losers
    });
    let Settled { busy, others } = outcome;
    assert!(
        in_time,
        "{case}: launchers did not settle ({} left, {busy} busy, others {others:?})",
        launchers.len()
    );
    assert!(others.is_empty(), "{case}: unexpected exits {others:?}");
}

/// How the launchers that exited so far ended.
#[derive(Debug, Default)]
struct Settled {
    /// Exited with the busy status.
    busy: usize,
    /// Exited with anything else.
    others: Vec<Option<i32>>,
}

/// A loopback server (a stand-in tuner) that streams to every client
/// until it goes away; its address.
pub fn streaming_server() -> std::net::SocketAddr {
    use std::io::Write as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let address = listener.local_addr().expect("local address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                while stream.write_all(&[0x47; 1316]).is_ok() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
    });
    address
}

/// True while `pid` runs: it exists and is not a zombie (`Z`) or dead
/// (`X`). A zombie still answers `kill(pid, 0)`, and holds nothing.
pub fn alive(pid: impl std::fmt::Display) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// Polls `condition` until true or `limit` passes. For synchronising with
/// other processes (readiness), never for asserting how fast something is.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// A generous bound for readiness waits.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// One `/proc/locks` FLOCK row, parsed here independently of the crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLock {
    pub pid: i64,
    pub waiting: bool,
}

/// The FLOCK rows of `/proc/locks` on the inode `path` names now.
#[must_use]
pub fn kernel_locks(path: &Path) -> Vec<KernelLock> {
    let Ok(metadata) = fs::metadata(path) else {
        return Vec::new();
    };
    kernel_locks_on(lock_device(path).unwrap_or(metadata.dev()), metadata.ino())
}

/// The device `/proc/locks` lists a file's locks under: its mount's
/// (`/proc/self/mountinfo` field 3), which on btrfs is not `st_dev`.
fn lock_device(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::empty(),
        rustix::fs::StatxFlags::MNT_ID,
    )
    .ok()?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()?.parse::<u64>().ok()? == stat.stx_mnt_id).then_some(())?;
        let (major, minor) = fields.nth(1)?.split_once(':')?;
        Some(nix::sys::stat::makedev(
            major.parse().ok()?,
            minor.parse().ok()?,
        ))
    })
}

/// How many reads of `/proc/locks` one query unites (see `kernel_locks_on`).
const PROC_LOCKS_READS: usize = 3;
/// How many more reads a busy table gets when the row was not seen.
const PROC_LOCKS_REREADS: usize = 12;

/// The FLOCK rows of `/proc/locks` on a device and inode.
#[must_use]
pub fn kernel_locks_on(dev: u64, ino: u64) -> Vec<KernelLock> {
    let wanted = format!(
        "{:02x}:{:02x}:{ino}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    // /proc/locks is a seq_file: a table longer than a page takes more than
    // one read(2), and rows removed in between shift the rest, so one read
    // can skip a row (tests that take hundreds of locks make such tables).
    // Read three times and keep the union: against the churn in
    // `kernel_locks_sees_a_steady_lock_while_hundreds_of_others_come_and_go`
    // one read missed the row about once in 90 queries, the union of two
    // about once in 1,300, of three never in 8,000.
    // When none of those showed a row and the table spans pages, read on
    // (bounded): a missing row of a busy table is likelier a skip than a
    // free file. The kernel's rows are never probed by locking here: a
    // probe could make a launcher starting meanwhile see its source busy.
    let mut rows = Vec::new();
    for read in 0..PROC_LOCKS_READS + PROC_LOCKS_REREADS {
        let table = fs::read_to_string("/proc/locks").expect("read /proc/locks");
        if read >= PROC_LOCKS_READS && (!rows.is_empty() || table.len() < 3072) {
            break;
        }
        for line in table.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let waiting = fields.get(1) == Some(&"->");
            let rest = if waiting { &fields[2..] } else { &fields[1..] };
            if rest.first() == Some(&"FLOCK") && rest.get(4) == Some(&wanted.as_str()) {
                let row = KernelLock {
                    pid: rest[3].parse().unwrap_or(0),
                    waiting,
                };
                if !rows.contains(&row) {
                    rows.push(row);
                }
            }
        }
    }
    rows
}

/// PIDs holding (not awaiting) a flock on the file at `path`.
#[must_use]
pub fn holders(path: &Path) -> Vec<i64> {
    kernel_locks(path)
        .into_iter()
        .filter(|l| !l.waiting)
        .map(|l| l.pid)
        .collect()
}

/// Builds `tests/support/<name>.c` into the environment (with the flags
/// `pkg-config` gives for `package`, if any) and returns the program's path.
#[track_caller]
pub fn build_support_program(env: &TestEnv, name: &str, package: Option<&str>) -> PathBuf {
    let binary = env.path(name);
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(format!("{name}.c"));
    let mut flags = vec!["-pthread".to_owned()];
    if let Some(package) = package {
        let output = Command::new("pkg-config")
            .args(["--cflags", "--libs", package])
            .output()
            .unwrap_or_else(|e| panic!("pkg-config {package}: {e}"));
        assert!(
            output.status.success(),
            "pkg-config {package}: {}",
            describe(&output)
        );
        flags.extend(text(&output.stdout).split_whitespace().map(str::to_owned));
    }
    let output = Command::new("cc")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .args(&flags)
        .output()
        .expect("cc (a C compiler)");
    assert!(
        output.status.success(),
        "building {name}: {}",
        describe(&output)
    );
    binary
}

#[must_use]
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Ends the calling test early, saying so, when it needs root and this is a
/// non-root run that may skip it (see `crates/ec-test-support/src/privilege.rs`); as root,
/// or in CI, the test goes on (and fails on its own without root).
macro_rules! require_root {
    ($what:expr) => {
        if let Some(reason) = $crate::privilege::root_skip_reason($what) {
            let test = std::thread::current().name().unwrap_or("a test").to_owned();
            $crate::privilege::announce_skip(&test, &reason);
            return;
        }
        assert!(
            $crate::testenv::is_root(),
            "this test needs root to {}: run the test suite as root (CI does, via .ci/run)",
            $what
        );
    };
}
pub(crate) use require_root;

/// SIGKILLs a process that is not our child (a reparented helper) when
/// dropped, and waits until it is gone.
#[derive(Debug)]
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        wait_until(PATIENCE, || nix::sys::signal::kill(pid, None).is_err());
    }
}

#[test]
fn kernel_locks_sees_a_steady_lock_while_hundreds_of_others_come_and_go() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let env = TestEnv::new();
    let take = |name: String| {
        let file = fs::File::create(env.path(&name)).unwrap();
        file.lock().unwrap();
        file
    };
    // A table of several pages, the steady lock in its middle.
    let mut held: Vec<fs::File> = (0..200).map(|i| take(format!("before-{i}"))).collect();
    let steady = take("steady".into());
    held.extend((0..200).map(|i| take(format!("after-{i}"))));
    let pid = i64::from(std::process::id());
    let stop = AtomicBool::new(false);
    let misses = std::thread::scope(|scope| {
        for churner in 0..2 {
            let files: Vec<fs::File> = (0..100)
                .map(|i| fs::File::create(env.path(&format!("churn-{churner}-{i}"))).unwrap())
                .collect();
            let stop = &stop;
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for file in &files {
                        file.lock().unwrap();
                    }
                    for file in &files {
                        file.unlock().unwrap();
                    }
                }
            });
        }
        let misses = (0..400)
            .filter(|_| !holders(&env.path("steady")).contains(&pid))
            .count();
        stop.store(true, Ordering::Relaxed);
        misses
    });
    assert_eq!(
        misses, 0,
        "the steady lock was missed in {misses} of 400 reads"
    );
    drop((steady, held));
}
