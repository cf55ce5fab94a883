//! `ec-launch`: the per-source lock-and-exec launcher for every-channel
//! publishers. See the README and `docs/` for the contract and `evolution/` for why.
//!
//! The entry point is a C `main` (`#![no_main]`) rather than Rust's: std's
//! start-up asks glibc for the main thread's stack bounds, which parses
//! `/proc/self/maps` and is a sixth of a launch's instructions, for a
//! stack-overflow message a process that execs within a millisecond does not
//! need. It also leaves SIGPIPE as inherited (std's start-up would ignore
//! it), which exec would pass on (`exec` resets it, in case we are started
//! with it ignored). The command line is parsed from the `argc`/`argv` this
//! `main` receives, never from `std::env::args_os()`: std fills that in its
//! own start-up (skipped here) or from the arguments glibc, and no other
//! libc, passes to `.init_array` functions; on musl it would be empty
//! (ECP-0128).
//! Measured in `evolution/ECP-0128-launch-cost.md`.

// Unit tests get the test harness's `main` instead.
#![cfg_attr(not(test), no_main)]

mod cgroup;
mod cli;
mod cluster;
mod command;
mod device_http;
mod error;
mod exec;
mod exit_code;
mod foreign_reader;
mod holder;
mod lock;
mod lock_filesystem;
mod lock_record;
mod lock_waiter;
mod logging;
mod path_trust;
mod printable;
mod proc_locks;
mod process;
mod readers;
mod redact;
mod resolve;
mod secret_params;
#[cfg(test)]
mod secret_props;
mod shown;
mod sock_diag;
mod source_key;
mod supervise;
mod tuner_slot;
mod watchdog;

use std::error::Error as _;
use std::ffi::{CStr, OsStr, OsString, c_char, c_int};
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::exit_code::ExitStatus;

#[cfg(not(test))]
#[unsafe(no_mangle)]
#[allow(clippy::similar_names)] // C's names for them
extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    // First, before anything (even an allocation) can open a descriptor.
    if !ensure_standard_descriptors() {
        return c_int::from(ExitStatus::OsError.code());
    }
    // SAFETY: the C runtime calls `main` with `argv` holding `argc`
    // NUL-terminated strings that live until the process ends (C11 5.1.2.2.1).
    let command_line = unsafe { arguments(argc, argv) };
    let status = run(&command_line);
    // Rust's own entry point would flush stdout on the way out; ours must.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    c_int::from(status.code())
}

/// The command line `main` received, byte-exact: one allocation for the
/// vector and one per argument, the same as `std::env::args_os()` costs.
///
/// # Safety
/// `argv` is null, or points to at least `argc` pointers, each null or to a
/// NUL-terminated string valid for the duration of the call.
#[cfg_attr(test, allow(dead_code))]
#[allow(clippy::similar_names)] // C's names for them
unsafe fn arguments(argc: c_int, argv: *const *const c_char) -> Vec<OsString> {
    let count = usize::try_from(argc).unwrap_or(0);
    if argv.is_null() {
        return Vec::new();
    }
    let mut line = Vec::with_capacity(count);
    for index in 0..count {
        // SAFETY: `index < argc`, so the caller guarantees the slot is readable.
        let arg = unsafe { *argv.add(index) };
        if arg.is_null() {
            break;
        }
        // SAFETY: a non-null slot points to a NUL-terminated string (caller).
        let bytes = unsafe { CStr::from_ptr(arg) }.to_bytes();
        line.push(OsStr::from_bytes(bytes).to_owned());
    }
    line
}

/// Opens `/dev/null` on whichever of descriptors 0, 1 and 2 is closed, before
/// anything else is opened. A daemon-style caller (`<&-`) would otherwise
/// get the lock file on a standard descriptor: the program's own redirection
/// would drop the lock, and with 2 closed our log would go into the lock
/// file. Rust's own start-up does this; our C `main` skips it (ECP-0129).
/// False when a descriptor cannot be opened: then nothing is safe to open.
#[cfg_attr(test, allow(dead_code))]
fn ensure_standard_descriptors() -> bool {
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the flags of descriptor `fd`, open or not.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        // SAFETY: a NUL-terminated static path; no pointer outlives the call.
        // Every lower descriptor is open, so the lowest free one is `fd`.
        let opened = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        if opened != fd {
            return false;
        }
    }
    true
}

#[cfg_attr(test, allow(dead_code))]
fn run(args: &[OsString]) -> ExitStatus {
    let cli = match parse_args(args) {
        Ok(cli) => cli,
        Err(status) => return status,
    };
    logging::init(cli.verbose);
    let result = match cli.command {
        Command::Run(args) => command::run::run(args),
        Command::Key(args) => command::key::key(&args),
        Command::Status(args) => command::status::status(&args),
        Command::Completions { shell } => Ok(command::docs::completions(shell)),
        Command::Man => Ok(command::docs::man()),
    };
    match result {
        Ok(status) => status,
        Err(error) => {
            eprintln!("{}", error_line(&error));
            error.exit_status()
        }
    }
}

/// The command line, or clap's answer to it: help and version as clap
/// prints them, and usage errors with every argument that carries a
/// credential redacted (clap quotes unexpected and invalid arguments).
fn parse_args(args: &[OsString]) -> Result<Cli, ExitStatus> {
    let error = match Cli::try_parse_from(args) {
        Ok(cli) => return Ok(cli),
        Err(error) => error,
    };
    if !error.use_stderr() {
        // --help, --version: not an error, and nothing of the user's in it.
        let _ = error.print();
        return Err(ExitStatus::Success);
    }
    let args: Vec<String> = args
        .iter()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    eprint!("{}", redact_arguments(&error.render().to_string(), &args));
    Err(ExitStatus::Usage)
}

/// `text` with every argument (and the value of every `--flag=value`) that
/// could hold a credential replaced by its redacted form, longest first so
/// a value inside a longer argument is not half-replaced.
fn redact_arguments(text: &str, args: &[String]) -> String {
    let mut candidates: Vec<&str> = args
        .iter()
        .flat_map(|arg| {
            let value = arg.split_once('=').map(|(_, value)| value);
            std::iter::once(arg.as_str()).chain(value)
        })
        .filter(|arg| !arg.is_empty())
        .collect();
    candidates.sort_by_key(|arg| std::cmp::Reverse(arg.len()));
    let mut text = text.to_owned();
    for arg in candidates {
        let shown = redact::redact_word(arg);
        if shown != arg {
            text = text.replace(arg, &shown);
        }
    }
    text
}

/// `error: <what>: <cause>: <cause>; <what to do>`, on one line.
fn error_line(error: &error::Error) -> String {
    let mut line = format!("error: {error}");
    let mut cause = error.source();
    while let Some(inner) = cause {
        let _ = write!(line, ": {inner}");
        cause = inner.source();
    }
    line.push_str("; ");
    line.push_str(error.hint());
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source_key::KeyError;

    #[test]
    fn the_command_line_is_read_from_the_argv_main_receives_byte_exact() {
        let strings = [c"ec-launch", c"key", c"/run/l\xff", c""];
        let mut argv: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        // SAFETY: `argv` holds four valid C strings and a terminating null.
        let line = unsafe { arguments(4, argv.as_ptr()) };
        let expected: Vec<OsString> = strings
            .iter()
            .map(|s| OsStr::from_bytes(s.to_bytes()).to_owned())
            .collect();
        assert_eq!(line, expected);
        assert_eq!(line[2].as_bytes(), b"/run/l\xff");
    }

    #[test]
    fn an_empty_or_missing_argv_is_an_empty_command_line() {
        // SAFETY: a null `argv` is allowed and never read.
        assert!(unsafe { arguments(0, std::ptr::null()) }.is_empty());
        // SAFETY: as above; a negative count reads nothing.
        assert!(unsafe { arguments(-1, std::ptr::null()) }.is_empty());
    }

    #[test]
    fn the_parser_sees_the_given_arguments_not_the_processes_own() {
        let args: Vec<OsString> = ["ec-launch", "key", "http://h/x"]
            .iter()
            .map(OsString::from)
            .collect();
        let cli = parse_args(&args).expect("parses");
        assert!(matches!(cli.command, Command::Key(_)));
    }

    #[test]
    fn every_source_error_gives_its_advice_once() {
        let causes = || {
            [
                KeyError::Empty,
                KeyError::Whitespace,
                KeyError::NotAUrl("relative URL without a base".into()),
                KeyError::NoHost,
                KeyError::AtAfterHost,
                KeyError::PathUnresolvable {
                    path: "/dev/x".into(),
                    reason: "not found".into(),
                },
                KeyError::BadOverride,
            ]
        };
        let errors = causes()
            .into_iter()
            .map(error::Error::Key)
            .chain(causes().into_iter().map(error::Error::SourceArg));
        for error in errors {
            let line = error_line(&error);
            assert_eq!(line.matches("; ").count(), 1, "{line}");
            assert!(!line.ends_with("; "), "{line}");
        }
    }
}
