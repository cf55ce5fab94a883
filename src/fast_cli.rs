//! The common local launch, parsed without building clap's command tree
//! (ECP-0138, decision 3): `ec-launch [-v] run [--lock-dir DIR]
//! (--source URL | --source-file PATH) [--key KEY] [--on-busy skip|wait]
//! [--wait-timeout SECS] [--busy-exit-code N] [--progress-watchdog]
//! [--reclaim-escaped] [--priority N] [--preempt-grace SECS] -- PROGRAM
//! [ARGS]`, the line the NixOS module writes for a local unit.
//!
//! It is an optimisation, never a second grammar: it answers only for a
//! command line it fully understands, and then with exactly the [`Cli`]
//! clap would make of it (a property test holds it to that); for anything
//! else, including every line clap would refuse, every other flag and
//! subcommand (`--progress-window`, `--placement` and `--node-weight` are
//! cluster mode's), and any variable clap reads for `run` but
//! `EC_LAUNCH_LOCK_DIR` (`EC_LAUNCH_ETCD*`, `EC_LAUNCH_NODE*`,
//! `EC_LAUNCH_PRIORITY`, …), it returns `None` and clap decides, with its
//! own messages.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{
    Cli, ClusterArgs, Command, EtcdArgs, OnBusy, RunArgs, default_lock_dir, parse_busy_exit_code,
    parse_lock_dir, parse_seconds,
};
use crate::exit_code::DEFAULT_BUSY;
use crate::priority::{DEFAULT_PREEMPT_GRACE, PRIORITY_ENV};

/// clap's defaults for `--etcd-ttl` and `--etcd-stop-grace`, which a
/// local launch carries unused.
const DEFAULT_TTL: Duration = Duration::from_secs(10);
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(2);

/// The parsed command line, when it is a local `run` this parser fully
/// understands; `None` sends it to clap.
pub fn parse(args: &[OsString]) -> Option<Cli> {
    if deferred_environment() {
        return None;
    }
    let mut verbose: u8 = 0;
    let mut rest = args.iter().skip(1);
    loop {
        match rest.next()?.as_bytes() {
            b"run" => break,
            flag => verbose = verbose.checked_add(verbosity(flag)?)?,
        }
    }
    let mut run = Given::default();
    loop {
        let arg = rest.next()?;
        let bytes = arg.as_bytes();
        if bytes == b"--" {
            break;
        }
        if let Some(count) = verbosity(bytes) {
            verbose = verbose.checked_add(count)?;
            continue;
        }
        if bytes == b"--progress-watchdog" || bytes == b"--reclaim-escaped" {
            let flag = if bytes == b"--progress-watchdog" {
                &mut run.progress_watchdog
            } else {
                &mut run.reclaim_escaped
            };
            // clap refuses a flag given twice.
            if *flag {
                return None;
            }
            *flag = true;
            continue;
        }
        let (name, value) = match bytes.iter().position(|&b| b == b'=') {
            Some(at) => (&bytes[..at], OsStr::from_bytes(&bytes[at + 1..]).to_owned()),
            None => (bytes, rest.next()?.clone()),
        };
        // clap reads a following `-…` as a flag, and an empty value may
        // be refused: both are clap's to answer.
        if value.is_empty() || value.as_bytes().starts_with(b"-") {
            return None;
        }
        let slot = match name {
            b"--lock-dir" => &mut run.lock_dir,
            b"--source" => &mut run.source,
            b"--source-file" => &mut run.source_file,
            b"--key" => &mut run.key,
            b"--on-busy" => &mut run.on_busy,
            b"--wait-timeout" => &mut run.wait_timeout,
            b"--busy-exit-code" => &mut run.busy_exit_code,
            b"--priority" => &mut run.priority,
            b"--preempt-grace" => &mut run.preempt_grace,
            _ => return None,
        };
        if slot.replace(value).is_some() {
            return None;
        }
    }
    let command: Vec<OsString> = rest.cloned().collect();
    if command.is_empty() {
        return None;
    }
    Some(Cli {
        command: Command::Run(run.into_args(command)?),
        verbose,
    })
}

/// `-v`, `-vv`, … or `--verbose`: how many levels; `None` for anything else.
fn verbosity(arg: &[u8]) -> Option<u8> {
    if arg == b"--verbose" {
        return Some(1);
    }
    let vs = arg.strip_prefix(b"-")?;
    (!vs.is_empty() && vs.iter().all(|&b| b == b'v')).then(|| u8::try_from(vs.len()).ok())?
}

/// The variables clap reads for `run`'s flags but `--lock-dir`'s: the
/// cluster flags (`cli::EtcdArgs`, `cli::ClusterArgs`) and the priority
/// flags (ECP-0139). A unit sets them rarely (the module passes flags).
const DEFERRED_VARIABLES: [&str; 13] = [
    "EC_LAUNCH_ETCD",
    "EC_LAUNCH_ETCD_CA",
    "EC_LAUNCH_ETCD_CERT",
    "EC_LAUNCH_ETCD_KEY",
    "EC_LAUNCH_ETCD_USER_FILE",
    "EC_LAUNCH_NODE",
    "EC_LAUNCH_ETCD_TTL",
    "EC_LAUNCH_ETCD_STOP_GRACE",
    "EC_LAUNCH_PLACEMENT",
    "EC_LAUNCH_NODE_WEIGHT",
    PRIORITY_ENV,
    "EC_LAUNCH_PREEMPT_GRACE",
    "EC_LAUNCH_RECLAIM_ESCAPED",
];

/// Whether a variable clap reads for `run` is set (then clap parses, and
/// the cluster executable or the stray-option check decides). Thirteen
/// look-ups, not a copy of the whole environment.
fn deferred_environment() -> bool {
    DEFERRED_VARIABLES
        .iter()
        .any(|name| std::env::var_os(name).is_some())
}

/// The flags as given, before clap's value parsers.
#[derive(Default)]
struct Given {
    lock_dir: Option<OsString>,
    source: Option<OsString>,
    source_file: Option<OsString>,
    key: Option<OsString>,
    on_busy: Option<OsString>,
    wait_timeout: Option<OsString>,
    busy_exit_code: Option<OsString>,
    priority: Option<OsString>,
    preempt_grace: Option<OsString>,
    progress_watchdog: bool,
    reclaim_escaped: bool,
}

impl Given {
    /// The arguments as clap would type them; `None` wherever clap would
    /// refuse them (its message is the one to print).
    fn into_args(self, command: Vec<OsString>) -> Option<RunArgs> {
        let text = |value: Option<OsString>| value.map(OsString::into_string).transpose().ok();
        // clap requires exactly one of the two.
        if self.source.is_some() == self.source_file.is_some() {
            return None;
        }
        let lock_dir =
            parse_lock_dir(self.lock_dir.unwrap_or_else(|| default_lock_dir().into())).ok()?;
        let on_busy = match text(self.on_busy)?.as_deref() {
            None | Some("skip") => OnBusy::Skip,
            Some("wait") => OnBusy::Wait,
            Some(_) => return None,
        };
        let wait_timeout = match text(self.wait_timeout)? {
            Some(text) => Some(parse_seconds(&text).ok()?),
            None => None,
        };
        let busy_exit_code = match text(self.busy_exit_code)? {
            Some(text) => parse_busy_exit_code(&text).ok()?,
            None => DEFAULT_BUSY,
        };
        // clap keeps `--priority` as text (`run` validates it, 64).
        let preempt_grace = parse_seconds(
            text(self.preempt_grace)?
                .as_deref()
                .unwrap_or(DEFAULT_PREEMPT_GRACE),
        )
        .ok()?;
        Some(RunArgs {
            lock_dir,
            key: text(self.key)?,
            on_busy,
            wait_timeout,
            busy_exit_code,
            tuners: None,
            device: None,
            source: text(self.source)?,
            source_file: self.source_file.map(PathBuf::from),
            cluster: ClusterArgs {
                etcd: EtcdArgs {
                    endpoints: Vec::new(),
                    etcd_ca: None,
                    etcd_cert: None,
                    etcd_key: None,
                    etcd_user_file: None,
                    node: None,
                },
                etcd_ttl: DEFAULT_TTL,
                etcd_stop_grace: DEFAULT_STOP_GRACE,
                placement: None,
                node_weight: None,
            },
            progress_watchdog: self.progress_watchdog,
            priority: text(self.priority)?,
            preempt_grace,
            reclaim_escaped: self.reclaim_escaped,
            progress_window: None,
            command,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use proptest::prelude::*;

    use super::*;

    fn line(words: &[&str]) -> Vec<OsString> {
        std::iter::once("ec-launch")
            .chain(words.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// clap's answer, as the fast path's is compared with it.
    fn clap(args: &[OsString]) -> Option<String> {
        Cli::try_parse_from(args).ok().map(|cli| format!("{cli:?}"))
    }

    #[test]
    fn every_variable_clap_reads_for_run_is_one_the_fast_path_defers_on() {
        let command = <Cli as clap::CommandFactory>::command();
        let run = command.find_subcommand("run").expect("run");
        let read: Vec<String> = run
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|name| name.to_string_lossy().into_owned())
            .filter(|name| name != "EC_LAUNCH_LOCK_DIR")
            .collect();
        let mut read = read;
        read.sort();
        let mut deferred: Vec<String> = DEFERRED_VARIABLES.iter().map(|&n| n.to_owned()).collect();
        deferred.sort();
        assert_eq!(read, deferred);
    }

    #[test]
    fn the_modules_local_launch_is_taken_on_the_fast_path_as_clap_takes_it() {
        let args = line(&[
            "run",
            "--lock-dir",
            "/run/every-channel/source-locks",
            "--source-file",
            "/run/credentials/x.service/source",
            "--on-busy",
            "wait",
            "--wait-timeout=2.5",
            "--busy-exit-code",
            "0",
            "--reclaim-escaped",
            "--priority",
            "300",
            "--preempt-grace=2",
            "-vv",
            "--",
            "ec-node",
            "--in",
            "{source}",
        ]);
        let fast = parse(&args).expect("understood");
        assert_eq!(Some(format!("{fast:?}")), clap(&args));
    }

    #[test]
    fn what_the_fast_path_does_not_fully_understand_goes_to_clap() {
        for words in [
            &["run", "--source", "s", "--tuners", "2", "--", "p"][..],
            &["run", "--source", "s", "--etcd", "http://e", "--", "p"],
            &["run", "--source", "s"],
            &["run", "--source", "s", "--"],
            &["run", "--source", "s", "--source", "t", "--", "p"],
            &["run", "--source", "-s", "--", "p"],
            &["run", "--source", "", "--", "p"],
            &["run", "--source", "s", "--source-file", "f", "--", "p"],
            &["run", "--source", "s", "--on-busy", "Wait", "--", "p"],
            &["run", "--source", "s", "--busy-exit-code", "64", "--", "p"],
            &[
                "run",
                "--source",
                "s",
                "--reclaim-escaped",
                "--reclaim-escaped",
                "--",
                "p",
            ],
            &["run", "--source", "s", "--preempt-grace", "soon", "--", "p"],
            &[
                "run",
                "--source",
                "s",
                "--progress-watchdog",
                "--progress-window",
                "5",
                "--",
                "p",
            ],
            &["run", "--source", "s", "--placement", "spread", "--", "p"],
            &["run", "--source", "s", "--node-weight", "2", "--", "p"],
            &["run", "--help"],
            &["key", "s"],
            &["status"],
        ] {
            assert!(parse(&line(words)).is_none(), "{words:?}");
        }
    }

    /// Words a command line is made of: every flag the fast path knows,
    /// some it does not, values good and bad, and the separator.
    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("run".to_owned()),
            Just("--".to_owned()),
            Just("-v".to_owned()),
            Just("-vv".to_owned()),
            Just("--verbose".to_owned()),
            Just("--lock-dir".to_owned()),
            Just("--source".to_owned()),
            Just("--source-file".to_owned()),
            Just("--key".to_owned()),
            Just("--on-busy".to_owned()),
            Just("--wait-timeout".to_owned()),
            Just("--busy-exit-code".to_owned()),
            Just("--progress-watchdog".to_owned()),
            Just("--reclaim-escaped".to_owned()),
            Just("--priority".to_owned()),
            Just("--preempt-grace".to_owned()),
            Just("--progress-window".to_owned()),
            Just("--placement".to_owned()),
            Just("--node-weight".to_owned()),
            Just("spread".to_owned()),
            Just("1001".to_owned()),
            Just("--tuners".to_owned()),
            Just("--help".to_owned()),
            Just("skip".to_owned()),
            Just("wait".to_owned()),
            Just("2.5".to_owned()),
            Just("-1".to_owned()),
            Just("0".to_owned()),
            Just("75".to_owned()),
            Just("64".to_owned()),
            Just(String::new()),
            "--(lock-dir|source|key|on-busy|wait-timeout|busy-exit-code|priority|preempt-grace|progress-window|placement|node-weight)=[a-z0-9./-]{0,6}",
            "[a-z0-9./:{}]{1,8}",
            "-[a-z]{1,3}",
        ]
    }

    /// One option as the module or an operator would write it, its value
    /// usually good and sometimes not, in `--flag value` or `--flag=value`.
    fn option() -> impl Strategy<Value = Vec<String>> {
        let value = |flag: &'static str, values: Vec<&'static str>| {
            (prop::sample::select(values), any::<bool>()).prop_map(move |(value, joined)| {
                if joined {
                    vec![format!("{flag}={value}")]
                } else {
                    vec![flag.to_owned(), value.to_owned()]
                }
            })
        };
        prop_oneof![
            value(
                "--lock-dir",
                vec!["/run/l", "locks", "", "-x", "/run/\u{e9}"]
            ),
            value(
                "--source",
                vec!["http://10.0.0.5:5004/auto/v5.1", "/dev/dvb0", "", "-s"]
            ),
            value("--source-file", vec!["/run/credentials/u/source", "f"]),
            value("--key", vec!["tuner-a", "k=v", ""]),
            value("--on-busy", vec!["skip", "wait", "Wait", "later"]),
            value(
                "--wait-timeout",
                vec!["30", "2.5", "0", "-1", "soon", " 3 "]
            ),
            value("--busy-exit-code", vec!["0", "75", "9", "64", "256", "x"]),
            value("--tuners", vec!["2", "auto"]),
            value(
                "--priority",
                vec!["0", "100", "300", "1000", "1001", "x", " 7"]
            ),
            value("--preempt-grace", vec!["5", "0.5", "0", "-1", "later"]),
            value("--progress-window", vec!["30", "2.5", "x"]),
            value("--placement", vec!["spread", "first", "wide"]),
            value("--node-weight", vec!["1", "2", "0", "1001"]),
            Just(vec!["--progress-watchdog".to_owned()]),
            Just(vec!["--reclaim-escaped".to_owned()]),
            Just(vec!["-v".to_owned()]),
            Just(vec!["-vv".to_owned()]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Lines shaped like real launches (most of which the fast path
        /// takes): whatever it accepts, clap accepts as the same `Cli`.
        #[test]
        fn the_fast_path_agrees_with_clap_on_launch_shaped_lines(
            source in prop::sample::select(vec!["--source", "--source-file"]),
            options in prop::collection::vec(option(), 0..6).prop_shuffle(),
            program in prop::collection::vec(word(), 1..3),
        ) {
            let mut words = vec!["run".to_owned(), source.to_owned(), "s".to_owned()];
            words.extend(options.into_iter().flatten());
            words.push("--".to_owned());
            words.extend(program);
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let args = line(&words);
            if let Some(fast) = parse(&args) {
                prop_assert_eq!(Some(format!("{fast:?}")), clap(&args), "{:?}", words);
            }
        }

        /// Whatever the fast path accepts, clap accepts as the same `Cli`.
        #[test]
        fn the_fast_path_agrees_with_clap_on_every_line_it_accepts(
            prefix in prop::collection::vec(word(), 0..12),
            program in prop::collection::vec(word(), 0..3),
        ) {
            let mut words = vec!["run".to_owned()];
            words.extend(prefix);
            words.push("--".to_owned());
            words.extend(program);
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let args = line(&words);
            if let Some(fast) = parse(&args) {
                prop_assert_eq!(Some(format!("{fast:?}")), clap(&args), "{:?}", words);
            }
        }

        /// The same for lines that need not start with `run` or hold `--`.
        #[test]
        fn the_fast_path_agrees_with_clap_on_any_word_sequence(
            words in prop::collection::vec(word(), 0..14),
        ) {
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let args = line(&words);
            if let Some(fast) = parse(&args) {
                prop_assert_eq!(Some(format!("{fast:?}")), clap(&args), "{:?}", words);
            }
        }
    }
}
