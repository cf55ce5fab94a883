//! `status --etcd`: the cluster's holders beside this node's locks
//! (ECP-0134).
//!
//! The answer comes from etcd itself (one range over the prefix, one
//! `timetolive` per lease), never from a cache: a key exists exactly while
//! its holder's lease lives, so what is listed is what a launcher on any
//! node would find. Values are other nodes' writing: parsed defensively and
//! escaped when printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::cluster::etcd::EtcdClient;
use crate::cluster::keyspace::{self, Named};
use crate::cluster::record::ClusterRecord;
use crate::error::Error;
use crate::printable::printable;

/// What `status` reports of the cluster.
#[derive(Debug, Serialize)]
pub(super) struct ClusterSection {
    /// Only with `--etcd`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cluster: Option<ClusterReport>,
    /// `--etcd` was given but etcd could not be asked.
    #[serde(skip)]
    pub(super) unanswered: bool,
    /// `status --etcd SOURCE`: the cluster holds SOURCE's key.
    #[serde(skip)]
    pub(super) holds_wanted: bool,
}

/// The `--json` schema of `cluster`.
#[derive(Debug, Serialize)]
pub(super) struct ClusterReport {
    /// This node's name, as `this_node` compares it.
    pub(super) node: String,
    /// Absent when etcd could not be asked (then `error` says why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) holders: Option<Vec<ClusterHolder>>,
    /// Why etcd could not be asked: the cause, the endpoint, what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<String>,
}

/// What a holder's lease is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum LeaseState {
    /// Alive: `ttl_left` says for how long.
    Live,
    /// Gone, an instant ago: the key goes with it.
    Expired,
    /// The key has no lease: written by hand (no launcher writes one so),
    /// it never expires.
    None,
}

#[derive(Debug, Serialize)]
pub(super) struct ClusterHolder {
    /// The etcd key.
    key: String,
    /// The source key, for a source's key.
    source_key: Option<String>,
    /// The device key and slot index, for a tuner slot.
    device: Option<String>,
    slot: Option<u32>,
    node: Option<String>,
    unit: Option<String>,
    pid: Option<u32>,
    /// Seconds since the Unix epoch.
    since: Option<u64>,
    /// The recorded (redacted) source.
    source: Option<String>,
    /// Seconds the holder's lease has left; `null` when it just expired
    /// or the key has none (`lease_state` says which).
    ttl_left: Option<u64>,
    lease_state: LeaseState,
    this_node: bool,
}

impl ClusterReport {
    /// Does the cluster hold `key`'s source?
    pub(super) fn holds_source(&self, key: &str) -> bool {
        self.holders
            .iter()
            .flatten()
            .any(|h| h.source_key.as_deref() == Some(key))
    }

    /// A warning for each source whose local lock is held here (`held_here`,
    /// their keys) while its cluster key is held, but not by this node: two
    /// readers of one source, one on each node (a holder here that runs
    /// without `--etcd`, or one whose key was lost), unless the other node
    /// is this one under another `--node`.
    pub(super) fn held_elsewhere_too(&self, held_here: &[&str]) -> Vec<String> {
        let mut warnings = Vec::new();
        for key in held_here {
            let in_cluster: Vec<&ClusterHolder> = self
                .holders
                .iter()
                .flatten()
                .filter(|h| h.source_key.as_deref() == Some(*key))
                .collect();
            if in_cluster.is_empty() || in_cluster.iter().any(|h| h.this_node) {
                continue;
            }
            let nodes: Vec<String> = in_cluster
                .iter()
                .map(|h| {
                    let node = h.node.as_deref().unwrap_or("?");
                    match h.pid {
                        Some(pid) => format!("node {} (pid {pid})", printable(node)),
                        None => format!("node {}", printable(node)),
                    }
                })
                .collect();
            warnings.push(format!(
                "source {} is held on this node (its local lock) while its cluster key is held by {}, not by this node ({}): two readers of one source, unless that is this node under another --node name",
                printable(key),
                nodes.join(", "),
                printable(&self.node),
            ));
        }
        warnings
    }

    /// etcd could not be asked: `error` says why, in the words of `run`'s
    /// error (the cause, the endpoint) and its hint (what to do).
    pub(super) fn unanswered(node: String, error: &Error) -> Self {
        Self {
            node,
            holders: None,
            error: Some(explain(error)),
        }
    }
}

/// An error as one line: what failed, each cause, and what to do. The
/// top of an etcd error ("cluster mode") says nothing here.
pub(super) fn explain(error: &Error) -> String {
    use std::error::Error as _;
    let (mut line, mut cause) = match error {
        Error::Etcd(etcd) => (etcd.to_string(), etcd.source()),
        other => (other.to_string(), other.source()),
    };
    while let Some(inner) = cause {
        let _ = write!(line, ": {inner}");
        cause = inner.source();
    }
    let _ = write!(line, "; {}", error.hint());
    line
}

/// Reads every holder under the prefix; with `only`, the source's key and
/// the slots of `device` (its tuner device, when it has one).
///
/// # Errors
/// etcd cannot be reached or refused us.
pub(super) fn cluster_report(
    client: &EtcdClient,
    node: &str,
    only: Option<(&str, Option<&str>)>,
) -> Result<ClusterReport, Error> {
    let kvs = client.list(keyspace::everything().as_bytes())?;
    let mut ttl_of_lease = BTreeMap::new();
    let mut holders = Vec::new();
    for kv in kvs {
        let named = keyspace::parse(&kv.key);
        if let Some((source_key, device)) = only {
            let wanted = match &named {
                Some(Named::Source(key)) => key == source_key,
                Some(Named::Slot { device: d, .. }) => Some(d.as_str()) == device,
                None => false,
            };
            if !wanted {
                continue;
            }
        }
        // A key without a lease (written by hand) never expires: there is
        // no lease to ask about.
        let ttl_left = if kv.lease == 0 {
            None
        } else if let Some(ttl) = ttl_of_lease.get(&kv.lease) {
            *ttl
        } else {
            let ttl = client.time_to_live(kv.lease)?.map(|left| left.as_secs());
            ttl_of_lease.insert(kv.lease, ttl);
            ttl
        };
        let lease_state = match (kv.lease, ttl_left) {
            (0, _) => LeaseState::None,
            (_, Some(_)) => LeaseState::Live,
            (_, None) => LeaseState::Expired,
        };
        let record = ClusterRecord::from_json(&kv.value);
        let (source_key, device, slot) = match named {
            Some(Named::Source(key)) => (Some(key), None, None),
            Some(Named::Slot { device, index }) => (None, Some(device), Some(index)),
            None => (None, None, None),
        };
        holders.push(ClusterHolder {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            source_key,
            device,
            slot,
            this_node: record.as_ref().is_some_and(|r| r.node == node),
            node: record.as_ref().map(|r| r.node.clone()),
            unit: record.as_ref().and_then(|r| r.unit.clone()),
            pid: record.as_ref().map(|r| r.pid),
            since: record.as_ref().map(|r| r.since),
            source: record.map(|r| r.source),
            ttl_left,
            lease_state,
        });
    }
    Ok(ClusterReport {
        node: node.to_owned(),
        holders: Some(holders),
        error: None,
    })
}

/// The text view: one line per key, this node's marked.
pub(super) fn write_text(out: &mut String, report: &ClusterReport) {
    let _ = writeln!(
        out,
        "\nCLUSTER (etcd; this node: {})",
        printable(&report.node)
    );
    if let Some(error) = &report.error {
        let _ = writeln!(out, "(etcd could not be asked: {})", printable(error));
    }
    let Some(holders) = &report.holders else {
        return;
    };
    if holders.is_empty() {
        out.push_str("(no cluster keys held)\n");
        return;
    }
    for holder in holders {
        let what = match (&holder.source_key, &holder.device, holder.slot) {
            (Some(key), _, _) => format!("source {}", printable(key)),
            (None, Some(device), Some(slot)) => {
                format!("device {} slot {slot}", printable(device))
            }
            _ => format!("key {}", printable(&holder.key)),
        };
        let node = holder
            .node
            .as_deref()
            .map_or_else(|| "?".into(), |n| printable(n).into_owned());
        let mut line = format!("{what}  held by node {node}");
        if holder.this_node {
            line.push_str(" (this node)");
        }
        if let Some(unit) = &holder.unit {
            let _ = write!(line, " unit {}", printable(unit));
        }
        if let Some(pid) = holder.pid {
            let _ = write!(line, " pid {pid}");
        }
        if let Some(since) = holder.since {
            let _ = write!(line, " since {}", crate::cluster::record::rfc3339(since));
        }
        match (holder.lease_state, holder.ttl_left) {
            (LeaseState::Live, Some(ttl)) => {
                let _ = write!(line, " lease {ttl}s left");
            }
            (LeaseState::None, _) => line.push_str(
                " no lease: written by hand, never expires (etcdctl del the key to free it)",
            ),
            _ => line.push_str(" lease expired"),
        }
        out.push_str(&line);
        out.push('\n');
    }
}
