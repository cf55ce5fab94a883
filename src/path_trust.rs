//! The one trust rule for the lock path (ECP-0129).
//!
//! A `flock(2)` lock only excludes others while the path still names the
//! locked inode. Whoever can rename, delete or replace an entry on the way to
//! the lock file can make the next launcher lock a different inode and run a
//! second reader. So before we rely on a lock path, everything that decides
//! what it names must be under the control of root or the launcher's own
//! (effective) user, the model being OpenSSH's `StrictModes`:
//!
//! - every directory from `/` down to the lock directory, and every symlink
//!   followed on the way, is owned by root or the launcher's user;
//! - no such directory is writable by others unless it is sticky (`/tmp`):
//!   there only an entry's owner may rename it, and the entries we rely on
//!   must be root's or ours by the rule above;
//! - group write without the sticky bit is accepted only when the launcher is
//!   in that group (the NixOS module's `root:every-channel` directory: the
//!   group's members are the service's peers) or owns the directory (its
//!   owner chose the group);
//! - a lock file is a regular file, owned by root or the launcher's user, with
//!   exactly one hard link (a second link means it may be someone's file).
//!
//! Symlinks on the way are resolved here, one component at a time, so every
//! directory actually traversed is checked; the lock directory itself must
//! not be a symlink. Root can always break a lock; the rule only keeps other
//! users from doing so.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{self, FileType, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use crate::error::Error;

/// How many symlinks a path may pass through, as the kernel's `ELOOP` limit.
const MAX_LINKS: u32 = 40;

/// Who we are: the users and groups whose control of the path we accept.
#[derive(Debug, Clone)]
pub struct Launcher {
    uid: u32,
    groups: Vec<u32>,
}

impl Launcher {
    /// The running process: its effective UID, effective GID and
    /// supplementary groups. Through rustix, which asks getgroups(2) for
    /// the count: nix sizes its buffer from `sysconf(NGROUPS_MAX)`, which
    /// glibc reads from `/proc/sys/kernel/ngroups_max`, an open, read and
    /// close on every launch (ECP-0128).
    #[must_use]
    pub fn current() -> Self {
        let mut groups: Vec<u32> = rustix::process::getgroups()
            .unwrap_or_default()
            .into_iter()
            .map(rustix::process::Gid::as_raw)
            .collect();
        groups.push(rustix::process::getegid().as_raw());
        Self {
            uid: rustix::process::geteuid().as_raw(),
            groups,
        }
    }

    fn trusts_user(&self, uid: u32) -> bool {
        uid == 0 || uid == self.uid
    }

    fn in_group(&self, gid: u32) -> bool {
        self.groups.contains(&gid)
    }
}

/// What the walk down to the lock directory found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockDir {
    /// It exists and every component is trusted.
    Trusted,
    /// A component does not exist; every one above it is trusted.
    Missing,
}

/// Walks `dir` from `/` down, resolving symlinks ourselves, and checks each
/// component against the rule in the module docs.
///
/// # Errors
/// [`Error::UntrustedLockPath`], [`Error::LockDirSymlink`],
/// [`Error::LockDirNotDirectory`] or [`Error::InspectLockDir`].
pub fn check_lock_dir(dir: &Path, me: &Launcher) -> Result<LockDir, Error> {
    let inspect = |path: &Path, source: io::Error| Error::InspectLockDir {
        path: path.to_owned(),
        source,
    };
    let absolute = if dir.is_absolute() {
        dir.to_owned()
    } else {
        // getcwd(3) returns a path without symlinks; it is walked like the rest.
        std::env::current_dir()
            .map_err(|e| inspect(dir, e))?
            .join(dir)
    };
    let mut pending = names(&absolute);
    let mut current = PathBuf::from("/");
    let root = fs::symlink_metadata(&current).map_err(|e| inspect(&current, e))?;
    ensure_trusted_dir(&current, &root, me)?;
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            // `current` is a real, checked directory; its parent was checked
            // on the way down (or is `/`).
            current.pop();
            continue;
        }
        let candidate = current.join(&name);
        let metadata = match fs::symlink_metadata(&candidate) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LockDir::Missing),
            Err(e) => return Err(inspect(&candidate, e)),
        };
        if metadata.file_type().is_symlink() {
            if pending.is_empty() {
                return Err(Error::LockDirSymlink {
                    path: dir.to_owned(),
                });
            }
            ensure_trusted_owner(&candidate, &metadata, me)?;
            links += 1;
            if links > MAX_LINKS {
                return Err(inspect(
                    dir,
                    io::Error::from_raw_os_error(nix::errno::Errno::ELOOP as i32),
                ));
            }
            let target = fs::read_link(&candidate).map_err(|e| inspect(&candidate, e))?;
            if target.is_absolute() {
                current = PathBuf::from("/");
            }
            for part in names(&target).into_iter().rev() {
                pending.push_front(part);
            }
            continue;
        }
        if !metadata.is_dir() {
            return Err(Error::LockDirNotDirectory { path: candidate });
        }
        ensure_trusted_dir(&candidate, &metadata, me)?;
        current = candidate;
    }
    Ok(LockDir::Trusted)
}

/// The normal components of `path`, with `..` kept and `.` dropped.
fn names(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some(OsStr::new("..").to_owned()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn ensure_trusted_owner(path: &Path, metadata: &Metadata, me: &Launcher) -> Result<(), Error> {
    if me.trusts_user(metadata.uid()) {
        return Ok(());
    }
    Err(untrusted(
        path,
        format!(
            "is owned by uid {}, not by root or this user (uid {})",
            metadata.uid(),
            me.uid
        ),
    ))
}

fn ensure_trusted_dir(path: &Path, metadata: &Metadata, me: &Launcher) -> Result<(), Error> {
    ensure_trusted_owner(path, metadata, me)?;
    let mode = metadata.mode() & 0o7777;
    let sticky = mode & 0o1000 != 0;
    if sticky {
        return Ok(());
    }
    if mode & 0o002 != 0 {
        return Err(untrusted(
            path,
            format!("is writable by others (mode {mode:04o}) and not sticky"),
        ));
    }
    let gid = metadata.gid();
    if mode & 0o020 != 0 && metadata.uid() != me.uid && !me.in_group(gid) {
        return Err(untrusted(
            path,
            format!(
                "is writable by group {gid} (mode {mode:04o}), which this user is not in, and not sticky"
            ),
        ));
    }
    Ok(())
}

fn untrusted(path: &Path, reason: String) -> Error {
    Error::UntrustedLockPath {
        path: path.to_owned(),
        reason,
    }
}

/// Checks a lock file, before opening it (`lstat`) and after (`fstat`).
///
/// # Errors
/// [`Error::LockFileSymlink`], [`Error::LockFileNotRegular`],
/// [`Error::LockFileForeign`] or [`Error::LockFileLinked`].
pub fn ensure_trusted_lock_file(
    path: &Path,
    metadata: &Metadata,
    me: &Launcher,
) -> Result<(), Error> {
    ensure_regular(path, metadata)?;
    if !me.trusts_user(metadata.uid()) {
        return Err(Error::LockFileForeign {
            path: path.to_owned(),
            uid: metadata.uid(),
        });
    }
    // 0 links: deleted after we opened it; the caller's inode check retries.
    if metadata.nlink() > 1 {
        return Err(Error::LockFileLinked {
            path: path.to_owned(),
            links: metadata.nlink(),
        });
    }
    Ok(())
}

/// Refuses anything at a lock path but a regular file, so nothing else is
/// ever opened there (opening a device node or FIFO can have effects).
///
/// # Errors
/// [`Error::LockFileSymlink`] or [`Error::LockFileNotRegular`].
pub fn ensure_regular(path: &Path, metadata: &Metadata) -> Result<(), Error> {
    let file_type = metadata.file_type();
    if file_type.is_file() {
        return Ok(());
    }
    if file_type.is_symlink() {
        return Err(Error::LockFileSymlink {
            path: path.to_owned(),
        });
    }
    Err(Error::LockFileNotRegular {
        path: path.to_owned(),
        kind: kind(file_type),
    })
}

/// A file type as the messages name it.
#[must_use]
pub fn kind(file_type: FileType) -> &'static str {
    if file_type.is_file() {
        "regular file"
    } else if file_type.is_symlink() {
        "symlink"
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_dot_dot_are_walked_like_the_kernel_walks_them() {
        let parts: Vec<OsString> = names(Path::new("/a/./b/../c")).into_iter().collect();
        assert_eq!(parts, ["a", "b", "..", "c"]);
    }
}
