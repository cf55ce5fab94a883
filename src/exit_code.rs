//! Every exit status `ec-launch` itself can return, in one table.
//!
//! Operators' scripts and the NixOS module (`SuccessExitStatus=75`,
//! `RestartPreventExitStatus=75`) depend on these numbers; the README repeats
//! this table and must change with it. The numbers follow sysexits.h where a
//! sysexits meaning fits, and the `env(1)`/`flock(1)` convention for a program
//! that cannot be run (126 found but not runnable, 127 not found).
//!
//! After a successful `run`, `ec-launch` is gone: the status is the program's
//! own, because the program *is* the process `ec-launch` was.
//!
//! | code | name          | meaning                                                        |
//! |------|---------------|----------------------------------------------------------------|
//! | 0    | `Success`     | `key`/`status` succeeded (`status SOURCE`: the source is held) |
//! | 2    | `Usage`       | command line rejected by the parser (clap's own code)          |
//! | 3    | `SourceFree`  | `status SOURCE`: the source is free                            |
//! | 4    | `Orphaned`    | `status`: a lock is held on a file that no longer exists       |
//! | 64   | `BadArgument` | an argument clap accepted but cannot be used (NUL byte, …)     |
//! | 65   | `BadSource`   | the source is empty, not a URL/path we understand, or bad key  |
//! | 66   | `NoInput`     | `--source-file` or a device path cannot be read                |
//! | 71   | `OsError`     | an unexpected system call failure (see the message)            |
//! | 73   | `LockUnusable`| lock directory or lock file unsafe or cannot be created        |
//! | 75   | `Busy`        | the source is held (skip) or the wait timed out (configurable) |
//! | 77   | `NoPermission`| permission denied on the lock directory or lock file           |
//! | 126  | `CannotRun`   | the program was found but cannot be executed                   |
//! | 127  | `NotFound`    | the program was not found                                      |

use std::process;

/// The default busy status: `EX_TEMPFAIL`, "try again later", which is what a
/// skipped duplicate launch is.
pub const DEFAULT_BUSY: u8 = 75;

/// A status `ec-launch` returns on its own behalf (never the program's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    Usage,
    SourceFree,
    Orphaned,
    BadArgument,
    BadSource,
    NoInput,
    OsError,
    LockUnusable,
    /// Busy carries its number because `--busy-exit-code` may change it.
    Busy(u8),
    NoPermission,
    CannotRun,
    NotFound,
}

impl ExitStatus {
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Usage => 2,
            Self::SourceFree => 3,
            Self::Orphaned => 4,
            Self::BadArgument => 64,
            Self::BadSource => 65,
            Self::NoInput => 66,
            Self::OsError => 71,
            Self::LockUnusable => 73,
            Self::Busy(code) => code,
            Self::NoPermission => 77,
            Self::CannotRun => 126,
            Self::NotFound => 127,
        }
    }
}

impl From<ExitStatus> for process::ExitCode {
    fn from(status: ExitStatus) -> Self {
        process::ExitCode::from(status.code())
    }
}
