//! Every Prometheus metric the relay exports, registered in one place. Label values come from
//! bounded sets: subscription names and fixed outcome words, never event ids.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::store::QueueStats;

/// The `state` values of `hookrelay_subscription_state`.
pub const DELIVERY_STATES: [&str; 4] = ["active", "open", "half_open", "paused"];

/// Results of one attempt (`hookrelay_delivery_attempts_total{result}`).
/// `connect_error` stays last: it is the label of errors nothing else claims.
pub const ATTEMPT_RESULTS: [&str; 5] = [
    "success",
    "http_error",
    "smtp_error",
    "timeout",
    "connect_error",
];

/// How a delivery ended, as `hookrelay_deliveries_total{outcome}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalOutcome {
    /// The receiver took it (or a pull consumer consumed or acknowledged it).
    Delivered,
    /// Retries spent or refused: a dead letter.
    Failed,
    /// Not delivered within its ttl.
    Expired,
    /// Its subscription was deleted.
    Cancelled,
}

impl FinalOutcome {
    /// Every outcome, in label order.
    pub const ALL: [FinalOutcome; 4] = [
        FinalOutcome::Delivered,
        FinalOutcome::Failed,
        FinalOutcome::Expired,
        FinalOutcome::Cancelled,
    ];

    /// The `outcome` label.
    pub const fn label(self) -> &'static str {
        match self {
            FinalOutcome::Delivered => "delivered",
            FinalOutcome::Failed => "failed",
            FinalOutcome::Expired => "expired",
            FinalOutcome::Cancelled => "cancelled",
        }
    }
}
/// Outcomes of an ingest request (`hookrelay_events_received_total{outcome}`).
pub const RECEIVE_OUTCOMES: [&str; 3] = ["accepted", "duplicate", "rejected"];
/// Reasons an event was refused (`hookrelay_events_rejected_total{reason}`).
pub const REJECT_REASONS: [&str; 5] = ["busy", "invalid", "loop", "too_large", "unauthorized"];
/// Results of a config reload (`hookrelay_config_reloads_total{result}`).
pub const RELOAD_RESULTS: [&str; 2] = ["success", "failure"];
/// The inbound listeners (`hookrelay_connections{listener}`).
pub const LISTENERS: [&str; 3] = ["app", "api", "ops"];
/// Where subscriptions come from (`hookrelay_subscriptions{source}`).
pub const SUBSCRIPTION_SOURCES: [&str; 2] = ["config", "api"];

/// The relay's metrics; cheap to clone (one shared set).
#[derive(Clone)]
pub struct Metrics(std::sync::Arc<MetricSet>);

impl std::ops::Deref for Metrics {
    type Target = MetricSet;

    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

/// Every metric, registered once.
pub struct MetricSet {
    registry: Registry,
    /// Ingest requests by outcome.
    pub events_received: IntCounterVec,
    /// Refused events by reason.
    pub events_rejected: IntCounterVec,
    /// Events matched, per subscription.
    pub events_matched: IntCounterVec,
    /// Attempts, per subscription and result.
    pub attempts: IntCounterVec,
    /// Deliveries reaching a final outcome, per subscription.
    pub deliveries: IntCounterVec,
    /// Attempt duration, per subscription.
    pub attempt_duration: HistogramVec,
    /// Undelivered deliveries, per subscription.
    pub queue_depth: IntGaugeVec,
    /// Acceptance time of the oldest undelivered delivery (0 when none), per subscription.
    pub oldest_pending: GaugeVec,
    /// Dead letters kept, per subscription.
    pub dead_letters: IntGaugeVec,
    /// Deliveries whose subscription is gone from the config (all subscriptions together).
    pub orphaned: prometheus::IntGauge,
    /// Attempts that had to wait for the rate limiter, per subscription.
    pub rate_limited: IntCounterVec,
    /// Attempts a push subscription may have in flight now (its allowance).
    pub concurrency_limit: IntGaugeVec,
    /// Pull notifications handed out again after they were pulled and not acknowledged.
    pub pull_redelivered: IntCounterVec,
    /// Seconds per store transaction, commit included.
    pub store_commit_duration: Histogram,
    /// Jobs per store transaction.
    pub store_batch_size: Histogram,
    /// 1 while the store takes new events, 0 while it refuses them (disk full, size limit).
    pub store_writable: prometheus::IntGauge,
    /// 1 while the store reaches its database, 0 while it cannot (PostgreSQL down).
    pub store_up: prometheus::IntGauge,
    /// Live relays sharing the store, this one included (1 for SQLite).
    pub replicas: prometheus::IntGauge,
    /// Claims put back to pending by this relay because their lease ran out.
    pub lease_takeovers: IntCounter,
    /// Config reloads, by result.
    pub config_reloads: IntCounterVec,
    /// Unix time of the last successful config load (startup included).
    pub config_last_reload_success: prometheus::Gauge,
    /// Subscriptions in force, by source.
    pub subscriptions: IntGaugeVec,
    /// 1 for a push subscription's delivery state (active, open, half_open, paused), 0 for
    /// the others; only subscriptions with their own series.
    pub subscription_state: IntGaugeVec,
    /// Inbound connections open, by listener.
    pub connections: IntGaugeVec,
    /// Inbound connections closed at once because the listener had its most open.
    pub connections_refused: IntCounterVec,
    /// When a subscription's TLS client certificate expires (own series only).
    pub client_cert_expiry: GaugeVec,
}

impl Metrics {
    /// Registers every metric, plus process metrics and build info.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let events_received = counter(
            "hookrelay_events_received_total",
            "Events posted to the ingest endpoint, by outcome.",
            &["outcome"],
        );
        let events_rejected = counter(
            "hookrelay_events_rejected_total",
            "Events refused at ingest, by reason.",
            &["reason"],
        );
        let events_matched = counter(
            "hookrelay_events_matched_total",
            "Accepted events matched by a subscription.",
            &["subscription"],
        );
        let attempts = counter(
            "hookrelay_delivery_attempts_total",
            "Delivery attempts, by subscription and result.",
            &["subscription", "result"],
        );
        let deliveries = counter(
            "hookrelay_deliveries_total",
            "Deliveries that reached a final outcome, by subscription.",
            &["subscription", "outcome"],
        );
        let pull_redelivered = counter(
            "hookrelay_pull_redelivered_total",
            "Pull notifications handed out again because they were not acknowledged in time.",
            &["subscription"],
        );
        let config_reloads = counter(
            "hookrelay_config_reloads_total",
            "Config reloads (SIGHUP or a changed file), by result.",
            &["result"],
        );
        let connections_refused = counter(
            "hookrelay_connections_refused_total",
            "Inbound connections closed at once because limits.max_connections were open, by listener.",
            &["listener"],
        );
        let rate_limited = counter(
            "hookrelay_rate_limited_total",
            "Attempts delayed by the subscription's rate limit.",
            &["subscription"],
        );
        let attempt_duration = HistogramVec::new(
            HistogramOpts::new(
                "hookrelay_delivery_duration_seconds",
                "Duration of one delivery attempt, by subscription.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["subscription"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(attempt_duration.clone()))
            .expect("unique metric");
        let concurrency_limit = IntGaugeVec::new(
            Opts::new(
                "hookrelay_delivery_concurrency_limit",
                "Attempts a push subscription may have in flight now: max_in_flight, or less while the receiver is slow or failing.",
            ),
            &["subscription"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(concurrency_limit.clone()))
            .expect("unique metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "hookrelay_queue_depth",
                "Deliveries not yet delivered (pending or in flight), by subscription.",
            ),
            &["subscription"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(queue_depth.clone()))
            .expect("unique metric");
        let oldest_pending = GaugeVec::new(
            Opts::new(
                "hookrelay_oldest_pending_timestamp_seconds",
                "Unix time the oldest undelivered delivery was accepted; 0 when the queue is empty.",
            ),
            &["subscription"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(oldest_pending.clone()))
            .expect("unique metric");
        let client_cert_expiry = GaugeVec::new(
            Opts::new(
                "hookrelay_client_certificate_expiry_timestamp_seconds",
                "Unix time the subscription's TLS client certificate expires.",
            ),
            &["subscription"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(client_cert_expiry.clone()))
            .expect("unique metric");
        let dead_letters = IntGaugeVec::new(
            Opts::new(
                "hookrelay_dead_letters",
                "Failed deliveries kept as dead letters, by subscription.",
            ),
            &["subscription"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(dead_letters.clone()))
            .expect("unique metric");

        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let store_commit_duration = histogram(
            "hookrelay_store_commit_duration_seconds",
            "Duration of one store transaction (group commit), fsync included.",
            vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ],
        );
        let store_batch_size = histogram(
            "hookrelay_store_batch_size",
            "Jobs (ingest requests, claims, outcomes) committed together in one transaction.",
            vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
            ],
        );

        let orphaned = prometheus::IntGauge::new(
            "hookrelay_orphaned_deliveries",
            "Deliveries kept for subscriptions no longer configured; they resume if it returns.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(orphaned.clone()))
            .expect("unique metric");

        let store_writable = prometheus::IntGauge::new(
            "hookrelay_store_writable",
            "1 while the store takes new events; 0 while it refuses them (disk full, or above storage.max_size) and only finishes the deliveries it holds.",
        )
        .expect("valid metric");
        store_writable.set(1);
        registry
            .register(Box::new(store_writable.clone()))
            .expect("unique metric");

        let store_up = prometheus::IntGauge::new(
            "hookrelay_store_up",
            "1 while the store reaches its database; 0 while it cannot (PostgreSQL down or unreachable: ingest answers 503 until it returns). Always 1 for SQLite.",
        )
        .expect("valid metric");
        store_up.set(1);
        registry
            .register(Box::new(store_up.clone()))
            .expect("unique metric");

        let replicas = prometheus::IntGauge::new(
            "hookrelay_replicas",
            "Live relays sharing the store (heartbeat within 6 s), this one included; always 1 for SQLite. Every relay reports the same figure: aggregate with max, not sum.",
        )
        .expect("valid metric");
        replicas.set(1);
        registry
            .register(Box::new(replicas.clone()))
            .expect("unique metric");
        let lease_takeovers = IntCounter::new(
            "hookrelay_lease_takeovers_total",
            "In-flight deliveries this relay put back to pending because their claim's lease ran out (their relay died or lost the database); they are attempted again.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(lease_takeovers.clone()))
            .expect("unique metric");

        let config_last_reload_success = prometheus::Gauge::new(
            "hookrelay_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load, startup included.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(config_last_reload_success.clone()))
            .expect("unique metric");
        let subscriptions = IntGaugeVec::new(
            Opts::new(
                "hookrelay_subscriptions",
                "Subscriptions in force, by source (config file or API).",
            ),
            &["source"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(subscriptions.clone()))
            .expect("unique metric");
        let subscription_state = IntGaugeVec::new(
            Opts::new(
                "hookrelay_subscription_state",
                "1 for a push subscription's delivery state (active, open, half_open, paused), 0 for the others.",
            ),
            &["subscription", "state"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(subscription_state.clone()))
            .expect("unique metric");

        let connections = IntGaugeVec::new(
            Opts::new(
                "hookrelay_connections",
                "Inbound connections open, by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(connections.clone()))
            .expect("unique metric");

        let build_info = IntGaugeVec::new(
            Opts::new("hookrelay_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build_info.clone()))
            .expect("unique metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Process metrics (CPU, RSS, open fds) where the platform supports them.
        let process = prometheus::process_collector::ProcessCollector::for_self();
        let _ = registry.register(Box::new(process));

        for outcome in RECEIVE_OUTCOMES {
            events_received.with_label_values(&[outcome]);
        }
        for reason in REJECT_REASONS {
            events_rejected.with_label_values(&[reason]);
        }
        for result in RELOAD_RESULTS {
            config_reloads.with_label_values(&[result]);
        }
        for source in SUBSCRIPTION_SOURCES {
            subscriptions.with_label_values(&[source]);
        }
        for listener in LISTENERS {
            connections.with_label_values(&[listener]);
            connections_refused.with_label_values(&[listener]);
        }

        Metrics(std::sync::Arc::new(MetricSet {
            registry,
            events_received,
            events_rejected,
            events_matched,
            attempts,
            deliveries,
            attempt_duration,
            queue_depth,
            oldest_pending,
            dead_letters,
            orphaned,
            rate_limited,
            concurrency_limit,
            pull_redelivered,
            store_commit_duration,
            store_batch_size,
            store_writable,
            store_up,
            replicas,
            lease_takeovers,
            config_reloads,
            config_last_reload_success,
            subscriptions,
            subscription_state,
            connections,
            connections_refused,
            client_cert_expiry,
        }))
    }

    /// The counter of `outcome` under the metric `label` of a subscription.
    pub fn finals(&self, label: &str, outcome: FinalOutcome) -> IntCounter {
        self.deliveries.with_label_values(&[label, outcome.label()])
    }

    /// Counts `n` deliveries of the subscription labelled `label` that ended with `outcome`.
    pub fn count_final(&self, label: &str, outcome: FinalOutcome, n: u64) {
        self.finals(label, outcome).inc_by(n);
    }

    /// Creates every per-subscription series at zero, so dashboards show zeros, not gaps.
    pub fn init_subscription(&self, name: &str) {
        self.events_matched.with_label_values(&[name]);
        for result in ATTEMPT_RESULTS {
            self.attempts.with_label_values(&[name, result]);
        }
        for outcome in FinalOutcome::ALL {
            self.finals(name, outcome);
        }
        self.attempt_duration.with_label_values(&[name]);
        self.queue_depth.with_label_values(&[name]);
        self.oldest_pending.with_label_values(&[name]);
        self.dead_letters.with_label_values(&[name]);
        self.rate_limited.with_label_values(&[name]);
        self.pull_redelivered.with_label_values(&[name]);
    }

    /// Removes every per-subscription series of `label` (a deleted subscription's).
    pub fn remove_subscription(&self, label: &str) {
        let _ = self.events_matched.remove_label_values(&[label]);
        for result in ATTEMPT_RESULTS {
            let _ = self.attempts.remove_label_values(&[label, result]);
        }
        for outcome in FinalOutcome::ALL {
            let _ = self
                .deliveries
                .remove_label_values(&[label, outcome.label()]);
        }
        let _ = self.attempt_duration.remove_label_values(&[label]);
        let _ = self.queue_depth.remove_label_values(&[label]);
        let _ = self.oldest_pending.remove_label_values(&[label]);
        let _ = self.dead_letters.remove_label_values(&[label]);
        let _ = self.rate_limited.remove_label_values(&[label]);
        let _ = self.concurrency_limit.remove_label_values(&[label]);
        let _ = self.pull_redelivered.remove_label_values(&[label]);
        let _ = self.client_cert_expiry.remove_label_values(&[label]);
        for state in DELIVERY_STATES {
            let _ = self.subscription_state.remove_label_values(&[label, state]);
        }
    }

    /// Sets the queue gauges from store figures; `subs` pairs each subscription's name with
    /// its metric label, and subscriptions sharing a label are summed.
    pub fn set_queue_stats<'a>(
        &self,
        subs: impl Iterator<Item = (&'a str, &'a str)>,
        stats: &std::collections::HashMap<String, QueueStats>,
    ) {
        self.orphaned
            .set(stats.values().map(|s| s.orphaned as i64).sum());
        let mut by_label: std::collections::HashMap<&str, QueueStats> = Default::default();
        // Always set, so it drops to zero when the last API subscription goes.
        by_label.insert(
            crate::subscription::SHARED_METRIC_LABEL,
            QueueStats::default(),
        );
        for (name, label) in subs {
            let s = stats.get(name).copied().unwrap_or_default();
            let total = by_label.entry(label).or_default();
            total.depth += s.depth;
            total.dead_letters += s.dead_letters;
            total.oldest_ms = match (total.oldest_ms, s.oldest_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        for (label, s) in by_label {
            self.queue_depth
                .with_label_values(&[label])
                .set(s.depth as i64);
            self.dead_letters
                .with_label_values(&[label])
                .set(s.dead_letters as i64);
            self.oldest_pending
                .with_label_values(&[label])
                .set(s.oldest_ms.map_or(0.0, |ms| ms as f64 / 1000.0));
        }
    }

    /// The exposition in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_series_exist_from_start() {
        let m = Metrics::new();
        m.init_subscription("billing");
        let text = m.render();
        for line in [
            "hookrelay_events_matched_total{subscription=\"billing\"} 0",
            "hookrelay_delivery_attempts_total{result=\"timeout\",subscription=\"billing\"} 0",
            "hookrelay_deliveries_total{outcome=\"failed\",subscription=\"billing\"} 0",
            "hookrelay_queue_depth{subscription=\"billing\"} 0",
            "hookrelay_rate_limited_total{subscription=\"billing\"} 0",
            "hookrelay_oldest_pending_timestamp_seconds{subscription=\"billing\"} 0",
            "hookrelay_delivery_duration_seconds_count{subscription=\"billing\"} 0",
            "hookrelay_events_received_total{outcome=\"accepted\"} 0",
            "hookrelay_config_reloads_total{result=\"failure\"} 0",
            "hookrelay_subscriptions{source=\"api\"} 0",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(text.contains("hookrelay_build_info{version=\""));
    }
}
