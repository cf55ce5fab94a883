//! Cluster mode: the processes a supervised program leaves reading, found
//! and stopped whatever their process group or session (ECP-0135 section 3).
//!
//! Killing the program's process group is not enough: a helper that calls
//! `setsid` or `setpgid`, or double-forks, leaves the group and keeps the
//! inherited lock descriptor (and the tuner) while the program exits. So a
//! straggler is any process other than the launcher that holds one of the
//! watched locks: its fdinfo shows the lock, as `status` finds holders
//! (`holder::HolderScan`), whatever its group, session or parent. That is
//! the rule's own measure: a process that closed its lock descriptor is no
//! reader the lock answers for (nor one the next node's `status` would
//! show), and the program's group is killed as before.
//!
//! The launcher is a child subreaper (`PR_SET_CHILD_SUBREAPER`,
//! [`become_subreaper`]): an orphaned helper is re-parented to it, not to
//! init, so it is reaped here ([`reap_orphans`]) and, outside systemd,
//! stays in the launcher's tree rather than in init's.
//!
//! [`stop`] sends SIGTERM, waits up to the stop grace for them to go, then
//! sends SIGKILL and waits until none is found. Each is signalled through a
//! pidfd opened after checking its start time, so a PID reused since the
//! scan is never signalled.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use crate::error::Error;
use crate::lock::HeldLock;
use crate::lock_free::{Freedom, Watched};
use crate::process;

const PROC: &str = "/proc";

/// How often the search is made again while waiting for stragglers to go.
const RESCAN: Duration = Duration::from_millis(20);

/// Makes this process a child subreaper (prctl(2)): orphaned descendants
/// are re-parented to it, where [`stop`] finds them.
///
/// # Errors
/// [`Error::BecomeSubreaper`] when the kernel refuses.
pub fn become_subreaper() -> Result<(), Error> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|source| Error::BecomeSubreaper { source })
}

/// A process found: its PID and start time (its identity with the PID).
type Found = BTreeMap<u32, Option<u64>>;

/// Every straggler now: the processes other than this one and `main`
/// (the supervised program, which the supervisor reaps) whose descriptors
/// show one of `locks`.
#[must_use]
pub fn find(locks: &[&Watched], main: Option<Pid>) -> BTreeMap<u32, Option<u64>> {
    let mut found: Found = BTreeMap::new();
    for lock in locks {
        found.extend(lock.holders());
    }
    if let Some(main) = main.and_then(|pid| u32::try_from(pid.as_raw()).ok()) {
        found.remove(&main);
    }
    found
}

/// Stops every straggler: SIGTERM, SIGKILL to those left after `grace`,
/// and returns once none is found (orphans reaped). Returns how many were
/// found in all.
pub fn stop(locks: &[&Watched], main: Option<Pid>, grace: Duration) -> usize {
    let mut signalled: BTreeSet<u32> = BTreeSet::new();
    let until = Instant::now() + grace;
    loop {
        reap_orphans(main);
        let found = find(locks, main);
        if found.is_empty() {
            return signalled.len();
        }
        let late = Instant::now() >= until;
        for (&pid, &start) in &found {
            if late {
                if signal(pid, start, Signal::SIGKILL) {
                    tracing::warn!(
                        "pid {pid} still reads after the program's end ({} of stop grace passed); SIGKILL",
                        humantime::format_duration(grace)
                    );
                }
                signalled.insert(pid);
            } else if signalled.insert(pid) {
                tracing::info!(
                    "pid {pid} outlives the program (a helper in another process group or session, or holding its lock); SIGTERM, SIGKILL after {}",
                    humantime::format_duration(grace)
                );
                signal(pid, start, Signal::SIGTERM);
            }
        }
        std::thread::sleep(RESCAN);
    }
}

/// After the program's end: stops every straggler ([`stop`]), lets go of
/// the launcher's own copies of the locks (`held`, without unlocking them)
/// and returns once the kernel says each lock is free; until then the
/// keys stay held (and renewed), and whatever holds a lock is stopped
/// again. A lock held by a process this launcher cannot see (another PID
/// namespace, `hidepid`) keeps it waiting: two readers are worse.
pub fn until_free(watched: &[Watched], held: impl Iterator<Item = HeldLock>, grace: Duration) {
    let locks: Vec<&Watched> = watched.iter().collect();
    let stopped = stop(&locks, None, grace);
    for held in held {
        Watched::let_go(held);
    }
    let started = Instant::now();
    let mut warned = false;
    loop {
        let held: Vec<(String, String)> = watched
            .iter()
            .filter_map(|lock| match lock.is_free() {
                Freedom::Free | Freedom::TakenByAnother(_) => None,
                Freedom::Held(why) => Some((lock.path().display().to_string(), why)),
            })
            .collect();
        if held.is_empty() {
            if stopped > 0 {
                tracing::info!(
                    "{stopped} process(es) that outlived the program stopped; the locks are free after {:.2}s, releasing the cluster keys",
                    started.elapsed().as_secs_f64()
                );
            }
            return;
        }
        if !warned && started.elapsed() >= grace {
            warned = true;
            for (path, why) in &held {
                tracing::warn!(
                    lock_file = %crate::printable::printable(path),
                    "the program ended but its lock is still held ({why}); keeping the cluster keys until it is free"
                );
            }
        }
        stop(&locks, None, grace);
        std::thread::sleep(RESCAN);
    }
}

/// Sends `signal` to every straggler now; returns how many were found.
pub fn signal_all(locks: &[&Watched], main: Option<Pid>, signal_sent: Signal) -> usize {
    let found = find(locks, main);
    for (&pid, &start) in &found {
        signal(pid, start, signal_sent);
    }
    found.len()
}

/// Reaps this process's children that ended, except `main`: orphans
/// re-parented to the subreaper would otherwise stay zombies.
pub fn reap_orphans(main: Option<Pid>) {
    let me = std::process::id();
    for (pid, entry) in process_table() {
        if entry.parent != me || !entry.zombie {
            continue;
        }
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        if Some(Pid::from_raw(raw)) == main {
            continue;
        }
        let _ = waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG));
    }
}

/// Sends `signal` to `pid` if it is still the process started at `start`:
/// through a pidfd opened first, so the check and the signal concern the
/// same process. True when sent.
fn signal(pid: u32, start: Option<u64>, signal: Signal) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let Some(pidfd) = process::pidfd_open(Pid::from_raw(raw)) else {
        // No pidfd (ESRCH: gone; ENOSYS: before Linux 5.3): plain kill,
        // after the same start-time check.
        if start.is_some() && process::start_ticks_of(std::path::Path::new(PROC), pid) != start {
            return false;
        }
        return nix::sys::signal::kill(Pid::from_raw(raw), signal).is_ok();
    };
    if start.is_some() && process::start_ticks_of(std::path::Path::new(PROC), pid) != start {
        return false;
    }
    rustix::process::Signal::from_named_raw(signal as i32)
        .is_some_and(|signal| rustix::process::pidfd_send_signal(&pidfd, signal).is_ok())
}

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    parent: u32,
    zombie: bool,
}

/// Every visible process.
fn process_table() -> BTreeMap<u32, Entry> {
    let mut table = BTreeMap::new();
    let Ok(entries) = fs::read_dir(PROC) else {
        return table;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(parsed) = fs::read_to_string(entry.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            table.insert(pid, parsed);
        }
    }
    table
}

/// State (field 3) and parent (field 4) from `/proc/<pid>/stat` text,
/// after the parenthesised command name (which may hold `) `).
fn parse_stat(stat: &str) -> Option<Entry> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    let state = fields.next()?;
    let parent = fields.next()?.parse().ok()?;
    Some(Entry {
        parent,
        zombie: matches!(state, "Z" | "X" | "x"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_state_and_parent_even_with_odd_names() {
        let stat =
            "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2 3";
        let entry = parse_stat(stat).unwrap();
        assert_eq!(entry.parent, 17);
        assert!(!entry.zombie);
        let zombie = "7 (x) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0";
        assert!(parse_stat(zombie).unwrap().zombie);
    }
}
