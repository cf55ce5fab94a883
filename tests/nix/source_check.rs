//! The module's build-time source check (`nixos/check-sources.sh`), run as
//! the check derivation runs it: `sh`, the script, the built `ec-launch`, a
//! lock directory, and one group of (option path, onBusy, source, lockKey)
//! per unit. The derivation itself needs nixpkgs and cannot be built here;
//! `tests/nix/eval.nix` checks that the module passes it these arguments.
//!
//! Like the build sandbox, these tests have no tuner and no device: every
//! source below is unreachable, and the device paths do not exist.

use std::path::PathBuf;
use std::process::{Command, Output};

const SCRIPT: &str = "nixos/check-sources.sh";
const LOCK_DIR: &str = "/run/every-channel/source-locks";
const PASSWORD: &str = "hunter2";

/// One run of the check, built up unit by unit.
#[must_use]
struct SourceCheck {
    args: Vec<String>,
}

/// What the check printed and how it exited.
struct Report {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl SourceCheck {
    fn new() -> Self {
        Self {
            args: vec![env!("CARGO_BIN_EXE_ec-launch").into(), LOCK_DIR.into()],
        }
    }

    /// A publisher named `name`; `source` and `lock_key` empty when unset.
    fn publisher(mut self, name: &str, on_busy: &str, source: &str, lock_key: &str) -> Self {
        self.args.extend([
            format!("services.every-channel.publishers.{name}"),
            on_busy.into(),
            source.into(),
            lock_key.into(),
        ]);
        self
    }

    fn raw(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    #[track_caller]
    fn run(self) -> Report {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(SCRIPT);
        let Output {
            status,
            stdout,
            stderr,
        } = Command::new("sh")
            .arg(&script)
            .args(&self.args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run sh {}: {e}", script.display()));
        Report {
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

impl Report {
    #[track_caller]
    fn exits(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "exit status\nstdout:\n{}stderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// The one stdout line starting with `prefix` (`error:`, `note:`).
    #[track_caller]
    fn line(&self, prefix: &str) -> &str {
        let lines: Vec<&str> = self
            .stdout
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "want one {prefix:?} line; stdout:\n{}",
            self.stdout
        );
        lines[0]
    }

    #[track_caller]
    fn has_no(&self, prefix: &str) -> &Self {
        assert!(
            !self.stdout.lines().any(|l| l.starts_with(prefix)),
            "want no {prefix:?} line; stdout:\n{}",
            self.stdout
        );
        self
    }
}

#[track_caller]
fn assert_names(line: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            line.contains(needle),
            "{line:?} does not mention {needle:?}"
        );
    }
}

#[test]
fn two_skip_units_on_one_source_fail_naming_both_option_paths() {
    // Two spellings of one HDHomeRun channel: one key.
    let report = SourceCheck::new()
        .publisher("a", "skip", "http://10.0.0.5:5004/auto/v5.1", "")
        .publisher("b", "skip", "http://10.0.0.5:5004/tuner1/v5.1", "")
        .publisher("other", "skip", "http://10.0.0.5:5004/auto/v7.1", "")
        .run();
    let error = report.exits(1).line("error:");
    assert_names(
        error,
        &[
            "services.every-channel.publishers.a and services.every-channel.publishers.b",
            "hdhomerun://10.0.0.5/v5.1",
            "onBusy = \"wait\"",
        ],
    );
    assert!(!error.contains("publishers.other"), "{error}");
}

#[test]
fn a_unit_waiting_on_a_skip_units_source_is_a_standby_note() {
    let report = SourceCheck::new()
        .publisher("main", "skip", "http://10.0.0.5:5004/auto/v5.1", "")
        .publisher("standby", "wait", "http://10.0.0.5:5004/auto/v5.1", "")
        .run();
    let note = report.exits(0).has_no("error:").line("note:");
    assert_names(
        note,
        &[
            "publishers.main runs it",
            "publishers.standby waits as a standby",
        ],
    );
}

#[test]
fn units_on_different_sources_pass_without_notes() {
    SourceCheck::new()
        .publisher("a", "skip", "http://10.0.0.5:5004/auto/v5.1", "")
        .publisher("b", "skip", "rtsp://cam.local:554/stream1", "")
        .run()
        .exits(0)
        .has_no("error:")
        .has_no("note:")
        .line("ok:");
}

#[test]
fn a_lock_key_is_compared_with_the_keys_the_launcher_derives() {
    // b names a's derived key by hand: one lock file, so one source.
    let report = SourceCheck::new()
        .publisher("a", "skip", "http://10.0.0.5:5004/auto/v5.1", "")
        .publisher(
            "b",
            "skip",
            "rtsp://cam.local/x",
            " hdhomerun://10.0.0.5/v5.1 ",
        )
        .run();
    assert_names(
        report.exits(1).line("error:"),
        &["publishers.a and services.every-channel.publishers.b"],
    );

    // A lock key moves a unit off the source's derived key.
    SourceCheck::new()
        .publisher("a", "skip", "http://10.0.0.5:5004/auto/v5.1", "studio-a")
        .publisher("b", "skip", "http://10.0.0.5:5004/auto/v5.1", "")
        .run()
        .exits(0)
        .has_no("error:");
}

#[test]
fn keys_with_backslashes_are_compared_and_printed_as_they_are() {
    // JSON escapes in `ec-launch key --json` are decoded, and no shell
    // escape processing touches the key on the way out.
    let key = r"rtsp://cam.local/a\b\n";
    let report = SourceCheck::new()
        .publisher("a", "skip", key, "")
        .publisher("b", "skip", "", key)
        .run();
    assert_names(
        report.exits(1).line("error:"),
        &["publishers.a and services.every-channel.publishers.b", key],
    );
}

#[test]
fn device_sources_are_compared_by_path_without_the_device() {
    let device = "/dev/ec-launch-test-no-such-video0";
    let report = SourceCheck::new()
        .publisher("a", "skip", device, "")
        .publisher("b", "skip", &format!("file://{device}"), "")
        .run();
    assert_names(
        report.exits(1).line("error:"),
        &[
            "publishers.a and services.every-channel.publishers.b",
            device,
        ],
    );
    assert!(
        report
            .stdout
            .lines()
            .filter(|l| l.starts_with("note:") && l.contains("compared by its path"))
            .count()
            == 2,
        "each device source is noted as compared by path:\n{}",
        report.stdout
    );
}

#[test]
fn source_file_units_are_noted_and_not_compared_unless_they_have_a_lock_key() {
    let report = SourceCheck::new()
        .publisher("x", "skip", "", "")
        .publisher("y", "skip", "", "")
        .run();
    report.exits(0).has_no("error:");
    assert_eq!(
        report
            .stdout
            .lines()
            .filter(|l| l.starts_with("note:") && l.contains("sourceFile"))
            .count(),
        2,
        "{}",
        report.stdout
    );

    assert_names(
        SourceCheck::new()
            .publisher("x", "skip", "", "tuner-1")
            .publisher("y", "skip", "", "tuner-1")
            .run()
            .exits(1)
            .line("error:"),
        &[
            "publishers.x and services.every-channel.publishers.y",
            "tuner-1",
        ],
    );
}

#[test]
fn credentials_in_sources_never_reach_the_report() {
    let report = SourceCheck::new()
        .publisher(
            "a",
            "skip",
            &format!("http://admin:{PASSWORD}@10.0.0.5:5004/auto/v5.1"),
            "",
        )
        .publisher(
            "b",
            "skip",
            &format!("http://10.0.0.5:5004/auto/v5.1?token={PASSWORD}"),
            "",
        )
        .publisher("bad", "wait", &format!("not a url?password={PASSWORD}"), "")
        .run();
    report.exits(1);
    assert_eq!(
        report
            .stdout
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        2,
        "{}",
        report.stdout
    );
    assert!(
        report
            .stdout
            .contains("publishers.bad.source: ec-launch cannot derive its key"),
        "{}",
        report.stdout
    );
    for output in [&report.stdout, &report.stderr] {
        assert!(!output.contains(PASSWORD), "a credential leaked:\n{output}");
    }
}

#[test]
fn malformed_arguments_exit_2() {
    SourceCheck::new()
        .raw("services.every-channel.publishers.a")
        .run()
        .exits(2);
    SourceCheck::new()
        .publisher("a", "sometimes", "http://10.0.0.5:5004/auto/v5.1", "")
        .run()
        .exits(2);
}
