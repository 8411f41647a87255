//! Live delivery (K sessions, a paced job each, 10,000 events/s in total)
//! and idle streams (RSS and CPU per open stream), on the gateway, both
//! baselines and nchan.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::{
    connect, deliver_all, sessions_with_streams, start_gateway, submit_paced, Api, Delivery, Server,
};
use crate::nchan::{paced_delivery, Nchan, PacedLoad, Peer};
use crate::table::{latency_rows, Cell, Column, Reference, Row};
use crate::{start_helper, Plan};

const TOTAL_LIVE_RATE: u64 = 10_000;

/// Rows for one load: delivered rate and frame size per column, then the
/// latency percentiles. `None` is a missing server. A column that delivered
/// fewer than `expected` events in all is said on the output.
pub fn delivery_rows(
    label: &str,
    reference: Reference,
    expected: u64,
    columns: Vec<(Column, Option<Delivery>)>,
) -> Vec<Row> {
    let mut rate = Row::new(label, "delivered events/s", "ev/s", reference);
    let mut frame = Row::new(label, "frame size", "B", Reference::Nothing);
    let mut latencies = Vec::new();
    for (column, delivery) in columns {
        if let Some(delivery) = delivery.as_ref().filter(|d| d.events < expected) {
            println!(
                "{label}: {} delivered {} events of the {expected} expected",
                column.name(),
                delivery.events
            );
        }
        let cell = |value: fn(&Delivery) -> f64| {
            delivery
                .as_ref()
                .map_or(Cell::Missing, |delivery| Cell::Value(value(delivery)))
        };
        rate = rate.set(column, cell(|delivery| delivery.rate));
        frame = frame.set(column, cell(Delivery::frame_bytes));
        latencies.push((column, delivery.map(|delivery| delivery.latencies)));
    }
    let mut rows = vec![rate, frame];
    rows.extend(latency_rows(label, reference, &mut latencies));
    rows
}

async fn gateway_live(sessions: u64, rate: u64, per_session: u64) -> Delivery {
    let gateway = start_gateway(&[]).await;
    let api = Api::new(&gateway);
    let (ids, readers) = sessions_with_streams(&api, gateway.address, sessions).await;
    // Every job starts after all are submitted, so the measurement is
    // steady-state delivery, not submission traffic (the baselines have
    // no submissions).
    let start_at = Instant::now() + Duration::from_millis(1000 + 3 * sessions);
    submit_paced(&api, &ids, rate, per_session, start_at).await;
    deliver_all(readers, per_session).await
}

/// K paced `/live` streams from a baseline (hyper or plain).
async fn baseline_live(mode: &str, sessions: u64, path: &str, per_session: u64) -> Delivery {
    let server = start_helper(mode).await;
    let mut readers = Vec::new();
    for _ in 0..sessions {
        readers.push(connect(server.address, path, None, false).await);
    }
    deliver_all(readers, per_session).await
}

pub async fn scenario_live(plan: &Plan, peer: &Peer) -> Vec<Row> {
    let seconds = if plan.quick { 2 } else { 4 };
    let counts: &[u64] = if plan.quick {
        &[1, 100]
    } else {
        &[1, 100, 1000]
    };
    let mut rows = Vec::new();
    for &sessions in counts {
        let rate = TOTAL_LIVE_RATE / sessions;
        let per_session = rate * seconds;
        let gateway = gateway_live(sessions, rate, per_session).await;
        let frame_bytes = gateway.frame_bytes().round() as usize;
        let path = format!("/live?rate={rate}&count={per_session}&bytes={frame_bytes}");
        let hyper = baseline_live("--serve-baseline", sessions, &path, per_session).await;
        let plain = baseline_live("--serve-plain", sessions, &path, per_session).await;
        let load = PacedLoad {
            channels: sessions as usize,
            readers: 1,
            rate,
            per_channel: per_session,
            frame_bytes,
        };
        let nchan = paced_delivery(peer, load).await;
        let label = format!("live {sessions} sessions, {TOTAL_LIVE_RATE} ev/s total");
        rows.extend(delivery_rows(
            &label,
            Reference::Only(Column::Hyper),
            sessions * per_session,
            vec![
                (Column::Gateway, Some(gateway)),
                (Column::Hyper, Some(hyper)),
                (Column::Plain, Some(plain)),
                (Column::Nchan, nchan),
            ],
        ));
    }
    rows
}

// --------------------------------------------------------------------- idle

/// A server whose memory and CPU the idle scenario reads.
trait Measured {
    fn rss(&self) -> u64;
    fn cpu_seconds(&self) -> f64;
}

impl Measured for Server {
    fn rss(&self) -> u64 {
        Server::rss(self)
    }
    fn cpu_seconds(&self) -> f64 {
        Server::cpu_seconds(self)
    }
}

impl Measured for Nchan {
    fn rss(&self) -> u64 {
        Nchan::rss(self)
    }
    fn cpu_seconds(&self) -> f64 {
        Nchan::cpu_seconds(self)
    }
}

/// Opens an idle stream on each of `paths` at `address`; returns (RSS
/// growth per stream in bytes, CPU in cores over 10 s).
async fn idle_cost(server: &impl Measured, address: SocketAddr, paths: &[String]) -> (f64, f64) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss();
    let mut readers = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(200) {
        let opened = futures_util::future::join_all(
            chunk.iter().map(|path| connect(address, path, None, false)),
        )
        .await;
        readers.extend(opened);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss();
    let cpu_start = server.cpu_seconds();
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let cpu = (server.cpu_seconds() - cpu_start) / window.as_secs_f64();
    drop(readers);
    (
        after.saturating_sub(before) as f64 / paths.len() as f64,
        cpu,
    )
}

pub async fn scenario_idle(plan: &Plan, peer: &Peer) -> Vec<Row> {
    let count = if plan.quick { 2_000 } else { 10_000 };
    let mut costs: Vec<(Column, Option<(f64, f64)>)> = Vec::new();
    let gateway = start_gateway(&["--heartbeat-interval-sec", "5"]).await;
    let api = Api::new(&gateway);
    let mut paths = Vec::with_capacity(count);
    for _ in 0..count {
        paths.push(format!("/v1/sessions/{}/events", api.session().await));
    }
    costs.push((
        Column::Gateway,
        Some(idle_cost(&gateway, gateway.address, &paths).await),
    ));
    drop(gateway);
    let idle_paths = vec!["/idle".to_owned(); count];
    for (column, mode) in [
        (Column::Hyper, "--serve-baseline"),
        (Column::Plain, "--serve-plain"),
    ] {
        let server = start_helper(mode).await;
        costs.push((
            column,
            Some(idle_cost(&server, server.address, &idle_paths).await),
        ));
    }
    let nchan = match peer.start().await {
        Some(nchan) => {
            let paths: Vec<String> = (0..count).map(|i| format!("/sub/idle{i}")).collect();
            Some(idle_cost(&nchan, nchan.address, &paths).await)
        }
        None => None,
    };
    costs.push((Column::Nchan, nchan));
    let label = format!("idle {count} streams, heartbeat 5 s");
    let reference = Reference::Only(Column::Hyper);
    let mut rss = Row::new(&label, "RSS per stream", "KiB", reference);
    let mut cpu = Row::new(&label, "CPU", "% of a core", reference);
    for (column, cost) in costs {
        let (memory, cores) = match cost {
            Some((memory, cores)) => (Cell::Value(memory / 1024.0), Cell::Value(cores * 100.0)),
            None => (Cell::Missing, Cell::Missing),
        };
        rss = rss.set(column, memory);
        cpu = cpu.set(column, cores);
    }
    vec![rss, cpu]
}
