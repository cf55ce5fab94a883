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

#[derive(Debug, Default)]
struct Device {
    tuners: Vec<Option<Stream>>,
    next_id: u64,
    busy_503: u64,
    streams_served: u64,
}

type Shared = Arc<Mutex<Device>>;

fn lock(device: &Shared) -> std::sync::MutexGuard<'_, Device> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How to call the program.
pub const USAGE: &str = "usage: tuner-emulator [--listen ADDR] [--tuners N]

Serves an HDHomeRun-like HTTP streaming port until killed.
  --listen ADDR  address and port to listen on (default 127.0.0.1:5004)
  --tuners N     number of tuners, at least 1 (default 2)";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub listen: String,
    pub tuners: usize,
}

impl Options {
    /// Parses the arguments after the program name; `Ok(None)` for `--help`.
    pub fn from_args(args: &[String]) -> Result<Option<Self>, String> {
        let mut options = Self {
            listen: "127.0.0.1:5004".to_owned(),
            tuners: 2,
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
    let Options { listen, tuners } = options;
    let listener = match TcpListener::bind(&listen) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("tuner-emulator: error: cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!("tuner-emulator: {tuners} tuners on http://{listen}");
    serve_forever(&listener, tuners);
    ExitCode::SUCCESS
}

/// Serves a device of `tuners` tuners on `listener`, one thread per
/// connection, until accepting fails for good (it does not, in practice).
pub fn serve_forever(listener: &TcpListener, tuners: usize) {
    let device: Shared = Arc::new(Mutex::new(Device {
        tuners: (0..tuners).map(|_| None).collect(),
        ..Device::default()
    }));
    for connection in listener.incoming() {
        match connection {
            Ok(stream) => {
                let device = Arc::clone(&device);
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
        let body = stats(&lock(device)).to_string();
        return respond(
            &mut stream,
            "200 OK",
            &[("Content-Type", "application/json")],
            &body,
        );
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
    for slot in &mut device.tuners {
        if slot.as_ref().is_some_and(|s| client_closed(&s.probe)) {
            *slot = None;
        }
    }
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
                if stream.write_all(&chunk).is_err() {
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

fn stats(device: &Device) -> serde_json::Value {
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
