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

/// One of `count` slots under `device_prefix` (`slot-0`..`slot-{count-1}`),
/// lowest free first; waits on the prefix's deletes. `None`: every slot is
/// held (skip), or `until` passed. `on_wait` is told the holders whenever
/// a wait starts.
///
/// # Errors
/// Any [`EtcdError`] of a txn or the watch.
#[allow(clippy::too_many_arguments)] // the plan's signature
pub fn claim_slot(
    client: &EtcdClient,
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
            match client.create(&key, &value(), lease)? {
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
        if client.wait_for_delete(&under, true, revision, until)? == WatchOutcome::TimedOut {
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

    fn slot(client: &EtcdClient, lease: i64, wait: bool, until: Option<Instant>) -> Option<u32> {
        claim_slot(
            client,
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
