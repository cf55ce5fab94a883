//! Issue 16 under a real systemd (ECP-0135 sections 3 and 4): what a unit
//! sees when its launcher cannot fence for itself, beside a standby unit
//! standing for another node (its own `--node` and lock directory) on one
//! emulated one-tuner device, so a second reader shows as a 503.
//!
//! 1. The launcher SIGKILLed while its program left a `setsid` helper that
//!    ignores SIGTERM and holds the stream: systemd's control-group kill,
//!    after the module's `TimeoutStopSec` (stopGrace + margin), ends the
//!    helper before the standby may start (the lease's expiry plus the lock
//!    delay); the standby streams after it, no 503.
//! 2. The launcher frozen (SIGSTOP) with `--progress-watchdog` under the
//!    module's cluster watchdog (`NotifyAccess=main`): nobody else may feed
//!    systemd, so the watchdog aborts the unit (it is restarted), and the
//!    standby streams only after the frozen launcher's reader is gone.
//!
//! Both units restart after 30 s (the module's `restartSec`), so the
//! standby, not the restarted unit, is the one that takes over.

use std::thread;
use std::time::{Duration, Instant};

use super::super::{Checks, Probe, exits_of, last_record_time};
use super::{
    CLUSTER_SUCCESS, ETCD_UNIT, ETCD_URL, STOP_GRACE_SECS, TIMING_FILE, TTL_SECS, ec_launch,
};
use crate::harness::Staging;
use crate::policy::{self, Hardening, StopTimeout, UnitPolicy};
use crate::programs::{ProcessFacts, RECORD_DIR, SUITE_DIR, unix_micros};

const DEVICE: &str = "127.0.0.9:5004";
const TUNER_UNIT: &str = "ec-tuner-fence.service";
const SOURCE_PATH: &str = "/auto/v7.1";
/// Long enough that the standby, not the restarted unit, takes over.
const RESTART_SEC: u64 = 30;
/// `--progress-window` of the frozen unit.
const PROGRESS_WINDOW_SECS: u64 = 3;

#[derive(Debug, Clone, Copy)]
struct Node {
    unit: &'static str,
    name: &'static str,
    lock_dir: &'static str,
    program: &'static str,
    extra: &'static str,
}

/// Leaves a `setsid` helper reading (see `programs::detacher_main`).
const DETACHING: Node = Node {
    unit: "ec-fence-c.service",
    name: "node-c",
    lock_dir: "/run/ec-c",
    program: "detacher",
    extra: "",
};
/// The standby of both stories.
const STANDBY: Node = Node {
    unit: "ec-fence-d.service",
    name: "node-d",
    lock_dir: "/run/ec-d",
    program: "reader",
    extra: "",
};
/// Reads with the progress watchdog on, as the module renders it in
/// cluster mode.
const WATCHED: Node = Node {
    unit: "ec-fence-e.service",
    name: "node-e",
    lock_dir: "/run/ec-e",
    program: "reader",
    extra: "--progress-watchdog --progress-window 3 ",
};

fn source() -> String {
    format!("http://{DEVICE}{SOURCE_PATH}")
}

/// The module's `TimeoutStopSec` for a cluster unit: stopGrace + margin.
fn stop_timeout() -> Result<Duration, String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(TIMING_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let timing: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let margin = timing["margin"]
        .as_u64()
        .ok_or_else(|| format!("{}: no whole-second \"margin\"", path.display()))?;
    Ok(Duration::from_secs(STOP_GRACE_SECS + margin))
}

/// What this scenario prints at the end.
#[derive(Debug, Default)]
pub struct Figures {
    lines: Vec<String>,
}

impl Figures {
    pub fn print(&self) {
        println!(
            "cluster fencing under systemd (standby on another node, 1 tuner, --etcd-ttl {TTL_SECS} --etcd-stop-grace {STOP_GRACE_SECS}):"
        );
        for line in &self.lines {
            println!("  {line}");
        }
    }
}

/// Writes the device's unit and the three nodes' units.
pub fn stage(
    staging: &Staging,
    policy: &UnitPolicy,
    hardening: &Hardening,
    watchdog: u64,
) -> Result<(), String> {
    let stop = stop_timeout()?;
    staging.unit(
        TUNER_UNIT,
        &policy::unit_file(
            &format!("HDHomeRun-like tuner emulator on {DEVICE} with 1 tuner"),
            &format!("ExecStart={SUITE_DIR}/tuner-emulator --listen {DEVICE} --tuners 1\n"),
        ),
    )?;
    for node in [DETACHING, STANDBY, WATCHED] {
        // The policy's lines with the module's cluster TimeoutStopSec (set
        // through the same renderer the module option uses), and
        // RestartSec after them, as the module's restartSec.
        let service = format!(
            "ExecStart={} run --etcd {ETCD_URL} --etcd-ttl {TTL_SECS} --etcd-stop-grace {STOP_GRACE_SECS} --node {} --lock-dir {} --on-busy wait {}--source {} -- {SUITE_DIR}/{} {{source}}\nExecStopPost={SUITE_DIR}/record-exit %n\nWatchdogSec={watchdog}\nNotifyAccess=main\nTimeoutAbortSec={STOP_GRACE_SECS}\n{}RestartSec={RESTART_SEC}\n{CLUSTER_SUCCESS}{}ReadWritePaths={RECORD_DIR}\n",
            ec_launch(),
            node.name,
            node.lock_dir,
            node.extra,
            source(),
            node.program,
            policy.service_lines(StopTimeout::ModuleOption(stop)),
            hardening.publisher_lines(node.lock_dir),
        );
        staging.unit(
            node.unit,
            &policy::unit_file_with(
                &format!("{} in cluster mode, with the module's policy", node.name),
                &format!("Wants={ETCD_UNIT}\nAfter={ETCD_UNIT}\n"),
                &service,
            ),
        )?;
    }
    Ok(())
}

/// Runs both stories, then stops everything it started.
pub fn scenario(checks: &mut Checks, probe: &Probe, figures: &mut Figures) -> Result<(), String> {
    let c = probe.container;
    checks.say(&format!(
        "=== cluster fencing: a setsid helper with its launcher SIGKILLed, and a frozen launcher, beside a standby, on {}",
        source()
    ));
    c.run(&[
        "mkdir",
        "-p",
        DETACHING.lock_dir,
        STANDBY.lock_dir,
        WATCHED.lock_dir,
        RECORD_DIR,
    ])?;
    c.systemctl(&["start", ETCD_UNIT])?;
    c.systemctl(&["start", TUNER_UNIT])?;
    probe.wait_ready(DEVICE)?;
    let result = killed_launcher(checks, probe, figures)
        .and_then(|()| frozen_launcher(checks, probe, figures));
    for unit in [
        DETACHING.unit,
        STANDBY.unit,
        WATCHED.unit,
        TUNER_UNIT,
        ETCD_UNIT,
    ] {
        let _ = c.systemctl(&["stop", unit]);
    }
    let _ = c.systemctl(&["reset-failed"]);
    result
}

/// Polls until `found` gives a value, up to `limit`.
fn poll<T>(limit: Duration, mut found: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = found() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the standby and waits until its journal says it waits.
fn standby_waits(probe: &Probe) -> Result<(), String> {
    let c = probe.container;
    c.systemctl(&["start", STANDBY.unit])?;
    poll(Duration::from_secs(15), || {
        c.journal(STANDBY.unit)
            .contains("busy in the cluster")
            .then_some(())
    })
    .ok_or_else(|| {
        format!(
            "{} never waited:\n{}",
            STANDBY.unit,
            c.journal(STANDBY.unit)
        )
    })
}

fn seconds(from: u128, to: u128) -> f64 {
    (i128::try_from(to).unwrap_or(0) - i128::try_from(from).unwrap_or(0)) as f64 / 1e6
}

/// `at` as seconds since `from` (`"1.23 s{suffix}"`), or `never` when it
/// did not happen.
fn seconds_since(from: u128, at: Option<u128>, suffix: &str, never: &str) -> String {
    at.map_or_else(
        || never.to_owned(),
        |at| format!("{:.2} s{suffix}", seconds(from, at)),
    )
}

fn killed_launcher(
    checks: &mut Checks,
    probe: &Probe,
    figures: &mut Figures,
) -> Result<(), String> {
    let c = probe.container;
    let busy_before = probe.counter(DEVICE, "busy_503")?;
    c.systemctl(&["start", DETACHING.unit])?;
    let helper = poll(Duration::from_secs(15), || {
        let processes = probe.unit_processes(DETACHING.unit);
        let helper = processes
            .iter()
            .find(|p| p.comm == "stubborn-helper" && p.ignores_sigterm)
            .cloned();
        helper.filter(|_| probe.counter(DEVICE, "open_streams").unwrap_or(0) == 1)
    })
    .ok_or_else(|| {
        format!(
            "{} never ran its setsid helper on the stream:\n{}",
            DETACHING.unit,
            c.journal(DETACHING.unit)
        )
    })?;
    standby_waits(probe)?;
    let main_pid = c.property(DETACHING.unit, "MainPID");
    let killed_at = unix_micros();
    c.systemctl(&["kill", "--kill-whom=main", "-s", "KILL", DETACHING.unit])?;
    let helper_id = [ProcessFacts::id(&helper)];
    let dead_at = poll(Duration::from_secs(20), || {
        probe.alive(&helper_id).is_empty().then(unix_micros)
    });
    let streaming = poll(Duration::from_secs(TTL_SECS + 15), || {
        last_record_time(probe, "readers.log", STANDBY.unit, "streaming")
    });
    let busy = probe.counter(DEVICE, "busy_503")? - busy_before;
    let open = probe.counter(DEVICE, "open_streams")?;
    let line = format!(
        "launcher (pid {main_pid}) SIGKILLed with a setsid helper ignoring SIGTERM: helper dead {}; standby streaming {} after the kill ({} after the helper died); 503 answers {busy}, open streams {open}",
        seconds_since(killed_at, dead_at, " after the kill", "never (20 s)"),
        seconds_since(killed_at, streaming, "", "never"),
        match (dead_at, streaming) {
            (Some(dead), Some(start)) => format!("{:.2} s", seconds(dead, start)),
            _ => "?".to_owned(),
        },
    );
    checks.say(&line);
    figures.lines.push(line.clone());
    let budget = stop_timeout()? + Duration::from_secs(1);
    checks.check(
        "with its launcher SIGKILLed, a unit's setsid helper that ignores SIGTERM is killed by systemd within TimeoutStopSec (stopGrace + margin)",
        dead_at.is_some_and(|at| seconds(killed_at, at) <= budget.as_secs_f64()),
        &line,
    );
    checks.check(
        "the standby on another node streams only after that helper is dead, and the one-tuner device never answers 503 (no overlap)",
        matches!((dead_at, streaming), (Some(dead), Some(start)) if start > dead) && busy == 0 && open == 1,
        &line,
    );
    for unit in [DETACHING.unit, STANDBY.unit] {
        let _ = c.systemctl(&["stop", unit]);
    }
    let _ = c.systemctl(&["reset-failed"]);
    Ok(())
}

fn frozen_launcher(
    checks: &mut Checks,
    probe: &Probe,
    figures: &mut Figures,
) -> Result<(), String> {
    let c = probe.container;
    let busy_before = probe.counter(DEVICE, "busy_503")?;
    let streams_before = last_record_time(probe, "readers.log", STANDBY.unit, "streaming");
    c.systemctl(&["start", WATCHED.unit])?;
    let reader = poll(Duration::from_secs(15), || {
        let processes = probe.unit_processes(WATCHED.unit);
        let reader = processes.iter().find(|p| p.comm == "reader").cloned();
        reader.filter(|_| probe.counter(DEVICE, "open_streams").unwrap_or(0) == 1)
    })
    .ok_or_else(|| {
        format!(
            "{} never streamed:\n{}",
            WATCHED.unit,
            c.journal(WATCHED.unit)
        )
    })?;
    standby_waits(probe)?;
    // Streaming and renewing for a while: the launcher vouches (no abort).
    thread::sleep(Duration::from_secs(PROGRESS_WINDOW_SECS + 2));
    let healthy = c.state(WATCHED.unit) == "active" && exits_of(probe, WATCHED.unit).is_empty();
    let frozen_at = unix_micros();
    c.systemctl(&["kill", "--kill-whom=main", "-s", "STOP", WATCHED.unit])?;
    let reader_id = [ProcessFacts::id(&reader)];
    let dead_at = poll(Duration::from_secs(20), || {
        probe.alive(&reader_id).is_empty().then(unix_micros)
    });
    let exit = poll(Duration::from_secs(20), || {
        exits_of(probe, WATCHED.unit).pop()
    })
    .unwrap_or_default();
    let streaming = poll(Duration::from_secs(TTL_SECS + 15), || {
        last_record_time(probe, "readers.log", STANDBY.unit, "streaming")
            .filter(|at| Some(*at) != streams_before)
    });
    let busy = probe.counter(DEVICE, "busy_503")? - busy_before;
    let line = format!(
        "launcher frozen (SIGSTOP) with --progress-watchdog, WatchdogSec from the TTL, NotifyAccess=main: healthy before {healthy}; its reader dead {}; ExecStopPost saw: {exit}; standby streaming {} after the freeze; 503 answers {busy}",
        seconds_since(frozen_at, dead_at, " after the freeze", "never (20 s)"),
        seconds_since(frozen_at, streaming, "", "never"),
    );
    checks.say(&line);
    figures.lines.push(line.clone());
    checks.check(
        "a frozen launcher gets no WATCHDOG=1 from its progress monitor or program: systemd aborts the unit (watchdog) and it is restarted",
        healthy && exit.contains("result=watchdog") && dead_at.is_some(),
        &line,
    );
    checks.check(
        "the standby streams only after the frozen launcher's reader is dead, and no 503 (no overlap)",
        matches!((dead_at, streaming), (Some(dead), Some(start)) if start > dead) && busy == 0,
        &line,
    );
    Ok(())
}
