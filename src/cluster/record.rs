//! The value stored under a cluster key: who holds it (ECP-0134).
//!
//! It answers the 3 a.m. question from another node: which node, which
//! unit, which process, since when, reading what. The source is redacted
//! before it gets here (a credential never reaches etcd, whose values any
//! client with read access sees). Fields are only ever added; readers
//! tolerate unknown ones and values that are not ours.
//!
//! What we read back is another writer's text all the same (an older
//! version, `etcdctl put`, a wild clock): a value that does not parse is no
//! record (shown as an unreadable one), a parsed one reaches output only as
//! [`Shown`](crate::shown::Shown) (its text redacted), and its `since` is
//! formatted by [`rfc3339`], which takes any number.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::redact::redact_source;
use crate::shown::Redact;

/// A value larger than this is not a record of ours (ours are a few hundred
/// bytes); it is not parsed.
const MAX_RECORD_BYTES: usize = 64 * 1024;

/// 10000-01-01T00:00:00Z: RFC 3339 has four digits for the year.
const YEAR_10000: u64 = 253_402_300_800;

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
    /// On a slot key: the tuner count its taker declared (`--tuners`), so
    /// launchers on other nodes use the smallest (ECP-0135 section 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuners: Option<u32>,
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
            tuners: None,
        }
    }

    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for a value that is not a record of ours: not JSON, not
    /// UTF-8, a wrong type, a number out of range, nested too deep
    /// (`serde_json` stops at 128 levels), or larger than 64 KiB.
    #[must_use]
    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        parse_bounded(bytes)
    }
}

impl Redact for ClusterRecord {
    fn redacted(&self) -> Self {
        // Every field by name: a new one must be given its redaction here.
        let Self {
            node,
            unit,
            pid,
            boot_id,
            since,
            source,
            version,
            tuners,
        } = self;
        Self {
            node: node.redacted(),
            unit: unit.redacted(),
            pid: *pid,
            boot_id: boot_id.redacted(),
            since: *since,
            source: redact_source(source),
            version: version.redacted(),
            tuners: *tuners,
        }
    }
}

/// Any record of ours from another writer's bytes: `None` for a value that
/// is not JSON, not UTF-8, of a wrong type, out of range, nested too deep
/// (`serde_json` stops at 128 levels), or larger than 64 KiB.
fn parse_bounded<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    if bytes.len() > MAX_RECORD_BYTES {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

impl Redact for WaitingRecord {
    fn redacted(&self) -> Self {
        // Every field by name: a new one must be given its redaction here.
        let Self {
            node,
            unit,
            pid,
            tuners,
            since,
        } = self;
        Self {
            node: node.redacted(),
            unit: unit.redacted(),
            pid: *pid,
            tuners: *tuners,
            since: *since,
        }
    }
}

/// The value of a device's `waiting/<lease>` key: a launcher that waits
/// for one of the device's slots, and the tuner count it declares, which
/// every launcher of the device counts as if the waiter held a slot
/// (ECP-0135 section 5). Fields are only ever added (issue #18 orders
/// waiters by a priority added here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingRecord {
    pub node: String,
    pub unit: Option<String>,
    /// The waiting launcher's PID on that node.
    pub pid: u32,
    /// Its `--tuners`.
    pub tuners: u32,
    /// When it began to wait, seconds since the Unix epoch.
    pub since: u64,
}

impl WaitingRecord {
    /// This launcher, waiting with `tuners` declared.
    #[must_use]
    pub fn for_this_launch(node: &str, unit: Option<String>, tuners: u32) -> Self {
        Self {
            node: node.to_owned(),
            unit,
            pid: std::process::id(),
            tuners,
            since: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for a value that is not a waiting record of ours (as
    /// [`ClusterRecord::from_json`]).
    #[must_use]
    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        parse_bounded(bytes)
    }
}

/// What any record under a device (a slot's or a waiter's) says of its
/// writer: who it is and the tuner count it declared.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Declarant {
    pub node: String,
    pub unit: Option<String>,
    pub pid: u32,
    /// Absent in records of versions before ECP-0135.
    #[serde(default)]
    pub tuners: Option<u32>,
}

impl Declarant {
    /// `None` for a value that is not a record of ours (as
    /// [`ClusterRecord::from_json`]).
    #[must_use]
    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        parse_bounded(bytes)
    }

    /// The declared count, when it is one a launcher could have declared
    /// (1 to [`crate::tuner_slot::MAX_TUNERS`]): a 0 or a huge number in a
    /// hostile record must neither stop every launcher nor lift the limit.
    #[must_use]
    pub fn declared_tuners(&self) -> Option<u32> {
        self.tuners
            .filter(|n| (1..=crate::tuner_slot::MAX_TUNERS).contains(n))
    }
}

/// A record's `since` as operators read it: `2026-11-27T08:56:39Z`. Any
/// number is accepted: one RFC 3339 cannot write (year 10000 and later: a
/// node with a wild clock, or any writer) is `an unreadable time (N s after
/// 1970)`, never a panic.
#[must_use]
pub fn rfc3339(since: u64) -> String {
    if since >= YEAR_10000 {
        return format!("an unreadable time ({since} s after 1970)");
    }
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

    #[test]
    fn any_since_is_formatted_and_none_panics() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(YEAR_10000 - 1), "9999-12-31T23:59:59Z");
        for wild in [YEAR_10000, u64::MAX / 2, u64::MAX] {
            assert_eq!(
                rfc3339(wild),
                format!("an unreadable time ({wild} s after 1970)")
            );
        }
    }

    #[test]
    fn a_shown_record_has_every_text_field_redacted() {
        let secret = "S3CR3T";
        let record = ClusterRecord {
            node: format!("admin:{secret}@node-x"),
            unit: Some(format!("x?{secret}")),
            pid: 1,
            boot_id: Some(format!("token={secret}")),
            since: u64::MAX,
            source: format!("http://a:{secret}@h/x?token={secret}"),
            version: format!("v https://u:{secret}@h/"),
            tuners: Some(2),
        };
        let shown = crate::shown::Shown::of(&record);
        let json = serde_json::to_string(&shown).unwrap();
        assert!(!json.contains(secret), "{json}");
        assert_eq!(shown.node, "***@node-x");
        assert_eq!(shown.source, "http://***@h/x?token=***");
        assert_eq!((shown.pid, shown.since), (1, u64::MAX));
    }

    proptest::proptest! {
        /// Any bytes: a record or none, never a panic, and a shown record's
        /// time is always written.
        #[test]
        fn any_bytes_are_a_record_or_none_and_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Some(record) = ClusterRecord::from_json(&bytes) {
                let shown = crate::shown::Shown::of(&record);
                let _ = rfc3339(shown.since);
            }
        }
    }
    #[test]
    fn slot_and_waiting_records_both_tell_who_declared_how_many_tuners() {
        let mut slot = ClusterRecord::for_this_launch("node-a", None, "http://h/v1");
        // A slot record of an older version says no count, and no `tuners` key.
        assert!(
            !String::from_utf8(slot.to_json())
                .unwrap()
                .contains("tuners")
        );
        assert_eq!(
            Declarant::from_json(&slot.to_json())
                .unwrap()
                .declared_tuners(),
            None
        );
        slot.tuners = Some(2);
        let declarant = Declarant::from_json(&slot.to_json()).unwrap();
        assert_eq!(
            (declarant.node.as_str(), declarant.declared_tuners()),
            ("node-a", Some(2))
        );
        let waiting = WaitingRecord::for_this_launch("node-b", Some("b.service".into()), 3);
        assert_eq!(
            WaitingRecord::from_json(&waiting.to_json()),
            Some(waiting.clone())
        );
        let declarant = Declarant::from_json(&waiting.to_json()).unwrap();
        assert_eq!(
            (declarant.node.as_str(), declarant.declared_tuners()),
            ("node-b", Some(3))
        );
        // A waiting record is no holder's record.
        assert_eq!(ClusterRecord::from_json(&waiting.to_json()), None);
        for hostile in [
            r#"{"node":"x","unit":null,"pid":1,"tuners":0}"#,
            r#"{"node":"x","unit":null,"pid":1,"tuners":65}"#,
        ] {
            assert_eq!(
                Declarant::from_json(hostile.as_bytes())
                    .unwrap()
                    .declared_tuners(),
                None,
                "{hostile}"
            );
        }
    }
}
