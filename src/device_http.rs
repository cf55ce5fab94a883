//! Asking an HDHomeRun device over its HTTP API: `discover.json` for how many
//! tuners it has, `status.json` for what each tuner is doing.
//!
//! Nothing here runs unless an operator asked for it (`run --tuners auto`,
//! `status --device`): the local launch path never touches the network.
//! The client is a hand-written HTTP/1.1 GET over `std::net` (why not a
//! crate: ECP-0132, "HTTP client"). The device is untrusted: every exchange
//! has a connect timeout and a deadline for the whole answer, reads at most
//! a fixed number of bytes, and a malformed answer is a typed error, never a
//! panic. Only the host is ever named in an error: the device key carries no
//! credential, and nothing else of the source reaches this module.

use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// The HDHomeRun HTTP API's port.
pub const HTTP_PORT: u16 = 80;
/// How long the device's host name may take to resolve (an address takes
/// none); a lookup still running is shared by the retry (`resolve`).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection may take, per address tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the whole answer may take once connected.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The most `discover.json`'s body may be (a real one is under 1 KiB).
pub const DISCOVER_LIMIT: usize = 64 * 1024;
/// The most `status.json`'s body may be (a real one is under 2 KiB).
pub const STATUS_LIMIT: usize = 256 * 1024;
/// The most the status line and headers together may be.
const HEAD_LIMIT: usize = 16 * 1024;
/// The largest tuner count believed: HDHomeRun models have 2 to 6.
pub const MAX_TUNERS: u32 = 64;
/// The longest `DeviceID` kept (real ones are 8 hex digits).
const MAX_DEVICE_ID: usize = 64;

/// Why a device could not answer the question.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The device's host name did not resolve (in time): the device cannot
    /// be found (now).
    #[error("the device's host name cannot be resolved")]
    Unresolved(#[source] io::Error),
    /// No connection, a timeout, or a broken connection: the device cannot
    /// be asked (now).
    #[error("the device did not answer")]
    Transport(#[source] io::Error),
    /// The device answered with an HTTP error other than 404.
    #[error("the device answered HTTP {0}")]
    HttpStatus(u16),
    /// The device has no such resource (older models have no `discover.json`).
    #[error("the device answered HTTP 404: it has no such resource")]
    NotFound,
    /// The answer is not HTTP, not JSON, truncated or too large.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// `discover.json` is JSON, but without an integer `TunerCount` from 1 to 64.
    #[error("discover.json has no usable TunerCount ({0})")]
    NoTunerCount(String),
}

impl DeviceError {
    /// True when the device answered clearly that it cannot tell us its tuner
    /// count: asking again will not help, the operator must give N.
    #[must_use]
    pub fn needs_explicit_count(&self) -> bool {
        matches!(self, Self::NotFound | Self::NoTunerCount(_))
    }

    /// The message with its causes, for a warning (an error returned to
    /// `main` gets its chain printed there).
    #[must_use]
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(inner) = cause {
            text.push_str(": ");
            text.push_str(&inner.to_string());
            cause = inner.source();
        }
        text
    }

    /// True when a second attempt may succeed: the device could not be
    /// reached, or said it is in trouble (5xx).
    fn is_transient(&self) -> bool {
        match self {
            Self::Unresolved(_) | Self::Transport(_) => true,
            Self::HttpStatus(code) => *code >= 500,
            _ => false,
        }
    }
}

/// What `discover.json` says about the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// From 1 to [`MAX_TUNERS`].
    pub tuner_count: u32,
    /// The device's own identity, when it gave a short printable one.
    pub device_id: Option<String>,
}

/// One tuner in `status.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunerStatus {
    /// `tuner0`, `tuner1`, … as the device names it; `#<i>` (its position
    /// in the array) when it names none.
    pub resource: String,
    /// `VctNumber`, else `Channel`/`ChannelNumber`/`Frequency` as text.
    pub channel: Option<String>,
    /// Who the tuner streams to, as the device says (not necessarily an IP).
    pub target: Option<String>,
    /// The device reports the tuner in use.
    pub busy: bool,
    /// What is wrong with the device's entry for it, when something is.
    pub problem: Option<TunerProblem>,
}

/// An entry of `status.json` that is not a whole tuner. One such entry
/// costs only itself: the other tuners are still judged (ECP-0132).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TunerProblem {
    /// An object without a `Resource`: named by its position, judged on
    /// what else it says.
    NoResource,
    /// Not an object: whether a tuner is in use there is unknown.
    Unreadable,
}

/// A device as the HTTP API reaches it: a host and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// As in the device key: an IP address (IPv6 with or without brackets)
    /// or a host name.
    host: String,
    port: u16,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::printable::printable(&self.host))
    }
}

impl Device {
    /// The device at `host`, on the HTTP API's port 80.
    #[must_use]
    pub fn from_host(host: &str) -> Self {
        Self::with_port(host, HTTP_PORT)
    }

    /// The device at `host` on another port (tests listen on a free one).
    #[must_use]
    pub fn with_port(host: &str, port: u16) -> Self {
        Self {
            host: host.to_owned(),
            port,
        }
    }

    /// `http://<host>/<path>`, for messages.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        let authority = self.authority();
        let host = crate::printable::printable(&authority);
        if self.port == HTTP_PORT {
            format!("http://{host}/{path}")
        } else {
            format!("http://{host}:{}/{path}", self.port)
        }
    }

    /// The host as a URL or `Host:` header writes it: IPv6 in brackets.
    fn authority(&self) -> String {
        let bare = self.bare_host();
        if bare.contains(':') {
            format!("[{bare}]")
        } else {
            bare.to_owned()
        }
    }

    /// The host without IPv6 brackets.
    fn bare_host(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }

    /// Every address the host names, on our port, within
    /// [`RESOLVE_TIMEOUT`] (a silent resolver must not stretch the bounds).
    fn addresses(&self) -> io::Result<Vec<SocketAddr>> {
        crate::resolve::resolve(self.bare_host(), self.port, RESOLVE_TIMEOUT)
    }

    /// `GET /discover.json`, once more if the first attempt could not reach
    /// the device or it answered 5xx.
    ///
    /// # Errors
    /// [`DeviceError`]; [`DeviceError::needs_explicit_count`] tells the
    /// answers that a retry cannot fix.
    pub fn discover(&self) -> Result<Discovery, DeviceError> {
        let ask = || {
            let response = self.get("/discover.json", DISCOVER_LIMIT)?;
            parse_discovery(&response)
        };
        match ask() {
            Err(error) if error.is_transient() || matches!(error, DeviceError::Malformed(_)) => {
                tracing::debug!(device = %self, "asking for discover.json again: {error}");
                ask()
            }
            answer => answer,
        }
    }

    /// `GET /status.json`: every tuner the device reports. Not retried: a
    /// status is a report, and a second wait helps nobody.
    ///
    /// # Errors
    /// [`DeviceError`].
    pub fn tuner_status(&self) -> Result<Vec<TunerStatus>, DeviceError> {
        parse_tuner_status(&self.get("/status.json", STATUS_LIMIT)?)
    }

    /// The address this node has towards the device: the one the kernel
    /// picks as source for a packet to it (a UDP socket connected, never
    /// sent on, then asked its local address).
    ///
    /// # Errors
    /// The host does not resolve or there is no route to it.
    pub fn own_address(&self) -> io::Result<IpAddr> {
        let mut last = None;
        for address in self.addresses()? {
            let unspecified: SocketAddr = if address.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            // connect(2) on a UDP socket only chooses the route and source.
            let attempt = UdpSocket::bind(unspecified)
                .and_then(|socket| socket.connect(address).map(|()| socket))
                .and_then(|socket| socket.local_addr());
            match attempt {
                Ok(local) => return Ok(local.ip()),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotFound)))
    }

    /// One GET of `path`: the body of a 200 answer of at most `body_limit`
    /// bytes, read within [`READ_TIMEOUT`] of connecting.
    fn get(&self, path: &str, body_limit: usize) -> Result<Vec<u8>, DeviceError> {
        let addresses = self.addresses().map_err(DeviceError::Unresolved)?;
        let mut stream = connect(&addresses).map_err(DeviceError::Transport)?;
        let deadline = Instant::now() + READ_TIMEOUT;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: ec-launch/{}\r\nConnection: close\r\n\r\n",
            self.authority(),
            env!("CARGO_PKG_VERSION")
        );
        stream
            .set_write_timeout(Some(READ_TIMEOUT))
            .and_then(|()| stream.write_all(request.as_bytes()))
            .map_err(DeviceError::Transport)?;
        let mut buffer = Vec::new();
        let mut chunk = [0_u8; 8192];
        let response = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DeviceError::Transport(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no complete answer within {}s", READ_TIMEOUT.as_secs_f64()),
                )));
            }
            stream
                .set_read_timeout(Some(left))
                .map_err(DeviceError::Transport)?;
            let read = match stream.read(&mut chunk) {
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(DeviceError::Transport(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no complete answer within {}s", READ_TIMEOUT.as_secs_f64()),
                    )));
                }
                Err(e) => return Err(DeviceError::Transport(e)),
            };
            buffer.extend_from_slice(&chunk[..read]);
            if let Some(response) = parse_response(&buffer, read == 0, body_limit)? {
                break response;
            }
        };
        match response.code {
            200 => Ok(response.body),
            404 => Err(DeviceError::NotFound),
            code => Err(DeviceError::HttpStatus(code)),
        }
    }
}

/// A connection to the first of `addresses` that accepts within
/// [`CONNECT_TIMEOUT`].
fn connect(addresses: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = None;
    for address in addresses {
        match TcpStream::connect_timeout(address, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotFound)))
}

/// Parses an untrusted JSON body.
fn json(body: &[u8]) -> Result<serde_json::Value, DeviceError> {
    serde_json::from_slice(body).map_err(|e| DeviceError::Malformed(format!("not JSON ({e})")))
}

/// Reads `discover.json`'s body.
fn parse_discovery(body: &[u8]) -> Result<Discovery, DeviceError> {
    let value = json(body)?;
    let count = value.get("TunerCount");
    let tuner_count = match count.and_then(serde_json::Value::as_u64) {
        Some(n) if (1..=u64::from(MAX_TUNERS)).contains(&n) => {
            u32::try_from(n).unwrap_or(MAX_TUNERS)
        }
        Some(n) => {
            return Err(DeviceError::NoTunerCount(format!(
                "{n} is not from 1 to {MAX_TUNERS}"
            )));
        }
        None => {
            return Err(DeviceError::NoTunerCount(match count {
                None => "the key is missing".into(),
                Some(other) => format!("{} is not a whole number", shorten(&other.to_string())),
            }));
        }
    };
    let device_id = value
        .get("DeviceID")
        .and_then(serde_json::Value::as_str)
        .filter(|id| {
            !id.is_empty() && id.len() <= MAX_DEVICE_ID && id.chars().all(|c| c.is_ascii_graphic())
        })
        .map(str::to_owned);
    Ok(Discovery {
        tuner_count,
        device_id,
    })
}

/// At most 40 characters of untrusted text, for a message.
fn shorten(text: &str) -> String {
    let mut short: String = text.chars().take(40).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    crate::printable::printable(&short).into_owned()
}

/// Reads `status.json`'s body: an array of tuner objects. An entry that is
/// not a whole tuner is kept, with its [`TunerProblem`], beside the others:
/// one bad entry must not hide the foreign readers the rest show.
fn parse_tuner_status(body: &[u8]) -> Result<Vec<TunerStatus>, DeviceError> {
    let value = json(body)?;
    let tuners = value
        .as_array()
        .ok_or_else(|| DeviceError::Malformed("status.json is not an array".into()))?;
    Ok(tuners
        .iter()
        .enumerate()
        .map(|(position, tuner)| {
            let text = |key: &str| -> Option<String> {
                match tuner.get(key)? {
                    serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }
            };
            let unnamed = || format!("#{position}");
            if !tuner.is_object() {
                return TunerStatus {
                    resource: unnamed(),
                    channel: None,
                    target: None,
                    busy: false,
                    problem: Some(TunerProblem::Unreadable),
                };
            }
            let (resource, problem) = match text("Resource") {
                Some(resource) => (resource, None),
                None => (unnamed(), Some(TunerProblem::NoResource)),
            };
            let channel = ["VctNumber", "Channel", "ChannelNumber", "Frequency"]
                .into_iter()
                .find_map(text);
            let target = text("TargetIP");
            // An idle tuner is just its Resource; anything tuned is in use.
            let busy = target.is_some() || channel.is_some();
            TunerStatus {
                resource,
                channel,
                target,
                busy,
                problem,
            }
        })
        .collect())
}

/// An HTTP answer's status code and (de-chunked) body.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    code: u16,
    body: Vec<u8>,
}

/// The answer in `buffer`, if it is complete: `Ok(None)` while more may
/// come (before EOF), an error when it never can be right.
fn parse_response(
    buffer: &[u8],
    at_eof: bool,
    body_limit: usize,
) -> Result<Option<Response>, DeviceError> {
    let malformed = |what: &str| Err(DeviceError::Malformed(what.to_owned()));
    let Some(head_end) = find(buffer, b"\r\n\r\n") else {
        if buffer.len() > HEAD_LIMIT {
            return malformed("the answer's headers are too long");
        }
        if at_eof {
            return malformed("the answer ended before its headers did");
        }
        return Ok(None);
    };
    if head_end > HEAD_LIMIT {
        return malformed("the answer's headers are too long");
    }
    let Ok(head) = std::str::from_utf8(&buffer[..head_end]) else {
        return malformed("the answer's headers are not text");
    };
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return malformed("not an HTTP/1 answer");
    }
    let Ok(code) = code.parse::<u16>() else {
        return malformed("not an HTTP/1 answer");
    };
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return malformed("a header line without a colon");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let Ok(length) = value.parse::<usize>() else {
                return malformed("an unreadable Content-Length");
            };
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = &buffer[head_end + 4..];
    let too_large = || {
        Err(DeviceError::Malformed(format!(
            "the answer is larger than {body_limit} bytes"
        )))
    };
    if chunked {
        return match dechunk(body, body_limit)? {
            Some(body) => Ok(Some(Response { code, body })),
            None if at_eof => malformed("the chunked answer ended early"),
            None => Ok(None),
        };
    }
    if let Some(length) = content_length {
        if length > body_limit {
            return too_large();
        }
        if body.len() >= length {
            return Ok(Some(Response {
                code,
                body: body[..length].to_vec(),
            }));
        }
        return if at_eof {
            malformed("the answer is shorter than its Content-Length")
        } else {
            Ok(None)
        };
    }
    if body.len() > body_limit {
        return too_large();
    }
    Ok(at_eof.then(|| Response {
        code,
        body: body.to_vec(),
    }))
}

/// A chunked body (RFC 9112 §7.1) decoded, once its last chunk is in; no
/// trailers are read. `Ok(None)` while incomplete.
fn dechunk(mut body: &[u8], body_limit: usize) -> Result<Option<Vec<u8>>, DeviceError> {
    let malformed = |what: &str| Err(DeviceError::Malformed(what.to_owned()));
    let mut decoded = Vec::new();
    loop {
        let Some(line_end) = find(body, b"\r\n") else {
            return if body.len() > 64 {
                malformed("an unreadable chunk size")
            } else {
                Ok(None)
            };
        };
        let size_text = std::str::from_utf8(&body[..line_end]).unwrap_or("?");
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return malformed("an unreadable chunk size");
        };
        if size > body_limit.saturating_sub(decoded.len()) {
            return Err(DeviceError::Malformed(format!(
                "the answer is larger than {body_limit} bytes"
            )));
        }
        let data = &body[line_end + 2..];
        if size == 0 {
            return Ok(Some(decoded));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        if &data[size..size + 2] != b"\r\n" {
            return malformed("a chunk longer than its size");
        }
        decoded.extend_from_slice(&data[..size]);
        body = &data[size + 2..];
    }
}

/// The position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead as _;
    use std::net::TcpListener;
    use std::thread::{self, JoinHandle};

    /// A one-shot HTTP server on loopback: answers each of `answers`
    /// connections with the bytes given (after reading the request), and
    /// hands back the requests it saw.
    fn serve(answers: Vec<Vec<u8>>) -> (Device, JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let server = thread::spawn(move || {
            let mut requests = Vec::new();
            for answer in answers {
                let (stream, _) = listener.accept().expect("accept");
                let mut reader = io::BufReader::new(stream);
                let mut request = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).expect("read request") == 0 || line == "\r\n" {
                        break;
                    }
                    request.push_str(&line);
                }
                requests.push(request);
                let mut stream = reader.into_inner();
                let _ = stream.write_all(&answer);
            }
            requests
        });
        (Device::with_port("127.0.0.1", port), server)
    }

    fn ok_json(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn a_transport_error_names_its_cause_once_in_the_chain() {
        use std::error::Error as _;
        let error = DeviceError::Transport(io::Error::from(io::ErrorKind::ConnectionRefused));
        let chain = format!("{error}: {}", error.source().expect("a cause"));
        assert_eq!(chain.matches("refused").count(), 1, "{chain}");
        assert_eq!(error.with_causes(), chain);
    }

    #[test]
    fn discover_reads_the_tuner_count_and_device_id() {
        let (device, server) = serve(vec![ok_json(
            r#"{"FriendlyName":"HDHomeRun PRIME","DeviceID":"1318A0B2","TunerCount":3}"#,
        )]);
        let discovery = device.discover().expect("discover");
        assert_eq!(
            discovery,
            Discovery {
                tuner_count: 3,
                device_id: Some("1318A0B2".into())
            }
        );
        let requests = server.join().expect("server");
        assert!(
            requests[0].starts_with("GET /discover.json HTTP/1.1\r\n"),
            "{requests:?}"
        );
        assert!(requests[0].contains("Host: 127.0.0.1\r\n"), "{requests:?}");
    }

    #[test]
    fn discover_retries_once_after_a_server_error_then_gives_up() {
        let error = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec();
        let (device, server) = serve(vec![error.clone(), ok_json(r#"{"TunerCount":2}"#)]);
        assert_eq!(device.discover().expect("second attempt").tuner_count, 2);
        server.join().expect("server");

        let (device, server) = serve(vec![error.clone(), error]);
        let failure = device.discover().expect_err("two 503s");
        assert!(
            matches!(failure, DeviceError::HttpStatus(503)),
            "{failure:?}"
        );
        assert!(!failure.needs_explicit_count());
        assert_eq!(server.join().expect("server").len(), 2);
    }

    #[test]
    fn a_404_is_answered_once_and_asks_for_an_explicit_count() {
        let (device, server) = serve(vec![
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found".to_vec(),
        ]);
        let failure = device.discover().expect_err("404");
        assert!(matches!(failure, DeviceError::NotFound), "{failure:?}");
        assert!(failure.needs_explicit_count());
        assert_eq!(
            server.join().expect("server").len(),
            1,
            "a 404 is not retried"
        );
    }

    #[test]
    fn a_refused_connection_is_a_transport_error() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let failure = Device::with_port("127.0.0.1", port)
            .discover()
            .expect_err("refused");
        assert!(matches!(failure, DeviceError::Transport(_)), "{failure:?}");
    }

    #[test]
    fn a_server_that_never_answers_times_out_within_the_read_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let device = Device::with_port("127.0.0.1", listener.local_addr().expect("addr").port());
        // Connections complete in the kernel's backlog; nobody ever answers.
        let started = Instant::now();
        let failure = device.tuner_status().expect_err("hung server");
        let took = started.elapsed();
        assert!(matches!(failure, DeviceError::Transport(_)), "{failure:?}");
        assert!(
            took >= READ_TIMEOUT && took < READ_TIMEOUT + Duration::from_secs(1),
            "took {took:?}"
        );
        drop(listener);
    }

    #[test]
    fn a_server_that_trickles_bytes_is_bounded_by_the_deadline_not_per_read() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let device = Device::with_port("127.0.0.1", listener.local_addr().expect("addr").port());
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n");
            for _ in 0..40 {
                thread::sleep(Duration::from_millis(100));
                if stream.write_all(b"X: y\r\n").is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        let failure = device.tuner_status().expect_err("trickle");
        assert!(matches!(failure, DeviceError::Transport(_)), "{failure:?}");
        assert!(started.elapsed() < READ_TIMEOUT + Duration::from_secs(1));
        server.join().expect("server");
    }

    #[test]
    fn an_answer_over_the_limit_is_refused_without_reading_it_all() {
        let body = format!("[{}]", " ".repeat(STATUS_LIMIT + 1));
        let (device, server) = serve(vec![ok_json(&body)]);
        let failure = device.tuner_status().expect_err("too large");
        assert!(matches!(failure, DeviceError::Malformed(_)), "{failure:?}");
        server.join().expect("server");
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for garbage in [
            &b"\x00\xff\xfe garbage"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{\"Tu",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"Tuner",
        ] {
            let (device, server) = serve(vec![garbage.to_vec(), garbage.to_vec()]);
            let failure = device.discover().expect_err("garbage");
            assert!(
                matches!(failure, DeviceError::Malformed(_)),
                "{}: {failure:?}",
                String::from_utf8_lossy(garbage)
            );
            drop(server);
        }
    }

    #[test]
    fn chunked_answers_are_decoded() {
        let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"Tuner\r\n9\r\nCount\":4}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(answer, false, DISCOVER_LIMIT).expect("chunked"),
            Some(Response {
                code: 200,
                body: br#"{"TunerCount":4}"#.to_vec()
            })
        );
    }

    #[test]
    fn an_answer_is_complete_at_its_content_length_without_waiting_for_eof() {
        let answer = ok_json("[]");
        assert!(
            parse_response(&answer[..answer.len() - 1], false, STATUS_LIMIT)
                .expect("partial")
                .is_none()
        );
        assert_eq!(
            parse_response(&answer, false, STATUS_LIMIT)
                .expect("complete")
                .map(|r| r.body),
            Some(b"[]".to_vec())
        );
        let failure = parse_response(&answer[..answer.len() - 1], true, STATUS_LIMIT)
            .expect_err("truncated at eof");
        assert!(matches!(failure, DeviceError::Malformed(_)), "{failure:?}");
    }

    #[test]
    fn tuner_counts_outside_one_to_sixty_four_or_not_integers_are_unusable() {
        for body in [
            r#"{"DeviceID":"1318A0B2"}"#,
            r#"{"TunerCount":0}"#,
            r#"{"TunerCount":65}"#,
            r#"{"TunerCount":-1}"#,
            r#"{"TunerCount":2.5}"#,
            r#"{"TunerCount":"2"}"#,
            r"[2]",
        ] {
            let failure = parse_discovery(body.as_bytes()).expect_err(body);
            assert!(failure.needs_explicit_count(), "{body}: {failure:?}");
        }
        let failure = parse_discovery(b"{not json").expect_err("not json");
        assert!(matches!(failure, DeviceError::Malformed(_)), "{failure:?}");
        assert!(!failure.needs_explicit_count());
    }

    #[test]
    fn a_device_id_is_kept_only_when_short_and_printable() {
        let long = format!(r#"{{"TunerCount":2,"DeviceID":"{}"}}"#, "A".repeat(65));
        assert_eq!(
            parse_discovery(long.as_bytes()).expect("long").device_id,
            None
        );
        let control = br#"{"TunerCount":2,"DeviceID":"12\u001b[2J"}"#;
        assert_eq!(parse_discovery(control).expect("control").device_id, None);
        let number = br#"{"TunerCount":2,"DeviceID":1234}"#;
        assert_eq!(parse_discovery(number).expect("number").device_id, None);
    }

    #[test]
    fn status_json_marks_tuners_with_a_target_or_channel_busy() {
        let body = br#"[
            {"Resource":"tuner0","VctNumber":"5.1","VctName":"WGBH","Frequency":203000000,"TargetIP":"10.0.0.20"},
            {"Resource":"tuner1"},
            {"Resource":"tuner2","Frequency":509000000}
        ]"#;
        assert_eq!(
            parse_tuner_status(body).expect("status"),
            vec![
                TunerStatus {
                    resource: "tuner0".into(),
                    channel: Some("5.1".into()),
                    target: Some("10.0.0.20".into()),
                    busy: true,
                    problem: None,
                },
                TunerStatus {
                    resource: "tuner1".into(),
                    channel: None,
                    target: None,
                    busy: false,
                    problem: None,
                },
                TunerStatus {
                    resource: "tuner2".into(),
                    channel: Some("509000000".into()),
                    target: None,
                    busy: true,
                    problem: None,
                },
            ]
        );
    }

    #[test]
    fn status_json_that_is_not_an_array_is_malformed() {
        for body in [&b"{}"[..], b"nul", b"\"tuner0\""] {
            let failure = parse_tuner_status(body).expect_err("malformed");
            assert!(matches!(failure, DeviceError::Malformed(_)), "{failure:?}");
        }
    }

    #[test]
    fn one_bad_entry_of_status_json_costs_only_itself() {
        let body = br#"[{"VctNumber":"5.1","TargetIP":"10.0.0.9"}, 1, null, {"Resource":"tuner3","TargetIP":"10.0.0.9"}, {"Resource":["x"]}]"#;
        let tuners = parse_tuner_status(body).expect("the good entries");
        let seen: Vec<(&str, bool, Option<TunerProblem>)> = tuners
            .iter()
            .map(|t| (t.resource.as_str(), t.busy, t.problem))
            .collect();
        assert_eq!(
            seen,
            [
                ("#0", true, Some(TunerProblem::NoResource)),
                ("#1", false, Some(TunerProblem::Unreadable)),
                ("#2", false, Some(TunerProblem::Unreadable)),
                ("tuner3", true, None),
                ("#4", false, Some(TunerProblem::NoResource)),
            ]
        );
    }

    #[test]
    fn urls_name_only_the_host_with_ipv6_in_brackets() {
        assert_eq!(
            Device::from_host("10.0.0.5").url("discover.json"),
            "http://10.0.0.5/discover.json"
        );
        assert_eq!(
            Device::from_host("fe80::1").url("status.json"),
            "http://[fe80::1]/status.json"
        );
        assert_eq!(
            Device::with_port("[::1]", 8080).url("status.json"),
            "http://[::1]:8080/status.json"
        );
    }

    #[test]
    fn our_address_towards_loopback_is_a_loopback_address() {
        let ours = Device::from_host("127.0.0.5").own_address().expect("route");
        assert!(ours.is_loopback(), "{ours}");
        let ours = Device::from_host("[::1]").own_address().expect("route");
        assert_eq!(ours, IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
    }
}
