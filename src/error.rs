//! The one error type of `ec-launch`, and how each kind maps to an exit code.
//!
//! Each variant names the operation and the object, carries the path it
//! concerns, and keeps the underlying cause as its `source`, so `main` prints
//! the chain once, followed by [`Error::hint`]: what the operator should do.
//! Advice lives only in the hint, never in a message or a cause's message,
//! so it is given once. A variant's exit status and hint are decided together
//! in one match ([`Error::outcome`]): adding an error is a variant here and
//! one arm there, and the compiler checks both.
//! No variant carries a raw source URL: it may hold a credential.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

use crate::device_http::DeviceError;
use crate::exit_code::ExitStatus;
use crate::source_key::KeyError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read --source-file {path:?}")]
    ReadSourceFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--source-file {path:?} holds no source")]
    SourceFileEmpty { path: PathBuf },
    #[error("--source-file {path:?} holds more than one line")]
    SourceFileMultiline { path: PathBuf },
    #[error("--source-file {path:?} is not a regular file (it is a {kind})")]
    SourceFileNotRegular { path: PathBuf, kind: &'static str },
    #[error("--source-file {path:?} is larger than {limit} bytes")]
    SourceFileTooLarge { path: PathBuf, limit: u64 },
    #[error("invalid source")]
    Key(#[from] KeyError),
    /// SOURCE of `key` and `status`, which have no `--source` or `--key`.
    #[error("invalid SOURCE")]
    SourceArg(#[source] KeyError),
    #[error("EC_LAUNCH_LOCK_DIR is set but empty")]
    LockDirEnvEmpty,
    #[error("cannot create lock directory {path:?}")]
    CreateLockDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read lock directory {path:?}")]
    ReadLockDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot inspect lock directory {path:?}")]
    InspectLockDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lock directory {path:?} is a symlink")]
    LockDirSymlink { path: PathBuf },
    #[error("lock directory {path:?} is not a directory")]
    LockDirNotDirectory { path: PathBuf },
    /// A directory (or symlink) on the way to the lock directory that a user
    /// other than root or us could change (ECP-0129).
    #[error("{path:?}, on the lock directory's path, {reason}")]
    UntrustedLockPath { path: PathBuf, reason: String },
    #[error("cannot open lock file {path:?}")]
    OpenLockFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lock file {path:?} is a symlink")]
    LockFileSymlink { path: PathBuf },
    #[error("lock file {path:?} is not a regular file (it is a {kind})")]
    LockFileNotRegular { path: PathBuf, kind: &'static str },
    #[error("lock file {path:?} is owned by uid {uid}, not by root or this user")]
    LockFileForeign { path: PathBuf, uid: u32 },
    #[error("lock file {path:?} has {links} hard links")]
    LockFileLinked { path: PathBuf, links: u64 },
    #[error("cannot inspect lock file {path:?}")]
    InspectLockFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot clear O_NONBLOCK on lock file {path:?}")]
    MakeLockBlocking {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot duplicate the descriptor of lock file {path:?} to wait on it")]
    DuplicateLockDescriptor {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the thread that waits for the lock on {path:?}")]
    StartWaitThread {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock {path:?}")]
    Flock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("lock file {path:?} was replaced {attempts} times while being locked")]
    LockFileUnstable { path: PathBuf, attempts: u32 },
    /// Clearing `FD_CLOEXEC`, so the lock survives exec.
    #[error("cannot keep the lock descriptor of {path:?} open across exec")]
    PassLock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot restore SIGPIPE's default disposition for the program")]
    ResetSigpipe {
        #[source]
        source: Errno,
    },
    /// `--tuners` without `--device` on a source with no host (ECP-0132).
    #[error("--tuners needs a device, and the source names no host")]
    NoDeviceKey,
    /// `--tuners auto` on a source without a host: nothing to ask.
    #[error("--tuners auto asks the source's host, and the source names no host")]
    TunersAutoWithoutHost,
    #[error("{what} contains a NUL byte")]
    NulInArgument { what: String },
    /// The lock directory's filesystem does not give local flock(2) locks.
    #[error(
        "lock directory {path:?} is on {filesystem}, whose locks are not local flock(2) locks: a forked helper may not hold them, or another path to the file is another lock"
    )]
    LockDirForeignLocks {
        path: PathBuf,
        filesystem: &'static str,
    },
    /// Checked before locking: exec would fail with E2BIG (execve(2)).
    #[error("{what} is {bytes} bytes, over the system's limit of {limit} bytes for {limit_name}")]
    ArgumentsTooLong {
        what: String,
        bytes: usize,
        limit: usize,
        limit_name: &'static str,
    },
    #[error("the program name is empty")]
    EmptyProgram,
    /// `--priority` or `EC_LAUNCH_PRIORITY` out of range (ECP-0139).
    #[error("{value:?} is not a priority")]
    BadPriority { value: String },
    /// `--tuners auto`: the device did not tell its tuner count. Names the
    /// host only (`url` is built from it), never the source.
    #[error("cannot ask device {device} for its tuner count (GET {url})")]
    AskDevice {
        device: String,
        url: String,
        #[source]
        source: DeviceError,
    },
    #[error("--progress-watchdog cannot watch this source")]
    ProgressWatchdogUnwatchable {
        #[source]
        reason: crate::watchdog::Unwatchable,
    },
    #[error("cannot start the progress watchdog's monitor")]
    StartWatchdog {
        #[source]
        source: Errno,
    },
    /// Cluster mode's own failures (an etcd call, ECP-0134), defined by the
    /// cluster executable, which decides their exit status and hint
    /// (ECP-0138). Their text never holds a password, a token or a key's
    /// bytes.
    #[error(transparent)]
    Cluster(ClusterCause),
    /// Cluster mode: `--etcd-ttl` leaves no time to stop the program
    /// before the lease can expire (ECP-0134, `cluster::fence`).
    #[error(
        "--etcd-ttl {ttl} is too short for --etcd-stop-grace {stop_grace}: renewal every TTL/3, its timeout TTL/6, the stop grace and the {margin} margin must fit in the TTL, so the TTL must be at least {minimum}s"
    )]
    FenceBudget {
        ttl: String,
        stop_grace: String,
        margin: String,
        minimum: u64,
    },
    /// Cluster mode: `--etcd-ttl` with a fraction: etcd grants leases in
    /// whole seconds, so the fence's budget would be checked against a TTL
    /// etcd never grants (ECP-0135).
    #[error(
        "--etcd-ttl {ttl} is not a whole number of seconds: etcd grants leases in whole seconds, and would grant {granted}s"
    )]
    FractionalTtl { ttl: String, granted: u64 },
    /// Cluster mode: blocking the signals the supervisor reads from a signalfd.
    #[error(
        "cannot block SIGTERM, SIGINT, SIGHUP and SIGCHLD (SIGCHLD at its default) to read them from a signalfd"
    )]
    BlockSignals {
        #[source]
        source: Errno,
    },
    /// Cluster mode: the launcher must be a child subreaper, so a helper
    /// that leaves the program's process group stays where the launcher
    /// finds and stops it before releasing the keys (ECP-0135).
    #[error("cannot become a child subreaper (prctl PR_SET_CHILD_SUBREAPER)")]
    BecomeSubreaper {
        #[source]
        source: Errno,
    },
    #[error("cannot open a signalfd for SIGTERM, SIGINT, SIGHUP and SIGCHLD")]
    WatchSignals {
        #[source]
        source: Errno,
    },
    /// Cluster mode: the fence timer (a `CLOCK_BOOTTIME` timerfd) or the
    /// renewer thread.
    #[error("cannot start the lease renewer ({what})")]
    StartRenewer {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// Cluster mode: etcd options without `--etcd`.
    #[error("{flag} was given without --etcd")]
    ClusterOptionWithoutEtcd { flag: &'static str },
    /// `--etcd` reached the local launcher, which the hand-off to cluster
    /// mode should have prevented (ECP-0138): refused, never a launch
    /// without the cluster's lock.
    #[error("--etcd reached the local launcher instead of ec-launch-cluster")]
    ClusterModeNotHandedOff,
    /// Cluster mode: `--node` empty or with control characters.
    #[error("--node is empty or has control characters")]
    BadNodeName,
    /// Cluster mode: `--placement spread` with `--on-busy skip` (ECP-0140).
    #[error(
        "--placement spread needs --on-busy wait: a launcher that exits when the source is held has no turn to wait for"
    )]
    SpreadNeedsWait,
    /// Cluster mode: the lease was lost before the program started.
    #[error("the cluster lease was lost before the program started ({why})")]
    Fenced { why: String },
    /// `ec-launch-cluster` missing beside `ec-launch`, or not runnable
    /// (ECP-0138): cluster mode cannot start, and nothing was locked.
    #[error("cannot run cluster mode's executable {path:?}")]
    ClusterExecutable {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot run {program:?}")]
    Exec {
        program: String,
        #[source]
        source: Errno,
    },
}

/// What to do when the filesystem itself is the problem: a permission hint
/// would send the operator to the wrong fix.
fn filesystem_hint(source: &io::Error) -> Option<&'static str> {
    match Errno::from_raw(source.raw_os_error()?) {
        Errno::EMFILE => Some(DESCRIPTOR_LIMIT_HINT),
        Errno::ENFILE => Some(SYSTEM_FILE_LIMIT_HINT),
        Errno::EROFS => Some(
            "the lock directory is on a read-only filesystem: use a --lock-dir on a writable one (tmpfs under /run)",
        ),
        Errno::ENOSPC | Errno::EDQUOT => Some(
            "the lock directory's filesystem is full (space, inodes or quota): free some, or use another --lock-dir",
        ),
        _ => None,
    }
}

/// Permission denied is 77; running out of descriptors is 71 (the path is
/// fine, the process or system is not); any other failure makes the lock
/// path unusable.
fn denied_or_unusable(source: &io::Error) -> ExitStatus {
    if out_of_descriptors(source) {
        ExitStatus::OsError
    } else if source.kind() == io::ErrorKind::PermissionDenied {
        ExitStatus::NoPermission
    } else {
        ExitStatus::LockUnusable
    }
}

/// EMFILE: this process's limit, not the lock path, is the problem.
const DESCRIPTOR_LIMIT_HINT: &str = "this process is at its open-file limit (EMFILE): raise LimitNOFILE= (ulimit -n) for this service";
/// ENFILE: the whole system's file table is full.
const SYSTEM_FILE_LIMIT_HINT: &str = "the system's open-file table is full (ENFILE): raise fs.file-max or find the process leaking descriptors";

/// True for EMFILE and ENFILE: no descriptor could be had.
pub fn out_of_descriptors(source: &io::Error) -> bool {
    matches!(
        source.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE)
    )
}

/// The SOURCE argument of `key` and `status` is wrong as a whole.
const SOURCE_ARG_HINT: &str =
    "pass SOURCE as a stream URL, an absolute device path, or a key as `ec-launch key` prints it";

/// A failure that only a broken or exhausted system explains.
const REPORT_HINT: &str = "this should not happen on a working system: retry, and report it with the message if it persists";

impl Error {
    /// The exit status this error ends the process with.
    #[must_use]
    pub fn exit_status(&self) -> ExitStatus {
        self.outcome().0
    }

    /// What the operator should do about it, printed after the cause.
    #[must_use]
    pub fn hint(&self) -> &'static str {
        self.outcome().1
    }

    /// The exit status and the hint of each variant, side by side.
    #[allow(clippy::too_many_lines)] // one arm per variant is the point
    fn outcome(&self) -> (ExitStatus, &'static str) {
        use ExitStatus::{
            BadArgument, BadSource, CannotRun, LockUnusable, NoInput, NotFound, OsError,
        };
        const PLANTED: &str = "something planted this path: inspect it, remove it, and let ec-launch create the lock file";
        const FLOCK: &str = "the lock directory may be on a filesystem without flock(2) support or something deletes lock files; keep it on tmpfs (/run) and never delete lock files";
        const CREATE_DIR: &str = "create the directory (the NixOS module does, via tmpfiles) or pass a usable --lock-dir";
        match self {
            Self::ReadSourceFile { .. } => (
                NoInput,
                "check the path and that this user may read it (under systemd, LoadCredential= puts it in $CREDENTIALS_DIRECTORY)",
            ),
            Self::SourceFileEmpty { .. } | Self::SourceFileMultiline { .. } => (
                BadSource,
                "write exactly one source URL or device path into the file",
            ),
            Self::SourceFileNotRegular { .. } | Self::SourceFileTooLarge { .. } => (
                NoInput,
                "point --source-file at a regular file of at most 64 KiB holding one source URL or device path",
            ),
            Self::Key(cause) | Self::SourceArg(cause) => {
                let from_arg = matches!(self, Self::SourceArg(_));
                match cause {
                    KeyError::Empty | KeyError::NotAUrl(_) | KeyError::NoHost if from_arg => {
                        (BadSource, SOURCE_ARG_HINT)
                    }
                    KeyError::Empty => (
                        BadSource,
                        "pass a stream URL or device path with --source or --source-file",
                    ),
                    KeyError::NotAUrl(_) | KeyError::NoHost => (
                        BadSource,
                        "pass a network URL such as http://10.0.0.5:5004/auto/v5.1 or an absolute device path, or name the source yourself with --key",
                    ),
                    KeyError::Whitespace => (
                        BadSource,
                        "remove it, or percent-encode it in the URL (a space is %20)",
                    ),
                    KeyError::AtAfterHost => (
                        BadSource,
                        "percent-encode a `/` in a password as %2F and an `@` in a path as %40",
                    ),
                    KeyError::PathUnresolvable { .. } => {
                        (NoInput, "check the device exists and the path is right")
                    }
                    KeyError::BadOverride => (BadSource, "pass a non-empty, printable --key"),
                }
            }
            Self::LockDirEnvEmpty => (
                BadArgument,
                "unset EC_LAUNCH_LOCK_DIR or set it to a directory (default /run/every-channel/source-locks)",
            ),
            Self::ReadLockDir { source, .. } => (
                match source.kind() {
                    io::ErrorKind::NotFound => NoInput,
                    _ => denied_or_unusable(source),
                },
                "check --lock-dir (default /run/every-channel/source-locks; the first launch creates it) and that this user may list it",
            ),
            Self::CreateLockDir { source, .. } | Self::InspectLockDir { source, .. } => (
                denied_or_unusable(source),
                filesystem_hint(source).unwrap_or(CREATE_DIR),
            ),
            Self::LockDirSymlink { .. } | Self::LockDirNotDirectory { .. } => (
                LockUnusable,
                "point --lock-dir at a real directory, not a link or file",
            ),
            Self::UntrustedLockPath { .. } => (
                LockUnusable,
                "every directory from / to the lock directory must be owned by root or this user and writable by no one else (sticky directories and a group this user is in excepted): fix that directory's owner or mode, or use another --lock-dir",
            ),
            Self::OpenLockFile { source, .. } => (
                denied_or_unusable(source),
                filesystem_hint(source).unwrap_or(
                    "make the lock directory writable by this user (the NixOS module does), or run as the service user",
                ),
            ),
            Self::InspectLockFile { source, .. } => (
                denied_or_unusable(source),
                "check that this user may search the lock directory and that nothing renames or deletes lock files",
            ),
            Self::LockFileSymlink { .. }
            | Self::LockFileNotRegular { .. }
            | Self::LockFileLinked { .. } => (LockUnusable, PLANTED),
            Self::LockFileForeign { .. } => (
                LockUnusable,
                "another user could delete it while we hold it: if that user is the service, run as it (e.g. runuser -u <user> -- ec-launch …); otherwise inspect the file and remove it",
            ),
            Self::MakeLockBlocking { .. }
            | Self::PassLock { .. }
            | Self::ResetSigpipe { .. }
            | Self::BlockSignals { .. }
            | Self::WatchSignals { .. }
            | Self::BecomeSubreaper { .. }
            | Self::ClusterModeNotHandedOff => (OsError, REPORT_HINT),
            Self::DuplicateLockDescriptor { .. } => (
                OsError,
                "the process is at its open-file limit: raise LimitNOFILE= (ulimit -n) for this service",
            ),
            Self::StartWaitThread { .. } => (
                OsError,
                "the service is out of tasks or memory: raise TasksMax= (ulimit -u) or free memory, or use --on-busy wait without --wait-timeout",
            ),
            Self::Flock { source, .. } => (
                OsError,
                match source {
                    Errno::EMFILE => DESCRIPTOR_LIMIT_HINT,
                    Errno::ENFILE => SYSTEM_FILE_LIMIT_HINT,
                    _ => FLOCK,
                },
            ),
            Self::LockFileUnstable { .. } => (OsError, FLOCK),
            Self::NulInArgument { .. } => (
                BadArgument,
                "remove the NUL byte: arguments cannot carry one through exec",
            ),
            Self::EmptyProgram => (BadArgument, "name the program to run after `--`"),
            Self::BadPriority { .. } => (
                BadArgument,
                "pass --priority (or EC_LAUNCH_PRIORITY) an integer from 0 to 1000; the default is 100",
            ),
            Self::LockDirForeignLocks { .. } => (
                LockUnusable,
                "use a local directory for --lock-dir, such as /run/ec-launch (tmpfs), the same one for every launcher of the node",
            ),
            Self::ArgumentsTooLong { .. } => (
                BadArgument,
                "shorten the arguments or the environment: `{source}` puts the whole source URL into every argument that names it (pass --source-file's URL once, or read EC_SOURCE_URL in the program)",
            ),
            Self::AskDevice { source, .. } if source.needs_explicit_count() => (
                ExitStatus::DeviceNeedsTunerCount,
                "this device cannot tell its tuner count: pass --tuners N with the number of tuners it has",
            ),
            Self::AskDevice {
                source: DeviceError::Unresolved(_),
                ..
            } => (
                ExitStatus::Unavailable,
                "check the device's name and this node's resolver (getent hosts NAME, /etc/resolv.conf), or use its address in the source, or pass --tuners N; under systemd the unit is restarted",
            ),
            Self::AskDevice { .. } => (
                ExitStatus::Unavailable,
                "check that the device is on and answers on port 80 from this node (curl the URL above), or pass --tuners N; under systemd the unit is restarted",
            ),
            Self::ProgressWatchdogUnwatchable { .. } => (
                BadArgument,
                "drop --progress-watchdog (and WatchdogSec=) for this source, or let the program ping the watchdog itself (sd_notify WATCHDOG=1)",
            ),
            Self::StartWatchdog { .. } | Self::StartRenewer { .. } => (
                OsError,
                "the service is out of tasks or descriptors: raise TasksMax= or LimitNOFILE= for this service",
            ),
            Self::NoDeviceKey => (
                BadArgument,
                "name the tuner device with --device KEY (the same key for every launcher of the device)",
            ),
            Self::TunersAutoWithoutHost => (
                BadArgument,
                "pass the device's number of tuners, e.g. --tuners 2: only a network source's host can be asked",
            ),
            Self::Cluster(cause) => cause.0.outcome(),
            Self::ClusterExecutable { .. } => (
                ExitStatus::Unavailable,
                "install the package's ec-launch-cluster beside ec-launch (cluster mode, --etcd, is its own executable)",
            ),
            Self::ClusterOptionWithoutEtcd { .. } => (
                BadArgument,
                "pass --etcd URL for cluster mode, or drop the option (check EC_LAUNCH_ETCD_* in the environment)",
            ),
            Self::SpreadNeedsWait => (
                BadArgument,
                "pass --on-busy wait, or --placement first (check EC_LAUNCH_PLACEMENT in the environment)",
            ),
            Self::BadNodeName => (
                BadArgument,
                "pass a node name such as the host name, or leave --node out to use the host name",
            ),
            Self::Fenced { .. } => (
                ExitStatus::Fenced,
                "nothing was started; systemd restarts the unit, which takes the keys again",
            ),
            Self::FenceBudget { .. } => (
                BadArgument,
                "raise --etcd-ttl to at least the minimum named, or shorten --etcd-stop-grace",
            ),
            Self::FractionalTtl { .. } => (
                BadArgument,
                "pass whole seconds, rounded up (e.g. --etcd-ttl 4 for 3.9): the fence's budget is checked against the TTL etcd grants",
            ),
            Self::Exec { source, .. } => match source {
                Errno::ENOENT | Errno::ENOTDIR => (NotFound, "check the program name and PATH"),
                _ => (
                    CannotRun,
                    "check the program's permissions and that it is an executable for this machine",
                ),
            },
        }
    }
}

/// A failure of cluster mode's own, which the cluster executable defines
/// (ECP-0138): its message and causes are its `Display` and `source`, its
/// exit status and hint its [`ClusterFailure::outcome`].
pub trait ClusterFailure: std::error::Error + Send + Sync + 'static {
    /// The exit status and the hint, as [`Error::hint`] gives them.
    fn outcome(&self) -> (ExitStatus, &'static str);
}

/// A [`ClusterFailure`] inside [`Error::Cluster`].
#[derive(Debug)]
pub struct ClusterCause(pub Box<dyn ClusterFailure>);

impl ClusterCause {
    /// The failure itself, to look into (`downcast_ref`).
    #[must_use]
    pub fn failure(&self) -> &(dyn std::error::Error + 'static) {
        &*self.0
    }
}

impl std::fmt::Display for ClusterCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ClusterCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(errno: Errno) -> io::Error {
        io::Error::from_raw_os_error(errno as i32)
    }

    /// One error of each step of locking and passing the lock, in order:
    /// open, inspect, duplicate, wait thread, `O_NONBLOCK`, pass, SIGPIPE, NUL,
    /// empty program, priority.
    fn one_error_of_each_step() -> Vec<Error> {
        let path = || PathBuf::from("/run/l/x.lock");
        vec![
            Error::OpenLockFile {
                path: path(),
                source: io(Errno::EMFILE),
            },
            Error::InspectLockFile {
                path: path(),
                source: io(Errno::EIO),
            },
            Error::DuplicateLockDescriptor {
                path: path(),
                source: io(Errno::EMFILE),
            },
            Error::StartWaitThread {
                path: path(),
                source: io(Errno::EAGAIN),
            },
            Error::MakeLockBlocking {
                path: path(),
                source: Errno::EBADF,
            },
            Error::PassLock {
                path: path(),
                source: Errno::EBADF,
            },
            Error::ResetSigpipe {
                source: Errno::EINVAL,
            },
            Error::NulInArgument {
                what: "argument 1".into(),
            },
            Error::EmptyProgram,
            Error::BadPriority {
                value: "1001".into(),
            },
        ]
    }

    #[test]
    fn each_step_of_locking_and_passing_the_lock_is_named_in_its_own_words() {
        let errors = one_error_of_each_step();
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let mut distinct = messages.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), messages.len(), "{messages:#?}");
        assert!(messages[2].contains("duplicate"), "{}", messages[2]);
        assert!(messages[3].contains("thread"), "{}", messages[3]);
        assert!(messages[4].contains("O_NONBLOCK"), "{}", messages[4]);
        assert!(messages[6].contains("SIGPIPE"), "{}", messages[6]);
        assert!(!messages[8].contains("NUL"), "{}", messages[8]);
    }

    #[test]
    fn failures_no_operator_caused_are_system_call_failures_not_permission_problems() {
        let errors = one_error_of_each_step();
        // Duplicate, wait thread, O_NONBLOCK and SIGPIPE.
        for error in [2, 3, 4, 6].map(|step| &errors[step]) {
            assert_eq!(error.exit_status(), ExitStatus::OsError, "{error}");
            assert!(!error.hint().contains("flock(2)"), "{error}");
        }
    }
}
