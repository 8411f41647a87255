//! The real peer: nginx with nchan (Debian `libnginx-mod-nchan`), set up in
//! a temporary directory for one scenario row and torn down on drop, and a
//! lean publisher for it.
//!
//! The configuration: `worker_processes` = the servers' cores (all, or
//! those of `--pin`, which holds nginx to them too); one
//! publisher location (`nchan_publisher`) and two EventSource subscriber
//! locations (`nchan_subscriber eventsource`), `/sub/` starting at the
//! newest message and `/replay/` at the oldest one
//! (`nchan_subscriber_first_message oldest`: nchan's event ids are
//! `time:tag`, so `Last-Event-ID: 0` means nothing to it; a subscriber with
//! no id starts where `first_message` says). Messages never expire
//! (`nchan_message_timeout 0`), a channel keeps up to 200,000 of them and
//! the shared memory holds 1 GiB, enough for 100k x 1 KiB-payload messages.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use arcp_gateway::jobs::agents::pacer::sleep_until_paced;

use crate::common::{pinned, process_cpu_seconds, server_cpu_count};

const MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

/// Bytes nchan puts around a message body in an EventSource frame:
/// `id: <10-digit time>:<tag>\n`, `data: `, the blank line (about).
pub const FRAME_OVERHEAD: usize = 30;

/// Whether nginx and the module are here (checked once per run).
pub enum Peer {
    Found { nginx: PathBuf },
    Missing,
}

impl Peer {
    pub fn detect() -> Peer {
        let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .map(PathBuf::from)
            .into_iter()
            .find(|path| path.is_file());
        match nginx {
            Some(nginx) if Path::new(MODULE).is_file() => Peer::Found { nginx },
            _ => {
                println!(
                    "nchan: not found — install with `apt-get install nginx libnginx-mod-nchan` \
                     (its column shows `missing`)"
                );
                Peer::Missing
            }
        }
    }

    /// No nchan this run, by request (`--without-nchan`); said, not skipped.
    pub fn left_out() -> Peer {
        println!("nchan: left out (--without-nchan); its column shows `missing`");
        Peer::Missing
    }

    /// A fresh nginx + nchan, or None when missing.
    pub async fn start(&self) -> Option<Nchan> {
        match self {
            Peer::Found { nginx } => Some(Nchan::start(nginx).await),
            Peer::Missing => None,
        }
    }
}

pub struct Nchan {
    child: Child,
    pub address: SocketAddr,
    _dir: tempfile::TempDir,
}

fn config(dir: &Path, port: u16) -> String {
    let dir = dir.display();
    format!(
        "load_module {MODULE};
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 19000; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    client_body_buffer_size 64k;
    nchan_shared_memory_size 1024m;
    nchan_message_timeout 0;
    nchan_message_buffer_length 200000;
    nchan_subscriber_timeout 0;
    server {{
        listen 127.0.0.1:{port};
        location ~ ^/pub/(\\w+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
        }}
        location ~ ^/sub/(\\w+)$ {{
            nchan_subscriber eventsource;
            nchan_eventsource_ping_interval 5;
            nchan_channel_id $1;
            nchan_subscriber_first_message newest;
        }}
        location ~ ^/replay/(\\w+)$ {{
            nchan_subscriber eventsource;
            nchan_eventsource_ping_interval 5;
            nchan_channel_id $1;
            nchan_subscriber_first_message oldest;
        }}
    }}
}}
",
        workers = server_cpu_count(),
    )
}

/// The command that starts nginx so that it cannot outlive the bench.
/// `Drop` stops it when a row ends or the bench unwinds; for a bench killed
/// outright (SIGKILL, an abort), `setpriv --pdeathsig TERM` (util-linux)
/// has the kernel send nginx TERM when the thread that started it is gone,
/// and the runtime's worker threads live as long as the bench. Without
/// setpriv, nginx is started directly.
fn nginx_command(nginx: &Path) -> Command {
    let setpriv = Path::new("/usr/bin/setpriv");
    if !setpriv.is_file() {
        return Command::new(nginx);
    }
    let mut command = Command::new(setpriv);
    command.args(["--pdeathsig", "TERM", "--"]).arg(nginx);
    command
}

impl Nchan {
    async fn start(nginx: &Path) -> Nchan {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, config(dir.path(), port)).expect("write nginx.conf");
        let mut command = nginx_command(nginx);
        command
            .arg("-p")
            .arg(format!("{}/", dir.path().display()))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"]);
        // With `--pin`, nginx and its workers are held to the servers' CPUs.
        let child = pinned(command)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log"))
            .spawn()
            .expect("spawn nginx");
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let started = Instant::now();
        while tokio::net::TcpStream::connect(address).await.is_err() {
            let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx + nchan did not listen within 10 s (config: {}):\n{log}",
                conf_path.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Nchan {
            child,
            address,
            _dir: dir,
        }
    }

    fn pids(&self) -> Vec<u32> {
        let master = self.child.id().unwrap_or(0);
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        std::iter::once(master)
            .chain(
                children
                    .split_whitespace()
                    .filter_map(|pid| pid.parse().ok()),
            )
            .collect()
    }

    /// Resident set size of the master and its workers, in bytes.
    pub fn rss(&self) -> u64 {
        self.pids()
            .into_iter()
            .map(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .unwrap_or_default()
                    .lines()
                    .find(|line| line.starts_with("VmRSS:"))
                    .and_then(|line| line.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
                    .map_or(0, |kb| kb * 1024)
            })
            .sum()
    }

    /// CPU seconds of the master and its workers.
    pub fn cpu_seconds(&self) -> f64 {
        self.pids().into_iter().map(process_cpu_seconds).sum()
    }
}

impl Drop for Nchan {
    fn drop(&mut self) {
        // TERM, not KILL: the master then stops its workers too.
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // A worker still busy (e.g. mid-replay) after 5 s: kill them all.
            for pid in self.pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

// ------------------------------------------------------------- publishing

/// One keep-alive connection to the publisher location, requests
/// pipelined: `queue` adds requests, `flush` writes them in one go, and a
/// task reads the responses, so publishing never waits a round trip.
pub struct Publisher {
    writer: OwnedWriteHalf,
    pending: Vec<u8>,
    sent: u64,
    responses: JoinHandle<(u64, u64)>,
    done: tokio::sync::watch::Sender<u64>,
}

impl Publisher {
    pub async fn connect(address: SocketAddr) -> Publisher {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect to nchan");
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let (done, expected) = tokio::sync::watch::channel(u64::MAX);
        Publisher {
            writer,
            pending: Vec::with_capacity(64 * 1024),
            sent: 0,
            responses: tokio::spawn(read_responses(reader, expected)),
            done,
        }
    }

    /// Adds one publish of `body` to channel `channel`.
    pub fn queue(&mut self, channel: &str, body: &[u8]) {
        self.pending.extend_from_slice(
            format!(
                "POST /pub/{channel} HTTP/1.1\r\nHost: nchan\r\nAccept: text/plain\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        self.pending.extend_from_slice(body);
        self.sent += 1;
    }

    pub async fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.writer
                .write_all(&self.pending)
                .await
                .expect("publish to nchan");
            self.pending.clear();
        }
    }

    /// Flushes and waits for every response; panics unless all were 2xx.
    pub async fn finish(mut self) {
        self.flush().await;
        let _ = self.done.send(self.sent);
        let (answered, accepted) = tokio::time::timeout(Duration::from_secs(120), self.responses)
            .await
            .expect("nchan answered the publishes in time")
            .expect("response reader");
        assert!(
            answered == self.sent && accepted == self.sent,
            "nchan accepted {accepted} of {} publishes ({answered} answered)",
            self.sent
        );
    }
}

/// Reads pipelined responses until `expected` (set by `finish`) arrived:
/// (responses, of them 2xx).
async fn read_responses(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    expected: tokio::sync::watch::Receiver<u64>,
) -> (u64, u64) {
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    let (mut answered, mut accepted) = (0u64, 0u64);
    loop {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut fields);
            let Ok(httparse::Status::Complete(head)) = response.parse(&buffer) else {
                break;
            };
            let length: usize = response
                .headers
                .iter()
                .find(|field| field.name.eq_ignore_ascii_case("content-length"))
                .and_then(|field| std::str::from_utf8(field.value).ok()?.parse().ok())
                .unwrap_or(0);
            if buffer.len() < head + length {
                break;
            }
            answered += 1;
            if (200..300).contains(&response.code.unwrap_or(0)) {
                accepted += 1;
            }
            buffer.advance(head + length);
        }
        if answered >= *expected.borrow() {
            return (answered, accepted);
        }
        if buffer.capacity() - buffer.len() < 16 * 1024 {
            buffer.reserve(64 * 1024);
        }
        match tokio::time::timeout(Duration::from_millis(200), reader.read_buf(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (answered, accepted),
            _ => {}
        }
    }
}

// ------------------------------------------------------- paced deliveries

/// A paced load on nchan: `channels` channels, each published
/// `per_channel` messages at `rate` per second (phases spread evenly over a
/// period, like independent streams'), the `data:` JSON padded to make
/// frames of about `frame_bytes`; `readers` subscribers per channel read
/// them all. `ts_ns` is stamped when a publish is written.
pub struct PacedLoad {
    pub channels: usize,
    pub readers: usize,
    pub rate: u64,
    pub per_channel: u64,
    pub frame_bytes: usize,
}

pub async fn paced_delivery(peer: &Peer, load: PacedLoad) -> Option<crate::common::Delivery> {
    let nchan = peer.start().await?;
    let mut readers = Vec::with_capacity(load.channels * load.readers);
    for channel in 0..load.channels {
        for _ in 0..load.readers {
            let path = format!("/sub/c{channel}");
            readers.push(crate::common::connect(nchan.address, &path, None, false).await);
        }
    }
    let mut publisher = Publisher::connect(nchan.address).await;
    let channels = load.channels as u64;
    let ticks = channels * load.per_channel;
    let total_rate = (load.rate.max(1) * channels) as f64;
    let due = move |tick: u64| Duration::from_secs_f64(tick as f64 / total_rate);
    let json_bytes = load.frame_bytes.saturating_sub(FRAME_OVERHEAD);
    let publishing = tokio::spawn(async move {
        let start = Instant::now() + Duration::from_millis(500);
        let mut tick = 0u64;
        // How late each publish was written, against its schedule: says
        // whether the publisher kept up.
        let mut late = Vec::with_capacity(ticks as usize);
        while tick < ticks {
            let now = Instant::now();
            while tick < ticks && start + due(tick) <= now {
                late.push(now.saturating_duration_since(start + due(tick)).as_nanos() as u64);
                let seq = tick / channels + 1;
                let body = crate::wire::event_json(seq, crate::common::now_ns(), json_bytes);
                publisher.queue(&format!("c{}", tick % channels), body.as_bytes());
                tick += 1;
            }
            publisher.flush().await;
            // Paced as the gateway's agents are (`wire::Paced::wait`).
            sleep_until_paced((start + due(tick)).into(), due(1)).await;
        }
        publisher.finish().await;
        late
    });
    let delivery = crate::common::deliver_all(readers, load.per_channel).await;
    let mut late = publishing.await.expect("publisher");
    late.sort_unstable();
    println!(
        "nchan publisher, {} channel(s) x {} ev/s: behind schedule p99 {:.2} ms, max {:.2} ms",
        load.channels,
        load.rate,
        crate::common::percentile(&late, 0.99),
        crate::common::percentile(&late, 1.0)
    );
    drop(nchan);
    Some(delivery)
}
