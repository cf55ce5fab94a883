//! Priorities, preemption and reclaiming escaped holders (ECP-0139), with
//! real launchers, real flock(2), real signals, the tuner emulator counting
//! 503s, and (for escape) real cgroups.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::testenv::{BUSY, Guard, KillOnDrop, PATIENCE, TestEnv, alive, holders, wait_until};
use crate::tuner_emulator::{spawn_on_loopback as device, stats};

fn source(device: SocketAddr, channel: &str) -> String {
    format!("http://{device}/auto/v{channel}")
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A reader: opens a stream of `channel` on the device, writes `<tag>.pid`,
/// writes `<tag>.term` (the time) and exits on SIGTERM, and reads until
/// then. `ignore_term`: SIGTERM is ignored (only SIGKILL ends it).
fn reader(device: SocketAddr, tag: &str, ignore_term: bool) -> Vec<String> {
    let trap = if ignore_term {
        "trap '' TERM".to_owned()
    } else {
        format!("trap 'date +%s%N > {tag}.term; exit 143' TERM")
    };
    let script = format!(
        "{trap}; exec 3<>/dev/tcp/{ip}/{port}; \
         printf 'GET /auto/v{tag} HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n' >&3; \
         read -r status <&3; echo \"$status\" > {tag}.status; echo $$ > {tag}.pid; \
         while :; do sleep 0.05 & wait $!; done",
        ip = device.ip(),
        port = device.port(),
    );
    vec!["bash".into(), "-c".into(), script]
}

/// Starts a reader at `priority` and waits until its stream is open.
#[track_caller]
fn start_reader(
    env: &TestEnv,
    device: SocketAddr,
    tag: &str,
    priority: &str,
    extra: &[&str],
) -> Guard {
    let guard = env
        .launch(source(device, tag))
        .args(["--tuners", "2", "--priority", priority])
        .args(extra)
        .program(reader(device, tag, false))
        .spawn();
    assert!(
        wait_until(PATIENCE, || env.path(&format!("{tag}.pid")).exists()),
        "reader {tag} never started"
    );
    guard
}

fn status_line(env: &TestEnv, tag: &str) -> String {
    fs::read_to_string(env.path(&format!("{tag}.status"))).unwrap_or_default()
}

fn pid_of(env: &TestEnv, tag: &str) -> u32 {
    env.written_pid(&format!("{tag}.pid"))
}

/// The device's waiting-room files, sorted (their names are the order).
fn room(env: &TestEnv) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(env.lock_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".waiting"))
        .flat_map(|e| fs::read_dir(e.path()).into_iter().flatten().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The figure a preemptor logs: SIGTERM sent to slot taken.
fn logged_latency_ms(log: &str) -> Option<f64> {
    let at = log.find(" ms after SIGTERM")?;
    log[..at].rsplit(' ').next()?.parse().ok()
}

#[test]
fn a_priority_300_launcher_preempts_one_of_two_100_readers_which_is_told_at_once_and_nothing_gets_a_503()
 {
    let env = TestEnv::new();
    let device = device(2);
    let mut first = start_reader(&env, device, "a1", "100", &[]);
    std::thread::sleep(Duration::from_millis(1100)); // a later start, to the second
    let mut second = start_reader(&env, device, "a2", "100", &[]);
    let log = env.path("rec.log");
    let started = now_nanos();
    let mut recording = env
        .launch(source(device, "rec"))
        .args(["--tuners", "2", "--priority", "300"])
        .program(reader(device, "rec", false))
        .stderr_to(fs::File::create(&log).unwrap())
        .spawn();
    // `date > a2.term` makes the file before it writes the time.
    assert!(
        wait_until(PATIENCE, || fs::read_to_string(env.path("a2.term"))
            .is_ok_and(|t| t.trim().parse::<u128>().is_ok())),
        "the newest 100 was never sent SIGTERM"
    );
    let term_at: u128 = fs::read_to_string(env.path("a2.term"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let to_term = Duration::from_nanos(u64::try_from(term_at - started).unwrap());
    assert!(
        to_term < Duration::from_millis(500),
        "SIGTERM after {to_term:?}"
    );
    assert!(
        wait_until(Duration::from_millis(5500), || !second.running()),
        "the preempted launch did not end within the grace + 0.5 s"
    );
    assert!(
        wait_until(PATIENCE, || env.path("rec.pid").exists()),
        "the recording never started"
    );
    assert!(
        status_line(&env, "rec").contains("200"),
        "{}",
        status_line(&env, "rec")
    );
    assert!(first.running(), "the older 100 must keep its tuner");
    assert!(recording.running());
    assert!(env.path("a1.term").exists().then_some(()).is_none());
    let now = stats(device);
    assert_eq!(now["busy_503"], 0, "{now}");
    assert_eq!(now["open_streams"], 2, "{now}");
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("pid {} (bash)", pid_of(&env, "a2")))
            && text.contains("at priority 100, for")
            && text.contains("at priority 300"),
        "{text}"
    );
    let latency = logged_latency_ms(&text).expect("the latency is logged");
    println!(
        "preemption latency (SIGTERM sent to slot taken): {latency:.1} ms; SIGTERM {:.1} ms after the preemptor started; 503s: 0",
        to_term.as_secs_f64() * 1e3
    );
    // `status` shows the preemption on the slot, until it is taken again.
    let shown = env.status().run().stdout;
    assert!(shown.contains("preempted pid"), "{shown}");
    assert!(shown.contains("priority 300"), "{shown}");
    let json = env.status().arg("--json").run().json();
    let slots = &json["devices"][0]["slots"];
    let preempted = slots
        .as_array()
        .unwrap()
        .iter()
        .find(|s| !s["preempted"].is_null())
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(preempted["preempted"]["priority"], 100, "{json}");
    assert_eq!(preempted["priority"], 300, "{json}");
}

#[test]
fn a_preempted_reader_started_again_with_wait_waits_in_line_and_gets_the_tuner_back() {
    let env = TestEnv::new();
    let device = device(2);
    let _first = start_reader(&env, device, "b1", "100", &[]);
    let mut second = start_reader(&env, device, "b2", "100", &["--on-busy", "wait"]);
    let mut recording = start_reader(&env, device, "rec", "300", &[]);
    assert!(wait_until(PATIENCE, || !second.running()));
    // As systemd would: the preempted unit starts again, and waits.
    fs::remove_file(env.path("b2.pid")).unwrap();
    let mut again = env
        .launch(source(device, "b2"))
        .args(["--tuners", "2", "--priority", "100", "--on-busy", "wait"])
        .program(reader(device, "b2", false))
        .spawn();
    assert!(
        wait_until(PATIENCE, || room(&env).len() == 1),
        "the restarted reader never sat in the waiting room"
    );
    assert!(room(&env)[0].starts_with("0900-"), "{:?}", room(&env));
    assert!(again.running() && !env.path("b2.pid").exists());
    // It does not preempt its equal, nor the recording.
    std::thread::sleep(Duration::from_millis(300));
    assert!(recording.running() && !env.path("b2.pid").exists());
    recording.0.kill().unwrap();
    recording.0.wait().unwrap();
    // The recording's helper `sleep` holds the slot until it dies too.
    assert!(
        wait_until(PATIENCE, || env.path("b2.pid").exists()),
        "the waiter never got the freed tuner"
    );
    assert!(room(&env).is_empty(), "{:?}", room(&env));
    assert_eq!(stats(device)["busy_503"], 0);
}

#[test]
fn equal_priority_is_never_preempted_and_the_newcomer_skips_as_before() {
    let env = TestEnv::new();
    let device = device(2);
    let mut first = start_reader(&env, device, "c1", "200", &[]);
    let mut second = start_reader(&env, device, "c2", "200", &[]);
    env.launch(source(device, "c3"))
        .args(["--tuners", "2", "--priority", "200"])
        .expect_status(BUSY)
        .stderr_contains("device busy: all 2 tuner slots")
        .stderr_lacks("preempting")
        .program_did_not_run()
        .run();
    env.launch(source(device, "c4"))
        .args(["--tuners", "2", "--priority", "50"])
        .expect_status(BUSY)
        .stderr_lacks("preempting")
        .program_did_not_run()
        .run();
    assert!(first.running() && second.running());
    assert!(!env.path("c1.term").exists() && !env.path("c2.term").exists());
    assert_eq!(stats(device)["busy_503"], 0);
}

#[test]
fn a_victim_that_ignores_sigterm_is_sigkilled_after_the_grace() {
    let env = TestEnv::new();
    let device = device(1);
    let mut stubborn = env
        .launch(source(device, "s1"))
        .args(["--tuners", "1", "--priority", "10"])
        .program(reader(device, "s1", true))
        .spawn();
    assert!(wait_until(PATIENCE, || env.path("s1.pid").exists()));
    let started = Instant::now();
    let log = env.path("p.log");
    let _preemptor = env
        .launch(source(device, "p"))
        .args(["--tuners", "1", "--priority", "20", "--preempt-grace", "1"])
        .program(reader(device, "p", false))
        .stderr_to(fs::File::create(&log).unwrap())
        .spawn();
    std::thread::sleep(Duration::from_millis(700));
    assert!(stubborn.running(), "gone before the grace ended");
    assert!(
        wait_until(Duration::from_secs(2), || !stubborn.running()),
        "the victim was not killed after the grace"
    );
    let gone = started.elapsed();
    assert!(
        wait_until(PATIENCE, || env.path("p.pid").exists()),
        "the preemptor never ran"
    );
    assert!(wait_until(PATIENCE, || fs::read_to_string(&log)
        .unwrap()
        .contains("ms after SIGTERM")));
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("SIGKILL sent to pid"), "{text}");
    assert!(text.contains("(SIGKILL was needed)"), "{text}");
    assert!(gone >= Duration::from_millis(900), "{gone:?}");
    assert_eq!(stats(device)["busy_503"], 0);
}

/// A program that writes `<name>.ran` and holds on until `release-<name>` appears.
fn held(name: &str) -> Vec<String> {
    TestEnv::sh(&format!(
        "date +%s%N > {name}.ran; while [ ! -e release-{name} ]; do sleep 0.02; done"
    ))
}

#[test]
fn waiters_of_priorities_10_300_and_100_are_served_300_then_100_then_10() {
    let env = TestEnv::new();
    let launch = |name: &str, priority: &str, wait: bool| {
        let mut invocation = env
            .launch(format!("http://10.0.0.9:5004/auto/v{name}"))
            .args(["--tuners", "2", "--priority", priority]);
        if wait {
            invocation = invocation.args(["--on-busy", "wait"]);
        }
        invocation.program(held(name)).spawn()
    };
    let ran = |name: &str| env.path(&format!("{name}.ran")).exists();
    let _h1 = launch("h1", "500", false);
    let _h2 = launch("h2", "500", false);
    assert!(wait_until(PATIENCE, || ran("h1") && ran("h2")));
    let mut waiters = Vec::new();
    for (count, (name, priority)) in [("w10", "10"), ("w300", "300"), ("w100", "100")]
        .into_iter()
        .enumerate()
    {
        waiters.push(launch(name, priority, true));
        assert!(
            wait_until(PATIENCE, || room(&env).len() == count + 1),
            "{name} never sat in the waiting room: {:?}",
            room(&env)
        );
    }
    // Only the head blocks on the slots: no herd.
    let order = room(&env);
    assert!(
        order[0].starts_with("0700-")
            && order[1].starts_with("0900-")
            && order[2].starts_with("0990-"),
        "{order:?}"
    );
    // `status` shows the line in order, and a held waiter's file is no
    // lock moved out of the directory (the first build said ORPHANED, 4).
    let shown = env.status().stderr_lacks("ORPHANED").run().stdout;
    assert!(shown.contains("; 3 waiting\n  in line: pid "), "{shown}");
    assert!(!shown.contains("ORPHANED"), "{shown}");
    let json = env.status().arg("--json").run().json();
    let line: Vec<u64> = json["devices"][0]["waiters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["priority"].as_u64().unwrap())
        .collect();
    assert_eq!(line, vec![300, 100, 10], "{json}");
    assert_eq!(json["devices"][0]["waiting"], 3, "{json}");
    let release = |name: &str| fs::write(env.path(&format!("release-{name}")), "").unwrap();
    release("h1");
    assert!(
        wait_until(PATIENCE, || ran("w300")),
        "the 300 was not served first"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!ran("w100") && !ran("w10"), "only one slot was freed");
    release("h2");
    assert!(
        wait_until(PATIENCE, || ran("w100")),
        "the 100 was not served second"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!ran("w10"));
    release("w300");
    assert!(
        wait_until(PATIENCE, || ran("w10")),
        "the 10 was not served last"
    );
    assert!(room(&env).is_empty(), "{:?}", room(&env));
}

#[test]
fn a_newcomer_below_a_waiter_does_not_take_the_slot_that_frees_for_it() {
    let env = TestEnv::new();
    let launch = |name: &str, priority: &str, extra: &[&str]| {
        env.launch(format!("http://10.0.0.9:5004/auto/v{name}"))
            .args(["--tuners", "1", "--priority", priority])
            .args(extra)
            .program(held(name))
    };
    let ran = |name: &str| env.path(&format!("{name}.ran")).exists();
    let _holder = launch("h", "500", &[]).spawn();
    assert!(wait_until(PATIENCE, || ran("h")));
    let _waiter = launch("w", "300", &["--on-busy", "wait"]).spawn();
    assert!(wait_until(PATIENCE, || room(&env).len() == 1));
    // The waiter is behind a 500: it waits. A 100 newcomer skips.
    env.launch("http://10.0.0.9:5004/auto/vn")
        .args(["--tuners", "1", "--priority", "100"])
        .expect_status(BUSY)
        .program_did_not_run()
        .run();
    fs::write(env.path("release-h"), "").unwrap();
    assert!(wait_until(PATIENCE, || ran("w")));
}

#[test]
fn a_priority_outside_0_to_1000_is_refused_with_64_before_anything_is_locked() {
    let env = TestEnv::new();
    for bad in ["1001", "-1", "abc", "", "2.5"] {
        env.launch("http://10.0.0.9:5004/auto/v1")
            .args(["--tuners", "2"])
            .arg(format!("--priority={bad}"))
            .expect_status(64)
            .stderr_lines(1)
            .stderr_contains("is not a priority")
            .stderr_contains("0 to 1000")
            .program_did_not_run()
            .run();
    }
    env.launch("http://10.0.0.9:5004/auto/v1")
        .env("EC_LAUNCH_PRIORITY", "5000")
        .expect_status(64)
        .program_did_not_run()
        .run();
    assert!(!env.lock_dir().exists());
    // The program is told its priority; an inherited value is replaced.
    env.launch("http://10.0.0.9:5004/auto/v1")
        .env("EC_LAUNCH_PRIORITY", "250")
        .env("EC_PRIORITY", "7")
        .program(TestEnv::sh("echo $EC_PRIORITY > prio"))
        .run();
    assert_eq!(fs::read_to_string(env.path("prio")).unwrap().trim(), "250");
    env.launch("http://10.0.0.9:5004/auto/v1")
        .env("EC_PRIORITY", "7")
        .program(TestEnv::sh("echo $EC_PRIORITY > prio"))
        .run();
    assert_eq!(fs::read_to_string(env.path("prio")).unwrap().trim(), "100");
}

/// The cgroup v2 mount (`/sys/fs/cgroup` or, on a hybrid host, its
/// `unified` directory).
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        right.starts_with("cgroup2 ").then(|| PathBuf::from(point))
    })
}

/// A cgroup tree of the test's own under the v2 mount, removed when dropped.
struct Cgroups(PathBuf);

impl Cgroups {
    fn new(env: &TestEnv) -> Self {
        let mount = cgroup2_mount().expect("a cgroup2 mount");
        let name = env
            .path("")
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let base = mount.join(format!("ec-launch-{name}"));
        fs::create_dir_all(&base).unwrap();
        Self(base)
    }

    fn make(&self, name: &str) -> PathBuf {
        let dir = self.0.join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for entry in fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let _ = fs::remove_dir(entry.path());
        }
        let _ = fs::remove_dir(&self.0);
    }
}

/// Runs a launcher on `source` inside cgroup `unit` (or where the test
/// runs) whose program leaves a `setsid` helper holding the lock in cgroup
/// `helper`, then exits; returns the helper.
fn leave_escaped_helper(
    env: &TestEnv,
    source: &str,
    unit: Option<&Path>,
    helper: &Path,
    extra: &[&str],
) -> KillOnDrop {
    let program = format!(
        "setsid sh -c 'echo $$ > {helper}/cgroup.procs; echo $$ > helper.pid; exec sleep 300' </dev/null >/dev/null 2>&1 &
         while [ ! -s helper.pid ]; do sleep 0.01; done",
        helper = helper.display()
    );
    let _ = fs::remove_file(env.path("helper.pid"));
    let mut command = vec!["sh".to_owned(), "-c".to_owned()];
    let mut launch = format!(
        "exec {} run --lock-dir {} --source {source} {} -- sh -c \"$0\"",
        crate::testenv::BIN,
        env.lock_dir().display(),
        extra.join(" ")
    );
    if let Some(unit) = unit {
        launch = format!("echo $$ > {}/cgroup.procs; {launch}", unit.display());
    }
    command.push(launch);
    command.push(program);
    let status = std::process::Command::new(&command[0])
        .args(&command[1..])
        .current_dir(env.path(""))
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    let pid = fs::read_to_string(env.path("helper.pid")).unwrap();
    KillOnDrop(pid.trim().parse().unwrap())
}

#[test]
fn a_holder_that_escaped_its_stopped_service_is_reclaimed_and_a_hand_started_one_is_not() {
    crate::testenv::require_root!("make cgroups");
    let env = TestEnv::new();
    let cgroups = Cgroups::new(&env);
    let unit = cgroups.make("pub-escape.service");
    let scope = cgroups.make("run-helper.scope");
    let source = "http://10.0.0.9:5004/auto/v5.1";
    let helper = leave_escaped_helper(&env, source, Some(&unit), &scope, &[]);
    let lock = env.lock_file_of(source);
    assert_eq!(holders(&lock).len(), 1);
    // The unit's run is over (its cgroup is empty), the helper is in a scope.
    assert!(
        fs::read_to_string(unit.join("cgroup.procs"))
            .unwrap()
            .trim()
            .is_empty()
    );
    // `status` marks it, whether or not anyone reclaims.
    let shown = env.status().run().stdout;
    assert!(shown.contains("ESCAPED"), "{shown}");
    let json = env.status().arg("--json").run().json();
    assert_eq!(json["locks"][0]["escaped"], true, "{json}");
    // Without the flag: busy, saying how to stop it.
    env.launch(source)
        .expect_status(BUSY)
        .stderr_contains("escaped")
        .stderr_contains("--reclaim-escaped")
        .program_did_not_run()
        .run();
    assert!(alive(helper.0));
    env.launch(source)
        .args(["--reclaim-escaped"])
        .stderr_contains(format!("SIGTERM to pid {} (sleep) in cgroup", helper.0))
        .stderr_contains("run-helper.scope")
        .stderr_contains("pub-escape.service")
        .program_ran()
        .run();
    assert!(!alive(helper.0));
    drop(helper);
    fs::remove_file(env.path("ran")).unwrap();

    // Hand-started (no unit): never touched.
    let hand = leave_escaped_helper(&env, "http://10.0.0.9:5004/auto/v6.1", None, &scope, &[]);
    env.launch("http://10.0.0.9:5004/auto/v6.1")
        .args(["--reclaim-escaped"])
        .expect_status(BUSY)
        .stderr_lacks("reclaiming")
        .program_did_not_run()
        .run();
    assert!(alive(hand.0));
    // Nor one its service still runs in (here: the helper inside a unit
    // whose cgroup is populated by it).
    let running = cgroups.make("pub-running.service");
    let inside = leave_escaped_helper(
        &env,
        "http://10.0.0.9:5004/auto/v7.1",
        Some(&running),
        &running,
        &[],
    );
    env.launch("http://10.0.0.9:5004/auto/v7.1")
        .args(["--reclaim-escaped"])
        .expect_status(BUSY)
        .stderr_lacks("reclaiming")
        .program_did_not_run()
        .run();
    assert!(alive(inside.0));
    drop((hand, inside));
}

#[test]
fn a_slot_held_by_a_helper_that_escaped_its_service_is_reclaimed() {
    crate::testenv::require_root!("make cgroups");
    let env = TestEnv::new();
    let cgroups = Cgroups::new(&env);
    let unit = cgroups.make("pub-slot.service");
    let scope = cgroups.make("run-slot.scope");
    let helper = leave_escaped_helper(
        &env,
        "http://10.0.0.9:5004/auto/v5.1",
        Some(&unit),
        &scope,
        &["--tuners", "1"],
    );
    // Another channel: the source is free, the device's one slot is not.
    env.launch("http://10.0.0.9:5004/auto/v8.1")
        .args(["--tuners", "1", "--reclaim-escaped"])
        .stderr_contains("reclaiming tuner slot 0")
        .stderr_contains(format!("SIGTERM to pid {}", helper.0))
        .program_ran()
        .run();
    assert!(!alive(helper.0));
}

#[test]
fn a_room_that_cannot_be_opened_costs_the_order_and_never_the_lock() {
    let env = TestEnv::new();
    let source = "http://10.0.0.9:5004/auto/vu";
    let _holder = env
        .launch(source)
        .args(["--tuners", "1"])
        .program(held("h"))
        .spawn();
    assert!(wait_until(PATIENCE, || env.path("h.ran").exists()));
    // The room's name taken by a plain file: it cannot be opened as a room.
    let stem = fs::read_dir(env.lock_dir())
        .unwrap()
        .flatten()
        .find_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some(name.strip_suffix(".tuner0.slot")?.to_owned())
        })
        .expect("the holder's slot file");
    fs::write(env.lock_dir().join(format!("{stem}.waiting")), "").unwrap();
    // A launcher that does not wait is told busy, as before the room.
    env.launch("http://10.0.0.9:5004/auto/vs")
        .args(["--tuners", "1"])
        .expect_status(BUSY)
        .stderr_contains("device busy: all 1 tuner slots")
        .program_did_not_run()
        .run();
    let log = env.path("w.log");
    let mut waiter = env
        .launch("http://10.0.0.9:5004/auto/vw")
        .args(["--tuners", "1", "--on-busy", "wait"])
        .program(held("w"))
        .stderr_to(fs::File::create(&log).unwrap())
        .spawn();
    assert!(
        wait_until(PATIENCE, || fs::read_to_string(&log)
            .unwrap()
            .contains("cannot take a place in the waiting room")),
        "{}",
        fs::read_to_string(&log).unwrap()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        waiter.running() && !env.path("w.ran").exists(),
        "ran without the slot"
    );
    fs::write(env.path("release-h"), "").unwrap();
    assert!(
        wait_until(PATIENCE, || env.path("w.ran").exists()),
        "the unordered waiter never got the freed slot"
    );
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("waiting for a tuner without an order"),
        "{text}"
    );
}
