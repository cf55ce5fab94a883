//! Tuner slots: at most N readers per device on a node (ECP-0132).
//!
//! A device (named by a [`DeviceKey`]: `--device KEY`, else the source's
//! canonical host) has N slot files in the lock directory,
//! `<label>-<16 hex digits of SHA-256("device\0" + key)>.tuner<i>.slot`;
//! a launcher that holds its source lock takes one of them with the same
//! primitive and the same code as the source lock ([`crate::lock::acquire`]:
//! `O_NOFOLLOW`, trust rule, inode re-check, never deleted). Invariants:
//! - The source lock is always taken first, so a duplicate of a held source
//!   never touches a slot and no lock-order cycle can form.
//! - A launcher holds at most one slot. Waiting blocks one thread per slot
//!   in `flock(LOCK_EX)`, each on its own open file description (no
//!   polling); the first thread to lock wins, and every other wait is
//!   called off and ended before the winner is used
//!   ([`crate::lock_waiter`]): none waits on, and one that locked in the
//!   meantime unlocks. The losers' descriptors are close-on-exec, so the
//!   program inherits exactly one slot.
//! - A held slot is never taken from its holder: only the kernel frees it,
//!   when the last descriptor of the holder's open file description closes.
//! - The count N is what the launchers of a device agree on: records of
//!   slots the kernel shows held (found busy while trying them in order)
//!   carry their launcher's N, and a launcher that sees a smaller one uses
//!   it (records of free slots are stale and not read).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirEntryExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use crate::error::Error;
use crate::holder::LockedInode;
use crate::lock::{self, Acquired, BusyPolicy, HeldLock};
use crate::lock_record::LockRecord;
use crate::lock_waiter::LockWaiter;
use crate::path_trust::{self, Launcher};
use crate::printable::printable;
use crate::proc_locks::LockTable;
use crate::source_key::{self, SourceKey};

/// The most tuners a device may be declared with (HDHomeRun boxes have 2-6;
/// one waiting thread per slot must stay cheap).
pub const MAX_TUNERS: u32 = 64;

/// What `--tuners` says: a number, or ask the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuners {
    Count(u32),
    /// Ask the device's `discover.json` for `TunerCount` (see [`tuner_count`]).
    Auto,
}

impl Tuners {
    /// Parses `--tuners`: `auto`, or an integer from 1 to [`MAX_TUNERS`].
    ///
    /// # Errors
    /// A message for clap when the text is neither.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "auto" {
            return Ok(Self::Auto);
        }
        match text.parse::<u32>() {
            Ok(n @ 1..=MAX_TUNERS) => Ok(Self::Count(n)),
            _ => Err(format!(
                "{text:?} is not a tuner count; pass the device's number of tuners (1 to {MAX_TUNERS}) or auto"
            )),
        }
    }
}

/// How many tuners to share, and the device's own `DeviceID` when the
/// device was asked (recorded in slot records, shown by `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunerCount {
    pub count: u32,
    pub device_id: Option<String>,
}

/// The number of tuners to share: `--tuners N` as given; for `auto` the
/// device is asked (`GET http://<host>/discover.json`, ECP-0132) for its
/// `TunerCount`, and its `DeviceID` is kept for the slot record. `host` is
/// the source's host (the device key may be a `--device` name); nothing of
/// the network runs for a number.
///
/// # Errors
/// [`Error::AskDevice`] when the device cannot be asked (69) or cannot tell
/// (78); [`Error::TunersAutoWithoutHost`] for a source without a host.
pub fn tuner_count(
    tuners: Tuners,
    device: &DeviceKey,
    host: Option<&str>,
) -> Result<TunerCount, Error> {
    match tuners {
        Tuners::Count(count) => Ok(TunerCount {
            count,
            device_id: None,
        }),
        Tuners::Auto => {
            let host = host.ok_or(Error::TunersAutoWithoutHost)?;
            let asked = crate::device_http::Device::from_host(host);
            let discovery = asked.discover().map_err(|source| Error::AskDevice {
                device: asked.to_string(),
                url: asked.url("discover.json"),
                source,
            })?;
            tracing::debug!(device = %device, host = %asked, device_id = ?discovery.device_id, "the device reports {} tuners", discovery.tuner_count);
            Ok(TunerCount {
                count: discovery.tuner_count,
                device_id: discovery.device_id,
            })
        }
    }
}

/// The source's host as canonicalised for the key. `key` is the source's
/// own key when it has one; with `--key` the source is keyed again for its
/// host. `None` for a source without a host (a device path).
#[must_use]
pub fn source_host(key: &SourceKey, source: &str) -> Option<String> {
    match key.host() {
        Some(host) => Some(host.to_owned()),
        None => SourceKey::from_source(source)
            .ok()?
            .host()
            .map(str::to_owned),
    }
}

/// The name of one tuner device on this node. Every launcher of a device
/// must derive the same key without the network (ECP-0132).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKey {
    canonical: String,
}

impl DeviceKey {
    /// `--device KEY`, trimmed, and a host canonicalised as a source's host
    /// is ([`source_key::canonical_device_name`]: `TUNER.lan.` is
    /// `tuner.lan`, `0x0a000005` is `10.0.0.5`, `FD00::5` is `[fd00::5]`), so
    /// a launcher naming the device and one deriving it from its source
    /// take the same slots. The key is printed in logs, `status` and the
    /// program's environment, so what could carry a credential (userinfo's
    /// `@`, a query or fragment) is refused: a device key is a name, not a
    /// URL.
    ///
    /// # Errors
    /// A message for clap when the key is empty, has whitespace or control
    /// characters, or `@`, `?` or `#`.
    pub fn from_flag(text: &str) -> Result<Self, String> {
        let key = text.trim();
        if key.is_empty() || key.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("the device key is empty or has whitespace or control characters; pass a printable name such as 10.0.0.5".into());
        }
        if key.contains(['@', '?', '#']) {
            return Err("a device key is a name, not a URL: it may not contain @, ? or # (it is printed, and a credential must not be); pass e.g. 10.0.0.5 or den-hdhomerun".into());
        }
        Ok(Self {
            canonical: source_key::canonical_device_name(key),
        })
    }

    /// The device of a source: its host as canonicalised for the key
    /// (`http://0x0a000005:5004/auto/v5.1` → `10.0.0.5`), see [`source_host`].
    #[must_use]
    pub fn of_source(key: &SourceKey, source: &str) -> Option<Self> {
        source_host(key, source).map(|canonical| Self { canonical })
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// `<label>-<hash>`: the part of the slot file names that names the device.
    #[must_use]
    pub fn file_stem(&self) -> String {
        let mut identity = b"device\0".to_vec();
        identity.extend_from_slice(self.canonical.as_bytes());
        source_key::hashed_name(&source_key::sanitize_label(&self.canonical), &identity)
    }

    /// The file of slot `slot` in `lock_dir`.
    #[must_use]
    pub fn slot_path(&self, lock_dir: &Path, slot: u32) -> PathBuf {
        lock_dir.join(format!("{}.tuner{slot}.slot", self.file_stem()))
    }
}

impl std::fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.canonical)
    }
}

/// Splits a slot file name into the device's stem and the slot index.
#[must_use]
pub fn parse_slot_file_name(name: &str) -> Option<(&str, u32)> {
    let (stem, index) = name.strip_suffix(".slot")?.rsplit_once(".tuner")?;
    if stem.is_empty() || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem, index.parse().ok()?))
}

/// One slot file found in the lock directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotFile {
    pub path: PathBuf,
    /// The device's stem: files with one stem are one device's slots.
    pub stem: String,
    pub slot: u32,
    /// From the directory entry (no `stat`).
    pub inode: LockedInode,
}

impl SlotFile {
    /// The slot file at `path` (an entry of the lock directory, whose
    /// device is `device`'s, with inode `inode`), when its name is a slot
    /// file's (`<stem>.tuner<i>.slot`).
    #[must_use]
    pub fn from_entry(path: PathBuf, device: LockedInode, inode: u64) -> Option<Self> {
        let (stem, slot) = parse_slot_file_name(path.file_name()?.to_str()?)?;
        Some(Self {
            stem: stem.to_owned(),
            slot,
            inode: LockedInode { inode, ..device },
            path,
        })
    }
}

/// Opens a slot or lock file to read its record (`status` uses it for both):
/// read-only, without following links, without blocking on a planted FIFO,
/// regular files only, checked before and after the open.
///
/// # Errors
/// Whatever `open` or `fstat` says; a file that is not regular is `Other`.
pub fn open_record(path: &Path) -> io::Result<File> {
    open_record_with_inode(path).map(|(file, _)| file)
}

/// [`open_record`], with the inode the kernel lists the file's locks under
/// ([`LockedInode::of_file`]), from the one `statx` that checks the opened
/// file: `status` opens thousands.
///
/// # Errors
/// As [`open_record`].
pub fn open_record_with_inode(path: &Path) -> io::Result<(File, LockedInode)> {
    let flags = (nix::fcntl::OFlag::O_NOFOLLOW
        | nix::fcntl::OFlag::O_NONBLOCK
        | nix::fcntl::OFlag::O_NOCTTY)
        .bits();
    let regular = |m: &fs::Metadata| path_trust::ensure_regular(path, m).map_err(io::Error::other);
    // Before the open: opening a device can act on it.
    regular(&fs::symlink_metadata(path)?)?;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    if let Some(inode) = LockedInode::of_regular_file(&file)? {
        return Ok((file, inode));
    }
    // Replaced since: the error says by what.
    regular(&file.metadata()?)?;
    Err(io::Error::other("not a regular file"))
}

/// [`open_record_with_inode`] for an entry its directory's listing showed
/// as a regular file (`d_type`): that listing is the look before the open,
/// so the open is the only path lookup, one component relative to `dir`
/// (the directory, open), instead of a `stat` and an open that each walk
/// the whole path (`status` opens thousands). Anything else, or a file
/// that is no longer regular once open, takes [`open_record_with_inode`]'s
/// way, which says why.
///
/// # Errors
/// As [`open_record`].
pub fn open_listed_record(
    dir: std::os::fd::BorrowedFd<'_>,
    path: &Path,
    listed_regular: bool,
) -> io::Result<(File, LockedInode)> {
    if let (true, Some(name)) = (listed_regular, path.file_name()) {
        let flags = rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::NONBLOCK
            | rustix::fs::OFlags::NOCTTY
            | rustix::fs::OFlags::CLOEXEC;
        let file = File::from(rustix::fs::openat(
            dir,
            name,
            flags,
            rustix::fs::Mode::empty(),
        )?);
        if let Some(inode) = LockedInode::of_regular_file(&file)? {
            return Ok((file, inode));
        }
    }
    open_record_with_inode(path)
}

/// A slot we hold. Dropping it unlocks; exec keeps it.
#[derive(Debug)]
pub struct HeldSlot {
    pub lock: HeldLock,
    pub slot: u32,
}

/// A slot found held: its index and its file, open (unlocked) so the
/// caller can name its holders.
pub type BusySlot = (u32, File);

/// The outcome of trying to take a slot.
#[derive(Debug)]
pub enum SlotOutcome {
    Held(HeldSlot),
    /// Every slot is held; each file is open (unlocked) so the caller can
    /// name its holders.
    Busy {
        slots: Vec<BusySlot>,
        timed_out: bool,
    },
    /// A slot was free, but the kernel shows held slots whose files were
    /// deleted or moved by hand (orphans): with them, taking it would make
    /// more readers than the device has tuners.
    Orphaned {
        orphans: Vec<OrphanedSlot>,
        timed_out: bool,
    },
}

/// A held slot of a device whose file is no longer at its path (deleted,
/// moved or renamed while held): a tuner in use that no slot file shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanedSlot {
    pub slot: u32,
    /// The process that took it (the kernel's lock table names it).
    pub pid: u32,
    /// Its descriptor of the orphan: `/proc/<pid>/fd/<n>`.
    pub via: PathBuf,
    /// Deleted (else moved or renamed).
    pub deleted: bool,
}

/// `slot 1's file was deleted while held by pid 4242`, for each orphan.
#[must_use]
pub fn describe_orphans(orphans: &[OrphanedSlot]) -> String {
    orphans
        .iter()
        .map(|o| {
            format!(
                "slot {}'s file was {} while held by pid {} (a tuner still in use that no slot file shows)",
                o.slot,
                if o.deleted { "deleted" } else { "moved or renamed" },
                o.pid
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the kernel's lock table (`<proc_root>/locks`) shows of `device`'s
/// slots: how many of its slot files at their paths are held, and the held
/// slots whose files left their paths. An orphan is found by its inode: a
/// flock on the lock directory's filesystem that no lock or slot file in
/// the directory names, whose taker still has a descriptor of it with a
/// slot record of this device. Best effort, and never wrong in the unsafe
/// direction: a row the table skips (ECP-0132) or a taker that exited
/// (the descriptor inherited) hides an orphan, as before this check; what
/// is found is there.
fn census(
    proc_root: &Path,
    lock_dir: &Path,
    device: &DeviceKey,
    count: u32,
) -> (usize, Vec<OrphanedSlot>) {
    let Ok(dir_inode) = LockedInode::of_path(lock_dir) else {
        return (0, Vec::new());
    };
    let stem = device.file_stem();
    let mut ours = BTreeSet::new();
    let mut named = BTreeSet::new();
    for entry in fs::read_dir(lock_dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if parse_slot_file_name(name).is_some_and(|(s, _)| s == stem) {
            ours.insert(entry.ino());
        }
        if Path::new(name).extension().is_some_and(|x| x == "lock")
            || parse_slot_file_name(name).is_some()
        {
            named.insert(entry.ino());
        }
    }
    // One read, as a launcher choosing a slot can afford (a row the table
    // skips hides an orphan, the direction this check tolerates).
    let mut table = LockTable::default();
    let _unreadable_is_empty = table.read_into(proc_root);
    let held: BTreeSet<(u64, Option<u32>)> = table
        .held_flocks()
        .filter(|row| row.dev_major == dir_inode.dev_major && row.dev_minor == dir_inode.dev_minor)
        .map(|row| (row.inode, row.pid))
        .collect();
    let in_place = held
        .iter()
        .map(|(inode, _)| *inode)
        .filter(|inode| ours.contains(inode))
        .collect::<BTreeSet<_>>()
        .len();
    // Held inodes no file of the directory names: at most this many
    // orphans. Only when they could tip the device over its count are
    // their takers' descriptors looked at (usually none: a device with a
    // free tuner, or a filesystem where only our files are locked).
    let mut unnamed: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for (inode, pid) in &held {
        if let (false, Some(pid)) = (named.contains(inode), pid) {
            unnamed.entry(*pid).or_default().insert(*inode);
        }
    }
    let candidates: usize = unnamed.values().map(BTreeSet::len).sum();
    if in_place + candidates <= usize::try_from(count).unwrap_or(usize::MAX) {
        return (in_place, Vec::new());
    }
    let orphans = unnamed
        .iter()
        .flat_map(|(pid, inodes)| orphans_of(proc_root, *pid, inodes, dir_inode, device))
        .collect();
    (in_place, orphans)
}

/// The slots of `device` that `pid`'s descriptors of `inodes` hold, when
/// their records say they are slots of it taken in this lock directory
/// (`lock_dir_inode`; one pass over its descriptors).
fn orphans_of(
    proc_root: &Path,
    pid: u32,
    inodes: &BTreeSet<u64>,
    dir_inode: LockedInode,
    device: &DeviceKey,
) -> Vec<OrphanedSlot> {
    let mut found: BTreeMap<u64, OrphanedSlot> = BTreeMap::new();
    let fd_dir = proc_root.join(pid.to_string()).join("fd");
    let fdinfo_dir = proc_root.join(pid.to_string()).join("fdinfo");
    for entry in fs::read_dir(&fd_dir).into_iter().flatten().flatten() {
        let via = entry.path();
        // The descriptor's `lock:` rows, not a stat through the link,
        // which would ask the file's filesystem and hang on a dead
        // server (ECP-0136).
        let Some(inode) = crate::holder::flocks_held_by(&fdinfo_dir.join(entry.file_name()))
            .into_iter()
            .filter(|i| i.dev_major == dir_inode.dev_major && i.dev_minor == dir_inode.dev_minor)
            .map(|i| i.inode)
            .find(|i| inodes.contains(i) && !found.contains_key(i))
        else {
            continue;
        };
        let record = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&via)
            .ok()
            .and_then(|f| LockRecord::read_from(&f));
        let Some((slot, record)) = record.and_then(|r| Some((r.slot?, r))) else {
            continue;
        };
        // A slot of this device in this directory: another lock directory
        // on the filesystem may name a device alike.
        if record.device.as_deref() != Some(device.as_str())
            || record.lock_dir_inode != Some(dir_inode.inode)
        {
            continue;
        }
        let deleted = fs::read_link(&via)
            .is_ok_and(|target| target.to_string_lossy().ends_with(" (deleted)"));
        found.insert(
            inode,
            OrphanedSlot {
                slot,
                pid,
                via,
                deleted,
            },
        );
    }
    found.into_values().collect()
}

/// Blocks until no process holds any of `orphans` (a flock(2) on each
/// orphan's own inode, opened through its holder's descriptor, is granted
/// when they are gone), or `deadline` passes: `false`.
fn wait_for_orphans(orphans: &[OrphanedSlot], deadline: Option<Instant>) -> bool {
    for orphan in orphans {
        let Ok(file) = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&orphan.via)
        else {
            // Its holder is gone already.
            continue;
        };
        let (sender, receiver) = mpsc::channel();
        let Ok(waiter) = LockWaiter::spawn("orphan-wait".into(), move |called_off| {
            let free = lock::block_until_free(file, called_off);
            let _ = sender.send(());
            free
        }) else {
            return false;
        };
        let ended = match deadline {
            None => receiver.recv().is_ok(),
            Some(d) => receiver
                .recv_timeout(d.saturating_duration_since(Instant::now()))
                .is_ok(),
        };
        let free = waiter.call_off().unwrap_or(false);
        if !(ended && free) {
            return false;
        }
    }
    true
}

/// Takes one of `wanted` slots of `device`: the first free one in slot
/// order; with `wait`, whichever frees first, until `deadline`.
///
/// Agreement on the count comes with the attempt: a slot that is busy is
/// one the kernel shows held, and its record carries its launcher's count.
/// Slots are tried in order, so the counts of every held slot below a free
/// one are known before it is taken, and a held slot above it cannot
/// forbid it (its launcher's count is larger than its index). A smaller
/// count than ours is warned about and used.
///
/// `on_wait` is called once, with every slot's file, before blocking.
///
/// A slot taken is checked against the kernel's lock table (issue #16
/// item 8): a held slot whose file was deleted or moved by hand is a tuner
/// in use that no slot file shows, and a new file at its path is what a
/// launcher just took. When the held slots at their paths and such orphans
/// come to more than the count, the slot is let go: with `skip` the
/// outcome is [`SlotOutcome::Orphaned`]; with `wait` the launcher waits
/// (in flock(2), on the orphan's own inode, reached through its holder's
/// descriptor) until the orphan's holders are gone, and tries again.
///
/// # Errors
/// Opening or locking failures of a slot file, as for source locks.
pub fn acquire(
    lock_dir: &Path,
    device: &DeviceKey,
    wanted: u32,
    wait: bool,
    deadline: Option<Instant>,
    me: &Launcher,
    on_wait: &mut dyn FnMut(&[BusySlot]),
) -> Result<SlotOutcome, Error> {
    let mut announced = false;
    let mut once = |slots: &[BusySlot]| {
        if !announced {
            announced = true;
            on_wait(slots);
        }
    };
    loop {
        let (outcome, count) =
            acquire_once(lock_dir, device, wanted, wait, deadline, me, &mut once)?;
        let SlotOutcome::Held(held) = outcome else {
            return Ok(outcome);
        };
        let orphans = orphans_over_count(lock_dir, device, count);
        if orphans.is_empty() {
            return Ok(SlotOutcome::Held(held));
        }
        // One reader too many: let the slot go before anything reads.
        drop(held);
        let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        if !wait || timed_out {
            return Ok(SlotOutcome::Orphaned { orphans, timed_out });
        }
        tracing::warn!(
            device = %printable(device.as_str()),
            "{}; waiting until they are gone before taking a slot of {}",
            describe_orphans(&orphans),
            printable(device.as_str()),
        );
        if !wait_for_orphans(&orphans, deadline) {
            return Ok(SlotOutcome::Orphaned {
                orphans,
                timed_out: true,
            });
        }
    }
}

/// The held slots whose files left the directory, when with them the
/// device's held slots come to more than `count` (see [`acquire`]); empty
/// otherwise. Asked after every slot taken, by [`acquire`] and by the
/// waiting room's head (ECP-0139).
#[must_use]
pub fn orphans_over_count(lock_dir: &Path, device: &DeviceKey, count: u32) -> Vec<OrphanedSlot> {
    let (in_place, orphans) = census(Path::new("/proc"), lock_dir, device, count);
    if in_place + orphans.len() <= usize::try_from(count).unwrap_or(usize::MAX) {
        return Vec::new();
    }
    orphans
}

/// One pass of [`acquire`], and the count agreed on.
#[allow(clippy::too_many_arguments)]
fn acquire_once(
    lock_dir: &Path,
    device: &DeviceKey,
    wanted: u32,
    wait: bool,
    deadline: Option<Instant>,
    me: &Launcher,
    on_wait: &mut dyn FnMut(&[BusySlot]),
) -> Result<(SlotOutcome, u32), Error> {
    let mut count = wanted;
    let mut others = BTreeSet::new();
    let mut busy = Vec::new();
    let mut slot = 0;
    while slot < count {
        let path = device.slot_path(lock_dir, slot);
        match lock::acquire(&path, BusyPolicy::Skip, me, &mut |_| {})? {
            Acquired::Held(lock) => {
                warn_on_disagreement(device, wanted, &others, count);
                return Ok((SlotOutcome::Held(HeldSlot { lock, slot }), count));
            }
            Acquired::Busy { file, .. } => {
                let recorded = LockRecord::read_from(&file).and_then(|r| r.tuners);
                if let Some(n) = recorded.filter(|n| *n != wanted && (1..=MAX_TUNERS).contains(n)) {
                    others.insert(n);
                    count = count.min(n);
                }
                busy.push((slot, file));
            }
        }
        slot += 1;
    }
    warn_on_disagreement(device, wanted, &others, count);
    let timed_out = |slots| SlotOutcome::Busy {
        slots,
        timed_out: true,
    };
    if !wait {
        let busy = SlotOutcome::Busy {
            slots: busy,
            timed_out: false,
        };
        return Ok((busy, count));
    }
    let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    if remaining.is_some_and(|r| r.is_zero()) {
        return Ok((timed_out(busy), count));
    }
    on_wait(&busy);
    match wait_for_any(lock_dir, device, count, remaining, me)? {
        Some(held) => Ok((SlotOutcome::Held(held), count)),
        None => Ok((timed_out(busy), count)),
    }
}

/// One blocked flock(2) per slot `0..count`, each in a
/// [`LockWaiter`] thread; the first to lock wins. Then every other wait is
/// called off and ended before this returns (issue #16 item 9): a thread
/// left blocked would show as a waiter in `/proc/locks` and snatch the
/// next slot freed from whoever asks for it then, for the program's whole
/// life in cluster mode. A waiter that locked in the meantime unlocks as
/// it ends (its lock is dropped). `None`: `remaining` passed first.
fn wait_for_any(
    lock_dir: &Path,
    device: &DeviceKey,
    count: u32,
    remaining: Option<std::time::Duration>,
    me: &Launcher,
) -> Result<Option<HeldSlot>, Error> {
    let (sender, receiver) = mpsc::channel();
    let mut waiters = Vec::new();
    for slot in 0..count {
        let path = device.slot_path(lock_dir, slot);
        let (sender, me) = (sender.clone(), me.clone());
        let started = LockWaiter::spawn(format!("slot-wait-{slot}"), move |called_off| {
            let outcome = lock::acquire_unless_called_off(&path, &me, called_off);
            if let Ok(Some(_)) | Err(_) = &outcome {
                let _ = sender.send(slot);
            }
            outcome
        });
        match started {
            Ok(waiter) => waiters.push(waiter),
            Err(source) => {
                call_off(waiters);
                return Err(Error::StartWaitThread {
                    path: device.slot_path(lock_dir, slot),
                    source,
                });
            }
        }
    }
    drop(sender);
    let first = match remaining {
        None => receiver.recv().ok(),
        Some(remaining) => receiver.recv_timeout(remaining).ok(),
    };
    let mut outcomes = call_off(waiters);
    // The first to report wins; one that locked after it is unlocked here.
    // With time up, one that locked just before the waits were called off
    // is still taken.
    let late = || {
        outcomes
            .iter()
            .find(|(_, outcome)| matches!(outcome, Ok(Some(_))))
            .map(|(slot, _)| *slot)
    };
    let Some(winner) = first.or_else(late) else {
        return Ok(None);
    };
    match outcomes.remove(&winner) {
        Some(Ok(Some(lock))) => Ok(Some(HeldSlot { lock, slot: winner })),
        Some(Err(error)) => Err(error),
        // The winner reported and ended: it cannot have neither.
        Some(Ok(None)) | None => Ok(None),
    }
}

/// Calls off every wait and returns what each ended with, by slot.
fn call_off(
    waiters: Vec<LockWaiter<Result<Option<HeldLock>, Error>>>,
) -> std::collections::BTreeMap<u32, Result<Option<HeldLock>, Error>> {
    waiters
        .into_iter()
        .zip(0..)
        .filter_map(|(waiter, slot)| Some((slot, waiter.call_off()?)))
        .collect()
}

fn warn_on_disagreement(device: &DeviceKey, wanted: u32, others: &BTreeSet<u32>, count: u32) {
    if others.is_empty() {
        return;
    }
    let others: Vec<String> = others.iter().map(u32::to_string).collect();
    tracing::warn!(
        device = %printable(device.as_str()),
        "launchers of device {} disagree on its tuner count: this one says --tuners {wanted}, held slots were taken with --tuners {}; using {count} (give every launcher of the device the same --tuners)",
        printable(device.as_str()),
        others.join(", "),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `census` on a lock table given as text, with a stand-in `/proc`
    /// whose descriptor links point at the files.
    #[test]
    fn the_census_counts_held_slot_files_and_finds_a_held_slot_moved_out_of_the_directory() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let (lock_dir, proc_root) = (root.path().join("locks"), root.path().join("proc"));
        fs::create_dir_all(&lock_dir).unwrap();
        let device = DeviceKey::from_flag("den-box").unwrap();
        let dir_meta = fs::metadata(&lock_dir).unwrap();
        let record = |slot: u32, device: &str, dir: u64| LockRecord {
            device: Some(device.to_owned()),
            slot: Some(slot),
            lock_dir_inode: Some(dir),
            ..LockRecord::for_this_launch("k", "s", "p", None)
        };
        let mut files = Vec::new();
        let mut file_at = |path: PathBuf, record: LockRecord| {
            let file = File::create(&path).unwrap();
            record.write_into(&file).unwrap();
            files.push(path.clone());
            fs::metadata(&path).unwrap().ino()
        };
        let slot0 = file_at(
            device.slot_path(&lock_dir, 0),
            record(0, "den-box", dir_meta.ino()),
        );
        let _slot1 = file_at(
            device.slot_path(&lock_dir, 1),
            record(1, "den-box", dir_meta.ino()),
        );
        // Slot 1's first file, moved away while held (pid 42 holds it).
        let moved = file_at(
            root.path().join("moved"),
            record(1, "den-box", dir_meta.ino()),
        );
        // Another directory's slot of a device named alike (pid 43).
        let elsewhere = file_at(root.path().join("other"), record(0, "den-box", 1));
        let dev = dir_meta.dev();
        let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
        let row = |n: u32, pid: u32, inode: u64| {
            format!("{n}: FLOCK  ADVISORY  WRITE {pid} {major:02x}:{minor:02x}:{inode} 0 EOF\n")
        };
        // Each holder's descriptor 3, its link and its fdinfo `lock:` row.
        for (pid, target, inode) in [(42, &files[2], moved), (43, &files[3], elsewhere)] {
            let process = proc_root.join(pid.to_string());
            fs::create_dir_all(process.join("fd")).unwrap();
            fs::create_dir_all(process.join("fdinfo")).unwrap();
            std::os::unix::fs::symlink(target, process.join("fd/3")).unwrap();
            let info = format!("pos:\t0\nflags:\t02\nlock:\t{}", row(1, pid, inode));
            fs::write(process.join("fdinfo/3"), info).unwrap();
        }
        let table = [row(1, 41, slot0), row(2, 42, moved), row(3, 43, elsewhere)].concat();
        fs::write(proc_root.join("locks"), &table).unwrap();
        // With room for every unnamed lock, no descriptor is looked at.
        assert_eq!(census(&proc_root, &lock_dir, &device, 3), (1, Vec::new()));
        let (in_place, orphans) = census(&proc_root, &lock_dir, &device, 2);
        assert_eq!(in_place, 1);
        assert_eq!(orphans.len(), 1, "{orphans:?}");
        assert_eq!(
            (orphans[0].slot, orphans[0].pid, orphans[0].deleted),
            (1, 42, false)
        );
        assert!(
            describe_orphans(&orphans)
                .contains("slot 1's file was moved or renamed while held by pid 42")
        );
    }

    #[test]
    fn tuner_counts_are_auto_or_one_to_sixty_four() {
        assert_eq!(Tuners::parse("auto"), Ok(Tuners::Auto));
        assert_eq!(Tuners::parse("2"), Ok(Tuners::Count(2)));
        assert_eq!(Tuners::parse("64"), Ok(Tuners::Count(64)));
        for bad in ["0", "65", "-1", "two", "", " 2", "Auto"] {
            assert!(Tuners::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_device_is_its_sources_canonical_host_whatever_the_spelling_or_key() {
        let of = |source: &str| {
            let key = SourceKey::from_source(source).unwrap();
            DeviceKey::of_source(&key, source).map(|d| d.as_str().to_owned())
        };
        for source in [
            "http://10.0.0.5:5004/auto/v5.1",
            "http://012.0.0.5:5004/tuner1/v7.1",
            "hdhomerun://10.0.0.5/v5.1",
            "HTTP://0x0a000005/status",
        ] {
            assert_eq!(of(source).as_deref(), Some("10.0.0.5"), "{source}");
        }
        assert_eq!(of("rtsp://Cam.Local./s").as_deref(), Some("cam.local"));
        assert_eq!(of("/dev/null"), None);
        let key = SourceKey::from_override("studio-a").unwrap();
        let source = "http://10.0.0.5:5004/auto/v5.1";
        assert_eq!(
            DeviceKey::of_source(&key, source).unwrap().as_str(),
            "10.0.0.5"
        );
    }

    #[test]
    fn slot_file_names_are_stable_and_parse_back() {
        let device = DeviceKey::from_flag("10.0.0.5").unwrap();
        let path = device.slot_path(Path::new("/run/x"), 1);
        let name = path.file_name().unwrap().to_str().unwrap();
        // Pinned: every ec-launch version must name a device's slots alike.
        assert_eq!(name, "10.0.0.5-d68ebdae456af6a8.tuner1.slot");
        assert_eq!(
            parse_slot_file_name(name),
            Some(("10.0.0.5-d68ebdae456af6a8", 1))
        );
        assert_eq!(parse_slot_file_name("a.lock"), None);
        assert_eq!(parse_slot_file_name("a.tunerx.slot"), None);
        assert_eq!(parse_slot_file_name(".tuner1.slot"), None);
        // Not a source lock name: `status` lists `*.lock` only.
        assert_ne!(path.extension().unwrap(), "lock");
    }

    #[test]
    fn device_flags_must_be_printable_and_non_empty() {
        assert!(DeviceKey::from_flag("").is_err());
        assert!(DeviceKey::from_flag("  ").is_err());
        assert!(DeviceKey::from_flag("a\x1bb").is_err());
        assert!(DeviceKey::from_flag("a b").is_err());
        for secretive in ["admin:pw@10.0.0.5", "box?token=s", "box#x"] {
            assert!(DeviceKey::from_flag(secretive).is_err(), "{secretive}");
        }
        assert_eq!(
            DeviceKey::from_flag("[fd00::5]").unwrap().as_str(),
            "[fd00::5]"
        );
        assert_eq!(DeviceKey::from_flag(" den ").unwrap().as_str(), "den");
        // A host is canonical as a source's host is (issue #16 item 7).
        for (spelling, canonical) in [
            ("TUNER.lan", "tuner.lan"),
            ("tuner.lan.", "tuner.lan"),
            ("0x7f0000b4", "127.0.0.180"),
            ("fd00::5", "[fd00::5]"),
            ("[FD00::5]", "[fd00::5]"),
        ] {
            assert_eq!(DeviceKey::from_flag(spelling).unwrap().as_str(), canonical);
        }
    }
}
