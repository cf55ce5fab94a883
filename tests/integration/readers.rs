//! `ec-launch status --readers`: who has a TCP connection to a source's
//! endpoint, and whether it holds a lock there. Real processes (bash's
//! `/dev/tcp`) reading from a loopback stand-in server that streams.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::testenv::{
    Guard, Invocation, KillOnDrop, NOBODY, PATIENCE, TestEnv, require_root, wait_until,
};

/// The exit status of a `status` that found a stale reader.
const STALE: i32 = 7;

/// A stand-in tuner: accepts every connection and streams to it until the
/// reader goes away.
struct StandIn {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl StandIn {
    fn start(bind: &str) -> Self {
        let listener = TcpListener::bind(bind).expect("bind the stand-in server");
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let chunk = [0x47u8; 1316];
                    while stream.write_all(&chunk).is_ok() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
            }
        });
        Self { address, accepted }
    }

    /// A source URL of channel `channel` on this stand-in.
    fn source(&self, channel: &str) -> String {
        format!("http://{}/auto/{channel}", self.address)
    }

    /// A shell script that connects to the stand-in and reads it forever.
    /// `{s}<>` lets bash pick a free descriptor (10 up): a fixed `3<>`
    /// would close the inherited lock descriptor and drop the lock.
    fn reader_script(&self) -> String {
        format!(
            "exec {{s}}<>/dev/tcp/{}/{}; exec cat <&$s >/dev/null",
            self.address.ip(),
            self.address.port()
        )
    }

    /// Launches a reader of `source` (a channel of this stand-in) under its
    /// lock and waits until the kernel shows it holding the lock.
    #[track_caller]
    fn hold_reader(&self, env: &TestEnv, source: &str) -> Guard {
        env.hold(source, &bash(&self.reader_script()))
    }

    /// Starts a reader outside any lock and waits until the stand-in has
    /// seen it, the `count`th connection in all.
    #[track_caller]
    fn stray_reader(&self, count: usize) -> Guard {
        let stray =
            Guard::spawn(std::process::Command::new("bash").args(["-c", &self.reader_script()]));
        self.wait_for(count);
        stray
    }

    /// Waits until `count` connections in all have been accepted.
    #[track_caller]
    fn wait_for(&self, count: usize) {
        assert!(
            wait_until(PATIENCE, || self.accepted.load(Ordering::SeqCst) >= count),
            "the stand-in never saw {count} connections"
        );
        // The reader's exec into `cat` follows the connect at once.
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn bash(script: &str) -> Vec<String> {
    vec!["bash".into(), "-c".into(), script.into()]
}

/// The set-up of most tests here: an environment and a stand-in on IPv4
/// loopback.
fn start() -> (TestEnv, StandIn) {
    (TestEnv::new(), StandIn::start("127.0.0.1:0"))
}

/// `ec-launch status --readers --lock-dir <env> [args…]`, exit status 0
/// unless the test says otherwise.
fn readers(env: &TestEnv) -> Invocation<'_> {
    env.status().arg("--readers")
}

/// `readers --json`: its exit status and report, whatever the status.
#[track_caller]
fn readers_json(env: &TestEnv) -> (Option<i32>, serde_json::Value) {
    let outcome = readers(env).arg("--json").any_status().run();
    (outcome.code, outcome.json())
}

/// `readers --json` as [`NOBODY`], who cannot see root's descriptors: the
/// report, once the status says "cannot tell" (5).
#[track_caller]
fn readers_json_as_nobody(env: &TestEnv) -> serde_json::Value {
    readers(env)
        .arg("--json")
        .uid(NOBODY)
        .expect_status(5)
        .run()
        .json()
}

/// The connections of the endpoint `address` in a `readers` report.
fn connections_to(report: &serde_json::Value, address: SocketAddr) -> Vec<serde_json::Value> {
    let endpoints = report["readers"]["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no readers.endpoints: {report:#}"));
    let endpoint = endpoints
        .iter()
        .find(|e| e["endpoint"] == address.to_string())
        .unwrap_or_else(|| panic!("no endpoint {address}: {report:#}"));
    endpoint["connections"].as_array().unwrap().clone()
}

fn of_pid(connections: &[serde_json::Value], pid: u32) -> Vec<serde_json::Value> {
    connections
        .iter()
        .filter(|c| c["pid"] == pid)
        .cloned()
        .collect()
}

/// The one connection `pid` has in `connections`, checked to be held (not
/// stale); `report` is shown on failure.
#[track_caller]
fn held_connection(
    connections: &[serde_json::Value],
    pid: u32,
    report: &serde_json::Value,
) -> serde_json::Value {
    let ours = of_pid(connections, pid);
    assert_eq!(ours.len(), 1, "{report:#}");
    assert_eq!(ours[0]["stale"], false, "{report:#}");
    ours[0].clone()
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn the_lock_holders_connection_is_shown_as_held_with_its_bytes() {
    require_root!("see every process's descriptors");
    let (env, stand_in) = start();
    let source = stand_in.source("v5.1");
    let holder = stand_in.hold_reader(&env, &source);
    stand_in.wait_for(1);

    let (code, report) = readers_json(&env);
    assert_eq!(code, Some(0), "{report:#}");
    let connections = connections_to(&report, stand_in.address);
    let ours = held_connection(&connections, holder.pid(), &report);
    assert_eq!(ours["remote"], stand_in.address.to_string());
    assert_eq!(ours["holds"][0], source, "{report:#}");
    assert!(ours["bytes_received"].as_u64().unwrap() > 0, "{report:#}");
    assert_eq!(report["readers"]["stale"], 0);

    let out = readers(&env).run().stdout;
    assert!(
        out.lines()
            .any(|l| l.starts_with("held") && l.contains(&holder.pid().to_string())),
        "{out}"
    );
    assert!(!out.contains('!'), "{out}");
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn two_holders_of_two_channels_on_one_endpoint_are_both_accounted_for() {
    require_root!("see every process's descriptors");
    let (env, stand_in) = start();
    let first = stand_in.hold_reader(&env, &stand_in.source("v5.1"));
    let second = stand_in.hold_reader(&env, &stand_in.source("v7.1"));
    stand_in.wait_for(2);

    let (code, report) = readers_json(&env);
    assert_eq!(code, Some(0), "{report:#}");
    let connections = connections_to(&report, stand_in.address);
    for (holder, channel) in [(&first, "v5.1"), (&second, "v7.1")] {
        let ours = held_connection(&connections, holder.pid(), &report);
        assert_eq!(ours["holds"][0], stand_in.source(channel));
    }
    let endpoint = &report["readers"]["endpoints"][0];
    assert_eq!(
        endpoint["sources"].as_array().unwrap().len(),
        2,
        "{report:#}"
    );
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_reader_outside_any_lock_is_a_stale_reader_shown_first_with_exit_7() {
    require_root!("see every process's descriptors");
    let (env, stand_in) = start();
    let holder = stand_in.hold_reader(&env, &stand_in.source("v5.1"));
    stand_in.wait_for(1);
    let stray = stand_in.stray_reader(2);

    let (code, report) = readers_json(&env);
    assert_eq!(code, Some(STALE), "{report:#}");
    assert_eq!(report["readers"]["stale"], 1, "{report:#}");
    let connections = connections_to(&report, stand_in.address);
    let stale = of_pid(&connections, stray.pid());
    assert_eq!(stale.len(), 1, "{report:#}");
    assert_eq!(stale[0]["stale"], true);
    assert_eq!(stale[0]["holds"].as_array().unwrap().len(), 0);
    assert_eq!(of_pid(&connections, holder.pid())[0]["stale"], false);

    let out = readers(&env).expect_status(STALE).run().stdout;
    let readers_at = out.find("READER").unwrap_or_else(|| panic!("{out}"));
    let stale_at = out.find("STALE").unwrap_or_else(|| panic!("{out}"));
    let held_at = out[readers_at..]
        .find("\nheld")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(stale_at < readers_at + held_at, "stale not first:\n{out}");
    let warning = out
        .lines()
        .find(|l| l.trim_start().starts_with('!') && l.contains(&stray.pid().to_string()))
        .unwrap_or_else(|| panic!("no ! line for the stale reader:\n{out}"));
    assert!(warning.contains("kill"), "{warning}");
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_stale_reader_of_a_free_source_is_found_too() {
    require_root!("see every process's descriptors");
    let (env, stand_in) = start();
    env.launch(stand_in.source("v5.1")).program(["true"]).run();
    let stray = stand_in.stray_reader(1);

    let (code, report) = readers_json(&env);
    assert_eq!(code, Some(STALE), "{report:#}");
    let stale = of_pid(&connections_to(&report, stand_in.address), stray.pid());
    assert_eq!(stale[0]["stale"], true, "{report:#}");
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn an_ipv6_endpoint_is_watched_like_an_ipv4_one() {
    require_root!("see every process's descriptors");
    let env = TestEnv::new();
    let stand_in = StandIn::start("[::1]:0");
    let holder = stand_in.hold_reader(&env, &stand_in.source("v5.1"));
    stand_in.wait_for(1);
    let stray = stand_in.stray_reader(2);

    let (code, report) = readers_json(&env);
    assert_eq!(code, Some(STALE), "{report:#}");
    let connections = connections_to(&report, stand_in.address);
    assert_eq!(
        of_pid(&connections, holder.pid())[0]["stale"],
        false,
        "{report:#}"
    );
    assert_eq!(
        of_pid(&connections, stray.pid())[0]["stale"],
        true,
        "{report:#}"
    );
    assert_eq!(
        of_pid(&connections, holder.pid())[0]["remote"],
        stand_in.address.to_string()
    );
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_child_that_inherited_the_lock_descriptor_and_owns_the_socket_holds_it() {
    require_root!("see every process's descriptors");
    let (env, stand_in) = start();
    let source = stand_in.source("v5.1");
    // The launched shell forks the reader and exits: only the child has
    // the lock descriptor and the socket.
    let script = format!(
        "( {} ) </dev/null >/dev/null 2>&1 & echo $! > helper.pid",
        stand_in.reader_script()
    );
    env.launch(&source).program(bash(&script)).run();
    let pid: u32 = std::fs::read_to_string(env.path("helper.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _helper = KillOnDrop(pid);
    stand_in.wait_for(1);

    let (code, report) = readers_json(&env);
    assert_eq!(code, Some(0), "{report:#}");
    let ours = held_connection(&connections_to(&report, stand_in.address), pid, &report);
    assert_eq!(ours["holds"][0], source);
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_holder_with_a_second_connection_of_its_own_is_flagged() {
    require_root!("see every process's descriptors");
    let (env, stand_in) = start();
    let (ip, port) = (stand_in.address.ip(), stand_in.address.port());
    let script = format!(
        "exec {{a}}<>/dev/tcp/{ip}/{port} {{b}}<>/dev/tcp/{ip}/{port}; exec cat <&$a >/dev/null"
    );
    let holder = env.hold(&stand_in.source("v5.1"), &bash(&script));
    stand_in.wait_for(2);

    let (code, report) = readers_json(&env);
    // Inside its lock: flagged, not stale.
    assert_eq!(code, Some(0), "{report:#}");
    let ours = of_pid(&connections_to(&report, stand_in.address), holder.pid());
    assert_eq!(ours.len(), 2, "{report:#}");
    assert!(ours.iter().all(|c| c["stale"] == false), "{report:#}");
    let table = readers(&env).any_status().run().stdout;
    assert!(
        table.lines().any(|l| l.trim_start().starts_with('!')
            && l.contains(&holder.pid().to_string())
            && l.contains("2 connections")),
        "{table}"
    );
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn no_credential_of_a_source_is_printed() {
    require_root!("see every process's descriptors");
    let (env, stand_in) = start();
    let source = format!(
        "http://admin:S3CR3T@{}/auto/v5.1?token=T0KEN",
        stand_in.address
    );
    let _holder = stand_in.hold_reader(&env, &source);
    stand_in.wait_for(1);
    let _stray = stand_in.stray_reader(2);

    for args in [&[][..], &["--json"][..]] {
        let output = readers(&env).args(args).expect_status(STALE).run();
        let all = format!("{}{}", output.stdout, output.stderr);
        assert!(all.contains(&stand_in.address.to_string()), "{all}");
        for secret in ["S3CR3T", "T0KEN", "admin"] {
            assert!(!all.contains(secret), "{secret} printed:\n{all}");
        }
    }
}

#[test]
fn a_source_known_only_by_its_key_is_said_to_have_no_endpoint() {
    let env = TestEnv::new();
    env.launch("/dev/null")
        .args(["--key", "tuner-a"])
        .program(["true"])
        .run();

    let (code, report) = readers_json(&env);
    assert_eq!(code, Some(0), "{report:#}");
    let without = report["readers"]["without_endpoint"].as_array().unwrap();
    assert_eq!(without.len(), 1, "{report:#}");
    assert_eq!(without[0]["key"], "tuner-a");
    let table = readers(&env).any_status().run().stdout;
    assert!(
        table.contains("tuner-a") && table.contains("no network endpoint"),
        "{table}"
    );
}

#[test]
fn plain_status_has_no_readers_section() {
    let env = TestEnv::new();
    env.launch("http://127.0.0.1:9/x").program(["true"]).run();
    let report = env.status().arg("--json").any_status().run().json();
    assert!(report.get("readers").is_none(), "{report:#}");
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn for_one_source_another_channels_holder_on_its_endpoint_still_accounts_for_its_connection() {
    require_root!("see every process's descriptors");
    let (env, stand_in) = start();
    let asked = stand_in.source("v5.1");
    env.launch(&asked).program(["true"]).run();
    let other = stand_in.hold_reader(&env, &stand_in.source("v7.1"));
    stand_in.wait_for(1);

    // The asked source is free (3); the connection is the other channel's.
    let report = readers(&env)
        .args(["--json", &asked])
        .expect_status(3)
        .run()
        .json();
    let ours = of_pid(&connections_to(&report, stand_in.address), other.pid());
    assert_eq!(ours[0]["stale"], false, "{report:#}");

    let stray = stand_in.stray_reader(2);
    let report = readers(&env)
        .args(["--json", &asked])
        .expect_status(STALE)
        .run()
        .json();
    let stale = of_pid(&connections_to(&report, stand_in.address), stray.pid());
    assert_eq!(stale[0]["stale"], true, "{report:#}");
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_user_who_cannot_read_the_records_or_the_readers_is_told_unknown_not_clear() {
    require_root!("start readers as root and run status as another user");
    let (env, stand_in) = start();
    let _holder = stand_in.hold_reader(&env, &stand_in.source("v5.1"));
    stand_in.wait_for(1);
    let _stray = stand_in.stray_reader(2);
    // Neither the records (0660) nor root's descriptors are readable: a
    // stale reader may be there, so the answer is "cannot tell" (5).
    let report = readers_json_as_nobody(&env);
    let without = report["readers"]["without_endpoint"].to_string();
    assert!(without.contains("no readable launch record"), "{report:#}");
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_connection_whose_owner_this_user_cannot_see_is_unknown_not_clear() {
    require_root!("start a reader as root and run status as another user");
    let (env, stand_in) = start();
    let source = stand_in.source("v5.1");
    let _holder = stand_in.hold_reader(&env, &source);
    stand_in.wait_for(1);
    // The record is readable, so the endpoint is known; root's
    // descriptors are not, so the connection's owner is not.
    std::fs::set_permissions(
        env.lock_file_of(&source),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let report = readers_json_as_nobody(&env);
    let connections = connections_to(&report, stand_in.address);
    assert_eq!(connections.len(), 1, "{report:#}");
    assert!(connections[0]["pid"].is_null(), "{report:#}");
    assert_eq!(connections[0]["stale"], false, "{report:#}");
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_reader_holding_only_a_tuner_slot_of_the_device_is_accounted_for() {
    require_root!("see every process's descriptors");
    let (env, stand_in) = start();
    // The program lets go of the source lock and keeps its tuner slot.
    let script = format!(
        "eval \"exec $EC_SOURCE_LOCK_FD>&-\"; {}",
        stand_in.reader_script()
    );
    let holder = env
        .launch(stand_in.source("v5.1"))
        .args(["--tuners", "2"])
        .program(bash(&script))
        .spawn();
    stand_in.wait_for(1);

    let (code, report) = readers_json(&env);
    assert_eq!(code, Some(0), "{report:#}");
    let ours = held_connection(
        &connections_to(&report, stand_in.address),
        holder.pid(),
        &report,
    );
    assert!(
        ours["holds"][0].as_str().unwrap().contains("tuner slot"),
        "{report:#}"
    );
    // A slot is not a source of the endpoint.
    let endpoint = &report["readers"]["endpoints"][0];
    assert_eq!(
        endpoint["sources"].as_array().unwrap().len(),
        1,
        "{report:#}"
    );
}
