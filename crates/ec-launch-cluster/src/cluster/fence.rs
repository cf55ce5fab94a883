//! The fence: cluster mode stops the program before its lease can expire
//! on the server.
//!
//! A lease is not a fencing token (a tuner cannot check one, and a paused
//! holder can outlive its lease), so the only safe stance is that the
//! program is dead before etcd could give the key to another node. The
//! server's expiry is at least `send instant + TTL` of the last keepalive
//! that succeeded (the leader restarts the TTL when the request arrives,
//! which is after we sent it), so the launcher's deadline is
//! `sent + TTL - stop grace - margin`: by then the program has had SIGTERM,
//! its grace, and SIGKILL, with `margin` left for clock rate error and
//! scheduling.
//!
//! Invariants:
//! - time is `CLOCK_BOOTTIME` ([`BootInstant`]): a suspended node's
//!   lease kept running on the server, so the sleep counts;
//! - the alarm is a `CLOCK_BOOTTIME` timerfd armed at the deadline, so the
//!   kernel, not the renewer thread, fires it: a renewal call stuck past
//!   its timeout, or a descheduled thread, cannot delay the fence;
//! - it fires once: after [`Renewer::fired`] has said why, the deadline
//!   never moves again, and the renewer thread stops (and stops pinging
//!   systemd's watchdog);
//! - a deadline only moves for a renewal that succeeded, measured from the
//!   instant that renewal was *sent*; a failed renewal is retried at once,
//!   then with a short backoff, until the deadline.
//!
//! Renewal every TTL/3 with calls bounded by TTL/6 leaves
//! `TTL - TTL/3 - TTL/6 = TTL/2` for the stop grace and the margin;
//! [`FenceTiming::new`] refuses configurations where they do not fit.

use std::fmt;
use std::ops::Add;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use crate::cluster::vouch::Vouch;
use crate::error::Error;
use crate::watchdog::{Pinger, Watchdog};

/// What the fence keeps in hand after the stop grace: clock rate error
/// between us and the etcd leader, and scheduling delays.
pub const MARGIN: Duration = Duration::from_secs(1);

/// The first retry of a failed renewal is immediate; later ones wait this
/// long, doubling up to the call timeout.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The one source of truth for cluster mode's timing (ECP-0134).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceTiming {
    /// The lease TTL asked for (`--etcd-ttl`).
    pub ttl: Duration,
    /// SIGTERM to SIGKILL (`--etcd-stop-grace`).
    pub stop_grace: Duration,
    /// [`MARGIN`].
    pub margin: Duration,
}

impl FenceTiming {
    /// Validates the budget: renewal interval + call timeout + stop grace
    /// + margin must be less than the TTL, i.e. `TTL > 2 x (grace + margin)`.
    ///
    /// The TTL must be whole seconds: etcd grants leases in whole seconds,
    /// so a fraction would be checked here and then cut off by the grant,
    /// leaving less than the budget (ECP-0135).
    ///
    /// # Errors
    /// [`Error::FractionalTtl`]; [`Error::FenceBudget`] naming the smallest
    /// TTL (whole seconds, as etcd grants them) that fits this stop grace.
    pub fn new(ttl: Duration, stop_grace: Duration) -> Result<Self, Error> {
        if ttl.subsec_nanos() != 0 {
            return Err(Error::FractionalTtl {
                ttl: format!("{}", ttl.as_secs_f64()),
                granted: ttl.as_secs(),
            });
        }
        let timing = Self {
            ttl,
            stop_grace,
            margin: MARGIN,
        };
        if timing.fits() {
            return Ok(timing);
        }
        Err(Error::FenceBudget {
            ttl: humantime::format_duration(ttl).to_string(),
            stop_grace: humantime::format_duration(stop_grace).to_string(),
            margin: humantime::format_duration(MARGIN).to_string(),
            minimum: timing.minimum_ttl_secs(),
        })
    }

    /// `TTL/3 + TTL/6 + grace + margin < TTL`, in the form without the
    /// divisions, whose rounding would let `TTL = 2 x (grace + margin)` pass.
    fn fits(&self) -> bool {
        2 * (self.stop_grace + self.margin) < self.ttl
    }

    /// The smallest whole-second TTL that fits this stop grace and margin.
    fn minimum_ttl_secs(&self) -> u64 {
        let mut secs = (2 * (self.stop_grace + self.margin)).as_secs();
        loop {
            let candidate = Self {
                ttl: Duration::from_secs(secs),
                ..*self
            };
            if candidate.fits() {
                return secs;
            }
            secs += 1;
        }
    }

    /// How often the lease is renewed: TTL/3.
    #[must_use]
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// The bound of every etcd call (connect and the whole call): TTL/6.
    #[must_use]
    pub fn call_timeout(&self) -> Duration {
        self.ttl / 6
    }

    /// The lock delay after a take that was not a clean hand-over
    /// (ECP-0135): the longer of our stop grace and the one the previous
    /// holder recorded, plus the margin. The recorded grace is another
    /// writer's number (any `u64` of milliseconds), so it counts up to our
    /// TTL only: a holder whose budget fits its own TTL has a grace below
    /// half of it, so a longer one is either not a launcher's or comes from
    /// a node whose TTL is over twice ours, and a wait must end.
    #[must_use]
    pub fn lock_delay(&self, previous_grace: Option<Duration>) -> Duration {
        let theirs = previous_grace.unwrap_or_default().min(self.ttl);
        theirs.max(self.stop_grace) + self.margin
    }

    /// True when a previous holder's recorded grace is beyond what
    /// [`FenceTiming::lock_delay`] counts of it.
    #[must_use]
    pub fn clamps_grace(&self, previous_grace: Option<Duration>) -> bool {
        previous_grace.is_some_and(|theirs| theirs > self.ttl)
    }

    /// When the program must be stopping:
    /// `sent + granted_ttl - stop_grace - margin`, where `sent` is the send
    /// instant of the grant or renewal that returned `granted_ttl` (the
    /// server's, which may exceed ours).
    #[must_use]
    pub fn deadline_after(&self, sent: BootInstant, granted_ttl: Duration) -> BootInstant {
        sent + granted_ttl.saturating_sub(self.stop_grace + self.margin)
    }
}

/// An instant on `CLOCK_BOOTTIME`: monotonic, and counting a suspend
/// (`clock_gettime(2)`), as the lease's TTL on the server does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BootInstant(Duration);

impl BootInstant {
    /// Now.
    ///
    /// # Panics
    /// Never on Linux 2.6.39 or later, where `CLOCK_BOOTTIME` exists.
    #[must_use]
    pub fn now() -> Self {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .expect("CLOCK_BOOTTIME exists on every supported kernel");
        Self(Duration::from(now))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    #[must_use]
    pub fn saturating_since(self, earlier: Self) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// The time since boot, as the timerfd's absolute expiry wants it.
    fn since_boot(self) -> Duration {
        self.0
    }
}

impl Add<Duration> for BootInstant {
    type Output = Self;
    fn add(self, rhs: Duration) -> Self {
        Self(self.0 + rhs)
    }
}

/// The outcome of one renewal (a keepalive) as the renewer needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The lease lives on; the TTL the server answered.
    Renewed(Duration),
    /// The lease, or a key under it, is gone: why (printable, never a
    /// secret). The fence fires at once.
    Lost(String),
    /// No answer, or an unusable one; printable, never a secret.
    Failed(String),
}

/// Fires a [`Renewer`]'s fence at once, with the reason, from any thread:
/// the supervisor sees the alarm and stops the program (SIGTERM, grace,
/// SIGKILL, exit 76) exactly as for a missed deadline. Firing twice, or
/// after the deadline passed, keeps the first reason.
#[derive(Clone)]
pub struct Fuse {
    shared: Arc<Shared>,
}

impl fmt::Debug for Fuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fuse").finish_non_exhaustive()
    }
}

impl Fuse {
    /// Fires the fence now, unless it fired already.
    pub fn fire(&self, why: String) {
        let mut state = self.shared.state();
        self.shared.latch_if_past(&mut state);
        if state.fired.is_none() {
            self.shared.fire_now(&mut state, why);
        }
    }
}

/// The running renewer. Dropping it (or [`Renewer::stop`]) stops the
/// thread; the alarm stays armed until then.
pub struct Renewer {
    shared: Arc<Shared>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Renewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renewer")
            .field("deadline", &self.deadline())
            .finish_non_exhaustive()
    }
}

/// What the renewer thread and the supervisor share.
struct Shared {
    timing: FenceTiming,
    /// The fence alarm: a `CLOCK_BOOTTIME` timerfd armed at `state.deadline`.
    alarm: TimerFd,
    state: Mutex<State>,
}

struct State {
    deadline: BootInstant,
    /// The send instant of the last renewal (or grant) that succeeded.
    last_sent: BootInstant,
    last_failure: Option<String>,
    /// Why the fence fired; once set, nothing moves the deadline again.
    fired: Option<String>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves plain data behind; keep fencing.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Latches "the deadline passed" when it has. Called with the lock held.
    fn latch_if_past(&self, state: &mut State) {
        let now = BootInstant::now();
        if state.fired.is_none() && now >= state.deadline {
            let t = self.timing;
            let mut why = format!(
                "no lease renewal succeeded in time: the last one that did was sent {:.1}s ago, and the fence deadline (its send + TTL - stop grace {} - margin {}) passed {:.1}s ago",
                now.saturating_since(state.last_sent).as_secs_f64(),
                humantime::format_duration(t.stop_grace),
                humantime::format_duration(t.margin),
                now.saturating_since(state.deadline).as_secs_f64(),
            );
            if let Some(failure) = &state.last_failure {
                why.push_str(" (last failure: ");
                why.push_str(failure);
                why.push(')');
            }
            state.fired = Some(why);
        }
    }

    fn arm(&self, deadline: BootInstant) -> nix::Result<()> {
        // Zero would disarm it; a deadline is never at boot anyway.
        let at = deadline.since_boot().max(Duration::from_nanos(1));
        self.alarm.set(
            Expiration::OneShot(TimeSpec::from(at)),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME,
        )
    }

    fn fire_now(&self, state: &mut State, why: String) {
        state.fired = Some(why);
        if let Err(e) = self.alarm.set(
            Expiration::OneShot(TimeSpec::from(Duration::from_nanos(1))),
            TimerSetTimeFlags::empty(),
        ) {
            // The alarm is still armed at the old deadline: the fence fires
            // then, which is late only for a lease already gone.
            tracing::error!("cannot fire the fence alarm at once: {e}; it fires at the deadline");
        }
    }
}

impl Renewer {
    /// Readable once the fence deadline passed (or the lease was lost);
    /// then ask [`Renewer::fired`]. Read it (8 bytes) to clear it.
    #[must_use]
    pub fn alarm_fd(&self) -> BorrowedFd<'_> {
        self.shared.alarm.as_fd()
    }

    /// Why the fence fired, or `None` while the lease is renewed in time.
    /// A deadline found passed is latched here, so the answer never goes
    /// back to `None`.
    #[must_use]
    pub fn fired(&self) -> Option<String> {
        let mut state = self.shared.state();
        self.shared.latch_if_past(&mut state);
        state.fired.clone()
    }

    /// A handle that fires this fence at once from another thread: for a
    /// watch that sees the keys lost (ECP-0135).
    #[must_use]
    pub fn fuse(&self) -> Fuse {
        Fuse {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The current fence deadline.
    #[must_use]
    pub fn deadline(&self) -> BootInstant {
        self.shared.state().deadline
    }

    /// Stops the thread (waiting for a renewal in flight, at most one call
    /// timeout).
    pub fn stop(self) {
        drop(self);
    }
}

/// The supervisor watches the lease's fence through this (ECP-0138).
impl crate::supervise::Fence for Renewer {
    fn alarm_fd(&self) -> BorrowedFd<'_> {
        Renewer::alarm_fd(self)
    }

    fn fired(&self) -> Option<String> {
        Renewer::fired(self)
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the renewer thread: calls `renew` every [`FenceTiming::renew_every`]
/// after `first_sent` (the send instant of the grant, which answered
/// `first_ttl`); after each [`Renewal::Renewed`] moves the deadline; on
/// [`Renewal::Lost`] or when the deadline passes, fires the fence once and
/// stops. With `vouch`, also sends `WATCHDOG=1` to
/// `$NOTIFY_SOCKET` every `WATCHDOG_USEC/2` (at most every second) while
/// not fenced, when systemd's watchdog is on for this process
/// (`sd_watchdog_enabled(3)`): a frozen launcher stops pinging, and PID 1
/// stops the unit. Every renewal call is preceded by a ping, so the
/// longest gap between pings is the longer of the tick and one call (at
/// most [`FenceTiming::call_timeout`] when the client keeps its timeout):
/// `WatchdogSec=` must exceed both.
///
/// # Errors
/// [`Error::StartRenewer`] when the timerfd, the watchdog's socket or the
/// thread cannot be created.
pub fn start_renewer(
    timing: FenceTiming,
    first_sent: BootInstant,
    first_ttl: Duration,
    vouch: Option<Vouch>,
    renew: Box<dyn FnMut() -> Renewal + Send>,
) -> Result<Renewer, Error> {
    let watchdog = match vouch {
        None => None,
        Some(vouch) => match Watchdog::of_this_process() {
            Watchdog::Enabled { socket, interval } => {
                let pinger = Pinger::new(socket, "cluster lease renewer").map_err(|source| {
                    Error::StartRenewer {
                        what: "the watchdog's socket",
                        source,
                    }
                })?;
                Some((pinger, interval, vouch))
            }
            Watchdog::Off(why) => {
                tracing::debug!("cluster lease renewer: not pinging systemd's watchdog: {why}");
                None
            }
        },
    };
    start(timing, first_sent, first_ttl, watchdog, renew)
}

fn start(
    timing: FenceTiming,
    first_sent: BootInstant,
    first_ttl: Duration,
    watchdog: Option<(Pinger, Duration, Vouch)>,
    renew: Box<dyn FnMut() -> Renewal + Send>,
) -> Result<Renewer, Error> {
    let io = |what| {
        move |e: nix::Error| Error::StartRenewer {
            what,
            source: e.into(),
        }
    };
    let alarm = TimerFd::new(
        ClockId::CLOCK_BOOTTIME,
        TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK,
    )
    .map_err(io("the fence timer"))?;
    let deadline = timing.deadline_after(first_sent, first_ttl);
    let shared = Arc::new(Shared {
        timing,
        alarm,
        state: Mutex::new(State {
            deadline,
            last_sent: first_sent,
            last_failure: None,
            fired: None,
        }),
    });
    shared.arm(deadline).map_err(io("the fence timer"))?;
    let (stop, stopped) = mpsc::channel();
    let thread_shared = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("ec-lease-renewer".into())
        .spawn(move || renew_loop(&thread_shared, first_sent, watchdog, renew, &stopped))
        .map_err(|source| Error::StartRenewer {
            what: "its thread",
            source,
        })?;
    Ok(Renewer {
        shared,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// The renewer thread's life; returns when fired or told to stop.
fn renew_loop(
    shared: &Shared,
    first_sent: BootInstant,
    mut watchdog: Option<(Pinger, Duration, Vouch)>,
    mut renew: Box<dyn FnMut() -> Renewal + Send>,
    stopped: &mpsc::Receiver<()>,
) {
    let timing = shared.timing;
    let mut next_renewal = first_sent + timing.renew_every();
    let mut next_ping = BootInstant::now();
    let mut backoff = Duration::ZERO;
    loop {
        let now = BootInstant::now();
        let deadline = {
            let mut state = shared.state();
            shared.latch_if_past(&mut state);
            if state.fired.is_some() {
                return;
            }
            state.deadline
        };
        // Only while not fired (checked above) and while progress allows:
        // a frozen launcher, or one whose program stalled, vouches for
        // nothing (ECP-0135 section 4).
        if let Some((pinger, interval, vouch)) = &mut watchdog
            && now >= next_ping
        {
            if vouch.progress_ok() {
                pinger.ping();
            }
            next_ping = now + *interval;
        }
        if now >= next_renewal {
            // Ping before a call that may block for up to its timeout, so
            // the longest gap between pings is the longer of the tick and
            // one call, not their sum.
            if let Some((pinger, interval, vouch)) = &mut watchdog {
                if vouch.progress_ok() {
                    pinger.ping();
                }
                next_ping = now + *interval;
            }
            let sent = BootInstant::now();
            match renew() {
                Renewal::Renewed(ttl) => {
                    let mut state = shared.state();
                    shared.latch_if_past(&mut state);
                    if state.fired.is_some() {
                        return;
                    }
                    let moved = timing.deadline_after(sent, ttl);
                    if let Err(e) = shared.arm(moved) {
                        // The old deadline stays armed: fence then.
                        tracing::error!(
                            "cannot move the fence timer: {e}; fencing at the old deadline"
                        );
                        state.last_failure = Some(format!("cannot move the fence timer: {e}"));
                        next_renewal = BootInstant::now() + timing.renew_every();
                        continue;
                    }
                    state.deadline = moved;
                    state.last_sent = sent;
                    if let Some(failure) = state.last_failure.take() {
                        tracing::info!(
                            "cluster lease renewed again after failing ({failure}); the fence deadline moved {:.1}s ahead",
                            moved.saturating_since(BootInstant::now()).as_secs_f64()
                        );
                    }
                    next_renewal = sent + timing.renew_every();
                    backoff = Duration::ZERO;
                }
                Renewal::Lost(why) => {
                    let mut state = shared.state();
                    if state.fired.is_none() {
                        shared.fire_now(&mut state, why);
                    }
                    return;
                }
                Renewal::Failed(failure) => {
                    let mut state = shared.state();
                    if state.last_failure.is_none() {
                        tracing::warn!(
                            "cannot renew the cluster lease: {failure}; retrying until the fence deadline in {:.1}s",
                            deadline.saturating_since(BootInstant::now()).as_secs_f64()
                        );
                    } else {
                        tracing::debug!("cannot renew the cluster lease: {failure}");
                    }
                    state.last_failure = Some(failure);
                    next_renewal = BootInstant::now() + backoff;
                    backoff = (backoff * 2)
                        .max(FIRST_BACKOFF)
                        .min(timing.call_timeout().max(FIRST_BACKOFF));
                }
            }
            continue;
        }
        let mut wake = next_renewal.min(deadline);
        if watchdog.is_some() {
            wake = wake.min(next_ping);
        }
        // The kernel's timer fires the fence; this wait only schedules
        // renewals and pings, so its clock (monotonic) may lag in a suspend.
        match stopped.recv_timeout(wake.saturating_since(BootInstant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// The NixOS module reads its defaults, its TTL check and the units'
    /// `WatchdogSec` from `nixos/cluster-timing.json`; the launcher's flags
    /// and margin must say the same, or the module would accept what the
    /// launcher refuses.
    #[test]
    fn the_modules_timing_file_matches_the_launchers_defaults_and_margin() {
        use clap::Parser as _;
        let shared: serde_json::Value =
            serde_json::from_str(include_str!("../../../../nixos/cluster-timing.json")).unwrap();
        assert_eq!(Some(MARGIN.as_secs()), shared["margin"].as_u64());
        let cli = crate::cli::Cli::try_parse_from([
            "ec-launch",
            "run",
            "--source",
            "http://h/v1",
            "--",
            "true",
        ])
        .unwrap();
        let crate::cli::Command::Run(run) = cli.command else {
            unreachable!()
        };
        assert_eq!(Some(run.cluster.etcd_ttl.as_secs()), shared["ttl"].as_u64());
        assert_eq!(
            Some(run.cluster.etcd_stop_grace.as_secs()),
            shared["stopGrace"].as_u64()
        );
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_budget_refuses_a_ttl_of_at_most_twice_grace_plus_margin_and_names_the_minimum() {
        // (ttl, stop grace, accepted, minimum named when refused)
        let cases = [
            (10.0, 2.0, true, 0),
            (7.0, 2.0, true, 0),
            (6.0, 2.0, false, 7),
            (5.0, 2.0, false, 7),
            (3.0, 0.0, true, 0),
            (2.0, 0.0, false, 3),
            (8.0, 2.5, true, 0),
            (7.0, 2.5, false, 8),
            (60.0, 29.0, false, 61),
            (61.0, 29.0, true, 0),
            (0.0, 0.0, false, 3),
            // Fractions of a TTL: refused before the budget (0 = no minimum).
            (3.9, 0.9, false, 0),
            (10.5, 2.0, false, 0),
        ];
        for (ttl, grace, accepted, minimum) in cases {
            let result = FenceTiming::new(secs(ttl), secs(grace));
            match result {
                Ok(t) => {
                    assert!(accepted, "ttl {ttl} grace {grace} accepted");
                    assert!(t.renew_every() + t.call_timeout() + t.stop_grace + t.margin < t.ttl);
                }
                Err(e) if minimum == 0 => {
                    assert!(!accepted, "ttl {ttl} grace {grace} refused: {e}");
                    assert!(matches!(e, Error::FractionalTtl { .. }), "{e}");
                    assert_eq!(e.exit_status(), crate::exit_code::ExitStatus::BadArgument);
                    assert!(e.to_string().contains("whole"), "{e}");
                    assert!(e.to_string().contains(&format!("{}s", ttl.floor())), "{e}");
                }
                Err(e) => {
                    assert!(!accepted, "ttl {ttl} grace {grace} refused: {e}");
                    assert!(
                        matches!(e, Error::FenceBudget { minimum: m, .. } if m == minimum),
                        "{e}"
                    );
                    assert_eq!(e.exit_status(), crate::exit_code::ExitStatus::BadArgument);
                    let text = e.to_string();
                    assert!(text.contains(&format!("at least {minimum}s")), "{text}");
                    assert!(!text.contains(';'), "one clause before the hint: {text}");
                }
            }
        }
    }

    #[test]
    fn renewal_is_every_third_and_calls_are_bounded_by_a_sixth_of_the_ttl() {
        let t = FenceTiming::new(secs(12.0), secs(2.0)).unwrap();
        assert_eq!(t.renew_every(), secs(4.0));
        assert_eq!(t.call_timeout(), secs(2.0));
        assert_eq!(t.margin, MARGIN);
    }

    #[test]
    fn the_deadline_is_the_send_instant_plus_the_servers_ttl_less_grace_and_margin() {
        let t = FenceTiming::new(secs(10.0), secs(2.0)).unwrap();
        let sent = BootInstant(secs(100.0));
        assert_eq!(t.deadline_after(sent, secs(10.0)), BootInstant(secs(107.0)));
        // The server's TTL counts, not ours (etcd may raise it).
        assert_eq!(t.deadline_after(sent, secs(15.0)), BootInstant(secs(112.0)));
        // A TTL shorter than grace + margin: the deadline is the send itself.
        assert_eq!(t.deadline_after(sent, secs(2.5)), sent);
    }

    #[test]
    fn boot_instants_run_forward_and_count_from_boot() {
        let a = BootInstant::now();
        std::thread::sleep(Duration::from_millis(20));
        let b = BootInstant::now();
        assert!(b.saturating_since(a) >= Duration::from_millis(20));
        assert_eq!(a.saturating_since(b), Duration::ZERO);
    }

    /// Polls the alarm until readable (or `limit`); the instant it was seen.
    fn wait_for_alarm(renewer: &Renewer, limit: Duration) -> Option<BootInstant> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(renewer.alarm_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(limit).unwrap();
        match poll(&mut fds, timeout).unwrap() {
            0 => None,
            _ => Some(BootInstant::now()),
        }
    }

    #[test]
    fn the_alarm_fires_at_the_deadline_of_the_last_renewal_that_succeeded() {
        let timing = FenceTiming::new(secs(3.0), secs(0.2)).unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        let mut n = 0;
        let renew = Box::new(move || {
            seen.lock().unwrap().push(BootInstant::now());
            n += 1;
            if n <= 2 {
                Renewal::Renewed(secs(3.0))
            } else {
                Renewal::Failed("connection refused".into())
            }
        });
        let start = BootInstant::now();
        let renewer = super::start(timing, start, secs(3.0), None, renew).unwrap();
        let fired_at = wait_for_alarm(&renewer, secs(10.0)).expect("the alarm fires");
        let calls = calls.lock().unwrap().clone();
        assert!(calls.len() >= 3, "two successes and a failure: {calls:?}");
        let second = calls[1];
        let deadline = renewer.deadline();
        // The renewer takes the send instant just before calling us.
        let expected = timing.deadline_after(second, secs(3.0));
        assert!(expected.saturating_since(deadline) < Duration::from_millis(5));
        assert!(deadline.saturating_since(expected) == Duration::ZERO);
        assert!(fired_at >= deadline, "fired before the deadline");
        let why = renewer.fired().expect("fired says why");
        assert!(why.contains("connection refused"), "{why}");
        println!(
            "second renewal sent at +{:.3}s, deadline +{:.3}s, alarm seen at +{:.3}s ({} calls, {} retries after the failure)",
            second.saturating_since(start).as_secs_f64(),
            deadline.saturating_since(start).as_secs_f64(),
            fired_at.saturating_since(start).as_secs_f64(),
            calls.len(),
            calls.len() - 3,
        );
    }

    #[test]
    fn a_lost_lease_fires_the_alarm_at_once_and_once() {
        let timing = FenceTiming::new(secs(3.0), secs(0.2)).unwrap();
        let count = Arc::new(Mutex::new(0));
        let counted = Arc::clone(&count);
        let renew = Box::new(move || {
            *counted.lock().unwrap() += 1;
            Renewal::Lost("etcd answered that the lease is gone".into())
        });
        let start = BootInstant::now();
        let renewer = super::start(timing, start, secs(3.0), None, renew).unwrap();
        let fired_at = wait_for_alarm(&renewer, secs(10.0)).expect("fires");
        // At the first renewal (TTL/3 = 1 s), long before the deadline (1.8 s).
        assert!(
            fired_at < renewer.deadline(),
            "fired at once, not at the deadline"
        );
        assert!(renewer.fired().unwrap().contains("lease is gone"));
        std::thread::sleep(secs(1.5));
        assert_eq!(
            *count.lock().unwrap(),
            1,
            "no renewal after the fence fired"
        );
    }

    #[test]
    fn the_lock_delay_takes_the_longer_grace_and_clamps_a_hostile_one_to_the_ttl() {
        let timing = FenceTiming::new(secs(10.0), secs(2.0)).unwrap();
        let margin = timing.margin;
        assert_eq!(timing.lock_delay(None), secs(2.0) + margin);
        assert_eq!(timing.lock_delay(Some(secs(1.0))), secs(2.0) + margin);
        assert_eq!(timing.lock_delay(Some(secs(4.0))), secs(4.0) + margin);
        assert!(!timing.clamps_grace(Some(secs(4.0))));
        // Another writer's number, however large: a wait that ends, and no
        // overflow when it is added to an instant.
        for hostile in [Duration::from_millis(u64::MAX), Duration::MAX, secs(10.5)] {
            let delay = timing.lock_delay(Some(hostile));
            assert_eq!(delay, timing.ttl + margin, "{hostile:?}");
            assert!(timing.clamps_grace(Some(hostile)));
            let until = BootInstant::now() + delay;
            assert!(until.saturating_since(BootInstant::now()) <= delay);
        }
    }

    #[test]
    fn a_fuse_fires_the_alarm_at_once_from_another_thread_and_keeps_the_first_reason() {
        let timing = FenceTiming::new(secs(30.0), secs(1.0)).unwrap();
        let renew = Box::new(|| Renewal::Renewed(secs(30.0)));
        let renewer = super::start(timing, BootInstant::now(), secs(30.0), None, renew).unwrap();
        let fuse = renewer.fuse();
        let fired = std::thread::spawn(move || {
            fuse.fire("our key was deleted".into());
            fuse.fire("a second reason".into());
        });
        fired.join().unwrap();
        let seen = wait_for_alarm(&renewer, secs(2.0)).expect("fires at once");
        assert!(seen < renewer.deadline(), "long before the deadline");
        assert_eq!(renewer.fired().as_deref(), Some("our key was deleted"));
    }

    #[test]
    fn renewals_in_time_keep_the_alarm_quiet_and_stop_ends_the_thread() {
        let timing = FenceTiming::new(secs(3.0), secs(0.2)).unwrap();
        let renew = Box::new(|| Renewal::Renewed(secs(3.0)));
        let renewer = super::start(timing, BootInstant::now(), secs(3.0), None, renew).unwrap();
        assert_eq!(wait_for_alarm(&renewer, secs(4.0)), None);
        assert_eq!(renewer.fired(), None);
        renewer.stop();
    }

    /// A notify socket standing in for systemd's, and a pinger aimed at
    /// it (the directory must outlive both).
    fn fake_systemd() -> (tempfile::TempDir, UnixDatagram, Pinger) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let pinger = Pinger::new(
            crate::watchdog::NotifySocket::from_env(path.to_str().unwrap()).unwrap(),
            "test",
        )
        .unwrap();
        (dir, systemd, pinger)
    }

    #[test]
    fn the_watchdog_is_pinged_before_every_renewal_call_whatever_the_tick() {
        let (_dir, systemd, pinger) = fake_systemd();
        // Renewals every second, a tick far longer: pings come from the calls.
        let timing = FenceTiming::new(secs(3.0), secs(0.2)).unwrap();
        let renewer = super::start(
            timing,
            BootInstant::now(),
            secs(3.0),
            Some((pinger, secs(60.0), Vouch::renewal_only())),
            Box::new(|| Renewal::Renewed(secs(3.0))),
        )
        .unwrap();
        std::thread::sleep(secs(2.5));
        renewer.stop();
        systemd.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let mut pings = 0;
        while systemd.recv(&mut buf).is_ok() {
            pings += 1;
        }
        // At the start, and before the renewals at 1 s and 2 s (the second
        // may be late on a loaded machine); the tick alone gives one.
        assert!((2..=3).contains(&pings), "{pings} pings");
    }

    #[test]
    fn the_watchdog_is_pinged_until_the_fence_fires_and_never_after() {
        let (_dir, systemd, pinger) = fake_systemd();
        systemd.set_read_timeout(Some(secs(2.0))).unwrap();
        let timing = FenceTiming::new(secs(3.0), secs(0.2)).unwrap();
        // Deadline 0.8 s after start: no renewal is due before it.
        let renewer = super::start(
            timing,
            BootInstant::now(),
            secs(2.0),
            Some((pinger, secs(0.1), Vouch::renewal_only())),
            Box::new(|| Renewal::Renewed(secs(3.0))),
        )
        .unwrap();
        let mut buf = [0u8; 64];
        let n = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        wait_for_alarm(&renewer, secs(5.0)).expect("fires");
        assert!(renewer.fired().is_some());
        // Let the thread notice, then drain what was sent before it did.
        std::thread::sleep(secs(0.3));
        systemd.set_nonblocking(true).unwrap();
        while systemd.recv(&mut buf).is_ok() {}
        std::thread::sleep(secs(0.5));
        assert!(
            systemd.recv(&mut buf).is_err(),
            "pinged after the fence fired"
        );
    }

    #[test]
    fn a_renewed_lease_is_not_vouched_for_once_the_program_made_no_progress_within_the_window() {
        let (_dir, systemd, pinger) = fake_systemd();
        let (feed, monitor) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .unwrap();
        let vouch = Vouch::with_progress(feed, secs(0.3));
        vouch.program_started();
        let timing = FenceTiming::new(secs(3.0), secs(0.2)).unwrap();
        let renewer = super::start(
            timing,
            BootInstant::now(),
            secs(3.0),
            Some((pinger, secs(0.05), vouch)),
            Box::new(|| Renewal::Renewed(secs(3.0))),
        )
        .unwrap();
        systemd.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let count = |systemd: &UnixDatagram, buf: &mut [u8]| {
            let mut n = 0;
            while systemd.recv(buf).is_ok() {
                n += 1;
            }
            n
        };
        std::thread::sleep(secs(0.2));
        assert!(count(&systemd, &mut buf) > 0, "pinged within the window");
        std::thread::sleep(secs(0.3));
        let _ = count(&systemd, &mut buf);
        std::thread::sleep(secs(0.5));
        assert_eq!(
            count(&systemd, &mut buf),
            0,
            "pinged without progress, lease renewed"
        );
        nix::unistd::write(&monitor, b"1").unwrap();
        std::thread::sleep(secs(0.2));
        assert!(count(&systemd, &mut buf) > 0, "progress again, pings again");
        renewer.stop();
    }
}
