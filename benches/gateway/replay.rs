//! Replay: one session's finished log read from the start, by the gateway,
//! and the same bytes by the hyper and the plain baselines (uploaded from
//! what the gateway sent) and by nchan (the same `data:` JSON published as
//! messages before the timed reads). The ratio is against the faster of the
//! two baselines.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{connect, start_gateway, Api, Server};
use crate::nchan::{Peer, Publisher};
use crate::table::{Cell, Column, Reference, Row};
use crate::wire::data_lines;
use crate::{start_helper, Plan};

/// Reads per server, gateway and baselines alternating. The table gives
/// the median read and, in a row of its own, the best: reads of 45 MB take
/// 10-16 ms here, and one server's reads span 1.4-5.5 GB/s within a run
/// (a preemption decides a read), so the best of a few reads was one lucky
/// read, while the median of 21 moves little between runs.
const ROUNDS: usize = 21;
/// Reads of nchan, which is far slower (the median is kept). Its replay from
/// the oldest message grows faster than the messages buffered (10k: about
/// 0.7 s, 40k: 9 s here; 100k did not finish in 2 minutes), so 100k rows
/// read it once, and any nchan read stops after `NCHAN_LIMIT`.
const NCHAN_ROUNDS: usize = 3;
/// A read of the gateway or a baseline that takes longer is broken.
const LIMIT: Duration = Duration::from_secs(120);
const NCHAN_ROUNDS_100K: usize = 1;
const NCHAN_LIMIT: Duration = Duration::from_secs(30);

/// One full read from the start.
#[derive(Clone, Copy)]
struct Read {
    total: Duration,
    first: Duration,
    bytes: u64,
    events: u64,
}

impl Read {
    const NONE: Read = Read {
        total: Duration::MAX,
        first: Duration::MAX,
        bytes: 0,
        events: 0,
    };

    /// The median and the best (fastest) of `reads`.
    fn median_and_best(mut reads: Vec<Read>) -> (Read, Read) {
        reads.sort_by_key(|read| read.total);
        let median = reads.get(reads.len() / 2).copied().unwrap_or(Read::NONE);
        (median, reads.first().copied().unwrap_or(Read::NONE))
    }
}

/// Reads `events` events, for at most `limit`.
async fn timed_read(
    address: SocketAddr,
    path: &str,
    last_event_id: Option<u64>,
    events: u64,
    limit: Duration,
) -> Read {
    let started = Instant::now();
    let mut reader = connect(address, path, last_event_id, false).await;
    let _ = tokio::time::timeout(limit, reader.read_events(events, false)).await;
    let total = started.elapsed();
    Read {
        total,
        first: reader.first_event_at.map_or(total, |at| at - started),
        bytes: reader.bytes,
        events: reader.events,
    }
}

async fn upload(server: &Server, name: &str, query: &str, body: bytes::Bytes) {
    reqwest::Client::new()
        .post(format!(
            "http://{}/store?name={name}{query}",
            server.address
        ))
        .body(body)
        .send()
        .await
        .expect("upload");
}

/// Publishes every captured event's `data:` JSON to one channel, then
/// reads it from the oldest message: the median and the best of a few
/// reads; `TimedOut` when a read did not finish within `NCHAN_LIMIT`.
async fn nchan_replay(peer: &Peer, lines: &[Vec<u8>], rounds: usize) -> Result<(Read, Read), Cell> {
    let nchan = peer.start().await.ok_or(Cell::Missing)?;
    let mut publisher = Publisher::connect(nchan.address).await;
    for batch in lines.chunks(256) {
        for line in batch {
            publisher.queue("replay", line);
        }
        publisher.flush().await;
    }
    publisher.finish().await;
    let mut reads = Vec::new();
    for _ in 0..rounds {
        let path = "/replay/replay";
        let read = timed_read(nchan.address, path, None, lines.len() as u64, NCHAN_LIMIT).await;
        if read.events < lines.len() as u64 {
            println!(
                "nchan replay: read {} events of the {} published in {:.1} s",
                read.events,
                lines.len(),
                read.total.as_secs_f64()
            );
            return Err(Cell::TimedOut);
        }
        reads.push(read);
    }
    Ok(Read::median_and_best(reads))
}

pub async fn scenario(plan: &Plan, peer: &Peer) -> Vec<Row> {
    let counts: &[u64] = if plan.quick {
        &[10_000]
    } else {
        &[10_000, 100_000]
    };
    let mut rows = Vec::new();
    for &count in counts {
        for size in [64u64, 1024] {
            let gateway = start_gateway(&[
                "--max-events-per-session",
                "200000",
                "--max-bytes-per-session",
                "1000000000",
            ])
            .await;
            let api = Api::new(&gateway);
            let session = api.session().await;
            let job = api
                .submit(&session, json!({"count": count, "size": size}))
                .await;
            api.wait_done(&session, &job).await;
            // The first read captures what the gateway sends, for the
            // baselines to serve the same bytes.
            let events_path = format!("/v1/sessions/{session}/events");
            let mut capture = connect(gateway.address, &events_path, Some(0), true).await;
            capture.read_events(count + 1, false).await;
            let events = capture.events;
            let captured = capture.raw.take().unwrap_or_default().freeze();
            drop(capture);
            let hyper = start_helper("--serve-baseline").await;
            let plain = start_helper("--serve-plain").await;
            let name = format!("replay-{count}-{size}");
            upload(&hyper, &name, "", captured.clone()).await;
            upload(&plain, &name, &plan.plain_chunk_query(), captured.clone()).await;
            let plain_path = format!("/replay?name={name}{}", plan.plain_threads_query());
            let hyper_path = format!("/replay?name={name}");
            // ROUNDS reads each, alternating, so a noisy moment on this
            // shared machine hits all alike.
            let (mut gateway_reads, mut hyper_reads, mut plain_reads) =
                (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                gateway_reads
                    .push(timed_read(gateway.address, &events_path, Some(0), events, LIMIT).await);
                hyper_reads.push(timed_read(hyper.address, &hyper_path, None, events, LIMIT).await);
                plain_reads.push(timed_read(plain.address, &plain_path, None, events, LIMIT).await);
            }
            drop((gateway, hyper, plain));
            let lines = data_lines(&captured);
            let rounds = match (plan.quick, count >= 100_000) {
                (true, _) | (_, true) => NCHAN_ROUNDS_100K,
                _ => NCHAN_ROUNDS,
            };
            let nchan = nchan_replay(peer, &lines, rounds).await;
            let label = format!("replay {count} x {size} B");
            let columns = [
                (Column::Gateway, Ok(Read::median_and_best(gateway_reads))),
                (Column::Hyper, Ok(Read::median_and_best(hyper_reads))),
                (Column::Plain, Ok(Read::median_and_best(plain_reads))),
                (Column::Nchan, nchan),
            ];
            // `value` of each column's median read, or of its best.
            let row = |metric: &str, unit: &'static str, value: &dyn Fn(&(Read, Read)) -> f64| {
                columns.iter().fold(
                    Row::new(&label, metric, unit, Reference::BetterBaseline),
                    |row, (column, reads)| {
                        row.set(
                            *column,
                            match reads {
                                Ok(reads) => Cell::Value(value(reads)),
                                Err(cell) => *cell,
                            },
                        )
                    },
                )
            };
            let events_per_second = |read: &Read| read.events as f64 / read.total.as_secs_f64();
            let megabytes_per_second =
                |read: &Read| read.bytes as f64 / 1e6 / read.total.as_secs_f64();
            rows.push(row("events/s", "ev/s", &|(median, _)| {
                events_per_second(median)
            }));
            rows.push(row("throughput", "MB/s", &|(median, _)| {
                megabytes_per_second(median)
            }));
            rows.push(row("throughput, best read", "MB/s", &|(_, best)| {
                megabytes_per_second(best)
            }));
            rows.push(row("time to first event", "ms", &|(median, _)| {
                median.first.as_secs_f64() * 1e3
            }));
        }
    }
    rows
}
