//! The launch record kept *inside* each lock file.
//!
//! The record is written through the locked descriptor and never by
//! replacing the file, because the file's inode is the lock: a rename would
//! put a fresh, unlocked inode at the path. It says who launched last, which
//! is not necessarily who holds the lock now (holders fork and exit); the
//! kernel's lock table is the authority and `status` treats the record as a
//! hint. The record is one line of JSON; readers tolerate a missing or torn
//! record.
//!
//! `pid` is the launcher's PID as it saw itself, which is another number
//! outside its PID namespace and may belong to another process later; the
//! launcher's start time and PID namespace, recorded beside it, are what a
//! reader matches a process against (ECP-0131). Fields are only ever added,
//! and records without the newer ones still parse.
//!
//! Anyone who can write the file can write the record, and an older
//! version may have written what this one would redact: a record reaches
//! output only as [`Shown`](crate::shown::Shown), through [`Redact`].

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::process;
use crate::redact::redact_source;
use crate::shown::Redact;

/// A record larger than this is not ours; reading stops there.
const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Who launched under this lock, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// PID of the launcher, which is the program's PID after exec.
    pub pid: u32,
    /// The systemd unit the launcher ran in, when under systemd.
    pub unit: Option<String>,
    /// The source with credentials masked (see `redact`).
    pub source: String,
    /// The canonical source key.
    pub key: String,
    /// The program as named on the command line (no arguments: they may
    /// carry the source URL).
    pub program: String,
    /// Launch time, RFC 3339 UTC.
    pub started_at: String,
    /// Launch time, seconds since the Unix epoch.
    pub started_unix: u64,
    /// The `ec-launch` version that wrote the record.
    pub ec_launch_version: String,
    /// The launcher's start time in clock ticks after boot
    /// (`/proc/self/stat` field 22): with `pid`, which process this is.
    #[serde(default)]
    pub start_ticks: Option<u64>,
    /// The inode of the launcher's PID namespace (`/proc/self/ns/pid`): the
    /// namespace `pid` is counted in.
    #[serde(default)]
    pub pid_namespace: Option<u64>,
    /// The inode of the lock directory the file was created in, so a lock
    /// file moved out of it is still known as its lock, whatever path
    /// (bind mount, container) either side reaches the directory by.
    #[serde(default)]
    pub lock_dir_inode: Option<u64>,
    /// Slot records only (ECP-0132), absent from source lock records: the
    /// device key the slot belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Slot records only: this slot's index, 0 to `tuners` - 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// Slot records only: the launcher's `--tuners` (as given, or as
    /// `auto` learnt it). Launchers compare it to agree on the count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuners: Option<u32>,
    /// Slot records only: the device's own `DeviceID`, when `--tuners auto`
    /// learnt it from the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The launch's `--priority` (ECP-0139); absent in an older version's
    /// record, which counts as the default, 100. Used only to choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// The launcher's cgroup directory (ECP-0139): whether the run that
    /// recorded this holder is over is asked of the cgroup tree, never of
    /// the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Slot records only: the holder this launcher preempted to take the
    /// slot (ECP-0139), shown by `status` until the slot is taken again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempted: Option<Preempted>,
}

/// Who was preempted to take a slot, and when (ECP-0139).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preempted {
    pub pid: u32,
    #[serde(default)]
    pub program: Option<String>,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    /// The victim's source, redacted.
    pub source: String,
    pub priority: u32,
    /// When, RFC 3339 UTC.
    pub at: String,
}

impl Redact for Preempted {
    fn redacted(&self) -> Self {
        let Self {
            pid,
            program,
            unit,
            node,
            source,
            priority,
            at,
        } = self;
        Self {
            pid: *pid,
            program: program.redacted(),
            unit: unit.redacted(),
            node: node.redacted(),
            source: redact_source(source),
            priority: *priority,
            at: at.redacted(),
        }
    }
}

impl LockRecord {
    /// A record for a launch happening now in this process.
    #[must_use]
    pub fn for_this_launch(
        key: &str,
        redacted_source: &str,
        program: &str,
        unit: Option<String>,
    ) -> Self {
        let now = SystemTime::now();
        Self {
            pid: std::process::id(),
            unit,
            source: redacted_source.to_owned(),
            key: key.to_owned(),
            program: program.to_owned(),
            started_at: humantime::format_rfc3339_seconds(now).to_string(),
            started_unix: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            ec_launch_version: env!("CARGO_PKG_VERSION").to_owned(),
            start_ticks: crate::proc_file::read_to_string(Path::new("/proc/self/stat"))
                .ok()
                .and_then(|stat| process::parse_start_ticks(&stat)),
            pid_namespace: process::pid_namespace_of(Path::new("/proc"), "self"),
            lock_dir_inode: None,
            device: None,
            slot: None,
            tuners: None,
            device_id: None,
            priority: None,
            cgroup: None,
            preempted: None,
        }
    }

    /// Replaces the file's contents with this record, in place.
    ///
    /// # Errors
    /// Any write or truncate failure.
    pub fn write_into(&self, file: &File) -> io::Result<()> {
        let mut line = serde_json::to_vec(self).map_err(io::Error::other)?;
        line.push(b'\n');
        // Write first, then cut: a reader racing us sees the new record with
        // at worst a stale tail, which fails to parse and is reported as
        // unreadable rather than as a wrong holder.
        file.write_all_at(&line, 0)?;
        // Cut only the tail of a longer record: ftruncate(2) updates the
        // inode (a journal entry on ext4) even at the same size, where an
        // fstat is a read (ECP-0128).
        let length = line.len() as u64;
        if file.metadata()?.len() > length {
            file.set_len(length)?;
        }
        Ok(())
    }

    /// Reads the record from a lock file, `None` when absent or unreadable.
    ///
    /// Into a page on the stack first: our records are a few hundred bytes,
    /// and `status` reads thousands of lock files, where zeroing a buffer
    /// of [`MAX_RECORD_BYTES`] for each was most of the work (a busy
    /// launcher's too). Only a record that fills the page is read on into
    /// a buffer of the full bound.
    #[must_use]
    pub fn read_from(file: &File) -> Option<Self> {
        let mut page = [0; 4096];
        let filled = read_line_into(file, &mut page, 0)?;
        if filled < page.len() || page.contains(&b'\n') {
            return Self::parse(&page[..filled]);
        }
        let mut buffer = vec![0; MAX_RECORD_BYTES];
        buffer[..filled].copy_from_slice(&page);
        let filled = read_line_into(file, &mut buffer, filled)?;
        Self::parse(&buffer[..filled])
    }

    /// Parses a record from a lock file's bytes.
    #[must_use]
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let line = bytes.split(|b| *b == b'\n').next()?;
        serde_json::from_slice(line).ok()
    }
}

/// Reads `file` from offset `filled` into `buffer` until it is full, the
/// file ends, or a newline has been read; the bytes filled, `None` on a read
/// error.
fn read_line_into(file: &File, buffer: &mut [u8], mut filled: usize) -> Option<usize> {
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                // Our records are written in one piece, so the first
                // read gets all of it; `status` reads thousands of
                // files and skips the read that would confirm the end.
                if buffer[..filled].contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(filled)
}

impl Redact for LockRecord {
    fn redacted(&self) -> Self {
        // Every field by name: a new one must be given its redaction here.
        let Self {
            pid,
            unit,
            source,
            key,
            program,
            started_at,
            started_unix,
            ec_launch_version,
            start_ticks,
            pid_namespace,
            lock_dir_inode,
            device,
            slot,
            tuners,
            device_id,
            priority,
            cgroup,
            preempted,
        } = self;
        Self {
            pid: *pid,
            unit: unit.redacted(),
            source: redact_source(source),
            // A key keyed from a source holds no credential and is shown as
            // it is; a record can say anything.
            key: key.redacted(),
            program: program.redacted(),
            started_at: started_at.redacted(),
            started_unix: *started_unix,
            ec_launch_version: ec_launch_version.redacted(),
            start_ticks: *start_ticks,
            pid_namespace: *pid_namespace,
            lock_dir_inode: *lock_dir_inode,
            device: device.redacted(),
            slot: *slot,
            tuners: *tuners,
            device_id: device_id.redacted(),
            priority: *priority,
            cgroup: cgroup.redacted(),
            preempted: preempted.as_ref().map(Redact::redacted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret_props::{FieldKind, hostile_record, leaks};

    #[test]
    fn a_record_survives_a_round_trip_through_a_shorter_rewrite() {
        let file = tempfile::tempfile().unwrap();
        let long = LockRecord::for_this_launch("k", "http://h/", "a-very-long-program-name", None);
        long.write_into(&file).unwrap();
        let short = LockRecord::for_this_launch("k", "http://h/", "p", Some("x.service".into()));
        short.write_into(&file).unwrap();
        assert_eq!(LockRecord::read_from(&file), Some(short));
    }

    #[test]
    fn records_around_and_beyond_the_first_page_read_back_and_the_bound_holds() {
        for length in [4000, 4096, 4200, 20_000] {
            let file = tempfile::tempfile().unwrap();
            let source = format!("http://h/{}", "p".repeat(length));
            let record = LockRecord::for_this_launch("k", &source, "p", None);
            record.write_into(&file).unwrap();
            assert_eq!(LockRecord::read_from(&file), Some(record), "{length}");
        }
        // Past the bound a record is unreadable, never read without end.
        let file = tempfile::tempfile().unwrap();
        let source = format!("http://h/{}", "p".repeat(MAX_RECORD_BYTES));
        LockRecord::for_this_launch("k", &source, "p", None)
            .write_into(&file)
            .unwrap();
        assert_eq!(LockRecord::read_from(&file), None);
    }

    #[test]
    fn a_record_names_the_launchers_start_time_and_namespace_and_old_records_still_parse() {
        let record = LockRecord::for_this_launch("k", "http://h/", "p", None);
        let me = process::start_ticks_of(Path::new("/proc"), std::process::id());
        assert!(me.is_some());
        assert_eq!(record.start_ticks, me);
        assert!(record.pid_namespace.is_some());
        let old = br#"{"pid":7,"unit":null,"source":"s","key":"k","program":"p","started_at":"t","started_unix":0,"ec_launch_version":"0.1.0"}"#;
        let old = LockRecord::parse(old).expect("a record without the newer fields");
        assert_eq!((old.start_ticks, old.pid_namespace), (None, None));
    }

    #[test]
    fn source_lock_records_have_no_slot_fields_and_slot_records_keep_theirs() {
        let record = LockRecord::for_this_launch("k", "http://h/", "p", None);
        let json = serde_json::to_string(&record).unwrap();
        for field in ["device", "slot", "tuners", "device_id"] {
            assert!(!json.contains(&format!("\"{field}\"")), "{json}");
        }
        let slot = LockRecord {
            device: Some("10.0.0.5".into()),
            slot: Some(1),
            tuners: Some(2),
            ..record
        };
        let file = tempfile::tempfile().unwrap();
        slot.write_into(&file).unwrap();
        assert_eq!(LockRecord::read_from(&file), Some(slot));
    }

    #[test]
    fn a_shown_record_has_every_text_field_redacted_and_ours_unchanged() {
        let ours = LockRecord::for_this_launch(
            "hdhomerun://10.0.0.5/v5.1",
            "http://***@10.0.0.5:5004/auto/v5.1?token=***",
            "ec-node",
            Some("ec-node@ch5.service".into()),
        );
        assert_eq!(*crate::shown::Shown::of(&ours), ours);
        let secret = "S3CR3T";
        let hostile = LockRecord {
            unit: Some(format!("u:{secret}@x.service")),
            source: format!("admin:{secret}@cam/s"),
            key: format!("http://a:{secret}@h/?token={secret}"),
            program: format!("x?{secret}"),
            started_at: format!("token={secret}"),
            ec_launch_version: format!("v https://u:{secret}@h/"),
            device: Some(format!("d:{secret}@h")),
            device_id: Some(format!("i;sig={secret}")),
            ..ours
        };
        let json = serde_json::to_string(&crate::shown::Shown::of(&hostile)).unwrap();
        assert!(!json.contains(secret), "{json}");
    }

    const FIELDS: &[(&str, FieldKind)] = &[
        ("pid", FieldKind::Number),
        ("unit", FieldKind::Text),
        ("source", FieldKind::Text),
        ("key", FieldKind::Text),
        ("program", FieldKind::Text),
        ("started_at", FieldKind::Text),
        ("started_unix", FieldKind::Number),
        ("ec_launch_version", FieldKind::Text),
        ("start_ticks", FieldKind::Number),
        ("device", FieldKind::Text),
        ("tuners", FieldKind::Number),
        ("device_id", FieldKind::Text),
        ("priority", FieldKind::Number),
        ("cgroup", FieldKind::Text),
    ];

    proptest::proptest! {
        /// Any bytes: a record or none, never a panic.
        #[test]
        fn any_bytes_are_a_record_or_none_and_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Some(record) = LockRecord::parse(&bytes) {
                let _ = crate::shown::Shown::of(&record);
            }
        }

        /// A record with credentials in every text field and any value in
        /// the rest: none or one whose shown form has no credential.
        #[test]
        fn a_shown_record_never_holds_a_credential(bytes in hostile_record(FIELDS)) {
            if let Some(record) = LockRecord::parse(&bytes) {
                let json = serde_json::to_string(&crate::shown::Shown::of(&record)).unwrap();
                proptest::prop_assert!(!leaks(&json), "{json}");
            }
        }
    }

    #[test]
    fn garbage_is_no_record() {
        assert_eq!(LockRecord::parse(b""), None);
        assert_eq!(LockRecord::parse(b"{\"pid\": 1"), None);
    }
}
