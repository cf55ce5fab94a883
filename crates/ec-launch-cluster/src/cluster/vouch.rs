//! Cluster mode: who may tell systemd the unit is alive (ECP-0135 section 4).
//!
//! Only the supervising launcher, from its renewal thread, and only while
//! both hold: its lease is renewed in time (the renewer pings only until
//! its fence fires), and, with `--progress-watchdog`, the program's source
//! delivered bytes within the progress window. The progress monitor (a
//! separate process) therefore never pings systemd in cluster mode: it
//! writes a byte into a pipe whose only read end is the launcher's each
//! time it would have pinged, and [`Vouch::progress_ok`] reads them. A
//! frozen launcher reads nothing and pings nothing, whatever the monitor or
//! the program (which `NotifyAccess=main` does not hear) do, so systemd
//! kills it before its lease can expire (ECP-0134's bound).

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the renewer consults before each `WATCHDOG=1`; cheap to clone
/// (every lease's renewer of one launch shares it).
#[derive(Debug, Clone, Default)]
pub struct Vouch(Option<Arc<Progress>>);

/// The monitor's reports and the window they must fall in.
#[derive(Debug)]
struct Progress {
    /// The read end of the monitor's pipe (non-blocking).
    feed: OwnedFd,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the program started: before it, a standby needs no progress.
    started: Option<Instant>,
    /// The monitor's last report.
    last: Option<Instant>,
    /// The monitor's pipe reached end-of-file: no report will come again.
    monitor_gone: bool,
    /// Pings are withheld now (logged once per stall).
    withheld: bool,
}

impl Vouch {
    /// Renewal alone (no `--progress-watchdog`).
    #[must_use]
    pub fn renewal_only() -> Self {
        Self(None)
    }

    /// Renewal and progress: `feed` is the monitor's pipe, `window` the
    /// longest time without a report after which the launcher stops
    /// vouching.
    #[must_use]
    pub fn with_progress(feed: OwnedFd, window: Duration) -> Self {
        Self(Some(Arc::new(Progress {
            feed,
            window,
            state: Mutex::default(),
        })))
    }

    /// The program runs from now: progress is required from here on (the
    /// first report within the window).
    pub fn program_started(&self) {
        if let Some(progress) = &self.0
            && let Ok(mut state) = progress.state.lock()
        {
            state.started = Some(Instant::now());
        }
    }

    /// Reads the monitor's reports and says whether progress allows a ping
    /// now: always before the program started and without a monitor;
    /// after, only when a report (or the start) is within the window.
    #[must_use]
    pub fn progress_ok(&self) -> bool {
        let Some(progress) = &self.0 else {
            return true;
        };
        let Ok(mut state) = progress.state.lock() else {
            return false;
        };
        let now = Instant::now();
        match drain(&progress.feed) {
            Drained::Reports => state.last = Some(now),
            Drained::Nothing => {}
            Drained::Closed => {
                if !state.monitor_gone {
                    state.monitor_gone = true;
                    tracing::warn!(
                        "the progress watchdog's monitor is gone: no progress can be seen, so systemd's watchdog will not be fed once the progress window has passed"
                    );
                }
            }
        }
        let Some(started) = state.started else {
            return true;
        };
        let latest = state.last.map_or(started, |last| last.max(started));
        let ok = now.saturating_duration_since(latest) <= progress.window;
        if ok && state.withheld {
            state.withheld = false;
            tracing::info!("progress again: vouching for the unit to systemd's watchdog again");
        } else if !ok && !state.withheld {
            state.withheld = true;
            tracing::warn!(
                "no progress from the source within the progress window ({}): withholding WATCHDOG=1, so systemd stops the unit when WatchdogSec= passes without one",
                humantime::format_duration(progress.window)
            );
        }
        ok
    }
}

enum Drained {
    Reports,
    Nothing,
    Closed,
}

/// Empties the non-blocking pipe: what was in it.
fn drain(feed: &OwnedFd) -> Drained {
    let mut buf = [0u8; 64];
    let mut got = Drained::Nothing;
    loop {
        match nix::unistd::read(feed, &mut buf) {
            Ok(0) => return Drained::Closed,
            Ok(_) => got = Drained::Reports,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return got,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;

    fn piped(window: Duration) -> (Vouch, OwnedFd) {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        (Vouch::with_progress(read, window), write)
    }

    #[test]
    fn without_progress_watchdog_only_the_renewal_counts() {
        assert!(Vouch::renewal_only().progress_ok());
    }

    #[test]
    fn a_standby_is_vouched_for_before_its_program_starts_without_progress() {
        let (vouch, _monitor) = piped(Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(30));
        assert!(vouch.progress_ok());
    }

    #[test]
    fn after_the_start_only_a_report_within_the_window_lets_it_vouch() {
        let (vouch, monitor) = piped(Duration::from_millis(150));
        vouch.program_started();
        assert!(
            vouch.progress_ok(),
            "the start counts as the first progress"
        );
        std::thread::sleep(Duration::from_millis(200));
        assert!(!vouch.progress_ok(), "no report within the window");
        nix::unistd::write(&monitor, b"1").unwrap();
        assert!(vouch.progress_ok(), "a report");
        drop(monitor);
        std::thread::sleep(Duration::from_millis(200));
        assert!(!vouch.progress_ok(), "the monitor is gone: no progress");
    }
}
