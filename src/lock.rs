//! The per-source lock: a `flock(2)` on `<lock-dir>/<name>.lock`.
//!
//! Invariants:
//! - The lock is `flock(2)`, taken through `nix::fcntl::Flock`, not whatever
//!   std's `File::try_lock` maps to (ECP-0123): its semantics are part of the
//!   contract. The lock belongs to the open file description, so every
//!   process that inherits the descriptor holds it, and it ends when the last
//!   of them closes it or dies (flock(2), "locks created by `flock()` are
//!   associated with an open file description").
//! - A lock only excludes others while the path still names the locked
//!   inode, so after locking we compare `fstat` of the descriptor with
//!   `lstat` of the path and start over if the file was replaced or unlinked
//!   while we waited. We never delete or replace lock files ourselves.
//! - Lock files are opened with `O_NOFOLLOW` and must be regular files; the
//!   directory must not be a symlink or writable by others unless it is a
//!   root-owned sticky directory, so another user cannot steer our open.

use std::fs::{self, DirBuilder, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};

use crate::error::Error;

/// Mode of a lock directory `ec-launch` creates (before umask).
const LOCK_DIR_MODE: u32 = 0o755;
/// Mode of a lock file `ec-launch` creates (before umask).
const LOCK_FILE_MODE: u32 = 0o644;
/// How often the path may be found replaced before we give up; reaching it
/// means something is deleting lock files in a loop.
const MAX_ATTEMPTS: u32 = 64;

/// What to do when another process holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyPolicy {
    /// Give up at once.
    Skip,
    /// Block in `flock(2)` until free, or until the timeout passes.
    Wait { timeout: Option<Duration> },
}

/// Whether we could open the lock file for writing. A root-created file is
/// only readable for the service user; `flock(2)` works on any descriptor,
/// so the lock is still good, but the launch record cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// A lock we hold. Dropping it unlocks; exec keeps it.
#[derive(Debug)]
pub struct HeldLock {
    pub lock: Flock<File>,
    pub path: PathBuf,
    pub access: Access,
}

/// The outcome of trying to take a source lock.
#[derive(Debug)]
pub enum Acquired {
    Held(HeldLock),
    /// Someone else holds it; the file is open (unlocked) so the caller can
    /// read its record and identify the holders.
    Busy {
        file: File,
        timed_out: bool,
    },
}

/// Makes sure `dir` exists and is safe to create lock files in.
///
/// # Errors
/// [`Error::CreateLockDir`], [`Error::InspectLockDir`] and the unsafe-directory variants.
pub fn ensure_lock_dir(dir: &Path) -> Result<(), Error> {
    let metadata = match fs::symlink_metadata(dir) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(LOCK_DIR_MODE)
                .create(dir)
                .map_err(|source| Error::CreateLockDir {
                    path: dir.to_owned(),
                    source,
                })?;
            fs::symlink_metadata(dir).map_err(|source| Error::InspectLockDir {
                path: dir.to_owned(),
                source,
            })?
        }
        Err(source) => {
            return Err(Error::InspectLockDir {
                path: dir.to_owned(),
                source,
            });
        }
    };
    ensure_safe_dir(dir, &metadata)
}

fn ensure_safe_dir(dir: &Path, metadata: &Metadata) -> Result<(), Error> {
    let path = dir.to_owned();
    if metadata.file_type().is_symlink() {
        return Err(Error::LockDirSymlink { path });
    }
    if !metadata.is_dir() {
        return Err(Error::LockDirNotDirectory { path });
    }
    let mode = metadata.mode() & 0o7777;
    let others_can_write = mode & 0o002 != 0;
    let root_sticky = metadata.uid() == 0 && mode & 0o1000 != 0;
    if others_can_write && !root_sticky {
        return Err(Error::LockDirWorldWritable { path, mode });
    }
    Ok(())
}

/// Takes the lock at `path` according to `policy`.
///
/// # Errors
/// Opening or locking failures; never "busy", which is [`Acquired::Busy`].
pub fn acquire(path: &Path, policy: BusyPolicy) -> Result<Acquired, Error> {
    let deadline = match policy {
        BusyPolicy::Wait { timeout: Some(t) } => Some(Instant::now() + t),
        _ => None,
    };
    for _ in 0..MAX_ATTEMPTS {
        let (file, access) = open_lock_file(path)?;
        tracing::trace!(lock_file = %path.display(), ?access, "lock file opened");
        let lock = match policy {
            BusyPolicy::Skip => match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((file, Errno::EWOULDBLOCK)) => {
                    return Ok(Acquired::Busy {
                        file,
                        timed_out: false,
                    });
                }
                Err((_, source)) => return Err(flock_error(path, source)),
            },
            BusyPolicy::Wait { .. } => match wait_for_lock(file, deadline, path)? {
                WaitOutcome::Locked(lock) => lock,
                WaitOutcome::TimedOut(file) => {
                    return Ok(Acquired::Busy {
                        file,
                        timed_out: true,
                    });
                }
            },
        };
        if path_still_names(&lock, path)? {
            return Ok(Acquired::Held(HeldLock {
                lock,
                path: path.to_owned(),
                access,
            }));
        }
        tracing::debug!(lock_file = %path.display(), "lock file was replaced or removed while locking; retrying");
        // Dropping `lock` unlocks the stale inode before the next attempt.
    }
    Err(Error::LockFileUnstable {
        path: path.to_owned(),
        attempts: MAX_ATTEMPTS,
    })
}

fn flock_error(path: &Path, source: Errno) -> Error {
    Error::Flock {
        path: path.to_owned(),
        source,
    }
}

enum WaitOutcome {
    Locked(Flock<File>),
    TimedOut(File),
}

/// Blocks in `flock(LOCK_EX)` (no polling). A timeout runs the blocking call
/// on a helper thread and stops waiting for it when time is up: a signal
/// timer would need a handler in the wrapper, which must install none. A
/// thread still blocked when we give up dies with the process, and any lock
/// it then gets is released when the process exits a moment later.
fn wait_for_lock(file: File, deadline: Option<Instant>, path: &Path) -> Result<WaitOutcome, Error> {
    let Some(deadline) = deadline else {
        return blocking_lock(file)
            .map(WaitOutcome::Locked)
            .map_err(|e| flock_error(path, e));
    };
    // A second descriptor for the same open file, kept here so a timed-out
    // caller still has the file to read the holder's record from.
    let kept = file.try_clone().map_err(|source| Error::OpenLockFile {
        path: path.to_owned(),
        source,
    })?;
    let (sender, receiver) = mpsc::channel();
    thread::Builder::new()
        .name("flock-wait".into())
        .spawn(move || {
            let _ = sender.send(blocking_lock(file));
        })
        .map_err(|source| Error::OpenLockFile {
            path: path.to_owned(),
            source,
        })?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    match receiver.recv_timeout(remaining) {
        Ok(Ok(lock)) => Ok(WaitOutcome::Locked(lock)),
        Ok(Err(e)) => Err(flock_error(path, e)),
        Err(_) => Ok(WaitOutcome::TimedOut(kept)),
    }
}

fn blocking_lock(mut file: File) -> Result<Flock<File>, Errno> {
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(lock) => return Ok(lock),
            Err((back, Errno::EINTR)) => file = back,
            Err((_, e)) => return Err(e),
        }
    }
}

/// True when `path` still names the inode `lock` is on.
fn path_still_names(lock: &Flock<File>, path: &Path) -> Result<bool, Error> {
    let held = lock.metadata().map_err(|source| Error::OpenLockFile {
        path: path.to_owned(),
        source,
    })?;
    match fs::symlink_metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::OpenLockFile {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Opens (creating if needed) the lock file without following links and
/// without blocking on a planted FIFO, and checks it is a regular file.
fn open_lock_file(path: &Path) -> Result<(File, Access), Error> {
    // Look before opening: opening a planted device node can have effects.
    match fs::symlink_metadata(path) {
        Ok(metadata) => ensure_regular(path, &metadata)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::OpenLockFile {
                path: path.to_owned(),
                source,
            });
        }
    }
    let flags = (OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits();
    let read_write = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(LOCK_FILE_MODE)
        .custom_flags(flags)
        .open(path);
    let (file, access) = match read_write {
        Ok(file) => (file, Access::ReadWrite),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let read_only = OpenOptions::new().read(true).custom_flags(flags).open(path);
            match read_only {
                Ok(file) => (file, Access::ReadOnly),
                // Not there and we may not create it: report the create failure.
                Err(_) => return Err(open_error(path, e)),
            }
        }
        Err(e) => return Err(open_error(path, e)),
    };
    // And look again at what we opened: the path may have changed between.
    let metadata = file.metadata().map_err(|source| open_error(path, source))?;
    ensure_regular(path, &metadata)?;
    // O_NONBLOCK was only for the open; the descriptor is handed to the
    // program, which should see ordinary blocking semantics.
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty())).map_err(|source| {
        Error::PassLock {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok((file, access))
}

fn open_error(path: &Path, source: io::Error) -> Error {
    if source.raw_os_error() == Some(Errno::ELOOP as i32) {
        return Error::LockFileSymlink {
            path: path.to_owned(),
        };
    }
    Error::OpenLockFile {
        path: path.to_owned(),
        source,
    }
}

fn ensure_regular(path: &Path, metadata: &Metadata) -> Result<(), Error> {
    let file_type = metadata.file_type();
    let kind = if file_type.is_file() {
        return Ok(());
    } else if file_type.is_symlink() {
        return Err(Error::LockFileSymlink {
            path: path.to_owned(),
        });
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "device node"
    } else {
        "special file"
    };
    Err(Error::LockFileNotRegular {
        path: path.to_owned(),
        kind,
    })
}
