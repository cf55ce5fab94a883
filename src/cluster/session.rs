//! One launch's life in the cluster: a lease, the keys taken under it, and
//! the renewer that fences the program when the lease cannot be kept
//! (ECP-0134).
//!
//! Everything taken here is taken under one lease, so one revoke releases
//! it all at once and an expiry releases it all together. An answer that
//! leaves unknown whether a key became ours (a timeout after the request
//! was sent, a dropped connection, a lease that expired while we waited)
//! is never guessed at: the lease is revoked, which deletes whatever it
//! may hold, and the claims start over under a new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use super::ClusterConfig;
use super::claim::{self, Claimed, DeviceView, Disagreement, SlotRequest};
use super::etcd::{EtcdClient, EtcdError, KeyValue};
use super::fence::{self, BootInstant, Renewal, Renewer};
use super::keyspace;
use crate::error::Error;
use crate::supervise::{self, Interrupts};

/// What to take for the source, kept so a restart can take it again.
pub struct SourceClaim<'a> {
    pub key: &'a str,
    /// The holder's record, made at each try (it dates the holding).
    pub value: &'a dyn Fn() -> Vec<u8>,
    pub wait: bool,
    pub until: Option<Instant>,
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
    /// The waiting key's value (it records `count`).
    pub waiting_value: &'a dyn Fn() -> Vec<u8>,
}

impl std::fmt::Debug for SlotClaim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotClaim")
            .field("device", &self.device)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

/// A lease with its renewer, and the client they use.
pub struct Session {
    client: EtcdClient,
    config_ping_watchdog: bool,
    timing: fence::FenceTiming,
    /// The lease all keys are under; 0 when none. Shared with the
    /// interrupt thread, which revokes it on a stop request.
    lease: Arc<AtomicI64>,
    renewer: Option<Renewer>,
    /// Until the program runs: stop requests revoke the lease and end us.
    interrupts: Option<Interrupts>,
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

impl Session {
    /// Connects and grants the first lease.
    ///
    /// # Errors
    /// etcd cannot be reached, refuses our credentials, or a file cannot be read.
    pub fn open(config: &ClusterConfig, ping_watchdog: bool) -> Result<Self, Error> {
        // From the renewer on, the process has threads: signals are read
        // (by the interrupt thread now, the supervisor later), never
        // handled, so they are blocked before any thread starts.
        let blocked = supervise::block_signals()?;
        let interrupts = Interrupts::start(&blocked)?;
        let client = EtcdClient::connect(&config.connection.connect)?;
        let mut session = Self {
            client,
            config_ping_watchdog: ping_watchdog,
            timing: config.timing,
            lease: Arc::default(),
            renewer: None,
            interrupts: None,
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
        let id = lease.id;
        self.renewer = Some(fence::start_renewer(
            self.timing,
            sent,
            lease.ttl,
            self.config_ping_watchdog,
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
                    match answer {
                        Ok(Some(ttl)) => Renewal::Renewed(ttl),
                        Ok(None) => Renewal::Lost,
                        Err(e) => Renewal::Failed(e.to_string()),
                    }
                }
            }),
        )?);
        tracing::debug!(lease = id, ttl = ?lease.ttl, "cluster lease granted");
        Ok(())
    }

    /// Revokes the lease (deleting every key under it) and grants a new one.
    fn start_over(&mut self, why: &str) -> Result<(), Error> {
        tracing::warn!(
            "cluster: {why}; revoking the lease and taking the keys again under a new one"
        );
        self.release();
        self.grant()
    }

    fn lease(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }

    /// Revokes whatever lease is current when called: for a stop request
    /// that arrives on another thread while this one waits.
    #[must_use]
    pub fn revoker(&self) -> Box<dyn Fn() + Send> {
        let client = self.client.clone();
        let lease = self.lease.clone();
        Box::new(move || revoke(&client, &lease))
    }

    /// The program is about to start: signals wait for the supervisor,
    /// which forwards them to it.
    pub fn hand_signals_to_supervisor(&mut self) {
        if let Some(interrupts) = self.interrupts.take() {
            interrupts.stop();
        }
    }

    /// The renewer, for the supervisor to watch.
    #[must_use]
    pub fn renewer(&self) -> Option<&Renewer> {
        self.renewer.as_ref()
    }

    /// Takes the source's key.
    ///
    /// # Errors
    /// etcd failed in a way starting over cannot fix.
    pub fn take_source(
        &mut self,
        source: &SourceClaim<'_>,
        on_wait: &mut dyn FnMut(&KeyValue),
    ) -> Result<Taken, Error> {
        let key = keyspace::source(source.key);
        loop {
            if let Some(why) = self.lost() {
                self.start_over(&why)?;
            }
            match claim::claim(
                &self.client,
                key.as_bytes(),
                source.value,
                self.lease(),
                source.wait,
                source.until,
                on_wait,
            ) {
                // Taken under a lease the fence gave up while we waited:
                // it may expire any moment, so it is not ours to run on.
                Ok(Claimed::Ours) if self.lost().is_some() => {}
                Ok(Claimed::Ours) => return Ok(Taken::Ours),
                Ok(Claimed::Busy { holder, timed_out }) => {
                    return Ok(Taken::Busy(Busy {
                        holders: holder.into_iter().collect(),
                        timed_out,
                    }));
                }
                Err(e) if restartable(&e) => self.start_over(&e.to_string())?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Takes one of the slots of `slot.device`, after the source's key
    /// (ECP-0135 section 5: never at or beyond the smallest tuner count
    /// declared by this launcher, any holder and any waiter).
    /// Whenever the lease is started over (an ambiguous answer, a lease
    /// lost or given up while waiting) the source is taken again first: a
    /// new lease holds nothing, and the old one's source key may be gone.
    ///
    /// # Errors
    /// As [`Session::take_source`].
    pub fn take_slot(
        &mut self,
        source: &SourceClaim<'_>,
        slot: &SlotClaim<'_>,
        on_wait: &mut dyn FnMut(&[KeyValue]),
        on_disagree: &mut dyn FnMut(&Disagreement),
    ) -> Result<Result<u32, Busy>, Error> {
        let prefix = keyspace::device_slots(slot.device);
        let request = SlotRequest {
            device_prefix: prefix.as_bytes(),
            count: slot.count,
            value: slot.value,
            waiting_value: slot.waiting_value,
        };
        loop {
            let why = match claim::claim_slot(
                &self.client,
                &request,
                self.lease(),
                source.wait,
                source.until,
                on_wait,
                on_disagree,
            ) {
                Ok(Some(slot)) => match self.lost() {
                    None => return Ok(Ok(slot)),
                    Some(why) => why,
                },
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
                Err(e) if restartable(&e) => e.to_string(),
                Err(e) => return Err(e.into()),
            };
            self.start_over(&why)?;
            let mut quiet = |_: &KeyValue| {};
            if let Taken::Busy(busy) = self.take_source(source, &mut quiet)? {
                return Ok(Err(busy));
            }
        }
    }

    /// Ready to run the program: if the lease was lost while we claimed,
    /// the caller must not start it.
    #[must_use]
    pub fn lost(&self) -> Option<String> {
        self.renewer.as_ref().and_then(Renewer::fired)
    }

    /// Stops renewing and revokes the lease, so the next holder need not
    /// wait for it to expire. Best effort: a lease we cannot revoke expires.
    pub fn release(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.stop();
        }
        revoke(&self.client, &self.lease);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.release();
    }
}

/// Revokes the lease in `lease` once (whoever swaps it out first).
fn revoke(client: &EtcdClient, lease: &AtomicI64) {
    let id = lease.swap(0, Ordering::SeqCst);
    if id == 0 {
        return;
    }
    match client.revoke(id) {
        Ok(()) => tracing::debug!(lease = id, "cluster lease revoked"),
        Err(e) => tracing::warn!(
            "cluster: cannot revoke lease {id:x}: {e}; its keys are released when it expires"
        ),
    }
}

/// Errors after which the keys may or may not be ours: start over.
fn restartable(error: &EtcdError) -> bool {
    error.is_ambiguous() || error.is_lease_lost()
}
