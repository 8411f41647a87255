//! What every reference server sends: job-event frames of a chosen size
//! carrying the time they were emitted (`ts_ns`), paced at a rate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arcp_gateway::jobs::agents::pacer::sleep_until_paced;

/// The `data:` JSON of event `seq`, padded to about `bytes` bytes (never
/// shorter than its fields need).
pub fn event_json(seq: u64, ts_ns: u64, bytes: usize) -> String {
    let head = format!(
        "{{\"type\":\"job.event\",\"event_seq\":{seq},\"payload\":{{\"kind\":\"log\",\"body\":{{\"n\":{seq},\"ts_ns\":{ts_ns},\"message\":\""
    );
    let tail = "\"}}}";
    let pad = bytes.saturating_sub(head.len() + tail.len());
    let mut json = String::with_capacity(head.len() + pad + tail.len());
    json.push_str(&head);
    json.extend(std::iter::repeat_n('x', pad));
    json.push_str(tail);
    json
}

/// A whole SSE frame (`id`, `event`, `data`) of about `frame_bytes` bytes,
/// the size of the gateway's frames in the same scenario.
pub fn event_frame(seq: u64, ts_ns: u64, frame_bytes: usize) -> String {
    let prefix = format!("id: {seq}\nevent: job.event\ndata: ");
    let json = event_json(seq, ts_ns, frame_bytes.saturating_sub(prefix.len() + 2));
    format!("{prefix}{json}\n\n")
}

/// Frame `number` of a paced stream, and when it is due.
pub struct Paced {
    pub number: u64,
    pub due: Instant,
    period: Duration,
}

impl Paced {
    /// Waits until the frame is due, as the gateway's paced agents do
    /// (`jobs::agents::pacer`): to tens of microseconds at paces faster
    /// than its `FINE_BELOW`, so that every server is given the same
    /// evenly spaced events.
    pub async fn wait(&self) {
        sleep_until_paced(self.due.into(), self.period).await;
    }
}

/// `count` frames at `rate` per second, the first one period from now.
pub fn paced(rate: u64, count: u64) -> impl Iterator<Item = Paced> {
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    (1..=count).map(move |number| Paced {
        number,
        due: started + Duration::from_secs_f64(number as f64 / rate.max(1) as f64),
        period,
    })
}

/// `name=value` pairs of a request target's query.
pub fn query(target: &str) -> HashMap<String, String> {
    target
        .split_once('?')
        .map_or("", |(_, query)| query)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A query parameter, or `default` when absent or unparsable.
pub fn param<T: std::str::FromStr>(params: &HashMap<String, String>, name: &str, default: T) -> T {
    params
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `data:` line of every event in captured SSE bytes.
pub fn data_lines(captured: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for event in memchr::memmem::find_iter(captured, b"\n\n").scan(0usize, |start, end| {
        let event = &captured[*start..end];
        *start = end + 2;
        Some(event)
    }) {
        if let Some(line) = event
            .split(|&byte| byte == b'\n')
            .find_map(|line| line.strip_prefix(b"data: "))
        {
            out.push(line.to_vec());
        }
    }
    out
}
