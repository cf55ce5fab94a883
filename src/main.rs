//! `ec-launch`: the per-source lock-and-exec launcher for every-channel
//! publishers. See the README and `docs/` for the contract and `evolution/` for why.
//! The code is the library's (`src/lib.rs`); cluster mode is the other
//! executable, `ec-launch-cluster`, which this one execs first thing when
//! `--etcd` or `EC_LAUNCH_ETCD` asks for it (ECP-0138).
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

use std::ffi::OsString;
#[cfg(not(test))]
use std::ffi::{c_char, c_int};

use ec_launch::cli::Command;
use ec_launch::exit_code::ExitStatus;
#[cfg(not(test))]
use ec_launch::handoff;
use ec_launch::{command, entry, logging};

#[cfg(not(test))]
#[unsafe(no_mangle)]
#[allow(clippy::similar_names)] // C's names for them
extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    // First, before anything (even an allocation) can open a descriptor.
    if !entry::ensure_standard_descriptors() {
        return c_int::from(ExitStatus::OsError.code());
    }
    // SAFETY: the C runtime calls `main` with `argv` holding `argc`
    // NUL-terminated strings that live until the process ends (C11 5.1.2.2.1).
    let command_line = unsafe { entry::arguments(argc, argv) };
    // Cluster mode is the other executable's, before any lock, log line or
    // descriptor of ours; this returns only when it cannot be run.
    if handoff::cluster_asked(&command_line) {
        return c_int::from(handoff::exec_cluster(&command_line).code());
    }
    let status = run(&command_line);
    // Rust's own entry point would flush stdout on the way out; ours must.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    c_int::from(status.code())
}

#[cfg_attr(test, allow(dead_code))]
fn run(args: &[OsString]) -> ExitStatus {
    let cli = match entry::parse_args(args) {
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
    entry::finish(result)
}
