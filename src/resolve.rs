//! Host names resolved within a deadline.
//!
//! `getaddrinfo(3)` has no timeout of its own and cannot be cancelled: a
//! resolver that never answers holds the caller for resolv.conf(5)'s
//! `timeout` × `attempts` × name servers × search domains (20 s was seen),
//! which broke the bounds `--tuners auto`, `status --device` and `status
//! --readers` promise. So a lookup runs on a thread of its own, and the
//! caller waits for it only until its deadline.
//!
//! A lookup that misses its deadline is abandoned, still blocked in the
//! resolver, and stays *the* lookup of that name while it is pending: a
//! later call for the same name (the retry of `discover.json`, `status
//! --device` asking for the route and then connecting) waits for it
//! instead of starting another, so a silent resolver costs one thread per
//! name, however often it is asked. A finished lookup is not kept: the next
//! call asks the resolver again, as a blocking call would.
//!
//! What an abandoned thread means for the process:
//! - `exit` and `execve(2)` end every thread; the resolver's sockets are
//!   close-on-exec (glibc opens them `SOCK_CLOEXEC`), so the program gets
//!   none of them.
//! - `fork(2)` copies only the calling thread: a lock the lookup holds
//!   inside libc would stay locked in the child for good. Nothing forks
//!   while a lookup is pending: a lookup is abandoned only when the name
//!   did not resolve in time, and then the command gives up (`run` exits 69
//!   before it forks the watchdog monitor or a program; `status` forks
//!   nothing). [`pending`] lets a forking caller check.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What a lookup found: the addresses, or why there are none (an
/// `io::Error` cannot be cloned for every waiter).
type Found = Result<Vec<IpAddr>, (io::ErrorKind, String)>;

/// One lookup in flight, shared by everyone waiting for the name.
#[derive(Debug, Default)]
struct Lookup {
    found: Mutex<Option<Found>>,
    done: Condvar,
    /// Joined by the first waiter to see the answer: once a name has
    /// resolved, its thread is gone, not merely finishing (`run` forks the
    /// watchdog monitor after `--tuners auto` asked the device).
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The lookups in flight, by host name.
static PENDING: Mutex<Option<HashMap<String, Arc<Lookup>>>> = Mutex::new(None);

fn pending_lookups() -> MutexGuard<'static, Option<HashMap<String, Arc<Lookup>>>> {
    PENDING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many lookups are in flight (a caller about to fork wants none).
#[must_use]
pub fn pending() -> usize {
    pending_lookups().as_ref().map_or(0, HashMap::len)
}

/// The addresses of `host` on `port`, as the system resolver (files, DNS)
/// gives them `within` the time given: an address is its own answer; a
/// name joins the lookup in flight for it, or starts one.
///
/// # Errors
/// The resolver's own error, no address, or `TimedOut` when the resolver
/// did not answer in time.
pub fn resolve(host: &str, port: u16, within: Duration) -> io::Result<Vec<SocketAddr>> {
    resolve_all(&[(host, port)], within)
        .pop()
        .expect("one answer per name")
}

/// [`resolve`] for several names at once: every lookup is started first,
/// then each is waited for against one deadline, so `n` silent names cost
/// `within`, not `n` times it.
pub fn resolve_all(names: &[(&str, u16)], within: Duration) -> Vec<io::Result<Vec<SocketAddr>>> {
    let deadline = Instant::now() + within;
    // Every lookup started before any is waited for.
    let lookups: Vec<io::Result<Result<IpAddr, Arc<Lookup>>>> = names
        .iter()
        .map(|(host, _)| match host.parse::<IpAddr>() {
            Ok(ip) => Ok(Ok(ip)),
            Err(_) => lookup_of(host).map(Err),
        })
        .collect();
    names
        .iter()
        .zip(lookups)
        .map(|((_, port), lookup)| match lookup? {
            Ok(ip) => Ok(vec![SocketAddr::new(ip, *port)]),
            Err(lookup) => wait(&lookup, *port, deadline, within),
        })
        .collect()
}

/// Waits for `lookup` until `deadline` (`within` from its start).
fn wait(
    lookup: &Lookup,
    port: u16,
    deadline: Instant,
    within: Duration,
) -> io::Result<Vec<SocketAddr>> {
    let mut guard = lookup.found.lock().unwrap_or_else(PoisonError::into_inner);
    let found = loop {
        if let Some(found) = guard.as_ref() {
            break found;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the resolver did not answer within {}s",
                    within.as_secs_f64()
                ),
            ));
        }
        guard = lookup
            .done
            .wait_timeout(guard, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    };
    let found = found.clone();
    drop(guard);
    let thread = lookup
        .thread
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(thread) = thread {
        // It has answered: this returns once the thread has ended.
        let _ = thread.join();
    }
    match &found {
        Ok(addresses) if addresses.is_empty() => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the host name resolves to no address",
        )),
        Ok(addresses) => Ok(addresses
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect()),
        Err((kind, message)) => Err(io::Error::new(*kind, message.clone())),
    }
}

/// The lookup in flight for `host`, started now if there is none.
fn lookup_of(host: &str) -> io::Result<Arc<Lookup>> {
    let mut pending = pending_lookups();
    let lookups = pending.get_or_insert_with(HashMap::new);
    if let Some(lookup) = lookups.get(host) {
        return Ok(Arc::clone(lookup));
    }
    let lookup = Arc::new(Lookup::default());
    let (name, shared) = (host.to_owned(), Arc::clone(&lookup));
    let thread = std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            // Port 0: the addresses do not depend on it, and the lookup is
            // shared by callers of any port.
            let found = (name.as_str(), 0)
                .to_socket_addrs()
                .map(|addresses| addresses.map(|a| a.ip()).collect())
                .map_err(|e| (e.kind(), e.to_string()));
            // Off the list first: a call from now on asks again.
            if let Some(lookups) = pending_lookups().as_mut() {
                lookups.remove(&name);
            }
            *shared.found.lock().unwrap_or_else(PoisonError::into_inner) = Some(found);
            shared.done.notify_all();
        })?;
    // Before the list is unlocked: the thread takes itself off the list
    // only after that, and only a waiter it then wakes takes the handle.
    *lookup.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread);
    lookups.insert(host.to_owned(), Arc::clone(&lookup));
    Ok(lookup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_its_own_answer_and_starts_no_lookup() {
        let before = pending();
        let found = resolve("10.0.0.5", 80, Duration::ZERO).unwrap();
        assert_eq!(found, vec![SocketAddr::from(([10, 0, 0, 5], 80))]);
        let found = resolve("::1", 5004, Duration::ZERO).unwrap();
        assert_eq!(found[0].to_string(), "[::1]:5004");
        assert_eq!(pending(), before);
    }

    #[test]
    fn a_name_that_answers_leaves_no_lookup_in_flight() {
        // `localhost` is in every /etc/hosts: files answer, no DNS.
        let found = resolve("localhost", 80, Duration::from_secs(10)).unwrap();
        assert!(found.iter().all(|a| a.ip().is_loopback() && a.port() == 80));
        // The thread takes itself off the list before it tells the waiter.
        assert!(
            pending_lookups()
                .as_ref()
                .is_none_or(|lookups| !lookups.contains_key("localhost"))
        );
    }

    #[test]
    fn a_lookup_not_done_by_the_deadline_times_out_and_later_calls_share_it() {
        // A lookup that never finishes, as a silent resolver's: planted
        // under a name no test resolves.
        let name = "never-answers.invalid";
        let stuck = Arc::new(Lookup::default());
        pending_lookups()
            .get_or_insert_with(HashMap::new)
            .insert(name.to_owned(), Arc::clone(&stuck));
        let started = Instant::now();
        let error = resolve(name, 80, Duration::from_millis(200)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(error.to_string(), "the resolver did not answer within 0.2s");
        assert!(started.elapsed() >= Duration::from_millis(200));
        // Several names against one deadline: the stuck one costs the
        // deadline once, the address nothing.
        let started = Instant::now();
        let answers = resolve_all(
            &[(name, 80), ("10.0.0.5", 80), (name, 81)],
            Duration::from_millis(300),
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(answers[0].is_err() && answers[1].is_ok() && answers[2].is_err());
        // When it finally answers, a waiter gets it.
        *stuck.found.lock().unwrap() = Some(Ok(vec![IpAddr::from([10, 0, 0, 9])]));
        stuck.done.notify_all();
        let found = resolve(name, 80, Duration::from_secs(1)).unwrap();
        assert_eq!(found, vec![SocketAddr::from(([10, 0, 0, 9], 80))]);
        pending_lookups().as_mut().unwrap().remove(name);
    }
}
