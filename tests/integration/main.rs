//! Integration tests: the built `ec-launch` binary, real processes, real
//! `flock(2)`, real signals. One test crate, one module per subject.

// Test code: panics are the assertion mechanism and casts are on small values.
#![allow(
    clippy::missing_panics_doc,
    clippy::cast_possible_wrap,
    clippy::must_use_candidate
)]

mod caller_env;
mod cli;
mod cluster;
mod cluster_node;
mod cluster_placement;
mod cluster_priority;
mod cluster_slots;
mod descriptors;
mod device;
mod entry;
mod etcd_harness;
mod handoff;
mod hung_filesystem;
mod input;
mod invocation;
mod keys;
mod launch_order;
mod lock_filesystems;
mod lock_path;
mod logging;
mod main_thread;
mod netns;
mod operator;
mod priority;
mod readers;
mod records;
mod resolver;
mod run;
mod secrets;
mod slots;
mod status;
mod status_truth;
mod testenv;
mod tuner;
mod watchdog;

// The suites' shared support (ECP-0138), under the names the tests use.
use ec_test_support::{etcd_server, privilege, tuner_emulator};
