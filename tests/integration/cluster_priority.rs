//! Priorities and preemption across nodes (issue #18, ECP-0139 section 7):
//! real etcd, launchers standing for nodes (a lock directory and `--node`
//! each, `cluster_node`), the tuner emulator counting 503s, and readers
//! that take one of the device's *two* tuner files with `flock -n`, so the
//! kernel, not the code under test, says whether a third reader ever ran.

use std::fs;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::cluster_node::{Launcher, Node, now_micros};
use crate::etcd_server::EtcdServer;
use crate::testenv::{BUSY, PATIENCE, TestEnv, alive, wait_until};
use crate::tuner_emulator;

/// The device: two tuners, shared by every node.
const TUNERS: usize = 2;

/// Slack for one step of a launcher (a txn, a watch event, a scan of
/// `/proc` for a lock's holders) on a loaded 2-core machine: a scan among
/// thousands of processes was seen to take seconds.
const BOUND: Duration = Duration::from_secs(5);

/// How a reader takes SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnTerm {
    /// Logs `term <tag>` and exits 143.
    Exit,
    /// Ignores it, and starts a `setsid` helper that ignores it too and
    /// holds everything the reader holds: only SIGKILL ends them.
    IgnoreWithHelper,
}

/// A reader: takes one of `tuner.0`/`tuner.1` with `flock -n` (finding
/// both taken is an overlap: logged, exit 99), opens a stream of its
/// channel on the emulator (`<tag>.status` is the answer's status line),
/// logs `start <tag> <µs> <pid>` and reads until stopped.
fn reader(env: &TestEnv, device: SocketAddr, tag: &str, on_term: OnTerm) -> Vec<String> {
    let trap = match on_term {
        OnTerm::Exit => {
            format!("trap 'echo \"term {tag} $EPOCHREALTIME\" >> events; exit 143' TERM")
        }
        OnTerm::IgnoreWithHelper => "trap '' TERM".to_owned(),
    };
    let helper = match on_term {
        OnTerm::Exit => String::new(),
        OnTerm::IgnoreWithHelper => format!(
            "setsid bash -c 'trap \"\" TERM; echo $$ > {tag}.helper; while :; do sleep 0.05; done' & "
        ),
    };
    let script = format!(
        "cd {dir} || exit 97; {trap}; \
         for i in 0 1; do exec 9>>tuner.$i; if flock -n 9; then got=$i; break; fi; exec 9>&-; done; \
         if [ -z \"$got\" ]; then echo \"overlap {tag} $EPOCHREALTIME\" >> overlaps; exit 99; fi; \
         exec 3<>/dev/tcp/{ip}/{port}; \
         printf 'GET /auto/v{tag} HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n' >&3; \
         read -r status <&3; echo \"$status\" > {tag}.status; \
         echo \"start {tag} $EPOCHREALTIME $$\" >> events; {helper}\
         while :; do sleep 0.05 & wait $!; done",
        dir = env.path("").display(),
        ip = device.ip(),
        port = device.port(),
    );
    vec!["bash".into(), "-c".into(), script]
}

/// The emulated device on a free loopback port.
fn device() -> SocketAddr {
    tuner_emulator::spawn_on_loopback(TUNERS)
}

/// The emulator's count of streams refused busy.
fn busy_503s(device: SocketAddr) -> u64 {
    tuner_emulator::stats(device)["busy_503"]
        .as_u64()
        .expect("busy_503")
}

/// The `<what> <tag> <µs>` lines of `events`, as (what, tag, µs).
fn events(env: &TestEnv) -> Vec<(String, String, u128)> {
    fs::read_to_string(env.path("events"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (what, tag, stamp) = (fields.next()?, fields.next()?, fields.next()?);
            let (s, us) = stamp.split_once('.')?;
            let micros = s.parse::<u128>().ok()? * 1_000_000 + us.parse::<u128>().ok()?;
            Some((what.to_owned(), tag.to_owned(), micros))
        })
        .collect()
}

/// When `tag` logged `what` (`start`, `term`), if it did.
fn logged(env: &TestEnv, what: &str, tag: &str) -> Option<u128> {
    events(env)
        .into_iter()
        .find(|(w, t, _)| w == what && t == tag)
        .map(|(_, _, at)| at)
}

/// Panics if a reader ever found both tuners taken.
#[track_caller]
fn assert_never_two_readers_on_a_tuner(env: &TestEnv) {
    let overlaps = fs::read_to_string(env.path("overlaps")).unwrap_or_default();
    assert!(overlaps.is_empty(), "a third reader ran: {overlaps}");
}

/// `--tuners 2 --device den-box --priority P`, the reader's channel `tag`.
fn launch<'e>(
    node: &Node<'e>,
    env: &'e TestEnv,
    device: SocketAddr,
    (tag, priority): (&str, u32),
    on_term: OnTerm,
) -> crate::invocation::Invocation<'e> {
    node.launch(&format!("http://10.0.0.5:5004/auto/v{tag}"))
        .args(["--tuners", "2", "--device", "den-box"])
        .args(["--priority", &priority.to_string()])
        .program(reader(env, device, tag, on_term))
}

/// Starts a reader `tag` at `priority` on `node` and waits until it reads.
#[track_caller]
fn hold(
    node: &Node<'_>,
    env: &TestEnv,
    device: SocketAddr,
    (tag, priority): (&str, u32),
    on_term: OnTerm,
) -> Launcher {
    let mut launcher = node.start(launch(node, env, device, (tag, priority), on_term));
    wait_until(PATIENCE, || {
        logged(env, "start", tag).is_some() || !launcher.running()
    });
    assert!(
        logged(env, "start", tag).is_some(),
        "{tag} never read:\n{}",
        launcher.log()
    );
    launcher
}

/// What one scan of `/proc` for a lock's holders costs on this machine
/// now, as `status` of `node`'s lock directory takes it. A victim's stop
/// scans a few times (its stragglers, then whether its locks are free), and
/// among thousands of processes (other suites, benchmarks) a scan was seen
/// to take seconds: the hand-over bounds add a few of them.
fn scans(env: &TestEnv, node: &Node<'_>, how_many: u32) -> Duration {
    let started = Instant::now();
    env.command(["status", "--lock-dir"])
        .arg(node.lock_dir())
        .any_status()
        .run();
    let cost = started.elapsed();
    println!("FIGURE one holder scan: {cost:?}");
    cost * how_many
}

/// `status --etcd --json` as `node` sees it.
fn cluster_status(env: &TestEnv, etcd: &EtcdServer, node: &Node<'_>) -> serde_json::Value {
    env.command(["status", "--json", "--etcd", &etcd.endpoints()])
        .args(["--node", node.name()])
        .arg("--lock-dir")
        .arg(node.lock_dir())
        .run()
        .json()
}

/// The registered waiters' priorities, first registered first.
fn waiting_priorities(env: &TestEnv, etcd: &EtcdServer, node: &Node<'_>) -> Vec<u64> {
    cluster_status(env, etcd, node)["cluster"]["waiters"]
        .as_array()
        .map(|w| w.iter().filter_map(|w| w["priority"].as_u64()).collect())
        .unwrap_or_default()
}

#[test]
fn a_priority_300_launcher_preempts_the_newest_100_on_another_node_which_releases_and_then_waits_in_line()
 {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let device = device();
    let [a, b, c] = ["a", "b", "c"].map(|name| Node::new(&env, name, etcd.endpoints()));
    let mut older = hold(&a, &env, device, ("a1", 100), OnTerm::Exit);
    std::thread::sleep(Duration::from_millis(1100)); // a later `since`
    let mut newer = hold(&b, &env, device, ("b1", 100), OnTerm::Exit);
    let asked = now_micros();
    let mut recording = c
        .start(launch(&c, &env, device, ("rec", 300), OnTerm::Exit).args(["--preempt-grace", "2"]));
    let told = wait_until(PATIENCE, || logged(&env, "term", "b1").is_some());
    assert!(told, "b1 was never sent SIGTERM:\n{}", recording.log());
    let to_term =
        Duration::from_micros(u64::try_from(logged(&env, "term", "b1").unwrap() - asked).unwrap());
    assert!(to_term < BOUND, "SIGTERM {to_term:?} after the 300 started");
    let stop_bound = Duration::from_secs(2) + BOUND + scans(&env, &b, 6);
    assert_eq!(
        newer.exit_within(stop_bound),
        Some(143),
        "the preempted launcher must end as its program did (killed by SIGTERM):\n{}\nthe 300:\n{}",
        newer.log(),
        recording.log()
    );
    assert!(
        wait_until(PATIENCE, || logged(&env, "start", "rec").is_some()),
        "the 300 never read:\n{}",
        recording.log()
    );
    println!(
        "FIGURE cluster preemption: SIGTERM {:.3} s after the 300 started, its reader {:.3} s after",
        to_term.as_secs_f64(),
        Duration::from_micros(
            u64::try_from(logged(&env, "start", "rec").unwrap() - asked).unwrap()
        )
        .as_secs_f64()
    );
    assert!(
        older.running() && logged(&env, "term", "a1").is_none(),
        "the older 100 keeps its tuner"
    );
    assert!(recording.running());
    let status = fs::read_to_string(env.path("rec.status")).unwrap_or_default();
    assert!(status.contains("200"), "{status}");
    assert_eq!(busy_503s(device), 0);
    assert_never_two_readers_on_a_tuner(&env);
    // Explained on both sides, and in `status --etcd`.
    let said = recording.log();
    assert!(
        said.contains("preempting cluster tuner slot")
            && said.contains("node b")
            && said.contains("at priority 100, for")
            && said.contains("at priority 300"),
        "{said}"
    );
    let victim_said = newer.log();
    assert!(
        victim_said.contains("preempted: node c") && victim_said.contains("at priority 300"),
        "{victim_said}"
    );
    let seen = cluster_status(&env, &etcd, &c);
    let slot = seen["cluster"]["holders"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["node"] == "c" && h["slot"].is_u64()))
        .unwrap_or_else(|| panic!("no slot of node c: {seen:#}"))
        .clone();
    assert_eq!(slot["priority"], 300, "{seen:#}");
    assert_eq!(slot["preempted"]["node"], "b", "{seen:#}");
    assert_eq!(slot["preempted"]["priority"], 100, "{seen:#}");
    env.command(["status", "--etcd", &etcd.endpoints()])
        .args(["--node", "c", "--lock-dir"])
        .arg(c.lock_dir())
        .stdout_contains("priority 300")
        .stdout_contains("; preempted node b pid")
        .run();
    // Restarted with `wait` (as systemd restarts it), the 100 waits in
    // line at its priority, cannot preempt back, and gets the slot when
    // the 300 ends.
    let _ = fs::remove_file(env.path("b1.status"));
    let mut again =
        b.start(launch(&b, &env, device, ("b2", 100), OnTerm::Exit).args(["--on-busy", "wait"]));
    assert!(
        wait_until(PATIENCE, || waiting_priorities(&env, &etcd, &b) == [100]),
        "the restarted 100 never waited in line:\n{}",
        again.log()
    );
    assert!(recording.running() && older.running());
    recording.signal(Signal::SIGTERM);
    assert!(
        wait_until(PATIENCE, || logged(&env, "start", "b2").is_some()),
        "the waiting 100 never got the slot back:\n{}",
        again.log()
    );
    assert!(again.running());
    assert_eq!(busy_503s(device), 0);
    assert_never_two_readers_on_a_tuner(&env);
}

#[test]
fn an_equal_priority_never_preempts_across_nodes() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let device = device();
    let [a, b, c] = ["a", "b", "c"].map(|name| Node::new(&env, name, etcd.endpoints()));
    let mut first = hold(&a, &env, device, ("a1", 100), OnTerm::Exit);
    let mut second = hold(&b, &env, device, ("b1", 100), OnTerm::Exit);
    launch(&c, &env, device, ("c1", 100), OnTerm::Exit)
        .expect_status(BUSY)
        .stderr_contains("device busy in the cluster")
        .stderr_lacks("preempting")
        .run();
    launch(&c, &env, device, ("c2", 100), OnTerm::Exit)
        .args(["--on-busy", "wait", "--wait-timeout", "3"])
        .expect_status(BUSY)
        .stderr_lacks("preempting")
        .run();
    assert!(first.running() && second.running());
    assert!(logged(&env, "term", "a1").is_none() && logged(&env, "term", "b1").is_none());
    assert!(logged(&env, "start", "c1").is_none() && logged(&env, "start", "c2").is_none());
    assert_eq!(busy_503s(device), 0);
}

#[test]
fn a_victim_that_ignores_sigterm_and_its_setsid_helper_are_killed_after_the_grace_before_the_slot_changes_hands()
 {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let device = device();
    let [a, b, c] = ["a", "b", "c"].map(|name| Node::new(&env, name, etcd.endpoints()));
    let _kept = hold(&a, &env, device, ("a1", 200), OnTerm::Exit);
    let mut stubborn = hold(&b, &env, device, ("b1", 100), OnTerm::IgnoreWithHelper);
    let helper = env.written_pid("b1.helper");
    let grace = Duration::from_secs(2);
    let asked = Instant::now();
    let mut recording = c
        .start(launch(&c, &env, device, ("rec", 300), OnTerm::Exit).args(["--preempt-grace", "2"]));
    assert_eq!(
        stubborn.exit_within(PATIENCE * 2),
        Some(128 + 9),
        "the stubborn reader ends by SIGKILL:\n{}",
        stubborn.log()
    );
    let gone = asked.elapsed();
    println!(
        "FIGURE a SIGTERM-ignoring victim and its helper gone {gone:?} after the ask (grace 2 s)"
    );
    assert!(
        gone >= grace,
        "killed {gone:?} after the ask, inside the grace"
    );
    assert!(
        gone < grace + BOUND * 2,
        "killed only {gone:?} after the ask"
    );
    assert!(!alive(helper), "the setsid helper outlived the hand-over");
    assert!(
        stubborn.log().contains("did not stop within 2s"),
        "{}",
        stubborn.log()
    );
    assert!(
        wait_until(PATIENCE, || logged(&env, "start", "rec").is_some()),
        "the 300 never read:\n{}",
        recording.log()
    );
    assert!(recording.running());
    assert_eq!(busy_503s(device), 0);
    assert_never_two_readers_on_a_tuner(&env);
}

#[test]
fn waiters_of_priority_10_300_and_100_on_three_nodes_get_freed_slots_in_the_order_300_100_10() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let device = device();
    let [a, b, c] = ["a", "b", "c"].map(|name| Node::new(&env, name, etcd.endpoints()));
    // Holders no waiter may preempt.
    let first = hold(&a, &env, device, ("h1", 1000), OnTerm::Exit);
    let second = hold(&b, &env, device, ("h2", 1000), OnTerm::Exit);
    let mut waiters = Vec::new();
    for (node, tag, priority, registered) in [
        (&a, "w10", 10, vec![10]),
        (&b, "w300", 300, vec![10, 300]),
        (&c, "w100", 100, vec![10, 300, 100]),
    ] {
        let waiter = node.start(
            launch(node, &env, device, (tag, priority), OnTerm::Exit).args(["--on-busy", "wait"]),
        );
        assert!(
            wait_until(PATIENCE, || waiting_priorities(&env, &etcd, &a)
                == registered),
            "{tag} never registered ({:?}):\n{}",
            waiting_priorities(&env, &etcd, &a),
            waiter.log()
        );
        waiters.push(waiter);
    }
    let started = |tags: &[&str]| {
        tags.iter()
            .filter(|tag| logged(&env, "start", tag).is_some())
            .count()
    };
    first.signal(Signal::SIGTERM);
    assert!(
        wait_until(PATIENCE, || started(&["w300"]) == 1),
        "w300 never read"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        started(&["w10", "w100"]),
        0,
        "only the 300 gets the first slot"
    );
    second.signal(Signal::SIGTERM);
    assert!(
        wait_until(PATIENCE, || started(&["w100"]) == 1),
        "w100 never read"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(started(&["w10"]), 0, "the 100 goes before the 10");
    waiters[1].signal(Signal::SIGTERM);
    assert!(
        wait_until(PATIENCE, || started(&["w10"]) == 1),
        "w10 never read"
    );
    let order: Vec<String> = events(&env)
        .into_iter()
        .filter(|(what, tag, _)| what == "start" && tag.starts_with('w'))
        .map(|(_, tag, _)| tag)
        .collect();
    assert_eq!(order, ["w300", "w100", "w10"]);
    assert_eq!(busy_503s(device), 0);
    assert_never_two_readers_on_a_tuner(&env);
}

#[test]
fn a_frozen_victim_launcher_loses_its_slot_only_when_its_lease_expires_and_the_preemptor_never_deletes_its_key()
 {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let device = device();
    let [a, b, c] = ["a", "b", "c"].map(|name| Node::new(&env, name, etcd.endpoints()));
    let _kept = hold(&a, &env, device, ("a1", 200), OnTerm::Exit);
    // The frozen node's program stands for one that systemd's watchdog
    // stops (ECP-0135 section 4): it reads no tuner file here, so the
    // claims are judged on etcd's keys alone.
    let frozen = b.start(
        b.launch("http://10.0.0.5:5004/auto/vb1")
            .args(["--tuners", "2", "--device", "den-box", "--priority", "100"])
            .program(["sleep", "600"]),
    );
    let slot_of_b = || {
        let seen = cluster_status(&env, &etcd, &a);
        seen["cluster"]["holders"].as_array().and_then(|h| {
            h.iter()
                .find(|h| h["node"] == "b" && h["slot"].is_u64())
                .map(|h| h["key"].as_str().unwrap_or_default().to_owned())
        })
    };
    assert!(
        wait_until(PATIENCE, || slot_of_b().is_some()),
        "b never held a slot:\n{}",
        frozen.log()
    );
    let key = slot_of_b().unwrap();
    frozen.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    let recording = c.start(launch(&c, &env, device, ("rec", 300), OnTerm::Exit).args([
        "--on-busy",
        "wait",
        "--preempt-grace",
        "1",
    ]));
    assert!(
        wait_until(PATIENCE, || recording
            .log()
            .contains("preempting cluster tuner slot")),
        "the 300 never asked:\n{}",
        recording.log()
    );
    // The earliest the frozen launcher's lease can expire: its last renewal
    // was at most TTL/3 before the freeze (6 s TTL: 2 s).
    let earliest_expiry = Duration::from_secs(4);
    let mut deleted_after = None;
    let mut last_seen_held = now_micros();
    wait_until(PATIENCE, || {
        let checked = now_micros();
        // Gone from node b: deleted, or already the preemptor's (it takes
        // the key within milliseconds of the expiry).
        let output = etcd.etcdctl(&["get", &key, "--print-value-only"]);
        let gone = output.status.success()
            && !String::from_utf8_lossy(&output.stdout).starts_with(r#"{"node":"b""#);
        if gone {
            deleted_after = Some(stopped.elapsed());
        } else {
            last_seen_held = checked;
        }
        gone
    });
    let Some(deleted_after) = deleted_after else {
        let output = etcd.etcdctl(&["get", &key]);
        panic!(
            "the frozen launcher's key {key} never went: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            recording.log()
        );
    };
    assert!(
        deleted_after >= earliest_expiry,
        "the key went {deleted_after:?} after the freeze, before its lease could expire"
    );
    assert!(
        logged(&env, "start", "rec").is_none_or(|at| at > last_seen_held),
        "the 300 read while the frozen holder's key was still there"
    );
    assert!(
        wait_until(PATIENCE, || logged(&env, "start", "rec").is_some()),
        "the 300 never read after the lease expired:\n{}",
        recording.log()
    );
    assert!(
        recording.log().contains("lock delay"),
        "a take after an expiry waits the lock delay:\n{}",
        recording.log()
    );
    frozen.signal(Signal::SIGKILL);
    assert_eq!(busy_503s(device), 0);
    assert_never_two_readers_on_a_tuner(&env);
}
