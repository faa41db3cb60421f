//! Prometheus metrics from the scheduler itself, a second consumer of the
//! core's events beside the log lines (`shell::logging`). Postfix's qmgr
//! has no counterpart; what is counted follows its concepts: delivery
//! requests per transport (`qmgr_deliver.c`), messages leaving the active
//! queue (`qmgr_active.c`), concurrency feedback and dead destinations and
//! transports (`qmgr_queue.c`, `qmgr_transport.c`), queue scans
//! (`qmgr_scan.c`), and the active queue's size against its limits.
//!
//! Served over HTTP by the `metrics-exporter-prometheus` crate on its own
//! thread (a scrape never waits on the event loop, and the event loop only
//! touches atomics). Off unless `--metrics ADDRESS` is given on the
//! master.cf command line; per-destination series only with
//! `--metrics-destinations N`, capped at the N busiest destinations.

use crate::qmgr::{Core, Disposition, Event, Outcome};
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

/// Histogram buckets for delivery and time-in-active, seconds.
const TIME_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Histogram buckets for scan durations, seconds.
const SCAN_BUCKETS: &[f64] = &[0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 60.0];
/// A gauge not set for this long disappears (destinations that left).
const GAUGE_IDLE: Duration = Duration::from_secs(30);

/// Where and how much to export (the `--metrics` options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// The HTTP listen address.
    pub listen: SocketAddr,
    /// Per-destination series for at most this many destinations (0: none).
    pub destinations: usize,
}

/// Why `--metrics` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Not `HOST:PORT`, `[V6]:PORT` or a port alone.
    #[error("bad --metrics address: {0} (use a port, or address:port)")]
    BadAddress(String),
    /// The exporter could not start (e.g. the port is in use).
    #[error("cannot start the metrics listener on {addr}: {why}")]
    Start { addr: SocketAddr, why: String },
}

/// Parses `--metrics`: `PORT` (on 127.0.0.1), `ADDR:PORT` or `[ADDR]:PORT`.
///
/// Errors: [`MetricsError::BadAddress`].
pub fn parse_listen(text: &str) -> Result<SocketAddr, MetricsError> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse()
        .map_err(|_| MetricsError::BadAddress(text.to_string()))
}

/// Starts the exporter's thread and installs the recorder. Call outside
/// any tokio runtime, after the privilege drop.
///
/// Errors: [`MetricsError::Start`].
pub fn install(cfg: &MetricsConfig) -> Result<(), MetricsError> {
    let fail = |why: String| MetricsError::Start {
        addr: cfg.listen,
        why,
    };
    PrometheusBuilder::new()
        .with_http_listener(cfg.listen)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), TIME_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("rqmgr_scan_seconds".into()), SCAN_BUCKETS)
        })
        .map_err(|e| fail(e.to_string()))?
        .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(GAUGE_IDLE))
        .install()
        .map_err(|e| fail(e.to_string()))?;
    describe();
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "rqmgr_delivery_requests_total",
        "Delivery requests finished, by transport and result (ok: nothing to retry; retry: some recipient must be retried; failed: no usable reply)"
    );
    describe_counter!(
        "rqmgr_delivery_recipients_total",
        "Recipients in finished delivery requests, by transport"
    );
    describe_histogram!(
        "rqmgr_delivery_seconds",
        Unit::Seconds,
        "Time from a delivery request to the agent's reply, by transport"
    );
    describe_counter!(
        "rqmgr_messages_finished_total",
        "Messages that left the active queue, by disposition (removed, deferred, corrupt)"
    );
    describe_histogram!(
        "rqmgr_active_seconds",
        Unit::Seconds,
        "Time a message spent in the active queue"
    );
    describe_counter!(
        "rqmgr_feedback_total",
        "Concurrency feedback applied to destinations, by transport and direction (positive, negative)"
    );
    describe_counter!(
        "rqmgr_destination_deaths_total",
        "Destinations declared dead (failed-cohort limit), by transport"
    );
    describe_counter!(
        "rqmgr_transport_deaths_total",
        "Transports declared dead (agents unreachable or misconfigured)"
    );
    describe_counter!("rqmgr_scans_total", "Finished queue scans, by queue");
    describe_histogram!(
        "rqmgr_scan_seconds",
        Unit::Seconds,
        "Duration of a queue scan from its start to its last file, by queue"
    );
    describe_gauge!("rqmgr_active_messages", "Messages in the active queue");
    describe_gauge!("rqmgr_active_recipients", "Recipients in memory");
    describe_gauge!("rqmgr_active_message_limit", "qmgr_message_active_limit");
    describe_gauge!(
        "rqmgr_active_recipient_limit",
        "qmgr_message_recipient_limit"
    );
    describe_gauge!(
        "rqmgr_transport_todo_entries",
        "Entries waiting for an agent, by transport"
    );
    describe_gauge!(
        "rqmgr_transport_busy_entries",
        "Entries with an agent, by transport"
    );
    describe_gauge!("rqmgr_transport_dead", "1 while the transport is dead");
    describe_gauge!(
        "rqmgr_transport_destinations",
        "Destinations in memory, by transport"
    );
    describe_gauge!(
        "rqmgr_transport_dead_destinations",
        "Dead destinations, by transport"
    );
    describe_gauge!(
        "rqmgr_destination_todo_entries",
        "Entries waiting, per destination (with --metrics-destinations)"
    );
    describe_gauge!(
        "rqmgr_destination_busy_entries",
        "Entries with an agent, per destination (with --metrics-destinations)"
    );
    describe_gauge!(
        "rqmgr_destination_window",
        "Concurrency window, per destination: > 0 ready, 0 dead, -1 rate-delayed (with --metrics-destinations)"
    );
}

/// The event loop's side: handles cached per label set, so an update is an
/// atomic operation, not a registry lookup.
pub struct Metrics {
    destinations: usize,
    requests: HashMap<(Rc<str>, &'static str), Counter>,
    recipients: HashMap<Rc<str>, Counter>,
    delivery_time: HashMap<Rc<str>, Histogram>,
    feedback: HashMap<(Rc<str>, &'static str), Counter>,
    destination_deaths: HashMap<Rc<str>, Counter>,
    transport_deaths: HashMap<Rc<str>, Counter>,
    transport_gauges: HashMap<Rc<str>, [Gauge; 5]>,
}

fn label(name: &Rc<str>) -> String {
    name.to_string()
}

impl Metrics {
    /// The handles for an installed exporter; `destinations` caps the
    /// per-destination series (0: none).
    pub fn new(destinations: usize) -> Metrics {
        Metrics {
            destinations,
            requests: HashMap::new(),
            recipients: HashMap::new(),
            delivery_time: HashMap::new(),
            feedback: HashMap::new(),
            destination_deaths: HashMap::new(),
            transport_deaths: HashMap::new(),
            transport_gauges: HashMap::new(),
        }
    }

    /// Counts what `event` says happened.
    pub fn on_event(&mut self, event: &Event) {
        match event {
            Event::Delivered {
                transport,
                recipients,
                outcome,
                ..
            } => {
                let result = match outcome {
                    Outcome::Replied { retry: false, .. } => "ok",
                    Outcome::Replied { retry: true, .. } => "retry",
                    Outcome::Crashed => "failed",
                };
                self.requests
                    .entry((transport.clone(), result))
                    .or_insert_with(|| {
                        metrics::counter!("rqmgr_delivery_requests_total",
                            "transport" => label(transport), "result" => result)
                    })
                    .increment(1);
                self.recipients
                    .entry(transport.clone())
                    .or_insert_with(|| {
                        metrics::counter!("rqmgr_delivery_recipients_total",
                            "transport" => label(transport))
                    })
                    .increment(*recipients as u64);
            }
            Event::MessageFinished { disposition, .. } => {
                let d = match disposition {
                    Disposition::Removed => "removed",
                    Disposition::Deferred { .. } => "deferred",
                    Disposition::Corrupt => "corrupt",
                };
                metrics::counter!("rqmgr_messages_finished_total", "disposition" => d).increment(1);
            }
            Event::Feedback {
                func, transport, ..
            } => {
                let direction = match func {
                    crate::qmgr::FeedbackFn::Throttle => "negative",
                    crate::qmgr::FeedbackFn::Unthrottle => "positive",
                };
                self.feedback
                    .entry((transport.clone(), direction))
                    .or_insert_with(|| {
                        metrics::counter!("rqmgr_feedback_total",
                            "transport" => label(transport), "direction" => direction)
                    })
                    .increment(1);
            }
            Event::QueueDead { transport, .. } => self
                .destination_deaths
                .entry(transport.clone())
                .or_insert_with(|| {
                    metrics::counter!("rqmgr_destination_deaths_total",
                        "transport" => label(transport))
                })
                .increment(1),
            Event::TransportDead { transport, .. } => self
                .transport_deaths
                .entry(transport.clone())
                .or_insert_with(|| {
                    metrics::counter!("rqmgr_transport_deaths_total",
                        "transport" => label(transport))
                })
                .increment(1),
            _ => {}
        }
    }

    /// A delivery request to `transport` took `elapsed` from request to
    /// reply.
    pub fn delivery_time(&mut self, transport: &str, elapsed: Duration) {
        if let Some(h) = self.delivery_time.get(transport) {
            h.record(elapsed.as_secs_f64());
            return;
        }
        let name: Rc<str> = transport.into();
        let h = metrics::histogram!("rqmgr_delivery_seconds", "transport" => transport.to_string());
        h.record(elapsed.as_secs_f64());
        self.delivery_time.insert(name, h);
    }

    /// A message left the active queue after `seconds` in it.
    pub fn time_in_active(&self, seconds: f64) {
        metrics::histogram!("rqmgr_active_seconds").record(seconds.max(0.0));
    }

    /// A scan of `queue` ended after `elapsed`.
    pub fn scan_done(&self, queue: &'static str, elapsed: Duration) {
        metrics::counter!("rqmgr_scans_total", "queue" => queue).increment(1);
        metrics::histogram!("rqmgr_scan_seconds", "queue" => queue).record(elapsed.as_secs_f64());
    }

    /// Sets the gauges from the core's counts (once a second), from
    /// [`Core::summary`] (transports and queues, no recipient copied).
    pub fn gauges<R: Clone>(&mut self, core: &Core<R>) {
        let s = core.settings();
        metrics::gauge!("rqmgr_active_messages").set(core.message_count() as f64);
        metrics::gauge!("rqmgr_active_recipients").set(core.recipient_count() as f64);
        metrics::gauge!("rqmgr_active_message_limit").set(s.active_limit as f64);
        metrics::gauge!("rqmgr_active_recipient_limit").set(s.recipient_limit as f64);
        let summary = core.summary(std::time::Instant::now());
        let mut busiest = Vec::new();
        for t in &summary.transports {
            let g = self
                .transport_gauges
                .entry(t.name.clone())
                .or_insert_with(|| {
                    let l = label(&t.name);
                    [
                        metrics::gauge!("rqmgr_transport_todo_entries", "transport" => l.clone()),
                        metrics::gauge!("rqmgr_transport_busy_entries", "transport" => l.clone()),
                        metrics::gauge!("rqmgr_transport_dead", "transport" => l.clone()),
                        metrics::gauge!("rqmgr_transport_destinations", "transport" => l.clone()),
                        metrics::gauge!("rqmgr_transport_dead_destinations", "transport" => l),
                    ]
                });
            let todo: usize = t.queues.iter().map(|q| q.todo).sum();
            let busy: i64 = t.queues.iter().map(|q| i64::from(q.busy)).sum();
            let dead = t.queues.iter().filter(|q| q.window == 0).count();
            g[0].set(todo as f64);
            g[1].set(busy as f64);
            g[2].set(if t.dead.is_some() { 1.0 } else { 0.0 });
            g[3].set(t.queues.len() as f64);
            g[4].set(dead as f64);
            if self.destinations > 0 {
                for q in &t.queues {
                    busiest.push((q.todo + q.busy.max(0) as usize, &t.name, q));
                }
            }
        }
        if self.destinations > 0 {
            busiest.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.name.cmp(&b.2.name)));
            for (_, transport, q) in busiest.into_iter().take(self.destinations) {
                let labels = [
                    ("transport", transport.to_string()),
                    ("destination", q.name.to_string()),
                ];
                metrics::gauge!("rqmgr_destination_todo_entries", &labels).set(q.todo as f64);
                metrics::gauge!("rqmgr_destination_busy_entries", &labels).set(f64::from(q.busy));
                metrics::gauge!("rqmgr_destination_window", &labels).set(f64::from(q.window));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("9177").unwrap(),
            "127.0.0.1:9177".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_listen("[::1]:9177").unwrap(),
            "[::1]:9177".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_listen("0.0.0.0:80").is_ok());
        assert!(parse_listen("localhost").is_err());
        assert!(parse_listen("").is_err());
    }
}
