//! Direct delivery: a caught-up stream is handed each event of its session
//! as it is appended, and the appender writes it to the stream's socket,
//! instead of the stream being woken to read it.

use std::sync::Arc;

use bytes::Bytes;

use super::crew::{Crew, Pass, SHARED_FROM_RUNS};
use super::memory::Deferred;
use crate::ids::{EventSeq, SessionId};

/// A session's stream, registered with its log
/// ([`super::SessionReader::attach_tap`]) to be offered every event once it
/// is appended, so that a stream that is caught up has its frames written
/// by the appender in its pass over the job's subscribers (§7.6), the shape
/// of a plain writer looping over its sockets, instead of being woken,
/// scheduled and read from the log per event.
///
/// The log stays the single source of truth: every event is appended (and
/// retained for resume) before it is offered, and a tap that cannot take an
/// event (not caught up, its socket full, an offer out of order) declines
/// it; its stream then reads the log as it would have. While a tap is
/// attached, appends raise the log's watermark without waking its watch:
/// the tap wakes the stream (a [`super::StreamKick`]) for every event it
/// does not write. Offers are made only
/// by the in-memory log without a durable sink, where an event is readable
/// the moment it is appended: durable and cluster streams never see a frame
/// before it is stored.
pub trait LiveTap: Send + Sync {
    /// Events `first ..= last` were appended; their frames, back to back,
    /// are `frames`' pieces in order. Write them, or wake the stream. Offers of one session come in append
    /// order from one appender, but two appenders (two jobs) may interleave,
    /// so a tap checks `first` against what it wrote last. Called by the
    /// appender, holding no lock of the log's; must not wait.
    fn offer(&self, first: EventSeq, last: EventSeq, frames: &[&[u8]]);

    /// The log was removed: the stream must look at the log itself (and
    /// will find it gone).
    fn missed(&self);
}

/// An event for a tap, as appended.
pub(crate) struct Offer {
    pub(crate) tap: Arc<dyn LiveTap>,
    pub(crate) seq: EventSeq,
    pub(crate) frame: OfferedFrame,
}

/// The frame of an offered event: stored whole, or a job's copy whose
/// frame is written from its parts ([`super::MemoryEventLog::defer_fan_out`]).
pub(crate) enum OfferedFrame {
    Whole(Bytes),
    Copy {
        deferred: Arc<Deferred>,
        session_id: SessionId,
        /// The session's mix for the copy's envelope id, taken from its log.
        id_mix: u64,
    },
}

/// Events appended for taps, delivered by the appender once it holds no
/// lock ([`Offers::deliver`]): a job appends under its own lock, and the
/// writes to 1,000 subscribers' sockets must not hold it.
#[derive(Default)]
pub struct Offers {
    offers: Vec<Offer>,
    /// Room to make at the next push ([`Offers::expect`]).
    expected: usize,
}

impl Offers {
    pub(crate) fn push(&mut self, offer: Offer) {
        if self.expected > 0 {
            self.offers.reserve(std::mem::take(&mut self.expected));
        }
        self.offers.push(offer);
    }

    /// Up to `more` offers may follow (a fan-out's copies): room for them
    /// is made once, at the first, rather than doubled into.
    pub(crate) fn expect(&mut self, more: usize) {
        self.expected = more;
    }

    pub fn is_empty(&self) -> bool {
        self.offers.is_empty()
    }

    /// Offers every event to its tap, in append order; consecutive events
    /// of one tap are offered together (one write). Never waits: a tap's
    /// socket that would block declines, and its stream reads. Dropping
    /// the offers delivers them too: an append raised its log's watermark
    /// without waking the stream, so its offer must always be made.
    pub fn deliver(self) {
        drop(self);
    }

    fn deliver_all(&mut self) {
        self.expected = 0;
        let offers = std::mem::take(&mut self.offers);
        let mut runs = Vec::new();
        let mut start = 0;
        while start < offers.len() {
            let length = 1 + offers[start + 1..]
                .iter()
                .zip(&offers[start..])
                .take_while(|(next, before)| {
                    Arc::ptr_eq(&next.tap, &before.tap) && next.seq == before.seq + 1
                })
                .count();
            runs.push(start..start + length);
            start += length;
        }
        match Crew::get() {
            Some(crew) if runs.len() >= SHARED_FROM_RUNS => crew.write(Pass::new(offers, runs)),
            _ => Pass::new(offers, runs).work(),
        }
    }
}

impl Drop for Offers {
    fn drop(&mut self) {
        self.deliver_all();
    }
}

/// The largest run of one tap's frames written together.
const MAX_RUN_BYTES: usize = 256 * 1024;

/// Offers `offers` (consecutive events of one tap) in runs of at most
/// [`MAX_RUN_BYTES`]; one event is offered from its parts, without a copy.
pub(super) fn offer_run(tap: &Arc<dyn LiveTap>, offers: &[Offer], run: &mut Vec<u8>) {
    if let [offer] = offers {
        return match &offer.frame {
            OfferedFrame::Whole(frame) => tap.offer(offer.seq, offer.seq, &[frame]),
            OfferedFrame::Copy {
                deferred,
                session_id,
                id_mix,
            } => {
                run.clear();
                deferred.write_head(run, session_id, *id_mix, offer.seq);
                tap.offer(offer.seq, offer.seq, &[run, deferred.shared(), b"\n\n"]);
            }
        };
    }
    run.clear();
    let mut first = None;
    for offer in offers {
        let start = *first.get_or_insert(offer.seq);
        write_frame(&offer.frame, offer.seq, run);
        if run.len() >= MAX_RUN_BYTES {
            tap.offer(start, offer.seq, &[run]);
            run.clear();
            first = None;
        }
    }
    if let (Some(start), Some(last)) = (first, offers.last()) {
        tap.offer(start, last.seq, &[run]);
    }
}

fn write_frame(frame: &OfferedFrame, seq: EventSeq, into: &mut Vec<u8>) {
    match frame {
        OfferedFrame::Whole(bytes) => into.extend_from_slice(bytes),
        OfferedFrame::Copy {
            deferred,
            session_id,
            id_mix,
        } => {
            deferred.write_frame(into, session_id, *id_mix, seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::event_log::{
        EventDraft, EventLog, LogEntry, LogSink, MemoryEventLog, ReadLimit, RetentionLimits,
    };
    use crate::http::sse::{encode_job_event, encode_job_event_head};
    use crate::ids::JobId;

    /// Records what it is offered: (first, last, the frames joined).
    #[derive(Default)]
    struct Recording {
        offers: Mutex<Vec<(EventSeq, EventSeq, Vec<u8>)>>,
        missed: AtomicUsize,
    }

    impl LiveTap for Recording {
        fn offer(&self, first: EventSeq, last: EventSeq, frames: &[&[u8]]) {
            let joined = frames.concat();
            self.offers.lock().unwrap().push((first, last, joined));
        }
        fn missed(&self) {
            self.missed.fetch_add(1, Ordering::SeqCst);
        }
    }

    const ALL: ReadLimit = ReadLimit {
        max_entries: usize::MAX,
        max_bytes: usize::MAX,
    };

    fn log() -> MemoryEventLog {
        let limits = RetentionLimits {
            max_events: 1_000,
            max_bytes: usize::MAX,
        };
        let log = MemoryEventLog::new(limits, encode_job_event);
        log.defer_fan_out(encode_job_event_head);
        log
    }

    fn draft(n: u64) -> EventDraft {
        EventDraft::new(
            "job.event",
            JobId::from_client("job_1"),
            Some("trace_1".into()),
            serde_json::json!({ "kind": "log", "body": { "n": n, "text": "a \"quoted\"\nline" } }),
        )
    }

    fn tap_on(log: &MemoryEventLog, session_id: &SessionId) -> Arc<Recording> {
        let tap = Arc::new(Recording::default());
        assert!(log.session_reader(session_id).attach_tap(tap.clone()));
        tap
    }

    #[test]
    fn offered_frames_are_byte_for_byte_what_a_read_returns() {
        let log = log();
        let [own, copied, untapped] = ["sess_a", "sess_b", "sess_c"].map(SessionId::from_client);
        for session_id in [&own, &copied, &untapped] {
            log.create(session_id).unwrap();
        }
        let own_tap = tap_on(&log, &own);
        let copied_tap = tap_on(&log, &copied);
        for n in 1..=12 {
            log.append(&own, &draft(n)).unwrap();
            log.append_each(&[&copied, &untapped], &draft(n));
        }
        for (session_id, tap) in [(&own, &own_tap), (&copied, &copied_tap)] {
            let offers = tap.offers.lock().unwrap();
            let seqs: Vec<_> = offers
                .iter()
                .map(|(first, last, _)| (*first, *last))
                .collect();
            assert_eq!(seqs, (1..=12).map(|seq| (seq, seq)).collect::<Vec<_>>());
            let offered: Vec<u8> = offers
                .iter()
                .flat_map(|(_, _, frame)| frame.clone())
                .collect();
            let (last, read) = log.read_chunk_after(session_id, 0, ALL).unwrap().unwrap();
            assert_eq!(last, 12);
            assert_eq!(offered, read.to_vec(), "{session_id:?}");
        }
    }

    #[test]
    fn one_taps_consecutive_offers_are_delivered_together_in_order() {
        let log = log();
        let [a, b] = ["sess_a", "sess_b"].map(SessionId::from_client);
        log.create(&a).unwrap();
        log.create(&b).unwrap();
        let (tap_a, tap_b) = (tap_on(&log, &a), tap_on(&log, &b));
        let mut offers = Offers::default();
        for n in 1..=3 {
            log.append_offering(&a, &draft(n), &mut offers).unwrap();
        }
        log.append_each_offering(&[&b], &draft(4), &mut offers);
        log.append_offering(&a, &draft(5), &mut offers).unwrap();
        assert!(
            tap_a.offers.lock().unwrap().is_empty(),
            "nothing before deliver"
        );
        offers.deliver();
        let runs: Vec<_> = tap_a
            .offers
            .lock()
            .unwrap()
            .iter()
            .map(|(first, last, _)| (*first, *last))
            .collect();
        assert_eq!(runs, [(1, 3), (4, 4)]);
        assert_eq!(tap_b.offers.lock().unwrap()[0].0, 1);
        let joined: Vec<u8> = tap_a
            .offers
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, _, frames)| frames.clone())
            .collect();
        let (_, read) = log.read_chunk_after(&a, 0, ALL).unwrap().unwrap();
        assert_eq!(joined, read.to_vec());
    }

    struct NoSink;

    impl LogSink for NoSink {
        fn created(&self, _: &SessionId) {}
        fn appended(&self, _: &SessionId, _: &LogEntry) {}
        fn released(&self, _: &SessionId, _: EventSeq) {}
        fn removed(&self, _: &SessionId) {}
    }

    #[test]
    fn taps_attach_only_without_a_sink_and_hear_of_removal() {
        let durable = log();
        durable.attach_sink(Arc::new(NoSink));
        let session_id = SessionId::from_client("sess_a");
        durable.create(&session_id).unwrap();
        let refused = Arc::new(Recording::default());
        assert!(!durable.session_reader(&session_id).attach_tap(refused));

        let log = log();
        log.create(&session_id).unwrap();
        let reader = log.session_reader(&session_id);
        let older = tap_on(&log, &session_id);
        let newer = tap_on(&log, &session_id);
        // Detaching the replaced tap leaves the newer one attached.
        let older: Arc<dyn LiveTap> = older;
        reader.detach_tap(&older);
        log.append(&session_id, &draft(1)).unwrap();
        assert_eq!(newer.offers.lock().unwrap().len(), 1);
        log.remove(&session_id);
        assert_eq!(newer.missed.load(Ordering::SeqCst), 1);
        assert!(!reader.attach_tap(newer.clone()));
        // A log re-created under the same id is another log.
        log.create(&session_id).unwrap();
        log.append(&session_id, &draft(2)).unwrap();
        assert_eq!(newer.offers.lock().unwrap().len(), 1);
    }
}
