//! Issue 19 under a real systemd: two unit sets standing for two nodes
//! share four channels through etcd (ECP-0140, `--placement spread`, the
//! default with `--on-busy wait`).
//!
//! Each node is four units, one per channel, with its own lock directory and
//! `--node` name and the settings the module gives a cluster unit (as in
//! `cluster`). The device has four tuners (127.0.0.9): a fifth stream would
//! be refused with a 503 the emulator counts.
//!
//! The story: all eight units start together and the channels end up two on
//! each node; `systemctl stop` of node A's four units moves its two channels
//! to node B within TTL + 2 s (a clean stop: no lock delay), node B's own two
//! readers are the same processes throughout, and the device never answers
//! 503.

use std::thread;
use std::time::{Duration, Instant};

use super::cluster::{
    CLUSTER_SUCCESS, ETCD_UNIT, ETCD_URL, STOP_GRACE_SECS, TTL_SECS, watchdog_secs,
};
use super::{Checks, FAST_STOP_TIMEOUT, Probe};
use crate::harness::Staging;
use crate::policy::{self, Hardening, StopTimeout, UnitPolicy};
use crate::programs::{ProcessFacts, RECORD_DIR, SUITE_DIR};

const TUNERS: usize = 4;
const DEVICE: &str = "127.0.0.9:5004";
const TUNER_UNIT: &str = "ec-tuner-placement.service";
const CHANNELS: [&str; 4] = ["/auto/v21.1", "/auto/v22.1", "/auto/v23.1", "/auto/v24.1"];
/// (node name, unit prefix, lock directory).
const NODES: [(&str, &str, &str); 2] = [
    ("node-a", "ec-place-a", "/run/ec-place-a"),
    ("node-b", "ec-place-b", "/run/ec-place-b"),
];
/// All eight start together: the spread must be even within this.
const SPREAD_BOUND: Duration = Duration::from_secs(10);

fn unit(node: usize, channel: usize) -> String {
    format!("{}-{channel}.service", NODES[node].1)
}

/// What this scenario prints at the end.
#[derive(Debug, Default)]
pub struct Figures {
    lines: Vec<String>,
}

impl Figures {
    pub fn print(&self) {
        println!(
            "placement (2 nodes × 4 units, 4 channels, {TUNERS} tuners, --etcd-ttl {TTL_SECS} --etcd-stop-grace {STOP_GRACE_SECS}, --on-busy wait, spread):"
        );
        for line in &self.lines {
            println!("  {line}");
        }
    }
}

/// Writes the four-tuner device's unit and the eight channel units.
pub fn stage(staging: &Staging, policy: &UnitPolicy, hardening: &Hardening) -> Result<(), String> {
    let watchdog = watchdog_secs()?;
    staging.unit(
        TUNER_UNIT,
        &policy::unit_file(
            &format!("HDHomeRun-like tuner emulator on {DEVICE} with {TUNERS} tuners"),
            &format!("ExecStart={SUITE_DIR}/tuner-emulator --listen {DEVICE} --tuners {TUNERS}\n"),
        ),
    )?;
    for (n, (name, _, lock_dir)) in NODES.iter().enumerate() {
        for (ch, path) in CHANNELS.iter().enumerate() {
            let service = format!(
                "ExecStart={SUITE_DIR}/ec-launch run --etcd {ETCD_URL} --etcd-ttl {TTL_SECS} --etcd-stop-grace {STOP_GRACE_SECS} --node {name} --lock-dir {lock_dir} --on-busy wait --source http://{DEVICE}{path} -- {SUITE_DIR}/reader {{source}}\nExecStopPost={SUITE_DIR}/record-exit %n\nWatchdogSec={watchdog}\nNotifyAccess=main\nTimeoutAbortSec={STOP_GRACE_SECS}\n{}{CLUSTER_SUCCESS}{}ReadWritePaths={RECORD_DIR}\n",
                policy.service_lines(StopTimeout::ModuleOption(FAST_STOP_TIMEOUT)),
                hardening.publisher_lines(lock_dir),
            );
            staging.unit(
                &unit(n, ch),
                &policy::unit_file_with(
                    &format!("channel {path} on {name} in cluster mode, spread placement"),
                    &format!("Wants={ETCD_UNIT}\nAfter={ETCD_UNIT}\n"),
                    &service,
                ),
            )?;
        }
    }
    Ok(())
}

/// Which node's unit runs a reader for each channel (`None`: none yet).
fn placement(probe: &Probe) -> Vec<Option<(usize, ProcessFacts)>> {
    (0..CHANNELS.len())
        .map(|ch| {
            (0..NODES.len()).find_map(|n| {
                probe
                    .unit_processes(&unit(n, ch))
                    .into_iter()
                    .find(|p| p.comm == "reader")
                    .map(|reader| (n, reader))
            })
        })
        .collect()
}

fn counts(placed: &[Option<(usize, ProcessFacts)>]) -> Vec<usize> {
    (0..NODES.len())
        .map(|n| {
            placed
                .iter()
                .filter(|p| p.as_ref().is_some_and(|(on, _)| *on == n))
                .count()
        })
        .collect()
}

/// Waits until every channel has a reader, none on a node in `not_on`, and
/// the device serves exactly one stream per channel.
fn wait_all_placed(
    probe: &Probe,
    not_on: Option<usize>,
    limit: Duration,
) -> (Vec<Option<(usize, ProcessFacts)>>, Duration) {
    let started = Instant::now();
    loop {
        let placed = placement(probe);
        let open = probe.counter(DEVICE, "open_streams").unwrap_or(0);
        let done = placed
            .iter()
            .all(|p| p.as_ref().is_some_and(|(n, _)| Some(*n) != not_on))
            && open == CHANNELS.len() as u64;
        if done || started.elapsed() >= limit {
            return (placed, started.elapsed());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the scenario, then stops everything it started.
pub fn scenario(checks: &mut Checks, probe: &Probe, figures: &mut Figures) -> Result<(), String> {
    let c = probe.container;
    checks.say(&format!(
        "=== placement: 2 nodes × {} channels on {DEVICE} ({TUNERS} tuners) through etcd at {ETCD_URL}",
        CHANNELS.len()
    ));
    let mut argv = vec!["mkdir", "-p", RECORD_DIR];
    argv.extend(NODES.iter().map(|(_, _, dir)| *dir));
    c.run(&argv)?;
    c.systemctl(&["start", TUNER_UNIT])?;
    probe.wait_ready(DEVICE)?;
    let units: Vec<String> = (0..NODES.len())
        .flat_map(|n| (0..CHANNELS.len()).map(move |ch| unit(n, ch)))
        .collect();
    let result = story(checks, probe, figures, &units);
    for unit in &units {
        let _ = c.systemctl(&["stop", unit]);
    }
    let _ = c.systemctl(&["stop", TUNER_UNIT]);
    let _ = c.systemctl(&["stop", ETCD_UNIT]);
    let _ = c.systemctl(&["reset-failed"]);
    result
}

fn story(
    checks: &mut Checks,
    probe: &Probe,
    figures: &mut Figures,
    units: &[String],
) -> Result<(), String> {
    let c = probe.container;
    checks.say("starting all eight units together");
    let mut start = vec!["start"];
    start.extend(units.iter().map(String::as_str));
    c.systemctl(&start)?;
    let (placed, took) = wait_all_placed(probe, None, SPREAD_BOUND);
    let spread = counts(&placed);
    let busy = probe.counter(DEVICE, "busy_503")?;
    let line = format!(
        "all eight started: spread {spread:?} (node-a, node-b) {took:.2?} after the start, 503 answers {busy}"
    );
    checks.say(&line);
    figures.lines.push(line.clone());
    checks.check(
        "two nodes of four units each on the same four channels run two channels each (spread placement), and no 503",
        spread == [2, 2] && busy == 0,
        &line,
    );

    let b_own: Vec<String> = placed
        .iter()
        .flatten()
        .filter(|(n, _)| *n == 1)
        .map(|(_, reader)| reader.id())
        .collect();
    checks.say("systemctl stop of node-a's four units");
    let stop_issued = Instant::now();
    let mut stop = vec!["stop"];
    stop.extend(units[..CHANNELS.len()].iter().map(String::as_str));
    c.systemctl(&stop)?;
    let bound = Duration::from_secs(TTL_SECS + 2);
    let (placed, _) = wait_all_placed(probe, Some(0), bound + Duration::from_secs(5));
    let moved_in = stop_issued.elapsed();
    let spread = counts(&placed);
    let still = probe.alive(&b_own);
    let busy = probe.counter(DEVICE, "busy_503")?;
    let open = probe.counter(DEVICE, "open_streams")?;
    let line = format!(
        "node-a stopped: its {} channels running on node-b {moved_in:.2?} after the stop was issued; spread {spread:?}, node-b's own readers unchanged {}/{}, open streams {open}, 503 answers {busy}",
        CHANNELS.len() - b_own.len(),
        still.len(),
        b_own.len()
    );
    checks.say(&line);
    figures.lines.push(line.clone());
    checks.check(
        &format!(
            "stopping one node moves its channels to the other within TTL + 2 s ({}s), its own keep running, and no 503",
            bound.as_secs()
        ),
        spread == [0, CHANNELS.len()]
            && moved_in <= bound
            && still.len() == b_own.len()
            && busy == 0
            && open == CHANNELS.len() as u64,
        &line,
    );
    Ok(())
}
