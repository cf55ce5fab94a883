//! The value stored under a cluster key: who holds it (ECP-0134).
//!
//! It answers the 3 a.m. question from another node: which node, which
//! unit, which process, since when, reading what. The source is redacted
//! before it gets here (a credential never reaches etcd, whose values any
//! client with read access sees). Fields are only ever added; readers
//! tolerate unknown ones and values that are not ours.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// The holder's `--etcd-stop-grace`, in milliseconds: a claimant that
    /// takes the key after an unclean loss waits at least this long plus
    /// the margin (the lock delay, ECP-0135). Absent from older writers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_ms: Option<u64>,
    /// Set by the holder's clean release, after its program ended and its
    /// lock was free, just before it revokes the lease: a claimant that
    /// sees the key deleted with this mark may start at once (ECP-0135).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
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
            stop_grace_ms: None,
            released: false,
        }
    }

    /// This record with the holder's stop grace.
    #[must_use]
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace_ms = Some(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// The stop grace a value's writer recorded, if it is a record of ours
    /// that says.
    #[must_use]
    pub fn recorded_stop_grace(value: &[u8]) -> Option<Duration> {
        Self::from_json(value)?
            .stop_grace_ms
            .map(Duration::from_millis)
    }

    /// True when a value is a record of ours marked released.
    #[must_use]
    pub fn is_released(value: &[u8]) -> bool {
        Self::from_json(value).is_some_and(|record| record.released)
    }

    /// `value` (a record of ours) marked released; `None` when it is not a
    /// record of ours.
    #[must_use]
    pub fn mark_released(value: &[u8]) -> Option<Vec<u8>> {
        let mut record = Self::from_json(value)?;
        record.released = true;
        Some(record.to_json())
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
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(since)).to_string()
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

    #[test]
    fn a_record_carries_its_stop_grace_and_a_released_mark_only_once_marked() {
        let record = ClusterRecord::for_this_launch("node-a", None, "http://h/v1")
            .with_stop_grace(Duration::from_millis(2500));
        let json = record.to_json();
        assert_eq!(
            ClusterRecord::recorded_stop_grace(&json),
            Some(Duration::from_millis(2500))
        );
        assert!(!ClusterRecord::is_released(&json));
        assert!(
            !String::from_utf8_lossy(&json).contains("released"),
            "an unmarked record says nothing of a release"
        );
        let marked = ClusterRecord::mark_released(&json).expect("ours");
        assert!(ClusterRecord::is_released(&marked));
        assert_eq!(
            ClusterRecord::recorded_stop_grace(&marked),
            Some(Duration::from_millis(2500))
        );
        // An older writer's record: no grace, never released.
        let older = br#"{"node":"b","unit":null,"pid":1,"boot_id":null,"since":1,"source":"s","version":"0.0.9"}"#;
        assert_eq!(ClusterRecord::recorded_stop_grace(older), None);
        assert!(!ClusterRecord::is_released(older));
        assert_eq!(ClusterRecord::mark_released(b"not ours"), None);
    }
}
