//! Tuner slots (`run --tuners N --device KEY`, ECP-0132): at most N programs
//! per device, with real launchers, real flock(2) and real signals.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::testenv::{
    BUSY, Guard, KillOnDrop, PATIENCE, TestEnv, describe, holders, kernel_locks, text, wait_until,
};

/// Channel `n` of the device at 10.0.0.5.
fn channel(n: usize) -> String {
    format!("http://10.0.0.5:5004/auto/v{n}.1")
}

/// A program that writes its PID to `<name>.pid` and then runs until
/// `release` appears.
fn held_program(name: &str) -> Vec<String> {
    TestEnv::sh(&format!(
        "echo $$ > {name}.pid; while [ ! -e release ]; do sleep 0.02; done"
    ))
}

/// Launches `program` on `source` with `extra` flags and waits until it runs.
#[track_caller]
fn hold_slot(env: &TestEnv, source: &str, extra: &[&str], name: &str) -> Guard {
    let holder = Guard::spawn(&mut env.run(source, extra, &held_program(name)));
    assert!(
        wait_until(PATIENCE, || env.path(&format!("{name}.pid")).exists()),
        "{name} never started its program"
    );
    holder
}

/// The slot files in the lock directory, sorted.
fn slot_files(env: &TestEnv) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(env.lock_dir())
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "slot"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// PIDs waiting (`->` rows) on any of `files`.
fn waiters(files: &[PathBuf]) -> Vec<i64> {
    let mut pids: Vec<i64> = files
        .iter()
        .flat_map(|f| kernel_locks(f))
        .filter(|l| l.waiting)
        .map(|l| l.pid)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn two_tuners_and_three_sources_run_exactly_two_programs_and_the_third_skips_naming_both_holders() {
    let env = TestEnv::new();
    let first = hold_slot(&env, &channel(1), &["--tuners", "2"], "first");
    let second = hold_slot(&env, &channel(2), &["--tuners", "2"], "second");
    let third = env
        .run(&channel(3), &["--tuners", "2"], &TestEnv::sh("touch ran"))
        .output()
        .unwrap();
    assert_eq!(third.status.code(), Some(BUSY), "{}", describe(&third));
    assert!(
        !env.path("ran").exists(),
        "a third program ran on two tuners"
    );
    let stderr = text(&third.stderr);
    assert_eq!(stderr.lines().count(), 1, "one warning: {stderr}");
    for (slot, holder, source) in [(0, &first, channel(1)), (1, &second, channel(2))] {
        let named = format!("slot {slot} held by pid {} (sh)", holder.pid());
        assert!(stderr.contains(&named), "{named:?} missing: {stderr}");
        assert!(stderr.contains(&source), "{source} missing: {stderr}");
    }
    assert!(stderr.contains("outside any systemd unit"), "{stderr}");
    assert!(stderr.contains("10.0.0.5"), "{stderr}");
    // Exactly two slot files, each held by its program.
    let slots = slot_files(&env);
    assert_eq!(slots.len(), 2, "{slots:?}");
    assert_eq!(holders(&slots[0]), vec![i64::from(first.pid())]);
    assert_eq!(holders(&slots[1]), vec![i64::from(second.pid())]);
}

#[test]
fn the_program_gets_the_device_key_its_slot_and_the_slot_descriptor() {
    let env = TestEnv::new();
    let script = "{ echo \"$EC_DEVICE_KEY\"; echo \"$EC_TUNER_SLOT\"; \
                  readlink /proc/$$/fd/$EC_TUNER_SLOT_FD; readlink /proc/$$/fd/$EC_SOURCE_LOCK_FD; } > env.out";
    // An unusual spelling of the host: the device is the canonical host.
    let output = env
        .run(
            "http://0x0a000005:5004/auto/v7.1",
            &["--tuners", "2"],
            &TestEnv::sh(script),
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let seen = fs::read_to_string(env.path("env.out")).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], "10.0.0.5", "{seen}");
    assert_eq!(lines[1], "0", "{seen}");
    assert!(
        lines[2].ends_with(".tuner0.slot") && lines[2].contains("/locks/10.0.0.5-"),
        "the slot descriptor must survive exec: {seen}"
    );
    assert!(
        Path::new(lines[3]).extension().is_some_and(|x| x == "lock"),
        "{seen}"
    );
    // Any launcher of the host names the same slot files, --device another set.
    let output = env
        .run(
            "hdhomerun://10.0.0.5/v8.1",
            &["--tuners", "2"],
            &TestEnv::sh(script),
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(slot_files(&env).len(), 1);
    let output = env
        .run(
            &channel(7),
            &["--tuners", "2", "--device", "den-box"],
            &TestEnv::sh(script),
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let seen = fs::read_to_string(env.path("env.out")).unwrap();
    assert_eq!(seen.lines().next(), Some("den-box"), "{seen}");
    assert_eq!(slot_files(&env).len(), 2);
    // A launch without --tuners hands on none of a parent's slot variables.
    let output = env
        .run(&channel(9), &[], &TestEnv::sh(script))
        .env("EC_TUNER_SLOT", "5")
        .env("EC_DEVICE_KEY", "parent")
        .env("EC_TUNER_SLOT_FD", "9")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let seen = fs::read_to_string(env.path("env.out")).unwrap();
    assert_eq!(seen.lines().next(), Some(""), "{seen}");
    assert_eq!(seen.lines().nth(1), Some(""), "{seen}");
}

#[test]
fn a_waiter_takes_a_slot_as_soon_as_a_holder_is_sigkilled() {
    let env = TestEnv::new();
    // `sleep` without children: a child would keep the slot after the kill.
    let mut first = Guard::spawn(&mut env.run(&channel(1), &["--tuners", "2"], &["sleep", "300"]));
    let first_pid = i64::from(first.pid());
    let mut first_slot = None;
    assert!(
        wait_until(PATIENCE, || {
            first_slot = slot_files(&env)
                .into_iter()
                .find(|f| holders(f).contains(&first_pid));
            first_slot.is_some()
        }),
        "the first holder never took a slot"
    );
    let first_slot = first_slot.unwrap();
    let _second = hold_slot(&env, &channel(2), &["--tuners", "2"], "second");
    let mut waiter = Guard::spawn(&mut env.run(
        &channel(3),
        &["--tuners", "2", "--on-busy", "wait"],
        &TestEnv::sh("date +%s%N > ran; exec sleep 300"),
    ));
    let waiter_pid = i64::from(waiter.pid());
    // Blocked in flock(2) on both slots: the kernel lists it as a waiter.
    assert!(
        wait_until(PATIENCE, || slot_files(&env).iter().all(|f| kernel_locks(
            f
        )
        .iter()
        .any(|l| l.waiting && l.pid == waiter_pid))),
        "the waiter never blocked in flock on every slot"
    );
    assert!(waiter.running());
    assert!(!env.path("ran").exists());
    let killed_at = now_nanos();
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(
        wait_until(PATIENCE, || fs::read_to_string(env.path("ran"))
            .is_ok_and(|t| t.trim().parse::<u128>().is_ok())),
        "the waiter never ran after a slot was freed"
    );
    let ran_at: u128 = fs::read_to_string(env.path("ran"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // A figure for the README, not an assertion (timing depends on load).
    println!(
        "slot hand-over latency (SIGKILL of a holder to the waiter's program running): {:.1} ms",
        Duration::from_nanos(u64::try_from(ran_at.saturating_sub(killed_at)).unwrap())
            .as_secs_f64()
            * 1e3
    );
    assert!(waiter.running(), "the waiter's program must be running");
    // It holds exactly one slot, the freed one, and no helper thread waits on.
    let slots = slot_files(&env);
    let held_by_waiter: Vec<&PathBuf> = slots
        .iter()
        .filter(|f| holders(f).contains(&waiter_pid))
        .collect();
    assert_eq!(
        held_by_waiter,
        vec![&first_slot],
        "the waiter holds the freed slot only"
    );
    assert!(
        waiters(&slots).is_empty(),
        "no thread of the waiter may wait on after exec"
    );
}

#[test]
fn a_child_that_inherits_the_slot_descriptor_keeps_the_slot_after_its_parent_exits() {
    let env = TestEnv::new();
    let program = TestEnv::sh("sleep 300 </dev/null >/dev/null 2>&1 & echo $! > helper.pid");
    let output = env
        .run(&channel(1), &["--tuners", "1"], &program)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let helper: u32 = fs::read_to_string(env.path("helper.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let helper = KillOnDrop(helper);
    let busy = env
        .run(&channel(2), &["--tuners", "1"], &TestEnv::sh("touch ran"))
        .output()
        .unwrap();
    assert_eq!(busy.status.code(), Some(BUSY), "{}", describe(&busy));
    assert!(
        text(&busy.stderr).contains(&format!("slot 0 held by pid {} (sleep)", helper.0)),
        "{}",
        describe(&busy)
    );
    assert!(!env.path("ran").exists());
    drop(helper);
    let slot = slot_files(&env).remove(0);
    assert!(wait_until(PATIENCE, || holders(&slot).is_empty()));
    let free = env
        .run(&channel(2), &["--tuners", "1"], &["true"])
        .output()
        .unwrap();
    assert_eq!(free.status.code(), Some(0), "{}", describe(&free));
}

#[test]
fn a_slot_wait_timeout_gives_up_with_the_busy_code_without_running() {
    let env = TestEnv::new();
    let _first = hold_slot(&env, &channel(1), &["--tuners", "1"], "first");
    let output = env
        .run(
            &channel(2),
            &[
                "--tuners",
                "1",
                "--on-busy",
                "wait",
                "--wait-timeout",
                "0.3",
            ],
            &TestEnv::sh("touch ran"),
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(BUSY), "{}", describe(&output));
    assert!(
        text(&output.stderr).contains("gave up waiting after 0.3s"),
        "{}",
        describe(&output)
    );
    assert!(!env.path("ran").exists());
}

#[test]
fn launchers_on_256_channels_of_one_device_with_four_tuners_never_run_more_than_four() {
    const LAUNCHERS: usize = 256;
    const TUNERS: usize = 4;
    const ROUNDS: usize = 4;
    let env = TestEnv::new();
    for round in 0..ROUNDS {
        let _ = fs::remove_file(env.path("release"));
        let _ = fs::remove_file(env.path("runs"));
        // Each launcher waits reading a pipe it inherited as stdin; closing
        // the only write end releases all of them at once.
        let (gate, gate_writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut launchers: Vec<Guard> = (0..LAUNCHERS)
            .map(|i| {
                let script = format!(
                    "read _; exec {bin} run --lock-dir {dir} --source {source} --tuners {TUNERS} -- \
                     sh -c 'echo $$ >> runs; while [ ! -e release ]; do sleep 0.02; done'",
                    bin = crate::testenv::BIN,
                    dir = env.lock_dir().display(),
                    source = channel(i),
                );
                let mut command = std::process::Command::new("sh");
                command.arg("-c").arg(&script).current_dir(env.path(""));
                Guard::spawn_with_stdin(&mut command, Stdio::from(gate.try_clone().unwrap()))
            })
            .collect();
        drop(gate);
        drop(gate_writer);
        let mut busy = 0;
        let mut others = Vec::new();
        assert!(
            wait_until(Duration::from_secs(180), || {
                launchers.retain_mut(|l| match l.0.try_wait().unwrap() {
                    None => true,
                    Some(status) if status.code() == Some(BUSY) => {
                        busy += 1;
                        false
                    }
                    Some(status) => {
                        others.push(status.code());
                        false
                    }
                });
                busy + others.len() == LAUNCHERS - TUNERS
            }),
            "round {round}: launchers did not settle ({} left, {busy} busy, others {others:?})",
            launchers.len()
        );
        assert!(
            others.is_empty(),
            "round {round}: unexpected exits {others:?}"
        );
        assert_eq!(launchers.len(), TUNERS, "round {round}: four must run");
        assert!(
            wait_until(PATIENCE, || fs::read_to_string(env.path("runs"))
                .is_ok_and(|r| r.lines().count() >= TUNERS)),
            "round {round}: the four winners never ran"
        );
        let runs = fs::read_to_string(env.path("runs")).unwrap();
        assert_eq!(
            runs.lines().count(),
            TUNERS,
            "round {round}: programs that ran: {runs:?}"
        );
        let slots = slot_files(&env);
        assert_eq!(slots.len(), TUNERS, "round {round}: {slots:?}");
        assert!(
            wait_until(PATIENCE, || slots.iter().all(|s| holders(s).len() == 1)),
            "round {round}: each slot held once"
        );
        fs::write(env.path("release"), "").unwrap();
        for winner in launchers {
            let (code, stderr) = winner.finish();
            assert_eq!(code, Some(0), "round {round}: {stderr}");
        }
    }
}

#[test]
fn launchers_that_disagree_on_the_tuner_count_warn_and_use_the_smaller() {
    let env = TestEnv::new();
    // A record of a past configuration on a free slot does not count.
    let stale = env
        .run(&channel(9), &["--tuners", "3"], &["true"])
        .output()
        .unwrap();
    assert_eq!(stale.status.code(), Some(0), "{}", describe(&stale));
    let agreeing = env
        .run(&channel(8), &["--tuners", "1"], &["true"])
        .output()
        .unwrap();
    assert_eq!(agreeing.status.code(), Some(0), "{}", describe(&agreeing));
    assert!(
        !text(&agreeing.stderr).contains("WARN"),
        "a stale record must not count: {}",
        describe(&agreeing)
    );
    // A holder that says one tuner; a launcher that says two must use one.
    let first = hold_slot(&env, &channel(1), &["--tuners", "1"], "first");
    let output = env
        .run(&channel(2), &["--tuners", "2"], &TestEnv::sh("touch ran"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(BUSY), "{}", describe(&output));
    assert!(
        !env.path("ran").exists(),
        "two programs ran on a 1-tuner device"
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("--tuners 2") && stderr.contains("using 1"),
        "the disagreement is warned about: {stderr}"
    );
    assert!(
        stderr.contains(&format!("slot 0 held by pid {}", first.pid())),
        "{stderr}"
    );
}

#[test]
fn a_duplicate_of_a_held_source_never_takes_a_slot() {
    let env = TestEnv::new();
    let first = hold_slot(&env, &channel(1), &["--tuners", "2"], "first");
    // A duplicate that waits: it waits on the source lock, holding no slot.
    let duplicate = Guard::spawn(&mut env.run(
        &channel(1),
        &["--tuners", "2", "--on-busy", "wait"],
        &TestEnv::sh("touch duplicate-ran"),
    ));
    let lock_file = env.lock_file_of(&channel(1));
    let duplicate_pid = i64::from(duplicate.pid());
    assert!(
        wait_until(PATIENCE, || kernel_locks(&lock_file)
            .iter()
            .any(|l| l.waiting && l.pid == duplicate_pid)),
        "the duplicate never waited on the source lock"
    );
    for slot in slot_files(&env) {
        assert!(
            kernel_locks(&slot).iter().all(|l| l.pid != duplicate_pid),
            "the duplicate touched a slot"
        );
    }
    // So the second tuner is still free for another channel.
    let second = env
        .run(&channel(2), &["--tuners", "2"], &["true"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(0), "{}", describe(&second));
    // And a skipping duplicate says the source is busy, not the device.
    let skipped = env
        .run(&channel(1), &["--tuners", "2"], &["true"])
        .output()
        .unwrap();
    assert_eq!(skipped.status.code(), Some(BUSY), "{}", describe(&skipped));
    assert!(
        text(&skipped.stderr).contains(&format!("source busy: held by pid {}", first.pid())),
        "{}",
        describe(&skipped)
    );
}

#[test]
fn status_groups_slots_by_device_with_holders_and_waiters_in_text_and_json() {
    let env = TestEnv::new();
    let first = hold_slot(&env, &channel(1), &["--tuners", "2"], "first");
    let second = hold_slot(&env, &channel(2), &["--tuners", "2"], "second");
    let waiter = Guard::spawn(&mut env.run(
        &channel(3),
        &["--tuners", "2", "--on-busy", "wait"],
        &["true"],
    ));
    let waiter_pid = i64::from(waiter.pid());
    assert!(
        wait_until(PATIENCE, || waiters(&slot_files(&env)) == vec![waiter_pid]),
        "the waiter never blocked on the slots"
    );
    let status = |json: bool| {
        let mut command = env.ec_launch();
        command.arg("status").arg("--lock-dir").arg(env.lock_dir());
        if json {
            command.arg("--json");
        }
        command.output().unwrap()
    };
    let output = status(false);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let stdout = text(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("10.0.0.5  tuners 2/2 held: "))
        .unwrap_or_else(|| panic!("no device line: {stdout}"));
    assert!(
        line.contains(&format!(
            "slot 0 pid {} sh (no unit, {})",
            first.pid(),
            channel(1)
        )) && line.contains(&format!(
            "slot 1 pid {} sh (no unit, {})",
            second.pid(),
            channel(2)
        )) && line.ends_with("; 1 waiting"),
        "{line}"
    );
    assert!(!stdout.contains("ORPHANED"), "{stdout}");
    // `status SOURCE` keeps its meaning: the source's lock, held (0), and
    // its slot is not taken for a moved lock of the source.
    let one = env
        .ec_launch()
        .arg("status")
        .arg("--lock-dir")
        .arg(env.lock_dir())
        .arg("--json")
        .arg(channel(1))
        .output()
        .unwrap();
    assert_eq!(one.status.code(), Some(0), "{}", describe(&one));
    let one: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(one["locks"].as_array().unwrap().len(), 1, "{one:#}");
    assert_eq!(one["locks"][0]["orphaned"], false, "{one:#}");
    assert!(
        !stdout.contains(".slot"),
        "slot files are not source locks: {stdout}"
    );

    let output = status(true);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // The three source locks, as before: the waiter holds its source's.
    let locks = json["locks"].as_array().unwrap();
    assert_eq!(locks.len(), 3, "{json:#}");
    assert!(
        locks
            .iter()
            .all(|l| l["state"] == "held" && l["orphaned"] == false)
    );
    assert!(
        locks.iter().all(|l| l["metadata"].get("tuners").is_none()),
        "source lock records keep their fields: {json:#}"
    );
    let devices = json["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{json:#}");
    let device = &devices[0];
    assert_eq!(device["device"], "10.0.0.5");
    assert_eq!(device["tuners"], 2);
    assert_eq!(device["held"], 2);
    assert_eq!(device["waiting"], 1);
    let slots = device["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 2);
    for (index, (slot, (holder, source))) in slots
        .iter()
        .zip([(&first, channel(1)), (&second, channel(2))])
        .enumerate()
    {
        assert_eq!(slot["slot"], index);
        assert_eq!(slot["state"], "held");
        assert_eq!(slot["source"], source.as_str());
        assert_eq!(slot["holders"][0]["pid"], holder.pid());
        assert_eq!(slot["metadata"]["tuners"], 2);
        assert_eq!(slot["metadata"]["device"], "10.0.0.5");
        assert!(Path::new(slot["slot_file"].as_str().unwrap()).exists());
    }
}

#[test]
fn tuner_flags_that_cannot_be_used_are_refused_before_the_lock_directory_is_touched() {
    let env = TestEnv::new();
    for (extra, code, message) in [
        (&["--tuners", "0"][..], 2, "--tuners"),
        (&["--tuners", "two"][..], 2, "--tuners"),
        (&["--tuners", "65"][..], 2, "--tuners"),
        (&["--device", "box"][..], 2, "--tuners"),
        (&["--tuners", "2", "--device", ""][..], 2, "--device"),
        (
            &["--tuners", "2", "--device", "admin:S3CR3T@10.0.0.5"][..],
            2,
            "--device",
        ),
        (&["--tuners", "auto"][..], 64, "--tuners auto"),
    ] {
        let output = env
            .run(&channel(1), extra, &TestEnv::sh("touch ran"))
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(code),
            "{extra:?}: {}",
            describe(&output)
        );
        assert!(
            text(&output.stderr).contains(message),
            "{extra:?}: {}",
            describe(&output)
        );
        assert!(!env.path("ran").exists());
        assert!(
            !env.lock_dir().exists(),
            "{extra:?} touched the lock directory"
        );
    }
    // A source without a host names no device: --device is needed.
    let output = env
        .run("/dev/null", &["--tuners", "2"], &TestEnv::sh("touch ran"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64), "{}", describe(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.lines().count() == 1 && stderr.contains("--device"),
        "{stderr}"
    );
    assert!(!env.lock_dir().exists());
    // With --key, the device is still the network source's host.
    let script = "echo \"$EC_DEVICE_KEY\" > env.out";
    let output = env
        .run(
            &channel(1),
            &["--key", "studio-a", "--tuners", "2"],
            &TestEnv::sh(script),
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(
        fs::read_to_string(env.path("env.out")).unwrap(),
        "10.0.0.5\n"
    );
}
