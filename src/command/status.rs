//! `ec-launch status [SOURCE]`: who holds which source, from the kernel.
//!
//! Every `*.lock` file in the lock directory (or SOURCE's only) is matched
//! by device and inode against one [`HolderScan`] of `/proc`. The launch
//! record inside each file is shown for what it is, the last recorded
//! launch, and flagged when it disagrees with the kernel. Held locks whose
//! files were deleted (the one way to get two holders of one source) are
//! found from the holders' descriptors, listed as orphaned, and make the
//! exit status non-zero.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::StatusArgs;
use crate::error::Error;
use crate::exit_code::ExitStatus;
use crate::holder::{HolderScan, LockedInode};
use crate::lock_record::LockRecord;
use crate::process::ProcessInfo;
use crate::redact::redact_source;
use crate::source_key::SourceKey;

/// One lock as `status` reports it; also the `--json` schema of an entry.
#[derive(Debug, Serialize)]
struct LockStatus {
    /// From SOURCE, else from the record; `null` when neither says.
    key: Option<String>,
    /// The recorded (redacted) source.
    source: Option<String>,
    lock_file: PathBuf,
    state: State,
    /// Held, but the file is gone: new launchers cannot see this lock.
    orphaned: bool,
    holders: Vec<HolderJson>,
    /// The last recorded launch, as written into the file.
    metadata: Option<LockRecord>,
    warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum State {
    Held,
    Free,
}

#[derive(Debug, Serialize)]
struct HolderJson {
    pid: u32,
    command: Option<String>,
    unit: Option<String>,
    since: Option<String>,
}

impl From<ProcessInfo> for HolderJson {
    fn from(info: ProcessInfo) -> Self {
        Self {
            pid: info.pid,
            command: info.command,
            unit: info.unit,
            since: info.since,
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    locks: Vec<LockStatus>,
    warnings: Vec<String>,
}

/// Runs `ec-launch status`.
///
/// # Errors
/// An invalid SOURCE, or a lock directory that cannot be read.
pub fn status(args: &StatusArgs) -> Result<ExitStatus, Error> {
    let proc_root = Path::new("/proc");
    crate::cli::ensure_lock_dir_given(&args.lock_dir)?;
    let key = args
        .source
        .as_deref()
        .map(SourceKey::from_source)
        .transpose()
        .map_err(Error::SourceArg)?;
    let files = match &key {
        Some(key) => {
            let path = key.lock_path(&args.lock_dir);
            ensure_readable_dir(&args.lock_dir)?;
            // What run would refuse to open, status refuses too (ECP-0129).
            match fs::symlink_metadata(&path) {
                Ok(metadata) => {
                    crate::path_trust::ensure_regular(&path, &metadata)?;
                    vec![path]
                }
                Err(_) => Vec::new(),
            }
        }
        None => lock_files(&args.lock_dir)?,
    };
    let scan = HolderScan::take(proc_root, &args.lock_dir);
    let mut locks: Vec<LockStatus> = files
        .iter()
        .filter_map(|path| inspect_file(&scan, path))
        .collect();
    for orphan in scan.orphans() {
        let record = File::open(&orphan.via)
            .ok()
            .and_then(|f| LockRecord::read_from(&f));
        locks.push(lock_status(
            &scan,
            orphan.path.clone(),
            orphan.inode,
            record,
            true,
        ));
    }
    if let Some(key) = &key {
        // Orphans of other sources are not this question's answer.
        locks.retain(|lock| !lock.orphaned || lock.key.as_deref() == Some(key.as_str()));
        for lock in &mut locks {
            lock.key = Some(key.as_str().to_owned());
        }
    }
    locks.sort_by(|a, b| (&a.key, &a.lock_file).cmp(&(&b.key, &b.lock_file)));
    let report = Report {
        locks,
        warnings: scan.visibility_warnings(),
    };
    print_report(&report, args.json);
    Ok(exit_status(&report, key.is_some()))
}

fn exit_status(report: &Report, for_one_source: bool) -> ExitStatus {
    if report.locks.iter().any(|l| l.orphaned) {
        ExitStatus::Orphaned
    } else if for_one_source && !report.locks.iter().any(|l| l.state == State::Held) {
        ExitStatus::SourceFree
    } else {
        ExitStatus::Success
    }
}

fn ensure_readable_dir(dir: &Path) -> Result<(), Error> {
    fs::read_dir(dir)
        .map(drop)
        .map_err(|source| Error::ReadLockDir {
            path: dir.to_owned(),
            source,
        })
}

/// The `*.lock` regular files in `dir`, sorted.
fn lock_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = fs::read_dir(dir).map_err(|source| Error::ReadLockDir {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "lock"))
        .collect();
    files.sort();
    Ok(files)
}

/// A lock file as it is now; `None` if it vanished or cannot be opened.
fn inspect_file(scan: &HolderScan, path: &Path) -> Option<LockStatus> {
    // Read-only and without following links: status must never create,
    // truncate or lock anything.
    let file = match open_read_only(path) {
        Ok(file) => file,
        // Lock files are 0660: other users still learn held or free from
        // the inode, only not the launch record.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let metadata = fs::symlink_metadata(path).ok()?;
            let inode = LockedInode::of_metadata(&metadata);
            return Some(lock_status(scan, path.to_owned(), inode, None, false));
        }
        Err(_) => return None,
    };
    let inode = LockedInode::of_file(&file).ok()?;
    Some(lock_status(
        scan,
        path.to_owned(),
        inode,
        LockRecord::read_from(&file),
        false,
    ))
}

fn open_read_only(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Never open what is not a regular file (a planted device node).
    let regular =
        |m: &fs::Metadata| crate::path_trust::ensure_regular(path, m).map_err(io::Error::other);
    regular(&fs::symlink_metadata(path)?)?;
    let flags = (nix::fcntl::OFlag::O_NOFOLLOW
        | nix::fcntl::OFlag::O_NONBLOCK
        | nix::fcntl::OFlag::O_NOCTTY)
        .bits();
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    regular(&file.metadata()?)?;
    Ok(file)
}

fn lock_status(
    scan: &HolderScan,
    lock_file: PathBuf,
    inode: LockedInode,
    record: Option<LockRecord>,
    orphaned: bool,
) -> LockStatus {
    let held = scan.is_held(inode);
    let holders = if held {
        scan.holders(inode)
    } else {
        Vec::new()
    };
    let mut warnings = Vec::new();
    if orphaned {
        warnings.push(
            "the lock file was deleted while held: a new launcher would lock a new file at this path and run a second reader; stop these holders".to_owned(),
        );
    }
    let exited = if held {
        scan.exited_takers(inode)
    } else {
        Vec::new()
    };
    if !exited.is_empty() {
        warnings.push(format!(
            "the process that took the lock (pid {}) has exited; the holders inherited its descriptor",
            join(&exited)
        ));
    }
    if let Some(record) = &record {
        let recorded_is_holder = holders.iter().any(|h| h.pid == record.pid);
        // An exited taker was already reported above; that is this case.
        if held && !recorded_is_holder && !exited.contains(&record.pid) {
            warnings.push(format!(
                "the record names pid {} (launched {}), which does not hold the lock now",
                record.pid, record.started_at
            ));
        }
    } else if held {
        warnings.push("the lock file has no readable launch record".to_owned());
    }
    if held && holders.is_empty() {
        warnings.push("held by a process this user cannot see; run as root".to_owned());
    }
    let mut record = record;
    if let Some(record) = &mut record {
        // The record was redacted when written; redacting again costs nothing
        // and protects against a hand-edited file.
        record.source = redact_source(&record.source);
    }
    LockStatus {
        key: record.as_ref().map(|r| r.key.clone()),
        source: record.as_ref().map(|r| r.source.clone()),
        lock_file,
        state: if held { State::Held } else { State::Free },
        orphaned,
        holders: holders.into_iter().map(HolderJson::from).collect(),
        metadata: record,
        warnings,
    }
}

fn join(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_report(report: &Report, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
        return;
    }
    let rows: Vec<[String; 5]> = report
        .locks
        .iter()
        .map(|lock| {
            let state = match (lock.state, lock.orphaned) {
                (_, true) => "ORPHANED",
                (State::Held, false) => "held",
                (State::Free, false) => "free",
            };
            let holders = if lock.holders.is_empty() {
                "-".to_owned()
            } else {
                lock.holders
                    .iter()
                    .map(describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            [
                state.to_owned(),
                lock.key.clone().unwrap_or_else(|| "?".into()),
                lock.source.clone().unwrap_or_else(|| "?".into()),
                holders,
                lock.lock_file.display().to_string(),
            ]
        })
        .collect();
    let header = ["STATE", "KEY", "SOURCE", "HOLDERS", "LOCK FILE"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |row: &[String; 5]| {
        let mut text = String::new();
        for (cell, width) in row.iter().zip(widths).take(4) {
            let _ = write!(text, "{cell:<width$}  ");
        }
        text.push_str(&row[4]);
        text
    };
    // One write for the whole table: thousands of lines, one system call.
    let mut out = line(&header);
    out.push('\n');
    for (row, lock) in rows.iter().zip(&report.locks) {
        out.push_str(&line(row));
        out.push('\n');
        for warning in &lock.warnings {
            let _ = writeln!(out, "  ! {warning}");
        }
    }
    if report.locks.is_empty() {
        out.push_str("(no lock files)\n");
    }
    print!("{out}");
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
}

/// `4242 ec-node every-channel-publisher-a.service since 2026-…`
fn describe(holder: &HolderJson) -> String {
    let mut text = holder.pid.to_string();
    if let Some(command) = &holder.command {
        text.push(' ');
        text.push_str(command);
    }
    text.push(' ');
    text.push_str(holder.unit.as_deref().unwrap_or("(no unit)"));
    if let Some(since) = &holder.since {
        text.push_str(" since ");
        text.push_str(since);
    }
    text
}
