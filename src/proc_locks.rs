//! The kernel's lock table, `/proc/locks` (proc(5)): its one reader
//! ([`LockTable`]: holders, waiters, the slot census and cluster mode's
//! lock check all take their rows from it) and its parser.
//!
//! The parser is pure text in, rows out, so it is tested on captured
//! samples. Each row is
//! `<id>: [-> ]<TYPE> <ADVISORY|MANDATORY> <READ|WRITE> <pid> <maj>:<min>:<ino> <start> <end>`,
//! where `->` marks a waiter blocked on the lock of the row above, major and
//! minor are hex, and pid is `-1` for OFD locks (which have no owning
//! process) and `0` for owners outside this PID namespace.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

/// A `/proc/locks` shorter than this comes from one page of the `seq_file`,
/// consistent in itself.
const SINGLE_READ_BYTES: usize = 3072;
/// How many reads of a multi-page `/proc/locks` are united ([`LockTable::read`]).
const LOCK_TABLE_READS: u32 = 3;

/// The flock(2) rows of the kernel's lock table, held and awaited, each
/// once however many reads were united. Other kinds of lock (POSIX, OFD,
/// leases) are left out: nothing here takes them.
#[derive(Debug, Clone, Default)]
pub struct LockTable {
    rows: BTreeSet<LockRow>,
}

impl LockTable {
    /// The table under `proc_root`, read whole. `/proc/locks` is a
    /// `seq_file`: a table longer than a page takes more than one read(2),
    /// and rows removed meanwhile shift the rest, so a row can be skipped.
    /// Such a table is read three times and the union kept: under heavy
    /// lock churn one read missed a steady lock about 1.1% of the time and
    /// two reads 6 times in 8,000 (measured while building the test
    /// helper's equivalent, tests/integration/testenv.rs). A row seen once
    /// is kept: a lock released meanwhile may show as held for this one
    /// report, which is the safe mistake.
    ///
    /// # Errors
    /// When the first read fails (a later one only ends the union).
    pub fn read(proc_root: &Path) -> io::Result<Self> {
        let mut table = Self::default();
        let mut length = table.read_into(proc_root)?;
        for _ in 1..LOCK_TABLE_READS {
            if length < SINGLE_READ_BYTES {
                break;
            }
            let Ok(again) = table.read_into(proc_root) else {
                break;
            };
            length = again;
        }
        Ok(table)
    }

    /// Reads the table once more into this one (a union); the length of
    /// the text read. In page-sized reads: each read(2) of this `seq_file`
    /// takes the kernel's lock list afresh, so std's 32-, 64-, 128-byte
    /// steps made even a short table several unsynchronised snapshots.
    ///
    /// # Errors
    /// When `proc_root/locks` cannot be read.
    pub fn read_into(&mut self, proc_root: &Path) -> io::Result<usize> {
        let text = crate::proc_file::read_to_string(&proc_root.join("locks"))?;
        self.rows.extend(
            parse(&text)
                .into_iter()
                .filter(|r| r.kind == LockKind::Flock),
        );
        Ok(text.len())
    }

    /// The flock(2) locks held (not awaited).
    pub fn held_flocks(&self) -> impl Iterator<Item = &LockRow> {
        self.rows.iter().filter(|row| !row.waiting)
    }

    /// The flock(2) requests blocked on a held lock (`->` rows).
    pub fn awaited_flocks(&self) -> impl Iterator<Item = &LockRow> {
        self.rows.iter().filter(|row| row.waiting)
    }
}

/// The kind of lock a row describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockKind {
    /// flock(2): what `ec-launch` and flock(1) take.
    Flock,
    /// fcntl(2) process-associated record lock.
    Posix,
    /// fcntl(2) open-file-description lock.
    Ofd,
    /// Leases, delegations and anything newer.
    Other,
}

/// One row of `/proc/locks`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LockRow {
    pub kind: LockKind,
    /// True for a waiter (`->`), which does not hold the lock.
    pub waiting: bool,
    pub exclusive: bool,
    /// The owning PID as the kernel recorded it: `None` for `-1` (OFD) and
    /// `0` (owner in another PID namespace). For flock(2) it is the PID that
    /// took the lock, which may have exited while children hold it.
    pub pid: Option<u32>,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
}

/// Parses `/proc/locks`; malformed lines are skipped, not fatal, because
/// the format has grown fields before.
#[must_use]
pub fn parse(text: &str) -> Vec<LockRow> {
    text.lines().filter_map(parse_line).collect()
}

/// Parses one row (also the tail of a `lock:` line in fdinfo).
#[must_use]
fn parse_line(line: &str) -> Option<LockRow> {
    let mut fields = line.split_whitespace();
    let id = fields.next()?;
    if !id.ends_with(':') {
        return None;
    }
    let mut kind_field = fields.next()?;
    let waiting = kind_field == "->";
    if waiting {
        kind_field = fields.next()?;
    }
    let kind = match kind_field {
        "FLOCK" => LockKind::Flock,
        "POSIX" => LockKind::Posix,
        "OFDLCK" => LockKind::Ofd,
        _ => LockKind::Other,
    };
    let _advisory = fields.next()?;
    let exclusive = match fields.next()? {
        "WRITE" => true,
        "READ" | "UNLCK" => false,
        _ => return None,
    };
    let pid: i64 = fields.next()?.parse().ok()?;
    let pid = u32::try_from(pid).ok().filter(|p| *p > 0);
    let mut device = fields.next()?.rsplitn(3, ':');
    let inode = device.next()?.parse().ok()?;
    let dev_minor = u32::from_str_radix(device.next()?, 16).ok()?;
    let dev_major = u32::from_str_radix(device.next()?, 16).ok()?;
    Some(LockRow {
        kind,
        waiting,
        exclusive,
        pid,
        dev_major,
        dev_minor,
        inode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True when `row` is a lock held (not awaited) on the given file.
    pub(super) fn holds(row: &LockRow, dev_major: u32, dev_minor: u32, inode: u64) -> bool {
        !row.waiting
            && row.dev_major == dev_major
            && row.dev_minor == dev_minor
            && row.inode == inode
    }

    const SAMPLE: &str = "\
1: FLOCK  ADVISORY  WRITE 4242 00:2a:1311 0 EOF
1: -> FLOCK  ADVISORY  WRITE 4300 00:2a:1311 0 EOF
2: OFDLCK ADVISORY  READ  -1 fd:01:786433 0 EOF
3: POSIX  ADVISORY  WRITE 812 103:02:5506 0 EOF
4: FLOCK  ADVISORY  WRITE 0 00:2a:77 0 EOF
5: LEASE  ACTIVE    READ  901 00:2a:88 0 EOF
garbage line
";

    #[test]
    fn rows_are_parsed_with_hex_devices_and_waiters_marked() {
        let rows = parse(SAMPLE);
        assert_eq!(rows.len(), 6);
        assert_eq!(
            rows[0],
            LockRow {
                kind: LockKind::Flock,
                waiting: false,
                exclusive: true,
                pid: Some(4242),
                dev_major: 0,
                dev_minor: 0x2a,
                inode: 1311
            }
        );
        assert!(rows[1].waiting);
        assert!(!holds(&rows[1], 0, 0x2a, 1311));
        assert!(holds(&rows[0], 0, 0x2a, 1311));
    }

    #[test]
    fn a_table_keeps_flock_rows_once_across_reads_held_apart_from_awaited() {
        let proc_root = tempfile::tempdir().unwrap();
        std::fs::write(proc_root.path().join("locks"), SAMPLE).unwrap();
        let mut table = LockTable::read(proc_root.path()).unwrap();
        table.read_into(proc_root.path()).unwrap();
        let held: Vec<Option<u32>> = table.held_flocks().map(|r| r.pid).collect();
        assert_eq!(held, vec![None, Some(4242)]);
        let awaited: Vec<Option<u32>> = table.awaited_flocks().map(|r| r.pid).collect();
        assert_eq!(awaited, vec![Some(4300)]);
        assert!(LockTable::read(&proc_root.path().join("absent")).is_err());
    }

    #[test]
    fn ofd_and_foreign_namespace_pids_are_none() {
        let rows = parse(SAMPLE);
        assert_eq!(rows[2].kind, LockKind::Ofd);
        assert_eq!(rows[2].pid, None);
        assert_eq!((rows[2].dev_major, rows[2].dev_minor), (0xfd, 1));
        assert_eq!(rows[4].pid, None);
        assert_eq!(rows[3].kind, LockKind::Posix);
        assert_eq!(rows[3].dev_major, 0x103);
        assert_eq!(rows[5].kind, LockKind::Other);
    }
}

/// The `lock:` rows of a `/proc/<pid>/fdinfo/<fd>` file: the locks whose
/// owner is this descriptor's open file description (proc(5)). A process
/// that inherited a flock(2) descriptor shows the lock here even though
/// `/proc/locks` names the process that took it.
#[must_use]
pub fn parse_fdinfo_locks(fdinfo: &str) -> Vec<LockRow> {
    fdinfo
        .lines()
        .filter_map(|line| line.strip_prefix("lock:"))
        .filter_map(parse_line)
        .collect()
}

#[cfg(test)]
mod fdinfo_tests {
    use super::tests::holds;
    use super::*;

    #[test]
    fn fdinfo_lock_lines_are_the_rows_of_this_open_file() {
        // Captured from a `sleep` forked by `flock -n file sleep 30`: the
        // row still names flock's PID (13233), the fdinfo is the child's.
        let fdinfo = "pos:\t0\nflags:\t0100000\nmnt_id:\t27\nino:\t10010687\n\
                      lock:\t1: FLOCK  ADVISORY  WRITE 13233 fe:00:10010687 0 EOF\n";
        let rows = parse_fdinfo_locks(fdinfo);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].pid, Some(13233));
        assert!(holds(&rows[0], 0xfe, 0, 10_010_687));
    }

    #[test]
    fn fdinfo_without_locks_has_no_rows() {
        assert!(parse_fdinfo_locks("pos:\t0\nflags:\t02\nmnt_id:\t24\nino:\t3\n").is_empty());
    }
}
