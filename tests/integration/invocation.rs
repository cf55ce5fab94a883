//! One `ec-launch` invocation in a test, stated as what must be true of it:
//! `env.launch(SOURCE).args([...]).expect_status(75).stderr_contains("…")
//! .program_did_not_run().run()`. The exit status is always checked (0 unless
//! said otherwise), and a failed expectation panics at the test's own line
//! with the command line, status, stdout and stderr. Tests then say what they
//! check, and every launch is checked, and described on failure, the same way.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::testenv::{BIN, Guard, TestEnv, text};

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

    /// `ec-launch key --lock-dir <env> SOURCE`, like `launch`.
    pub fn key(&self, source: impl AsRef<OsStr>) -> Invocation<'_> {
        self.command(["key", "--lock-dir"])
            .arg(self.lock_dir())
            .arg(source)
    }

    /// `ec-launch status --lock-dir <env> [args…]`, like `launch`.
    pub fn status(&self) -> Invocation<'_> {
        self.command(["status", "--lock-dir"]).arg(self.lock_dir())
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
            binary: None,
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
    binary: Option<OsString>,
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

    /// Unsets a variable (one the test's own environment may carry, or one
    /// an earlier `env` set).
    pub fn env_remove(mut self, name: impl AsRef<OsStr>) -> Self {
        self.vars.push((name.as_ref().to_owned(), None));
        self
    }

    /// Runs the executable at `path` instead of the built `ec-launch` (a
    /// copy of it elsewhere, or `ec-launch-cluster` directly).
    pub fn binary(mut self, path: impl AsRef<OsStr>) -> Self {
        self.binary = Some(path.as_ref().to_owned());
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
        let binary = self.binary.as_deref().unwrap_or(OsStr::new(BIN));
        let mut command = self.env.executable(binary);
        if let Some(script) = &self.shell {
            let direct = command;
            command = Command::new("sh");
            command.args(["-c", script, "sh"]).arg(binary);
            command.current_dir(self.env.path(""));
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
    pub fn spawn(mut self) -> Guard {
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
        let mut command = self.to_command();
        match self.stderr_file.take() {
            // Its log in a file the test reads while it runs.
            Some(file) => Guard(
                command
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(file)
                    .spawn()
                    .expect("spawn"),
            ),
            None => Guard::spawn(&mut command),
        }
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

/// The builder's own checks: an expectation that does not hold must fail the
/// test, at the caller, saying what was expected and showing the outcome.
mod builder_checks {
    use crate::testenv::{BUSY, TestEnv};

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
