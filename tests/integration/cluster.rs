//! Cluster mode end to end (issue #12, ECP-0134): real etcd servers, real
//! launchers standing for separate nodes (a lock directory and `--node` name
//! each), real signals, network namespaces for partitions. Overlap is seen
//! by the kernel, not by the code under test (see `cluster_node`), and the
//! timing figures of the closing note are printed as `FIGURE …` lines
//! (`cargo test --test integration cluster -- --nocapture`); the tests
//! assert only the contract's bounds.

use std::fs;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::cluster_node::{
    FENCED, Launcher, Life, MARGIN, NO_PERMISSION, Node, STOP_GRACE, TTL, Timeline, UNAVAILABLE,
    brief_reader_program, figure, last_renewal_sent, micros, now_micros, reader_program, secs,
    start_together, started_within, status_etcd, stopped_within,
};
use crate::etcd_server::{EtcdCluster, EtcdServer};
use crate::netns::{EtcdInside, Link};
use crate::testenv::{BUSY, PATIENCE, TestEnv, require_root, wait_until};

/// Issue #16: keys or leases lost early, and the lock delay (ECP-0135).
#[path = "cluster_loss.rs"]
mod loss;

/// Issue #16, item 2: helpers outside the program's process group (ECP-0135).
#[path = "cluster_release.rs"]
mod release;

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";

/// Channel `n` of the device at 10.0.0.5.
fn channel(n: usize) -> String {
    format!("http://10.0.0.5:5004/auto/v{n}.1")
}

/// Long enough for a waiting launcher to be watching the holder's key.
const SETTLE: Duration = Duration::from_millis(1500);

/// Starts `node`'s launcher of reader `tag` (running until stopped) on
/// [`SOURCE`] and waits until the reader runs.
#[track_caller]
fn hold(env: &TestEnv, node: &Node<'_>, tag: &str) -> Launcher {
    let launcher = node.start_running(
        node.launch(SOURCE).program(reader_program(env, tag, 1)),
        tag,
    );
    let life = Timeline::read(env).life(tag).cloned().unwrap();
    assert_eq!(
        life.parent,
        launcher.pid(),
        "in cluster mode ec-launch stays the reader's parent"
    );
    launcher
}

/// The waiter `tag`'s reader's life once it started (within `PATIENCE`).
fn took_over(env: &TestEnv, waiter: &mut Launcher, tag: &str) -> Life {
    started_within(env, tag, PATIENCE).unwrap_or_else(|| {
        panic!(
            "the waiter never ran (status {:?}):\n{}",
            waiter.exit_within(Duration::ZERO),
            waiter.log()
        )
    })
}

/// Starts `node`'s launcher of reader `tag` on [`SOURCE`] with `--on-busy
/// wait`, lets it settle into waiting, and checks it did not run.
#[track_caller]
fn wait_behind(env: &TestEnv, node: &Node<'_>, tag: &str) -> Launcher {
    let mut waiter = node.start_reader(SOURCE, tag, &["--on-busy", "wait"]);
    std::thread::sleep(SETTLE);
    assert!(
        waiter.running(),
        "the waiter on node {} exited: {:?}\n{}",
        node.name(),
        waiter.exit_within(Duration::ZERO),
        waiter.log()
    );
    assert!(
        Timeline::read(env).life(tag).is_none(),
        "the waiter ran while the source was held"
    );
    waiter
}

/// SIGKILLs a pid that is not our child (a launcher's reader).
fn kill_pid(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
}

#[test]
fn three_nodes_racing_for_one_source_run_exactly_one_program_per_round() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let nodes: Vec<Node<'_>> = ["a", "b", "c"]
        .iter()
        .map(|name| Node::new(&env, name, etcd.endpoints()))
        .collect();
    for round in 0..10 {
        let mut launchers = start_together(
            nodes
                .iter()
                .map(|node| {
                    let tag = format!("{}{round}", node.name());
                    let launch = node.launch(SOURCE).program(reader_program(&env, &tag, 1));
                    (node, launch)
                })
                .collect(),
        );
        // Two lose at once with the busy status; one runs its reader.
        let mut ended: Vec<Option<i32>> = vec![None; launchers.len()];
        wait_until(PATIENCE, || {
            for (status, launcher) in ended.iter_mut().zip(&mut launchers) {
                if status.is_none() {
                    *status = launcher.exit_within(Duration::ZERO);
                }
            }
            ended.iter().flatten().count() >= 2
        });
        let logs = || {
            launchers
                .iter()
                .map(Launcher::log)
                .collect::<Vec<_>>()
                .join("\n---\n")
        };
        assert_eq!(
            ended.iter().filter(|&&s| s == Some(BUSY)).count(),
            2,
            "round {round}: expected two busy nodes and one running, got {ended:?}:\n{}",
            logs()
        );
        let winner = ended
            .iter()
            .position(Option::is_none)
            .unwrap_or_else(|| panic!("round {round}: no node ran: {ended:?}\n{}", logs()));
        let tag = format!("{}{round}", nodes[winner].name());
        assert!(
            started_within(&env, &tag, PATIENCE).is_some(),
            "round {round}: the winner {tag} never started its reader"
        );
        let timeline = Timeline::settled(&env);
        assert_eq!(
            timeline.lives.len(),
            round + 1,
            "round {round}: one reader per round\n{timeline:#?}"
        );
        timeline.assert_at_most(1);
        // A clean stop ends the round: SIGTERM reaches the reader, and the
        // revoked lease frees the source for the next round at once.
        launchers[winner].signal(Signal::SIGTERM);
        assert_eq!(launchers[winner].exit_within(PATIENCE), Some(128 + 15));
        assert!(
            stopped_within(&env, &tag, PATIENCE).is_some(),
            "round {round}: the reader outlived its launcher"
        );
    }
    Timeline::settled(&env).assert_at_most(1);
}

#[test]
fn two_tuners_across_four_nodes_never_run_more_than_two_programs() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let nodes: Vec<Node<'_>> = ["a", "b", "c", "d"]
        .iter()
        .map(|name| Node::new(&env, name, etcd.endpoints()))
        .collect();
    let mut launchers = start_together(
        nodes
            .iter()
            .enumerate()
            .map(|(n, node)| {
                let launch = node
                    .launch(&channel(n + 1))
                    .args(["--tuners", "2", "--device", "den-box"])
                    .args(["--on-busy", "wait", "--wait-timeout", "60"])
                    .program(brief_reader_program(&env, node.name(), 2, 2.0));
                (node, launch)
            })
            .collect(),
    );
    for (node, launcher) in nodes.iter().zip(&mut launchers) {
        assert_eq!(
            launcher.exit_within(PATIENCE * 3),
            Some(0),
            "node {}:\n{}",
            node.name(),
            launcher.log()
        );
    }
    let timeline = Timeline::settled(&env);
    assert_eq!(
        timeline.lives.len(),
        4,
        "every node ran once\n{timeline:#?}"
    );
    timeline.assert_at_most(2);
    assert_eq!(
        timeline.most_at_once(),
        2,
        "both tuners were in use at once\n{timeline:#?}"
    );
    // Handover: each of the last two started after an earlier one stopped.
    for late in &timeline.lives[2..] {
        let freed = timeline.lives[..2]
            .iter()
            .filter_map(|l| l.stop)
            .filter(|&stop| stop <= late.start)
            .max()
            .expect("a slot was freed before the late reader started");
        eprintln!(
            "FIGURE slot handover (stop to next start): {:.3} s",
            secs(i128::try_from(late.start - freed).unwrap())
        );
    }
}

#[test]
fn a_waiting_node_runs_within_ttl_and_a_second_after_the_active_node_is_killed() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let [a, b] = Node::each(&env, &etcd.endpoints(), ["a", "b"]);
    let mut active = hold(&env, &a, "a");
    let mut waiter = wait_behind(&env, &b, "b");
    let reader = Timeline::read(&env).life("a").unwrap().pid;
    // The whole node dies at once: the launcher and its child.
    let killed_at = now_micros();
    active.signal(Signal::SIGKILL);
    kill_pid(reader);
    assert_eq!(active.exit_within(PATIENCE), Some(128 + 9));
    let took_over = took_over(&env, &mut waiter, "b");
    let delay = figure(
        "failover after SIGKILL (kill to start)",
        killed_at,
        &took_over,
    );
    // TTL + 1 s for the lease to expire and be seen, then the lock delay
    // (stop grace + margin, ECP-0135): the killed holder released nothing
    // cleanly, so the waiter may not assume its program is gone any sooner.
    let bound = TTL + Duration::from_secs(1) + STOP_GRACE + MARGIN;
    assert!(
        delay <= micros(bound),
        "the waiter took {:.3} s, more than TTL + 1 s + the lock delay ({} s)",
        secs(delay),
        bound.as_secs()
    );
    assert!(
        delay >= micros(STOP_GRACE + MARGIN),
        "the waiter ran {:.3} s after the holder was killed, inside the lock delay",
        secs(delay)
    );
    Timeline::settled(&env).assert_at_most(1);
}

#[test]
fn a_sigkilled_launcher_takes_its_program_with_it() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let a = Node::new(&env, "a", etcd.endpoints());
    let mut active = hold(&env, &a, "a");
    let killed_at = now_micros();
    active.signal(Signal::SIGKILL);
    assert_eq!(active.exit_within(PATIENCE), Some(128 + 9));
    let life = stopped_within(&env, "a", PATIENCE).expect("the reader outlived its launcher");
    let after = i128::try_from(life.stop.unwrap()).unwrap() - i128::try_from(killed_at).unwrap();
    eprintln!(
        "FIGURE parent-death: reader dead {:.3} s after its launcher",
        secs(after)
    );
    assert!(
        after < micros(Duration::from_secs(1)),
        "the reader lived {:.3} s after its launcher was killed",
        secs(after)
    );
}

#[test]
fn a_waiting_node_runs_within_a_second_of_a_clean_stop() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let [a, b] = Node::each(&env, &etcd.endpoints(), ["a", "b"]);
    let mut active = hold(&env, &a, "a");
    let mut waiter = wait_behind(&env, &b, "b");
    let stopped_at = now_micros();
    active.signal(Signal::SIGTERM);
    assert_eq!(
        active.exit_within(PATIENCE),
        Some(128 + 15),
        "{}",
        active.log()
    );
    let took_over = took_over(&env, &mut waiter, "b");
    let delay = figure(
        "failover after a clean stop (SIGTERM to start)",
        stopped_at,
        &took_over,
    );
    let gap = figure(
        "failover after a clean stop (reader stop to start)",
        stopped_within(&env, "a", PATIENCE)
            .expect("the holder's reader stopped")
            .stop
            .unwrap(),
        &took_over,
    );
    assert!(
        gap >= 0,
        "the waiter started before the holder's reader stopped"
    );
    assert!(
        delay <= micros(Duration::from_secs(1)),
        "the waiter took {:.3} s after a clean stop: the lease was not revoked",
        secs(delay)
    );
    Timeline::settled(&env).assert_at_most(1);
}

/// What a fenced holder looked like: its reader's stop, and the bound.
fn assert_fenced_before(env: &TestEnv, active: &mut Launcher, tag: &str, cut_at: u128) -> u128 {
    let stopped = stopped_within(env, tag, TTL + PATIENCE)
        .unwrap_or_else(|| panic!("reader {tag} still runs after the cut:\n{}", active.log()));
    let stop = stopped.stop.unwrap();
    let expiry_bound = cut_at + TTL.as_micros();
    let fenced_after = i128::try_from(stop).unwrap() - i128::try_from(cut_at).unwrap();
    eprintln!(
        "FIGURE fence: reader {tag} dead {:.3} s after the cut (budget from the last renewal: {} s)",
        secs(fenced_after),
        TTL.saturating_sub(STOP_GRACE + MARGIN).as_secs()
    );
    eprintln!(
        "FIGURE fence margin: {:.3} s before the latest possible lease expiry (cut + TTL)",
        secs(i128::try_from(expiry_bound).unwrap() - i128::try_from(stop).unwrap())
    );
    assert!(
        stop < expiry_bound,
        "reader {tag} outlived the lease: dead {:.3} s after the cut, TTL {} s\n{}",
        secs(fenced_after),
        TTL.as_secs(),
        active.log()
    );
    // Tighter, where the launcher logged when its last good renewal was
    // sent: the lease cannot expire on the server before that plus the TTL.
    if let Some(sent) = last_renewal_sent(&active.log()) {
        let earliest_expiry = sent + TTL.as_micros();
        let margin = i128::try_from(earliest_expiry).unwrap() - i128::try_from(stop).unwrap();
        eprintln!(
            "FIGURE fence margin (measured): reader {tag} dead {:.3} s before the earliest possible lease expiry (last renewal sent + TTL)",
            secs(margin)
        );
        assert!(
            stop < earliest_expiry,
            "reader {tag} outlived the earliest expiry of its lease by {:.3} s\n{}",
            secs(-margin),
            active.log()
        );
    }
    // The launcher itself is done soon after, with the fenced status: it
    // does not hang on the unreachable etcd (systemd must restart it).
    assert_eq!(
        active.exit_within(TTL),
        Some(FENCED),
        "the fenced launcher's status\n{}",
        active.log()
    );
    stop
}

/// How a waiter came out of an outage: running its reader, or exited
/// without one (status).
fn outcome_of_waiter(env: &TestEnv, waiter: &mut Launcher, tag: &str) -> Result<Life, i32> {
    let mut exited = None;
    wait_until(PATIENCE, || {
        exited = waiter.exit_within(Duration::ZERO);
        Timeline::read(env).life(tag).is_some() || exited.is_some()
    });
    match (Timeline::read(env).life(tag).cloned(), exited) {
        (Some(life), _) => Ok(life),
        (None, Some(status)) => Err(status),
        (None, None) => panic!("waiter {tag} neither ran nor exited:\n{}", waiter.log()),
    }
}

#[test]
fn freezing_etcd_fences_the_holder_before_its_lease_can_expire_and_no_one_overlaps_it() {
    let mut etcd = EtcdServer::start();
    let env = TestEnv::new();
    let [a, b] = Node::each(&env, &etcd.endpoints(), ["a", "b"]);
    let mut active = hold(&env, &a, "a");
    let mut waiter = wait_behind(&env, &b, "b");
    let frozen_at = now_micros();
    etcd.freeze();
    let stop = assert_fenced_before(&env, &mut active, "a", frozen_at);
    assert!(
        Timeline::read(&env).life("b").is_none(),
        "the waiter ran while etcd was frozen"
    );
    // The fence's log says what happened in the operator's terms, not the
    // HTTP library's (`timeout: global`).
    let log = active.log();
    assert!(
        !log.contains("timeout: "),
        "the fence log speaks the HTTP library's jargon:\n{log}"
    );
    assert!(
        log.contains("no answer from etcd within the call's deadline of ")
            || log.contains("no connection to etcd within the call's deadline of "),
        "the fence log does not say what etcd failed to do:\n{log}"
    );
    etcd.thaw();
    // The waiter takes over, or, if it gave up during the freeze (69: etcd
    // unreachable while acquiring; 76: see
    // `a_waiter_whose_lease_lapsed_while_etcd_was_frozen_takes_a_new_one_and_takes_over`),
    // a restarted one does, as systemd would restart it. Either way after
    // the fenced reader.
    let (took_over, _restarted) = match outcome_of_waiter(&env, &mut waiter, "b") {
        Ok(life) => (life, None),
        Err(status) => {
            eprintln!(
                "FIGURE etcd freeze: the waiter exited {status} without running; restarting it"
            );
            assert!(
                status == FENCED || status == UNAVAILABLE,
                "{}",
                waiter.log()
            );
            let mut restarted = b.start_reader(SOURCE, "b-restarted", &["--on-busy", "wait"]);
            let life = started_within(&env, "b-restarted", PATIENCE)
                .unwrap_or_else(|| panic!("the restarted waiter never ran:\n{}", restarted.log()));
            assert!(restarted.running());
            (life, Some(restarted))
        }
    };
    figure(
        "etcd freeze: takeover after the freeze began",
        frozen_at,
        &took_over,
    );
    assert!(
        took_over.start > stop,
        "the waiter overlapped the fenced reader"
    );
    Timeline::settled(&env).assert_at_most(1);
}

#[test]
fn a_waiter_whose_lease_lapsed_while_etcd_was_frozen_takes_a_new_one_and_takes_over() {
    waiter_whose_lease_lapsed_takes_over(SOURCE, SOURCE, &[]);
}

#[test]
fn a_slot_waiter_whose_lease_lapsed_while_etcd_was_frozen_takes_a_new_one_and_takes_over() {
    let one_tuner = ["--tuners", "1", "--device", "den-box"];
    waiter_whose_lease_lapsed_takes_over(&channel(1), &channel(2), &one_tuner);
}

/// A holder of `held` and a waiter for `wanted` (both with `extra`), and
/// an etcd freeze that the waiter's fence budget does not outlast.
fn waiter_whose_lease_lapsed_takes_over(held: &str, wanted: &str, extra: &[&str]) {
    let mut etcd = EtcdServer::start();
    let env = TestEnv::new();
    // The holder's TTL outlasts the freeze; the waiter's fence budget (4 s
    // from its last renewal) does not, but its watch stream (open for up
    // to a TTL) does: the holder's release reaches the waiter on a lease
    // it has already given up.
    let a = Node::new(&env, "a", etcd.endpoints()).ttl(12);
    let b = Node::new(&env, "b", etcd.endpoints());
    let mut active = a.start_reader(held, "a", extra);
    assert!(
        started_within(&env, "a", PATIENCE).is_some(),
        "the holder never ran:\n{}",
        active.log()
    );
    let mut waiting = vec!["--on-busy", "wait"];
    waiting.extend_from_slice(extra);
    let mut waiter = b.start_reader(wanted, "b", &waiting);
    assert!(
        wait_until(PATIENCE, || waiter.log().contains("busy")),
        "the waiter never said it waits:\n{}",
        waiter.log()
    );
    // Its watch is made; freeze past its fence deadline (at most 4 s after
    // its lease was granted, just before it said it waits) and thaw before
    // its watch stream's window (a TTL from the watch) ends: etcd unreachable
    // while a watch is made would be exit 69, by the contract.
    std::thread::sleep(Duration::from_millis(300));
    etcd.freeze();
    std::thread::sleep(Duration::from_millis(4500));
    etcd.thaw();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        active.running(),
        "the holder did not survive:\n{}",
        active.log()
    );
    active.signal(Signal::SIGTERM);
    assert_eq!(active.exit_within(PATIENCE), Some(128 + 15));
    match outcome_of_waiter(&env, &mut waiter, "b") {
        Ok(_) => Timeline::settled(&env).assert_at_most(1),
        Err(status) => panic!(
            "the waiter exited {status} instead of starting over under a new lease:\n{}",
            waiter.log()
        ),
    }
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_node_cut_off_by_its_link_is_fenced_before_its_lease_expires_and_the_etcd_side_takes_over() {
    require_root!("create network namespaces and a veth pair");
    let link = Link::create();
    let etcd = EtcdInside::start(&link.etcd_side, Link::ETCD_IP);
    let env = TestEnv::new();
    let far = Node::new(&env, "far", etcd.endpoints()).inside(&link.node_side);
    let near = Node::new(&env, "near", etcd.endpoints()).inside(&link.etcd_side);
    let mut active = hold(&env, &far, "far");
    let mut waiter = wait_behind(&env, &near, "near");
    let cut_at = now_micros();
    link.cut();
    let stop = assert_fenced_before(&env, &mut active, "far", cut_at);
    let took_over = started_within(&env, "near", PATIENCE).unwrap_or_else(|| {
        panic!(
            "the etcd side never took over (status {:?}):\n{}",
            waiter.exit_within(Duration::ZERO),
            waiter.log()
        )
    });
    figure("partition takeover (cut to start)", cut_at, &took_over);
    assert!(
        took_over.start > stop,
        "the etcd side overlapped the cut-off reader"
    );
    Timeline::settled(&env).assert_at_most(1);
}

/// Leader loss: the holder survives if renewal resumes in time (no fence,
/// the waiter never runs) or is fenced (and then the waiter runs only after
/// its reader stopped); never two readers.
fn holder_survives_or_is_fenced(lose_leader: impl FnOnce(&mut EtcdCluster) -> usize) {
    let mut cluster = EtcdCluster::start(3);
    let env = TestEnv::new();
    let a = Node::new(&env, "a", cluster.endpoints());
    let b = Node::new(&env, "b", cluster.endpoints());
    let mut active = hold(&env, &a, "a");
    let mut waiter = wait_behind(&env, &b, "b");
    let lost_at = now_micros();
    let old_leader = lose_leader(&mut cluster);
    // Long enough for the lease to have expired twice over had nobody renewed it.
    std::thread::sleep(TTL * 2);
    let timeline = Timeline::settled(&env);
    timeline.assert_at_most(1);
    if active.running() {
        eprintln!("FIGURE leader {old_leader} lost: the holder survived");
        assert!(
            timeline.life("a").unwrap().stop.is_none(),
            "the holder's reader died but the launcher runs:\n{}",
            active.log()
        );
        assert!(
            timeline.life("b").is_none(),
            "the waiter ran while the holder survived"
        );
        assert!(waiter.running(), "the waiter gave up:\n{}", waiter.log());
    } else {
        let stop = assert_fenced_before(&env, &mut active, "a", lost_at);
        eprintln!("FIGURE leader {old_leader} lost: the holder was fenced");
        let took_over = started_within(&env, "b", PATIENCE).expect("the waiter ran");
        assert!(
            took_over.start > stop,
            "the waiter overlapped the fenced reader"
        );
    }
}

#[test]
fn freezing_the_leader_of_three_members_never_lets_two_programs_run() {
    holder_survives_or_is_fenced(|cluster| {
        let leader = cluster.leader();
        cluster.freeze(leader);
        leader
    });
}

#[test]
fn stopping_the_leader_of_three_members_never_lets_two_programs_run() {
    holder_survives_or_is_fenced(|cluster| {
        let leader = cluster.leader();
        cluster.stop_member(leader);
        leader
    });
}

/// Moves the leadership of `cluster` to member `i` (`etcdctl move-leader`).
#[track_caller]
fn make_leader(cluster: &EtcdCluster, i: usize) {
    let name = format!("m{i}");
    let list = crate::testenv::text(&cluster.etcdctl(&["member", "list"]).stdout);
    let id = list
        .lines()
        .map(|line| line.split(", ").collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&name.as_str()))
        .map_or_else(|| panic!("no member {name} in {list}"), |f| f[0].to_owned());
    let moved = cluster.etcdctl(&["move-leader", &id]);
    assert!(
        moved.status.success(),
        "{}",
        crate::testenv::describe(&moved)
    );
    assert!(
        wait_until(PATIENCE, || cluster.leader() == i),
        "member {i} never became leader"
    );
}

/// An election this fast leaves a renewal that tries a live member time
/// to succeed before the fence (the retry after a timed-out renewal comes
/// 3 s after the last good one was sent, the deadline at 4 s).
const QUICK_ELECTION: Duration = Duration::from_millis(1500);

#[test]
fn the_holder_survives_a_frozen_leader_that_is_replaced_within_a_second_and_a_half() {
    // A slower election (a loaded machine) proves nothing either way: try
    // again, a few times.
    for attempt in 0..3 {
        if holder_survives_a_frozen_second_endpoint_leader() {
            return;
        }
        eprintln!("attempt {attempt}: the election was too slow to judge; again");
    }
    panic!("no election was quick enough in three attempts");
}

/// False if the election took longer than [`QUICK_ELECTION`].
fn holder_survives_a_frozen_second_endpoint_leader() -> bool {
    let mut cluster = EtcdCluster::start(3);
    // The leader on the second endpoint: a renewal sent to the first (a
    // follower, which forwards it to the frozen leader) times out, and the
    // next try must reach a member that can answer.
    make_leader(&cluster, 1);
    let env = TestEnv::new();
    let a = Node::new(&env, "a", cluster.endpoints());
    let b = Node::new(&env, "b", cluster.endpoints());
    let mut active = hold(&env, &a, "a");
    let mut waiter = wait_behind(&env, &b, "b");
    let frozen_at = std::time::Instant::now();
    cluster.freeze(1);
    let new_leader = cluster.leader();
    let elected_after = frozen_at.elapsed();
    eprintln!(
        "FIGURE frozen leader 1 replaced by member {new_leader} after {:.3} s",
        elected_after.as_secs_f64()
    );
    if elected_after > QUICK_ELECTION {
        return false;
    }
    // Long enough for the lease to have expired twice over had nobody renewed it.
    std::thread::sleep(TTL * 2);
    assert!(
        active.running(),
        "the holder was fenced (status {:?}) although a new leader was elected {:.3} s after the freeze, well within the fence budget of {} s:\n{}",
        active.exit_within(Duration::ZERO),
        elected_after.as_secs_f64(),
        TTL.saturating_sub(STOP_GRACE + MARGIN).as_secs(),
        active.log()
    );
    let timeline = Timeline::settled(&env);
    assert!(timeline.life("a").unwrap().stop.is_none());
    assert!(timeline.life("b").is_none(), "the waiter ran");
    assert!(waiter.running(), "the waiter gave up:\n{}", waiter.log());
    true
}

#[test]
fn ec_launch_forwards_termination_signals_to_the_program_and_exits_with_its_status() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let node = Node::new(&env, "a", etcd.endpoints());
    for (signal, code) in [
        (Signal::SIGTERM, 3),
        (Signal::SIGINT, 4),
        (Signal::SIGHUP, 5),
    ] {
        let mark = format!("got-{signal}");
        let script = format!(
            "trap 'echo {signal} > {mark}; exit {code}' {}; echo $$ > pid.{code}; \
             while :; do sleep 0.05; done",
            signal.as_str().trim_start_matches("SIG")
        );
        let mut launcher = node.start(node.launch(SOURCE).program(TestEnv::sh(&script)));
        assert!(
            wait_until(PATIENCE, || env.path(&format!("pid.{code}")).exists()),
            "the program never started:\n{}",
            launcher.log()
        );
        launcher.signal(signal);
        assert_eq!(
            launcher.exit_within(PATIENCE),
            Some(code),
            "{signal}:\n{}",
            launcher.log()
        );
        assert!(
            env.path(&mark).exists(),
            "{signal} never reached the program"
        );
    }
}

#[test]
fn a_program_killed_by_a_signal_makes_ec_launch_exit_128_plus_the_signal() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let node = Node::new(&env, "a", etcd.endpoints());
    let mut launcher = node.start(
        node.launch(SOURCE)
            .program(TestEnv::sh("echo $$ > pid; exec sleep 600")),
    );
    assert!(
        wait_until(PATIENCE, || fs::read_to_string(env.path("pid"))
            .is_ok_and(|p| p.ends_with('\n'))),
        "the program never started:\n{}",
        launcher.log()
    );
    let pid: u32 = fs::read_to_string(env.path("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill_pid(pid);
    assert_eq!(
        launcher.exit_within(PATIENCE),
        Some(137),
        "{}",
        launcher.log()
    );
    // And a plain exit status passes through unchanged.
    node.launch(SOURCE)
        .program(TestEnv::sh("exit 7"))
        .expect_status(7)
        .run();
}

#[test]
fn status_etcd_shows_the_holder_with_its_node_and_lease_and_which_is_this_node() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let a = Node::new(&env, "a", etcd.endpoints());
    let active = hold(&env, &a, "a");
    let status = |node: &str| {
        status_etcd(&env, &etcd.endpoints(), node, a.lock_dir())
            .arg("--json")
            .run()
            .json()
    };
    let seen = status("a");
    let holders = seen["cluster"]["holders"].as_array().unwrap_or_else(|| {
        panic!("no cluster.holders array: {seen:#}");
    });
    assert_eq!(holders.len(), 1, "{seen:#}");
    let holder = &holders[0];
    assert_eq!(holder["node"], "a", "{seen:#}");
    assert_eq!(
        holder["pid"],
        active.pid(),
        "the supervising launcher: {seen:#}"
    );
    assert_eq!(holder["this_node"], true, "{seen:#}");
    assert!(
        holder["key"]
            .as_str()
            .is_some_and(|k| k.contains("/sources/")),
        "{seen:#}"
    );
    let ttl_left = holder["ttl_left"].as_f64().unwrap_or(-1.0);
    assert!(
        ttl_left > 0.0 && ttl_left <= TTL.as_secs_f64(),
        "ttl_left {ttl_left}: {seen:#}"
    );
    // `since` stays the seconds it always was; `since_rfc3339` says the
    // same in the form a lock's `since` has, and the text shows that form.
    let since = holder["since"]
        .as_u64()
        .unwrap_or_else(|| panic!("{seen:#}"));
    let rfc3339 = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(since),
    )
    .to_string();
    assert_eq!(holder["since_rfc3339"], rfc3339.as_str(), "{seen:#}");
    assert_eq!(status("b")["cluster"]["holders"][0]["this_node"], false);
    // The text form names the node too.
    status_etcd(&env, &etcd.endpoints(), "b", a.lock_dir())
        .stdout_contains("node a")
        .stdout_contains(active.pid().to_string())
        .stdout_contains(format!("since {rfc3339}"))
        .run();
}

/// A waiter has signals blocked (the supervisor reads them later): a stop
/// request must still end it at once, by the signal, as it would end a
/// local waiter, and release its lease rather than leave it for a TTL.
#[test]
fn a_waiting_launcher_stopped_by_sigterm_dies_of_it_at_once_and_revokes_its_lease() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let [a, b] = Node::each(&env, &etcd.endpoints(), ["a", "b"]);
    let _active = hold(&env, &a, "a");
    let mut waiter = b.start_reader(SOURCE, "b", &["--on-busy", "wait"]);
    assert!(
        wait_until(PATIENCE, || waiter.log().contains("busy in the cluster")),
        "the waiter never said it waits:\n{}",
        waiter.log()
    );
    let leases = || {
        let listed = etcd.etcdctl(&["lease", "list"]);
        // "found N leases", then one ID per line.
        let text = String::from_utf8_lossy(&listed.stdout).into_owned();
        text.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("etcdctl lease list said: {text}"))
    };
    assert_eq!(leases(), 2, "the holder's lease and the waiter's");
    waiter.signal(Signal::SIGTERM);
    // Bound: the revoke's call timeout (TTL/6 = 1 s) and a second for a
    // loaded machine; without the interrupt thread it never dies at all.
    assert_eq!(
        waiter.exit_within(Duration::from_secs(2)),
        Some(128 + 15),
        "a waiter must die of SIGTERM at once:\n{}",
        waiter.log()
    );
    assert_eq!(leases(), 1, "the waiter's lease was left to expire");
    assert!(
        Timeline::read(&env).life("b").is_none(),
        "the stopped waiter ran its program"
    );
}

#[test]
fn status_etcd_on_a_machine_without_a_lock_directory_still_lists_the_cluster() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let a = Node::new(&env, "a", etcd.endpoints());
    let active = hold(&env, &a, "a");
    status_etcd(&env, &etcd.endpoints(), "laptop", env.path("no-such-dir"))
        .stdout_contains("node a")
        .stdout_contains(active.pid().to_string())
        .stderr_contains("showing the cluster only")
        .run();
}

mod credentials {
    use std::path::Path;

    use super::*;

    const PASSWORD: &str = "s3cret-Pa55word-7781";

    /// `--etcd-ca CA --etcd-cert CERT --etcd-key KEY`.
    fn tls_flags(ca: &Path, cert: &Path, key: &Path) -> Vec<String> {
        [
            ("--etcd-ca", ca),
            ("--etcd-cert", cert),
            ("--etcd-key", key),
        ]
        .iter()
        .flat_map(|(flag, path)| [(*flag).to_owned(), path.display().to_string()])
        .collect()
    }

    #[test]
    fn a_node_with_a_trusted_ca_and_a_client_certificate_holds_the_source() {
        let etcd = EtcdServer::start_tls();
        let files = etcd.tls().unwrap();
        let tls = tls_flags(&files.ca, &files.cert, &files.key);
        let env = TestEnv::new();
        let a = Node::new(&env, "a", etcd.endpoints());
        let mut active = a.start(
            a.launch(SOURCE)
                .args(&tls)
                .program(reader_program(&env, "a", 1)),
        );
        assert!(
            started_within(&env, "a", PATIENCE).is_some(),
            "no reader over TLS:\n{}",
            active.log()
        );
        // A second node with the same setup finds it busy: the lock is real.
        Node::new(&env, "b", etcd.endpoints())
            .launch(SOURCE)
            .args(&tls)
            .expect_status(BUSY)
            .program_did_not_run()
            .run();
        assert!(active.running(), "{}", active.log());
    }

    #[test]
    fn a_server_certificate_from_another_ca_is_refused_as_unavailable_pointing_at_etcd_ca() {
        let etcd = EtcdServer::start_tls();
        let files = etcd.tls().unwrap();
        let env = TestEnv::new();
        Node::new(&env, "a", etcd.endpoints())
            .launch(SOURCE)
            .args(tls_flags(&files.other_ca, &files.cert, &files.key))
            .expect_status(UNAVAILABLE)
            .one_line_error("certificate")
            .stderr_contains("--etcd-ca")
            .program_did_not_run()
            .run();
    }

    #[test]
    fn a_client_certificate_the_server_does_not_trust_is_refused_with_77() {
        let etcd = EtcdServer::start_tls();
        let files = etcd.tls().unwrap();
        let env = TestEnv::new();
        // Under TLS 1.3 the server judges the client's certificate after the
        // client has finished its handshake: the refusal arrives as an alert
        // on the first read, or as a reset under the first write. Either
        // way, every time, it is our credentials etcd refused.
        for attempt in 0..5 {
            Node::new(&env, "a", etcd.endpoints())
                .launch(SOURCE)
                .args(tls_flags(&files.ca, &files.other_cert, &files.other_key))
                .label(format!("attempt {attempt}"))
                .expect_status(NO_PERMISSION)
                .one_line_error("credentials")
                .stderr_contains("--etcd-cert")
                .program_did_not_run()
                .run();
        }
    }

    #[test]
    fn a_source_with_credentials_reaches_etcd_and_status_redacted() {
        let etcd = EtcdServer::start();
        let env = TestEnv::new();
        let secret = "XSECRETX";
        let source = format!("http://admin:{secret}pw@10.0.0.5:5004/auto/v5.1?token={secret}tk");
        let a = Node::new(&env, "a", etcd.endpoints());
        let active = a.start_reader(&source, "a", &[]);
        assert!(
            started_within(&env, "a", PATIENCE).is_some(),
            "no reader:\n{}",
            active.log()
        );
        let stored = crate::testenv::describe(&etcd.etcdctl(&["get", "", "--prefix"]));
        assert!(stored.contains("10.0.0.5"), "the holder's record: {stored}");
        assert!(
            !stored.contains(secret),
            "etcd holds a credential: {stored}"
        );
        for (form, holder) in [(None, "node a"), (Some("--json"), "\"node\": \"a\"")] {
            env.command(["status", "--etcd", &etcd.endpoints(), "--lock-dir"])
                .arg(a.lock_dir())
                .args(form)
                .stdout_contains(holder)
                .output_lacks(secret)
                .run();
        }
        assert!(
            !active.log().contains(secret),
            "the launcher's log holds a credential"
        );
    }

    #[test]
    fn an_etcd_url_with_a_password_is_refused_without_echoing_it() {
        let env = TestEnv::new();
        Node::new(&env, "a", "http://root:XSECRETXpw@127.0.0.1:2379")
            .launch(SOURCE)
            .expect_status(64)
            .one_line_error("--etcd")
            .output_lacks("XSECRETX")
            .program_did_not_run()
            .run();
    }

    #[test]
    fn a_wrong_password_is_refused_with_77_and_no_password_appears_anywhere() {
        let mut etcd = EtcdServer::start();
        etcd.enable_auth("ec-launch", PASSWORD);
        let env = TestEnv::new();
        let wrong = "wrong-Pa55word-1234";
        fs::write(env.path("wrong-user"), format!("ec-launch:{wrong}\n")).unwrap();
        fs::write(env.path("user"), format!("ec-launch:{PASSWORD}\n")).unwrap();
        let a = Node::new(&env, "a", etcd.endpoints());
        a.launch(SOURCE)
            .arg("--etcd-user-file")
            .arg(env.path("wrong-user"))
            .expect_status(NO_PERMISSION)
            .one_line_error("credentials")
            .stderr_contains("--etcd-user-file")
            .output_lacks(wrong)
            .program_did_not_run()
            .run();
        // Nor in the debug log.
        a.launch(SOURCE)
            .args(["-vv", "--etcd-user-file"])
            .arg(env.path("wrong-user"))
            .expect_status(NO_PERMISSION)
            .output_lacks(wrong)
            .program_did_not_run()
            .run();
        // The right password: it holds, and the password is nowhere.
        let active = a.start(
            a.launch(SOURCE)
                .arg("--etcd-user-file")
                .arg(env.path("user"))
                .program(reader_program(&env, "a", 1)),
        );
        assert!(
            started_within(&env, "a", PATIENCE).is_some(),
            "no reader with the right password:\n{}",
            active.log()
        );
        let everything = etcd.etcdctl(&["get", "", "--prefix"]);
        let everything = crate::testenv::describe(&everything);
        assert!(
            everything.contains("every-channel"),
            "the holder's key: {everything}"
        );
        assert!(
            !everything.contains(PASSWORD),
            "a value holds the password: {everything}"
        );
        assert!(
            !active.log().contains(PASSWORD),
            "the log holds the password"
        );
        for entry in fs::read_dir(a.lock_dir()).unwrap().flatten() {
            let bytes = fs::read(entry.path()).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(PASSWORD),
                "{} holds the password",
                entry.path().display()
            );
        }
        // status with the same credentials shows the holder, not the password.
        env.command([
            "status",
            "--json",
            "--etcd",
            &etcd.endpoints(),
            "--etcd-user-file",
        ])
        .arg(env.path("user"))
        .arg("--lock-dir")
        .arg(a.lock_dir())
        .stdout_contains("\"node\"")
        .output_lacks(PASSWORD)
        .run();
    }
}
