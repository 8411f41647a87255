//! A large pass of offers shared with helper threads, one per spare core.
//!
//! Why: one event of a job fanned out to 1,000 sessions is 1,000 socket
//! writes of about 11 µs each (the kernel's delivery to the reader
//! included). Made by the appender alone, the last subscriber waits for
//! all the others, and at 100 subscribers and 1,000 events/s the pass
//! takes as long as the time between events. A plain writer splits its
//! sockets over its cores; so does this, but only as far as a core is
//! free: the appender writes its pass itself, and parked helpers, woken
//! when it starts, take runs from the same list. A helper that is not
//! scheduled takes nothing, and nothing waits for it.
//!
//! A helper also gives its core away before each run (`sched_yield`): if
//! anything else is runnable there (the gateway's own tasks, or readers
//! on the same machine), that goes first and the appender writes the run
//! instead. A helper woken for a pass would otherwise take the core from
//! the very readers the pass wakes. At 1,000 subscribers and 100,000
//! deliveries/s, with the readers on the same two cores, p99 went from
//! 20.7-35.3 ms (median 33.9) to 16.2-20.1 ms (median 18.5) over five
//! alternated runs (docs/performance.md); a yield with nothing else to
//! run costs about 0.5 µs here.
//!
//! Order per tap does not depend on the crew: a tap writes an event only if
//! it is exactly the next one, under its own lock, and declines anything
//! else (its stream then reads the log), so two threads offering to one tap
//! can cost a wake-up, never a gap or a duplicate.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;

use super::tap::{offer_run, Offer};

/// Passes of fewer runs are written by the appender alone: waking a
/// helper costs about what a few writes do.
pub(super) const SHARED_FROM_RUNS: usize = 16;

/// One delivery's offers, cut into runs (consecutive events of one tap),
/// claimed one at a time by whoever writes.
pub(super) struct Pass {
    offers: Vec<Offer>,
    runs: Vec<Range<usize>>,
    next: AtomicUsize,
}

impl Pass {
    pub(super) fn new(offers: Vec<Offer>, runs: Vec<Range<usize>>) -> Pass {
        Pass {
            offers,
            runs,
            next: AtomicUsize::new(0),
        }
    }

    /// Writes runs until none is left to claim.
    pub(super) fn work(&self) {
        self.work_then(|| {});
    }

    /// As [`Pass::work`], but gives the core to anything else runnable
    /// before each run: a helper's share.
    fn work_yielding(&self) {
        self.work_then(std::thread::yield_now);
    }

    fn work_then(&self, before_each: impl Fn()) {
        let mut scratch = Vec::new();
        loop {
            before_each();
            let claimed = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(run) = self.runs.get(claimed) else {
                return;
            };
            let offers = &self.offers[run.clone()];
            offer_run(&offers[0].tap, offers, &mut scratch);
        }
    }
}

/// The pass being written, if any, for the helpers to join; numbered so
/// that a helper never mistakes a new pass for one it finished.
#[derive(Default)]
struct Posted {
    number: u64,
    pass: Option<Arc<Pass>>,
}

/// The helpers, and where passes are posted for them.
pub(super) struct Crew {
    posted: Arc<Mutex<Posted>>,
    helpers: Vec<Thread>,
}

impl Crew {
    /// The process's crew: one helper per core beyond the first, started on
    /// first use. `None` on one core, or if no thread could be started.
    pub(super) fn get() -> Option<&'static Crew> {
        static CREW: OnceLock<Option<Crew>> = OnceLock::new();
        CREW.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            Crew::start(cores.saturating_sub(1))
        })
        .as_ref()
    }

    fn start(count: usize) -> Option<Crew> {
        let posted = Arc::new(Mutex::new(Posted::default()));
        let helpers: Vec<Thread> = (0..count)
            .filter_map(|index| {
                let posted = posted.clone();
                std::thread::Builder::new()
                    .name(format!("arcp-fan-out-{index}"))
                    .stack_size(256 * 1024)
                    .spawn(move || help(&posted))
                    .ok()
                    .map(|handle| handle.thread().clone())
            })
            .collect();
        (!helpers.is_empty()).then_some(Crew { posted, helpers })
    }

    /// Writes `pass` with whichever helpers are free to join.
    pub(super) fn write(&self, pass: Pass) {
        let pass = Arc::new(pass);
        {
            let mut posted = lock(&self.posted);
            posted.number = posted.number.wrapping_add(1);
            posted.pass = Some(pass.clone());
        }
        for helper in &self.helpers {
            helper.unpark();
        }
        pass.work();
        let mut posted = lock(&self.posted);
        if posted
            .pass
            .as_ref()
            .is_some_and(|posted| Arc::ptr_eq(posted, &pass))
        {
            posted.pass = None;
        }
    }
}

fn lock(posted: &Mutex<Posted>) -> std::sync::MutexGuard<'_, Posted> {
    posted
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A helper's life: join each posted pass once, park in between.
fn help(posted: &Mutex<Posted>) {
    let mut finished = 0;
    loop {
        let pass = {
            let posted = lock(posted);
            match &posted.pass {
                Some(pass) if posted.number != finished => {
                    finished = posted.number;
                    Some(pass.clone())
                }
                _ => None,
            }
        };
        match pass {
            Some(pass) => pass.work_yielding(),
            // An unpark between the look and the park is kept: park returns.
            None => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::*;
    use crate::event_log::tap::OfferedFrame;
    use crate::event_log::LiveTap;
    use crate::ids::EventSeq;

    /// Takes an event only if it is the next one, as a stream's tap does.
    #[derive(Default)]
    struct Strict {
        state: Mutex<(EventSeq, Vec<EventSeq>, u64)>,
    }

    impl LiveTap for Strict {
        fn offer(&self, first: EventSeq, last: EventSeq, _: &[&[u8]]) {
            let mut state = self.state.lock().unwrap();
            if first == state.0 + 1 {
                state.0 = last;
                state.1.extend(first..=last);
            } else {
                state.2 += 1;
            }
        }
        fn missed(&self) {}
    }

    fn pass_of(taps: &[Arc<dyn LiveTap>], seq: EventSeq) -> Pass {
        let offers: Vec<Offer> = taps
            .iter()
            .map(|tap| Offer {
                tap: tap.clone(),
                seq,
                frame: OfferedFrame::Whole(Bytes::from_static(b"data: x\n\n")),
            })
            .collect();
        let runs = (0..offers.len()).map(|at| at..at + 1).collect();
        Pass::new(offers, runs)
    }

    #[test]
    fn a_shared_pass_offers_every_event_once_and_in_order() {
        let crew = Crew::start(2).expect("helpers start");
        let taps: Vec<Arc<Strict>> = (0..64).map(|_| Arc::default()).collect();
        let dyn_taps: Vec<Arc<dyn LiveTap>> = taps
            .iter()
            .map(|tap| tap.clone() as Arc<dyn LiveTap>)
            .collect();
        for seq in 1..=200 {
            crew.write(pass_of(&dyn_taps, seq));
        }
        // A helper may still hold its last run.
        let deadline = Instant::now() + Duration::from_secs(10);
        for tap in &taps {
            loop {
                let (_, taken, declined) = &*tap.state.lock().unwrap();
                // Every event is taken once, in order, or declined (its
                // stream would read it): none is lost or doubled.
                assert!(taken.windows(2).all(|pair| pair[0] < pair[1]));
                if taken.len() as u64 + declined == 200 {
                    break;
                }
                assert!(Instant::now() < deadline, "offers went missing");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Waits (at most 10 s) for its partner's offer to begin.
    struct Meeting {
        here: Arc<AtomicBool>,
        partner: Arc<AtomicBool>,
        met: AtomicBool,
    }

    impl LiveTap for Meeting {
        fn offer(&self, _: EventSeq, _: EventSeq, _: &[&[u8]]) {
            self.here.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.partner.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::hint::spin_loop();
            }
            self.met
                .store(self.partner.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        fn missed(&self) {}
    }

    #[test]
    fn a_helper_writes_while_the_appender_does() {
        let crew = Crew::start(1).expect("a helper starts");
        // Let it park: it must be woken for the pass.
        std::thread::sleep(Duration::from_millis(100));
        let (a, b) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let first = Arc::new(Meeting {
            here: a.clone(),
            partner: b.clone(),
            met: AtomicBool::new(false),
        });
        let second = Arc::new(Meeting {
            here: b,
            partner: a,
            met: AtomicBool::new(false),
        });
        let mut taps: Vec<Arc<dyn LiveTap>> = vec![first.clone(), second.clone()];
        taps.extend((2..SHARED_FROM_RUNS).map(|_| Arc::new(Strict::default()) as Arc<dyn LiveTap>));
        crew.write(pass_of(&taps, 1));
        let deadline = Instant::now() + Duration::from_secs(10);
        let met = || first.met.load(Ordering::SeqCst) && second.met.load(Ordering::SeqCst);
        while !met() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Whoever took the first run waited in it until the other run was
        // taken by another thread.
        assert!(met());
    }
}
