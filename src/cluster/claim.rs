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

use std::time::Instant;

use super::etcd::{Created, EtcdClient, EtcdError, KeyValue, WatchOutcome};
use super::keyspace;
use super::record::Declarant;

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
/// revokes the lease and starts over.
///
/// # Errors
/// Any [`EtcdError`] of the txn or the watch.
pub fn claim(
    client: &EtcdClient,
    key: &[u8],
    value: &dyn Fn() -> Vec<u8>,
    lease: i64,
    wait: bool,
    until: Option<Instant>,
    on_wait: &mut dyn FnMut(&KeyValue),
) -> Result<Claimed, EtcdError> {
    let mut told: Option<(i64, i64)> = None;
    loop {
        let (holder, revision) = match client.create(key, &value(), lease)? {
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
        if client.wait_for_delete(key, false, revision, until)? == WatchOutcome::TimedOut {
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
    /// The waiting key's value (records `count`), made when registering.
    pub waiting_value: &'a dyn Fn() -> Vec<u8>,
}

impl std::fmt::Debug for SlotRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotRequest")
            .field(
                "device_prefix",
                &String::from_utf8_lossy(self.device_prefix),
            )
            .field("count", &self.count)
            .finish_non_exhaustive()
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
/// count (ECP-0135 section 5). The choice is made on one look at the
/// device's keys and taken by a txn that fails if anything under the
/// device was written since that look, so two launchers never both decide
/// on an old view; a failed txn looks again. A waiting launcher registers
/// its own count under `waiting/<lease>` (removed by the txn that takes
/// its slot, or with its lease) and watches the device's prefix for
/// deletes (a slot freed, a waiter gone; any other delete is a spurious
/// wake-up that only costs a look). `None`: no slot may be taken (skip),
/// or `until` passed. `on_wait` is told the holders whenever a wait starts
/// with other holders than the last; `on_disagree` once, when other
/// launchers' counts first make this one use fewer than it declared.
///
/// # Errors
/// Any [`EtcdError`] of a look, a txn, the registration or the watch.
#[allow(clippy::too_many_arguments)] // the plan's signature
pub fn claim_slot(
    client: &EtcdClient,
    request: &SlotRequest<'_>,
    lease: i64,
    wait: bool,
    until: Option<Instant>,
    on_wait: &mut dyn FnMut(&[KeyValue]),
    on_disagree: &mut dyn FnMut(&Disagreement),
) -> Result<Option<u32>, EtcdError> {
    let mut under = request.device_prefix.to_vec();
    if !under.ends_with(b"/") {
        under.push(b'/');
    }
    let waiting_key = keyspace::waiting_under(&under, lease);
    let mut told: Option<Vec<(i64, i64)>> = None;
    let mut disagreement_told = false;
    let mut changed_under_us = 0_u32;
    loop {
        let view = DeviceView::look(client, &under)?;
        if let Some(slot) = view.held_by(lease) {
            // An earlier txn whose answer was lost did succeed.
            return Ok(Some(slot));
        }
        let using = view.agreed_count(request.count, lease);
        if using < request.count && !disagreement_told {
            disagreement_told = true;
            on_disagree(&Disagreement {
                own: request.count,
                using,
                by: view.declaring_fewer_than(request.count, lease),
            });
        }
        if let Some(slot) = view.free_slot(using) {
            let registered = view.is_waiting(lease).then_some(waiting_key.as_slice());
            if client.create_if_unchanged(
                &under,
                view.revision,
                &keyspace::slot_under(&under, slot),
                &(request.value)(),
                lease,
                registered,
            )? {
                return Ok(Some(slot));
            }
            // Another launcher wrote first: look again, at once while it
            // is rare, with a short pause when a writer keeps winning.
            changed_under_us += 1;
            if changed_under_us > 3 {
                std::thread::sleep(std::time::Duration::from_millis(
                    10 * u64::from(changed_under_us.min(20)),
                ));
            }
            continue;
        }
        if !wait || passed(until) {
            return Ok(None);
        }
        let holders: Vec<KeyValue> = view.slots.iter().map(|(_, kv)| kv.clone()).collect();
        let identity: Vec<(i64, i64)> = holders
            .iter()
            .map(|h| (h.create_revision, h.lease))
            .collect();
        if told.as_ref() != Some(&identity) {
            on_wait(&holders);
            told = Some(identity);
        }
        if !view.is_waiting(lease) {
            client.put(&waiting_key, &(request.waiting_value)(), lease)?;
        }
        // From the look's revision: a slot freed between the look and the
        // watch (or the registration) still wakes us.
        if client.wait_for_delete(&under, true, view.revision, until)? == WatchOutcome::TimedOut {
            return Ok(None);
        }
    }
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

    /// Sorts keys read under one device's prefix into slots and waiters.
    #[must_use]
    pub fn from_keys(kvs: Vec<KeyValue>, revision: i64) -> Self {
        let mut view = Self {
            revision,
            slots: Vec::new(),
            waiters: Vec::new(),
        };
        for kv in kvs {
            match keyspace::parse(&kv.key) {
                Some(keyspace::Named::Slot { index, .. }) => view.slots.push((index, kv)),
                Some(keyspace::Named::Waiting { .. }) => view.waiters.push(kv),
                _ => {}
            }
        }
        view
    }

    /// The slot held under `lease`, if any.
    #[must_use]
    pub fn held_by(&self, lease: i64) -> Option<u32> {
        self.slots
            .iter()
            .find(|(_, kv)| kv.lease == lease)
            .map(|(index, _)| *index)
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
        let request = SlotRequest {
            device_prefix: DEVICE,
            count,
            value: &value,
            waiting_value: &value,
        };
        let mut told = Vec::new();
        let taken = claim_slot(
            client,
            &request,
            lease,
            wait,
            until,
            &mut |_| {},
            &mut |d| told.push(d.clone()),
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
                let request = SlotRequest {
                    device_prefix: DEVICE,
                    count: 2,
                    value: &value,
                    waiting_value: &value,
                };
                claim_slot(
                    &client,
                    &request,
                    lease,
                    true,
                    until,
                    &mut |holders| {
                        waiting_tx.send(holders.len()).expect("report");
                    },
                    &mut |_| {},
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
        assert!(
            !client
                .create_if_unchanged(&under, view.revision, &key, b"v", ours, None)
                .expect("txn"),
            "a take on a stale look succeeded"
        );
        let view = DeviceView::look(&client, &under).expect("look");
        assert_eq!(view.agreed_count(2, ours), 1);
        assert!(
            client
                .create_if_unchanged(&under, view.revision, &key, b"v", ours, None)
                .expect("txn")
        );
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
                    None
                )
                .expect("txn")
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
