//! Issue #16, item 1 (ECP-0135, sections 1 and 2): a holder whose key or
//! lease goes away early, by a hand revoke, a hand delete, a write over
//! its key, or an etcd that comes back empty, older or as another cluster,
//! is fenced at once; and a launcher that takes a key after such an unclean
//! loss, or finds it free, starts its program only after the lock delay
//! (stop grace + 1 s margin), while a clean stop still hands over at once.
//! Overlap is judged by the kernel (the readers' flock on a shared tuner
//! file, `cluster_node`); figures are printed as `FIGURE` lines.

use std::time::Duration;

use base64::Engine as _;
use nix::sys::signal::Signal;

use super::{SOURCE, hold, took_over, wait_behind};
use crate::cluster_node::{
    FENCED, Launcher, Life, MARGIN, Node, STOP_GRACE, Timeline, UNAVAILABLE, figure, micros,
    now_micros, reader_program, secs, started_within, status_etcd, stopped_within,
};
use crate::etcd_server::EtcdServer;
use crate::testenv::{PATIENCE, TestEnv, text, wait_until};

/// The lock delay of the tests' launchers: stop grace + margin.
pub(super) const LOCK_DELAY: Duration =
    Duration::from_secs(STOP_GRACE.as_secs() + MARGIN.as_secs());

/// Every source key lives under this.
const SOURCES: &str = "/every-channel/ec-launch/v1/sources/";

/// The one source key held, and its lease in `etcdctl`'s words (hex).
#[track_caller]
pub(super) fn source_key_and_lease(etcd: &EtcdServer) -> (String, String) {
    let got = etcd.etcdctl(&["get", "--prefix", SOURCES, "-w", "json"]);
    assert!(got.status.success(), "{}", text(&got.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&got.stdout).expect("etcdctl json");
    let kv = &answer["kvs"][0];
    let key = base64::engine::general_purpose::STANDARD
        .decode(kv["key"].as_str().expect("a source key is held"))
        .expect("base64 key");
    let lease = kv["lease"].as_i64().expect("the key has a lease");
    (
        String::from_utf8(key).expect("UTF-8 key"),
        format!("{lease:x}"),
    )
}

#[track_caller]
pub(super) fn etcdctl_ok(etcd: &EtcdServer, args: &[&str]) -> String {
    let out = etcd.etcdctl(args);
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The holder's reader, stopped: it must be dead before any waiter may
/// start (the loss + the lock delay), and the holder exits 76.
#[track_caller]
pub(super) fn assert_fenced_at_once(env: &TestEnv, active: &mut Launcher, lost_at: u128) -> u128 {
    let stopped = stopped_within(env, "a", PATIENCE)
        .unwrap_or_else(|| panic!("the holder's reader still runs:\n{}", active.log()));
    let stop = stopped.stop.expect("stopped");
    let after = i128::try_from(stop).unwrap() - i128::try_from(lost_at).unwrap();
    eprintln!(
        "FIGURE loss: the holder's reader dead {:.3} s after the loss",
        secs(after)
    );
    assert!(
        after < micros(LOCK_DELAY),
        "the holder's reader lived {:.3} s after its key was lost, longer than the lock delay:\n{}",
        secs(after),
        active.log()
    );
    assert_eq!(
        active.exit_within(PATIENCE),
        Some(FENCED),
        "the holder's status:\n{}",
        active.log()
    );
    stop
}

/// The waiter started only after the lock delay from `freed_at` (it took
/// the key after that instant), and after the holder's reader stopped.
#[track_caller]
pub(super) fn assert_after_lock_delay(what: &str, took: &Life, freed_at: u128, holder_stop: u128) {
    let delay = figure(what, freed_at, took);
    assert!(
        delay >= micros(LOCK_DELAY),
        "the waiter started {:.3} s after the key was freed, inside the lock delay of {} s",
        secs(delay),
        LOCK_DELAY.as_secs()
    );
    assert!(
        took.start > holder_stop,
        "the waiter started before the holder's reader stopped"
    );
}

/// A holder `a` and a waiter `b`; `lose` takes the holder's key or lease
/// away and returns the instant from which the waiter may take the key.
/// The holder is fenced at once, the waiter runs after the lock delay, and
/// the kernel never saw two readers.
fn a_lost_key_fences_the_holder_and_the_waiter_waits(
    what: &str,
    lose: impl FnOnce(&EtcdServer, &mut Launcher) -> (u128, u128),
) {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let [a, b] = Node::each(&env, &etcd.endpoints(), ["a", "b"]);
    let mut active = hold(&env, &a, "a");
    let mut waiter = wait_behind(&env, &b, "b");
    let (lost_at, freed_at) = lose(&etcd, &mut active);
    let stop = assert_fenced_at_once(&env, &mut active, lost_at);
    let took = took_over(&env, &mut waiter, "b");
    assert_after_lock_delay(
        &format!("{what}: hand-over (key freed to the waiter's start)"),
        &took,
        freed_at,
        stop,
    );
    assert!(
        waiter.log().contains("lock delay"),
        "the waiter did not say it waits the lock delay:\n{}",
        waiter.log()
    );
    Timeline::settled(&env).assert_at_most(1);
}

#[test]
fn a_hand_revoke_of_the_holders_lease_fences_it_at_once_and_the_waiter_waits_the_lock_delay() {
    a_lost_key_fences_the_holder_and_the_waiter_waits("lease revoked by hand", |etcd, _| {
        let (_, lease) = source_key_and_lease(etcd);
        let at = now_micros();
        etcdctl_ok(etcd, &["lease", "revoke", &lease]);
        (at, at)
    });
}

#[test]
fn a_hand_delete_of_the_holders_key_fences_it_at_once_and_the_waiter_waits_the_lock_delay() {
    a_lost_key_fences_the_holder_and_the_waiter_waits("key deleted by hand", |etcd, _| {
        let (key, _) = source_key_and_lease(etcd);
        let at = now_micros();
        etcdctl_ok(etcd, &["del", &key]);
        (at, at)
    });
}

#[test]
fn a_put_over_the_holders_key_fences_it_at_once_and_the_waiter_waits_for_that_key_too() {
    a_lost_key_fences_the_holder_and_the_waiter_waits("key written over by hand", |etcd, a| {
        let (key, _) = source_key_and_lease(etcd);
        // Another lease on the key: the waiter cannot take it while it lives.
        let granted = etcdctl_ok(etcd, &["lease", "grant", "60"]);
        let lease = granted
            .split_whitespace()
            .nth(1)
            .expect("lease ID")
            .to_owned();
        let at = now_micros();
        etcdctl_ok(
            etcd,
            &[
                "put",
                &key,
                "an operator's value",
                &format!("--lease={lease}"),
            ],
        );
        assert!(
            wait_until(PATIENCE, || !a.running()),
            "the holder never noticed:\n{}",
            a.log()
        );
        let freed = now_micros();
        etcdctl_ok(etcd, &["lease", "revoke", &lease]);
        (at, freed)
    });
}

/// `before` on a fresh etcd; a holder `a` and a waiter `b`; `go_back`
/// makes etcd lose or rewind its history; then a fresh node `c` starts.
/// The holder is fenced at once, whoever runs next runs only after the
/// lock delay, and the kernel never saw two readers. The waiter may exit 69
/// while etcd is down (etcd unreachable while it watches, by the contract;
/// systemd restarts it).
fn etcd_that_goes_back_fences_the_holder(
    what: &str,
    before: impl FnOnce(&EtcdServer),
    go_back: impl FnOnce(&mut EtcdServer),
) {
    let mut etcd = EtcdServer::start();
    before(&etcd);
    let env = TestEnv::new();
    let [a, b, c] = Node::each(&env, &etcd.endpoints(), ["a", "b", "c"]);
    let mut active = hold(&env, &a, "a");
    let mut waiter = wait_behind(&env, &b, "b");
    let down_at = now_micros();
    go_back(&mut etcd);
    let back_at = now_micros();
    eprintln!(
        "FIGURE {what}: etcd answered again {:.3} s after it went down",
        secs(i128::try_from(back_at - down_at).unwrap())
    );
    let mut fresh = c.start_reader(SOURCE, "c", &["--on-busy", "wait"]);
    let stop = assert_fenced_at_once(&env, &mut active, back_at);
    let mut next = None;
    wait_until(PATIENCE, || {
        let timeline = Timeline::read(&env);
        next = timeline.life("b").or_else(|| timeline.life("c")).cloned();
        next.is_some()
    });
    let next = next.unwrap_or_else(|| {
        panic!(
            "nobody ran after etcd came back:\n--- b ({:?}) ---\n{}\n--- c ({:?}) ---\n{}",
            waiter.exit_within(Duration::ZERO),
            waiter.log(),
            fresh.exit_within(Duration::ZERO),
            fresh.log()
        )
    });
    let runner = if next.tag == "b" { &waiter } else { &fresh };
    // It took the key once etcd answered: not before `down_at`.
    assert_after_lock_delay(
        &format!(
            "{what}: hand-over (etcd down to the next start, reader {})",
            next.tag
        ),
        &next,
        down_at,
        stop,
    );
    assert!(
        runner.log().contains("lock delay"),
        "the next holder did not wait the lock delay:\n{}",
        runner.log()
    );
    if let Some(status) = waiter.exit_within(Duration::ZERO) {
        assert!(
            status == UNAVAILABLE || status == FENCED,
            "the waiter exited {status}:\n{}",
            waiter.log()
        );
    }
    Timeline::settled(&env).assert_at_most(1);
}

#[test]
fn etcd_restarted_empty_fences_the_holder_at_once_and_the_next_holder_waits_the_lock_delay() {
    etcd_that_goes_back_fences_the_holder(
        "etcd restarted empty",
        |_| {},
        EtcdServer::restart_empty,
    );
}

#[test]
fn etcd_restored_from_an_older_snapshot_fences_the_holder_and_the_next_waits_the_lock_delay() {
    let snapshots = tempfile::tempdir().expect("tempdir");
    let snapshot = snapshots.path().join("before.db");
    // A backup of the store before anyone held the source: restored, etcd
    // goes back to a revision below the holder's take, with the same
    // cluster ID (same name, peer URL and token).
    etcd_that_goes_back_fences_the_holder(
        "etcd restored from a backup",
        |etcd| {
            etcdctl_ok(etcd, &["put", "/every-channel/unrelated", "v"]);
            etcd.snapshot_save(&snapshot);
        },
        |etcd| etcd.restore(&snapshot),
    );
}

#[test]
fn etcd_replaced_by_another_cluster_fences_the_holder_and_the_next_waits_the_lock_delay() {
    etcd_that_goes_back_fences_the_holder(
        "etcd replaced by another cluster",
        |_| {},
        EtcdServer::restart_as_another_cluster,
    );
}

#[test]
fn a_fresh_take_of_a_free_key_waits_the_lock_delay_before_its_program_starts() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let a = Node::new(&env, "a", etcd.endpoints());
    let launched_at = now_micros();
    let mut launcher = a.start_reader(SOURCE, "a", &[]);
    let life = started_within(&env, "a", PATIENCE)
        .unwrap_or_else(|| panic!("never ran:\n{}", launcher.log()));
    let delay = figure("fresh take: launch to start", launched_at, &life);
    assert!(
        delay >= micros(LOCK_DELAY),
        "a key found free ran its program {:.3} s after the launch, inside the lock delay",
        secs(delay)
    );
    assert!(launcher.log().contains("lock delay"), "{}", launcher.log());
    launcher.signal(Signal::SIGTERM);
    assert_eq!(launcher.exit_within(PATIENCE), Some(128 + 15));
}

/// Issue #16 item 10: etcd grants whole seconds, so a fractional TTL is
/// refused before anything is locked (it used to pass the budget on the
/// fraction, get 3 s from etcd, and fence a healthy program every time).
#[test]
fn a_fractional_etcd_ttl_is_refused_with_64_naming_whole_seconds() {
    let env = TestEnv::new();
    env.launch(SOURCE)
        .args(["--etcd", "http://127.0.0.1:9", "--node", "a"])
        .args(["--etcd-ttl", "3.9", "--etcd-stop-grace", "0.9"])
        .expect_status(64)
        .one_line_error("--etcd-ttl 3.9")
        .stderr_contains("whole")
        .stderr_contains("--etcd-ttl 4")
        .program_did_not_run()
        .run();
}

/// Issue #16 item 12: etcd unreachable, `status --etcd` names the cause,
/// the endpoint and what to do, and keeps `cluster` in `--json`.
#[test]
fn status_etcd_with_etcd_unreachable_names_the_cause_the_endpoint_and_what_to_do() {
    let env = TestEnv::new();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let status = |json: bool| {
        status_etcd(&env, &dead, "laptop", env.lock_dir())
            .args(json.then_some("--json"))
            .expect_status(UNAVAILABLE)
    };
    status(false)
        .stderr_contains("cannot ask etcd for the cluster's holders: cannot reach etcd at")
        .stderr_contains(&dead)
        .stderr_contains("etcdctl endpoint health")
        .run();
    let seen = status(true).run().json();
    let error = seen["cluster"]["error"].as_str().unwrap_or_else(|| {
        panic!("no cluster.error: {seen:#}");
    });
    assert!(error.contains(&dead), "{error}");
    assert!(error.contains("etcdctl endpoint health"), "{error}");
    assert_eq!(seen["cluster"]["node"], "laptop", "{seen:#}");
    assert!(
        seen["cluster"].get("holders").is_none(),
        "no holders are claimed when etcd was not asked: {seen:#}"
    );
}

/// Issue #16 item 12: a key under the prefix without a lease (written by
/// hand) is not "lease expired": it never expires.
#[test]
fn status_etcd_says_a_key_without_a_lease_was_written_by_hand_and_never_expires() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let key = format!("{SOURCES}hand-written");
    etcdctl_ok(
        &etcd,
        &[
            "put",
            &key,
            r#"{"node":"ops","unit":null,"pid":1,"boot_id":null,"since":1,"source":"x","version":"0"}"#,
        ],
    );
    let status = |json: bool| {
        status_etcd(&env, &etcd.endpoints(), "a", env.lock_dir()).args(json.then_some("--json"))
    };
    status(false)
        .stdout_contains("no lease: written by hand, never expires")
        .stderr_lacks("lease expired")
        .run();
    let seen = status(true).run().json();
    let holder = &seen["cluster"]["holders"][0];
    assert_eq!(holder["lease_state"], "none", "{seen:#}");
    assert!(holder["ttl_left"].is_null(), "{seen:#}");
}

/// A relay to a real etcd that passes every request on except the txn,
/// which it answers with `{}`: an answer that cannot be understood (a
/// broken proxy or gateway), persistently. Threads end with the process.
struct TxnMangler {
    url: String,
}

impl TxnMangler {
    fn start(upstream: &str) -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let upstream: std::net::SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("upstream address");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                std::thread::spawn(move || -> std::io::Result<()> {
                    let mut reader = BufReader::new(client.try_clone()?);
                    let mut head = String::new();
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line)? == 0 {
                            return Ok(());
                        }
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                        // One request per connection: the answer says so.
                        if line.to_ascii_lowercase().starts_with("connection:") {
                            continue;
                        }
                        if line == "\r\n" {
                            head.push_str("Connection: close\r\n\r\n");
                            break;
                        }
                        head.push_str(&line);
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body)?;
                    let mut client = client;
                    if head.starts_with("POST /v3/kv/txn ") {
                        client.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                        )?;
                        return Ok(());
                    }
                    let mut server = std::net::TcpStream::connect(upstream)?;
                    server.write_all(head.as_bytes())?;
                    server.write_all(&body)?;
                    std::io::copy(&mut server, &mut client)?;
                    Ok(())
                });
            }
        });
        Self { url }
    }
}

/// Issue #16 item 12: a txn answer that can never be understood used to
/// make `run` loop grant/txn/revoke about 7 times a second, with a WARN
/// each, forever. It backs off and gives up with 69 after a bound.
#[test]
fn a_txn_answer_that_is_never_usable_backs_off_and_gives_up_with_69() {
    let etcd = EtcdServer::start();
    let mangler = TxnMangler::start(&etcd.endpoints());
    let env = TestEnv::new();
    let a = Node::new(&env, "a", mangler.url.clone());
    let started = std::time::Instant::now();
    let mut launcher = a.start(a.launch(SOURCE));
    let status = launcher.exit_within(Duration::from_secs(40));
    let took = started.elapsed();
    let log = launcher.log();
    assert_eq!(status, Some(UNAVAILABLE), "after {took:?}:\n{log}");
    assert!(!env.path("ran").exists(), "the program ran");
    let start_overs = log
        .matches("revoking the lease and taking the keys again")
        .count();
    eprintln!(
        "FIGURE unusable txn answers: gave up after {took:.1?} and {start_overs} start-overs"
    );
    assert!(
        (1..=8).contains(&start_overs),
        "{start_overs} start-overs:\n{log}"
    );
    assert!(log.contains("gave up"), "{log}");
    // Nothing left behind in etcd: every lease granted was revoked.
    let leases = etcdctl_ok(&etcd, &["lease", "list"]);
    assert!(leases.starts_with("found 0 leases"), "{leases}");
}

/// Issue #16 item 1's `status`: the holder's node showed its local lock
/// held and the cluster key held by another node, exit 0, no warning.
#[test]
fn status_etcd_warns_when_a_source_held_here_has_its_cluster_key_held_by_another_node() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let b = Node::new(&env, "b", etcd.endpoints());
    let _cluster_holder = hold(&env, &b, "b");
    // This node reads the same source without the cluster's key.
    let _local = env.hold(SOURCE, &["sleep", "600"]);
    status_etcd(&env, &etcd.endpoints(), "a", env.lock_dir())
        .arg(SOURCE)
        .stderr_contains(
            "is held on this node (its local lock) while its cluster key is held by node b",
        )
        .stderr_contains("two readers")
        .run();
}

/// A holder `a` whose reader ignores SIGTERM (it dies only at the SIGKILL a
/// stop grace after its fence) loses its lease by hand. Of two waiters, the
/// one that takes the key is stopped (SIGTERM) during its lock delay: it
/// lets go of a key it held for no program of its own, but the previous
/// holder's reader may still run, so its release is no clean hand-over.
/// The other waiter waits its own lock delay, and the kernel never saw two
/// readers.
#[test]
fn a_waiter_stopped_during_its_lock_delay_hands_the_next_one_no_clean_release() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let [a, b, c] = Node::each(&env, &etcd.endpoints(), ["a", "b", "c"]);
    // An ignored SIGTERM survives exec (signal(7)): the reader lives on
    // until the fence's SIGKILL.
    let mut stubborn: Vec<String> = ["bash", "-c", r#"trap '' TERM; exec "$@""#, "bash"]
        .map(str::to_owned)
        .to_vec();
    stubborn.extend(reader_program(&env, "a", 1));
    let active = a.start(a.launch(SOURCE).program(stubborn));
    assert!(
        started_within(&env, "a", PATIENCE).is_some(),
        "the holder never ran:\n{}",
        active.log()
    );
    let mut b_waiter = wait_behind(&env, &b, "b");
    let mut c_waiter = wait_behind(&env, &c, "c");
    let (_, lease) = source_key_and_lease(&etcd);
    let lost_at = now_micros();
    etcdctl_ok(&etcd, &["lease", "revoke", &lease]);
    // Whoever took the key says it waits the lock delay: stop it then.
    let mut taker = None;
    wait_until(PATIENCE, || {
        taker = if b_waiter.log().contains("lock delay") {
            Some("b")
        } else if c_waiter.log().contains("lock delay") {
            Some("c")
        } else {
            None
        };
        taker.is_some()
    });
    let (stopped, stopped_tag, next, next_tag) = match taker {
        Some("b") => (&mut b_waiter, "b", &mut c_waiter, "c"),
        Some(_) => (&mut c_waiter, "c", &mut b_waiter, "b"),
        None => panic!(
            "no waiter took the key:\n--- b ---\n{}\n--- c ---\n{}",
            b_waiter.log(),
            c_waiter.log()
        ),
    };
    stopped.signal(Signal::SIGTERM);
    let stopped_at = now_micros();
    assert!(
        stopped.exit_within(PATIENCE).is_some(),
        "the stopped waiter did not end:\n{}",
        stopped.log()
    );
    assert!(
        Timeline::read(&env).life(stopped_tag).is_none(),
        "the taker's program ran: it was stopped after its lock delay, not inside it:\n{}",
        stopped.log()
    );
    let holder_stop = stopped_within(&env, "a", PATIENCE)
        .and_then(|life| life.stop)
        .unwrap_or_else(|| panic!("the holder's reader still runs:\n{}", active.log()));
    eprintln!(
        "FIGURE stopped in its lock delay: the old holder's reader dead {:.3} s after the loss",
        secs(i128::try_from(holder_stop).unwrap() - i128::try_from(lost_at).unwrap())
    );
    // The case this is about: the taker let go while the old reader ran.
    assert!(
        stopped_at < holder_stop,
        "the taker was stopped only after the old holder's reader had died"
    );
    // The next one either starts, or finds the tuner still taken (the
    // kernel's word for two readers).
    wait_until(PATIENCE, || {
        let timeline = Timeline::read(&env);
        timeline.life(next_tag).is_some() || !timeline.overlaps.is_empty()
    });
    Timeline::read(&env).assert_at_most(1);
    let took = took_over(&env, next, next_tag);
    assert_after_lock_delay(
        "stopped in its lock delay: hand-over (the taker stopped to the next start)",
        &took,
        stopped_at,
        holder_stop,
    );
    Timeline::settled(&env).assert_at_most(1);
}
