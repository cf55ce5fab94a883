//! The library both executables of `ec-launch` share (ECP-0138): source
//! keys and redaction, the lock and the path trust it rests on, exec,
//! launch records and holders, tuner slots, the process table, the device
//! view, errors and exit codes, logging, and the one CLI definition. The
//! local launcher (`src/main.rs`) and cluster mode
//! (`crates/ec-launch-cluster`) are thin executables over it.
//!
//! Not a published API: its callers are the two executables of this
//! workspace, so the pedantic lints that guard a public interface's docs
//! are relaxed here, not in the executables.

#![allow(
    clippy::missing_errors_doc,
    clippy::missing_panics_doc,
    clippy::must_use_candidate
)]

pub mod cgroup;
pub mod cli;
pub mod command;
pub mod device_http;
pub mod entry;
pub mod error;
pub mod escaped;
pub mod exec;
pub mod exit_code;
pub mod fast_cli;
pub mod foreign_reader;
pub mod handoff;
pub mod holder;
pub mod lock;
pub mod lock_filesystem;
pub mod lock_record;
pub mod lock_waiter;
pub mod logging;
pub mod path_trust;
pub mod preempt;
pub mod printable;
pub mod priority;
pub mod proc_file;
pub mod proc_locks;
pub mod process;
pub mod readers;
pub mod redact;
pub mod resolve;
pub mod secret_params;
#[cfg(any(test, feature = "test-support"))]
pub mod secret_props;
pub mod shown;
pub mod slot_order;
pub mod sock_diag;
pub mod source_key;
pub mod spread;
pub mod tuner_slot;
pub mod waiting_room;
pub mod watchdog;
