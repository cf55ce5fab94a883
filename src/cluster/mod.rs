//! Cluster mode (issue 12, ECP-0134): source locks and tuner slots held as
//! etcd keys under a lease, across the nodes of one tuner LAN.
//!
//! This file is the coordinator's (configuration, key naming, the holder
//! value); engineer A's part is the etcd client ([`etcd`]) and taking a key
//! with skip/wait semantics ([`claim`]).

pub mod claim;
pub mod etcd;

/// The real-etcd test harness, shared with the integration tests.
#[cfg(test)]
#[path = "../../tests/support/etcd_server.rs"]
pub(crate) mod etcd_server;
