//! A thread blocked in `flock(LOCK_EX)` that can be called off (issue #16
//! item 9).
//!
//! Waiting for any of a device's slots blocks one thread per slot in
//! flock(2) (ECP-0132). Once one wins, the others must stop waiting: a
//! thread left blocked shows in `/proc/locks` as a waiter nobody is, and
//! takes the next slot freed, if only for an instant, from whoever asks
//! for it then. In cluster mode the launcher stays for the program's whole
//! life, so such a thread would too.
//!
//! Nothing but a signal ends a flock(2) wait: closing the descriptor in
//! another thread does not wake it (the call holds its own reference to
//! the open file). So calling a wait off sets the thread's flag and sends
//! the thread [`cancel_signal`], whose handler does nothing and is
//! installed without `SA_RESTART`: flock(2) returns `EINTR` (signal(7),
//! "Interruption of system calls and library functions by signal
//! handlers"), and the thread sees its flag and returns without the lock.
//! A signal that arrives before the thread enters flock(2) interrupts
//! nothing, so it is sent again until the thread has ended.
//!
//! Invariants:
//! - The handler is the only one the launcher installs, for a real-time
//!   signal glibc leaves to applications, sent only to our own threads with
//!   `pthread_kill`. execve(2) resets a caught signal to its default, so
//!   the program never inherits it (the style rule "no handlers before
//!   exec" is about dispositions the program would see; this one it
//!   cannot).
//! - [`LockWaiter::call_off`] returns only when the thread has ended (it is
//!   joined): after it, no thread of ours waits on that lock.

use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The signal that interrupts a called-off wait: the first real-time
/// signal glibc leaves to applications.
#[must_use]
pub fn cancel_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// How long to wait for a signalled thread to end before signalling it
/// again (it may not have been in flock(2) yet).
const RESIGNAL_AFTER: Duration = Duration::from_millis(2);

/// A thread running a wait that can be called off.
#[derive(Debug)]
pub struct LockWaiter<T> {
    thread: JoinHandle<T>,
    called_off: Arc<AtomicBool>,
}

impl<T: Send + 'static> LockWaiter<T> {
    /// Starts `wait` on a thread named `name`. `wait` is given the flag it
    /// must check whenever flock(2) returns `EINTR`: when set, it returns
    /// without the lock.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn spawn(
        name: String,
        wait: impl FnOnce(&AtomicBool) -> T + Send + 'static,
    ) -> std::io::Result<Self> {
        install_handler();
        let called_off = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&called_off);
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || wait(&flag))?;
        Ok(Self { thread, called_off })
    }

    /// Calls the wait off and returns what the thread returned (it may
    /// have taken the lock just before: the caller drops what it does not
    /// want), once the thread has ended.
    pub fn call_off(self) -> Option<T> {
        self.called_off.store(true, Ordering::SeqCst);
        while !self.thread.is_finished() {
            // SAFETY: the thread has not been joined (we own its handle),
            // so its pthread_t is valid even if it has just ended;
            // pthread_kill(3) with a signal whose handler does nothing has
            // no effect but interrupting a blocking call.
            unsafe {
                libc::pthread_kill(self.thread.as_pthread_t(), cancel_signal());
            }
            thread::sleep(RESIGNAL_AFTER);
        }
        self.thread.join().ok()
    }
}

extern "C" fn interrupt_only(_: libc::c_int) {}

/// Installs the do-nothing handler for [`cancel_signal`], once.
fn install_handler() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid value (empty mask, no
        // flags); the handler is an `extern "C"` function that touches
        // nothing, so it is async-signal-safe. No SA_RESTART: that is the
        // point, flock(2) must return EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = interrupt_only as *const () as libc::sighandler_t;
            libc::sigemptyset(&raw mut action.sa_mask);
            action.sa_flags = 0;
            libc::sigaction(cancel_signal(), &raw const action, std::ptr::null_mut());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;
    use nix::fcntl::{Flock, FlockArg};
    use std::time::Instant;

    /// A thread blocked in flock(2) on a held file ends, without the lock,
    /// when called off; the holder's lock is untouched.
    #[test]
    fn a_wait_blocked_in_flock_ends_when_called_off_and_takes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        let held = Flock::lock(
            std::fs::File::create(&path).unwrap(),
            FlockArg::LockExclusive,
        )
        .unwrap();
        for _ in 0..50 {
            let file = std::fs::File::open(&path).unwrap();
            let waiter = LockWaiter::spawn("wait".into(), move |called_off| {
                let mut file = file;
                loop {
                    match Flock::lock(file, FlockArg::LockExclusive) {
                        Ok(lock) => return Some(lock),
                        Err((back, Errno::EINTR)) if !called_off.load(Ordering::SeqCst) => {
                            file = back;
                        }
                        Err(_) => return None,
                    }
                }
            })
            .unwrap();
            thread::sleep(Duration::from_millis(2));
            let started = Instant::now();
            let got = waiter.call_off();
            assert!(
                got.is_some_and(|g| g.is_none()),
                "the called-off wait took the lock"
            );
            assert!(started.elapsed() < Duration::from_secs(5));
        }
        // The holder still holds it: a fresh description cannot take it.
        let probe = std::fs::File::open(&path).unwrap();
        assert!(Flock::lock(probe, FlockArg::LockExclusiveNonblock).is_err());
        drop(held);
    }
}
