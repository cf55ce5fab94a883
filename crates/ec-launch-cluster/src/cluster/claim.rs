//! Taking a cluster key (a source, or one of a device's tuner slots) for a
//! lease, with the local lock's skip/wait semantics.
//!
//! A key is taken by one txn that creates it only if it does not exist, so
//! of any number of claimants exactly one wins. `wait` never polls: it
//! watches the holder's key from the revision the failed txn saw, so a
//! delete (a clean stop's revoke, or the holder's lease expiring) that
//! happens at any moment after that look wakes the waiter, and it tries
//! again. A key found held by our own lease is ours: an earlier txn whose
//! answer was lost did succeed. An ambiguous txn is returned as the error it
//! is; the caller revokes the lease (deleting anything it may have created)
//! and starts over with a new one.
//!
//! Both keep a [`Witness`]: what the claimant saw of each key's previous
//! holder, so that once a key is ours the session knows whether the holder
//! let go cleanly (a release it watched: start at once) or not (wait the
//! lock delay before starting, ECP-0135).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::etcd::{Created, EtcdClient, EtcdError, Event, KeyValue, WatchOutcome, WatchSpec};
use super::fence::BootInstant;
use super::keyspace;
use super::record::{ClusterRecord, Declarant, EtcdValue};
use crate::priority::Priority;

/// What a claimant saw of the keys it claimed (ECP-0135, lock delay). Every
/// create and every wait of a claim must be told to it (through
/// [`create`] and [`wait_for_change`], or its `saw_*` and `took` methods):
/// a take it was not told of is neither watched nor delayed until the
/// session asks for it ([`Witness::ensure_taken`]), and a delete it was not
/// told of is never a clean hand-over. A
/// key taken right after a watched DELETE whose previous value carried
/// the holder's `released` mark changed hands cleanly: the holder's program
/// had ended and its lock was free before it marked. Anything else, an
/// expiry, a revoke or a delete by hand, a store restored or restarted
/// empty, a compaction that hid what happened, or a key simply found free
/// (a fresh claim cannot tell "never held" from "lost with the data"), is
/// unclean: the previous holder may still be stopping its program.
#[derive(Debug, Default)]
pub struct Witness {
    seen: HashMap<Vec<u8>, Seen>,
    taken: Vec<Took>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// The revision of a watched DELETE whose previous value was marked
    /// released, since the last holder seen.
    clean_release: Option<i64>,
    /// The stop grace the last holder seen recorded.
    grace: Option<Duration>,
}

/// A key that became ours, and how it came to be.
#[derive(Debug, Clone)]
pub struct Took {
    /// Our key as taken: its value and revisions, under our lease.
    pub kv: KeyValue,
    /// We watched its previous holder release it cleanly.
    pub clean: bool,
    /// The stop grace its previous holder recorded, when one was seen.
    pub previous_grace: Option<Duration>,
    /// When it became ours.
    pub at: BootInstant,
}

impl Witness {
    /// A holder was seen: whatever release came before is not this one's.
    pub fn saw_holder(&mut self, holder: &KeyValue) {
        let seen = self.seen.entry(holder.key.clone()).or_default();
        seen.clean_release = None;
        if let Some(grace) = ClusterRecord::recorded_stop_grace(&holder.value) {
            seen.grace = Some(grace);
        }
    }

    /// Keys were deleted: cleanly when the value they had carries the mark.
    pub fn saw_deleted(&mut self, events: &[Event]) {
        for event in events.iter().filter(|e| e.deleted) {
            let seen = self.seen.entry(event.kv.key.clone()).or_default();
            let previous = event.prev.as_ref().map(|prev| prev.value.as_slice());
            seen.clean_release = previous
                .is_some_and(ClusterRecord::is_released)
                .then_some(event.kv.mod_revision);
            if let Some(grace) = previous.and_then(ClusterRecord::recorded_stop_grace) {
                seen.grace = Some(grace);
            }
        }
    }

    /// The watch could not tell what happened (compaction, a store that
    /// went back): no release seen so far counts.
    pub fn saw_nothing_certain(&mut self) {
        for seen in self.seen.values_mut() {
            seen.clean_release = None;
        }
    }

    /// `kv` is ours now. Clean only when the last thing seen of the key was
    /// a marked release and nothing happened to the key between that
    /// delete and our create (another claimant could have taken and lost
    /// it in between): our create is the next revision, or the key's
    /// history since the delete begins with our create.
    pub fn took(&mut self, client: &EtcdClient, kv: KeyValue) {
        let seen = self.seen.get(&kv.key).copied().unwrap_or_default();
        let clean = seen.clean_release.is_some_and(|released| {
            kv.create_revision == released + 1
                || first_change_after(client, &kv.key, released).is_some_and(|first| {
                    !first.deleted
                        && first.kv.create_revision == kv.create_revision
                        && first.kv.lease == kv.lease
                })
        });
        self.taken.push(Took {
            kv,
            clean,
            previous_grace: seen.grace,
            at: BootInstant::now(),
        });
    }

    /// Makes sure the take of `key` under `lease` was told: a claim that
    /// says it took a key is held to it, read from etcd when it was not
    /// told here (then it is not a clean hand-over: nothing was watched).
    ///
    /// # Errors
    /// The read's [`EtcdError`]; [`EtcdError::Malformed`] (ambiguous: start
    /// over) when the key is not under `lease`.
    pub fn ensure_taken(
        &mut self,
        client: &EtcdClient,
        key: &[u8],
        lease: i64,
    ) -> Result<(), EtcdError> {
        if self.taken.iter().any(|took| took.kv.key == key) {
            return Ok(());
        }
        match client.get(key)? {
            (Some(kv), _) if kv.lease == lease => {
                self.took(client, kv);
                Ok(())
            }
            _ => Err(EtcdError::Malformed {
                operation: "claim",
                endpoint: "(the claim's own answer)".into(),
                reason: "a key the claim called ours is not under our lease".into(),
            }),
        }
    }

    /// The keys taken since the last call, in the order taken.
    pub fn drain_taken(&mut self) -> Vec<Took> {
        std::mem::take(&mut self.taken)
    }

    /// Forgets everything: a claim that starts over under a new lease
    /// knows nothing of what happened meanwhile.
    pub fn forget(&mut self) {
        self.seen.clear();
        self.taken.clear();
    }
}

/// The first change of `key` after `revision`, from etcd's history; `None`
/// when it cannot be read (compacted, no answer in one call timeout).
fn first_change_after(client: &EtcdClient, key: &[u8], revision: i64) -> Option<Event> {
    let spec = WatchSpec {
        key,
        prefix: false,
        start_revision: revision + 1,
        puts: true,
    };
    let window_end = Instant::now() + client.call_timeout();
    client
        .watch(&spec, window_end, &mut |message| {
            if message.compact_revision > 0 {
                return Some(None);
            }
            message.events.first().cloned().map(Some)
        })
        .ok()
        .flatten()
        .flatten()
}

/// A create txn, with what it shows told to `witness`.
pub fn create(
    client: &EtcdClient,
    witness: &mut Witness,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<Created, EtcdError> {
    let created = client.create(key, value, lease)?;
    match &created {
        Created::Ours { revision } => witness.took(
            client,
            KeyValue {
                key: key.to_vec(),
                value: value.to_vec(),
                create_revision: *revision,
                mod_revision: *revision,
                lease,
            },
        ),
        // Ours already: an earlier txn whose answer was lost.
        Created::Held { holder, .. } if holder.lease == lease => {
            witness.took(client, holder.clone());
        }
        Created::Held { holder, .. } => witness.saw_holder(holder),
    }
    Ok(created)
}

/// [`EtcdClient::wait_for_delete`], with what it shows told to `witness`:
/// `true` when `until` passed.
pub fn wait_for_change(
    client: &EtcdClient,
    witness: &mut Witness,
    key: &[u8],
    prefix: bool,
    after_revision: i64,
    until: Option<Instant>,
) -> Result<bool, EtcdError> {
    match client.wait_for_delete(key, prefix, after_revision, until)? {
        WatchOutcome::Deleted(events) => witness.saw_deleted(&events),
        WatchOutcome::LookAgain => witness.saw_nothing_certain(),
        WatchOutcome::TimedOut => return Ok(true),
    }
    Ok(false)
}

/// How a claim ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The key is ours, under the lease.
    Ours,
    /// Someone else holds it: skipped, or `until` passed while waiting.
    Busy {
        holder: Option<KeyValue>,
        timed_out: bool,
    },
}

/// Takes `key` for `lease` with skip or wait (watch the holder's key, retry
/// on its delete). `on_wait` is told each new holder waited for. `value`
/// is made for each try, so a key taken after a wait says when it was
/// taken, not when the wait began.
/// An ambiguous txn => `Err` with [`EtcdError::is_ambiguous`]; the caller
/// revokes the lease and starts over. The key taken, and how, is in
/// `witness`.
///
/// # Errors
/// Any [`EtcdError`] of the txn or the watch.
#[allow(clippy::too_many_arguments)] // the slot claim's, and the witness
pub fn claim(
    client: &EtcdClient,
    witness: &mut Witness,
    key: &[u8],
    value: &dyn Fn() -> Vec<u8>,
    lease: i64,
    wait: bool,
    until: Option<Instant>,
    on_wait: &mut dyn FnMut(&KeyValue),
) -> Result<Claimed, EtcdError> {
    let mut told: Option<(i64, i64)> = None;
    loop {
        let (holder, revision) = match create(client, witness, key, &value(), lease)? {
            Created::Ours { .. } => return Ok(Claimed::Ours),
            Created::Held { holder, .. } if holder.lease == lease => return Ok(Claimed::Ours),
            Created::Held { holder, revision } => (holder, revision),
        };
        if !wait || passed(until) {
            return Ok(Claimed::Busy {
                holder: Some(holder),
                timed_out: wait,
            });
        }
        let identity = (holder.create_revision, holder.lease);
        if told != Some(identity) {
            on_wait(&holder);
            told = Some(identity);
        }
        if wait_for_change(client, witness, key, false, revision, until)? {
            return Ok(Claimed::Busy {
                holder: Some(holder),
                timed_out: true,
            });
        }
    }
}

/// What a launcher asks of a device's slots.
pub struct SlotRequest<'a> {
    /// The device's prefix (`<prefix>/devices/<device>/`).
    pub device_prefix: &'a [u8],
    /// The tuner count this launcher declares (`--tuners`).
    pub count: u32,
    /// The slot key's value, made at each try (it dates the holding and
    /// records `count`).
    pub value: &'a dyn Fn() -> Vec<u8>,
    /// The waiting key's value (records `count` and the priority), made
    /// when registering.
    pub waiting_value: &'a dyn Fn() -> Vec<u8>,
    /// Its `--priority`: the device's waiters are served by it, and a
    /// holder strictly below it is asked to let go (ECP-0139 section 7).
    pub priority: Priority,
    /// The value of a request that the holder of a slot (its key as held)
    /// let go.
    pub preempt_value: &'a dyn Fn(&KeyValue) -> Vec<u8>,
    /// How long a launcher that asked a holder to let go waits for a slot
    /// when it would not wait otherwise (`skip`): the holder's grace, and
    /// for a holder that does not answer, its lease's life.
    pub preempt_patience: Duration,
}

impl std::fmt::Debug for SlotRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotRequest")
            .field(
                "device_prefix",
                &String::from_utf8_lossy(self.device_prefix),
            )
            .field("count", &self.count)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

/// What a slot claim tells its caller as it goes.
pub struct SlotEvents<'a> {
    /// The holders, whenever a wait starts with other holders than the
    /// last.
    pub wait: &'a mut dyn FnMut(&[KeyValue]),
    /// Once, when other launchers' counts first make this one use fewer
    /// than it declared.
    pub disagree: &'a mut dyn FnMut(&Disagreement),
    /// A holder was asked to let go: its slot, its key and its record.
    pub preempt: &'a mut dyn FnMut(u32, &KeyValue, &ClusterRecord),
}

impl std::fmt::Debug for SlotEvents<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotEvents").finish_non_exhaustive()
    }
}

impl SlotEvents<'_> {
    /// Runs `body` with events that tell nobody (a claim taken again
    /// after a start-over, told once already).
    pub fn quiet<T>(body: impl FnOnce(&mut SlotEvents<'_>) -> T) -> T {
        body(&mut SlotEvents {
            wait: &mut |_| {},
            disagree: &mut |_| {},
            preempt: &mut |_, _, _| {},
        })
    }
}

/// A launcher made to use fewer tuners than it declared: who declared
/// fewer (ECP-0135 section 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// What this launcher declared.
    pub own: u32,
    /// What it uses: the smallest count declared.
    pub using: u32,
    /// The keys (slots and waiters) whose records declare less than `own`.
    pub by: Vec<KeyValue>,
}

/// One of the device's slots (`slot-0`..), taken only when fewer slots are
/// held than the smallest tuner count declared by this launcher, any
/// holder and any waiter of the device, and only at an index below that
/// count (ECP-0135 section 5); and only when no waiter goes before this
/// launcher (ECP-0139 section 7: priority descending, then arrival). The
/// choice is made on one look at the device's keys and taken by a txn that
/// fails if anything under the device was written since that look, so two
/// launchers never both decide on an old view, and a waiter that arrives
/// meanwhile is never passed by; a failed txn looks again.
///
/// A waiting launcher registers its own count and priority under
/// `waiting/<lease>` (removed by the txn that takes its slot, or with its
/// lease). The first in line watches the device's prefix for deletes (a
/// slot freed, a waiter gone); every other waiter watches only the waiting
/// key just ahead of its own, so a freed slot wakes the first in line and
/// a departure wakes the one behind it: no herd. The first in line, when
/// every slot is held and a holder's priority is strictly below its own,
/// asks that holder to let go (`preempt-<i>`, under its lease, with its
/// registration in the same txn) and waits for the slot's delete like any
/// other: the slot is taken only once its holder has released it, and
/// never by deleting another's key. It waits so even with `skip`, for
/// `preempt_patience` at most.
///
/// `None`: no slot may be taken (skip), or `until` passed. `events` is told
/// the holders whenever a wait starts with other holders than the last,
/// a disagreement once, and each holder asked to let go. The slot taken,
/// and how, is in `witness`: every holder a look shows, every delete the
/// wait sees and the take itself are told to it.
///
/// # Errors
/// Any [`EtcdError`] of a look, a txn, the registration or the watch.
pub fn claim_slot(
    client: &EtcdClient,
    witness: &mut Witness,
    request: &SlotRequest<'_>,
    lease: i64,
    (wait, until): (bool, Option<Instant>),
    events: &mut SlotEvents<'_>,
) -> Result<Option<u32>, EtcdError> {
    // Lease 0 is no lease (a stop request swapped it out): a slot key
    // written by hand without one would be taken for ours.
    super::etcd::ensure_lease("slot claim", lease)?;
    let mut under = request.device_prefix.to_vec();
    if !under.ends_with(b"/") {
        under.push(b'/');
    }
    let waiting_key = keyspace::waiting_under(&under, lease);
    let mut told: Option<Vec<(i64, i64)>> = None;
    let mut disagreement_told = false;
    let mut changed_under_us = 0_u32;
    // When this launcher first asked a holder to let go.
    let mut asked_at: Option<Instant> = None;
    loop {
        let view = DeviceView::look(client, &under)?;
        if let Some((slot, kv)) = view.held_by(lease) {
            // An earlier txn whose answer was lost did succeed.
            witness.took(client, kv.clone());
            return Ok(Some(slot));
        }
        for (_, holder) in &view.slots {
            witness.saw_holder(holder);
        }
        let using = view.agreed_count(request.count, lease);
        if using < request.count && !disagreement_told {
            disagreement_told = true;
            (events.disagree)(&Disagreement {
                own: request.count,
                using,
                by: view.declaring_fewer_than(request.count, lease),
            });
        }
        let ahead = view.ahead_of(lease, request.priority);
        let free = view.free_slot(using);
        let first_in_line = ahead.is_empty();
        let acted = match free {
            Some(slot) if first_in_line => {
                take_free(client, witness, &view, (slot, &under), request, lease)?
            }
            None if first_in_line && view.asking(lease).is_none() => {
                ask_to_let_go(client, &view, &under, request, lease, events)?
            }
            _ => Acted::Nothing,
        };
        match acted {
            Acted::Took(slot) => return Ok(Some(slot)),
            Acted::Asked => {
                asked_at.get_or_insert_with(Instant::now);
                continue;
            }
            Acted::LookAgain => {
                // Another launcher wrote first: look again, at once while
                // it is rare, with a short pause when a writer keeps winning.
                changed_under_us += 1;
                if changed_under_us > 3 {
                    std::thread::sleep(Duration::from_millis(
                        10 * u64::from(changed_under_us.min(20)),
                    ));
                }
                continue;
            }
            Acted::Nothing => {}
        }
        // A launcher that asked a holder to let go waits for that slot,
        // even with skip, for a bounded time.
        let asking = asked_at.is_some() && view.asking(lease).is_some();
        let until = match (wait, asked_at) {
            (false, Some(at)) if asking => Some(at + request.preempt_patience),
            _ => until,
        };
        if !(wait || asking) || passed(until) {
            return Ok(None);
        }
        let holders: Vec<KeyValue> = view.slots.iter().map(|(_, kv)| kv.clone()).collect();
        let identity: Vec<(i64, i64)> = holders
            .iter()
            .map(|h| (h.create_revision, h.lease))
            .collect();
        if told.as_ref() != Some(&identity) {
            (events.wait)(&holders);
            told = Some(identity);
        }
        if !view.is_waiting(lease) {
            client.put(&waiting_key, &(request.waiting_value)(), lease)?;
        }
        // From the look's revision: a slot freed (or a predecessor gone)
        // between the look and the watch (or the registration) still wakes
        // us. The first in line waits for any delete under the device;
        // the others only for the waiter just ahead to leave.
        let (key, prefix) = match ahead.last() {
            Some(predecessor) => (predecessor.key.as_slice(), false),
            None => (under.as_slice(), true),
        };
        if wait_for_change(client, witness, key, prefix, view.revision, until)? {
            return Ok(None);
        }
    }
}

/// What one look led a slot claim to do.
enum Acted {
    /// Took this slot.
    Took(u32),
    /// Asked a holder to let go (and registered in line).
    Asked,
    /// Another launcher wrote under the device since the look.
    LookAgain,
    /// Nothing: wait.
    Nothing,
}

/// Takes the free `slot` when nothing was written under the device since
/// the look, removing this launcher's registration and requests in the
/// same txn.
fn take_free(
    client: &EtcdClient,
    witness: &mut Witness,
    view: &DeviceView,
    (slot, under): (u32, &[u8]),
    request: &SlotRequest<'_>,
    lease: i64,
) -> Result<Acted, EtcdError> {
    let mut done = view.requests_of(lease);
    if view.is_waiting(lease) {
        done.push(keyspace::waiting_under(under, lease));
    }
    let done: Vec<&[u8]> = done.iter().map(Vec::as_slice).collect();
    let key = keyspace::slot_under(under, slot);
    let value = (request.value)();
    let Some(revision) =
        client.create_if_unchanged(under, view.revision, &key, &value, lease, &done)?
    else {
        return Ok(Acted::LookAgain);
    };
    // The witness judges the take as any other: clean only right after a
    // watched, marked release of this very slot.
    witness.took(client, KeyValue::created(key, value, revision, lease));
    Ok(Acted::Took(slot))
}

/// First in line with every slot held: asks the holder of lowest priority
/// strictly below ours to let go, registering in line in the same txn
/// (so a launcher of lower priority never takes the slot it frees), and
/// replacing any earlier request of ours that asks nobody now.
fn ask_to_let_go(
    client: &EtcdClient,
    view: &DeviceView,
    under: &[u8],
    request: &SlotRequest<'_>,
    lease: i64,
    events: &mut SlotEvents<'_>,
) -> Result<Acted, EtcdError> {
    let Some((index, victim, record)) = view.victim(lease, request.priority) else {
        return Ok(Acted::Nothing);
    };
    let key = super::precedence::request_key(under, index);
    let value = (request.preempt_value)(victim);
    let waiting_key = keyspace::waiting_under(under, lease);
    let waiting_value = (request.waiting_value)();
    let mut puts: Vec<(&[u8], &[u8])> = vec![(&key, &value)];
    if !view.is_waiting(lease) {
        puts.push((&waiting_key, &waiting_value));
    }
    let stale: Vec<Vec<u8>> = view
        .requests_of(lease)
        .into_iter()
        .filter(|other| *other != key)
        .collect();
    let stale: Vec<&[u8]> = stale.iter().map(Vec::as_slice).collect();
    if !client.put_if_unchanged(under, view.revision, &puts, lease, &stale)? {
        return Ok(Acted::LookAgain);
    }
    (events.preempt)(index, victim, &record);
    Ok(Acted::Asked)
}

/// One look at a device's keys (one range, at one revision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    /// The store's revision of the look.
    pub revision: i64,
    /// The held slots, by index, in key order.
    pub slots: Vec<(u32, KeyValue)>,
    /// The registered waiters (this launcher's included).
    pub waiters: Vec<KeyValue>,
    /// The requests that a slot's holder let go (ECP-0139), by slot index.
    pub preempts: Vec<(u32, KeyValue)>,
}

impl DeviceView {
    /// Reads every key under the device's prefix `under`. Keys that are
    /// neither slots nor waiters (a newer layout's, an operator's) are not
    /// counted.
    ///
    /// # Errors
    /// Any [`EtcdError`] of the range.
    pub fn look(client: &EtcdClient, under: &[u8]) -> Result<Self, EtcdError> {
        let (kvs, revision) = client.list_at(under)?;
        Ok(Self::from_keys(kvs, revision))
    }

    /// Sorts keys read under one device's prefix into slots, waiters and
    /// preemption requests.
    #[must_use]
    pub fn from_keys(kvs: Vec<KeyValue>, revision: i64) -> Self {
        let mut view = Self {
            revision,
            slots: Vec::new(),
            waiters: Vec::new(),
            preempts: Vec::new(),
        };
        for kv in kvs {
            match keyspace::parse(&kv.key) {
                Some(keyspace::Named::Slot { index, .. }) => view.slots.push((index, kv)),
                Some(keyspace::Named::Waiting { .. }) => view.waiters.push(kv),
                Some(keyspace::Named::Preempt { index, .. }) => view.preempts.push((index, kv)),
                _ => {}
            }
        }
        view
    }

    /// The slot held under `lease`, if any, and its key.
    #[must_use]
    pub fn held_by(&self, lease: i64) -> Option<(u32, &KeyValue)> {
        self.slots
            .iter()
            .find(|(_, kv)| kv.lease == lease)
            .map(|(index, kv)| (*index, kv))
    }

    /// True when `lease`'s waiting key is registered.
    #[must_use]
    pub fn is_waiting(&self, lease: i64) -> bool {
        self.waiters.iter().any(|kv| kv.lease == lease)
    }

    /// Every holder's and other waiter's key with the count its record
    /// declares (records that declare none, older or not ours, are left
    /// out: they cannot be agreed with).
    fn declarations(&self, lease: i64) -> impl Iterator<Item = (u32, &KeyValue)> {
        self.slots
            .iter()
            .map(|(_, kv)| kv)
            .chain(self.waiters.iter().filter(move |kv| kv.lease != lease))
            .filter_map(|kv| Some((Declarant::from_json(&kv.value)?.declared_tuners()?, kv)))
    }

    /// The count a launcher declaring `own` (under `lease`) goes by: the
    /// smallest declared by it, any holder and any other waiter.
    #[must_use]
    pub fn agreed_count(&self, own: u32, lease: i64) -> u32 {
        self.declarations(lease).map(|(n, _)| n).fold(own, u32::min)
    }

    /// The keys whose records declare fewer than `own`.
    #[must_use]
    pub fn declaring_fewer_than(&self, own: u32, lease: i64) -> Vec<KeyValue> {
        self.declarations(lease)
            .filter(|(n, _)| *n < own)
            .map(|(_, kv)| kv.clone())
            .collect()
    }

    /// The slot to take when `count` tuners are agreed on: the lowest free
    /// index below `count`, and only while fewer than `count` slots are
    /// held at all (a slot held beyond the count, by a launcher that
    /// declared more, still uses a tuner).
    #[must_use]
    pub fn free_slot(&self, count: u32) -> Option<u32> {
        if self.slots.len() >= usize::try_from(count).unwrap_or(usize::MAX) {
            return None;
        }
        (0..count).find(|index| self.slots.iter().all(|(held, _)| held != index))
    }
}

fn passed(until: Option<Instant>) -> bool {
    until.is_some_and(|until| Instant::now() >= until)
}

#[cfg(test)]
mod tests {
    //! Against real etcd (the harness in `crates/ec-test-support/src/etcd_server.rs`).

    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::cluster::etcd::EtcdConnect;
    use crate::cluster::etcd_server::EtcdServer;

    const KEY: &[u8] = b"/every-channel/ec-launch/v1/sources/s";
    const DEVICE: &[u8] = b"/every-channel/ec-launch/v1/devices/d";

    fn client(etcd: &EtcdServer) -> EtcdClient {
        EtcdClient::connect(&EtcdConnect {
            endpoints: vec![url::Url::parse(&etcd.url()).expect("url")],
            ca_file: None,
            cert_file: None,
            key_file: None,
            user_file: None,
            call_timeout: Duration::from_millis(1500),
        })
        .expect("connect")
    }

    fn lease(client: &EtcdClient, seconds: u64) -> i64 {
        client
            .grant(Duration::from_secs(seconds))
            .expect("grant")
            .id
    }

    fn claim_now(client: &EtcdClient, lease: i64, wait: bool, until: Option<Instant>) -> Claimed {
        claim(
            client,
            &mut Witness::default(),
            KEY,
            &|| b"v".to_vec(),
            lease,
            wait,
            until,
            &mut |_| {},
        )
        .expect("claim")
    }

    #[test]
    fn the_first_claimant_takes_the_key_and_a_skipping_second_is_told_the_holder() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let (first, second) = (lease(&client, 10), lease(&client, 10));
        assert_eq!(claim_now(&client, first, false, None), Claimed::Ours);
        match claim_now(&client, second, false, None) {
            Claimed::Busy {
                holder: Some(holder),
                timed_out: false,
            } => assert_eq!(holder.lease, first),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_key_already_held_by_our_own_lease_is_ours() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let ours = lease(&client, 10);
        assert_eq!(claim_now(&client, ours, false, None), Claimed::Ours);
        // As after a txn whose answer was lost.
        assert_eq!(claim_now(&client, ours, false, None), Claimed::Ours);
    }

    #[test]
    fn a_waiting_claimant_takes_the_key_when_the_holder_revokes() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let (first, second) = (lease(&client, 10), lease(&client, 10));
        assert_eq!(claim_now(&client, first, false, None), Claimed::Ours);
        let (waiting_tx, waiting) = mpsc::channel();
        let waiter = {
            let client = client.clone();
            thread::spawn(move || {
                let until = Some(Instant::now() + Duration::from_secs(20));
                let claimed = claim(
                    &client,
                    &mut Witness::default(),
                    KEY,
                    &|| b"two".to_vec(),
                    second,
                    true,
                    until,
                    &mut |holder| {
                        waiting_tx.send(holder.lease).expect("report");
                    },
                )
                .expect("claim");
                (claimed, Instant::now())
            })
        };
        assert_eq!(waiting.recv().expect("the waiter waits"), first);
        // Let the watch be made, then delete.
        thread::sleep(Duration::from_millis(300));
        let deleted = Instant::now();
        client.revoke(first).expect("revoke");
        let (claimed, woke) = waiter.join().expect("waiter");
        assert_eq!(claimed, Claimed::Ours);
        eprintln!(
            "the waiter took the key {:?} after the revoke",
            woke.saturating_duration_since(deleted)
        );
        let (kv, _) = client.get(KEY).expect("get");
        assert_eq!(kv.expect("held").lease, second);
    }

    #[test]
    fn a_waiting_claimant_takes_the_key_when_the_holders_lease_expires() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let (first, second) = (lease(&client, 1), lease(&client, 30));
        assert_eq!(claim_now(&client, first, false, None), Claimed::Ours);
        let started = Instant::now();
        let until = Some(started + Duration::from_secs(20));
        assert_eq!(claim_now(&client, second, true, until), Claimed::Ours);
        eprintln!(
            "took over {:?} after a 1 s lease was granted",
            started.elapsed()
        );
    }

    #[test]
    fn a_waiting_claimant_gives_up_busy_when_until_passes() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let (first, second) = (lease(&client, 10), lease(&client, 10));
        assert_eq!(claim_now(&client, first, false, None), Claimed::Ours);
        let started = Instant::now();
        let until = Some(started + Duration::from_millis(600));
        match claim_now(&client, second, true, until) {
            Claimed::Busy {
                holder: Some(holder),
                timed_out: true,
            } => assert_eq!(holder.lease, first),
            other => panic!("{other:?}"),
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(600), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    /// A request for `count` tuners at the default priority.
    fn slot_request<'a>(
        count: u32,
        value: &'a dyn Fn() -> Vec<u8>,
        waiting_value: &'a dyn Fn() -> Vec<u8>,
    ) -> SlotRequest<'a> {
        SlotRequest {
            device_prefix: DEVICE,
            count,
            value,
            waiting_value,
            priority: Priority::default(),
            preempt_value: &|_| Vec::new(),
            preempt_patience: Duration::ZERO,
        }
    }

    /// A slot record declaring `tuners` (as `run` writes it).
    fn declaring(tuners: u32) -> Vec<u8> {
        format!(r#"{{"node":"n","unit":null,"pid":1,"tuners":{tuners}}}"#).into_bytes()
    }

    fn slot_of(
        client: &EtcdClient,
        count: u32,
        lease: i64,
        wait: bool,
        until: Option<Instant>,
    ) -> (Option<u32>, Vec<Disagreement>) {
        let value = move || declaring(count);
        let request = slot_request(count, &value, &value);
        let mut told = Vec::new();
        let taken = claim_slot(
            client,
            &mut Witness::default(),
            &request,
            lease,
            (wait, until),
            &mut SlotEvents {
                wait: &mut |_| {},
                disagree: &mut |d| told.push(d.clone()),
                preempt: &mut |_, _, _| {},
            },
        )
        .expect("claim_slot");
        (taken, told)
    }

    fn slot(client: &EtcdClient, lease: i64, wait: bool, until: Option<Instant>) -> Option<u32> {
        slot_of(client, 2, lease, wait, until).0
    }

    #[test]
    fn two_slots_go_to_two_of_three_claimants_and_the_third_gets_the_one_freed() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let leases = [lease(&client, 10), lease(&client, 10), lease(&client, 10)];
        assert_eq!(slot(&client, leases[0], false, None), Some(0));
        assert_eq!(slot(&client, leases[1], false, None), Some(1));
        assert_eq!(slot(&client, leases[2], false, None), None, "a third slot");
        assert_eq!(
            slot(&client, leases[1], false, None),
            Some(1),
            "our own slot"
        );
        let (waiting_tx, waiting) = mpsc::channel();
        let waiter = {
            let client = client.clone();
            let lease = leases[2];
            thread::spawn(move || {
                let until = Some(Instant::now() + Duration::from_secs(20));
                let value = || declaring(2);
                let request = slot_request(2, &value, &value);
                claim_slot(
                    &client,
                    &mut Witness::default(),
                    &request,
                    lease,
                    (true, until),
                    &mut SlotEvents {
                        wait: &mut |holders| {
                            waiting_tx.send(holders.len()).expect("report");
                        },
                        disagree: &mut |_| {},
                        preempt: &mut |_, _, _| {},
                    },
                )
                .expect("claim_slot")
            })
        };
        assert_eq!(waiting.recv().expect("the third waits"), 2);
        thread::sleep(Duration::from_millis(300));
        let registered = client.list(DEVICE).expect("list");
        assert_eq!(
            registered.len(),
            3,
            "two slots and the waiter: {registered:?}"
        );
        client.revoke(leases[1]).expect("revoke");
        assert_eq!(waiter.join().expect("waiter"), Some(1));
        // The take removed the waiting key in the same txn.
        let held = client.list(DEVICE).expect("list");
        assert_eq!(held.len(), 2, "{held:?}");
        assert_eq!(held[0].lease, leases[0]);
        assert_eq!(held[1].lease, leases[2]);
    }

    /// A record of ours with `grace`, marked released or not.
    fn record(grace: u64, released: bool) -> Vec<u8> {
        let record = ClusterRecord::for_this_launch("n", None, "http://h/v1")
            .with_stop_grace(Duration::from_secs(grace));
        if released {
            ClusterRecord::mark_released(&record.to_json()).unwrap()
        } else {
            record.to_json()
        }
    }

    /// Claims KEY for `lease`, waiting (20 s at most); how it came to be ours.
    fn took_after_wait(client: &EtcdClient, lease: i64, witness: &mut Witness) -> Took {
        let until = Some(Instant::now() + Duration::from_secs(20));
        let claimed = claim(
            client,
            witness,
            KEY,
            &|| record(1, false),
            lease,
            true,
            until,
            &mut |_| {},
        )
        .expect("claim");
        assert_eq!(claimed, Claimed::Ours);
        let mut taken = witness.drain_taken();
        assert_eq!(taken.len(), 1, "{taken:?}");
        taken.remove(0)
    }

    #[test]
    fn a_key_found_free_is_not_a_clean_hand_over() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let mut witness = Witness::default();
        let took = took_after_wait(&client, lease(&client, 10), &mut witness);
        assert!(!took.clean);
        assert_eq!(took.previous_grace, None);
        assert_eq!(took.kv.key, KEY);
        assert_eq!(took.kv.create_revision, took.kv.mod_revision);
    }

    /// Which claim takes the key in a hand-over: a source's, or the
    /// agreed-N take of a one-tuner device's slot.
    #[derive(Debug, Clone, Copy)]
    enum Taker {
        Source,
        Slot,
    }

    impl Taker {
        fn key(self) -> Vec<u8> {
            match self {
                Self::Source => KEY.to_vec(),
                Self::Slot => keyspace::slot_under(&[DEVICE, b"/"].concat(), 0),
            }
        }

        /// The holder's record: grace 5 s (one tuner on a slot), marked
        /// released or not.
        fn record(self, released: bool) -> Vec<u8> {
            let mut record = ClusterRecord::for_this_launch("n", None, "http://h/v1")
                .with_stop_grace(Duration::from_secs(5));
            if matches!(self, Self::Slot) {
                record.tuners = Some(1);
            }
            let json = record.to_json();
            if released {
                ClusterRecord::mark_released(&json).unwrap()
            } else {
                json
            }
        }

        /// Waits for the key under `lease` (20 s at most): how it was taken.
        fn take(self, client: &EtcdClient, lease: i64) -> Took {
            let Self::Slot = self else {
                return took_after_wait(client, lease, &mut Witness::default());
            };
            let value = || self.record(false);
            let waiting = || declaring(1);
            let request = slot_request(1, &value, &waiting);
            let mut witness = Witness::default();
            let taken = SlotEvents::quiet(|events| {
                let until = Some(Instant::now() + Duration::from_secs(20));
                claim_slot(client, &mut witness, &request, lease, (true, until), events)
            })
            .expect("claim_slot");
            assert_eq!(taken, Some(0));
            let mut took = witness.drain_taken();
            assert_eq!(took.len(), 1, "the take was told: {took:?}");
            let took = took.remove(0);
            // The revision the guarded txn answered is the key's own.
            let (kv, _) = client.get(&self.key()).expect("get");
            assert_eq!(kv.as_ref(), Some(&took.kv));
            took
        }
    }

    /// A holder with grace 5 s; `taker` waits behind it, and the holder
    /// lets go by a revoke, marked released before or not: how the key was
    /// taken.
    fn hand_over(taker: Taker, marked: bool) -> Took {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let holder = lease(&client, 10);
        let key = taker.key();
        assert!(matches!(
            client
                .create(&key, &taker.record(false), holder)
                .expect("create"),
            Created::Ours { .. }
        ));
        let ender = client.clone();
        let end = thread::spawn(move || {
            thread::sleep(Duration::from_millis(500));
            if marked {
                let value = taker.record(true);
                assert!(
                    ender
                        .put_if_leased(&[(&key, &value)], holder)
                        .expect("mark")
                );
            }
            ender.revoke(holder).expect("revoke");
        });
        let took = taker.take(&client, lease(&client, 10));
        end.join().expect("ender");
        took
    }

    #[test]
    fn a_watched_release_marked_released_is_a_clean_hand_over_of_a_source_or_a_slot() {
        for taker in [Taker::Source, Taker::Slot] {
            let took = hand_over(taker, true);
            assert!(took.clean, "{taker:?}: {took:?}");
            assert_eq!(took.previous_grace, Some(Duration::from_secs(5)));
        }
    }

    #[test]
    fn a_revoke_without_the_mark_is_no_clean_hand_over_and_says_the_holders_grace() {
        for taker in [Taker::Source, Taker::Slot] {
            let took = hand_over(taker, false);
            assert!(!took.clean, "{taker:?}: {took:?}");
            assert_eq!(took.previous_grace, Some(Duration::from_secs(5)));
        }
    }

    #[test]
    fn a_clean_release_followed_by_another_holding_before_our_take_is_not_clean() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let first = lease(&client, 10);
        client.create(KEY, &record(1, true), first).expect("create");
        let (kv, _) = client.get(KEY).expect("get");
        let released = kv.expect("held");
        client.revoke(first).expect("revoke");
        let (_, deleted_at) = client.get(KEY).expect("get");
        // Another claimant takes it and loses it uncleanly before our take,
        // while our watch saw only the clean release.
        let second = lease(&client, 10);
        client
            .create(KEY, &record(1, false), second)
            .expect("create");
        client.revoke(second).expect("revoke");
        let mut witness = Witness::default();
        witness.saw_deleted(&[Event {
            deleted: true,
            kv: KeyValue {
                key: KEY.to_vec(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: deleted_at,
                lease: 0,
            },
            prev: Some(released),
        }]);
        let took = took_after_wait(&client, lease(&client, 10), &mut witness);
        assert!(!took.clean, "{took:?}");
    }

    #[test]
    fn a_slot_claim_without_a_lease_is_refused_and_never_takes_a_leaseless_key_for_its_own() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        // A slot key put by hand, without a lease.
        let key = keyspace::slot_under(&[DEVICE, b"/"].concat(), 0);
        let key = String::from_utf8(key).unwrap();
        assert!(etcd.etcdctl(&["put", &key, "v"]).status.success());
        let value = || declaring(2);
        let request = slot_request(2, &value, &value);
        let mut witness = Witness::default();
        let error = claim_slot(
            &client,
            &mut witness,
            &request,
            0,
            (false, None),
            &mut SlotEvents {
                wait: &mut |_| {},
                disagree: &mut |_| {},
                preempt: &mut |_, _, _| {},
            },
        )
        .expect_err("lease 0 is no lease");
        assert!(error.is_lease_lost(), "{error}");
        assert!(witness.drain_taken().is_empty());
    }

    #[test]
    fn a_take_the_witness_was_not_told_of_is_read_from_etcd_and_is_not_clean() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let ours = lease(&client, 10);
        // Taken by a path that told the witness nothing.
        client.create(KEY, b"v", ours).expect("create");
        let mut witness = Witness::default();
        witness.ensure_taken(&client, KEY, ours).expect("ours");
        witness.ensure_taken(&client, KEY, ours).expect("told once");
        let taken = witness.drain_taken();
        assert_eq!(taken.len(), 1, "{taken:?}");
        assert!(!taken[0].clean);
        assert_eq!(taken[0].kv.lease, ours);
        // A claim that calls another's key ours starts over.
        let error = witness
            .ensure_taken(&client, KEY, lease(&client, 10))
            .expect_err("not ours");
        assert!(error.is_ambiguous(), "{error}");
    }

    #[test]
    fn a_claimant_declaring_more_tuners_than_a_holder_goes_by_the_holders_count() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let leases = [lease(&client, 10), lease(&client, 10), lease(&client, 10)];
        assert_eq!(slot_of(&client, 2, leases[0], false, None).0, Some(0));
        assert_eq!(slot_of(&client, 3, leases[1], false, None).0, Some(1));
        let (taken, told) = slot_of(&client, 3, leases[2], false, None);
        assert_eq!(taken, None, "slot-2 is beyond the holder's two");
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!((told[0].own, told[0].using), (3, 2));
        assert_eq!(told[0].by.len(), 1);
        assert_eq!(told[0].by[0].lease, leases[0]);
    }

    #[test]
    fn a_waiter_declaring_fewer_tuners_counts_as_if_it_held_a_slot() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let leases: Vec<i64> = (0..4).map(|_| lease(&client, 10)).collect();
        assert_eq!(slot_of(&client, 3, leases[0], false, None).0, Some(0));
        assert_eq!(slot_of(&client, 3, leases[1], false, None).0, Some(1));
        // A waiter saying two: its wait times out, registered meanwhile.
        let waiter = {
            let client = client.clone();
            let lease = leases[2];
            thread::spawn(move || {
                let until = Some(Instant::now() + Duration::from_secs(3));
                slot_of(&client, 2, lease, true, until)
            })
        };
        let under = [DEVICE, b"/"].concat();
        assert!(
            (0..200).any(|_| {
                thread::sleep(Duration::from_millis(10));
                DeviceView::look(&client, &under).is_ok_and(|v| v.is_waiting(leases[2]))
            }),
            "the waiter never registered"
        );
        let (taken, told) = slot_of(&client, 3, leases[3], false, None);
        assert_eq!(taken, None, "slot-2 is beyond the waiter's two");
        assert_eq!(told[0].by[0].lease, leases[2]);
        let (after_timeout, told) = waiter.join().expect("waiter");
        assert_eq!(after_timeout, None);
        assert!(told.is_empty(), "it declared the fewest: {told:?}");
    }

    #[test]
    fn a_take_decided_on_an_old_look_fails_when_anything_under_the_device_was_written_since() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let ours = lease(&client, 10);
        let under = [DEVICE, b"/"].concat();
        let view = DeviceView::look(&client, &under).expect("look");
        assert_eq!(view.free_slot(2), Some(0));
        // A waiter registers after the look: the take must look again.
        let waiter = lease(&client, 10);
        client
            .put(
                &keyspace::waiting_under(&under, waiter),
                &declaring(1),
                waiter,
            )
            .expect("put");
        let key = keyspace::slot_under(&under, 0);
        assert_eq!(
            client
                .create_if_unchanged(&under, view.revision, &key, b"v", ours, &[])
                .expect("txn"),
            None,
            "a take on a stale look succeeded"
        );
        let view = DeviceView::look(&client, &under).expect("look");
        assert_eq!(view.agreed_count(2, ours), 1);
        let created = client
            .create_if_unchanged(&under, view.revision, &key, b"v", ours, &[])
            .expect("txn")
            .expect("created");
        // The revision it answers is the key's own, as the witness needs.
        let (kv, _) = client.get(&key).expect("get");
        let kv = kv.expect("held");
        assert_eq!((kv.create_revision, kv.mod_revision), (created, created));
        // A key under another device's prefix is none of this one's business.
        let other = [DEVICE, b"x/"].concat();
        let view = DeviceView::look(&client, &other).expect("look");
        client
            .put(&keyspace::slot_under(&under, 1), b"v", ours)
            .expect("put");
        assert!(
            client
                .create_if_unchanged(
                    &other,
                    view.revision,
                    &keyspace::slot_under(&other, 0),
                    b"v",
                    ours,
                    &[]
                )
                .expect("txn")
                .is_some()
        );
    }

    #[test]
    fn many_claimants_racing_for_one_key_leave_exactly_one_holder() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        for round in 0..5 {
            let leases: Vec<i64> = (0..6).map(|_| lease(&client, 10)).collect();
            let gate = std::sync::Arc::new(std::sync::Barrier::new(leases.len()));
            let racers: Vec<_> = leases
                .iter()
                .map(|&lease| {
                    let (client, gate) = (client.clone(), gate.clone());
                    thread::spawn(move || {
                        gate.wait();
                        claim_now(&client, lease, false, None) == Claimed::Ours
                    })
                })
                .collect();
            let winners = racers
                .into_iter()
                .map(|r| r.join().expect("racer"))
                .filter(|&won| won)
                .count();
            assert_eq!(winners, 1, "round {round}");
            for lease in leases {
                client.revoke(lease).expect("revoke");
            }
        }
    }
}
