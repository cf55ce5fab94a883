//! The value stored under a cluster key: who holds it (ECP-0134).
//!
//! It answers the 3 a.m. question from another node: which node, which
//! unit, which process, since when, reading what. The source is redacted
//! before it gets here (a credential never reaches etcd, whose values any
//! client with read access sees). Fields are only ever added; readers
//! tolerate unknown ones and values that are not ours.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// `--node`, else the host name.
    pub node: String,
    /// The systemd unit the launcher runs in, when under systemd.
    pub unit: Option<String>,
    /// The supervising launcher's PID on that node.
    pub pid: u32,
    /// That node's `/proc/sys/kernel/random/boot_id`: tells a PID of this
    /// boot from a PID of the last one.
    pub boot_id: Option<String>,
    /// When the key was taken, seconds since the Unix epoch.
    pub since: u64,
    /// The source with credentials masked.
    pub source: String,
    /// The `ec-launch` version that wrote it.
    pub version: String,
}

impl ClusterRecord {
    /// This launcher's record; `redacted_source` must already be redacted.
    #[must_use]
    pub fn for_this_launch(node: &str, unit: Option<String>, redacted_source: &str) -> Self {
        Self {
            node: node.to_owned(),
            unit,
            pid: std::process::id(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_owned()),
            since: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            source: redacted_source.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for a value that is not a record of ours.
    #[must_use]
    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// A record's `since` as operators read it: `2026-11-27T08:56:39Z`.
#[must_use]
pub fn rfc3339(since: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(since))
        .to_string()
}

/// This node's name when `--node` is not given: the kernel's host name.
#[must_use]
pub fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_tolerates_newer_fields() {
        let record =
            ClusterRecord::for_this_launch("node-a", Some("a.service".into()), "http://h/v1");
        assert_eq!(
            ClusterRecord::from_json(&record.to_json()),
            Some(record.clone())
        );
        let mut newer: serde_json::Value = serde_json::from_slice(&record.to_json()).unwrap();
        newer["added_later"] = serde_json::json!(1);
        assert_eq!(
            ClusterRecord::from_json(newer.to_string().as_bytes()),
            Some(record)
        );
        assert_eq!(ClusterRecord::from_json(b"not ours"), None);
    }
}
