//! Fan-out: one paced job read by K subscribers, at 10,000 and 100,000
//! deliveries per second in total (the job's rate is the total / K), on the
//! gateway, the hyper baseline, the raw-socket floor and nchan (one
//! publisher, K subscribers on one channel). The ratio is against the
//! floor.

use std::path::Path;

use serde_json::json;

use crate::common::{connect, deliver_all, start_gateway, start_process, Api, Delivery};
use crate::live::delivery_rows;
use crate::nchan::{paced_delivery, PacedLoad, Peer};
use crate::table::{Cell, Column, Reference, Row};
use crate::{start_helper, Plan};

/// The gateway's delivery, and its resident memory once every subscriber
/// has read every event (all of them still retained for resume).
async fn gateway_fanout(subscribers: u64, rate: u64, count: u64) -> (Delivery, u64) {
    let gateway = start_gateway(&[]).await;
    let api = Api::new(&gateway);
    let submitter = api.session().await;
    let input =
        json!({"count": count, "size": 64, "rate": rate, "delay_ms": 1500 + subscribers * 4});
    let job = api.submit(&submitter, input).await;
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let session = api.session().await;
        api.post(
            &format!("/v1/sessions/{session}/subscriptions"),
            json!({"job_id": job}),
        )
        .await;
        let path = format!("/v1/sessions/{session}/events");
        readers.push(connect(gateway.address, &path, None, false).await);
    }
    let delivery = deliver_all(readers, count).await;
    (delivery, gateway.rss())
}

async fn hyper_fanout(subscribers: u64, rate: u64, count: u64, frame_bytes: usize) -> Delivery {
    let hyper = start_helper("--serve-baseline").await;
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        readers.push(connect(hyper.address, "/fanout", None, false).await);
    }
    reqwest::Client::new()
        .get(format!(
            "http://{}/fanout-start?rate={rate}&count={count}&bytes={frame_bytes}",
            hyper.address
        ))
        .send()
        .await
        .expect("start fan-out");
    deliver_all(readers, count).await
}

async fn floor_fanout(plan: &Plan, load: &PacedLoad) -> Delivery {
    let subscribers = load.readers as u64;
    let count = load.per_channel;
    let mut command = tokio::process::Command::new(std::env::current_exe().expect("own path"));
    command.arg("--serve-floor").args([
        subscribers.to_string(),
        load.rate.to_string(),
        count.to_string(),
        load.frame_bytes.to_string(),
    ]);
    if plan.floor_publisher {
        command.arg("publisher");
    }
    let floor = start_process(command).await;
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        readers.push(connect(floor.address, "/fanout", None, false).await);
    }
    deliver_all(readers, count).await
}

/// Every full row runs at least this many events, or for `MAX_SECONDS`
/// where the job's rate is too slow for that. A p99 over deliveries is
/// decided by the slowest passes: at 100 subscribers and 10k/s the top 1 %
/// of 40,000 deliveries came from 18-24 of the row's 400 events, so one
/// late wake-up moved the row's p99 (thirteenth pass). At 1,000
/// subscribers and 10k/s (10 events a second) the cap leaves 200 events.
const MIN_EVENTS: u64 = 1_000;
const MAX_SECONDS: u64 = 20;

/// `--latencies`: one column's latencies (ns) per reader, in the order
/// each read its events, as `DIR/ROW-COLUMN-N.json` (N counts the runs).
fn save_latencies(dir: &Path, row: &str, column: &str, delivery: &Delivery) {
    let path = (1..)
        .map(|run| dir.join(format!("{row}-{column}-{run}.json")))
        .find(|path| !path.exists())
        .expect("a free file name");
    let json = serde_json::to_vec(&delivery.per_reader).expect("json");
    std::fs::write(&path, json).expect("write --latencies file");
}

/// A full row's events: 4 s at the job's `rate`, or more (above).
fn full_row_events(rate: u64) -> u64 {
    (rate * 4).max(MIN_EVENTS.min(rate * MAX_SECONDS))
}

pub async fn scenario(plan: &Plan, peer: &Peer) -> Vec<Row> {
    let loads: &[(u64, u64)] = if !plan.fanout_loads.is_empty() {
        &plan.fanout_loads
    } else if plan.quick {
        &[(100, 10_000), (1000, 100_000)]
    } else {
        &[
            (100, 10_000),
            (100, 100_000),
            (1000, 10_000),
            (1000, 100_000),
        ]
    };
    let mut rows = Vec::new();
    for &(subscribers, total) in loads {
        let rate = total / subscribers;
        // `--quick`: 2 s, a smoke run.
        let count = if plan.quick {
            rate * 2
        } else {
            full_row_events(rate)
        };
        let (gateway, gateway_rss) = gateway_fanout(subscribers, rate, count).await;
        let frame_bytes = gateway.frame_bytes().round() as usize;
        let hyper = hyper_fanout(subscribers, rate, count, frame_bytes).await;
        let load = PacedLoad {
            channels: 1,
            readers: subscribers as usize,
            rate,
            per_channel: count,
            frame_bytes,
        };
        let floor = floor_fanout(plan, &load).await;
        let nchan = paced_delivery(peer, load).await;
        if let Some(dir) = &plan.latencies_dir {
            let row = format!("fanout-{subscribers}x{rate}");
            save_latencies(dir, &row, "gateway", &gateway);
            save_latencies(dir, &row, "hyper", &hyper);
            save_latencies(dir, &row, "floor", &floor);
            if let Some(nchan) = &nchan {
                save_latencies(dir, &row, "nchan", nchan);
            }
        }
        let label = format!(
            "fan-out 1 job -> {subscribers} subscribers x {rate} ev/s, {total} deliveries/s total"
        );
        rows.extend(delivery_rows(
            &label,
            Reference::Only(Column::Floor),
            subscribers * count,
            vec![
                (Column::Gateway, Some(gateway)),
                (Column::Hyper, Some(hyper)),
                (Column::Floor, Some(floor)),
                (Column::Nchan, nchan),
            ],
        ));
        rows.push(
            Row::new(
                &label,
                "gateway RSS after the run",
                "MiB",
                Reference::Nothing,
            )
            .set(Column::Gateway, Cell::Value(gateway_rss as f64 / 1048576.0)),
        );
    }
    rows
}
