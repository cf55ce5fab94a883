//! Who reads each source's endpoint, for `status --readers` (ECP-0133).
//!
//! A lock says who *may* read a source; the kernel's socket table says who
//! *does*. Each lock record names a source, and the source a network
//! endpoint (host and port, the scheme's default when none is written); the
//! established TCP connections to that endpoint (`sock_diag`) and the
//! processes whose descriptors hold those sockets (the `HolderScan`) are
//! the readers. A connection does not say which channel it streams, and one
//! device serves many sources, so a connection is *accounted for* when one
//! of its processes holds the lock of some source on that endpoint, and is
//! a **stale reader** otherwise: a tuner held outside every lock, the
//! incident the locks exist to prevent.
//!
//! Endpoint derivation and accounting are pure (tested on values); only
//! host-name resolution touches the system, through the resolver passed in.
//! Nothing here prints a credential: sources are named by their keys, which
//! never hold one, and connections by address.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use url::Url;

use crate::printable::{printable, printable_path};
use crate::process::ProcessInfo;
use crate::sock_diag::TcpConnection;
use crate::source_key::{HDHOMERUN_STREAM_PORT, SourceKey, default_port};

/// What `status` knows of one lock, as far as readers are concerned.
#[derive(Debug)]
pub struct LockView<'a> {
    /// The canonical key, from the record.
    pub key: Option<&'a str>,
    /// The recorded (redacted) source.
    pub source: Option<&'a str>,
    pub lock_file: &'a Path,
    /// The processes the kernel shows holding it.
    pub holders: Vec<u32>,
    /// A tuner slot (ECP-0132), not a source: its holders are accounted
    /// for on its source's endpoint, but it is not one of its sources.
    pub slot: bool,
    /// The launch record's PID and unit: who launched under this lock.
    pub launched_by: Option<(u32, Option<&'a str>)>,
}

/// How a held tuner slot is named in `holds`: `tuner slot 0 of 10.0.0.5`.
pub const SLOT_LABEL: &str = "tuner slot ";

/// A source's network endpoint: where its reader connects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// `host:port`, IPv6 in brackets: how it is shown and grouped.
    pub name: String,
    /// The scheme the connection speaks (`http` for an HDHomeRun key).
    pub scheme: String,
    host: String,
    port: u16,
}

/// Schemes whose streams arrive over UDP: no TCP connection to see.
const UDP_SCHEMES: &[&str] = &["udp", "rtp", "srt"];

/// The endpoint of the source a lock names, from its key, else from its
/// recorded source (a lock taken with `--key` still records the source);
/// `Err` says why it has none.
///
/// # Errors
/// A reason for the operator: a device path, a UDP scheme, a key that is
/// no network source, or no readable record.
pub fn endpoint_of(key: Option<&str>, source: Option<&str>) -> Result<Endpoint, String> {
    let Some(key) = key else {
        return Err("no readable launch record names its source".to_owned());
    };
    match endpoint_of_key(key) {
        Ok(endpoint) => Ok(endpoint),
        Err(why) => {
            // A `--key` lock: its recorded source may still be a URL. The
            // record is redacted (`***` for secrets), which keys like the
            // original as far as host and port go.
            let from_source = source
                .and_then(|s| SourceKey::from_source(s).ok())
                .filter(|derived| derived.as_str() != key)
                .map(|derived| endpoint_of_key(derived.as_str()));
            match from_source {
                Some(Ok(endpoint)) => Ok(endpoint),
                Some(Err(why)) => Err(why),
                None => Err(why),
            }
        }
    }
}

/// The endpoint a canonical key names (see `source_key`).
fn endpoint_of_key(key: &str) -> Result<Endpoint, String> {
    if key.starts_with('/') {
        return Err("a device path".to_owned());
    }
    let not_network = || "keyed by --key, and its recorded source is no network URL".to_owned();
    let url = Url::parse(key).map_err(|_| not_network())?;
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(not_network)?;
    let (scheme, port) = if url.scheme() == "hdhomerun" {
        ("http".to_owned(), Some(HDHOMERUN_STREAM_PORT))
    } else {
        let scheme = url.scheme().to_owned();
        let port = url.port().or_else(|| default_port(&scheme));
        (scheme, port)
    };
    if UDP_SCHEMES.contains(&scheme.as_str()) {
        return Err(format!(
            "a {scheme} source streams over UDP, which has no connection to watch"
        ));
    }
    let Some(port) = port else {
        return Err(format!(
            "the {scheme} scheme has no default port and none is given"
        ));
    };
    let host = host.to_ascii_lowercase();
    let name = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(Endpoint {
        name,
        scheme,
        host,
        port,
    })
}

/// How long `status --readers` waits for the resolver, for every name at
/// once: a resolver that never answers must not hold `status` for its own
/// timeouts (`resolve`).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Fills in the addresses a connection to each endpoint has as its remote
/// end: the host itself when it is an address, else what the system
/// resolver says within [`RESOLVE_TIMEOUT`], all names looked up together
/// (empty when a name does not resolve, or not in time).
pub fn resolve_addresses(endpoints: &mut [(Endpoint, Vec<SocketAddr>)]) {
    let names: Vec<(&str, u16)> = endpoints
        .iter()
        .map(|(endpoint, _)| {
            let bare = endpoint.host.trim_start_matches('[').trim_end_matches(']');
            (bare, endpoint.port)
        })
        .collect();
    let resolved = crate::resolve::resolve_all(&names, RESOLVE_TIMEOUT);
    for ((_, addresses), found) in endpoints.iter_mut().zip(resolved) {
        *addresses = found
            .map(|found| {
                found
                    .into_iter()
                    .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
                    .collect()
            })
            .unwrap_or_default();
    }
}

/// The `readers` section of `status --json`.
#[derive(Debug, Default, Serialize)]
pub struct ReadersReport {
    pub endpoints: Vec<EndpointReaders>,
    /// Locks whose source has no TCP endpoint, and why.
    pub without_endpoint: Vec<WithoutEndpoint>,
    /// How many connections are stale readers.
    pub stale: usize,
    /// Connections whose owner cannot be seen.
    #[serde(skip)]
    pub unowned: usize,
    /// Locks whose record cannot be read, so whose endpoint is unknown.
    #[serde(skip)]
    pub unreadable_records: usize,
}

#[derive(Debug, Serialize)]
pub struct EndpointReaders {
    pub endpoint: String,
    pub scheme: String,
    /// The keys of the sources (held or free) on this endpoint.
    pub sources: Vec<String>,
    /// Stale readers first.
    pub connections: Vec<Reader>,
    /// What the operator should know and do, one line each.
    pub warnings: Vec<String>,
}

/// One process's connection to an endpoint.
#[derive(Debug, Serialize)]
pub struct Reader {
    /// No owner of the connection holds the lock of a source here.
    pub stale: bool,
    /// `null` when no process visible to this user has the socket open.
    pub pid: Option<u32>,
    pub command: Option<String>,
    pub unit: Option<String>,
    pub since: Option<String>,
    pub local: String,
    pub remote: String,
    pub bytes_received: u64,
    /// Keys of the sources on this endpoint whose locks this process holds.
    pub holds: Vec<String>,
    /// A stale reader launched through `ec-launch` (a lock record here
    /// names its PID, or its unit) that no longer holds that lock: the
    /// program or a wrapper closed the lock descriptor (ECP-0136).
    pub dropped_lock: bool,
}

#[derive(Debug, Serialize)]
pub struct WithoutEndpoint {
    pub key: Option<String>,
    #[serde(serialize_with = "path_as_text")]
    pub lock_file: PathBuf,
    pub reason: String,
}

/// Accounts for every connection in `connections` to the endpoints of
/// `locks`. `owners` gives the processes with a socket open, `describe`
/// what `/proc` says of a process.
pub fn account(
    endpoints: &[(Endpoint, Vec<SocketAddr>)],
    locks: &[(&LockView<'_>, Option<usize>)],
    connections: &[TcpConnection],
    owners: &dyn Fn(u64) -> Vec<u32>,
    describe: &dyn Fn(u32) -> Option<ProcessInfo>,
) -> ReadersReport {
    let mut report = ReadersReport::default();
    // Grouped once: thousands of locks and endpoints on a busy node.
    let mut locks_of: Vec<Vec<&LockView<'_>>> = vec![Vec::new(); endpoints.len()];
    for (lock, index) in locks {
        if let Some(group) = index.and_then(|i| locks_of.get_mut(i)) {
            group.push(lock);
        }
    }
    let mut to_remote: HashMap<SocketAddr, Vec<&TcpConnection>> = HashMap::new();
    for connection in connections {
        to_remote
            .entry(connection.remote)
            .or_default()
            .push(connection);
    }
    for ((endpoint, addresses), on_endpoint) in endpoints.iter().zip(locks_of) {
        let mut sources: Vec<String> = on_endpoint
            .iter()
            .filter(|l| !l.slot)
            .filter_map(|l| l.key.map(str::to_owned))
            .collect();
        sources.sort();
        sources.dedup();
        let held_by = held_by_process(&on_endpoint);
        let mut readers = Vec::new();
        let mut warnings = Vec::new();
        if addresses.is_empty() {
            warnings.push(format!(
                "the host of {} does not resolve here (no address, or no answer from the resolver within {}s), so connections to it cannot be matched; check the name and this node's resolver, or use an address in the source",
                endpoint.name,
                RESOLVE_TIMEOUT.as_secs_f64()
            ));
        }
        let mut connections_of: BTreeMap<u32, usize> = BTreeMap::new();
        let mut seen = HashSet::new();
        let to_endpoint = addresses
            .iter()
            .flat_map(|a| to_remote.get(a).into_iter().flatten())
            .filter(|c| seen.insert(c.inode));
        for connection in to_endpoint {
            let pids = owners(connection.inode);
            let stale = !pids.is_empty() && !pids.iter().any(|p| held_by.contains_key(p));
            let row = |pid: Option<u32>, info: Option<ProcessInfo>| Reader {
                dropped_lock: stale && pid.is_some_and(|p| dropped(&on_endpoint, p, info.as_ref())),
                stale,
                pid,
                command: info.as_ref().and_then(|i| i.command.clone()),
                unit: info.as_ref().and_then(|i| i.unit.clone()),
                since: info.and_then(|i| i.since),
                local: connection.local.to_string(),
                remote: connection.remote.to_string(),
                bytes_received: connection.bytes_received,
                holds: pid
                    .and_then(|p| held_by.get(&p))
                    .map(|keys| keys.iter().cloned().collect())
                    .unwrap_or_default(),
            };
            if pids.is_empty() {
                report.unowned += 1;
                warnings.push(format!(
                    "the connection {} -> {} has no owner this user can see (another user's process, or one in another PID namespace); run as root",
                    connection.local, connection.remote
                ));
                readers.push(row(None, None));
                continue;
            }
            if stale {
                report.stale += 1;
            }
            for pid in pids {
                *connections_of.entry(pid).or_default() += 1;
                let info = describe(pid);
                if stale {
                    warnings.push(stale_advice(pid, info.as_ref(), &endpoint.name));
                    if dropped(&on_endpoint, pid, info.as_ref()) {
                        warnings.push(format!(
                            "pid {pid} was started by ec-launch under the lock of a source on {} but no longer holds it: the program or a wrapper closed the inherited lock descriptor (EC_SOURCE_LOCK_FD); it must keep it open",
                            endpoint.name
                        ));
                    }
                }
                readers.push(row(Some(pid), info));
            }
        }
        warnings.extend(second_streams(&connections_of, &held_by, &endpoint.name));
        readers.sort_by(|a, b| (!a.stale, a.pid, &a.local).cmp(&(!b.stale, b.pid, &b.local)));
        report.endpoints.push(EndpointReaders {
            endpoint: endpoint.name.clone(),
            scheme: endpoint.scheme.clone(),
            sources,
            connections: readers,
            warnings,
        });
    }
    // Endpoints with a stale reader first.
    report
        .endpoints
        .sort_by_key(|e| !e.connections.iter().any(|c| c.stale));
    report
}

/// True when a lock in `locks` was launched by `pid` (its record's PID) or
/// by `info`'s unit, and `pid` does not hold it: a reader that let go of
/// the lock it was started under.
fn dropped(locks: &[&LockView<'_>], pid: u32, info: Option<&ProcessInfo>) -> bool {
    let unit = info.and_then(|i| i.unit.as_deref());
    locks.iter().any(|lock| {
        let launched = lock
            .launched_by
            .is_some_and(|(by, by_unit)| by == pid || (by_unit.is_some() && by_unit == unit));
        launched && !lock.holders.contains(&pid)
    })
}

/// The `!` lines for holders with more connections to `endpoint` than
/// sources they hold there. A slot counts only for a process holding no
/// source lock (the normal publisher holds its source's lock and a slot).
fn second_streams(
    connections_of: &BTreeMap<u32, usize>,
    held_by: &BTreeMap<u32, BTreeSet<String>>,
    endpoint: &str,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (pid, count) in connections_of {
        let keys = held_by.get(pid);
        let sources = keys.map_or(0, |k| {
            k.iter().filter(|k| !k.starts_with(SLOT_LABEL)).count()
        });
        let held = if sources > 0 {
            sources
        } else {
            keys.map_or(0, BTreeSet::len)
        };
        if held > 0 && *count > held {
            lines.push(second_stream_advice(*pid, held, *count, endpoint));
        }
    }
    lines
}

/// The keys of the sources in `locks` each process holds.
fn held_by_process(locks: &[&LockView<'_>]) -> BTreeMap<u32, BTreeSet<String>> {
    let mut held_by: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for lock in locks {
        for pid in &lock.holders {
            held_by
                .entry(*pid)
                .or_default()
                .insert(lock.key.unwrap_or("?").to_owned());
        }
    }
    held_by
}

/// The `!` line for a holder with more connections than sources held.
fn second_stream_advice(pid: u32, held: usize, count: usize, endpoint: &str) -> String {
    format!(
        "pid {pid} holds the lock of {held} source{} on {endpoint} but has {count} connections to it: a second stream of its own uses a tuner; check the program",
        if held == 1 { "" } else { "s" },
    )
}

/// The `!` line for a stale reader: what it is and what to do.
fn stale_advice(pid: u32, info: Option<&ProcessInfo>, endpoint: &str) -> String {
    let command = info
        .and_then(|i| i.command.as_deref())
        .unwrap_or("(unknown program)");
    let stop = match info.and_then(|i| i.unit.as_deref()) {
        Some(unit) => format!("stop it (`systemctl stop {unit}`, or `kill {pid}`)"),
        None => format!("stop it (`kill {pid}`)"),
    };
    format!(
        "stale reader: pid {pid} ({command}) reads {endpoint} without holding the lock of any source there, so it holds a tuner outside ec-launch; {stop}, and start readers only through `ec-launch run`"
    )
}

/// The readers section as text: one table, stale readers first, then the
/// sources without an endpoint.
#[must_use]
pub fn render(report: &ReadersReport) -> String {
    let header = [
        "READER", "PID", "PROGRAM", "UNIT", "LOCAL", "REMOTE", "BYTES", "HOLDS",
    ]
    .map(str::to_owned);
    let mut rows: Vec<([String; 8], Vec<&String>)> = Vec::new();
    let mut loose: Vec<&String> = Vec::new();
    for endpoint in &report.endpoints {
        let mut warnings: Vec<&String> = endpoint.warnings.iter().collect();
        for reader in &endpoint.connections {
            let state = match (reader.stale, reader.pid) {
                (true, _) => "STALE",
                (false, None) => "unknown",
                (false, Some(_)) => "held",
            };
            let pid = reader.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
            // This reader's own lines under it; lines about no one pid
            // (unowned connections) under the endpoint's last row.
            let (mine, rest): (Vec<&String>, Vec<&String>) = warnings
                .iter()
                .partition(|w| reader.pid.is_some() && w.contains(&format!("pid {pid} ")));
            warnings = rest;
            rows.push((
                [
                    state.to_owned(),
                    pid,
                    printable(reader.command.as_deref().unwrap_or("?")).into_owned(),
                    printable(reader.unit.as_deref().unwrap_or("(no unit)")).into_owned(),
                    reader.local.clone(),
                    reader.remote.clone(),
                    reader.bytes_received.to_string(),
                    if reader.holds.is_empty() {
                        "-".to_owned()
                    } else {
                        reader
                            .holds
                            .iter()
                            .map(|k| printable(k).into_owned())
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                ],
                mine,
            ));
        }
        // An endpoint without connections has no row of its own: its
        // lines (a name that does not resolve) go after the table, not
        // under another endpoint's row, and are never dropped.
        match rows.last_mut() {
            Some(last) if !endpoint.connections.is_empty() => last.1.extend(warnings),
            _ => loose.extend(warnings),
        }
    }
    let mut widths = header.clone().map(|h| h.len());
    for (row, _) in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |row: &[String; 8]| {
        let mut text = String::new();
        for (cell, width) in row.iter().zip(widths).take(7) {
            let _ = write!(text, "{cell:<width$}  ");
        }
        text.push_str(&row[7]);
        text
    };
    let mut out = String::from("\n");
    out.push_str(&line(&header));
    out.push('\n');
    for (row, warnings) in &rows {
        out.push_str(&line(row));
        out.push('\n');
        for warning in warnings {
            let _ = writeln!(out, "  ! {}", printable(warning));
        }
    }
    if rows.is_empty() {
        let watched = report.endpoints.len();
        let _ = writeln!(
            out,
            "(no established TCP connection to the {watched} endpoint{} of the lock records)",
            if watched == 1 { "" } else { "s" }
        );
    }
    for warning in loose {
        let _ = writeln!(out, "  ! {}", printable(warning));
    }
    for lock in &report.without_endpoint {
        let _ = writeln!(
            out,
            "no network endpoint: {} ({}): {}",
            lock.key
                .as_deref()
                .map_or_else(|| "?".into(), |k| printable(k).into_owned()),
            printable_path(&lock.lock_file),
            lock.reason
        );
    }
    out
}

fn path_as_text<S: serde::Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
    match path.to_str() {
        Some(text) => serializer.serialize_str(text),
        None => serializer.serialize_str(&printable_path(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(key: &str) -> Result<String, String> {
        endpoint_of(Some(key), None).map(|e| e.name)
    }

    #[test]
    fn endpoints_come_from_keys_with_each_schemes_default_port() {
        assert_eq!(
            endpoint("hdhomerun://10.0.0.5/v5.1"),
            Ok("10.0.0.5:5004".into())
        );
        assert_eq!(
            endpoint("rtsp://cam.example/stream"),
            Ok("cam.example:554".into())
        );
        assert_eq!(endpoint("http://10.0.0.7/live"), Ok("10.0.0.7:80".into()));
        assert_eq!(endpoint("https://10.0.0.7/live"), Ok("10.0.0.7:443".into()));
        assert_eq!(
            endpoint("http://127.0.0.1:8080/a"),
            Ok("127.0.0.1:8080".into())
        );
        assert_eq!(endpoint("http://[::1]:8080/a"), Ok("[::1]:8080".into()));
        assert_eq!(endpoint("rtmp://10.0.0.8/app"), Ok("10.0.0.8:1935".into()));
        let v6 = endpoint_of(Some("hdhomerun://[fd00::5]/v5.1"), None).unwrap();
        assert_eq!(v6.name, "[fd00::5]:5004");
        let mut endpoints = [(v6, Vec::new())];
        resolve_addresses(&mut endpoints);
        assert_eq!(endpoints[0].1, vec!["[fd00::5]:5004".parse().unwrap()]);
    }

    #[test]
    fn sources_without_a_tcp_endpoint_say_why() {
        assert!(endpoint("/dev/char/81:0").unwrap_err().contains("device"));
        assert!(
            endpoint("udp://239.0.0.1:1234")
                .unwrap_err()
                .contains("UDP")
        );
        assert!(endpoint("srt://10.0.0.5:9000").unwrap_err().contains("UDP"));
        assert!(endpoint("tuner-a").unwrap_err().contains("--key"));
        assert!(endpoint_of(None, None).unwrap_err().contains("record"));
    }

    #[test]
    fn a_key_override_takes_the_endpoint_of_its_recorded_source() {
        let from_source = endpoint_of(
            Some("tuner-a"),
            Some("http://***@10.0.0.5:5004/auto/v5.1?token=***"),
        );
        assert_eq!(from_source.map(|e| e.name), Ok("10.0.0.5:5004".into()));
        let device = endpoint_of(Some("tuner-a"), Some("/dev/null"));
        assert!(device.unwrap_err().contains("device"));
    }

    #[test]
    fn an_endpoint_whose_host_does_not_resolve_says_so() {
        let unknown = endpoint_of_key("rtsp://no-such-host.invalid/s").unwrap();
        let report = account(&[(unknown, Vec::new())], &[], &[], &|_| vec![], &|_| None);
        let warnings = &report.endpoints[0].warnings;
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("no-such-host.invalid:554") && w.contains("does not resolve")),
            "{warnings:?}"
        );
        // Without a connection row to go under, it is still printed.
        let text = render(&report);
        assert!(
            text.contains("  ! the host of no-such-host.invalid:554 does not resolve"),
            "{text}"
        );
    }

    fn connection(inode: u64, local: &str, remote: &str) -> TcpConnection {
        TcpConnection {
            inode,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            bytes_received: 10,
        }
    }

    #[test]
    fn a_connection_is_accounted_for_by_any_lock_on_its_endpoint() {
        let tuner = endpoint_of_key("hdhomerun://10.0.0.5/v5.1").unwrap();
        let mut resolved = [(tuner.clone(), Vec::new())];
        resolve_addresses(&mut resolved);
        let addresses = resolved[0].1.clone();
        let path = Path::new("/l");
        let five = LockView {
            key: Some("hdhomerun://10.0.0.5/v5.1"),
            source: None,
            lock_file: path,
            holders: vec![100],
            slot: false,
            launched_by: Some((100, None)),
        };
        let seven = LockView {
            key: Some("hdhomerun://10.0.0.5/v7.1"),
            source: None,
            lock_file: path,
            holders: vec![200],
            slot: false,
            // Launched by 300, which let go of it.
            launched_by: Some((300, None)),
        };
        let locks = [(&five, Some(0)), (&seven, Some(0))];
        let connections = [
            connection(1, "10.0.0.1:40000", "10.0.0.5:5004"),
            connection(2, "10.0.0.1:40001", "10.0.0.5:5004"),
            connection(3, "10.0.0.1:40002", "10.0.0.5:5004"),
            connection(4, "10.0.0.1:40003", "10.0.0.5:5004"),
            connection(5, "10.0.0.1:40004", "10.0.0.9:5004"),
        ];
        // 100 and 200 hold; 300 holds nothing; 100 has a second stream;
        // nobody visible owns inode 4; inode 5 is another device.
        let owners = |inode: u64| match inode {
            1 | 3 => vec![100],
            2 => vec![200],
            5 => vec![300],
            _ => vec![],
        };
        let stray = [connection(6, "10.0.0.1:40005", "10.0.0.5:5004")];
        let all: Vec<_> = connections.iter().chain(&stray).copied().collect();
        let owners_with_stray = |inode: u64| if inode == 6 { vec![300] } else { owners(inode) };
        let report = account(
            &[(tuner, addresses)],
            &locks,
            &all,
            &owners_with_stray,
            &|_| None,
        );
        assert_eq!(report.stale, 1);
        assert_eq!(report.unowned, 1);
        let readers = &report.endpoints[0].connections;
        assert_eq!(readers.len(), 5, "{readers:?}");
        assert!(
            readers[0].stale && readers[0].pid == Some(300),
            "stale first: {readers:?}"
        );
        assert!(readers[1..].iter().all(|r| !r.stale));
        assert!(readers[0].dropped_lock, "{readers:?}");
        assert!(readers[1..].iter().all(|r| !r.dropped_lock));
        let warnings = &report.endpoints[0].warnings;
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("pid 300") && w.contains("no longer holds it")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("pid 300") && w.contains("kill 300")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("pid 100") && w.contains("2 connections")),
            "{warnings:?}"
        );
        assert!(
            !warnings.iter().any(|w| w.contains("pid 200")),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("no owner")),
            "{warnings:?}"
        );
    }
}
