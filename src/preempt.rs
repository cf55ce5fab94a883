//! Making a holder let go: preempting a slot, reclaiming an escaped holder
//! (ECP-0139).
//!
//! Local mode keeps no launcher after exec, so the launcher that wants the
//! lock does it. What is signalled is what the kernel shows holding the
//! lock (the processes whose descriptors show it, as `status` finds them);
//! a record is read only to choose (the victim's priority, its unit). The
//! lock is taken when, and only when, a fresh open file description of
//! ours is granted the flock: the kernel's word that every holder is gone.
//! A process is signalled through a pidfd opened and then checked against
//! the start time it had when found, so a PID reused meanwhile is never
//! signalled.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::error::Error;
use crate::holder::{Absence, HolderScan, LockedInode};
use crate::lock::{self, HeldLock};
use crate::lock_record::LockRecord;
use crate::lock_waiter::LockWaiter;
use crate::path_trust::Launcher;
use crate::priority::Priority;
use crate::process::{self, ProcessInfo};

/// How long after SIGKILL a lock may stay held before the launcher gives
/// up: a process in uninterruptible sleep, or a holder it cannot see.
pub const AFTER_KILL: Duration = Duration::from_secs(10);

/// A held lock or slot as the kernel shows it, with its record.
#[derive(Debug, Clone)]
pub struct Holding {
    /// The slot's index (0 for a source lock).
    pub slot: u32,
    pub path: PathBuf,
    pub inode: LockedInode,
    pub record: Option<LockRecord>,
    /// The record's PID took the lock or holds it: the record is this
    /// holder's, not an earlier one's.
    pub record_is_theirs: bool,
    pub holders: Vec<ProcessInfo>,
    /// No taker was hidden from us.
    pub all_seen: bool,
}

impl Holding {
    /// The priority its record gives (an older version's record: 100);
    /// `None` when the record is not this holder's.
    #[must_use]
    pub fn priority(&self) -> Option<Priority> {
        self.record
            .as_ref()
            .filter(|_| self.record_is_theirs)
            .map(|r| Priority::from_record(r.priority))
    }
}

/// The holders of each of `files` (`(index, path, open file)`), from one
/// scan of `/proc`.
#[must_use]
pub fn survey(lock_dir: &Path, files: &[(u32, PathBuf, &File)]) -> Vec<Holding> {
    let proc_root = Path::new("/proc");
    let inodes: Vec<Option<LockedInode>> = files
        .iter()
        .map(|(_, _, f)| LockedInode::of_file(f).ok())
        .collect();
    let listed: BTreeSet<LockedInode> = inodes.iter().flatten().copied().collect();
    let scan = HolderScan::take(proc_root, lock_dir, &listed);
    files
        .iter()
        .zip(inodes)
        .filter_map(|((slot, path, file), inode)| {
            let inode = inode?;
            let record = LockRecord::read_from(file);
            let holders = scan.holders(inode, record.as_ref());
            let absent = scan.absent_takers(inode, &holders);
            let record_is_theirs = record.as_ref().is_some_and(|r| {
                holders.iter().any(|h| h.pid == r.pid) || absent.iter().any(|(p, _)| *p == r.pid)
            });
            Some(Holding {
                slot: *slot,
                path: path.clone(),
                inode,
                record,
                record_is_theirs,
                holders,
                all_seen: !absent.iter().any(|(_, why)| *why == Absence::Unverified),
            })
        })
        .collect()
}

/// The slot to preempt for a launcher of priority `ours`: the lowest
/// priority strictly below ours; among those, the most recently started
/// (it loses the least), then the higher slot. A holding whose record is
/// not its holder's, or with no holder found, is never chosen: what cannot
/// be placed is not preempted.
#[must_use]
pub fn choose_victim(holdings: &[Holding], ours: Priority) -> Option<&Holding> {
    holdings
        .iter()
        .filter(|h| !h.holders.is_empty())
        .filter_map(|h| Some((h, h.priority()?)))
        .filter(|(_, priority)| *priority < ours)
        .min_by_key(|(h, priority)| {
            let started = h.record.as_ref().map_or(0, |r| r.started_unix);
            (
                *priority,
                std::cmp::Reverse(started),
                std::cmp::Reverse(h.slot),
            )
        })
        .map(|(h, _)| h)
}

/// The lock taken from its holders, and how long after SIGTERM.
#[derive(Debug)]
pub struct LetGo {
    pub lock: HeldLock,
    pub after_term: Duration,
    /// Someone still held it at the grace and was sent SIGKILL.
    pub killed: bool,
}

/// Makes every holder of the lock at `path` (inode `inode`) let go and
/// takes it: a wait for it through a fresh description starts first, then
/// SIGTERM to every holder, SIGKILL to whoever still holds it after
/// `grace`, and the lock is ours when the kernel grants that wait.
/// `on_signal` is told of each signal sent (to log it). `None`: still held
/// [`AFTER_KILL`] after SIGKILL (reported by the caller).
///
/// # Errors
/// Opening or locking the file, or starting the waiting thread.
pub fn make_let_go(
    lock_dir: &Path,
    path: &Path,
    inode: LockedInode,
    grace: Duration,
    me: &Launcher,
    on_signal: &mut dyn FnMut(&ProcessInfo, &str),
) -> Result<Option<LetGo>, Error> {
    let (sender, receiver) = mpsc::channel();
    let waiter = {
        let (owned, me) = (path.to_owned(), me.clone());
        LockWaiter::spawn("take-over".into(), move |called_off| {
            let outcome = lock::acquire_unless_called_off(&owned, &me, called_off);
            let _ = sender.send(());
            outcome
        })
        .map_err(|source| Error::StartWaitThread {
            path: path.to_owned(),
            source,
        })?
    };
    signal_holders(lock_dir, inode, Signal::TERM, "SIGTERM", on_signal);
    // From the signal (the scan before it is not the victim's time).
    let signalled = Instant::now();
    let mut killed = false;
    if receiver.recv_timeout(grace).is_err() {
        killed = signal_holders(lock_dir, inode, Signal::KILL, "SIGKILL", on_signal) > 0;
        let _ = receiver.recv_timeout(AFTER_KILL);
    }
    let after_term = signalled.elapsed();
    let outcome = waiter.call_off();
    match outcome {
        Some(Ok(Some(lock))) => Ok(Some(LetGo {
            lock,
            after_term,
            killed,
        })),
        Some(Err(error)) => Err(error),
        _ => Ok(None),
    }
}

/// Sends `signal` to every process whose descriptors show the lock on
/// `inode` now; returns how many were signalled.
fn signal_holders(
    lock_dir: &Path,
    inode: LockedInode,
    signal: Signal,
    name: &str,
    on_signal: &mut dyn FnMut(&ProcessInfo, &str),
) -> usize {
    let scan = HolderScan::take(Path::new("/proc"), lock_dir, &BTreeSet::from([inode]));
    let mut sent = 0;
    for holder in scan.holders(inode, None) {
        if holder.pid == std::process::id() {
            continue;
        }
        // Told before the signal: what is logged of it (its cgroup) is
        // gone once a SIGTERM kills it.
        if let Some(pidfd) = pidfd_of(&holder) {
            on_signal(&holder, name);
            sent += usize::from(send_signal(&pidfd, signal));
        }
    }
    sent
}

/// A pidfd of `holder`, only when the process it refers to has the start
/// time `holder` was found with.
fn pidfd_of(holder: &ProcessInfo) -> Option<OwnedFd> {
    let pid = i32::try_from(holder.pid).ok()?;
    let pidfd = process::pidfd_open(nix::unistd::Pid::from_raw(pid))?;
    // The pidfd pins the process: checked after opening it, the start time
    // proves it is the process found holding, not a reuse of its PID.
    if holder.start_ticks.is_none()
        || process::start_ticks_of(Path::new("/proc"), holder.pid) != holder.start_ticks
    {
        return None;
    }
    Some(pidfd)
}

/// Sends `signal` through `pidfd`: to that process and no other.
fn send_signal(pidfd: &OwnedFd, signal: Signal) -> bool {
    rustix::process::pidfd_send_signal(pidfd, signal).is_ok()
}

/// This node's name, for the log line and the note (the kernel's hostname).
#[must_use]
pub fn node_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(slot: u32, priority: Option<u32>, started: u64, theirs: bool) -> Holding {
        let mut record = LockRecord::for_this_launch("k", "s", "p", None);
        record.priority = priority;
        record.started_unix = started;
        Holding {
            slot,
            path: PathBuf::from(format!("/x/{slot}")),
            inode: LockedInode {
                dev_major: 0,
                dev_minor: 0,
                inode: u64::from(slot),
            },
            record: Some(record),
            record_is_theirs: theirs,
            holders: vec![ProcessInfo {
                pid: 1000 + slot,
                command: None,
                unit: None,
                since: None,
                start_ticks: Some(1),
            }],
            all_seen: true,
        }
    }

    #[test]
    fn the_victim_is_the_lowest_priority_strictly_below_and_the_newest_among_equals() {
        let ours = Priority::parse("300").unwrap();
        let slots = [
            holding(0, Some(100), 10, true),
            holding(1, Some(100), 20, true),
            holding(2, Some(500), 5, true),
        ];
        assert_eq!(choose_victim(&slots, ours).map(|h| h.slot), Some(1));
        // Equal priority is never preempted.
        let equal = [
            holding(0, Some(300), 1, true),
            holding(1, Some(400), 1, true),
        ];
        assert!(choose_victim(&equal, ours).is_none());
        // A record without a priority (an older version) counts as 100.
        let old = [holding(0, None, 1, true), holding(1, Some(300), 1, true)];
        assert_eq!(choose_victim(&old, ours).map(|h| h.slot), Some(0));
        // A record that is not its holder's places nothing.
        let stale = [
            holding(0, Some(1), 1, false),
            holding(1, Some(300), 1, true),
        ];
        assert!(choose_victim(&stale, ours).is_none());
        // Lowest first, whatever the start.
        let mixed = [
            holding(0, Some(10), 1, true),
            holding(1, Some(100), 99, true),
        ];
        assert_eq!(choose_victim(&mixed, ours).map(|h| h.slot), Some(0));
        // Among equals started in the same second, the higher slot.
        let same = [holding(0, Some(10), 5, true), holding(1, Some(10), 5, true)];
        assert_eq!(choose_victim(&same, ours).map(|h| h.slot), Some(1));
    }
}
