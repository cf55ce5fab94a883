//! Facts about a process from `/proc/<pid>` (proc(5)): its command name,
//! its systemd unit and when it started. Parsers are pure functions over the
//! files' text; readers take the proc root so tests can point them elsewhere.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cgroup;

/// What `/proc` says about one process; `None` fields were not readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub command: Option<String>,
    pub unit: Option<String>,
    /// Start time, RFC 3339 UTC, second precision.
    pub since: Option<String>,
}

/// Converts start times from clock ticks after boot to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    boot_unix: u64,
    ticks_per_second: u64,
}

impl BootClock {
    /// Reads the boot time (`btime` in `/proc/stat`) and `CLK_TCK`.
    #[must_use]
    pub fn read(proc_root: &Path) -> Option<Self> {
        let stat = fs::read_to_string(proc_root.join("stat")).ok()?;
        let boot_unix = parse_btime(&stat)?;
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
        let ticks_per_second = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
        Some(Self {
            boot_unix,
            ticks_per_second,
        })
    }

    fn start_of(self, start_ticks: u64) -> SystemTime {
        let after_boot = Duration::from_secs(start_ticks / self.ticks_per_second);
        UNIX_EPOCH + Duration::from_secs(self.boot_unix) + after_boot
    }
}

/// Reads what `/proc/<pid>` shows about `pid`; a vanished or hidden process
/// yields `None` fields, not an error.
#[must_use]
pub fn describe(proc_root: &Path, pid: u32, clock: Option<BootClock>) -> ProcessInfo {
    let dir = proc_root.join(pid.to_string());
    let command = fs::read_to_string(dir.join("comm"))
        .ok()
        .map(|c| c.trim_end_matches('\n').to_owned());
    let since = clock.and_then(|clock| {
        let stat = fs::read_to_string(dir.join("stat")).ok()?;
        let ticks = parse_start_ticks(&stat)?;
        Some(humantime::format_rfc3339_seconds(clock.start_of(ticks)).to_string())
    });
    ProcessInfo {
        pid,
        command,
        unit: cgroup::unit_of_pid(proc_root, pid),
        since,
    }
}

/// `btime` from `/proc/stat`: boot time, seconds since the epoch.
#[must_use]
pub fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
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
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn boot_time_comes_from_the_btime_line() {
        let stat = "cpu  1 2 3\nintr 5\nbtime 1795345800\nprocesses 99\n";
        assert_eq!(parse_btime(stat), Some(1_795_345_800));
        assert_eq!(parse_btime("cpu 1\n"), None);
    }

    #[test]
    fn this_process_is_described_from_the_real_proc() {
        let clock = BootClock::read(Path::new("/proc"));
        assert!(clock.is_some(), "/proc/stat must have btime");
        let me = describe(Path::new("/proc"), std::process::id(), clock);
        assert!(me.command.is_some());
        let since = me.since.expect("start time");
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        assert!(since <= now, "{since} after {now}");
    }
}
