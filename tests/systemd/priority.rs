//! Issue 18 under a real systemd: priorities, preemption and an escaped
//! holder reclaimed (ECP-0139), with units as the NixOS module renders them.
//!
//! 1. Two publishers at priority 100 (`onBusy = "wait"`) stream from a
//!    two-tuner emulator; a recording unit at 300 starts. The newer
//!    publisher gets SIGTERM, the recording streams, the preempted unit is
//!    restarted by systemd (`Restart=always`) and waits in line at 100
//!    (`status --json`'s `waiters`); when the recording stops it streams
//!    again. The emulator must have answered no 503.
//! 2. A unit whose program leaves a helper holding the source lock in a
//!    `systemd-run --scope` and exits: `status` marks the holder escaped,
//!    and the unit's next start reclaims the lock (SIGTERM to the helper)
//!    and runs. A launcher started by hand in a scope is never reclaimed.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Checks, FAST_STOP_TIMEOUT, LOCK_DIR, Probe};
use crate::harness::Staging;
use crate::policy::{self, Hardening, StopTimeout, UnitPolicy};
use crate::programs::{RECORD_DIR, SUITE_DIR};

/// An address no other scenario uses: their lock files stay in the same
/// directory for the whole boot (the cluster scenario's is 127.0.0.8).
const DEVICE: &str = "127.0.0.9:5004";
const DEVICE_KEY: &str = "127.0.0.9";
const TUNERS: usize = 2;
const TUNER_UNIT: &str = "ec-tuner-priority.service";
const FIRST: &str = "ec-prio-first.service";
const SECOND: &str = "ec-prio-second.service";
const RECORDING: &str = "ec-prio-recording.service";
const ESCAPE_UNIT: &str = "ec-prio-escape.service";
const ESCAPED_SCOPE: &str = "ec-escaped-helper.scope";
const HAND_SCOPE: &str = "ec-hand-launch.scope";
/// The escape unit's program, after its first run, only sleeps.
const ESCAPE_MARK: &str = "/run/ec-escape-ran";
const BUSY: i32 = 75;

/// What this module prints at the end.
#[derive(Debug, Default)]
pub struct Figures {
    lines: Vec<String>,
}

impl Figures {
    pub fn print(&self) {
        println!(
            "priorities (2 publishers at 100, a recording at 300, {TUNERS} tuners, onBusy wait):"
        );
        for line in &self.lines {
            println!("  => {line}");
        }
    }
}

/// The units: the device, three publishers as the module renders a unit
/// with `priority`, `onBusy = "wait"` and `reclaimEscaped`, and the escape
/// unit (no sandbox: its program calls `systemd-run`).
pub fn stage(staging: &Staging, policy: &UnitPolicy, hardening: &Hardening) -> Result<(), String> {
    staging.unit(
        TUNER_UNIT,
        &policy::unit_file(
            &format!("HDHomeRun-like tuner emulator on {DEVICE}"),
            &format!("ExecStart={SUITE_DIR}/tuner-emulator --listen {DEVICE} --tuners {TUNERS}\n"),
        ),
    )?;
    for (unit, channel, priority) in [
        (FIRST, "v2.1", None),
        (SECOND, "v4.1", None),
        (RECORDING, "v5.1", Some(300)),
    ] {
        let priority = priority.map_or_else(String::new, |p| format!(" --priority {p}"));
        let service = format!(
            "ExecStart={SUITE_DIR}/ec-launch run --lock-dir {LOCK_DIR} --on-busy wait --reclaim-escaped{priority} --tuners {TUNERS} --device {DEVICE_KEY} --source http://{DEVICE}/auto/{channel} -- {SUITE_DIR}/reader\nExecStopPost={SUITE_DIR}/record-exit %n\n{}{}ReadWritePaths={RECORD_DIR}\n",
            policy.service_lines(StopTimeout::ModuleOption(FAST_STOP_TIMEOUT)),
            hardening.publisher_lines(LOCK_DIR),
        );
        staging.unit(
            unit,
            &policy::unit_file(
                "a publisher with a priority on a two-tuner device",
                &service,
            ),
        )?;
    }
    let service = format!(
        "ExecStart={SUITE_DIR}/ec-launch run --lock-dir {LOCK_DIR} --on-busy skip --reclaim-escaped --source http://{DEVICE}/auto/vesc -- /bin/sh -c 'if [ -e {ESCAPE_MARK} ]; then exec sleep 1000; fi; touch {ESCAPE_MARK}; systemd-run --quiet --scope --unit={ESCAPED_SCOPE} sleep 1000 </dev/null >/dev/null 2>&1 & until systemctl is-active --quiet {ESCAPED_SCOPE}; do sleep 0.05; done; exit 0'\n{}Restart=no\n",
        policy.service_lines(StopTimeout::ModuleOption(FAST_STOP_TIMEOUT)),
    );
    staging.unit(
        ESCAPE_UNIT,
        &policy::unit_file("a unit whose helper escapes into a scope", &service),
    )
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Waits until `readers.log` has `n` lines with `needle`.
fn wait_log(probe: &Probe, needle: &str, n: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if count(&probe.records("readers.log"), needle) >= n {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "readers.log never had {n} × {needle:?}: {}",
        probe.records("readers.log")
    ))
}

/// `status --json` (whatever its exit status: a reader of a held lock's
/// entry does not care whether another entry is unknown).
fn status_json(probe: &Probe) -> Value {
    probe
        .container
        .exec(&[
            &format!("{SUITE_DIR}/ec-launch"),
            "status",
            "--json",
            "--lock-dir",
            LOCK_DIR,
        ])
        .ok()
        .and_then(|out| serde_json::from_slice(&out.stdout).ok())
        .unwrap_or(Value::Null)
}

/// Runs both scenarios, then stops what they started.
pub fn scenarios(checks: &mut Checks, probe: &Probe, figures: &mut Figures) -> Result<(), String> {
    let c = probe.container;
    checks.say(&format!(
        "=== priorities: {FIRST} and {SECOND} at 100, {RECORDING} at 300 on {DEVICE} ({TUNERS} tuners)"
    ));
    c.run(&["mkdir", "-p", LOCK_DIR, RECORD_DIR])?;
    c.systemctl(&["start", TUNER_UNIT])?;
    probe.wait_ready(DEVICE)?;
    let result = preemption(checks, probe, figures).and_then(|()| escape(checks, probe, figures));
    for unit in [
        RECORDING,
        FIRST,
        SECOND,
        ESCAPE_UNIT,
        ESCAPED_SCOPE,
        HAND_SCOPE,
        TUNER_UNIT,
    ] {
        let _ = c.systemctl(&["stop", unit]);
    }
    let _ = c.systemctl(&["reset-failed"]);
    result
}

fn preemption(checks: &mut Checks, probe: &Probe, figures: &mut Figures) -> Result<(), String> {
    let c = probe.container;
    c.systemctl(&["start", FIRST])?;
    wait_log(probe, &format!("{FIRST} streaming"), 1)?;
    // A later start by a whole second: the newest holder is the victim.
    thread::sleep(Duration::from_millis(1100));
    c.systemctl(&["start", SECOND])?;
    wait_log(probe, &format!("{SECOND} streaming"), 1)?;
    c.systemctl(&["start", RECORDING])?;
    wait_log(probe, &format!("{RECORDING} streaming"), 1)?;
    let log = probe.records("readers.log");
    checks.check(
        "the recording at 300 preempts the newer publisher at 100, not the older",
        count(&log, &format!("{SECOND} stopping")) == 1
            && count(&log, &format!("{FIRST} stopping")) == 0,
        &log,
    );
    let journal = c.journal(RECORDING);
    let explained = journal
        .lines()
        .find(|l| l.contains("preempting tuner slot"));
    checks.check(
        "the preemptor's journal names the victim and itself",
        explained.is_some_and(|l| {
            l.contains("at priority 100, for")
                && l.contains("at priority 300")
                && l.contains(SECOND)
        }),
        &journal,
    );
    if let Some(ms) = journal
        .lines()
        .find_map(|l| {
            l.split(" ms after SIGTERM")
                .next()
                .filter(|_| l.contains(" ms after SIGTERM"))
        })
        .and_then(|l| l.rsplit(' ').next())
    {
        figures.lines.push(format!(
            "preemption latency (SIGTERM sent -> slot taken): {ms} ms"
        ));
    }
    // systemd restarts the victim (killed by a signal); it waits in line.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut waiting = false;
    let mut last = Value::Null;
    while Instant::now() < deadline && !waiting {
        last = status_json(probe);
        waiting = last["devices"].as_array().into_iter().flatten().any(|d| {
            d["waiters"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w["priority"] == 100))
        });
        thread::sleep(Duration::from_millis(100));
    }
    checks.check(
        "the preempted unit restarts and waits in line at its priority",
        waiting && c.state(SECOND) == "active",
        &last.to_string(),
    );
    let before = probe.counter(DEVICE, "busy_503")?;
    checks.check(
        "no 503 while the recording took the tuner",
        before == 0,
        &before.to_string(),
    );
    c.systemctl(&["stop", RECORDING])?;
    wait_log(probe, &format!("{SECOND} streaming"), 2)?;
    let after = probe.counter(DEVICE, "busy_503")?;
    checks.check(
        "the waiting publisher streams again when the recording stops, with no 503",
        after == 0,
        &after.to_string(),
    );
    figures.lines.push(format!("503 answers: {after}"));
    Ok(())
}

fn escape(checks: &mut Checks, probe: &Probe, figures: &mut Figures) -> Result<(), String> {
    let c = probe.container;
    checks.say(&format!(
        "=== escaped holder: {ESCAPE_UNIT} leaves a helper in {ESCAPED_SCOPE} and exits"
    ));
    let _ = c.run(&["rm", "-f", ESCAPE_MARK]);
    c.systemctl(&["start", ESCAPE_UNIT])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && c.state(ESCAPE_UNIT) == "active" {
        thread::sleep(Duration::from_millis(50));
    }
    let escaped_lock = |status: &Value| {
        status["locks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["key"].as_str().is_some_and(|k| k.ends_with("/vesc")))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let status = status_json(probe);
    let lock = escaped_lock(&status);
    checks.check(
        "status marks the helper left in a scope by a stopped unit as escaped",
        lock["escaped"] == true && c.state(ESCAPED_SCOPE) == "active",
        &format!("{status}"),
    );
    // A launcher started by hand (in a scope) is never reclaimed.
    let ec_launch = format!("{SUITE_DIR}/ec-launch");
    c.run(&[
        "sh",
        "-c",
        &format!(
            "systemd-run --quiet --scope --unit={HAND_SCOPE} {ec_launch} run --lock-dir {LOCK_DIR} --source http://{DEVICE}/auto/vhand -- sleep 1000 </dev/null >/dev/null 2>&1 &"
        ),
    ])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && c.state(HAND_SCOPE) != "active" {
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
    let refused = c.exec(&[
        &ec_launch,
        "run",
        "--lock-dir",
        LOCK_DIR,
        "--reclaim-escaped",
        "--source",
        &format!("http://{DEVICE}/auto/vhand"),
        "--",
        "true",
    ])?;
    checks.check(
        "a launcher started by hand is not reclaimed (busy, 75)",
        refused.status.code() == Some(BUSY) && c.state(HAND_SCOPE) == "active",
        &String::from_utf8_lossy(&refused.stderr),
    );
    // The unit's next start reclaims its escaped helper's lock.
    let started = Instant::now();
    c.systemctl(&["start", ESCAPE_UNIT])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && c.state(ESCAPED_SCOPE) == "active" {
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
    let journal = c.journal(ESCAPE_UNIT);
    checks.check(
        "the unit's next start reclaims the escaped holder and runs",
        c.state(ESCAPED_SCOPE) != "active"
            && c.state(ESCAPE_UNIT) == "active"
            && journal.contains(&format!(
                "reclaiming the source lock from a holder that escaped {ESCAPE_UNIT}"
            ))
            && journal.contains(ESCAPED_SCOPE),
        &journal,
    );
    figures.lines.push(format!(
        "escaped holder reclaimed {:.2} s after the unit's start",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
