//! Cluster mode (`--etcd`, ECP-0134): the source's lock and a tuner slot
//! held in etcd too, so one reader per source and N per device hold across
//! nodes, not only within one.
//!
//! The local `flock` is always taken first (two units on one node never
//! race through etcd); the cluster key second, under a lease the launcher
//! keeps alive while it supervises the program, and fences (stops the
//! program) before the lease could expire on the server. Nothing here runs
//! without `--etcd`: the local launch path is what it was, and is another
//! executable's (`ec-launch` execs this one for `--etcd`, ECP-0138).

pub mod claim;
pub mod custody;
pub mod etcd;
pub mod fence;
pub mod keyspace;
pub mod placement;
pub mod precedence;
pub mod preemption;
pub mod record;
pub mod session;
pub mod vouch;

/// The real-etcd test harness, shared with the integration tests.
#[cfg(test)]
pub(crate) use ec_test_support::etcd_server;

use std::time::Duration;

use crate::cli::{ClusterArgs, EtcdArgs, Placement};
use crate::error::Error;
use etcd::EtcdConnect;
use fence::FenceTiming;

/// How to reach etcd and who we are there; `status --etcd` needs no more.
#[derive(Debug)]
pub struct Connection {
    pub connect: EtcdConnect,
    /// This node's name in the records.
    pub node: String,
}

/// `run`'s cluster settings, validated before anything is locked.
#[derive(Debug)]
pub struct ClusterConfig {
    pub connection: Connection,
    pub timing: FenceTiming,
    /// `--placement spread` (the default with `--on-busy wait`): this
    /// node's weight; `None` for `first` (ECP-0140).
    pub spread: Option<placement::Spread>,
}

impl Connection {
    /// `None` without `--etcd` (local mode).
    ///
    /// # Errors
    /// An endpoint that is not a URL, an empty `EC_LAUNCH_ETCD`, or etcd
    /// options given without `--etcd`.
    pub fn from_args(args: &EtcdArgs, call_timeout: Duration) -> Result<Option<Self>, Error> {
        if args.endpoints.is_empty() {
            if let Some(flag) = crate::cli::stray_cluster_option(args) {
                return Err(Error::ClusterOptionWithoutEtcd { flag });
            }
            return Ok(None);
        }
        let mut endpoints = Vec::with_capacity(args.endpoints.len());
        for text in &args.endpoints {
            endpoints.push(etcd::parse_endpoint(text)?);
        }
        let node = match &args.node {
            Some(node) => {
                if node.is_empty() || node.chars().any(char::is_control) {
                    return Err(Error::BadNodeName);
                }
                node.clone()
            }
            None => record::default_node_name(),
        };
        Ok(Some(Self {
            connect: EtcdConnect {
                endpoints,
                ca_file: args.etcd_ca.clone(),
                cert_file: args.etcd_cert.clone(),
                key_file: args.etcd_key.clone(),
                user_file: args.etcd_user_file.clone(),
                call_timeout,
            },
            node,
        }))
    }
}

impl ClusterConfig {
    /// `None` without `--etcd`.
    ///
    /// # Errors
    /// As [`Connection::from_args`], a TTL too short for the stop grace,
    /// placement options without `--etcd`, and `--placement spread`
    /// without `wait` (`--on-busy wait`).
    pub fn from_args(args: &ClusterArgs, wait: bool) -> Result<Option<Self>, Error> {
        if args.etcd.endpoints.is_empty() {
            // Like the other cluster-only options: asked for and silently
            // ignored would surprise more than an error.
            if args.placement.is_some() {
                return Err(Error::ClusterOptionWithoutEtcd {
                    flag: "--placement",
                });
            }
            if args.node_weight.is_some() {
                return Err(Error::ClusterOptionWithoutEtcd {
                    flag: "--node-weight",
                });
            }
            Connection::from_args(&args.etcd, Duration::ZERO)?;
            return Ok(None);
        }
        let spread = match (args.placement, wait) {
            (Some(Placement::Spread), false) => return Err(Error::SpreadNeedsWait),
            (Some(Placement::First), _) | (None, false) => None,
            (Some(Placement::Spread) | None, true) => Some(placement::Spread {
                weight: args.node_weight.unwrap_or(1),
            }),
        };
        let timing = FenceTiming::new(args.etcd_ttl, args.etcd_stop_grace)?;
        Ok(
            Connection::from_args(&args.etcd, timing.call_timeout())?.map(|connection| Self {
                connection,
                timing,
                spread,
            }),
        )
    }
}
