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
use crate::cli::{ClusterArgs, OnBusy, RunArgs};
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
use crate::redact::redact_source;
use crate::shown::Shown;
use crate::source_key::{self, SourceKey};
use crate::tuner_slot::{self, BusySlot, DeviceKey, HeldSlot, SlotOutcome};
use crate::watchdog;

/// How long a launch that waited pauses before exec, so the previous
/// holder's stream is closed on the device before ours opens (ECP-0132,
/// "Hand-over"). Far below a device's 503-and-restart cycle (`RestartSec`).
const HANDOVER_SETTLE: Duration = Duration::from_millis(250);

/// Cluster mode's part of a launch (ECP-0134), which `ec-launch-cluster`
/// supplies (ECP-0138): validated with the rest of `run`'s settings, then
/// asked at each step of [`Launching::holding`]. The local launcher has
/// none, so nothing of it runs without `--etcd`.
pub trait ClusterLaunch: std::fmt::Debug {
    /// After the node's lock: opens the session and takes the source's
    /// key; `None` when it stayed held elsewhere (reported there). `unit`
    /// is this launch's systemd unit, for the keys' records.
    /// `progress` is the watchdog monitor's report of the program's bytes,
    /// when it watches them: in cluster mode only the launcher vouches to
    /// systemd (ECP-0135 section 4).
    fn take_source<'a>(
        &'a self,
        launch: &'a Launching<'a>,
        unit: Option<&'a String>,
        progress: Option<std::os::fd::OwnedFd>,
        wait_started: &mut Option<Instant>,
    ) -> Result<Option<Box<dyn ClusterHolding + 'a>>, Error>;
}

/// A launch's cluster keys while it holds them.
pub trait ClusterHolding {
    /// After the node's slot: takes one of the device's cluster slots;
    /// false when every one stayed held (reported there).
    fn take_slot(&mut self, wait_started: &mut Option<Instant>) -> Result<bool, Error>;
    /// Waits out the lock delay of a take that was not a clean hand-over;
    /// false when a key taken again stayed held (reported there).
    fn settle(&mut self) -> Result<bool, Error>;
    /// Runs the program as our child under the lease, and exits as it did.
    fn supervise(
        self: Box<Self>,
        prepared: exec::Prepared,
        held: HeldLock,
        slot: Option<HeldSlot>,
        monitor: Option<watchdog::Monitor>,
    ) -> Result<ExitStatus, Error>;
}

/// How `run` turns `--etcd` and its options into cluster mode's part of a
/// launch, or `None` without `--etcd`; `wait` is `--on-busy wait`.
pub type ClusterFromArgs = fn(&ClusterArgs, bool) -> Result<Option<Box<dyn ClusterLaunch>>, Error>;

/// The local launcher's [`ClusterFromArgs`]: `--etcd` is handed off to
/// `ec-launch-cluster` before parsing (ECP-0138), so here etcd options are
/// a mistake, and `--etcd` itself is refused rather than launched without
/// the cluster's lock.
fn local_only(args: &ClusterArgs, _wait: bool) -> Result<Option<Box<dyn ClusterLaunch>>, Error> {
    if !args.etcd.endpoints.is_empty() {
        return Err(Error::ClusterModeNotHandedOff);
    }
    // In the order cluster mode checks them (`ClusterConfig::from_args`).
    if args.placement.is_some() {
        return Err(Error::ClusterOptionWithoutEtcd {
            flag: "--placement",
        });
    }
    if args.node_weight.is_some() {
        return Err(Error::ClusterOptionWithoutEtcd {
            flag: "--node-weight",
        });
    }
    match crate::cli::stray_cluster_option(&args.etcd) {
        Some(flag) => Err(Error::ClusterOptionWithoutEtcd { flag }),
        None => Ok(None),
    }
}

/// `run`'s validated settings.
#[derive(Debug)]
pub struct RunConfig {
    pub lock_dir: PathBuf,
    /// The source as the program needs it (may hold credentials).
    pub source: String,
    pub key: SourceKey,
    /// The key was named with `--key` (so `status` must be asked with `--key`).
    pub key_named: bool,
    pub policy: BusyPolicy,
    pub busy_status: ExitStatus,
    pub program: OsString,
    pub args: Vec<OsString>,
    /// With `--tuners`: which device's slots, and how many.
    pub tuners: Option<TunerConfig>,
    pub progress_watchdog: bool,
    /// `--progress-window` (cluster mode only).
    pub progress_window: Option<Duration>,
    /// With `--etcd`: cluster mode (ECP-0134).
    pub cluster: Option<Box<dyn ClusterLaunch>>,
    /// `--priority` (ECP-0139).
    pub priority: Priority,
    /// `--preempt-grace`: SIGTERM to SIGKILL for a holder made to let go.
    pub preempt_grace: Duration,
    /// `--reclaim-escaped`.
    pub reclaim_escaped: bool,
}

/// `--tuners N` and `--device KEY`, validated (ECP-0132).
#[derive(Debug)]
pub struct TunerConfig {
    pub device: DeviceKey,
    /// As given (or learnt by `auto`), before agreeing with other launchers.
    pub count: u32,
    /// The device's own `DeviceID`, when `auto` learnt it.
    pub device_id: Option<String>,
}

impl RunConfig {
    fn from_args(args: RunArgs, cluster_from_args: ClusterFromArgs) -> Result<Self, Error> {
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
        let cluster = cluster_from_args(&args.cluster, args.on_busy == OnBusy::Wait)?;
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
    run_with(args, local_only)
}

/// [`run`], with cluster mode's part made by `cluster_from_args`
/// (`ec-launch-cluster` passes its own).
///
/// # Errors
/// As [`run`], and cluster mode's.
pub fn run_with(args: RunArgs, cluster_from_args: ClusterFromArgs) -> Result<ExitStatus, Error> {
    if args.wait_timeout.is_some() && args.on_busy == OnBusy::Skip {
        tracing::warn!("--wait-timeout has no effect with --on-busy skip");
    }
    // --wait-timeout bounds the source lock and the slot together.
    let started = Instant::now();
    let config = RunConfig::from_args(args, cluster_from_args)?;
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
    // Logged and recorded: a URL given as the program must not show its
    // credential (redacted once, by `prepare`).
    let program_name = prepared.shown_program().to_owned();
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
#[derive(Debug)]
pub struct Launching<'a> {
    pub config: &'a RunConfig,
    pub lock_path: &'a Path,
    /// Redacted, for logs and records.
    pub program_name: &'a str,
    pub redacted: &'a str,
    /// `--wait-timeout` from the start: it bounds every lock together.
    pub deadline: Option<Instant>,
    pub me: &'a Launcher,
}

impl Launching<'_> {
    /// Records the lock, takes the cluster key and a slot when asked, and
    /// runs the program: by exec, or supervised in cluster mode.
    /// The record this launch writes into its lock and slot files.
    /// `own_cgroups` is this process's `/proc/self/cgroup`, which named
    /// `unit`.
    fn launch_record(
        &self,
        unit: Option<String>,
        own_cgroups: Option<&str>,
    ) -> impl Fn() -> LockRecord + '_ {
        let config = self.config;
        // Only a service's launch can escape it (ECP-0139); a launch by hand
        // does not pay for reading the mount table.
        let cgroup_dir = own_cgroups
            .filter(|_| unit.as_deref().is_some_and(|u| u.ends_with(".service")))
            .and_then(crate::escaped::own_cgroup_dir_from)
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
        // Read once for the unit and, under a service, the cgroup directory.
        let own_cgroups = crate::proc_file::read_to_string(Path::new("/proc/self/cgroup")).ok();
        let unit = own_cgroups.as_deref().and_then(cgroup::unit_from_cgroup);
        let record = self.launch_record(unit.clone(), own_cgroups.as_deref());
        write_record(&held, &record(), "lock");
        // The cluster's key after the node's (ECP-0134): two units on one
        // node never race through etcd. Nothing of it runs without --etcd.
        let mut session = match &config.cluster {
            None => None,
            Some(cluster) => {
                match cluster.take_source(self, unit.as_ref(), progress, &mut wait_started)? {
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
                if let Some(session) = &mut session
                    && !session.take_slot(&mut wait_started)?
                {
                    return Ok(config.busy_status);
                }
                Some(slot)
            }
        };
        if let Some(session) = &mut session
            && !session.settle()?
        {
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
        match session {
            Some(session) => session.supervise(prepared, held, slot, monitor),
            None => Err(exec::exec(prepared, &held, slot.as_ref())),
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
pub fn gave_up_waiting(config: &RunConfig, timed_out: bool) -> String {
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
pub fn until(config: &RunConfig) -> String {
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
/// Under a burst of launches the cheap path keeps each loser cheap: the
/// lock table read once (reread only for a row it misses), the holder's
/// `/proc` files once each, the mount table only where it is needed.
fn describe_files(
    lock_dir: &Path,
    files: &[&fs::File],
) -> Vec<(String, Option<Shown<LockRecord>>)> {
    let proc_root = Path::new("/proc");
    let mut scan = HolderScan::lock_table_once(proc_root);
    let inodes: Vec<Option<LockedInode>> = files.iter().map(|f| listed_inode(&scan, f)).collect();
    let records: Vec<Option<LockRecord>> = files.iter().map(|f| LockRecord::read_from(f)).collect();
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

/// The inode of a busy lock or slot file as the lock table lists it: by
/// `fstat`'s device when the table has that row (on every filesystem but
/// btrfs, whose subvolumes report a device of their own), else by its
/// mount's device, which reads `/proc/self/mountinfo` (ECP-0136).
fn listed_inode(scan: &HolderScan, file: &fs::File) -> Option<LockedInode> {
    let by_stat = file.metadata().ok().map(|m| LockedInode::of_metadata(&m));
    match by_stat {
        Some(inode) if scan.is_held(inode) => Some(inode),
        _ => LockedInode::of_file(file).ok(),
    }
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
pub fn status_command(config: &RunConfig) -> String {
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

pub fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}
