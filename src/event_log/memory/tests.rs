use super::blocks::{MAX_BLOCK_CAPACITY, MIN_BLOCK_CAPACITY};
use super::session_log::MAX_COPIED_CHUNK;
use super::*;
use crate::event_log::EncodedFrame;
use std::sync::Mutex;

/// A frame of exactly `len` bytes for draft payload `{"len": len}`.
fn encode(_: &SessionId, seq: EventSeq, draft: &EventDraft) -> EncodedFrame {
    let len = draft.payload["len"].as_u64().unwrap_or(16) as usize;
    let mut frame = format!("id: {seq}\n").into_bytes();
    frame.resize(len.max(frame.len() + 2) - 2, b'x');
    frame.extend_from_slice(b"\n\n");
    EncodedFrame {
        envelope: 0..0,
        frame: Bytes::from(frame),
    }
}

fn draft(len: usize) -> EventDraft {
    EventDraft::new(
        "job.event",
        JobId::from_client("job_1"),
        None,
        serde_json::json!({ "len": len }),
    )
}

const ALL: ReadLimit = ReadLimit {
    max_entries: usize::MAX,
    max_bytes: usize::MAX,
};

#[test]
fn budgets_shared_across_sessions_evict_from_the_appending_session() {
    let budget = Arc::new(RetentionBudget::new(10_000, 4_000));
    let limits = RetentionLimits {
        max_events: usize::MAX,
        max_bytes: usize::MAX,
    };
    let log = MemoryEventLog::with_budget(limits, encode, budget.clone());
    let (alice, bob) = (Principal::new("alice"), Principal::new("bob"));
    let a1 = SessionId::from_client("a1");
    let a2 = SessionId::from_client("a2");
    let b1 = SessionId::from_client("b1");
    log.create_owned(&a1, &alice).unwrap();
    log.create_owned(&a2, &alice).unwrap();
    log.create_owned(&b1, &bob).unwrap();
    for _ in 0..3 {
        log.append(&a1, &draft(1_000)).unwrap();
    }
    assert_eq!(budget.used_by(&alice), 3_000);
    // a2 pushes alice past her 4,000: a2 gives up its own oldest, not a1's.
    for _ in 0..3 {
        log.append(&a2, &draft(1_000)).unwrap();
    }
    assert_eq!(log.bounds(&a1).unwrap().floor, 0, "a1 keeps its history");
    assert_eq!(log.bounds(&a2).unwrap().floor, 2, "a2 evicted its own");
    assert_eq!(budget.used_by(&alice), 4_000);
    // One event always stays, however large.
    log.append(&a2, &draft(5_000)).unwrap();
    assert_eq!(log.read_after(&a2, 3, ALL).unwrap().len(), 1);
    assert_eq!(budget.used_by(&alice), 8_000);
    // Bob fills the gateway-wide budget: his own session pays.
    for _ in 0..5 {
        log.append(&b1, &draft(1_000)).unwrap();
    }
    assert!(budget.used_by(&bob) <= 2_000 + 1_000);
    assert!(budget.global().used() <= 10_000 + 1_000);
    assert_eq!(log.bounds(&a1).unwrap().floor, 0);
    // Acknowledging, and removing a log, give the bytes back.
    log.release_through(&a1, 3).unwrap();
    assert_eq!(budget.used_by(&alice), 5_000);
    log.remove(&a2);
    log.remove(&b1);
    assert_eq!(budget.used_by(&alice), 0);
    assert_eq!(budget.global().used(), 0);
}

fn log(max_events: usize) -> (MemoryEventLog, SessionId) {
    let log = MemoryEventLog::new(
        RetentionLimits {
            max_events,
            max_bytes: usize::MAX,
        },
        encode,
    );
    let sid = SessionId::from_client("s");
    log.create(&sid).unwrap();
    (log, sid)
}

/// (sealed blocks, their bytes, tail capacity) of a session.
fn blocks(log: &MemoryEventLog, sid: &SessionId) -> (usize, usize, usize) {
    let slot = log.session(sid).unwrap();
    let log = slot.lock();
    let bytes = log.blocks.sealed.iter().map(Bytes::len).sum();
    (log.blocks.sealed.len(), bytes, log.blocks.tail.capacity())
}

/// Every chunk of a full replay: (cursor before, last seq, bytes).
fn replay(log: &MemoryEventLog, sid: &SessionId) -> Vec<(EventSeq, EventSeq, Bytes)> {
    let (mut chunks, mut cursor) = (Vec::new(), 0);
    while let Some((last, chunk)) = log.read_chunk_after(sid, cursor, ALL).unwrap() {
        chunks.push((cursor, last, chunk));
        cursor = last;
    }
    chunks
}

/// A head encoder for deferred copies: `id: <seq>\n`, then the envelope.
fn head(frame: &mut Vec<u8>, _: &SessionId, seq: EventSeq, _: &str, id: &str) -> usize {
    frame.extend_from_slice(format!("id: {seq}\n{id} ").as_bytes());
    frame.len()
}

#[test]
fn fan_out_copies_share_the_job_envelope_and_keep_no_frames() {
    let (log, sid) = log(usize::MAX);
    log.defer_fan_out(head);
    let other = SessionId::from_client("other");
    log.create(&other).unwrap();
    for n in 1..=100 {
        log.append_each(&[&sid, &other], &draft(300 + n));
    }
    assert_eq!(blocks(&log, &sid), (0, 0, 0), "no frame copied in");
    let slot = log.session(&sid).unwrap();
    let shared: Vec<*const u8> = {
        let inner = slot.lock();
        inner
            .entries
            .iter()
            .map(|entry| entry.deferred.as_ref().unwrap().shared.as_ptr())
            .collect()
    };
    let other_slot = log.session(&other).unwrap();
    let inner = other_slot.lock();
    for (entry, pointer) in inner.entries.iter().zip(shared) {
        assert_eq!(entry.deferred.as_ref().unwrap().shared.as_ptr(), pointer);
    }
    drop(inner);
    // Read whole, with the retained length counted per frame.
    let entries = log.read_after(&sid, 0, ALL).unwrap();
    assert_eq!(entries.len(), 100);
    let total: usize = entries.iter().map(|entry| entry.frame.len()).sum();
    assert_eq!(slot.lock().retained_bytes, total);
    let joined: Vec<u8> = entries.iter().flat_map(|e| e.frame.to_vec()).collect();
    let replayed: Vec<u8> = replay(&log, &sid)
        .into_iter()
        .flat_map(|(_, _, chunk)| chunk.to_vec())
        .collect();
    assert_eq!(replayed, joined);
    // A durable log writes whole frames: with a sink, copies are frames.
    let (durable, sid) = super::tests::log(usize::MAX);
    durable.attach_sink(Arc::new(RecordingSink::default()));
    durable.defer_fan_out(head);
    durable.append_each(&[&sid], &draft(300));
    assert!(durable.session(&sid).unwrap().lock().entries[0]
        .deferred
        .is_none());
}

#[test]
fn fan_out_copies_share_one_record_and_each_has_its_own_id() {
    let (log, sid) = log(usize::MAX);
    log.defer_fan_out(head);
    let others: Vec<SessionId> = (0..50)
        .map(|n| SessionId::from_client(&format!("other{n}")))
        .collect();
    for other in &others {
        log.create(other).unwrap();
    }
    let mut all = vec![&sid];
    all.extend(others.iter());
    log.append_each(&all, &draft(300));
    let record = |id: &SessionId| {
        let slot = log.session(id).unwrap();
        let inner = slot.lock();
        inner.entries.get(0).unwrap().deferred.clone().unwrap()
    };
    let first = record(&sid);
    for other in &others {
        assert!(Arc::ptr_eq(&first, &record(other)), "one record per event");
    }
    // The head writes `id: <seq>\n<envelope id> `.
    let id_of = |id: &SessionId| {
        let entries = log.read_after(id, 0, ALL).unwrap();
        let frame = String::from_utf8(entries[0].frame.to_vec()).unwrap();
        let (_, rest) = frame.split_once('\n').unwrap();
        ulid::Ulid::from_string(&rest[..ulid::ULID_LEN]).unwrap()
    };
    let ids: Vec<ulid::Ulid> = all.iter().map(|id| id_of(id)).collect();
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), all.len(), "every copy has an id of its own");
    assert!(ids
        .iter()
        .all(|id| id.timestamp_ms() == first.event_id.timestamp_ms()));
    let again: Vec<ulid::Ulid> = all.iter().map(|id| id_of(id)).collect();
    assert_eq!(ids, again, "every read writes the same id");
}

#[test]
fn reads_share_stored_memory_instead_of_copying() {
    let (log, sid) = log(usize::MAX);
    for _ in 0..5000 {
        log.append(&sid, &draft(200)).unwrap();
    }
    let first = replay(&log, &sid);
    let second = replay(&log, &sid);
    assert_eq!(first.len(), second.len());
    let joined: Vec<u8> = first.iter().flat_map(|(_, _, c)| c.to_vec()).collect();
    assert_eq!(joined.len(), 5000 * 200);
    // A slice of a block is the same memory each time; a copy is not.
    // Only the first, small blocks (while the session retained under
    // 64 KiB) are copied.
    let (mut shared, mut copied) = (0, 0);
    for ((after, last, chunk), (_, _, again)) in first.iter().zip(&second) {
        if chunk.as_ptr() != again.as_ptr() {
            copied += chunk.len();
            assert_eq!(shared, 0, "no copy after the first slice");
            continue;
        }
        shared += chunk.len();
        assert!(chunk.len() <= MAX_BLOCK_CAPACITY);
        let entries = log.read_after(&sid, *after, ALL).unwrap();
        assert_eq!(entries[0].frame.as_ptr(), chunk.as_ptr());
        if *last > *after + 1 {
            assert_eq!(
                entries[1].frame.as_ptr(),
                chunk[200..].as_ptr(),
                "frames lie back to back"
            );
        }
    }
    assert!(copied <= 96 * 1024, "{copied} bytes copied");
    assert_eq!(shared + copied, 5000 * 200);
}

#[test]
fn live_reads_seal_small_blocks_and_a_later_replay_is_coalesced() {
    let (log, sid) = log(usize::MAX);
    let mut live = Vec::new();
    for n in 1..=1000 {
        log.append(&sid, &draft(100)).unwrap();
        let (last, chunk) = log.read_chunk_after(&sid, n - 1, ALL).unwrap().unwrap();
        assert_eq!(last, n);
        live.extend_from_slice(&chunk);
    }
    assert_eq!(blocks(&log, &sid).0, 1000, "one block per live read");
    let mut replay = Vec::new();
    let mut cursor = 0;
    let mut chunks = 0;
    while let Some((last, chunk)) = log.read_chunk_after(&sid, cursor, ALL).unwrap() {
        cursor = last;
        chunks += 1;
        assert!(chunk.len() <= MAX_COPIED_CHUNK);
        replay.extend_from_slice(&chunk);
    }
    assert_eq!(replay, live);
    assert_eq!(chunks, 2, "100 KB of tiny blocks in 64 KiB copies");
}

#[test]
fn evicting_old_blocks_frees_them() {
    let (log, sid) = log(usize::MAX);
    for n in 1..=1000 {
        log.append(&sid, &draft(100)).unwrap();
        log.read_chunk_after(&sid, n - 1, ALL).unwrap();
    }
    assert_eq!(blocks(&log, &sid).0, 1000);
    log.release_through(&sid, 990).unwrap();
    assert_eq!(blocks(&log, &sid).0, 10, "only the blocks of 991..=1000");
    log.release_through(&sid, 1000).unwrap();
    assert_eq!(blocks(&log, &sid).0, 0, "nothing retained, no block");
    assert_eq!(log.append(&sid, &draft(100)).unwrap(), 1001);
    let (last, chunk) = log.read_chunk_after(&sid, 1000, ALL).unwrap().unwrap();
    assert_eq!(last, 1001);
    assert!(chunk.starts_with(b"id: 1001\n"));
}

#[test]
fn memory_stays_bounded_under_the_retention_limits() {
    for read_live in [false, true] {
        let (log, sid) = log(50);
        for n in 1..=20_000u64 {
            // Mixed sizes, some larger than a block.
            let len = match n % 97 {
                0 => 300 * 1024,
                k => 50 + (k as usize) * 40,
            };
            log.append(&sid, &draft(len)).unwrap();
            if read_live {
                log.read_chunk_after(&sid, n - 1, ALL).unwrap();
            }
            let (count, bytes, tail) = blocks(&log, &sid);
            let slot = log.session(&sid).unwrap();
            let inner = slot.lock();
            assert!(count <= 51, "{count} blocks for 50 entries");
            // Beyond the retained frames: at most the evicted front of
            // one block, plus the tail's room.
            assert!(
                bytes <= inner.retained_bytes + MAX_BLOCK_CAPACITY,
                "{bytes} sealed bytes for {} retained",
                inner.retained_bytes
            );
            assert!(tail <= MAX_BLOCK_CAPACITY);
        }
    }
}

#[test]
fn a_session_that_acknowledges_as_it_goes_keeps_small_blocks() {
    // Acknowledging everything now and then, or all but the last few
    // events every time: either way the session retains little, so its
    // allocations stay at the smallest size.
    for lag in [None, Some(5)] {
        let (log, sid) = log(usize::MAX);
        for n in 1..=10_000 {
            log.append(&sid, &draft(300)).unwrap();
            log.read_chunk_after(&sid, n - 1, ALL).unwrap();
            match lag {
                None if n % 10 == 0 => {
                    log.release_through(&sid, n).unwrap();
                    assert_eq!(blocks(&log, &sid), (0, 0, 0), "nothing left");
                }
                Some(lag) if n > lag => {
                    log.release_through(&sid, n - lag).unwrap();
                }
                _ => {}
            }
            let (count, _, tail) = blocks(&log, &sid);
            assert!(count <= 10, "{count} blocks");
            assert!(tail <= MIN_BLOCK_CAPACITY, "{tail} bytes of tail");
        }
    }
}

/// Random appends, reads and releases against a plain model: every read
/// returns exactly the frames the model holds, and the blocks stay in
/// proportion to what is retained.
#[test]
fn random_operations_match_a_simple_model() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let limits = RetentionLimits {
            max_events: rng.random_range(1..300),
            max_bytes: rng.random_range(1..2_000_000),
        };
        let log = MemoryEventLog::new(limits, encode);
        let sid = SessionId::from_client("s");
        log.create(&sid).unwrap();
        // Every frame ever appended, by seq (index 0 unused).
        let mut model: Vec<Bytes> = vec![Bytes::new()];
        for _ in 0..1500 {
            let bounds = log.bounds(&sid).unwrap();
            let limit = ReadLimit {
                max_entries: rng.random_range(1..200),
                max_bytes: rng.random_range(1..600_000),
            };
            match rng.random_range(0..10) {
                0..=4 => {
                    let len = match rng.random_range(0..100) {
                        0 => rng.random_range(200_000..400_000),
                        1..=5 => rng.random_range(5_000..40_000),
                        _ => rng.random_range(20..600),
                    };
                    let seq = log.append(&sid, &draft(len)).unwrap();
                    assert_eq!(seq, model.len() as u64);
                    let frame = encode(&sid, seq, &draft(len)).frame;
                    model.push(frame);
                }
                5..=7 => {
                    let after = rng.random_range(bounds.floor..=bounds.newest);
                    match log.read_chunk_after(&sid, after, limit).unwrap() {
                        None => assert_eq!(after, bounds.newest),
                        Some((last, chunk)) => {
                            assert!(after < last && last <= bounds.newest);
                            assert!(last - after <= limit.max_entries as u64);
                            assert!(last - after == 1 || chunk.len() <= limit.max_bytes);
                            let expected: Vec<u8> = model[after as usize + 1..=last as usize]
                                .iter()
                                .flat_map(|frame| frame.to_vec())
                                .collect();
                            assert_eq!(chunk.to_vec(), expected, "seed {seed}");
                        }
                    }
                }
                8 => {
                    let after = rng.random_range(bounds.floor..=bounds.newest);
                    let entries = log.read_after(&sid, after, limit).unwrap();
                    assert_eq!(entries.is_empty(), after == bounds.newest);
                    for (entry, seq) in entries.iter().zip(after + 1..) {
                        assert_eq!(entry.seq, seq);
                        assert_eq!(entry.frame, model[seq as usize], "seed {seed}");
                    }
                }
                _ => {
                    let up_to = rng.random_range(bounds.floor..=bounds.newest);
                    log.release_through(&sid, up_to).unwrap();
                }
            }
            let bounds = log.bounds(&sid).unwrap();
            let retained: usize = model[bounds.floor as usize + 1..]
                .iter()
                .map(Bytes::len)
                .sum();
            let slot = log.session(&sid).unwrap();
            let inner = slot.lock();
            assert_eq!(inner.retained_bytes, retained);
            assert!(inner.entries.len() <= limits.max_events);
            assert!(retained <= limits.max_bytes || inner.entries.len() == 1);
            assert!(inner.blocks.sealed.len() <= inner.entries.len() + 1);
            let sealed: usize = inner.blocks.sealed.iter().map(Bytes::len).sum();
            assert!(sealed <= retained + MAX_BLOCK_CAPACITY, "seed {seed}");
            assert!(inner.blocks.tail.capacity() <= MAX_BLOCK_CAPACITY);
        }
    }
}

/// Records what it is given; marks nothing durable by itself.
#[derive(Default)]
struct RecordingSink {
    appended: Mutex<Vec<LogEntry>>,
}

impl LogSink for RecordingSink {
    fn created(&self, _: &SessionId) {}
    fn appended(&self, _: &SessionId, entry: &LogEntry) {
        self.appended.lock().unwrap().push(entry.clone());
    }
    fn released(&self, _: &SessionId, _: EventSeq) {}
    fn removed(&self, _: &SessionId) {}
}

#[test]
fn with_a_sink_reads_stop_at_the_durable_watermark() {
    let log = MemoryEventLog::new(
        RetentionLimits {
            max_events: usize::MAX,
            max_bytes: usize::MAX,
        },
        encode,
    );
    let sink = Arc::new(RecordingSink::default());
    log.attach_sink(sink.clone());
    let sid = SessionId::from_client("s");
    log.create(&sid).unwrap();
    let joined = |from: u64, to: u64| -> Vec<u8> {
        (from..=to)
            .flat_map(|seq| encode(&sid, seq, &draft(300)).frame.to_vec())
            .collect()
    };
    for _ in 0..10 {
        log.append(&sid, &draft(300)).unwrap();
    }
    assert_eq!(log.read_chunk_after(&sid, 0, ALL).unwrap(), None);
    assert!(log.read_after(&sid, 0, ALL).unwrap().is_empty());
    log.mark_durable(&sid, 5);
    let (last, chunk) = log.read_chunk_after(&sid, 0, ALL).unwrap().unwrap();
    assert_eq!((last, chunk.to_vec()), (5, joined(1, 5)));
    for _ in 0..5 {
        log.append(&sid, &draft(300)).unwrap();
    }
    log.mark_durable(&sid, 12);
    let (last, chunk) = log.read_chunk_after(&sid, 5, ALL).unwrap().unwrap();
    assert_eq!((last, chunk.to_vec()), (12, joined(6, 12)));
    assert_eq!(log.read_after(&sid, 5, ALL).unwrap().len(), 7);
    assert_eq!(log.read_chunk_after(&sid, 12, ALL).unwrap(), None);
    // The sink got every frame, as the encoder made it.
    let appended = sink.appended.lock().unwrap();
    assert_eq!(appended.len(), 15);
    let sunk: Vec<u8> = appended.iter().flat_map(|e| e.frame.to_vec()).collect();
    assert_eq!(sunk, joined(1, 15));
}
