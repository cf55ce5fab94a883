//! "The source lock is free", asked of the kernel (ECP-0135 section 3).
//!
//! A cluster launcher releases its keys only when no process still holds
//! the lock description its program inherited, never merely when the
//! program's process group is empty: a `setsid` or double-forked helper
//! holding the descriptor is a reader the next node must not start beside.
//!
//! The launcher holds the same description itself, so it cannot ask while
//! it keeps it: [`Watched::let_go`] closes its copy *without* `LOCK_UN`
//! (which would unlock the description for every process sharing it, the
//! helper included: flock(2)), keeping a fresh open file description of
//! the same inode to ask with. Then [`Watched::is_free`] tries
//! `flock(LOCK_EX|LOCK_NB)` on that fresh description, releasing at once:
//! taken means no process holds the old one. Refused means either a process
//! still holds the old description, or a local launcher took the lock the
//! instant it became free; `/proc/locks` tells which, as it names the
//! process that *took* a flock: the old description was taken by us.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::holder::{HolderScan, LockedInode};
use crate::lock::HeldLock;
use crate::proc_locks::LockTable;

const PROC: &str = "/proc";

/// A lock the program inherited, as the launcher watches it after its
/// own copy is gone.
#[derive(Debug)]
pub struct Watched {
    inode: LockedInode,
    path: PathBuf,
    dir: PathBuf,
    /// A second open file description of the lock's inode, unlocked: the
    /// kernel is asked through it.
    fresh: Option<File>,
}

/// What the kernel says of a watched lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freedom {
    /// A fresh description took it: nobody holds the inherited one.
    Free,
    /// Taken by another process since the inherited one was let go (a
    /// local launcher waiting for it): free of our readers.
    TakenByAnother(u32),
    /// Still held through the inherited description (or by a process the
    /// kernel does not name here); the text says by whom, when known.
    Held(String),
}

impl Watched {
    /// Watches `held`: its inode, and a fresh description of it opened
    /// through `/proc/self/fd` (the same inode even if the path was
    /// renamed or removed meanwhile).
    ///
    /// # Errors
    /// When the descriptor cannot be `fstat`ed.
    pub fn of(held: &HeldLock) -> io::Result<Self> {
        let inode = LockedInode::of_file(&held.lock)?;
        // Opening /proc/self/fd/N makes a new open file description (proc(5)).
        let fresh = File::open(format!("/proc/self/fd/{}", held.lock.as_raw_fd())).ok();
        Ok(Self {
            inode,
            path: held.path.clone(),
            dir: held
                .path
                .parent()
                .map_or_else(|| PathBuf::from("/"), Path::to_path_buf),
            fresh,
        })
    }

    /// The lock file's path (for messages).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every process other than this one whose descriptors show the lock
    /// (fdinfo `lock:` rows, as `status` finds holders).
    #[must_use]
    pub fn holders(&self) -> Vec<(u32, Option<u64>)> {
        let me = std::process::id();
        let listed = BTreeSet::from([self.inode]);
        HolderScan::take(Path::new(PROC), &self.dir, &listed)
            .holders(self.inode, None)
            .into_iter()
            .filter(|holder| holder.pid != me)
            .map(|holder| (holder.pid, holder.start_ticks))
            .collect()
    }

    /// Closes the launcher's copy of the inherited description without
    /// unlocking it: `LOCK_UN` (nix's `Flock` drop) would free the lock for
    /// a helper that still holds the description, and the kernel would
    /// then answer "free" while it reads.
    pub fn let_go(held: HeldLock) {
        let fd = held.lock.as_raw_fd();
        std::mem::forget(held.lock);
        // SAFETY: `fd` belonged to the `File` inside the forgotten `Flock`;
        // nothing else owns or uses it, so closing it here is its only close.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }

    /// Asks the kernel; call after [`Watched::let_go`].
    #[must_use]
    pub fn is_free(&self) -> Freedom {
        let fresh = match &self.fresh {
            Some(file) => file.try_clone(),
            None => File::open(&self.path),
        };
        let fresh = match fresh {
            Ok(file) => file,
            // Gone (deleted and never reopened): no description of ours can
            // be asked; the holder scan is all there is.
            Err(e) => return self.by_scan(&format!("cannot open it again: {e}")),
        };
        match Flock::lock(fresh, FlockArg::LockExclusiveNonblock) {
            Ok(taken) => {
                drop(taken);
                Freedom::Free
            }
            Err((_, Errno::EWOULDBLOCK)) => self.by_taker(),
            Err((_, e)) => self.by_scan(&format!("flock: {e}")),
        }
    }

    /// Refused: whose lock is it? `/proc/locks` names the taker.
    fn by_taker(&self) -> Freedom {
        let me = std::process::id();
        let table = LockTable::read(Path::new(PROC)).unwrap_or_default();
        let takers: Vec<Option<u32>> = table
            .held_flocks()
            .filter(|row| {
                (row.dev_major, row.dev_minor, row.inode)
                    == (self.inode.dev_major, self.inode.dev_minor, self.inode.inode)
            })
            .map(|row| row.pid)
            .collect();
        match takers.as_slice() {
            [Some(pid)] if *pid != me => Freedom::TakenByAnother(*pid),
            _ => self.by_scan("the inherited description still holds it"),
        }
    }

    fn by_scan(&self, why: &str) -> Freedom {
        let holders: Vec<String> = self
            .holders()
            .iter()
            .map(|(pid, _)| pid.to_string())
            .collect();
        if holders.is_empty() {
            Freedom::Held(format!("{why}, by no process this launcher can see"))
        } else {
            Freedom::Held(format!("{why}, by pid {}", holders.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::Access;
    use std::process::Command;

    fn held(dir: &Path) -> HeldLock {
        let path = dir.join("source.lock");
        let file = File::create(&path).unwrap();
        HeldLock {
            lock: Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap(),
            path,
            access: Access::ReadWrite,
        }
    }

    #[test]
    fn a_lock_nobody_else_holds_is_free_once_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let held = held(dir.path());
        let watched = Watched::of(&held).unwrap();
        assert!(watched.holders().is_empty());
        Watched::let_go(held);
        assert_eq!(free_soon(&watched), Freedom::Free);
        // Asking released what it took.
        assert_eq!(free_soon(&watched), Freedom::Free);
    }

    /// The answer once it is `Free`, or the last within 5 s: another test's
    /// child holds every descriptor of this process between its fork and
    /// its exec (close-on-exec acts only at the exec), ours included.
    fn free_soon(watched: &Watched) -> Freedom {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let answer = watched.is_free();
            if answer == Freedom::Free || std::time::Instant::now() > until {
                return answer;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn a_lock_a_child_still_holds_is_not_free_after_the_launcher_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let held = held(dir.path());
        let watched = Watched::of(&held).unwrap();
        // A child sharing the description, as a helper inherits it; only
        // the child clears close-on-exec (other tests spawn meanwhile).
        let fd = held.lock.as_raw_fd();
        let mut command = Command::new("sleep");
        command.arg("30");
        // SAFETY: fcntl(F_SETFD) is async-signal-safe and touches only the
        // child's copy of a descriptor this process owns.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        let pid = child.id();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !watched.holders().iter().any(|(p, _)| *p == pid) {
            assert!(
                std::time::Instant::now() < until,
                "child {pid} (fd {fd}) not seen"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Watched::let_go(held);
        let answer = watched.is_free();
        assert!(
            matches!(&answer, Freedom::Held(why) if why.contains(&pid.to_string())),
            "{answer:?}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(free_soon(&watched), Freedom::Free);
    }
}
