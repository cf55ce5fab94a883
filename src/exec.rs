//! Replacing ourselves with the program, keeping the lock.
//!
//! After `execvp(3)` no process of ours remains: the program runs with the
//! launcher's PID, so systemd's main PID, signals and exit status are the
//! program's own. Three things must be right before the call:
//! - the lock descriptor must survive exec: Rust opens every file
//!   `O_CLOEXEC`, so `FD_CLOEXEC` is cleared on that one descriptor only;
//! - SIGPIPE must be at its default: an ignored disposition survives exec
//!   (signal(7)), which would turn a reader's closed pipe into endless EPIPE
//!   instead of a clean death. Our C `main` skips std's start-up, which would
//!   ignore it, so it is ignored only if our parent left it so (some shells
//!   and supervisors do); the reset is for that case;
//! - arguments pass byte-exact as `OsString`; the one exception is the
//!   documented `{source}` token, replaced by the source URL.
//!
//! Everything that can fail on bad input (a NUL byte in the source or an
//! argument) is built by [`prepare`] before the lock directory is touched;
//! after locking only the descriptor number is added (ECP-0129).
//!
//! The descriptors the program inherits are moved out of the way first
//! (ECP-0136): a lock left on descriptor 3, the lowest free one, is what a
//! shell wrapper's `exec 3>/dev/null` or `exec 3>&1` replaces, silently
//! dropping the lock. Each passed lock is duplicated (`F_DUPFD_CLOEXEC`)
//! onto the highest free descriptor below `min(RLIMIT_NOFILE soft, 1024)`
//! (1023, 1022 in practice; under 1024 so `select(2)` users can still
//! poll it), and close-on-exec is cleared on those final numbers only: the
//! low originals close at exec. `EC_SOURCE_LOCK_FD` names the final number.
//!
//! If exec fails we return the errno; the caller's exit status follows the
//! `env(1)` convention (127 not found, 126 anything else).
//!
//! Cluster mode runs the program as a child instead (`supervise`); it
//! passes the descriptors through the same [`pass`] and [`passed_locks`],
//! so the program sees the same `argv`, environment and descriptors
//! either way.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::signal::{SigHandler, Signal, signal};

use crate::error::Error;
use crate::lock::HeldLock;
use crate::tuner_slot::HeldSlot;

/// Passed descriptors stay below this even under a higher limit: a
/// program using `select(2)` cannot watch a descriptor at `FD_SETSIZE` or above.
const PASSED_FD_CEILING: RawFd = 1024;

/// The token in ARGS that is replaced by the source URL.
const SOURCE_TOKEN: &str = "{source}";

/// Environment the program receives from us; any inherited values of these
/// names are replaced, so a nested launch never sees its parent's.
mod env {
    pub const SOURCE_KEY: &str = "EC_SOURCE_KEY";
    pub const SOURCE_LOCK: &str = "EC_SOURCE_LOCK";
    pub const SOURCE_LOCK_FD: &str = "EC_SOURCE_LOCK_FD";
    pub const SOURCE_URL: &str = "EC_SOURCE_URL";
    pub const DEVICE_KEY: &str = "EC_DEVICE_KEY";
    pub const TUNER_SLOT: &str = "EC_TUNER_SLOT";
    pub const TUNER_SLOT_FD: &str = "EC_TUNER_SLOT_FD";
    pub const PRIORITY: &str = "EC_PRIORITY";
    pub const ALL: [&str; 8] = [
        SOURCE_KEY,
        SOURCE_LOCK,
        SOURCE_LOCK_FD,
        SOURCE_URL,
        DEVICE_KEY,
        TUNER_SLOT,
        TUNER_SLOT_FD,
        PRIORITY,
    ];
}

/// What to run under the lock.
#[derive(Debug)]
pub struct Launch<'a> {
    pub program: &'a OsStr,
    pub args: &'a [OsString],
    /// The source as given (unredacted: the program needs it to connect).
    pub source: &'a str,
    pub key: &'a str,
    /// The lock file the program is told about in `EC_SOURCE_LOCK`.
    pub lock_path: &'a Path,
    /// With `--tuners`: the device key, in `EC_DEVICE_KEY`.
    pub device: Option<&'a str>,
}

/// The program's `argv` and environment, validated before locking; only
/// `EC_SOURCE_LOCK_FD` (and a slot's `EC_TUNER_SLOT`, `EC_TUNER_SLOT_FD`)
/// are missing, as the descriptors do not exist yet.
#[derive(Debug)]
pub struct Prepared {
    argv: Vec<CString>,
    envp: Vec<CString>,
    program: String,
}

/// Builds `argv` and the environment.
///
/// # Errors
/// [`Error::NulInArgument`] when the source or an argument holds a NUL byte.
pub fn prepare(launch: &Launch<'_>) -> Result<Prepared, Error> {
    // Named first, so a NUL in a `{source}` argument blames the source.
    c_string(launch.source.as_bytes().to_vec(), "the source")?;
    let prepared = Prepared {
        argv: program_argv(launch)?,
        envp: program_environment(launch, launch.lock_path.as_os_str().as_bytes())?,
        // A URL given as the program (a forgotten --source) may hold a credential.
        program: crate::redact::redact_word(&launch.program.to_string_lossy()),
    };
    ensure_within_exec_limits(&prepared.argv, &prepared.envp)?;
    Ok(prepared)
}

/// Room kept for what [`pass`] adds after locking (`EC_SOURCE_LOCK_FD`,
/// `EC_TUNER_SLOT`, `EC_TUNER_SLOT_FD`: three short entries).
const PASSED_ENV_RESERVE: usize = 3 * (64 + std::mem::size_of::<usize>());

/// Refuses, before the lock directory is touched, what `execve(2)` would
/// refuse with E2BIG: one string over `MAX_ARG_STRLEN` (32 pages), or all
/// of them with their pointers over `ARG_MAX` (`sysconf`, a quarter of the
/// stack limit). Found only at exec, it was logged as a start first.
fn ensure_within_exec_limits(argv: &[CString], envp: &[CString]) -> Result<(), Error> {
    // SAFETY: sysconf only reads a system value.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let max_string = page * 32;
    // Each string is named only when it is refused: describing every
    // argument and environment entry up front was a sixth of a launch's
    // instructions.
    let describe_argument = |i: usize| {
        if i == 0 {
            "the program name".to_owned()
        } else {
            format!("argument {i} (with {SOURCE_TOKEN} expanded)")
        }
    };
    let describe_entry = |entry: &CString| {
        let name = entry
            .as_bytes()
            .split(|&b| b == b'=')
            .next()
            .unwrap_or_default();
        format!(
            "the environment variable {}",
            crate::printable::printable(&String::from_utf8_lossy(name))
        )
    };
    let too_long = |string: &CString| string.as_bytes_with_nul().len() > max_string;
    let refused = (argv
        .iter()
        .position(too_long)
        .map(|i| (describe_argument(i), &argv[i])))
    .or_else(|| {
        envp.iter()
            .find(|e| too_long(e))
            .map(|e| (describe_entry(e), e))
    });
    if let Some((what, string)) = refused {
        return Err(Error::ArgumentsTooLong {
            what,
            bytes: string.as_bytes_with_nul().len(),
            limit: max_string,
            limit_name: "one argument or environment entry (MAX_ARG_STRLEN)",
        });
    }
    // SAFETY: sysconf only reads a system value.
    let Ok(limit) = usize::try_from(unsafe { libc::sysconf(libc::_SC_ARG_MAX) }) else {
        return Ok(());
    };
    // The kernel also caps it at 3/4 of the default 8 MiB stack, whatever
    // the stack limit (fs/exec.c), which sysconf does not know.
    let limit = limit.min(6 << 20);
    let pointer = std::mem::size_of::<usize>();
    let total: usize = argv
        .iter()
        .chain(envp)
        .map(|s| s.as_bytes_with_nul().len() + pointer)
        .sum::<usize>()
        + 2 * pointer
        + PASSED_ENV_RESERVE;
    if total > limit {
        return Err(Error::ArgumentsTooLong {
            what: "the program's arguments and environment together".to_owned(),
            bytes: total,
            limit,
            limit_name: "exec (ARG_MAX)",
        });
    }
    Ok(())
}

impl Prepared {
    /// The program's name as logs and records show it (redacted: a URL
    /// given as the program may hold a credential).
    #[must_use]
    pub fn shown_program(&self) -> &str {
        &self.program
    }

    /// Tells the program its launch's priority in `EC_PRIORITY` (ECP-0139;
    /// an inherited value was removed by [`prepare`]).
    #[must_use]
    pub fn with_priority(mut self, priority: u16) -> Self {
        if let Ok(entry) = CString::new(format!("{}={priority}", env::PRIORITY)) {
            self.envp.push(entry);
        }
        self
    }
}

/// Execs the prepared program holding `held` (and `slot`, with
/// `--tuners`). Returns only on failure.
#[must_use]
pub fn exec(prepared: Prepared, held: &HeldLock, slot: Option<&HeldSlot>) -> Error {
    match try_exec(prepared, held, slot) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn try_exec(prepared: Prepared, held: &HeldLock, slot: Option<&HeldSlot>) -> Result<Never, Error> {
    let Passed {
        argv,
        envp,
        program,
        fds,
    } = pass(prepared, held, slot)?;
    // Only these descriptors survive exec: a waiting thread's slot
    // descriptors, and the low originals of the passed ones, stay
    // close-on-exec, so the program holds one slot, at the high numbers.
    for (lock, fd) in passed_locks(held, slot).into_iter().zip(&fds) {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|source| Error::PassLock {
            path: lock.path.clone(),
            source,
        })?;
    }
    // SAFETY: installing SIG_DFL runs no code of ours in signal context, and
    // this process is about to exec; no other thread depends on SIGPIPE.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }
        .map_err(|source| Error::ResetSigpipe { source })?;

    let errno = match nix::unistd::execvpe(&argv[0], &argv, &envp) {
        Ok(never) => match never {},
        Err(errno) => errno,
    };
    Err(Error::Exec {
        program,
        source: errno,
    })
}

/// The program's `argv` and its whole environment, descriptors included:
/// what exec (or, in cluster mode, the supervisor's child) runs with.
#[derive(Debug)]
pub struct Passed {
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    /// The program's name as errors show it (redacted).
    pub program: String,
    /// The passed descriptors at their final (high) numbers, in the order
    /// of [`passed_locks`], still close-on-exec: whoever starts the
    /// program clears that flag on these and no others.
    pub fds: Vec<OwnedFd>,
}

/// Completes `prepared` with the numbers of the descriptors the program
/// inherits: `EC_SOURCE_LOCK_FD`, and with a slot `EC_TUNER_SLOT` and
/// `EC_TUNER_SLOT_FD`. Exec and the supervisor both pass the program its
/// locks this way, so the program cannot tell them apart.
///
/// # Errors
/// [`Error::PassLock`] when a descriptor cannot be duplicated.
pub fn pass(prepared: Prepared, held: &HeldLock, slot: Option<&HeldSlot>) -> Result<Passed, Error> {
    let Prepared {
        argv,
        mut envp,
        program,
    } = prepared;
    let mut fds = Vec::new();
    for lock in passed_locks(held, slot) {
        let fd = place_high(lock.lock.as_fd()).map_err(|source| Error::PassLock {
            path: lock.path.clone(),
            source,
        })?;
        fds.push(fd);
    }
    let lock_fd = fds[0].as_raw_fd();
    envp.push(c_string(
        format!("{}={lock_fd}", env::SOURCE_LOCK_FD).into_bytes(),
        env::SOURCE_LOCK_FD,
    )?);
    if let Some(slot) = slot {
        let fd = fds[1].as_raw_fd();
        for (name, value) in [
            (env::TUNER_SLOT, slot.slot.to_string()),
            (env::TUNER_SLOT_FD, fd.to_string()),
        ] {
            envp.push(c_string(format!("{name}={value}").into_bytes(), name)?);
        }
    }
    Ok(Passed {
        argv,
        envp,
        program,
        fds,
    })
}

/// A close-on-exec duplicate of `fd` on the highest free descriptor below
/// `min(RLIMIT_NOFILE soft, 1024)`, or on the lowest free one when none
/// is free up there (a tiny `ulimit -n`): never worse than before.
/// `F_DUPFD_CLOEXEC` takes the lowest free number at or above the one asked
/// for, so asking for a free number gets that number.
fn place_high(fd: BorrowedFd<'_>) -> Result<OwnedFd, nix::errno::Errno> {
    use nix::errno::Errno;
    let ceiling = open_file_limit().min(PASSED_FD_CEILING);
    let mut candidate = ceiling - 1;
    while candidate > fd.as_raw_fd() {
        // SAFETY: F_GETFD only reads the flags of a descriptor number; it
        // touches no memory, and an unused number fails with EBADF.
        let free =
            unsafe { libc::fcntl(candidate, libc::F_GETFD) } == -1 && Errno::last() == Errno::EBADF;
        if free {
            match fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(candidate)).map(owned) {
                Ok(new) if new.as_raw_fd() < ceiling => return Ok(new),
                // Another thread took the number meanwhile: look lower.
                Ok(_too_high) => {}
                Err(Errno::EMFILE | Errno::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        candidate -= 1;
    }
    fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(0)).map(owned)
}

/// Takes ownership of a descriptor `F_DUPFD_CLOEXEC` just returned.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` is a new descriptor from a successful F_DUPFD_CLOEXEC,
    // owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The soft `RLIMIT_NOFILE`: descriptors must be below it.
fn open_file_limit() -> RawFd {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return PASSED_FD_CEILING;
    }
    RawFd::try_from(limit.rlim_cur).unwrap_or(RawFd::MAX)
}

/// The locks whose descriptors the program inherits (and only these).
pub fn passed_locks<'a>(held: &'a HeldLock, slot: Option<&'a HeldSlot>) -> Vec<&'a HeldLock> {
    std::iter::once(held)
        .chain(slot.map(|slot| &slot.lock))
        .collect()
}

fn program_argv(launch: &Launch<'_>) -> Result<Vec<CString>, Error> {
    let mut argv = Vec::with_capacity(launch.args.len() + 1);
    argv.push(c_string(
        launch.program.as_bytes().to_vec(),
        "the program name",
    )?);
    for (index, arg) in launch.args.iter().enumerate() {
        let bytes = substitute_source(arg.as_bytes(), launch.source.as_bytes());
        argv.push(c_string(bytes, &format!("argument {}", index + 1))?);
    }
    Ok(argv)
}

/// Replaces every `{source}` in `arg` with `source`; other bytes untouched.
fn substitute_source(arg: &[u8], source: &[u8]) -> Vec<u8> {
    let token = SOURCE_TOKEN.as_bytes();
    let mut out = Vec::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.windows(token.len()).position(|w| w == token) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(source);
        rest = &rest[at + token.len()..];
    }
    out.extend_from_slice(rest);
    out
}

fn program_environment(launch: &Launch<'_>, lock_path: &[u8]) -> Result<Vec<CString>, Error> {
    let mut envp = Vec::new();
    for entry in inherited_environment() {
        // As `std::env::vars_os` reads it: the name ends at the first `=`
        // after its first byte; an entry without one is no variable.
        let bytes = entry.to_bytes();
        let Some(at) = bytes
            .iter()
            .skip(1)
            .position(|&b| b == b'=')
            .map(|at| at + 1)
        else {
            continue;
        };
        let name = &bytes[..at];
        if env::ALL.iter().any(|ours| name == ours.as_bytes()) {
            continue;
        }
        envp.push(CString::from(entry));
    }
    let ours: [(&str, &[u8]); 3] = [
        (env::SOURCE_KEY, launch.key.as_bytes()),
        (env::SOURCE_LOCK, lock_path),
        (env::SOURCE_URL, launch.source.as_bytes()),
    ];
    let device = launch.device.map(|d| (env::DEVICE_KEY, d.as_bytes()));
    for (name, value) in ours.into_iter().chain(device) {
        let mut entry = name.as_bytes().to_vec();
        entry.push(b'=');
        entry.extend_from_slice(value);
        envp.push(c_string(entry, name)?);
    }
    Ok(envp)
}

/// Every entry of the process's environment (`NAME=value`), as C strings
/// borrowed from `environ`: one copy each into the program's environment,
/// where `std::env::vars_os` would make three (name, value, entry), for an
/// environment of a hundred variables a fifth of a launch's instructions.
fn inherited_environment() -> impl Iterator<Item = &'static CStr> {
    unsafe extern "C" {
        static environ: *const *const std::ffi::c_char;
    }
    // SAFETY: `environ` is the C runtime's NULL-terminated array of
    // NUL-terminated strings. Nothing in this process changes the
    // environment (no `set_var`, `setenv` or `putenv` anywhere), so the
    // array and its strings stay as they are until exec.
    let mut cursor = unsafe { environ };
    std::iter::from_fn(move || {
        if cursor.is_null() {
            return None;
        }
        // SAFETY: `cursor` points into the array, before or at its NULL end.
        let entry = unsafe { *cursor };
        if entry.is_null() {
            return None;
        }
        // SAFETY: as above; the next slot exists because this one is not
        // the terminating NULL.
        cursor = unsafe { cursor.add(1) };
        // SAFETY: a non-null entry is a NUL-terminated string (see above).
        Some(unsafe { CStr::from_ptr(entry) })
    })
}

fn c_string(bytes: Vec<u8>, what: &str) -> Result<CString, Error> {
    CString::new(bytes).map_err(|_| Error::NulInArgument {
        what: what.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_in_the_source_is_refused_while_preparing_not_at_exec() {
        let args = [OsString::from("--in={source}")];
        let launch = Launch {
            program: OsStr::new("ec-node"),
            args: &args,
            source: "http://h/x?a=\0",
            key: "http://h/x",
            lock_path: Path::new("/run/x.lock"),
            device: None,
        };
        let error = prepare(&launch).unwrap_err();
        assert_eq!(error.to_string(), "the source contains a NUL byte");
    }

    #[test]
    fn source_token_is_replaced_everywhere_and_nothing_else_changes() {
        assert_eq!(
            substitute_source(b"--in={source}", b"http://h/x"),
            b"--in=http://h/x"
        );
        assert_eq!(substitute_source(b"{source}{source}", b"u"), b"uu");
        assert_eq!(substitute_source(b"\xff-{sourc}", b"u"), b"\xff-{sourc}");
    }
}
