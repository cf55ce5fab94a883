//! The one error type of `ec-launch`, and how each kind maps to an exit code.
//!
//! Each variant names the operation and the object, carries the path it
//! concerns, and keeps the underlying cause as its `source`, so `main` prints
//! the chain once, followed by [`Error::hint`]: what the operator should do.
//! No variant carries a raw source URL: it may hold a credential.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

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
    #[error("cannot lock {path:?}")]
    Flock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("lock file {path:?} was replaced {attempts} times while being locked")]
    LockFileUnstable { path: PathBuf, attempts: u32 },
    #[error("cannot prepare the lock descriptor of {path:?} for the program")]
    PassLock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("{what} contains a NUL byte")]
    NulInArgument { what: String },
    #[error("the program name is empty")]
    EmptyProgram,
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
        Errno::EROFS => Some(
            "the lock directory is on a read-only filesystem: use a --lock-dir on a writable one (tmpfs under /run)",
        ),
        Errno::ENOSPC | Errno::EDQUOT => Some(
            "the lock directory's filesystem is full (space, inodes or quota): free some, or use another --lock-dir",
        ),
        _ => None,
    }
}

impl Error {
    /// The exit status this error ends the process with.
    #[must_use]
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::ReadSourceFile { .. }
            | Self::SourceFileNotRegular { .. }
            | Self::SourceFileTooLarge { .. }
            | Self::Key(KeyError::PathUnresolvable { .. })
            | Self::SourceArg(KeyError::PathUnresolvable { .. }) => ExitStatus::NoInput,
            Self::SourceFileEmpty { .. }
            | Self::SourceFileMultiline { .. }
            | Self::Key(_)
            | Self::SourceArg(_) => ExitStatus::BadSource,
            Self::ReadLockDir { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => ExitStatus::NoInput,
                io::ErrorKind::PermissionDenied => ExitStatus::NoPermission,
                _ => ExitStatus::LockUnusable,
            },
            Self::CreateLockDir { source, .. }
            | Self::InspectLockDir { source, .. }
            | Self::OpenLockFile { source, .. } => {
                if source.kind() == io::ErrorKind::PermissionDenied {
                    ExitStatus::NoPermission
                } else {
                    ExitStatus::LockUnusable
                }
            }
            Self::LockDirSymlink { .. }
            | Self::LockDirNotDirectory { .. }
            | Self::UntrustedLockPath { .. }
            | Self::LockFileSymlink { .. }
            | Self::LockFileNotRegular { .. }
            | Self::LockFileForeign { .. }
            | Self::LockFileLinked { .. } => ExitStatus::LockUnusable,
            Self::Flock { .. } | Self::LockFileUnstable { .. } | Self::PassLock { .. } => {
                ExitStatus::OsError
            }
            Self::NulInArgument { .. } | Self::EmptyProgram | Self::LockDirEnvEmpty => {
                ExitStatus::BadArgument
            }
            Self::ProgressWatchdogUnwatchable { .. } => ExitStatus::BadArgument,
            Self::StartWatchdog { .. } => ExitStatus::OsError,
            Self::Exec { source, .. } => match source {
                Errno::ENOENT | Errno::ENOTDIR => ExitStatus::NotFound,
                _ => ExitStatus::CannotRun,
            },
        }
    }

    /// What the operator should do about it, printed after the cause.
    #[must_use]
    pub fn hint(&self) -> &'static str {
        match self {
            Self::ReadSourceFile { .. } => {
                "check the path and that this user may read it (under systemd, LoadCredential= puts it in $CREDENTIALS_DIRECTORY)"
            }
            Self::SourceFileEmpty { .. } | Self::SourceFileMultiline { .. } => {
                "write exactly one source URL or device path into the file"
            }
            Self::SourceFileNotRegular { .. } | Self::SourceFileTooLarge { .. } => {
                "point --source-file at a regular file of at most 64 KiB holding one source URL or device path"
            }
            Self::Key(KeyError::BadOverride) => "pass a non-empty, printable --key",
            Self::Key(_) => {
                "fix the source (--source or --source-file), or name the source yourself with --key"
            }
            Self::SourceArg(_) => {
                "pass SOURCE as a stream URL, an absolute device path, or a key as `ec-launch key` prints it"
            }
            Self::LockDirEnvEmpty => {
                "unset EC_LAUNCH_LOCK_DIR or set it to a directory (default /run/every-channel/source-locks)"
            }
            Self::ReadLockDir { .. } => {
                "check --lock-dir (default /run/every-channel/source-locks; the first launch creates it) and that this user may list it"
            }
            Self::CreateLockDir { source, .. } | Self::InspectLockDir { source, .. } => {
                filesystem_hint(source).unwrap_or(
                    "create the directory (the NixOS module does, via tmpfiles) or pass a usable --lock-dir",
                )
            }
            Self::LockDirSymlink { .. } | Self::LockDirNotDirectory { .. } => {
                "point --lock-dir at a real directory, not a link or file"
            }
            Self::UntrustedLockPath { .. } => {
                "every directory from / to the lock directory must be owned by root or this user and writable by no one else (sticky directories and a group this user is in excepted): fix that directory's owner or mode, or use another --lock-dir"
            }
            Self::OpenLockFile { source, .. } => filesystem_hint(source).unwrap_or(
                "make the lock directory writable by this user (the NixOS module does), or run as the service user",
            ),
            Self::LockFileSymlink { .. }
            | Self::LockFileNotRegular { .. }
            | Self::LockFileLinked { .. } => {
                "something planted this path: inspect it, remove it, and let ec-launch create the lock file"
            }
            Self::LockFileForeign { .. } => {
                "another user could delete it while we hold it: if that user is the service, run as it (e.g. runuser -u <user> -- ec-launch …); otherwise inspect the file and remove it"
            }
            Self::Flock { .. } | Self::LockFileUnstable { .. } | Self::PassLock { .. } => {
                "the lock directory may be on a filesystem without flock(2) support or something deletes lock files; keep it on tmpfs (/run) and never delete lock files"
            }
            Self::NulInArgument { .. } => {
                "remove the NUL byte: arguments cannot carry one through exec"
            }
            Self::EmptyProgram => "name the program to run after `--`",
            Self::ProgressWatchdogUnwatchable { .. } => {
                "drop --progress-watchdog (and WatchdogSec=) for this source, or let the program ping the watchdog itself (sd_notify WATCHDOG=1)"
            }
            Self::StartWatchdog { .. } => {
                "the system is out of processes or descriptors: check the unit's TasksMax= and LimitNOFILE="
            }
            Self::Exec { source, .. } => match source {
                Errno::ENOENT | Errno::ENOTDIR => "check the program name and PATH",
                _ => {
                    "check the program's permissions and that it is an executable for this machine"
                }
            },
        }
    }
}
