//! Who holds a lock, according to the kernel.
//!
//! A lock file's record says who launched last; the kernel says who holds
//! the lock now, in two places (proc(5)):
//! - `/proc/locks` lists each flock(2) lock once, with the PID that *took*
//!   it. After the program forks a helper and exits, that PID is dead while
//!   the helper, which inherited the descriptor, holds the lock. In the
//!   initial PID namespace the dead PID is still listed, and may meanwhile
//!   belong to an unrelated process; in a child namespace the row is left
//!   out altogether when the taker is outside it or gone.
//! - `/proc/<pid>/fdinfo/<fd>` has a `lock:` line for every lock owned by
//!   that descriptor's open file description, so every process sharing it
//!   shows the lock, whoever took it. This is the proof a process holds it.
//!
//! So a lock is identified by device and inode, never by a path string (a
//! held file may be renamed, moved out of the directory, deleted, or
//! reached through a bind mount), and a process is named as a holder only
//! when one of its descriptors shows the lock, or, when its descriptors
//! cannot be read, when its start time is the one the launch record names.
//!
//! [`HolderScan`] reads the lock table once, and, on other threads meanwhile,
//! the descriptors of every visible process. Pass one reads only the links
//! of descriptors and the fdinfo of those whose link points into the lock
//! directory: the normal case, kept cheap for thousands of processes. Only when a held lock on the
//! lock directory's filesystem was not found that way (moved, reached by
//! another path, or someone else's lock) are the fdinfo `lock:` rows of the
//! takers' path descriptors read, and only when that does not place it is a
//! second pass made that reads them for every path descriptor until it is
//! found (never stat(2) through a link: it would ask the file's filesystem,
//! which may hang, ECP-0136).
//!
//! For `status --readers` the same first pass also keeps the descriptors
//! whose link is `socket:[inode]` for an inode asked for (the connections
//! to sources' endpoints, ECP-0133): the links are read anyway, so the
//! owners of those sockets cost one comparison per descriptor. That pass
//! then runs even when no lock is held: a stale reader needs none.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{CStr, OsStr};
use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, Stat};
use rustix::io::Errno;

use crate::lock_record::LockRecord;
use crate::proc_locks::{self, LockKind, LockRow, LockTable};
use crate::process::{self, BootClock, ProcessInfo};
use crate::spread;

/// How many more reads look for a lock known held (`reread_until_listed`).
const LISTED_REREADS: u32 = 16;
/// Processes a scan worker takes at a time: small enough that the workers
/// finish together, large enough that taking them costs nothing.
const PIDS_PER_BATCH: usize = 32;

/// What the kernel appends to a descriptor's link when its file is gone.
const DELETED_SUFFIX: &str = " (deleted)";

/// The device and inode a lock is on, in `/proc/locks` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockedInode {
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
}

impl LockedInode {
    /// The inode of an open file, with the device its locks are listed
    /// under (see [`LockedInode::of_path`]).
    ///
    /// # Errors
    /// When `statx` fails.
    pub fn of_file(file: &File) -> io::Result<Self> {
        Self::statx(file, c"", AtFlags::EMPTY_PATH)
    }

    /// The inode at `path` (links followed), with the device the kernel's
    /// lock tables use: the filesystem's (`s_dev`, as `/proc/self/mountinfo`
    /// gives it for the file's mount), not `stat`'s `st_dev`, which differs
    /// on btrfs (each subvolume reports a device of its own) and would make
    /// a held lock look free (ECP-0136).
    ///
    /// # Errors
    /// When `statx` fails.
    pub fn of_path(path: &Path) -> io::Result<Self> {
        Self::statx(rustix::fs::CWD, path, AtFlags::empty())
    }

    /// [`LockedInode::of_path`] without following a final symbolic link.
    ///
    /// # Errors
    /// When `statx` fails.
    pub fn of_path_nofollow(path: &Path) -> io::Result<Self> {
        Self::statx(rustix::fs::CWD, path, AtFlags::SYMLINK_NOFOLLOW)
    }

    /// [`LockedInode::of_file`] when `file` is a regular file, `None` when
    /// it is not (one `statx` tells both).
    ///
    /// # Errors
    /// When `statx` fails.
    pub fn of_regular_file(file: &File) -> io::Result<Option<Self>> {
        let (inode, mode) = Self::statx_with_mode(file, c"", AtFlags::EMPTY_PATH)?;
        let regular = FileType::from_raw_mode(mode.into()) == FileType::RegularFile;
        Ok(regular.then_some(inode))
    }

    fn statx<Fd: std::os::fd::AsFd, P: rustix::path::Arg>(
        dir: Fd,
        path: P,
        flags: AtFlags,
    ) -> io::Result<Self> {
        Self::statx_with_mode(dir, path, flags).map(|(inode, _)| inode)
    }

    /// The inode and its `stx_mode`.
    fn statx_with_mode<Fd: std::os::fd::AsFd, P: rustix::path::Arg>(
        dir: Fd,
        path: P,
        flags: AtFlags,
    ) -> io::Result<(Self, u16)> {
        let stat = rustix::fs::statx(
            dir,
            path,
            flags,
            rustix::fs::StatxFlags::BASIC_STATS | rustix::fs::StatxFlags::MNT_ID,
        )?;
        let mount = (stat.stx_mask & rustix::fs::StatxFlags::MNT_ID.bits() != 0)
            .then(|| mount_device(stat.stx_mnt_id))
            .flatten();
        let (dev_major, dev_minor) = mount.unwrap_or((stat.stx_dev_major, stat.stx_dev_minor));
        let inode = Self {
            dev_major,
            dev_minor,
            inode: stat.stx_ino,
        };
        Ok((inode, stat.stx_mode))
    }

    /// The inode `metadata` describes.
    #[must_use]
    pub fn of_metadata(metadata: &fs::Metadata) -> Self {
        let dev = metadata.dev();
        // Linux majors and minors are 12 and 20 bits wide.
        #[allow(clippy::cast_possible_truncation)]
        Self {
            dev_major: nix::sys::stat::major(dev) as u32,
            dev_minor: nix::sys::stat::minor(dev) as u32,
            inode: metadata.ino(),
        }
    }

    /// The inode a `stat` result describes.
    #[must_use]
    #[allow(dead_code)] // public API kept for other callers; the scan no longer stats descriptors
    pub fn of_stat(stat: &Stat) -> Self {
        let dev = stat.st_dev;
        // Linux majors and minors are 12 and 20 bits wide.
        #[allow(clippy::cast_possible_truncation)]
        Self {
            dev_major: rustix::fs::major(dev) as u32,
            dev_minor: rustix::fs::minor(dev) as u32,
            inode: stat.st_ino,
        }
    }

    fn of_row(row: &LockRow) -> Self {
        Self {
            dev_major: row.dev_major,
            dev_minor: row.dev_minor,
            inode: row.inode,
        }
    }
}

/// Where a held lock's file is now, as a holder's descriptor shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The path the kernel gives for the file (the one it had, if deleted).
    pub path: PathBuf,
    /// The file was deleted while held.
    pub deleted: bool,
    /// A descriptor through which its contents (the record) can be read.
    pub via: PathBuf,
}

/// Why a PID the lock table names as taker is not named as a holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absence {
    /// No such process now.
    Exited,
    /// A process with this PID exists but none of its descriptors holds the
    /// lock: the taker exited and the PID was reused, or it closed its copy.
    NotHolding,
    /// Its descriptors cannot be read and nothing else proves it is the
    /// taker (no record with its start time).
    Unverified,
}

/// One snapshot of flock(2) holders of locks in a lock directory.
#[derive(Debug, Default)]
pub struct HolderScan {
    /// The flock rows of `/proc/locks`, as read (see [`LockTable::read`]).
    locks: LockTable,
    /// Inodes with a held (not awaited) flock, and the PIDs that took them.
    table: BTreeMap<LockedInode, BTreeSet<Option<u32>>>,
    /// Processes whose descriptors show each held lock, with the start time
    /// they had when found.
    sharers: BTreeMap<LockedInode, BTreeMap<u32, Option<u64>>>,
    /// Where each lock found through descriptors is.
    located: BTreeMap<LockedInode, Location>,
    /// Every PID listed in `/proc` by the descriptor scan, when one ran.
    visible_pids: Option<HashSet<u32>>,
    /// Processes whose descriptors this user may not read.
    unreadable_pids: HashSet<u32>,
    /// Processes whose descriptors we may not read (other users', unless root).
    pub uninspectable: usize,
    /// `/proc` is mounted with `hidepid`, hiding other users' processes.
    pub hidepid: bool,
    /// False in a child PID namespace: its `/proc/locks` leaves out locks
    /// whose taker is outside it or has exited, so "not listed" is not "free".
    pub table_complete: bool,
    /// The processes whose descriptors show each socket asked for.
    socket_owners: BTreeMap<u64, BTreeSet<u32>>,
    /// A `/proc` file could not be opened for want of a descriptor (EMFILE,
    /// ENFILE): what was not read says nothing, so nothing is concluded
    /// from it (a taker is unverified, not exited).
    exhausted: AtomicBool,
    clock: Option<BootClock>,
    proc_root: PathBuf,
}

/// Which descriptors a pass over `/proc` looks at.
struct Wanted<'a> {
    /// Descriptors whose link points into this directory (pass one).
    lock_dir: Option<&'a [u8]>,
    /// Descriptors whose link is exactly one of these (a placed lock's path).
    targets: &'a HashSet<Vec<u8>>,
    /// Inodes looked for by `stat`ing every other path descriptor.
    by_inode: &'a BTreeSet<LockedInode>,
    /// Socket inodes whose owners are wanted (`socket:[inode]` links).
    sockets: &'a HashSet<u64>,
}

impl HolderScan {
    /// Scans `/proc` under `proc_root` for holders of locks on files in
    /// `lock_dir`; `listed` are the inodes of the directory's lock files,
    /// which are looked for even where the lock table cannot be trusted.
    #[must_use]
    pub fn take(proc_root: &Path, lock_dir: &Path, listed: &BTreeSet<LockedInode>) -> Self {
        Self::take_with_sockets(proc_root, lock_dir, listed, &HashSet::new())
    }

    /// [`HolderScan::take`], also finding the processes that have one of
    /// `sockets` (socket inodes) open; see [`HolderScan::socket_owners`].
    #[must_use]
    pub fn take_with_sockets(
        proc_root: &Path,
        lock_dir: &Path,
        listed: &BTreeSet<LockedInode>,
        sockets: &HashSet<u64>,
    ) -> Self {
        // A rename never leaves a filesystem, so only locks on the lock
        // directory's can be ours. (A bind mount has the same device.)
        let dir_inode = LockedInode::of_path(lock_dir).ok();
        let device = dir_inode.map(|i| (i.dev_major, i.dev_minor));
        // A lock found away from the directory's path is ours when it is
        // listed there, or its record says it was made there.
        let is_ours = |inode: &LockedInode, via: &Path| {
            listed.contains(inode) || dir_inode.is_some_and(|dir| made_in(via, dir.inode))
        };
        let ours =
            |inode: &LockedInode| device.is_none_or(|d| (inode.dev_major, inode.dev_minor) == d);
        let wanted_locks = |scan: &Self| {
            let mut wanted: BTreeSet<LockedInode> =
                scan.table.keys().copied().filter(ours).collect();
            if !scan.table_complete {
                wanted.extend(listed.iter().copied());
            }
            wanted
        };
        let lock_dir = lock_dir
            .canonicalize()
            .unwrap_or_else(|_| lock_dir.to_owned());
        let pids: Option<Vec<u32>> = fs::read_dir(proc_root).ok().map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        });
        let no_targets = HashSet::new();
        let nothing = BTreeSet::new();
        let in_lock_dir = Wanted {
            lock_dir: Some(lock_dir.as_os_str().as_bytes()),
            targets: &no_targets,
            by_inode: &nothing,
            sockets,
        };
        let (mut scan, first_pass) =
            Self::lock_table_beside(proc_root, pids.as_deref(), &in_lock_dir, |scan| {
                wanted_locks(scan).is_empty() && sockets.is_empty()
            });
        scan.hidepid = hidepid_in_force(proc_root);
        let mut wanted = wanted_locks(&scan);
        // Nothing held on that filesystem: no process can hold one of ours.
        if wanted.is_empty() && sockets.is_empty() {
            return scan;
        }
        let (Some(pids), Some(first_pass)) = (pids, first_pass) else {
            return scan;
        };
        scan.visible_pids = Some(pids.iter().copied().collect());
        scan.absorb(first_pass);
        wanted.retain(|inode| !scan.sharers.contains_key(inode));
        if wanted.is_empty() {
            return scan;
        }
        let mut ours_found: BTreeSet<LockedInode> = scan.sharers.keys().copied().collect();
        // Not found through the directory's path. A living taker's own
        // descriptors say where the file is, or that it is someone else's.
        let mut targets = HashSet::new();
        let mut by_inode = BTreeSet::new();
        for inode in wanted {
            let takers: Vec<u32> = scan.takers(inode).collect();
            let found = takers
                .iter()
                .find_map(|&pid| scan.descriptor_holding(pid, inode).ok().flatten());
            match found {
                Some((target, via)) => {
                    if is_ours(&inode, &via) {
                        targets.insert(without_deleted_suffix(&target).to_vec());
                        ours_found.insert(inode);
                    }
                }
                None => {
                    by_inode.insert(inode);
                }
            }
        }
        if targets.is_empty() && by_inode.is_empty() {
            return scan;
        }
        scan.uninspectable = 0;
        scan.pass(
            &pids,
            &Wanted {
                lock_dir: None,
                targets: &targets,
                by_inode: &by_inode,
                sockets: &HashSet::new(),
            },
        );
        // Someone else's lock on the same filesystem (another program's,
        // another lock directory's, or one sharing a path text with ours) is
        // not reported.
        let foreign: Vec<LockedInode> = scan
            .located
            .iter()
            .filter(|(inode, location)| {
                let placed = ours_found.contains(inode);
                let found_by_inode = by_inode.contains(inode) && is_ours(inode, &location.via);
                !(placed || found_by_inode)
            })
            .map(|(inode, _)| *inode)
            .collect();
        for inode in foreign {
            scan.located.remove(&inode);
            scan.sharers.remove(&inode);
        }
        scan
    }

    /// The lock table, read on a thread of its own while the first pass
    /// over `pids` runs: the first read of `/proc/locks` after a quiet
    /// spell sleeps through an RCU grace period (the write side of the
    /// kernel's file-lock semaphore), 16 ms of a 90 ms `status` here, with
    /// nothing to do. The pass does not depend on the table; it stops early
    /// when the table shows `nothing_to_find`, and its findings are then
    /// not used.
    fn lock_table_beside(
        proc_root: &Path,
        pids: Option<&[u32]>,
        first: &Wanted<'_>,
        nothing_to_find: impl Fn(&Self) -> bool + Sync,
    ) -> (Self, Option<Vec<DescriptorFindings>>) {
        let abandoned = AtomicBool::new(false);
        std::thread::scope(|threads| {
            let table = threads.spawn(|| {
                let scan = Self::lock_table(proc_root);
                if nothing_to_find(&scan) {
                    abandoned.store(true, Ordering::Relaxed);
                }
                scan
            });
            let first_pass =
                pids.map(|pids| read_descriptors(proc_root, pids, first, Some(&abandoned)));
            let scan = table
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            (scan, first_pass)
        })
    }

    /// Reads only `/proc/locks`: enough to name a holder that took its lock
    /// and still holds it (see [`HolderScan::verify_takers`]), at a fraction
    /// of a full scan's cost.
    #[must_use]
    pub fn lock_table(proc_root: &Path) -> Self {
        Self::from_lock_table(proc_root, LockTable::read(proc_root))
    }

    /// [`HolderScan::lock_table`] from one read: for a launcher whose own
    /// flock(2) just found a lock busy, which asks
    /// [`HolderScan::reread_until_listed`] for the one row it needs rather
    /// than uniting three reads of the whole table. Every read of
    /// `/proc/locks` holds up every flock(2) on the machine, and 255
    /// launchers losing together read it at once.
    #[must_use]
    pub fn lock_table_once(proc_root: &Path) -> Self {
        let mut locks = LockTable::default();
        let read = locks.read_into(proc_root).map(|_| locks);
        Self::from_lock_table(proc_root, read)
    }

    fn from_lock_table(proc_root: &Path, read: io::Result<LockTable>) -> Self {
        let mut scan = Self {
            clock: BootClock::read(),
            proc_root: proc_root.to_owned(),
            table_complete: process::in_initial_pid_namespace(proc_root),
            ..Self::default()
        };
        match read {
            Ok(locks) => {
                scan.locks = locks;
                scan.index_takers();
            }
            Err(e) => scan.note_read_error(&e),
        }
        scan
    }

    /// Reads `/proc/locks` once more into the table (a union); its length,
    /// or `None` when it cannot be read.
    fn read_table_once(&mut self) -> Option<usize> {
        match self.locks.read_into(&self.proc_root) {
            Ok(length) => {
                self.index_takers();
                Some(length)
            }
            Err(e) => {
                self.note_read_error(&e);
                None
            }
        }
    }

    /// The takers of each held flock, from the rows read so far.
    fn index_takers(&mut self) {
        for row in self.locks.held_flocks() {
            self.table
                .entry(LockedInode::of_row(row))
                .or_default()
                .insert(row.pid);
        }
    }

    fn note_read_error(&self, error: &io::Error) {
        if crate::error::out_of_descriptors(error) {
            self.exhausted.store(true, Ordering::Relaxed);
        }
    }

    /// The lock table this scan read (`status` asks it for waiters too, so
    /// one report rests on one reading).
    #[must_use]
    pub fn lock_rows(&self) -> &LockTable {
        &self.locks
    }

    /// For a lock known to be held (a fresh descriptor's non-blocking
    /// flock(2) on it just failed with `EWOULDBLOCK`) that the table does
    /// not list: reads `/proc/locks` again, at most [`LISTED_REREADS`]
    /// times, until it does. Three reads of a table churning hundreds of
    /// locks still missed a row now and then (the `seq_file` skip above),
    /// and a missing row made a busy launcher name nobody. True when listed.
    pub fn reread_until_listed(&mut self, inode: LockedInode) -> bool {
        for _ in 0..LISTED_REREADS {
            if self.table.contains_key(&inode) || !self.table_complete {
                break;
            }
            if self.read_table_once().is_none() {
                break;
            }
        }
        self.table.contains_key(&inode)
    }

    /// Checks each taker of `inode` through its own descriptors (a few
    /// `stat`s, not a scan of `/proc`), or, when this user may not read
    /// them, against `record`'s PID and start time; true when there is at
    /// least one taker and every one still holds the lock. A reused PID
    /// does not.
    pub fn verify_takers(&mut self, inode: LockedInode, record: Option<&LockRecord>) -> bool {
        let takers: Vec<Option<u32>> = self
            .table
            .get(&inode)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let mut all = !takers.is_empty();
        for taker in takers {
            let Some(pid) = taker else {
                all = false;
                continue;
            };
            match self.descriptor_holding(pid, inode) {
                // Its start time is read once, when it is described
                // (`holders`), after this proof that it holds the lock.
                Ok(Some(_)) => {
                    self.sharers.entry(inode).or_default().insert(pid, None);
                }
                Ok(None) => all = false,
                Err(()) => {
                    self.unreadable_pids.insert(pid);
                    all &= self.recorded_launcher_start(pid, record).is_some();
                }
            }
        }
        all
    }

    /// The start time of `pid` when `record` names it as the launcher with
    /// that start time; `None` otherwise (or for a record without one).
    fn recorded_launcher_start(&self, pid: u32, record: Option<&LockRecord>) -> Option<u64> {
        let record = record.filter(|r| r.pid == pid)?;
        let start = process::start_ticks_of(&self.proc_root, pid)?;
        (record.start_ticks == Some(start)).then_some(start)
    }

    /// The PIDs the lock table names as takers of `inode`.
    fn takers(&self, inode: LockedInode) -> impl Iterator<Item = u32> + '_ {
        self.table
            .get(&inode)
            .into_iter()
            .flatten()
            .flatten()
            .copied()
    }

    /// The descriptor of `pid` that holds the lock on `inode`, as (link
    /// target, path of the descriptor); `Err` when its descriptors cannot
    /// be read.
    fn descriptor_holding(
        &self,
        pid: u32,
        inode: LockedInode,
    ) -> Result<Option<(Vec<u8>, PathBuf)>, ()> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let proc_dir = match rustix::fs::open(&self.proc_root, flags, Mode::empty()) {
            Ok(dir) => dir,
            Err(Errno::MFILE | Errno::NFILE) => {
                self.exhausted.store(true, Ordering::Relaxed);
                return Err(());
            }
            Err(_) => return Ok(None),
        };
        let (mut listing, mut names, mut link) = (Vec::new(), Vec::new(), Vec::new());
        let opened = open_descriptors(&proc_dir, pid, &mut listing, &mut names);
        // One descriptor fewer for what follows, at a tiny `ulimit -n`.
        drop(proc_dir);
        let dir = match opened {
            Ok(Some(dir)) => dir,
            Err(Errno::ACCESS | Errno::PERM) => return Err(()),
            Err(Errno::MFILE | Errno::NFILE) => {
                self.exhausted.store(true, Ordering::Relaxed);
                return Err(());
            }
            Ok(None) | Err(_) => return Ok(None),
        };
        let parent = dir.parent(&self.proc_root, pid);
        // From the top: a launcher puts the lock on the highest free
        // descriptor below 1024 (ECP-0136), so a taker's is the first
        // looked at, not the last of every descriptor's fdinfo.
        for name in names.split_inclusive(|b| *b == 0).rev() {
            // fdinfo, not stat(2) through the link: a stat asks the file's
            // filesystem, and a hung NFS or FUSE server behind any
            // descriptor of the taker would hang us (ECP-0136). A `lock:`
            // row names device and inode without asking anyone.
            let fd = String::from_utf8_lossy(name.strip_suffix(b"\0").unwrap_or(name));
            let info = parent.join("fdinfo").join(fd.as_ref());
            if !flocks_held_by(&info).contains(&inode) {
                continue;
            }
            let target = read_link(&dir.fd_dir, name, &mut link)
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            return Ok(Some((target, parent.join("fd").join(fd.as_ref()))));
        }
        Ok(None)
    }

    /// One pass over the descriptors of `pids` (see [`read_descriptors`]).
    fn pass(&mut self, pids: &[u32], wanted: &Wanted<'_>) {
        let found = read_descriptors(&self.proc_root, pids, wanted, None);
        self.absorb(found);
    }

    /// Takes in what a pass found, in `pids` order, as one thread would.
    fn absorb(&mut self, results: Vec<DescriptorFindings>) {
        for found in results {
            for (inode, pid) in found.sockets {
                self.socket_owners.entry(inode).or_default().insert(pid);
            }
            if found.exhausted {
                self.exhausted.store(true, Ordering::Relaxed);
            }
            self.uninspectable += found.unreadable.len();
            self.unreadable_pids.extend(found.unreadable);
            for share in found.shares {
                self.sharers
                    .entry(share.inode)
                    .or_default()
                    .insert(share.pid, share.start_ticks);
                self.located.entry(share.inode).or_insert(share.location);
            }
        }
    }

    /// The processes with socket `inode` open, among those asked for in
    /// [`HolderScan::take_with_sockets`] (empty when none is visible).
    pub fn socket_owners(&self, inode: u64) -> impl Iterator<Item = u32> + '_ {
        self.socket_owners
            .get(&inode)
            .into_iter()
            .flatten()
            .copied()
    }

    /// What `/proc` says about `pid` now (no start-time check).
    #[must_use]
    pub fn describe(&self, pid: u32) -> Option<ProcessInfo> {
        process::describe(&self.proc_root, pid, self.clock, None)
    }

    /// True when process `pid` exists (as far as this user can see).
    fn is_alive(&self, pid: u32) -> bool {
        match &self.visible_pids {
            Some(pids) => pids.contains(&pid),
            None => self.proc_root.join(pid.to_string()).exists(),
        }
    }

    /// True when the kernel shows a held flock on `inode`, in its lock
    /// table or in a holder's descriptor.
    #[must_use]
    pub fn is_held(&self, inode: LockedInode) -> bool {
        self.table.contains_key(&inode) || self.sharers.contains_key(&inode)
    }

    /// Every process holding the lock on `inode`: those whose descriptors
    /// show it, and a taker whose descriptors cannot be read when `record`
    /// names it by PID and start time. A process whose start time changed
    /// since it was found (its PID was reused) is not named.
    #[must_use]
    pub fn holders(&self, inode: LockedInode, record: Option<&LockRecord>) -> Vec<ProcessInfo> {
        let mut pids: BTreeMap<u32, Option<u64>> =
            self.sharers.get(&inode).cloned().unwrap_or_default();
        for pid in self.takers(inode) {
            if pids.contains_key(&pid) || !self.unreadable_pids.contains(&pid) {
                continue;
            }
            if let Some(start) = self.recorded_launcher_start(pid, record) {
                pids.insert(pid, Some(start));
            }
        }
        pids.into_iter()
            .filter_map(|(pid, start)| process::describe(&self.proc_root, pid, self.clock, start))
            .collect()
    }

    /// The takers of `inode` that are not among `holders`, and why.
    #[must_use]
    pub fn absent_takers(
        &self,
        inode: LockedInode,
        holders: &[ProcessInfo],
    ) -> Vec<(u32, Absence)> {
        self.takers(inode)
            .filter(|pid| !holders.iter().any(|h| h.pid == *pid))
            .map(|pid| {
                let why = if self.exhausted.load(Ordering::Relaxed) {
                    // Not read is not absent: say nothing about it.
                    Absence::Unverified
                } else if !self.is_alive(pid) {
                    Absence::Exited
                } else if self.unreadable_pids.contains(&pid) {
                    Absence::Unverified
                } else {
                    Absence::NotHolding
                };
                (pid, why)
            })
            .collect()
    }

    /// The PIDs of `pid` from our namespace inward (see
    /// [`process::namespace_pids`]).
    #[must_use]
    pub fn namespace_pids(&self, pid: u32) -> Vec<u32> {
        process::namespace_pids(&self.proc_root, pid)
    }

    /// Held locks found through descriptors, and where their files are now.
    pub fn located(&self) -> impl Iterator<Item = (&LockedInode, &Location)> {
        self.located.iter()
    }

    /// True when a `/proc` file could not be opened for want of a
    /// descriptor (EMFILE, ENFILE): holders may be missing.
    #[must_use]
    pub fn out_of_descriptors(&self) -> bool {
        self.exhausted.load(Ordering::Relaxed)
    }

    /// Why the holder list may be incomplete, for the operator.
    #[must_use]
    pub fn visibility_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.exhausted.load(Ordering::Relaxed) {
            warnings.push(
                "this process ran out of file descriptors (EMFILE/ENFILE) while reading /proc, so holders may be missing; raise the open-file limit (ulimit -n, LimitNOFILE=)".to_owned(),
            );
        }
        if self.hidepid {
            warnings.push(
                "/proc is mounted with hidepid: other users' processes are invisible here, so holders may be missing; run as root".to_owned(),
            );
        }
        if self.uninspectable > 0 {
            warnings.push(format!(
                "the descriptors of {} processes of other users could not be read, so holders among them are missing; run as root",
                self.uninspectable
            ));
        }
        if !self.table_complete {
            warnings.push(
                "this PID namespace's /proc/locks leaves out locks taken by processes outside it or that have exited, so a lock not found held is reported unknown; run status in the host's namespace".to_owned(),
            );
        }
        warnings
    }
}

/// True when the file behind `via` holds a launch record made in the lock
/// directory with inode `dir_inode`. Opened without blocking, in case it is
/// a FIFO.
fn made_in(via: &Path, dir_inode: u64) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(via)
        .ok()
        .and_then(|file| LockRecord::read_from(&file))
        .is_some_and(|record| record.lock_dir_inode == Some(dir_inode))
}

/// The device (`major:minor`, the superblock's `s_dev`) of mount `mount_id`
/// per `/proc/self/mountinfo`; read once, and again when a mount is new.
fn mount_device(mount_id: u64) -> Option<(u32, u32)> {
    static DEVICES: Mutex<Option<HashMap<u64, (u32, u32)>>> = Mutex::new(None);
    let mut devices = DEVICES.lock().ok()?;
    if let Some(found) = devices.as_ref().and_then(|d| d.get(&mount_id)) {
        return Some(*found);
    }
    let mountinfo = crate::proc_file::read_to_string(Path::new("/proc/self/mountinfo")).ok()?;
    let map = devices.insert(mount_devices(&mountinfo));
    map.get(&mount_id).copied()
}

/// Mount ID to device, from `mountinfo` text (proc(5): field 1 is the
/// mount ID, field 3 `major:minor`, decimal).
fn mount_devices(mountinfo: &str) -> HashMap<u64, (u32, u32)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let id = fields.next()?.parse().ok()?;
            let (major, minor) = fields.nth(1)?.split_once(':')?;
            Some((id, (major.parse().ok()?, minor.parse().ok()?)))
        })
        .collect()
}

/// One pass over the descriptors of `pids`, spread over the cores: the
/// scan is system calls on `/proc`, thousands of them on a busy node. The
/// findings come back in `pids` order; once `abandoned` is set, batches not
/// yet begun are skipped (their findings would be thrown away).
fn read_descriptors(
    proc_root: &Path,
    pids: &[u32],
    wanted: &Wanted<'_>,
    abandoned: Option<&AtomicBool>,
) -> Vec<DescriptorFindings> {
    spread::map_batches(
        pids,
        PIDS_PER_BATCH,
        || DescriptorReader::new(proc_root, wanted),
        |reader, pids| {
            if abandoned.is_some_and(|a| a.load(Ordering::Relaxed)) {
                DescriptorFindings::default()
            } else {
                reader.scan(pids, wanted)
            }
        },
    )
}

/// A descriptor link without the kernel's " (deleted)" mark.
fn without_deleted_suffix(target: &[u8]) -> &[u8] {
    target
        .strip_suffix(DELETED_SUFFIX.as_bytes())
        .unwrap_or(target)
}

/// Whether `path` names an entry directly in `dir`, compared as bytes: a
/// directory name need not be UTF-8.
fn in_directory(path: &[u8], dir: &[u8]) -> bool {
    Path::new(OsStr::from_bytes(path)).parent() == Some(Path::new(OsStr::from_bytes(dir)))
}

/// One descriptor sharing a held flock on a file we look for.
struct Share {
    pid: u32,
    start_ticks: Option<u64>,
    inode: LockedInode,
    location: Location,
}

#[derive(Default)]
struct DescriptorFindings {
    shares: Vec<Share>,
    /// (socket inode, pid) for each wanted socket found.
    sockets: Vec<(u64, u32)>,
    unreadable: Vec<u32>,
    /// Some open failed with EMFILE or ENFILE.
    exhausted: bool,
}

/// The longest entry getdents(2) returns: the 19-byte `linux_dirent64`
/// header and a 255-byte name with its NUL, rounded up to 8 bytes.
const MAX_DIRENT_BYTES: usize = 280;
/// The getdents(2) buffer: room for about a thousand descriptors per call.
const LISTING_BYTES: usize = 32 * 1024;
/// A descriptor link longer than this is read again with a growing buffer.
const LINK_BYTES: usize = 4096;

/// An open descriptor directory of a process, and whose it is: the
/// process's own `fd`, or a live thread's `task/<tid>/fd`.
struct DescriptorDir {
    fd_dir: OwnedFd,
    /// The thread whose directory it is, when not the leader's.
    task: Option<u32>,
}

impl DescriptorDir {
    /// The directory holding this `fd` and its `fdinfo`.
    fn parent(&self, proc_root: &Path, pid: u32) -> PathBuf {
        let process_dir = proc_root.join(pid.to_string());
        match self.task {
            Some(tid) => process_dir.join("task").join(tid.to_string()),
            None => process_dir,
        }
    }
}

/// The descriptor directory of process `pid`, open, with its entries'
/// names written into `names` (each with its NUL): `/proc/<pid>/fd`, or,
/// when that shows no descriptors, `/proc/<pid>/task/<tid>/fd` of a live
/// thread. A program whose main thread called `pthread_exit` has a zombie
/// leader whose `fd` is empty while its other threads share the descriptor
/// table (and hold its locks) (ECP-0136). Threads are listed only then: a
/// process whose own `fd` lists anything shares that table with its
/// threads (one that called `unshare(CLONE_FILES)` is not looked at).
/// `Ok(None)`: no such process.
fn open_descriptors(
    proc_dir: &OwnedFd,
    pid: u32,
    listing: &mut Vec<u8>,
    names: &mut Vec<u8>,
) -> Result<Option<DescriptorDir>, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    // Relative to the open /proc: two path components, not four.
    let fd_dir = match rustix::fs::openat(proc_dir, format!("{pid}/fd"), flags, Mode::empty()) {
        Ok(dir) => dir,
        Err(Errno::NOENT | Errno::SRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    list_names(&fd_dir, listing, names, true);
    if !names.is_empty() {
        return Ok(Some(DescriptorDir { fd_dir, task: None }));
    }
    let mut tids = Vec::new();
    if let Ok(tasks) = rustix::fs::openat(proc_dir, format!("{pid}/task"), flags, Mode::empty()) {
        list_names(&tasks, listing, &mut tids, false);
    }
    for tid in tids.split_inclusive(|b| *b == 0).filter_map(fd_number) {
        if tid == pid {
            continue;
        }
        let path = format!("{pid}/task/{tid}/fd");
        let Ok(dir) = rustix::fs::openat(proc_dir, path, flags, Mode::empty()) else {
            continue;
        };
        list_names(&dir, listing, names, true);
        if !names.is_empty() {
            return Ok(Some(DescriptorDir {
                fd_dir: dir,
                task: Some(tid),
            }));
        }
    }
    Ok(Some(DescriptorDir { fd_dir, task: None }))
}

/// The numeric entries of an open `/proc` directory (descriptors, or
/// threads), written into `names` NUL-terminated, read with getdents(2)
/// straight into one reused buffer (no opendir bookkeeping). getdents
/// stops filling its buffer only at the end of the listing or when the
/// next entry does not fit, so a reply that leaves room for the longest
/// entry is the whole listing and the call that would return nothing is
/// skipped: one system call per process, not two. `fresh`: empty `names`
/// first.
fn list_names(dir: &OwnedFd, listing: &mut Vec<u8>, names: &mut Vec<u8>, fresh: bool) {
    if fresh {
        names.clear();
    }
    listing.clear();
    if listing.capacity() < LISTING_BYTES {
        listing.reserve(LISTING_BYTES);
    }
    // `RawDir` may skip a few bytes to align the buffer.
    let room = listing.capacity() - std::mem::align_of::<u64>();
    let mut entries = RawDir::new(dir, listing.spare_capacity_mut());
    let mut filled = 0;
    while let Some(Ok(entry)) = entries.next() {
        let name = entry.file_name().to_bytes_with_nul();
        // The kernel's record length for this name (linux_dirent64).
        filled += (19 + name.len()).next_multiple_of(8);
        if name.first().is_some_and(u8::is_ascii_digit) {
            names.extend_from_slice(name);
        }
        if entries.is_buffer_empty() {
            if filled + MAX_DIRENT_BYTES <= room {
                break;
            }
            filled = 0;
        }
    }
}

/// The number a `/proc` entry name (with its NUL) stands for.
fn fd_number(name: &[u8]) -> Option<u32> {
    let digits = name.strip_suffix(b"\0").unwrap_or(name);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The link of descriptor `name` (NUL-terminated) in `fd_dir`, read
/// relative to the open directory (`readlinkat`: one path component, not
/// four) into the reused `link` buffer.
fn read_link<'a>(fd_dir: &OwnedFd, name: &[u8], link: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    let name = CStr::from_bytes_with_nul(name).ok()?;
    link.clear();
    if link.capacity() < LINK_BYTES {
        link.reserve(LINK_BYTES);
    }
    let capacity = link.capacity();
    let length = rustix::fs::readlinkat_raw(fd_dir, name, link.spare_capacity_mut())
        .ok()?
        .0
        .len();
    if length < capacity {
        // SAFETY: readlinkat_raw initialised the first `length` bytes of
        // the spare capacity, which starts at index 0 of the cleared vector.
        unsafe { link.set_len(length) };
    } else {
        // Filled the buffer: perhaps cut short; read it whole.
        *link = rustix::fs::readlinkat(fd_dir, name, Vec::new())
            .ok()?
            .into_bytes();
    }
    Some(link.as_slice())
}

/// One worker's means of reading descriptors: `/proc` open, its reused
/// buffers, and its own copy of what is still looked for by inode (a found
/// one's path is matched as text from then on).
struct DescriptorReader<'a> {
    proc_root: &'a Path,
    proc_dir: Option<OwnedFd>,
    listing: Vec<u8>,
    names: Vec<u8>,
    link: Vec<u8>,
    by_inode: BTreeSet<LockedInode>,
    targets: HashSet<Vec<u8>>,
}

impl<'a> DescriptorReader<'a> {
    fn new(proc_root: &'a Path, wanted: &Wanted<'_>) -> Self {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        Self {
            proc_root,
            proc_dir: rustix::fs::open(proc_root, flags, Mode::empty()).ok(),
            listing: Vec::new(),
            names: Vec::new(),
            link: Vec::new(),
            by_inode: wanted.by_inode.clone(),
            targets: wanted.targets.clone(),
        }
    }

    /// Looks through the descriptors of `pids` for the ones `wanted` names
    /// and keeps those whose fdinfo shows a held flock. Only their fdinfo
    /// files are read. Links are compared by a byte prefix before anything
    /// is parsed: nearly all (`/dev/null`, pipes, sockets) fail it.
    fn scan(&mut self, pids: &[u32], wanted: &Wanted<'_>) -> DescriptorFindings {
        let mut found = DescriptorFindings::default();
        let Some(proc_dir) = &self.proc_dir else {
            return found;
        };
        for &pid in pids {
            let dir = match open_descriptors(proc_dir, pid, &mut self.listing, &mut self.names) {
                Ok(Some(dir)) => dir,
                Err(Errno::ACCESS | Errno::PERM) => {
                    found.unreadable.push(pid);
                    continue;
                }
                Err(Errno::MFILE | Errno::NFILE) => {
                    found.exhausted = true;
                    found.unreadable.push(pid);
                    continue;
                }
                // Exited meanwhile, or a kernel thread: nothing to see.
                Ok(None) | Err(_) => continue,
            };
            let mut start_ticks = None;
            for name in self.names.split_inclusive(|b| *b == 0) {
                let Some(target) = read_link(&dir.fd_dir, name, &mut self.link) else {
                    continue;
                };
                if !wanted.sockets.is_empty()
                    && let Some(inode) = socket_inode(target)
                {
                    if wanted.sockets.contains(&inode) {
                        found.sockets.push((inode, pid));
                    }
                    continue;
                }
                let path = without_deleted_suffix(target);
                let in_dir = wanted
                    .lock_dir
                    .is_some_and(|dir| path.starts_with(dir) && in_directory(path, dir));
                let by_path = in_dir || (!self.targets.is_empty() && self.targets.contains(path));
                // Looking by inode reads fdinfo's `lock:` rows, never
                // stat(2): see `descriptor_holding`.
                if !by_path && (self.by_inode.is_empty() || target.first() != Some(&b'/')) {
                    continue;
                }
                let fd = String::from_utf8_lossy(name.strip_suffix(b"\0").unwrap_or(name));
                let parent = dir.parent(self.proc_root, pid);
                let held = flocks_held_by(&parent.join("fdinfo").join(fd.as_ref()));
                if !by_path && !held.iter().any(|inode| self.by_inode.contains(inode)) {
                    continue;
                }
                let deleted = path.len() != target.len();
                let path = path.to_vec();
                for inode in held {
                    if self.by_inode.remove(&inode) {
                        self.targets.insert(path.clone());
                    }
                    if start_ticks.is_none() {
                        start_ticks = process::start_ticks_of(self.proc_root, pid);
                    }
                    found.shares.push(Share {
                        pid,
                        start_ticks,
                        inode,
                        location: Location {
                            path: PathBuf::from(OsStr::from_bytes(&path)),
                            deleted,
                            via: parent.join("fd").join(fd.as_ref()),
                        },
                    });
                }
            }
        }
        found
    }
}

/// The files on which the descriptor whose fdinfo is at `fdinfo` holds a
/// flock(2) lock (held, not awaited): its `lock:` rows (proc(5)). Reading
/// fdinfo never asks the file's filesystem, so a hung server behind the
/// descriptor cannot hang us; unreadable (gone, or another user's) is none.
#[must_use]
pub fn flocks_held_by(fdinfo: &Path) -> Vec<LockedInode> {
    crate::proc_file::read_to_string(fdinfo).map_or_else(
        |_| Vec::new(),
        |info| {
            proc_locks::parse_fdinfo_locks(&info)
                .iter()
                .filter(|row| row.kind == LockKind::Flock && !row.waiting)
                .map(LockedInode::of_row)
                .collect()
        },
    )
}

/// The inode of a descriptor link `socket:[inode]` (proc(5)).
fn socket_inode(target: &[u8]) -> Option<u64> {
    let digits = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// True when the proc filesystem at `proc_root` hides processes (`hidepid`
/// other than 0/off), per `/proc/self/mountinfo`.
fn hidepid_in_force(proc_root: &Path) -> bool {
    crate::proc_file::read_to_string(&proc_root.join("self/mountinfo"))
        .is_ok_and(|mountinfo| mountinfo_hides_pids(&mountinfo, &proc_root.to_string_lossy()))
}

/// True when `mountinfo` (proc(5) format) shows a proc filesystem mounted
/// at `mount_point` with `hidepid` set to anything but 0/off.
fn mountinfo_hides_pids(mountinfo: &str, mount_point: &str) -> bool {
    mountinfo.lines().any(|line| {
        let mut halves = line.splitn(2, " - ");
        let (Some(mount), Some(fs)) = (halves.next(), halves.next()) else {
            return false;
        };
        mount.split_whitespace().nth(4) == Some(mount_point)
            && fs.starts_with("proc ")
            && fs.split([' ', ',']).any(|option| {
                option
                    .strip_prefix("hidepid=")
                    .is_some_and(|v| v != "0" && v != "off")
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidepid_is_read_from_the_proc_mount_only() {
        let hidden = "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw,hidepid=invisible\n";
        assert!(mountinfo_hides_pids(hidden, "/proc"));
        let open = "22 1 0:21 / /proc rw,relatime shared:12 - proc proc rw\n\
                    40 22 0:33 / /proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt_misc rw\n";
        assert!(!mountinfo_hides_pids(open, "/proc"));
        let zero = "22 1 0:21 / /proc rw - proc proc rw,hidepid=0\n";
        assert!(!mountinfo_hides_pids(zero, "/proc"));
        // Another proc mount (a container's) does not describe ours.
        let elsewhere = "90 1 0:50 / /srv/ct/proc rw - proc proc rw,hidepid=2\n";
        assert!(!mountinfo_hides_pids(elsewhere, "/proc"));
    }

    #[test]
    fn descriptor_links_are_matched_to_the_lock_directory_as_bytes() {
        let dir = b"/run/locks-\xff";
        assert!(in_directory(b"/run/locks-\xff/a.lock", dir));
        assert!(in_directory(
            without_deleted_suffix(b"/run/locks-\xff/a.lock (deleted)"),
            dir
        ));
        assert!(!in_directory(b"/run/locks-\xff/sub/a.lock", dir));
        assert!(!in_directory(b"socket:[1234]", dir));
        assert_eq!(without_deleted_suffix(b"/x/a.lock"), b"/x/a.lock");
    }

    #[test]
    fn a_mounts_device_is_field_three_of_its_mountinfo_line() {
        let mountinfo = "22 1 0:21 / /proc rw - proc proc rw\n\
                         47 27 0:40 / /srv/b rw,relatime - btrfs /dev/loop0 rw,subvol=/\n\
                         48 27 259:3 /sub /srv/s rw - btrfs /dev/nvme0n1p3 rw\n";
        let devices = mount_devices(mountinfo);
        assert_eq!(devices.get(&47), Some(&(0, 40)));
        assert_eq!(devices.get(&48), Some(&(259, 3)));
        assert_eq!(devices.get(&99), None);
    }

    #[test]
    fn a_listing_longer_than_one_getdents_buffer_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let listing_of = |count: u32| {
            for n in 0..count {
                fs::write(dir.path().join(n.to_string()), b"").unwrap();
            }
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let open = rustix::fs::open(dir.path(), flags, Mode::empty()).unwrap();
            let (mut listing, mut names) = (Vec::new(), Vec::new());
            list_names(&open, &mut listing, &mut names, true);
            let mut numbers: Vec<u32> = names
                .split_inclusive(|b| *b == 0)
                .filter_map(fd_number)
                .collect();
            numbers.sort_unstable();
            numbers
        };
        // One reply with room to spare, then thousands of entries over
        // several replies (24 bytes each: 32 KiB holds about 1,365).
        assert_eq!(listing_of(3), vec![0, 1, 2]);
        assert_eq!(listing_of(5000), (0..5000).collect::<Vec<_>>());
    }

    #[test]
    fn socket_links_give_their_inode_and_nothing_else_does() {
        assert_eq!(socket_inode(b"socket:[4026531993]"), Some(4_026_531_993));
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12"), None);
        assert_eq!(socket_inode(b"pipe:[12]"), None);
        assert_eq!(socket_inode(b"/run/socket:[12]"), None);
    }
}
