//! The resume storm (many clients reconnecting at once, each far behind)
//! on the gateway and the hyper baseline, and the cost of an append per
//! storage backend (gateway only).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{connect, percentile, start_gateway, Api};
use crate::table::{Column, Reference, Row};
use crate::{start_helper, Plan};

pub async fn scenario_storm(plan: &Plan) -> Vec<Row> {
    let clients: u64 = if plan.quick { 200 } else { 1_000 };
    let behind = 1_000u64;
    let gateway = start_gateway(&[]).await;
    let api = Arc::new(Api::new(&gateway));
    let mut sessions = Vec::new();
    for _ in 0..clients {
        let session = api.session().await;
        let job = api
            .submit(&session, json!({"count": behind, "size": 64}))
            .await;
        sessions.push((session, job));
    }
    for (session, job) in &sessions {
        api.wait_done(session, job).await;
    }
    let address = gateway.address;
    let storm = |targets: Vec<String>, address: SocketAddr| async move {
        let started = Instant::now();
        let spacing = Duration::from_secs(1) / targets.len().max(1) as u32;
        let tasks: Vec<_> = targets
            .into_iter()
            .enumerate()
            .map(|(index, path)| {
                tokio::spawn(async move {
                    tokio::time::sleep(spacing * index as u32).await;
                    let connecting = Instant::now();
                    let mut reader = connect(
                        address,
                        &path,
                        if path.starts_with("/v1") {
                            Some(0)
                        } else {
                            None
                        },
                        false,
                    )
                    .await;
                    reader.read_events(behind + 1, false).await;
                    reader
                        .first_event_at
                        .map_or(Duration::ZERO, |at| at - connecting)
                })
            })
            .collect();
        let mut firsts = Vec::new();
        for task in tasks {
            firsts.push(task.await.expect("client").as_nanos() as u64);
        }
        (started.elapsed(), firsts)
    };
    let targets: Vec<String> = sessions
        .iter()
        .map(|(session, _)| format!("/v1/sessions/{session}/events"))
        .collect();
    let (gateway_total, mut gateway_firsts) = storm(targets, address).await;
    // Capture one session's frames for the baseline.
    let mut sample = connect(
        address,
        &format!("/v1/sessions/{}/events", sessions[0].0),
        Some(0),
        true,
    )
    .await;
    sample.read_events(behind + 1, false).await;
    let frames = sample.raw.take().expect("captured").freeze();
    drop(gateway);
    let baseline = start_helper("--serve-baseline").await;
    reqwest::Client::new()
        .post(format!("http://{}/store?name=storm", baseline.address))
        .body(frames)
        .send()
        .await
        .expect("upload");
    let targets = (0..clients)
        .map(|_| "/replay?name=storm".to_owned())
        .collect();
    let (baseline_total, mut baseline_firsts) = storm(targets, baseline.address).await;
    gateway_firsts.sort_unstable();
    baseline_firsts.sort_unstable();
    let label = format!("resume storm {clients} clients x {behind} behind, over 1 s");
    let reference = Reference::Only(Column::Hyper);
    vec![
        Row::new(&label, "all caught up", "s", reference)
            .value(Column::Gateway, gateway_total.as_secs_f64())
            .value(Column::Hyper, baseline_total.as_secs_f64()),
        Row::new(
            &label,
            "p99 reconnect -> first replayed event",
            "ms",
            reference,
        )
        .value(Column::Gateway, percentile(&gateway_firsts, 0.99))
        .value(Column::Hyper, percentile(&baseline_firsts, 0.99)),
    ]
}

pub async fn scenario_append(plan: &Plan) -> Vec<Row> {
    let mut rows = Vec::new();
    let count: u64 = if plan.quick { 50_000 } else { 200_000 };
    let dir = std::env::temp_dir().join(format!("arcp-bench-append-{}", std::process::id()));
    let dir_text = dir.to_string_lossy().into_owned();
    for (backend, extra) in [
        ("memory", vec![]),
        ("sqlite", vec!["--data-dir", dir_text.as_str()]),
    ] {
        let mut args = vec!["--max-events-per-session", "300000"];
        args.extend(extra);
        let gateway = start_gateway(&args).await;
        let api = Api::new(&gateway);
        let session = api.session().await;
        let started = Instant::now();
        let job = api
            .submit(&session, json!({"count": count, "size": 64}))
            .await;
        api.wait_done(&session, &job).await;
        let elapsed = started.elapsed();
        let label = format!("append {count} x 64 B, one session");
        rows.push(
            Row::new(
                &label,
                &format!("{backend} events/s"),
                "ev/s",
                Reference::Nothing,
            )
            .value(Column::Gateway, count as f64 / elapsed.as_secs_f64()),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    rows
}
