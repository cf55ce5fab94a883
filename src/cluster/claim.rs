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
use super::record::ClusterRecord;

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

/// One of `count` slots under `device_prefix` (`slot-0`..`slot-{count-1}`),
/// lowest free first; waits on the prefix's deletes. The slot taken, and
/// how, is in `witness`. `None`: every slot is
/// held (skip), or `until` passed. `on_wait` is told the holders whenever
/// a wait starts.
///
/// # Errors
/// Any [`EtcdError`] of a txn or the watch.
#[allow(clippy::too_many_arguments)] // the plan's signature
pub fn claim_slot(
    client: &EtcdClient,
    witness: &mut Witness,
    device_prefix: &[u8],
    count: u32,
    value: &dyn Fn() -> Vec<u8>,
    lease: i64,
    wait: bool,
    until: Option<Instant>,
    on_wait: &mut dyn FnMut(&[KeyValue]),
) -> Result<Option<u32>, EtcdError> {
    let mut under = device_prefix.to_vec();
    if !under.ends_with(b"/") {
        under.push(b'/');
    }
    loop {
        let mut holders = Vec::new();
        // The first look's revision: a delete of any slot after it wakes us,
        // also one of a slot looked at before the others.
        let mut first_revision = None;
        for slot in 0..count {
            let mut key = under.clone();
            key.extend_from_slice(format!("slot-{slot}").as_bytes());
            match create(client, witness, &key, &value(), lease)? {
                Created::Ours { .. } => return Ok(Some(slot)),
                Created::Held { holder, .. } if holder.lease == lease => return Ok(Some(slot)),
                Created::Held { holder, revision } => {
                    first_revision.get_or_insert(revision);
                    holders.push(holder);
                }
            }
        }
        let Some(revision) = first_revision else {
            // No slots at all (count 0): nothing can ever be taken.
            return Ok(None);
        };
        if !wait || passed(until) {
            return Ok(None);
        }
        on_wait(&holders);
        if wait_for_change(client, witness, &under, true, revision, until)? {
            return Ok(None);
        }
    }
}

fn passed(until: Option<Instant>) -> bool {
    until.is_some_and(|until| Instant::now() >= until)
}

#[cfg(test)]
mod tests {
    //! Against real etcd (the harness in `tests/support/etcd_server.rs`).

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

    fn slot(client: &EtcdClient, lease: i64, wait: bool, until: Option<Instant>) -> Option<u32> {
        claim_slot(
            client,
            &mut Witness::default(),
            DEVICE,
            2,
            &|| b"v".to_vec(),
            lease,
            wait,
            until,
            &mut |_| {},
        )
        .expect("claim_slot")
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
                claim_slot(
                    &client,
                    &mut Witness::default(),
                    DEVICE,
                    2,
                    &|| b"v".to_vec(),
                    lease,
                    true,
                    until,
                    &mut |holders| {
                        waiting_tx.send(holders.len()).expect("report");
                    },
                )
                .expect("claim_slot")
            })
        };
        assert_eq!(waiting.recv().expect("the third waits"), 2);
        thread::sleep(Duration::from_millis(300));
        client.revoke(leases[1]).expect("revoke");
        assert_eq!(waiter.join().expect("waiter"), Some(1));
        let held = client.list(DEVICE).expect("list");
        assert_eq!(held.len(), 2);
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

    /// A holder with grace 5 s; the claimant waits behind it, and `let_go`
    /// ends the holding: how the claimant took the key.
    fn hand_over(let_go: impl FnOnce(&EtcdClient, i64) + Send + 'static) -> Took {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let holder = lease(&client, 10);
        assert!(matches!(
            client
                .create(KEY, &record(5, false), holder)
                .expect("create"),
            Created::Ours { .. }
        ));
        let ender = client.clone();
        let end = thread::spawn(move || {
            thread::sleep(Duration::from_millis(500));
            let_go(&ender, holder);
        });
        let took = took_after_wait(&client, lease(&client, 10), &mut Witness::default());
        end.join().expect("ender");
        took
    }

    #[test]
    fn a_watched_release_marked_released_is_a_clean_hand_over() {
        let took = hand_over(|client, holder| {
            let marked = record(5, true);
            assert!(
                client
                    .put_if_leased(&[(KEY, &marked)], holder)
                    .expect("mark")
            );
            client.revoke(holder).expect("revoke");
        });
        assert!(took.clean, "{took:?}");
        assert_eq!(took.previous_grace, Some(Duration::from_secs(5)));
    }

    #[test]
    fn a_revoke_without_the_mark_is_not_a_clean_hand_over_and_says_the_holders_grace() {
        let took = hand_over(|client, holder| client.revoke(holder).expect("revoke"));
        assert!(!took.clean, "{took:?}");
        assert_eq!(took.previous_grace, Some(Duration::from_secs(5)));
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
