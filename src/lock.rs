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
//! - The lock directory, every directory above it and the lock file pass
//!   the one trust rule of [`crate::path_trust`] (ECP-0129), so no other user
//!   can steer our open or replace the file under us. Lock files are opened
//!   with `O_NOFOLLOW` and must be regular files.
//! - We create lock files `0660` and lock directories `0755` whatever the
//!   umask: users outside the file's user and group cannot open a lock file,
//!   so they cannot `flock` it and block every publisher (ECP-0129). In the
//!   NixOS module's setgid directory every file gets the service's group, so
//!   a file root created in a manual run stays usable by the service.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};

use crate::error::Error;
use crate::path_trust::{self, Launcher, LockDir};

/// Mode of a lock directory `ec-launch` creates, set explicitly (no umask).
const LOCK_DIR_MODE: u32 = 0o755;
/// Mode of a lock file `ec-launch` creates, set explicitly (no umask): read
/// and write for its user and group, nothing for others.
const LOCK_FILE_MODE: u32 = 0o660;
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

/// Makes sure `dir` exists and that it and every directory above it pass
/// the trust rule; creates it (mode [`LOCK_DIR_MODE`]) when missing.
///
/// # Errors
/// [`Error::CreateLockDir`], [`Error::InspectLockDir`] and the untrusted-path variants.
pub fn ensure_lock_dir(dir: &Path, me: &Launcher) -> Result<(), Error> {
    if path_trust::check_lock_dir(dir, me)? == LockDir::Trusted {
        return crate::lock_filesystem::ensure_local_locks(dir);
    }
    let create_error = |source| Error::CreateLockDir {
        path: dir.to_owned(),
        source,
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(LOCK_DIR_MODE)
            .create(parent)
            .map_err(create_error)?;
    }
    match DirBuilder::new().mode(LOCK_DIR_MODE).create(dir) {
        // Ours: the mode is what we document, whatever the umask took away.
        Ok(()) => {
            fs::set_permissions(dir, Permissions::from_mode(LOCK_DIR_MODE))
                .map_err(create_error)?;
        }
        // A concurrent launcher (or tmpfiles) was first: its mode stands.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(create_error(e)),
    }
    match path_trust::check_lock_dir(dir, me)? {
        LockDir::Trusted => crate::lock_filesystem::ensure_local_locks(dir),
        LockDir::Missing => Err(create_error(io::Error::from(io::ErrorKind::NotFound))),
    }
}

/// Takes the lock at `path` according to `policy`. When a `Wait` policy
/// finds the lock held and is about to block, `on_wait` is called once with
/// the (unlocked) file: a waiting unit must say whom it waits for, not sit
/// silent in `flock(2)`.
///
/// # Errors
/// Opening or locking failures; never "busy", which is [`Acquired::Busy`].
pub fn acquire(
    path: &Path,
    policy: BusyPolicy,
    me: &Launcher,
    on_wait: &mut dyn FnMut(&File),
) -> Result<Acquired, Error> {
    let mut announced = false;
    // A timeout too large for the clock is no timeout: it would never pass.
    let deadline = match policy {
        BusyPolicy::Wait { timeout: Some(t) } => Instant::now().checked_add(t),
        _ => None,
    };
    for _ in 0..MAX_ATTEMPTS {
        let (file, access, opened) = open_lock_file(path, me)?;
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
            // A free lock is taken without a helper thread, so a zero or tiny
            // timeout never reports a free source as busy.
            BusyPolicy::Wait { .. } => match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((file, Errno::EWOULDBLOCK)) => {
                    // Once: a retry after a replaced file waits on.
                    if !announced {
                        announced = true;
                        on_wait(&file);
                    }
                    match wait_for_lock(file, deadline, path)? {
                        WaitOutcome::Locked(lock) => lock,
                        WaitOutcome::TimedOut(file) => {
                            return Ok(Acquired::Busy {
                                file,
                                timed_out: true,
                            });
                        }
                    }
                }
                Err((_, source)) => return Err(flock_error(path, source)),
            },
        };
        if let Some(held) = held_if_still_named(lock, &opened, path, access)? {
            return Ok(Acquired::Held(held));
        }
    }
    Err(unstable(path))
}

/// [`acquire`] with [`BusyPolicy::Wait`] and no timeout, for a
/// [`crate::lock_waiter::LockWaiter`] thread: blocks in `flock(LOCK_EX)`
/// until the lock is ours (`Some`) or the wait is called off (`None`:
/// `called_off` was set and a signal interrupted the call, or it was set
/// before the call).
///
/// # Errors
/// Opening or locking failures, as [`acquire`].
pub fn acquire_unless_called_off(
    path: &Path,
    me: &Launcher,
    called_off: &AtomicBool,
) -> Result<Option<HeldLock>, Error> {
    for _ in 0..MAX_ATTEMPTS {
        if called_off.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let (file, access, opened) = open_lock_file(path, me)?;
        let Some(lock) = blocking_lock(file, Some(called_off)).map_err(|e| flock_error(path, e))?
        else {
            return Ok(None);
        };
        if let Some(held) = held_if_still_named(lock, &opened, path, access)? {
            return Ok(Some(held));
        }
    }
    Err(unstable(path))
}

/// Blocks in `flock(LOCK_SH)` on `file` until no one holds it exclusively
/// (then lets it go at once: `true`), or the wait is called off (`false`,
/// see [`crate::lock_waiter`]). For waiting out a holder whose lock file
/// is gone from its path: the inode is reached through its descriptor.
pub fn block_until_free(mut file: File, called_off: &AtomicBool) -> bool {
    loop {
        if called_off.load(Ordering::SeqCst) {
            return false;
        }
        match Flock::lock(file, FlockArg::LockShared) {
            Ok(_unlocked_when_dropped) => return true,
            Err((back, Errno::EINTR)) => file = back,
            Err(_) => return false,
        }
    }
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
        return match blocking_lock(file, None) {
            Ok(Some(lock)) => Ok(WaitOutcome::Locked(lock)),
            // Without a flag to call it off, a wait only ends locked.
            Ok(None) => Err(flock_error(path, Errno::EINTR)),
            Err(e) => Err(flock_error(path, e)),
        };
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Ok(WaitOutcome::TimedOut(file));
    }
    // A second descriptor for the same open file, kept here so a timed-out
    // caller still has the file to read the holder's record from.
    let kept = file
        .try_clone()
        .map_err(|source| Error::DuplicateLockDescriptor {
            path: path.to_owned(),
            source,
        })?;
    let (sender, receiver) = mpsc::channel();
    thread::Builder::new()
        .name("flock-wait".into())
        .spawn(move || {
            let _ = sender.send(blocking_lock(file, None));
        })
        .map_err(|source| Error::StartWaitThread {
            path: path.to_owned(),
            source,
        })?;
    let outcome = match receiver.recv_timeout(remaining) {
        // Time is up; the helper may have got the lock in the meantime.
        Err(mpsc::RecvTimeoutError::Timeout) => receiver.try_recv().ok(),
        Ok(outcome) => Some(outcome),
        Err(mpsc::RecvTimeoutError::Disconnected) => None,
    };
    match outcome {
        Some(Ok(Some(lock))) => Ok(WaitOutcome::Locked(lock)),
        Some(Ok(None)) => Err(flock_error(path, Errno::EINTR)),
        Some(Err(e)) => Err(flock_error(path, e)),
        None => Ok(WaitOutcome::TimedOut(kept)),
    }
}

/// Blocks in `flock(LOCK_EX)`, again after a signal, until locked; with
/// `called_off`, `None` once it is set and a signal interrupted the call.
fn blocking_lock(
    mut file: File,
    called_off: Option<&AtomicBool>,
) -> Result<Option<Flock<File>>, Errno> {
    loop {
        if called_off.is_some_and(|c| c.load(Ordering::SeqCst)) {
            return Ok(None);
        }
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(lock) => return Ok(Some(lock)),
            Err((back, Errno::EINTR)) => file = back,
            Err((_, e)) => return Err(e),
        }
    }
}

/// The lock, held, when `path` still names the inode it is on; `None` when
/// the file was replaced or removed while locking, and `lock` is dropped,
/// which unlocks the stale inode before the next attempt. `opened` is the
/// descriptor's `fstat` from when it was opened: a descriptor's inode never
/// changes, so locking it needs no second `fstat`.
fn held_if_still_named(
    lock: Flock<File>,
    opened: &fs::Metadata,
    path: &Path,
    access: Access,
) -> Result<Option<HeldLock>, Error> {
    if path_still_names(opened, path)? {
        return Ok(Some(HeldLock {
            lock,
            path: path.to_owned(),
            access,
        }));
    }
    tracing::debug!(lock_file = %path.display(), "lock file was replaced or removed while locking; retrying");
    Ok(None)
}

/// The error when every attempt found the file replaced under the lock.
fn unstable(path: &Path) -> Error {
    Error::LockFileUnstable {
        path: path.to_owned(),
        attempts: MAX_ATTEMPTS,
    }
}

/// True when `path` still names the inode `held` (the locked descriptor's
/// `fstat`) describes.
fn path_still_names(held: &fs::Metadata, path: &Path) -> Result<bool, Error> {
    match fs::symlink_metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::InspectLockFile {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Opens (creating if needed) the lock file without following links and
/// without blocking on a planted FIFO, and checks it against the trust rule
/// before and after opening; with the opened file's metadata.
fn open_lock_file(path: &Path, me: &Launcher) -> Result<(File, Access, fs::Metadata), Error> {
    // Look before opening: opening a planted device node can have effects.
    let existed = match fs::symlink_metadata(path) {
        Ok(metadata) => {
            path_trust::ensure_trusted_lock_file(path, &metadata, me)?;
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(source) => {
            return Err(Error::InspectLockFile {
                path: path.to_owned(),
                source,
            });
        }
    };
    let flags = (OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits();
    let open = |write: bool, create: bool| {
        OpenOptions::new()
            .read(true)
            .write(write)
            .create_new(create)
            .mode(LOCK_FILE_MODE)
            .custom_flags(flags)
            .open(path)
    };
    let open_existing = || match open(true, false) {
        Ok(file) => Ok((file, Access::ReadWrite)),
        // flock(2) works on a read-only descriptor: a file we may not
        // write (root made it) or cannot (a read-only filesystem) is
        // still lockable, only its record cannot be written.
        Err(e) if read_only_will_do(&e) => match open(false, false) {
            Ok(file) => Ok((file, Access::ReadOnly)),
            Err(_) => Err(e),
        },
        Err(e) => Err(e),
    };
    // Create exclusively, so a file we set the mode of is one we made; an
    // existing file is opened without O_CREAT and never changed.
    let create = || match open(true, true) {
        Ok(file) => {
            file.set_permissions(Permissions::from_mode(LOCK_FILE_MODE))?;
            Ok((file, Access::ReadWrite))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open_existing(),
        Err(e) => Err(e),
    };
    // The kind the look found first (nearly every launch finds its file,
    // and a failed O_EXCL open is a path walk for nothing); the other only
    // when the file came or went in between.
    let opened = if existed {
        match open_existing() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => create(),
            opened => opened,
        }
    } else {
        create()
    };
    let (file, access) = opened.map_err(|source| open_error(path, source))?;
    // And look again at what we opened: the path may have changed between.
    let metadata = file.metadata().map_err(|source| open_error(path, source))?;
    path_trust::ensure_trusted_lock_file(path, &metadata, me)?;
    // O_NONBLOCK was only for the open; the descriptor is handed to the
    // program, which should see ordinary blocking semantics.
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty())).map_err(|source| {
        Error::MakeLockBlocking {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok((file, access, metadata))
}

/// True when opening for writing failed in a way a read-only open avoids.
fn read_only_will_do(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::PermissionDenied
        || error.raw_os_error() == Some(Errno::EROFS as i32)
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
