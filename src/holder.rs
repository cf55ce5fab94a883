//! Who holds a lock, according to the kernel.
//!
//! A lock file's record says who launched last; the kernel says who holds
//! the lock now, in two places (proc(5)):
//! - `/proc/locks` lists each flock(2) lock once, with the PID that *took*
//!   it. After the program forks a helper and exits, that PID is dead while
//!   the helper, which inherited the descriptor, holds the lock.
//! - `/proc/<pid>/fdinfo/<fd>` has a `lock:` line for every lock owned by
//!   that descriptor's open file description, so every process sharing it
//!   shows the lock, whoever took it.
//!
//! [`HolderScan`] reads both once: the lock table, then the descriptors of
//! every visible process that point into the lock directory (only those
//! fdinfo files are read, which keeps a scan of thousands of processes
//! cheap). Descriptors whose file was deleted while locked are kept as
//! orphans: such a lock still excludes nobody who opens the path anew.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;

use rustix::fs::{Mode, OFlags, RawDir};
use rustix::io::Errno;

use crate::proc_locks::{self, LockKind, LockRow};
use crate::process::{self, BootClock, ProcessInfo};

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
    /// The inode of an open file.
    ///
    /// # Errors
    /// When `fstat` fails.
    pub fn of_file(file: &File) -> io::Result<Self> {
        Ok(Self::of_metadata(&file.metadata()?))
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

    fn of_row(row: &LockRow) -> Self {
        Self {
            dev_major: row.dev_major,
            dev_minor: row.dev_minor,
            inode: row.inode,
        }
    }
}

/// A held lock whose file was deleted: seen through a holder's descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanedLock {
    pub inode: LockedInode,
    /// The path the file had.
    pub path: PathBuf,
    /// A descriptor through which its contents (the record) can be read.
    pub via: PathBuf,
}

/// One snapshot of flock(2) holders under a lock directory.
#[derive(Debug, Default)]
pub struct HolderScan {
    /// Inodes with a held (not awaited) flock, and the PIDs that took them.
    table: BTreeMap<LockedInode, BTreeSet<Option<u32>>>,
    /// Processes with a descriptor sharing each held lock.
    sharers: BTreeMap<LockedInode, BTreeSet<u32>>,
    orphans: BTreeMap<LockedInode, OrphanedLock>,
    /// Every PID listed in `/proc` by the descriptor scan, when one ran.
    visible_pids: Option<HashSet<u32>>,
    /// Processes whose descriptors we may not read (other users', unless root).
    pub uninspectable: usize,
    /// `/proc` is mounted with `hidepid`, hiding other users' processes.
    pub hidepid: bool,
    clock: Option<BootClock>,
    proc_root: PathBuf,
}

impl HolderScan {
    /// Scans `/proc` under `proc_root` for locks on files in `lock_dir`.
    #[must_use]
    pub fn take(proc_root: &Path, lock_dir: &Path) -> Self {
        let mut scan = Self::lock_table(proc_root);
        scan.hidepid = hidepid_in_force(proc_root);
        // Nothing held anywhere: no process can hold one of ours.
        if !scan.table.is_empty() {
            let lock_dir = lock_dir
                .canonicalize()
                .unwrap_or_else(|_| lock_dir.to_owned());
            scan.scan_descriptors(&lock_dir);
        }
        scan
    }

    /// Reads only `/proc/locks`: enough to name a holder that took its lock
    /// and is still alive, at a fraction of a full scan's cost. Holders that
    /// merely share the descriptor are not found this way.
    #[must_use]
    pub fn lock_table(proc_root: &Path) -> Self {
        let mut scan = Self {
            clock: BootClock::read(),
            proc_root: proc_root.to_owned(),
            ..Self::default()
        };
        if let Ok(text) = fs::read_to_string(proc_root.join("locks")) {
            for row in proc_locks::parse(&text) {
                if row.kind == LockKind::Flock && !row.waiting {
                    scan.table
                        .entry(LockedInode::of_row(&row))
                        .or_default()
                        .insert(row.pid);
                }
            }
        }
        scan
    }

    fn scan_descriptors(&mut self, lock_dir: &Path) {
        let Ok(entries) = fs::read_dir(&self.proc_root) else {
            return;
        };
        let pids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        // The scan is system calls on /proc, thousands of them on a busy
        // node; spreading processes over the cores roughly divides the time.
        let workers = thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let chunk = pids.len().div_ceil(workers).max(1);
        let proc_root = &self.proc_root;
        let results: Vec<DescriptorFindings> = thread::scope(|scope| {
            let handles: Vec<_> = pids
                .chunks(chunk)
                .map(|pids| scope.spawn(move || scan_processes(proc_root, pids, lock_dir)))
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for found in results {
            self.uninspectable += found.uninspectable;
            for share in found.shares {
                self.sharers
                    .entry(share.inode)
                    .or_default()
                    .insert(share.pid);
                if let Some(path) = share.deleted_path {
                    self.orphans
                        .entry(share.inode)
                        .or_insert_with(|| OrphanedLock {
                            inode: share.inode,
                            path,
                            via: share.via,
                        });
                }
            }
        }
        self.visible_pids = Some(pids.into_iter().collect());
    }

    /// True when process `pid` exists (as far as this user can see).
    fn is_alive(&self, pid: u32) -> bool {
        match &self.visible_pids {
            Some(pids) => pids.contains(&pid),
            None => self.proc_root.join(pid.to_string()).exists(),
        }
    }

    /// True when the kernel lists a held flock on `inode`.
    #[must_use]
    pub fn is_held(&self, inode: LockedInode) -> bool {
        self.table.contains_key(&inode)
    }

    /// Every process holding the lock on `inode`: those sharing the locked
    /// open file, and the recorded taker if it is still alive (its
    /// descriptors may be hidden from us).
    #[must_use]
    pub fn holders(&self, inode: LockedInode) -> Vec<ProcessInfo> {
        let mut pids: BTreeSet<u32> = self.sharers.get(&inode).cloned().unwrap_or_default();
        for pid in self.table.get(&inode).into_iter().flatten().flatten() {
            if self.is_alive(*pid) {
                pids.insert(*pid);
            }
        }
        pids.into_iter()
            .map(|pid| process::describe(&self.proc_root, pid, self.clock))
            .collect()
    }

    /// True when the lock table names at least one taker of `inode` and all
    /// of them are alive: the cheap case where no descriptor scan is needed
    /// to name a holder.
    #[must_use]
    pub fn all_takers_alive(&self, inode: LockedInode) -> bool {
        let takers: Vec<Option<u32>> = self
            .table
            .get(&inode)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        !takers.is_empty()
            && takers
                .iter()
                .all(|pid| pid.is_some_and(|pid| self.is_alive(pid)))
    }

    /// PIDs the lock table names as takers of `inode` that no longer exist.
    #[must_use]
    pub fn exited_takers(&self, inode: LockedInode) -> Vec<u32> {
        self.table
            .get(&inode)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|pid| !self.is_alive(**pid))
            .copied()
            .collect()
    }

    /// Held locks whose files were deleted.
    pub fn orphans(&self) -> impl Iterator<Item = &OrphanedLock> {
        self.orphans.values()
    }

    /// Why the holder list may be incomplete, for the operator.
    #[must_use]
    pub fn visibility_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
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
        warnings
    }
}

/// One descriptor sharing a held flock on a file in the lock directory.
struct Share {
    pid: u32,
    inode: LockedInode,
    /// Set when the file was deleted: the path it had.
    deleted_path: Option<PathBuf>,
    /// The descriptor's `/proc/<pid>/fd/<n>` link.
    via: PathBuf,
}

#[derive(Default)]
struct DescriptorFindings {
    shares: Vec<Share>,
    uninspectable: usize,
}

/// Looks through the descriptors of `pids` for ones into `lock_dir` whose
/// fdinfo shows a held flock. Only those fdinfo files are read. On a node
/// with thousands of processes the scan is nearly all system calls into
/// `/proc`, so it makes few: links are read relative to the open `fd`
/// directory (`readlinkat`: one path component per descriptor, not four).
fn scan_processes(proc_root: &Path, pids: &[u32], lock_dir: &Path) -> DescriptorFindings {
    let mut found = DescriptorFindings::default();
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let Ok(proc_dir) = rustix::fs::open(proc_root, flags, Mode::empty()) else {
        return found;
    };
    // getdents(2) straight into one reused buffer: no opendir bookkeeping
    // (fstat, fcntl, lseek) per process.
    let mut buffer: Vec<u8> = Vec::with_capacity(32 * 1024);
    for &pid in pids {
        let fd_dir = match rustix::fs::openat(&proc_dir, format!("{pid}/fd"), flags, Mode::empty())
        {
            Ok(dir) => dir,
            Err(Errno::ACCESS | Errno::PERM) => {
                found.uninspectable += 1;
                continue;
            }
            // Exited meanwhile, or a kernel thread: nothing to see.
            Err(_) => continue,
        };
        let mut names: Vec<CString> = Vec::new();
        let mut entries = RawDir::new(&fd_dir, buffer.spare_capacity_mut());
        while let Some(Ok(entry)) = entries.next() {
            let name = entry.file_name();
            if name.to_bytes().first().is_some_and(u8::is_ascii_digit) {
                names.push(name.to_owned());
            }
        }
        for name in names {
            let Ok(target) = rustix::fs::readlinkat(&fd_dir, name.as_c_str(), Vec::new()) else {
                continue;
            };
            let Some(in_dir) =
                lock_dir_path(Path::new(OsStr::from_bytes(target.as_bytes())), lock_dir)
            else {
                continue;
            };
            let fd = name.to_string_lossy();
            let process_dir = proc_root.join(pid.to_string());
            let Ok(info) = fs::read_to_string(process_dir.join("fdinfo").join(fd.as_ref())) else {
                continue;
            };
            for row in proc_locks::parse_fdinfo_locks(&info) {
                if row.kind != LockKind::Flock || row.waiting {
                    continue;
                }
                found.shares.push(Share {
                    pid,
                    inode: LockedInode::of_row(&row),
                    deleted_path: match &in_dir {
                        LockDirPath::Deleted(path) => Some(path.clone()),
                        LockDirPath::Present => None,
                    },
                    via: process_dir.join("fd").join(fd.as_ref()),
                });
            }
        }
    }
    found
}

enum LockDirPath {
    Present,
    Deleted(PathBuf),
}

/// Whether a descriptor's link target is a file directly in `lock_dir`.
fn lock_dir_path(target: &Path, lock_dir: &Path) -> Option<LockDirPath> {
    let text = target.to_str()?;
    let (path, deleted) = match text.strip_suffix(DELETED_SUFFIX) {
        Some(path) => (Path::new(path), true),
        None => (target, false),
    };
    if path.parent() != Some(lock_dir) {
        return None;
    }
    Some(if deleted {
        LockDirPath::Deleted(path.to_owned())
    } else {
        LockDirPath::Present
    })
}

/// True when the proc filesystem at `proc_root` hides processes (`hidepid`
/// other than 0/off), per `/proc/self/mountinfo`.
fn hidepid_in_force(proc_root: &Path) -> bool {
    fs::read_to_string(proc_root.join("self/mountinfo"))
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
    fn descriptor_links_into_the_lock_directory_are_recognised() {
        let dir = Path::new("/run/every-channel/source-locks");
        assert!(matches!(
            lock_dir_path(Path::new("/run/every-channel/source-locks/a.lock"), dir),
            Some(LockDirPath::Present)
        ));
        assert!(matches!(
            lock_dir_path(Path::new("/run/every-channel/source-locks/a.lock (deleted)"), dir),
            Some(LockDirPath::Deleted(p)) if p == dir.join("a.lock")
        ));
        assert!(lock_dir_path(Path::new("/run/every-channel/other/a.lock"), dir).is_none());
        assert!(lock_dir_path(Path::new("socket:[1234]"), dir).is_none());
    }
}
