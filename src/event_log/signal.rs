//! The newest readable sequence number of one session's log, and a way for
//! its stream to wait for it to change.
//!
//! This is what a `tokio::sync::watch` channel did, cut to the one case
//! the log has: one writer that only raises a number, and a reader or two
//! (a stream, briefly the one replacing it). A `watch` wakes readers
//! through eight `Notify`s, each with its own lock, and guards the value
//! with a read-write lock; in a profile of one job fanned out to 1,000
//! sessions, raising and waiting on them were among the largest user-space
//! costs per delivery, mostly cache lines moving between the appending
//! core and the streaming one. Here the value is one atomic and the wake
//! one `Notify`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::ids::EventSeq;

struct Shared {
    newest: AtomicU64,
    /// Raised by [`StreamKick::kick`]: wakes the readers without a new value.
    kicks: AtomicU64,
    closed: AtomicBool,
    notify: Notify,
}

/// The writer's end, kept with the session's log. Dropping it closes every
/// [`NewestWatch`] (the log was removed).
pub struct NewestSender {
    shared: Arc<Shared>,
}

/// The sender is gone: the log was removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchClosed;

/// A reader's end: the newest value, and whether it changed since the
/// reader last looked.
pub struct NewestWatch {
    shared: Arc<Shared>,
    seen: EventSeq,
    kicks_seen: u64,
}

/// Wakes a log's readers without a new event, so that they look again at
/// why they might have to stop (their stream replaced, the gateway
/// shutting down). A stream then waits on the log alone instead of also
/// registering on the session's and the gateway's signals for every event.
#[derive(Clone)]
pub struct StreamKick {
    shared: Arc<Shared>,
}

impl StreamKick {
    pub fn kick(&self) {
        self.shared.kicks.fetch_add(1, Ordering::AcqRel);
        self.shared.notify.notify_waiters();
    }
}

/// Why [`NewestWatch::changed_or_kicked`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Woken {
    Newest,
    Kicked,
}

impl NewestSender {
    pub fn new(initial: EventSeq) -> Self {
        NewestSender {
            shared: Arc::new(Shared {
                newest: AtomicU64::new(initial),
                kicks: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                notify: Notify::new(),
            }),
        }
    }

    pub fn get(&self) -> EventSeq {
        self.shared.newest.load(Ordering::Acquire)
    }

    /// Raises the value to `seq` and wakes the waiting readers; a lower or
    /// equal `seq` changes nothing.
    pub fn raise(&self, seq: EventSeq) {
        if self.shared.newest.fetch_max(seq, Ordering::AcqRel) < seq {
            self.shared.notify.notify_waiters();
        }
    }

    /// Raises the value without waking anyone: for a log whose stream
    /// takes appends through a tap ([`super::LiveTap`]), which wakes the
    /// stream itself (a kick) when it does not write an event.
    pub fn raise_quietly(&self, seq: EventSeq) {
        self.shared.newest.fetch_max(seq, Ordering::AcqRel);
    }

    /// A reader that has seen the current value.
    pub fn subscribe(&self) -> NewestWatch {
        NewestWatch {
            seen: self.get(),
            kicks_seen: self.shared.kicks.load(Ordering::Acquire),
            shared: self.shared.clone(),
        }
    }
}

impl Drop for NewestSender {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.notify.notify_waiters();
    }
}

impl NewestWatch {
    /// The newest value, now marked as seen.
    pub fn borrow_and_update(&mut self) -> EventSeq {
        self.seen = self.shared.newest.load(Ordering::Acquire);
        self.seen
    }

    /// Whether the value changed since it was last seen; an error once the
    /// sender is gone.
    pub fn has_changed(&self) -> Result<bool, WatchClosed> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(WatchClosed);
        }
        Ok(self.shared.newest.load(Ordering::Acquire) != self.seen)
    }

    /// What wakes this watch's readers without a new value.
    pub fn kick_handle(&self) -> StreamKick {
        StreamKick {
            shared: self.shared.clone(),
        }
    }

    /// Marks every kick so far as seen: [`NewestWatch::changed_or_kicked`]
    /// then returns for a later one only. Call before checking the reasons
    /// a kick stands for, so one that lands after the check still wakes.
    pub fn mark_kicks_seen(&mut self) {
        self.kicks_seen = self.shared.kicks.load(Ordering::Acquire);
    }

    /// Waits until the value differs from the one last seen (marked seen),
    /// or a kick not yet seen (marked seen); an error once the sender is
    /// gone with nothing new. Cancel-safe.
    pub async fn changed_or_kicked(&mut self) -> Result<Woken, WatchClosed> {
        loop {
            // Registered before the checks, so a raise, kick or close
            // between the checks and the wait still wakes it.
            let notified = self.shared.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let newest = self.shared.newest.load(Ordering::Acquire);
            if newest != self.seen {
                self.seen = newest;
                return Ok(Woken::Newest);
            }
            let kicks = self.shared.kicks.load(Ordering::Acquire);
            if kicks != self.kicks_seen {
                self.kicks_seen = kicks;
                return Ok(Woken::Kicked);
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(WatchClosed);
            }
            notified.await;
        }
    }

    /// Waits until the value differs from the one last seen and marks the
    /// new one seen (kicks are passed over); an error once the sender is
    /// gone with nothing new. Cancel-safe.
    pub async fn changed(&mut self) -> Result<(), WatchClosed> {
        while self.changed_or_kicked().await? == Woken::Kicked {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_raise_wakes_a_waiting_reader_and_a_lower_value_does_not() {
        let sender = NewestSender::new(3);
        let mut watch = sender.subscribe();
        assert_eq!(watch.borrow_and_update(), 3);
        sender.raise(2);
        assert_eq!(sender.get(), 3, "never lowered");
        assert_eq!(watch.has_changed(), Ok(false));
        let waiting =
            tokio::spawn(async move { watch.changed().await.map(|()| watch.borrow_and_update()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        sender.raise(5);
        let woken = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(woken, Ok(5));
    }

    #[tokio::test]
    async fn dropping_the_sender_closes_readers_after_what_they_missed() {
        let sender = NewestSender::new(0);
        let mut watch = sender.subscribe();
        sender.raise(1);
        drop(sender);
        assert_eq!(watch.has_changed(), Err(WatchClosed));
        assert_eq!(watch.changed().await, Ok(()), "the raise is still seen");
        assert_eq!(watch.borrow_and_update(), 1);
        let closed = tokio::time::timeout(Duration::from_secs(5), watch.changed()).await;
        assert_eq!(closed, Ok(Err(WatchClosed)));
    }

    #[tokio::test]
    async fn a_kick_wakes_a_waiting_reader_once_and_a_raise_still_counts() {
        let sender = NewestSender::new(0);
        let mut watch = sender.subscribe();
        let kick = watch.kick_handle();
        let waiting = tokio::spawn(async move {
            let first = watch.changed_or_kicked().await;
            (first, watch)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        kick.kick();
        let (first, mut watch) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(first, Ok(Woken::Kicked));
        // Seen: the next wait needs something new.
        let idle = tokio::time::timeout(Duration::from_millis(50), watch.changed_or_kicked());
        assert!(idle.await.is_err(), "a seen kick does not wake again");
        sender.raise(1);
        assert_eq!(watch.changed_or_kicked().await, Ok(Woken::Newest));
        // A kick before `mark_kicks_seen` is forgotten, one after it is not.
        kick.kick();
        watch.mark_kicks_seen();
        let idle = tokio::time::timeout(Duration::from_millis(50), watch.changed_or_kicked());
        assert!(idle.await.is_err());
        watch.mark_kicks_seen();
        kick.kick();
        assert_eq!(watch.changed_or_kicked().await, Ok(Woken::Kicked));
    }

    #[tokio::test]
    async fn a_quiet_raise_wakes_no_one_but_is_seen_by_the_next_look() {
        let sender = NewestSender::new(1);
        let mut watch = sender.subscribe();
        let kick = watch.kick_handle();
        let waiting = tokio::spawn(async move {
            let woken = watch.changed_or_kicked().await;
            (woken, watch.borrow_and_update())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        sender.raise_quietly(2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a quiet raise wakes no one");
        // The kick that follows (a tap that did not write the event) wakes
        // it, and the raise is what it finds first.
        kick.kick();
        let (woken, newest) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!((woken, newest), (Ok(Woken::Newest), 2));
    }

    #[tokio::test]
    async fn a_reader_waiting_when_the_sender_goes_is_woken() {
        let sender = NewestSender::new(0);
        let mut watch = sender.subscribe();
        let waiting = tokio::spawn(async move { watch.changed().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(sender);
        let woken = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(woken, Err(WatchClosed));
    }
}
