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
    pub(super) holders: Vec<ClusterHolder>,
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
    /// Seconds the holder's lease has left; `null` when it just expired.
    ttl_left: Option<u64>,
    this_node: bool,
}

impl ClusterReport {
    /// Does the cluster hold `key`'s source?
    pub(super) fn holds_source(&self, key: &str) -> bool {
        self.holders
            .iter()
            .any(|h| h.source_key.as_deref() == Some(key))
    }
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
        let ttl_left = if let Some(ttl) = ttl_of_lease.get(&kv.lease) {
            *ttl
        } else {
            let ttl = client.time_to_live(kv.lease)?.map(|left| left.as_secs());
            ttl_of_lease.insert(kv.lease, ttl);
            ttl
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
        });
    }
    Ok(ClusterReport {
        node: node.to_owned(),
        holders,
    })
}

/// The text view: one line per key, this node's marked.
pub(super) fn write_text(out: &mut String, report: &ClusterReport) {
    let _ = writeln!(
        out,
        "\nCLUSTER (etcd; this node: {})",
        printable(&report.node)
    );
    if report.holders.is_empty() {
        out.push_str("(no cluster keys held)\n");
        return;
    }
    for holder in &report.holders {
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
        match holder.ttl_left {
            Some(ttl) => {
                let _ = write!(line, " lease {ttl}s left");
            }
            None => line.push_str(" lease expired"),
        }
        out.push_str(&line);
        out.push('\n');
    }
}
