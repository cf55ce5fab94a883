//! Issue 11 under a real systemd: the progress watchdog and stale readers.
//!
//! 1. A zombie: a publisher unit with `WatchdogSec=` and `ec-launch run
//!    --progress-watchdog` whose device stalls (the emulator's
//!    `/control/stall`: streams stay open, no bytes). systemd must kill and
//!    restart it within `WatchdogSec` + 2 s; the latency is a figure.
//! 2. A healthy twin on another device, watched the same way, is never
//!    restarted over 5 × `WatchdogSec`.
//! 3. A stale reader: a streaming client started outside any service (a
//!    `systemd-run --scope`) on the healthy unit's device. `ec-launch status
//!    --readers` must list it as stale and exit 7.
//!
//! Each unit has its own emulated device (127.0.0.6 and 127.0.0.7), so the
//! stall touches only the zombie, and the earlier phases' devices are not
//! involved. Everything here runs after those phases, in the same boot.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Checks, FAST_STOP_TIMEOUT, LOCK_DIR, Probe};
use crate::harness::Staging;
use crate::policy::{self, Hardening, StopTimeout, UnitPolicy};
use crate::programs::{ProcessFacts, RECORD_DIR, SUITE_DIR};

/// `WatchdogSec=` of both watched units.
const WATCHDOG: Duration = Duration::from_secs(3);
/// The claim: a stalled publisher is killed and running again within this.
const RESTART_BOUND: Duration = Duration::from_secs(WATCHDOG.as_secs() + 2);
/// Tuners per device: room for a reader, its restart and the stale reader.
const TUNERS: usize = 4;
const ZOMBIE_DEVICE: &str = "127.0.0.6:5004";
const HEALTHY_DEVICE: &str = "127.0.0.7:5004";
const ZOMBIE_TUNER_UNIT: &str = "ec-tuner-watch-zombie.service";
const HEALTHY_TUNER_UNIT: &str = "ec-tuner-watch-healthy.service";
const ZOMBIE_UNIT: &str = "ec-watch-zombie.service";
const HEALTHY_UNIT: &str = "ec-watch-healthy.service";
/// The scope the stale reader runs in: outside every service.
const STALE_SCOPE: &str = "ec-stale-reader.scope";
/// `status`'s documented exit code for a stale reader (docs/exit-codes.md).
const STALE_EXIT: i32 = 7;

fn source(device: &str) -> String {
    format!("http://{device}/auto/v5.1")
}

/// Waits until `unit`'s main process is the `reader` (one stream, no
/// helper: `programs::reader_main`) and `device` serves exactly one stream;
/// returns its PID.
fn wait_streaming(probe: &Probe, unit: &str, device: &str) -> Result<u32, String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        let main_pid: u32 = probe
            .container
            .property(unit, "MainPID")
            .parse()
            .unwrap_or(0);
        let reader = probe
            .unit_processes(unit)
            .iter()
            .any(|p| p.pid == main_pid && p.comm == "reader");
        let open = probe.counter(device, "open_streams").unwrap_or(0);
        if reader && open == 1 {
            return Ok(main_pid);
        }
        last = format!("MainPID {main_pid} (reader: {reader}), open streams {open}");
        thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "{unit} did not come up streaming from {device}: {last}"
    ))
}

/// What this module's scenarios print at the end.
#[derive(Debug, Default)]
pub struct Figures {
    zombie: Vec<String>,
    healthy: Vec<String>,
    stale: Vec<String>,
}

impl Figures {
    pub fn print(&self) {
        println!(
            "progress watchdog (WatchdogSec={}s, `ec-launch run --progress-watchdog`):",
            WATCHDOG.as_secs()
        );
        for line in &self.zombie {
            println!("  => zombie: {line}");
        }
        for line in &self.healthy {
            println!("  => healthy: {line}");
        }
        println!("stale readers (`ec-launch status --readers`):");
        for line in &self.stale {
            println!("  => {line}");
        }
    }
}

/// Writes this module's units: two emulated devices and two watched
/// publishers built like the fix phase's (policy, hardening), plus what the
/// NixOS module's `watchdogSec` adds.
pub fn stage(staging: &Staging, policy: &UnitPolicy, hardening: &Hardening) -> Result<(), String> {
    for (unit, device) in [
        (ZOMBIE_TUNER_UNIT, ZOMBIE_DEVICE),
        (HEALTHY_TUNER_UNIT, HEALTHY_DEVICE),
    ] {
        staging.unit(
            unit,
            &policy::unit_file(
                &format!("HDHomeRun-like tuner emulator on {device}"),
                &format!(
                    "ExecStart={SUITE_DIR}/tuner-emulator --listen {device} --tuners {TUNERS}\n"
                ),
            ),
        )?;
    }
    for (unit, device) in [(ZOMBIE_UNIT, ZOMBIE_DEVICE), (HEALTHY_UNIT, HEALTHY_DEVICE)] {
        let service = format!(
            "ExecStart={SUITE_DIR}/ec-launch run --lock-dir {LOCK_DIR} --progress-watchdog --source {} -- {SUITE_DIR}/reader {{source}}\nExecStopPost={SUITE_DIR}/record-exit %n\nWatchdogSec={}\nNotifyAccess=all\n{}{}ReadWritePaths={RECORD_DIR}\n",
            source(device),
            WATCHDOG.as_secs(),
            policy.service_lines(StopTimeout::ModuleOption(FAST_STOP_TIMEOUT)),
            hardening.publisher_lines(LOCK_DIR),
        );
        staging.unit(
            unit,
            &policy::unit_file(
                "publisher with the module's policy, watchdogSec and ec-launch",
                &service,
            ),
        )?;
    }
    Ok(())
}

/// `CLOCK_MONOTONIC` in microseconds: the clock systemd's
/// `*TimestampMonotonic` properties use (the container shares it).
fn monotonic_usec() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable");
    u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec()).unwrap_or(0) / 1_000
}

fn seconds_since(start_usec: u64, stamp: &str) -> Option<f64> {
    let stamp: u64 = stamp.parse().ok()?;
    (stamp >= start_usec).then(|| (stamp - start_usec) as f64 / 1e6)
}

/// Runs the three scenarios, then stops everything they started.
pub fn scenarios(checks: &mut Checks, probe: &Probe, figures: &mut Figures) -> Result<(), String> {
    let c = probe.container;
    checks.say(&format!(
        "=== progress watchdog: {HEALTHY_UNIT} on {HEALTHY_DEVICE}, {ZOMBIE_UNIT} on {ZOMBIE_DEVICE}, WatchdogSec={}s",
        WATCHDOG.as_secs()
    ));
    c.run(&["mkdir", "-p", LOCK_DIR, RECORD_DIR])?;
    for (tuner, device) in [
        (HEALTHY_TUNER_UNIT, HEALTHY_DEVICE),
        (ZOMBIE_TUNER_UNIT, ZOMBIE_DEVICE),
    ] {
        c.systemctl(&["start", tuner])?;
        probe.wait_ready(device)?;
    }
    // The healthy unit runs through the other scenarios and is judged last.
    c.systemctl(&["start", HEALTHY_UNIT])?;
    let healthy = wait_streaming(probe, HEALTHY_UNIT, HEALTHY_DEVICE)?;
    let healthy_since = Instant::now();

    let result = zombie(checks, probe, figures).and_then(|()| stale_reader(checks, probe, figures));
    let remaining = (WATCHDOG * 5).saturating_sub(healthy_since.elapsed());
    thread::sleep(remaining);
    healthy_checks(checks, probe, healthy, healthy_since.elapsed(), figures);

    let _ = c.systemctl(&["stop", STALE_SCOPE]);
    for unit in [
        ZOMBIE_UNIT,
        HEALTHY_UNIT,
        ZOMBIE_TUNER_UNIT,
        HEALTHY_TUNER_UNIT,
    ] {
        let _ = c.systemctl(&["stop", unit]);
    }
    let _ = c.systemctl(&["reset-failed"]);
    result
}

fn zombie(checks: &mut Checks, probe: &Probe, figures: &mut Figures) -> Result<(), String> {
    let c = probe.container;
    c.systemctl(&["start", ZOMBIE_UNIT])?;
    let first = wait_streaming(probe, ZOMBIE_UNIT, ZOMBIE_DEVICE)?;
    // Let the monitor see bytes for a couple of ticks first: a stall, not a
    // slow start, is what is measured.
    thread::sleep(WATCHDOG);
    let control = |command: &str| {
        c.run(&[
            &format!("{SUITE_DIR}/http-get"),
            &format!("http://{ZOMBIE_DEVICE}/control/{command}"),
        ])
    };
    let stalled_at = monotonic_usec();
    control("stall")?;
    checks.say(&format!(
        "{ZOMBIE_DEVICE} stalled: its streams stay open and send nothing (MainPID {first})"
    ));
    let deadline = Instant::now() + RESTART_BOUND * 3;
    let mut restarts = String::new();
    while Instant::now() < deadline {
        restarts = c.property(ZOMBIE_UNIT, "NRestarts");
        if restarts.parse::<u64>().unwrap_or(0) >= 1 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    // The restarted instance must be able to stream again.
    control("resume")?;
    let killed = seconds_since(
        stalled_at,
        &c.property(ZOMBIE_UNIT, "ActiveExitTimestampMonotonic"),
    );
    let running = seconds_since(
        stalled_at,
        &c.property(ZOMBIE_UNIT, "ActiveEnterTimestampMonotonic"),
    );
    let exits: Vec<String> = probe
        .records("exits.log")
        .lines()
        .filter(|l| l.starts_with(&format!("{ZOMBIE_UNIT} ")))
        .map(str::to_owned)
        .collect();
    let journal = c.journal(ZOMBIE_UNIT);
    let timeout_line = journal
        .lines()
        .find(|l| l.contains("Watchdog timeout"))
        .unwrap_or("no \"Watchdog timeout\" line")
        .to_owned();
    let second = wait_streaming(probe, ZOMBIE_UNIT, ZOMBIE_DEVICE);
    let show = |s: Option<f64>| s.map_or_else(|| "?".to_owned(), |s| format!("{s:.2}s"));
    let line = format!(
        "stall -> systemd kills it {} (detection latency), -> running again {}; NRestarts {restarts}; ExecStopPost saw {exits:?}; journal: {timeout_line}; MainPID {} -> {}",
        show(killed),
        show(running),
        first,
        second
            .as_ref()
            .map_or_else(|e| format!("none ({e})"), ToString::to_string),
    );
    checks.say(&line);
    figures.zombie.push(line.clone());
    let bound = RESTART_BOUND.as_secs_f64();
    checks.check(
        &format!(
            "a publisher whose device stalls is killed by systemd's watchdog and running again within WatchdogSec={}s + 2s",
            WATCHDOG.as_secs()
        ),
        restarts == "1"
            && killed.is_some_and(|k| k <= bound)
            && running.is_some_and(|r| r <= bound)
            && exits.len() == 1
            && exits[0].contains("result=watchdog"),
        &line,
    );
    checks.check(
        "after the device resumes, the restarted publisher streams again and holds the lock",
        second.as_ref().is_ok_and(|pid| *pid != first) && c.state(ZOMBIE_UNIT) == "active",
        &c.state(ZOMBIE_UNIT),
    );
    Ok(())
}

fn healthy_checks(
    checks: &mut Checks,
    probe: &Probe,
    main_pid_before: u32,
    watched: Duration,
    figures: &mut Figures,
) {
    let c = probe.container;
    let restarts = c.property(HEALTHY_UNIT, "NRestarts");
    let main_pid_now = c.property(HEALTHY_UNIT, "MainPID");
    let armed = c.property(HEALTHY_UNIT, "WatchdogUSec");
    let monitor = probe
        .unit_processes(HEALTHY_UNIT)
        .iter()
        .any(|p| p.comm == "ec-watchdog");
    let line = format!(
        "NRestarts {restarts} over {:.1}s (5 x WatchdogSec), MainPID {} -> {main_pid_now}, WatchdogUSec={armed}, ec-watchdog monitor running: {monitor}",
        watched.as_secs_f64(),
        main_pid_before
    );
    checks.say(&line);
    figures.healthy.push(line.clone());
    checks.check(
        "a healthy watched publisher is never restarted over 5 x WatchdogSec",
        restarts == "0"
            && main_pid_now == main_pid_before.to_string()
            && watched >= WATCHDOG * 5
            && armed == humantime::format_duration(WATCHDOG).to_string()
            && monitor,
        &line,
    );
}

fn stale_reader(checks: &mut Checks, probe: &Probe, figures: &mut Figures) -> Result<(), String> {
    let c = probe.container;
    checks.say(&format!(
        "=== a stale reader: a stream of {HEALTHY_DEVICE} in {STALE_SCOPE}, outside every service"
    ));
    let before = probe.counter(HEALTHY_DEVICE, "open_streams")?;
    // systemd-run --scope runs the client in the foreground: background it,
    // with its output away from the suite's pipes.
    c.run(&[
        "sh",
        "-c",
        &format!(
            "systemd-run --quiet --scope --unit={STALE_SCOPE} -- {SUITE_DIR}/http-get {} </dev/null >/dev/null 2>&1 &",
            source(HEALTHY_DEVICE)
        ),
    ])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut reader = None;
    while Instant::now() < deadline {
        reader = probe
            .unit_processes(STALE_SCOPE)
            .into_iter()
            .find(|p| p.comm == "http-get");
        if reader.is_some() && probe.counter(HEALTHY_DEVICE, "open_streams")? > before {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let reader: ProcessFacts =
        reader.ok_or_else(|| format!("no http-get came up in {STALE_SCOPE}"))?;
    let output = c.exec(&[
        &format!("{SUITE_DIR}/ec-launch"),
        "status",
        "--readers",
        "--json",
        "--lock-dir",
        LOCK_DIR,
    ])?;
    let code = output.status.code();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let connections: Vec<&Value> = json["readers"]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["connections"].as_array().into_iter().flatten())
        .collect();
    let listed = connections
        .iter()
        .find(|c| c["pid"].as_u64() == Some(u64::from(reader.pid)));
    let accounted = connections.iter().filter(|c| c["stale"] == false).count();
    let warnings: Vec<String> = json["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(ToString::to_string)
        .collect();
    let line = format!(
        "stale reader pid {} ({STALE_SCOPE}): exit {code:?}, listed as {}, {accounted} accounted-for connection(s), stale count {}, warnings {warnings:?}",
        reader.pid,
        listed.map_or_else(
            || "nothing".to_owned(),
            |l| format!("stale={} unit={}", l["stale"], l["unit"])
        ),
        json["readers"]["stale"],
    );
    checks.say(&line);
    figures.stale.push(line.clone());
    // Exit 5 (ECP-0131: something status cannot judge) outranks 7; it is
    // accepted only when status says what it could not judge.
    let code_ok = code == Some(STALE_EXIT) || (code == Some(5) && !warnings.is_empty());
    checks.check(
        &format!(
            "a reader started outside any unit on a device a unit's lock names is listed as stale by `ec-launch status --readers`, which exits {STALE_EXIT}"
        ),
        listed.is_some_and(|l| l["stale"] == true) && code_ok,
        &line,
    );
    c.systemctl(&["stop", STALE_SCOPE])?;
    Ok(())
}
