//! `run --progress-watchdog`: the monitor pings a fake `NOTIFY_SOCKET` (a
//! datagram socket read with `SO_PASSCRED`, so every ping names its sender)
//! only while a loopback stand-in tuner's bytes reach the program, dies with
//! the program, and never holds the lock.

use std::fs;
use std::io::{IoSliceMut, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};

use crate::testenv::{Guard, Invocation, PATIENCE, TestEnv, alive, holders, wait_until};

/// `WATCHDOG_USEC` of the tests: the monitor ticks every 300 ms.
const WATCHDOG_USEC: &str = "600000";
const INTERVAL: Duration = Duration::from_millis(300);
/// Scheduling slack on a loaded 2-core machine, added to timing bounds.
const SLACK: Duration = Duration::from_millis(250);

/// A loopback stand-in tuner: accepts connections and, while `streaming`,
/// writes 1 KiB to each every 20 ms; otherwise it keeps them open, silent.
struct Tuner {
    port: u16,
    streaming: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Tuner {
    fn start(streaming: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local addr").port();
        let tuner = Self {
            port,
            streaming: Arc::new(AtomicBool::new(streaming)),
            accepted: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (flag, accepted, stop) = (
            tuner.streaming.clone(),
            tuner.accepted.clone(),
            tuner.stop.clone(),
        );
        std::thread::spawn(move || {
            let mut clients: Vec<TcpStream> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Ok((client, _)) = listener.accept() {
                    client.set_nonblocking(true).expect("nonblocking client");
                    clients.push(client);
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
                if flag.load(Ordering::SeqCst) {
                    for client in &mut clients {
                        let _ = client.write(&[0x47; 1024]);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        tuner
    }

    fn source(&self) -> String {
        format!("http://127.0.0.1:{}/auto/v5.1", self.port)
    }

    fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::SeqCst);
    }

    #[track_caller]
    fn wait_for_client(&self) {
        assert!(
            wait_until(PATIENCE, || self.accepted.load(Ordering::SeqCst) > 0),
            "the program never connected to the stand-in tuner"
        );
    }
}

impl Drop for Tuner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One datagram on the fake notify socket: its text and sender.
#[derive(Debug, Clone)]
struct Ping {
    message: String,
    pid: i32,
    at: Instant,
}

/// The fake `$NOTIFY_SOCKET`.
struct Notify {
    socket: UnixDatagram,
    /// The value for `NOTIFY_SOCKET`.
    address: String,
}

impl Notify {
    fn bind(env: &TestEnv) -> Self {
        let path: PathBuf = env.path("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        Self::with(socket, path.to_str().expect("utf-8 path").to_owned())
    }

    fn bind_abstract(name: &str) -> Self {
        let address = UnixAddr::from_abstract_name(name).expect("abstract name");
        let socket = UnixDatagram::bind_addr(&address).expect("bind abstract notify socket");
        Self::with(socket, format!("@{name}"))
    }

    fn with(socket: UnixDatagram, address: String) -> Self {
        setsockopt(&socket, sockopt::PassCred, &true).expect("SO_PASSCRED");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        Self { socket, address }
    }

    /// Every datagram that arrives within `duration`.
    fn collect(&self, duration: Duration) -> Vec<Ping> {
        let deadline = Instant::now() + duration;
        let mut pings = Vec::new();
        while Instant::now() < deadline {
            let mut buffer = [0u8; 256];
            let mut control = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let mut iov = [IoSliceMut::new(&mut buffer)];
            let Ok(message) = recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut control),
                MsgFlags::empty(),
            ) else {
                continue;
            };
            let pid = message
                .cmsgs()
                .expect("control messages")
                .find_map(|c| match c {
                    ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
                    _ => None,
                })
                .expect("SO_PASSCRED credentials");
            let length = message.bytes;
            pings.push(Ping {
                message: String::from_utf8_lossy(&buffer[..length]).into_owned(),
                pid,
                at: Instant::now(),
            });
        }
        pings
    }
}

/// What most tests here start with: an environment, a stand-in tuner
/// (streaming or silent) and the fake notify socket.
fn start(streaming: bool) -> (TestEnv, Tuner, Notify) {
    let env = TestEnv::new();
    let tuner = Tuner::start(streaming);
    let notify = Notify::bind(&env);
    (env, tuner, notify)
}

/// `ec-launch run --lock-dir <env> --source SOURCE --progress-watchdog` with
/// the watchdog's environment: `WATCHDOG_USEC` set, `NOTIFY_SOCKET` at
/// `notify_socket`, `WATCHDOG_PID` unset (a test changes any of them after).
fn watched<'e>(env: &'e TestEnv, source: &str, notify_socket: &str) -> Invocation<'e> {
    env.launch(source)
        .arg("--progress-watchdog")
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env("NOTIFY_SOCKET", notify_socket)
        .env_remove("WATCHDOG_PID")
}

/// `watched` on `source`, running `script` in bash beside the test (the fake
/// notify socket is read while it runs).
fn launch(env: &TestEnv, notify: &Notify, source: &str, script: &str) -> Guard {
    watched(env, source, &notify.address)
        .program(["bash", "-c", script])
        .spawn()
}

/// `watched` on the stand-in tuner with `extra` arguments, its program a
/// [`reader_in_a_child`] of the tuner's stream.
fn launch_reader(env: &TestEnv, notify: &Notify, tuner: &Tuner, extra: &[&str]) -> Guard {
    watched(env, &tuner.source(), &notify.address)
        .args(extra)
        .program(["bash", "-c", &reader_in_a_child(tuner.port)])
        .spawn()
}

/// A program whose *child* (not the program itself) reads the stream, as
/// `ec-node` with its ffmpeg: the monitor must count descendants.
fn reader_in_a_child(port: u16) -> String {
    format!(
        "(exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'GET /auto/v5.1 HTTP/1.0\\r\\n\\r\\n' >&3; exec cat <&3 >/dev/null) & wait"
    )
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Every descendant of `pid`, from the kernel's `children` lists.
fn descendants(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut pending = vec![pid];
    while let Some(parent) = pending.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                found.push(child);
                pending.push(child);
            }
        }
    }
    found
}

/// Pings later than the start-up window (`start` + 1.5 intervals): those
/// while the launcher had not exec'd yet (a loaded machine may take a tick
/// for that) and the one at the exec are inside it; a monitor pinging
/// regardless of bytes shows up after it within one interval.
fn after_start_up(pings: &[Ping], start: Instant) -> Vec<&Ping> {
    pings
        .iter()
        .filter(|p| p.at.duration_since(start) > INTERVAL * 3 / 2)
        .collect()
}

/// The monitor: the one sender of pings, checked to be the program's child
/// named `ec-watchdog` (not the program: it does not speak `sd_notify`).
#[track_caller]
fn monitor_of(pings: &[Ping], program: u32) -> i32 {
    let senders: std::collections::BTreeSet<i32> = pings.iter().map(|p| p.pid).collect();
    assert_eq!(senders.len(), 1, "one sender expected: {pings:?}");
    let monitor = pings[0].pid;
    assert_ne!(monitor, program as i32, "the program itself pinged");
    assert_eq!(comm(monitor), "ec-watchdog");
    assert_eq!(parent_of(monitor), Some(program as i32));
    monitor
}

#[test]
fn pings_while_bytes_flow_and_stop_within_one_interval_when_they_stop() {
    let (env, tuner, notify) = start(true);
    let program = launch_reader(&env, &notify, &tuner, &[]);
    tuner.wait_for_client();

    let flowing = notify.collect(INTERVAL * 6);
    assert!(
        flowing.len() >= 4,
        "expected a ping every {INTERVAL:?} while bytes flow, got {flowing:?}"
    );
    assert!(
        flowing.iter().all(|p| p.message == "WATCHDOG=1"),
        "{flowing:?}"
    );
    let monitor = monitor_of(&flowing, program.pid());

    tuner.set_streaming(false);
    let stopped_at = Instant::now();
    let after = notify.collect(INTERVAL * 6);
    let late: Vec<&Ping> = after
        .iter()
        .filter(|p| p.at.duration_since(stopped_at) > INTERVAL + SLACK)
        .collect();
    assert!(
        late.is_empty(),
        "pings went on more than one interval after the bytes stopped: {late:?}"
    );

    tuner.set_streaming(true);
    let resumed = notify.collect(INTERVAL * 5);
    assert!(
        resumed.len() >= 2 && resumed.iter().all(|p| p.pid == monitor),
        "pings did not resume with the bytes: {resumed:?}"
    );
}

/// Cluster mode supervises instead of exec'ing: the monitor must count the
/// supervised program's bytes (it is the launcher's child now), and only
/// the launcher pings systemd (issue 16 item 3, ECP-0135 section 4): while
/// its lease is renewed and the monitor reported bytes within the progress
/// window (`WatchdogSec` by default). This test asserted the monitor's own
/// pings before; those fed systemd for a frozen launcher.
#[test]
fn in_cluster_mode_the_launchers_pings_follow_the_supervised_programs_bytes() {
    let etcd = crate::etcd_server::EtcdServer::start();
    let (env, tuner, notify) = start(true);
    let program = launch_reader(&env, &notify, &tuner, &["--etcd", &etcd.endpoints()]);
    tuner.wait_for_client();
    let flowing = notify.collect(INTERVAL * 6);
    assert!(
        flowing.len() >= 4,
        "expected a ping every {INTERVAL:?} while the supervised program reads, got {flowing:?}"
    );
    let launcher = i32::try_from(program.pid()).expect("pid");
    assert!(
        flowing.iter().all(|p| p.pid == launcher),
        "only the launcher pings in cluster mode: {flowing:?}"
    );
    let monitor = descendants(launcher)
        .into_iter()
        .find(|&pid| comm(pid) == "ec-watchdog")
        .expect("the monitor is the launcher's child");
    tuner.set_streaming(false);
    let stopped_at = Instant::now();
    let after = notify.collect(INTERVAL * 8);
    // The monitor's last report comes at most a tick after the last byte,
    // and the window (WatchdogSec, 600 ms) runs from it.
    let window = Duration::from_micros(WATCHDOG_USEC.parse().expect("usec"));
    let late: Vec<&Ping> = after
        .iter()
        .filter(|p| p.at.duration_since(stopped_at) > INTERVAL + window + SLACK)
        .collect();
    assert!(
        late.is_empty(),
        "pings went on after the bytes stopped and the window passed: {late:?}"
    );
    assert!(
        alive(monitor),
        "the monitor died instead of withholding its reports"
    );
}

#[test]
fn a_connection_that_sends_nothing_gets_no_ping_after_the_programs_start() {
    let (env, tuner, notify) = start(false);
    let program = launch_reader(&env, &notify, &tuner, &[]);
    tuner.wait_for_client();
    // A ping at the program's start (it gets a full interval to connect),
    // from the monitor, which is alive and watching; after that, silence.
    let start = Instant::now();
    let pings = notify.collect(INTERVAL * 6);
    assert!(
        !pings.is_empty() && after_start_up(&pings, start).is_empty(),
        "a silent tuner was pinged for: {pings:?}"
    );
    let monitor = monitor_of(&pings, program.pid());
    assert!(
        alive(monitor),
        "the monitor gave up instead of withholding pings"
    );
}

#[test]
fn the_monitor_exits_and_the_lock_is_released_when_the_program_is_killed() {
    let (env, tuner, notify) = start(true);
    let mut program = launch_reader(&env, &notify, &tuner, &[]);
    tuner.wait_for_client();
    let monitor = monitor_of(&notify.collect(INTERVAL * 3), program.pid());
    let lock_file = env.lock_file_of(&tuner.source());
    assert_eq!(holders(&lock_file), vec![i64::from(program.pid())]);

    // SIGKILL the program only. Its reading child inherited the lock
    // descriptor and holds the lock too, so end it as systemd's kill of the
    // cgroup would; the monitor must go by itself.
    let readers: Vec<i32> = descendants(program.pid() as i32)
        .into_iter()
        .filter(|pid| *pid != monitor)
        .collect();
    program.0.kill().expect("kill program");
    program.0.wait().expect("reap program");
    assert!(
        wait_until(Duration::from_secs(2), || !alive(monitor)),
        "monitor {monitor} outlived the program"
    );
    for reader in readers {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(reader),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        wait_until(PATIENCE, || holders(&lock_file).is_empty()),
        "the lock outlived the program: {:?}",
        holders(&lock_file)
    );
    env.launch(tuner.source()).program(["true"]).run();
}

#[test]
fn the_monitor_exits_when_the_program_exits_normally_and_the_lock_is_free() {
    let (env, tuner, notify) = start(true);
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{}; timeout 1 cat <&3 >/dev/null; exit 0",
        tuner.port
    );
    let program = launch(&env, &notify, &tuner.source(), &script);
    let monitor = monitor_of(&notify.collect(INTERVAL * 2), program.pid());
    let (status, stderr) = program.finish();
    assert_eq!(status, Some(0), "{stderr}");
    assert!(
        wait_until(Duration::from_secs(2), || !alive(monitor)),
        "monitor {monitor} outlived the program"
    );
    assert!(holders(&env.lock_file_of(&tuner.source())).is_empty());
}

#[test]
fn the_monitor_holds_no_lock_descriptor_and_no_descriptor_of_the_launcher() {
    let (env, tuner, notify) = start(true);
    let program = launch_reader(&env, &notify, &tuner, &[]);
    tuner.wait_for_client();
    let monitor = monitor_of(&notify.collect(INTERVAL * 2), program.pid());
    let lock = fs::metadata(env.lock_file_of(&tuner.source())).expect("lock file");

    let mut descriptors = Vec::new();
    for entry in fs::read_dir(format!("/proc/{monitor}/fd")).expect("monitor's fds") {
        let entry = entry.expect("fd entry");
        let fd: i32 = entry.file_name().to_str().expect("fd").parse().expect("fd");
        let target = fs::read_link(entry.path()).unwrap_or_default();
        if let Ok(meta) = fs::metadata(entry.path()) {
            assert!(
                !(meta.dev() == lock.dev() && meta.ino() == lock.ino()),
                "the monitor holds the lock file as fd {fd}"
            );
        }
        descriptors.push((fd, target));
    }
    // 0-2, the exec pipe, its own notify socket and the pidfd it follows
    // the program by (ECP-0136); never a file of ours.
    for (fd, target) in &descriptors {
        let target = target.to_string_lossy();
        assert!(
            *fd <= 2
                || target.starts_with("pipe:")
                || target.starts_with("socket:")
                || target == "anon_inode:[pidfd]",
            "unexpected descriptor {fd} -> {target} in the monitor: {descriptors:?}"
        );
    }
    assert_eq!(comm(monitor), "ec-watchdog");
}

#[test]
fn with_tuner_slots_the_monitor_holds_no_slot_descriptor_and_the_program_holds_one() {
    let (env, tuner, notify) = start(true);
    let program = launch_reader(&env, &notify, &tuner, &["--tuners", "2"]);
    tuner.wait_for_client();
    let monitor = monitor_of(&notify.collect(INTERVAL * 3), program.pid());
    let slots: Vec<fs::Metadata> = fs::read_dir(env.lock_dir())
        .expect("lock dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".slot"))
        .map(|e| e.metadata().expect("slot metadata"))
        .collect();
    assert!(!slots.is_empty(), "no slot file was made");
    let open_in = |pid: i32| -> Vec<(u64, u64)> {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fds")
            .flatten()
            .filter_map(|e| fs::metadata(e.path()).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect()
    };
    let is_slot =
        |(dev, ino): &(u64, u64)| slots.iter().any(|m| m.dev() == *dev && m.ino() == *ino);
    assert_eq!(
        open_in(program.pid() as i32)
            .iter()
            .filter(|f| is_slot(f))
            .count(),
        1,
        "the program should hold exactly one slot"
    );
    assert!(
        !open_in(monitor).iter().any(is_slot),
        "the monitor holds a tuner slot"
    );
}

#[test]
fn without_watchdog_usec_it_warns_once_and_starts_no_monitor() {
    let (env, tuner, notify) = start(true);
    let program = watched(&env, &tuner.source(), &notify.address)
        .env_remove("WATCHDOG_USEC")
        .program(TestEnv::sh(
            "echo \"$(cat /proc/$$/task/*/children)\" > children; sleep 1",
        ))
        .spawn();
    let pings = notify.collect(INTERVAL * 3);
    let (status, stderr) = program.finish();
    assert_eq!(status, Some(0), "{stderr}");
    assert!(pings.is_empty(), "{pings:?}");
    assert_eq!(
        stderr.matches("WATCHDOG_USEC is not set").count(),
        1,
        "one warning expected: {stderr}"
    );
    // The shell's only child when it looked was the command substitution.
    let children = fs::read_to_string(env.path("children")).expect("children");
    for pid in children.split_whitespace() {
        assert_ne!(comm(pid.parse().expect("pid")), "ec-watchdog");
    }
}

#[test]
fn a_watchdog_meant_for_another_pid_starts_no_monitor() {
    let (env, tuner, notify) = start(true);
    let program = watched(&env, &tuner.source(), &notify.address)
        .env("WATCHDOG_PID", "1")
        .program(["sleep", "1"])
        .spawn();
    let pings = notify.collect(INTERVAL * 3);
    let (status, stderr) = program.finish();
    assert_eq!(status, Some(0), "{stderr}");
    assert!(pings.is_empty(), "{pings:?}");
    assert!(
        stderr.contains("WATCHDOG_PID=1 names another process"),
        "{stderr}"
    );
}

#[test]
fn notify_socket_and_watchdog_variables_reach_the_program_unchanged() {
    let (env, tuner, notify) = start(true);
    let program = launch(
        &env,
        &notify,
        &tuner.source(),
        "printf '%s|%s|%s' \"$NOTIFY_SOCKET\" \"$WATCHDOG_USEC\" \"${WATCHDOG_PID-unset}\" > seen",
    );
    let (status, stderr) = program.finish();
    assert_eq!(status, Some(0), "{stderr}");
    assert_eq!(
        fs::read_to_string(env.path("seen")).expect("seen"),
        format!("{}|{WATCHDOG_USEC}|unset", notify.address)
    );
}

#[test]
fn an_abstract_notify_socket_gets_the_pings() {
    let env = TestEnv::new();
    let tuner = Tuner::start(true);
    let notify = Notify::bind_abstract(&format!("ec-launch-test/notify/{}", std::process::id()));
    let program = launch_reader(&env, &notify, &tuner, &[]);
    tuner.wait_for_client();
    let pings = notify.collect(INTERVAL * 4);
    assert!(pings.len() >= 2, "{pings:?}");
    monitor_of(&pings, program.pid());
}

#[test]
fn a_launch_waiting_for_the_lock_keeps_the_watchdog_fed() {
    let (env, tuner, notify) = start(false);
    let _holder = env.hold(&tuner.source(), &["sleep", "30"]);
    let waiting = watched(&env, &tuner.source(), &notify.address)
        .args(["--on-busy", "wait"])
        .program(["true"])
        .spawn();
    // A standby is healthy: systemd must not restart it for want of bytes.
    let pings = notify.collect(INTERVAL * 5);
    assert!(
        pings.len() >= 3,
        "a waiting launch was not kept alive: {pings:?}"
    );
    monitor_of(&pings, waiting.pid());
}

#[test]
fn sources_without_a_tcp_byte_count_are_refused_before_locking() {
    let env = TestEnv::new();
    for source in ["udp://239.0.0.1:1234", "srt://127.0.0.1:9000", "/dev/null"] {
        watched(&env, source, "/nonexistent")
            .program(["true"])
            .label(source)
            .expect_status(64)
            .stderr_starts_with("error: --progress-watchdog cannot watch this source: ")
            .stderr_contains("; drop --progress-watchdog")
            .stderr_lines(1)
            .lock_dir_untouched()
            .run();
    }
}

#[test]
fn a_credential_in_the_source_never_shows_in_the_watchdogs_messages() {
    let (env, tuner, notify) = start(false);
    let source = format!(
        "http://op:S3CR3T@127.0.0.1:{}/auto/v5.1?token=S3CR3T",
        tuner.port
    );
    let program = watched(&env, &source, &notify.address)
        .env("EC_LAUNCH_LOG", "debug")
        .program([
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{}; sleep 2", tuner.port),
        ])
        .spawn();
    // The monitor lives as long as the program: its command line (readable
    // by every local user) must not keep the launcher's `--source URL`.
    let monitor = monitor_of(&notify.collect(INTERVAL * 2), program.pid());
    let cmdline = fs::read(format!("/proc/{monitor}/cmdline")).expect("monitor's cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        !cmdline.contains("S3CR3T") && !cmdline.contains("127.0.0.1"),
        "the monitor's command line shows the source: {cmdline:?}"
    );
    let (status, stderr) = program.finish();
    assert_eq!(status, Some(0), "{stderr}");
    assert!(
        stderr.contains("no bytes received from 127.0.0.1:"),
        "{stderr}"
    );
    assert!(!stderr.contains("S3CR3T"), "{stderr}");
}

#[test]
fn a_host_name_that_resolves_to_nothing_is_said_once_and_gets_no_ping() {
    let env = TestEnv::new();
    let notify = Notify::bind(&env);
    let program = watched(
        &env,
        "http://no-such-tuner.invalid:5004/auto/v5.1",
        &notify.address,
    )
    .program(["sleep", "2"])
    .spawn();
    // The start's ping, then none: nothing can be counted.
    let start = Instant::now();
    let pings = notify.collect(INTERVAL * 5);
    let (status, stderr) = program.finish();
    assert_eq!(status, Some(0), "{stderr}");
    assert!(
        !pings.is_empty() && after_start_up(&pings, start).is_empty(),
        "{pings:?}"
    );
    assert_eq!(
        stderr
            .matches("no-such-tuner.invalid:5004 resolves to no address")
            .count(),
        1,
        "{stderr}"
    );
}

// Issue 20 item 3 (ECP-0136). Failed before the fix: the monitor's
// parent-death signal follows the thread that forked it, the program's
// main thread, so `pthread_exit` there killed the monitor and a healthy
// publisher stopped feeding the watchdog.
#[test]
fn a_program_whose_main_thread_exits_keeps_being_watched() {
    let (env, tuner, notify) = start(true);
    let binary = crate::testenv::build_support_program(&env, "main_thread_exits", None);
    let script = format!("exec '{}' 127.0.0.1 {}", binary.display(), tuner.port);
    let program = launch(&env, &notify, &tuner.source(), &script);
    tuner.wait_for_client();
    let pid = program.pid();
    assert!(
        wait_until(PATIENCE, || fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z')))),
        "the program's main thread never exited"
    );
    let _ = notify.collect(INTERVAL);
    let pings = notify.collect(INTERVAL * 6);
    assert!(
        pings.len() >= 4,
        "pings stopped after the main thread exited: {pings:?}"
    );
    let monitor = monitor_of(&pings, pid);
    // And it still goes with the program.
    drop(program);
    assert!(
        wait_until(Duration::from_secs(2), || !alive(monitor)),
        "monitor {monitor} outlived the program"
    );
}

/// Issue #16 item 3 (ECP-0135 section 4): in cluster mode only the
/// supervising launcher vouches to systemd, for its renewal and the
/// program's progress together. These run a real etcd; the fake notify
/// socket names each ping's sender (as `NotifyAccess=main` would judge it).
mod cluster {
    use super::*;
    use crate::etcd_server::EtcdServer;

    /// `ec-launch run --progress-watchdog --progress-window 1 --etcd …` on
    /// the stand-in tuner, its child reading the stream.
    fn launch_in_cluster(
        env: &TestEnv,
        etcd: &EtcdServer,
        notify: &Notify,
        tuner: &Tuner,
    ) -> Guard {
        launch_reader(
            env,
            notify,
            tuner,
            &[
                "--progress-window",
                "1",
                "--etcd",
                &etcd.endpoints(),
                "--node",
                "a",
                "--etcd-ttl",
                "6",
                "--etcd-stop-grace",
                "1",
            ],
        )
    }

    fn senders(pings: &[Ping]) -> std::collections::BTreeSet<i32> {
        pings.iter().map(|p| p.pid).collect()
    }

    #[test]
    fn only_the_launcher_pings_and_a_frozen_launcher_gets_no_ping_from_anyone() {
        let etcd = EtcdServer::start();
        let (env, tuner, notify) = start(true);
        let mut launcher = launch_in_cluster(&env, &etcd, &notify, &tuner);
        tuner.wait_for_client();
        let launcher_pid = i32::try_from(launcher.pid()).expect("pid");
        let running = notify.collect(INTERVAL * 5);
        assert!(!running.is_empty(), "no pings while streaming");
        assert_eq!(
            senders(&running),
            std::collections::BTreeSet::from([launcher_pid]),
            "a ping from another process than the launcher: {running:?}"
        );
        let pid = nix::unistd::Pid::from_raw(launcher_pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        // What was in flight at the stop, then silence from everyone.
        let _ = notify.collect(SLACK);
        let frozen = notify.collect(INTERVAL * 6);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
        assert!(
            frozen.is_empty(),
            "pings for a frozen launcher (systemd would keep it): {frozen:?}"
        );
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let _ = launcher.0.wait();
    }

    #[test]
    fn a_stalled_source_stops_the_pings_though_the_lease_is_renewed_and_progress_resumes_them() {
        let etcd = EtcdServer::start();
        let (env, tuner, notify) = start(true);
        let mut launcher = launch_in_cluster(&env, &etcd, &notify, &tuner);
        tuner.wait_for_client();
        assert!(
            !notify.collect(INTERVAL * 4).is_empty(),
            "no pings while streaming"
        );
        tuner.set_streaming(false);
        // The window (1 s) and a monitor tick pass, then no ping at all.
        let _ = notify.collect(Duration::from_secs(1) + INTERVAL + SLACK);
        let stalled = notify.collect(INTERVAL * 6);
        assert!(stalled.is_empty(), "pinged without progress: {stalled:?}");
        assert!(
            launcher.0.try_wait().expect("try_wait").is_none(),
            "the launcher ended: the lease is renewed, only the pings stop"
        );
        tuner.set_streaming(true);
        let resumed = notify.collect(INTERVAL * 5);
        assert!(!resumed.is_empty(), "progress again, but no ping");
        // SIGTERM, forwarded to the program's group: nothing is left
        // holding stderr, which `finish` reads to its end.
        let pid = nix::unistd::Pid::from_raw(i32::try_from(launcher.pid()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let (_, stderr) = launcher.finish();
        assert!(
            stderr.contains("withholding WATCHDOG=1"),
            "the stall was not logged: {stderr}"
        );
    }

    #[test]
    fn progress_window_needs_progress_watchdog_and_etcd() {
        let env = TestEnv::new();
        let tuner = Tuner::start(true);
        env.launch(tuner.source())
            .args(["--progress-window", "5"])
            .program(["true"])
            .expect_status(2)
            .run();
        env.launch(tuner.source())
            .args(["--progress-watchdog", "--progress-window", "5"])
            .program(["true"])
            .expect_status(64)
            .stderr_contains("--progress-window was given without --etcd")
            .run();
    }
}
