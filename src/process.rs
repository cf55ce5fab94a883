//! Facts about a process from `/proc/<pid>` (proc(5)): its command name,
//! its systemd unit and when it started. Parsers are pure functions over the
//! files' text; readers take the proc root so tests can point them elsewhere.

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
}

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
    fn this_process_is_described_from_the_real_proc() {
        let clock = BootClock::read();
        assert!(
            clock.is_some(),
            "CLOCK_BOOTTIME and CLK_TCK must be readable"
        );
        let me = describe(Path::new("/proc"), std::process::id(), clock);
        assert!(me.command.is_some());
        let since = me.since.expect("start time");
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        assert!(since <= now, "{since} after {now}");
    }
}
