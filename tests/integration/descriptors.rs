//! Issue 20 item 1 (ECP-0136): the descriptors the program inherits sit
//! out of the way of wrappers. A lock left on descriptor 3, the lowest free
//! one, was dropped by a shell's `exec 3>/dev/null` or `exec 3>&1`, and a
//! second launcher of the same source ran while the first read.

use std::fs;
use std::path::Path;

use crate::testenv::{BUSY, Guard, PATIENCE, TestEnv, holders, streaming_server, wait_until};

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";

fn bash(script: &str) -> Vec<String> {
    vec!["bash".into(), "-c".into(), script.into()]
}

/// Starts `script` (bash) under the lock; it must `touch ready` once it
/// has done what it does to its descriptors, then keep running.
#[track_caller]
fn start(env: &TestEnv, script: &str) -> Guard {
    let program = env.launch(SOURCE).program(bash(script)).spawn();
    assert!(
        wait_until(PATIENCE, || env.path("ready").exists()),
        "the program never got ready"
    );
    program
}

/// A second launcher of the same source is refused while `first` runs.
#[track_caller]
fn duplicate_is_refused(env: &TestEnv, first: &Guard) {
    assert_eq!(
        holders(&env.lock_file_of(SOURCE)),
        vec![i64::from(first.pid())],
        "the program no longer holds its lock"
    );
    env.launch(SOURCE)
        .expect_status(BUSY)
        .program_did_not_run()
        .run();
}

// Failed before the fix: the lock was on descriptor 3, replaced here, and
// the duplicate ran (exit 0).
#[test]
fn a_wrapper_that_reopens_descriptor_3_keeps_the_lock() {
    let env = TestEnv::new();
    let first = start(&env, "exec 3>/dev/null; touch ready; exec sleep 300");
    duplicate_is_refused(&env, &first);
}

#[test]
fn a_wrapper_that_points_descriptor_3_at_its_stdout_keeps_the_lock() {
    let env = TestEnv::new();
    let first = start(&env, "exec 3>&1 4>&2; touch ready; exec sleep 300");
    duplicate_is_refused(&env, &first);
}

#[test]
fn a_wrapper_that_closes_the_low_descriptors_keeps_the_lock() {
    let env = TestEnv::new();
    let first = start(
        &env,
        "for fd in 3 4 5 6 7 8 9; do eval \"exec $fd>&-\"; done; touch ready; exec sleep 300",
    );
    duplicate_is_refused(&env, &first);
}

/// `EC_SOURCE_LOCK_FD` and `EC_TUNER_SLOT_FD`, and what they point at.
fn passed(env: &TestEnv, ulimit: Option<u32>, tuners: bool) -> Vec<String> {
    let script = "{ echo \"$EC_SOURCE_LOCK_FD\"; readlink /proc/$$/fd/$EC_SOURCE_LOCK_FD; \
                  echo \"${EC_TUNER_SLOT_FD:-}\"; \
                  for f in /proc/$$/fd/*; do readlink $f; done | grep -c '[.]lock$\\|[.]slot$'; } > fds.out";
    let mut launch = env.launch(SOURCE).program(TestEnv::sh(script));
    if tuners {
        launch = launch.args(["--tuners", "2"]);
    }
    if let Some(limit) = ulimit {
        launch = launch.through_shell(format!("ulimit -n {limit}; exec \"$@\""));
    }
    launch.run();
    fs::read_to_string(env.path("fds.out"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_lock_and_slot_descriptors_are_the_highest_below_the_limit_and_1024() {
    let env = TestEnv::new();
    let seen = passed(&env, None, true);
    // The test runner's limit is at least 1024 (systemd's and most shells' soft limit).
    assert_eq!(seen[0], "1023", "{seen:?}");
    assert!(
        Path::new(&seen[1]).extension().is_some_and(|x| x == "lock"),
        "{seen:?}"
    );
    assert_eq!(seen[2], "1022", "{seen:?}");
    // The low originals closed at exec: one descriptor each, no more.
    assert_eq!(seen[3], "2", "{seen:?}");
    let seen = passed(&env, Some(64), false);
    assert_eq!(seen[0], "63", "{seen:?}");
    assert!(seen[2].is_empty(), "{seen:?}");
}

#[test]
fn at_a_tiny_descriptor_limit_the_program_still_runs_holding_its_lock() {
    let env = TestEnv::new();
    // At `ulimit -n 5` only descriptors 3 and 4 exist past stdio.
    let first = env
        .launch(SOURCE)
        .program(["sleep", "300"])
        .through_shell("ulimit -n 5; exec \"$@\"")
        .spawn();
    let lock_file = env.lock_file_of(SOURCE);
    assert!(
        wait_until(PATIENCE, || holders(&lock_file)
            == vec![i64::from(first.pid())]),
        "the program never held its lock"
    );
    duplicate_is_refused(&env, &first);
}

// A wrapper that closes every descriptor (`closefrom(3)`, as sudo and
// start-stop-daemon do) cannot be helped: the lock ends. `status
// --readers` says so: the reader is stale (7) and `dropped_lock`.
#[test]
fn a_reader_that_closed_every_descriptor_is_flagged_as_having_dropped_its_lock() {
    let env = TestEnv::new();
    let address = streaming_server();
    let source = format!("http://{address}/auto/v5.1");
    let script = format!(
        "for fd in /proc/$$/fd/*; do n=${{fd##*/}}; [ \"$n\" -gt 2 ] && eval \"exec $n>&-\"; done; \
         exec {{s}}<>/dev/tcp/{}/{}; touch ready; exec cat <&$s >/dev/null",
        address.ip(),
        address.port()
    );
    let reader = env.launch(&source).program(bash(&script)).spawn();
    assert!(wait_until(PATIENCE, || env.path("ready").exists()));
    let pid = u64::from(reader.pid());
    let mut last = serde_json::Value::Null;
    let flagged = wait_until(PATIENCE, || {
        let output = env
            .status()
            .args(["--readers", "--json"])
            .any_status()
            .run();
        last = serde_json::from_str(&output.stdout).unwrap_or_default();
        output.code == Some(7)
            && last["readers"]["endpoints"][0]["connections"]
                .as_array()
                .is_some_and(|c| {
                    c.iter()
                        .any(|r| r["pid"] == pid && r["stale"] == true && r["dropped_lock"] == true)
                })
    });
    assert!(flagged, "{last:#}");
}
