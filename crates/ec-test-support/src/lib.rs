//! What `ec-launch`'s test suites share (ECP-0138): a real etcd on loopback
//! ([`etcd_server`]), the tuner emulator ([`tuner_emulator`]), the rule for
//! root-only tests ([`privilege`]) and the unit policy's reader
//! ([`policy`]), and where the executables under test are ([`executables`]). A crate of its own, so each suite (and the cluster crate's
//! unit tests) depends on it instead of including its files by path.

// A test helper's API serves its callers, not a published interface.
#![allow(
    clippy::missing_errors_doc,
    clippy::missing_panics_doc,
    clippy::must_use_candidate
)]

pub mod etcd_server;
pub mod executables;
pub mod policy;
pub mod privilege;
pub mod tuner_emulator;
