//! Facts about a process from `/proc/<pid>` (proc(5)): its command name,
//! its systemd unit and when it started. Parsers are pure functions over the
//! files' text; readers take the proc root so tests can point them elsewhere.
//!
//! A PID alone does not identify a process: it is reused after the process
//! exits, and a process in a PID namespace has another number inside it
//! than outside. The start time (`starttime` in `/proc/<pid>/stat`, clock
//! ticks after boot) is the same from every namespace and differs between a
//! process and whoever gets its PID later, so a process is named only when
//! its start time is the one it was found with (see
//! `evolution/ECP-0131-process-identity-in-records-and-status.md`).

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::cgroup;

/// What `/proc` says about one process; `None` fields were not readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub command: Option<String>,
    pub unit: Option<String>,
    /// Start time, RFC 3339 UTC, second precision.
    pub since: Option<String>,
    /// Start time in clock ticks after boot: with `pid`, the identity.
    pub start_ticks: Option<u64>,
}

/// The inode of the initial PID namespace, `PROC_PID_INIT_INO` in the
/// kernel: fixed, so a process can tell whether it is in a child namespace.
const INIT_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// Converts start times from clock ticks after boot to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// Wall-clock time at boot: `CLOCK_REALTIME` minus `CLOCK_BOOTTIME`, the
    /// clock `/proc/<pid>/stat` start times count on. Sub-second, unlike
    /// `btime` in `/proc/stat`, and without generating that large file.
    boot: SystemTime,
    ticks_per_second: u64,
}

impl BootClock {
    /// Reads the clocks and `CLK_TCK`.
    #[must_use]
    pub fn read() -> Option<Self> {
        use nix::time::{ClockId, clock_gettime};
        let since_boot = Duration::from(clock_gettime(ClockId::CLOCK_BOOTTIME).ok()?);
        let boot = SystemTime::now().checked_sub(since_boot)?;
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
        let ticks_per_second = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
        Some(Self {
            boot,
            ticks_per_second,
        })
    }

    fn start_of(self, start_ticks: u64) -> SystemTime {
        let seconds = start_ticks / self.ticks_per_second;
        let nanos = (start_ticks % self.ticks_per_second) * 1_000_000_000 / self.ticks_per_second;
        self.boot + Duration::from_secs(seconds) + Duration::from_nanos(nanos)
    }
}

/// Reads what `/proc/<pid>` shows about `pid`; a vanished or hidden process
/// yields `None` fields, not an error. With `expected_start`, a process
/// whose start time is another (the PID was reused) or unreadable yields
/// `None`: it is not the process that was meant.
///
/// Two files: `cgroup`, then `stat`, whose start time, read last, vouches
/// that the unit was read of the process meant (a PID is not reused while
/// its process lives), and whose field 2 is the command name `comm` gives.
#[must_use]
pub fn describe(
    proc_root: &Path,
    pid: u32,
    clock: Option<BootClock>,
    expected_start: Option<u64>,
) -> Option<ProcessInfo> {
    let dir = proc_root.join(pid.to_string());
    let unit = cgroup::unit_of_pid(proc_root, pid);
    let stat = crate::proc_file::read_to_string(&dir.join("stat")).ok();
    let start_ticks = stat.as_deref().and_then(parse_start_ticks);
    if expected_start.is_some() && start_ticks != expected_start {
        return None;
    }
    let command = match stat.as_deref().and_then(parse_command) {
        Some(command) => Some(command.to_owned()),
        None => crate::proc_file::read_to_string(&dir.join("comm"))
            .ok()
            .map(|c| c.trim_end_matches('\n').to_owned()),
    };
    let since = clock
        .zip(start_ticks)
        .map(|(clock, ticks)| humantime::format_rfc3339_seconds(clock.start_of(ticks)).to_string());
    Some(ProcessInfo {
        pid,
        command,
        unit,
        since,
        start_ticks,
    })
}

/// The start time of `pid`, in clock ticks after boot.
#[must_use]
pub fn start_ticks_of(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat =
        crate::proc_file::read_to_string(&proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_start_ticks(&stat)
}

/// A pidfd for `pid` (`pidfd_open(2)`, Linux 5.3): readable when the
/// process exits, and a handle that cannot come to mean another process.
/// `None` when the process is gone or the kernel has no pidfds.
#[must_use]
pub fn pidfd_open(pid: nix::unistd::Pid) -> Option<std::os::fd::OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid.as_raw())?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// The PIDs of `pid` in its own and each enclosing namespace that `/proc`'s
/// namespace can see, outermost first (the `NSpid` line of
/// `/proc/<pid>/status`). The last one is the PID the process sees itself.
#[must_use]
pub fn namespace_pids(proc_root: &Path, pid: u32) -> Vec<u32> {
    crate::proc_file::read_to_string(&proc_root.join(pid.to_string()).join("status"))
        .map(|status| parse_namespace_pids(&status))
        .unwrap_or_default()
}

fn parse_namespace_pids(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .map(|pids| {
            pids.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The inode of the PID namespace of `pid` (`/proc/<pid>/ns/pid`, which
/// reads `pid:[<inode>]`); `"self"` for this process.
#[must_use]
pub fn pid_namespace_of(proc_root: &Path, pid: &str) -> Option<u64> {
    let link = fs::read_link(proc_root.join(pid).join("ns/pid")).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// True when the proc filesystem at `proc_root` belongs to the initial PID
/// namespace, the only one whose `/proc/locks` lists every lock (elsewhere,
/// locks taken by processes outside the namespace, or by ones that have
/// exited, are left out). The namespace is the one of its PID 1 (whose
/// link only root may read), else our own. Unknown counts as not.
#[must_use]
pub fn in_initial_pid_namespace(proc_root: &Path) -> bool {
    pid_namespace_of(proc_root, "1").or_else(|| pid_namespace_of(proc_root, "self"))
        == Some(INIT_PID_NAMESPACE)
}

/// Field 2, `comm`, of `/proc/<pid>/stat`: the text between the first `(`
/// and the last `)` (the name may hold either), as `/proc/<pid>/comm`
/// shows it without its newline (both print the task's name unescaped).
#[must_use]
pub fn parse_command(stat: &str) -> Option<&str> {
    let name = &stat[stat.find('(')? + 1..stat.rfind(')')?];
    Some(name.trim_end_matches('\n'))
}

/// Field 22, `starttime`, of `/proc/<pid>/stat`, in clock ticks after boot.
/// The command name (field 2) may contain spaces and parentheses, so fields
/// are counted from the last `)`.
#[must_use]
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after_command = &stat[stat.rfind(')')? + 1..];
    // After ")" come field 3 (state) onwards; starttime is field 22.
    after_command.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_survive_command_names_with_spaces_and_parens() {
        let stat = "4242 (ec node) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 2000000 300 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_start_ticks(stat), Some(987_654));
        assert_eq!(parse_command(stat), Some("ec node) (x)"));
        assert_eq!(parse_command("1 (a\n) S"), Some("a"));
        assert_eq!(parse_command("garbage"), None);
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn the_initial_pid_namespace_is_recognised_by_its_fixed_inode() {
        let proc_root = tempfile::tempdir().unwrap();
        let ns = proc_root.path().join("1/ns");
        fs::create_dir_all(&ns).unwrap();
        std::os::unix::fs::symlink("pid:[4026531836]", ns.join("pid")).unwrap();
        assert!(in_initial_pid_namespace(proc_root.path()));
        fs::remove_file(ns.join("pid")).unwrap();
        std::os::unix::fs::symlink("pid:[4026532123]", ns.join("pid")).unwrap();
        assert!(!in_initial_pid_namespace(proc_root.path()));
        assert!(!in_initial_pid_namespace(Path::new("/nonexistent")));
    }

    #[test]
    fn namespace_pids_are_read_outermost_first() {
        let status = "Name:\tsleep\nTgid:\t9\nNSpid:\t48211\t2\nNSpgid:\t1\n";
        assert_eq!(parse_namespace_pids(status), vec![48211, 2]);
        assert!(parse_namespace_pids("Name:\tx\n").is_empty());
    }

    #[test]
    fn a_process_with_another_start_time_is_not_described() {
        let me = std::process::id();
        let start = start_ticks_of(Path::new("/proc"), me).expect("own start time");
        assert!(describe(Path::new("/proc"), me, None, Some(start)).is_some());
        assert!(describe(Path::new("/proc"), me, None, Some(start + 1)).is_none());
    }

    #[test]
    fn this_process_is_described_from_the_real_proc() {
        let clock = BootClock::read();
        assert!(
            clock.is_some(),
            "CLOCK_BOOTTIME and CLK_TCK must be readable"
        );
        let me = describe(Path::new("/proc"), std::process::id(), clock, None).expect("self");
        // The name from `stat` is the one `comm` gives.
        let comm = fs::read_to_string(format!("/proc/{}/comm", std::process::id())).unwrap();
        assert_eq!(me.command.as_deref(), Some(comm.trim_end_matches('\n')));
        let since = me.since.expect("start time");
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        assert!(since <= now, "{since} after {now}");
    }
}
