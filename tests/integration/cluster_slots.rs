//! Cluster tuner slots when nodes disagree on N (issue #16 item 4,
//! ECP-0135 section 5): real etcd, launchers standing for nodes (a lock
//! directory and `--node` each), and readers that take one of the device's
//! *two* tuner files with `flock -n`, so the kernel, not the code under
//! test, says whether a third reader ever ran (`cluster_node`).

use nix::sys::signal::Signal;

use crate::cluster_node::{Launcher, Node, Timeline, brief_reader_program, reader_program};
use crate::etcd_server::EtcdServer;
use crate::testenv::{BUSY, PATIENCE, TestEnv, kernel_locks, wait_until};

/// The device really has two tuners: every reader shares these two files.
const REAL_TUNERS: usize = 2;

/// Channel `n` of the den's device.
fn channel(n: usize) -> String {
    format!("http://10.0.0.5:5004/auto/v{n}.1")
}

/// `--tuners N --device den-box`.
fn tuners(n: u32) -> Vec<String> {
    vec![
        "--tuners".into(),
        n.to_string(),
        "--device".into(),
        "den-box".into(),
    ]
}

/// Starts `node`'s launcher of reader `tag` on channel `ch` with `--tuners
/// n` (and `extra`), and waits until the reader runs.
#[track_caller]
fn hold(env: &TestEnv, node: &Node<'_>, ch: usize, tag: &str, n: u32) -> Launcher {
    node.start_running(
        node.launch(&channel(ch))
            .args(tuners(n))
            .program(reader_program(env, tag, REAL_TUNERS)),
        tag,
    )
}

#[test]
fn a_node_saying_three_tuners_never_takes_a_third_slot_while_the_holders_say_two() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let [a, b] = Node::each(&env, &etcd.endpoints(), ["a", "b"]);
    let _a1 = hold(&env, &a, 1, "a1", 2);
    let _a2 = hold(&env, &a, 2, "a2", 2);
    b.launch(&channel(3))
        .args(tuners(3))
        .program(reader_program(&env, "b", REAL_TUNERS))
        .expect_status(BUSY)
        .stderr_contains("disagree")
        .stderr_contains("--tuners 3")
        .stderr_contains("using 2")
        .run();
    let timeline = Timeline::settled(&env);
    assert!(timeline.life("b").is_none(), "{timeline:#?}");
    timeline.assert_at_most(REAL_TUNERS);
}

#[test]
fn a_waiter_saying_two_tuners_keeps_launchers_saying_three_below_two_and_status_shows_it() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let [a, b] = Node::each(&env, &etcd.endpoints(), ["a", "b"]);
    let b1 = hold(&env, &b, 1, "b1", 3);
    let _b2 = hold(&env, &b, 2, "b2", 3);
    // A waiter that declares two tuners: no slot, but its N counts.
    let mut waiter = a.start(
        a.launch(&channel(3))
            .args(tuners(2))
            .args(["--on-busy", "wait"])
            .program(reader_program(&env, "a", REAL_TUNERS)),
    );
    let waiting = || {
        a.status().arg("--json").run().json()["cluster"]["waiters"]
            .as_array()
            .is_some_and(|w| !w.is_empty())
    };
    assert!(
        wait_until(PATIENCE, waiting),
        "the waiter never registered:\n{}",
        waiter.log()
    );
    let seen = a.status().arg("--json").run().json();
    let cluster = &seen["cluster"];
    let waiters = cluster["waiters"].as_array().expect("waiters");
    assert_eq!(waiters.len(), 1, "{seen:#}");
    assert_eq!(waiters[0]["node"], "a", "{seen:#}");
    assert_eq!(waiters[0]["tuners"], 2, "{seen:#}");
    assert_eq!(waiters[0]["this_node"], true, "{seen:#}");
    assert_eq!(waiters[0]["pid"], waiter.pid(), "{seen:#}");
    let since = waiters[0]["since"].as_u64().expect("since in seconds");
    assert_eq!(
        waiters[0]["since_rfc3339"],
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(since)
        )
        .to_string()
        .as_str(),
        "{seen:#}"
    );
    // The waiting key is no holder: two slots are held, not three.
    let holders = cluster["holders"].as_array().expect("holders");
    let slots: Vec<&serde_json::Value> = holders
        .iter()
        .filter(|h| h["device"] == "den-box")
        .collect();
    assert_eq!(slots.len(), 2, "{seen:#}");
    assert!(slots.iter().all(|h| h["tuners"] == 3), "{seen:#}");
    assert!(
        holders
            .iter()
            .all(|h| !h["key"].as_str().unwrap_or_default().contains("/waiting/")),
        "{seen:#}"
    );
    let device = cluster["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["device"] == "den-box"))
        .unwrap_or_else(|| panic!("no cluster.devices entry: {seen:#}"));
    assert_eq!(device["tuners"], 2, "{seen:#}");
    assert_eq!(device["declared"], serde_json::json!([2, 3]), "{seen:#}");
    assert_eq!(device["held"], 2, "{seen:#}");
    assert_eq!(device["waiting"], 1, "{seen:#}");
    assert!(
        device["warnings"].as_array().is_some_and(|w| w
            .iter()
            .any(|w| w.as_str().unwrap_or_default().contains("disagree"))),
        "{seen:#}"
    );
    a.status()
        .stdout_contains("device den-box waiting: node a (this node)")
        .stdout_contains("disagree")
        .run();
    // A third launcher saying three: the waiter's two forbid a third slot.
    b.launch(&channel(4))
        .args(tuners(3))
        .program(reader_program(&env, "b3", REAL_TUNERS))
        .expect_status(BUSY)
        .stderr_contains("using 2")
        .run();
    // A clean stop of a holder hands its slot to the waiter.
    b1.signal(Signal::SIGTERM);
    let life = crate::cluster_node::started_within(&env, "a", PATIENCE);
    assert!(life.is_some(), "the waiter never ran:\n{}", waiter.log());
    let timeline = Timeline::settled(&env);
    assert!(timeline.life("b3").is_none(), "{timeline:#?}");
    timeline.assert_at_most(REAL_TUNERS);
    // Its waiting key went with the take.
    let seen = a.status().arg("--json").run().json();
    assert_eq!(
        seen["cluster"]["waiters"],
        serde_json::json!([]),
        "{seen:#}"
    );
    assert!(waiter.running());
}

/// Nodes that say 2 and 3 start together behind a holder that says 2:
/// never a third reader, whoever reads first.
#[test]
fn nodes_saying_two_and_three_tuners_racing_for_one_device_never_run_three_readers() {
    const ROUNDS: usize = 3;
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let [a, b] = Node::each(&env, &etcd.endpoints(), ["a", "b"]);
    for round in 0..ROUNDS {
        let _ = std::fs::remove_file(env.path("events"));
        let mut holder = hold(&env, &a, 1, &format!("holder{round}"), 2);
        let invocations = (0..4)
            .map(|i| {
                let (node, n) = if i == 0 { (&a, 2) } else { (&b, 3) };
                let tag = format!("r{round}-{i}");
                let launch = node
                    .launch(&channel(i + 2))
                    .args(tuners(n))
                    .args(["--on-busy", "wait", "--wait-timeout", "60"])
                    .program(brief_reader_program(&env, &tag, REAL_TUNERS, 0.5));
                (node, launch)
            })
            .collect();
        let mut launchers = crate::cluster_node::start_together(invocations);
        for launcher in &mut launchers {
            assert_eq!(
                launcher.exit_within(PATIENCE * 3),
                Some(0),
                "round {round}:\n{}",
                launcher.log()
            );
        }
        let timeline = Timeline::settled(&env);
        assert_eq!(timeline.lives.len(), 5, "round {round}: {timeline:#?}");
        timeline.assert_at_most(REAL_TUNERS);
        // A clean stop, so the next round does not wait for its lease.
        holder.signal(Signal::SIGTERM);
        assert!(holder.exit_within(PATIENCE).is_some(), "round {round}");
    }
}

/// The `->` rows of `pid` on `node`'s slot files: threads of it blocked in
/// flock(2).
fn blocked_on_slots(node: &Node<'_>, pid: u32) -> usize {
    std::fs::read_dir(node.lock_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "slot"))
        .flat_map(|p| kernel_locks(&p))
        .filter(|l| l.waiting && l.pid == i64::from(pid))
        .count()
}

/// Issue #16 item 9: in cluster mode the launcher stays, so a thread left
/// blocked on another local slot would wait on for the program's whole
/// life, show as a waiter, and snatch that slot when it is freed. Looped:
/// each round frees a slot after the waiter has won one, and a skipping
/// newcomer must get it.
#[test]
fn a_supervising_launcher_that_won_a_slot_waits_on_no_other_and_a_freed_slot_goes_to_a_newcomer() {
    for round in 0..4 {
        // Each round its own store: the last round's launchers are
        // SIGKILLed, and their leases would linger for a TTL.
        let etcd = EtcdServer::start();
        let env = TestEnv::new();
        let a = Node::new(&env, "a", etcd.endpoints());
        let first = hold(&env, &a, 1, "first", 2);
        let mut second = hold(&env, &a, 2, "second", 2);
        let waiter = a.start(
            a.launch(&channel(3))
                .args(tuners(2))
                .args(["--on-busy", "wait"])
                .program(reader_program(&env, "waiter", REAL_TUNERS)),
        );
        assert!(
            wait_until(PATIENCE, || blocked_on_slots(&a, waiter.pid()) == 2),
            "round {round}: the waiter never blocked on both slots:\n{}",
            waiter.log()
        );
        first.signal(Signal::SIGTERM);
        assert!(
            crate::cluster_node::started_within(&env, "waiter", PATIENCE).is_some(),
            "round {round}: the waiter never ran:\n{}",
            waiter.log()
        );
        assert_eq!(
            blocked_on_slots(&a, waiter.pid()),
            0,
            "round {round}: a thread of the running waiter still waits on a slot"
        );
        let seen = env
            .command(["status", "--json", "--lock-dir"])
            .arg(a.lock_dir())
            .run()
            .json();
        assert_eq!(seen["devices"][0]["waiting"], 0, "round {round}: {seen:#}");
        second.signal(Signal::SIGTERM);
        assert!(second.exit_within(PATIENCE).is_some(), "round {round}");
        a.launch(&channel(4))
            .args(tuners(2))
            .program(brief_reader_program(&env, "newcomer", REAL_TUNERS, 0.1))
            .label(format!("round {round}: the freed slot goes to a newcomer"))
            .run();
        Timeline::settled(&env).assert_at_most(REAL_TUNERS);
    }
}
