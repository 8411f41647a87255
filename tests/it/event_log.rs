//! The event-log backend contract, run against every backend. A new backend
//! adds one line to `backend_conformance!` invocations below.

use std::sync::Arc;

use arcp_gateway::event_log::{
    EventDraft, EventLog, EventLogError, LogBounds, MemoryEventLog, ReadLimit, RetentionLimits,
};
use arcp_gateway::http::sse::encode_job_event;
use arcp_gateway::ids::{JobId, SessionId};
use serde_json::json;

const ALL: ReadLimit = ReadLimit {
    max_entries: usize::MAX,
    max_bytes: usize::MAX,
};

fn draft(n: u64) -> EventDraft {
    EventDraft {
        message_type: "job.event",
        job_id: JobId::from_client("job_1"),
        trace_id: None,
        payload: json!({"kind": "progress", "body": {"current": n}}),
    }
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
    assert_eq!(*watch.borrow_and_update(), 0);
    log.append(&sid, &draft(1)).unwrap();
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), 1);
    log.remove(&sid);
    assert!(watch.has_changed().is_err(), "removal closes the watch");
    assert_eq!(
        log.append(&sid, &draft(2)),
        Err(EventLogError::UnknownSession)
    );
    assert_eq!(log.bounds(&sid), Err(EventLogError::UnknownSession));
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
            fn reads_are_bounded_and_resume_from_any_cursor() {
                super::reads_are_bounded_and_resume_from_any_cursor(unlimited());
            }

            #[test]
            fn retention_limits_evict_the_oldest_and_raise_the_floor() {
                super::retention_limits_evict_the_oldest_and_raise_the_floor(make);
            }

            #[test]
            fn release_frees_acknowledged_events() {
                super::release_frees_acknowledged_events(unlimited());
            }

            #[test]
            fn watchers_see_appends_and_removal() {
                super::watchers_see_appends_and_removal(unlimited());
            }
        }
    };
}

backend_conformance!(
    memory,
    |limits| Arc::new(MemoryEventLog::new(limits, encode_job_event)) as Arc<dyn EventLog>
);
