//! The gateway's Prometheus metrics: one typed [`Metrics`] per gateway, held
//! by `AppState`, rendered in the OpenMetrics text format at `/metrics`.
//!
//! Every call site is one line (`state.metrics.idempotent_hit()`). Label
//! values come from fixed sets (transports, route ids, stop reasons, resume
//! outcomes, job statuses) or from the configured agent names, never from
//! anything a client chooses: no session, job or token value is ever a
//! label. Every metric is documented in `docs/metrics.md` (a test checks).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::protocol::JobStatus;

mod labels;

pub use labels::{ConnectionRefusal, LimitRefusal, ResumeOutcome, StreamEnd, Transport};

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Seconds, for request latency: half a millisecond to ten seconds.
const REQUEST_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Seconds, for one store commit: a tenth of a millisecond to a second.
const COMMIT_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabel {
    delivery: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabel {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobEndLabel {
    agent: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// Every metric the gateway keeps, registered in its own registry (no
/// global state: tests run many gateways in one process).
pub struct Metrics {
    registry: Registry,
    connections_open: Family<TransportLabel, Gauge>,
    connections_accepted: Family<TransportLabel, Counter>,
    connections_refused: Family<ReasonLabel, Counter>,
    streams_open: Family<TransportLabel, Gauge>,
    streams_opened: Family<TransportLabel, Counter>,
    stream_ends: Family<ReasonLabel, Counter>,
    stream_events: Family<DeliveryLabel, Counter>,
    /// The `replay` and `live` members of `stream_events`, held so the
    /// per-chunk count takes no lock.
    replayed_events: Counter,
    live_events: Counter,
    sessions: Family<StateLabel, Gauge>,
    sessions_created: Counter,
    sessions_closed: Family<ReasonLabel, Counter>,
    jobs_accepted: Family<AgentLabel, Counter>,
    jobs_finished: Family<JobEndLabel, Counter>,
    idempotent_hits: Counter,
    jobs_reaped: Counter,
    back_pressure_signals: Counter,
    events_appended: Counter,
    event_bytes_appended: Counter,
    resumes: Family<OutcomeLabel, Counter>,
    limit_refusals: Family<LimitLabel, Counter>,
    store_queue_depth: Gauge,
    store_commit: Histogram,
    requests: HistogramFamily<RequestLabel>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("arcp_gateway");
        let metrics = Metrics {
            connections_open: Family::default(),
            connections_accepted: Family::default(),
            connections_refused: Family::default(),
            streams_open: Family::default(),
            streams_opened: Family::default(),
            stream_ends: Family::default(),
            stream_events: Family::default(),
            replayed_events: Counter::default(),
            live_events: Counter::default(),
            sessions: Family::default(),
            sessions_created: Counter::default(),
            sessions_closed: Family::default(),
            jobs_accepted: Family::default(),
            jobs_finished: Family::default(),
            idempotent_hits: Counter::default(),
            jobs_reaped: Counter::default(),
            back_pressure_signals: Counter::default(),
            events_appended: Counter::default(),
            event_bytes_appended: Counter::default(),
            resumes: Family::default(),
            limit_refusals: Family::default(),
            store_queue_depth: Gauge::default(),
            store_commit: Histogram::new(COMMIT_BUCKETS),
            requests: Family::new_with_constructor(request_histogram),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "connections_open",
            "Client connections open now, by transport",
            metrics.connections_open.clone(),
        );
        r.register(
            "connections_accepted",
            "Client connections accepted, by transport",
            metrics.connections_accepted.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused or dropped by a connection cap or timeout, by reason",
            metrics.connections_refused.clone(),
        );
        r.register(
            "streams_open",
            "Event streams attached now, by transport",
            metrics.streams_open.clone(),
        );
        r.register(
            "streams_opened",
            "Event streams opened, by transport",
            metrics.streams_opened.clone(),
        );
        r.register(
            "stream_ends",
            "Event streams ended, by reason (slow_client: the log no longer covered the stream)",
            metrics.stream_ends.clone(),
        );
        r.register(
            "stream_events",
            "Job events handed to streams, by delivery (replay: already logged when the stream opened)",
            metrics.stream_events.clone(),
        );
        r.register(
            "sessions",
            "Sessions held now, by state (open, or closed and still resumable)",
            metrics.sessions.clone(),
        );
        r.register(
            "sessions_created",
            "Sessions created",
            metrics.sessions_created.clone(),
        );
        r.register(
            "sessions_closed",
            "Sessions ended, by reason (client: closed by its client; expired: swept after the resume window)",
            metrics.sessions_closed.clone(),
        );
        r.register(
            "jobs_accepted",
            "Jobs accepted, by agent name",
            metrics.jobs_accepted.clone(),
        );
        r.register(
            "jobs_finished",
            "Jobs that reached a terminal status, by agent name and status",
            metrics.jobs_finished.clone(),
        );
        r.register(
            "idempotent_hits",
            "Job submissions answered with an earlier job through their idempotency key",
            metrics.idempotent_hits.clone(),
        );
        r.register(
            "jobs_reaped",
            "Cluster mode: jobs this node ended because their node was lost (its lease lapsed)",
            metrics.jobs_reaped.clone(),
        );
        r.register(
            "back_pressure_signals",
            "back_pressure status events written to lagging sessions",
            metrics.back_pressure_signals.clone(),
        );
        r.register(
            "events_appended",
            "Events appended to session logs",
            metrics.events_appended.clone(),
        );
        r.register_with_unit(
            "events_appended",
            "Encoded bytes of the events appended to session logs",
            Unit::Bytes,
            metrics.event_bytes_appended.clone(),
        );
        r.register(
            "resumes",
            "Resume attempts (stream opens and POST /v1/sessions/resume with a resume token), by outcome",
            metrics.resumes.clone(),
        );
        r.register(
            "limit_refusals",
            "Requests refused by a configured limit, by limit",
            metrics.limit_refusals.clone(),
        );
        r.register(
            "store_queue_depth",
            "Writes queued for the durable store's writer (0 without --data-dir)",
            metrics.store_queue_depth.clone(),
        );
        r.register_with_unit(
            "store_commit",
            "Duration of one durable store commit (a group of writes)",
            Unit::Seconds,
            metrics.store_commit.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its response head, by route id and status",
            Unit::Seconds,
            metrics.requests.clone(),
        );
        r.register(
            "build",
            "The gateway's version",
            Info::new(BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        metrics.create_known_series();
        let delivery = |delivery| {
            metrics
                .stream_events
                .get_or_create_owned(&DeliveryLabel { delivery })
        };
        Metrics {
            registry,
            replayed_events: delivery("replay"),
            live_events: delivery("live"),
            ..metrics
        }
    }

    /// Creates every series whose labels come from a fixed set, at zero, so
    /// they exist (and `rate()` works) before their first event.
    fn create_known_series(&self) {
        for transport in Transport::ALL {
            let label = TransportLabel {
                transport: transport.as_str(),
            };
            self.connections_open.get_or_create_owned(&label);
            self.connections_accepted.get_or_create_owned(&label);
            self.streams_open.get_or_create_owned(&label);
            self.streams_opened.get_or_create_owned(&label);
        }
        for refusal in ConnectionRefusal::ALL {
            self.connections_refused.get_or_create_owned(&ReasonLabel {
                reason: refusal.as_str(),
            });
        }
        for end in StreamEnd::ALL {
            self.stream_ends.get_or_create_owned(&ReasonLabel {
                reason: end.as_str(),
            });
        }
        for delivery in ["replay", "live"] {
            self.stream_events
                .get_or_create_owned(&DeliveryLabel { delivery });
        }
        for reason in ["client", "expired"] {
            self.sessions_closed
                .get_or_create_owned(&ReasonLabel { reason });
        }
        for outcome in ResumeOutcome::ALL {
            self.resumes.get_or_create_owned(&OutcomeLabel {
                outcome: outcome.as_str(),
            });
        }
        for limit in LimitRefusal::ALL {
            self.limit_refusals.get_or_create_owned(&LimitLabel {
                limit: limit.as_str(),
            });
        }
    }

    /// The exposition, with the session gauges set from `open` and `closed`.
    pub fn render(&self, open_sessions: usize, closed_sessions: usize) -> String {
        self.set_sessions("open", open_sessions);
        self.set_sessions("closed", closed_sessions);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    fn set_sessions(&self, state: &'static str, count: usize) {
        self.sessions
            .get_or_create(&StateLabel { state })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// A connection was accepted; it counts as open until the guard drops.
    pub fn connection_opened(&self, transport: Transport) -> OpenGuard {
        let label = TransportLabel {
            transport: transport.as_str(),
        };
        self.connections_accepted.get_or_create(&label).inc();
        OpenGuard::new(self.connections_open.get_or_create_owned(&label))
    }

    /// A connection refused or dropped by a cap or a timeout.
    pub fn connection_refused(&self, reason: ConnectionRefusal) {
        self.connections_refused
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// A stream was attached; it counts as open until the guard drops.
    pub fn stream_opened(&self, transport: Transport) -> OpenGuard {
        let label = TransportLabel {
            transport: transport.as_str(),
        };
        self.streams_opened.get_or_create(&label).inc();
        OpenGuard::new(self.streams_open.get_or_create_owned(&label))
    }

    pub fn stream_ended(&self, end: StreamEnd) {
        self.stream_ends
            .get_or_create(&ReasonLabel {
                reason: end.as_str(),
            })
            .inc();
    }

    /// Events handed to a stream: `replayed` were logged before it opened.
    /// Called per chunk a stream writes; a counter left at zero is not
    /// touched (the counters are shared by every stream).
    pub fn stream_events(&self, replayed: u64, live: u64) {
        if replayed > 0 {
            self.replayed_events.inc_by(replayed);
        }
        if live > 0 {
            self.live_events.inc_by(live);
        }
    }

    pub fn session_created(&self) {
        self.sessions_created.inc();
    }

    pub fn session_closed_by_client(&self) {
        self.session_closed("client", 1);
    }

    pub fn sessions_expired(&self, count: usize) {
        self.session_closed("expired", count as u64);
    }

    fn session_closed(&self, reason: &'static str, count: u64) {
        if count > 0 {
            self.sessions_closed
                .get_or_create(&ReasonLabel { reason })
                .inc_by(count);
        }
    }

    /// `agent` is a qualified `name@version`; only the name is a label.
    pub fn job_accepted(&self, agent: &str) {
        self.jobs_accepted
            .get_or_create(&AgentLabel {
                agent: agent_name(agent).to_owned(),
            })
            .inc();
    }

    pub fn job_finished(&self, agent: &str, status: JobStatus) {
        self.jobs_finished
            .get_or_create(&JobEndLabel {
                agent: agent_name(agent).to_owned(),
                status: status.as_str(),
            })
            .inc();
    }

    pub fn jobs_reaped(&self, count: usize) {
        self.jobs_reaped.inc_by(count as u64);
    }

    pub fn idempotent_hit(&self) {
        self.idempotent_hits.inc();
    }

    pub fn back_pressure_signal(&self) {
        self.back_pressure_signals.inc();
    }

    pub fn event_appended(&self, frame_bytes: usize) {
        self.events_appended.inc();
        self.event_bytes_appended.inc_by(frame_bytes as u64);
    }

    pub fn resume(&self, outcome: ResumeOutcome) {
        self.resumes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn limit_refused(&self, limit: LimitRefusal) {
        self.limit_refusals
            .get_or_create(&LimitLabel {
                limit: limit.as_str(),
            })
            .inc();
    }

    /// The store's queue depth gauge, for its producers and its writer.
    pub fn store_queue_depth(&self) -> Gauge {
        self.store_queue_depth.clone()
    }

    /// The store's commit histogram, for its writer thread.
    pub fn store_commit_histogram(&self) -> Histogram {
        self.store_commit.clone()
    }

    /// One answered request: `route` is a route id (or `unmatched`,
    /// `preflight`, `redirect`).
    pub fn request(&self, route: &'static str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabel { route, status })
            .observe(elapsed.as_secs_f64());
    }
}

fn agent_name(qualified: &str) -> &str {
    qualified
        .split_once('@')
        .map_or(qualified, |(name, _)| name)
}

/// Decrements an "open" gauge when dropped.
pub struct OpenGuard {
    gauge: Gauge,
}

impl OpenGuard {
    fn new(gauge: Gauge) -> OpenGuard {
        gauge.inc();
        OpenGuard { gauge }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_labels_and_values() {
        let metrics = Metrics::new();
        let guard = metrics.stream_opened(Transport::Http2);
        metrics.job_accepted("ticker@1.0.0");
        metrics.job_finished("ticker@1.0.0", JobStatus::Cancelled);
        metrics.event_appended(100);
        metrics.event_appended(20);
        metrics.request("CreateSession", 201, Duration::from_millis(2));
        let text = metrics.render(3, 1);
        for line in [
            "arcp_gateway_streams_open{transport=\"http2\"} 1",
            "arcp_gateway_jobs_accepted_total{agent=\"ticker\"} 1",
            "arcp_gateway_jobs_finished_total{agent=\"ticker\",status=\"cancelled\"} 1",
            "arcp_gateway_events_appended_total 2",
            "arcp_gateway_events_appended_bytes_total 120",
            "arcp_gateway_sessions{state=\"open\"} 3",
            "arcp_gateway_sessions{state=\"closed\"} 1",
            "arcp_gateway_request_duration_seconds_count{route=\"CreateSession\",status=\"201\"} 1",
            "arcp_gateway_build_info{version=\"",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        drop(guard);
        assert!(metrics
            .render(0, 0)
            .contains("arcp_gateway_streams_open{transport=\"http2\"} 0"));
    }
}
