//! Issue #16, item 2 (ECP-0135, section 3): a reader that left the
//! program's process group (a double-forked helper in a session of its own,
//! ignoring SIGTERM, holding the inherited lock descriptor) keeps the
//! cluster keys held until it is dead, on the release path (the program
//! exited) and on the fence path (the lease revoked, etcd frozen). Overlap
//! is judged by the kernel (the readers' flock on a shared tuner file,
//! `cluster_node`); figures are printed as `FIGURE` lines.

use std::time::Duration;

use super::loss::{
    assert_after_lock_delay, assert_fenced_at_once, etcdctl_ok, source_key_and_lease,
};
use super::{SOURCE, assert_fenced_before, outcome_of_waiter, took_over, wait_behind};
use crate::cluster_node::{
    FENCED, Launcher, Node, STOP_GRACE, Timeline, UNAVAILABLE, figure, micros, now_micros, secs,
    started_within, stopped_within,
};
use crate::etcd_server::EtcdServer;
use crate::testenv::{PATIENCE, TestEnv};

/// A program that starts reader `tag` as a helper out of its reach: forked
/// twice (re-parented when its parent exits), in a session of its own
/// (`setsid`), ignoring SIGTERM, holding the inherited lock descriptor.
/// Once the helper reads, the program waits for the file `go` and exits 0,
/// or (`stay`) runs on.
fn helper_program(env: &TestEnv, tag: &str, stay: bool) -> Vec<String> {
    let end = if stay {
        "exec sleep 600".to_owned()
    } else {
        "until [ -e go ]; do sleep 0.02; done; exit 0".to_owned()
    };
    let script = format!(
        r#"cd "$(dirname "$0")" || exit 97
( ( trap '' TERM; exec setsid "$0" {tag} 1 ) & )
until grep -q "^start {tag} " events 2>/dev/null; do sleep 0.02; done
{end}"#
    );
    vec![
        "bash".to_owned(),
        "-c".to_owned(),
        script,
        env.path("reader").display().to_string(),
    ]
}

/// SIGKILLs the helper readers still running when the test ends: they are
/// nobody's child here, and a failed test must leave no reader behind.
struct Helpers<'e>(&'e TestEnv);

impl Drop for Helpers<'_> {
    fn drop(&mut self) {
        for life in Timeline::read(self.0).lives {
            if life.stop.is_none() {
                let pid = nix::unistd::Pid::from_raw(i32::try_from(life.pid).expect("pid"));
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// Starts `node`'s launcher of the helper reader `tag` and waits until it reads.
#[track_caller]
fn hold_with_helper(env: &TestEnv, node: &Node<'_>, tag: &str, stay: bool) -> Launcher {
    node.start_running(
        node.launch(SOURCE).program(helper_program(env, tag, stay)),
        tag,
    )
}

#[test]
fn a_setsid_helper_ignoring_sigterm_is_dead_before_the_standby_starts_after_the_program_exits() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let _helpers = Helpers(&env);
    let [a, b] = Node::each(&env, &etcd.endpoints(), ["a", "b"]);
    let mut active = hold_with_helper(&env, &a, "a", false);
    let mut waiter = wait_behind(&env, &b, "b");
    let exited_at = now_micros();
    std::fs::write(env.path("go"), "").expect("write go");
    assert_eq!(
        active.exit_within(PATIENCE),
        Some(0),
        "the launcher ends with its program's status:\n{}",
        active.log()
    );
    let helper = stopped_within(&env, "a", PATIENCE)
        .unwrap_or_else(|| panic!("the helper outlived its launcher:\n{}", active.log()));
    let took = took_over(&env, &mut waiter, "b");
    let stop = helper.stop.expect("stopped");
    let handover = figure(
        "setsid helper: hand-over (helper dead to standby start)",
        stop,
        &took,
    );
    figure(
        "setsid helper: program exit to standby start",
        exited_at,
        &took,
    );
    assert!(
        handover >= 0,
        "the standby started {:.3} s before the helper died:\n{}",
        secs(-handover),
        active.log()
    );
    // SIGKILL after the stop grace, then a clean release: no lock delay.
    assert!(
        handover < micros(Duration::from_secs(1)),
        "the hand-over after the helper died took {:.3} s",
        secs(handover)
    );
    let helper_lived = i128::try_from(stop).unwrap() - i128::try_from(exited_at).unwrap();
    assert!(
        helper_lived < micros(STOP_GRACE + Duration::from_secs(1)),
        "the helper lived {:.3} s after the program exited, longer than the stop grace",
        secs(helper_lived)
    );
    Timeline::settled(&env).assert_at_most(1);
}

#[test]
fn a_setsid_helper_ignoring_sigterm_is_fenced_with_the_program_when_the_lease_is_revoked() {
    let etcd = EtcdServer::start();
    let env = TestEnv::new();
    let _helpers = Helpers(&env);
    let [a, b] = Node::each(&env, &etcd.endpoints(), ["a", "b"]);
    let mut active = hold_with_helper(&env, &a, "a", true);
    let mut waiter = wait_behind(&env, &b, "b");
    let (_, lease) = source_key_and_lease(&etcd);
    let lost_at = now_micros();
    etcdctl_ok(&etcd, &["lease", "revoke", &lease]);
    let stop = assert_fenced_at_once(&env, &mut active, lost_at);
    let took = took_over(&env, &mut waiter, "b");
    assert_after_lock_delay(
        "setsid helper, lease revoked: hand-over (revoke to the standby's start)",
        &took,
        lost_at,
        stop,
    );
    Timeline::settled(&env).assert_at_most(1);
}

#[test]
fn a_setsid_helper_ignoring_sigterm_is_dead_before_the_earliest_expiry_when_etcd_freezes() {
    let mut etcd = EtcdServer::start();
    let env = TestEnv::new();
    let _helpers = Helpers(&env);
    let [a, b] = Node::each(&env, &etcd.endpoints(), ["a", "b"]);
    let mut active = hold_with_helper(&env, &a, "a", true);
    let mut waiter = wait_behind(&env, &b, "b");
    let frozen_at = now_micros();
    etcd.freeze();
    let stop = assert_fenced_before(&env, &mut active, "a", frozen_at);
    etcd.thaw();
    let (took, _restarted) = match outcome_of_waiter(&env, &mut waiter, "b") {
        Ok(life) => (life, None),
        Err(status) => {
            assert!(
                status == FENCED || status == UNAVAILABLE,
                "{}",
                waiter.log()
            );
            let restarted = b.start_reader(SOURCE, "b-restarted", &["--on-busy", "wait"]);
            let life = started_within(&env, "b-restarted", PATIENCE)
                .unwrap_or_else(|| panic!("the restarted waiter never ran:\n{}", restarted.log()));
            (life, Some(restarted))
        }
    };
    figure(
        "setsid helper, etcd frozen: takeover after the freeze began",
        frozen_at,
        &took,
    );
    assert!(
        took.start > stop,
        "the standby overlapped the fenced helper"
    );
    Timeline::settled(&env).assert_at_most(1);
}
