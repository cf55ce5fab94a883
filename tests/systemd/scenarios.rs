//! The scenarios, all in one boot:
//!
//! 1. The incident: a publisher unit with the old policy (`KillMode=process`,
//!    no lock) is restarted a few times; its SIGTERM-ignoring helpers survive
//!    every restart, hold tuners, and the emulator answers 503.
//! 2. The fix: units built from `nixos/unit-policy.json` with `ec-launch run`
//!    as `ExecStart`; twenty restarts leave nothing behind and get no 503;
//!    every stop is bounded by `TimeoutStopSec`; a duplicate unit on the same
//!    source exits 75 once and stays down; stopping the holder lets the
//!    duplicate start; `ec-launch status` names the holder.
//!
//! Later phases: tuner slots (issue 10, in this file), the progress
//! watchdog and stale readers (issue 11, `watch`), two nodes on one source
//! through etcd (issue 12, `cluster`), two nodes sharing four channels
//! (issue 19, `placement`). `EC_SYSTEMD_ONLY` (e.g. `cluster` or
//! `fix,slots`) runs only the named ones while iterating.
//!
//! The two phases use two emulated devices (127.0.0.2 and 127.0.0.3, both on
//! the container's loopback), so the incident's leftovers cannot touch the
//! fix's figures. Checks are collected rather than asserted one by one, so a
//! failing check still leaves every figure printed.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{self, Container, Staging};
use crate::policy::{self, Hardening, StopTimeout, UnitPolicy};
use crate::programs::{ProcessFacts, RECORD_DIR, SUITE_DIR};

/// Issue 18: priorities, preemption, an escaped holder reclaimed.
#[path = "priority.rs"]
mod priority;
/// Issue 11: the progress watchdog and stale readers.
#[path = "watch.rs"]
mod watch;

/// Issue 12: two nodes on one source through etcd.
#[path = "cluster.rs"]
mod cluster;

/// Issue 19: two nodes share four channels through etcd.
#[path = "placement.rs"]
mod placement;

/// The scenarios in run order, by the names `EC_SYSTEMD_ONLY` takes.
const SCENARIOS: [&str; 8] = [
    "incident",
    "fix",
    "slots",
    "watch",
    "priority",
    "cluster",
    "cluster-fence",
    "placement",
];
/// Runs only the named scenarios (comma-separated) of [`SCENARIOS`], to
/// iterate on one; the boot, the staging and the teardown checks still run.
/// Unset (CI, the acceptance run), every scenario runs.
const ONLY_VAR: &str = "EC_SYSTEMD_ONLY";

/// Tuners per emulated device (the default, a two-tuner HDHomeRun).
const TUNERS: usize = 2;
/// A publisher instance holds two streams: its own and its helper's.
const STREAMS_PER_INSTANCE: u64 = 2;
const INCIDENT_DEVICE: &str = "127.0.0.2:5004";
const FIX_DEVICE: &str = "127.0.0.3:5004";
const CHANNEL_PATH: &str = "/auto/v5.1";
/// The module's default lock directory; in a deployment tmpfiles creates it.
const LOCK_DIR: &str = "/run/every-channel/source-locks";
const INCIDENT_RESTARTS: usize = 3;
const FIX_RESTARTS: usize = 20;
/// The module's `stopTimeout` option as the suite sets it for the many
/// cycles, only to keep them short. One stop still runs with the policy's
/// own default.
const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// What a stop may take beyond `TimeoutStopSec`: systemd's SIGKILL, the
/// reaping, and the `nsenter` round trip of `systemctl`.
const STOP_MARGIN: Duration = Duration::from_millis(1500);

const INCIDENT_TUNER_UNIT: &str = "ec-tuner-incident.service";
const FIX_TUNER_UNIT: &str = "ec-tuner-fix.service";
const INCIDENT_UNIT: &str = "ec-incident-publisher.service";
const FIX_UNIT: &str = "ec-publisher-a.service";
const DUPLICATE_UNIT: &str = "ec-publisher-b.service";
const DEFAULT_TIMEOUT_UNIT: &str = "ec-publisher-default.service";
/// Issue #10: three publishers on three channels of one two-tuner device.
const SLOTS_DEVICE: &str = "127.0.0.4:5004";
const SLOTS_DEVICE_KEY: &str = "127.0.0.4";
const SLOTS_TUNER_UNIT: &str = "ec-tuner-slots.service";
const SLOT_UNITS: [(&str, &str); 3] = [
    ("ec-slots-a.service", "/auto/v5.1"),
    ("ec-slots-b.service", "/auto/v6.1"),
    ("ec-slots-c.service", "/auto/v7.1"),
];
const SLOT_RESTARTS: usize = 10;
const FOREIGN_UNIT: &str = "ec-foreign-reader.service";

fn source(device: &str) -> String {
    format!("http://{device}{CHANNEL_PATH}")
}

/// Passed and failed checks, printed as they happen.
#[derive(Debug)]
struct Checks {
    started: Instant,
    passed: usize,
    failed: Vec<String>,
}

impl Checks {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            passed: 0,
            failed: Vec::new(),
        }
    }

    fn say(&self, text: &str) {
        println!("[{:6.1}s] {text}", self.started.elapsed().as_secs_f64());
    }

    fn check(&mut self, sentence: &str, ok: bool, detail: &str) {
        if ok {
            self.passed += 1;
            println!("PASS: {sentence} ({detail})");
        } else {
            self.failed.push(format!("{sentence} ({detail})"));
            println!("FAIL: {sentence} ({detail})");
        }
    }

    fn fail(&mut self, sentence: &str, why: &str) {
        self.check(sentence, false, why);
    }
}

/// Runs everything; true when every check passed and teardown was clean.
pub fn run_suite() -> bool {
    let mut checks = Checks::new();
    let missing = harness::missing_requirements();
    if !missing.is_empty() {
        for requirement in &missing {
            checks.fail("the systemd suite can run here", requirement);
        }
        println!(
            "\nthe systemd acceptance suite cannot run: {}. It needs root, overlayfs, systemd, systemd-nspawn and util-linux; CI (.ci/run) provides them.",
            missing.join("; ")
        );
        return false;
    }
    let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("systemd-suite")
        .join(std::process::id().to_string());
    if let Err(e) = fs::create_dir_all(&log_dir) {
        checks.fail("the suite has a log directory", &e.to_string());
        return false;
    }
    checks.say(&format!("logs: {}", log_dir.display()));
    let figures = match prepare_and_run(&mut checks, &log_dir) {
        Ok(figures) => figures,
        Err(e) => {
            checks.fail("the suite ran to the end", &e);
            Figures::default()
        }
    };
    figures.print(&checks);
    println!(
        "\nSUMMARY: {} passed, {} failed ({:.1}s)",
        checks.passed,
        checks.failed.len(),
        checks.started.elapsed().as_secs_f64()
    );
    for failure in &checks.failed {
        println!("  failed: {failure}");
    }
    checks.failed.is_empty()
}

fn prepare_and_run(checks: &mut Checks, log_dir: &std::path::Path) -> Result<Figures, String> {
    let policy = UnitPolicy::load()?;
    checks.say(&format!(
        "unit policy from {}:\n{}",
        policy::POLICY_FILE,
        indent(&policy.service_lines(StopTimeout::PolicyDefault))
    ));
    let hardening = Hardening::load()?;
    let staging = Staging::new()?;
    stage(&staging, &policy, &hardening)?;
    checks.say("booting the host's systemd as PID 1 of a throw-away container");
    let mut container = Container::boot(&staging, log_dir)?;
    checks.say(&format!(
        "container up in {:.1}s: {}",
        container.boot_time.as_secs_f64(),
        container
            .run(&["systemctl", "--version"])
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("?")
    ));
    let mut figures = Figures::default();
    let result = scenarios(checks, &container, &policy, &mut figures);
    container.save_journal(&log_dir.join("journal.txt"));
    if let Err(e) = &result {
        checks.fail("the scenarios ran to the end", e);
        println!("console (last lines):\n{}", container.console_tail());
    }
    checks.say("tearing down");
    let report = container.tear_down();
    checks.check(
        "teardown leaves no process, mount or cgroup of the run on the host",
        report.clean(),
        &format!(
            "processes left {}, mount namespaces with our mounts {}, cgroup dirs left {}, launcher alive {}, {:.1}s",
            report.processes_left,
            report.namespaces_with_our_mounts,
            report.cgroup_dirs_left,
            report.launcher_alive,
            report.took.as_secs_f64()
        ),
    );
    drop(staging);
    Ok(figures)
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes the programs and every unit into the staging directory.
fn stage(staging: &Staging, policy: &UnitPolicy, hardening: &Hardening) -> Result<(), String> {
    let this = std::env::current_exe().map_err(|e| e.to_string())?;
    staging.program(&this, "ec-suite")?;
    for role in [
        "tuner-emulator",
        "http-get",
        "publisher",
        "reader",
        "stubborn-helper",
        "detacher",
        "record-exit",
        "inspect",
    ] {
        staging.alias("ec-suite", role)?;
    }
    let ec_launch = std::path::Path::new(env!("CARGO_BIN_EXE_ec-launch"));
    staging.program(ec_launch, "ec-launch")?;
    // Beside it, where `ec-launch run --etcd` looks for it (ECP-0138).
    staging.program(
        &ec_test_support::executables::cluster_beside(ec_launch),
        "ec-launch-cluster",
    )?;

    for (unit, device) in [
        (INCIDENT_TUNER_UNIT, INCIDENT_DEVICE),
        (FIX_TUNER_UNIT, FIX_DEVICE),
        (SLOTS_TUNER_UNIT, SLOTS_DEVICE),
    ] {
        staging.unit(
            unit,
            &policy::unit_file(
                &format!("HDHomeRun-like tuner emulator on {device}"),
                &format!(
                    "ExecStart={SUITE_DIR}/tuner-emulator --listen {device} --tuners {TUNERS}{}\n",
                    // The HDHomeRun API (discover.json, status.json) on port 80.
                    if device == SLOTS_DEVICE {
                        format!(" --api {SLOTS_DEVICE_KEY}:80")
                    } else {
                        String::new()
                    }
                ),
            ),
        )?;
    }
    // The old policy: the main process alone is signalled on stop, nothing
    // guards the source.
    staging.unit(
        INCIDENT_UNIT,
        &policy::unit_file(
            "publisher with the pre-incident policy (KillMode=process, no lock)",
            &format!(
                "ExecStart={SUITE_DIR}/publisher {}\nKillMode=process\nRestart=always\n",
                source(INCIDENT_DEVICE)
            ),
        ),
    )?;
    for (unit, stop) in [
        (FIX_UNIT, StopTimeout::ModuleOption(FAST_STOP_TIMEOUT)),
        (DUPLICATE_UNIT, StopTimeout::ModuleOption(FAST_STOP_TIMEOUT)),
        (DEFAULT_TIMEOUT_UNIT, StopTimeout::PolicyDefault),
    ] {
        // The module's sandbox too, so a feature the deployed units forbid
        // fails here rather than on the first deploy.
        let service = format!(
            "ExecStart={SUITE_DIR}/ec-launch run --lock-dir {LOCK_DIR} --source {} -- {SUITE_DIR}/publisher {{source}}\nExecStopPost={SUITE_DIR}/record-exit %n\n{}{}",
            source(FIX_DEVICE),
            policy.service_lines(stop),
            hardening.publisher_lines(LOCK_DIR),
        );
        // The suite's own instrumentation: where its programs record what
        // they saw. Not a module setting.
        let service = format!("{service}ReadWritePaths={RECORD_DIR}\n");
        staging.unit(
            unit,
            &policy::unit_file("publisher with the module's policy and ec-launch", &service),
        )?;
    }
    // What the module renders for units on a declared two-tuner device with
    // onBusy = "wait": --tuners/--device before `--`.
    for (unit, path) in SLOT_UNITS {
        let service = format!(
            "ExecStart={SUITE_DIR}/ec-launch run --lock-dir {LOCK_DIR} --on-busy wait --tuners {TUNERS} --device {SLOTS_DEVICE_KEY} --source http://{SLOTS_DEVICE}{path} -- {SUITE_DIR}/reader\nExecStopPost={SUITE_DIR}/record-exit %n\n{}{}ReadWritePaths={RECORD_DIR}\n",
            policy.service_lines(StopTimeout::ModuleOption(FAST_STOP_TIMEOUT)),
            hardening.publisher_lines(LOCK_DIR),
        );
        staging.unit(
            unit,
            &policy::unit_file("a publisher on a declared two-tuner device", &service),
        )?;
    }
    watch::stage(staging, policy, hardening)?;
    priority::stage(staging, policy, hardening)?;
    cluster::stage(staging, policy, hardening)?;
    placement::stage(staging, policy, hardening)
}

/// Everything the figures block prints at the end.
#[derive(Debug, Default)]
struct Figures {
    incident_rows: Vec<String>,
    incident_503: u64,
    incident_survivors: usize,
    fix_rows: Vec<String>,
    fix_503: u64,
    fix_survivors: usize,
    fast_stops: Vec<f64>,
    other_stops: Vec<String>,
    duplicate: String,
    status: Vec<String>,
    slot_handovers: Vec<f64>,
    slot_503: u64,
    slot_rows: Vec<String>,
    watch: watch::Figures,
    priority: priority::Figures,
    cluster: cluster::Figures,
    cluster_fence: cluster::fence::Figures,
    placement: placement::Figures,
}

impl Figures {
    fn print(&self, checks: &Checks) {
        checks.say("FIGURES");
        if let Some(only) = std::env::var_os(ONLY_VAR) {
            println!(
                "({ONLY_VAR}={}: the figures of the scenarios that did not run are empty)",
                only.to_string_lossy()
            );
        }
        println!("incident (KillMode=process, no lock, {TUNERS} tuners):");
        for row in &self.incident_rows {
            println!("  {row}");
        }
        println!(
            "  => 503 answers: {}, helpers of old instances still running: {}",
            self.incident_503, self.incident_survivors
        );
        println!("fix (policy from {} + ec-launch run):", policy::POLICY_FILE);
        for row in &self.fix_rows {
            println!("  {row}");
        }
        if let Some((min, median, max)) = spread(&self.fast_stops) {
            println!(
                "  => {} restarts with TimeoutStopSec={}s (module option stopTimeout): stop min {min:.2}s / median {median:.2}s / max {max:.2}s",
                self.fast_stops.len(),
                FAST_STOP_TIMEOUT.as_secs(),
            );
        }
        for stop in &self.other_stops {
            println!("  => {stop}");
        }
        println!(
            "  => 503 answers: {}, processes of old instances still running: {}",
            self.fix_503, self.fix_survivors
        );
        println!("  => duplicate unit: {}", self.duplicate);
        for status in &self.status {
            println!("  => ec-launch status: {status}");
        }
        println!("tuner slots (3 publishers, 3 channels, {TUNERS} tuners, onBusy wait):");
        for row in &self.slot_rows {
            println!("  {row}");
        }
        if let Some((min, median, max)) = spread(&self.slot_handovers) {
            println!(
                "  => hand-over (old reader stops -> waiter streaming), {} restarts: min {:.0} ms / median {:.0} ms / max {:.0} ms",
                self.slot_handovers.len(),
                min * 1000.0,
                median * 1000.0,
                max * 1000.0
            );
        }
        println!("  => 503 answers: {}", self.slot_503);
        self.watch.print();
        self.priority.print();
        self.cluster.print();
        self.cluster_fence.print();
        self.placement.print();
    }
}

/// The minimum, median and maximum of `values`; none of an empty list.
fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (&min, &max) = (sorted.first()?, sorted.last()?);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        f64::midpoint(sorted[n / 2 - 1], sorted[n / 2])
    };
    Some((min, median, max))
}

/// What one publisher instance looks like once it is up.
#[derive(Debug, Clone)]
struct Instance {
    main_pid: u32,
    processes: Vec<ProcessFacts>,
}

impl Instance {
    fn ids(&self) -> Vec<String> {
        self.processes.iter().map(ProcessFacts::id).collect()
    }
}

/// Suite-side views of the container.
struct Probe<'a> {
    container: &'a Container,
}

/// A unit and its device at one moment, as the start-up waits poll them.
struct UnitNow {
    processes: Vec<ProcessFacts>,
    /// The device's open streams (0 when it cannot say).
    open: u64,
    /// The unit's `MainPID` (0 when it has none).
    main_pid: u32,
}

impl UnitNow {
    /// What it was, for a wait's failure message.
    fn describe(&self) -> String {
        format!(
            "processes {:?}, open streams {}, MainPID {}",
            self.processes
                .iter()
                .map(ProcessFacts::to_line)
                .collect::<Vec<_>>(),
            self.open,
            self.main_pid
        )
    }
}

impl Probe<'_> {
    fn stats(&self, device: &str) -> Result<Value, String> {
        let text = self.container.run(&[
            &format!("{SUITE_DIR}/http-get"),
            &format!("http://{device}/stats"),
        ])?;
        serde_json::from_str(&text).map_err(|e| format!("bad /stats answer {text:?}: {e}"))
    }

    fn counter(&self, device: &str, name: &str) -> Result<u64, String> {
        self.stats(device)?
            .get(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("/stats has no {name}"))
    }

    /// `unit`'s processes and `MainPID`, and `device`'s open streams, now.
    fn unit_now(&self, unit: &str, device: &str) -> UnitNow {
        UnitNow {
            processes: self.unit_processes(unit),
            open: self.counter(device, "open_streams").unwrap_or(0),
            main_pid: self
                .container
                .property(unit, "MainPID")
                .parse()
                .unwrap_or(0),
        }
    }

    fn unit_processes(&self, unit: &str) -> Vec<ProcessFacts> {
        let cgroup = self.container.property(unit, "ControlGroup");
        if cgroup.is_empty() {
            return Vec::new();
        }
        self.container
            .run(&[
                &format!("{SUITE_DIR}/inspect"),
                "cgroup",
                &format!("/sys/fs/cgroup{cgroup}"),
            ])
            .unwrap_or_default()
            .lines()
            .filter_map(ProcessFacts::from_line)
            .collect()
    }

    /// Those of `ids` (PID:START) that are still the same running process.
    fn alive(&self, ids: &[String]) -> Vec<ProcessFacts> {
        if ids.is_empty() {
            return Vec::new();
        }
        let mut argv = vec![format!("{SUITE_DIR}/inspect"), "alive".into()];
        argv.extend(ids.iter().cloned());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.container
            .run(&argv)
            .unwrap_or_default()
            .lines()
            .filter_map(ProcessFacts::from_line)
            .collect()
    }

    /// Waits until `unit` runs a publisher and a SIGTERM-ignoring helper and
    /// the device has `streams` open streams.
    fn wait_instance(&self, unit: &str, device: &str, streams: u64) -> Result<Instance, String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = String::new();
        while Instant::now() < deadline {
            let now = self.unit_now(unit, device);
            let publisher = now.processes.iter().find(|p| p.comm == "publisher");
            let helper = now
                .processes
                .iter()
                .find(|p| p.comm == "stubborn-helper" && p.ignores_sigterm);
            if let (Some(publisher), Some(_)) = (publisher, helper)
                && now.open == streams
                && now.main_pid == publisher.pid
            {
                return Ok(Instance {
                    main_pid: now.main_pid,
                    processes: now.processes,
                });
            }
            last = now.describe();
            thread::sleep(Duration::from_millis(100));
        }
        Err(format!("{unit} did not come up with its helper: {last}"))
    }

    fn wait_ready(&self, device: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.stats(device).is_ok() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(format!("the tuner emulator on {device} did not answer"))
    }

    /// The PID that holds the flock(2) lock on `lock_file`, from the kernel's
    /// lock table (proc(5) /proc/locks: `N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE ...`).
    fn lock_holder(&self, lock_file: &str) -> Option<u32> {
        let inode = self
            .container
            .run(&["stat", "-c", "%i", lock_file])
            .ok()?
            .trim()
            .to_owned();
        let locks = self.container.run(&["cat", "/proc/locks"]).ok()?;
        locks.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let is_ours = fields.get(1) == Some(&"FLOCK")
                && fields
                    .get(5)
                    .is_some_and(|id| id.rsplit(':').next() == Some(inode.as_str()));
            if is_ours {
                fields.get(4)?.parse().ok()
            } else {
                None
            }
        })
    }

    fn records(&self, file: &str) -> String {
        self.container
            .run(&["cat", &format!("{RECORD_DIR}/{file}")])
            .unwrap_or_default()
    }

    /// Kills the given processes by PID (only those still the same process).
    fn kill_leftovers(&self, ids: &[String]) {
        let alive = self.alive(ids);
        if alive.is_empty() {
            return;
        }
        let mut argv = vec!["kill".to_owned(), "-KILL".to_owned()];
        argv.extend(alive.iter().map(|p| p.pid.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let _ = self.container.run(&argv);
    }
}

fn scenarios(
    checks: &mut Checks,
    container: &Container,
    policy: &UnitPolicy,
    figures: &mut Figures,
) -> Result<(), String> {
    let probe = Probe { container };
    let only = selected_scenarios()?;
    let run = |name: &str| {
        only.as_ref()
            .is_none_or(|only| only.iter().any(|o| o == name))
    };
    if let Some(only) = &only {
        checks.say(&format!(
            "{ONLY_VAR}={}: only these scenarios run; this is not an acceptance run",
            only.join(",")
        ));
        // What the skipped earlier phases would have made.
        container.run(&["mkdir", "-p", LOCK_DIR, RECORD_DIR])?;
    }
    if run("incident") {
        incident(checks, &probe, figures)?;
    }
    if run("fix") {
        units_carry_the_policy(checks, &probe, policy)?;
        fix(checks, &probe, policy, figures)?;
    }
    if run("slots") {
        tuner_slots(checks, &probe, figures)?;
    }
    if run("watch") {
        watch::scenarios(checks, &probe, &mut figures.watch)?;
    }
    if run("priority") {
        priority::scenarios(checks, &probe, &mut figures.priority)?;
    }
    if run("cluster") {
        cluster::scenario(checks, &probe, &mut figures.cluster)?;
    }
    if run("cluster-fence") {
        cluster::fence::scenario(checks, &probe, &mut figures.cluster_fence)?;
    }
    if run("placement") {
        placement::scenario(checks, &probe, &mut figures.placement)?;
    }
    Ok(())
}

/// The scenarios `EC_SYSTEMD_ONLY` names; `None` (all) when it is unset.
fn selected_scenarios() -> Result<Option<Vec<String>>, String> {
    let Some(value) = std::env::var_os(ONLY_VAR) else {
        return Ok(None);
    };
    let value = value.to_string_lossy();
    let names: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    match names.iter().find(|n| !SCENARIOS.contains(&n.as_str())) {
        Some(unknown) => Err(format!(
            "{ONLY_VAR}={value:?} names the unknown scenario {unknown:?}; the scenarios are {}",
            SCENARIOS.join(", ")
        )),
        None if names.is_empty() => Err(format!(
            "{ONLY_VAR} is set but names no scenario; unset it to run all of {}",
            SCENARIOS.join(", ")
        )),
        None => Ok(Some(names)),
    }
}

fn incident(checks: &mut Checks, probe: &Probe, figures: &mut Figures) -> Result<(), String> {
    let c = probe.container;
    checks.say(&format!(
        "=== the incident: {INCIDENT_UNIT} (KillMode=process, no lock) on {}",
        source(INCIDENT_DEVICE)
    ));
    c.systemctl(&["start", INCIDENT_TUNER_UNIT])?;
    probe.wait_ready(INCIDENT_DEVICE)?;
    c.systemctl(&["start", INCIDENT_UNIT])?;
    let first = probe.wait_instance(INCIDENT_UNIT, INCIDENT_DEVICE, STREAMS_PER_INSTANCE)?;
    let mut seen: Vec<String> = first.ids();
    let mut survivors = Vec::new();
    for restart in 1..=INCIDENT_RESTARTS {
        let before = probe.unit_processes(INCIDENT_UNIT);
        let before_ids: Vec<String> = before.iter().map(ProcessFacts::id).collect();
        seen.extend(before_ids.iter().cloned());
        c.systemctl(&["restart", INCIDENT_UNIT])?;
        // Give the new instance and the stale helpers' reconnects time to
        // meet at the device: this is an observation window, not a bound.
        thread::sleep(Duration::from_millis(2500));
        survivors = probe.alive(&before_ids);
        let stats = probe.stats(INCIDENT_DEVICE)?;
        let row = format!(
            "restart {restart}: old-instance processes still running {} ({}), open streams {}/{TUNERS}, 503 answers so far {}, unit {} (NRestarts {})",
            survivors.len(),
            survivors
                .iter()
                .map(|p| format!("{} {}", p.pid, p.comm))
                .collect::<Vec<_>>()
                .join(", "),
            stats["open_streams"],
            stats["busy_503"],
            c.state(INCIDENT_UNIT),
            c.property(INCIDENT_UNIT, "NRestarts"),
        );
        checks.say(&row);
        figures.incident_rows.push(row);
    }
    seen.extend(
        probe
            .unit_processes(INCIDENT_UNIT)
            .iter()
            .map(ProcessFacts::id),
    );
    figures.incident_503 = probe.counter(INCIDENT_DEVICE, "busy_503")?;
    figures.incident_survivors = survivors.len();
    let open = probe.counter(INCIDENT_DEVICE, "open_streams")?;
    checks.check(
        "with KillMode=process, SIGTERM-ignoring helpers of old instances survive restarts and pile up",
        survivors.len() >= 2 && survivors.iter().all(|p| p.comm == "stubborn-helper"),
        &format!(
            "{} old helpers still running after {INCIDENT_RESTARTS} restarts",
            survivors.len()
        ),
    );
    checks.check(
        "the leftovers hold the tuners, so the device answers 503 (805 All Tuners In Use)",
        figures.incident_503 > 0 && open == TUNERS as u64,
        &format!(
            "{} 503 answers, {open}/{TUNERS} tuners streaming",
            figures.incident_503
        ),
    );
    let refusals = c
        .journal(INCIDENT_UNIT)
        .matches("805 All Tuners In Use")
        .count();
    checks.say(&format!(
        "journal of {INCIDENT_UNIT}: {refusals} lines report 805 All Tuners In Use"
    ));

    // Clean up the incident: stop the unit, then kill its leftovers by PID
    // (only processes this phase started).
    c.systemctl(&["stop", INCIDENT_UNIT])?;
    probe.kill_leftovers(&seen);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !probe.alive(&seen).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let left = probe.alive(&seen).len();
    checks.check(
        "the incident's leftovers are gone after the suite kills them by PID",
        left == 0,
        &format!("{left} left"),
    );
    c.systemctl(&["stop", INCIDENT_TUNER_UNIT])?;
    let _ = c.systemctl(&["reset-failed"]);
    Ok(())
}

fn units_carry_the_policy(
    checks: &mut Checks,
    probe: &Probe,
    policy: &UnitPolicy,
) -> Result<(), String> {
    let c = probe.container;
    checks.say(&format!(
        "=== the units systemd runs carry {}",
        policy::POLICY_FILE
    ));
    for (unit, stop) in [
        (FIX_UNIT, StopTimeout::ModuleOption(FAST_STOP_TIMEOUT)),
        (DUPLICATE_UNIT, StopTimeout::ModuleOption(FAST_STOP_TIMEOUT)),
        (DEFAULT_TIMEOUT_UNIT, StopTimeout::PolicyDefault),
    ] {
        let text = c.systemctl(&["cat", unit])?;
        let mut mismatches = Vec::new();
        let mut shown = Vec::new();
        for line in policy.service_lines(stop).lines() {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            if !text.lines().any(|l| l.trim() == line) {
                mismatches.push(format!("unit file lacks {line:?}"));
            }
            match policy::expected_show(key, value) {
                Some((property, expected)) => {
                    let actual = c.property(unit, property);
                    if actual == expected {
                        shown.push(format!("{property}={actual}"));
                    } else {
                        mismatches.push(format!(
                            "systemd reports {property}={actual:?}, policy says {expected:?}"
                        ));
                    }
                }
                None => shown.push(format!("{key} (unit file only)")),
            }
        }
        checks.check(
            &format!("{unit} carries every setting of the policy file and systemd applies them"),
            mismatches.is_empty(),
            &if mismatches.is_empty() {
                shown.join(" ")
            } else {
                mismatches.join("; ")
            },
        );
    }
    let default = policy.default_stop_timeout()?;
    let shown = c.property(DEFAULT_TIMEOUT_UNIT, "TimeoutStopUSec");
    checks.check(
        "the unit without the stopTimeout option gets the policy's default TimeoutStopSec",
        shown == humantime::format_duration(default).to_string(),
        &format!("{DEFAULT_TIMEOUT_UNIT}: TimeoutStopUSec={shown}"),
    );
    Ok(())
}

/// The lock file of the fix's source, as `ec-launch key --json` names it.
fn lock_file(probe: &Probe) -> Result<(String, String), String> {
    let text = probe.container.run(&[
        &format!("{SUITE_DIR}/ec-launch"),
        "key",
        "--json",
        &source(FIX_DEVICE),
    ])?;
    let json: Value = serde_json::from_str(&text).map_err(|e| format!("key --json: {e}"))?;
    match (json["key"].as_str(), json["lock_file"].as_str()) {
        (Some(key), Some(file)) => Ok((key.to_owned(), file.to_owned())),
        _ => Err(format!("key --json printed {text:?}")),
    }
}

/// Checks, through the kernel's lock table and through `ec-launch status`,
/// that `instance` of `unit` holds the source.
fn holder_checks(
    checks: &mut Checks,
    probe: &Probe,
    unit: &str,
    instance: &Instance,
    figures: &mut Figures,
) -> Result<(), String> {
    let (key, lock_file) = lock_file(probe)?;
    let holder = probe.lock_holder(&lock_file);
    checks.check(
        &format!("the kernel's lock table shows {unit}'s main process holding the source's lock"),
        holder == Some(instance.main_pid),
        &format!(
            "{lock_file}: /proc/locks holder {holder:?}, MainPID {}",
            instance.main_pid
        ),
    );
    let helper = instance
        .processes
        .iter()
        .find(|p| p.comm == "stubborn-helper")
        .map_or(0, |p| p.pid);
    let fds = probe
        .container
        .run(&["ls", "-l", &format!("/proc/{helper}/fd")])
        .unwrap_or_default();
    checks.check(
        "the helper inherited the lock descriptor, so it holds the lock with its parent",
        fds.contains(&lock_file),
        &format!("helper {helper}"),
    );

    let output = probe.container.exec(&[
        &format!("{SUITE_DIR}/ec-launch"),
        "status",
        "--json",
        &source(FIX_DEVICE),
    ])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code();
    let verdict = status_names_holder(&stdout, &key, &lock_file, instance.main_pid, unit);
    let sentence = format!(
        "`ec-launch status --json SOURCE` exits 0 and names {unit}'s main process as the holder"
    );
    match (code, verdict) {
        (Some(0), Ok(detail)) => {
            figures
                .status
                .push(format!("{unit}: ran, named the holder ({detail})"));
            checks.check(&sentence, true, &detail);
        }
        (code, verdict) => {
            let why = if stderr.contains("unrecognized subcommand") {
                "this ec-launch has no `status` subcommand yet".to_owned()
            } else {
                format!("exit {code:?}, {verdict:?}, stderr {:?}", stderr.trim())
            };
            figures.status.push(format!("{unit}: ran, FAILED: {why}"));
            checks.fail(&sentence, &why);
        }
    }
    Ok(())
}

/// Checks `status --json` output against the contract: `{"locks": [{"key",
/// "source", "lock_file", "state", "holders": [{"pid", "command", "unit",
/// "since"}], "metadata"}]}`.
fn status_names_holder(
    json: &str,
    key: &str,
    lock_file: &str,
    pid: u32,
    unit: &str,
) -> Result<String, String> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| format!("not JSON ({e}): {json:?}"))?;
    let locks = value["locks"].as_array().ok_or("no \"locks\" array")?;
    let lock = locks
        .iter()
        .find(|l| l["key"] == key || l["lock_file"] == lock_file)
        .ok_or_else(|| format!("no lock with key {key}"))?;
    if lock["state"] != "held" {
        return Err(format!("state is {}", lock["state"]));
    }
    let holders = lock["holders"].as_array().ok_or("no \"holders\" array")?;
    let named = holders
        .iter()
        .any(|h| h["pid"].as_u64() == Some(u64::from(pid)) && h["unit"] == unit);
    let foreign: Vec<String> = holders
        .iter()
        .filter(|h| h["unit"] != unit)
        .map(ToString::to_string)
        .collect();
    if named && foreign.is_empty() {
        Ok(format!("pid {pid} in {unit}, {} holder(s)", holders.len()))
    } else {
        Err(format!("holders {holders:?}"))
    }
}

/// `systemctl ACTION unit`, timed; returns (wall seconds, systemd's own
/// deactivating-to-inactive seconds when it still knows them).
fn timed(probe: &Probe, action: &str, unit: &str) -> Result<(f64, Option<f64>), String> {
    let started = Instant::now();
    probe.container.systemctl(&[action, unit])?;
    let wall = started.elapsed().as_secs_f64();
    let stamp = |p: &str| probe.container.property(unit, p).parse::<u64>().ok();
    let systemd = match (
        stamp("ActiveExitTimestampMonotonic"),
        stamp("InactiveEnterTimestampMonotonic"),
    ) {
        (Some(exit), Some(enter)) if enter >= exit && exit > 0 => Some((enter - exit) as f64 / 1e6),
        _ => None,
    };
    Ok((wall, systemd))
}

fn fix(
    checks: &mut Checks,
    probe: &Probe,
    policy: &UnitPolicy,
    figures: &mut Figures,
) -> Result<(), String> {
    let c = probe.container;
    let bound = FAST_STOP_TIMEOUT + STOP_MARGIN;
    checks.say(&format!(
        "=== the fix: {FIX_UNIT} = policy + `ec-launch run` on {}",
        source(FIX_DEVICE)
    ));
    c.systemctl(&["start", FIX_TUNER_UNIT])?;
    probe.wait_ready(FIX_DEVICE)?;
    // What the module's tmpfiles rule does at boot: the sandboxed units
    // can write only directories that exist when they start.
    c.run(&["mkdir", "-p", LOCK_DIR, RECORD_DIR])?;
    c.systemctl(&["start", FIX_UNIT])?;
    let mut instance = probe.wait_instance(FIX_UNIT, FIX_DEVICE, STREAMS_PER_INSTANCE)?;
    holder_checks(checks, probe, FIX_UNIT, &instance, figures)?;
    let (_, lock_file) = lock_file(probe)?;

    let mut survivors_total = 0;
    let mut over_bound = Vec::new();
    let mut holders_wrong = Vec::new();
    for cycle in 1..=FIX_RESTARTS {
        let before = instance.clone();
        let (wall, systemd) = timed(probe, "restart", FIX_UNIT)?;
        instance = probe.wait_instance(FIX_UNIT, FIX_DEVICE, STREAMS_PER_INSTANCE)?;
        let survivors = probe.alive(&before.ids());
        survivors_total += survivors.len();
        let busy = probe.counter(FIX_DEVICE, "busy_503")?;
        let holder = probe.lock_holder(&lock_file);
        if holder != Some(instance.main_pid) {
            holders_wrong.push(cycle);
        }
        let stop = systemd.unwrap_or(wall);
        if Duration::from_secs_f64(wall) > bound {
            over_bound.push(cycle);
        }
        figures.fast_stops.push(stop);
        let row = format!(
            "restart {cycle:2}: stop {stop:.2}s (systemctl restart {wall:.2}s), old-instance processes left {}, 503 answers so far {busy}, MainPID {} -> {}, lock holder {}",
            survivors.len(),
            before.main_pid,
            instance.main_pid,
            holder.map_or("none".into(), |p| p.to_string()),
        );
        checks.say(&row);
        figures.fix_rows.push(row);
    }
    figures.fix_survivors = survivors_total;
    checks.check(
        &format!("{FIX_RESTARTS} restarts leave no process of any old instance running"),
        survivors_total == 0,
        &format!("{survivors_total} survivors"),
    );
    checks.check(
        &format!(
            "every restart's stop, with a SIGTERM-ignoring helper, ends within TimeoutStopSec={}s + {:.1}s",
            FAST_STOP_TIMEOUT.as_secs(),
            STOP_MARGIN.as_secs_f64()
        ),
        over_bound.is_empty(),
        &format!("cycles over the bound: {over_bound:?}"),
    );
    checks.check(
        "after every restart the new main process holds the source's lock",
        holders_wrong.is_empty(),
        &format!("cycles with another holder: {holders_wrong:?}"),
    );

    duplicate(checks, probe, &instance, figures)?;
    handover(checks, probe, &lock_file, figures)?;
    default_timeout(checks, probe, policy, figures)?;

    figures.fix_503 = probe.counter(FIX_DEVICE, "busy_503")?;
    let open = probe.counter(FIX_DEVICE, "open_streams")?;
    let served = probe.counter(FIX_DEVICE, "streams_served")?;
    checks.check(
        "the device never answered 503 during the fix phase, and every tuner is free at the end",
        figures.fix_503 == 0 && open == 0,
        &format!(
            "{} 503 answers, {served} streams served, {open} still open",
            figures.fix_503
        ),
    );
    c.systemctl(&["stop", FIX_TUNER_UNIT])?;
    Ok(())
}

fn exits_of(probe: &Probe, unit: &str) -> Vec<String> {
    probe
        .records("exits.log")
        .lines()
        .filter(|l| l.starts_with(&format!("{unit} ")))
        .map(str::to_owned)
        .collect()
}

fn duplicate(
    checks: &mut Checks,
    probe: &Probe,
    holder: &Instance,
    figures: &mut Figures,
) -> Result<(), String> {
    let c = probe.container;
    checks.say(&format!(
        "=== a duplicate: {DUPLICATE_UNIT} on the same source while {FIX_UNIT} runs"
    ));
    c.systemctl(&["start", DUPLICATE_UNIT])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while exits_of(probe, DUPLICATE_UNIT).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    // Watch for a restart loop for longer than systemd's default RestartSec
    // (100ms) many times over.
    thread::sleep(Duration::from_secs(3));
    let exits = exits_of(probe, DUPLICATE_UNIT);
    let state = c.state(DUPLICATE_UNIT);
    let restarts = c.property(DUPLICATE_UNIT, "NRestarts");
    let ran = probe
        .records("ran.log")
        .lines()
        .filter(|l| l.starts_with(DUPLICATE_UNIT))
        .count();
    figures.duplicate = format!(
        "exited {} time(s) ({}), state {state}, NRestarts {restarts}, program runs {ran}",
        exits.len(),
        exits.join("; ")
    );
    checks.say(&figures.duplicate);
    checks.check(
        "a second unit on the same source exits 75 once, counts as success and does not loop",
        exits.len() == 1
            && exits[0].ends_with("result=success code=exited status=75")
            && state == "inactive"
            && (restarts == "0" || restarts.is_empty()),
        &figures.duplicate,
    );
    checks.check(
        "the duplicate never starts its program, so it opens no stream",
        ran == 0 && probe.counter(FIX_DEVICE, "open_streams")? == STREAMS_PER_INSTANCE,
        &format!("{ran} runs recorded"),
    );
    let journal = c.journal(DUPLICATE_UNIT);
    let busy_line = journal
        .lines()
        .find(|l| l.contains("source busy"))
        .unwrap_or_default()
        .to_owned();
    let named =
        busy_line.contains(&format!("pid {}", holder.main_pid)) && busy_line.contains(FIX_UNIT);
    let detail = if named {
        busy_line
    } else {
        // What ec-launch read to find the unit, to tell a parsing problem
        // from a placement problem.
        let cgroup = c
            .run(&["cat", &format!("/proc/{}/cgroup", holder.main_pid)])
            .unwrap_or_default();
        format!(
            "{busy_line}; holder's /proc/PID/cgroup: {:?}",
            cgroup.trim()
        )
    };
    checks.check(
        "the duplicate's journal names the holder's PID and unit",
        named,
        &detail,
    );
    let main_now: u32 = c.property(FIX_UNIT, "MainPID").parse().unwrap_or(0);
    checks.check(
        "the holder keeps running undisturbed",
        main_now == holder.main_pid,
        &format!("{FIX_UNIT} MainPID {main_now}"),
    );
    Ok(())
}

fn handover(
    checks: &mut Checks,
    probe: &Probe,
    lock_file: &str,
    figures: &mut Figures,
) -> Result<(), String> {
    let c = probe.container;
    let bound = FAST_STOP_TIMEOUT + STOP_MARGIN;
    checks.say(&format!(
        "=== handover: stop {FIX_UNIT}, then start {DUPLICATE_UNIT}"
    ));
    let before = probe.unit_processes(FIX_UNIT);
    let ids: Vec<String> = before.iter().map(ProcessFacts::id).collect();
    let (wall, systemd) = timed(probe, "stop", FIX_UNIT)?;
    let left = probe.alive(&ids);
    let stop = systemd.unwrap_or(wall);
    figures.other_stops.push(format!(
        "systemctl stop {FIX_UNIT}: {stop:.2}s (wall {wall:.2}s), processes left {}, ended {}",
        left.len(),
        c.property(FIX_UNIT, "Result")
    ));
    checks.check(
        "stopping the holder ends its stubborn helper too, within the bound",
        left.is_empty() && Duration::from_secs_f64(wall) <= bound,
        &format!("{} left, {wall:.2}s", left.len()),
    );
    let _ = c.systemctl(&["reset-failed", FIX_UNIT]);
    c.systemctl(&["start", DUPLICATE_UNIT])?;
    let instance = probe.wait_instance(DUPLICATE_UNIT, FIX_DEVICE, STREAMS_PER_INSTANCE)?;
    let holder = probe.lock_holder(lock_file);
    checks.check(
        "once the holder is stopped, the second unit starts and takes the lock",
        holder == Some(instance.main_pid),
        &format!(
            "{DUPLICATE_UNIT} MainPID {}, lock holder {holder:?}",
            instance.main_pid
        ),
    );
    holder_checks(checks, probe, DUPLICATE_UNIT, &instance, figures)?;
    let ids = instance.ids();
    let (wall, systemd) = timed(probe, "stop", DUPLICATE_UNIT)?;
    let left = probe.alive(&ids);
    let stop = systemd.unwrap_or(wall);
    figures.other_stops.push(format!(
        "systemctl stop {DUPLICATE_UNIT}: {stop:.2}s (wall {wall:.2}s), processes left {}",
        left.len()
    ));
    checks.check(
        "stopping the second unit ends its helper within the bound",
        left.is_empty() && Duration::from_secs_f64(wall) <= bound,
        &format!("{} left, {wall:.2}s", left.len()),
    );
    let _ = c.systemctl(&["reset-failed", DUPLICATE_UNIT]);
    Ok(())
}

fn default_timeout(
    checks: &mut Checks,
    probe: &Probe,
    policy: &UnitPolicy,
    figures: &mut Figures,
) -> Result<(), String> {
    let c = probe.container;
    let default = policy.default_stop_timeout()?;
    checks.say(&format!(
        "=== one stop with the policy's own TimeoutStopSec ({}s): {DEFAULT_TIMEOUT_UNIT}",
        default.as_secs_f64()
    ));
    c.systemctl(&["start", DEFAULT_TIMEOUT_UNIT])?;
    let instance = probe.wait_instance(DEFAULT_TIMEOUT_UNIT, FIX_DEVICE, STREAMS_PER_INSTANCE)?;
    let (wall, systemd) = timed(probe, "stop", DEFAULT_TIMEOUT_UNIT)?;
    let left = probe.alive(&instance.ids());
    let stop = systemd.unwrap_or(wall);
    let mut line = String::new();
    let _ = write!(
        line,
        "systemctl stop {DEFAULT_TIMEOUT_UNIT} (policy default {}s): {stop:.2}s (wall {wall:.2}s), processes left {}",
        default.as_secs_f64(),
        left.len()
    );
    checks.say(&line);
    figures.other_stops.push(line);
    checks.check(
        "with the policy's default TimeoutStopSec a stop with a stubborn helper ends within it plus the margin",
        left.is_empty() && Duration::from_secs_f64(wall) <= default + STOP_MARGIN,
        &format!("{wall:.2}s, bound {:.1}s", (default + STOP_MARGIN).as_secs_f64()),
    );
    let _ = c.systemctl(&["reset-failed", DEFAULT_TIMEOUT_UNIT]);
    Ok(())
}

/// The units of `SLOT_UNITS` whose main process is the reader (streaming)
/// and those whose main process is still `ec-launch` (waiting for a slot).
fn slot_roles(probe: &Probe) -> (Vec<&'static str>, Vec<&'static str>) {
    let mut streaming = Vec::new();
    let mut waiting = Vec::new();
    for (unit, _) in SLOT_UNITS {
        let main_pid = probe.container.property(unit, "MainPID");
        let comm = probe
            .unit_processes(unit)
            .into_iter()
            .find(|p| p.pid.to_string() == main_pid)
            .map(|p| p.comm)
            .unwrap_or_default();
        match comm.as_str() {
            "reader" => streaming.push(unit),
            "ec-launch" => waiting.push(unit),
            _ => {}
        }
    }
    (streaming, waiting)
}

/// Waits until two units stream and one waits, with two streams open.
fn wait_two_stream_one_waits(
    probe: &Probe,
) -> Result<(Vec<&'static str>, Vec<&'static str>), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        let (streaming, waiting) = slot_roles(probe);
        let open = probe.counter(SLOTS_DEVICE, "open_streams").unwrap_or(0);
        if streaming.len() == TUNERS && waiting.len() == SLOT_UNITS.len() - TUNERS && open == 2 {
            return Ok((streaming, waiting));
        }
        last = format!("streaming {streaming:?}, waiting {waiting:?}, open streams {open}");
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!("the slot units did not settle: {last}"))
}

/// Waits until `status --json` counts one process blocked on the slots.
fn wait_for_slot_waiter(probe: &Probe) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        let output =
            probe
                .container
                .exec(&[&format!("{SUITE_DIR}/ec-launch"), "status", "--json"])?;
        let report: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        let waiting = report["devices"].as_array().and_then(|devices| {
            devices
                .iter()
                .find(|d| d["device"].as_str() == Some(SLOTS_DEVICE_KEY))
                .and_then(|d| d["waiting"].as_u64())
        });
        if waiting == Some(1) {
            return Ok(());
        }
        last = format!("waiting {waiting:?}");
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!("no launcher queued on the slots: {last}"))
}

/// The time (µs since the epoch) in the last `file` record of `unit` that
/// contains `marker`.
fn last_record_time(probe: &Probe, file: &str, unit: &str, marker: &str) -> Option<u128> {
    probe
        .records(file)
        .lines()
        .filter(|l| l.starts_with(&format!("{unit} ")) && l.contains(marker))
        .filter_map(|l| l.rsplit("at=").next()?.trim().parse().ok())
        .next_back()
}

fn tuner_slots(checks: &mut Checks, probe: &Probe, figures: &mut Figures) -> Result<(), String> {
    let c = probe.container;
    checks.say(&format!(
        "=== tuner slots: {} publishers on {} channels of a {TUNERS}-tuner device, --tuners {TUNERS}, onBusy wait",
        SLOT_UNITS.len(),
        SLOT_UNITS.len()
    ));
    c.systemctl(&["start", SLOTS_TUNER_UNIT])?;
    probe.wait_ready(SLOTS_DEVICE)?;
    for (unit, _) in SLOT_UNITS {
        c.systemctl(&["start", unit])?;
    }
    let (streaming, waiting) = wait_two_stream_one_waits(probe)?;
    let refused = probe.counter(SLOTS_DEVICE, "busy_503")?;
    checks.check(
        "with three publishers on a two-tuner device, two stream and the third waits without asking the device",
        refused == 0,
        &format!("streaming {streaming:?}, waiting {waiting:?}, 503 answers {refused}"),
    );
    // Inside the container's PID namespace a free lock may be `unknown`
    // (exit 5, ECP-0131): the report is what is checked, not the status.
    let status = String::from_utf8_lossy(
        &c.exec(&[&format!("{SUITE_DIR}/ec-launch"), "status", "--json"])?
            .stdout,
    )
    .into_owned();
    let report: Value =
        serde_json::from_str(&status).map_err(|e| format!("status --json: {e}: {status}"))?;
    let device = report["devices"]
        .as_array()
        .and_then(|devices| {
            devices
                .iter()
                .find(|d| d["device"].as_str() == Some(SLOTS_DEVICE_KEY))
        })
        .cloned()
        .unwrap_or(Value::Null);
    checks.check(
        "`ec-launch status --json` lists the device with both slots held and one waiter",
        device["held"].as_u64() == Some(TUNERS as u64) && device["waiting"].as_u64() == Some(1),
        &device.to_string(),
    );
    let text = String::from_utf8_lossy(
        &c.exec(&[&format!("{SUITE_DIR}/ec-launch"), "status"])?
            .stdout,
    )
    .into_owned();
    if let Some(line) = text.lines().find(|l| l.starts_with(SLOTS_DEVICE_KEY)) {
        figures.slot_rows.push(format!("status: {line}"));
    }

    for round in 1..=SLOT_RESTARTS {
        let (streaming, waiting) = wait_two_stream_one_waits(probe)?;
        let unit = streaming[round % streaming.len()];
        let waiter = waiting[0];
        // The waiter is queued in flock(2) on the slots, not still starting.
        wait_for_slot_waiter(probe)?;
        // Ten restarts in a few seconds would trip systemd's start rate limit
        // (5 in 10 s); an operator does not restart that fast. Reset it.
        let _ = c.systemctl(&["reset-failed", unit]);
        c.systemctl(&["restart", unit])?;
        let (now_streaming, _) = wait_two_stream_one_waits(probe)?;
        // From the old reader's last moment (it records SIGTERM, then exits
        // and its slot frees) to the waiter's reader holding its stream.
        let stopped = last_record_time(probe, "readers.log", unit, "stopping");
        let started = last_record_time(probe, "readers.log", waiter, "streaming");
        let handover = match (stopped, started) {
            (Some(stopped), Some(started)) if started >= stopped => Some(Duration::from_micros(
                u64::try_from(started - stopped).unwrap_or(u64::MAX),
            )),
            _ => None,
        };
        let refused = probe.counter(SLOTS_DEVICE, "busy_503")?;
        figures.slot_rows.push(format!(
            "restart {round:2}: {unit} restarted, {waiter} streaming {} after its reader stopped, streaming now {now_streaming:?}, 503 so far {refused}",
            handover.map_or("?".to_owned(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0)),
        ));
        if let Some(handover) = handover {
            figures.slot_handovers.push(handover.as_secs_f64());
        }
        checks.check(
            &format!(
                "restart {round}: the waiter streams within 1 s of the slot freeing, and no 503"
            ),
            now_streaming.contains(&waiter)
                && handover.is_some_and(|d| d < Duration::from_secs(1))
                && refused == 0,
            &format!(
                "{waiter} streaming: {}, hand-over {handover:?}, 503 {refused}",
                now_streaming.contains(&waiter)
            ),
        );
    }
    figures.slot_503 = probe.counter(SLOTS_DEVICE, "busy_503")?;
    for (unit, _) in SLOT_UNITS {
        c.systemctl(&["stop", unit])?;
        let _ = c.systemctl(&["reset-failed", unit]);
    }
    foreign_reader(checks, probe, figures)
}

/// A reader outside every unit that takes a slot (a stale helper, a test
/// `curl`) holds a tuner: the device's own view shows it, ours does not.
fn foreign_reader(checks: &mut Checks, probe: &Probe, figures: &mut Figures) -> Result<(), String> {
    let c = probe.container;
    checks.say("=== a foreign reader: a stream of the device that holds no slot on this node");
    c.run(&[
        "systemd-run",
        "--unit",
        FOREIGN_UNIT,
        &format!("{SUITE_DIR}/reader"),
        &format!("http://{SLOTS_DEVICE}/auto/v9.1"),
    ])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe.counter(SLOTS_DEVICE, "open_streams").unwrap_or(0) != 1 && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(50));
    }
    let output = c.exec(&[&format!("{SUITE_DIR}/ec-launch"), "status", "--device"])?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let code = output.status.code();
    let line = text
        .lines()
        .find(|l| l.contains("foreign"))
        .unwrap_or("")
        .trim()
        .to_owned();
    figures.slot_rows.push(format!(
        "status --device with a foreign reader: exit {code:?}: {line}"
    ));
    checks.check(
        "`ec-launch status --device` reports the stream outside every slot as a foreign reader and exits 6",
        code == Some(6) && !line.is_empty(),
        &format!("exit {code:?}: {text}"),
    );
    c.systemctl(&["stop", FOREIGN_UNIT])?;
    Ok(())
}
