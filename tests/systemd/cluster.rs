//! Issue 12 under a real systemd: two units standing for two nodes, one
//! source, through etcd.
//!
//! Each unit is a "node": its own lock directory and `--node` name, so the
//! local flock(2) never meets the other one and only the cluster key in etcd
//! can keep them apart. Both run `ec-launch run --etcd … --on-busy wait`
//! against one emulated device with a single tuner (127.0.0.8), so a second
//! reader would be refused with a 503 the emulator counts. etcd runs in the
//! container as a unit of its own (Debian's `etcd-server`, from the host's
//! root the container overlays), `Type=notify`, and the publisher units
//! `Wants=`/`After=` it, as the NixOS module orders them after the network.
//!
//! The story and its checks:
//! 1. Starting node A's unit pulls etcd in first; A streams, with
//!    `ec-launch` as the unit's main process and the reader as its child
//!    (cluster mode supervises: someone must renew the lease).
//! 2. Node B's unit starts: it stays `active`, waits (its journal says
//!    "busy in the cluster") and opens no stream: one open stream, no 503.
//!    etcd's source key and `ec-launch status --etcd` name node A's unit.
//! 3. `systemctl stop` of A: B streams within 2 s (the figure is printed;
//!    A revokes its lease on the way out, so B does not wait for the TTL),
//!    never before A's reader stopped, still no 503; the key and `status
//!    --etcd` now name node B's unit.
//! 4. A comes back as the standby and is stopped while it waits: within a
//!    second, cleanly, its lease revoked; B streams on.
//! 5. Stopping B leaves no process, no key in etcd and no open stream.
//!
//! The units carry the same policy and sandbox as the other publisher units
//! (`nixos/unit-policy.json`, `nixos/unit-hardening.json`) and what the
//! module adds in cluster mode: the launcher watchdog (`WatchdogSec`,
//! `NotifyAccess=main`, `TimeoutAbortSec`) and 143 as a clean exit.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Checks, FAST_STOP_TIMEOUT, Probe, STOP_MARGIN, exits_of, last_record_time, timed};
use crate::harness::Staging;
use crate::policy::{self, Hardening, StopTimeout, UnitPolicy};
use crate::programs::{ProcessFacts, RECORD_DIR, SUITE_DIR, unix_micros};

/// Issue 16: a helper outside the program's group with the launcher
/// SIGKILLed, and a frozen launcher, each beside a standby node.
#[path = "cluster_fence.rs"]
pub mod fence;

pub(super) const ETCD_UNIT: &str = "ec-etcd.service";
const ETCD_BINARY: &str = "/usr/bin/etcd";
const ETCDCTL_BINARY: &str = "/usr/bin/etcdctl";
/// The container has a network of its own, so etcd's default ports are free.
pub(super) const ETCD_URL: &str = "http://127.0.0.1:2379";
const ETCD_PEER_URL: &str = "http://127.0.0.1:2380";
/// In the container's overlay (a tmpfs upper layer): gone with the container.
const ETCD_DATA_DIR: &str = "/var/lib/ec-suite-etcd";
/// Every key `ec-launch` writes (issue 12's key layout).
const KEY_PREFIX: &str = "/every-channel/ec-launch/v1/";
const SOURCE_KEYS: &str = "/every-channel/ec-launch/v1/sources/";
/// `--etcd-ttl` and `--etcd-stop-grace` of both units: short, so a lease
/// left to expire would show, and the smallest TTL for a 1 s grace that the
/// launcher accepts (it refuses TTL <= 2 x (grace + margin)) and the module
/// does not warn about (TTL < 3 x (grace + margin)).
pub(super) const TTL_SECS: u64 = 6;
pub(super) const STOP_GRACE_SECS: u64 = 1;
/// What the module adds to the policy's `SuccessExitStatus` in cluster
/// mode: a stop's SIGTERM, forwarded, ends the program, and the launcher
/// exits 143 (128+SIGTERM) where an exec'd program would have died of the
/// signal, which systemd counts as clean. systemd adds a second
/// `SuccessExitStatus=` line to the first.
pub(super) const CLUSTER_SUCCESS: &str = "SuccessExitStatus=143\n";

/// The fence's timing, which the module and the launcher also read.
const TIMING_FILE: &str = "nixos/cluster-timing.json";

/// One tuner: a second reader of the device is refused (503).
const TUNERS: usize = 1;
const DEVICE: &str = "127.0.0.8:5004";
const CHANNEL_PATH: &str = "/auto/v5.1";
const TUNER_UNIT: &str = "ec-tuner-cluster.service";
/// The claim: after `systemctl stop` of the holder, the waiter streams
/// within this (it is woken by the revoke, not by the lease's expiry).
const HANDOVER_BOUND: Duration = Duration::from_secs(2);

/// A unit standing for a node: its unit, `--node` name and lock directory.
#[derive(Debug, Clone, Copy)]
struct Node {
    unit: &'static str,
    name: &'static str,
    lock_dir: &'static str,
}

const NODE_A: Node = Node {
    unit: "ec-cluster-a.service",
    name: "node-a",
    lock_dir: "/run/ec-a",
};
const NODE_B: Node = Node {
    unit: "ec-cluster-b.service",
    name: "node-b",
    lock_dir: "/run/ec-b",
};

/// What the module gives a cluster unit so that PID 1 kills a frozen
/// launcher before its lease can lapse: `WatchdogSec = max 1 ((ttl -
/// stopGrace - margin) / 2)` with the margin of [`TIMING_FILE`], pinged by
/// the launcher's renewal thread (`NotifyAccess=main`). Here 2 s: a
/// launcher that stops pinging, streaming or waiting, is restarted, which
/// the checks on `NRestarts` see.
pub(super) fn watchdog_secs() -> Result<u64, String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(TIMING_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let timing: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let margin = timing["margin"]
        .as_u64()
        .ok_or_else(|| format!("{}: no whole-second \"margin\"", path.display()))?;
    let budget = TTL_SECS.saturating_sub(STOP_GRACE_SECS + margin) / 2;
    Ok(budget.max(1))
}

fn source() -> String {
    format!("http://{DEVICE}{CHANNEL_PATH}")
}

fn ec_launch() -> String {
    format!("{SUITE_DIR}/ec-launch")
}

/// What this scenario prints at the end.
#[derive(Debug, Default)]
pub struct Figures {
    lines: Vec<String>,
    /// `systemctl stop` of the holder issued -> the waiter's reader streaming.
    handover: Option<Duration>,
    /// The old reader stopped -> the waiter's reader streaming.
    reader_gap: Option<Duration>,
    busy_503: Option<u64>,
}

impl Figures {
    pub fn print(&self) {
        println!(
            "cluster mode (2 units as 2 nodes, 1 source, {TUNERS} tuner, etcd --etcd-ttl {TTL_SECS} --etcd-stop-grace {STOP_GRACE_SECS}, --on-busy wait):"
        );
        for line in &self.lines {
            println!("  {line}");
        }
        let ms = |d: Option<Duration>| {
            d.map_or_else(
                || "?".to_owned(),
                |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0),
            )
        };
        println!(
            "  => hand-over: systemctl stop of the holder issued -> waiter streaming {}; old reader stopped -> waiter streaming {}",
            ms(self.handover),
            ms(self.reader_gap)
        );
        println!(
            "  => 503 answers: {}",
            self.busy_503
                .map_or_else(|| "?".to_owned(), |n| n.to_string())
        );
    }
}

/// Writes etcd's unit, the one-tuner device's and the two nodes' units.
pub fn stage(staging: &Staging, policy: &UnitPolicy, hardening: &Hardening) -> Result<(), String> {
    let watchdog = watchdog_secs()?;
    staging.unit(
        ETCD_UNIT,
        &policy::unit_file(
            "etcd for the cluster scenario (one member, loopback)",
            // etcd tells systemd when it serves clients (Debian's own unit is
            // Type=notify too), so units ordered after it find it ready.
            &format!(
                "Type=notify\nExecStart={ETCD_BINARY} --name ec-suite --data-dir {ETCD_DATA_DIR} --logger zap --log-outputs stderr --listen-client-urls {ETCD_URL} --advertise-client-urls {ETCD_URL} --listen-peer-urls {ETCD_PEER_URL} --initial-advertise-peer-urls {ETCD_PEER_URL} --initial-cluster ec-suite={ETCD_PEER_URL} --initial-cluster-state new\n"
            ),
        ),
    )?;
    staging.unit(
        TUNER_UNIT,
        &policy::unit_file(
            &format!("HDHomeRun-like tuner emulator on {DEVICE} with {TUNERS} tuner"),
            &format!("ExecStart={SUITE_DIR}/tuner-emulator --listen {DEVICE} --tuners {TUNERS}\n"),
        ),
    )?;
    fence::stage(staging, policy, hardening, watchdog)?;
    for node in [NODE_A, NODE_B] {
        let service = format!(
            "ExecStart={} run --etcd {ETCD_URL} --etcd-ttl {TTL_SECS} --etcd-stop-grace {STOP_GRACE_SECS} --node {} --lock-dir {} --on-busy wait --source {} -- {SUITE_DIR}/reader {{source}}\nExecStopPost={SUITE_DIR}/record-exit %n\nWatchdogSec={watchdog}\nNotifyAccess=main\nTimeoutAbortSec={STOP_GRACE_SECS}\n{}{CLUSTER_SUCCESS}{}ReadWritePaths={RECORD_DIR}\n",
            ec_launch(),
            node.name,
            node.lock_dir,
            source(),
            policy.service_lines(StopTimeout::ModuleOption(FAST_STOP_TIMEOUT)),
            hardening.publisher_lines(node.lock_dir),
        );
        staging.unit(
            node.unit,
            &policy::unit_file_with(
                &format!(
                    "publisher standing for {} in cluster mode, with the module's policy",
                    node.name
                ),
                &format!("Wants={ETCD_UNIT}\nAfter={ETCD_UNIT}\n"),
                &service,
            ),
        )?;
    }
    Ok(())
}

/// Runs the scenario, then stops everything it started.
pub fn scenario(checks: &mut Checks, probe: &Probe, figures: &mut Figures) -> Result<(), String> {
    let c = probe.container;
    checks.say(&format!(
        "=== cluster mode: {} ({}) and {} ({}) on {} through etcd at {ETCD_URL}, {TUNERS} tuner",
        NODE_A.unit,
        NODE_A.name,
        NODE_B.unit,
        NODE_B.name,
        source()
    ));
    c.run(&["mkdir", "-p", NODE_A.lock_dir, NODE_B.lock_dir, RECORD_DIR])?;
    c.systemctl(&["start", TUNER_UNIT])?;
    probe.wait_ready(DEVICE)?;
    let result = story(checks, probe, figures);
    for unit in [NODE_A.unit, NODE_B.unit, TUNER_UNIT, ETCD_UNIT] {
        let _ = c.systemctl(&["stop", unit]);
    }
    let _ = c.systemctl(&["reset-failed"]);
    result
}

fn story(checks: &mut Checks, probe: &Probe, figures: &mut Figures) -> Result<(), String> {
    let c = probe.container;
    let first = first_node_streams(checks, probe, figures)?;
    let second_started = second_node_waits(checks, probe, &first, figures)?;

    checks.say(&format!(
        "systemctl stop {} while {} waits",
        NODE_A.unit, NODE_B.unit
    ));
    let stop_issued = unix_micros();
    let (wall, systemd) = timed(probe, "stop", NODE_A.unit)?;
    let second = wait_reader(probe, NODE_B.unit);
    let left = probe.alive(&first.ids);
    let first_exit = exits_of(probe, NODE_A.unit).pop().unwrap_or_default();
    let line = format!(
        "systemctl stop {}: {:.2}s (wall {wall:.2}s), processes left {}, ExecStopPost saw: {first_exit}",
        NODE_A.unit,
        systemd.unwrap_or(wall),
        left.len()
    );
    checks.say(&line);
    figures.lines.push(line);
    checks.check(
        "stopping the holder's unit ends its launcher and reader within TimeoutStopSec",
        left.is_empty() && Duration::from_secs_f64(wall) <= FAST_STOP_TIMEOUT + STOP_MARGIN,
        &format!("{} left, {wall:.2}s", left.len()),
    );
    let second = second?;

    let started = last_record_time(probe, "readers.log", NODE_B.unit, "streaming");
    let stopped = last_record_time(probe, "readers.log", NODE_A.unit, "stopping");
    figures.handover = elapsed(Some(stop_issued), started);
    figures.reader_gap = elapsed(stopped, started);
    let busy = probe.counter(DEVICE, "busy_503")?;
    let open = probe.counter(DEVICE, "open_streams")?;
    let line = format!(
        "hand-over: {} streaming {:?} after `systemctl stop {}` was issued ({:?} after its reader stopped); open streams {open}, 503 answers {busy}",
        NODE_B.unit, figures.handover, NODE_A.unit, figures.reader_gap
    );
    checks.say(&line);
    figures.lines.push(line.clone());
    checks.check(
        &format!(
            "once the holder's unit is stopped, the waiting node streams within {}s, and no 503",
            HANDOVER_BOUND.as_secs()
        ),
        figures.handover.is_some_and(|d| d <= HANDOVER_BOUND) && busy == 0 && open == 1,
        &line,
    );
    checks.check(
        "the waiting node's reader starts only after the holder's reader stopped (no overlap)",
        figures.reader_gap.is_some(),
        &format!("old reader stopped at {stopped:?} µs, new reader streaming at {started:?} µs"),
    );
    supervision_checks(checks, NODE_B, &second);
    let record = key_names(checks, probe, NODE_B, &second)?;
    // The record says when its holder took the key (status prints it as
    // "since"): for the node that waited, the hand-over, not its start.
    let since = record["since"].as_u64();
    let stopped_secs = stopped.map(|micros| micros / 1_000_000);
    checks.check(
        "the new holder's record says since when it holds the key: not before the old reader stopped",
        matches!((since, stopped_secs), (Some(since), Some(stopped)) if u128::from(since) >= stopped),
        &format!(
            "{}'s record: since {since:?}; its unit started at {}, the old reader stopped at {stopped_secs:?} (unix s)",
            NODE_B.name,
            second_started / 1_000_000
        ),
    );
    status_names(checks, probe, NODE_B, &second, figures)?;
    standby_stops_while_waiting(checks, probe, &second, figures)?;

    // The end: the last holder stops and leaves nothing behind, in etcd too.
    let (wall, systemd) = timed(probe, "stop", NODE_B.unit)?;
    let left = probe.alive(&second.ids);
    let keys = etcd_keys(probe, KEY_PREFIX)?;
    let open = probe.counter(DEVICE, "open_streams")?;
    let served = probe.counter(DEVICE, "streams_served")?;
    let busy = probe.counter(DEVICE, "busy_503")?;
    figures.busy_503 = Some(busy);
    let exit = exits_of(probe, NODE_B.unit).pop().unwrap_or_default();
    let line = format!(
        "systemctl stop {}: {:.2}s (wall {wall:.2}s), processes left {}, keys left in etcd {keys:?}, open streams {open}, streams served {served}, 503 answers {busy}, ExecStopPost saw: {exit}",
        NODE_B.unit,
        systemd.unwrap_or(wall),
        left.len()
    );
    checks.say(&line);
    figures.lines.push(line.clone());
    checks.check(
        "stopping the last holder leaves no process, no key in etcd (its lease is revoked) and no open stream",
        left.is_empty() && keys.is_empty() && open == 0,
        &line,
    );
    checks.check(
        "over the whole scenario the one-tuner device served exactly two streams and never answered 503",
        busy == 0 && served == 2,
        &format!("{served} streams served, {busy} 503 answers"),
    );
    // The reader dies of systemd's SIGTERM, as a publisher does; a unit
    // that runs it without a supervisor ends `success` (SIGTERM is a clean
    // signal to systemd). A supervising launcher must end it as cleanly, or
    // every stop leaves the unit `failed`.
    checks.check(
        "`systemctl stop` ends a cluster unit as cleanly as a unit without a supervisor: Result=success",
        [&first_exit, &exit]
            .iter()
            .all(|e| e.contains("result=success")),
        &format!("ExecStopPost saw: {first_exit}; {exit}"),
    );
    let _ = c.systemctl(&["reset-failed", NODE_A.unit, NODE_B.unit]);
    Ok(())
}

/// How long a `systemctl stop` of a unit whose launcher waits may take:
/// the launcher dies of the SIGTERM and revokes its lease at once.
const WAITER_STOP_BOUND: Duration = Duration::from_secs(1);

/// Node A comes back as the standby and is stopped while it waits, as an
/// operator retires a standby: the stop is quick and clean, its lease is
/// revoked (not left to expire), and the holder is not disturbed.
fn standby_stops_while_waiting(
    checks: &mut Checks,
    probe: &Probe,
    holder: &Streaming,
    figures: &mut Figures,
) -> Result<(), String> {
    let c = probe.container;
    checks.say(&format!(
        "{} starts again, waits behind {}, and is stopped while it waits",
        NODE_A.unit, NODE_B.unit
    ));
    let _ = c.systemctl(&["reset-failed", NODE_A.unit]);
    let busy_lines = || {
        c.journal(NODE_A.unit)
            .lines()
            .filter(|l| l.contains("busy in the cluster"))
            .count()
    };
    c.systemctl(&["start", NODE_A.unit])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while busy_lines() == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let ids: Vec<String> = probe
        .unit_processes(NODE_A.unit)
        .iter()
        .map(ProcessFacts::id)
        .collect();
    let leases_waiting = etcd_lease_count(probe)?;
    let (wall, systemd) = timed(probe, "stop", NODE_A.unit)?;
    let stop = systemd.unwrap_or(wall);
    let left = probe.alive(&ids);
    let leases_after = etcd_lease_count(probe)?;
    let exit = exits_of(probe, NODE_A.unit).pop().unwrap_or_default();
    let holder_now = c.property(NODE_B.unit, "MainPID");
    let open = probe.counter(DEVICE, "open_streams")?;
    let line = format!(
        "systemctl stop {} while it waits: {stop:.2}s (wall {wall:.2}s), processes left {}, etcd leases {leases_waiting} -> {leases_after}, ExecStopPost saw: {exit}; {} MainPID {} -> {holder_now}, open streams {open}",
        NODE_A.unit,
        left.len(),
        NODE_B.unit,
        holder.main_pid
    );
    checks.say(&line);
    figures.lines.push(line.clone());
    checks.check(
        &format!(
            "stopping a waiting standby takes under {}s, ends it cleanly and revokes its lease; the holder streams on",
            WAITER_STOP_BOUND.as_secs()
        ),
        busy_lines() > 0
            && Duration::from_secs_f64(stop) <= WAITER_STOP_BOUND
            && left.is_empty()
            && leases_waiting == 2
            && leases_after == 1
            && exit.contains("result=success")
            && holder_now == holder.main_pid.to_string()
            && open == 1,
        &line,
    );
    let _ = c.systemctl(&["reset-failed", NODE_A.unit]);
    Ok(())
}

/// How many leases etcd has (`etcdctl lease list`: "found N leases", then
/// one ID per line).
fn etcd_lease_count(probe: &Probe) -> Result<usize, String> {
    let text = probe
        .container
        .run(&[ETCDCTL_BINARY, "--endpoints", ETCD_URL, "lease", "list"])?;
    text.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("etcdctl lease list said {text:?}"))
}

/// From `from` to `to` (µs since the epoch), when both are known and `to`
/// is not earlier.
fn elapsed(from: Option<u128>, to: Option<u128>) -> Option<Duration> {
    let (from, to) = (from?, to?);
    let micros = to.checked_sub(from)?;
    Some(Duration::from_micros(
        u64::try_from(micros).unwrap_or(u64::MAX),
    ))
}

/// A node's unit while it streams: its main process and its reader.
#[derive(Debug)]
struct Streaming {
    main_pid: u32,
    main_comm: String,
    reader: ProcessFacts,
    /// The reader's parent PID (proc(5) `stat` field 4).
    reader_parent: Option<u32>,
    /// Every process of the unit then, as `PID:START`.
    ids: Vec<String>,
}

/// Waits until `unit` has a `reader` in its cgroup and the device serves
/// exactly one stream.
fn wait_reader(probe: &Probe, unit: &str) -> Result<Streaming, String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        let now = probe.unit_now(unit, DEVICE);
        let (processes, main_pid) = (&now.processes, now.main_pid);
        if let Some(reader) = processes.iter().find(|p| p.comm == "reader")
            && now.open == 1
        {
            return Ok(Streaming {
                main_pid,
                main_comm: processes
                    .iter()
                    .find(|p| p.pid == main_pid)
                    .map_or_else(String::new, |p| p.comm.clone()),
                reader: reader.clone(),
                reader_parent: parent_of(probe, reader.pid),
                ids: processes.iter().map(ProcessFacts::id).collect(),
            });
        }
        last = now.describe();
        thread::sleep(Duration::from_millis(50));
    }
    let journal = probe.container.journal(unit);
    let tail: Vec<&str> = journal.lines().rev().take(4).collect();
    Err(format!(
        "{unit} did not come up streaming: {last}; its journal ends: {:?}",
        tail.into_iter().rev().collect::<Vec<_>>()
    ))
}

fn parent_of(probe: &Probe, pid: u32) -> Option<u32> {
    let stat = probe
        .container
        .run(&["cat", &format!("/proc/{pid}/stat")])
        .ok()?;
    // Fields after the parenthesised command name: state, then the parent.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn first_node_streams(
    checks: &mut Checks,
    probe: &Probe,
    figures: &mut Figures,
) -> Result<Streaming, String> {
    let c = probe.container;
    checks.say(&format!(
        "starting {} alone (it Wants=/After= {ETCD_UNIT})",
        NODE_A.unit
    ));
    c.systemctl(&["start", NODE_A.unit])?;
    let etcd = c.state(ETCD_UNIT);
    let health = c
        .run(&[
            &format!("{SUITE_DIR}/http-get"),
            &format!("{ETCD_URL}/health"),
        ])
        .unwrap_or_else(|e| e);
    let version = c.run(&[ETCD_BINARY, "--version"]).unwrap_or_else(|e| e);
    let line = format!(
        "{ETCD_UNIT}: {etcd}, /health {}, {}",
        health.trim(),
        version.lines().next().unwrap_or("?")
    );
    checks.say(&line);
    figures.lines.push(line);
    checks.check(
        "starting a node's unit pulls etcd in first (Wants=/After=, Type=notify), and etcd is healthy",
        etcd == "active" && health.contains("\"health\":\"true\""),
        &format!("{ETCD_UNIT} {etcd}, /health {}", health.trim()),
    );
    let first = wait_reader(probe, NODE_A.unit)?;
    let restarts = c.property(NODE_A.unit, "NRestarts");
    let watchdog = c.property(NODE_A.unit, "WatchdogUSec");
    let success = c.property(NODE_A.unit, "SuccessExitStatus");
    checks.check(
        "the first node streams at its first start (etcd was ready when its launcher ran), under the module's cluster settings",
        restarts == "0"
            && watchdog == format!("{}s", watchdog_secs()?)
            && success.split_whitespace().collect::<Vec<_>>() == ["75", "143"],
        &format!(
            "{} NRestarts {restarts}, WatchdogUSec={watchdog}, SuccessExitStatus={success}",
            NODE_A.unit
        ),
    );
    supervision_checks(checks, NODE_A, &first);
    key_names(checks, probe, NODE_A, &first)?;
    Ok(first)
}

fn second_node_waits(
    checks: &mut Checks,
    probe: &Probe,
    first: &Streaming,
    figures: &mut Figures,
) -> Result<u128, String> {
    let c = probe.container;
    checks.say(&format!(
        "starting {} while {} streams",
        NODE_B.unit, NODE_A.unit
    ));
    let watchdog = Duration::from_secs(watchdog_secs()?);
    let b_started = Instant::now();
    let b_started_unix = unix_micros();
    c.systemctl(&["start", NODE_B.unit])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut busy_line = None;
    while busy_line.is_none() && Instant::now() < deadline {
        busy_line = c
            .journal(NODE_B.unit)
            .lines()
            .find(|l| l.to_lowercase().contains("busy in the cluster"))
            .map(str::to_owned);
        thread::sleep(Duration::from_millis(100));
    }
    // Time enough for a wrongly started reader to reach the device, and
    // for systemd's watchdog to act twice on a launcher that waits without
    // pinging it.
    thread::sleep(
        (watchdog * 2)
            .saturating_sub(b_started.elapsed())
            .max(Duration::from_secs(1)),
    );
    let state = c.state(NODE_B.unit);
    let restarts = c.property(NODE_B.unit, "NRestarts");
    let waited = b_started.elapsed();
    let main_pid = c.property(NODE_B.unit, "MainPID");
    let processes = probe.unit_processes(NODE_B.unit);
    let main_comm = processes
        .iter()
        .find(|p| p.pid.to_string() == main_pid)
        .map_or("?", |p| p.comm.as_str());
    let readers = processes.iter().filter(|p| p.comm == "reader").count();
    let open = probe.counter(DEVICE, "open_streams")?;
    let busy = probe.counter(DEVICE, "busy_503")?;
    let first_now = c.property(NODE_A.unit, "MainPID");
    let first_restarts = c.property(NODE_A.unit, "NRestarts");
    let line = format!(
        "{} waits: after {:.1}s state {state}, NRestarts {restarts}, MainPID {main_pid} ({main_comm}), readers {readers}; open streams {open}, 503 answers {busy}; journal: {}",
        NODE_B.unit,
        waited.as_secs_f64(),
        busy_line
            .as_deref()
            .unwrap_or("no \"busy in the cluster\" line")
    );
    checks.say(&line);
    figures.lines.push(line.clone());
    checks.check(
        "the second node's unit stays active and waits in ec-launch (never restarted, watchdog included), its journal saying the source is busy in the cluster",
        state == "active"
            && restarts == "0"
            && main_comm == "ec-launch"
            && readers == 0
            && busy_line.is_some(),
        &line,
    );
    checks.check(
        "while the second node waits, exactly one stream is open and the one-tuner device answered no 503",
        open == 1
            && busy == 0
            && first_now == first.main_pid.to_string()
            && first_restarts == "0",
        &format!(
            "open streams {open}, 503 answers {busy}, {} MainPID {} -> {first_now}, NRestarts {first_restarts}",
            NODE_A.unit, first.main_pid
        ),
    );
    status_names(checks, probe, NODE_A, first, figures)?;
    Ok(b_started_unix)
}

/// The streaming unit's main process is `ec-launch`, and the reader is its
/// child: cluster mode supervises instead of exec'ing.
fn supervision_checks(checks: &mut Checks, node: Node, streaming: &Streaming) {
    checks.check(
        &format!(
            "{}'s main process is ec-launch and the reader is its child (cluster mode supervises)",
            node.name
        ),
        streaming.main_comm == "ec-launch" && streaming.reader_parent == Some(streaming.main_pid),
        &format!(
            "{} MainPID {} ({}), reader pid {} parent {:?}",
            node.unit,
            streaming.main_pid,
            streaming.main_comm,
            streaming.reader.pid,
            streaming.reader_parent
        ),
    );
}

/// The keys under `prefix` and their values, from `etcdctl get --prefix`
/// (it prints each key on a line, then its value on the next).
fn etcd_entries(probe: &Probe, prefix: &str) -> Result<Vec<(String, String)>, String> {
    let text = probe.container.run(&[
        ETCDCTL_BINARY,
        "--endpoints",
        ETCD_URL,
        "get",
        "--prefix",
        prefix,
    ])?;
    let lines: Vec<&str> = text.lines().collect();
    Ok(lines
        .chunks(2)
        .map(|pair| {
            (
                pair[0].to_owned(),
                pair.get(1).copied().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

fn etcd_keys(probe: &Probe, prefix: &str) -> Result<Vec<String>, String> {
    Ok(etcd_entries(probe, prefix)?
        .into_iter()
        .map(|(key, _)| key)
        .collect())
}

/// etcd holds one source key, whose value names `node`, its unit and its
/// main process; returns that value.
fn key_names(
    checks: &mut Checks,
    probe: &Probe,
    node: Node,
    streaming: &Streaming,
) -> Result<Value, String> {
    let entries = etcd_entries(probe, SOURCE_KEYS)?;
    let mut holder = Value::Null;
    let verdict = match entries.as_slice() {
        [(key, value)] => {
            holder = serde_json::from_str(value).unwrap_or(Value::Null);
            // The supervising launcher's PID: the unit's MainPID.
            let ours = holder["pid"].as_u64() == Some(u64::from(streaming.main_pid));
            if holder["node"] == node.name && holder["unit"] == node.unit && ours {
                Ok(format!("{key} = {value}"))
            } else {
                Err(format!("{key} = {value}"))
            }
        }
        other => Err(format!("{} source keys: {other:?}", other.len())),
    };
    let ok = verdict.is_ok();
    checks.check(
        &format!(
            "etcd holds one source key, and its value names {} and its unit",
            node.name
        ),
        ok,
        &verdict.unwrap_or_else(|e| e),
    );
    Ok(holder)
}

/// Every object in `value` that has both a `node` and a `unit`: the
/// cluster holders, wherever the report nests them.
fn cluster_holders(value: &Value) -> Vec<&Value> {
    match value {
        Value::Object(map) => {
            let mut found: Vec<&Value> = map.values().flat_map(cluster_holders).collect();
            if map.contains_key("node") && map.contains_key("unit") {
                found.push(value);
            }
            found
        }
        Value::Array(items) => items.iter().flat_map(cluster_holders).collect(),
        _ => Vec::new(),
    }
}

/// `ec-launch status --etcd … SOURCE`, run inside the container like an
/// operator would, names `node`'s unit as the source's only cluster holder.
fn status_names(
    checks: &mut Checks,
    probe: &Probe,
    node: Node,
    streaming: &Streaming,
    figures: &mut Figures,
) -> Result<(), String> {
    let c = probe.container;
    let source = source();
    // As the waiting unit's journal tells an operator to ask: with the
    // node's name, so the holder on this node is marked as such.
    let json = c.exec(&[
        &ec_launch(),
        "status",
        "--etcd",
        ETCD_URL,
        "--node",
        node.name,
        "--json",
        &source,
    ])?;
    let stdout = String::from_utf8_lossy(&json.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&json.stderr).trim().to_owned();
    let code = json.status.code();
    let report: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let holders = cluster_holders(&report);
    // The record's PID is the supervising launcher's: the unit's MainPID.
    let named = holders.len() == 1
        && holders[0]["node"] == node.name
        && holders[0]["unit"] == node.unit
        && holders[0]["pid"].as_u64() == Some(u64::from(streaming.main_pid))
        && holders[0]["this_node"] == true;
    let text = c.exec(&[
        &ec_launch(),
        "status",
        "--etcd",
        ETCD_URL,
        "--node",
        node.name,
        &source,
    ])?;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    // The cluster's lines; all of it when there are none to pick.
    let held: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("held by node"))
        .collect();
    let text = if held.is_empty() {
        text.trim().to_owned()
    } else {
        held.join(" | ")
    };
    figures.lines.push(format!(
        "`ec-launch status --etcd {ETCD_URL} --node {} SOURCE` while it holds: {text}",
        node.name
    ));
    checks.check(
        &format!(
            "`ec-launch status --etcd --node {} --json SOURCE` inside the container exits 0 and names {}'s unit as the only cluster holder, on this node",
            node.name,
            node.name
        ),
        code == Some(0) && named,
        &format!(
            "exit {code:?}, holders {}, stderr {stderr:?}",
            serde_json::to_string(&holders).unwrap_or_default()
        ),
    );
    Ok(())
}
