//! A tuner emulator that answers like an HDHomeRun's HTTP streaming port:
//! the one stand-in for a tuner device in every test that needs one.
//!
//! It is built two ways from this one file: as the example program
//! `tuner-emulator` (`cargo build --example tuner-emulator`; the NixOS VM test
//! runs it as a service), and inside the systemd suite's multi-call binary,
//! which copies itself into its container under that name.
//!
//! The emulator has N tuners. `GET /auto/v<ch>` takes the first free tuner and
//! streams MPEG-TS null packets until the client closes the connection;
//! `GET /tuner<K>/v<ch>` takes tuner K. When no tuner is free (or tuner K is
//! taken) it answers 503, and with `X-HDHomeRun-Error: 805 All Tuners In Use`
//! when every tuner is taken, which is what a publisher saw in the incident.
//! `GET /stats` answers JSON: open streams, 503s served, streams served.
//! `GET /control/stall` makes every stream, open or new, send nothing while
//! keeping its connection and tuner (a stalled tuner: the publisher is
//! connected and receives no bytes); `GET /control/resume` ends that.
//!
//! It also answers the device's HTTP API, as an HDHomeRun does on port 80:
//! `GET /discover.json` (`TunerCount`, `DeviceID`; or, to test clients, a
//! 404 like older models, a connection that never answers, or garbage) and
//! `GET /status.json` (per tuner: `Resource`, and while streaming `VctNumber`
//! and `TargetIP`, the peer address of the stream). `--api ADDR` listens on
//! a second address (e.g. port 80) for the same device; every path is served
//! on every address.
//!
//! A tuner is held exactly as long as its TCP connection is open: a process
//! that ignores SIGTERM but keeps its socket keeps its tuner. A client that
//! closed its end frees the tuner before a new request is refused, because the
//! kernel already knows the connection is gone even if the streaming thread
//! has not yet woken up to notice.
//!
//! Only the standard library, `serde_json` and `nix`'s libc, so that it stays
//! cheap to build wherever the tests go.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

/// How often a stream sends a chunk, and so how long a closed client's
/// tuner can stay marked busy in the worst case.
const TICK: Duration = Duration::from_millis(20);
/// Seven MPEG-TS null packets (PID 0x1FFF), the size of one RTP-sized chunk.
const CHUNK_PACKETS: usize = 7;

#[derive(Debug)]
struct Stream {
    id: u64,
    channel: String,
    client: SocketAddr,
    since: Instant,
    /// A second handle on the client socket, used only to ask the kernel
    /// whether the client has closed.
    probe: TcpStream,
}

/// How `/discover.json` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Discover {
    /// 200 with `TunerCount` and `DeviceID`.
    #[default]
    Answer,
    /// 404, like models without `discover.json`.
    NotFound,
    /// Accepts, reads the request, never answers (closes after a minute).
    Hang,
    /// 200 with a body that is not JSON.
    Garbage,
}

/// What the device's HTTP API says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Api {
    pub discover: Discover,
    /// `TunerCount` in `discover.json` (the real count unless set).
    pub tuner_count: Option<usize>,
    pub device_id: String,
}

impl Default for Api {
    fn default() -> Self {
        Self {
            discover: Discover::Answer,
            tuner_count: None,
            device_id: "EC0DE501".to_owned(),
        }
    }
}

#[derive(Debug, Default)]
struct Device {
    api: Api,
    tuners: Vec<Option<Stream>>,
    next_id: u64,
    busy_503: u64,
    streams_served: u64,
    /// Set by `/control/stall`: streams stay open and send nothing.
    stalled: bool,
}

type Shared = Arc<Mutex<Device>>;

fn lock(device: &Shared) -> std::sync::MutexGuard<'_, Device> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How to call the program.
pub const USAGE: &str = "usage: tuner-emulator [--listen ADDR] [--tuners N] [--api ADDR]
                      [--discover answer|404|hang|garbage] [--tuner-count N] [--device-id ID]

Serves an HDHomeRun-like HTTP streaming port until killed.
  --listen ADDR       address and port to listen on (default 127.0.0.1:5004)
  --tuners N          number of tuners, at least 1 (default 2)
  --api ADDR          also listen here, e.g. 127.0.0.5:80 (the device's HTTP API port)
  --discover MODE     how /discover.json answers (default answer)
  --tuner-count N     the TunerCount /discover.json reports (default: --tuners)
  --device-id ID      the DeviceID /discover.json reports (default EC0DE501)";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub listen: String,
    pub tuners: usize,
    /// A second address serving the same device (the HTTP API's port 80).
    pub api_listen: Option<String>,
    pub api: Api,
}

impl Options {
    /// Parses the arguments after the program name; `Ok(None)` for `--help`.
    pub fn from_args(args: &[String]) -> Result<Option<Self>, String> {
        let mut options = Self {
            listen: "127.0.0.1:5004".to_owned(),
            tuners: 2,
            api_listen: None,
            api: Api::default(),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
                _ => (arg.as_str(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| args.next().cloned())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match flag {
                "-h" | "--help" => return Ok(None),
                "--listen" => options.listen = value("--listen")?,
                "--tuners" => {
                    let given = value("--tuners")?;
                    options.tuners = given.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("--tuners {given:?} is not a count of at least 1")
                    })?;
                }
                "--api" => options.api_listen = Some(value("--api")?),
                "--discover" => {
                    options.api.discover = match value("--discover")?.as_str() {
                        "answer" => Discover::Answer,
                        "404" => Discover::NotFound,
                        "hang" => Discover::Hang,
                        "garbage" => Discover::Garbage,
                        other => {
                            return Err(format!(
                                "--discover {other:?} is not answer, 404, hang or garbage"
                            ));
                        }
                    };
                }
                "--tuner-count" => {
                    let given = value("--tuner-count")?;
                    options.api.tuner_count = Some(
                        given
                            .parse()
                            .map_err(|_| format!("--tuner-count {given:?} is not a count"))?,
                    );
                }
                "--device-id" => options.api.device_id = value("--device-id")?,
                other => return Err(format!("unexpected argument {other:?}")),
            }
        }
        Ok(Some(options))
    }
}

/// `tuner-emulator [--listen ADDR] [--tuners N]`: serves until killed.
pub fn main(args: &[String]) -> ExitCode {
    let options = match Options::from_args(args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tuner-emulator: error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut listeners = Vec::new();
    for address in std::iter::once(&options.listen).chain(&options.api_listen) {
        match TcpListener::bind(address) {
            Ok(listener) => listeners.push(listener),
            Err(e) => {
                eprintln!("tuner-emulator: error: cannot listen on {address}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    eprintln!(
        "tuner-emulator: {} tuners on http://{}{}",
        options.tuners,
        options.listen,
        options
            .api_listen
            .as_deref()
            .map(|api| format!(" and http://{api}"))
            .unwrap_or_default()
    );
    serve_device(listeners, options.tuners, options.api);
    ExitCode::SUCCESS
}

/// Serves a device of `tuners` tuners on `listener`, one thread per
/// connection, until accepting fails for good (it does not, in practice).
#[allow(dead_code)] // the integration tests' in-process device; programs use serve_device
pub fn serve_forever(listener: &TcpListener, tuners: usize) {
    let device: Shared = Arc::new(Mutex::new(Device {
        tuners: (0..tuners).map(|_| None).collect(),
        ..Device::default()
    }));
    accept_forever(listener, &device);
}

/// A device of `tuners` tuners served in this process on a free loopback
/// port, for as long as the process lives.
pub fn spawn_on_loopback(tuners: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let address = listener.local_addr().expect("the listener's address");
    std::thread::spawn(move || serve_forever(&listener, tuners));
    address
}

/// The device's `/stats` (`busy_503` counts the streams refused busy).
pub fn stats(device: SocketAddr) -> serde_json::Value {
    let mut stream = TcpStream::connect(device).expect("connect to the emulator");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    write!(
        stream,
        "GET /stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .expect("ask for /stats");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read /stats");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

/// Serves one device of `tuners` tuners, whose HTTP API says `api`, on
/// every listener (one thread each beyond the first) until accepting fails.
pub fn serve_device(listeners: Vec<TcpListener>, tuners: usize, api: Api) {
    let device: Shared = Arc::new(Mutex::new(Device {
        api,
        tuners: (0..tuners).map(|_| None).collect(),
        ..Device::default()
    }));
    let mut threads = Vec::new();
    for listener in listeners {
        let device = Arc::clone(&device);
        threads.push(thread::spawn(move || accept_forever(&listener, &device)));
    }
    for thread in threads {
        let _ = thread.join();
    }
}

fn accept_forever(listener: &TcpListener, device: &Shared) {
    for connection in listener.incoming() {
        match connection {
            Ok(stream) => {
                let device = Arc::clone(device);
                thread::spawn(move || {
                    if let Err(e) = serve(&device, stream) {
                        eprintln!("tuner-emulator: connection: {e}");
                    }
                });
            }
            Err(e) => eprintln!("tuner-emulator: accept: {e}"),
        }
    }
}

fn serve(device: &Shared, mut stream: TcpStream) -> io::Result<()> {
    let client = stream.peer_addr()?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let path = read_request_path(&mut stream)?;
    let path = path.split('?').next().unwrap_or_default().to_owned();
    if path == "/stats" {
        let body = stats_body(&lock(device)).to_string();
        return respond(
            &mut stream,
            "200 OK",
            &[("Content-Type", "application/json")],
            &body,
        );
    }
    if let Some(command) = path.strip_prefix("/control/") {
        let stalled = match command {
            "stall" => true,
            "resume" => false,
            _ => return respond(&mut stream, "404 Not Found", &[], "unknown control\n"),
        };
        lock(device).stalled = stalled;
        eprintln!("tuner-emulator: {command}");
        return respond(&mut stream, "200 OK", &[], &format!("{command}\n"));
    }
    if path == "/discover.json" {
        return discover(device, &mut stream);
    }
    if path == "/status.json" {
        let body = tuner_status(&mut lock(device)).to_string();
        return respond_json(&mut stream, &body);
    }
    let Some((tuner, channel)) = parse_stream_path(&path) else {
        return respond(&mut stream, "404 Not Found", &[], "unknown path\n");
    };
    let taken = take_tuner(device, tuner, &channel, client, &stream)?;
    let (index, id) = match taken {
        Ok(taken) => taken,
        Err(all_busy) => {
            let header: &[(&str, &str)] = if all_busy {
                &[("X-HDHomeRun-Error", "805 All Tuners In Use")]
            } else {
                &[]
            };
            eprintln!("tuner-emulator: 503 to {client} for {path} (all busy: {all_busy})");
            return respond(&mut stream, "503 Service Unavailable", header, "");
        }
    };
    eprintln!("tuner-emulator: tuner{index} -> {client} v{channel}");
    let result = stream_until_closed(device, &mut stream, index, id);
    release(device, index, id);
    eprintln!("tuner-emulator: tuner{index} free ({client} closed)");
    result
}

fn read_request_path(stream: &mut TcpStream) -> io::Result<String> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => Ok(path.to_owned()),
        _ => Err(io::Error::other(format!("bad request {request_line:?}"))),
    }
}

/// `/auto/v5.1` -> (None, "5.1"); `/tuner1/v5.1` -> (Some(1), "5.1").
fn parse_stream_path(path: &str) -> Option<(Option<usize>, String)> {
    let mut segments = path.trim_start_matches('/').split('/');
    let tuner = segments.next()?;
    let channel = segments.next()?.strip_prefix('v')?.to_owned();
    if channel.is_empty() || segments.next().is_some() {
        return None;
    }
    match tuner {
        "auto" => Some((None, channel)),
        named => Some((Some(named.strip_prefix("tuner")?.parse().ok()?), channel)),
    }
}

/// Takes the requested tuner. `Err(true)` when every tuner is busy,
/// `Err(false)` when a named tuner is busy or does not exist.
#[allow(clippy::type_complexity)]
fn take_tuner(
    device: &Shared,
    wanted: Option<usize>,
    channel: &str,
    client: SocketAddr,
    stream: &TcpStream,
) -> io::Result<Result<(usize, u64), bool>> {
    let mut device = lock(device);
    forget_closed(&mut device);
    let free = match wanted {
        None => device.tuners.iter().position(Option::is_none),
        Some(k) => device.tuners.get(k).and_then(|s| s.is_none().then_some(k)),
    };
    let Some(index) = free else {
        device.busy_503 += 1;
        return Ok(Err(device.tuners.iter().all(Option::is_some)));
    };
    device.next_id += 1;
    device.streams_served += 1;
    let id = device.next_id;
    device.tuners[index] = Some(Stream {
        id,
        channel: channel.to_owned(),
        client,
        since: Instant::now(),
        probe: stream.try_clone()?,
    });
    Ok(Ok((index, id)))
}

/// Frees the tuners whose clients have closed, before answering anything
/// that depends on which are busy.
fn forget_closed(device: &mut Device) {
    for slot in &mut device.tuners {
        if slot.as_ref().is_some_and(|s| client_closed(&s.probe)) {
            *slot = None;
        }
    }
}

/// `/discover.json` as the device is told to answer it.
fn discover(device: &Shared, stream: &mut TcpStream) -> io::Result<()> {
    let (api, tuners) = {
        let device = lock(device);
        (device.api.clone(), device.tuners.len())
    };
    match api.discover {
        Discover::Answer => {
            let local = stream.local_addr()?;
            let body = json!({
                "FriendlyName": "every-channel tuner emulator",
                "ModelNumber": "HDHR-EMU",
                "DeviceID": api.device_id,
                "TunerCount": api.tuner_count.unwrap_or(tuners),
                "BaseURL": format!("http://{local}"),
            });
            respond_json(stream, &body.to_string())
        }
        Discover::NotFound => respond(stream, "404 Not Found", &[], "unknown path\n"),
        Discover::Hang => {
            thread::sleep(Duration::from_secs(60));
            Ok(())
        }
        Discover::Garbage => respond_json(stream, "{\"TunerCount\": 3, <html>"),
    }
}

/// `/status.json`: every tuner, with channel and target while streaming.
fn tuner_status(device: &mut Device) -> serde_json::Value {
    forget_closed(device);
    let tuners: Vec<_> = device
        .tuners
        .iter()
        .enumerate()
        .map(|(index, slot)| match slot {
            None => json!({ "Resource": format!("tuner{index}") }),
            Some(s) => json!({
                "Resource": format!("tuner{index}"),
                "VctNumber": s.channel,
                "VctName": format!("EMU{}", s.channel),
                "Frequency": 503_000_000,
                "TargetIP": s.client.ip().to_string(),
            }),
        })
        .collect();
    serde_json::Value::Array(tuners)
}

fn respond_json(stream: &mut TcpStream, body: &str) -> io::Result<()> {
    let length = body.len().to_string();
    respond(
        stream,
        "200 OK",
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", &length),
        ],
        body,
    )
}

fn release(device: &Shared, index: usize, id: u64) {
    let mut device = lock(device);
    if device.tuners[index].as_ref().is_some_and(|s| s.id == id) {
        device.tuners[index] = None;
    }
}

/// Whether the client has closed its end: a non-blocking peek that sees
/// end-of-file or an error. Pending data means the client is still there.
fn client_closed(stream: &TcpStream) -> bool {
    let mut byte = [0_u8; 1];
    // SAFETY: recv(2) writes at most one byte into `byte`, which lives for the
    // whole call; the descriptor is owned by `stream`, which outlives the call.
    // MSG_DONTWAIT makes this one call non-blocking without changing the
    // descriptor's flags, which the streaming thread shares.
    let n = unsafe {
        nix::libc::recv(
            stream.as_raw_fd(),
            byte.as_mut_ptr().cast(),
            1,
            nix::libc::MSG_PEEK | nix::libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock,
    }
}

fn stream_until_closed(
    device: &Shared,
    stream: &mut TcpStream,
    index: usize,
    id: u64,
) -> io::Result<()> {
    respond_head(stream, "200 OK", &[("Content-Type", "video/mpeg")])?;
    let mut chunk = Vec::with_capacity(188 * CHUNK_PACKETS);
    for _ in 0..CHUNK_PACKETS {
        chunk.extend_from_slice(&[0x47, 0x1F, 0xFF, 0x10]);
        chunk.resize(chunk.len() + 184, 0xFF);
    }
    // The read timeout is the clock: a read that times out means "send the
    // next chunk"; a read of 0 bytes means the client closed.
    stream.set_read_timeout(Some(TICK))?;
    let mut sink = [0_u8; 512];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if !lock(device).stalled && stream.write_all(&chunk).is_err() {
                    return Ok(());
                }
            }
            Err(_) => return Ok(()),
        }
        let still_ours = lock(device).tuners[index]
            .as_ref()
            .is_some_and(|s| s.id == id);
        if !still_ours {
            return Ok(());
        }
    }
}

fn respond_head(stream: &mut TcpStream, status: &str, headers: &[(&str, &str)]) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<()> {
    respond_head(stream, status, headers)?;
    stream.write_all(body.as_bytes())
}

fn stats_body(device: &Device) -> serde_json::Value {
    let streams: Vec<_> = device
        .tuners
        .iter()
        .enumerate()
        .filter_map(|(index, slot)| {
            slot.as_ref().map(|s| {
                json!({
                    "tuner": index,
                    "channel": s.channel,
                    "client": s.client.to_string(),
                    "seconds": s.since.elapsed().as_secs_f64(),
                })
            })
        })
        .collect();
    json!({
        "tuners": device.tuners.len(),
        "open_streams": streams.len(),
        "busy_503": device.busy_503,
        "streams_served": device.streams_served,
        "streams": streams,
    })
}
