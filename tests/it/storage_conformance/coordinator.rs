//! Sessions, streams, leases, the reaper, idempotency and subscriptions
//! (`Coordinator`), on both backends.

use super::*;

on_both_backends!(
    an_expired_lease_gets_exactly_one_terminal_from_racing_reapers,
    a_node_that_lost_its_lease_cannot_append,
    idempotency_keys_are_set_once_per_principal,
    generations_are_consumed_then_issued,
    a_new_stream_ends_the_old_one_on_its_node,
    cancel_reaches_the_owning_node,
    subscriptions_are_shared,
    shared_session_state_acks_and_close_reach_every_node,
    jobs_are_listed_per_principal_and_located_by_id,
);

async fn shared_session_state_acks_and_close_reach_every_node<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let session = new_session(&a).await;
    let state = b
        .session_state(&session)
        .await
        .expect("state on another node");
    assert_eq!((state.issued, state.used, state.closed), (1, 0, false));
    assert_eq!(state.acked, None);
    assert_eq!(a.acknowledge(&session, 5).await, Ok(5));
    // An older acknowledgement changes nothing (§6.5).
    assert_eq!(b.acknowledge(&session, 3).await, Ok(5));
    let mut notices = a.notices();
    let holder = StreamHolder {
        node: "n1".into(),
        stream: 7,
    };
    b.attach(&session, Some(1), &holder).await.expect("attach");
    let state = b.session_state(&session).await.expect("state");
    assert_eq!(state.holder.as_ref(), Some(&holder));
    assert_eq!((state.used, state.issued, state.acked), (1, 2, Some(5)));
    // Closing through node 2 tells node 1, whose stream it was.
    assert_eq!(b.close_session(&session).await, Ok(Some(holder)));
    let notice = tokio::time::timeout(Duration::from_secs(5), notices.recv())
        .await
        .expect("close notice within 5 s")
        .expect("notice");
    assert_eq!(
        notice,
        NodeNotice::SessionClosed {
            session_id: session.clone(),
            stream: 7
        }
    );
    let state = a.session_state(&session).await.expect("state");
    assert!(state.closed);
    assert_eq!(state.holder, None);
    assert_eq!(a.close_session(&session).await, Ok(None));
    harness.lose_everything().await;
    assert_eq!(
        b.session_state(&session).await,
        Err(StorageError::Gone(GoneReason::SessionMissing))
    );
}

async fn jobs_are_listed_per_principal_and_located_by_id<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let first = new_session(&a).await;
    let second = new_session(&b).await;
    let jobs = [
        new_job(&a, &first).await,
        new_job(&b, &second).await,
        new_job(&a, &first).await,
    ];
    assert_eq!(b.locate_job(&jobs[0]).await, Ok(first.clone()));
    assert_eq!(a.locate_job(&jobs[1]).await, Ok(second.clone()));
    assert_eq!(
        a.locate_job(&JobId::generate()).await,
        Err(StorageError::NotFound)
    );
    let alice = Principal::new("alice");
    let all = b.list_jobs(&alice, 0, 10).await.expect("list");
    let listed: Vec<&JobId> = all.iter().map(|(_, record)| &record.job_id).collect();
    assert_eq!(listed, jobs.iter().collect::<Vec<_>>());
    // Pages continue after the last position seen, in submission order.
    let page = a.list_jobs(&alice, 0, 2).await.expect("page");
    assert_eq!(page.len(), 2);
    let rest = a.list_jobs(&alice, page[1].0, 2).await.expect("rest");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].1.job_id, jobs[2]);
    assert!(a
        .list_jobs(&Principal::new("mallory"), 0, 10)
        .await
        .expect("other principal")
        .is_empty());
    // The terminal payload is kept with the record.
    let lease = a
        .acquire_lease(&first, &jobs[0], 5_000)
        .await
        .expect("lease");
    let terminal = serde_json::json!({ "final_status": "success" });
    a.finish_job(&lease, JobStatus::Succeeded, &terminal)
        .await
        .expect("finish");
    let record = b.job(&first, &jobs[0]).await.expect("record");
    assert_eq!(record.status, JobStatus::Succeeded);
    assert_eq!(record.terminal, Some(terminal));
}

/// What the reaper records as a lost job's terminal.
fn node_lost_payload() -> serde_json::Value {
    serde_json::json!({"final_status": "error", "code": "INTERNAL_ERROR", "retryable": true})
}

fn node_lost(session: &SessionId, job: &JobId) -> Bytes {
    Bytes::from(format!(
        "{{\"session\":\"{session}\",\"job\":\"{job}\",\"error\":\"INTERNAL_ERROR\",\"message\":\"gateway node lost\"}}"
    ))
}

async fn an_expired_lease_gets_exactly_one_terminal_from_racing_reapers<H: Harness>(harness: H) {
    let owner = harness.node("n1").await;
    let reapers = [
        harness.node("n2").await,
        harness.node("n3").await,
        harness.node("n4").await,
    ];
    let session = new_session(&owner).await;
    let mut jobs = Vec::new();
    for _ in 0..5 {
        let job = new_job(&owner, &session).await;
        let lease = owner
            .acquire_lease(&session, &job, 1_000)
            .await
            .expect("lease");
        let first = Append {
            fence: Some(lease.clone()),
            ..event(&session, &job, 1)
        };
        stored(&owner, first).await;
        jobs.push((job, lease));
    }
    // A job that ends properly is never reaped.
    let (done, done_lease) = jobs.pop().expect("a job");
    let last = Append {
        fence: Some(done_lease.clone()),
        ..terminal(&session, &done, 2)
    };
    stored(&owner, last).await;
    owner
        .finish_job(
            &done_lease,
            JobStatus::Succeeded,
            &serde_json::json!({"final_status": "success"}),
        )
        .await
        .expect("finish");
    let before = owner.bounds(&session).await.expect("bounds").newest;

    // Nothing is reaped while leases live.
    let now = now_ms();
    assert_eq!(
        reapers[0]
            .reap_expired(now, 100, &node_lost, &node_lost_payload())
            .await,
        Ok(vec![])
    );
    // The owner node dies: nothing renews. The reapers race.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let now = now_ms();
    let payload = node_lost_payload();
    let (r1, r2, r3) = tokio::join!(
        reapers[0].reap_expired(now, 100, &node_lost, &payload),
        reapers[1].reap_expired(now, 100, &node_lost, &payload),
        reapers[2].reap_expired(now, 100, &node_lost, &payload),
    );
    let mut reaped: Vec<_> = [r1, r2, r3]
        .into_iter()
        .flat_map(|result| result.expect("reap"))
        .collect();
    reaped.sort_by(|x, y| x.job_id.cmp(&y.job_id));
    let mut expected: Vec<JobId> = jobs.iter().map(|(job, _)| job.clone()).collect();
    expected.sort();
    assert_eq!(
        reaped.iter().map(|r| r.job_id.clone()).collect::<Vec<_>>(),
        expected,
        "each lost job reaped once, across all reapers"
    );
    let events = owner.read_after(&session, 0, ALL).await.expect("read");
    assert_eq!(events.len() as u64, before + jobs.len() as u64);
    for (job, lease) in &jobs {
        let theirs: Vec<_> = events.iter().filter(|e| &e.job_id == job).collect();
        assert_eq!(
            theirs.len(),
            2,
            "the event before the loss, then one terminal"
        );
        assert_eq!(theirs[1].body, node_lost(&session, job));
        let record = reapers[0].job(&session, job).await.expect("job record");
        assert_eq!(record.status, JobStatus::Lost);
        assert_eq!(
            record.terminal,
            Some(node_lost_payload()),
            "the record keeps the terminal that was appended"
        );
        assert_eq!(record.owner.as_deref(), Some("n1"));
        // The old owner comes back: nothing more of that job is stored.
        let zombie = Append {
            fence: Some(lease.clone()),
            ..event(&session, job, 2)
        };
        assert_eq!(
            owner.append_batch(&[zombie]).await,
            Err(StorageError::Fenced)
        );
        let unfenced = event(&session, job, 2);
        assert!(matches!(
            owner.append_batch(&[unfenced]).await,
            Err(StorageError::JobClosed { .. })
        ));
    }
    assert_eq!(
        owner.job(&session, &done).await.map(|j| j.status),
        Ok(JobStatus::Succeeded)
    );
    // A later pass finds nothing.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        reapers[1]
            .reap_expired(now_ms(), 100, &node_lost, &node_lost_payload())
            .await,
        Ok(vec![])
    );
}

async fn a_node_that_lost_its_lease_cannot_append<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let session = new_session(&a).await;
    let job = new_job(&a, &session).await;
    assert_eq!(
        a.acquire_lease(&session, &JobId::generate(), 1000).await,
        Err(StorageError::NotFound)
    );
    let old = a.acquire_lease(&session, &job, 1_000).await.expect("lease");
    assert_eq!(
        b.acquire_lease(&session, &job, 1_000).await,
        Err(StorageError::LeaseHeld)
    );
    assert_eq!(a.renew_lease(&old, 1_000).await, Ok(false));
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    // The lease lapsed (a long GC pause, a partition); another node took it.
    let new = b.acquire_lease(&session, &job, 5000).await.expect("lease");
    assert_ne!(new.token, old.token);
    let stale = Append {
        fence: Some(old.clone()),
        ..event(&session, &job, 1)
    };
    assert_eq!(a.append_batch(&[stale]).await, Err(StorageError::Fenced));
    assert_eq!(a.renew_lease(&old, 1_000).await, Err(StorageError::Fenced));
    assert_eq!(
        a.finish_job(&old, JobStatus::Failed, &serde_json::Value::Null)
            .await,
        Err(StorageError::Fenced)
    );
    let fresh = Append {
        fence: Some(new.clone()),
        ..event(&session, &job, 1)
    };
    assert_eq!(stored(&b, fresh).await, 1);
    assert_eq!(b.renew_lease(&new, 5000).await, Ok(false));
    assert_eq!(
        a.job(&session, &job).await.unwrap().owner.as_deref(),
        Some("n2")
    );
}

async fn idempotency_keys_are_set_once_per_principal<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let alice = Principal::new("alice");
    let bob = Principal::new("bob");
    let first = IdempotencyRecord {
        session_id: SessionId::generate(),
        job_id: JobId::generate(),
        fingerprint: "f1".into(),
    };
    let second = IdempotencyRecord {
        job_id: JobId::generate(),
        fingerprint: "f2".into(),
        ..first.clone()
    };
    assert_eq!(
        a.claim_idempotency(&alice, "key-1", &first, 60_000).await,
        Ok(IdempotencyClaim::Claimed)
    );
    assert_eq!(
        b.claim_idempotency(&alice, "key-1", &second, 60_000).await,
        Ok(IdempotencyClaim::Existing(first.clone())),
        "a resubmission through another node finds the first job"
    );
    assert_eq!(
        b.claim_idempotency(&bob, "key-1", &second, 60_000).await,
        Ok(IdempotencyClaim::Claimed),
        "another principal's key never meets alice's"
    );
    // Racing claims on two nodes: exactly one wins.
    let (x, y) = tokio::join!(
        a.claim_idempotency(&alice, "race", &first, 60_000),
        b.claim_idempotency(&alice, "race", &second, 60_000),
    );
    let claimed = [&x, &y]
        .iter()
        .filter(|claim| ***claim == Ok(IdempotencyClaim::Claimed))
        .count();
    assert_eq!(claimed, 1, "{x:?} {y:?}");
    // Keys expire.
    assert_eq!(
        a.claim_idempotency(&alice, "short", &first, 100).await,
        Ok(IdempotencyClaim::Claimed)
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        b.claim_idempotency(&alice, "short", &second, 100).await,
        Ok(IdempotencyClaim::Claimed)
    );
}

async fn generations_are_consumed_then_issued<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let session = new_session(&a).await;
    assert_eq!(
        b.attach(&session, Some(1), &holder("n2", 1)).await,
        Ok((2, None))
    );
    assert_eq!(a.resume(&session, Some(2)).await, Ok(3));
    assert_eq!(
        b.resume(&session, Some(1)).await,
        Err(StorageError::GenerationSuperseded),
        "a consumed generation's elders stop working on every node"
    );
    assert_eq!(
        b.resume(&session, Some(99)).await,
        Err(StorageError::GenerationSuperseded),
        "a generation never issued is refused"
    );
    // Two nodes present the same (newest) generation at once: each gets its
    // own new generation, and afterwards the older of the two no longer works.
    let (h7, h8) = (holder("n1", 7), holder("n2", 8));
    let (x, y) = tokio::join!(
        a.attach(&session, Some(3), &h7),
        b.attach(&session, Some(3), &h8),
    );
    let (gx, gy) = (x.expect("attach").0, y.expect("attach").0);
    assert_eq!(BTreeSet::from([gx, gy]), BTreeSet::from([4, 5]));
    assert_eq!(a.resume(&session, Some(5)).await, Ok(6));
    assert_eq!(
        a.resume(&session, Some(4)).await,
        Err(StorageError::GenerationSuperseded)
    );
    // A closed session refuses a stream but a resume reopens it.
    a.close_session(&session).await.expect("close");
    assert_eq!(
        b.attach(&session, Some(6), &holder("n2", 9)).await,
        Err(StorageError::SessionClosed)
    );
    assert_eq!(b.resume(&session, Some(6)).await, Ok(7));
    assert_eq!(
        b.attach(&session, None, &holder("n2", 9))
            .await
            .map(|r| r.0),
        Ok(8)
    );
}

async fn next_notice(notices: &mut tokio::sync::broadcast::Receiver<NodeNotice>) -> NodeNotice {
    tokio::time::timeout(Duration::from_secs(5), notices.recv())
        .await
        .expect("a notice within 5 s")
        .expect("notice channel open")
}

async fn a_new_stream_ends_the_old_one_on_its_node<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let session = new_session(&a).await;
    let mut b_notices = b.notices();
    let mut a_notices = a.notices();
    let (generation, previous) = b
        .attach(&session, Some(1), &holder("n2", 41))
        .await
        .expect("attach on n2");
    assert_eq!(previous, None);
    let (_, previous) = a
        .attach(&session, Some(generation), &holder("n1", 42))
        .await
        .expect("attach on n1");
    assert_eq!(previous, Some(holder("n2", 41)));
    assert_eq!(
        next_notice(&mut b_notices).await,
        NodeNotice::StreamReplaced {
            session_id: session.clone(),
            stream: 41
        }
    );
    assert!(a_notices.try_recv().is_err(), "n1 was not told anything");
    // The replaced stream detaching changes nothing; the current one does.
    assert_eq!(b.detach(&session, &holder("n2", 41)).await, Ok(false));
    assert_eq!(b.detach(&session, &holder("n1", 42)).await, Ok(true));
    let (_, previous) = a
        .attach(&session, None, &holder("n1", 43))
        .await
        .expect("attach");
    assert_eq!(previous, None);
}

async fn cancel_reaches_the_owning_node<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let owner = harness.node("n2").await;
    let session = new_session(&a).await;
    let job = new_job(&a, &session).await;
    let mut notices = owner.notices();
    let lease = owner
        .acquire_lease(&session, &job, 5000)
        .await
        .expect("lease");
    assert_eq!(owner.renew_lease(&lease, 5000).await, Ok(false));
    assert_eq!(a.request_cancel(&session, &job).await, Ok("n2".to_owned()));
    assert_eq!(
        next_notice(&mut notices).await,
        NodeNotice::CancelRequested {
            session_id: session.clone(),
            job_id: job.clone()
        }
    );
    assert_eq!(
        owner.renew_lease(&lease, 5000).await,
        Ok(true),
        "renewal carries the cancel too, should the notice be lost"
    );
    assert!(a.job(&session, &job).await.unwrap().cancel_requested);
    assert_eq!(
        a.request_cancel(&session, &JobId::generate()).await,
        Err(StorageError::NotFound)
    );
}

async fn subscriptions_are_shared<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let owner = new_session(&a).await;
    let job = new_job(&a, &owner).await;
    let first = SessionId::generate();
    let second = SessionId::generate();
    b.subscribe(&second, &owner, &job).await.expect("subscribe");
    a.subscribe(&first, &owner, &job).await.expect("subscribe");
    a.subscribe(&first, &owner, &job).await.expect("again");
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(b.subscribers(&owner, &job).await, Ok(expected));
    assert_eq!(
        b.subscribe(&SessionId::generate(), &owner, &JobId::generate())
            .await,
        Err(StorageError::NotFound)
    );
}
