//! A holder's custody of its keys (ECP-0135, section 1): from the moment a
//! key is taken until it is let go, the holder learns of its loss as soon as
//! etcd can tell, and fires the fence at once.
//!
//! A lease's renewal says only that the *lease* lives. A key can be lost
//! while its lease lives (deleted by hand, written over by another lease),
//! a revoked lease is noticed by a keepalive only at the next renewal, and
//! an etcd restored from a backup or restarted empty may answer a keepalive
//! for a lease it also had, while our key is not there. So each key taken
//! is watched, PUT and DELETE events with the previous value, from the
//! revision after our take; the key is lost when etcd shows any of:
//!
//! - a DELETE of it (a revoke, an expiry, a hand delete);
//! - a PUT of it: we write it once, at the take, so any later write is not
//!   ours (another lease on it, an operator's value);
//! - an answer from another cluster (the client holds every answer to the
//!   cluster ID it first saw: [`EtcdError::OtherCluster`]);
//! - a header revision below the revision of our take, or a compaction
//!   past the watch's start: the key is read again (a linearizable read),
//!   and anything but our key, under our lease, with the revisions of our
//!   take, is a loss. The read is what tells a store that went back from a
//!   member that only lags behind the one that applied our take.
//!
//! The watch is re-made after every stream window, and after a broken
//! stream at once (then with a short backoff), from the last revision it
//! saw; every re-made watch's header is checked again. A window that ends
//! without a word is followed by a read of the key, as a compaction is: a
//! stream that was made and then stays silent (a stalled member, gateway
//! or proxy) must not hide a loss for longer than one window. A watch that
//! cannot reach etcd proves nothing either way: the renewer's deadline
//! covers an unreachable etcd, as before.
//!
//! Invariant: a custody fires only while it is kept; [`Custody::stop`] is
//! called before the holder writes its own release mark, so the holder's
//! own last write is never taken for a loss.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::etcd::{EtcdClient, EtcdError, KeyValue, WatchSpec};
use super::fence::Fuse;
use crate::error::Error;

/// The first retry of a broken watch waits this long, doubling up to
/// [`MOST_BACKOFF`]: a restarted etcd is seen within that much of
/// answering, well inside the lock delay's margin.
const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const MOST_BACKOFF: Duration = Duration::from_millis(250);

/// The keys held under the current lease, as taken: shared by the session
/// (to mark them released), its renewer (to check a keepalive's revision)
/// and the interrupt thread.
pub type Held = Arc<Mutex<Vec<KeyValue>>>;

/// Locks `held`; a panic while it was held leaves plain data behind.
pub fn held_keys(held: &Held) -> std::sync::MutexGuard<'_, Vec<KeyValue>> {
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The watches over one lease's keys, and the fence they fire.
#[derive(Debug)]
pub struct Custody {
    client: EtcdClient,
    fuse: Fuse,
    /// Set once the keys are let go: a watch that still reads its stream
    /// then fires nothing, and ends at its window's end.
    stopped: Arc<AtomicBool>,
}

impl Custody {
    /// A custody that fires `fuse`.
    #[must_use]
    pub fn new(client: EtcdClient, fuse: Fuse) -> Self {
        Self {
            client,
            fuse,
            stopped: Arc::default(),
        }
    }

    /// Watches `kv`, ours as just taken, until [`Custody::stop`].
    ///
    /// # Errors
    /// [`Error::StartRenewer`] when the thread cannot be started.
    pub fn keep(&self, kv: KeyValue) -> Result<(), Error> {
        let client = self.client.clone();
        let fuse = self.fuse.clone();
        let stopped = Arc::clone(&self.stopped);
        std::thread::Builder::new()
            .name("ec-key-watch".into())
            .spawn(move || {
                if let Some(why) = watch_until_lost(&client, &kv, &stopped)
                    && !stopped.load(Ordering::SeqCst)
                {
                    tracing::debug!("cluster: {why}");
                    fuse.fire(why);
                }
            })
            .map(drop)
            .map_err(|source| Error::StartRenewer {
                what: "the watch of a cluster key",
                source,
            })
    }

    /// Lets the keys go: no watch fires from now on. Does not wait for the
    /// watch threads, which end at their stream window's end.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

impl Drop for Custody {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a watch message showed.
enum Verdict {
    /// The key is not ours any more: why.
    Lost(String),
    /// The key must be read again to tell: what made us ask.
    Confirm(String),
}

/// Watches `kv` until etcd shows it lost (the reason) or `stopped`.
fn watch_until_lost(client: &EtcdClient, kv: &KeyValue, stopped: &AtomicBool) -> Option<String> {
    let key = shown(&kv.key);
    let mut start = kv.mod_revision + 1;
    let mut backoff = Duration::ZERO;
    while !stopped.load(Ordering::SeqCst) {
        let spec = WatchSpec {
            key: &kv.key,
            prefix: false,
            start_revision: start,
            puts: true,
        };
        let window_end = Instant::now() + client.watch_window();
        let verdict = client.watch(&spec, window_end, &mut |message| {
            if message.compact_revision > 0 {
                return Some(Verdict::Confirm(format!(
                    "etcd compacted its history past the watch of our key {key} (compacted to revision {})",
                    message.compact_revision
                )));
            }
            if message.header.revision > 0 && message.header.revision < kv.mod_revision {
                return Some(Verdict::Confirm(format!(
                    "etcd answered at revision {}, below the revision {} at which we took our key {key} (restored from a backup, or restarted empty)",
                    message.header.revision, kv.mod_revision
                )));
            }
            for event in message.events.iter().filter(|e| e.kv.key == kv.key) {
                if event.deleted {
                    return Some(Verdict::Lost(format!(
                        "etcd deleted our key {key} at revision {} (our lease was revoked or expired, or the key was deleted by hand)",
                        event.kv.mod_revision
                    )));
                }
                if event.kv.mod_revision != kv.mod_revision {
                    return Some(Verdict::Lost(format!(
                        "our key {key} was written over at revision {}, {}, not by us",
                        event.kv.mod_revision,
                        lease_words(event.kv.lease)
                    )));
                }
                start = start.max(event.kv.mod_revision + 1);
            }
            None
        });
        match verdict {
            // A whole window without a word: the stream is not trusted to
            // have shown a loss (a member or proxy can make a watch and
            // then send nothing), so the key is read again.
            Ok(None) => {
                backoff = Duration::ZERO;
                match confirm(client, kv) {
                    Ok((Some(loss), _)) => {
                        return Some(format!(
                            "the watch of our key {key} showed nothing for a whole window, and {loss}"
                        ));
                    }
                    Ok((None, revision)) => start = start.max(revision + 1),
                    Err(e) if e.is_store_changed() => return Some(e.to_string()),
                    Err(e) => tracing::debug!(
                        "cluster: reading our key {key} again after a quiet watch window failed: {e}"
                    ),
                }
            }
            Ok(Some(Verdict::Lost(why))) => return Some(why),
            Ok(Some(Verdict::Confirm(what))) => match confirm(client, kv) {
                Ok((Some(loss), _)) => return Some(format!("{what}, and {loss}")),
                Ok((None, revision)) => {
                    // Ours, as taken: a member that lags, or history we
                    // need not see. Go on from what the read saw.
                    start = start.max(revision + 1);
                    backoff = next_backoff(backoff);
                    std::thread::sleep(backoff);
                }
                Err(e) if e.is_store_changed() => return Some(e.to_string()),
                Err(e) => {
                    tracing::debug!("cluster: {what}, and reading the key failed: {e}");
                    backoff = next_backoff(backoff);
                    std::thread::sleep(backoff);
                }
            },
            Err(e) if e.is_store_changed() => return Some(e.to_string()),
            Err(e) => {
                tracing::debug!("cluster: the watch of our key {key} failed: {e}; making it again");
                std::thread::sleep(backoff);
                backoff = next_backoff(backoff);
            }
        }
    }
    None
}

fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).clamp(FIRST_BACKOFF, MOST_BACKOFF)
}

/// Reads `kv`'s key again (linearizable): `Some(why)` when it is not our
/// key as we took it; with the revision of the read.
///
/// # Errors
/// Any [`EtcdError`] of the read: then nothing can be told.
pub fn confirm(client: &EtcdClient, kv: &KeyValue) -> Result<(Option<String>, i64), EtcdError> {
    let (now, revision) = client.get(&kv.key)?;
    let key = shown(&kv.key);
    let loss = match now {
        None => Some(format!(
            "our key {key} is not there (etcd at revision {revision})"
        )),
        Some(now) if now.lease != kv.lease => Some(format!(
            "our key {key} is {}, not under ours ({:x})",
            lease_words(now.lease),
            kv.lease
        )),
        Some(now)
            if now.create_revision != kv.create_revision || now.mod_revision != kv.mod_revision =>
        {
            Some(format!(
                "our key {key} was written at revision {}, not at {} where we took it",
                now.mod_revision, kv.mod_revision
            ))
        }
        Some(_) => None,
    };
    Ok((loss, revision))
}

/// For a keepalive answered at `revision`: a key held that was taken at a
/// later revision is read again; `Some(why)` when one is lost. Nothing to
/// tell (no revision, none lower, the read failed): `None`.
pub fn check_renewal(client: &EtcdClient, held: &Held, revision: i64) -> Option<String> {
    if revision <= 0 {
        return None;
    }
    let later: Vec<KeyValue> = held_keys(held)
        .iter()
        .filter(|kv| revision < kv.mod_revision)
        .cloned()
        .collect();
    for kv in later {
        match confirm(client, &kv) {
            Ok((Some(loss), _)) => {
                return Some(format!(
                    "etcd renewed our lease at revision {revision}, below the revision {} at which we took a key (restored from a backup, or restarted empty), and {loss}",
                    kv.mod_revision
                ));
            }
            Err(e) if e.is_store_changed() => return Some(e.to_string()),
            Ok((None, _)) | Err(_) => {}
        }
    }
    None
}

/// A key as the log shows it: ours are percent-escaped printable ASCII.
fn shown(key: &[u8]) -> String {
    crate::printable::printable(&String::from_utf8_lossy(key)).into_owned()
}

fn lease_words(lease: i64) -> String {
    if lease == 0 {
        "with no lease".to_owned()
    } else {
        format!("under lease {lease:x}")
    }
}

#[cfg(test)]
mod tests {
    //! Against real etcd (the harness in `crates/ec-test-support/src/etcd_server.rs`).

    use super::*;
    use crate::cluster::etcd::{Created, EtcdConnect};
    use crate::cluster::etcd_server::EtcdServer;
    use crate::cluster::fence::{self, BootInstant, FenceTiming, Renewal, Renewer};

    const KEY: &[u8] = b"/every-channel/ec-launch/v1/sources/s";

    fn connect(etcd: &EtcdServer) -> EtcdClient {
        EtcdClient::connect(&EtcdConnect {
            endpoints: vec![url::Url::parse(&etcd.url()).expect("url")],
            ca_file: None,
            cert_file: None,
            key_file: None,
            user_file: None,
            call_timeout: Duration::from_millis(1500),
        })
        .expect("connect")
    }

    /// A renewer that always renews: only a custody fires it.
    fn renewer() -> Renewer {
        let timing = FenceTiming::new(Duration::from_secs(30), Duration::from_secs(1)).unwrap();
        fence::start_renewer(
            timing,
            BootInstant::now(),
            Duration::from_secs(30),
            None,
            Box::new(|| Renewal::Renewed(Duration::from_secs(30))),
        )
        .unwrap()
    }

    /// Takes KEY under a new lease: the key as taken, and the lease.
    fn take(client: &EtcdClient) -> KeyValue {
        let lease = client.grant(Duration::from_secs(30)).expect("grant").id;
        let Created::Ours { revision } = client.create(KEY, b"ours", lease).expect("create") else {
            panic!("held");
        };
        KeyValue::created(KEY.to_vec(), b"ours".to_vec(), revision, lease)
    }

    /// Keeps `kv`, does `to_it`, and returns why the fence fired (within 5 s).
    fn fired_after(etcd: &EtcdServer, kv: KeyValue, to_it: impl FnOnce()) -> Option<String> {
        let watcher = connect(etcd);
        let renewer = renewer();
        let custody = Custody::new(watcher, renewer.fuse());
        custody.keep(kv).unwrap();
        // Let the watch be made.
        std::thread::sleep(Duration::from_millis(300));
        to_it();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Some(why) = renewer.fired() {
                return Some(why);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn a_deleted_key_fires_the_fence_at_once() {
        let etcd = EtcdServer::start();
        let kv = take(&connect(&etcd));
        let why = fired_after(&etcd, kv, || {
            let del = etcd.etcdctl(&["del", std::str::from_utf8(KEY).unwrap()]);
            assert!(del.status.success());
        })
        .expect("fired");
        assert!(why.contains("deleted our key"), "{why}");
    }

    #[test]
    fn a_revoked_lease_fires_the_fence_at_once() {
        let etcd = EtcdServer::start();
        let client = connect(&etcd);
        let kv = take(&client);
        let lease = kv.lease;
        let why = fired_after(&etcd, kv, || client.revoke(lease).unwrap()).expect("fired");
        assert!(why.contains("deleted our key"), "{why}");
    }

    #[test]
    fn a_put_over_our_key_fires_the_fence_and_our_own_take_does_not() {
        let etcd = EtcdServer::start();
        let kv = take(&connect(&etcd));
        let why = fired_after(&etcd, kv, || {
            let put = etcd.etcdctl(&["put", std::str::from_utf8(KEY).unwrap(), "x"]);
            assert!(put.status.success());
        })
        .expect("fired");
        assert!(why.contains("written over"), "{why}");
        assert!(why.contains("with no lease"), "{why}");
        // Nothing happening: nothing fires.
        let etcd = EtcdServer::start();
        let kv = take(&connect(&etcd));
        assert_eq!(fired_after(&etcd, kv, || {}), None);
    }

    #[test]
    fn a_stopped_custody_fires_nothing() {
        let etcd = EtcdServer::start();
        let client = connect(&etcd);
        let kv = take(&client);
        let renewer = renewer();
        let custody = Custody::new(client.clone(), renewer.fuse());
        custody.keep(kv.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        custody.stop();
        client.revoke(kv.lease).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(renewer.fired(), None);
    }

    #[test]
    fn a_compaction_past_the_watch_start_is_a_loss_only_when_the_key_is_not_ours() {
        // Ours, untouched: history compacted past the start is no loss.
        let etcd = EtcdServer::start();
        let client = connect(&etcd);
        let kv = take(&client);
        for i in 0..3 {
            assert!(
                etcd.etcdctl(&["put", "/other", &i.to_string()])
                    .status
                    .success()
            );
        }
        let (_, now) = client.get(b"/other").unwrap();
        assert!(
            etcd.etcdctl(&["compaction", &now.to_string()])
                .status
                .success()
        );
        assert_eq!(fired_after(&etcd, kv, || {}), None);
        // Deleted and taken again by another lease, and the history that
        // said so compacted away: the re-read sees another's key.
        let etcd = EtcdServer::start();
        let client = connect(&etcd);
        let kv = take(&client);
        client.revoke(kv.lease).unwrap();
        let other = take(&client);
        assert!(
            etcd.etcdctl(&["compaction", &other.mod_revision.to_string()])
                .status
                .success()
        );
        let why = fired_after(&etcd, kv, || {}).expect("fired");
        assert!(why.contains("compacted"), "{why}");
        assert!(why.contains("not under ours"), "{why}");
    }

    #[test]
    fn a_renewal_answered_below_our_take_is_a_loss_only_when_the_key_is_not_ours() {
        let etcd = EtcdServer::start();
        let client = connect(&etcd);
        let kv = take(&client);
        let held: Held = Arc::new(Mutex::new(vec![kv.clone()]));
        // At or above the take: nothing to read.
        assert_eq!(check_renewal(&client, &held, kv.mod_revision), None);
        // Below it, but the key is ours (a member that lags): no loss.
        assert_eq!(check_renewal(&client, &held, kv.mod_revision - 1), None);
        // Below it, and the key is gone: a loss.
        assert!(
            etcd.etcdctl(&["del", std::str::from_utf8(KEY).unwrap()])
                .status
                .success()
        );
        let why = check_renewal(&client, &held, kv.mod_revision - 1).expect("lost");
        assert!(why.contains("not there"), "{why}");
    }
}
