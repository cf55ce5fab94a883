//! The order of a device's waiters (ECP-0139): a waiting room.
//!
//! Beside a device's slot files, `<stem>.waiting/` holds one file per
//! launcher waiting for a slot, named
//! `<1000 - priority, 4 digits>-<arrival, CLOCK_BOOTTIME ns, 20 digits>-<pid>.wait`,
//! so a sorted listing is the order: priority descending, then arrival.
//! A waiter holds `flock(LOCK_EX)` on its own file for as long as it waits
//! and unlinks the file before closing it; a file a fresh description can
//! lock is a dead waiter's and whoever finds it removes it. Liveness is
//! the kernel's; the record inside a file is for `status` only.
//!
//! No polling and no herd: the head (no live file before its own) watches
//! the room with inotify while it waits for the slots; every other waiter
//! blocks in `flock(LOCK_SH)` on the file of the waiter just ahead of it,
//! which returns when that one leaves, waking exactly one waiter.

use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::error::Error;
use crate::lock;
use crate::lock_record::LockRecord;
use crate::lock_waiter::LockWaiter;
use crate::path_trust::Launcher;
use crate::priority::{MAX_PRIORITY, Priority};
use crate::tuner_slot::DeviceKey;

/// How often a seat may be found removed between its creation and its
/// lock before we give up (a cleaner racing every join).
const MAX_ATTEMPTS: u32 = 64;

/// A device's waiting room, its directory open.
#[derive(Debug)]
pub struct WaitingRoom {
    pub path: PathBuf,
    dir: OwnedFd,
}

/// One live waiter, as its file's name says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Waiter {
    /// The file's name: the order.
    pub name: String,
    pub priority: Priority,
    pub pid: u32,
}

impl Waiter {
    /// Parses `0700-00000000000012345678-4242.wait`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(".wait")?;
        let mut parts = stem.split('-');
        let (inverse, arrival, pid) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || inverse.len() != 4
            || arrival.len() != 20
            || ![inverse, arrival, pid]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        let inverse: u16 = inverse.parse().ok()?;
        let priority = Priority::parse(&MAX_PRIORITY.checked_sub(inverse)?.to_string()).ok()?;
        Some(Self {
            name: name.to_owned(),
            priority,
            pid: pid.parse().ok()?,
        })
    }
}

/// The room's directory for `device` in `lock_dir`.
#[must_use]
pub fn room_path(lock_dir: &Path, device: &DeviceKey) -> PathBuf {
    lock_dir.join(format!("{}.waiting", device.file_stem()))
}

impl WaitingRoom {
    /// Opens the room, creating it (trusted like the lock directory,
    /// ECP-0129) when `create`; `None` when it does not exist and is not
    /// to be created (no one waits).
    ///
    /// # Errors
    /// Creating or trusting the directory, or opening it.
    pub fn open(
        lock_dir: &Path,
        device: &DeviceKey,
        me: &Launcher,
        create: bool,
    ) -> Result<Option<Self>, Error> {
        let path = room_path(lock_dir, device);
        if create {
            lock::ensure_lock_dir(&path, me)?;
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::open(&path, flags, Mode::empty()) {
            Ok(dir) => Ok(Some(Self { path, dir })),
            Err(rustix::io::Errno::NOENT) if !create => Ok(None),
            Err(e) => Err(Error::ReadLockDir {
                path,
                source: e.into(),
            }),
        }
    }

    /// The live waiters, in order. Files of dead waiters are removed.
    #[cfg(test)]
    #[must_use]
    pub fn waiters(&self) -> Vec<Waiter> {
        self.listed()
            .into_iter()
            .filter(|w| self.is_live(&w.name))
            .collect()
    }

    /// Every waiter file's name, in order, alive or not.
    fn listed(&self) -> Vec<Waiter> {
        let mut waiters: Vec<Waiter> = fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Waiter::from_name(e.file_name().to_str()?))
            .collect();
        waiters.sort();
        waiters
    }

    /// True when the waiter of `name` still holds its file's lock; a file
    /// a fresh description can lock is removed (its waiter is gone).
    fn is_live(&self, name: &str) -> bool {
        let Some(file) = self.open_entry(name) else {
            return false;
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(_stale) => {
                // Still locked by us, so no waiter can be using it.
                let _ = rustix::fs::unlinkat(&self.dir, name, AtFlags::empty());
                false
            }
            Err((_, Errno::EWOULDBLOCK)) => true,
            Err(_) => false,
        }
    }

    fn open_entry(&self, name: &str) -> Option<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        rustix::fs::openat(&self.dir, name, flags, Mode::empty())
            .ok()
            .map(File::from)
    }

    /// The live waiters a launcher of `priority` that is not waiting yet
    /// would queue behind: every one of its priority or above.
    #[must_use]
    pub fn ahead_of_newcomer(&self, priority: Priority) -> Vec<Waiter> {
        self.listed()
            .into_iter()
            .filter(|w| w.priority >= priority && self.is_live(&w.name))
            .collect()
    }

    /// The live waiters before `seat`, in order.
    #[must_use]
    pub fn ahead_of(&self, seat: &Seat) -> Vec<Waiter> {
        self.listed()
            .into_iter()
            .filter(|w| w.name < seat.name && self.is_live(&w.name))
            .collect()
    }

    /// Takes a seat: a file of our own, locked, its record written.
    ///
    /// # Errors
    /// Creating, locking or checking the file.
    pub fn join(&self, priority: Priority, record: &LockRecord) -> Result<Seat, Error> {
        let io_error = |e: rustix::io::Errno| Error::ReadLockDir {
            path: self.path.clone(),
            source: e.into(),
        };
        for _ in 0..MAX_ATTEMPTS {
            let arrival = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
                .map(|t| std::time::Duration::from(t).as_nanos())
                .unwrap_or_default();
            let name = format!(
                "{:04}-{arrival:020}-{}.wait",
                MAX_PRIORITY - priority.get(),
                std::process::id()
            );
            let flags =
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let file = match rustix::fs::openat(&self.dir, &name, flags, Mode::from_raw_mode(0o660))
            {
                Ok(fd) => File::from(fd),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(io_error(e)),
            };
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            // A cleaner may have taken the new file for a dead waiter's
            // between create and lock: ours only if the name still leads
            // to it.
            let ours = rustix::fs::fstat(&*lock).map_err(io_error)?;
            let named = rustix::fs::statat(&self.dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW);
            if named.is_ok_and(|n| n.st_ino == ours.st_ino && n.st_dev == ours.st_dev) {
                let _ = record.write_into(&lock);
                let dir = rustix::io::dup(&self.dir).map_err(io_error)?;
                return Ok(Seat {
                    name,
                    dir,
                    file: Some(lock),
                });
            }
        }
        Err(Error::LockFileUnstable {
            path: self.path.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Blocks until `ahead` leaves the room (its file's lock is free), or
    /// `deadline` passes (false).
    ///
    /// # Errors
    /// Starting the waiting thread.
    pub fn wait_behind(&self, ahead: &Waiter, deadline: Option<Instant>) -> Result<bool, Error> {
        let Some(file) = self.open_entry(&ahead.name) else {
            return Ok(true);
        };
        let (sender, receiver) = mpsc::channel();
        let waiter = LockWaiter::spawn("room-wait".into(), move |called_off| {
            let free = lock::block_until_free(file, called_off);
            let _ = sender.send(());
            free
        })
        .map_err(|source| Error::StartWaitThread {
            path: self.path.join(&ahead.name),
            source,
        })?;
        let ended = match deadline {
            None => receiver.recv().is_ok(),
            Some(d) => receiver
                .recv_timeout(d.saturating_duration_since(Instant::now()))
                .is_ok(),
        };
        let _ = waiter.call_off();
        Ok(ended)
    }

    /// An inotify watch on the room, made *before* the order is read so
    /// an arrival after the reading is not missed.
    ///
    /// # Errors
    /// When inotify cannot be set up.
    pub fn watch(&self) -> Result<Inotify, Error> {
        let error = |e: Errno| Error::ReadLockDir {
            path: self.path.clone(),
            source: e.into(),
        };
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(error)?;
        inotify
            .add_watch(
                &self.path,
                AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_ONLYDIR,
            )
            .map_err(error)?;
        Ok(inotify)
    }
}

/// The live waiters of the room at `path` and their records, in order,
/// for `status`: read-only (a dead waiter's file is skipped, not
/// removed). Liveness is probed with `LOCK_SH|LOCK_NB`, which a waiter's
/// `LOCK_EX` refuses.
#[must_use]
pub fn peek(path: &Path) -> Vec<(Waiter, Option<LockRecord>)> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(dir) = rustix::fs::open(path, flags, Mode::empty()) else {
        return Vec::new();
    };
    let room = WaitingRoom {
        path: path.to_owned(),
        dir,
    };
    room.listed()
        .into_iter()
        .filter_map(|waiter| {
            let file = room.open_entry(&waiter.name)?;
            let record = LockRecord::read_from(&file);
            match Flock::lock(file, FlockArg::LockSharedNonblock) {
                Err((_, Errno::EWOULDBLOCK)) => Some((waiter, record)),
                _ => None,
            }
        })
        .collect()
}

/// Our place in the room. Dropping it leaves: the file is unlinked, then
/// closed (so no one takes a finished waiter for a dead one).
#[derive(Debug)]
pub struct Seat {
    pub name: String,
    dir: OwnedFd,
    file: Option<Flock<File>>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let _ = rustix::fs::unlinkat(&self.dir, self.name.as_str(), AtFlags::empty());
        drop(self.file.take());
    }
}

/// Blocks in `read(2)` on `inotify` until the room changes or the wait is
/// called off; for a [`LockWaiter`] thread.
pub fn wait_for_change(inotify: &Inotify, called_off: &std::sync::atomic::AtomicBool) -> bool {
    loop {
        if called_off.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        match inotify.read_events() {
            Ok(events) if !events.is_empty() => return true,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiter_names_sort_by_priority_then_arrival_and_parse_back() {
        let a = Waiter::from_name("0700-00000000000000000005-9.wait").unwrap();
        assert_eq!((a.priority.get(), a.pid), (300, 9));
        let b = Waiter::from_name("0900-00000000000000000001-8.wait").unwrap();
        let c = Waiter::from_name("0700-00000000000000000009-1.wait").unwrap();
        let mut all = vec![b.clone(), c.clone(), a.clone()];
        all.sort();
        assert_eq!(all, vec![a, c, b]);
        for bad in [
            "0700-5-9.wait",
            "1001-00000000000000000005-9.wait",
            "0700-00000000000000000005-9.slot",
            "0700-00000000000000000005-.wait",
            "x700-00000000000000000005-9.wait",
        ] {
            assert_eq!(Waiter::from_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_seat_is_live_while_held_and_a_dead_waiters_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let device = DeviceKey::from_flag("den").unwrap();
        let me = Launcher::current();
        let room = WaitingRoom::open(dir.path(), &device, &me, true)
            .unwrap()
            .unwrap();
        let record = LockRecord::for_this_launch("k", "s", "p", None);
        let low = room.join(Priority::parse("10").unwrap(), &record).unwrap();
        let high = room.join(Priority::parse("300").unwrap(), &record).unwrap();
        let names: Vec<u16> = room.waiters().iter().map(|w| w.priority.get()).collect();
        assert_eq!(names, vec![300, 10]);
        assert_eq!(room.ahead_of(&low).len(), 1);
        assert!(room.ahead_of(&high).is_empty());
        assert_eq!(
            room.ahead_of_newcomer(Priority::parse("10").unwrap()).len(),
            2
        );
        assert_eq!(
            room.ahead_of_newcomer(Priority::parse("301").unwrap())
                .len(),
            0
        );
        // A file nobody holds (a waiter that died) is removed when read.
        fs::write(room.path.join("0000-00000000000000000001-1.wait"), "").unwrap();
        assert_eq!(room.waiters().len(), 2);
        assert!(!room.path.join("0000-00000000000000000001-1.wait").exists());
        drop(high);
        assert!(room.ahead_of(&low).is_empty());
        drop(low);
        assert!(room.waiters().is_empty());
        assert_eq!(fs::read_dir(&room.path).unwrap().count(), 0);
    }
}
