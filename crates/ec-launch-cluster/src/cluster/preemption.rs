//! A slot holder's side of a preemption across nodes (ECP-0139 section 7):
//! from the moment a slot key is taken until it is let go, the holder
//! heeds the slot's `preempt-<i>` key. A request there that names this
//! holding (its lease and its key's create revision) is a launcher of
//! strictly higher priority asking it to let go; the supervisor then stops
//! the program (SIGTERM, SIGKILL after the asker's grace) and the launcher
//! releases by its usual path: the local lock free by kernel truth first,
//! then the key marked released and deleted (ECP-0135). The asker takes
//! the slot only once the key is deleted, so the hand-over never has two
//! readers, and a holder that cannot answer (its node down, its launcher
//! frozen) loses the key only with its lease.
//!
//! The watch is made again after each stream window from the last
//! revision seen, and the key is read after a window without a word: a
//! stream that was made and stays silent must not hide a request (the
//! lesson of ECP-0140's waits).

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::etcd::{EtcdClient, KeyValue, WatchSpec};
use super::record::{EtcdValue, PreemptRequest, rfc3339};
use crate::error::Error;
use crate::printable::printable;
use crate::shown::Shown;

/// The longest grace a request may ask for: the asker's `--preempt-grace`
/// is another writer's number, and a wait must end.
const MOST_GRACE: Duration = Duration::from_secs(600);
/// Pause after a failed watch or read before the next.
const RETRY: Duration = Duration::from_millis(250);

/// The watch over one slot's preemption key, and what it found.
#[derive(Debug)]
pub struct Heed {
    /// Readable once a request for this holding has been found.
    ready: UnixStream,
    found: Arc<Mutex<Option<PreemptRequest>>>,
    stopped: Arc<AtomicBool>,
}

impl Heed {
    /// Heeds `request_key` for requests naming `slot` (our slot key as
    /// taken) until [`Heed::stop`].
    ///
    /// # Errors
    /// [`Error::StartRenewer`] when the socket pair or the thread cannot
    /// be made.
    pub fn start(client: EtcdClient, slot: KeyValue, request_key: Vec<u8>) -> Result<Self, Error> {
        let thread_error = |source| Error::StartRenewer {
            what: "the watch of a preemption request",
            source,
        };
        let (ready, tell) = UnixStream::pair().map_err(thread_error)?;
        let found = Arc::new(Mutex::new(None));
        let stopped = Arc::new(AtomicBool::new(false));
        std::thread::Builder::new()
            .name("ec-preempt-watch".into())
            .spawn({
                let (found, stopped) = (Arc::clone(&found), Arc::clone(&stopped));
                move || {
                    if let Some(request) = wait_for_request(&client, &slot, &request_key, &stopped)
                    {
                        *found.lock().unwrap_or_else(PoisonError::into_inner) = Some(request);
                        let _ = std::io::Write::write_all(&mut &tell, b"!");
                    }
                }
            })
            .map_err(thread_error)?;
        Ok(Self {
            ready,
            found,
            stopped,
        })
    }

    /// Lets the slot go: the watch ends at its window's end, telling
    /// nothing.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

impl Drop for Heed {
    fn drop(&mut self) {
        self.stop();
    }
}

impl crate::supervise::StopRequest for Heed {
    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.ready.as_fd()
    }

    fn requested(&self) -> Option<(String, Duration)> {
        let found = self.found.lock().unwrap_or_else(PoisonError::into_inner);
        let request = found.as_ref()?;
        let grace = Duration::from_millis(request.grace_ms).min(MOST_GRACE);
        Some((describe_asker(request), grace))
    }
}

/// `node c unit rec.service pid 77 reading http://… at priority 300 (asked
/// at …)`: another writer's text, redacted and escaped.
#[must_use]
pub fn describe_asker(request: &PreemptRequest) -> String {
    let shown = Shown::of(request);
    let unit = shown
        .unit
        .as_deref()
        .map(|unit| format!(" unit {}", printable(unit)))
        .unwrap_or_default();
    format!(
        "node {}{unit} pid {} reading {} at priority {} (asked at {})",
        printable(&shown.node),
        shown.pid,
        printable(&shown.source),
        shown.priority,
        rfc3339(shown.since)
    )
}

/// Watches `request_key` from our take until a request naming `slot`
/// appears (then it), or `stopped`.
fn wait_for_request(
    client: &EtcdClient,
    slot: &KeyValue,
    request_key: &[u8],
    stopped: &AtomicBool,
) -> Option<PreemptRequest> {
    let asks_us =
        |kv: &KeyValue| PreemptRequest::from_json(&kv.value).filter(|request| request.asks(slot));
    let mut start = slot.mod_revision + 1;
    while !stopped.load(Ordering::SeqCst) {
        let spec = WatchSpec {
            key: request_key,
            prefix: false,
            start_revision: start,
            puts: true,
        };
        let window_end = Instant::now() + client.watch_window();
        let seen = client.watch(&spec, window_end, &mut |message| {
            if message.compact_revision > 0 {
                // History we cannot see: read the key instead.
                return Some(None);
            }
            for event in message.events.iter().filter(|e| !e.deleted) {
                start = start.max(event.kv.mod_revision + 1);
                if let Some(request) = asks_us(&event.kv) {
                    return Some(Some(request));
                }
            }
            None
        });
        match seen {
            Ok(Some(Some(request))) => return Some(request),
            // A compaction, or a whole window without a word: the stream
            // is not trusted to have shown a request; read the key.
            Ok(Some(None) | None) => match client.get(request_key) {
                Ok((now, revision)) => {
                    if let Some(request) = now.as_ref().and_then(asks_us) {
                        return Some(request);
                    }
                    start = start.max(revision + 1);
                }
                Err(e) => {
                    tracing::debug!("cluster: reading the preemption key failed: {e}");
                    std::thread::sleep(RETRY);
                }
            },
            Err(e) => {
                tracing::debug!("cluster: the watch of the preemption key failed: {e}");
                std::thread::sleep(RETRY);
            }
        }
    }
    None
}
