//! Cluster mode's part of each subcommand that has one: `run --etcd`
//! ([`cluster_run`]) and `status --etcd` ([`cluster_view`]). The rest of
//! each is the library's.

pub mod cluster_run;
pub mod cluster_view;
