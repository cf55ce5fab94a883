//! Tuner slots (`run --tuners N --device KEY`, ECP-0132): at most N programs
//! per device, with real launchers, real flock(2) and real signals.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::testenv::{
    BUSY, Guard, Invocation, KillOnDrop, PATIENCE, TestEnv, holders, kernel_locks,
    release_together, settle, wait_until,
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
    let holder = env
        .launch(source)
        .args(extra)
        .program(held_program(name))
        .spawn();
    assert!(
        wait_until(PATIENCE, || env.path(&format!("{name}.pid")).exists()),
        "{name} never started its program"
    );
    holder
}

/// Launches `sleep` on channel 1 with `--tuners 2` and waits until it
/// holds a slot; returns it and its slot file. `sleep` has no
/// children: a child would keep the slot after the launch is killed.
#[track_caller]
fn sleep_on_a_slot(env: &TestEnv, who: &str) -> (Guard, PathBuf) {
    let sleeper = env
        .launch(channel(1))
        .args(["--tuners", "2"])
        .program(["sleep", "300"])
        .spawn();
    let pid = i64::from(sleeper.pid());
    let mut slot = None;
    assert!(
        wait_until(PATIENCE, || {
            slot = slot_files(env)
                .into_iter()
                .find(|f| holders(f).contains(&pid));
            slot.is_some()
        }),
        "{who} never took a slot"
    );
    (sleeper, slot.expect("found"))
}

/// A launch on `source` with `args` (`--tuners N` and the like) that must
/// exit busy without running its program; the test adds what it must say.
fn busy_launch<'e>(env: &'e TestEnv, source: &str, args: &[&str]) -> Invocation<'e> {
    env.launch(source)
        .args(args)
        .expect_status(BUSY)
        .program_did_not_run()
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
    let mut third = env
        .launch(channel(3))
        .args(["--tuners", "2"])
        .expect_status(BUSY)
        .stderr_lines(1)
        .stderr_contains("outside any systemd unit")
        .stderr_contains("10.0.0.5")
        .program_did_not_run();
    for (slot, holder, source) in [(0, &first, channel(1)), (1, &second, channel(2))] {
        third = third
            .stderr_contains(format!("slot {slot} held by pid {} (sh)", holder.pid()))
            .stderr_contains(source);
    }
    third.run();
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
    env.launch("http://0x0a000005:5004/auto/v7.1")
        .args(["--tuners", "2"])
        .program(TestEnv::sh(script))
        .run();
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
    env.launch("hdhomerun://10.0.0.5/v8.1")
        .args(["--tuners", "2"])
        .program(TestEnv::sh(script))
        .run();
    assert_eq!(slot_files(&env).len(), 1);
    env.launch(channel(7))
        .args(["--tuners", "2", "--device", "den-box"])
        .program(TestEnv::sh(script))
        .run();
    let seen = fs::read_to_string(env.path("env.out")).unwrap();
    assert_eq!(seen.lines().next(), Some("den-box"), "{seen}");
    assert_eq!(slot_files(&env).len(), 2);
    // A launch without --tuners hands on none of a parent's slot variables.
    env.launch(channel(9))
        .program(TestEnv::sh(script))
        .env("EC_TUNER_SLOT", "5")
        .env("EC_DEVICE_KEY", "parent")
        .env("EC_TUNER_SLOT_FD", "9")
        .run();
    let seen = fs::read_to_string(env.path("env.out")).unwrap();
    assert_eq!(seen.lines().next(), Some(""), "{seen}");
    assert_eq!(seen.lines().nth(1), Some(""), "{seen}");
}

#[test]
fn a_waiter_takes_a_slot_as_soon_as_a_holder_is_sigkilled() {
    let env = TestEnv::new();
    let (mut first, first_slot) = sleep_on_a_slot(&env, "the first holder");
    let _second = hold_slot(&env, &channel(2), &["--tuners", "2"], "second");
    let mut waiter = env
        .launch(channel(3))
        .args(["--tuners", "2", "--on-busy", "wait"])
        .program(TestEnv::sh("date +%s%N > ran; exec sleep 300"))
        .spawn();
    let waiter_pid = i64::from(waiter.pid());
    // Blocked in flock(2) on both slots: the kernel lists it as a waiter.
    let waiting_on_every_slot = || {
        slot_files(&env).iter().all(|f| {
            kernel_locks(f)
                .iter()
                .any(|l| l.waiting && l.pid == waiter_pid)
        })
    };
    assert!(
        wait_until(PATIENCE, waiting_on_every_slot),
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
    // A figure for bench/RESULTS.md, not an assertion (timing depends on load).
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
    env.launch(channel(1))
        .args(["--tuners", "1"])
        .program(program)
        .run();
    let helper: u32 = fs::read_to_string(env.path("helper.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let helper = KillOnDrop(helper);
    busy_launch(&env, &channel(2), &["--tuners", "1"])
        .stderr_contains(format!("slot 0 held by pid {} (sleep)", helper.0))
        .run();
    drop(helper);
    let slot = slot_files(&env).remove(0);
    assert!(wait_until(PATIENCE, || holders(&slot).is_empty()));
    env.launch(channel(2))
        .args(["--tuners", "1"])
        .program_ran()
        .run();
}

#[test]
fn a_slot_wait_timeout_gives_up_with_the_busy_code_without_running() {
    let env = TestEnv::new();
    let _first = hold_slot(&env, &channel(1), &["--tuners", "1"], "first");
    env.launch(channel(2))
        .args([
            "--tuners",
            "1",
            "--on-busy",
            "wait",
            "--wait-timeout",
            "0.3",
        ])
        .expect_status(BUSY)
        .stderr_contains("gave up waiting after 0.3s")
        .program_did_not_run()
        .run();
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
        let scripts = (0..LAUNCHERS).map(|i| {
            format!(
                "read _; exec {bin} run --lock-dir {dir} --source {source} --tuners {TUNERS} -- \
                 sh -c 'echo $$ >> runs; while [ ! -e release ]; do sleep 0.02; done'",
                bin = crate::testenv::BIN,
                dir = env.lock_dir().display(),
                source = channel(i),
            )
        });
        let mut launchers = release_together(&env, scripts);
        settle(
            &mut launchers,
            LAUNCHERS - TUNERS,
            Duration::from_secs(180),
            &format!("round {round}"),
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
    env.launch(channel(9))
        .args(["--tuners", "3"])
        .program(["true"])
        .run();
    env.launch(channel(8))
        .args(["--tuners", "1"])
        .program(["true"])
        .label("a stale record must not count")
        .stderr_lacks("WARN")
        .run();
    // A holder that says one tuner; a launcher that says two must use one,
    // and say so.
    let first = hold_slot(&env, &channel(1), &["--tuners", "1"], "first");
    busy_launch(&env, &channel(2), &["--tuners", "2"])
        .stderr_contains("this one says --tuners 2")
        .stderr_contains("using 1")
        .stderr_contains(format!("slot 0 held by pid {}", first.pid()))
        .run();
}

#[test]
fn a_duplicate_of_a_held_source_never_takes_a_slot() {
    let env = TestEnv::new();
    let first = hold_slot(&env, &channel(1), &["--tuners", "2"], "first");
    // A duplicate that waits: it waits on the source lock, holding no slot.
    let duplicate = env
        .launch(channel(1))
        .args(["--tuners", "2", "--on-busy", "wait"])
        .program(TestEnv::sh("touch duplicate-ran"))
        .spawn();
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
    env.launch(channel(2))
        .args(["--tuners", "2"])
        .program_ran()
        .run();
    // And a skipping duplicate says the source is busy, not the device.
    let _ = fs::remove_file(env.path("ran"));
    busy_launch(&env, &channel(1), &["--tuners", "2"])
        .stderr_contains(format!("source busy: held by pid {}", first.pid()))
        .stderr_lacks("device busy")
        .run();
}

#[test]
fn status_groups_slots_by_device_with_holders_and_waiters_in_text_and_json() {
    let env = TestEnv::new();
    let first = hold_slot(&env, &channel(1), &["--tuners", "2"], "first");
    let second = hold_slot(&env, &channel(2), &["--tuners", "2"], "second");
    let waiter = env
        .launch(channel(3))
        .args(["--tuners", "2", "--on-busy", "wait"])
        .program(["true"])
        .spawn();
    let waiter_pid = i64::from(waiter.pid());
    assert!(
        wait_until(PATIENCE, || waiters(&slot_files(&env)) == vec![waiter_pid]),
        "the waiter never blocked on the slots"
    );
    let status = || env.status();
    let stdout = status().run().stdout;
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
    assert!(
        !stdout.contains(".slot"),
        "slot files are not source locks: {stdout}"
    );
    // The waiter holds its source's lock but reads nothing: the table says
    // it waits, and says it of no reader.
    let waiting_row = stdout
        .lines()
        .find(|l| l.contains(&channel(3)))
        .unwrap_or_else(|| panic!("no row for the waiter's source: {stdout}"));
    assert!(
        waiting_row.starts_with("waiting ")
            && waiting_row.contains(&format!("{waiter_pid} ec-launch"))
            && waiting_row.contains("waiting for a tuner of 10.0.0.5"),
        "{waiting_row}"
    );
    for reader in [channel(1), channel(2)] {
        let row = stdout.lines().find(|l| l.contains(&reader)).unwrap();
        assert!(
            row.starts_with("held ") && !row.contains("waiting"),
            "{row}"
        );
    }
    // `status SOURCE` keeps its meaning: the source's lock, held (0), and
    // its slot is not taken for a moved lock of the source.
    let one = status().arg("--json").arg(channel(1)).run().json();
    assert_eq!(one["locks"].as_array().unwrap().len(), 1, "{one:#}");
    assert_eq!(one["locks"][0]["orphaned"], false, "{one:#}");

    let json = status().arg("--json").run().json();
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
    // JSON keeps "held" for the waiter's lock and names what it waits for.
    for lock in locks {
        let holder = &lock["holders"][0];
        if holder["pid"] == waiter_pid {
            assert_eq!(holder["waiting_for_tuner"], "10.0.0.5", "{json:#}");
        } else {
            assert!(holder.get("waiting_for_tuner").is_none(), "{json:#}");
        }
    }
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
    ] {
        env.launch(channel(1))
            .args(extra)
            .label(format!("{extra:?}"))
            .expect_status(code)
            .stderr_contains(message)
            .output_lacks("S3CR3T")
            .program_did_not_run()
            .lock_dir_untouched()
            .run();
    }
    // A source without a host names no device: --device is needed.
    env.launch("/dev/null")
        .args(["--tuners", "2"])
        .expect_status(64)
        .one_line_error("--device")
        .program_did_not_run()
        .lock_dir_untouched()
        .run();
    // With --key, the device is still the network source's host.
    env.launch(channel(1))
        .args(["--key", "studio-a", "--tuners", "2"])
        .program(TestEnv::sh("echo \"$EC_DEVICE_KEY\" > env.out"))
        .run();
    assert_eq!(
        fs::read_to_string(env.path("env.out")).unwrap(),
        "10.0.0.5\n"
    );
}

#[test]
fn a_credential_in_a_slot_holders_source_reaches_no_output_and_no_slot_file() {
    let env = TestEnv::new();
    let secret_source = "http://admin:S3CR3T@10.0.0.5:5004/auto/v1.1?token=S3CR3T";
    let _holder = hold_slot(&env, secret_source, &["--tuners", "1"], "holder");
    busy_launch(&env, &channel(2), &["--tuners", "1"])
        .stderr_contains("reading http://***@10.0.0.5:5004/auto/v1.1?token=***")
        .output_lacks("S3CR3T")
        .run();
    for json in [false, true] {
        let mut status = env.status();
        if json {
            status = status.arg("--json");
        }
        status
            .stdout_contains("10.0.0.5")
            .output_lacks("S3CR3T")
            .run();
    }
    for slot in slot_files(&env) {
        let content = fs::read_to_string(&slot).unwrap();
        assert!(!content.contains("S3CR3T"), "{content}");
    }
}

/// Issue #16 item 9: a waiter that won a slot keeps no thread blocked in
/// flock(2) on the others. Seen by the kernel: between taking its slot and
/// starting its program (the hand-over pause), `/proc/locks` shows it
/// holding the slot and waiting on nothing.
#[test]
fn a_waiter_that_took_a_slot_leaves_no_thread_waiting_on_the_other_slots() {
    for round in 0..5 {
        let env = TestEnv::new();
        let (mut first, _) = sleep_on_a_slot(&env, &format!("round {round}: the first holder"));
        let _second = hold_slot(&env, &channel(2), &["--tuners", "2"], "second");
        let waiter = env
            .launch(channel(3))
            .args(["--tuners", "2", "--on-busy", "wait"])
            .program(TestEnv::sh("touch ran; exec sleep 300"))
            .spawn();
        let waiter_pid = i64::from(waiter.pid());
        let slots = slot_files(&env);
        assert!(
            wait_until(PATIENCE, || waiters(&slots) == vec![waiter_pid]),
            "round {round}: the waiter never blocked on the slots"
        );
        first.0.kill().unwrap();
        first.0.wait().unwrap();
        let mut settled = false;
        let won = wait_until(PATIENCE, || {
            // Looked at first: after exec no thread of it is left to wait,
            // so only a look that began before the program ran counts.
            let ran = env.path("ran").exists();
            let holds = slots.iter().any(|f| holders(f).contains(&waiter_pid));
            settled = holds && !waiters(&slots).contains(&waiter_pid) && !ran;
            settled || ran
        });
        assert!(won, "round {round}: the waiter never took the freed slot");
        assert!(
            settled,
            "round {round}: the waiter's program started while it still waited on a slot: {:?}",
            slots.iter().map(|f| kernel_locks(f)).collect::<Vec<_>>()
        );
    }
}

/// Issue #16 item 7: `--device` is canonicalised with the rules of a
/// source's host (ECP-0130), so every spelling of one box, and a launcher
/// that names none, count the same one tuner.
#[test]
fn every_spelling_of_a_device_shares_one_set_of_slots_with_its_sources_host() {
    let groups: [(&str, &[&str], &str); 3] = [
        (
            "tuner.lan",
            &[
                "--device=TUNER.lan",
                "--device=tuner.lan.",
                "--device= Tuner.LAN ",
            ],
            "http://tuner.lan:5004/auto/v{}.1",
        ),
        (
            "127.0.0.180",
            &[
                "--device=0x7f0000b4",
                "--device=127.0.0.180",
                "--device=0177.0.0.0264",
            ],
            "http://0x7f.0.0.180:5004/auto/v{}.1",
        ),
        (
            "[fd00::5]",
            &[
                "--device=fd00::5",
                "--device=[FD00::5]",
                "--device=[fd00:0::5]",
            ],
            "http://[fd00:0:0::5]:5004/auto/v{}.1",
        ),
    ];
    for (canonical, spellings, source) in groups {
        let env = TestEnv::new();
        let source_of = |n: usize| source.replace("{}", &n.to_string());
        // A launcher without --device: the device is the source's host.
        let first = env
            .launch(source_of(1))
            .args(["--tuners", "1"])
            .program(TestEnv::sh("echo \"$EC_DEVICE_KEY\" > key; exec sleep 300"))
            .spawn();
        assert!(
            wait_until(PATIENCE, || fs::read_to_string(env.path("key"))
                .is_ok_and(|k| k.ends_with('\n'))),
            "{canonical}: the first launcher never ran"
        );
        assert_eq!(
            fs::read_to_string(env.path("key")).unwrap().trim(),
            canonical
        );
        for (n, spelling) in spellings.iter().enumerate() {
            busy_launch(&env, &source_of(n + 2), &["--tuners", "1", spelling])
                .label(format!("{spelling} is the device of {}", source_of(1)))
                .stderr_contains(format!("slot 0 held by pid {}", first.pid()))
                .run();
        }
        assert_eq!(
            slot_files(&env).len(),
            1,
            "{canonical}: {:?}",
            slot_files(&env)
        );
        drop(first);
        // And a spelling that holds is seen by the source's own launcher.
        let second = hold_slot(
            &env,
            &source_of(7),
            &["--tuners", "1", spellings[0]],
            "second",
        );
        busy_launch(&env, &source_of(8), &["--tuners", "1"])
            .label(format!("{} holds {canonical}", spellings[0]))
            .stderr_contains(format!("slot 0 held by pid {}", second.pid()))
            .run();
    }
}

/// Issue #16 item 8: a held slot whose file was deleted by hand is still a
/// tuner in use. A launcher that takes the new file at its path sees, in
/// the kernel's lock table, the orphan's holder and the device's N: it
/// refuses to be the third reader (skip: the busy status, naming the
/// orphan), or waits until the orphan's holder is gone.
#[test]
fn a_launcher_refuses_to_be_a_reader_beyond_n_beside_a_slot_whose_file_was_deleted() {
    let env = TestEnv::new();
    let _first = hold_slot(&env, &channel(1), &["--tuners", "2"], "first");
    let mut second = hold_slot(&env, &channel(2), &["--tuners", "2"], "second");
    let slots = slot_files(&env);
    // ec-launch execs the program: the launcher's PID is the holder's.
    let second_pid = i64::from(second.pid());
    let deleted = slots
        .iter()
        .find(|f| holders(f).contains(&second_pid))
        .expect("second's slot")
        .clone();
    fs::remove_file(&deleted).unwrap();
    busy_launch(&env, &channel(3), &["--tuners", "2"])
        .stderr_contains("deleted")
        .stderr_contains(format!("pid {second_pid}"))
        .run();
    assert!(
        holders(&deleted).is_empty(),
        "the refused launcher left the new slot file locked"
    );
    // A waiting launcher runs once the orphan's holder is gone.
    let waiter = env
        .launch(channel(4))
        .args(["--tuners", "2", "--on-busy", "wait"])
        .program(TestEnv::sh("touch ran; exec sleep 300"))
        .spawn();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !env.path("ran").exists(),
        "the waiter ran beside the orphan"
    );
    second.0.kill().unwrap();
    second.0.wait().unwrap();
    assert!(
        wait_until(PATIENCE, || env.path("ran").exists()),
        "the waiter never ran after the orphan's holder was gone"
    );
    drop(waiter);
}
