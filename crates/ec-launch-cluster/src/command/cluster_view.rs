//! `status --etcd`: the cluster's holders beside this node's locks
//! (ECP-0134).
//!
//! The answer comes from etcd itself (one range over the prefix, one
//! `timetolive` per lease), never from a cache: a key exists exactly while
//! its holder's lease lives, so what is listed is what a launcher on any
//! node would find. Values and keys are other writers' text (another node,
//! an older version, `etcdctl put`): a value that does not parse is "an
//! unreadable record", a parsed one is shown only redacted
//! ([`Shown`]), and everything is escaped when printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use ec_launch::cli::StatusArgs;
use ec_launch::command::status::{ClusterSection, ClusterView};
use ec_launch::source_key::SourceKey;
use ec_launch::tuner_slot::DeviceKey;

use crate::cluster::Connection;
use crate::cluster::etcd::{EtcdClient, KeyValue};
use crate::cluster::keyspace::{self, Named};
use crate::cluster::placement::Census;
use crate::cluster::record::{
    ClusterRecord, Declarant, EtcdValue, PreemptRequest, Preempted, WaitingRecord,
};
use crate::error::Error;
use crate::printable::printable;
use crate::shown::Shown;

/// How long `status --etcd` waits for each etcd call.
const STATUS_ETCD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `status --etcd`'s view of the cluster, for the library's `status_with`.
#[derive(Debug)]
pub struct EtcdView;

impl ClusterView for EtcdView {
    type Report = ClusterReport;

    fn section(
        &self,
        args: &StatusArgs,
        key: Option<&SourceKey>,
        held_here: &[&str],
        warnings: &mut Vec<String>,
    ) -> ClusterSection<ClusterReport> {
        cluster_section(args, key, held_here, warnings)
    }

    fn write_text(&self, out: &mut String, report: &ClusterReport) {
        write_text(out, report);
    }
}

/// [`cluster_view`], with a failure turned into a warning: the node's own
/// locks are still worth printing when etcd cannot be asked. A source held
/// here whose cluster key another node holds is warned of (`held_here`).
fn cluster_section(
    args: &StatusArgs,
    key: Option<&SourceKey>,
    held_here: &[&str],
    warnings: &mut Vec<String>,
) -> ClusterSection<ClusterReport> {
    match cluster_view(args, key, args.source.as_deref()) {
        Ok(cluster) => {
            if let Some(report) = &cluster {
                warnings.extend(report.held_elsewhere_too(held_here));
            }
            ClusterSection {
                holds_wanted: key
                    .is_some_and(|k| cluster.as_ref().is_some_and(|c| c.holds_source(k.as_str()))),
                cluster,
                unanswered: false,
            }
        }
        Err(e) => {
            // Named as `run` names it: the cause, the endpoint, what to do;
            // and kept in `--json` as `cluster.error`.
            warnings.push(format!(
                "cannot ask etcd for the cluster's holders: {}",
                explain(&e)
            ));
            let node = args
                .etcd
                .node
                .clone()
                .unwrap_or_else(crate::cluster::record::default_node_name);
            ClusterSection {
                cluster: Some(ClusterReport::unanswered(node, &e)),
                unanswered: true,
                holds_wanted: false,
            }
        }
    }
}

/// The cluster's holders with `--etcd` (of SOURCE and its device, when
/// given); `None` without it.
fn cluster_view(
    args: &StatusArgs,
    key: Option<&SourceKey>,
    source: Option<&str>,
) -> Result<Option<ClusterReport>, Error> {
    // A status call is one range and a few lease lookups: a generous
    // timeout, it is an operator waiting, not a fence.
    let Some(connection) = Connection::from_args(&args.etcd, STATUS_ETCD_TIMEOUT)? else {
        return Ok(None);
    };
    let client = EtcdClient::connect(&connection.connect)?;
    let device = key.and_then(|k| DeviceKey::of_source(k, source.unwrap_or(k.as_str())));
    let only = key.map(|k| (k.as_str(), device.as_ref().map(DeviceKey::as_str)));
    cluster_report(&client, &connection.node, only).map(Some)
}

/// The `--json` schema of `cluster`.
#[derive(Debug, Serialize)]
pub struct ClusterReport {
    /// This node's name, as `this_node` compares it.
    pub(crate) node: String,
    /// Absent when etcd could not be asked (then `error` says why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) holders: Option<Vec<ClusterHolder>>,
    /// Launchers waiting for a device's slot (ECP-0135 section 5): they
    /// hold no tuner, but the count they declare is counted. Absent when
    /// etcd could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) waiters: Option<Vec<ClusterWaiter>>,
    /// Per device with slots or waiters: the counts declared, and what
    /// launchers go by. Absent when etcd could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) devices: Option<Vec<ClusterDevice>>,
    /// Per node with a key (ECP-0140): its weight, what it holds against
    /// its share, and the sources it waits for. Absent when etcd could
    /// not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) nodes: Option<Vec<ClusterNode>>,
    /// Why etcd could not be asked: the cause, the endpoint, what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// What a key's lease is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LeaseState {
    /// Alive: `ttl_left` says for how long.
    Live,
    /// Gone, an instant ago: the key goes with it.
    Expired,
    /// The key has no lease: written by hand (no launcher writes one so),
    /// it never expires.
    None,
}

impl LeaseState {
    /// The state of `lease` (0: none) with `ttl_left` as etcd answered.
    fn of(lease: i64, ttl_left: Option<u64>) -> Self {
        match (lease, ttl_left) {
            (0, _) => Self::None,
            (_, Some(_)) => Self::Live,
            (_, None) => Self::Expired,
        }
    }

    /// The text view's words for it.
    fn describe(self, ttl_left: Option<u64>) -> String {
        match (self, ttl_left) {
            (Self::Live, Some(ttl)) => format!(" lease {ttl}s left"),
            (Self::None, _) => {
                " no lease: written by hand, never expires (etcdctl del the key to free it)".into()
            }
            _ => " lease expired".into(),
        }
    }
}

/// A `waiting/<lease>` key.
#[derive(Debug, Serialize)]
pub(crate) struct ClusterWaiter {
    /// The etcd key.
    key: String,
    device: String,
    node: Option<String>,
    unit: Option<String>,
    pid: Option<u32>,
    /// The tuner count it declares.
    tuners: Option<u32>,
    /// Its priority, by which the device's waiters are served (ECP-0139;
    /// 100 for an older writer's record).
    priority: Option<u32>,
    /// Seconds since the Unix epoch: when it began to wait.
    since: Option<u64>,
    /// `since` in RFC 3339, as a lock's `since` is (an addition; `null`
    /// past year 9999).
    since_rfc3339: Option<String>,
    /// Seconds the waiter's lease has left; `null` when it just expired
    /// or the key has none (`lease_state` says which).
    ttl_left: Option<u64>,
    lease_state: LeaseState,
    this_node: bool,
}

/// One node as the placement keys show it (ECP-0140).
#[derive(Debug, Serialize)]
pub(crate) struct ClusterNode {
    node: String,
    /// The smallest weight its spread launchers declare; 1 when none does.
    weight: u32,
    /// How many source keys name it as holder.
    held: usize,
    /// `ceil(M × weight / ΣW)` over every node with a key.
    share: u64,
    /// The source keys it holds.
    sources: Vec<String>,
    /// The source keys it wants but does not hold (held elsewhere, or free
    /// and waiting for its turn).
    waiting: Vec<String>,
    this_node: bool,
}

/// One device as the cluster's keys show it.
#[derive(Debug, Serialize)]
pub(crate) struct ClusterDevice {
    device: String,
    /// The smallest count declared by a holder or a waiter: what a
    /// launcher goes by (its own count may be smaller still); `null` when
    /// no record declares one (older versions).
    tuners: Option<u32>,
    /// Every distinct count declared, ascending.
    declared: Vec<u32>,
    /// Slots held (at any index).
    held: usize,
    waiting: usize,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ClusterHolder {
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
    /// `since` in RFC 3339, as a lock's `since` is (an addition; `null`
    /// past year 9999).
    since_rfc3339: Option<String>,
    /// The recorded (redacted) source.
    source: Option<String>,
    /// Seconds the holder's lease has left; `null` when it just expired
    /// or the key has none (`lease_state` says which).
    ttl_left: Option<u64>,
    lease_state: LeaseState,
    this_node: bool,
    /// The key's value is no record `ec-launch` can read (not JSON, a wrong
    /// type, a number out of range, too large): `node` and the rest are
    /// `null`.
    unreadable_record: bool,
    /// For a slot: the tuner count its taker declared (`null` before
    /// ECP-0135 or when the record says none).
    tuners: Option<u32>,
    /// The holder's priority (ECP-0139; 100 for an older writer's record,
    /// `null` for an unreadable one).
    priority: Option<u32>,
    /// For a slot: the holder its taker preempted to get it, and when.
    preempted: Option<Preempted>,
    /// For a slot: a launcher of higher priority has asked its holder to
    /// let go (the request's `preempt-<i>` key), and is waiting for it.
    preemption_asked: Option<PreemptRequest>,
}

impl ClusterReport {
    /// Does the cluster hold `key`'s source?
    pub(crate) fn holds_source(&self, key: &str) -> bool {
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
    pub(crate) fn held_elsewhere_too(&self, held_here: &[&str]) -> Vec<String> {
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
            // A spread launcher of this node waits for the key (ECP-0140):
            // it holds the local lock while it waits, by design, and runs
            // no program.
            let waits_here =
                self.nodes.iter().flatten().any(|node| {
                    node.this_node && node.waiting.iter().any(|waiting| waiting == key)
                });
            if waits_here {
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
    pub(crate) fn unanswered(node: String, error: &Error) -> Self {
        Self {
            node,
            holders: None,
            waiters: None,
            devices: None,
            nodes: None,
            error: Some(explain(error)),
        }
    }
}

/// An error as one line: what failed, each cause, and what to do. The
/// top of an etcd error ("cluster mode") says nothing here.
pub(crate) fn explain(error: &Error) -> String {
    use std::error::Error as _;
    let (mut line, mut cause) = match crate::cluster_error::etcd_error(error) {
        Some(etcd) => (etcd.to_string(), etcd.source()),
        None => (error.to_string(), error.source()),
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
pub(crate) fn cluster_report(
    client: &EtcdClient,
    node: &str,
    only: Option<(&str, Option<&str>)>,
) -> Result<ClusterReport, Error> {
    let kvs = client.list(keyspace::everything().as_bytes())?;
    let nodes = nodes(&kvs, node);
    let mut ttl_of_lease = BTreeMap::new();
    let mut ttl_left = |lease: i64| -> Result<Option<u64>, Error> {
        // A key without a lease (written by hand) never expires: there is
        // no lease to ask about.
        if lease == 0 {
            return Ok(None);
        }
        if let Some(ttl) = ttl_of_lease.get(&lease) {
            return Ok(*ttl);
        }
        let ttl = client.time_to_live(lease)?.map(|left| left.as_secs());
        ttl_of_lease.insert(lease, ttl);
        Ok(ttl)
    };
    let mut holders = Vec::new();
    let mut waiters = Vec::new();
    let mut requests = BTreeMap::new();
    for kv in kvs {
        let named = keyspace::parse(&kv.key);
        // Placement's keys are shown per node (`nodes`), not as holders.
        if matches!(named, Some(Named::Wanted { .. } | Named::Turn { .. })) {
            continue;
        }
        if let Some((source_key, device)) = only {
            let wanted = match &named {
                Some(Named::Source(key)) => key == source_key,
                Some(
                    Named::Slot { device: d, .. }
                    | Named::Waiting { device: d, .. }
                    | Named::Preempt { device: d, .. },
                ) => Some(d.as_str()) == device,
                Some(Named::Wanted { .. } | Named::Turn { .. }) | None => false,
            };
            if !wanted {
                continue;
            }
        }
        // A request to let go is shown on the slot it asks for, while its
        // holder is the one asked (`holders` below).
        if let Some(Named::Preempt { device, index }) = named {
            requests.insert((device, index), kv);
            continue;
        }
        let ttl_left = ttl_left(kv.lease)?;
        if let Some(Named::Waiting { device, .. }) = named {
            waiters.push(waiter_of(&kv, &device, ttl_left, node));
            continue;
        }
        let mut holder = holder_of(&kv, ttl_left, node);
        if let Some(Named::Slot { device, index }) = named {
            holder.preemption_asked = requests
                .get(&(device, index))
                .and_then(|request: &KeyValue| PreemptRequest::from_json(&request.value))
                .filter(|request| request.asks(&kv))
                .map(|request| Shown::of(&request).into_inner());
        }
        holders.push(holder);
    }
    let devices = devices(&holders, &waiters);
    Ok(ClusterReport {
        node: node.to_owned(),
        holders: Some(holders),
        waiters: Some(waiters),
        devices: Some(devices),
        nodes: Some(nodes),
        error: None,
    })
}

/// Every node with a key, as placement counts it (ECP-0140); names and
/// keys are other writers' text, shown redacted.
fn nodes(kvs: &[KeyValue], this_node: &str) -> Vec<ClusterNode> {
    let census = Census::from_keys(kvs);
    census
        .nodes
        .iter()
        .map(|(name, load)| ClusterNode {
            node: shown_text(name),
            weight: load.weight(),
            held: load.held.len(),
            share: census.share_of(name),
            sources: load.held.iter().map(|key| shown_text(key)).collect(),
            waiting: load
                .wants
                .difference(&load.held)
                .map(|key| shown_text(key))
                .collect(),
            this_node: name == this_node,
        })
        .collect()
}

/// One key as `status` shows it: the key's names and the value's fields
/// redacted (another writer's text), `this_node` judged on the raw name.
fn holder_of(kv: &KeyValue, ttl_left: Option<u64>, node: &str) -> ClusterHolder {
    let record = ClusterRecord::from_json(&kv.value);
    let this_node = record.as_ref().is_some_and(|r| r.node == node);
    let record = record.as_ref().map(Shown::of);
    let (source_key, device, slot) = match keyspace::parse(&kv.key) {
        Some(Named::Source(key)) => (Some(key), None, None),
        Some(Named::Slot { device, index }) => (None, Some(device), Some(index)),
        Some(
            Named::Waiting { .. }
            | Named::Wanted { .. }
            | Named::Turn { .. }
            | Named::Preempt { .. },
        )
        | None => (None, None, None),
    };
    // A slot's declared count, in range (a hostile 0 or 10^9 is no count).
    let tuners = slot
        .and_then(|_| Declarant::from_json(&kv.value))
        .and_then(|d| d.declared_tuners());
    ClusterHolder {
        key: keyspace::shown(&kv.key),
        source_key: source_key.as_deref().map(shown_text),
        device: device.as_deref().map(shown_text),
        slot,
        this_node,
        unreadable_record: record.is_none(),
        node: record.as_ref().map(|r| r.node.clone()),
        unit: record.as_ref().and_then(|r| r.unit.clone()),
        pid: record.as_ref().map(|r| r.pid),
        since: record.as_ref().map(|r| r.since),
        since_rfc3339: record
            .as_ref()
            .and_then(|r| crate::cluster::record::rfc3339_if_readable(r.since)),
        priority: record.as_ref().map(|r| u32::from(r.priority().get())),
        preempted: record.as_ref().and_then(|r| r.preempted.clone()),
        preemption_asked: None,
        source: record.map(|r| r.source.clone()),
        ttl_left,
        lease_state: LeaseState::of(kv.lease, ttl_left),
        tuners,
    }
}

/// One `waiting/<lease>` key as `status` shows it, redacted as a holder is.
fn waiter_of(kv: &KeyValue, device: &str, ttl_left: Option<u64>, node: &str) -> ClusterWaiter {
    let record = WaitingRecord::from_json(&kv.value);
    let this_node = record.as_ref().is_some_and(|r| r.node == node);
    let tuners = Declarant::from_json(&kv.value).and_then(|d| d.declared_tuners());
    let record = record.as_ref().map(Shown::of);
    ClusterWaiter {
        key: keyspace::shown(&kv.key),
        device: shown_text(device),
        this_node,
        node: record.as_ref().map(|r| r.node.clone()),
        unit: record.as_ref().and_then(|r| r.unit.clone()),
        pid: record.as_ref().map(|r| r.pid),
        tuners,
        priority: record
            .as_ref()
            .map(|r| u32::from(crate::priority::Priority::from_record(r.priority).get())),
        since_rfc3339: record
            .as_ref()
            .and_then(|r| crate::cluster::record::rfc3339_if_readable(r.since)),
        since: record.map(|r| r.since),
        ttl_left,
        lease_state: LeaseState::of(kv.lease, ttl_left),
    }
}

/// A name read from a key (another writer's text), as output may show it.
fn shown_text(text: &str) -> String {
    Shown::of(&text.to_owned()).into_inner()
}

/// Each device with held slots or waiters: what its launchers declared,
/// and a warning when they disagree (the smallest count is what new
/// launchers go by) or a slot is held at or beyond it.
fn devices(holders: &[ClusterHolder], waiters: &[ClusterWaiter]) -> Vec<ClusterDevice> {
    let mut by_device: BTreeMap<&str, ClusterDevice> = BTreeMap::new();
    let mut held_slots: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    let declared = holders
        .iter()
        .filter_map(|h| Some((h.device.as_deref()?, h.slot?, h.tuners)))
        .map(|(device, slot, tuners)| (device, Some(slot), tuners))
        .chain(waiters.iter().map(|w| (w.device.as_str(), None, w.tuners)));
    for (device, slot, tuners) in declared {
        let entry = by_device.entry(device).or_insert_with(|| ClusterDevice {
            device: device.to_owned(),
            tuners: None,
            declared: Vec::new(),
            held: 0,
            waiting: 0,
            warnings: Vec::new(),
        });
        match slot {
            Some(slot) => {
                entry.held += 1;
                held_slots.entry(device).or_default().push(slot);
            }
            None => entry.waiting += 1,
        }
        entry.declared.extend(tuners);
    }
    for (device, entry) in &mut by_device {
        entry.declared.sort_unstable();
        entry.declared.dedup();
        entry.tuners = entry.declared.first().copied();
        if entry.declared.len() > 1 {
            entry.warnings.push(format!(
                "launchers of this device disagree on its tuner count ({}): every launcher goes by the smallest; give every launcher of the device the same --tuners",
                join(&entry.declared)
            ));
        }
        if let Some(n) = entry.tuners {
            let beyond: Vec<u32> = held_slots
                .get(device)
                .into_iter()
                .flatten()
                .copied()
                .filter(|slot| *slot >= n)
                .collect();
            if !beyond.is_empty() || entry.held > usize::try_from(n).unwrap_or(usize::MAX) {
                entry.warnings.push(format!(
                    "{} slots held (slot {}) where the smallest count declared is {n}: taken by a launcher with a larger --tuners (or an older version), more readers may run than the device has tuners",
                    entry.held,
                    join(&held_slots.get(device).cloned().unwrap_or_default())
                ));
            }
        }
    }
    by_device.into_values().collect()
}

fn join(numbers: &[u32]) -> String {
    numbers
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The text view: one line per key, this node's marked.
pub(crate) fn write_text(out: &mut String, report: &ClusterReport) {
    let _ = writeln!(
        out,
        "\nCLUSTER (etcd; this node: {})",
        printable(&report.node)
    );
    if let Some(error) = &report.error {
        let _ = writeln!(out, "(etcd could not be asked: {})", printable(error));
    }
    let (Some(holders), Some(waiters)) = (&report.holders, &report.waiters) else {
        return;
    };
    if holders.is_empty() && waiters.is_empty() {
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
        let mut line = match &holder.node {
            Some(node) => format!("{what}  held by node {}", printable(node)),
            None => format!("{what}  held under an unreadable record"),
        };
        if holder.this_node {
            line.push_str(" (this node)");
        }
        if let Some(unit) = &holder.unit {
            let _ = write!(line, " unit {}", printable(unit));
        }
        if let Some(pid) = holder.pid {
            let _ = write!(line, " pid {pid}");
        }
        if let Some(tuners) = holder.tuners {
            let _ = write!(line, " tuners {tuners}");
        }
        if let Some(priority) = holder.priority {
            let _ = write!(line, " priority {priority}");
        }
        if let Some(since) = holder.since {
            let _ = write!(line, " since {}", crate::cluster::record::rfc3339(since));
        }
        line.push_str(&holder.lease_state.describe(holder.ttl_left));
        line.push_str(&describe_preemption(holder));
        out.push_str(&line);
        out.push('\n');
    }
    for waiter in waiters {
        let mut line = format!(
            "device {} waiting: node {}",
            printable(&waiter.device),
            waiter
                .node
                .as_deref()
                .map_or_else(|| "?".into(), |n| printable(n).into_owned())
        );
        if waiter.this_node {
            line.push_str(" (this node)");
        }
        if let Some(unit) = &waiter.unit {
            let _ = write!(line, " unit {}", printable(unit));
        }
        if let Some(pid) = waiter.pid {
            let _ = write!(line, " pid {pid}");
        }
        if let Some(tuners) = waiter.tuners {
            let _ = write!(line, " tuners {tuners}");
        }
        if let Some(priority) = waiter.priority {
            let _ = write!(line, " priority {priority}");
        }
        if let Some(since) = waiter.since {
            let _ = write!(line, " since {}", crate::cluster::record::rfc3339(since));
        }
        line.push_str(&waiter.lease_state.describe(waiter.ttl_left));
        out.push_str(&line);
        out.push('\n');
    }
    write_nodes(out, report.nodes.iter().flatten());
    for device in report.devices.iter().flatten() {
        let tuners = device
            .tuners
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        let _ = writeln!(
            out,
            "device {}  tuners {}/{tuners} held in the cluster; {} waiting",
            printable(&device.device),
            device.held,
            device.waiting
        );
        for warning in &device.warnings {
            let _ = writeln!(out, "  ! {}", printable(warning));
        }
    }
}

/// `; preempted node b pid 4242 unit (priority 100) at …` for a slot taken
/// by preemption, and `; asked to let go by …` for one whose holder was
/// asked (ECP-0139); nothing for any other key.
fn describe_preemption(holder: &ClusterHolder) -> String {
    let mut text = String::new();
    if let Some(victim) = &holder.preempted {
        let _ = write!(
            text,
            "; preempted node {} pid {}{} (priority {}) at {}",
            printable(victim.node.as_deref().unwrap_or("?")),
            victim.pid,
            victim
                .unit
                .as_deref()
                .map(|u| format!(" {}", printable(u)))
                .unwrap_or_default(),
            victim.priority,
            printable(&victim.at)
        );
    }
    if let Some(request) = &holder.preemption_asked {
        let _ = write!(
            text,
            "; asked to let go by {}",
            crate::cluster::preemption::describe_asker(request)
        );
    }
    text
}

/// One line per node (ECP-0140): weight, held against share, the sources
/// it holds and those it waits for.
fn write_nodes<'a>(out: &mut String, nodes: impl Iterator<Item = &'a ClusterNode>) {
    for node in nodes {
        let mut line = format!(
            "node {}{}  weight {}  holds {} of its share {}",
            printable(&node.node),
            if node.this_node { " (this node)" } else { "" },
            node.weight,
            node.held,
            node.share
        );
        if !node.sources.is_empty() {
            let _ = write!(line, ": {}", printable(&node.sources.join(", ")));
        }
        if !node.waiting.is_empty() {
            let _ = write!(line, "; waits for {}", printable(&node.waiting.join(", ")));
        }
        out.push_str(&line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::command::CLUSTER_RECORD_FIELDS as FIELDS;
    use crate::secret_props::{credential_text, hostile_record, leaks};

    fn shown(key: &[u8], value: Vec<u8>) -> (String, String) {
        let kv = KeyValue {
            key: key.to_vec(),
            value,
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        };
        let holder = holder_of(&kv, None, "node-a");
        let waiter = waiter_of(&kv, "d", None, "node-a");
        let devices = devices(std::slice::from_ref(&holder), std::slice::from_ref(&waiter));
        let report = ClusterReport {
            node: "node-a".into(),
            holders: Some(vec![holder]),
            waiters: Some(vec![waiter]),
            devices: Some(devices),
            nodes: Some(nodes(std::slice::from_ref(&kv), "node-a")),
            error: None,
        };
        let mut text = String::new();
        write_text(&mut text, &report);
        (text, serde_json::to_string(&report).unwrap())
    }

    #[test]
    fn a_value_that_is_no_record_is_an_unreadable_one_and_a_wild_time_is_said_so() {
        let key = keyspace::source("hdhomerun://10.0.0.5/v5.1");
        let (text, json) = shown(key.as_bytes(), b"\xff{".to_vec());
        assert!(text.contains("held under an unreadable record"), "{text}");
        assert!(json.contains("\"unreadable_record\":true"), "{json}");
        let wild = br#"{"node":"b","unit":null,"pid":1,"boot_id":null,"since":253402300800,"source":"http://h/","version":"v"}"#;
        let (text, _) = shown(key.as_bytes(), wild.to_vec());
        assert!(
            text.contains(
                "held by node b pid 1 priority 100 since an unreadable time (253402300800 s after 1970)"
            ),
            "{text}"
        );
    }

    proptest! {
        /// Any value under any key, with credentials in every text field
        /// and the key: no credential is shown, and nothing panics.
        #[test]
        fn no_value_or_key_shows_a_credential_or_panics(
            value in hostile_record(FIELDS),
            source in credential_text(),
            device in credential_text(),
        ) {
            for key in [
                keyspace::source(&source),
                format!("{}slot-0", keyspace::device_slots(&device)),
                format!("{}/{source}", keyspace::PREFIX),
            ] {
                let (text, json) = shown(key.as_bytes(), value.clone());
                prop_assert!(!leaks(&text), "{text}");
                prop_assert!(!leaks(&json), "{json}");
            }
        }
    }
}
