//! The progress watchdog (`run --progress-watchdog`): systemd's watchdog,
//! fed only while the source delivers bytes.
//!
//! A publisher can hold its lock and its tuner connection while nothing
//! arrives (a stalled tuner, a hung decoder): `active (running)` and dead.
//! With `WatchdogSec=` systemd restarts a unit that stops sending
//! `WATCHDOG=1`; this module makes "sending" mean "bytes arrived". Before
//! the launcher locks and execs, it forks a small monitor that, every
//! `WATCHDOG_USEC/2` (at most every second), sums `tcpi_bytes_received` (socket diagnostics,
//! `sock_diag(7)`) over the TCP connections that the program and its
//! descendants have to the source's endpoint, and pings `$NOTIFY_SOCKET`
//! only when that grew since the last ping. (`/proc/<pid>/io` `rchar` does
//! not count `recv(2)` on sockets, so it is no substitute.)
//!
//! Invariants of the monitor (ECP-0133):
//! - it holds no lock: it is forked before the lock file (or a tuner slot)
//!   is opened, and still closes every descriptor but 0-2 and its own pipe
//!   first thing; 0 and 1 become `/dev/null`, 2 stays the unit's log;
//! - it dies with the program: it is the launcher's child, so after exec
//!   the program's, with `PR_SET_PDEATHSIG` (SIGKILL) and a `getppid` check
//!   every tick for the race before `prctl`; once the program runs it
//!   follows the program process on a pidfd instead and clears the signal,
//!   which follows a *thread* and fired when the program's main thread
//!   called `pthread_exit` (ECP-0136);
//! - it stays in the unit's cgroup (a plain fork) so `NotifyAccess=all`
//!   accepts its pings and the kill policy ends it with the unit;
//! - while the launcher has not exec'd yet (waiting for a held lock with
//!   `--on-busy wait`) it pings unconditionally: a standby is healthy. It
//!   learns of the exec from a close-on-exec pipe whose write end the
//!   launcher keeps: end-of-file means exec (or exit, told apart by
//!   `getppid`);
//! - the launcher installs no signal handler and changes nothing in the
//!   program's environment: `NOTIFY_SOCKET` and `WATCHDOG_*` pass through,
//!   so a program that speaks `sd_notify` itself may ping too.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{self as unix_net, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use url::{Host, Url};

use crate::error::Error;
use crate::printable::printable;
use crate::sock_diag;

/// The systemd variables the watchdog reads (`sd_watchdog_enabled(3)`,
/// `sd_notify(3)`); all pass through to the program unchanged.
pub mod env {
    pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
    pub const WATCHDOG_PID: &str = "WATCHDOG_PID";
    pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
}

/// The monitor's command name (`comm`, what `ps -o comm` shows).
const MONITOR_NAME: &std::ffi::CStr = c"ec-watchdog";

/// Where the source is served: a host (name or address) and a TCP port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    host: EndpointHost,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum EndpointHost {
    Address(IpAddr),
    Name(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            EndpointHost::Address(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            EndpointHost::Address(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            EndpointHost::Name(name) => write!(f, "{}:{}", printable(name), self.port),
        }
    }
}

/// Schemes whose stream arrives over one TCP connection to the URL's host
/// and port. RTSP is here for its interleaved (RTP-over-TCP) mode only: with
/// RTP over UDP the TCP connection carries control messages, and the
/// launcher warns. `udp`, `rtp`, `srt` (UDP) and device paths have no TCP
/// byte counter and are refused.
const TCP_SCHEMES: &[&str] = &[
    "http", "https", "ws", "wss", "ftp", "rtsp", "rtsps", "rtmp", "rtmpe", "rtmps", "rtmpt",
    "rtmpte", "rtmpts", "tcp",
];

/// Why a source cannot be watched by its byte count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unwatchable {
    #[error("a device path has no network connection to count bytes on")]
    DevicePath,
    #[error("a {0} source does not arrive over TCP, so its bytes cannot be counted")]
    NotTcp(String),
    #[error("the source has no port and {0} has no default port")]
    NoPort(String),
    #[error("the source is not a URL with a host")]
    NoHost,
}

impl Endpoint {
    /// The TCP endpoint a source is read from: host and port of the URL,
    /// the scheme's default port when none is given.
    ///
    /// # Errors
    /// [`Unwatchable`] for a device path, a UDP scheme, or a URL without
    /// host or port.
    pub fn from_source(source: &str) -> Result<Self, Unwatchable> {
        if source.starts_with('/') {
            return Err(Unwatchable::DevicePath);
        }
        let url = Url::parse(source).map_err(|_| Unwatchable::NoHost)?;
        let scheme = url.scheme();
        if scheme == "file" {
            return Err(Unwatchable::DevicePath);
        }
        if !TCP_SCHEMES.contains(&scheme) {
            return Err(Unwatchable::NotTcp(printable(scheme).into_owned()));
        }
        let port = url
            .port()
            .or_else(|| crate::source_key::default_port(scheme))
            .ok_or_else(|| Unwatchable::NoPort(scheme.to_owned()))?;
        let host = match url.host().ok_or(Unwatchable::NoHost)? {
            Host::Ipv4(ip) => EndpointHost::Address(IpAddr::V4(ip)),
            Host::Ipv6(ip) => {
                EndpointHost::Address(ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4))
            }
            Host::Domain(name) => match name.parse::<IpAddr>() {
                // Non-special schemes leave an IPv4 literal as a "domain".
                Ok(ip) => EndpointHost::Address(ip),
                Err(_) => EndpointHost::Name(name.trim_end_matches('.').to_owned()),
            },
        };
        Ok(Self { host, port })
    }

    /// The addresses a connection to this endpoint has as its remote end:
    /// the address itself and, for IPv4, its IPv4-mapped IPv6 form (a
    /// dual-stack socket). A host name is resolved (files and DNS) each call.
    fn remotes(&self) -> Vec<SocketAddr> {
        let addresses: Vec<IpAddr> = match &self.host {
            EndpointHost::Address(ip) => vec![*ip],
            EndpointHost::Name(name) => (name.as_str(), self.port)
                .to_socket_addrs()
                .map(|found| found.map(|a| a.ip()).collect())
                .unwrap_or_default(),
        };
        let mut remotes = Vec::new();
        for ip in addresses {
            remotes.push(SocketAddr::new(ip, self.port));
            if let IpAddr::V4(v4) = ip {
                remotes.push(SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), self.port));
            }
        }
        remotes.sort_unstable();
        remotes.dedup();
        remotes
    }

    fn is_rtsp(source: &str) -> bool {
        source
            .get(..5)
            .is_some_and(|s| s.eq_ignore_ascii_case("rtsp:"))
            || source
                .get(..6)
                .is_some_and(|s| s.eq_ignore_ascii_case("rtsps:"))
    }
}

/// Where `WATCHDOG=1` goes: `$NOTIFY_SOCKET`, a path or (leading `@`) a
/// name in the abstract namespace (`sd_notify(3)`). Shared with cluster
/// mode's renewer (`cluster::fence`), which pings while its lease is renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifySocket {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl NotifySocket {
    pub fn from_env(value: &str) -> Option<Self> {
        if let Some(name) = value.strip_prefix('@') {
            Some(Self::Abstract(name.as_bytes().to_vec()))
        } else if value.starts_with('/') {
            Some(Self::Path(PathBuf::from(value)))
        } else {
            None
        }
    }

    fn send(&self, socket: &UnixDatagram, message: &[u8]) -> io::Result<()> {
        match self {
            Self::Path(path) => socket.send_to(message, path).map(drop),
            Self::Abstract(name) => {
                let address = unix_net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message, &address).map(drop)
            }
        }
    }
}

/// What the environment says about systemd's watchdog for this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watchdog {
    /// Enabled for us: ping `socket` every `interval`.
    Enabled {
        socket: NotifySocket,
        interval: Duration,
    },
    /// Not enabled, or not usable; the text says why (logged once).
    Off(String),
}

/// The longest tick: the last ping comes at most one tick after the last
/// byte, so systemd acts at most `WatchdogSec` plus one tick after a stall.
const MAX_TICK: Duration = Duration::from_secs(1);

/// Half of `WATCHDOG_USEC` (`sd_watchdog_enabled(3)`'s advice), at most
/// [`MAX_TICK`]: a skipped ping is harmless until `WatchdogSec` passes
/// without one, so ticking often costs a few system calls and bounds the
/// detection of a stall by `WatchdogSec + 1 s` whatever `WatchdogSec` is.
fn ping_interval(watchdog_usec: u64) -> Duration {
    Duration::from_micros(watchdog_usec / 2).clamp(Duration::from_millis(1), MAX_TICK)
}

impl Watchdog {
    /// `sd_watchdog_enabled(3)`'s rule: `WATCHDOG_USEC` is a positive number
    /// of microseconds, and `WATCHDOG_PID`, when set, is this process (the
    /// program keeps our PID across exec). See [`ping_interval`].
    fn from_env(get: impl Fn(&str) -> Option<String>, own_pid: u32) -> Self {
        let Some(usec) = get(env::WATCHDOG_USEC) else {
            return Self::Off(
                "WATCHDOG_USEC is not set (no WatchdogSec= in the unit, or not under systemd)"
                    .into(),
            );
        };
        let usec = match usec.parse::<u64>() {
            Ok(usec) if usec > 0 => usec,
            _ => {
                return Self::Off(format!(
                    "WATCHDOG_USEC={:?} is not a positive number",
                    printable(&usec)
                ));
            }
        };
        if let Some(pid) = get(env::WATCHDOG_PID) {
            match pid.parse::<u32>() {
                Ok(pid) if pid == own_pid => {}
                Ok(pid) => {
                    return Self::Off(format!(
                        "WATCHDOG_PID={pid} names another process, not this one ({own_pid})"
                    ));
                }
                Err(_) => {
                    return Self::Off(format!("WATCHDOG_PID={:?} is not a PID", printable(&pid)));
                }
            }
        }
        let Some(socket) = get(env::NOTIFY_SOCKET)
            .filter(|s| !s.is_empty())
            .and_then(|s| NotifySocket::from_env(&s))
        else {
            return Self::Off(
                "NOTIFY_SOCKET is missing or not an absolute path or @name (set NotifyAccess=all in the unit)".into(),
            );
        };
        Self::Enabled {
            socket,
            interval: ping_interval(usec),
        }
    }
}

/// `WatchdogSec=` as systemd passed it (`WATCHDOG_USEC`), when it did:
/// the default progress window in cluster mode, the span a local monitor
/// gives a source to deliver.
#[must_use]
pub fn watchdog_sec() -> Option<Duration> {
    std::env::var(env::WATCHDOG_USEC)
        .ok()?
        .parse::<u64>()
        .ok()
        .filter(|&usec| usec > 0)
        .map(Duration::from_micros)
}

impl Watchdog {
    /// [`Watchdog::from_env`] for this process, from its real environment.
    pub fn of_this_process() -> Self {
        Self::from_env(|name| std::env::var(name).ok(), std::process::id())
    }
}

/// A monitor ready to start: what to watch and where to ping.
#[derive(Debug)]
pub struct Plan {
    endpoint: Endpoint,
    socket: NotifySocket,
    interval: Duration,
    /// Cluster mode: report progress to the launcher, never to systemd.
    to_launcher: bool,
}

/// `run --progress-watchdog`: validates the source and, when systemd's
/// watchdog is on for us, forks the monitor. Call it before any lock file
/// is opened, while the launcher is single-threaded.
///
/// # Errors
/// As [`plan`] and [`start`].
pub fn start_if_asked(
    asked: bool,
    source: &str,
    to_launcher: bool,
) -> Result<Option<Monitor>, Error> {
    if !asked {
        return Ok(None);
    }
    plan(source, to_launcher)?.as_ref().map(start).transpose()
}

/// `--progress-watchdog`'s plan for `source`: `None` when systemd's watchdog
/// is not enabled for this process (warned once: the program runs without
/// a monitor).
///
/// # Errors
/// [`Error::ProgressWatchdogUnwatchable`] when the source has no TCP
/// endpoint to count bytes on (checked even without `WATCHDOG_USEC`, so a
/// unit that cannot work fails on its first start, not after a restart).
fn plan(source: &str, to_launcher: bool) -> Result<Option<Plan>, Error> {
    let endpoint = Endpoint::from_source(source)
        .map_err(|reason| Error::ProgressWatchdogUnwatchable { reason })?;
    match Watchdog::of_this_process() {
        Watchdog::Off(why) => {
            tracing::warn!(
                "--progress-watchdog: {why}; starting no watchdog monitor, the program runs unwatched"
            );
            Ok(None)
        }
        Watchdog::Enabled { socket, interval } => {
            if Endpoint::is_rtsp(source) {
                tracing::warn!(
                    "--progress-watchdog counts only the RTSP TCP connection to {endpoint}: the program must receive RTP interleaved over it (e.g. rtsp_transport=tcp), or the unit is restarted while healthy"
                );
            }
            Ok(Some(Plan {
                endpoint,
                socket,
                interval,
                to_launcher,
            }))
        }
    }
}

/// The launcher's end of a started monitor: the write end of the pipe that
/// tells the monitor when we exec (it is close-on-exec). Keep it until exec.
#[derive(Debug)]
pub struct Monitor {
    _exec_signal: OwnedFd,
    /// Cluster mode: the read end of the pipe the monitor reports
    /// progress into (non-blocking, close-on-exec), for `cluster::vouch`.
    progress: Option<OwnedFd>,
}

impl Monitor {
    /// The monitor's progress reports (cluster mode), taken once.
    pub fn take_progress(&mut self) -> Option<OwnedFd> {
        self.progress.take()
    }
}

/// Forks the monitor. Call it before opening the lock file, with no other
/// thread running (the launcher has none).
///
/// # Errors
/// [`Error::StartWatchdog`] when the pipe or the fork fails.
fn start(plan: &Plan) -> Result<Monitor, Error> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|source| Error::StartWatchdog { source })?;
    // Non-blocking both ways: a launcher that does not read (frozen) must
    // not block the monitor, and the launcher only polls.
    let progress = if plan.to_launcher {
        Some(
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|source| Error::StartWatchdog { source })?,
        )
    } else {
        None
    };
    let (progress_read, progress_write) = progress.unzip();
    let program_pid = nix::unistd::getpid();
    // `--tuners auto` resolved the device's name on a thread of its own; a
    // name that resolved has its thread joined, one that did not made the
    // launch fail before this point (`resolve`).
    debug_assert_eq!(
        crate::resolve::pending(),
        0,
        "a name lookup is still running"
    );
    // SAFETY: the launcher is single-threaded here (no runtime, no helper
    // threads, no name lookup left running), so the child may run any
    // code, allocation included.
    match unsafe { nix::unistd::fork() }.map_err(|source| Error::StartWatchdog { source })? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(read_end);
            drop(progress_write);
            tracing::debug!(monitor = child.as_raw(), endpoint = %plan.endpoint, interval = ?plan.interval, to_launcher = plan.to_launcher, "progress watchdog started");
            Ok(Monitor {
                _exec_signal: write_end,
                progress: progress_read,
            })
        }
        nix::unistd::ForkResult::Child => {
            drop(write_end);
            drop(progress_read);
            let status = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                monitor(plan, read_end, progress_write, program_pid)
            }))
            .unwrap_or(70);
            // SAFETY: `_exit` ends this forked process without running the
            // launcher's exit path (its destructors and buffers are the
            // parent's business).
            unsafe { libc::_exit(status) }
        }
    }
}

/// The monitor process's life. Returns its exit status.
fn monitor(
    plan: &Plan,
    exec_signal: OwnedFd,
    progress: Option<OwnedFd>,
    program: nix::unistd::Pid,
) -> i32 {
    // First: no lock, no slot, nothing of the launcher's but 0-2 (and our
    // two pipes).
    let (exec_signal, progress) = match isolate(exec_signal, progress) {
        Ok(fds) => fds,
        Err(e) => {
            tracing::error!(
                "progress watchdog: cannot close the launcher's descriptors: {e}; exiting"
            );
            return 71;
        }
    };
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
        || nix::unistd::getppid() != program
    {
        return 0;
    }
    let _ = nix::sys::prctl::set_name(MONITOR_NAME);
    hide_arguments();
    let pinger = match progress {
        Some(fd) => Ok(Pinger::to_launcher(fd, "progress watchdog")),
        None => Pinger::new(plan.socket.clone(), "progress watchdog"),
    };
    let Ok(mut pinger) = pinger else {
        tracing::error!("progress watchdog: cannot create a datagram socket; exiting");
        return 71;
    };
    // Until exec: the launcher validates, locks or waits for the lock.
    while let Ok(false) = wait_readable(&exec_signal, plan.interval) {
        pinger.ping();
    }
    drop(exec_signal);
    if nix::unistd::getppid() != program {
        return 0;
    }
    // From here on the monitor follows the program *process* on a pidfd
    // (readable once every thread has exited): the parent-death signal
    // follows the thread that forked us, the program's main thread, which
    // may call pthread_exit while the others publish (ECP-0136). Without
    // pidfd (Linux < 5.3) the signal and getppid stay.
    let exits = crate::process::pidfd_open(program);
    if exits.is_some() {
        let _ = nix::sys::prctl::set_pdeathsig(None);
    }
    // The program runs now (our parent exec'd): one ping, then every ping
    // needs new bytes; it has until `WatchdogSec` passes without one to
    // connect.
    pinger.ping();
    let pid = u32::try_from(program.as_raw()).unwrap_or(0);
    let mut meter = Meter::new(plan.endpoint.clone(), pid);
    let mut stalled_since: Option<Instant> = None;
    let mut last_ping = Instant::now();
    loop {
        match &exits {
            Some(exits) => {
                if wait_readable(exits, plan.interval).unwrap_or(false) {
                    return 0;
                }
            }
            None => std::thread::sleep(plan.interval),
        }
        if exits.is_none() && nix::unistd::getppid() != program {
            return 0;
        }
        let progress = meter.progress();
        if progress.grew {
            pinger.ping();
            if let Some(since) = stalled_since.take() {
                tracing::info!(
                    "progress watchdog: bytes arrive again from {} after {:.1}s; pinging the watchdog again",
                    plan.endpoint,
                    since.elapsed().as_secs_f64()
                );
            }
            last_ping = Instant::now();
        } else if stalled_since.is_none() {
            stalled_since = Some(last_ping);
            tracing::warn!(
                "progress watchdog: no bytes received from {} in {:.1}s ({} connection(s) of pid {pid} and its children); withholding WATCHDOG=1, so systemd stops the unit when WatchdogSec= passes without one",
                plan.endpoint,
                last_ping.elapsed().as_secs_f64(),
                progress.connections,
            );
        }
    }
}

/// Blanks the monitor's command line after `argv[0]`. It is the
/// launcher's, `--source URL` included, and `/proc/<pid>/cmdline` is
/// readable by every local user: the launcher shows it for milliseconds,
/// the monitor would for the life of the unit. The argument area's bounds
/// are `arg_start` and `arg_end` in `/proc/self/stat` (proc(5), fields 48
/// and 49); its bytes are ours to overwrite, as setproctitle does.
fn hide_arguments() {
    let Some((start, end)) = fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| parse_argument_area(&stat))
    else {
        return;
    };
    let Ok(length) = usize::try_from(end - start) else {
        return;
    };
    let Ok(start) = usize::try_from(start) else {
        return;
    };
    // SAFETY: the kernel reports [start, end) as this process's argument
    // strings, on its initial stack: mapped and writable. Nothing in this
    // process reads them any more (std keeps raw pointers only, for
    // `env::args`, which the monitor does not call), so no reference
    // aliases the slice while it lives.
    let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, length) };
    let first_end = area.iter().position(|b| *b == 0).unwrap_or(area.len());
    area[first_end..].fill(0);
}

/// `(arg_start, arg_end)` from `/proc/<pid>/stat` text: fields 48 and 49,
/// counted after the parenthesised command name (which may hold spaces).
fn parse_argument_area(stat: &str) -> Option<(u64, u64)> {
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // `fields[0]` is field 3 (state).
    let arg_start: u64 = fields.get(48 - 3)?.parse().ok()?;
    let arg_end: u64 = fields.get(49 - 3)?.parse().ok()?;
    (arg_start != 0 && arg_end > arg_start).then_some((arg_start, arg_end))
}

/// Closes every descriptor but 0-2, `keep` (moved to 3) and `also` (moved
/// to 4), and points 0 and 1 at `/dev/null`: the monitor must not keep the
/// program's pipes or any lock alive.
fn isolate(keep: OwnedFd, also: Option<OwnedFd>) -> io::Result<(OwnedFd, Option<OwnedFd>)> {
    let kept: Vec<OwnedFd> = std::iter::once(keep).chain(also).collect();
    let count = RawFd::try_from(kept.len()).unwrap_or(2);
    // Out of the way first (at or above 3 + count), so moving one into
    // place cannot close another that sits there.
    let mut high = Vec::with_capacity(kept.len());
    for fd in kept {
        // SAFETY: F_DUPFD duplicates a descriptor we own onto the lowest
        // free number at or above the given one.
        let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, 3 + count) };
        if moved == -1 {
            return Err(io::Error::last_os_error());
        }
        high.push(moved);
    }
    for (target, &fd) in (3..).zip(&high) {
        // SAFETY: dup2 of a descriptor we own onto 3 or 4; whatever was
        // there (the launcher's, or a kept one's old number, already
        // duplicated above) is closed by it, which is what we want.
        if unsafe { libc::dup2(fd, target) } != target {
            return Err(io::Error::last_os_error());
        }
    }
    // Closes the high copies too.
    close_from(3 + count)?;
    // SAFETY: 3 (and 4) are ours now, by the dup2s above.
    let keep = unsafe { OwnedFd::from_raw_fd(3) };
    // SAFETY: as above.
    let also = (count > 1).then(|| unsafe { OwnedFd::from_raw_fd(4) });
    let null = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in [0, 1] {
        // SAFETY: replaces standard descriptors with /dev/null; `null` stays
        // valid for the call.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } != fd {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((keep, also))
}

/// Closes every descriptor from `first` up: `close_range(2)`, or one by one
/// from `/proc/self/fd` on kernels before 5.9.
fn close_from(first: RawFd) -> io::Result<()> {
    let first = libc::c_uint::try_from(first).unwrap_or(0);
    // SAFETY: closes descriptors only; none is in use by code of ours.
    if unsafe { libc::close_range(first, libc::c_uint::MAX, 0) } == 0 {
        return Ok(());
    }
    let open: Vec<RawFd> = fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd: &RawFd| libc::c_uint::try_from(*fd).is_ok_and(|fd| fd >= first))
        .collect();
    for fd in open {
        // SAFETY: as above; the directory's own descriptor is closed already
        // (or EBADF, harmless).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Waits up to `timeout` for `fd` to be readable or hung up: true when it
/// is (the launcher exec'd or exited), false on timeout.
fn wait_readable(fd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let millis = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    loop {
        let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(fd), PollFlags::POLLIN)];
        match poll(&mut fds, millis) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Sends `WATCHDOG=1`; a failure is logged when it starts and when it ends,
/// not every tick. `who` names the pinger in those lines ("progress
/// watchdog", "cluster lease renewer").
#[derive(Debug)]
pub struct Pinger {
    sink: Sink,
    who: &'static str,
    failing: bool,
}

/// Where a ping goes.
#[derive(Debug)]
enum Sink {
    /// `WATCHDOG=1` to systemd.
    Systemd {
        socket: UnixDatagram,
        target: NotifySocket,
    },
    /// A byte into the launcher's progress pipe (cluster mode, where only
    /// the launcher vouches to systemd: `cluster::vouch`).
    Launcher(OwnedFd),
}

impl Pinger {
    /// An unbound datagram socket that sends to `target`.
    ///
    /// # Errors
    /// When the socket cannot be created.
    pub fn new(target: NotifySocket, who: &'static str) -> io::Result<Self> {
        Ok(Self {
            sink: Sink::Systemd {
                socket: UnixDatagram::unbound()?,
                target,
            },
            who,
            failing: false,
        })
    }

    /// Pings that report progress to the launcher through `pipe` (its
    /// write end, non-blocking) instead of systemd.
    #[must_use]
    pub fn to_launcher(pipe: OwnedFd, who: &'static str) -> Self {
        Self {
            sink: Sink::Launcher(pipe),
            who,
            failing: false,
        }
    }

    pub fn ping(&mut self) {
        let who = self.who;
        let sent = match &self.sink {
            Sink::Systemd { socket, target } => target.send(socket, b"WATCHDOG=1"),
            // A full pipe (a launcher that does not read) already says
            // "progress"; that is no failure.
            Sink::Launcher(pipe) => match nix::unistd::write(pipe, b"1") {
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => Ok(()),
                Err(e) => Err(io::Error::from(e)),
            },
        };
        let to = match &self.sink {
            Sink::Systemd { .. } => "NOTIFY_SOCKET",
            Sink::Launcher(_) => "the launcher's progress pipe",
        };
        match sent {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("{who}: {to} accepts pings again");
            }
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!("{who}: cannot send WATCHDOG=1 to {to}: {e}");
            }
            Ok(()) | Err(_) => {}
        }
    }
}

/// One tick's finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    grew: bool,
    connections: usize,
}

/// Counts bytes received on the program tree's connections to the
/// endpoint. Compared per connection (socket inode), so a reconnect is
/// progress when the new connection has received anything, never a loss.
struct Meter {
    endpoint: Endpoint,
    program: u32,
    remotes: Vec<SocketAddr>,
    /// Bytes each counted connection had at the last ping.
    at_last_ping: HashMap<u64, u64>,
    /// Socket inodes known to belong (true) or not (false) to the program's
    /// process tree: a connection's owner is looked up once.
    owned: HashMap<u64, bool>,
    /// A measurement problem already logged (logged again only after it
    /// went away): without a measurement there is no ping, so the unit is
    /// restarted, and the journal must say why.
    problem: Option<String>,
}

impl Meter {
    fn new(endpoint: Endpoint, program: u32) -> Self {
        let remotes = endpoint.remotes();
        Self {
            endpoint,
            program,
            remotes,
            at_last_ping: HashMap::new(),
            owned: HashMap::new(),
            problem: None,
        }
    }

    fn progress(&mut self) -> Progress {
        let mut connections = self.connections();
        if connections.is_empty() && matches!(self.endpoint.host, EndpointHost::Name(_)) {
            // The name may resolve elsewhere now (or did not resolve at start).
            self.remotes = self.endpoint.remotes();
            connections = self.connections();
        }
        let now: HashMap<u64, u64> = connections.into_iter().collect();
        let grew = now
            .iter()
            .any(|(inode, bytes)| *bytes > self.at_last_ping.get(inode).copied().unwrap_or(0));
        let count = now.len();
        self.owned.retain(|inode, _| now.contains_key(inode));
        if grew {
            self.at_last_ping = now;
        }
        Progress {
            grew,
            connections: count,
        }
    }

    /// (socket inode, bytes received) of the program tree's connections.
    fn connections(&mut self) -> Vec<(u64, u64)> {
        if self.remotes.is_empty() {
            // An empty list would mean "every connection" to sock_diag.
            self.report(Some(format!(
                "{} resolves to no address, so no connection can be counted",
                self.endpoint
            )));
            return Vec::new();
        }
        let all = match sock_diag::established_to(&self.remotes) {
            Ok(all) => all,
            Err(e) => {
                self.report(Some(format!(
                    "cannot read the kernel's TCP connections (sock_diag: {e}); allow AF_NETLINK in RestrictAddressFamilies="
                )));
                return Vec::new();
            }
        };
        self.report(None);
        if all.iter().any(|c| !self.owned.contains_key(&c.inode)) {
            let ours = socket_inodes(Path::new("/proc"), self.program);
            for connection in &all {
                self.owned
                    .insert(connection.inode, ours.contains(&connection.inode));
            }
        }
        all.iter()
            .filter(|c| self.owned.get(&c.inode) == Some(&true))
            .map(|c| (c.inode, c.bytes_received))
            .collect()
    }
}

impl Meter {
    /// Logs a measurement problem when it starts, and when it ends.
    fn report(&mut self, problem: Option<String>) {
        if problem == self.problem {
            return;
        }
        if let Some(text) = &problem {
            tracing::warn!(
                "progress watchdog: {text}; no pings while this lasts, so systemd restarts the unit"
            );
        } else {
            tracing::info!("progress watchdog: connections can be counted again");
        }
        self.problem = problem;
    }
}

/// Socket inodes open in `root` and its descendants (proc(5):
/// `/proc/<pid>/task/<tid>/children`, `/proc/<pid>/fd`).
fn socket_inodes(proc_root: &Path, root: u32) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    let mut pending = vec![root];
    let mut seen = HashSet::new();
    while let Some(pid) = pending.pop() {
        if !seen.insert(pid) {
            continue;
        }
        let process = proc_root.join(pid.to_string());
        // A zombie leader (its main thread called pthread_exit) shows no
        // descriptors; its live threads share them (ECP-0136).
        let task_fds = fs::read_dir(process.join("task"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|task| task.path().join("fd"));
        for fd_dir in std::iter::once(process.join("fd")).chain(task_fds) {
            let mut any = false;
            for fd in fs::read_dir(&fd_dir).into_iter().flatten().flatten() {
                any = true;
                if let Some(inode) = fs::read_link(fd.path())
                    .ok()
                    .and_then(|target| parse_socket_link(target.to_str()?))
                {
                    inodes.insert(inode);
                }
            }
            if any {
                break;
            }
        }
        pending.extend(children_of(&process));
    }
    inodes
}

/// A process's children, from every thread's `children` file.
fn children_of(process: &Path) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(process.join("task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// `socket:[12345]` → 12345.
fn parse_socket_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(source: &str) -> Result<String, Unwatchable> {
        Endpoint::from_source(source).map(|e| e.to_string())
    }

    #[test]
    fn a_sources_endpoint_is_its_host_and_port_with_the_schemes_default() {
        assert_eq!(
            endpoint("http://10.0.0.5:5004/auto/v5.1").unwrap(),
            "10.0.0.5:5004"
        );
        assert_eq!(endpoint("http://u:p@10.0.0.5/x").unwrap(), "10.0.0.5:80");
        assert_eq!(
            endpoint("https://Cam.Example./x?token=1").unwrap(),
            "cam.example:443"
        );
        assert_eq!(endpoint("rtsp://10.0.0.7/s").unwrap(), "10.0.0.7:554");
        assert_eq!(endpoint("rtmp://h/live/x").unwrap(), "h:1935");
        assert_eq!(endpoint("http://[::1]:8080/x").unwrap(), "[::1]:8080");
        assert_eq!(
            endpoint("rtsp://[::ffff:10.0.0.5]/s").unwrap(),
            "10.0.0.5:554"
        );
        assert_eq!(endpoint("tcp://10.0.0.5:1234").unwrap(), "10.0.0.5:1234");
    }

    #[test]
    fn sources_without_a_tcp_byte_counter_are_unwatchable() {
        assert_eq!(endpoint("/dev/video0"), Err(Unwatchable::DevicePath));
        assert_eq!(endpoint("file:///dev/video0"), Err(Unwatchable::DevicePath));
        assert_eq!(
            endpoint("udp://239.0.0.1:1234"),
            Err(Unwatchable::NotTcp("udp".into()))
        );
        assert_eq!(
            endpoint("rtp://239.0.0.1:1234"),
            Err(Unwatchable::NotTcp("rtp".into()))
        );
        assert_eq!(
            endpoint("srt://h:9000"),
            Err(Unwatchable::NotTcp("srt".into()))
        );
        assert_eq!(endpoint("tcp://h"), Err(Unwatchable::NoPort("tcp".into())));
    }

    #[test]
    fn an_ipv4_endpoint_also_matches_its_mapped_ipv6_form() {
        let remotes = Endpoint::from_source("http://10.0.0.5:5004/x")
            .unwrap()
            .remotes();
        assert_eq!(
            remotes,
            vec![
                "10.0.0.5:5004".parse().unwrap(),
                "[::ffff:10.0.0.5]:5004".parse().unwrap()
            ]
        );
    }

    fn watchdog(vars: &[(&str, &str)], pid: u32) -> Watchdog {
        Watchdog::from_env(
            |name| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            },
            pid,
        )
    }

    #[test]
    fn the_tick_is_half_the_watchdog_interval_and_at_most_a_second() {
        assert_eq!(ping_interval(1_600_000), Duration::from_millis(800));
        assert_eq!(ping_interval(4_000_000), Duration::from_secs(1));
        assert_eq!(ping_interval(60_000_000), Duration::from_secs(1));
        assert_eq!(ping_interval(1), Duration::from_millis(1));
    }

    #[test]
    fn the_watchdog_is_on_only_as_sd_watchdog_enabled_says() {
        let on = watchdog(
            &[
                ("WATCHDOG_USEC", "1600000"),
                ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ],
            7,
        );
        assert_eq!(
            on,
            Watchdog::Enabled {
                socket: NotifySocket::Path("/run/systemd/notify".into()),
                interval: Duration::from_millis(800)
            }
        );
        let ours = watchdog(
            &[
                ("WATCHDOG_USEC", "4000000"),
                ("WATCHDOG_PID", "7"),
                ("NOTIFY_SOCKET", "@abstract/notify"),
            ],
            7,
        );
        assert!(
            matches!(ours, Watchdog::Enabled { socket: NotifySocket::Abstract(ref n), .. } if n == b"abstract/notify")
        );
        for off in [
            watchdog(&[("NOTIFY_SOCKET", "/n")], 7),
            watchdog(&[("WATCHDOG_USEC", "0"), ("NOTIFY_SOCKET", "/n")], 7),
            watchdog(&[("WATCHDOG_USEC", "soon"), ("NOTIFY_SOCKET", "/n")], 7),
            watchdog(
                &[
                    ("WATCHDOG_USEC", "4000000"),
                    ("WATCHDOG_PID", "8"),
                    ("NOTIFY_SOCKET", "/n"),
                ],
                7,
            ),
            watchdog(&[("WATCHDOG_USEC", "4000000")], 7),
            watchdog(
                &[("WATCHDOG_USEC", "4000000"), ("NOTIFY_SOCKET", "relative")],
                7,
            ),
        ] {
            assert!(matches!(off, Watchdog::Off(_)), "{off:?}");
        }
    }

    #[test]
    fn the_argument_area_is_read_from_fields_48_and_49_of_stat() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[48 - 3] = "140737488347000".into();
        fields[49 - 3] = "140737488347100".into();
        let stat = format!("42 (a) b) {}\n", fields.join(" "));
        assert_eq!(
            parse_argument_area(&stat),
            Some((140_737_488_347_000, 140_737_488_347_100))
        );
        assert_eq!(parse_argument_area("42 (short) S 1 2"), None);
    }

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(parse_socket_link("socket:[4242]"), Some(4242));
        assert_eq!(parse_socket_link("pipe:[4242]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
    }
}
