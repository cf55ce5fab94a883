//! Who holds a lock, according to the kernel.
//!
//! A lock file's record says who launched last; the kernel's lock table says
//! who holds the lock now. `/proc/locks` names the process that *took* a
//! flock(2) lock, which may have exited while a child that inherited the
//! descriptor still holds it, so a row's PID is checked for liveness.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::cgroup;
use crate::proc_locks::{self, LockKind};

/// A process holding (or recorded as holding) a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// `/proc/<pid>/comm`, when readable.
    pub command: Option<String>,
    /// The systemd unit, when the process is in one.
    pub unit: Option<String>,
    /// False when the kernel's row names a PID that has exited: the lock is
    /// then held by a process that inherited the descriptor.
    pub alive: bool,
}

/// The device and inode a lock is on, in `/proc/locks` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockedInode {
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
}

impl LockedInode {
    /// The inode an open lock file refers to.
    ///
    /// # Errors
    /// When `fstat` fails.
    pub fn of_file(file: &File) -> std::io::Result<Self> {
        let metadata = file.metadata()?;
        let dev = metadata.dev();
        Ok(Self {
            // Truncation is fine: Linux majors and minors are 12 and 20 bits.
            #[allow(clippy::cast_possible_truncation)]
            dev_major: nix::sys::stat::major(dev) as u32,
            #[allow(clippy::cast_possible_truncation)]
            dev_minor: nix::sys::stat::minor(dev) as u32,
            inode: metadata.ino(),
        })
    }
}

/// The processes the kernel's lock table names as holding a flock(2) lock
/// on `inode`, as seen under `proc_root` (normally `/proc`).
#[must_use]
pub fn lock_table_holders(proc_root: &Path, inode: LockedInode) -> Vec<Holder> {
    let Ok(table) = fs::read_to_string(proc_root.join("locks")) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = proc_locks::parse(&table)
        .into_iter()
        .filter(|row| {
            row.kind == LockKind::Flock && row.holds(inode.dev_major, inode.dev_minor, inode.inode)
        })
        .filter_map(|row| row.pid)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter()
        .map(|pid| describe(proc_root, pid))
        .collect()
}

/// Reads what `/proc` says about `pid`.
#[must_use]
pub fn describe(proc_root: &Path, pid: u32) -> Holder {
    let dir = proc_root.join(pid.to_string());
    let command = fs::read_to_string(dir.join("comm"))
        .ok()
        .map(|c| c.trim_end().to_owned());
    Holder {
        pid,
        alive: command.is_some(),
        command,
        unit: cgroup::unit_of_pid(proc_root, pid),
    }
}
