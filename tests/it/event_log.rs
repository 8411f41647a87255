//! The event-log backend contract, run against every backend. A new backend
//! adds one line to `backend_conformance!` invocations below.

use std::sync::Arc;

use arcp_gateway::event_log::sqlite::SqliteStore;
use arcp_gateway::event_log::{
    EventDraft, EventLog, EventLogError, LogBounds, LogEntry, MemoryEventLog, NewestWatch,
    ReadLimit, RetentionLimits, SessionReader,
};
use arcp_gateway::http::sse::{encode_job_event, encode_job_event_head};
use arcp_gateway::ids::{JobId, MessageId, SessionId};
use arcp_gateway::metrics::Metrics;
use arcp_gateway::store::Persistence;
use serde_json::json;

const ALL: ReadLimit = ReadLimit {
    max_entries: usize::MAX,
    max_bytes: usize::MAX,
};

fn draft(n: u64) -> EventDraft {
    EventDraft::new(
        "job.event",
        JobId::from_client("job_1"),
        None,
        json!({"kind": "progress", "body": {"current": n}}),
    )
}

fn session(name: &str) -> SessionId {
    SessionId::from_client(name)
}

pub fn sequences_start_at_one_and_have_no_gaps(log: Arc<dyn EventLog>) {
    let sid = session("s1");
    log.create(&sid).unwrap();
    for expected in 1..=50 {
        assert_eq!(log.append(&sid, &draft(expected)).unwrap(), expected);
    }
    let entries = log.read_after(&sid, 0, ALL).unwrap();
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    assert_eq!(
        log.bounds(&sid).unwrap(),
        LogBounds {
            floor: 0,
            newest: 50
        }
    );
    // Stored frames are the encoded SSE bytes for that seq.
    let frame = std::str::from_utf8(&entries[9].frame).unwrap();
    assert!(
        frame.starts_with("id: 10\nevent: job.event\ndata: {"),
        "{frame}"
    );
    assert!(frame.ends_with("}\n\n"));
}

pub fn sessions_have_independent_sequences(log: Arc<dyn EventLog>) {
    let (a, b) = (session("a"), session("b"));
    log.create(&a).unwrap();
    log.create(&b).unwrap();
    assert_eq!(log.create(&a), Err(EventLogError::SessionExists));
    log.append(&a, &draft(1)).unwrap();
    log.append(&a, &draft(2)).unwrap();
    assert_eq!(log.append(&b, &draft(1)).unwrap(), 1);
    assert_eq!(log.bounds(&a).unwrap().newest, 2);
}

/// A job's event goes to all its subscribers at once (§7.6): each log gets
/// its own next sequence number and a frame stamped for it, an unknown
/// session fails alone, and the result is what one append each would give.
pub fn appending_to_each_numbers_every_log_on_its_own(log: Arc<dyn EventLog>) {
    let (a, b, gone) = (session("each-a"), session("each-b"), session("each-gone"));
    log.create(&a).unwrap();
    log.create(&b).unwrap();
    log.append(&a, &draft(1)).unwrap();
    let results = log.append_each(&[&a, &gone, &b], &draft(2));
    assert_eq!(results.len(), 3);
    assert_eq!(results[0], Ok(2));
    assert_eq!(results[1], Err(EventLogError::UnknownSession));
    assert_eq!(results[2], Ok(1));
    let frames = log.read_after(&b, 0, ALL).unwrap();
    assert_eq!(frames.len(), 1);
    let frame = std::str::from_utf8(&frames[0].frame).unwrap();
    assert!(frame.starts_with("id: 1\n"), "{frame}");
    assert!(
        frame.contains(&format!("\"session_id\":\"{b}\"")),
        "{frame}"
    );
    assert_eq!(log.bounds(&a).unwrap().newest, 2);
}

pub fn reads_are_bounded_and_resume_from_any_cursor(log: Arc<dyn EventLog>) {
    let sid = session("s");
    log.create(&sid).unwrap();
    for n in 1..=20 {
        log.append(&sid, &draft(n)).unwrap();
    }
    let first = log
        .read_after(
            &sid,
            5,
            ReadLimit {
                max_entries: 4,
                max_bytes: usize::MAX,
            },
        )
        .unwrap();
    assert_eq!(
        first.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [6, 7, 8, 9]
    );
    let one_frame = first[0].frame.len();
    let by_bytes = log
        .read_after(
            &sid,
            5,
            ReadLimit {
                max_entries: 100,
                max_bytes: one_frame,
            },
        )
        .unwrap();
    assert_eq!(
        by_bytes.len(),
        1,
        "the byte limit caps a read, but never below one entry"
    );
    assert!(
        log.read_after(&sid, 20, ALL).unwrap().is_empty(),
        "caught up"
    );
    assert_eq!(
        log.read_after(&sid, 21, ALL),
        Err(EventLogError::CursorAhead { newest: 20 })
    );
}

pub fn retention_limits_evict_the_oldest_and_raise_the_floor(
    log_for: impl Fn(RetentionLimits) -> Arc<dyn EventLog>,
) {
    let log = log_for(RetentionLimits {
        max_events: 10,
        max_bytes: usize::MAX,
    });
    let sid = session("s");
    log.create(&sid).unwrap();
    for n in 1..=25 {
        log.append(&sid, &draft(n)).unwrap();
    }
    assert_eq!(
        log.bounds(&sid).unwrap(),
        LogBounds {
            floor: 15,
            newest: 25
        }
    );
    assert_eq!(
        log.read_after(&sid, 14, ALL),
        Err(EventLogError::CursorEvicted { floor: 15 })
    );
    let retained = log.read_after(&sid, 15, ALL).unwrap();
    assert_eq!(retained.first().unwrap().seq, 16);
    assert_eq!(retained.len(), 10);

    let frame_len = encode_job_event(&sid, 1, &draft(1)).frame.len();
    let log = log_for(RetentionLimits {
        max_events: 1000,
        max_bytes: frame_len * 3 + frame_len / 2,
    });
    log.create(&sid).unwrap();
    for n in 1..=9 {
        log.append(&sid, &draft(n)).unwrap();
    }
    let bounds = log.bounds(&sid).unwrap();
    assert_eq!(
        bounds.newest - bounds.floor,
        3,
        "the byte limit keeps three frames"
    );
}

pub fn chunks_join_exactly_the_frames_read_after_returns(log: Arc<dyn EventLog>) {
    let sid = session("s");
    log.create(&sid).unwrap();
    assert_eq!(
        log.read_chunk_after(&sid, 0, ALL).unwrap(),
        None,
        "nothing yet"
    );
    for n in 1..=30 {
        log.append(&sid, &draft(n)).unwrap();
    }
    let entries = log
        .read_after(
            &sid,
            10,
            ReadLimit {
                max_entries: 7,
                max_bytes: usize::MAX,
            },
        )
        .unwrap();
    let joined: Vec<u8> = entries
        .iter()
        .flat_map(|entry| entry.frame.to_vec())
        .collect();
    let (last, chunk) = log
        .read_chunk_after(
            &sid,
            10,
            ReadLimit {
                max_entries: 7,
                max_bytes: usize::MAX,
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(last, 17);
    assert_eq!(chunk.to_vec(), joined);
    let (last, single) = log.read_chunk_after(&sid, 29, ALL).unwrap().unwrap();
    assert_eq!(last, 30);
    assert_eq!(single, log.read_after(&sid, 29, ALL).unwrap()[0].frame);
    assert_eq!(
        log.read_chunk_after(&sid, 30, ALL).unwrap(),
        None,
        "caught up"
    );
    assert_eq!(
        log.read_chunk_after(&sid, 31, ALL),
        Err(EventLogError::CursorAhead { newest: 30 })
    );
}

pub fn release_frees_acknowledged_events(log: Arc<dyn EventLog>) {
    let sid = session("s");
    log.create(&sid).unwrap();
    for n in 1..=10 {
        log.append(&sid, &draft(n)).unwrap();
    }
    assert_eq!(
        log.release_through(&sid, 4).unwrap(),
        LogBounds {
            floor: 4,
            newest: 10
        }
    );
    assert_eq!(
        log.release_through(&sid, 2).unwrap().floor,
        4,
        "going backwards is a no-op"
    );
    assert_eq!(
        log.release_through(&sid, 11),
        Err(EventLogError::CursorAhead { newest: 10 })
    );
    assert_eq!(
        log.read_after(&sid, 3, ALL),
        Err(EventLogError::CursorEvicted { floor: 4 })
    );
    assert_eq!(
        log.append(&sid, &draft(11)).unwrap(),
        11,
        "sequencing continues after a release"
    );
}

pub fn watchers_see_appends_and_removal(log: Arc<dyn EventLog>) {
    let sid = session("s");
    log.create(&sid).unwrap();
    let mut watch = log.watch_newest(&sid).unwrap();
    assert_eq!(watch.borrow_and_update(), 0);
    log.append(&sid, &draft(1)).unwrap();
    assert!(watch.has_changed().unwrap());
    assert_eq!(watch.borrow_and_update(), 1);
    log.remove(&sid);
    assert!(watch.has_changed().is_err(), "removal closes the watch");
    assert_eq!(
        log.append(&sid, &draft(2)),
        Err(EventLogError::UnknownSession)
    );
    assert_eq!(log.bounds(&sid), Err(EventLogError::UnknownSession));
}

pub fn a_session_reader_reads_what_reads_by_id_read_until_the_log_goes(log: Arc<dyn EventLog>) {
    let sid = session("s");
    log.create(&sid).unwrap();
    let reader = log.session_reader(&sid);
    for n in 1..=5 {
        log.append(&sid, &draft(n)).unwrap();
    }
    assert_eq!(
        reader.read_after(1, ALL).unwrap(),
        log.read_after(&sid, 1, ALL).unwrap()
    );
    assert_eq!(
        reader.read_chunk_after(2, ALL).unwrap(),
        log.read_chunk_after(&sid, 2, ALL).unwrap()
    );
    assert_eq!(reader.bounds().unwrap(), log.bounds(&sid).unwrap());
    let mut watch = reader.watch_newest().unwrap();
    assert_eq!(watch.borrow_and_update(), 5);
    log.remove(&sid);
    assert_eq!(
        reader.read_chunk_after(0, ALL),
        Err(EventLogError::UnknownSession),
        "a reader does not keep a removed log alive"
    );
    assert!(watch.has_changed().is_err(), "removal closes its watch");
    let never = log.session_reader(&session("never"));
    assert_eq!(never.read_after(0, ALL), Err(EventLogError::UnknownSession));
    assert_eq!(never.bounds(), Err(EventLogError::UnknownSession));
}

/// Limits a stream uses, and some awkward ones.
const LIMITS: [ReadLimit; 5] = [
    ALL,
    ReadLimit {
        max_entries: 4096,
        max_bytes: 512 * 1024,
    },
    ReadLimit {
        max_entries: 64,
        max_bytes: 16 * 1024,
    },
    ReadLimit {
        max_entries: 7,
        max_bytes: usize::MAX,
    },
    ReadLimit {
        max_entries: usize::MAX,
        max_bytes: 1000,
    },
];

/// A draft whose payload carries `len` bytes of text.
fn sized_draft(n: u64, len: usize) -> EventDraft {
    EventDraft::new(
        "job.event",
        JobId::from_client("job_1"),
        None,
        json!({"kind": "progress", "body": {"current": n, "data": "x".repeat(len)}}),
    )
}

/// Session `s` gets events 1..=`count`; two in three are a job's copies
/// fanned out to `s` and another session `o` (`append_each`), the rest
/// `s`'s own (`append`), with payloads of varied sizes. A reader follows
/// `s` live every few events, as a stream does, checking what it reads.
fn fan_out_into(log: &dyn EventLog, s: &SessionId, o: &SessionId, count: u64) {
    log.create(s).unwrap();
    log.create(o).unwrap();
    let mut live = 0;
    for n in 1..=count {
        let draft = sized_draft(n, (n as usize * 37) % 700);
        if n % 3 == 0 {
            assert_eq!(log.append(s, &draft), Ok(n));
        } else {
            let results = log.append_each(&[o, s], &draft);
            assert_eq!(results[1], Ok(n));
        }
        if n % 7 == 0 {
            if let Ok(Some((last, chunk))) = log.read_chunk_after(s, live, ALL) {
                assert_frames(&chunk, live, last);
                live = last;
            }
        }
    }
}

/// The frame `encode_job_event` gives `entry`'s event with the message id
/// the entry carries: what an `append` with that id would have stored.
fn frame_as_appended(sid: &SessionId, entry: &LogEntry, payload_len: usize) -> Vec<u8> {
    let envelope: serde_json::Value = serde_json::from_slice(entry.envelope_json()).unwrap();
    let mut draft = sized_draft(entry.seq, payload_len);
    draft.message_id = Some(MessageId::from_client(envelope["id"].as_str().unwrap()));
    encode_job_event(sid, entry.seq, &draft).frame.to_vec()
}

/// §7.6 copies in a subscriber's log read back exactly like appended
/// events: whole frames stamped for that session, in every read shape,
/// the same bytes on every read (ids fixed when appended, unique), and
/// each byte for byte what `append` would have stored.
pub fn fan_out_copies_read_like_appended_events(log: Arc<dyn EventLog>) {
    let (s, o) = (session("fan-s"), session("fan-o"));
    fan_out_into(&*log, &s, &o, 300);
    let joined = joined_entries(&*log, &s, 0);
    assert_eq!(joined, joined_entries(&*log, &s, 0), "reads are stable");
    for limit in LIMITS {
        assert_eq!(replay(&*log, &s, 0, limit).0, joined);
    }
    let entries = log.read_after(&s, 0, ALL).unwrap();
    let mut ids = std::collections::HashSet::new();
    for entry in &entries {
        let envelope: serde_json::Value = serde_json::from_slice(entry.envelope_json()).unwrap();
        assert_eq!(envelope["session_id"], s.as_str());
        assert!(ids.insert(envelope["id"].as_str().unwrap().to_owned()));
        let payload_len = (entry.seq as usize * 37) % 700;
        assert_eq!(
            entry.frame.to_vec(),
            frame_as_appended(&s, entry, payload_len)
        );
    }
    // The other session's copies are its own: its own numbering and ids.
    let other = log.read_after(&o, 0, ALL).unwrap();
    assert_eq!(other.len(), 200);
    assert_eq!(other.last().unwrap().seq, 200);
    for entry in &other {
        let envelope: serde_json::Value = serde_json::from_slice(entry.envelope_json()).unwrap();
        assert_eq!(envelope["session_id"], o.as_str());
        assert!(!ids.contains(envelope["id"].as_str().unwrap()));
    }
}

/// Retention counts a copy's whole frame and evicts copies like appended
/// events; what is left reads whole from the new floor.
pub fn fan_out_copies_evict_like_appended_events(
    log_for: impl Fn(RetentionLimits) -> Arc<dyn EventLog>,
) {
    let log = log_for(RetentionLimits {
        max_events: 40,
        max_bytes: usize::MAX,
    });
    let (s, o) = (session("fan-s"), session("fan-o"));
    fan_out_into(&*log, &s, &o, 300);
    assert_eq!(
        log.bounds(&s).unwrap(),
        LogBounds {
            floor: 260,
            newest: 300
        }
    );
    assert_eq!(
        log.read_chunk_after(&s, 259, ALL),
        Err(EventLogError::CursorEvicted { floor: 260 })
    );
    let joined = joined_entries(&*log, &s, 260);
    for limit in LIMITS {
        assert_eq!(replay(&*log, &s, 260, limit).0, joined);
    }
    let retained: usize = log
        .read_after(&s, 260, ALL)
        .unwrap()
        .iter()
        .map(|entry| entry.frame.len())
        .sum();
    let log = log_for(RetentionLimits {
        max_events: usize::MAX,
        max_bytes: retained,
    });
    fan_out_into(&*log, &s, &o, 300);
    assert_eq!(log.bounds(&s).unwrap().floor, 260, "bytes are whole frames");
}

/// Checks that `bytes` are exactly the whole frames of events `after + 1
/// ..= last`, in order: no gap, no duplicate, no torn frame.
fn assert_frames(bytes: &[u8], after: u64, last: u64) {
    let text = std::str::from_utf8(bytes).expect("frames are UTF-8");
    assert!(text.ends_with("\n\n"), "ends with a whole frame");
    let frames: Vec<&str> = text[..text.len() - 2].split("\n\n").collect();
    assert_eq!(frames.len() as u64, last - after, "one frame per event");
    for (frame, seq) in frames.iter().zip(after + 1..) {
        let head = format!("id: {seq}\nevent: job.event\ndata: ");
        assert!(frame.starts_with(&head), "frame {seq}: {:.80}", frame);
        let envelope: serde_json::Value =
            serde_json::from_str(&frame[head.len()..]).expect("the envelope is whole JSON");
        assert_eq!(envelope["event_seq"], seq);
        assert_eq!(envelope["payload"]["body"]["current"], seq);
    }
}

/// Reads everything after `after` with `read_chunk_after` in `limit`-sized
/// chunks, checking every chunk; returns the joined bytes and the chunk count.
fn replay(log: &dyn EventLog, sid: &SessionId, after: u64, limit: ReadLimit) -> (Vec<u8>, usize) {
    let (mut joined, mut chunks, mut cursor) = (Vec::new(), 0, after);
    while let Some((last, chunk)) = log.read_chunk_after(sid, cursor, limit).unwrap() {
        assert!(last > cursor, "a chunk moves the cursor");
        assert_frames(&chunk, cursor, last);
        if limit.max_entries < usize::MAX {
            assert!(last - cursor <= limit.max_entries as u64);
        }
        if last - cursor > 1 {
            assert!(chunk.len() <= limit.max_bytes, "within the byte limit");
        }
        joined.extend_from_slice(&chunk);
        cursor = last;
        chunks += 1;
    }
    assert_eq!(cursor, log.bounds(sid).unwrap().newest, "caught up");
    (joined, chunks)
}

/// The frames `read_after` gives for everything after `after`, joined, with
/// each entry checked against its frame.
fn joined_entries(log: &dyn EventLog, sid: &SessionId, after: u64) -> Vec<u8> {
    let entries = log.read_after(sid, after, ALL).unwrap();
    let mut joined = Vec::new();
    for (entry, seq) in entries.iter().zip(after + 1..) {
        assert_eq!(entry.seq, seq);
        let draft = entry.to_draft().expect("the envelope span is right");
        assert_eq!(draft.payload["body"]["current"], seq);
        joined.extend_from_slice(&entry.frame);
    }
    assert_frames(&joined, after, after + entries.len() as u64);
    joined
}

pub fn reads_across_many_blocks_return_exactly_the_frames(log: Arc<dyn EventLog>) {
    let sid = session("s");
    log.create(&sid).unwrap();
    // About 1.5 MB of frames of many sizes: many blocks.
    for n in 1..=1500 {
        log.append(&sid, &sized_draft(n, (n as usize * 37) % 1500))
            .unwrap();
    }
    let all = joined_entries(log.as_ref(), &sid, 0);
    for limit in LIMITS {
        assert_eq!(replay(log.as_ref(), &sid, 0, limit).0, all, "{limit:?}");
    }
    for after in [1, 617, 1499] {
        let expected = joined_entries(log.as_ref(), &sid, after);
        assert!(all.ends_with(&expected));
        for limit in LIMITS {
            assert_eq!(replay(log.as_ref(), &sid, after, limit).0, expected);
        }
    }
    let (_, chunks) = replay(log.as_ref(), &sid, 0, LIMITS[1]);
    assert!(chunks >= 3, "1.5 MB in chunks of at most 512 KiB");
}

pub fn live_reads_then_a_full_replay_give_the_same_bytes(log: Arc<dyn EventLog>) {
    let sid = session("s");
    log.create(&sid).unwrap();
    let mut live = Vec::new();
    let mut cursor = 0;
    for n in 1..=600 {
        log.append(&sid, &sized_draft(n, (n as usize * 13) % 700))
            .unwrap();
        // Mostly a read after every append, as an attached stream does;
        // sometimes after two, sometimes with a small limit.
        if n % 5 == 3 {
            continue;
        }
        let limit = if n % 7 == 0 { LIMITS[3] } else { LIMITS[1] };
        while let Some((last, chunk)) = log.read_chunk_after(&sid, cursor, limit).unwrap() {
            assert_frames(&chunk, cursor, last);
            live.extend_from_slice(&chunk);
            cursor = last;
        }
        assert_eq!(cursor, n);
    }
    assert_eq!(joined_entries(log.as_ref(), &sid, 0), live);
    for limit in LIMITS {
        assert_eq!(replay(log.as_ref(), &sid, 0, limit).0, live, "{limit:?}");
    }
}

pub fn eviction_across_blocks_keeps_reads_correct(
    log_for: impl Fn(RetentionLimits) -> Arc<dyn EventLog>,
) {
    let frame_len = |n: u64| {
        encode_job_event(&session("s"), n, &sized_draft(n, 300))
            .frame
            .len()
    };
    for limits in [
        RetentionLimits {
            max_events: 40,
            max_bytes: usize::MAX,
        },
        RetentionLimits {
            max_events: usize::MAX,
            max_bytes: 25 * frame_len(1000),
        },
    ] {
        let log = log_for(limits);
        let sid = session("s");
        log.create(&sid).unwrap();
        let mut cursor = 0;
        for n in 1..=400 {
            log.append(&sid, &sized_draft(n, 300)).unwrap();
            // A live reader on some stretches only: blocks of every size.
            // (In between, eviction may overtake it; it then resumes at
            // the floor.)
            cursor = cursor.max(log.bounds(&sid).unwrap().floor);
            if (n / 50) % 2 == 0 {
                let (last, chunk) = log
                    .read_chunk_after(&sid, cursor, LIMITS[1])
                    .unwrap()
                    .unwrap();
                assert_frames(&chunk, cursor, last);
                cursor = last;
            }
            if n % 37 == 0 {
                let floor = log.bounds(&sid).unwrap().floor;
                let retained = joined_entries(log.as_ref(), &sid, floor);
                for limit in LIMITS {
                    assert_eq!(replay(log.as_ref(), &sid, floor, limit).0, retained);
                }
            }
        }
        let bounds = log.bounds(&sid).unwrap();
        assert_eq!(bounds.newest, 400);
        assert!(
            (20..=40).contains(&(bounds.newest - bounds.floor)),
            "{bounds:?}"
        );
        // Acknowledge most of it, across block boundaries, in odd steps.
        for up_to in [bounds.floor + 3, bounds.floor + 11, 395] {
            log.release_through(&sid, up_to).unwrap();
            let retained = joined_entries(log.as_ref(), &sid, up_to);
            assert_eq!(retained.is_empty(), up_to == 400);
            for limit in LIMITS {
                assert_eq!(replay(log.as_ref(), &sid, up_to, limit).0, retained);
            }
        }
        log.release_through(&sid, 400).unwrap();
        assert_eq!(log.read_chunk_after(&sid, 400, ALL).unwrap(), None);
        assert_eq!(log.append(&sid, &sized_draft(401, 300)).unwrap(), 401);
        assert_eq!(
            replay(log.as_ref(), &sid, 400, ALL).0,
            joined_entries(log.as_ref(), &sid, 400)
        );
    }
}

pub fn a_frame_larger_than_a_block_is_read_whole(log: Arc<dyn EventLog>) {
    let sid = session("s");
    log.create(&sid).unwrap();
    let sizes = [100, 300 * 1024, 50, 70, 600 * 1024, 10, 256 * 1024, 20];
    let mut cursor = 0;
    for (n, size) in (1..).zip(sizes) {
        log.append(&sid, &sized_draft(n, size)).unwrap();
        if n == 3 {
            // A live reader in the middle, too.
            while let Some((last, chunk)) = log.read_chunk_after(&sid, cursor, ALL).unwrap() {
                assert_frames(&chunk, cursor, last);
                cursor = last;
            }
        }
    }
    assert_eq!(cursor, 3);
    let all = joined_entries(log.as_ref(), &sid, 0);
    assert!(all.len() > 1_150_000);
    for limit in LIMITS {
        assert_eq!(replay(log.as_ref(), &sid, 0, limit).0, all, "{limit:?}");
    }
    // A small byte limit still returns the large frame, alone and whole.
    let (last, chunk) = log.read_chunk_after(&sid, 1, LIMITS[2]).unwrap().unwrap();
    assert_eq!(last, 2);
    assert_frames(&chunk, 1, 2);
    let big = log.read_after(&sid, 4, LIMITS[2]).unwrap();
    assert_eq!(big.len(), 1);
    assert_eq!(big[0].seq, 5);
    assert!(big[0].frame.len() > 600 * 1024);
    assert_eq!(
        big[0].to_draft().unwrap().payload,
        sized_draft(5, 600 * 1024).payload
    );
}

/// A backend under test: the log, and how to wait until its writes are
/// visible (durable backends show events only once committed).
struct Settling {
    log: Arc<dyn EventLog>,
    settle: Box<dyn Fn() + Send + Sync>,
}

impl EventLog for Settling {
    fn create(&self, session_id: &SessionId) -> Result<(), EventLogError> {
        let result = self.log.create(session_id);
        (self.settle)();
        result
    }

    fn append(&self, session_id: &SessionId, draft: &EventDraft) -> Result<u64, EventLogError> {
        let result = self.log.append(session_id, draft);
        (self.settle)();
        result
    }

    fn read_after(
        &self,
        session_id: &SessionId,
        after: u64,
        limit: ReadLimit,
    ) -> Result<Vec<LogEntry>, EventLogError> {
        self.log.read_after(session_id, after, limit)
    }

    /// Forwarded, so the suite checks the backend's own chunking rather
    /// than the trait's default.
    fn read_chunk_after(
        &self,
        session_id: &SessionId,
        after: u64,
        limit: ReadLimit,
    ) -> Result<Option<(u64, bytes::Bytes)>, EventLogError> {
        self.log.read_chunk_after(session_id, after, limit)
    }

    fn session_reader(&self, session_id: &SessionId) -> SessionReader {
        self.log.session_reader(session_id)
    }

    fn bounds(&self, session_id: &SessionId) -> Result<LogBounds, EventLogError> {
        self.log.bounds(session_id)
    }

    fn release_through(
        &self,
        session_id: &SessionId,
        up_to: u64,
    ) -> Result<LogBounds, EventLogError> {
        let result = self.log.release_through(session_id, up_to);
        (self.settle)();
        result
    }

    fn watch_newest(&self, session_id: &SessionId) -> Result<NewestWatch, EventLogError> {
        self.log.watch_newest(session_id)
    }

    fn remove(&self, session_id: &SessionId) {
        self.log.remove(session_id);
        (self.settle)();
    }
}

fn memory_backend(limits: RetentionLimits) -> Arc<dyn EventLog> {
    Arc::new(MemoryEventLog::new(limits, encode_job_event))
}

/// The in-memory log as the gateway runs it without a data directory:
/// a job's copies to subscribers are deferred.
fn memory_deferred_backend(limits: RetentionLimits) -> Arc<dyn EventLog> {
    let log = MemoryEventLog::new(limits, encode_job_event);
    log.defer_fan_out(encode_job_event_head);
    Arc::new(log)
}

/// The durable backend over a database in `dir`, recovering what is there.
fn sqlite_backend_in(
    dir: &std::path::Path,
    limits: RetentionLimits,
) -> (Arc<MemoryEventLog>, Arc<SqliteStore>) {
    let (connection, recovered, path) = SqliteStore::open(dir).expect("open store");
    let memory = Arc::new(MemoryEventLog::new(limits, encode_job_event));
    for (session_id, floor, entries) in recovered.logs {
        memory.restore(&session_id, floor, entries);
    }
    let store = SqliteStore::start(connection, path, Arc::downgrade(&memory), &Metrics::new());
    memory.attach_sink(store.clone());
    (memory, store)
}

fn sqlite_backend(limits: RetentionLimits) -> Arc<dyn EventLog> {
    let dir = tempfile::tempdir().expect("temp dir");
    let (memory, store) = sqlite_backend_in(dir.path(), limits);
    Arc::new(Settling {
        log: memory,
        settle: Box::new(move || {
            let _keep = &dir;
            store
                .flush()
                .wait_blocking()
                .expect("the store writer is running");
        }),
    })
}

#[test]
fn the_durable_log_survives_a_reopen_with_floors_and_frames_intact() {
    let dir = tempfile::tempdir().unwrap();
    let limits = RetentionLimits {
        max_events: 8,
        max_bytes: usize::MAX,
    };
    let (a, b) = (session("a"), session("b"));
    let frames: Vec<LogEntry> = {
        let (log, store) = sqlite_backend_in(dir.path(), limits);
        log.create(&a).unwrap();
        log.create(&b).unwrap();
        for n in 1..=12 {
            log.append(&a, &draft(n)).unwrap();
        }
        log.append(&b, &draft(1)).unwrap();
        store
            .flush()
            .wait_blocking()
            .expect("the store writer is running");
        log.release_through(&b, 1).unwrap();
        store
            .flush()
            .wait_blocking()
            .expect("the store writer is running");
        log.read_after(&a, 4, ALL).unwrap()
    };
    let (reopened, _store) = sqlite_backend_in(dir.path(), limits);
    assert_eq!(
        reopened.bounds(&a).unwrap(),
        LogBounds {
            floor: 4,
            newest: 12
        }
    );
    assert_eq!(
        reopened.read_after(&a, 4, ALL).unwrap(),
        frames,
        "the same bytes come back"
    );
    assert_eq!(
        reopened.bounds(&b).unwrap(),
        LogBounds {
            floor: 1,
            newest: 1
        }
    );
    assert_eq!(
        reopened.append(&a, &draft(13)).unwrap(),
        13,
        "sequencing continues"
    );
}

#[test]
fn appending_far_beyond_the_write_queue_never_deadlocks() {
    // The writer marks events durable while an appender may be waiting for
    // room in the queue with the session's lock held; the two must never
    // wait on each other.
    let dir = tempfile::tempdir().unwrap();
    let (log, store) = sqlite_backend_in(
        dir.path(),
        RetentionLimits {
            max_events: 1_000_000,
            max_bytes: usize::MAX,
        },
    );
    let sid = session("s");
    log.create(&sid).unwrap();
    let (done_sender, done) = std::sync::mpsc::channel();
    let appender = {
        let log = log.clone();
        let sid = sid.clone();
        std::thread::spawn(move || {
            for n in 1..=200_000 {
                log.append(&sid, &draft(n)).unwrap();
            }
            let _ = done_sender.send(());
        })
    };
    done.recv_timeout(std::time::Duration::from_secs(120))
        .expect("200k appends finish (no deadlock)");
    appender.join().unwrap();
    store
        .flush()
        .wait_blocking()
        .expect("the store writer is running");
    assert_eq!(log.bounds(&sid).unwrap().newest, 200_000);
}

#[test]
fn events_are_invisible_until_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (log, store) = sqlite_backend_in(
        dir.path(),
        RetentionLimits {
            max_events: 100,
            max_bytes: usize::MAX,
        },
    );
    let sid = session("s");
    log.create(&sid).unwrap();
    let mut watch = log.watch_newest(&sid).unwrap();
    log.append(&sid, &draft(1)).unwrap();
    store
        .flush()
        .wait_blocking()
        .expect("the store writer is running");
    assert_eq!(watch.borrow_and_update(), 1, "visible once committed");
    assert_eq!(log.read_after(&sid, 0, ALL).unwrap().len(), 1);
}

#[test]
fn a_foreign_database_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("arcp-gateway.sqlite3");
    std::fs::write(
        &path,
        b"this is not a database, just some bytes that are long enough to matter....",
    )
    .unwrap();
    let error = SqliteStore::open(dir.path())
        .err()
        .expect("garbage refused")
        .to_string();
    assert!(error.contains("arcp-gateway.sqlite3"), "{error}");
    drop(std::fs::remove_file(&path));
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch("CREATE TABLE accounts (id INTEGER PRIMARY KEY);")
        .unwrap();
    drop(other);
    let error = SqliteStore::open(dir.path())
        .err()
        .expect("foreign refused")
        .to_string();
    assert!(error.contains("not an arcp-gateway database"), "{error}");
}

macro_rules! backend_conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            fn make(limits: RetentionLimits) -> Arc<dyn EventLog> {
                ($make)(limits)
            }

            fn unlimited() -> Arc<dyn EventLog> {
                make(RetentionLimits {
                    max_events: usize::MAX,
                    max_bytes: usize::MAX,
                })
            }

            #[test]
            fn sequences_start_at_one_and_have_no_gaps() {
                super::sequences_start_at_one_and_have_no_gaps(unlimited());
            }

            #[test]
            fn sessions_have_independent_sequences() {
                super::sessions_have_independent_sequences(unlimited());
            }

            #[test]
            fn appending_to_each_numbers_every_log_on_its_own() {
                super::appending_to_each_numbers_every_log_on_its_own(unlimited());
            }

            #[test]
            fn reads_are_bounded_and_resume_from_any_cursor() {
                super::reads_are_bounded_and_resume_from_any_cursor(unlimited());
            }

            #[test]
            fn retention_limits_evict_the_oldest_and_raise_the_floor() {
                super::retention_limits_evict_the_oldest_and_raise_the_floor(make);
            }

            #[test]
            fn chunks_join_exactly_the_frames_read_after_returns() {
                super::chunks_join_exactly_the_frames_read_after_returns(unlimited());
            }

            #[test]
            fn release_frees_acknowledged_events() {
                super::release_frees_acknowledged_events(unlimited());
            }

            #[test]
            fn reads_across_many_blocks_return_exactly_the_frames() {
                super::reads_across_many_blocks_return_exactly_the_frames(unlimited());
            }

            #[test]
            fn live_reads_then_a_full_replay_give_the_same_bytes() {
                super::live_reads_then_a_full_replay_give_the_same_bytes(unlimited());
            }

            #[test]
            fn eviction_across_blocks_keeps_reads_correct() {
                super::eviction_across_blocks_keeps_reads_correct(make);
            }

            #[test]
            fn a_frame_larger_than_a_block_is_read_whole() {
                super::a_frame_larger_than_a_block_is_read_whole(unlimited());
            }

            #[test]
            fn fan_out_copies_read_like_appended_events() {
                super::fan_out_copies_read_like_appended_events(unlimited());
            }

            #[test]
            fn fan_out_copies_evict_like_appended_events() {
                super::fan_out_copies_evict_like_appended_events(make);
            }

            #[test]
            fn watchers_see_appends_and_removal() {
                super::watchers_see_appends_and_removal(unlimited());
            }

            #[test]
            fn a_session_reader_reads_what_reads_by_id_read_until_the_log_goes() {
                super::a_session_reader_reads_what_reads_by_id_read_until_the_log_goes(unlimited());
            }
        }
    };
}

backend_conformance!(memory, memory_backend);
backend_conformance!(memory_deferred, memory_deferred_backend);
backend_conformance!(sqlite, sqlite_backend);
