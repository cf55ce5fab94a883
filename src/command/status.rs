//! `ec-launch status [SOURCE]`: who holds which source, from the kernel.
//!
//! Every `*.lock` file in the lock directory (or SOURCE's only) is matched
//! by device and inode against one [`HolderScan`] of `/proc`. The launch
//! record inside each file is shown for what it is, the last recorded
//! launch, and flagged when it disagrees with the kernel. Held locks whose
//! files were deleted, moved or renamed (the ways to get two holders of one
//! source: a new launcher locks a new file at the key's path) are found by
//! inode from the holders' descriptors, listed as orphaned, and make the
//! exit status non-zero. What cannot be known (a file this user cannot
//! examine, a lock table that hides locks) is reported as `unknown` with
//! its own exit status, never as free. Text from processes and files is
//! escaped before it reaches the terminal.
//!
//! With `--readers` the established TCP connections (`sock_diag`) are
//! dumped *before* the descriptor scan, which then also finds their owners,
//! and `readers` accounts for each connection to a source's endpoint
//! against the locks found (ECP-0133). Without it nothing of that runs.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::device_view::{self, DeviceStatus, OrphanedSlot};
use crate::cli::StatusArgs;
use crate::error::Error;
use crate::exit_code::ExitStatus;
use crate::holder::{Absence, HolderScan, LockedInode};
use crate::lock_record::LockRecord;
use crate::printable::{printable, printable_path};
use crate::process::ProcessInfo;
use crate::readers::{self, Endpoint, LockView, ReadersReport, WithoutEndpoint};
use crate::shown::Shown;
use crate::sock_diag::{self, TcpConnection};
use crate::source_key::{KeyError, SourceKey};
use crate::spread;
use crate::tuner_slot::{self, DeviceKey, SlotFile};

/// Lock files a worker inspects at a time (see [`spread::map_batches`]).
const FILES_PER_BATCH: usize = 32;

/// Cluster mode's part of `status` (`--etcd`, ECP-0134), which
/// `ec-launch-cluster` supplies (ECP-0138); the local executable's
/// ([`LocalOnly`]) asks no cluster.
pub trait ClusterView {
    /// What the report holds under `cluster` in `--json`.
    type Report: Serialize;
    /// The cluster's holders (of SOURCE and its device, with `key`); a
    /// failure is a warning, not an error: the node's own locks are still
    /// worth printing. `held_here` are the keys of sources held on this
    /// node, to warn of one whose cluster key another node holds.
    fn section(
        &self,
        args: &StatusArgs,
        key: Option<&SourceKey>,
        held_here: &[&str],
        warnings: &mut Vec<String>,
    ) -> ClusterSection<Self::Report>;
    /// The text view of `report`, appended to the table.
    fn write_text(&self, out: &mut String, report: &Self::Report);
}

/// What `status` reports of the cluster.
#[derive(Debug, Serialize)]
pub struct ClusterSection<R> {
    /// Only with `--etcd`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<R>,
    /// `--etcd` was given but etcd could not be asked.
    #[serde(skip)]
    pub unanswered: bool,
    /// `status --etcd SOURCE`: the cluster holds SOURCE's key.
    #[serde(skip)]
    pub holds_wanted: bool,
}

impl<R> ClusterSection<R> {
    /// Nothing to say of the cluster: no `--etcd`.
    #[must_use]
    pub fn none() -> Self {
        Self {
            cluster: None,
            unanswered: false,
            holds_wanted: false,
        }
    }
}

/// The local executable's [`ClusterView`]: `--etcd` is handed off to
/// `ec-launch-cluster` before parsing (ECP-0138), so only etcd options
/// given without it reach this, and they get the answer cluster mode gave
/// them: a warning, and an unanswered `cluster` naming the mistake.
#[derive(Debug)]
pub struct LocalOnly;

/// [`LocalOnly`]'s report: the `cluster` of an etcd that was not asked.
#[derive(Debug, Serialize)]
pub struct Unasked {
    node: String,
    error: String,
}

impl ClusterView for LocalOnly {
    type Report = Unasked;

    fn section(
        &self,
        args: &StatusArgs,
        _key: Option<&SourceKey>,
        _held_here: &[&str],
        warnings: &mut Vec<String>,
    ) -> ClusterSection<Unasked> {
        let error = if args.etcd.endpoints.is_empty() {
            match crate::cli::stray_cluster_option(&args.etcd) {
                Some(flag) => Error::ClusterOptionWithoutEtcd { flag },
                None => return ClusterSection::none(),
            }
        } else {
            Error::ClusterModeNotHandedOff
        };
        let line = crate::entry::error_line(&error);
        let error = line.strip_prefix("error: ").unwrap_or(&line).to_owned();
        warnings.push(format!(
            "cannot ask etcd for the cluster's holders: {error}"
        ));
        let node = args
            .etcd
            .node
            .clone()
            .unwrap_or_else(crate::cli::default_node_name);
        ClusterSection {
            cluster: Some(Unasked { node, error }),
            unanswered: true,
            holds_wanted: false,
        }
    }

    fn write_text(&self, out: &mut String, report: &Unasked) {
        let _ = writeln!(
            out,
            "\nCLUSTER (etcd; this node: {})",
            printable(&report.node)
        );
        let _ = writeln!(
            out,
            "(etcd could not be asked: {})",
            printable(&report.error)
        );
    }
}

/// One lock as `status` reports it; also the `--json` schema of an entry.
#[derive(Debug, Serialize)]
struct LockStatus {
    /// From SOURCE, else from the record; `null` when neither says.
    key: Option<String>,
    /// The recorded (redacted) source.
    source: Option<String>,
    /// Exact when UTF-8; other bytes of a name are written `\xNN`.
    #[serde(serialize_with = "path_as_text")]
    lock_file: PathBuf,
    state: State,
    /// Held, but not at its key's path (deleted, moved or renamed): new
    /// launchers cannot see this lock.
    orphaned: bool,
    holders: Vec<HolderJson>,
    /// The holder's `--priority` from its record (ECP-0139); `null` when
    /// free or the record is not the holder's.
    priority: Option<u32>,
    /// The holders escaped the service that launched them (ECP-0139).
    escaped: bool,
    /// The last recorded launch, as written into the file (redacted).
    metadata: Option<Shown<LockRecord>>,
    warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum State {
    Held,
    Free,
    /// This user cannot tell: the file cannot be examined, is not a regular
    /// file, or the lock table in this PID namespace may hide its lock.
    Unknown,
}

/// Where a held lock's file is, relative to where launchers look for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    InPlace,
    Deleted,
    /// Renamed inside the directory or moved out of it.
    Moved,
}

#[derive(Debug, Serialize)]
pub(super) struct HolderJson {
    pub(super) pid: u32,
    pub(super) command: Option<String>,
    pub(super) unit: Option<String>,
    since: Option<String>,
    /// With `pid`, the identity: clock ticks after boot, as in the record.
    start_ticks: Option<u64>,
    /// A launcher that holds its source's lock while it waits for a tuner
    /// slot of this device (`--tuners`): it reads nothing yet. Present only
    /// then (an addition to the schema).
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_for_tuner: Option<String>,
}

impl From<ProcessInfo> for HolderJson {
    fn from(info: ProcessInfo) -> Self {
        Self {
            pid: info.pid,
            command: info.command,
            unit: info.unit,
            since: info.since,
            start_ticks: info.start_ticks,
            waiting_for_tuner: None,
        }
    }
}

#[derive(Debug, Serialize)]
struct Report<C> {
    locks: Vec<LockStatus>,
    /// Tuner slots by device (ECP-0132); empty for `status SOURCE`.
    devices: Vec<DeviceStatus>,
    warnings: Vec<String>,
    /// Only with `--readers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    readers: Option<ReadersReport>,
    /// `cluster`, only with `--etcd` (ECP-0134).
    #[serde(flatten)]
    cluster: ClusterSection<C>,
}

/// Runs `ec-launch status`.
///
/// # Errors
/// An invalid SOURCE, or a lock directory that cannot be read.
pub fn status(args: &StatusArgs) -> Result<ExitStatus, Error> {
    status_with(args, &LocalOnly)
}

/// [`status`], with cluster mode's part from `view` (`ec-launch-cluster`
/// passes its own).
///
/// # Errors
/// As [`status`].
pub fn status_with<V: ClusterView>(args: &StatusArgs, view: &V) -> Result<ExitStatus, Error> {
    let proc_root = Path::new("/proc");
    crate::cli::ensure_lock_dir_given(&args.lock_dir)?;
    let key = match (&args.source, &args.key) {
        (Some(source), _) => Some(SourceKey::from_source(source)),
        (None, Some(key)) => Some(SourceKey::from_override(key)),
        (None, None) => None,
    }
    .transpose()
    .map_err(Error::SourceArg)?;
    let mut warnings = Vec::new();
    let Listing {
        locks: entries,
        slots,
    } = local_listing(args, &mut warnings)?;
    let wanted = key.as_ref().map(|key| key.lock_path(&args.lock_dir));
    if let Some(path) = &wanted {
        // What run would refuse to open, status refuses too (ECP-0129).
        if let Ok(metadata) = fs::symlink_metadata(path) {
            crate::path_trust::ensure_regular(path, &metadata)?;
        }
    }
    let listed: BTreeSet<LockedInode> = entries
        .iter()
        .map(|entry| entry.inode)
        .chain(slots.iter().map(|s| s.inode))
        .collect();
    // Connections first, then their owners in the one descriptor scan.
    let connections = if args.readers {
        socket_table(&mut warnings)
    } else {
        None
    };
    let sockets: HashSet<u64> = connections.iter().flatten().map(|c| c.inode).collect();
    let scan = HolderScan::take_with_sockets(proc_root, &args.lock_dir, &listed, &sockets);
    let mut locks = inspect_files(&scan, &args.lock_dir, &entries, wanted.as_ref());
    let mut slots = slots;
    let orphaned_slots = place_unlisted(
        &scan,
        &args.lock_dir,
        &listed,
        wanted.as_ref(),
        &mut locks,
        &mut slots,
    );
    // Slots are shown for the whole directory only, but a slot holder
    // accounts for its connection to the device whatever is asked.
    let (devices, device_warnings) = device_view::devices(&scan, &slots, &orphaned_slots);
    // A source's holder blocked on a slot is a launcher waiting for a
    // tuner, not a reader: said so, also when only SOURCE is asked about.
    let slot_waiters = device_view::slot_waiters(&devices);
    for holder in locks.iter_mut().flat_map(|lock| lock.holders.iter_mut()) {
        holder.waiting_for_tuner = slot_waiters.get(&holder.pid).cloned();
    }
    let (devices, device_warnings) = if key.is_none() || connections.is_some() {
        (devices, device_warnings)
    } else {
        (Vec::new(), Vec::new())
    };
    // Before the locks are narrowed to SOURCE: another channel's holder on
    // the same endpoint accounts for its connection.
    let readers = connections.map(|c| {
        let slots = device_view::slot_holdings(&devices);
        readers_report(&scan, &locks, &slots, c, key.as_ref())
    });
    if let Some(key) = &key {
        // Other sources' locks are not this question's answer.
        locks.retain(|lock| {
            Some(&lock.lock_file) == wanted.as_ref() || lock.key.as_deref() == Some(key.as_str())
        });
        for lock in &mut locks {
            lock.key = Some(key.as_str().to_owned());
        }
    }
    locks.sort_by(|a, b| (&a.key, &a.lock_file).cmp(&(&b.key, &b.lock_file)));
    let mut devices = if key.is_some() {
        Vec::new()
    } else {
        warnings.extend(device_warnings);
        devices
    };
    if args.device {
        device_view::ask_devices(&mut devices);
    }
    warnings.extend(scan.visibility_warnings());
    let held_here: Vec<&str> = locks
        .iter()
        .filter(|l| l.state == State::Held)
        .filter_map(|l| l.key.as_deref())
        .collect();
    let cluster = view.section(args, key.as_ref(), &held_here, &mut warnings);
    let report = Report {
        locks,
        devices,
        warnings,
        readers,
        cluster,
    };
    print_report(&report, args.json, view);
    Ok(exit_status(&report, key.is_some(), args.readers))
}

/// The status of each listed lock file (for one source, `wanted`: its file
/// and held files that may be it renamed), in the listing's order.
/// Thousands of files opened and read, and their holders described: system
/// calls again, spread over the cores like the scan.
fn inspect_files(
    scan: &HolderScan,
    lock_dir: &Path,
    entries: &[ListedLock],
    wanted: Option<&PathBuf>,
) -> Vec<LockStatus> {
    let entries: Vec<&ListedLock> = entries
        .iter()
        .filter(|e| wanted.is_none_or(|w| *w == e.path || scan.is_held(e.inode)))
        .collect();
    // Read-only and without following links: status must never create,
    // truncate or lock anything. Each worker opens the files relative to
    // the directory, open once.
    let open_dir = || File::open(lock_dir).ok();
    spread::map_batches(
        &entries,
        FILES_PER_BATCH,
        open_dir,
        |dir, entries| -> Vec<LockStatus> {
            entries
                .iter()
                .filter_map(|entry| {
                    let opened = match dir {
                        Some(dir) => {
                            tuner_slot::open_listed_record(dir.as_fd(), &entry.path, entry.regular)
                        }
                        None => tuner_slot::open_record_with_inode(&entry.path),
                    };
                    inspect_opened(scan, lock_dir, &entry.path, opened)
                })
                .collect()
        },
    )
    .into_iter()
    .flatten()
    .collect()
}

/// Held files the listing did not see: made after it (still in their
/// place: the directory's own), or gone from their place while held
/// (orphans). Lock files join `locks`, slot files `slots`; a slot stays a
/// slot either way (issue #16 item 8): its orphans are returned for the
/// device view.
fn place_unlisted(
    scan: &HolderScan,
    lock_dir: &Path,
    listed: &BTreeSet<LockedInode>,
    wanted: Option<&PathBuf>,
    locks: &mut Vec<LockStatus>,
    slots: &mut Vec<SlotFile>,
) -> Vec<OrphanedSlot> {
    let mut orphaned_slots = Vec::new();
    for (inode, location) in scan.located() {
        if listed.contains(inode) {
            continue;
        }
        let record = || {
            // Through the holder's descriptor link (a magic link: followed).
            open_via(&location.via)
                .ok()
                .and_then(|f| LockRecord::read_from(&f))
        };
        match unlisted(lock_dir, *inode, location, record().as_ref()) {
            Unlisted::LateLock => {
                if wanted.is_none_or(|w| *w == location.path) {
                    let opened = tuner_slot::open_record_with_inode(&location.path);
                    locks.extend(inspect_opened(scan, lock_dir, &location.path, opened));
                }
            }
            Unlisted::LateSlot(file) => slots.push(file),
            Unlisted::OrphanedSlot(orphan) => orphaned_slots.push(orphan),
            Unlisted::OrphanedLock => {
                let placement = if location.deleted {
                    Placement::Deleted
                } else {
                    Placement::Moved
                };
                locks.push(lock_status(
                    scan,
                    lock_dir,
                    location.path.clone(),
                    Some(*inode),
                    record().as_ref(),
                    placement,
                    Vec::new(),
                ));
            }
        }
    }
    slots.sort_by(|a, b| (&a.stem, a.slot).cmp(&(&b.stem, b.slot)));
    orphaned_slots
}

/// Where a held file the directory listing did not name belongs.
enum Unlisted {
    /// A lock file made in its place after the listing.
    LateLock,
    /// A slot file made in its place after the listing.
    LateSlot(SlotFile),
    /// A slot file deleted, moved or renamed while held.
    OrphanedSlot(OrphanedSlot),
    /// A lock file deleted, moved or renamed while held.
    OrphanedLock,
}

/// Sorts a held inode the listing missed. A file still at a path in the
/// lock directory that names it now was made after the listing (a
/// launcher coming up while status runs), not moved. A slot is known by
/// its name (`<stem>.tuner<i>.slot`), else by its record's device and
/// slot: a renamed slot file is still a tuner in use.
fn unlisted(
    lock_dir: &Path,
    inode: LockedInode,
    location: &crate::holder::Location,
    record: Option<&LockRecord>,
) -> Unlisted {
    let path = &location.path;
    let name = path.file_name().and_then(|n| n.to_str());
    let slot_name = name.and_then(tuner_slot::parse_slot_file_name);
    let in_place = !location.deleted
        && path.parent() == Some(lock_dir)
        && LockedInode::of_path_nofollow(path).is_ok_and(|i| i == inode);
    if in_place {
        if let Some((stem, slot)) = slot_name {
            return Unlisted::LateSlot(SlotFile {
                path: path.clone(),
                stem: stem.to_owned(),
                slot,
                inode,
            });
        }
        if path.extension().is_some_and(|x| x == "lock") {
            return Unlisted::LateLock;
        }
    }
    let from_record = record.and_then(|r| {
        let device = DeviceKey::from_flag(r.device.as_deref()?).ok()?;
        Some((device.file_stem(), r.slot?))
    });
    match slot_name
        .map(|(stem, slot)| (stem.to_owned(), slot))
        .or(from_record)
    {
        Some((stem, slot)) => Unlisted::OrphanedSlot(OrphanedSlot {
            stem,
            slot,
            inode,
            path: path.clone(),
            deleted: location.deleted,
            via: location.via.clone(),
        }),
        None => Unlisted::OrphanedLock,
    }
}

/// Every established TCP connection, or `None` with a warning saying why
/// the table cannot be read.
fn socket_table(warnings: &mut Vec<String>) -> Option<Vec<TcpConnection>> {
    sock_diag::established_to(&[])
        .map_err(|e| {
            warnings.push(format!(
                "cannot read the kernel's TCP socket table (netlink sock_diag: {e}), so readers are unknown; run as root on a kernel with inet_diag"
            ));
        })
        .ok()
}

/// The most severe finding decides: an orphan (a second holder can start),
/// then a reader without a slot or lock (a foreign reader the device
/// reports, then a stale reader on this node: both are the incident's
/// signature), then what cannot be told, then a device that did not answer.
fn exit_status<C>(report: &Report<C>, for_one_source: bool, readers_wanted: bool) -> ExitStatus {
    let readers_unknown = readers_wanted
        && report
            .readers
            .as_ref()
            .is_none_or(|readers| readers.unowned > 0 || readers.unreadable_records > 0);
    if report.locks.iter().any(|l| l.orphaned) || device_view::orphaned_slot_seen(&report.devices) {
        ExitStatus::Orphaned
    } else if device_view::foreign_reader_seen(&report.devices) {
        ExitStatus::ForeignReader
    } else if report.readers.as_ref().is_some_and(|r| r.stale > 0) {
        ExitStatus::StaleReader
    } else if readers_unknown || report.locks.iter().any(|l| l.state == State::Unknown) {
        ExitStatus::StateUnknown
    } else if device_view::device_unanswered(&report.devices) || report.cluster.unanswered {
        ExitStatus::Unavailable
    } else if for_one_source
        && !report.locks.iter().any(|l| l.state == State::Held)
        && !report.cluster.holds_wanted
    {
        ExitStatus::SourceFree
    } else {
        ExitStatus::Success
    }
}

/// The readers of every endpoint of `locks` (all of them: another
/// channel's holder on the same endpoint accounts for its connection),
/// narrowed to `key`'s endpoint when given. A connection no visible
/// process owns is looked up again: one closed between the socket dump and
/// the descriptor scan is gone, one still there is reported.
fn readers_report(
    scan: &HolderScan,
    locks: &[LockStatus],
    slots: &[device_view::SlotHolding],
    mut connections: Vec<TcpConnection>,
    key: Option<&SourceKey>,
) -> ReadersReport {
    let views: Vec<LockView<'_>> = locks
        .iter()
        .map(|lock| LockView {
            key: lock.key.as_deref(),
            source: lock.source.as_deref(),
            lock_file: &lock.lock_file,
            holders: lock.holders.iter().map(|h| h.pid).collect(),
            slot: false,
            launched_by: lock
                .metadata
                .as_ref()
                .map(|record| (record.pid, record.unit.as_deref())),
        })
        .chain(slots.iter().map(|slot| LockView {
            key: Some(&slot.label),
            source: slot.source.as_deref(),
            lock_file: &slot.slot_file,
            holders: slot.holders.clone(),
            slot: true,
            launched_by: None,
        }))
        .collect();
    let mut endpoints: Vec<(Endpoint, Vec<std::net::SocketAddr>)> = Vec::new();
    let mut index_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut placed = Vec::with_capacity(views.len());
    let mut without_endpoint = Vec::new();
    for view in &views {
        match readers::endpoint_of(view.key, view.source) {
            Ok(endpoint) => {
                let index = *index_of.entry(endpoint.name.clone()).or_insert_with(|| {
                    endpoints.push((endpoint, Vec::new()));
                    endpoints.len() - 1
                });
                placed.push((view, Some(index)));
            }
            Err(reason) => {
                if !view.slot && key.is_none_or(|k| view.key == Some(k.as_str())) {
                    without_endpoint.push(WithoutEndpoint {
                        key: view.key.map(str::to_owned),
                        lock_file: view.lock_file.to_owned(),
                        reason,
                    });
                }
                placed.push((view, None));
            }
        }
    }
    // Every name at once, against one deadline.
    readers::resolve_addresses(&mut endpoints);
    let owners = |inode: u64| scan.socket_owners(inode).collect::<Vec<u32>>();
    let watched: Vec<std::net::SocketAddr> = endpoints
        .iter()
        .flat_map(|(_, a)| a.iter().copied())
        .collect();
    let watched_set: HashSet<std::net::SocketAddr> = watched.iter().copied().collect();
    connections.retain(|c| watched_set.contains(&c.remote));
    if connections.iter().any(|c| owners(c.inode).is_empty()) {
        let still: HashSet<u64> = sock_diag::established_to(&watched)
            .map(|now| now.into_iter().map(|c| c.inode).collect())
            .unwrap_or_default();
        connections.retain(|c| !owners(c.inode).is_empty() || still.contains(&c.inode));
    }
    let mut report = readers::account(&endpoints, &placed, &connections, &owners, &|pid| {
        scan.describe(pid)
    });
    if let Some(key) = key {
        report
            .endpoints
            .retain(|e| e.sources.iter().any(|s| s == key.as_str()));
        report.stale = report
            .endpoints
            .iter()
            .flat_map(|e| &e.connections)
            .filter(|c| c.stale)
            .count();
        report.unowned = report
            .endpoints
            .iter()
            .flat_map(|e| &e.connections)
            .filter(|c| c.pid.is_none())
            .count();
    }
    // A lock without a readable record may have readers nobody can see.
    report.unreadable_records = without_endpoint
        .iter()
        .filter(|lock| lock.key.is_none())
        .count();
    report.without_endpoint = without_endpoint;
    report
}

/// The lock directory's files, from one reading of it: each inode from its
/// directory entry (no `stat` per file).
struct Listing {
    /// The `*.lock` entries that are not directories, sorted. An entry
    /// whose type cannot be told is kept: it is reported, not skipped.
    locks: Vec<ListedLock>,
    /// The slot files, sorted by device and slot: found held through their
    /// holders' descriptors, they are this directory's files, not moved
    /// locks.
    slots: Vec<SlotFile>,
}

/// [`listing`]; with `--etcd`, a missing directory is a warning, not an
/// error: a machine that is no node (an operator's workstation) may still
/// ask the cluster, and it has no local locks.
fn local_listing(args: &StatusArgs, warnings: &mut Vec<String>) -> Result<Listing, Error> {
    match listing(&args.lock_dir) {
        Err(Error::ReadLockDir { source, .. })
            if source.kind() == io::ErrorKind::NotFound && !args.etcd.endpoints.is_empty() =>
        {
            warnings.push(format!(
                "no lock directory {} on this machine: showing the cluster only",
                printable_path(&args.lock_dir)
            ));
            Ok(Listing {
                locks: Vec::new(),
                slots: Vec::new(),
            })
        }
        listed => listed,
    }
}

/// A `*.lock` entry of the lock directory.
struct ListedLock {
    path: PathBuf,
    inode: LockedInode,
    /// The listing said a regular file (`d_type`): opened without a `stat`
    /// first.
    regular: bool,
}

fn listing(dir: &Path) -> Result<Listing, Error> {
    let read_error = |source| Error::ReadLockDir {
        path: dir.to_owned(),
        source,
    };
    let device = LockedInode::of_path(dir).map_err(read_error)?;
    let entries = fs::read_dir(dir).map_err(read_error)?;
    let mut locks = Vec::new();
    let mut slots = Vec::new();
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "lock") {
            locks.push(ListedLock {
                path,
                inode: LockedInode {
                    inode: entry.ino(),
                    ..device
                },
                regular: entry.file_type().is_ok_and(|t| t.is_file()),
            });
        } else if let Some(slot) = SlotFile::from_entry(path, device, entry.ino()) {
            slots.push(slot);
        }
    }
    // Compared as bytes: every path has the directory's prefix, so this is
    // the order of the names, which `Path`'s component-wise comparison
    // also gives, at a fraction of its cost over thousands of files.
    locks.sort_unstable_by(|a, b| a.path.as_os_str().cmp(b.path.as_os_str()));
    slots.sort_by(|a, b| (&a.stem, a.slot).cmp(&(&b.stem, b.slot)));
    Ok(Listing { locks, slots })
}

/// A lock file as it is now; `None` if it vanished. A file this user cannot
/// open is still judged by its inode (a `stat` needs no read permission);
/// one that cannot even be examined is `unknown`.
fn inspect_opened(
    scan: &HolderScan,
    lock_dir: &Path,
    path: &Path,
    opened: io::Result<(File, LockedInode)>,
) -> Option<LockStatus> {
    let (metadata, lock_inode, record, mut warnings) = match opened {
        // Regular, as the open checked: the common case, in one statx.
        Ok((file, inode)) => {
            let record = LockRecord::read_from(&file);
            return Some(regular_lock_status(
                scan,
                lock_dir,
                path,
                inode,
                record.as_ref(),
                Vec::new(),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => (
            fs::symlink_metadata(path),
            LockedInode::of_path_nofollow(path).ok(),
            None,
            vec![format!(
                "cannot read the launch record ({e}); run as root or as the service user to see it"
            )],
        ),
    };
    let unknown = |warning: String| {
        lock_status(
            scan,
            lock_dir,
            path.to_owned(),
            None,
            None,
            Placement::InPlace,
            vec![warning],
        )
    };
    match metadata {
        Ok(metadata) if metadata.file_type().is_file() => {
            let inode = lock_inode.unwrap_or_else(|| LockedInode::of_metadata(&metadata));
            Some(regular_lock_status(
                scan,
                lock_dir,
                path,
                inode,
                record.as_ref(),
                warnings,
            ))
        }
        Ok(metadata) => Some(unknown(format!(
            "not a regular file (a {}): `run` refuses to lock it; inspect it and remove it",
            kind_of(metadata.file_type())
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            warnings.clear();
            Some(unknown(format!(
                "cannot examine the lock file ({e}), so whether it is held is unknown; run as root or as a user who may search the lock directory"
            )))
        }
    }
}

/// A regular lock file's status: moved when held and its record's key
/// leads elsewhere.
fn regular_lock_status(
    scan: &HolderScan,
    lock_dir: &Path,
    path: &Path,
    inode: LockedInode,
    record: Option<&LockRecord>,
    warnings: Vec<String>,
) -> LockStatus {
    let placement = if scan.is_held(inode) && misplaced(lock_dir, inode, record) {
        Placement::Moved
    } else {
        Placement::InPlace
    };
    lock_status(
        scan,
        lock_dir,
        path.to_owned(),
        Some(inode),
        record,
        placement,
        warnings,
    )
}

fn kind_of(file_type: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

/// True when the record's key says launchers look for this lock at a path
/// that does not lead to `inode`: the file was renamed. Unknown keys (no
/// record, a device that does not resolve here) are never called misplaced.
fn misplaced(lock_dir: &Path, inode: LockedInode, record: Option<&LockRecord>) -> bool {
    let Some(key) = record.map(|r| r.key.as_str()) else {
        return false;
    };
    let expected = match SourceKey::from_source(key) {
        Ok(derived) if derived.as_str() == key => Some(derived),
        // A device that does not resolve here, or a `--key` that reads as
        // another source: which name launchers use is not known.
        Ok(_) | Err(KeyError::PathUnresolvable { .. }) => None,
        // An operator-named key (`--key`) that is no source.
        Err(_) => SourceKey::from_override(key)
            .ok()
            .filter(|k| k.as_str() == key),
    };
    expected.is_some_and(|key| {
        LockedInode::of_path_nofollow(&key.lock_path(lock_dir)).map_or(true, |i| i != inode)
    })
}

/// Opens a `/proc/<pid>/fd/<n>` link read-only, without blocking (a FIFO).
fn open_via(via: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(via)
}

fn lock_status(
    scan: &HolderScan,
    lock_dir: &Path,
    lock_file: PathBuf,
    inode: Option<LockedInode>,
    record: Option<&LockRecord>,
    placement: Placement,
    mut warnings: Vec<String>,
) -> LockStatus {
    let held = inode.is_some_and(|inode| scan.is_held(inode));
    let holders = match inode {
        Some(inode) if held => scan.holders(inode, record),
        _ => Vec::new(),
    };
    let state = match inode {
        Some(_) if held => State::Held,
        Some(_) if scan.table_complete => State::Free,
        Some(_) => {
            warnings.push("not seen held, but this PID namespace's lock table may hide the lock; run status in the host's namespace".to_owned());
            State::Unknown
        }
        None => State::Unknown,
    };
    // What is shown of the record: its raw text serves only the checks.
    let shown = record.map(Shown::of);
    match placement {
        Placement::InPlace => {}
        Placement::Deleted => warnings.push(
            "the lock file was deleted while held: a new launcher would lock a new file at this path and run a second reader; stop these holders".to_owned(),
        ),
        Placement::Moved => warnings.push(format!(
            "the lock file was moved or renamed while held (it is now at this path): a new launcher would lock a new file{} and run a second reader; stop these holders",
            shown
                .as_ref()
                .and_then(|r| SourceKey::from_source(&r.key).ok())
                .map(|k| format!(" at {}", printable_path(&k.lock_path(lock_dir))))
                .unwrap_or_default()
        )),
    }
    let absent = match inode {
        Some(inode) if held => scan.absent_takers(inode, &holders),
        _ => Vec::new(),
    };
    let pids_of = |wanted: Absence| -> Vec<u32> {
        absent
            .iter()
            .filter(|(_, why)| *why == wanted)
            .map(|(pid, _)| *pid)
            .collect()
    };
    let exited = pids_of(Absence::Exited);
    if !exited.is_empty() {
        warnings.push(format!(
            "the process that took the lock (pid {}) has exited; the holders inherited its descriptor",
            join(&exited)
        ));
    }
    let not_holding = pids_of(Absence::NotHolding);
    if !not_holding.is_empty() {
        warnings.push(format!(
            "pid {}, named by the lock table as the taker, does not hold the lock: the taker exited and its pid was reused, or it closed its descriptor",
            join(&not_holding)
        ));
    }
    let unverified = pids_of(Absence::Unverified);
    if !unverified.is_empty() {
        warnings.push(format!(
            "the lock table names pid {} as the taker, but its descriptors cannot be read to confirm it still holds the lock; run as root",
            join(&unverified)
        ));
    }
    if let Some(record) = record {
        let recorded_is_holder = holders
            .iter()
            .any(|h| is_recorded_launcher(scan, h, record));
        // An exited taker was already reported above; that is this case.
        if held && !recorded_is_holder && !exited.contains(&record.pid) {
            let namespace = if record.pid_namespace.is_some()
                && record.pid_namespace
                    != crate::process::pid_namespace_of(Path::new("/proc"), "self")
            {
                " in another PID namespace"
            } else {
                ""
            };
            warnings.push(format!(
                "the record names pid {}{namespace} (launched {}), which does not hold the lock now",
                record.pid,
                shown.as_ref().map_or("?", |s| s.started_at.as_str())
            ));
        }
    } else if held && inode.is_some() && warnings.iter().all(|w| !w.starts_with("cannot read")) {
        warnings.push("the lock file has no readable launch record".to_owned());
    }
    if held && holders.is_empty() {
        warnings.push("held by a process this user cannot see; run as root".to_owned());
    }
    let (priority, escaped) = holding_priority_and_escape(record, &holders, &absent);
    warnings.extend(escaped.then(|| escaped_warning(record, &holders)));
    LockStatus {
        key: shown.as_ref().map(|r| r.key.clone()),
        source: shown.as_ref().map(|r| r.source.clone()),
        lock_file,
        state,
        orphaned: held && placement != Placement::InPlace,
        holders: holders.into_iter().map(HolderJson::from).collect(),
        priority,
        escaped,
        metadata: shown,
        warnings,
    }
}

/// The priority a held lock's record gives its holder (an older version's
/// record: 100), and whether the holders escaped (ECP-0139); `(None,
/// false)` when the record is not the holders' (an earlier launch's).
pub(super) fn holding_priority_and_escape(
    record: Option<&LockRecord>,
    holders: &[ProcessInfo],
    absent: &[(u32, Absence)],
) -> (Option<u32>, bool) {
    let Some(record) = record else {
        return (None, false);
    };
    let theirs = holders.iter().any(|h| h.pid == record.pid)
        || absent.iter().any(|(pid, _)| *pid == record.pid);
    if !theirs || holders.is_empty() {
        return (None, false);
    }
    let all_seen = !absent.iter().any(|(_, why)| *why == Absence::Unverified);
    let priority = u32::from(crate::priority::Priority::from_record(record.priority).get());
    let escaped = crate::escaped::judge().is_escaped(Some(record), true, holders, all_seen);
    (Some(priority), escaped)
}

/// What to do about escaped holders.
pub(super) fn escaped_warning(record: Option<&LockRecord>, holders: &[ProcessInfo]) -> String {
    let unit = record
        .and_then(|r| r.unit.as_deref())
        .map_or_else(|| "?".into(), |u| printable(u).into_owned());
    let pids: Vec<String> = holders.iter().map(|h| h.pid.to_string()).collect();
    format!(
        "escaped: {unit}, which launched it, no longer runs it and no service holds it; stop it (kill {}) or let the next start reclaim it (run --reclaim-escaped; the NixOS module's units do)",
        pids.join(" ")
    )
}

/// True when `holder` is the launcher `record` names: the same start time
/// (when recorded) and the same PID, as we see it or as it saw itself in
/// its PID namespace.
fn is_recorded_launcher(scan: &HolderScan, holder: &ProcessInfo, record: &LockRecord) -> bool {
    if record.start_ticks.is_some() && holder.start_ticks != record.start_ticks {
        return false;
    }
    holder.pid == record.pid
        || (record.start_ticks.is_some()
            && scan.namespace_pids(holder.pid).last() == Some(&record.pid))
}

/// A path as a JSON string: exact when it is UTF-8, else with the other
/// bytes written `\xNN` (serde refuses such paths, which emptied the report).
pub(super) fn path_as_text<S: serde::Serializer>(
    path: &Path,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match path.to_str() {
        Some(text) => serializer.serialize_str(text),
        None => serializer.serialize_str(&printable_path(path)),
    }
}

fn join(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_report<V: ClusterView>(report: &Report<V::Report>, json: bool, view: &V) {
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
            let waiting = !lock.holders.is_empty()
                && lock.holders.iter().all(|h| h.waiting_for_tuner.is_some());
            let state = match (lock.state, lock.orphaned) {
                (_, true) => "ORPHANED",
                // Held by launchers that wait for a tuner: nothing reads
                // the source yet (`--json` keeps "held", with each
                // holder's `waiting_for_tuner`).
                (State::Held, false) if waiting => "waiting",
                (State::Held, false) => "held",
                (State::Free, false) => "free",
                (State::Unknown, false) => "unknown",
            };
            let mut holders = if lock.holders.is_empty() {
                "-".to_owned()
            } else {
                lock.holders
                    .iter()
                    .map(describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            if let Some(priority) = lock.priority {
                let _ = write!(holders, " priority {priority}");
            }
            if lock.escaped {
                holders.push_str(" ESCAPED");
            }
            // Keys, sources and paths come from files anyone with write
            // access may forge: escaped, like everything printed here.
            [
                state.to_owned(),
                lock.key
                    .as_deref()
                    .map_or_else(|| "?".into(), |k| printable(k).into_owned()),
                lock.source
                    .as_deref()
                    .map_or_else(|| "?".into(), |s| printable(s).into_owned()),
                holders,
                printable_path(&lock.lock_file),
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
            let _ = writeln!(out, "  ! {}", printable(warning));
        }
    }
    if report.locks.is_empty() {
        out.push_str("(no lock files)\n");
    }
    device_view::write_text(&mut out, &report.devices);
    if let Some(readers) = &report.readers {
        out.push_str(&readers::render(readers));
    }
    if let Some(cluster) = &report.cluster.cluster {
        view.write_text(&mut out, cluster);
    }
    print!("{out}");
    for warning in &report.warnings {
        eprintln!("warning: {}", printable(warning));
    }
}

/// `4242 ec-node every-channel-publisher-a.service since 2026-…`
fn describe(holder: &HolderJson) -> String {
    let mut text = holder.pid.to_string();
    if let Some(command) = &holder.command {
        text.push(' ');
        text.push_str(&printable(command));
    }
    text.push(' ');
    text.push_str(&printable(holder.unit.as_deref().unwrap_or("(no unit)")));
    if let Some(since) = &holder.since {
        text.push_str(" since ");
        text.push_str(since);
    }
    if let Some(device) = &holder.waiting_for_tuner {
        text.push_str(" waiting for a tuner of ");
        text.push_str(&printable(device));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_for(key: &SourceKey) -> LockRecord {
        LockRecord::for_this_launch(key.as_str(), "x", "p", None)
    }

    #[test]
    fn a_lock_file_is_misplaced_only_when_its_keys_path_leads_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let keys = [
            SourceKey::from_source("http://10.0.0.5:5004/auto/v5.1").unwrap(),
            SourceKey::from_source("HTTP://Cam.example:80/a/../live?b=2&a=1&token=s").unwrap(),
            SourceKey::from_source("rtsp://cam.example/stream").unwrap(),
            SourceKey::from_override("tuner-a").unwrap(),
        ];
        for key in keys {
            let path = key.lock_path(dir.path());
            fs::write(&path, b"").unwrap();
            let inode = LockedInode::of_metadata(&fs::metadata(&path).unwrap());
            let record = record_for(&key);
            assert!(!misplaced(dir.path(), inode, Some(&record)), "{key}");
            let renamed = dir.path().join("renamed.lock");
            fs::rename(&path, &renamed).unwrap();
            assert!(misplaced(dir.path(), inode, Some(&record)), "{key}");
            fs::remove_file(&renamed).unwrap();
        }
        // Without a record, or with a key naming an absent device, it is
        // not judged.
        let inode = LockedInode {
            dev_major: 0,
            dev_minor: 0,
            inode: 1,
        };
        assert!(!misplaced(dir.path(), inode, None));
        let mut record = record_for(&SourceKey::from_override("x").unwrap());
        record.key = "/dev/no-such-video-device".into();
        assert!(!misplaced(dir.path(), inode, Some(&record)));
    }
}
