//! The tuner emulator (`crates/ec-test-support/src/tuner_emulator.rs`, the `tuner-emulator`
//! example) on loopback: the systemd suite and the NixOS VM test trust it to
//! refuse like a busy HDHomeRun and to free a tuner when its reader goes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::testenv::{PATIENCE, wait_until};
use crate::tuner_emulator::{Api, Discover, Options, serve_forever};

/// An emulated device of `tuners` tuners on a free loopback port; its thread
/// ends with the test process.
fn device(tuners: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || serve_forever(&listener, tuners));
    address
}

/// `GET path`: the status line's code, the headers, and the connection left
/// at the body.
fn get(device: SocketAddr, path: &str) -> (u16, String, BufReader<TcpStream>) {
    let mut stream = TcpStream::connect(device).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: tuner\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let mut headers = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
            break;
        }
        headers.push_str(&line);
    }
    (code, headers, reader)
}

fn stats(device: SocketAddr) -> serde_json::Value {
    let (code, _, mut body) = get(device, "/stats");
    assert_eq!(code, 200);
    let mut text = String::new();
    body.read_to_string(&mut text).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_stream_beyond_the_tuner_count_is_refused_with_503_and_805_all_tuners_in_use() {
    let device = device(1);
    let (code, _, mut stream) = get(device, "/auto/v5.1");
    assert_eq!(code, 200);
    let mut packet = [0_u8; 188];
    stream.read_exact(&mut packet).unwrap();
    assert_eq!(&packet[..3], &[0x47, 0x1F, 0xFF], "an MPEG-TS null packet");

    let (code, headers, _) = get(device, "/auto/v5.1");
    assert_eq!(code, 503, "{headers}");
    assert!(
        headers.contains("X-HDHomeRun-Error: 805 All Tuners In Use"),
        "{headers}"
    );
    let (code, _, _) = get(device, "/tuner0/v7.1");
    assert_eq!(code, 503, "a named tuner in use is refused too");
    let now = stats(device);
    assert_eq!(now["open_streams"], 1, "{now}");
    assert_eq!(now["busy_503"], 2, "{now}");
    assert_eq!(now["streams_served"], 1, "{now}");
    drop(stream);
}

#[test]
fn a_reader_that_closes_its_connection_frees_its_tuner_for_the_next() {
    let device = device(1);
    let (code, _, first) = get(device, "/auto/v5.1");
    assert_eq!(code, 200);
    drop(first);
    // No wait: the kernel already knows the first reader is gone.
    let (code, headers, _second) = get(device, "/auto/v5.1");
    assert_eq!(code, 200, "{headers}");
    assert!(wait_until(PATIENCE, || stats(device)["open_streams"] == 1));
    assert_eq!(stats(device)["busy_503"], 0);
}

#[test]
fn each_tuner_serves_one_reader_and_unknown_paths_are_404() {
    let device = device(2);
    let (a, _, _first) = get(device, "/auto/v5.1");
    let (b, _, _second) = get(device, "/tuner1/v4.1");
    let (c, _, _) = get(device, "/auto/v5.1");
    assert_eq!((a, b, c), (200, 200, 503));
    assert_eq!(get(device, "/discover").0, 404);
}

#[test]
fn the_emulator_command_line_takes_addresses_a_tuner_count_and_the_device_apis_answers_and_nothing_else()
 {
    let parse = |args: &[&str]| {
        Options::from_args(&args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
    };
    assert_eq!(
        parse(&[]),
        Ok(Some(Options {
            listen: "127.0.0.1:5004".into(),
            tuners: 2,
            api_listen: None,
            api: Api::default(),
        }))
    );
    assert_eq!(
        parse(&["--listen", "0.0.0.0:80", "--tuners=4"]),
        Ok(Some(Options {
            listen: "0.0.0.0:80".into(),
            tuners: 4,
            api_listen: None,
            api: Api::default(),
        }))
    );
    assert_eq!(
        parse(&[
            "--api",
            "127.0.0.5:80",
            "--discover",
            "404",
            "--tuner-count",
            "0",
            "--device-id=1318A0B2"
        ]),
        Ok(Some(Options {
            listen: "127.0.0.1:5004".into(),
            tuners: 2,
            api_listen: Some("127.0.0.5:80".into()),
            api: Api {
                discover: Discover::NotFound,
                tuner_count: Some(0),
                device_id: "1318A0B2".into(),
            },
        }))
    );
    assert_eq!(parse(&["--help"]), Ok(None));
    for bad in [
        &["--tuners", "0"][..],
        &["--tuners", "two"],
        &["--listen"],
        &["127.0.0.1:5004"],
        &["--discover", "maybe"],
        &["--tuner-count", "many"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?} was accepted");
    }
}

fn json(device: SocketAddr, path: &str) -> serde_json::Value {
    let (code, headers, mut body) = get(device, path);
    assert_eq!(code, 200, "{path}: {headers}");
    let mut text = String::new();
    body.read_to_string(&mut text).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text:?}"))
}

#[test]
fn discover_json_reports_the_tuner_count_and_a_device_id() {
    let device = device(3);
    let discover = json(device, "/discover.json");
    assert_eq!(discover["TunerCount"], 3, "{discover}");
    assert!(discover["DeviceID"].is_string(), "{discover}");
}

#[test]
fn status_json_names_each_tuners_channel_and_the_peer_address_of_its_stream() {
    let device = device(2);
    let (code, _, stream) = get(device, "/auto/v5.1");
    assert_eq!(code, 200);
    let status = json(device, "/status.json");
    assert_eq!(
        status,
        serde_json::json!([
            {"Resource": "tuner0", "VctNumber": "5.1", "VctName": "EMU5.1",
             "Frequency": 503_000_000, "TargetIP": "127.0.0.1"},
            {"Resource": "tuner1"}
        ])
    );
    drop(stream);
    // A closed reader's tuner is idle in the device's own view at once.
    assert_eq!(
        json(device, "/status.json")[0],
        serde_json::json!({"Resource": "tuner0"})
    );
}

/// Bytes that arrive on `stream` within `window`.
fn bytes_within(stream: &mut BufReader<TcpStream>, window: Duration) -> usize {
    let deadline = std::time::Instant::now() + window;
    let mut total = 0;
    let mut buffer = [0_u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return total;
        }
        stream.get_ref().set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
    }
}

#[test]
fn a_stalled_device_keeps_its_streams_open_but_sends_nothing_until_resumed() {
    let device = device(2);
    let (code, _, mut stream) = get(device, "/auto/v5.1");
    assert_eq!(code, 200);
    assert!(bytes_within(&mut stream, Duration::from_millis(200)) > 0);

    let (code, _, _) = get(device, "/control/stall");
    assert_eq!(code, 200, "the emulator takes a stall command");
    // What was in flight before the stall drains within one read timeout;
    // after that the stream stays open and silent.
    bytes_within(&mut stream, Duration::from_millis(300));
    assert_eq!(bytes_within(&mut stream, Duration::from_millis(500)), 0);
    assert_eq!(stats(device)["open_streams"], 1, "the tuner stays taken");

    let (code, _, _) = get(device, "/control/resume");
    assert_eq!(code, 200, "the emulator takes a resume command");
    assert!(bytes_within(&mut stream, Duration::from_millis(300)) > 0);
}
