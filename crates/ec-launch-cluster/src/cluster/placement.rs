//! Balanced placement (`--placement spread`, ECP-0140): which of the nodes
//! that wait for a free source takes it, so the sources spread over the
//! live nodes by weight and a lost node's go to the least loaded.
//!
//! Placement only decides *when* a waiting launcher tries the create txn
//! of ECP-0134; the txn, the witness and the lock delay of ECP-0135 are
//! what keep one reader per source, whatever placement believes. A wrong
//! or hostile view (records are never trusted) can make the spread uneven
//! or a take slower, never a second reader.
//!
//! Every spread launcher registers `wanted/<source>/<lease>` under its
//! lease and keeps it while it holds the source, so one range over the
//! prefix shows every node with its weight, what it holds and what it
//! wants. From that [`Census`] each launcher computes, for its own free
//! source, its [`Standing`]: below its share (`ceil(M × W / ΣW)`) it may
//! try at once, after 150 ms per node ahead of it (least loaded first, ties
//! by a rendezvous rank of node and source); at or above it only after the
//! settle delay, when the nodes below their share have had their turn. A
//! node's launchers take turns: the create txn also compares the node's
//! turn key unchanged since the look, so two launchers of one node never
//! both take a source on one count.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::claim::{Claimed, Witness};
use super::etcd::{Created, EtcdClient, EtcdError, Event, KeyValue, WatchSpec};
use super::keyspace::{self, Named};
use super::record::{ClusterRecord, EtcdValue, now_unix};
use crate::shown::Redact;

/// The delay per node ahead in the order (ECP-0140).
pub const STEP: Duration = Duration::from_millis(150);
/// How long a node at or above its share leaves a free source to the
/// nodes below theirs.
pub const SETTLE: Duration = Duration::from_secs(1);
/// No claim until no new registration was seen for this long: shares
/// computed while nodes are still registering are wrong, and stickiness
/// would keep what they handed out.
pub const QUIET: Duration = Duration::from_millis(500);
/// The quiet rule gives way this long after the source was first seen
/// free, so a node that keeps registering cannot starve anyone.
pub const QUIET_GIVES_WAY: Duration = Duration::from_secs(3);
/// The weights a launcher accepts (`--node-weight`); a record's weight
/// outside it counts as 1.
pub const WEIGHTS: std::ops::RangeInclusive<u32> = 1..=1000;

/// `--placement spread`: this node's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    pub weight: u32,
}

/// The value of a `wanted/<source>/<lease>` key: who wants the source and
/// with which weight. Fields are only ever added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WantRecord {
    pub node: String,
    pub unit: Option<String>,
    /// The launcher's PID on that node.
    pub pid: u32,
    /// Its `--node-weight`.
    pub weight: u32,
    /// When it registered, seconds since the Unix epoch.
    pub since: u64,
    /// The `ec-launch` version that wrote it.
    pub version: String,
}

impl WantRecord {
    /// This launcher, wanting its source with `weight`.
    #[must_use]
    pub fn for_this_launch(node: &str, unit: Option<String>, weight: u32) -> Self {
        Self {
            node: node.to_owned(),
            unit,
            pid: std::process::id(),
            weight,
            since: now_unix(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// The weight, when it is one a launcher could have declared.
    #[must_use]
    pub fn declared_weight(&self) -> Option<u32> {
        Some(self.weight).filter(|w| WEIGHTS.contains(w))
    }
}

impl EtcdValue for WantRecord {}

impl Redact for WantRecord {
    fn redacted(&self) -> Self {
        // Every field by name: a new one must be given its redaction here.
        let Self {
            node,
            unit,
            pid,
            weight,
            since,
            version,
        } = self;
        Self {
            node: node.redacted(),
            unit: unit.redacted(),
            pid: *pid,
            weight: *weight,
            since: *since,
            version: version.redacted(),
        }
    }
}

/// One node as the keys show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeLoad {
    /// The smallest weight its wanted keys declare; `None` when it has
    /// none (a `first` node, an older version): it counts as 1.
    pub declared_weight: Option<u32>,
    /// The sources whose keys name it as holder.
    pub held: BTreeSet<String>,
    /// The sources it has a wanted key for (held or not).
    pub wants: BTreeSet<String>,
}

impl NodeLoad {
    #[must_use]
    pub fn weight(&self) -> u32 {
        self.declared_weight.unwrap_or(1)
    }
}

/// One look at the cluster's placement: every node with a key, what it
/// holds and wants, and every source held or wanted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    pub nodes: BTreeMap<String, NodeLoad>,
    /// Every source with a holder or a wanted key: M.
    pub sources: BTreeSet<String>,
    /// Each node's turn key's `mod_revision`.
    pub turns: HashMap<String, i64>,
}

impl Census {
    /// Reads the keys of one range over the prefix. Anything else there
    /// (slots, waiters, other layouts) is not counted; an unreadable record
    /// counts its source but no node.
    #[must_use]
    pub fn from_keys(kvs: &[KeyValue]) -> Self {
        let mut census = Self::default();
        for kv in kvs {
            match keyspace::parse(&kv.key) {
                Some(Named::Source(source)) => {
                    if let Some(record) = ClusterRecord::from_json(&kv.value) {
                        census
                            .nodes
                            .entry(record.node)
                            .or_default()
                            .held
                            .insert(source.clone());
                    }
                    census.sources.insert(source);
                }
                Some(Named::Wanted { source, .. }) => {
                    if let Some(record) = WantRecord::from_json(&kv.value) {
                        let weight = record.declared_weight().unwrap_or(1);
                        let node = census.nodes.entry(record.node).or_default();
                        node.declared_weight =
                            Some(node.declared_weight.map_or(weight, |w| w.min(weight)));
                        node.wants.insert(source.clone());
                    }
                    census.sources.insert(source);
                }
                Some(Named::Turn { node }) => {
                    census.turns.insert(node, kv.mod_revision);
                }
                _ => {}
            }
        }
        census
    }

    /// The sum of the weights of the nodes counted live.
    fn total_weight(&self, live: &dyn Fn(&str) -> bool) -> u64 {
        self.nodes
            .iter()
            .filter(|(name, _)| live(name))
            .map(|(_, node)| u64::from(node.weight()))
            .sum()
    }

    /// `ceil(M × weight / ΣW)` over the nodes counted live (`weight`'s
    /// own node among them).
    #[must_use]
    pub fn share(&self, weight: u32, total: u64) -> u64 {
        let m = u64::try_from(self.sources.len()).unwrap_or(u64::MAX);
        let total = total.max(u64::from(weight)).max(1);
        m.saturating_mul(u64::from(weight)).div_ceil(total)
    }

    /// The share of `node` when every node with a key counts live (what
    /// `status --etcd` shows).
    #[must_use]
    pub fn share_of(&self, node: &str) -> u64 {
        let weight = self.nodes.get(node).map_or(1, NodeLoad::weight);
        self.share(weight, self.total_weight(&|_| true))
    }

    /// Where `me` (with `weight`) stands for free `source`: below its share
    /// or not, and how many nodes of its group go before it. Nodes for
    /// which `suspect` is true are not counted live: their weight leaves
    /// the sum (their held sources still count in M) and they are no
    /// candidates.
    #[must_use]
    pub fn standing(
        &self,
        me: &str,
        weight: u32,
        source: &str,
        suspect: &dyn Fn(&str) -> bool,
    ) -> Standing {
        let live = |name: &str| name == me || !suspect(name);
        // This launcher as it registered, even if its own key is not in
        // the look (deleted by hand): the smallest weight of its node.
        let mut census = Self {
            nodes: self.nodes.clone(),
            sources: self.sources.clone(),
            turns: HashMap::new(),
        };
        census.sources.insert(source.to_owned());
        let own = census.nodes.entry(me.to_owned()).or_default();
        own.declared_weight = Some(own.declared_weight.map_or(weight, |w| w.min(weight)));
        own.wants.insert(source.to_owned());
        let total = census.total_weight(&live);
        let share_of = |node: &NodeLoad| census.share(node.weight(), total);
        let below = |node: &NodeLoad| (node.held.len() as u64) < share_of(node);
        let own = &census.nodes[me];
        let own_below = below(own);
        let mut group: Vec<(&String, &NodeLoad)> = census
            .nodes
            .iter()
            .filter(|(name, node)| {
                live(name) && node.wants.contains(source) && below(node) == own_below
            })
            .collect();
        group.sort_by(|a, b| {
            by_load(a.1, b.1)
                .then_with(|| rank(b.0, source).cmp(&rank(a.0, source)))
                .then_with(|| a.0.cmp(b.0))
        });
        let position = group
            .iter()
            .position(|(name, _)| name.as_str() == me)
            .unwrap_or(0);
        Standing {
            held: own.held.len(),
            share: share_of(own),
            below: own_below,
            position,
        }
    }
}

/// Lowest `held / weight` first, without division.
fn by_load(a: &NodeLoad, b: &NodeLoad) -> Ordering {
    let a_load = (a.held.len() as u64).saturating_mul(u64::from(b.weight()));
    let b_load = (b.held.len() as u64).saturating_mul(u64::from(a.weight()));
    a_load.cmp(&b_load)
}

/// The rendezvous rank of `node` for `source`: the highest goes first. A
/// fixed hash (FNV-1a, then the splitmix64 finaliser to spread it), the
/// same on every node and in every version: `std`'s hasher may change
/// between Rust releases, and nodes built apart must agree.
#[must_use]
pub fn rank(node: &str, source: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.bytes().chain([0xff]).chain(source.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// Where a launcher stands for one free source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Sources its node holds.
    pub held: usize,
    /// Its node's share.
    pub share: u64,
    /// Below its share.
    pub below: bool,
    /// Nodes of its group (below, or at or above) before it.
    pub position: usize,
}

impl Standing {
    /// How long after the source was first seen free it may try.
    #[must_use]
    pub fn delay(&self) -> Duration {
        let ahead = STEP.saturating_mul(u32::try_from(self.position).unwrap_or(u32::MAX));
        if self.below {
            ahead
        } else {
            SETTLE.saturating_add(ahead)
        }
    }
}

/// What `run` asks of placement: who wants the source, with what weight.
pub struct Want<'a> {
    /// This node's name, as in its records.
    pub node: &'a str,
    pub weight: u32,
    /// The wanted key's value.
    pub value: &'a dyn Fn() -> Vec<u8>,
}

impl std::fmt::Debug for Want<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Want")
            .field("node", &self.node)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

/// What a spread claim needs besides the key.
pub struct SpreadClaim<'a> {
    /// The source key (not escaped).
    pub source: &'a str,
    /// This node's name, as in its records.
    pub node: &'a str,
    pub weight: u32,
    /// The source key's value, made at each try.
    pub value: &'a dyn Fn() -> Vec<u8>,
    /// The wanted key's value.
    pub want: &'a dyn Fn() -> Vec<u8>,
    /// How long a node whose key was lost uncleanly is not counted live
    /// (the lease TTL: by then all its keys are gone, or it lives).
    pub suspicion: Duration,
}

impl std::fmt::Debug for SpreadClaim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpreadClaim")
            .field("source", &self.source)
            .field("node", &self.node)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

/// What a waiting launcher remembers between looks.
#[derive(Debug)]
struct Memory {
    /// When the source was first seen free since it was last seen held.
    free_since: Option<Instant>,
    /// The wanted keys of the last look.
    wants: HashSet<Vec<u8>>,
    /// When a wanted key not seen before last appeared (this launcher's
    /// own start counts).
    last_new_want: Instant,
    /// Nodes whose source key was seen lost uncleanly, and when.
    suspects: HashMap<String, Instant>,
    /// The holder `on_wait` was last told of.
    told_holder: Option<(i64, i64)>,
    /// The "at or above its share" wait was logged.
    told_turn: bool,
    /// Takes that failed on a moved turn, in this claim.
    turn_moved: u32,
}

impl Memory {
    /// Nodes whose held source key was deleted without the released mark
    /// (an expiry, a revoke, a delete by hand): counted dead for
    /// `suspicion` (ECP-0140, "a node dies"). Never this node.
    fn saw(&mut self, events: &[Event], me: &str) {
        for event in events.iter().filter(|e| e.deleted) {
            if !matches!(keyspace::parse(&event.kv.key), Some(Named::Source(_))) {
                continue;
            }
            let Some(previous) = &event.prev else {
                continue;
            };
            if ClusterRecord::is_released(&previous.value) {
                continue;
            }
            if let Some(record) = ClusterRecord::from_json(&previous.value)
                && record.node != me
            {
                tracing::debug!(node = %crate::printable::printable(&record.node), "placement: a source key of this node was lost uncleanly; not counting it live");
                self.suspects.insert(record.node, Instant::now());
            }
        }
    }
}

/// Takes the source's key for `lease` in spread mode, waiting (there is no
/// skip in spread mode) until `until`. As [`super::claim::claim`]: the key
/// taken, and how, is in `witness`; an ambiguous answer is an `Err` the
/// caller starts over on. `on_wait` is told each new holder waited for.
///
/// # Errors
/// Any [`EtcdError`] of the registration, a look, a txn or a watch.
pub fn claim(
    client: &EtcdClient,
    witness: &mut Witness,
    spread: &SpreadClaim<'_>,
    lease: i64,
    until: Option<Instant>,
    on_wait: &mut dyn FnMut(&KeyValue),
) -> Result<Claimed, EtcdError> {
    super::etcd::ensure_lease("spread claim", lease)?;
    let key = keyspace::source(spread.source).into_bytes();
    client.put(
        keyspace::wanted(spread.source, lease).as_bytes(),
        &(spread.want)(),
        lease,
    )?;
    let mut memory = Memory {
        free_since: None,
        wants: HashSet::new(),
        last_new_want: Instant::now(),
        suspects: HashMap::new(),
        told_holder: None,
        told_turn: false,
        turn_moved: 0,
    };
    let everything = keyspace::everything().into_bytes();
    loop {
        let (kvs, revision) = client.list_at(&everything)?;
        memory.looked(&kvs);
        if let Some(holder) = kvs.iter().find(|kv| kv.key == key) {
            if holder.lease == lease {
                // An earlier txn whose answer was lost did succeed.
                witness.took(client, holder.clone());
                return Ok(Claimed::Ours);
            }
            if let Some(busy) = wait_for_holder(
                client,
                witness,
                &mut memory,
                spread,
                holder,
                revision,
                until,
                on_wait,
            )? {
                return Ok(busy);
            }
            continue;
        }
        let now = Instant::now();
        let census = Census::from_keys(&kvs);
        let (standing, gate) = memory.gate(&census, spread, now);
        if now >= gate {
            if take_in_turn(client, witness, &mut memory, spread, &census, lease)? {
                tracing::debug!(
                    held = standing.held,
                    share = standing.share,
                    below = standing.below,
                    position = standing.position,
                    sources = census.sources.len(),
                    nodes = census.nodes.len(),
                    "placement: source taken in this node's turn"
                );
                return Ok(Claimed::Ours);
            }
            continue;
        }
        if passed(until) {
            return Ok(busy(None));
        }
        if !standing.below && !memory.told_turn {
            memory.told_turn = true;
            tracing::info!(
                source = %crate::printable::printable(spread.source),
                "placement: this node holds {} sources, at or above its share of {}; leaving this free source to nodes below their share for {} first",
                standing.held,
                standing.share,
                humantime::format_duration(gate.saturating_duration_since(now)),
            );
        }
        let until_gate = until.map_or(gate, |until| until.min(gate));
        wait_for_any_change(
            client,
            witness,
            &mut memory,
            spread.node,
            revision,
            until_gate,
        )?;
    }
}

impl Memory {
    /// A look's wanted keys: one not seen before restarts the quiet period.
    fn looked(&mut self, kvs: &[KeyValue]) {
        let wants: HashSet<Vec<u8>> = kvs
            .iter()
            .filter(|kv| matches!(keyspace::parse(&kv.key), Some(Named::Wanted { .. })))
            .map(|kv| kv.key.clone())
            .collect();
        if !self.wants.is_empty() && !wants.is_subset(&self.wants) {
            self.last_new_want = Instant::now();
        }
        self.wants = wants;
    }

    /// Where this launcher stands for its free source, and the instant it
    /// may try: the delays count from when the picture settled (a settle
    /// delay that ran out while nodes were still registering would let a
    /// node at its share take a source before the late ones had a turn).
    fn gate(
        &mut self,
        census: &Census,
        spread: &SpreadClaim<'_>,
        now: Instant,
    ) -> (Standing, Instant) {
        let free_since = *self.free_since.get_or_insert(now);
        self.suspects
            .retain(|_, at| now.saturating_duration_since(*at) < spread.suspicion);
        let standing = census.standing(spread.node, spread.weight, spread.source, &|node| {
            self.suspects.contains_key(node)
        });
        let quiet = (self.last_new_want + QUIET).min(free_since + QUIET_GIVES_WAY);
        (standing, free_since.max(quiet) + standing.delay())
    }
}

/// The source is held by another: wait (as `first` does) for its key's
/// delete only. `Some`: `until` passed.
#[allow(clippy::too_many_arguments)] // the claim's state, passed through
fn wait_for_holder(
    client: &EtcdClient,
    witness: &mut Witness,
    memory: &mut Memory,
    spread: &SpreadClaim<'_>,
    holder: &KeyValue,
    revision: i64,
    until: Option<Instant>,
    on_wait: &mut dyn FnMut(&KeyValue),
) -> Result<Option<Claimed>, EtcdError> {
    witness.saw_holder(holder);
    memory.free_since = None;
    if passed(until) {
        return Ok(Some(busy(Some(holder.clone()))));
    }
    let identity = (holder.create_revision, holder.lease);
    if memory.told_holder != Some(identity) {
        on_wait(holder);
        memory.told_holder = Some(identity);
    }
    match client.wait_for_delete(&holder.key, false, revision, until)? {
        super::etcd::WatchOutcome::Deleted(events) => {
            witness.saw_deleted(&events);
            memory.saw(&events, spread.node);
        }
        super::etcd::WatchOutcome::LookAgain => witness.saw_nothing_certain(),
        super::etcd::WatchOutcome::TimedOut => return Ok(Some(busy(Some(holder.clone())))),
    }
    Ok(None)
}

/// The take, in this node's turn: true when the key is ours; false to look
/// again (held meanwhile, or another launcher of this node claimed since
/// the look, so our count is stale).
fn take_in_turn(
    client: &EtcdClient,
    witness: &mut Witness,
    memory: &mut Memory,
    spread: &SpreadClaim<'_>,
    census: &Census,
    lease: i64,
) -> Result<bool, EtcdError> {
    let key = keyspace::source(spread.source).into_bytes();
    let turn = keyspace::turn(spread.node).into_bytes();
    let turn_revision = census.turns.get(spread.node).copied().unwrap_or(0);
    let value = (spread.value)();
    let created = client.create_in_turn(
        &key,
        &value,
        lease,
        (&turn, format!("{lease:x}").as_bytes(), turn_revision),
    )?;
    match created {
        Some(Created::Ours { revision }) => {
            witness.took(client, KeyValue::created(key, value, revision, lease));
            Ok(true)
        }
        Some(Created::Held { holder, .. }) if holder.lease == lease => {
            witness.took(client, holder);
            Ok(true)
        }
        Some(Created::Held { holder, .. }) => {
            witness.saw_holder(&holder);
            Ok(false)
        }
        None => {
            // Pause when it keeps happening, so a busy node cannot make us
            // spin.
            memory.turn_moved += 1;
            if memory.turn_moved > 3 {
                std::thread::sleep(Duration::from_millis(
                    10 * u64::from(memory.turn_moved.min(20)),
                ));
            }
            Ok(false)
        }
    }
}

fn busy(holder: Option<KeyValue>) -> Claimed {
    Claimed::Busy {
        holder,
        timed_out: true,
    }
}

fn passed(until: Option<Instant>) -> bool {
    until.is_some_and(|until| Instant::now() >= until)
}

/// Waits until anything under the prefix changes after `revision` (a
/// count, a share, a position may have moved) or `until` passes. Deletes
/// are told to the witness and to the memory of suspects.
fn wait_for_any_change(
    client: &EtcdClient,
    witness: &mut Witness,
    memory: &mut Memory,
    me: &str,
    revision: i64,
    until: Instant,
) -> Result<(), EtcdError> {
    let everything = keyspace::everything().into_bytes();
    let spec = WatchSpec {
        key: &everything,
        prefix: true,
        start_revision: revision + 1,
        puts: true,
    };
    let window_end = until.min(Instant::now() + client.watch_window());
    if window_end <= Instant::now() {
        return Ok(());
    }
    let seen = client.watch(&spec, window_end, &mut |message| {
        if message.compact_revision > 0
            || (message.header.revision > 0 && message.header.revision < revision)
        {
            return Some(None);
        }
        (!message.events.is_empty()).then(|| Some(message.events.clone()))
    })?;
    match seen {
        Some(Some(events)) => {
            witness.saw_deleted(&events);
            memory.saw(&events, me);
        }
        // Compacted, or a store that went back: nothing seen counts.
        Some(None) => witness.saw_nothing_certain(),
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: String, value: Vec<u8>) -> KeyValue {
        KeyValue {
            key: key.into_bytes(),
            value,
            create_revision: 1,
            mod_revision: 1,
            lease: 1,
        }
    }

    fn want(source: &str, node: &str, weight: u32, lease: i64) -> KeyValue {
        kv(
            keyspace::wanted(source, lease),
            WantRecord::for_this_launch(node, None, weight).to_json(),
        )
    }

    fn held(source: &str, node: &str) -> KeyValue {
        kv(
            keyspace::source(source),
            ClusterRecord::for_this_launch(node, None, source).to_json(),
        )
    }

    fn nobody(_: &str) -> bool {
        false
    }

    #[test]
    fn the_share_is_the_ceiling_of_the_weighted_part() {
        let mut keys = Vec::new();
        for (i, node) in ["a", "b", "c"].iter().enumerate() {
            let weight = if i == 0 { 2 } else { 1 };
            for s in 0..12 {
                keys.push(want(
                    &format!("s{s}"),
                    node,
                    weight,
                    i64::try_from(1 + i * 100 + s).expect("small"),
                ));
            }
        }
        let census = Census::from_keys(&keys);
        assert_eq!(census.sources.len(), 12);
        assert_eq!(census.share_of("a"), 6);
        assert_eq!(census.share_of("b"), 3);
        // 13 over three equal nodes: 5 each (the sum covers M).
        let census = Census::from_keys(
            &(0..13)
                .flat_map(|s| {
                    ["a", "b", "c"].map(|n| {
                        want(
                            &format!("s{s}"),
                            n,
                            1,
                            1 + s + 100 * i64::from(n.as_bytes()[0]),
                        )
                    })
                })
                .collect::<Vec<_>>(),
        );
        assert_eq!(census.share_of("b"), 5);
    }

    #[test]
    fn a_node_below_its_share_goes_first_and_the_least_loaded_of_them_leads() {
        let mut keys = vec![
            want("x", "a", 1, 1),
            want("x", "b", 1, 2),
            want("x", "c", 1, 3),
        ];
        for s in 0..5 {
            keys.push(want(&format!("s{s}"), "a", 1, 10 + s));
            keys.push(held(&format!("s{s}"), "a"));
        }
        keys.push(want("t", "b", 1, 20));
        keys.push(held("t", "b"));
        let census = Census::from_keys(&keys);
        // M = 7, share ceil(7/3) = 3: a (5) is above, b (1) and c (0) below,
        // c the least loaded.
        let a = census.standing("a", 1, "x", &nobody);
        let b = census.standing("b", 1, "x", &nobody);
        let c = census.standing("c", 1, "x", &nobody);
        assert!(!a.below && a.delay() >= SETTLE, "{a:?}");
        assert_eq!((c.below, c.position), (true, 0), "{c:?}");
        assert_eq!((b.below, b.position), (true, 1), "{b:?}");
        assert!(c.delay() < b.delay() && b.delay() < SETTLE);
    }

    #[test]
    fn equal_nodes_are_ordered_by_a_rank_every_node_computes_alike() {
        let keys = vec![want("x", "a", 1, 1), want("x", "b", 1, 2)];
        let census = Census::from_keys(&keys);
        let a = census.standing("a", 1, "x", &nobody);
        let b = census.standing("b", 1, "x", &nobody);
        let mut positions = [a.position, b.position];
        positions.sort_unstable();
        assert_eq!(positions, [0, 1]);
        assert_eq!(a.position == 0, rank("a", "x") > rank("b", "x"));
        // Fixed across builds and versions: nodes built apart must agree,
        // so the values are pinned (computed independently of this code).
        assert_eq!(rank("a", "x"), 0x458b_ee57_aaf3_158c);
        assert_eq!(
            rank("node-a", "hdhomerun://10.0.0.5/v5.1"),
            0xf74b_9eb7_be36_ffd1
        );
        assert_ne!(rank("a", "x"), rank("x", "a"));
    }

    #[test]
    fn a_suspect_node_leaves_the_sum_so_the_survivors_shares_rise() {
        let mut keys = Vec::new();
        for (n, node) in ["a", "b", "dead"].iter().enumerate() {
            for s in 0..4 {
                let source = format!("{node}{s}");
                keys.push(held(&source, node));
                keys.push(want(
                    &source,
                    node,
                    1,
                    i64::try_from(1 + n * 10 + s).expect("small"),
                ));
            }
        }
        keys.push(want("dead0", "a", 1, 99));
        let census = Census::from_keys(&keys);
        let alive = census.standing("a", 1, "dead0", &nobody);
        assert!(!alive.below, "{alive:?}");
        let dead = census.standing("a", 1, "dead0", &|node| node == "dead");
        assert_eq!((dead.share, dead.below), (6, true), "{dead:?}");
    }

    #[test]
    fn a_spread_waiter_takes_a_source_whose_delete_its_watch_stream_never_showed() {
        use crate::cluster::etcd::EtcdConnect;
        use crate::cluster::etcd_server::{EtcdServer, StallingProxy};
        let etcd = EtcdServer::start();
        // The waiter's watches are made and then say nothing more.
        let proxy = StallingProxy::to(&etcd.url());
        let connect = |url: &str| {
            EtcdClient::connect(&EtcdConnect {
                endpoints: vec![url::Url::parse(url).expect("url")],
                ca_file: None,
                cert_file: None,
                key_file: None,
                user_file: None,
                call_timeout: Duration::from_millis(300),
            })
            .expect("connect")
        };
        let direct = connect(&etcd.url());
        let waiter = connect(&proxy.url());
        let holder = direct.grant(Duration::from_secs(30)).expect("grant").id;
        let record = ClusterRecord::for_this_launch("a", None, "s").to_json();
        direct
            .create(keyspace::source("s").as_bytes(), &record, holder)
            .expect("create");
        let lease = waiter.grant(Duration::from_secs(30)).expect("grant").id;
        let window = waiter.watch_window();
        let (told_tx, told) = std::sync::mpsc::channel();
        let claimant = std::thread::spawn(move || {
            let value = || ClusterRecord::for_this_launch("b", None, "s").to_json();
            let want = || WantRecord::for_this_launch("b", None, 1).to_json();
            let spread = SpreadClaim {
                source: "s",
                node: "b",
                weight: 1,
                value: &value,
                want: &want,
                suspicion: Duration::from_secs(3),
            };
            let until = Some(Instant::now() + Duration::from_secs(20));
            let claimed = claim(
                &waiter,
                &mut Witness::default(),
                &spread,
                lease,
                until,
                &mut |holder| {
                    let _ = told_tx.send(holder.lease);
                },
            );
            (claimed.expect("claim"), Instant::now())
        });
        assert_eq!(told.recv_timeout(Duration::from_secs(10)), Ok(holder));
        // Its watch of the holder's key is made by now.
        std::thread::sleep(Duration::from_millis(500));
        let released = Instant::now();
        direct.revoke(holder).expect("revoke");
        let (claimed, at) = claimant.join().expect("claimant");
        let after = at.saturating_duration_since(released);
        eprintln!("the waiter took the source {after:?} after its holder let go");
        assert_eq!(claimed, Claimed::Ours);
        assert!(
            after <= window * 2 + QUIET + Duration::from_secs(1),
            "{after:?}"
        );
        let (kv, _) = direct.get(keyspace::source("s").as_bytes()).expect("get");
        assert_eq!(kv.expect("held").lease, lease);
    }

    #[test]
    fn hostile_records_count_their_source_but_no_node_and_no_weight() {
        let keys = vec![
            kv(keyspace::wanted("s", 5), b"not json".to_vec()),
            kv(keyspace::source("t"), b"{}".to_vec()),
            want("u", "n", 0, 6),
            want("v", "n", 5000, 7),
        ];
        let census = Census::from_keys(&keys);
        assert_eq!(census.sources.len(), 4);
        assert_eq!(census.nodes.len(), 1);
        assert_eq!(census.nodes["n"].weight(), 1);
    }
}
