//! The gateway benchmark: the real release binary, driven over loopback by
//! many concurrent HTTP/1.1 SSE clients, beside reference servers measured
//! in the same run with the same lean client and frames of the same size:
//!
//! - **hyper**: a minimal hyper server streaming pre-encoded frames
//!   (`hyper_server.rs`);
//! - **plain**: raw sockets, HTTP/1.1 chunked, pre-encoded frames in large
//!   writes, the loopback limit (`plain.rs`);
//! - **floor**: for fan-out, raw sockets and blocking writes from one thread
//!   per core, no HTTP server at all (`floor.rs`);
//! - **nchan**: nginx with the nchan module, the real peer (`nchan.rs`).
//!
//! Each runs as a separate process, like the gateway (the first three are
//! this binary re-executed with `--serve-baseline`, `--serve-plain` or
//! `--serve-floor`). Every row also gives the ratio of the gateway to its
//! reference: the faster of hyper and plain for replay, the floor for
//! fan-out, hyper elsewhere.
//!
//! Run: `cargo bench --bench gateway` (options after `--`):
//!   `--quick`            smaller workloads (a smoke run, not for quoting)
//!   `--only NAME`        one scenario: replay, live, fanout, idle, storm,
//!                        append (`--only wake`: the wake-up probe alone)
//!   `--runs N`           repeat the scenarios N times: medians per column,
//!                        the ratio's min-max (default 1)
//!   `--json PATH`        also write the results as JSON
//!   `--plain-chunk N`    the plain writer's replay chunk in bytes
//!   `--plain-threads`    the plain writer replays from blocking threads
//!   `--without-nchan`    no nchan column this run (it shows `missing`)
//!   `--fanout-load S:T`  fan-out at S subscribers and T deliveries/s in
//!                        total instead of the four default loads
//!                        (repeatable)
//!   `--gateway PATH`     measure that gateway binary instead of this
//!                        build's (`scripts/bench-ab` alternates builds)
//!   `--pin C:S`          the client on CPUs C and every server on CPUs S
//!                        (`taskset` lists, e.g. `0:1`): each side has
//!                        cores of its own (nchan included)
//!   `--latencies DIR`    fan-out also writes each column's latencies per
//!                        reader, in event order, as JSON files in DIR
//!                        (`scripts/fanout-events.py` reads them)
//!   `--floor-publisher`  the fan-out floor's frames come from one
//!                        publisher thread that hands them to the other
//!                        writers, instead of every writer waking on its
//!                        own timer (`floor.rs`)
//!
//! Before each run it also measures what this machine charges to wake a
//! reader on the other, idle core and on the writer's own (`wake.rs`).
//!
//! It measures and prints; it asserts nothing about speed. The same
//! scenarios in cluster mode are `benches/cluster/`; what both use is in
//! `benches/common/`.

// Shared with benches/cluster/, which uses the parts this one does not.
#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;
mod fanout;
mod floor;
mod hyper_server;
mod live;
mod nchan;
mod plain;
mod replay;
mod storm;
mod table;
mod wake;
mod wire;

use std::time::Instant;

use serde_json::json;
use tokio::process::Command;

use common::{machine_facts, start_process, Server};
use nchan::Peer;
use table::{Results, Row};

pub struct Plan {
    quick: bool,
    /// `--plain-chunk`: the plain writer's replay chunk (default its own).
    plain_chunk: Option<usize>,
    /// `--plain-threads`: replay from blocking threads.
    plain_threads: bool,
    /// `--fanout-load`: (subscribers, deliveries/s) pairs; empty for the
    /// default loads.
    fanout_loads: Vec<(u64, u64)>,
    /// `--floor-publisher`: the floor's one-publisher shape.
    floor_publisher: bool,
    /// `--latencies DIR`: where fan-out writes its latencies per reader.
    latencies_dir: Option<std::path::PathBuf>,
}

impl Plan {
    fn plain_chunk_query(&self) -> String {
        self.plain_chunk
            .map_or(String::new(), |bytes| format!("&chunk={bytes}"))
    }

    fn plain_threads_query(&self) -> &'static str {
        if self.plain_threads {
            "&threads=1"
        } else {
            ""
        }
    }
}

/// This bench binary re-executed as a reference server (`mode` is
/// `--serve-baseline` or `--serve-plain`).
async fn start_helper(mode: &str) -> Server {
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    command.arg(mode);
    start_process(command).await
}

fn option(args: &[String], name: &str) -> Option<String> {
    options(args, name).next()
}

/// Every value given to a repeatable option.
fn options<'a>(args: &'a [String], name: &'a str) -> impl Iterator<Item = String> + 'a {
    args.windows(2)
        .filter(move |pair| pair[0] == name)
        .map(|pair| pair[1].clone())
}

/// `SUBSCRIBERS:DELIVERIES_PER_SECOND`.
fn fanout_load(value: &str) -> (u64, u64) {
    value
        .split_once(':')
        .and_then(|(subscribers, total)| Some((subscribers.parse().ok()?, total.parse().ok()?)))
        .filter(|&(subscribers, total)| subscribers > 0 && total >= subscribers)
        .expect("--fanout-load SUBSCRIBERS:DELIVERIES_PER_SECOND, e.g. 100:100000")
}

async fn run_once(plan: &Plan, peer: &Peer, only: Option<&str>) -> Vec<Row> {
    let wanted = |name: &str| only.is_none_or(|only| only == name);
    let mut rows = Vec::new();
    if wanted("replay") {
        rows.extend(replay::scenario(plan, peer).await);
    }
    if wanted("live") {
        rows.extend(live::scenario_live(plan, peer).await);
    }
    if wanted("fanout") {
        rows.extend(fanout::scenario(plan, peer).await);
    }
    if wanted("idle") {
        rows.extend(live::scenario_idle(plan, peer).await);
    }
    if wanted("storm") {
        rows.extend(storm::scenario_storm(plan).await);
    }
    if wanted("append") {
        rows.extend(storm::scenario_append(plan).await);
    }
    rows
}

async fn run(args: Vec<String>) {
    let plan = Plan {
        quick: args.iter().any(|a| a == "--quick"),
        plain_chunk: option(&args, "--plain-chunk").map(|n| n.parse().expect("--plain-chunk N")),
        plain_threads: args.iter().any(|a| a == "--plain-threads"),
        fanout_loads: options(&args, "--fanout-load")
            .map(|value| fanout_load(&value))
            .collect(),
        floor_publisher: args.iter().any(|a| a == "--floor-publisher"),
        latencies_dir: option(&args, "--latencies").map(Into::into),
    };
    if let Some(dir) = &plan.latencies_dir {
        std::fs::create_dir_all(dir).expect("create the --latencies directory");
    }
    if let Some(path) = option(&args, "--gateway") {
        common::use_gateway_binary(path.into());
    }
    let only = option(&args, "--only");
    let json_path = option(&args, "--json");
    let runs: usize = option(&args, "--runs").map_or(1, |n| n.parse().expect("--runs N"));
    let command = format!("cargo bench --bench gateway -- {}", args.join(" "));
    let machine = machine_facts();
    println!("command: {}", command.trim());
    println!("machine: {machine}");
    let peer = if args.iter().any(|a| a == "--without-nchan") {
        Peer::left_out()
    } else {
        Peer::detect()
    };
    let started = Instant::now();
    let mut results = Results::default();
    let mut wakes = Vec::new();
    for run in 1..=runs {
        if runs > 1 {
            println!("run {run} of {runs}");
        }
        match wake::measure().await {
            Ok(wake) => {
                println!("wake-up: {}", wake.line());
                wakes.push(wake.json());
            }
            Err(why) => {
                println!("wake-up: not measured ({why})");
                wakes.push(serde_json::Value::Null);
            }
        }
        results
            .runs
            .push(run_once(&plan, &peer, only.as_deref()).await);
    }
    println!();
    results.print();
    let elapsed = started.elapsed().as_secs_f64();
    println!("\nfinished in {elapsed:.0} s");
    if let Some(path) = json_path {
        let document = json!({
            "command": command.trim(),
            "machine": machine,
            "runs": runs,
            "seconds": elapsed,
            "nchan": matches!(peer, Peer::Found { .. }),
            "wake": wakes,
            "rows": results.json(),
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&document).expect("json"))
            .expect("write json");
        println!("wrote {path}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let Some(at) = args.iter().position(|a| a == "--serve-floor") {
        floor::serve(&args[at + 1..]);
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--wake-writer") {
        wake::writer(&args[at + 1..]);
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--wake-reader") {
        wake::reader(&args[at + 1..]);
        return;
    }
    if let Some(pin) = option(&args, "--pin") {
        let (client, server) = pin
            .split_once(':')
            .expect("--pin CLIENT_CPUS:SERVER_CPUS, e.g. 0:1");
        // Before the runtime, so that its threads inherit the client's CPUs.
        common::pin_cpus(client, server);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if args.iter().any(|a| a == "--serve-baseline") {
        runtime.block_on(hyper_server::serve());
        return;
    }
    if args.iter().any(|a| a == "--serve-plain") {
        runtime.block_on(plain::serve());
        return;
    }
    runtime.block_on(run(args));
}
