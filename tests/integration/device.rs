//! Asking the device (issue #10, ECP-0132): `run --tuners auto` against the
//! tuner emulator's `discover.json` on port 80, and `status --device`
//! comparing the emulator's `status.json` with the slots held here.
//!
//! Each test has its own loopback address (127.0.0.x), since port 80 is one
//! per address; binding it needs root (`require_root!`). The emulator runs
//! in this process, on threads that end with it.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::FromRawFd as _;
use std::time::{Duration, Instant};

use crate::testenv::{BUSY, PATIENCE, TestEnv, require_root, wait_until};
use crate::tuner_emulator::{Api, Discover, serve_device};

/// A credential in every source: it must never show in any output.
const SECRET: &str = "s3cr3t-t0ken";

fn source(ip: Ipv4Addr, channel: u32) -> String {
    format!("http://{ip}:5004/auto/v{channel}.1?token={SECRET}")
}

/// An emulated device of `tuners` tuners at `ip`: streams on port 5004, its
/// HTTP API on port 80, both answered by one device.
fn device(ip: Ipv4Addr, tuners: usize, api: Api) {
    let listeners = [5004, 80].map(|port| {
        TcpListener::bind((ip, port)).unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"))
    });
    std::thread::spawn(move || serve_device(listeners.into(), tuners, api));
}

fn discovering(discover: Discover) -> Api {
    Api {
        discover,
        ..Api::default()
    }
}

/// `ec-launch run --tuners auto` on channel 1 of the device at `ip`.
fn tuners_auto(env: &TestEnv, ip: Ipv4Addr) -> crate::testenv::Invocation<'_> {
    env.launch(source(ip, 1)).args(["--tuners", "auto"])
}

/// A launch on channel 1 of the device at `ip` that takes one of its
/// `tuners` slots and ends at once, so a slot file names the device.
#[track_caller]
fn take_a_slot(env: &TestEnv, ip: Ipv4Addr, tuners: &str) {
    env.launch(source(ip, 1))
        .args(["--tuners", tuners])
        .program(["true"])
        .run();
}

/// `sh -c` that leaves `ran-<name>` and then sleeps, holding what it holds.
fn held_program(name: &str) -> Vec<String> {
    TestEnv::sh(&format!("touch ran-{name}; exec sleep 300"))
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn tuners_auto_takes_the_tuner_count_from_discover_json() {
    require_root!("listen on port 80 of a loopback address");
    let ip = Ipv4Addr::new(127, 0, 0, 21);
    device(
        ip,
        4,
        Api {
            tuner_count: Some(3),
            ..Api::default()
        },
    );
    let env = TestEnv::new();
    let _holders: Vec<_> = (1..=3)
        .map(|n| {
            let holder = env
                .launch(source(ip, n))
                .args(["--tuners", "auto"])
                .program(held_program(&n.to_string()))
                .spawn();
            assert!(
                wait_until(PATIENCE, || env.path(&format!("ran-{n}")).exists()),
                "launcher {n} of 3 never ran"
            );
            holder
        })
        .collect();
    env.launch(source(ip, 4))
        .args(["--tuners", "auto"])
        .expect_status(BUSY)
        .output_lacks(SECRET)
        .program_did_not_run()
        .run();
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn tuners_auto_on_a_device_without_discover_json_exits_78_asking_for_a_count() {
    require_root!("listen on port 80 of a loopback address");
    let ip = Ipv4Addr::new(127, 0, 0, 22);
    device(ip, 2, discovering(Discover::NotFound));
    tuners_auto(&TestEnv::new(), ip)
        .expect_status(78)
        .one_line_error(format!(
            "cannot ask device {ip} for its tuner count (GET http://{ip}/discover.json)"
        ))
        .stderr_contains("pass --tuners N")
        .output_lacks(SECRET)
        .program_did_not_run()
        .run();
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn tuners_auto_on_a_device_reporting_no_usable_tuner_count_exits_78() {
    require_root!("listen on port 80 of a loopback address");
    let ip = Ipv4Addr::new(127, 0, 0, 23);
    device(
        ip,
        2,
        Api {
            tuner_count: Some(0),
            ..Api::default()
        },
    );
    tuners_auto(&TestEnv::new(), ip)
        .expect_status(78)
        .one_line_error("no usable TunerCount")
        .program_did_not_run()
        .run();
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn tuners_auto_on_a_hung_device_gives_up_after_the_timeouts_and_exits_69() {
    require_root!("listen on port 80 of a loopback address");
    let ip = Ipv4Addr::new(127, 0, 0, 24);
    device(ip, 2, discovering(Discover::Hang));
    let env = TestEnv::new();
    let started = Instant::now();
    tuners_auto(&env, ip)
        .expect_status(69)
        .one_line_error("no complete answer within 2s")
        .output_lacks(SECRET)
        .program_did_not_run()
        .run();
    let took = started.elapsed();
    // Two attempts of a 2 s deadline each; never the emulator's minute.
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "took {took:?}"
    );
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn tuners_auto_on_a_device_answering_garbage_exits_69() {
    require_root!("listen on port 80 of a loopback address");
    let ip = Ipv4Addr::new(127, 0, 0, 25);
    device(ip, 2, discovering(Discover::Garbage));
    tuners_auto(&TestEnv::new(), ip)
        .expect_status(69)
        .one_line_error("malformed answer: not JSON")
        .output_lacks(SECRET)
        .program_did_not_run()
        .run();
}

#[test]
fn tuners_auto_on_a_source_without_a_host_has_nothing_to_ask_and_exits_64() {
    TestEnv::new()
        .launch("/dev/null")
        .args(["--tuners", "auto", "--device", "attic"])
        .expect_status(64)
        .one_line_error("--tuners auto asks the source's host, and the source names no host")
        .program_did_not_run()
        .lock_dir_untouched()
        .run();
}

#[test]
fn tuners_auto_with_nothing_listening_exits_69_and_a_number_never_asks() {
    // Nothing listens on 127.0.0.26:80: refused at once, no root needed.
    let ip = Ipv4Addr::new(127, 0, 0, 26);
    let env = TestEnv::new();
    tuners_auto(&env, ip)
        .expect_status(69)
        .one_line_error(format!("cannot ask device {ip} for its tuner count"))
        .stderr_contains("the device did not answer: Connection refused (os error 111); check")
        .output_lacks(SECRET)
        .program_did_not_run()
        .run();
    // With a number, the same unreachable device is never asked.
    env.launch(source(ip, 1))
        .args(["--tuners", "2"])
        .program_ran()
        .run();
}

/// A publisher stand-in: streams `channel` from the device at `ip` from the
/// address the kernel picks (bash's /dev/tcp, on a descriptor bash picks
/// above the inherited lock and slot descriptors), leaves `ran-<name>` once
/// the device has answered, and reads until killed.
fn streamer(ip: Ipv4Addr, channel: u32, name: &str) -> Vec<String> {
    let script = format!(
        "exec {{tuner}}<>/dev/tcp/{ip}/5004 && printf 'GET /auto/v{channel}.1 HTTP/1.1\\r\\nHost: {ip}\\r\\n\\r\\n' >&$tuner \
         && read -r status <&$tuner && touch ran-{name} && exec cat <&$tuner >/dev/null"
    );
    vec!["bash".into(), "-c".into(), script]
}

/// A launch on channel 1 of the device at `ip` with `tuners` slots whose
/// [`streamer`] reads until the test ends; returns once the device answered.
#[track_caller]
fn stream_under_a_slot(env: &TestEnv, ip: Ipv4Addr, tuners: &str) -> crate::testenv::Guard {
    let ours = env
        .launch(source(ip, 1))
        .args(["--tuners", tuners])
        .program(streamer(ip, 1, "ours"))
        .spawn();
    assert!(wait_until(PATIENCE, || env.path("ran-ours").exists()));
    ours
}

/// A reader outside any launcher streaming `channel` from the device at
/// `device`, from the local address `from` (bound before connecting, as
/// another node's address would be); it holds a tuner while it lives.
fn reader_from(from: Ipv4Addr, device: Ipv4Addr, channel: u32) -> BufReader<TcpStream> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned by
    // the TcpStream made from it below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let mut stream = unsafe { TcpStream::from_raw_fd(fd) };
    let address = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap(),
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let (local, remote) = (address(from, 0), address(device, 5004));
    let size = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap();
    // SAFETY: both addresses are valid sockaddr_in values of `size` bytes
    // that outlive the calls.
    let (bound, connected) = unsafe {
        (
            libc::bind(fd, (&raw const local).cast(), size),
            libc::connect(fd, (&raw const remote).cast(), size),
        )
    };
    assert_eq!(
        (bound, connected),
        (0, 0),
        "{}",
        std::io::Error::last_os_error()
    );
    write!(
        stream,
        "GET /auto/v{channel}.1 HTTP/1.1\r\nHost: {device}\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(
        status.contains(" 200 "),
        "the device refused the reader: {status:?}"
    );
    reader
}

/// `ec-launch status --lock-dir <env> --device [extra…]`.
fn status_device<'e>(env: &'e TestEnv, extra: &[&str]) -> crate::testenv::Invocation<'e> {
    env.status().arg("--device").args(extra)
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn status_device_reports_a_reader_from_another_address_as_foreign_and_exits_6() {
    require_root!("listen on port 80 of a loopback address");
    let ip = Ipv4Addr::new(127, 0, 0, 27);
    device(ip, 2, Api::default());
    let env = TestEnv::new();
    let _ours = stream_under_a_slot(&env, ip, "2");
    status_device(&env, &[])
        .stdout_contains(format!("{ip}"))
        .output_lacks("foreign reader")
        .output_lacks(SECRET)
        .run();

    let foreign = reader_from(Ipv4Addr::new(127, 0, 0, 9), ip, 7);
    status_device(&env, &[])
        .expect_status(6)
        .stdout_contains(format!(
            "! foreign reader: device {ip} reports tuner1 on channel 7.1 streaming to 127.0.0.9, not this node (127.0.0.1)"
        ))
        .output_lacks(SECRET)
        .run();
    let json = status_device(&env, &["--json"])
        .expect_status(6)
        .run()
        .json();
    let entry = json["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == ip.to_string())
        .unwrap_or_else(|| panic!("no device {ip} in {json}"));
    assert_eq!(
        entry["foreign_readers"][0]["target"], "127.0.0.9",
        "{entry}"
    );
    assert_eq!(
        entry["foreign_readers"][0]["reason"], "other_target",
        "{entry}"
    );
    assert_eq!(entry["our_address"], "127.0.0.1", "{entry}");

    drop(foreign);
    status_device(&env, &[])
        .output_lacks("foreign reader")
        .run();
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn status_device_reports_a_reader_on_this_node_that_took_no_slot_and_exits_6() {
    require_root!("listen on port 80 of a loopback address");
    let ip = Ipv4Addr::new(127, 0, 0, 28);
    device(ip, 3, Api::default());
    let env = TestEnv::new();
    let _ours = stream_under_a_slot(&env, ip, "3");
    // A hand-started reader on this node: same address, no slot.
    let _stray = reader_from(Ipv4Addr::LOCALHOST, ip, 4);
    status_device(&env, &[])
        .expect_status(6)
        .stdout_contains("streaming to this node (127.0.0.1), beyond the slots held here")
        .run();
}

#[test]
fn status_device_on_a_device_that_cannot_be_asked_warns_and_exits_69() {
    // Nothing listens on 127.0.0.29:80; a slot file names the device.
    let ip = Ipv4Addr::new(127, 0, 0, 29);
    let env = TestEnv::new();
    take_a_slot(&env, ip, "2");
    status_device(&env, &[])
        .expect_status(69)
        .stdout_contains(format!(
            "cannot ask device {ip} for its tuners (GET http://{ip}/status.json): the device did not answer: Connection refused"
        ))
        .run();
    // Without --device, nothing is asked.
    env.status().output_lacks("cannot ask").run();
}

/// A device whose HTTP API answers every request with `status_json` as
/// its `status.json`, at `ip`:80, until the test ends.
fn device_reporting(ip: Ipv4Addr, status_json: &'static str) {
    let listener = TcpListener::bind((ip, 80)).unwrap_or_else(|e| panic!("bind {ip}:80: {e}"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{status_json}",
                status_json.len()
            );
        }
    });
}

/// The first device's `device_tuners` in a `status --device --json`
/// report, checked to be `count` long.
#[track_caller]
fn device_tuners(json: &serde_json::Value, count: usize) -> &Vec<serde_json::Value> {
    let tuners = json["devices"][0]["device_tuners"]
        .as_array()
        .unwrap_or_else(|| panic!("no device_tuners: {json:#}"));
    assert_eq!(tuners.len(), count, "{json:#}");
    tuners
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn status_device_keeps_the_tuners_a_device_reports_beside_one_it_reports_without_a_resource() {
    require_root!("listen on port 80 of a loopback address");
    let ip = Ipv4Addr::new(127, 0, 0, 42);
    // The first tuner has no Resource; the second streams elsewhere.
    device_reporting(
        ip,
        r#"[{"VctNumber":"5.1","TargetIP":"127.0.0.9"},
            {"Resource":"tuner1","VctNumber":"7.1","TargetIP":"127.0.0.9"},
            {"Resource":"tuner2"}]"#,
    );
    let env = TestEnv::new();
    take_a_slot(&env, ip, "2");
    status_device(&env, &[])
        .expect_status(6)
        .stdout_contains(format!(
            "! foreign reader: device {ip} reports tuner1 on channel 7.1 streaming to 127.0.0.9"
        ))
        .stdout_contains("gives no Resource")
        .output_lacks(SECRET)
        .run();
    let json = status_device(&env, &["--json"])
        .expect_status(6)
        .run()
        .json();
    let tuners = device_tuners(&json, 3);
    assert_eq!(tuners[1]["tuner"], "tuner1", "{json:#}");
    assert_eq!(tuners[0]["problem"], "no_resource", "{json:#}");
    assert_eq!(
        json["devices"][0]["foreign_readers"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "the unnamed tuner streams elsewhere too: {json:#}"
    );
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn status_device_with_an_entry_that_is_no_tuner_keeps_the_rest_and_says_the_view_is_partial() {
    require_root!("listen on port 80 of a loopback address");
    let ip = Ipv4Addr::new(127, 0, 0, 43);
    device_reporting(ip, r#"[{"Resource":"tuner0"}, 7, {"Resource":"tuner2"}]"#);
    let env = TestEnv::new();
    take_a_slot(&env, ip, "2");
    // No foreign reader among what it says, but one entry says nothing:
    // "no foreign reader" is not established.
    let json = status_device(&env, &["--json"])
        .expect_status(69)
        .run()
        .json();
    let tuners = device_tuners(&json, 3);
    assert_eq!(tuners[1]["problem"], "unreadable", "{json:#}");
    assert_eq!(tuners[2]["tuner"], "tuner2", "{json:#}");
}
