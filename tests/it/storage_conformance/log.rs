//! The event log properties (`EventStore`), on both backends.

use super::*;

on_both_backends!(
    sequence_is_gap_free_under_concurrent_appenders_on_two_nodes,
    a_retried_append_is_not_stored_twice,
    nothing_of_a_job_follows_its_terminal,
    retention_by_count_bytes_and_acks_reports_gone_honestly,
    lost_state_is_gone_and_never_renumbered,
    readers_on_another_node_are_woken_by_appends,
);

async fn sequence_is_gap_free_under_concurrent_appenders_on_two_nodes<H: Harness>(harness: H) {
    const JOBS_PER_NODE: usize = 3;
    const EVENTS_PER_JOB: u64 = 60;
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let session = new_log(&a, ROOMY).await;
    let mut tasks = Vec::new();
    for node in [&a, &b] {
        for _ in 0..JOBS_PER_NODE {
            let node = node.clone();
            let session = session.clone();
            tasks.push(tokio::spawn(async move {
                let job = JobId::generate();
                let mut seqs = Vec::new();
                // Batches of three, as a job with subscribers would send.
                for first in (1..=EVENTS_PER_JOB).step_by(3) {
                    let batch: Vec<Append> = (first..first + 3)
                        .map(|index| event(&session, &job, index))
                        .collect();
                    for outcome in node.append_batch(&batch).await.expect("append") {
                        match outcome {
                            AppendOutcome::Stored(seq) => seqs.push(seq),
                            other => panic!("fresh append reported {other:?}"),
                        }
                    }
                }
                (job, seqs)
            }));
        }
    }
    let mut all = BTreeSet::new();
    let mut per_job = Vec::new();
    for task in tasks {
        let (job, seqs) = task.await.expect("appender task");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "a job's seqs rise");
        all.extend(seqs.iter().copied());
        per_job.push((job, seqs));
    }
    let total = (2 * JOBS_PER_NODE) as u64 * EVENTS_PER_JOB;
    assert_eq!(all, (1..=total).collect(), "every seq once, no gap");
    let events = b.read_after(&session, 0, ALL).await.expect("read");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    for (job, seqs) in per_job {
        for (offset, seq) in seqs.iter().enumerate() {
            let stored = &events[(*seq - 1) as usize];
            assert_eq!(stored.job_id, job);
            assert_eq!(
                stored.body,
                body(&job, offset as u64 + 1),
                "bytes as appended"
            );
        }
    }
    assert_eq!(
        a.bounds(&session).await,
        Ok(LogBounds {
            floor: 0,
            newest: total
        })
    );
}

async fn a_retried_append_is_not_stored_twice<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let session = new_log(&a, ROOMY).await;
    let job = JobId::generate();
    let other = JobId::generate();
    assert_eq!(stored(&a, event(&session, &job, 1)).await, 1);
    assert_eq!(stored(&a, event(&session, &other, 1)).await, 2);
    assert_eq!(stored(&a, event(&session, &job, 2)).await, 3);
    // The reply of the last batch was "lost": the same batch again, through
    // another node, stores nothing.
    let retry = [event(&session, &job, 1), event(&session, &job, 2)];
    assert_eq!(
        b.append_batch(&retry).await,
        Ok(vec![
            AppendOutcome::Duplicate(None),
            AppendOutcome::Duplicate(Some(3))
        ])
    );
    // A partly applied batch: the applied part is skipped, the rest stored.
    let retry = [event(&session, &job, 2), event(&session, &job, 3)];
    assert_eq!(
        b.append_batch(&retry).await,
        Ok(vec![
            AppendOutcome::Duplicate(Some(3)),
            AppendOutcome::Stored(4)
        ])
    );
    let events = a.read_after(&session, 0, ALL).await.expect("read");
    assert_eq!(events.len(), 4);
    assert_eq!(events[3].body, body(&job, 3));
}

async fn nothing_of_a_job_follows_its_terminal<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let session = new_log(&a, ROOMY).await;
    let job = JobId::generate();
    assert_eq!(stored(&a, event(&session, &job, 1)).await, 1);
    assert_eq!(stored(&a, terminal(&session, &job, 2)).await, 2);
    assert_eq!(
        a.append_batch(&[terminal(&session, &job, 2)]).await,
        Ok(vec![AppendOutcome::Duplicate(Some(2))]),
        "a retried terminal is a duplicate"
    );
    assert_eq!(
        a.append_batch(&[event(&session, &job, 3)]).await,
        Err(StorageError::JobClosed { terminal_seq: 2 })
    );
    assert_eq!(a.bounds(&session).await.map(|b| b.newest), Ok(2));
}

async fn retention_by_count_bytes_and_acks_reports_gone_honestly<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let job = JobId::generate();
    // By count.
    let by_count = new_log(
        &a,
        Retention {
            max_events: 5,
            max_bytes: 1 << 20,
        },
    )
    .await;
    for index in 1..=10 {
        stored(&a, event(&by_count, &job, index)).await;
    }
    assert_eq!(
        b.bounds(&by_count).await,
        Ok(LogBounds {
            floor: 5,
            newest: 10
        })
    );
    assert_eq!(
        b.read_after(&by_count, 4, ALL).await,
        Err(StorageError::Gone(GoneReason::Evicted { floor: 5 }))
    );
    let kept = b.read_after(&by_count, 5, ALL).await.expect("read");
    assert_eq!(
        kept.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![6, 7, 8, 9, 10]
    );
    assert_eq!(
        b.read_after(&by_count, 11, ALL).await,
        Err(StorageError::RolledBack {
            cursor: 11,
            newest: 10
        })
    );
    assert_eq!(b.read_after(&by_count, 10, ALL).await, Ok(vec![]));
    // A read budget: by count, then by bytes (at least one event).
    let budget = ReadBudget {
        max_events: 2,
        max_bytes: usize::MAX,
    };
    assert_eq!(b.read_after(&by_count, 5, budget).await.unwrap().len(), 2);
    let budget = ReadBudget {
        max_events: 100,
        max_bytes: 1,
    };
    assert_eq!(b.read_after(&by_count, 5, budget).await.unwrap().len(), 1);

    // By bytes: each body is the same size; three fit.
    let size = body(&job, 1).len() as u64;
    let by_bytes = new_log(
        &a,
        Retention {
            max_events: 1000,
            max_bytes: 3 * size + size / 2,
        },
    )
    .await;
    for index in 1..=9 {
        stored(&a, event(&by_bytes, &job, index)).await;
    }
    assert_eq!(
        b.bounds(&by_bytes).await,
        Ok(LogBounds {
            floor: 6,
            newest: 9
        })
    );
    // One event larger than the cap is still kept (the newest always is).
    let huge = Append {
        body: Bytes::from(vec![b'x'; (4 * size) as usize]),
        ..event(&by_bytes, &job, 10)
    };
    assert_eq!(stored(&a, huge).await, 10);
    assert_eq!(
        b.bounds(&by_bytes).await,
        Ok(LogBounds {
            floor: 9,
            newest: 10
        })
    );
    // Then the bytes are counted right again after it leaves.
    for index in 11..=13 {
        stored(&a, event(&by_bytes, &job, index)).await;
    }
    assert_eq!(b.bounds(&by_bytes).await.map(|b| b.floor), Ok(10));

    // By acks (§6.5), from another node.
    let acked = new_log(&a, ROOMY).await;
    for index in 1..=6 {
        stored(&a, event(&acked, &job, index)).await;
    }
    assert_eq!(
        b.release_through(&acked, 4).await,
        Ok(LogBounds {
            floor: 4,
            newest: 6
        })
    );
    assert_eq!(
        a.release_through(&acked, 2).await.map(|b| b.floor),
        Ok(4),
        "acks never go backwards"
    );
    assert_eq!(
        a.read_after(&acked, 3, ALL).await,
        Err(StorageError::Gone(GoneReason::Evicted { floor: 4 }))
    );
    assert_eq!(
        a.release_through(&acked, 99).await,
        Ok(LogBounds {
            floor: 6,
            newest: 6
        }),
        "an ack beyond the newest stops at the newest"
    );
    assert_eq!(stored(&a, event(&acked, &job, 7)).await, 7);
    assert_eq!(a.read_after(&acked, 6, ALL).await.unwrap().len(), 1);
}

async fn lost_state_is_gone_and_never_renumbered<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let session = new_session(&a).await;
    let job = JobId::generate();
    for index in 1..=3 {
        stored(&a, event(&session, &job, index)).await;
    }
    harness.lose_everything().await;
    assert_gone(b.read_after(&session, 2, ALL).await);
    assert_gone(b.read_after(&session, 0, ALL).await);
    assert_gone(b.bounds(&session).await);
    assert_gone(b.session(&session).await);
    assert_gone(b.attach(&session, Some(1), &holder("n2", 1)).await);
    assert_gone(b.resume(&session, Some(1)).await);
    // The job keeps appending: refused, never restarted at seq 1.
    assert_gone(a.append_batch(&[event(&session, &job, 4)]).await);
    assert_gone(b.release_through(&session, 3).await);
    assert_gone(b.bounds(&session).await);
}

fn assert_gone<T: std::fmt::Debug>(result: Result<T, StorageError>) {
    match result {
        Err(StorageError::Gone(GoneReason::SessionMissing)) => {}
        other => panic!("expected Gone(SessionMissing), got {other:?}"),
    }
}

async fn readers_on_another_node_are_woken_by_appends<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let session = new_log(&a, ROOMY).await;
    let job = JobId::generate();
    let mut wake = b.watch(&session).await.expect("watch");
    wake.mark_unchanged();
    let mut cursor = 0;
    for index in 1..=20 {
        stored(&a, event(&session, &job, index)).await;
        // Wait for a wake only when the log has nothing new for us: a wake
        // is a hint, the log is the truth.
        loop {
            let events = b.read_after(&session, cursor, ALL).await.expect("read");
            if let Some(last) = events.last() {
                cursor = last.seq;
                break;
            }
            tokio::time::timeout(Duration::from_secs(5), wake.changed())
                .await
                .expect("a wake-up within 5 s of an append on another node")
                .expect("watch open");
        }
    }
    assert_eq!(cursor, 20);
}
