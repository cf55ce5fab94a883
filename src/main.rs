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
mod printable;
mod proc_locks;
mod process;
mod redact;
#[cfg(test)]
mod secret_props;
mod source_key;

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
    let status = run();
    // Rust's own entry point would flush stdout on the way out; ours must.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::ffi::c_int::from(status.code())
}

#[cfg_attr(test, allow(dead_code))]
fn run() -> ExitStatus {
    let cli = Cli::parse();
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
