//! `ec-launch-cluster`: `ec-launch`'s cluster mode (`--etcd`, ECP-0134) as
//! an executable of its own (ECP-0138). `ec-launch run --etcd …` and
//! `status --etcd …` exec it first thing, with the same arguments and
//! environment; it parses them with the very same CLI definition (the
//! library's), so a flag cannot mean two things, and runs only cluster
//! mode: anything else is refused (64) and belongs to `ec-launch`.
//!
//! Here live the etcd client and TLS, the claims and their custody, the
//! supervisor and the fence, and `status --etcd`'s cluster view; the
//! local locks, records, exec and messages are the library's.
//!
//! The entry point is a C `main`, as `ec-launch`'s (see its `main.rs`).

// Unit tests get the test harness's `main` instead.
#![cfg_attr(not(test), no_main)]

mod cluster;
mod cluster_error;
mod command;
mod lock_free;
mod stragglers;
mod supervise;

// The library's modules under the names the cluster code has always used
// (`crate::error`, `crate::lock`, …), so the code reads as it did in one
// crate.
#[cfg(test)]
use ec_launch::entry::error_line;
#[cfg(test)]
use ec_launch::secret_props;
use ec_launch::{
    cli, entry, error, exec, exit_code, holder, lock, lock_record, logging, printable, priority,
    proc_locks, process, redact, shown, tuner_slot, watchdog,
};

use std::ffi::OsString;
#[cfg(not(test))]
use std::ffi::{c_char, c_int};

use crate::cli::Command;
use crate::exit_code::ExitStatus;

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
    keep_invoked_name(&command_line);
    let status = run(&command_line);
    // Rust's own entry point would flush stdout on the way out; ours must.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    c_int::from(status.code())
}

/// Names the process as it was invoked (`argv[0]`'s file name, normally
/// `ec-launch`), not after this file: exec named it `ec-launch-clust`, but
/// it is the `ec-launch` a unit started, and `ps`, `status` and systemd
/// (`MainPID`'s command) should say so, as they did before the split.
#[cfg_attr(test, allow(dead_code))]
fn keep_invoked_name(args: &[OsString]) {
    use std::os::unix::ffi::OsStrExt;
    let Some(name) = args
        .first()
        .and_then(|arg0| std::path::Path::new(arg0).file_name())
    else {
        return;
    };
    // The kernel keeps 15 bytes (TASK_COMM_LEN, prctl(2)).
    let name = &name.as_bytes()[..name.len().min(15)];
    if let Ok(name) = std::ffi::CString::new(name) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}

#[cfg_attr(test, allow(dead_code))]
fn run(args: &[OsString]) -> ExitStatus {
    let cli = match entry::parse_args(args) {
        Ok(cli) => cli,
        Err(status) => return status,
    };
    logging::init(cli.verbose);
    let result = match cli.command {
        Command::Run(args) if !args.cluster.etcd.endpoints.is_empty() => {
            ec_launch::command::run::run_with(args, command::cluster_run::from_args)
        }
        Command::Status(args) if !args.etcd.endpoints.is_empty() => {
            ec_launch::command::status::status_with(&args, &command::cluster_view::EtcdView)
        }
        _ => Err(cluster_error::ClusterError::NotClusterMode.into()),
    };
    entry::finish(result)
}
