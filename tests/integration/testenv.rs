//! The test environment: a private temp directory with a lock directory,
//! the built `ec-launch` binary, and helpers that look at the kernel's view
//! (`/proc/locks`) independently of the code under test.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ec-launch");

/// The UID/GID the privilege tests drop to when running as root.
pub const NOBODY: u32 = 65534;

/// The default busy status.
pub const BUSY: i32 = 75;

/// A temp directory (world-traversable, so a dropped-privilege launcher can
/// reach it) with `locks/` inside as the lock directory.
#[derive(Debug)]
pub struct TestEnv {
    dir: tempfile::TempDir,
}

impl TestEnv {
    #[must_use]
    pub fn new() -> Self {
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
        let mut command = Command::new(BIN);
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

    /// The lock file `ec-launch key` names for a source.
    #[must_use]
    #[track_caller]
    pub fn lock_file_of(&self, source: &str) -> PathBuf {
        let json = self
            .command(["key", "--json", "--lock-dir"])
            .arg(self.lock_dir())
            .arg(source)
            .run()
            .json();
        PathBuf::from(json["lock_file"].as_str().expect("lock_file"))
    }
}

/// The program a launch runs unless told otherwise: it leaves `ran` in the
/// environment's directory, so a test can tell whether it ran.
pub const TOUCH_RAN: [&str; 3] = ["sh", "-c", "touch ran"];

impl TestEnv {
    /// `ec-launch run --lock-dir <env> --source SOURCE [args…] -- PROGRAM…`,
    /// to be finished with expectations and `run()`; the program is
    /// [`TOUCH_RAN`] unless `program` says otherwise.
    pub fn launch(&self, source: impl AsRef<OsStr>) -> Invocation<'_> {
        self.launch_in(self.lock_dir(), source)
    }

    /// `ec-launch run --lock-dir <env> --source-file PATH …`, like `launch`.
    pub fn launch_from_file(&self, path: impl AsRef<OsStr>) -> Invocation<'_> {
        let mut invocation = self.command(["run"]);
        invocation.args.push("--lock-dir".into());
        invocation.args.push(self.lock_dir().into());
        invocation.args.push("--source-file".into());
        invocation.args.push(path.as_ref().to_owned());
        invocation.program = Some(TOUCH_RAN.iter().map(OsString::from).collect());
        invocation
    }

    /// `ec-launch run --lock-dir DIR --source SOURCE …` with another lock
    /// directory, like `launch`.
    pub fn launch_in(
        &self,
        lock_dir: impl AsRef<OsStr>,
        source: impl AsRef<OsStr>,
    ) -> Invocation<'_> {
        let mut invocation = self.command(["run"]);
        invocation.args.push("--lock-dir".into());
        invocation.args.push(lock_dir.as_ref().to_owned());
        invocation.args.push("--source".into());
        invocation.args.push(source.as_ref().to_owned());
        invocation.program = Some(TOUCH_RAN.iter().map(OsString::from).collect());
        invocation
    }

    /// `ec-launch ARGS…` (any subcommand, no lock directory added), to be
    /// finished with expectations and `run()`.
    pub fn command<I, S>(&self, args: I) -> Invocation<'_>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Invocation {
            env: self,
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            program: None,
            vars: Vec::new(),
            uid: None,
            stderr_file: None,
            shell: None,
            label: None,
            status: Some(0),
            failure: false,
            stdout_is: None,
            stdout_contains: Vec::new(),
            stderr_is: None,
            stderr_starts_with: None,
            stderr_contains: Vec::new(),
            stderr_lacks: Vec::new(),
            output_lacks: Vec::new(),
            stderr_lines: None,
            one_line_error: false,
            program_ran: None,
            lock_dir_untouched: false,
        }
    }
}

/// One `ec-launch` invocation and what must be true of its outcome: the exit
/// status (0 unless `expect_status` says otherwise) is always checked, and a
/// failed expectation reports the command line, status, stdout and stderr
/// at the test's own line.
#[must_use = "an invocation does nothing until .run() or .spawn()"]
#[derive(Debug)]
pub struct Invocation<'e> {
    env: &'e TestEnv,
    args: Vec<OsString>,
    program: Option<Vec<OsString>>,
    vars: Vec<(OsString, Option<OsString>)>,
    uid: Option<u32>,
    stderr_file: Option<fs::File>,
    shell: Option<String>,
    label: Option<String>,
    status: Option<i32>,
    failure: bool,
    stdout_is: Option<String>,
    stdout_contains: Vec<String>,
    stderr_is: Option<String>,
    stderr_starts_with: Option<String>,
    stderr_contains: Vec<String>,
    stderr_lacks: Vec<String>,
    output_lacks: Vec<String>,
    stderr_lines: Option<usize>,
    one_line_error: bool,
    program_ran: Option<bool>,
    lock_dir_untouched: bool,
}

impl Invocation<'_> {
    /// More arguments, after those already given (for `launch`: after
    /// `--source`, before `--`).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn arg(self, arg: impl AsRef<OsStr>) -> Self {
        self.args([arg])
    }

    /// The program `ec-launch run` executes (after `--`).
    pub fn program<I, S>(mut self, program: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.program = Some(program.into_iter().map(|a| a.as_ref().to_owned()).collect());
        self
    }

    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.vars
            .push((name.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Runs as this UID and GID (the test must be root).
    pub fn uid(mut self, id: u32) -> Self {
        self.uid = Some(id);
        self
    }

    /// Starts `ec-launch` through `sh -c SCRIPT sh ec-launch ARGS…`, for a
    /// umask, a resource limit or closed descriptors: SCRIPT ends with
    /// `exec "$@"` (plus any redirections).
    pub fn through_shell(mut self, script: impl Into<String>) -> Self {
        self.shell = Some(script.into());
        self
    }

    /// Sends stderr to `file` instead of capturing it.
    pub fn stderr_to(mut self, file: fs::File) -> Self {
        self.stderr_file = Some(file);
        self
    }

    /// Names the case in failure messages (for loops over inputs).
    pub fn label(mut self, label: impl std::fmt::Display) -> Self {
        self.label = Some(label.to_string());
        self
    }

    pub fn expect_status(mut self, code: i32) -> Self {
        self.status = Some(code);
        self
    }

    /// Checks no status: the test looks only at the output.
    pub fn any_status(mut self) -> Self {
        self.status = None;
        self
    }

    /// Any status but success (a refusal whose exact code this test does
    /// not pin).
    pub fn expect_failure(mut self) -> Self {
        self.status = None;
        self.failure = true;
        self
    }

    pub fn stdout_is(mut self, expected: impl Into<String>) -> Self {
        self.stdout_is = Some(expected.into());
        self
    }

    pub fn stdout_contains(mut self, needle: impl Into<String>) -> Self {
        self.stdout_contains.push(needle.into());
        self
    }

    pub fn stderr_is(mut self, expected: impl Into<String>) -> Self {
        self.stderr_is = Some(expected.into());
        self
    }

    pub fn stderr_starts_with(mut self, prefix: impl Into<String>) -> Self {
        self.stderr_starts_with = Some(prefix.into());
        self
    }

    pub fn stderr_contains(mut self, needle: impl Into<String>) -> Self {
        self.stderr_contains.push(needle.into());
        self
    }

    pub fn stderr_lacks(mut self, needle: impl Into<String>) -> Self {
        self.stderr_lacks.push(needle.into());
        self
    }

    /// Neither stdout nor stderr contains `needle` (a credential, say).
    pub fn output_lacks(mut self, needle: impl Into<String>) -> Self {
        self.output_lacks.push(needle.into());
        self
    }

    pub fn stderr_lines(mut self, count: usize) -> Self {
        self.stderr_lines = Some(count);
        self
    }

    /// The house error shape: stderr is one line that starts with `error: `
    /// and contains `message`, and nothing panicked.
    pub fn one_line_error(mut self, message: impl Into<String>) -> Self {
        self.one_line_error = true;
        self.stderr_contains(message)
    }

    /// The [`TOUCH_RAN`] program must not have run (by the end of this run).
    pub fn program_did_not_run(mut self) -> Self {
        self.program_ran = Some(false);
        self
    }

    /// The [`TOUCH_RAN`] program must have run.
    pub fn program_ran(mut self) -> Self {
        self.program_ran = Some(true);
        self
    }

    /// The lock directory must not exist afterwards: the input was refused
    /// before anything was created.
    pub fn lock_dir_untouched(mut self) -> Self {
        self.lock_dir_untouched = true;
        self
    }

    fn command_line(&self) -> Vec<OsString> {
        let mut line = self.args.clone();
        if let Some(program) = &self.program {
            line.push("--".into());
            line.extend(program.iter().cloned());
        }
        line
    }

    /// The command as configured, for what the builder does not cover
    /// (`pre_exec`, wrapping it in another program).
    pub fn to_command(&self) -> Command {
        let mut command = self.env.ec_launch();
        if let Some(script) = &self.shell {
            let direct = command;
            command = Command::new("sh");
            command.args(["-c", script, "sh", BIN]);
            command.current_dir(self.env.dir.path());
            for (name, value) in direct.get_envs() {
                match value {
                    Some(value) => command.env(name, value),
                    None => command.env_remove(name),
                };
            }
        }
        command.args(self.command_line());
        for (name, value) in &self.vars {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        if let Some(id) = self.uid {
            command.uid(id).gid(id);
        }
        command
    }

    /// Starts it in the background (stdin and stdout null, stderr piped);
    /// expectations do not apply, so none may have been set.
    #[track_caller]
    pub fn spawn(self) -> Guard {
        assert!(
            self.status == Some(0)
                && !self.failure
                && self.stdout_is.is_none()
                && self.stdout_contains.is_empty()
                && self.stderr_is.is_none()
                && self.stderr_starts_with.is_none()
                && self.stderr_contains.is_empty()
                && self.stderr_lacks.is_empty()
                && self.output_lacks.is_empty()
                && self.stderr_lines.is_none()
                && self.program_ran.is_none()
                && !self.lock_dir_untouched,
            "spawn() checks nothing: use run(), or check the Guard's outcome"
        );
        Guard::spawn(&mut self.to_command())
    }

    /// The first expectation `outcome` does not meet, in words.
    fn first_failure(&self, outcome: &Outcome, marker: &Path) -> Option<String> {
        if let Some(code) = self.status
            && outcome.code != Some(code)
        {
            return Some(format!("expected status {code}, got {:?}", outcome.code));
        }
        if self.failure && outcome.code == Some(0) {
            return Some("expected a failure, got status 0".into());
        }
        if let Some(expected) = &self.stdout_is
            && &outcome.stdout != expected
        {
            return Some(format!("expected stdout {expected:?}"));
        }
        for needle in &self.stdout_contains {
            if !outcome.stdout.contains(needle.as_str()) {
                return Some(format!("stdout lacks {needle:?}"));
            }
        }
        if let Some(expected) = &self.stderr_is
            && &outcome.stderr != expected
        {
            return Some(format!("expected stderr {expected:?}"));
        }
        if let Some(prefix) = &self.stderr_starts_with
            && !outcome.stderr.starts_with(prefix.as_str())
        {
            return Some(format!("stderr does not start with {prefix:?}"));
        }
        for needle in &self.stderr_contains {
            if !outcome.stderr.contains(needle.as_str()) {
                return Some(format!("stderr lacks {needle:?}"));
            }
        }
        for needle in &self.stderr_lacks {
            if outcome.stderr.contains(needle.as_str()) {
                return Some(format!("stderr contains {needle:?}"));
            }
        }
        for needle in &self.output_lacks {
            if outcome.stdout.contains(needle.as_str()) || outcome.stderr.contains(needle.as_str())
            {
                return Some(format!("the output contains {needle:?}"));
            }
        }
        if let Some(count) = self.stderr_lines
            && outcome.stderr.lines().count() != count
        {
            return Some(format!("expected {count} stderr line(s)"));
        }
        if self.one_line_error
            && (!outcome.stderr.starts_with("error: ")
                || outcome.stderr.lines().count() != 1
                || outcome.stderr.contains("panicked"))
        {
            return Some("expected one line starting with `error: ` and no panic".into());
        }
        match self.program_ran {
            Some(true) if !marker.exists() => return Some("the program did not run".into()),
            Some(false) if marker.exists() => return Some("the program ran".into()),
            _ => {}
        }
        if self.lock_dir_untouched && self.env.lock_dir().exists() {
            return Some("the lock directory was created".into());
        }
        None
    }

    /// Runs it to the end and checks every expectation.
    #[track_caller]
    pub fn run(mut self) -> Outcome {
        let marker = self.env.path("ran");
        if self.program_ran.is_some() {
            let program: Vec<OsString> = TOUCH_RAN.iter().map(OsString::from).collect();
            assert_eq!(
                self.program.as_ref(),
                Some(&program),
                "program_ran/program_did_not_run need the TOUCH_RAN program"
            );
            assert!(!marker.exists(), "`ran` exists before the launch");
        }
        let mut command = self.to_command();
        if let Some(file) = self.stderr_file.take() {
            command.stderr(file);
        }
        let output = command.output().expect("run ec-launch");
        let outcome = Outcome {
            command: format!("ec-launch {:?}", self.command_line()),
            code: output.status.code(),
            stdout: text(&output.stdout),
            stderr: text(&output.stderr),
        };
        // Panic here, not in a helper or closure, so that `track_caller`
        // points at the test's line.
        if let Some(what) = self.first_failure(&outcome, &marker) {
            match &self.label {
                Some(label) => panic!("{label}: {what}\n{}", outcome.describe()),
                None => panic!("{what}\n{}", outcome.describe()),
            }
        }
        outcome
    }
}

/// What an invocation did: its status and its output as text.
#[derive(Debug)]
pub struct Outcome {
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Command line, status, stdout and stderr, for assertion messages.
    #[must_use]
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus {:?}\nstdout: {}\nstderr: {}",
            self.command, self.code, self.stdout, self.stderr
        )
    }

    /// Stdout parsed as JSON.
    #[track_caller]
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.describe()))
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
    kernel_locks_on(metadata.dev(), metadata.ino())
}

/// The FLOCK rows of `/proc/locks` on a device and inode.
#[must_use]
pub fn kernel_locks_on(dev: u64, ino: u64) -> Vec<KernelLock> {
    let wanted = format!(
        "{:02x}:{:02x}:{ino}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    let table = fs::read_to_string("/proc/locks").expect("read /proc/locks");
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let waiting = fields.get(1) == Some(&"->");
            let rest = if waiting { &fields[2..] } else { &fields[1..] };
            (rest.first() == Some(&"FLOCK") && rest.get(4) == Some(&wanted.as_str())).then(|| {
                KernelLock {
                    pid: rest[3].parse().unwrap_or(0),
                    waiting,
                }
            })
        })
        .collect()
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

#[must_use]
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Ends the calling test early, saying so, when it needs root and this is a
/// non-root run that may skip it (see `tests/common/privilege.rs`); as root,
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

/// The builder's own checks: an expectation that does not hold must fail the
/// test, at the caller, saying what was expected and showing the outcome.
mod builder_checks {
    use super::{BUSY, TestEnv};

    const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";

    /// Runs `check` and returns its panic message; panics if it passed.
    fn failure_of(check: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let payload = std::panic::catch_unwind(check).expect_err("the check passed");
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default()
    }

    #[test]
    fn a_wrong_status_fails_and_shows_the_command_status_and_stderr() {
        let env = TestEnv::new();
        let message = failure_of(|| {
            env.launch("not-a-url").run();
        });
        assert!(
            message.contains("expected status 0, got Some(65)"),
            "{message}"
        );
        assert!(message.contains("not-a-url"), "{message}");
        assert!(message.contains("stderr: error: "), "{message}");
    }

    #[test]
    fn a_program_that_ran_fails_program_did_not_run_and_one_that_did_not_fails_program_ran() {
        let env = TestEnv::new();
        let message = failure_of(|| {
            env.launch(SOURCE).program_did_not_run().run();
        });
        assert!(message.contains("the program ran"), "{message}");
        let message = failure_of(|| {
            env.launch("not-a-url")
                .expect_status(65)
                .program_ran()
                .run();
        });
        assert!(
            message.contains("`ran` exists before the launch"),
            "{message}"
        );
        std::fs::remove_file(env.path("ran")).unwrap();
        let message = failure_of(|| {
            env.launch("not-a-url")
                .expect_status(65)
                .program_ran()
                .run();
        });
        assert!(message.contains("the program did not run"), "{message}");
    }

    #[test]
    fn each_output_expectation_fails_when_it_does_not_hold() {
        let env = TestEnv::new();
        let echo = || env.launch(SOURCE).program(["echo", "out"]);
        let failures = [
            failure_of(|| drop(echo().stdout_is("other\n").run())),
            failure_of(|| drop(echo().stdout_contains("absent").run())),
            failure_of(|| drop(echo().stderr_is("x").run())),
            failure_of(|| drop(echo().stderr_contains("absent").run())),
            failure_of(|| drop(echo().stderr_starts_with("error: ").run())),
            failure_of(|| drop(echo().args(["-v"]).stderr_lacks("acquired").run())),
            failure_of(|| drop(echo().output_lacks("out").run())),
            failure_of(|| drop(echo().stderr_lines(2).run())),
            failure_of(|| drop(echo().one_line_error("").run())),
            failure_of(|| drop(echo().expect_status(BUSY).run())),
            failure_of(|| drop(echo().lock_dir_untouched().run())),
            failure_of(|| drop(echo().label("case 7").expect_status(1).run())),
        ];
        for message in &failures {
            assert!(message.contains("stdout: out"), "{message}");
        }
        assert!(failures[11].starts_with("case 7: "), "{}", failures[11]);
    }
}
