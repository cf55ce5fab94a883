//! `ec-launch run`: take the source's lock, then become the program.
//!
//! The order matters: validate everything that can be validated (source,
//! key, arguments, the program's whole `argv` and environment) before
//! touching the lock directory, so bad input never costs a lock; take the lock before exec, so nothing runs without it; and
//! keep no process of ours afterwards, so the lock lives exactly as long as
//! the program and the children that inherit its descriptor.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cgroup;
use crate::cli::{OnBusy, RunArgs};
use crate::cluster::ClusterConfig;
use crate::cluster::claim::Disagreement;
use crate::cluster::keyspace;
use crate::cluster::placement::{Want, WantRecord};
use crate::cluster::record::{ClusterRecord, Declarant, WaitingRecord};
use crate::cluster::session::{Busy, Session, SlotClaim, SourceClaim, Taken};
use crate::cluster::vouch::Vouch;
use crate::error::Error;
use crate::exec::{self, Launch};
use crate::exit_code::ExitStatus;
use crate::holder::{Absence, HolderScan, LockedInode};
use crate::lock::{self, Access, Acquired, BusyPolicy, HeldLock};
use crate::lock_record::LockRecord;
use crate::path_trust::{self, Launcher};
use crate::printable::{printable, printable_path, shell_word};
use crate::priority::Priority;
use crate::process::ProcessInfo;
use crate::redact::{redact_source, redact_word};
use crate::shown::Shown;
use crate::source_key::{self, SourceKey};
use crate::tuner_slot::{self, BusySlot, DeviceKey, HeldSlot, SlotOutcome};
use crate::watchdog;

/// How long a launch that waited pauses before exec, so the previous
/// holder's stream is closed on the device before ours opens (ECP-0132,
/// "Hand-over"). Far below a device's 503-and-restart cycle (`RestartSec`).
const HANDOVER_SETTLE: Duration = Duration::from_millis(250);

/// `run`'s validated settings.
#[derive(Debug)]
struct RunConfig {
    lock_dir: PathBuf,
    /// The source as the program needs it (may hold credentials).
    source: String,
    key: SourceKey,
    /// The key was named with `--key` (so `status` must be asked with `--key`).
    key_named: bool,
    policy: BusyPolicy,
    busy_status: ExitStatus,
    program: OsString,
    args: Vec<OsString>,
    /// With `--tuners`: which device's slots, and how many.
    tuners: Option<TunerConfig>,
    progress_watchdog: bool,
    /// `--progress-window` (cluster mode only).
    progress_window: Option<Duration>,
    /// With `--etcd`: cluster mode (ECP-0134).
    cluster: Option<ClusterConfig>,
    /// `--priority` (ECP-0139).
    priority: Priority,
    /// `--preempt-grace`: SIGTERM to SIGKILL for a holder made to let go.
    preempt_grace: Duration,
    /// `--reclaim-escaped`.
    reclaim_escaped: bool,
}

/// `--tuners N` and `--device KEY`, validated (ECP-0132).
#[derive(Debug)]
struct TunerConfig {
    device: DeviceKey,
    /// As given (or learnt by `auto`), before agreeing with other launchers.
    count: u32,
    /// The device's own `DeviceID`, when `auto` learnt it.
    device_id: Option<String>,
}

impl RunConfig {
    fn from_args(args: RunArgs) -> Result<Self, Error> {
        crate::cli::ensure_lock_dir_given(&args.lock_dir)?;
        let source = match (&args.source, &args.source_file) {
            (Some(source), _) => source.clone(),
            (None, Some(path)) => read_source_file(path)?,
            // clap requires one of the two.
            (None, None) => String::new(),
        };
        // Also with --key: what is recorded and logged is what the program gets.
        source_key::ensure_source_text(&source)?;
        let key = match &args.key {
            // An operator-named key stands for a source we may not understand,
            // so the source itself is only required to be non-empty.
            Some(key) => SourceKey::from_override(key)?,
            None => SourceKey::from_source(&source)?,
        };
        let policy = match args.on_busy {
            OnBusy::Skip => BusyPolicy::Skip,
            OnBusy::Wait => BusyPolicy::Wait {
                timeout: args.wait_timeout,
            },
        };
        let priority = match &args.priority {
            None => Priority::default(),
            Some(text) => Priority::parse(text).map_err(|value| Error::BadPriority { value })?,
        };
        let mut command = args.command.into_iter();
        let program = command.next().unwrap_or_default();
        if program.is_empty() {
            return Err(Error::EmptyProgram);
        }
        // Before the device is asked (`--tuners auto`): a bad cluster
        // setting is the cheaper thing to find out.
        let cluster = ClusterConfig::from_args(&args.cluster, args.on_busy == OnBusy::Wait)?;
        if args.progress_window.is_some() && cluster.is_none() {
            // Locally the monitor feeds systemd itself: no window to apply.
            return Err(Error::ClusterOptionWithoutEtcd {
                flag: "--progress-window",
            });
        }
        let tuners = match args.tuners {
            None => None,
            Some(tuners) => {
                let host = tuner_slot::source_host(&key, &source);
                let device = match args.device {
                    Some(device) => device,
                    None => DeviceKey::of_source(&key, &source).ok_or(Error::NoDeviceKey)?,
                };
                let asked = tuner_slot::tuner_count(tuners, &device, host.as_deref())?;
                Some(TunerConfig {
                    device,
                    count: asked.count,
                    device_id: asked.device_id,
                })
            }
        };
        Ok(Self {
            lock_dir: args.lock_dir,
            source,
            key,
            key_named: args.key.is_some(),
            policy,
            busy_status: ExitStatus::Busy(args.busy_exit_code),
            program,
            args: command.collect(),
            tuners,
            progress_watchdog: args.progress_watchdog,
            progress_window: args.progress_window,
            cluster,
            priority,
            preempt_grace: args.preempt_grace,
            reclaim_escaped: args.reclaim_escaped,
        })
    }
}

/// The most `--source-file` may hold: a URL with its credentials is far
/// smaller, and a bound keeps `/dev/zero` or a huge file from eating memory.
const MAX_SOURCE_FILE: u64 = 64 * 1024;

/// Reads one source from a file: one line (`\n` or `\r\n` ends it), blank
/// lines ignored. The line is taken as it is: whitespace in it is refused
/// later, never trimmed, so the program gets exactly what was keyed.
/// Only a regular file of at most [`MAX_SOURCE_FILE`] bytes is read; a FIFO
/// or device is refused before it is opened (and, should the path change in
/// between, opening does not block and the opened file is checked again).
fn read_source_file(path: &Path) -> Result<String, Error> {
    let read_error = |source| Error::ReadSourceFile {
        path: path.to_owned(),
        source,
    };
    let ensure_regular = |metadata: &fs::Metadata| {
        if metadata.is_file() {
            Ok(())
        } else {
            Err(Error::SourceFileNotRegular {
                path: path.to_owned(),
                kind: path_trust::kind(metadata.file_type()),
            })
        }
    };
    ensure_regular(&fs::metadata(path).map_err(read_error)?)?;
    let flags = (nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY).bits();
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(read_error)?;
    ensure_regular(&file.metadata().map_err(read_error)?)?;
    let mut bytes = Vec::new();
    file.take(MAX_SOURCE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_SOURCE_FILE {
        return Err(Error::SourceFileTooLarge {
            path: path.to_owned(),
            limit: MAX_SOURCE_FILE,
        });
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let source = lines.next().ok_or_else(|| Error::SourceFileEmpty {
        path: path.to_owned(),
    })?;
    if lines.next().is_some() {
        return Err(Error::SourceFileMultiline {
            path: path.to_owned(),
        });
    }
    Ok(source.to_owned())
}

/// Runs `ec-launch run`. On success this never returns: the process is the
/// program now. It returns the busy status, or an error.
///
/// # Errors
/// Invalid input, lock directory or file problems, or a failed exec.
pub fn run(args: RunArgs) -> Result<ExitStatus, Error> {
    if args.wait_timeout.is_some() && args.on_busy == OnBusy::Skip {
        tracing::warn!("--wait-timeout has no effect with --on-busy skip");
    }
    // --wait-timeout bounds the source lock and the slot together.
    let started = Instant::now();
    let config = RunConfig::from_args(args)?;
    let deadline = match config.policy {
        BusyPolicy::Wait { timeout: Some(t) } => started.checked_add(t),
        _ => None,
    };
    let lock_path = config.key.lock_path(&config.lock_dir);
    let prepared = exec::prepare(&Launch {
        program: &config.program,
        args: &config.args,
        source: &config.source,
        key: config.key.as_str(),
        lock_path: &lock_path,
        device: config.tuners.as_ref().map(|t| t.device.as_str()),
    })?
    .with_priority(config.priority.get());
    // Logged and recorded: a URL given as the program must not show its credential.
    let program_name = redact_word(&config.program.to_string_lossy());
    let redacted = redact_source(&config.source);
    tracing::debug!(source = %redacted, key = %config.key, lock_file = %lock_path.display(), policy = ?config.policy, "launch validated");
    // Forked before any lock file is opened, so it never has a lock
    // descriptor; kept until exec, which tells it the program runs.
    // In cluster mode it reports to the launcher, which alone vouches to
    // systemd (ECP-0135 section 4).
    let monitor = watchdog::start_if_asked(
        config.progress_watchdog,
        &config.source,
        config.cluster.is_some(),
    )?;
    // Only now, with nothing left to validate, is the lock directory touched.
    let me = Launcher::current();
    lock::ensure_lock_dir(&config.lock_dir, &me)?;

    let mut wait_started = None;
    let mut announce_wait = |file: &fs::File| {
        wait_started = Some(Instant::now());
        let until = until(&config);
        tracing::info!(
            key = %printable(config.key.as_str()),
            lock_file = %printable_path(&lock_path),
            "source busy: held by {}; waiting{until} before starting {} (see `{}`)",
            describe_holders(&config, file),
            printable(&program_name),
            status_command(&config),
        );
    };
    let reclaimed = if config.reclaim_escaped {
        reclaim_source(&config, &lock_path, &me)?
    } else {
        None
    };
    let acquired = match reclaimed {
        Some(held) => Acquired::Held(held),
        None => lock::acquire(&lock_path, config.policy, &me, &mut announce_wait)?,
    };
    let held = match acquired {
        Acquired::Held(held) => held,
        Acquired::Busy { file, timed_out } => {
            report_busy(&config, &lock_path, &file, timed_out, &program_name);
            return Ok(config.busy_status);
        }
    };
    let launch = Launching {
        config: &config,
        lock_path: &lock_path,
        program_name: &program_name,
        redacted: &redacted,
        deadline,
        me: &me,
    };
    launch.holding(held, prepared, monitor, wait_started)
}

/// A launch that holds its source lock: what the rest needs to know.
struct Launching<'a> {
    config: &'a RunConfig,
    lock_path: &'a Path,
    /// Redacted, for logs and records.
    program_name: &'a str,
    redacted: &'a str,
    /// `--wait-timeout` from the start: it bounds every lock together.
    deadline: Option<Instant>,
    me: &'a Launcher,
}

impl Launching<'_> {
    /// Records the lock, takes the cluster key and a slot when asked, and
    /// runs the program: by exec, or supervised in cluster mode.
    /// The record this launch writes into its lock and slot files.
    fn launch_record(&self, unit: Option<String>) -> impl Fn() -> LockRecord + '_ {
        let config = self.config;
        // Only a service's launch can escape it (ECP-0139); a launch by hand
        // does not pay for reading the mount table.
        let cgroup_dir = unit
            .as_deref()
            .filter(|u| u.ends_with(".service"))
            .and_then(|_| crate::escaped::own_cgroup_dir())
            .map(|d| d.to_string_lossy().into_owned());
        let lock_dir_inode = fs::metadata(&config.lock_dir).ok().map(|m| m.ino());
        move || {
            let mut record = LockRecord::for_this_launch(
                config.key.as_str(),
                self.redacted,
                self.program_name,
                unit.clone(),
            );
            record.lock_dir_inode = lock_dir_inode;
            record.priority = Some(u32::from(config.priority.get()));
            record.cgroup.clone_from(&cgroup_dir);
            record
        }
    }

    fn holding(
        &self,
        held: HeldLock,
        prepared: exec::Prepared,
        mut monitor: Option<watchdog::Monitor>,
        mut wait_started: Option<Instant>,
    ) -> Result<ExitStatus, Error> {
        let config = self.config;
        let progress = monitor.as_mut().and_then(watchdog::Monitor::take_progress);
        let unit = cgroup::own_unit();
        let record = self.launch_record(unit.clone());
        write_record(&held, &record(), "lock");
        // The cluster's key after the node's (ECP-0134): two units on one
        // node never race through etcd. Nothing of it runs without --etcd.
        let (source_value, slot_value, waiting_value) =
            cluster_values(config, unit.as_ref(), self.redacted);
        let want_value = want_value(config, unit.as_ref());
        let source_claim = SourceClaim {
            key: config.key.as_str(),
            value: &source_value,
            wait: matches!(config.policy, BusyPolicy::Wait { .. }),
            until: self.deadline,
            spread: spread_want(config, &want_value),
        };
        let slot_claim = config.tuners.as_ref().map(|tuners| SlotClaim {
            device: tuners.device.as_str(),
            count: tuners.count,
            value: &slot_value,
            waiting_value: &waiting_value,
        });
        let mut session = match &config.cluster {
            None => None,
            Some(cluster) => {
                match take_cluster_source(
                    config,
                    (cluster, progress),
                    &source_claim,
                    self.program_name,
                    &mut wait_started,
                )? {
                    Some(session) => Some(session),
                    None => return Ok(config.busy_status),
                }
            }
        };
        // Source first, then a slot: a duplicate stopped above.
        let slot = match &config.tuners {
            None => None,
            Some(tuners) => {
                let taken = take_slot(
                    config,
                    tuners,
                    self.deadline,
                    self.me,
                    self.program_name,
                    &mut wait_started,
                    &record(),
                )?;
                let Some(slot) = taken else {
                    return Ok(config.busy_status);
                };
                if let (Some(session), Some(slot_claim)) = (&mut session, &slot_claim)
                    && !take_cluster_slot(
                        config,
                        session,
                        (&source_claim, slot_claim),
                        self.program_name,
                        &mut wait_started,
                    )?
                {
                    return Ok(config.busy_status);
                }
                Some(slot)
            }
        };
        let claims = (&source_claim, slot_claim.as_ref());
        if !settle_in_cluster(config, session.as_mut(), claims, self.program_name)? {
            return Ok(config.busy_status);
        }
        if wait_started.is_some() {
            // Taken after a wait: another reader just let go, and its
            // connection to the device can outlive its lock by a few
            // milliseconds (its flock is released before its socket's
            // FIN reaches the device). Connecting at once was seen to
            // get a 503 in the acceptance suite; give it time to close.
            std::thread::sleep(HANDOVER_SETTLE);
        }
        self.announce_start(slot.as_ref(), wait_started, session.is_some());
        match (session, &config.cluster) {
            (Some(session), Some(cluster)) => supervise_in_cluster(
                prepared,
                held,
                slot,
                session,
                cluster.timing.stop_grace,
                monitor,
            ),
            _ => Err(exec::exec(prepared, &held, slot.as_ref())),
        }
    }

    fn announce_start(
        &self,
        slot: Option<&HeldSlot>,
        wait_started: Option<Instant>,
        in_cluster: bool,
    ) {
        let config = self.config;
        let waited = wait_started
            .map(|start| format!(" after waiting {:.1}s", start.elapsed().as_secs_f64()))
            .unwrap_or_default();
        let in_cluster = if in_cluster {
            " (here and in the cluster)"
        } else {
            ""
        };
        match slot {
            None => {
                tracing::info!(key = %printable(config.key.as_str()), lock_file = %printable_path(self.lock_path), "source lock acquired{in_cluster}{waited}; starting {}", printable(self.program_name));
            }
            Some(slot) => {
                tracing::info!(key = %printable(config.key.as_str()), lock_file = %printable_path(self.lock_path), slot_file = %printable_path(&slot.lock.path), "source lock and tuner slot {} acquired{in_cluster}{waited}; starting {}", slot.slot, printable(self.program_name));
            }
        }
    }
}

/// Takes one of the device's slots (ECP-0132) in the order of priority,
/// preempting or reclaiming when allowed (ECP-0139), announcing a wait;
/// `None` when every slot stayed held, which is reported here. The slot's
/// record (`record` with the slot's fields, and the holder preempted for
/// it) is written into the slot.
fn take_slot(
    config: &RunConfig,
    tuners: &TunerConfig,
    deadline: Option<Instant>,
    me: &Launcher,
    program_name: &str,
    wait_started: &mut Option<Instant>,
    record: &LockRecord,
) -> Result<Option<HeldSlot>, Error> {
    let wait = matches!(config.policy, BusyPolicy::Wait { .. });
    let mut announce_wait = |slots: &[BusySlot]| {
        wait_started.get_or_insert_with(Instant::now);
        if slots.is_empty() {
            tracing::info!(
                device = %printable(tuners.device.as_str()),
                key = %printable(config.key.as_str()),
                "device busy: a free tuner slot of {} is kept for a launcher of higher priority or longer waiting; waiting{} before starting {} (priority {}; see `{}`)",
                printable(tuners.device.as_str()),
                until(config),
                printable(program_name),
                config.priority,
                device_status_command(config),
            );
            return;
        }
        tracing::info!(
            device = %printable(tuners.device.as_str()),
            key = %printable(config.key.as_str()),
            "device busy: all {} tuner slots of {} are held: {}; waiting{} before starting {} (priority {}; see `{}`)",
            slots.len(),
            printable(tuners.device.as_str()),
            describe_slots(&config.lock_dir, slots),
            until(config),
            printable(program_name),
            config.priority,
            device_status_command(config),
        );
    };
    let request = crate::slot_order::Request {
        lock_dir: &config.lock_dir,
        device: &tuners.device,
        count: tuners.count,
        wait,
        deadline,
        me,
        priority: config.priority,
        grace: config.preempt_grace,
        reclaim_escaped: config.reclaim_escaped,
        record,
    };
    let outcome = crate::slot_order::acquire(&request, &mut announce_wait)?;
    if outcome.handed_over {
        wait_started.get_or_insert_with(Instant::now);
    }
    match outcome.slot {
        SlotOutcome::Held(slot) => {
            let slot_record = LockRecord {
                device: Some(tuners.device.as_str().to_owned()),
                slot: Some(slot.slot),
                tuners: Some(tuners.count),
                device_id: tuners.device_id.clone(),
                preempted: outcome.preempted,
                ..record.clone()
            };
            write_record(&slot.lock, &slot_record, "tuner slot");
            Ok(Some(slot))
        }
        SlotOutcome::Busy { slots, timed_out } if slots.is_empty() => {
            let waited = gave_up_waiting(config, timed_out);
            let behind: Vec<String> = outcome
                .behind
                .iter()
                .map(|w| format!("pid {} at priority {}", w.pid, w.priority))
                .collect();
            tracing::warn!(
                device = %printable(tuners.device.as_str()),
                key = %printable(config.key.as_str()),
                "device busy: the free tuner slot of {} is kept for the launchers waiting before this one (priority {}): {}; {waited}not starting {}, exiting {} (see `{}`)",
                printable(tuners.device.as_str()),
                config.priority,
                behind.join(", "),
                printable(program_name),
                config.busy_status.code(),
                device_status_command(config),
            );
            Ok(None)
        }
        SlotOutcome::Busy { slots, timed_out } => {
            report_device_busy(config, &tuners.device, &slots, timed_out, program_name);
            Ok(None)
        }
        SlotOutcome::Orphaned { orphans, timed_out } => {
            let waited = gave_up_waiting(config, timed_out);
            tracing::warn!(
                device = %printable(tuners.device.as_str()),
                key = %printable(config.key.as_str()),
                "device busy: {}; with it a slot of {} would be one reader more than its {} tuners; {waited}not starting {}, exiting {} (stop those holders; see `{}`)",
                tuner_slot::describe_orphans(&orphans),
                printable(tuners.device.as_str()),
                tuners.count,
                printable(program_name),
                config.busy_status.code(),
                device_status_command(config),
            );
            Ok(None)
        }
    }
}

/// With `--reclaim-escaped`: when the source lock is held by processes
/// that escaped the service that launched them (ECP-0139), makes them let
/// go (logging each) and returns the lock; `None` when it is free, or held
/// by anyone else (the normal path then skips or waits).
fn reclaim_source(
    config: &RunConfig,
    lock_path: &Path,
    me: &Launcher,
) -> Result<Option<HeldLock>, Error> {
    let file = match lock::acquire(lock_path, BusyPolicy::Skip, me, &mut |_| {})? {
        Acquired::Held(held) => return Ok(Some(held)),
        Acquired::Busy { file, .. } => file,
    };
    let holdings = crate::preempt::survey(&config.lock_dir, &[(0, lock_path.to_owned(), &file)]);
    let judge = crate::escaped::Judge::for_this_process();
    let Some(escaped) = holdings.iter().find(|h| {
        judge.is_escaped(
            h.record.as_ref(),
            h.record_is_theirs,
            &h.holders,
            h.all_seen,
        )
    }) else {
        return Ok(None);
    };
    let unit = escaped
        .record
        .as_ref()
        .and_then(|r| r.unit.clone())
        .unwrap_or_default();
    let mut on_signal = |holder: &ProcessInfo, signal: &str| {
        tracing::warn!(
            key = %printable(config.key.as_str()),
            lock_file = %printable_path(lock_path),
            "reclaiming the source lock from a holder that escaped {}: {signal} to pid {} ({}) in cgroup {}",
            printable(&unit),
            holder.pid,
            printable(holder.command.as_deref().unwrap_or("?")),
            crate::slot_order::cgroup_of(holder.pid),
        );
    };
    let taken = crate::preempt::make_let_go(
        &config.lock_dir,
        lock_path,
        escaped.inode,
        config.preempt_grace,
        me,
        &mut on_signal,
    )?;
    match taken {
        Some(taken) => {
            tracing::info!(key = %printable(config.key.as_str()), "source lock reclaimed {:.1} ms after SIGTERM", taken.after_term.as_secs_f64() * 1000.0);
            Ok(Some(taken.lock))
        }
        None => Ok(None),
    }
}

/// Writes `record` into a held lock or slot file, or says why not.
fn write_record(held: &HeldLock, record: &LockRecord, what: &str) {
    match held.access {
        Access::ReadWrite => {
            if let Err(e) = record.write_into(&held.lock) {
                tracing::warn!(lock_file = %printable_path(&held.path), "holding the {what}, but cannot write the launch record: {e}");
            }
        }
        Access::ReadOnly => tracing::warn!(
            lock_file = %printable_path(&held.path),
            "holding the {what} through a read-only descriptor (the file belongs to another user); its launch record is not updated"
        ),
    }
}

/// One warning: who holds the source (from the kernel), since when, and
/// what we did instead.
fn report_busy(
    config: &RunConfig,
    lock_path: &Path,
    file: &fs::File,
    timed_out: bool,
    program: &str,
) {
    let waited = gave_up_waiting(config, timed_out);
    tracing::warn!(
        key = %printable(config.key.as_str()),
        lock_file = %printable_path(lock_path),
        "source busy: held by {}; {waited}not starting {}, exiting {} (see `{}`)",
        describe_holders(config, file),
        printable(program),
        config.busy_status.code(),
        status_command(config),
    );
}

/// `gave up waiting after 30s; ` when a bounded wait ran out, else nothing.
fn gave_up_waiting(config: &RunConfig, timed_out: bool) -> String {
    match config.policy {
        BusyPolicy::Wait { timeout: Some(t) } if timed_out => {
            format!("gave up waiting after {}; ", seconds(t))
        }
        _ => String::new(),
    }
}

/// Who holds the lock on `file`, from the kernel (see [`describe_files`]).
fn describe_holders(config: &RunConfig, file: &fs::File) -> String {
    describe_files(&config.lock_dir, &[file]).remove(0).0
}

/// One warning naming, for every slot of the device, its holders and the
/// source they read (from the slot's record), and what we did instead.
fn report_device_busy(
    config: &RunConfig,
    device: &DeviceKey,
    slots: &[BusySlot],
    timed_out: bool,
    program: &str,
) {
    let waited = gave_up_waiting(config, timed_out);
    tracing::warn!(
        device = %printable(device.as_str()),
        key = %printable(config.key.as_str()),
        "device busy: all {} tuner slots of {} are held: {}; {waited}not starting {}, exiting {} (see `{}`)",
        slots.len(),
        printable(device.as_str()),
        describe_slots(&config.lock_dir, slots),
        printable(program),
        config.busy_status.code(),
        device_status_command(config),
    );
}

/// `slot 0 held by pid 4242 (ec-node) in x.service since … reading http://…; slot 1 …`
fn describe_slots(lock_dir: &Path, slots: &[BusySlot]) -> String {
    let files: Vec<&fs::File> = slots.iter().map(|(_, file)| file).collect();
    slots
        .iter()
        .zip(describe_files(lock_dir, &files))
        .map(|((slot, _), (holders, record))| {
            let source = record
                .map(|r| format!(" reading {}", printable(&r.source)))
                .unwrap_or_default();
            format!("slot {slot} held by {holders}{source}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// ` (up to 30s)` with a wait timeout, else nothing.
fn until(config: &RunConfig) -> String {
    match config.policy {
        BusyPolicy::Wait { timeout: Some(t) } => format!(" (up to {})", seconds(t)),
        _ => String::new(),
    }
}

/// For each open lock or slot file: who holds it, from the kernel, and its
/// record, redacted (anyone who can write the file wrote it). A taker is
/// named when its own descriptors still hold the lock (a
/// few stats: a reused PID does not pass); only when one is not verified is
/// `/proc` scanned, once for all the files, for the processes sharing them.
/// Under a burst of launches the cheap path keeps each loser cheap.
fn describe_files(
    lock_dir: &Path,
    files: &[&fs::File],
) -> Vec<(String, Option<Shown<LockRecord>>)> {
    let proc_root = Path::new("/proc");
    let inodes: Vec<Option<LockedInode>> =
        files.iter().map(|f| LockedInode::of_file(f).ok()).collect();
    let records: Vec<Option<LockRecord>> = files.iter().map(|f| LockRecord::read_from(f)).collect();
    let mut scan = HolderScan::lock_table(proc_root);
    let mut verified = true;
    for (inode, record) in inodes.iter().zip(&records) {
        if let Some(inode) = inode {
            // Each file here was found busy by our own flock(2) just now.
            scan.reread_until_listed(*inode);
            verified &= scan.verify_takers(*inode, record.as_ref());
        }
    }
    if !verified {
        let listed: BTreeSet<LockedInode> = inodes.iter().flatten().copied().collect();
        scan = HolderScan::take(proc_root, lock_dir, &listed);
    }
    inodes
        .into_iter()
        .zip(records)
        .map(|(inode, record)| {
            let holders = inode
                .map(|i| scan.holders(i, record.as_ref()))
                .unwrap_or_default();
            let mut described: Vec<String> = holders.iter().map(describe_holder).collect();
            if described.is_empty() {
                described.push(if scan.out_of_descriptors() {
                    // EMFILE while opening /proc: not a visibility problem.
                    "a process not identified: this launcher ran out of file descriptors (EMFILE) reading /proc; raise its open-file limit (ulimit -n, LimitNOFILE=)".into()
                } else {
                    "a process this user cannot see".into()
                });
            }
            let absent = inode
                .map(|i| scan.absent_takers(i, &holders))
                .unwrap_or_default();
            let exited: Vec<String> = absent
                .iter()
                .filter(|(_, why)| *why != Absence::Unverified)
                .map(|(pid, _)| pid.to_string())
                .collect();
            if !exited.is_empty() {
                described.push(format!("inherited from exited pid {}", exited.join(", ")));
            }
            let (_, escaped) = super::status::holding_priority_and_escape(
                record.as_ref(),
                &holders,
                &absent,
            );
            if escaped {
                described.push(format!(
                    "which escaped {} (that run is over and no service holds it; stop it with `kill {}`, or start with --reclaim-escaped)",
                    printable(record.as_ref().and_then(|r| r.unit.as_deref()).unwrap_or("?")),
                    holders.iter().map(|h| h.pid.to_string()).collect::<Vec<_>>().join(" "),
                ));
            }
            (described.join(", "), record.as_ref().map(Shown::of))
        })
        .collect()
}

/// The `status` command that shows the lock directory's devices, quoted so
/// it works when pasted into a shell.
fn device_status_command(config: &RunConfig) -> String {
    format!(
        "ec-launch status --lock-dir {}",
        shell_word(&printable_path(&config.lock_dir)),
    )
}

/// The `status` command that shows this source's holders, quoted so it works
/// when pasted into a shell (a test runs it). An operator-named key is
/// asked for with `--key`, which takes it as it is.
fn status_command(config: &RunConfig) -> String {
    let key_flag = if config.key_named { "--key " } else { "" };
    format!(
        "ec-launch status --lock-dir {} {key_flag}{}",
        shell_word(&printable_path(&config.lock_dir)),
        shell_word(config.key.as_str()),
    )
}

/// `pid 4242 (ec-node) in x.service since 2026-…`.
/// Text from `/proc` is escaped: the log line goes to a terminal or the
/// journal, and a command name can be set to anything.
fn describe_holder(holder: &ProcessInfo) -> String {
    let mut text = format!("pid {}", holder.pid);
    if let Some(command) = &holder.command {
        let _ = write!(text, " ({})", printable(command));
    }
    match &holder.unit {
        Some(unit) => {
            let _ = write!(text, " in {}", printable(unit));
        }
        None => text.push_str(" outside any systemd unit"),
    }
    if let Some(since) = &holder.since {
        let _ = write!(text, " since {since}");
    }
    text
}

fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

/// Opens the cluster session and takes the source's key; `None` when it
/// stayed held elsewhere (reported here).
fn take_cluster_source(
    config: &RunConfig,
    (cluster, progress): (&ClusterConfig, Option<std::os::fd::OwnedFd>),
    claim: &SourceClaim<'_>,
    program_name: &str,
    wait_started: &mut Option<Instant>,
) -> Result<Option<Session>, Error> {
    // Only the launcher vouches to systemd: for its renewal, and for the
    // program's progress when the monitor reports it (ECP-0135 section 4).
    let vouch = match progress {
        Some(feed) => {
            let window = config
                .progress_window
                .or_else(watchdog::watchdog_sec)
                .unwrap_or(Duration::from_secs(30));
            Vouch::with_progress(feed, window)
        }
        None => Vouch::renewal_only(),
    };
    let mut session = Session::open(cluster, Some(vouch))?;
    let mut announce_wait = |holder: &crate::cluster::etcd::KeyValue| {
        wait_started.get_or_insert_with(Instant::now);
        tracing::info!(
            key = %printable(config.key.as_str()),
            "source busy in the cluster: held by {}; waiting{} before starting {} (see `{}`)",
            describe_cluster_holder(holder),
            until(config),
            printable(program_name),
            cluster_status_command(config),
        );
    };
    match session.take_source(claim, &mut announce_wait)? {
        Taken::Ours => Ok(Some(session)),
        Taken::Busy(Busy { holders, timed_out }) => {
            let waited = gave_up_waiting(config, timed_out);
            tracing::warn!(
                key = %printable(config.key.as_str()),
                "source busy in the cluster: held by {}; {waited}not starting {}, exiting {} (see `{}`)",
                describe_cluster_holders(&holders),
                printable(program_name),
                config.busy_status.code(),
                cluster_status_command(config),
            );
            Ok(None)
        }
    }
}

/// Takes one of the device's cluster slots; false when every one stayed
/// held (reported here). The slot's record and the waiting key say which
/// tuner count this launcher declares (ECP-0135 section 5).
fn take_cluster_slot(
    config: &RunConfig,
    session: &mut Session,
    (claim, slot): (&SourceClaim<'_>, &SlotClaim<'_>),
    program_name: &str,
    wait_started: &mut Option<Instant>,
) -> Result<bool, Error> {
    let device = slot.device;
    let mut announce_wait = |holders: &[crate::cluster::etcd::KeyValue]| {
        wait_started.get_or_insert_with(Instant::now);
        tracing::info!(
            device = %printable(device),
            key = %printable(config.key.as_str()),
            "device busy in the cluster: {} tuner slots of {} are held: {}; waiting{} before starting {} (see `{}`)",
            holders.len(),
            printable(device),
            describe_cluster_holders(holders),
            until(config),
            printable(program_name),
            cluster_status_command(config),
        );
    };
    let mut warn_disagreement = |disagreement: &Disagreement| {
        tracing::warn!(
            device = %printable(device),
            "launchers of device {} disagree on its tuner count: this one says --tuners {}, {}; using {} (give every launcher of the device the same --tuners)",
            printable(device),
            disagreement.own,
            describe_declarations(&disagreement.by),
            disagreement.using,
        );
    };
    match session.take_slot(claim, slot, &mut announce_wait, &mut warn_disagreement)? {
        Ok(slot) => {
            tracing::debug!(device = %printable(device), slot, "cluster tuner slot taken");
            Ok(true)
        }
        Err(Busy { holders, timed_out }) => {
            let waited = gave_up_waiting(config, timed_out);
            tracing::warn!(
                device = %printable(device),
                key = %printable(config.key.as_str()),
                "device busy in the cluster: {} tuner slots of {} are held: {}; {waited}not starting {}, exiting {} (see `{}`)",
                holders.len(),
                printable(device),
                describe_cluster_holders(&holders),
                printable(program_name),
                config.busy_status.code(),
                cluster_status_command(config),
            );
            Ok(false)
        }
    }
}

/// `node a pid 4242 holding slot 0 says --tuners 2; node b pid 77 waiting
/// says --tuners 2`, from keys under a device (another writer's text:
/// redacted and escaped).
fn describe_declarations(keys: &[crate::cluster::etcd::KeyValue]) -> String {
    keys.iter()
        .filter_map(|kv| {
            let declarant = Shown::of(&Declarant::from_json(&kv.value)?);
            let what = match keyspace::parse(&kv.key) {
                Some(keyspace::Named::Slot { index, .. }) => format!("holding slot {index}"),
                _ => "waiting".to_owned(),
            };
            let mut text = format!("node {}", printable(&declarant.node));
            if let Some(unit) = &declarant.unit {
                let _ = write!(text, " unit {}", printable(unit));
            }
            let _ = write!(
                text,
                " pid {} {what} says --tuners {}",
                declarant.pid,
                declarant.declared_tuners().unwrap_or_default()
            );
            Some(text)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// This launch's record under its cluster keys: who holds them, and the
/// stop grace a claimant's lock delay must outlast (ECP-0135).
fn cluster_record(cluster: &ClusterConfig, unit: Option<String>, redacted: &str) -> ClusterRecord {
    ClusterRecord::for_this_launch(&cluster.connection.node, unit, redacted)
        .with_stop_grace(cluster.timing.stop_grace)
}

/// This launch's values under its cluster keys, made at each try (they
/// date the holding): the source's, a slot's, and the key a launcher
/// waits for a slot under. The slot's and the waiting key's record the
/// tuner count this launcher declares (ECP-0135 section 5). Empty without
/// `--etcd`: nothing of it runs then.
#[allow(clippy::type_complexity)] // three closures, one per key
fn cluster_values<'a>(
    config: &'a RunConfig,
    unit: Option<&'a String>,
    redacted: &'a str,
) -> (
    impl Fn() -> Vec<u8> + 'a,
    impl Fn() -> Vec<u8> + 'a,
    impl Fn() -> Vec<u8> + 'a,
) {
    let count = config.tuners.as_ref().map(|tuners| tuners.count);
    let source_value = move || {
        config.cluster.as_ref().map_or_else(Vec::new, |cluster| {
            cluster_record(cluster, unit.cloned(), redacted).to_json()
        })
    };
    let slot_value = move || {
        config.cluster.as_ref().map_or_else(Vec::new, |cluster| {
            let mut record = cluster_record(cluster, unit.cloned(), redacted);
            record.tuners = count;
            record.to_json()
        })
    };
    let waiting_value = move || {
        config.cluster.as_ref().map_or_else(Vec::new, |cluster| {
            let node = cluster.connection.node.as_str();
            WaitingRecord::for_this_launch(node, unit.cloned(), count.unwrap_or_default()).to_json()
        })
    };
    (source_value, slot_value, waiting_value)
}

/// The value of this launch's wanted key (ECP-0140), made when it
/// registers. Empty without `--etcd`: nothing of it runs then.
fn want_value<'a>(config: &'a RunConfig, unit: Option<&'a String>) -> impl Fn() -> Vec<u8> + 'a {
    move || {
        config.cluster.as_ref().map_or_else(Vec::new, |cluster| {
            let weight = cluster.spread.map_or(1, |spread| spread.weight);
            WantRecord::for_this_launch(&cluster.connection.node, unit.cloned(), weight).to_json()
        })
    }
}

/// What the source claim asks of placement: with `--placement spread`,
/// this node and its weight; `None` takes the key as soon as it is free.
fn spread_want<'a>(config: &'a RunConfig, value: &'a dyn Fn() -> Vec<u8>) -> Option<Want<'a>> {
    let cluster = config.cluster.as_ref()?;
    Some(Want {
        node: &cluster.connection.node,
        weight: cluster.spread?.weight,
        value,
    })
}

/// In cluster mode, waits out the lock delay of a take that was not a
/// clean hand-over (ECP-0135): a holder that lost a key we took has stopped
/// its program by then. The keys are taken again should they be lost
/// meanwhile; false when one taken again stayed held (reported here).
fn settle_in_cluster(
    config: &RunConfig,
    session: Option<&mut Session>,
    (claim, slot): (&SourceClaim<'_>, Option<&SlotClaim<'_>>),
    program_name: &str,
) -> Result<bool, Error> {
    let Some(session) = session else {
        return Ok(true);
    };
    let Some(Busy { holders, timed_out }) = session.settle(claim, slot)? else {
        return Ok(true);
    };
    let waited = gave_up_waiting(config, timed_out);
    tracing::warn!(
        key = %printable(config.key.as_str()),
        "cluster keys lost before the program started, and taken again: held by {}; {waited}not starting {}, exiting {} (see `{}`)",
        describe_cluster_holders(&holders),
        printable(program_name),
        config.busy_status.code(),
        cluster_status_command(config),
    );
    Ok(false)
}

/// Runs the program as our child under the lease, and exits as it did
/// (ECP-0134): the launcher must outlive the exec to renew the lease and
/// stop the program before the lease can expire unrenewed.
fn supervise_in_cluster(
    prepared: exec::Prepared,
    held: HeldLock,
    slot: Option<HeldSlot>,
    mut session: Session,
    stop_grace: Duration,
    monitor: Option<watchdog::Monitor>,
) -> Result<ExitStatus, Error> {
    if let Some(why) = session.lost() {
        // Lost while we claimed: what we "hold" may be another's by now.
        session.release();
        return Err(Error::Fenced { why });
    }
    session.hand_signals_to_supervisor();
    let child = crate::supervise::spawn_in_cluster(prepared, &held, slot.as_ref())?;
    // The monitor learns "the program runs" from this end closing (it was
    // written for exec, where closing is implicit).
    drop(monitor);
    let ended = child.wait(session.renewer().map(|r| (r, stop_grace)));
    // The keys go only when the kernel says the locks are free: a helper
    // outside the program's group may still read (ECP-0135 section 3).
    let watched = child.into_watched();
    let held = std::iter::once(held).chain(slot.map(|slot| slot.lock));
    crate::stragglers::until_free(&watched, held, stop_grace);
    // At once: the next holder need not wait for the lease to expire, nor
    // (the mark says no reader of ours is left) for the lock delay.
    session.release_clean();
    match ended {
        crate::supervise::Ended::Exited(code) => {
            let _ = std::io::Write::flush(&mut std::io::stdout());
            // The program's own status, not one of ours: like exec, the
            // caller sees what the program said.
            std::process::exit(i32::from(code));
        }
        crate::supervise::Ended::Fenced { child, .. } => {
            // The supervisor logged why when it fenced; this says how it ended.
            tracing::error!(
                "fence: the program ended with {child}, before the lease could expire on the server and before a node that takes a lost key may start; exiting {} (systemd restarts the unit, which takes the keys again)",
                ExitStatus::Fenced.code()
            );
            Ok(ExitStatus::Fenced)
        }
    }
}

/// [`describe_cluster_holder`] for each, `; `-separated.
fn describe_cluster_holders(holders: &[crate::cluster::etcd::KeyValue]) -> String {
    holders
        .iter()
        .map(describe_cluster_holder)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `node-b unit x.service pid 4242 since … reading http://…`, from a
/// cluster key's value (another writer's text: redacted and escaped; any
/// value, however hostile, is described, never a panic).
fn describe_cluster_holder(holder: &crate::cluster::etcd::KeyValue) -> String {
    match ClusterRecord::from_json(&holder.value).map(|r| Shown::of(&r)) {
        Some(record) => {
            let mut text = format!("node {}", printable(&record.node));
            if let Some(unit) = &record.unit {
                let _ = write!(text, " unit {}", printable(unit));
            }
            let _ = write!(
                text,
                " pid {} since {} reading {}",
                record.pid,
                crate::cluster::record::rfc3339(record.since),
                printable(&record.source),
            );
            text
        }
        None => format!(
            "an unreadable record under {}",
            printable(&crate::cluster::keyspace::shown(&holder.key))
        ),
    }
}

/// The `status --etcd` command that shows this source in the cluster, with
/// the connection flags it needs (paths, never their contents), quoted so
/// it works when pasted.
fn cluster_status_command(config: &RunConfig) -> String {
    let mut command = String::from("ec-launch status");
    if let Some(cluster) = &config.cluster {
        let connect = &cluster.connection.connect;
        let endpoints: Vec<&str> = connect
            .endpoints
            .iter()
            .map(|u| u.as_str().trim_end_matches('/'))
            .collect();
        let _ = write!(command, " --etcd {}", shell_word(&endpoints.join(",")));
        for (flag, path) in [
            ("--etcd-ca", &connect.ca_file),
            ("--etcd-cert", &connect.cert_file),
            ("--etcd-key", &connect.key_file),
            ("--etcd-user-file", &connect.user_file),
        ] {
            if let Some(path) = path {
                let _ = write!(command, " {flag} {}", shell_word(&printable_path(path)));
            }
        }
        let _ = write!(
            command,
            " --node {}",
            shell_word(&printable(&cluster.connection.node))
        );
    }
    let local = status_command(config);
    command.push_str(local.trim_start_matches("ec-launch status"));
    command
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::cluster::etcd::KeyValue;
    use crate::secret_props::{FieldKind, credential_text, hostile_record, leaks};

    const FIELDS: &[(&str, FieldKind)] = &[
        ("node", FieldKind::Text),
        ("unit", FieldKind::Text),
        ("pid", FieldKind::Number),
        ("boot_id", FieldKind::Text),
        ("since", FieldKind::Number),
        ("source", FieldKind::Text),
        ("version", FieldKind::Text),
        ("tuners", FieldKind::Number),
        ("stop_grace_ms", FieldKind::Number),
    ];

    proptest! {
        /// Run's busy and wait messages describe any holder's value without
        /// a credential and without a panic (a panic would turn the busy
        /// 75 into 101 or an abort).
        #[test]
        fn a_cluster_holder_is_described_without_a_credential_or_a_panic(
            value in hostile_record(FIELDS),
            key in credential_text(),
        ) {
            let holder = KeyValue {
                key: key.into_bytes(),
                value,
                create_revision: 1,
                mod_revision: 1,
                lease: 0,
            };
            let text = describe_cluster_holders(std::slice::from_ref(&holder));
            prop_assert!(!leaks(&text), "{text}");
            // The same value as a slot's or a waiter's that declares fewer
            // tuners (the disagreement warning).
            let text = describe_declarations(&[holder]);
            prop_assert!(!leaks(&text), "{text}");
        }
    }
}
