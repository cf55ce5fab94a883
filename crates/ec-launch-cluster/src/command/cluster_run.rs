//! `ec-launch run --etcd`: cluster mode's steps of a launch (ECP-0134),
//! which the library's `run` asks for at each point of its holding step
//! ([`ClusterLaunch`], [`ClusterHolding`]; ECP-0138): the source's cluster
//! key after the node's lock, a cluster slot after the node's slot, the
//! lock delay, and the program supervised under the lease instead of
//! exec'd. Validation, the local locks, records and messages are the
//! library's, the same as for a local launch.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ec_launch::cli::ClusterArgs;
use ec_launch::command::run::{
    ClusterHolding, ClusterLaunch, Launching, RunConfig, gave_up_waiting, status_command, until,
};

use crate::cluster::ClusterConfig;
use crate::cluster::claim::{Disagreement, SlotEvents};
use crate::cluster::etcd::KeyValue;
use crate::cluster::keyspace;
use crate::cluster::placement::{Want, WantRecord};
use crate::cluster::record::{
    ClusterRecord, Declarant, EtcdValue, PreemptRequest, Preempted, WaitingRecord,
};
use crate::cluster::session::{Busy, Session, SlotClaim, SourceClaim, Taken};
use crate::cluster::vouch::Vouch;
use crate::error::Error;
use crate::exec;
use crate::exit_code::ExitStatus;
use crate::lock::{BusyPolicy, HeldLock};
use crate::printable::{printable, printable_path, shell_word};
use crate::shown::Shown;
use crate::tuner_slot::HeldSlot;
use crate::watchdog;

/// `run`'s cluster settings from its flags: the library's `run_with` calls
/// it where the local launcher refuses `--etcd` (ECP-0138).
///
/// # Errors
/// As [`ClusterConfig::from_args`].
pub fn from_args(args: &ClusterArgs, wait: bool) -> Result<Option<Box<dyn ClusterLaunch>>, Error> {
    Ok(ClusterConfig::from_args(args, wait)?
        .map(|config| Box::new(config) as Box<dyn ClusterLaunch>))
}

impl ClusterLaunch for ClusterConfig {
    fn take_source<'a>(
        &'a self,
        launch: &'a Launching<'a>,
        unit: Option<&'a String>,
        progress: Option<std::os::fd::OwnedFd>,
        wait_started: &mut Option<Instant>,
    ) -> Result<Option<Box<dyn ClusterHolding + 'a>>, Error> {
        let config = launch.config;
        let preempted = Preempting::default();
        let (source_value, slot_value, waiting_value) =
            cluster_values(config, self, unit, launch.redacted, &preempted);
        let preempt_value = preempt_value(config, self, unit, launch.redacted);
        let want_value = want_value(self, unit);
        let claim = source_claim(launch, self, &source_value, &want_value);
        let Some(session) = take_cluster_source(
            config,
            (self, progress),
            &claim,
            launch.program_name,
            wait_started,
        )?
        else {
            return Ok(None);
        };
        Ok(Some(Box::new(Holding {
            launch,
            cluster: self,
            session,
            source_value: Box::new(source_value),
            slot_value: Box::new(slot_value),
            waiting_value: Box::new(waiting_value),
            want_value: Box::new(want_value),
            preempt_value: Box::new(preempt_value),
            preempted,
        })))
    }
}

/// The cluster keys of a launch, while it holds them, and how to make
/// their values again (each try dates the holding).
struct Holding<'a> {
    launch: &'a Launching<'a>,
    cluster: &'a ClusterConfig,
    session: Session,
    source_value: Box<dyn Fn() -> Vec<u8> + 'a>,
    slot_value: Box<dyn Fn() -> Vec<u8> + 'a>,
    waiting_value: Box<dyn Fn() -> Vec<u8> + 'a>,
    want_value: Box<dyn Fn() -> Vec<u8> + 'a>,
    preempt_value: PreemptValue<'a>,
    /// The holder this launch asked to let go, once it has: the slot
    /// record says so (ECP-0139).
    preempted: Preempting,
}

/// How a launch makes a request that the holder of a slot (its key) let go.
type PreemptValue<'a> = Box<dyn Fn(&KeyValue) -> Vec<u8> + 'a>;

/// The holder a launch asked to let go of a slot, shared by the claim's
/// event (which sets it) and the slot's value (which records it).
type Preempting = std::rc::Rc<std::cell::RefCell<Option<Preempted>>>;

/// The source's claim: its key, this launch's value, how long to wait,
/// and what it asks of placement.
fn source_claim<'b>(
    launch: &'b Launching<'_>,
    cluster: &'b ClusterConfig,
    value: &'b dyn Fn() -> Vec<u8>,
    want_value: &'b dyn Fn() -> Vec<u8>,
) -> SourceClaim<'b> {
    SourceClaim {
        key: launch.config.key.as_str(),
        value,
        wait: matches!(launch.config.policy, BusyPolicy::Wait { .. }),
        until: launch.deadline,
        spread: spread_want(cluster, want_value),
    }
}

/// The device's slot claim, with `--tuners`.
fn slot_claim<'b>(
    config: &'b RunConfig,
    (value, waiting_value): (&'b dyn Fn() -> Vec<u8>, &'b dyn Fn() -> Vec<u8>),
    preempt_value: &'b dyn Fn(&KeyValue) -> Vec<u8>,
) -> Option<SlotClaim<'b>> {
    config.tuners.as_ref().map(|tuners| SlotClaim {
        device: tuners.device.as_str(),
        count: tuners.count,
        value,
        waiting_value,
        priority: config.priority,
        preempt_value,
        preempt_grace: config.preempt_grace,
    })
}

impl ClusterHolding for Holding<'_> {
    fn take_slot(&mut self, wait_started: &mut Option<Instant>) -> Result<bool, Error> {
        let config = self.launch.config;
        let values = (&*self.slot_value, &*self.waiting_value);
        let Some(slot) = slot_claim(config, values, &*self.preempt_value) else {
            return Ok(true);
        };
        let claim = source_claim(
            self.launch,
            self.cluster,
            &*self.source_value,
            &*self.want_value,
        );
        take_cluster_slot(
            config,
            self.cluster,
            &mut self.session,
            (&claim, &slot),
            (self.launch, &self.preempted),
            wait_started,
        )
    }

    fn settle(&mut self) -> Result<bool, Error> {
        let config = self.launch.config;
        let values = (&*self.slot_value, &*self.waiting_value);
        let slot = slot_claim(config, values, &*self.preempt_value);
        let claim = source_claim(
            self.launch,
            self.cluster,
            &*self.source_value,
            &*self.want_value,
        );
        settle_in_cluster(
            config,
            self.cluster,
            Some(&mut self.session),
            (&claim, slot.as_ref()),
            self.launch.program_name,
        )
    }

    fn supervise(
        self: Box<Self>,
        prepared: exec::Prepared,
        held: HeldLock,
        slot: Option<HeldSlot>,
        monitor: Option<watchdog::Monitor>,
    ) -> Result<ExitStatus, Error> {
        let stop_grace = self.cluster.timing.stop_grace;
        supervise_in_cluster(prepared, held, slot, self.session, stop_grace, monitor)
    }
}

/// Opens the cluster session and takes the source's key; `None` when it
/// stayed held elsewhere (reported here).
fn take_cluster_source(
    config: &RunConfig,
    (cluster, progress): (&ClusterConfig, Option<std::os::fd::OwnedFd>),
    claim: &SourceClaim<'_>,
    program_name: &str,
    wait_started: &mut Option<Instant>,
) -> Result<Option<Session>, Error> {
    // Only the launcher vouches to systemd: for its renewal, and for the
    // program's progress when the monitor reports it (ECP-0135 section 4).
    let vouch = match progress {
        Some(feed) => {
            let window = config
                .progress_window
                .or_else(watchdog::watchdog_sec)
                .unwrap_or(Duration::from_secs(30));
            Vouch::with_progress(feed, window)
        }
        None => Vouch::renewal_only(),
    };
    let mut session = Session::open(cluster, Some(vouch))?;
    let mut announce_wait = |holder: &crate::cluster::etcd::KeyValue| {
        wait_started.get_or_insert_with(Instant::now);
        tracing::info!(
            key = %printable(config.key.as_str()),
            "source busy in the cluster: held by {}; waiting{} before starting {} (see `{}`)",
            describe_cluster_holder(holder),
            until(config),
            printable(program_name),
            cluster_status_command(config, cluster),
        );
    };
    match session.take_source(claim, &mut announce_wait)? {
        Taken::Ours => Ok(Some(session)),
        Taken::Busy(Busy { holders, timed_out }) => {
            let waited = gave_up_waiting(config, timed_out);
            tracing::warn!(
                key = %printable(config.key.as_str()),
                "source busy in the cluster: held by {}; {waited}not starting {}, exiting {} (see `{}`)",
                describe_cluster_holders(&holders),
                printable(program_name),
                config.busy_status.code(),
                cluster_status_command(config, cluster),
            );
            Ok(None)
        }
    }
}

/// Takes one of the device's cluster slots; false when every one stayed
/// held (reported here). The slot's record and the waiting key say which
/// tuner count this launcher declares (ECP-0135 section 5).
fn take_cluster_slot(
    config: &RunConfig,
    cluster: &ClusterConfig,
    session: &mut Session,
    (claim, slot): (&SourceClaim<'_>, &SlotClaim<'_>),
    (launch, preempted): (&Launching<'_>, &Preempting),
    wait_started: &mut Option<Instant>,
) -> Result<bool, Error> {
    let program_name = launch.program_name;
    let device = slot.device;
    let mut announce_wait = |holders: &[crate::cluster::etcd::KeyValue]| {
        wait_started.get_or_insert_with(Instant::now);
        tracing::info!(
            device = %printable(device),
            key = %printable(config.key.as_str()),
            "device busy in the cluster: {} tuner slots of {} are held: {}; waiting{} before starting {} (see `{}`)",
            holders.len(),
            printable(device),
            describe_cluster_holders(holders),
            until(config),
            printable(program_name),
            cluster_status_command(config, cluster),
        );
    };
    let mut warn_disagreement = |disagreement: &Disagreement| {
        tracing::warn!(
            device = %printable(device),
            "launchers of device {} disagree on its tuner count: this one says --tuners {}, {}; using {} (give every launcher of the device the same --tuners)",
            printable(device),
            disagreement.own,
            describe_declarations(&disagreement.by),
            disagreement.using,
        );
    };
    let mut announce_preemption = |index: u32, victim: &KeyValue, record: &ClusterRecord| {
        let shown = Shown::of(record);
        tracing::warn!(
            device = %printable(device),
            key = %printable(config.key.as_str()),
            "preempting cluster tuner slot {index} of {}: {} at priority {}, for {} at priority {} (its launcher is asked through etcd: SIGTERM now, SIGKILL after {}; the slot is taken once it is released)",
            printable(device),
            describe_cluster_holder(victim),
            record.priority(),
            printable(launch.redacted),
            config.priority,
            humantime::format_duration(config.preempt_grace),
        );
        *preempted.borrow_mut() = Some(Preempted {
            pid: shown.pid,
            program: None,
            unit: shown.unit.clone(),
            node: Some(shown.node.clone()),
            source: shown.source.clone(),
            priority: u32::from(record.priority().get()),
            at: crate::cluster::record::rfc3339(crate::cluster::record::now_unix()),
        });
    };
    let mut events = SlotEvents {
        wait: &mut announce_wait,
        disagree: &mut warn_disagreement,
        preempt: &mut announce_preemption,
    };
    match session.take_slot(claim, slot, &mut events)? {
        Ok(slot) => {
            tracing::debug!(device = %printable(device), slot, "cluster tuner slot taken");
            Ok(true)
        }
        Err(Busy { holders, timed_out }) => {
            let waited = gave_up_waiting(config, timed_out);
            tracing::warn!(
                device = %printable(device),
                key = %printable(config.key.as_str()),
                "device busy in the cluster: {} tuner slots of {} are held: {}; {waited}not starting {}, exiting {} (see `{}`)",
                holders.len(),
                printable(device),
                describe_cluster_holders(&holders),
                printable(program_name),
                config.busy_status.code(),
                cluster_status_command(config, cluster),
            );
            Ok(false)
        }
    }
}

/// `node a pid 4242 holding slot 0 says --tuners 2; node b pid 77 waiting
/// says --tuners 2`, from keys under a device (another writer's text:
/// redacted and escaped).
fn describe_declarations(keys: &[crate::cluster::etcd::KeyValue]) -> String {
    keys.iter()
        .filter_map(|kv| {
            let declarant = Shown::of(&Declarant::from_json(&kv.value)?);
            let what = match keyspace::parse(&kv.key) {
                Some(keyspace::Named::Slot { index, .. }) => format!("holding slot {index}"),
                _ => "waiting".to_owned(),
            };
            let mut text = format!("node {}", printable(&declarant.node));
            if let Some(unit) = &declarant.unit {
                let _ = write!(text, " unit {}", printable(unit));
            }
            let _ = write!(
                text,
                " pid {} {what} says --tuners {}",
                declarant.pid,
                declarant.declared_tuners().unwrap_or_default()
            );
            Some(text)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// This launch's record under its cluster keys: who holds them, and the
/// stop grace a claimant's lock delay must outlast (ECP-0135).
fn cluster_record(cluster: &ClusterConfig, unit: Option<String>, redacted: &str) -> ClusterRecord {
    ClusterRecord::for_this_launch(&cluster.connection.node, unit, redacted)
        .with_stop_grace(cluster.timing.stop_grace)
}

/// This launch's values under its cluster keys, made at each try (they
/// date the holding): the source's, a slot's, and the key a launcher
/// waits for a slot under. The slot's and the waiting key's record the
/// tuner count this launcher declares (ECP-0135 section 5).
#[allow(clippy::type_complexity)] // three closures, one per key
fn cluster_values<'a>(
    config: &'a RunConfig,
    cluster: &'a ClusterConfig,
    unit: Option<&'a String>,
    redacted: &'a str,
    preempted: &Preempting,
) -> (
    impl Fn() -> Vec<u8> + 'a,
    impl Fn() -> Vec<u8> + 'a,
    impl Fn() -> Vec<u8> + 'a,
) {
    let count = config.tuners.as_ref().map(|tuners| tuners.count);
    let priority = config.priority;
    let record = move || {
        let mut record = cluster_record(cluster, unit.cloned(), redacted);
        record.priority = Some(u32::from(priority.get()));
        record
    };
    let source_value = move || record().to_json();
    let preempted = std::rc::Rc::clone(preempted);
    let slot_value = move || {
        let mut record = record();
        record.tuners = count;
        record.preempted.clone_from(&preempted.borrow());
        record.to_json()
    };
    let waiting_value = move || {
        let node = cluster.connection.node.as_str();
        let tuners = count.unwrap_or_default();
        WaitingRecord::for_this_launch(node, unit.cloned(), tuners, priority).to_json()
    };
    (source_value, slot_value, waiting_value)
}

/// The value of a request that the holder of a slot (its key as held) let
/// go for this launch (ECP-0139 section 7), made when asking.
fn preempt_value<'a>(
    config: &'a RunConfig,
    cluster: &'a ClusterConfig,
    unit: Option<&'a String>,
    redacted: &'a str,
) -> impl Fn(&KeyValue) -> Vec<u8> + 'a {
    move |victim| {
        PreemptRequest {
            node: cluster.connection.node.clone(),
            unit: unit.cloned(),
            pid: std::process::id(),
            source: redacted.to_owned(),
            priority: u32::from(config.priority.get()),
            grace_ms: u64::try_from(config.preempt_grace.as_millis()).unwrap_or(u64::MAX),
            victim_lease: victim.lease,
            victim_revision: victim.create_revision,
            since: crate::cluster::record::now_unix(),
        }
        .to_json()
    }
}

/// The value of this launch's wanted key (ECP-0140), made when it
/// registers.
fn want_value<'a>(
    cluster: &'a ClusterConfig,
    unit: Option<&'a String>,
) -> impl Fn() -> Vec<u8> + 'a {
    move || {
        let weight = cluster.spread.map_or(1, |spread| spread.weight);
        WantRecord::for_this_launch(&cluster.connection.node, unit.cloned(), weight).to_json()
    }
}

/// What the source claim asks of placement: with `--placement spread`,
/// this node and its weight; `None` takes the key as soon as it is free.
fn spread_want<'a>(cluster: &'a ClusterConfig, value: &'a dyn Fn() -> Vec<u8>) -> Option<Want<'a>> {
    Some(Want {
        node: &cluster.connection.node,
        weight: cluster.spread?.weight,
        value,
    })
}

/// In cluster mode, waits out the lock delay of a take that was not a
/// clean hand-over (ECP-0135): a holder that lost a key we took has stopped
/// its program by then. The keys are taken again should they be lost
/// meanwhile; false when one taken again stayed held (reported here).
fn settle_in_cluster(
    config: &RunConfig,
    cluster: &ClusterConfig,
    session: Option<&mut Session>,
    (claim, slot): (&SourceClaim<'_>, Option<&SlotClaim<'_>>),
    program_name: &str,
) -> Result<bool, Error> {
    let Some(session) = session else {
        return Ok(true);
    };
    let Some(Busy { holders, timed_out }) = session.settle(claim, slot)? else {
        return Ok(true);
    };
    let waited = gave_up_waiting(config, timed_out);
    tracing::warn!(
        key = %printable(config.key.as_str()),
        "cluster keys lost before the program started, and taken again: held by {}; {waited}not starting {}, exiting {} (see `{}`)",
        describe_cluster_holders(&holders),
        printable(program_name),
        config.busy_status.code(),
        cluster_status_command(config, cluster),
    );
    Ok(false)
}

/// Runs the program as our child under the lease, and exits as it did
/// (ECP-0134): the launcher must outlive the exec to renew the lease and
/// stop the program before the lease can expire unrenewed.
fn supervise_in_cluster(
    prepared: exec::Prepared,
    held: HeldLock,
    slot: Option<HeldSlot>,
    mut session: Session,
    stop_grace: Duration,
    monitor: Option<watchdog::Monitor>,
) -> Result<ExitStatus, Error> {
    if let Some(why) = session.lost() {
        // Lost while we claimed: what we "hold" may be another's by now.
        session.release();
        return Err(Error::Fenced { why });
    }
    session.hand_signals_to_supervisor();
    let child = crate::supervise::spawn_in_cluster(prepared, &held, slot.as_ref())?;
    // The monitor learns "the program runs" from this end closing (it was
    // written for exec, where closing is implicit).
    drop(monitor);
    let ended = child.wait_heeding(
        session
            .renewer()
            .map(|r| (r as &dyn crate::supervise::Fence, stop_grace)),
        session.stop_request(),
    );
    // The keys go only when the kernel says the locks are free: a helper
    // outside the program's group may still read (ECP-0135 section 3).
    tracing::debug!("the program ended ({ended:?}); releasing once its locks are free");
    let watched = child.into_watched();
    let held = std::iter::once(held).chain(slot.map(|slot| slot.lock));
    crate::stragglers::until_free(&watched, held, stop_grace);
    tracing::debug!("the locks are free");
    // At once: the next holder need not wait for the lease to expire, nor
    // (the mark says no reader of ours is left) for the lock delay.
    session.release_clean();
    match ended {
        crate::supervise::Ended::Exited(code) => {
            let _ = std::io::Write::flush(&mut std::io::stdout());
            // The program's own status, not one of ours: like exec, the
            // caller sees what the program said.
            std::process::exit(i32::from(code));
        }
        crate::supervise::Ended::Preempted { by, child } => {
            // Not a success whatever the program said: systemd restarts the
            // unit, which with `wait` queues at its priority (ECP-0139).
            let code = if child == 0 { 128 + 15 } else { child };
            tracing::warn!(
                "preempted: the program ended with {child} and the tuner slot was released for {by}; exiting {code}"
            );
            let _ = std::io::Write::flush(&mut std::io::stdout());
            std::process::exit(i32::from(code));
        }
        crate::supervise::Ended::Fenced { child, .. } => {
            // The supervisor logged why when it fenced; this says how it ended.
            tracing::error!(
                "fence: the program ended with {child}, before the lease could expire on the server and before a node that takes a lost key may start; exiting {} (systemd restarts the unit, which takes the keys again)",
                ExitStatus::Fenced.code()
            );
            Ok(ExitStatus::Fenced)
        }
    }
}

/// [`describe_cluster_holder`] for each, `; `-separated.
fn describe_cluster_holders(holders: &[crate::cluster::etcd::KeyValue]) -> String {
    holders
        .iter()
        .map(describe_cluster_holder)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `node-b unit x.service pid 4242 since … reading http://…`, from a
/// cluster key's value (another writer's text: redacted and escaped; any
/// value, however hostile, is described, never a panic).
fn describe_cluster_holder(holder: &crate::cluster::etcd::KeyValue) -> String {
    match ClusterRecord::from_json(&holder.value).map(|r| Shown::of(&r)) {
        Some(record) => {
            let mut text = format!("node {}", printable(&record.node));
            if let Some(unit) = &record.unit {
                let _ = write!(text, " unit {}", printable(unit));
            }
            let _ = write!(
                text,
                " pid {} since {} reading {}",
                record.pid,
                crate::cluster::record::rfc3339(record.since),
                printable(&record.source),
            );
            text
        }
        None => format!(
            "an unreadable record under {}",
            printable(&crate::cluster::keyspace::shown(&holder.key))
        ),
    }
}

/// The `status --etcd` command that shows this source in the cluster, with
/// the connection flags it needs (paths, never their contents), quoted so
/// it works when pasted.
fn cluster_status_command(config: &RunConfig, cluster: &ClusterConfig) -> String {
    let mut command = String::from("ec-launch status");
    let connect = &cluster.connection.connect;
    let endpoints: Vec<&str> = connect
        .endpoints
        .iter()
        .map(|u| u.as_str().trim_end_matches('/'))
        .collect();
    let _ = write!(command, " --etcd {}", shell_word(&endpoints.join(",")));
    for (flag, path) in [
        ("--etcd-ca", &connect.ca_file),
        ("--etcd-cert", &connect.cert_file),
        ("--etcd-key", &connect.key_file),
        ("--etcd-user-file", &connect.user_file),
    ] {
        if let Some(path) = path {
            let _ = write!(command, " {flag} {}", shell_word(&printable_path(path)));
        }
    }
    let _ = write!(
        command,
        " --node {}",
        shell_word(&printable(&cluster.connection.node))
    );
    let local = status_command(config);
    command.push_str(local.trim_start_matches("ec-launch status"));
    command
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::cluster::etcd::KeyValue;
    use crate::command::CLUSTER_RECORD_FIELDS as FIELDS;
    use crate::secret_props::{credential_text, hostile_record, leaks};

    proptest! {
        /// Run's busy and wait messages describe any holder's value without
        /// a credential and without a panic (a panic would turn the busy
        /// 75 into 101 or an abort).
        #[test]
        fn a_cluster_holder_is_described_without_a_credential_or_a_panic(
            value in hostile_record(FIELDS),
            key in credential_text(),
        ) {
            let holder = KeyValue {
                key: key.into_bytes(),
                value,
                create_revision: 1,
                mod_revision: 1,
                lease: 0,
            };
            let text = describe_cluster_holders(std::slice::from_ref(&holder));
            prop_assert!(!leaks(&text), "{text}");
            // The same value as a slot's or a waiter's that declares fewer
            // tuners (the disagreement warning).
            let text = describe_declarations(&[holder]);
            prop_assert!(!leaks(&text), "{text}");
        }
    }
}
