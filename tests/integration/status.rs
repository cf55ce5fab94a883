//! `ec-launch status`: holders from the kernel, orphans, exit codes, JSON.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::testenv::{Guard, NOBODY, TestEnv, is_root};

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";
const OTHER: &str = "http://10.0.0.5:5004/auto/v4.1";

/// Starts `sleep 300` under the lock of `source`, holding it.
fn hold(env: &TestEnv, source: &str) -> Guard {
    env.hold(source, &["sleep", "300"])
}

#[test]
fn held_and_free_sources_are_listed_with_the_holder_from_the_kernel() {
    let env = TestEnv::new();
    env.launch(OTHER).program(["true"]).run();
    let holder = hold(&env, SOURCE);

    let report = env.status().arg("--json").run().json();
    let locks = report["locks"].as_array().unwrap();
    assert_eq!(locks.len(), 2, "{report:#}");
    let held = locks
        .iter()
        .find(|l| l["key"] == "hdhomerun://10.0.0.5/v5.1")
        .unwrap();
    assert_eq!(held["state"], "held");
    assert_eq!(held["orphaned"], false);
    assert_eq!(
        held["lock_file"],
        env.lock_file_of(SOURCE).to_str().unwrap()
    );
    assert_eq!(held["holders"].as_array().unwrap().len(), 1, "{held:#}");
    assert_eq!(held["holders"][0]["pid"], holder.pid());
    assert_eq!(held["holders"][0]["command"], "sleep");
    assert!(
        held["holders"][0]["since"]
            .as_str()
            .unwrap()
            .starts_with("20")
    );
    assert_eq!(held["metadata"]["pid"], holder.pid());
    let free = locks
        .iter()
        .find(|l| l["key"] == "hdhomerun://10.0.0.5/v4.1")
        .unwrap();
    assert_eq!(free["state"], "free");
    assert_eq!(free["holders"].as_array().unwrap().len(), 0);

    let table = env.status().run();
    let lines: Vec<String> = table.stdout.lines().map(str::to_owned).collect();
    assert!(lines[0].starts_with("STATE"), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("held") && l.contains(&format!("{} sleep", holder.pid()))),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.starts_with("free ")), "{lines:?}");
}

#[test]
fn with_a_source_the_exit_code_says_held_or_free() {
    let env = TestEnv::new();
    let _holder = hold(&env, SOURCE);
    // Any spelling of the source, and its key, find the lock.
    for spelling in [
        SOURCE,
        "http://10.0.0.5:5004/tuner2/v5.1",
        "hdhomerun://10.0.0.5/v5.1",
    ] {
        env.status().arg(spelling).label(spelling).run();
    }
    env.status()
        .arg(OTHER)
        .label("never launched")
        .expect_status(3)
        .run();
    env.launch(OTHER).program(["true"]).run();
    let free = env
        .status()
        .args(["--json", OTHER])
        .label("launched and exited")
        .expect_status(3)
        .run();
    assert_eq!(free.json()["locks"][0]["state"], "free");
}

#[test]
fn a_helper_that_inherited_the_lock_is_named_as_the_holder() {
    let env = TestEnv::new();
    let kill_helper = env.leave_helper_holding(SOURCE);
    let helper = kill_helper.0;

    let report = env.status().args(["--json", SOURCE]).run().json();
    let lock = &report["locks"][0];
    assert_eq!(lock["state"], "held");
    let pids: Vec<u64> = lock["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(
        pids,
        vec![u64::from(helper)],
        "the helper, not the exited launcher: {lock:#}"
    );
    let launcher = lock["metadata"]["pid"].as_u64().unwrap();
    assert_ne!(launcher, u64::from(helper));
    let warnings = lock["warnings"].to_string();
    assert!(
        warnings.contains(&format!("(pid {launcher}) has exited")),
        "{warnings}"
    );
}

#[test]
fn a_lock_file_deleted_while_held_is_reported_as_orphaned_with_exit_4() {
    let env = TestEnv::new();
    let holder = hold(&env, SOURCE);
    let lock_file = env.lock_file_of(SOURCE);
    fs::remove_file(&lock_file).unwrap();

    let report = env.status().arg("--json").expect_status(4).run().json();
    let lock = &report["locks"][0];
    assert_eq!(lock["orphaned"], true, "{report:#}");
    assert_eq!(lock["state"], "held");
    assert_eq!(
        lock["key"], "hdhomerun://10.0.0.5/v5.1",
        "the record is read through the holder's descriptor"
    );
    assert_eq!(lock["lock_file"], lock_file.to_str().unwrap());
    assert_eq!(lock["holders"][0]["pid"], holder.pid());

    env.status()
        .arg(SOURCE)
        .expect_status(4)
        .stdout_contains("ORPHANED")
        .run();
    // An orphan of another source does not answer for this one.
    env.status().arg(OTHER).expect_status(3).run();
}

#[test]
fn no_credential_appears_in_status_output() {
    let env = TestEnv::new();
    let secret = "http://admin:XSECRETXpw@10.0.0.5:5004/auto/v5.1?token=XSECRETXtok";
    let _holder = hold(&env, secret);
    for args in [vec![], vec!["--json"], vec![secret], vec!["--json", secret]] {
        let output = env
            .status()
            .args(&args)
            .label(format!("status {args:?}"))
            .output_lacks("XSECRETX")
            .run();
        let all = format!("{}{}", output.stdout, output.stderr);
        assert!(
            all.contains("***"),
            "the redacted source should be shown: {all}"
        );
    }
}

#[test]
fn an_unreadable_or_missing_lock_directory_has_its_own_exit_code() {
    let env = TestEnv::new();
    env.status()
        .expect_status(66)
        .stderr_starts_with("error: cannot read lock directory")
        .stderr_contains("check --lock-dir")
        .stderr_lines(1)
        .run();

    fs::create_dir(env.lock_dir()).unwrap();
    fs::set_permissions(env.lock_dir(), fs::Permissions::from_mode(0o300)).unwrap();
    let mut denied = env.status();
    if is_root() {
        denied = denied.uid(NOBODY);
        fs::set_permissions(env.lock_dir(), fs::Permissions::from_mode(0o333)).unwrap();
    }
    denied.expect_status(77).run();
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn an_unprivileged_user_is_told_when_other_users_holders_are_invisible() {
    crate::testenv::require_root!("start a holder as root and run status as another user");
    let env = TestEnv::new();
    let _holder = hold(&env, SOURCE);
    fs::set_permissions(env.path(""), fs::Permissions::from_mode(0o755)).unwrap();
    let report = env.status().arg("--json").uid(NOBODY).run().json();
    // The lock table still shows the lock held, and says why holders may be missing.
    assert_eq!(report["locks"][0]["state"], "held", "{report:#}");
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("could not be read") || warnings.contains("hidepid"),
        "{report:#}"
    );
}

#[test]
fn a_fifo_among_the_lock_files_is_listed_as_not_regular_and_never_opened() {
    let env = TestEnv::new();
    env.launch(SOURCE).program(["true"]).run();
    let fifo = env.lock_dir().join("planted.lock");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    // A writer's open(2) returns only once someone opens the FIFO to read:
    // the kernel's own witness that status never opened it.
    let (opened_tx, opened) = std::sync::mpsc::channel();
    let (tid_tx, tid) = std::sync::mpsc::channel();
    let writer_path = fifo.clone();
    std::thread::spawn(move || {
        tid_tx.send(nix::unistd::gettid()).unwrap();
        let writer = fs::OpenOptions::new().write(true).open(writer_path);
        let _ = opened_tx.send(writer.is_ok());
    });
    // Only a writer already waiting can witness an open.
    let wchan = format!("/proc/self/task/{}/wchan", tid.recv().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fs::read_to_string(&wchan).unwrap_or_default() != "wait_for_partner" {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never waited in open(2) on the FIFO ({wchan})"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }

    // Whether a lock is held on a FIFO cannot be told: exit 5.
    let report = env.status().arg("--json").expect_status(5).run().json();
    let planted = report["locks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lock_file"] == fifo.to_str().unwrap())
        .unwrap_or_else(|| panic!("the FIFO is not listed: {report:#}"));
    assert_eq!(planted["state"], "unknown", "{planted:#}");
    assert!(
        planted["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("not a regular file (a FIFO)")),
        "{planted:#}"
    );
    assert!(
        opened.try_recv().is_err(),
        "status opened the FIFO: the blocked writer got through"
    );
    // Release the writer: the test opens it to read itself.
    drop(fs::File::open(&fifo).unwrap());
    assert_eq!(
        opened.recv_timeout(std::time::Duration::from_secs(10)),
        Ok(true)
    );
}
