//! The programs the suite runs inside the container, all played by this test
//! binary under different names (see `main`):
//!
//! - `publisher URL`: the stand-in for `ec-node`. Opens the stream, exits 1 on
//!   a refusal (as a publisher that cannot get a tuner does), then starts a
//!   `stubborn-helper` on the same source and reads its stream forever.
//! - `stubborn-helper URL`: the incident's ffmpeg/proof helper. Ignores
//!   SIGTERM, keeps its *own* connection to the tuner and reconnects after a
//!   refusal, the way `ffmpeg -reconnect` does. It inherits every descriptor
//!   of the publisher, including `ec-launch`'s lock.
//! - `record-exit UNIT`: an `ExecStopPost=` hook that appends how the unit's
//!   main process ended; systemd forgets that once it unloads an inactive unit.
//! - `inspect cgroup DIR` / `inspect alive PID:START...`: process facts read
//!   from the container's own `/proc`.
//!
//! Records go to `/run/ec-suite/` inside the container.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::process::{Command, ExitCode};
use std::thread;
use std::time::Duration;

use crate::tuner;

/// Where the programs live inside the container.
pub const SUITE_DIR: &str = "/opt/ec-suite";
/// Where the programs record what happened, inside the container.
pub const RECORD_DIR: &str = "/run/ec-suite";

fn append_record(file: &str, line: &str) {
    let path = format!("{RECORD_DIR}/{file}");
    let result = fs::create_dir_all(RECORD_DIR).and_then(|()| {
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        writeln!(file, "{line}")
    });
    if let Err(e) = result {
        eprintln!("cannot append to {path}: {e}");
    }
}

/// The systemd unit of this process, from its cgroup path.
fn own_unit() -> String {
    fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .and_then(|path| path.rsplit('/').next().map(str::to_owned))
        })
        .unwrap_or_else(|| "?".into())
}

pub fn publisher_main(args: &[String]) -> ExitCode {
    let Some(url) = args
        .first()
        .cloned()
        .or_else(|| std::env::var("EC_SOURCE_URL").ok())
    else {
        eprintln!("usage: publisher URL");
        return ExitCode::from(2);
    };
    let pid = std::process::id();
    let unit = own_unit();
    let lock = std::env::var("EC_SOURCE_LOCK").unwrap_or_else(|_| "none".into());
    append_record("ran.log", &format!("{unit} pid={pid} lock={lock}"));
    let mut response = match tuner::get(&url) {
        Ok(response) if response.status == 200 => response,
        Ok(response) => {
            eprintln!(
                "publisher {pid}: {url} refused: HTTP {} {}",
                response.status,
                response.header("X-HDHomeRun-Error").unwrap_or("")
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("publisher {pid}: {url}: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!("publisher {pid}: streaming {url} (lock: {lock})");
    match Command::new(format!("{SUITE_DIR}/stubborn-helper"))
        .arg(&url)
        .spawn()
    {
        Ok(helper) => eprintln!("publisher {pid}: started helper {}", helper.id()),
        Err(e) => eprintln!("publisher {pid}: cannot start the helper: {e}"),
    }
    let ended = drain(&mut response.body);
    eprintln!("publisher {pid}: stream ended: {ended:?}");
    ExitCode::from(1)
}

pub fn helper_main(args: &[String]) -> ExitCode {
    // SAFETY: setting a signal to SIG_IGN installs no handler, so no code runs
    // in signal context; this happens before any thread is started.
    let ignored = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
    if let Err(e) = ignored {
        eprintln!("stubborn-helper: cannot ignore SIGTERM: {e}");
        return ExitCode::from(1);
    }
    let Some(url) = args.first() else {
        eprintln!("usage: stubborn-helper URL");
        return ExitCode::from(2);
    };
    let pid = std::process::id();
    loop {
        match tuner::get(url) {
            Ok(mut response) if response.status == 200 => {
                eprintln!("stubborn-helper {pid}: holding its own stream of {url}");
                let ended = drain(&mut response.body);
                eprintln!("stubborn-helper {pid}: stream ended: {ended:?}; reconnecting");
            }
            Ok(response) => eprintln!(
                "stubborn-helper {pid}: refused: HTTP {} {}; retrying in 1s",
                response.status,
                response.header("X-HDHomeRun-Error").unwrap_or("")
            ),
            Err(e) => eprintln!("stubborn-helper {pid}: {e}; retrying in 1s"),
        }
        thread::sleep(Duration::from_secs(1));
    }
}

/// `detacher URL`: a program that leaves a reader outside its process
/// group and session (issue 16 item 2): `setsid -f stubborn-helper URL`
/// forks, calls setsid(2) and execs the helper, whose parent then exits,
/// so the helper is re-parented; it ignores SIGTERM and inherits the
/// launcher's lock descriptor. The program itself then sleeps, default
/// dispositions, until stopped.
pub fn detacher_main(args: &[String]) -> ExitCode {
    let Some(url) = args
        .first()
        .cloned()
        .or_else(|| std::env::var("EC_SOURCE_URL").ok())
    else {
        eprintln!("usage: detacher URL");
        return ExitCode::from(2);
    };
    let helper = format!("{SUITE_DIR}/stubborn-helper");
    match Command::new("setsid").args(["-f", &helper, &url]).status() {
        Ok(status) if status.success() => {}
        Ok(status) => {
            eprintln!("detacher: setsid -f {helper} ended {status}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("detacher: cannot run setsid: {e}");
            return ExitCode::from(1);
        }
    }
    append_record(
        "detached.log",
        &format!("{} detached at={}", own_unit(), unix_micros()),
    );
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn drain(body: &mut impl Read) -> io::Result<u64> {
    io::copy(body, &mut io::sink())
}

pub fn record_exit_main(args: &[String]) -> ExitCode {
    let unit = args.first().map_or("?", String::as_str);
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    append_record(
        "exits.log",
        &format!(
            "{unit} result={} code={} status={}",
            var("SERVICE_RESULT"),
            var("EXIT_CODE"),
            var("EXIT_STATUS")
        ),
    );
    ExitCode::SUCCESS
}

/// Microseconds since the epoch: records from different programs in the
/// container compare on one clock.
pub fn unix_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// A reader that holds one stream and nothing else (no helper): what a
/// publisher costs a tuner when a tuner slot is the claim. Records when it
/// got its stream, and which slot it runs under.
pub fn reader_main(args: &[String]) -> ExitCode {
    let Some(url) = args
        .first()
        .cloned()
        .or_else(|| std::env::var("EC_SOURCE_URL").ok())
    else {
        eprintln!("usage: reader URL");
        return ExitCode::from(2);
    };
    let unit = own_unit();
    let slot = std::env::var("EC_TUNER_SLOT").unwrap_or_else(|_| "none".into());
    // SIGTERM (systemd's stop) is taken by a thread that records the moment
    // and then dies of the signal, as a program without a handler does (so
    // systemd and a supervising `ec-launch` see a death by SIGTERM, not an
    // exit code): that moment is when this reader's tuner slot frees, the
    // start of a hand-over.
    let mut term = nix::sys::signal::SigSet::empty();
    term.add(nix::sys::signal::Signal::SIGTERM);
    if let Err(e) = term.thread_block() {
        eprintln!("reader: cannot block SIGTERM: {e}");
        return ExitCode::from(1);
    }
    let stopping_unit = unit.clone();
    thread::spawn(move || {
        if term.wait().is_ok() {
            append_record(
                "readers.log",
                &format!("{stopping_unit} stopping at={}", unix_micros()),
            );
            // The signal is blocked in every thread; unblocked here, the
            // raised one is delivered before raise(3) returns.
            let _ = term.thread_unblock();
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM);
            std::process::exit(143);
        }
    });
    match tuner::get(&url) {
        Ok(mut response) if response.status == 200 => {
            append_record(
                "readers.log",
                &format!("{unit} streaming slot={slot} at={}", unix_micros()),
            );
            eprintln!("reader: streaming {url} in slot {slot}");
            let ended = drain(&mut response.body);
            eprintln!("reader: stream ended: {ended:?}");
        }
        Ok(response) => {
            append_record(
                "readers.log",
                &format!(
                    "{unit} refused status={} at={}",
                    response.status,
                    unix_micros()
                ),
            );
            eprintln!("reader: {url} refused: HTTP {}", response.status);
        }
        Err(e) => eprintln!("reader: {url}: {e}"),
    }
    ExitCode::from(1)
}

/// One process as `inspect` reports it: `PID START COMM SIGTERM_IGNORED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessFacts {
    pub pid: u32,
    /// Start time in clock ticks since boot (proc(5) `stat` field 22): with the
    /// PID it names one process even if the PID is reused.
    pub start: u64,
    pub comm: String,
    pub ignores_sigterm: bool,
}

impl ProcessFacts {
    fn read(pid: u32) -> Option<Self> {
        let stat_line = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may hold spaces; fields are
        // counted after its closing parenthesis (field 3 onward).
        let (head, rest) = stat_line.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        let start = rest.split_whitespace().nth(19)?.parse().ok()?;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let ignored = status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0);
        Some(Self {
            pid,
            start,
            comm,
            ignores_sigterm: ignored & (1 << (15 - 1)) != 0,
        })
    }

    pub fn to_line(&self) -> String {
        format!(
            "{} {} {} {}",
            self.pid, self.start, self.comm, self.ignores_sigterm
        )
    }

    pub fn from_line(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        Some(Self {
            pid: fields.next()?.parse().ok()?,
            start: fields.next()?.parse().ok()?,
            comm: fields.next()?.to_owned(),
            ignores_sigterm: fields.next()?.parse().ok()?,
        })
    }

    pub fn id(&self) -> String {
        format!("{}:{}", self.pid, self.start)
    }
}

pub fn inspect_main(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("cgroup") => {
            let Some(dir) = args.get(1) else {
                return ExitCode::from(2);
            };
            // A unit without a cgroup has no processes.
            let procs = fs::read_to_string(format!("{dir}/cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse().ok()) {
                if let Some(facts) = ProcessFacts::read(pid) {
                    println!("{}", facts.to_line());
                }
            }
            ExitCode::SUCCESS
        }
        Some("alive") => {
            for id in &args[1..] {
                let Some((pid, start)) = id.split_once(':') else {
                    continue;
                };
                let (Ok(pid), Ok(start)) = (pid.parse(), start.parse::<u64>()) else {
                    continue;
                };
                if let Some(facts) = ProcessFacts::read(pid).filter(|f| f.start == start) {
                    println!("{}", facts.to_line());
                }
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: inspect cgroup DIR | inspect alive PID:START...");
            ExitCode::from(2)
        }
    }
}
