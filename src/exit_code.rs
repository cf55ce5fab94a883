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
//! [`TABLE`] is the one description of them: `ec-launch man` renders it, and
//! a test checks that the README's table says the same.

use std::process;

/// Every documented exit status and its meaning, as the README lists them.
pub const TABLE: &[(&str, &str)] = &[
    (
        "program's",
        "`run` exec'd the program; its status is the exit status",
    ),
    (
        "0",
        "`key`/`status` succeeded; `status SOURCE`: the source is held",
    ),
    ("2", "command line rejected (clap's usage error)"),
    ("3", "`status SOURCE`: the source is free"),
    (
        "4",
        "`status`: a lock is held on a file that no longer exists (orphaned)",
    ),
    (
        "5",
        "`status`: whether a lock is held cannot be told (a lock file this user cannot examine, or a PID namespace whose lock table hides it)",
    ),
    (
        "64",
        "an argument the parser accepted cannot be used (e.g. a NUL byte, an empty program name, `--tuners` on a source without a host and no `--device`, `--tuners auto` until the device can be asked), or `EC_LAUNCH_LOCK_DIR` is set but empty",
    ),
    (
        "65",
        "the source is empty, has whitespace or control characters, is not a URL with a host, has an `@` after the host, or `--key` is empty/has control characters",
    ),
    (
        "66",
        "`--source-file` cannot be read, is not a regular file or is over 64 KiB, or a device path does not resolve",
    ),
    (
        "71",
        "an unexpected system call failure while locking (see the message)",
    ),
    (
        "73",
        "lock directory or lock file unusable: a directory on its path owned or writable by another user (ECP-0129), symlink, not a directory, FIFO/socket/device, another user's lock file or one with a second hard link at the lock path, cannot be created (e.g. read-only or full filesystem)",
    ),
    (
        "75",
        "busy: held by another process (skip), every tuner slot of the device held (`--tuners`, skip), or `--wait-timeout` passed; `--busy-exit-code` changes it (to 0 or a code not in this table)",
    ),
    ("77", "permission denied on the lock directory or lock file"),
    ("126", "the program was found but cannot be executed"),
    ("127", "the program was not found"),
];

/// The man page's EXIT STATUS and ENVIRONMENT sections, rendered from [`TABLE`].
#[must_use]
pub fn man_sections() -> String {
    let mut roff = String::from(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in TABLE {
        roff.push_str(".TP\n");
        roff.push_str(&roff_escape(code));
        roff.push('\n');
        roff.push_str(&roff_escape(&meaning.replace('`', "")));
        roff.push('\n');
    }
    roff.push_str(
        ".SH ENVIRONMENT\n.TP\nEC_LAUNCH_LOCK_DIR\ndefault for \\-\\-lock\\-dir\n\
         .TP\nEC_LAUNCH_LOG\nlog level (off, error, warn, info, debug, trace), overriding \\-v\n\
         .TP\nEC_SOURCE_URL, EC_SOURCE_KEY, EC_SOURCE_LOCK, EC_SOURCE_LOCK_FD\nset for the program by run\n\
         .TP\nEC_DEVICE_KEY, EC_TUNER_SLOT, EC_TUNER_SLOT_FD\nset for the program by run \\-\\-tuners\n",
    );
    roff
}

/// Escapes the characters roff treats specially in running text.
fn roff_escape(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    // A leading ' or . would be read as a request.
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// The meaning of `code` when `ec-launch` itself uses it, so it cannot be the
/// busy code; `None` for free codes, for 0 (busy as success is a sane
/// choice) and for the default busy code. Derived from [`TABLE`].
#[must_use]
pub fn meaning_of_reserved(code: u8) -> Option<&'static str> {
    if code == 0 || code == DEFAULT_BUSY {
        return None;
    }
    TABLE
        .iter()
        .find(|(c, _)| c.parse::<u8>() == Ok(code))
        .map(|(_, meaning)| *meaning)
}

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
    StateUnknown,
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
            Self::StateUnknown => 5,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_the_same_exit_codes() {
        let readme = include_str!("../README.md");
        for (code, meaning) in TABLE {
            let row = format!("| {code} | {meaning} |");
            assert!(readme.contains(&row), "README.md lacks the row {row}");
        }
    }

    #[test]
    fn statuses_match_the_table() {
        let statuses = [
            ExitStatus::Success,
            ExitStatus::Usage,
            ExitStatus::SourceFree,
            ExitStatus::Orphaned,
            ExitStatus::StateUnknown,
            ExitStatus::BadArgument,
            ExitStatus::BadSource,
            ExitStatus::NoInput,
            ExitStatus::OsError,
            ExitStatus::LockUnusable,
            ExitStatus::Busy(DEFAULT_BUSY),
            ExitStatus::NoPermission,
            ExitStatus::CannotRun,
            ExitStatus::NotFound,
        ];
        for status in statuses {
            let code = status.code().to_string();
            assert!(
                TABLE.iter().any(|(c, _)| *c == code),
                "exit code {code} is not documented"
            );
        }
    }
}
