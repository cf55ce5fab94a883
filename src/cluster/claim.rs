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
/// on its delete). `on_wait` is told each new holder waited for.
/// An ambiguous txn => `Err` with [`EtcdError::is_ambiguous`]; the caller
/// revokes the lease and starts over.
///
/// # Errors
/// Any [`EtcdError`] of the txn or the watch.
pub fn claim(
    client: &EtcdClient,
    key: &[u8],
    value: &[u8],
    lease: i64,
    wait: bool,
    until: Option<Instant>,
    on_wait: &mut dyn FnMut(&KeyValue),
) -> Result<Claimed, EtcdError> {
    let mut told: Option<(i64, i64)> = None;
    loop {
        let (holder, revision) = match client.create(key, value, lease)? {
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
    value: &[u8],
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
            match client.create(&key, value, lease)? {
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
