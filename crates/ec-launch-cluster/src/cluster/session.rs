//! One launch's life in the cluster: a lease, the keys taken under it, the
//! renewer that fences the program when the lease cannot be kept
//! (ECP-0134), the custody that fences it when a key is lost, and the lock
//! delay after a take that was not a clean hand-over (ECP-0135).
//!
//! Everything taken here is taken under one lease, so one revoke releases
//! it all at once and an expiry releases it all together. An answer that
//! leaves unknown whether a key became ours (a timeout after the request
//! was sent, a dropped connection, a lease that expired while we waited,
//! a store that changed under us) is never guessed at: the lease is
//! revoked, which deletes whatever it may hold, and the claims start over
//! under a new one, after a backoff that grows with each start-over in a
//! row; after [`MOST_RESTARTS`] the launcher gives up (69, or 76 when the
//! keys kept being lost), and systemd restarts it.
//!
//! Letting go: before the program ever ran, and after it ended with its
//! lock free, the keys are first marked released (one txn guarded by our
//! lease) and then the lease is revoked, so a claimant that watched the
//! release may start at once. Any other end (the launcher killed, a lease
//! that expires) leaves the mark out, and a claimant waits the lock delay;
//! so does letting go before the program ran while a lock delay is still
//! owed to a previous holder, whose reader may still be stopping: the mark
//! says no reader remains, which only the end of that delay makes true.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::ClusterConfig;
use super::claim::{self, Claimed, DeviceView, SlotEvents, SlotRequest, Witness};
use super::custody::{self, Custody, Held, held_keys};
use super::etcd::{EtcdClient, EtcdError, KeepAlive, KeyValue};
use super::fence::{self, BootInstant, Renewal, Renewer};
use super::keyspace;
use super::placement::{self, SpreadClaim, Want};
use super::preemption::Heed;
use super::record::ClusterRecord;
use super::vouch::Vouch;
use crate::error::Error;
use crate::supervise::{self, Interrupts};

/// Start-overs in a row, without a key taken in between, before the
/// launcher gives up: a persistently unusable answer must not loop
/// grant/txn/revoke forever.
pub const MOST_RESTARTS: u32 = 8;
/// The pause before the first start-over in a row; doubled for each next
/// one, up to [`MOST_RESTART_PAUSE`] (about 9 s in all before giving up).
const FIRST_RESTART_PAUSE: Duration = Duration::from_millis(100);
const MOST_RESTART_PAUSE: Duration = Duration::from_secs(2);

/// What to take for the source, kept so a restart can take it again.
pub struct SourceClaim<'a> {
    pub key: &'a str,
    /// The holder's record, made at each try (it dates the holding).
    pub value: &'a dyn Fn() -> Vec<u8>,
    pub wait: bool,
    pub until: Option<Instant>,
    /// `--placement spread` with `wait`: wait for this node's turn
    /// (ECP-0140); `None` takes the key as soon as it is free.
    pub spread: Option<Want<'a>>,
}

impl std::fmt::Debug for SourceClaim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceClaim")
            .field("key", &self.key)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

/// What to take of a device's tuner slots.
pub struct SlotClaim<'a> {
    /// The device key.
    pub device: &'a str,
    /// The tuner count this launcher declares (`--tuners`).
    pub count: u32,
    /// The slot key's value, made at each try (it records `count`).
    pub value: &'a dyn Fn() -> Vec<u8>,
    /// The waiting key's value (it records `count` and the priority).
    pub waiting_value: &'a dyn Fn() -> Vec<u8>,
    /// `--priority` (ECP-0139 section 7).
    pub priority: crate::priority::Priority,
    /// A request's value that the holder of a slot (its key) let go.
    pub preempt_value: &'a dyn Fn(&KeyValue) -> Vec<u8>,
    /// `--preempt-grace`: what a holder asked to let go is given.
    pub preempt_grace: Duration,
}

impl std::fmt::Debug for SlotClaim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotClaim")
            .field("device", &self.device)
            .field("count", &self.count)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

/// A lease with its renewer, the keys held under it and their custody, and
/// the client they use.
pub struct Session {
    client: EtcdClient,
    /// What the renewers consult before pinging systemd's watchdog;
    /// `None`: they do not ping.
    vouch: Option<Vouch>,
    timing: fence::FenceTiming,
    /// The lease all keys are under; 0 when none. Shared with the
    /// interrupt thread, which revokes it on a stop request.
    lease: Arc<AtomicI64>,
    renewer: Option<Renewer>,
    /// Until the program runs: stop requests revoke the lease and end us.
    interrupts: Option<Interrupts>,
    /// The keys held under the lease, as taken.
    held: Held,
    /// The watches over them; fires the renewer's fence.
    custody: Option<Custody>,
    /// The watch for a request that our slot be let go (ECP-0139).
    heed: Option<Heed>,
    /// What the claims saw of the keys' previous holders.
    witness: Witness,
    /// The program may not start before this (the lock delay of a take
    /// that was not a clean hand-over), and why.
    not_before: Option<(BootInstant, Duration)>,
    /// The same instant, shared with the interrupt thread: until it has
    /// passed, a previous holder's reader may still run, so letting go is
    /// no clean release, whether or not a program of ours ran.
    owed: Owed,
    /// Start-overs in a row without a key taken in between.
    restarts: u32,
    /// The program was started: from then on only its end is a clean
    /// release.
    program_started: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("lease", &self.lease())
            .finish_non_exhaustive()
    }
}

/// How a claim ended.
#[derive(Debug)]
pub enum Taken {
    Ours,
    Busy(Busy),
}

/// Held elsewhere (skip), or still held when `until` passed (wait).
#[derive(Debug)]
pub struct Busy {
    pub holders: Vec<KeyValue>,
    pub timed_out: bool,
}

/// Why the claims start over.
enum Cause {
    /// An answer that leaves unknown what we hold.
    Error(EtcdError),
    /// The fence fired (a key or the lease lost, the deadline passed).
    Lost(String),
}

impl Session {
    /// Connects and grants the first lease.
    ///
    /// # Errors
    /// etcd cannot be reached, refuses our credentials, or a file cannot be read.
    pub fn open(config: &ClusterConfig, vouch: Option<Vouch>) -> Result<Self, Error> {
        // From the renewer on, the process has threads: signals are read
        // (by the interrupt thread now, the supervisor later), never
        // handled, so they are blocked before any thread starts.
        let blocked = supervise::block_signals()?;
        let interrupts = Interrupts::start(&blocked)?;
        let client = EtcdClient::connect(&config.connection.connect)?;
        let mut session = Self {
            client,
            vouch,
            timing: config.timing,
            lease: Arc::default(),
            renewer: None,
            interrupts: None,
            held: Arc::default(),
            custody: None,
            heed: None,
            witness: Witness::default(),
            not_before: None,
            owed: Arc::default(),
            restarts: 0,
            program_started: false,
        };
        interrupts.on_interrupt(session.revoker());
        session.interrupts = Some(interrupts);
        session.grant()?;
        Ok(session)
    }

    fn grant(&mut self) -> Result<(), Error> {
        let sent = BootInstant::now();
        let lease = self.client.grant(self.timing.ttl)?;
        self.lease.store(lease.id, Ordering::SeqCst);
        let client = self.client.clone();
        let held = Arc::clone(&self.held);
        let id = lease.id;
        let renewer = fence::start_renewer(
            self.timing,
            sent,
            lease.ttl,
            self.vouch.clone(),
            Box::new({
                let mut failed_last = false;
                move || {
                    // A retry asks every member at once: the one asked
                    // first may hang behind a frozen leader, and one
                    // endpoint per call timeout could use up the budget.
                    let answer = if failed_last {
                        client.keep_alive_anywhere(id)
                    } else {
                        client.keep_alive(id)
                    };
                    failed_last = answer.is_err();
                    renewal(&client, &held, answer)
                }
            }),
        )?;
        self.custody = Some(Custody::new(self.client.clone(), renewer.fuse()));
        self.renewer = Some(renewer);
        tracing::debug!(lease = id, ttl = ?lease.ttl, "cluster lease granted");
        Ok(())
    }

    /// Revokes the lease (deleting every key under it, marked released: no
    /// program ran) and grants a new one, after a pause that grows with
    /// each start-over in a row; gives up after [`MOST_RESTARTS`].
    fn start_over(&mut self, cause: Cause) -> Result<(), Error> {
        self.restarts += 1;
        let why = match &cause {
            Cause::Error(e) => e.to_string(),
            Cause::Lost(why) => why.clone(),
        };
        if self.restarts > MOST_RESTARTS {
            self.let_go(true);
            return Err(match cause {
                Cause::Error(source) => crate::cluster_error::ClusterError::ClaimGaveUp {
                    attempts: MOST_RESTARTS,
                    source,
                }
                .into(),
                Cause::Lost(why) => Error::Fenced {
                    why: format!(
                        "the cluster keys were lost {MOST_RESTARTS} times in a row before the program started, the last time because {why}"
                    ),
                },
            });
        }
        let pause = (FIRST_RESTART_PAUSE * 2u32.pow(self.restarts - 1)).min(MOST_RESTART_PAUSE);
        tracing::warn!(
            "cluster: {why}; revoking the lease and taking the keys again under a new one in {} (start-over {} of at most {MOST_RESTARTS} in a row)",
            humantime::format_duration(pause),
            self.restarts
        );
        self.let_go(true);
        held_keys(&self.held).clear();
        self.heed = None;
        self.witness.forget();
        self.not_before = None;
        *owed_until(&self.owed) = None;
        // The store that answers now is the truth from here on: a key
        // found free in it costs the lock delay.
        self.client.forget_cluster();
        std::thread::sleep(pause);
        self.grant()
    }

    fn lease(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }

    /// Lets go of the keys for a stop request that arrives on another
    /// thread while this one waits: marked released (no program ran), then
    /// the lease revoked.
    #[must_use]
    pub fn revoker(&self) -> Box<dyn Fn() + Send> {
        let client = self.client.clone();
        let lease = self.lease.clone();
        let held = Arc::clone(&self.held);
        let owed = Arc::clone(&self.owed);
        Box::new(move || let_go_of(&client, &lease, &held, mark_unless_owed(&owed)))
    }

    /// The program is about to start: signals wait for the supervisor,
    /// which forwards them to it.
    pub fn hand_signals_to_supervisor(&mut self) {
        self.program_started = true;
        // From here on progress counts, when the progress watchdog is on.
        if let Some(vouch) = &self.vouch {
            vouch.program_started();
        }
        if let Some(interrupts) = self.interrupts.take() {
            interrupts.stop();
        }
    }

    /// The watch for a request that our slot be let go, for the
    /// supervisor to heed (ECP-0139 section 7).
    #[must_use]
    pub fn stop_request(&self) -> Option<&dyn crate::supervise::StopRequest> {
        self.heed
            .as_ref()
            .map(|heed| heed as &dyn crate::supervise::StopRequest)
    }

    /// The renewer, for the supervisor to watch.
    #[must_use]
    pub fn renewer(&self) -> Option<&Renewer> {
        self.renewer.as_ref()
    }

    /// Takes the source's key.
    ///
    /// # Errors
    /// etcd failed in a way starting over cannot fix, or the claims had to
    /// start over too many times in a row.
    pub fn take_source(
        &mut self,
        source: &SourceClaim<'_>,
        on_wait: &mut dyn FnMut(&KeyValue),
    ) -> Result<Taken, Error> {
        let key = keyspace::source(source.key);
        loop {
            if let Some(why) = self.lost() {
                self.start_over(Cause::Lost(why))?;
            }
            let lease = self.lease();
            let claimed = match &source.spread {
                Some(want) if source.wait => placement::claim(
                    &self.client,
                    &mut self.witness,
                    &SpreadClaim {
                        source: source.key,
                        node: want.node,
                        weight: want.weight,
                        value: source.value,
                        want: want.value,
                        suspicion: self.timing.ttl,
                    },
                    lease,
                    source.until,
                    on_wait,
                ),
                _ => claim::claim(
                    &self.client,
                    &mut self.witness,
                    key.as_bytes(),
                    source.value,
                    lease,
                    source.wait,
                    source.until,
                    on_wait,
                ),
            };
            let claimed = claimed.and_then(|claimed| {
                if claimed == Claimed::Ours {
                    self.witness
                        .ensure_taken(&self.client, key.as_bytes(), lease)?;
                }
                Ok(claimed)
            });
            match claimed {
                Ok(Claimed::Ours) => {
                    self.keep_taken()?;
                    // Taken under a lease the fence gave up while we
                    // waited: it may expire any moment, so it is not ours
                    // to run on (the loop starts over).
                    if self.lost().is_none() {
                        self.restarts = 0;
                        return Ok(Taken::Ours);
                    }
                }
                Ok(Claimed::Busy { holder, timed_out }) => {
                    return Ok(Taken::Busy(Busy {
                        holders: holder.into_iter().collect(),
                        timed_out,
                    }));
                }
                Err(e) if restartable(&e) => self.start_over(Cause::Error(e))?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Takes one of the slots of `slot.device`, after the source's key
    /// (ECP-0135 section 5: never at or beyond the smallest tuner count
    /// declared by this launcher, any holder and any waiter).
    /// Whenever the lease is started over (an ambiguous answer, a lease
    /// or key lost or given up while waiting) the source is taken again
    /// first: a new lease holds nothing, and the old one's source key may
    /// be gone.
    ///
    /// # Errors
    /// As [`Session::take_source`].
    pub fn take_slot(
        &mut self,
        source: &SourceClaim<'_>,
        slot: &SlotClaim<'_>,
        events: &mut SlotEvents<'_>,
    ) -> Result<Result<u32, Busy>, Error> {
        let prefix = keyspace::device_slots(slot.device);
        let request = SlotRequest {
            device_prefix: prefix.as_bytes(),
            count: slot.count,
            value: slot.value,
            waiting_value: slot.waiting_value,
            priority: slot.priority,
            preempt_value: slot.preempt_value,
            // The holder's grace, and for one that cannot answer, the TTL
            // its key outlives it by; then 10 s, as a local preemptor
            // waits after its SIGKILL.
            preempt_patience: slot.preempt_grace + self.timing.ttl + Duration::from_secs(10),
        };
        loop {
            let lease = self.lease();
            let claimed = claim::claim_slot(
                &self.client,
                &mut self.witness,
                &request,
                lease,
                (source.wait, source.until),
                events,
            );
            let claimed = claimed.and_then(|taken| {
                if let Some(index) = taken {
                    // Told by the claim already (a no-op then); read back
                    // and held to should a take ever go untold.
                    let key = keyspace::slot_under(prefix.as_bytes(), index);
                    self.witness.ensure_taken(&self.client, &key, lease)?;
                }
                Ok(taken)
            });
            let cause = match claimed {
                Ok(Some(index)) => {
                    self.keep_taken()?;
                    match self.lost() {
                        None => {
                            self.restarts = 0;
                            return Ok(Ok(index));
                        }
                        Some(why) => Cause::Lost(why),
                    }
                }
                Ok(None) => {
                    // The holders only: waiters hold no tuner.
                    let holders = self
                        .client
                        .list(prefix.as_bytes())
                        .map(|kvs| DeviceView::from_keys(kvs, 0).slots)
                        .unwrap_or_default();
                    return Ok(Err(Busy {
                        holders: holders.into_iter().map(|(_, kv)| kv).collect(),
                        timed_out: source.wait,
                    }));
                }
                Err(e) if restartable(&e) => Cause::Error(e),
                Err(e) => return Err(e.into()),
            };
            self.start_over(cause)?;
            let mut quiet = |_: &KeyValue| {};
            if let Taken::Busy(busy) = self.take_source(source, &mut quiet)? {
                return Ok(Err(busy));
            }
        }
    }

    /// Keeps what the last claim took: held, watched, and, unless its
    /// previous holder was seen releasing it cleanly, a lock delay before
    /// the program may start.
    fn keep_taken(&mut self) -> Result<(), Error> {
        for took in self.witness.drain_taken() {
            held_keys(&self.held).push(took.kv.clone());
            if let Some(custody) = &self.custody {
                custody.keep(took.kv.clone())?;
            }
            if let Some(keyspace::Named::Slot { device, index }) = keyspace::parse(&took.kv.key) {
                let under = keyspace::device_slots(&device);
                let request_key = keyspace::preempt_under(under.as_bytes(), index);
                self.heed = Some(Heed::start(
                    self.client.clone(),
                    took.kv.clone(),
                    request_key,
                )?);
            }
            let key = crate::printable::printable(&keyspace::shown(&took.kv.key)).into_owned();
            if took.clean {
                tracing::debug!(key = %key, "cluster key taken after its holder's clean release: no lock delay");
                continue;
            }
            if self.timing.clamps_grace(took.previous_grace) {
                tracing::warn!(
                    key = %key,
                    "the previous holder of this cluster key recorded a stop grace longer than this launcher's TTL of {}; the lock delay counts the TTL (give every launcher of a source the same --etcd-ttl and --etcd-stop-grace)",
                    humantime::format_duration(self.timing.ttl),
                );
            }
            let delay = self.timing.lock_delay(took.previous_grace);
            let until = took.at + delay;
            if self.not_before.is_none_or(|(at, _)| at < until) {
                self.not_before = Some((until, delay));
                *owed_until(&self.owed) = Some(until);
            }
            tracing::info!(
                key = %key,
                "cluster key taken without a clean release by a previous holder (found free, or lost to an expiry, a revoke, a delete, or a store restored or restarted); the program starts after the lock delay of {} (the longer stop grace and the {} margin), when any holder that lost the key has stopped",
                humantime::format_duration(delay),
                humantime::format_duration(self.timing.margin),
            );
        }
        Ok(())
    }

    /// Holds the keys, renewing and watching them, until the lock delay of
    /// a take that was not a clean hand-over has passed (ECP-0135). A loss
    /// meanwhile starts the claims over: the source again, then `slot`
    /// (what `take_slot` was asked for, if it was). `Ok(None)`: the program
    /// may start now; `Ok(Some(busy))`: a key taken again was busy.
    ///
    /// # Errors
    /// As [`Session::take_source`].
    pub fn settle(
        &mut self,
        source: &SourceClaim<'_>,
        slot: Option<&SlotClaim<'_>>,
    ) -> Result<Option<Busy>, Error> {
        loop {
            if let Some(why) = self.lost() {
                self.start_over(Cause::Lost(why))?;
                let mut quiet = |_: &KeyValue| {};
                if let Taken::Busy(busy) = self.take_source(source, &mut quiet)? {
                    return Ok(Some(busy));
                }
                if let Some(slot) = slot {
                    // Told once already, when the slot was first taken.
                    let taken = SlotEvents::quiet(|events| self.take_slot(source, slot, events))?;
                    if let Err(busy) = taken {
                        return Ok(Some(busy));
                    }
                }
                continue;
            }
            let Some((until, delay)) = self.not_before else {
                return Ok(None);
            };
            let now = BootInstant::now();
            if now >= until {
                tracing::debug!(
                    "cluster: the lock delay of {} has passed",
                    humantime::format_duration(delay)
                );
                self.not_before = None;
                return Ok(None);
            }
            self.sleep_unless_fenced(until.saturating_since(now));
        }
    }

    /// Sleeps `time`, waking early when the fence fires.
    fn sleep_unless_fenced(&self, time: Duration) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let Some(renewer) = &self.renewer else {
            std::thread::sleep(time);
            return;
        };
        let mut fds = [PollFd::new(renewer.alarm_fd(), PollFlags::POLLIN)];
        // Round up: a zero timeout would spin until the last millisecond.
        let timeout =
            PollTimeout::try_from(time + Duration::from_micros(999)).unwrap_or(PollTimeout::MAX);
        // The alarm stays readable for the supervisor, which reads it.
        if poll(&mut fds, timeout).is_err() {
            std::thread::sleep(time.min(Duration::from_millis(100)));
        }
    }

    /// Ready to run the program: if the lease or a key was lost while we
    /// claimed, the caller must not start it.
    #[must_use]
    pub fn lost(&self) -> Option<String> {
        self.renewer.as_ref().and_then(Renewer::fired)
    }

    /// Stops renewing and revokes the lease, so the next holder need not
    /// wait for it to expire; the keys are not marked released, so a
    /// claimant waits the lock delay. Best effort: a lease we cannot
    /// revoke expires.
    pub fn release(&mut self) {
        self.let_go(false);
    }

    /// The program ended and its lock is free: marks the keys released
    /// (one txn, only while they are under our lease) and then revokes the
    /// lease, so a claimant that watched it starts at once (ECP-0135).
    /// Best effort: a mark that cannot be written leaves the claimant the
    /// lock delay, and a lease we cannot revoke expires.
    pub fn release_clean(&mut self) {
        self.let_go(true);
    }

    fn let_go(&mut self, mark: bool) {
        // First: our own mark is not a loss.
        if let Some(custody) = self.custody.take() {
            custody.stop();
        }
        if let Some(renewer) = self.renewer.take() {
            renewer.stop();
        }
        if let Some(heed) = self.heed.take() {
            heed.stop();
        }
        let mark = mark && mark_unless_owed(&self.owed);
        let_go_of(&self.client, &self.lease, &self.held, mark);
    }
}

/// The end of the lock delay this launcher owes a previous holder, shared
/// with the interrupt thread (see [`Session::revoker`]).
type Owed = Arc<Mutex<Option<BootInstant>>>;

fn owed_until(owed: &Owed) -> std::sync::MutexGuard<'_, Option<BootInstant>> {
    owed.lock().unwrap_or_else(PoisonError::into_inner)
}

/// True unless a lock delay is still owed: keys let go of inside it are
/// not marked released. A take after an unclean loss holds the keys for
/// no program of its own, but the previous holder's reader may still be
/// stopping; a mark would let the next claimant start at once, beside it
/// (ECP-0135). Unmarked, the next claimant waits its own lock delay.
fn mark_unless_owed(owed: &Owed) -> bool {
    let clean = owed_until(owed).is_none_or(|until| BootInstant::now() >= until);
    if !clean {
        tracing::debug!(
            "cluster keys let go of inside the lock delay: not marked released (a previous holder may still be stopping)"
        );
    }
    clean
}

impl Drop for Session {
    /// Before the program ran no reader of ours exists: the release is
    /// clean, once any lock delay owed has passed. After, only
    /// [`Session::release_clean`] says so.
    fn drop(&mut self) {
        self.let_go(!self.program_started);
    }
}

/// The renewer's view of one keepalive: renewed, lost (the lease gone, a
/// key gone in a store that went back, another cluster), or failed.
fn renewal(client: &EtcdClient, held: &Held, answer: Result<KeepAlive, EtcdError>) -> Renewal {
    match answer {
        Ok(KeepAlive {
            ttl: Some(ttl),
            revision,
        }) => match custody::check_renewal(client, held, revision) {
            Some(why) => Renewal::Lost(why),
            None => Renewal::Renewed(ttl),
        },
        Ok(KeepAlive { ttl: None, .. }) => {
            Renewal::Lost("etcd answered that the lease is gone (expired or revoked)".into())
        }
        Err(e) if e.is_store_changed() => Renewal::Lost(e.to_string()),
        Err(e) => Renewal::Failed(e.to_string()),
    }
}

/// Revokes the lease in `lease` once (whoever swaps it out first), after
/// marking the keys in `held` released when `mark`.
fn let_go_of(client: &EtcdClient, lease: &AtomicI64, held: &Held, mark: bool) {
    let id = lease.swap(0, Ordering::SeqCst);
    if id == 0 {
        return;
    }
    if mark {
        mark_released(client, id, held);
    }
    match client.revoke(id) {
        Ok(()) => tracing::debug!(lease = id, "cluster lease revoked"),
        Err(e) => tracing::warn!(
            "cluster: cannot revoke lease {id:x}: {e}; its keys are released when it expires"
        ),
    }
}

/// Marks the keys under lease `id` released, in one txn that writes only
/// while every one is still under it.
fn mark_released(client: &EtcdClient, id: i64, held: &Held) {
    let marked: Vec<(Vec<u8>, Vec<u8>)> = held_keys(held)
        .iter()
        .filter(|kv| kv.lease == id)
        .filter_map(|kv| Some((kv.key.clone(), ClusterRecord::mark_released(&kv.value)?)))
        .collect();
    if marked.is_empty() {
        return;
    }
    let pairs: Vec<(&[u8], &[u8])> = marked
        .iter()
        .map(|(key, value)| (key.as_slice(), value.as_slice()))
        .collect();
    match client.put_if_leased(&pairs, id) {
        Ok(true) => tracing::debug!(lease = id, "cluster keys marked released"),
        Ok(false) => tracing::debug!(
            lease = id,
            "cluster keys not marked released: they are no longer all ours"
        ),
        Err(e) => tracing::debug!(
            lease = id,
            "cluster keys not marked released ({e}): the next holder waits the lock delay"
        ),
    }
}

/// Errors after which the keys may or may not be ours: start over.
fn restartable(error: &EtcdError) -> bool {
    error.is_ambiguous() || error.is_lease_lost() || error.is_store_changed()
}
