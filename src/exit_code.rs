//! Every exit status `ec-launch` itself can return, in one table.
//!
//! Operators' scripts and the NixOS module (`SuccessExitStatus=75`,
//! `RestartPreventExitStatus=75`) depend on these numbers; the README repeats
//! this table and must change with it. The numbers follow sysexits.h where a
//! sysexits meaning fits, and the `env(1)`/`flock(1)` convention for a program
//! that cannot be run (126 found but not runnable, 127 not found).
//!
//! After a successful `run`, `ec-launch` is gone: the status is the program's
//! own, because the program *is* the process `ec-launch` was. In cluster
//! mode (`--etcd`) it supervises the program and passes its status on
//! (128+N for a death by signal N), unless the fence stopped it (76).
//!
//! [`ExitStatus`] is the one description of them: each variant is declared
//! once with its number and meaning (the [`exit_statuses!`] macro below), and
//! `ec-launch man`, the `--busy-exit-code` check, [`ExitStatus::code`] and a
//! test against the README's table all read that declaration. Adding a
//! status is one entry there.

use std::process;

/// The first row of the README's table: not a status of ours.
const PROGRAMS_ROW: (&str, &str) = (
    "program's",
    "`run` exec'd the program; its status is the exit status. With `--etcd`, `run` supervises it and exits with its status, or 128+N when signal N killed it",
);

/// The default busy status: `EX_TEMPFAIL`, "try again later", which is what a
/// skipped duplicate launch is.
pub const DEFAULT_BUSY: u8 = 75;

/// Declares [`ExitStatus`] from `Variant => code, "meaning";` entries, in the
/// README's order. A variant that carries its number (`Busy`) binds it as
/// `Variant(name: u8 = documented) => name`; the documented value is what
/// the table shows.
macro_rules! exit_statuses {
    ($(
        $(#[$attr:meta])*
        $variant:ident $(($number:ident: $ty:ty = $documented:expr))? => $code:expr, $meaning:literal;
    )*) => {
        /// A status `ec-launch` returns on its own behalf (never the program's).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ExitStatus {
            $($(#[$attr])* $variant $(($ty))?,)*
        }

        impl ExitStatus {
            /// Every status, with its documented number, in table order.
            pub const ALL: &[Self] = &[$(Self::$variant $(($documented))?,)*];

            #[must_use]
            pub const fn code(self) -> u8 {
                match self {
                    $(Self::$variant $(($number))? => $code,)*
                }
            }

            /// What the status means, as the README and the man page say it.
            #[must_use]
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(Self::$variant { .. } => $meaning,)*
                }
            }
        }
    };
}

exit_statuses! {
    Success => 0, "`key`/`status` succeeded; `status SOURCE`: the source is held";
    /// clap rejected the command line.
    Usage => 2, "command line rejected (clap's usage error)";
    SourceFree => 3, "`status SOURCE`: the source is free";
    Orphaned => 4, "`status`: a lock is held on a file that no longer exists (orphaned)";
    StateUnknown => 5, "`status`: whether a lock is held cannot be told (a lock file this user cannot examine, or a PID namespace whose lock table hides it)";
    /// `status --device` saw a tuner in use by a reader without a slot here.
    ForeignReader => 6, "`status --device`: a device reports a tuner in use by a reader that holds no slot on this node (a foreign reader)";
    /// A process reads a source's endpoint without any lock there (ECP-0133).
    StaleReader => 7, "`status --readers`: a process has a TCP connection to a source's endpoint and holds the lock of no source there (a stale reader)";
    BadArgument => 64, "an argument the parser accepted cannot be used (e.g. a NUL byte, an empty program name, `--tuners` on a source without a host and no `--device`, `--tuners auto` on a source without a host, `--progress-watchdog` on a source without TCP bytes to count), or `EC_LAUNCH_LOCK_DIR` is set but empty; cluster mode: an `--etcd` URL with user information, a path or a scheme other than http/https, an https endpoint without `--etcd-ca`, `--etcd-cert` without `--etcd-key` (or the reverse), a malformed `--etcd-user-file` (not one `user:password` line) or certificate file, a `--etcd-ttl` too short for the renewal and the stop grace, or not whole seconds (etcd grants whole seconds); `ec-launch-cluster` started for anything but `run` or `status` with `--etcd`";
    BadSource => 65, "the source is empty, has whitespace or control characters, is not a URL with a host, has an `@` after the host, or `--key` is empty/has control characters";
    NoInput => 66, "`--source-file` cannot be read, is not a regular file or is over 64 KiB, or a device path does not resolve; cluster mode: `--etcd-ca`, `--etcd-cert`, `--etcd-key` or `--etcd-user-file` cannot be read";
    /// A tuner device or etcd cannot be asked (`EX_UNAVAILABLE`).
    Unavailable => 69, "a tuner device cannot be asked: `run --tuners auto` (its name does not resolve within 2 s, no connection, timeout, an HTTP error other than 404, a malformed answer; systemd restarts it), or `status --device` (or an entry of its `status.json` is no tuner; and no foreign reader was seen); cluster mode: etcd cannot be reached or answers with an error while the locks are taken (no endpoint answers, a TLS handshake fails or the server's certificate is not signed by `--etcd-ca`, no leader, an answer that cannot be understood, an endpoint of another cluster, 8 start-overs in a row after answers that leave unknown whether a key was taken; systemd restarts it); `ec-launch-cluster` missing or not executable beside `ec-launch`";
    OsError => 71, "an unexpected system call failure while locking (see the message)";
    LockUnusable => 73, "lock directory or lock file unusable: a directory on its path owned or writable by another user (ECP-0129), symlink, not a directory, FIFO/socket/device, another user's lock file or one with a second hard link at the lock path, cannot be created (e.g. read-only or full filesystem)";
    /// Busy carries its number because `--busy-exit-code` may change it.
    Busy(code: u8 = DEFAULT_BUSY) => code, "busy: held by another process (skip), every tuner slot of the device held (`--tuners`, skip), or `--wait-timeout` passed; `--busy-exit-code` changes it (to 0 or a code not in this table)";
    /// Cluster mode: the fence stopped the program (ECP-0134).
    Fenced => 76, "cluster mode: the lease was not renewed in time (etcd unreachable, partition, leader loss, lease lost), or etcd showed a key of ours lost (deleted, written over, its lease revoked, etcd restored, restarted empty or another cluster); the program was stopped before the lease could expire on the server and before another node may start after the loss; systemd restarts it";
    NoPermission => 77, "permission denied on the lock directory or lock file; cluster mode: etcd refused our credentials (a wrong password or unknown user in `--etcd-user-file`, a client certificate it does not accept, a user without permission on the keys)";
    /// The device cannot tell its tuner count: configure N (`EX_CONFIG`).
    DeviceNeedsTunerCount => 78, "`run --tuners auto`: the device has no `discover.json` (HTTP 404) or no usable `TunerCount`; pass `--tuners N`";
    CannotRun => 126, "the program was found but cannot be executed";
    NotFound => 127, "the program was not found";
}

/// Every documented exit status and its meaning as the README's table rows:
/// the program's own first, then each [`ExitStatus`].
pub fn rows() -> impl Iterator<Item = (String, &'static str)> {
    std::iter::once((PROGRAMS_ROW.0.to_owned(), PROGRAMS_ROW.1)).chain(
        ExitStatus::ALL
            .iter()
            .map(|status| (status.code().to_string(), status.meaning())),
    )
}

/// The man page's EXIT STATUS and ENVIRONMENT sections, rendered from [`rows`].
#[must_use]
pub fn man_sections() -> String {
    let mut roff = String::from(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in rows() {
        roff.push_str(".TP\n");
        roff.push_str(&roff_escape(&code));
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
/// choice) and for the default busy code.
#[must_use]
pub fn meaning_of_reserved(code: u8) -> Option<&'static str> {
    if code == 0 || code == DEFAULT_BUSY {
        return None;
    }
    ExitStatus::ALL
        .iter()
        .find(|status| status.code() == code)
        .map(|status| status.meaning())
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
        for (code, meaning) in rows() {
            let row = format!("| {code} | {meaning} |");
            assert!(readme.contains(&row), "README.md lacks the row {row}");
        }
    }

    #[test]
    fn every_status_has_its_own_number_and_a_meaning() {
        let mut codes: Vec<u8> = ExitStatus::ALL.iter().map(|s| s.code()).collect();
        let count = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), count, "two statuses share a number");
        assert!(ExitStatus::ALL.iter().all(|s| !s.meaning().is_empty()));
    }

    #[test]
    fn busy_reports_the_number_it_was_given_and_documents_the_default() {
        assert_eq!(ExitStatus::Busy(9).code(), 9);
        assert_eq!(
            ExitStatus::Busy(9).meaning(),
            ExitStatus::Busy(DEFAULT_BUSY).meaning()
        );
        assert!(ExitStatus::ALL.contains(&ExitStatus::Busy(DEFAULT_BUSY)));
    }

    #[test]
    fn codes_we_use_are_reserved_except_success_and_the_default_busy_code() {
        assert_eq!(meaning_of_reserved(0), None);
        assert_eq!(meaning_of_reserved(DEFAULT_BUSY), None);
        assert_eq!(meaning_of_reserved(1), None);
        assert_eq!(
            meaning_of_reserved(127),
            Some(ExitStatus::NotFound.meaning())
        );
    }
}
