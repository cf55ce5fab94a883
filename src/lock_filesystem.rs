//! Whether a lock directory's filesystem gives the locks `ec-launch`
//! promises (ECP-0136).
//!
//! The guarantee is flock(2)'s on a local filesystem: the lock belongs to
//! the open file description, every process that inherits the descriptor
//! holds it, it is seen in `/proc/locks` by device and inode, and every path
//! to the file reaches the one inode. Some filesystems break one of these:
//! - NFS, SMB/CIFS, 9p, Ceph, AFS, Coda, FUSE: flock is emulated (a POSIX
//!   byte-range lock, which a child does not inherit), forwarded to a
//!   server, or local to a client only, so a forked helper does not hold
//!   the lock and `status` may call it free;
//! - overlayfs, aufs, eCryptfs: stacked filesystems whose merged path and
//!   lower/upper path are different inodes, so two launchers reaching the
//!   same file by two paths both get "the" lock.
//!
//! Such a lock directory is refused (exit 73) with the filesystem named,
//! checked with `statfs(2)` on the directory (the magic numbers of
//! `linux/magic.h`). The check is pure once the magic is known.

use std::path::Path;

use crate::error::Error;

/// Filesystems whose flock(2) locks are not the local ones we rely on:
/// (`f_type` from `linux/magic.h`, name shown to the operator).
const FOREIGN_LOCKS: &[(i64, &str)] = &[
    (0x6969, "NFS"),
    (0x517B, "SMB"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x0102_1997, "9p"),
    (0x00C3_6400, "Ceph"),
    (0x5346_414F, "AFS"),
    (0x6B41_4653, "AFS"),
    (0x7375_7245, "Coda"),
    (0x6573_5546, "FUSE"),
    (0x794C_7630, "overlayfs"),
    (0x6175_6673, "aufs"),
    (0xF15F, "eCryptfs"),
];

/// The name of the filesystem type `magic` when its locks are not local
/// flock(2) locks; `None` for one whose are (tmpfs, ext4, btrfs, xfs, …).
#[must_use]
pub fn foreign_locks(magic: i64) -> Option<&'static str> {
    FOREIGN_LOCKS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name)
}

/// Refuses a lock directory on a filesystem listed in [`FOREIGN_LOCKS`].
/// A directory whose filesystem cannot be asked is left to the open and
/// lock that follow, which report their own errors.
///
/// # Errors
/// [`Error::LockDirForeignLocks`].
pub fn ensure_local_locks(dir: &Path) -> Result<(), Error> {
    let Ok(stat) = rustix::fs::statfs(dir) else {
        return Ok(());
    };
    // f_type is a signed word on some architectures; the magics fit 32 bits.
    #[allow(
        clippy::useless_conversion,
        clippy::unnecessary_cast,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let magic = i64::from(stat.f_type as u32);
    match foreign_locks(magic) {
        None => Ok(()),
        Some(filesystem) => Err(Error::LockDirForeignLocks {
            path: dir.to_owned(),
            filesystem,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_fuse_and_stacked_filesystems_are_named_and_local_ones_pass() {
        assert_eq!(foreign_locks(0x6969), Some("NFS"));
        assert_eq!(foreign_locks(0xFF53_4D42), Some("CIFS"));
        assert_eq!(foreign_locks(0x0102_1997), Some("9p"));
        assert_eq!(foreign_locks(0x6573_5546), Some("FUSE"));
        assert_eq!(foreign_locks(0x794C_7630), Some("overlayfs"));
        // tmpfs, ext4, btrfs, xfs.
        for local in [0x0102_1994, 0xEF53, 0x9123_683E, 0x5846_5342] {
            assert_eq!(foreign_locks(local), None, "{local:#x}");
        }
    }
}
