//! Work spread over the cores, for `status`'s thousands of small, independent
//! reads of `/proc` and of lock files.
//!
//! That work is almost all system time spent per process or per file, with
//! no kernel lock shared between them, so its wall time divides by the
//! workers. Items are taken in small batches from one shared cursor, so a
//! worker that drew cheap items (idle processes) takes more, instead of a
//! fixed half of the list that may hold every busy process. Results come
//! back in input order whichever worker made them: output never depends on
//! scheduling.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// At most this many workers: enough to divide the scan on a large node,
/// few enough that thread start-up and the merge stay small beside it.
const MAX_WORKERS: usize = 8;

/// How many workers to use: the cores this process may run on (its CPU
/// affinity and cgroup quota, as `available_parallelism` reads them), at
/// most [`MAX_WORKERS`]; asked once per process.
#[must_use]
pub fn workers() -> usize {
    static WORKERS: OnceLock<usize> = OnceLock::new();
    *WORKERS.get_or_init(|| thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS)))
}

/// `work` applied to `items` in batches of `batch`, by up to [`workers`]
/// threads (this one among them), each with its own `state` (an open
/// directory, buffers); the results in the order of the batches. A single
/// batch runs here, without a thread.
pub fn map_batches<T, S, R>(
    items: &[T],
    batch: usize,
    state: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, &[T]) -> R + Sync,
) -> Vec<R>
where
    T: Sync,
    R: Send,
{
    let batches: Vec<&[T]> = items.chunks(batch.max(1)).collect();
    let next = AtomicUsize::new(0);
    let run = || {
        let mut state = state();
        let mut done = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(items) = batches.get(index) else {
                break;
            };
            done.push((index, work(&mut state, items)));
        }
        done
    };
    let helpers = workers().min(batches.len()).saturating_sub(1);
    let mut done = thread::scope(|scope| {
        let handles: Vec<_> = (0..helpers).map(|_| scope.spawn(run)).collect();
        let mut done = run();
        for handle in handles {
            // A worker's panic is this thread's: its batches are not lost
            // silently.
            done.extend(
                handle
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e)),
            );
        }
        done
    });
    done.sort_unstable_by_key(|(index, _)| *index);
    done.into_iter().map(|(_, result)| result).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_input_order_whatever_worker_made_them() {
        let items: Vec<u32> = (0..1000).collect();
        let sums = map_batches(
            &items,
            7,
            || 0_u32,
            |calls, batch| {
                *calls += 1;
                batch.to_vec()
            },
        );
        assert_eq!(sums.concat(), items);
        assert!(map_batches(&[] as &[u32], 7, || (), |(), b| b.len()).is_empty());
    }

    #[test]
    fn each_worker_has_its_own_state() {
        let items: Vec<u32> = (0..64).collect();
        // A state shared between workers would count more than its batches.
        let counts = map_batches(&items, 1, Vec::new, |seen: &mut Vec<u32>, batch| {
            seen.extend_from_slice(batch);
            seen.windows(2).all(|w| w[0] < w[1])
        });
        assert!(counts.into_iter().all(|ordered| ordered));
        assert!((1..=MAX_WORKERS).contains(&workers()));
    }
}
