//! The tuner emulator (`tests/support/tuner_emulator.rs`, the `tuner-emulator`
//! example) on loopback: the systemd suite and the NixOS VM test trust it to
//! refuse like a busy HDHomeRun and to free a tuner when its reader goes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::testenv::{PATIENCE, wait_until};
use crate::tuner_emulator::{Options, serve_forever};

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
fn the_emulator_command_line_takes_a_listen_address_and_a_tuner_count_and_nothing_else() {
    let parse = |args: &[&str]| {
        Options::from_args(&args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
    };
    assert_eq!(
        parse(&[]),
        Ok(Some(Options {
            listen: "127.0.0.1:5004".into(),
            tuners: 2
        }))
    );
    assert_eq!(
        parse(&["--listen", "0.0.0.0:80", "--tuners=4"]),
        Ok(Some(Options {
            listen: "0.0.0.0:80".into(),
            tuners: 4
        }))
    );
    assert_eq!(parse(&["--help"]), Ok(None));
    for bad in [
        &["--tuners", "0"][..],
        &["--tuners", "two"],
        &["--listen"],
        &["127.0.0.1:5004"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?} was accepted");
    }
}
