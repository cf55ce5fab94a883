//! The command line as parsed, before validation (see `command::*` for the
//! settings the program acts on). Names here are a contract: operators'
//! scripts and the NixOS module use them.

// Doc comments here are `--help` text, where Markdown backticks would show.
#![allow(clippy::doc_markdown)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// Where lock files live unless `--lock-dir` or `EC_LAUNCH_LOCK_DIR` says otherwise.
const DEFAULT_LOCK_DIR: &str = "/run/every-channel/source-locks";
/// The variable that overrides [`DEFAULT_LOCK_DIR`].
const LOCK_DIR_ENV: &str = "EC_LAUNCH_LOCK_DIR";

#[derive(Debug, Parser)]
#[command(
    name = "ec-launch",
    version,
    about = "Run one reader per source per node: take the source's lock, then exec the program",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// More diagnostics on stderr (-v debug, -vv trace); EC_LAUNCH_LOG overrides
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take the source's lock and exec PROGRAM holding it; skip or wait if held
    Run(RunArgs),
    /// Print a source's canonical key and lock file path
    Key(KeyArgs),
    /// Show who holds which source, from the kernel's lock table
    Status(StatusArgs),
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): ec-launch man > ec-launch.1; man ./ec-launch.1
    Man,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnBusy {
    /// Exit at once with the busy code
    Skip,
    /// Block until the holder lets go (bounded by --wait-timeout)
    Wait,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory holding the lock files [default: $EC_LAUNCH_LOCK_DIR, else /run/every-channel/source-locks]
    #[arg(long, value_name = "DIR", value_parser = lock_dir_parser(), default_value_os_t = default_lock_dir(), hide_default_value = true)]
    pub lock_dir: PathBuf,

    /// Use KEY as the source's identity instead of deriving it from the source
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,

    /// What to do when another process holds the source
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = OnBusy::Skip)]
    pub on_busy: OnBusy,

    /// With --on-busy wait: give up after SECS seconds and exit with the busy code
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub wait_timeout: Option<Duration>,

    /// Exit code when the source is busy or the wait timed out
    #[arg(long, value_name = "N", value_parser = parse_busy_exit_code, default_value_t = crate::exit_code::DEFAULT_BUSY)]
    pub busy_exit_code: u8,

    /// Also take one of the device's N tuner slots (after the source lock); auto asks the device
    #[arg(long, value_name = "N|auto", value_parser = crate::tuner_slot::Tuners::parse)]
    pub tuners: Option<crate::tuner_slot::Tuners>,

    /// The tuner device's key for --tuners [default: the source's host]
    #[arg(long, value_name = "KEY", requires = "tuners", value_parser = crate::tuner_slot::DeviceKey::from_flag)]
    pub device: Option<crate::tuner_slot::DeviceKey>,

    /// The source URL (or device path) the program will read
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "source_file",
        conflicts_with = "source_file"
    )]
    pub source: Option<String>,

    /// Read the source URL from PATH (e.g. $CREDENTIALS_DIRECTORY/source), keeping it off the command line
    #[arg(long, value_name = "PATH")]
    pub source_file: Option<PathBuf>,

    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Under systemd's WatchdogSec=: fork a monitor that sends WATCHDOG=1 only while bytes arrive from the source's TCP endpoint
    #[arg(long)]
    pub progress_watchdog: bool,

    /// With --tuners: how much this launch matters, 0 to 1000 (default 100); waiters are served by it, and a holder strictly below it is preempted
    #[arg(long, value_name = "N", env = crate::priority::PRIORITY_ENV)]
    pub priority: Option<String>,

    /// How long a preempted or reclaimed holder gets between SIGTERM and SIGKILL
    #[arg(long, value_name = "SECS", env = "EC_LAUNCH_PREEMPT_GRACE", value_parser = parse_seconds, default_value = crate::priority::DEFAULT_PREEMPT_GRACE)]
    pub preempt_grace: Duration,

    /// Stop a holder that escaped the systemd service that launched it (that run is over, and no service holds it) and take its lock
    #[arg(long, env = "EC_LAUNCH_RECLAIM_ESCAPED")]
    pub reclaim_escaped: bool,

    /// Cluster mode with --progress-watchdog: the launcher pings systemd's watchdog only while its lease is renewed and bytes arrived within SECS [default: WatchdogSec=]
    #[arg(long, value_name = "SECS", requires = "progress_watchdog", value_parser = parse_seconds)]
    pub progress_window: Option<Duration>,

    /// The program and its arguments, after `--`; `{source}` in an argument is replaced by the source
    #[arg(last = true, required = true, value_name = "PROGRAM [ARGS]", value_parser = clap::value_parser!(OsString))]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Directory holding the lock files [default: $EC_LAUNCH_LOCK_DIR, else /run/every-channel/source-locks]
    #[arg(long, value_name = "DIR", value_parser = lock_dir_parser(), default_value_os_t = default_lock_dir(), hide_default_value = true)]
    pub lock_dir: PathBuf,

    /// Print {"key": …, "lock_file": …}
    #[arg(long)]
    pub json: bool,

    /// The source URL or device path
    #[arg(value_name = "SOURCE")]
    pub source: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Directory holding the lock files [default: $EC_LAUNCH_LOCK_DIR, else /run/every-channel/source-locks]
    #[arg(long, value_name = "DIR", value_parser = lock_dir_parser(), default_value_os_t = default_lock_dir(), hide_default_value = true)]
    pub lock_dir: PathBuf,

    /// Print {"locks": [...], "devices": [...], "warnings": [...]} (schema in docs/status.md)
    #[arg(long)]
    pub json: bool,

    /// Also ask each device with a host for its own view of its tuners
    #[arg(long)]
    pub device: bool,

    /// Only this source (URL, device path or key); exit 0 if held, 3 if free,
    /// 4 if orphaned, 5 if this user cannot tell
    #[arg(value_name = "SOURCE")]
    pub source: Option<String>,

    /// Also list the processes with a TCP connection to each source's endpoint;
    /// exit 7 when one holds no lock of a source there (a stale reader)
    #[arg(long)]
    pub readers: bool,

    /// Only the source `run --key KEY` named (taken as it is, like run's --key); exits as for SOURCE
    #[arg(long, value_name = "KEY", conflicts_with = "source")]
    pub key: Option<String>,

    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// This node's name when `--node` is not given: the kernel's host name.
#[must_use]
pub fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The first etcd option given without `--etcd`, if any: a mistake both
/// executables refuse (ECP-0134), so it is decided here, once.
#[must_use]
pub fn stray_cluster_option(args: &EtcdArgs) -> Option<&'static str> {
    if !args.endpoints.is_empty() {
        return None;
    }
    let stray = [
        ("--etcd-ca", args.etcd_ca.is_some()),
        ("--etcd-cert", args.etcd_cert.is_some()),
        ("--etcd-key", args.etcd_key.is_some()),
        ("--etcd-user-file", args.etcd_user_file.is_some()),
    ];
    stray
        .iter()
        .find(|(_, given)| *given)
        .map(|(flag, _)| *flag)
}

/// Where the cluster's locks live and how to reach them (cluster mode,
/// ECP-0134); shared by `run` and `status`.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// Cluster mode: etcd client URLs (http or https); the source's lock and tuner slot are also taken there, across nodes
    #[arg(
        long = "etcd",
        value_name = "URL[,URL...]",
        env = "EC_LAUNCH_ETCD",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,

    /// The CA certificate that signed etcd's server certificate (PEM; the only root trusted)
    #[arg(long, value_name = "FILE", env = "EC_LAUNCH_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,

    /// Our client certificate for etcd (PEM); needs --etcd-key
    #[arg(long, value_name = "FILE", env = "EC_LAUNCH_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,

    /// The private key of --etcd-cert (PEM)
    #[arg(long, value_name = "FILE", env = "EC_LAUNCH_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,

    /// A file holding `user:password` for etcd's authentication (never a flag value, so never on a command line)
    #[arg(long, value_name = "FILE", env = "EC_LAUNCH_ETCD_USER_FILE")]
    pub etcd_user_file: Option<PathBuf>,

    /// This node's name in the cluster's records [default: the host name]
    #[arg(long, value_name = "NAME", env = "EC_LAUNCH_NODE")]
    pub node: Option<String>,
}

/// `run`'s cluster settings: the connection plus the lease's timing.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,

    /// Cluster mode: the lease's time to live, whole seconds (etcd grants no fractions); the program is stopped before it can expire unrenewed
    #[arg(long, value_name = "SECS", env = "EC_LAUNCH_ETCD_TTL", value_parser = parse_seconds, default_value = "10")]
    pub etcd_ttl: Duration,

    /// Cluster mode: how long the program gets between SIGTERM and SIGKILL when the lease cannot be renewed
    #[arg(long, value_name = "SECS", env = "EC_LAUNCH_ETCD_STOP_GRACE", value_parser = parse_seconds, default_value = "2")]
    pub etcd_stop_grace: Duration,

    /// Cluster mode: how waiting nodes share the sources: spread (by --node-weight) or first (the first free node takes it) [default: spread with --on-busy wait, else first]
    #[arg(long, value_enum, value_name = "MODE", env = "EC_LAUNCH_PLACEMENT")]
    pub placement: Option<Placement>,

    /// Cluster mode: this node's capacity relative to the others' for --placement spread, 1 to 1000 [default: 1]
    #[arg(long, value_name = "W", env = "EC_LAUNCH_NODE_WEIGHT", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub node_weight: Option<u32>,
}

/// How the nodes of a cluster share the sources they all wait for
/// (ECP-0140).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Placement {
    /// Each node takes about its weight's part; a lost node's sources go to the least loaded
    Spread,
    /// Whichever node finds a source free first takes it
    First,
}

/// `$EC_LAUNCH_LOCK_DIR`, else [`DEFAULT_LOCK_DIR`]. A variable set but
/// empty yields an empty path, which [`ensure_lock_dir_given`] reports as the
/// variable's fault (clap would blame `--lock-dir`).
pub(crate) fn default_lock_dir() -> PathBuf {
    std::env::var_os(LOCK_DIR_ENV).map_or_else(|| PathBuf::from(DEFAULT_LOCK_DIR), PathBuf::from)
}

/// `--lock-dir` as bytes: a Linux path need not be UTF-8, and clap's
/// `&str` parsers would refuse one that is not (so would the default taken
/// from `EC_LAUNCH_LOCK_DIR`, which goes through the same parser).
fn lock_dir_parser() -> impl TypedValueParser<Value = PathBuf> {
    clap::builder::OsStringValueParser::new().try_map(parse_lock_dir)
}

pub(crate) fn parse_lock_dir(text: OsString) -> Result<PathBuf, String> {
    // Only the default can be empty (see `default_lock_dir`); an empty
    // `--lock-dir ''` is the flag's fault.
    if text.is_empty() && std::env::var_os(LOCK_DIR_ENV).is_none_or(|v| !v.is_empty()) {
        return Err("the lock directory path is empty; pass a directory".into());
    }
    Ok(PathBuf::from(text))
}

/// Refuses a lock directory that came out empty: `EC_LAUNCH_LOCK_DIR=`.
///
/// # Errors
/// [`Error::LockDirEnvEmpty`].
pub fn ensure_lock_dir_given(dir: &std::path::Path) -> Result<(), crate::error::Error> {
    if dir.as_os_str().is_empty() {
        return Err(crate::error::Error::LockDirEnvEmpty);
    }
    Ok(())
}

/// A busy code must not be one `ec-launch` uses for something else, or a
/// script could not tell "busy" from, say, "program not found". 0 (busy
/// counts as success) and the default 75 are accepted.
pub(crate) fn parse_busy_exit_code(text: &str) -> Result<u8, String> {
    let code: u8 = text
        .parse()
        .map_err(|_| format!("{text:?} is not an exit code; pass 0 to 255"))?;
    match crate::exit_code::meaning_of_reserved(code) {
        Some(meaning) => Err(format!(
            "{code} already means: {meaning}; pick another, e.g. 75 (the default), or 0 to count busy as success"
        )),
        None => Ok(code),
    }
}

pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
    // Whole seconds, every default among them, as the float below would
    // read them (exactly, at this size) but without its parser: a launch
    // that never maps that code faults in fewer pages (ECP-0128).
    if let Ok(whole) = text.trim().parse::<u32>() {
        return Ok(Duration::from_secs(u64::from(whole)));
    }
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds; pass e.g. 30 or 2.5"))?;
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("{text:?} is not a usable number of seconds; pass a value from 0 up"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn busy_exit_codes_may_not_reuse_documented_codes_except_success() {
        assert_eq!(parse_busy_exit_code("0"), Ok(0));
        assert_eq!(parse_busy_exit_code("75"), Ok(75));
        assert_eq!(parse_busy_exit_code("1"), Ok(1));
        for reserved in [
            "2", "3", "4", "5", "6", "7", "64", "65", "66", "69", "71", "73", "76", "77", "78",
            "126", "127",
        ] {
            assert!(parse_busy_exit_code(reserved).is_err(), "{reserved}");
        }
    }

    #[test]
    fn wait_timeouts_take_fractional_seconds_and_reject_negatives() {
        assert_eq!(parse_seconds("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn whole_seconds_read_as_the_float_parser_reads_them() {
        for text in ["0", "5", " 30 ", "+7", "007", "4294967295", "4294967296"] {
            let float: f64 = text.trim().parse().unwrap();
            assert_eq!(
                parse_seconds(text),
                Ok(Duration::from_secs_f64(float)),
                "{text}"
            );
        }
    }
}
