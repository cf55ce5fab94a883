//! `status`'s device view: tuner slots grouped by device (ECP-0132).
//!
//! Slot files (`<stem>.tuner<i>.slot`) are judged like source lock files:
//! by inode, against the same [`HolderScan`], the record inside each shown
//! as the last launch on that slot. A device is the set of slot files that
//! share a stem; its key and count come from the records (the file name
//! only has a label and a hash). Waiters are the `->` rows of `/proc/locks`
//! on the device's slot inodes, counted once per process: a launcher that
//! waits blocks one thread on every slot. Slot files are never `*.lock`, so
//! the `locks` section is what it was.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use serde::Serialize;

use super::device_report::DeviceReport;
use super::status::{HolderJson, State, path_as_text};
use crate::device_http::Device;
use crate::holder::{HolderScan, LockedInode};
use crate::lock_record::LockRecord;
use crate::lock_record::Preempted;
use crate::printable::printable;
use crate::proc_locks::LockTable;
use crate::shown::Shown;
use crate::tuner_slot::{self, DeviceKey, SlotFile};

/// One device as `status` reports it; also the `--json` schema of
/// `devices[]`.
#[derive(Debug, Serialize)]
pub(super) struct DeviceStatus {
    /// The device key, from the slot records; `null` when none says.
    device: Option<String>,
    /// `<label>-<hash>`, shared by the device's slot file names.
    name: String,
    /// The count the holders agree on (the smallest in records of held
    /// slots), else the newest record's; `null` when no record says.
    tuners: Option<u32>,
    /// Slots the kernel shows held.
    held: usize,
    /// Launchers waiting for a slot: blocked in `flock(2)` on one of the
    /// device's slots, or in its waiting room (ECP-0139).
    waiting: usize,
    /// The waiting room's live waiters, in the order they are served
    /// (priority, then arrival; ECP-0139).
    waiters: Vec<WaiterJson>,
    /// `DeviceID`s recorded by `--tuners auto`.
    device_ids: Vec<String>,
    slots: Vec<SlotStatus>,
    warnings: Vec<String>,
    /// With `status --device`: the device's own view beside ours.
    #[serde(flatten)]
    report: Option<DeviceReport>,
    /// The PIDs (in this namespace) blocked on one of its slots: launchers
    /// that hold their source's lock while they wait for a tuner.
    #[serde(skip)]
    waiting_pids: BTreeSet<u32>,
}

#[derive(Debug, Serialize)]
struct SlotStatus {
    slot: u32,
    #[serde(serialize_with = "path_as_text")]
    slot_file: PathBuf,
    state: State,
    /// Held, but its file was deleted, moved or renamed: a new launcher
    /// takes a new file at the slot's path, so the device has one reader
    /// more than its slots say (issue #16 item 8).
    orphaned: bool,
    holders: Vec<HolderJson>,
    /// The recorded (redacted) source of the last launch on this slot.
    source: Option<String>,
    /// The holder's `--priority` (ECP-0139); `null` when free or when the
    /// record is not the holder's.
    priority: Option<u32>,
    /// The holders escaped the service that launched them (ECP-0139).
    escaped: bool,
    /// The holder this one preempted to take the slot (ECP-0139), from its
    /// record; shown until the slot is taken again.
    preempted: Option<Preempted>,
    /// The last launch on this slot, as written into the file (redacted).
    metadata: Option<Shown<LockRecord>>,
}

/// A launcher in a device's waiting room.
#[derive(Debug, Serialize)]
struct WaiterJson {
    pid: u32,
    priority: u32,
    /// From the waiter's record (redacted).
    source: Option<String>,
    unit: Option<String>,
    since: Option<String>,
}

/// A held slot whose file is no longer at its path in the lock directory
/// (deleted, moved or renamed), found through its holders' descriptors.
#[derive(Debug)]
pub(super) struct OrphanedSlot {
    /// The device's stem, from the file's name or its record.
    pub stem: String,
    pub slot: u32,
    pub inode: LockedInode,
    /// Where the kernel says the file is (was, if deleted).
    pub path: PathBuf,
    pub deleted: bool,
    /// A descriptor link through which its record can be read.
    pub via: PathBuf,
}

/// The devices whose slot files are `files` (and held slots whose files
/// left the directory, `orphans`), and warnings about them all.
pub(super) fn devices(
    scan: &HolderScan,
    files: &[SlotFile],
    orphans: &[OrphanedSlot],
) -> (Vec<DeviceStatus>, Vec<String>) {
    if files.is_empty() && orphans.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let waiting = waiters(scan.lock_rows());
    let mut by_stem: BTreeMap<&str, (Vec<&SlotFile>, Vec<&OrphanedSlot>)> = BTreeMap::new();
    for file in files {
        by_stem.entry(&file.stem).or_default().0.push(file);
    }
    for orphan in orphans {
        by_stem.entry(&orphan.stem).or_default().1.push(orphan);
    }
    let devices: Vec<DeviceStatus> = by_stem
        .into_iter()
        .map(|(stem, (files, orphans))| device(scan, stem, &files, &orphans, &waiting))
        .collect();
    let warnings = shared_device_ids(&devices);
    (devices, warnings)
}

/// Each process blocked on a device's slot, with the device as `status`
/// names it: a launcher that holds its source's lock while it waits for a
/// tuner is no reader, and the table says so.
pub(super) fn slot_waiters(devices: &[DeviceStatus]) -> BTreeMap<u32, String> {
    let mut waiters = BTreeMap::new();
    for device in devices {
        let name = device.device.as_deref().unwrap_or(&device.name);
        for pid in &device.waiting_pids {
            waiters.entry(*pid).or_insert_with(|| name.to_owned());
        }
    }
    waiters
}

/// True when a device has a held slot whose file left its place: a second
/// reader can take a new file at its path (the same exit status as an
/// orphaned source lock).
pub(super) fn orphaned_slot_seen(devices: &[DeviceStatus]) -> bool {
    devices.iter().any(|d| d.slots.iter().any(|s| s.orphaned))
}

fn device(
    scan: &HolderScan,
    stem: &str,
    files: &[&SlotFile],
    orphans: &[&OrphanedSlot],
    waiting: &BTreeMap<LockedInode, BTreeSet<Option<u32>>>,
) -> DeviceStatus {
    let mut slots: Vec<SlotStatus> = files.iter().map(|file| slot(scan, file)).collect();
    slots.extend(orphans.iter().map(|orphan| orphaned_slot(scan, orphan)));
    slots.sort_by_key(|s| (s.slot, s.orphaned));
    let records = || slots.iter().filter_map(|s| s.metadata.as_ref());
    let held_records = || {
        slots
            .iter()
            .filter(|s| s.state == State::Held)
            .filter_map(|s| s.metadata.as_ref())
    };
    let held_counts: BTreeSet<u32> = held_records().filter_map(|r| r.tuners).collect();
    let tuners = held_counts.first().copied().or_else(|| {
        records()
            .filter(|r| r.tuners.is_some())
            .max_by_key(|r| r.started_unix)
            .and_then(|r| r.tuners)
    });
    let device = held_records()
        .chain(records())
        .find_map(|r| r.device.clone());
    let mut warnings = Vec::new();
    if held_counts.len() > 1 {
        warnings.push(format!(
            "the launchers holding slots disagree on the tuner count ({}); new launchers use the smallest: give every launcher of the device the same --tuners",
            join(held_counts.iter())
        ));
    }
    if let Some(n) = tuners {
        let beyond: Vec<u32> = slots
            .iter()
            .filter(|s| s.state == State::Held && s.slot >= n)
            .map(|s| s.slot)
            .collect();
        if !beyond.is_empty() {
            warnings.push(format!(
                "slot {} is held beyond the device's {n} tuners: taken by a launcher with a larger --tuners, which may run more readers than the device has tuners",
                join(beyond.iter())
            ));
        }
    }
    for orphan in slots.iter().filter(|s| s.orphaned) {
        let what = if orphans
            .iter()
            .any(|o| o.slot == orphan.slot && o.path == orphan.slot_file && o.deleted)
        {
            "deleted"
        } else {
            "moved or renamed"
        };
        let pids: Vec<String> = orphan.holders.iter().map(|h| h.pid.to_string()).collect();
        warnings.push(format!(
            "slot {} ORPHANED: its slot file was {what} while held (pid {} still reads through it): a new launcher takes a new file at the slot's path, so the device can have more readers than tuners; stop these holders",
            orphan.slot,
            if pids.is_empty() { "?".to_owned() } else { pids.join(", ") },
        ));
    }
    warnings.extend(slots.iter().filter(|s| s.escaped).map(escaped_slot_warning));
    let held = slots.iter().filter(|s| s.state == State::Held).count();
    if let Some(n) = tuners
        && held > usize::try_from(n).unwrap_or(usize::MAX)
    {
        warnings.push(format!(
            "{held} readers hold slots of a device with {n} tuners"
        ));
    }
    let waiting: BTreeSet<Option<u32>> = files
        .iter()
        .map(|f| f.inode)
        .chain(orphans.iter().map(|o| o.inode))
        .filter_map(|inode| waiting.get(&inode))
        .flatten()
        .copied()
        .collect();
    let device_ids: BTreeSet<String> = records().filter_map(|r| r.device_id.clone()).collect();
    let waiters = room_waiters(files, stem);
    // A waiter blocked on the slots (the room's head) is counted once.
    let waiting: BTreeSet<Option<u32>> = waiting
        .into_iter()
        .chain(waiters.iter().map(|w| Some(w.pid)))
        .collect();
    DeviceStatus {
        device,
        name: stem.to_owned(),
        tuners,
        held,
        waiting: waiting.len(),
        waiters,
        device_ids: device_ids.into_iter().collect(),
        slots,
        warnings,
        report: None,
        waiting_pids: waiting.iter().flatten().copied().collect(),
    }
}

/// What to do about a slot whose holders escaped their service (ECP-0139).
fn escaped_slot_warning(slot: &SlotStatus) -> String {
    let pids: Vec<String> = slot.holders.iter().map(|h| h.pid.to_string()).collect();
    format!(
        "slot {} is held by processes that escaped {}, which no longer runs them, and no service holds them; stop them (kill {}) or let the next start reclaim it (run --reclaim-escaped; the NixOS module's units do)",
        slot.slot,
        slot.metadata
            .as_ref()
            .and_then(|r| r.unit.as_deref())
            .unwrap_or("?"),
        pids.join(" "),
    )
}

/// The live waiters of the device's waiting room, in serving order (ECP-0139).
fn room_waiters(files: &[&SlotFile], stem: &str) -> Vec<WaiterJson> {
    files
        .first()
        .and_then(|f| f.path.parent())
        .map(|dir| crate::waiting_room::peek(&dir.join(format!("{stem}.waiting"))))
        .unwrap_or_default()
        .into_iter()
        .map(|(waiter, record)| {
            let shown = record.as_ref().map(Shown::of);
            WaiterJson {
                pid: waiter.pid,
                priority: u32::from(waiter.priority.get()),
                source: shown.as_ref().map(|r| r.source.clone()),
                unit: shown.as_ref().and_then(|r| r.unit.clone()),
                since: shown.as_ref().map(|r| r.started_at.clone()),
            }
        })
        .collect()
}

fn slot(scan: &HolderScan, file: &SlotFile) -> SlotStatus {
    let opened = tuner_slot::open_record(&file.path);
    let record = opened.as_ref().ok().and_then(LockRecord::read_from);
    let regular =
        opened.is_ok() || fs::symlink_metadata(&file.path).is_ok_and(|m| m.file_type().is_file());
    let state = if !regular {
        State::Unknown
    } else if scan.is_held(file.inode) {
        State::Held
    } else if scan.table_complete {
        State::Free
    } else {
        State::Unknown
    };
    let holders = if state == State::Held {
        scan.holders(file.inode, record.as_ref())
    } else {
        Vec::new()
    };
    let absent = if state == State::Held {
        scan.absent_takers(file.inode, &holders)
    } else {
        Vec::new()
    };
    let (priority, escaped) =
        super::status::holding_priority_and_escape(record.as_ref(), &holders, &absent);
    // Anyone who can write the file wrote the record: only its redacted
    // form is shown (its raw one served the holder check above).
    let shown = record.as_ref().map(Shown::of);
    SlotStatus {
        slot: file.slot,
        slot_file: file.path.clone(),
        state,
        orphaned: false,
        holders: holders.into_iter().map(HolderJson::from).collect(),
        source: shown.as_ref().map(|r| r.source.clone()),
        preempted: shown
            .as_ref()
            .filter(|_| priority.is_some())
            .and_then(|r| r.preempted.clone()),
        priority,
        escaped,
        metadata: shown,
    }
}

/// A held slot whose file left the directory: its holders from the scan,
/// its record through a holder's descriptor.
fn orphaned_slot(scan: &HolderScan, orphan: &OrphanedSlot) -> SlotStatus {
    let record = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&orphan.via)
        .ok()
        .and_then(|f| LockRecord::read_from(&f));
    let holders = scan.holders(orphan.inode, record.as_ref());
    // As for a listed slot: only the record's redacted form is shown.
    let shown = record.as_ref().map(Shown::of);
    SlotStatus {
        slot: orphan.slot,
        slot_file: orphan.path.clone(),
        state: State::Held,
        orphaned: true,
        holders: holders.into_iter().map(HolderJson::from).collect(),
        source: shown.as_ref().map(|r| r.source.clone()),
        priority: None,
        escaped: false,
        preempted: None,
        metadata: shown,
    }
}

/// `status --device`: asks every device whose host is known for its own
/// view (`status.json`) and adds what it says (foreign readers, or why it
/// could not be asked) to the device's entry and warnings.
pub(super) fn ask_devices(devices: &mut [DeviceStatus]) {
    for device in devices {
        let Some(host) = host_of(device) else {
            device.warnings.push(
                "no host known for this device (no slot record names a network source): not asked"
                    .to_owned(),
            );
            continue;
        };
        let asked = Device::from_host(&host);
        let report = DeviceReport::ask(&asked, device.held);
        device.warnings.extend(report.warnings(&asked));
        device.report = Some(report);
    }
}

/// The host to ask: the one the slot records' sources stream from (the
/// held slots' first), else the device key when it is the source's host
/// (and a device key at all: a record can say anything).
fn host_of(device: &DeviceStatus) -> Option<String> {
    let from_records = device
        .slots
        .iter()
        .filter(|s| s.state == State::Held)
        .chain(device.slots.iter())
        .filter_map(|s| s.source.as_deref())
        .find_map(|source| {
            let url = url::Url::parse(source).ok()?;
            url.host_str().map(str::to_owned)
        });
    from_records.or_else(|| {
        let named = DeviceKey::from_flag(device.device.as_deref()?).ok()?;
        Some(named.as_str().to_owned())
    })
}

/// True when a device reported a tuner no slot here accounts for.
pub(super) fn foreign_reader_seen(devices: &[DeviceStatus]) -> bool {
    devices
        .iter()
        .filter_map(|d| d.report.as_ref())
        .any(|r| !r.foreign_readers.is_empty())
}

/// True when `--device` asked and a device could not be told.
pub(super) fn device_unanswered(devices: &[DeviceStatus]) -> bool {
    devices
        .iter()
        .any(|d| d.report.as_ref().is_some_and(DeviceReport::unanswered))
}

/// The processes waiting on each inode (`->` rows; `None` for a PID
/// outside this namespace), from the table the holders were found in.
fn waiters(table: &LockTable) -> BTreeMap<LockedInode, BTreeSet<Option<u32>>> {
    let mut waiting: BTreeMap<LockedInode, BTreeSet<Option<u32>>> = BTreeMap::new();
    for row in table.awaited_flocks() {
        let inode = LockedInode {
            dev_major: row.dev_major,
            dev_minor: row.dev_minor,
            inode: row.inode,
        };
        waiting.entry(inode).or_default().insert(row.pid);
    }
    waiting
}

/// Two device keys whose records name one `DeviceID` are two names of one
/// box: their launchers count its tuners twice.
fn shared_device_ids(devices: &[DeviceStatus]) -> Vec<String> {
    let mut keys_of: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for device in devices {
        for id in &device.device_ids {
            keys_of
                .entry(id)
                .or_default()
                .insert(device.device.clone().unwrap_or_else(|| device.name.clone()));
        }
    }
    keys_of
        .into_iter()
        .filter(|(_, keys)| keys.len() > 1)
        .map(|(id, keys)| {
            format!(
                "device keys {} report one DeviceID {id}: two names of one box count its tuners twice; give their launchers one --device",
                join(keys.iter())
            )
        })
        .collect()
}

/// `10.0.0.5  tuners 2/2 held: slot 0 pid 4242 ec-node (x.service, http://…), slot 1 free; 1 waiting`
/// and the device's warnings, escaped for the terminal.
/// A held tuner slot as `status --readers` accounts for it (ECP-0133):
/// its holders read the device on the slot's behalf.
#[derive(Debug)]
pub(super) struct SlotHolding {
    /// `tuner slot <i> of <device>`.
    pub label: String,
    /// The recorded (redacted) source of the last launch on the slot.
    pub source: Option<String>,
    pub slot_file: PathBuf,
    pub holders: Vec<u32>,
}

/// Every held slot of `devices`, with its holders.
pub(super) fn slot_holdings(devices: &[DeviceStatus]) -> Vec<SlotHolding> {
    devices
        .iter()
        .flat_map(|device| {
            let name = device.device.as_deref().unwrap_or(&device.name);
            device
                .slots
                .iter()
                .filter(|slot| !slot.holders.is_empty())
                .map(move |slot| SlotHolding {
                    label: format!("{}{} of {name}", crate::readers::SLOT_LABEL, slot.slot),
                    source: slot.source.clone(),
                    slot_file: slot.slot_file.clone(),
                    holders: slot.holders.iter().map(|h| h.pid).collect(),
                })
        })
        .collect()
}

pub(super) fn write_text(out: &mut String, devices: &[DeviceStatus]) {
    if devices.is_empty() {
        return;
    }
    out.push('\n');
    for device in devices {
        let name = device.device.as_deref().unwrap_or(&device.name);
        let tuners = device
            .tuners
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        let shown: Vec<String> = device
            .slots
            .iter()
            .filter(|s| s.state != State::Free || device.tuners.is_none_or(|n| s.slot < n))
            .map(describe_slot)
            .collect();
        let _ = writeln!(
            out,
            "{}  tuners {}/{tuners} held: {}; {} waiting",
            printable(name),
            device.held,
            shown.join(", "),
            device.waiting
        );
        // The waiting room, in the order it is served (ECP-0139).
        if !device.waiters.is_empty() {
            let line: Vec<String> = device
                .waiters
                .iter()
                .map(|w| {
                    let source = w.source.as_deref().map_or("?".into(), printable);
                    format!("pid {} priority {} ({source})", w.pid, w.priority)
                })
                .collect();
            let _ = writeln!(out, "  in line: {}", line.join(", "));
        }
        for warning in &device.warnings {
            let _ = writeln!(out, "  ! {}", printable(warning));
        }
    }
}

fn describe_slot(slot: &SlotStatus) -> String {
    let state = match slot.state {
        _ if slot.orphaned => " ORPHANED",
        State::Held => "",
        State::Free => " free",
        State::Unknown => " unknown",
    };
    let mut text = format!("slot {}{state}", slot.slot);
    if slot.state == State::Held && slot.holders.is_empty() {
        text.push_str(" held by a process this user cannot see");
    }
    let source = slot.source.as_deref().map_or("?".into(), printable);
    for (index, holder) in slot.holders.iter().enumerate() {
        if index > 0 {
            text.push_str(" and");
        }
        let _ = write!(text, " pid {}", holder.pid);
        if let Some(command) = &holder.command {
            let _ = write!(text, " {}", printable(command));
        }
        let unit = holder.unit.as_deref().map_or("no unit".into(), printable);
        let _ = write!(text, " ({unit}, {source})");
    }
    if let Some(priority) = slot.priority {
        let _ = write!(text, " priority {priority}");
    }
    if slot.escaped {
        text.push_str(" ESCAPED");
    }
    if let Some(victim) = &slot.preempted {
        let _ = write!(
            text,
            " (preempted pid {} {} ({}, {}) at priority {} at {})",
            victim.pid,
            printable(victim.program.as_deref().unwrap_or("?")),
            printable(victim.unit.as_deref().unwrap_or("no unit")),
            printable(&victim.source),
            victim.priority,
            printable(&victim.at),
        );
    }
    text
}

fn join<T: ToString>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(index: u32, state: State, pid: Option<u32>) -> SlotStatus {
        SlotStatus {
            slot: index,
            slot_file: PathBuf::from(format!("/run/l/d-0.tuner{index}.slot")),
            state,
            orphaned: false,
            holders: pid
                .map(|pid| {
                    HolderJson::from(crate::process::ProcessInfo {
                        pid,
                        command: Some("ec-node\x1b".into()),
                        unit: Some("a.service".into()),
                        since: None,
                        start_ticks: None,
                    })
                })
                .into_iter()
                .collect(),
            source: pid.map(|_| "http://10.0.0.5:5004/auto/v5.1".into()),
            priority: None,
            escaped: false,
            preempted: None,
            metadata: None,
        }
    }

    #[test]
    fn a_device_is_one_line_with_each_slot_its_holders_and_the_waiters() {
        let device = DeviceStatus {
            device: Some("10.0.0.5".into()),
            name: "10.0.0.5-d68ebdae456af6a8".into(),
            tuners: Some(2),
            held: 1,
            waiting: 3,
            waiters: Vec::new(),
            device_ids: Vec::new(),
            slots: vec![
                slot(0, State::Held, Some(42)),
                slot(1, State::Free, None),
                // A free file of a past, larger configuration: not shown.
                slot(2, State::Free, None),
            ],
            warnings: vec!["w\rx".into()],
            report: None,
            waiting_pids: BTreeSet::new(),
        };
        let mut out = String::new();
        write_text(&mut out, &[device]);
        assert_eq!(
            out,
            "\n10.0.0.5  tuners 1/2 held: slot 0 pid 42 ec-node\\x1b (a.service, http://10.0.0.5:5004/auto/v5.1), slot 1 free; 3 waiting\n  ! w\\rx\n"
        );
        let mut none = String::new();
        write_text(&mut none, &[]);
        assert_eq!(none, "", "no devices, no block: the table is as it was");
    }

    #[test]
    fn two_device_keys_reporting_one_device_id_are_warned_about() {
        let device = |key: &str| DeviceStatus {
            device: Some(key.into()),
            name: key.into(),
            tuners: Some(2),
            held: 0,
            waiting: 0,
            waiters: Vec::new(),
            device_ids: vec!["1040ABCD".into()],
            slots: Vec::new(),
            warnings: Vec::new(),
            report: None,
            waiting_pids: BTreeSet::new(),
        };
        let warnings = shared_device_ids(&[device("10.0.0.5"), device("hdhr.lan")]);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("10.0.0.5, hdhr.lan report one DeviceID 1040ABCD"));
        assert!(shared_device_ids(&[device("10.0.0.5")]).is_empty());
    }

    #[test]
    fn a_device_is_asked_at_the_host_its_slots_stream_from_not_at_its_name() {
        let mut device = DeviceStatus {
            device: Some("attic".into()),
            name: "attic-0".into(),
            tuners: Some(2),
            held: 1,
            waiting: 0,
            waiters: Vec::new(),
            device_ids: Vec::new(),
            slots: vec![slot(0, State::Held, Some(42)), slot(1, State::Free, None)],
            warnings: Vec::new(),
            report: None,
            waiting_pids: BTreeSet::new(),
        };
        assert_eq!(host_of(&device).as_deref(), Some("10.0.0.5"));
        // A redacted credential in the record's source does not hide its host.
        device.slots[0].source = Some("http://***@[fd00::5]:5004/auto/v5.1?token=***".into());
        assert_eq!(host_of(&device).as_deref(), Some("[fd00::5]"));
        // No record: the device key, which is the source's host unless named.
        device.slots[0].source = None;
        assert_eq!(host_of(&device).as_deref(), Some("attic"));
    }
}
