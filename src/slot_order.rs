//! Taking a device's slot in the order of priority (ECP-0139).
//!
//! Around ECP-0132's slot primitive: a launcher that finds every slot held
//! makes a holder strictly below its priority let go (preemption), or an
//! escaped holder (with `--reclaim-escaped`), or else waits in the
//! device's waiting room ([`crate::waiting_room`]) and is served in the
//! order (priority descending, then arrival). Invariants:
//! - Only the head of the room (no live waiter before it) preempts,
//!   reclaims or blocks on the slots; the others block on the waiter just
//!   ahead of them.
//! - A slot taken while a live waiter sorts before the taker is let go at
//!   once, before anything reads: a free slot is the head's.
//! - A preemptor sits in the room while its victim lets go, so a launcher
//!   of lower priority that snatches the freed slot gives it back.
//! - Nothing is taken but by a flock the kernel grants.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::escaped::Judge;
use crate::lock;
use crate::lock_record::{LockRecord, Preempted};
use crate::lock_waiter::LockWaiter;
use crate::path_trust::Launcher;
use crate::preempt::{self, Holding};
use crate::printable::{printable, printable_path};
use crate::priority::Priority;
use crate::shown::Shown;
use crate::tuner_slot::{self, BusySlot, DeviceKey, HeldSlot, SlotOutcome};
use crate::waiting_room::{self, Seat, Waiter, WaitingRoom};

/// What a launcher asks for.
#[derive(Debug)]
pub struct Request<'a> {
    pub lock_dir: &'a Path,
    pub device: &'a DeviceKey,
    pub count: u32,
    pub wait: bool,
    pub deadline: Option<Instant>,
    pub me: &'a Launcher,
    pub priority: Priority,
    /// `--preempt-grace`: SIGTERM to SIGKILL.
    pub grace: Duration,
    pub reclaim_escaped: bool,
    /// This launch's record: written into its waiting-room file.
    pub record: &'a LockRecord,
}

/// What came of it.
#[derive(Debug)]
pub struct Outcome {
    pub slot: SlotOutcome,
    /// The holder preempted to take the slot (for the slot's record).
    pub preempted: Option<Preempted>,
    /// Busy because these live waiters come first (a free slot was theirs).
    pub behind: Vec<Waiter>,
    /// The slot was handed over (after a wait, a preemption or a
    /// reclaim): the previous reader's stream may still be closing.
    pub handed_over: bool,
}

impl Outcome {
    fn of(slot: SlotOutcome) -> Self {
        Self {
            slot,
            preempted: None,
            behind: Vec::new(),
            handed_over: false,
        }
    }
}

/// Takes one of the device's slots in the room's order, preempting or
/// reclaiming when that is allowed. `on_wait` is called once, with the
/// held slots' files, before the first wait.
///
/// # Errors
/// Opening or locking slot or room files, starting waiting threads.
pub fn acquire(
    request: &Request<'_>,
    on_wait: &mut dyn FnMut(&[BusySlot]),
) -> Result<Outcome, Error> {
    let Request {
        lock_dir,
        device,
        count,
        wait,
        deadline,
        me,
        priority,
        ..
    } = *request;
    let mut room = match WaitingRoom::open(lock_dir, device, me, false) {
        Ok(room) => room,
        Err(error) => return unordered(request, &error, on_wait),
    };
    let mut seat: Option<Seat> = None;
    let mut announced = false;
    let mut handed_over = false;
    let mut last_slots: Vec<BusySlot> = Vec::new();
    loop {
        // Watched before the order is read: an arrival after the reading
        // still wakes the head.
        let watch = match watch_while_seated(room.as_ref(), &mut seat) {
            Ok(watch) => watch,
            Err(error) => return unordered(request, &error, on_wait),
        };
        let tried = tuner_slot::acquire(lock_dir, device, count, false, None, me, &mut |_| {})?;
        let ahead = ahead(room.as_ref(), seat.as_ref(), priority);
        match tried {
            SlotOutcome::Held(held) => {
                if ahead.is_empty() {
                    let mut outcome = Outcome::of(SlotOutcome::Held(held));
                    outcome.handed_over = handed_over;
                    return Ok(outcome);
                }
                // A free slot is the head's: let it go before anything reads.
                drop(held);
                if !wait {
                    return Ok(Outcome {
                        behind: ahead,
                        ..Outcome::of(busy(Vec::new(), false))
                    });
                }
            }
            SlotOutcome::Orphaned { .. } if !wait => return Ok(Outcome::of(tried)),
            SlotOutcome::Orphaned { .. } => {
                drop(seat);
                return wait_unordered(request, on_wait);
            }
            SlotOutcome::Busy { slots, .. } => {
                if ahead.is_empty()
                    && let Some(outcome) = let_go(request, &slots, &mut room, &mut seat)?
                {
                    return Ok(outcome);
                }
                if !wait {
                    return Ok(Outcome {
                        behind: ahead,
                        ..Outcome::of(busy(slots, false))
                    });
                }
                last_slots = slots;
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Outcome::of(busy(last_slots, true)));
        }
        if !announced {
            announced = true;
            on_wait(&last_slots);
        }
        handed_over = true;
        let (Some(room_now), Some(seat_now)) = (&room, &seat) else {
            // Take a seat, then look again with the room watched.
            if let Some(outcome) = sit_down_or_wait(request, &mut room, &mut seat, on_wait)? {
                return Ok(outcome);
            }
            continue;
        };
        match (ahead.last(), watch) {
            (Some(just_ahead), _) => {
                if !room_now.wait_behind(just_ahead, deadline)? {
                    return Ok(Outcome::of(busy(last_slots, true)));
                }
            }
            (None, Some(watch)) => {
                let indices: Vec<u32> = last_slots.iter().map(|(i, _)| *i).collect();
                match head_wait(request, &indices, watch)? {
                    HeadWait::Slot(held) => {
                        if !room_now.ahead_of(seat_now).is_empty() {
                            // Someone above us came in meanwhile: theirs.
                            drop(held);
                            continue;
                        }
                        drop(seat);
                        return head_took(request, held, on_wait);
                    }
                    HeadWait::Room => {}
                    HeadWait::TimedOut => return Ok(Outcome::of(busy(last_slots, true))),
                }
            }
            // Seated but unwatched cannot happen: the watch is made
            // whenever there is a seat; look again.
            (None, None) => {}
        }
    }
}

/// The head's slot, checked as ECP-0132's `acquire` checks one: beside a
/// held slot whose file was deleted by hand it would be a reader too many.
fn head_took(
    request: &Request<'_>,
    held: HeldSlot,
    on_wait: &mut dyn FnMut(&[BusySlot]),
) -> Result<Outcome, Error> {
    let orphans = tuner_slot::orphans_over_count(request.lock_dir, request.device, request.count);
    if !orphans.is_empty() {
        drop(held);
        return wait_unordered(request, on_wait);
    }
    Ok(Outcome {
        handed_over: true,
        ..Outcome::of(SlotOutcome::Held(held))
    })
}

/// The room watched while we have a seat in it. Without a watch nothing
/// would wake us as the head, so on failure the seat is given up.
fn watch_while_seated(
    room: Option<&WaitingRoom>,
    seat: &mut Option<Seat>,
) -> Result<Option<nix::sys::inotify::Inotify>, Error> {
    match (room, &*seat) {
        (Some(room), Some(_)) => room.watch().map(Some).inspect_err(|_| *seat = None),
        _ => Ok(None),
    }
}

/// A room we cannot use (its name taken by a file, a directory this user
/// may not list, no inotify instance left to wake the head) costs the
/// order, never the launch: ECP-0132's own take of a slot, waiting when
/// the launcher waits, else one try.
fn unordered(
    request: &Request<'_>,
    error: &Error,
    on_wait: &mut dyn FnMut(&[BusySlot]),
) -> Result<Outcome, Error> {
    warn_order_lost(request.device, error);
    if request.wait {
        return wait_unordered(request, on_wait);
    }
    let Request {
        lock_dir,
        device,
        count,
        me,
        ..
    } = *request;
    let tried = tuner_slot::acquire(lock_dir, device, count, false, None, me, &mut |_| {})?;
    Ok(Outcome::of(tried))
}

/// ECP-0132's own wait, outside the room's order: for a held slot whose
/// file was deleted by hand (it waits out the orphan), and for a room this
/// user cannot join.
fn wait_unordered(
    request: &Request<'_>,
    on_wait: &mut dyn FnMut(&[BusySlot]),
) -> Result<Outcome, Error> {
    let outcome = tuner_slot::acquire(
        request.lock_dir,
        request.device,
        request.count,
        true,
        request.deadline,
        request.me,
        on_wait,
    )?;
    Ok(Outcome {
        handed_over: true,
        ..Outcome::of(outcome)
    })
}

fn busy(slots: Vec<BusySlot>, timed_out: bool) -> SlotOutcome {
    SlotOutcome::Busy { slots, timed_out }
}

/// The live waiters that come before us: before our seat, or, not yet
/// seated, every one of our priority or above.
fn ahead(room: Option<&WaitingRoom>, seat: Option<&Seat>, priority: Priority) -> Vec<Waiter> {
    match (room, seat) {
        (None, _) => Vec::new(),
        (Some(room), Some(seat)) => room.ahead_of(seat),
        (Some(room), None) => room.ahead_of_newcomer(priority),
    }
}

/// Takes a seat in the room; `None` when seated. A room this user may not
/// write (made by another user, a launcher run by hand as root) costs the
/// order, not the launch: the launcher then waits as before the room
/// existed, unordered, and its outcome is returned.
fn sit_down_or_wait(
    request: &Request<'_>,
    room: &mut Option<WaitingRoom>,
    seat: &mut Option<Seat>,
    on_wait: &mut dyn FnMut(&[BusySlot]),
) -> Result<Option<Outcome>, Error> {
    let Err(error) = sit_down(request, room, seat) else {
        return Ok(None);
    };
    warn_order_lost(request.device, &error);
    *seat = None;
    wait_unordered(request, on_wait).map(Some)
}

fn warn_order_lost(device: &DeviceKey, error: &Error) {
    let device = printable(device.as_str());
    tracing::warn!(
        device = %device,
        "cannot take a place in the waiting room of {device} ({error:#}); waiting for a tuner without an order (give the room the service's owner: see ECP-0139)",
    );
}

fn sit_down(
    request: &Request<'_>,
    room: &mut Option<WaitingRoom>,
    seat: &mut Option<Seat>,
) -> Result<(), Error> {
    if room.is_none() {
        *room = WaitingRoom::open(request.lock_dir, request.device, request.me, true)?;
    }
    if let (Some(room), None) = (room.as_ref(), seat.as_ref()) {
        let mut record = request.record.clone();
        record.priority = Some(u32::from(request.priority.get()));
        // Not a lock of the directory: `status` must not take a held
        // waiter's file for a lock file moved out of it (an orphan).
        record.lock_dir_inode = None;
        *seat = Some(room.join(request.priority, &record)?);
    }
    Ok(())
}

/// Every slot is held and we are the head: preempt the lowest priority
/// strictly below ours, or, with `--reclaim-escaped`, an escaped holder.
/// `None` when there is none, or it did not let go in time.
fn let_go(
    request: &Request<'_>,
    slots: &[BusySlot],
    room: &mut Option<WaitingRoom>,
    seat: &mut Option<Seat>,
) -> Result<Option<Outcome>, Error> {
    let files: Vec<_> = slots
        .iter()
        .map(|(i, f)| (*i, request.device.slot_path(request.lock_dir, *i), f))
        .collect();
    let holdings = preempt::survey(request.lock_dir, &files);
    let (target, preempting) = match preempt::choose_victim(&holdings, request.priority) {
        Some(victim) => (victim, true),
        None if request.reclaim_escaped => {
            let judge = Judge::for_this_process();
            let Some(escaped) = holdings.iter().find(|h| {
                judge.is_escaped(
                    h.record.as_ref(),
                    h.record_is_theirs,
                    &h.holders,
                    h.all_seen,
                )
            }) else {
                return Ok(None);
            };
            (escaped, false)
        }
        None => return Ok(None),
    };
    // In the room while the holder lets go: a lower newcomer that takes
    // the freed slot gives it back.
    if let Err(error) = sit_down(request, room, seat) {
        // Only the order during the let-go is lost: a lower newcomer might
        // take the freed slot, and is then the holder we find next time.
        tracing::warn!(device = %printable(request.device.as_str()), "cannot take a place in the waiting room ({error:#}); preempting without one");
    }
    let device = printable(request.device.as_str()).into_owned();
    let note = preempting.then(|| note_of(target));
    if let Some(note) = &note {
        log_preemption(request, target, note, &device);
    }
    let mut on_signal = |holder: &crate::process::ProcessInfo, signal: &str| {
        if preempting {
            tracing::info!(device = %device, slot = target.slot, "preemption: {signal} sent to pid {} ({})", holder.pid, printable(holder.command.as_deref().unwrap_or("?")));
        } else {
            tracing::warn!(device = %device, slot = target.slot, "reclaiming tuner slot {} of {device} from a holder that escaped {}: {signal} to pid {} ({}) in cgroup {}", target.slot, printable(target.record.as_ref().and_then(|r| r.unit.as_deref()).unwrap_or("?")), holder.pid, printable(holder.command.as_deref().unwrap_or("?")), cgroup_of(holder.pid));
        }
    };
    let Some(taken) = preempt::make_let_go(
        request.lock_dir,
        &target.path,
        target.inode,
        request.grace,
        request.me,
        &mut on_signal,
    )?
    else {
        tracing::warn!(device = %device, slot = target.slot, "tuner slot {} of {device} is still held {}s after SIGKILL (a process in uninterruptible sleep, or a holder this user cannot see); not taking it (see `ec-launch status --lock-dir {}`)", target.slot, preempt::AFTER_KILL.as_secs(), printable_path(request.lock_dir));
        return Ok(None);
    };
    tracing::info!(device = %device, slot = target.slot, after_sigterm_ms = taken.after_term.as_secs_f64() * 1000.0, "tuner slot {} of {device} taken {:.1} ms after SIGTERM{}", target.slot, taken.after_term.as_secs_f64() * 1000.0, if taken.killed { " (SIGKILL was needed)" } else { "" });
    Ok(Some(Outcome {
        slot: SlotOutcome::Held(HeldSlot {
            lock: taken.lock,
            slot: target.slot,
        }),
        preempted: note,
        behind: Vec::new(),
        handed_over: true,
    }))
}

/// The note the preemptor's slot record keeps of its victim.
fn note_of(victim: &Holding) -> Preempted {
    let record = victim.record.as_ref().map(Shown::of);
    let first = victim.holders.first();
    Preempted {
        pid: record
            .as_ref()
            .map_or_else(|| first.map_or(0, |h| h.pid), |r| r.pid),
        program: first.and_then(|h| h.command.clone()),
        unit: record.as_ref().and_then(|r| r.unit.clone()),
        node: preempt::node_name(),
        source: record
            .as_ref()
            .map(|r| r.source.clone())
            .unwrap_or_default(),
        priority: u32::from(victim.priority().unwrap_or_default().get()),
        at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    }
}

/// The one line that explains a preemption: the victim and the preemptor.
fn log_preemption(request: &Request<'_>, victim: &Holding, note: &Preempted, device: &str) {
    let pids: Vec<String> = victim.holders.iter().map(|h| h.pid.to_string()).collect();
    tracing::warn!(
        device = %device,
        slot = victim.slot,
        "preempting tuner slot {} of {device}: pid {} ({}) unit {} node {} reading {} at priority {}, for {} at priority {} (SIGTERM now, SIGKILL after {}s)",
        victim.slot,
        pids.join(", "),
        printable(note.program.as_deref().unwrap_or("?")),
        printable(note.unit.as_deref().unwrap_or("none")),
        printable(note.node.as_deref().unwrap_or("?")),
        printable(&note.source),
        note.priority,
        printable(&request.record.source),
        request.priority,
        request.grace.as_secs_f64(),
    );
}

/// `/proc/<pid>/cgroup`'s path, for the reclaim log line.
pub fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|text| {
            let lines: Vec<&str> = text.lines().collect();
            lines
                .iter()
                .find(|l| l.contains(":name=systemd:") && !l.ends_with(":/"))
                .or_else(|| lines.iter().find(|l| l.starts_with("0::")))
                .and_then(|l| l.splitn(3, ':').nth(2))
                .map(|p| printable(p).into_owned())
        })
        .unwrap_or_else(|| "?".into())
}

enum HeadWait {
    Slot(HeldSlot),
    Room,
    TimedOut,
}

enum Event {
    Slot,
    Room,
}

/// The head's wait: one thread per slot blocked in `flock(2)` (as
/// ECP-0132), one blocked reading the room's inotify watch; the first to
/// report ends the wait and the rest are called off.
fn head_wait(
    request: &Request<'_>,
    indices: &[u32],
    watch: nix::sys::inotify::Inotify,
) -> Result<HeadWait, Error> {
    let remaining = request
        .deadline
        .map(|d| d.saturating_duration_since(Instant::now()));
    if remaining.is_some_and(|r| r.is_zero()) {
        return Ok(HeadWait::TimedOut);
    }
    let (sender, receiver) = mpsc::channel();
    let mut slot_waiters = Vec::new();
    let thread_error = |path, source| Error::StartWaitThread { path, source };
    for &slot in indices {
        let path = request.device.slot_path(request.lock_dir, slot);
        let (sender, me, owned) = (sender.clone(), request.me.clone(), path.clone());
        let waiter = LockWaiter::spawn(format!("slot-wait-{slot}"), move |called_off| {
            let outcome = lock::acquire_unless_called_off(&owned, &me, called_off);
            if let Ok(Some(_)) | Err(_) = &outcome {
                let _ = sender.send(Event::Slot);
            }
            outcome
        });
        match waiter {
            Ok(waiter) => slot_waiters.push((slot, waiter)),
            Err(source) => {
                for (_, waiter) in slot_waiters {
                    let _ = waiter.call_off();
                }
                return Err(thread_error(path, source));
            }
        }
    }
    let room_sender = sender;
    let room_waiter = LockWaiter::spawn("room-watch".into(), move |called_off| {
        if waiting_room::wait_for_change(&watch, called_off) {
            let _ = room_sender.send(Event::Room);
        }
    });
    let first = match remaining {
        None => receiver.recv().ok(),
        Some(remaining) => receiver.recv_timeout(remaining).ok(),
    };
    if let Ok(waiter) = room_waiter {
        let _ = waiter.call_off();
    }
    let mut won = None;
    for (slot, waiter) in slot_waiters {
        match waiter.call_off() {
            Some(Ok(Some(lock))) if won.is_none() => won = Some(HeldSlot { lock, slot }),
            Some(Err(error)) => return Err(error),
            // A second slot locked meanwhile is let go here.
            _ => {}
        }
    }
    Ok(match (won, first) {
        (Some(held), _) => HeadWait::Slot(held),
        (None, Some(Event::Room | Event::Slot)) => HeadWait::Room,
        (None, None) => HeadWait::TimedOut,
    })
}
