//! Paced waits for the built-in agents, to a few tens of microseconds.
//!
//! Why: tokio's timer counts whole milliseconds, and a task that sleeps
//! until an instant wakes at a millisecond tick after it. A `firehose` at
//! 1,000 events/s woke every 1.17 ms (p50), fell behind, and caught up
//! with a second event at once: 15 % of its events came 15-45 µs after the
//! one before (docs/performance.md, twelfth pass). "Paced at a rate" should
//! mean evenly spaced, and a load that comes in pairs is not the load a
//! benchmark's floor, woken by `nanosleep`, is given.
//!
//! [`sleep_until`] waits with tokio until `NEAR` before the instant, then
//! hands the rest to one thread per process, which waits on a condition
//! variable (the kernel's high-resolution timer, with the usual slack of
//! about 50 µs) and wakes the task when it is due. The thread only holds
//! waits that end within `NEAR`, so its queue is bounded by the paced
//! tasks alive in that window, and a task that is dropped leaves its entry
//! for at most that long.
//!
//! The hop through that thread costs a wake-up per event, which tokio's
//! timer, firing a tick's timers together, does not. So
//! [`sleep_until_paced`] uses it only for paces faster than [`FINE_BELOW`],
//! where a tick is a fifth of the period or more; slower paces are late by
//! under a tick and never pair. The benchmarks' reference servers pace
//! with the same function, so every server is given the same events.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// How far ahead of its instant a wait moves from tokio's timer to the
/// pacer's thread: more than tokio's tick, with room for its lateness.
const NEAR: Duration = Duration::from_millis(3);

/// Events paced at least this far apart keep tokio's timer.
pub const FINE_BELOW: Duration = Duration::from_millis(5);

/// Waits until `due`, the instant of an event in a pace of one every
/// `period`: to tens of microseconds if the period is under
/// [`FINE_BELOW`], otherwise with tokio's timer.
pub async fn sleep_until_paced(due: Instant, period: Duration) {
    if period < FINE_BELOW {
        sleep_until(due).await
    } else {
        tokio::time::sleep_until(due).await
    }
}

/// Waits until `due`, waking within tens of microseconds of it rather than
/// at the next millisecond tick.
pub async fn sleep_until(due: Instant) {
    if let Some(early) = due.checked_sub(NEAR) {
        tokio::time::sleep_until(early).await;
    }
    if Instant::now() >= due {
        return;
    }
    let Some(pacer) = Pacer::get() else {
        return tokio::time::sleep_until(due).await;
    };
    let (wake, woken) = oneshot::channel();
    pacer.push(due.into_std(), wake);
    // The pacer's thread always sends or drops the sender.
    let _ = woken.await;
}

struct Entry {
    due: std::time::Instant,
    /// Ties broken by arrival, so the heap never compares senders.
    order: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Entry) -> std::cmp::Ordering {
        (self.due, self.order).cmp(&(other.due, other.order))
    }
}

#[derive(Default)]
struct Queue {
    entries: BinaryHeap<Reverse<Entry>>,
    pushed: u64,
}

struct Pacer {
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Pacer {
    /// The process's pacer, its thread started on first use; `None` if the
    /// thread could not be started.
    fn get() -> Option<&'static Pacer> {
        static PACER: OnceLock<Option<&'static Pacer>> = OnceLock::new();
        *PACER.get_or_init(|| {
            let pacer: &'static Pacer = Box::leak(Box::new(Pacer {
                queue: Mutex::new(Queue::default()),
                changed: Condvar::new(),
            }));
            std::thread::Builder::new()
                .name("arcp-pacer".into())
                .stack_size(64 * 1024)
                .spawn(move || pacer.run())
                .ok()
                .map(|_| pacer)
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, due: std::time::Instant, wake: oneshot::Sender<()>) {
        let mut queue = self.lock();
        queue.pushed = queue.pushed.wrapping_add(1);
        let order = queue.pushed;
        let earliest = queue
            .entries
            .peek()
            .is_none_or(|Reverse(first)| due < first.due);
        queue.entries.push(Reverse(Entry { due, order, wake }));
        drop(queue);
        if earliest {
            self.changed.notify_one();
        }
    }

    /// Wakes each entry at its instant, for ever.
    fn run(&self) {
        let mut queue = self.lock();
        loop {
            let now = std::time::Instant::now();
            match queue.entries.peek() {
                Some(Reverse(first)) if first.due <= now => {
                    if let Some(Reverse(entry)) = queue.entries.pop() {
                        // A task that has gone dropped its receiver.
                        let _ = entry.wake.send(());
                    }
                }
                Some(Reverse(first)) => {
                    let wait = first.due - now;
                    queue = self
                        .changed
                        .wait_timeout(queue, wait)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0;
                }
                None => {
                    queue = self
                        .changed
                        .wait(queue)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paced waits land near their instants, in order, and none early;
    /// with tokio's millisecond timer alone, 1,000 waits a second came in
    /// pairs (the module's documentation).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waits_end_at_their_instants_not_at_millisecond_ticks() {
        let started = Instant::now();
        let mut gaps = Vec::new();
        let mut last = started;
        for number in 1..=300u32 {
            let due = started + Duration::from_micros(1000) * number;
            sleep_until(due).await;
            let now = Instant::now();
            assert!(now >= due, "woke {:?} early", due - now);
            gaps.push(now - last);
            last = now;
        }
        gaps.sort();
        // Pairs (a gap of well under half the period) are what tokio's
        // timer alone gave at this rate: 15 % of gaps, 45 of 300. Room is
        // left for a loaded machine running the other tests.
        let paired = gaps
            .iter()
            .filter(|gap| **gap < Duration::from_micros(500))
            .count();
        assert!(paired <= 15, "{paired} of 300 waits came in pairs");
    }

    #[tokio::test]
    async fn a_wait_already_due_returns_at_once() {
        let due = Instant::now();
        tokio::time::timeout(Duration::from_secs(1), sleep_until(due))
            .await
            .expect("returns");
    }

    /// Many tasks waiting at once, some dropped before their instant: every
    /// remaining one is woken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_waits_each_wake_and_dropped_ones_do_no_harm() {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for number in 0..200u64 {
            let due = started + Duration::from_micros(3_100 + number * 37 % 2_000);
            tasks.push(tokio::spawn(async move {
                sleep_until(due).await;
                Instant::now() >= due
            }));
        }
        for task in tasks.iter().step_by(7) {
            task.abort();
        }
        for task in tasks {
            if let Ok(on_time) = tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("woken")
            {
                assert!(on_time);
            }
        }
    }
}
