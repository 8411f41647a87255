//! Hundreds of dropped connections through round-robin nginx while jobs on
//! all three nodes append to one session: every reconnect may land on
//! another node, and the client still gets every event exactly once, with
//! the bytes a full replay sends.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;

use super::*;
use crate::support::cluster::{Cluster, ReadEnd, NODES};
use crate::support::ALICE_TOKEN;

/// Connections the client cuts (at least).
const DROPS: usize = 200;
/// Most connections are cut this many body bytes after the welcome (a few
/// events, often inside one).
const AFTER_WELCOME: std::ops::RangeInclusive<usize> = 1..=2500;

/// `ARCP_CLUSTER_SEED` replays a run; otherwise a random seed, printed.
fn seed() -> u64 {
    std::env::var("ARCP_CLUSTER_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(rand::random)
}

#[tokio::test]
async fn two_hundred_random_drops_through_nginx_lose_and_duplicate_nothing() {
    let cluster = Cluster::start().await;
    let nginx = cluster.nginx();
    let seed = seed();
    println!("cluster drops: seed {seed} (ARCP_CLUSTER_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);

    let session = nginx.create_session(ALICE_TOKEN).await;
    let sid = session.session_id.clone();
    // One ticker per node, submitted to the node directly so each runs
    // there; more are added whenever all have finished and drops remain.
    let mut jobs = Vec::new();
    for number in 1..=NODES {
        let node = cluster.node(number);
        jobs.push(node.submit_ok(&sid, ALICE_TOKEN, ticker(150, 10)).await);
    }

    let started = Instant::now();
    let mut received = Received::new(&session.resume_token);
    let (mut drops, mut by_cookie, mut ended_by_server, mut connections) = (0, 0, 0, 0);
    let (mut welcomes_cut, mut stopped) = (0, 0);
    let mut next_node = 0;
    // Learnt from the first welcome; only used to cut inside later ones.
    let mut welcome_bytes = 2;
    loop {
        let all_done = jobs.iter().all(|job| received.has_terminal(job));
        if all_done && drops >= DROPS {
            break;
        }
        if all_done {
            let node = cluster.node(next_node % NODES + 1);
            next_node += 1;
            jobs.push(node.submit_ok(&sid, ALICE_TOKEN, ticker(150, 10)).await);
        }
        connections += 1;
        let cursor = received.cursor();
        let mut stream = if rng.random_bool(0.3) {
            by_cookie += 1;
            nginx
                .stream_with_cookie(&sid, &received.token, cursor)
                .await
        } else {
            nginx
                .stream_with_bearer(&sid, &received.token, Some(cursor))
                .await
        };
        assert_eq!(
            stream.status,
            StatusCode::OK,
            "connection {connections} (cursor {cursor}): {}\n{}",
            stream.error,
            cluster.logs()
        );
        // Mostly a cut a few events after the welcome; sometimes inside the
        // welcome, before the client learns its new token.
        let budget = if rng.random_bool(0.1) {
            rng.random_range(1..welcome_bytes)
        } else {
            stream.read_welcome().await;
            stream.welcome_bytes.expect("welcome read") + rng.random_range(AFTER_WELCOME)
        };
        // Stop reading at the terminal that leaves no job running (nothing
        // more would come until the next submission).
        let mut pending: BTreeSet<&str> = jobs
            .iter()
            .filter(|job| !received.has_terminal(job))
            .map(String::as_str)
            .collect();
        let (events, end) = stream
            .read_until_cut(budget, Duration::from_secs(5), |event| {
                if event.is_terminal() {
                    pending.remove(event.job_id().unwrap_or_default());
                }
                pending.is_empty()
            })
            .await;
        received.take_all(events);
        if let Some(bytes) = stream.welcome_bytes {
            welcome_bytes = bytes;
        }
        if stream.welcome.is_none() {
            welcomes_cut += 1;
        }
        received.note_token(&stream);
        match end {
            ReadEnd::Cut => drops += 1,
            ReadEnd::Stopped => stopped += 1,
            ReadEnd::Ended => ended_by_server += 1,
            ReadEnd::Idle => panic!(
                "connection {connections}: the live stream stalled for 5 s while jobs ran \
                 (cursor {}, jobs {jobs:?})\n{}",
                received.cursor(),
                cluster.logs()
            ),
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{drops} drops in {:?}: far too slow\n{}",
            started.elapsed(),
            cluster.logs()
        );
    }
    let elapsed = started.elapsed();
    println!(
        "cluster drops: {connections} connections ({drops} cut by the client, {welcomes_cut} \
         inside the welcome, {stopped} closed after the last terminal, {by_cookie} by cookie, \
         {ended_by_server} ended by the server), \
         {} events, {} jobs on {NODES} nodes, {elapsed:?}",
        received.events.len(),
        jobs.len()
    );
    assert!(drops >= DROPS);
    assert_eq!(ended_by_server, 0, "nothing else ends these streams");

    // Every job: 150 ticks once each, in order, then one result.
    for job in &jobs {
        let events = received.of_job(job);
        assert_eq!(events.len(), 151, "job {job}");
        let terminal = assert_ticker_story(&events);
        assert_eq!(terminal.event, "job.result", "{}", terminal.data);
    }
    let counts = terminals_per_job(&received.events);
    assert_eq!(
        counts.keys().cloned().collect::<BTreeSet<_>>(),
        jobs.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert!(counts.values().all(|count| *count == 1), "{counts:?}");

    // The same bytes as one full replay through nginx.
    let replay = full_replay(&nginx, &sid, received.cursor()).await;
    assert_identical_to_replay(&received.events, &replay);
}
