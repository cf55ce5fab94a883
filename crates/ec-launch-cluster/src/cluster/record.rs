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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::lock_record::Preempted;
use crate::priority::Priority;
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
    /// The holder's `--priority` (ECP-0139 section 7): a claimant of a
    /// slot of strictly higher priority may ask it to let go. Absent from
    /// older writers, whose holders count as the default, 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// On a slot key: the holder this launcher preempted to get a slot
    /// (ECP-0139), shown by `status --etcd` until the slot is taken again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempted: Option<Preempted>,
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
            since: now_unix(),
            source: redacted_source.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            tuners: None,
            stop_grace_ms: None,
            released: false,
            priority: None,
            preempted: None,
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

    /// The priority its holder recorded; an older writer's holder counts
    /// as the default, and a wild number is clamped (a record is a hint).
    #[must_use]
    pub fn priority(&self) -> Priority {
        Priority::from_record(self.priority)
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
            stop_grace_ms,
            released,
            priority,
            preempted,
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
            // Numbers and a flag: nothing to hide. Output that reads the
            // grace treats it as any number (a lock delay clamps it).
            stop_grace_ms: *stop_grace_ms,
            released: *released,
            priority: *priority,
            preempted: preempted.as_ref().map(Redact::redacted),
        }
    }
}

/// A value we keep in etcd as JSON: written as ours, read back from any
/// writer's bytes. One implementation for every kind of record, so each
/// is bounded and parsed alike.
pub trait EtcdValue: DeserializeOwned {
    /// The value's bytes, as written to etcd.
    #[must_use]
    fn to_json(&self) -> Vec<u8>
    where
        Self: Serialize,
    {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for a value that is not one of ours: not JSON, not UTF-8, of
    /// a wrong type, out of range, nested too deep (`serde_json` stops at
    /// 128 levels), or larger than 64 KiB (not parsed).
    #[must_use]
    fn from_json(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_RECORD_BYTES {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }
}

impl EtcdValue for ClusterRecord {}
impl EtcdValue for WaitingRecord {}
impl EtcdValue for PreemptRequest {}
impl EtcdValue for Declarant {}

impl Redact for WaitingRecord {
    fn redacted(&self) -> Self {
        // Every field by name: a new one must be given its redaction here.
        let Self {
            node,
            unit,
            pid,
            tuners,
            since,
            priority,
        } = self;
        Self {
            node: node.redacted(),
            unit: unit.redacted(),
            pid: *pid,
            tuners: *tuners,
            since: *since,
            priority: *priority,
        }
    }
}

/// The value of a device's `waiting/<lease>` key: a launcher that waits
/// for one of the device's slots, and the tuner count it declares, which
/// every launcher of the device counts as if the waiter held a slot
/// (ECP-0135 section 5), and its priority, by which the device's waiters
/// are served (ECP-0139 section 7). Fields are only ever added.
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
    /// Its `--priority`; absent from older writers (counted as 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
}

impl WaitingRecord {
    /// This launcher, waiting with `tuners` declared at `priority`.
    #[must_use]
    pub fn for_this_launch(
        node: &str,
        unit: Option<String>,
        tuners: u32,
        priority: Priority,
    ) -> Self {
        Self {
            node: node.to_owned(),
            unit,
            pid: std::process::id(),
            tuners,
            since: now_unix(),
            priority: Some(u32::from(priority.get())),
        }
    }
}

impl WaitingRecord {
    /// The priority a waiting value says; a value that is not a waiting
    /// record of ours, or an older one, counts as the default (100): it is
    /// still a launcher that waits (ECP-0139).
    #[must_use]
    pub fn priority_of(value: &[u8]) -> Priority {
        Priority::from_record(Self::from_json(value).and_then(|record| record.priority))
    }
}

/// The value of a device's `preempt-<i>` key (ECP-0139 section 7): a
/// launcher of strictly higher priority asks the holder of slot `i` to let
/// go. It lives under the asker's lease, so it goes when the asker does;
/// it names the holder asked (its lease and its key's create revision), so
/// a later holder of the slot is never taken for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreemptRequest {
    pub node: String,
    pub unit: Option<String>,
    /// The asking launcher's PID on that node.
    pub pid: u32,
    /// The asker's source, redacted.
    pub source: String,
    /// The asker's `--priority`.
    pub priority: u32,
    /// The asker's `--preempt-grace`, in milliseconds: SIGTERM to SIGKILL.
    pub grace_ms: u64,
    /// The lease of the holder asked.
    pub victim_lease: i64,
    /// The create revision of the slot key of the holder asked.
    pub victim_revision: i64,
    /// When it asked, seconds since the Unix epoch.
    pub since: u64,
}

impl PreemptRequest {
    /// True when it asks the holder of `slot` (as taken: its lease and
    /// create revision) and outranks it. A request whose priority is not
    /// strictly above the one the holder recorded (a writer's mistake, a
    /// hostile record) asks nobody: equal or higher is never preempted,
    /// whoever wrote the key.
    #[must_use]
    pub fn asks(&self, slot: &super::etcd::KeyValue) -> bool {
        let holder = ClusterRecord::from_json(&slot.value)
            .map_or_else(|| Priority::from_record(None), |record| record.priority());
        self.victim_lease == slot.lease
            && self.victim_revision == slot.create_revision
            && Priority::from_record(Some(self.priority)) > holder
    }
}

impl Redact for PreemptRequest {
    fn redacted(&self) -> Self {
        // Every field by name: a new one must be given its redaction here.
        let Self {
            node,
            unit,
            pid,
            source,
            priority,
            grace_ms,
            victim_lease,
            victim_revision,
            since,
        } = self;
        Self {
            node: node.redacted(),
            unit: unit.redacted(),
            pid: *pid,
            source: redact_source(source),
            priority: *priority,
            grace_ms: *grace_ms,
            victim_lease: *victim_lease,
            victim_revision: *victim_revision,
            since: *since,
        }
    }
}

/// Now, in seconds since the Unix epoch, as records say `since`.
#[must_use]
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

impl Redact for Declarant {
    fn redacted(&self) -> Self {
        // Every field by name: a new one must be given its redaction here.
        let Self {
            node,
            unit,
            pid,
            tuners,
        } = self;
        Self {
            node: node.redacted(),
            unit: unit.redacted(),
            pid: *pid,
            tuners: *tuners,
        }
    }
}

impl Declarant {
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
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(since)).to_string()
}

/// `since` as RFC 3339 for JSON beside the seconds, or `None` for a time
/// past year 9999 (which `rfc3339` spells out in words for text).
#[must_use]
pub fn rfc3339_if_readable(since: u64) -> Option<String> {
    (since < YEAR_10000).then(|| rfc3339(since))
}

/// This node's name when `--node` is not given (the library's, which the
/// local `status` needs too).
pub use crate::cli::default_node_name;

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
    fn a_request_asks_only_the_holding_it_names_and_only_from_strictly_above() {
        let mut record = ClusterRecord::for_this_launch("node-a", None, "http://h/v1");
        record.priority = Some(200);
        let slot = crate::cluster::etcd::KeyValue {
            key: b"slot".to_vec(),
            value: record.to_json(),
            create_revision: 7,
            mod_revision: 7,
            lease: 42,
        };
        let request = |priority, victim_lease, victim_revision| PreemptRequest {
            node: "b".into(),
            unit: None,
            pid: 1,
            source: "s".into(),
            priority,
            grace_ms: 1000,
            victim_lease,
            victim_revision,
            since: 1,
        };
        assert!(request(201, 42, 7).asks(&slot));
        // Equal or lower never preempts, whatever the key says.
        assert!(!request(200, 42, 7).asks(&slot));
        assert!(!request(10, 42, 7).asks(&slot));
        // Another holding of the slot (lease or take) is not asked.
        assert!(!request(900, 43, 7).asks(&slot));
        assert!(!request(900, 42, 8).asks(&slot));
        // A holder whose record says no priority holds at the default.
        let older = crate::cluster::etcd::KeyValue {
            value: b"{}".to_vec(),
            ..slot
        };
        assert!(!request(100, 42, 7).asks(&older));
        assert!(request(101, 42, 7).asks(&older));
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
            stop_grace_ms: Some(u64::MAX),
            released: true,
            priority: Some(u32::MAX),
            preempted: Some(Preempted {
                pid: 2,
                program: Some(format!("p?token={secret}")),
                unit: Some(format!("u?{secret}")),
                node: Some(format!("admin:{secret}@n")),
                source: format!("http://a:{secret}@h/x"),
                priority: 10,
                at: format!("token={secret}"),
            }),
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
        let waiting = WaitingRecord::for_this_launch(
            "node-b",
            Some("b.service".into()),
            3,
            Priority::default(),
        );
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

    #[test]
    fn a_marked_slot_record_still_declares_its_tuners() {
        let mut slot = ClusterRecord::for_this_launch("node-a", None, "http://h/v1")
            .with_stop_grace(Duration::from_secs(2));
        slot.tuners = Some(2);
        let marked = ClusterRecord::mark_released(&slot.to_json()).expect("ours");
        assert!(ClusterRecord::is_released(&marked));
        let declarant = Declarant::from_json(&marked).expect("a declarant");
        assert_eq!(declarant.declared_tuners(), Some(2));
    }

    #[test]
    fn a_hostile_stop_grace_is_read_without_a_panic_and_a_huge_mark_is_no_record() {
        // The number as written: the lock delay clamps it (FenceTiming).
        let huge = format!(
            r#"{{"node":"b","unit":null,"pid":1,"boot_id":null,"since":1,"source":"s","version":"v","stop_grace_ms":{}}}"#,
            u64::MAX
        );
        assert_eq!(
            ClusterRecord::recorded_stop_grace(huge.as_bytes()),
            Some(Duration::from_millis(u64::MAX))
        );
        assert_eq!(
            ClusterRecord::for_this_launch("n", None, "s")
                .with_stop_grace(Duration::MAX)
                .stop_grace_ms,
            Some(u64::MAX)
        );
        // Out of range, of a wrong type, or past the size bound: no
        // record, so no grace and no release.
        for hostile in [
            r#"{"node":"b","unit":null,"pid":1,"boot_id":null,"since":1,"source":"s","version":"v","stop_grace_ms":-1,"released":true}"#.to_owned(),
            r#"{"node":"b","unit":null,"pid":1,"boot_id":null,"since":1,"source":"s","version":"v","stop_grace_ms":1e30,"released":true}"#.to_owned(),
            r#"{"node":"b","unit":null,"pid":1,"boot_id":null,"since":1,"source":"s","version":"v","released":"yes"}"#.to_owned(),
            format!(
                r#"{{"node":"{}","unit":null,"pid":1,"boot_id":null,"since":1,"source":"s","version":"v","released":true}}"#,
                "x".repeat(MAX_RECORD_BYTES)
            ),
        ] {
            assert_eq!(ClusterRecord::recorded_stop_grace(hostile.as_bytes()), None);
            assert!(!ClusterRecord::is_released(hostile.as_bytes()));
            assert_eq!(ClusterRecord::mark_released(hostile.as_bytes()), None);
        }
    }
}
