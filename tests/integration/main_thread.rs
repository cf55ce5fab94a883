//! Issue 20 item 3 (ECP-0136): a program whose main thread calls
//! `pthread_exit` while another thread runs on. Its thread-group leader is
//! a zombie with an empty `/proc/<pid>/fd`; the live thread holds the
//! lock, and is named as its holder by `run` and `status`, and as the
//! owner of its connections by `status --readers`.

use std::fs;
use std::path::PathBuf;

use crate::testenv::{
    BUSY, Guard, PATIENCE, TestEnv, build_support_program, require_root, streaming_server,
    wait_until,
};

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";

fn program(env: &TestEnv) -> PathBuf {
    build_support_program(env, "main_thread_exits", None)
}

/// Waits until `pid`'s main thread has exited (state `Z`) while the
/// process lives on.
#[track_caller]
fn wait_for_zombie_leader(pid: u32) {
    let zombie = || {
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
    };
    assert!(
        wait_until(PATIENCE, zombie),
        "pid {pid}'s main thread never exited"
    );
}

// Failed before the fix: the duplicate said "held by a process this user
// cannot see, inherited from exited pid N" and status named no holder.
#[test]
fn the_live_thread_of_a_program_whose_main_thread_exited_is_named_as_the_holder() {
    let env = TestEnv::new();
    let holder = env.launch(SOURCE).program([program(&env)]).spawn();
    wait_for_zombie_leader(holder.pid());
    let pid = holder.pid();
    env.launch(SOURCE)
        .expect_status(BUSY)
        .stderr_contains(format!("held by pid {pid}"))
        .stderr_lacks("inherited from exited pid")
        .stderr_lacks("cannot see")
        .program_did_not_run()
        .run();
    let json = env.status().arg("--json").any_status().run().json();
    assert_eq!(
        json["locks"][0]["holders"][0]["pid"],
        u64::from(pid),
        "{json:#}"
    );
}

fn readers(env: &TestEnv) -> (Option<i32>, serde_json::Value) {
    let outcome = env
        .status()
        .args(["--readers", "--json"])
        .any_status()
        .run();
    (outcome.code, outcome.json())
}

/// The connections of `pid` in a readers report.
fn connections_of(report: &serde_json::Value, pid: u32) -> Vec<serde_json::Value> {
    report["readers"]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["connections"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["pid"] == u64::from(pid))
        .collect()
}

// Failed before the fix: the holder's connection had no owner ("unknown",
// exit 5), and a stale reader whose main thread exited was unknown, not 7.
#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn readers_whose_main_thread_exited_are_accounted_for_and_a_stale_one_exits_7() {
    require_root!("see every process's sockets and descriptors");
    let env = TestEnv::new();
    let address = streaming_server();
    let source = format!("http://{address}/auto/v5.1");
    let binary = program(&env);
    let reader = || {
        vec![
            binary.to_string_lossy().into_owned(),
            address.ip().to_string(),
            address.port().to_string(),
        ]
    };
    let holder = env.launch(&source).program(reader()).spawn();
    wait_for_zombie_leader(holder.pid());
    assert!(
        wait_until(PATIENCE, || connections_of(&readers(&env).1, holder.pid())
            .len()
            == 1),
        "the holder's connection was never attributed to it: {:#}",
        readers(&env).1
    );
    let (code, report) = readers(&env);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        connections_of(&report, holder.pid())[0]["stale"],
        false,
        "{report:#}"
    );

    // The same program outside any lock: a stale reader.
    let stray = Guard::spawn(std::process::Command::new(&binary).args(&reader()[1..]));
    wait_for_zombie_leader(stray.pid());
    assert!(
        wait_until(PATIENCE, || connections_of(&readers(&env).1, stray.pid())
            .len()
            == 1),
        "the stray reader's connection was never attributed to it"
    );
    let (code, report) = readers(&env);
    assert_eq!(code, Some(7), "{report:#}");
    assert_eq!(
        connections_of(&report, stray.pid())[0]["stale"],
        true,
        "{report:#}"
    );
}
