//! `ec-launch`: the per-source lock-and-exec launcher for every-channel
//! publishers. See the README for the contract and `evolution/` for why.
//!
//! The entry point is a C `main` (`#![no_main]`) rather than Rust's: std's
//! start-up asks glibc for the main thread's stack bounds, which parses
//! `/proc/self/maps` and is a sixth of a launch's instructions, for a
//! stack-overflow message a process that execs within a millisecond does not
//! need. It also leaves SIGPIPE at its default, which exec would pass on
//! (`exec` still resets it, in case we are ever started with it ignored).
//! std itself works as usual: glibc hands it `argv` and `envp` before `main`.
//! Measured in `evolution/ECP-0128-launch-cost.md`.

// Unit tests get the test harness's `main` instead.
#![cfg_attr(not(test), no_main)]

mod cgroup;
mod cli;
mod command;
mod error;
mod exec;
mod exit_code;
mod holder;
mod lock;
mod lock_record;
mod logging;
mod path_trust;
mod printable;
mod proc_locks;
mod process;
mod redact;
mod secret_params;
#[cfg(test)]
mod secret_props;
mod sock_diag;
mod source_key;
mod watchdog;

use std::error::Error as _;
use std::fmt::Write as _;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::exit_code::ExitStatus;

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    if !ensure_standard_descriptors() {
        return std::ffi::c_int::from(ExitStatus::OsError.code());
    }
    let status = run();
    // Rust's own entry point would flush stdout on the way out; ours must.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::ffi::c_int::from(status.code())
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
fn run() -> ExitStatus {
    let cli = match parse_args() {
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
fn parse_args() -> Result<Cli, ExitStatus> {
    let error = match Cli::try_parse() {
        Ok(cli) => return Ok(cli),
        Err(error) => error,
    };
    if !error.use_stderr() {
        // --help, --version: not an error, and nothing of the user's in it.
        let _ = error.print();
        return Err(ExitStatus::Success);
    }
    let args: Vec<String> = std::env::args_os()
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
