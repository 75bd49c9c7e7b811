//! Every Prometheus metric the relay exports, registered in one place. Label values come from
//! bounded sets: subscription names and fixed outcome words, never event ids.

mod series;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::store::QueueStats;
use crate::subscription::Subscription;
pub use series::SeriesSet;

/// The `state` values of `hookrelay_subscription_state`.
pub const DELIVERY_STATES: [&str; 4] = ["active", "open", "half_open", "paused"];

/// Results of one attempt (`hookrelay_delivery_attempts_total{result}`), of any channel.
/// `connect_error` stays last: it is the label of errors nothing else claims.
pub const ATTEMPT_RESULTS: [&str; 6] = [
    "success",
    "http_error",
    "smtp_error",
    "timeout",
    "auth_error",
    "connect_error",
];

/// Results of an OAuth2 token request (`hookrelay_oauth2_token_requests_total{result}`).
pub const OAUTH2_REQUEST_RESULTS: [&str; 2] = ["ok", "error"];

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
/// `hookrelay_delivery_attempts_total` of one subscription, resolved once: a counter per
/// result its channel can have.
#[derive(Clone)]
pub struct AttemptCounters(Vec<(&'static str, IntCounter)>);

impl AttemptCounters {
    /// Counts one attempt with the `result` label; a result the channel cannot have counts
    /// as the last one (`connect_error`, the label of errors nothing else claims).
    pub fn inc(&self, result: &str) {
        let counter = self
            .0
            .iter()
            .find(|(label, _)| *label == result)
            .or(self.0.last());
        if let Some((_, counter)) = counter {
            counter.inc();
        }
    }
}

/// Outcomes of an ingested event (`hookrelay_events_received_total{outcome}`); refused
/// requests are counted once, in `hookrelay_events_rejected_total`.
pub const RECEIVE_OUTCOMES: [&str; 2] = ["accepted", "duplicate"];
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
    /// Ingested events by outcome.
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
    /// Acceptance time of the oldest undelivered delivery, per subscription; no series
    /// while none waits.
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
    /// OAuth2 token requests, per subscription and result (`ok`, `error`).
    pub oauth2_token_requests: IntCounterVec,
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
    /// Requests answered, by listener and status.
    pub http_requests: IntCounterVec,
    /// Seconds from an ingest post's arrival to its answer.
    pub ingest_duration: Histogram,
    /// When a subscription's TLS client certificate expires (own series only).
    pub client_cert_expiry: GaugeVec,
    /// Labels whose per-subscription series exist. Held while a scrape sets the queue gauges
    /// from the catalog it read, so a subscription removed meanwhile is not re-created.
    live: std::sync::Mutex<std::collections::HashSet<String>>,
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
        let http_requests = counter(
            "hookrelay_http_requests_total",
            "Requests answered, by listener and status (the code, or its class for codes the relay does not answer itself).",
            &["listener", "status"],
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
        let oauth2_token_requests = counter(
            "hookrelay_oauth2_token_requests_total",
            "OAuth2 token requests, by subscription and result (ok, error).",
            &["subscription", "result"],
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
                "Unix time the oldest undelivered delivery was accepted; no series while none is undelivered.",
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
        // A durable write: a group commit's fsync (sub-millisecond to tens of ms) plus the
        // queue before it, up to the store's busy answer.
        let ingest_duration = histogram(
            "hookrelay_ingest_duration_seconds",
            "Seconds from an ingest post's arrival (POST /v1/events and /v1/events/batch) to its answer, refusals included.",
            vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
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
            Opts::new(
                "hookrelay_build_info",
                "Build information: version, git commit and rustc version; always 1.",
            ),
            &["version", "commit", "rustc"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build_info.clone()))
            .expect("unique metric");
        // Set by build.rs; "unknown" when the build had no git or rustc to ask.
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("HOOKRELAY_COMMIT"),
                env!("HOOKRELAY_RUSTC"),
            ])
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
            oauth2_token_requests,
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
            http_requests,
            ingest_duration,
            client_cert_expiry,
            live: Default::default(),
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

    fn live_labels(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        // The set stays whole whatever panicked while holding it.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates at zero every series `series` holds under `label`, so dashboards show zeros,
    /// not gaps, and removes the label's others (left from a kind it had before).
    pub fn init_subscription(&self, label: &str, series: SeriesSet) {
        let mut live = self.live_labels();
        if !live.contains(label) {
            live.insert(label.to_string());
        }
        self.prune(label, series);
        self.events_matched.with_label_values(&[label]);
        self.queue_depth.with_label_values(&[label]);
        for result in series.attempts {
            self.attempts.with_label_values(&[label, result]);
        }
        for outcome in series.outcomes {
            self.finals(label, *outcome);
        }
        if series.pushed {
            self.attempt_duration.with_label_values(&[label]);
            self.dead_letters.with_label_values(&[label]);
        }
        if series.rate_limited {
            self.rate_limited.with_label_values(&[label]);
        }
        if series.pulled {
            self.pull_redelivered.with_label_values(&[label]);
        }
        if series.oauth2 {
            for result in OAUTH2_REQUEST_RESULTS {
                self.oauth2_token_requests
                    .with_label_values(&[label, result]);
            }
        }
    }

    /// Removes the per-subscription series of `label` that `series` does not hold: the one
    /// list of them, for a kind change and (with [`SeriesSet::NONE`]) a removal.
    fn prune(&self, label: &str, series: SeriesSet) {
        for result in ATTEMPT_RESULTS {
            if !series.attempts.contains(&result) {
                let _ = self.attempts.remove_label_values(&[label, result]);
            }
        }
        for outcome in FinalOutcome::ALL {
            if !series.outcomes.contains(&outcome) {
                let _ = self
                    .deliveries
                    .remove_label_values(&[label, outcome.label()]);
            }
        }
        if !series.pushed {
            let _ = self.attempt_duration.remove_label_values(&[label]);
            let _ = self.dead_letters.remove_label_values(&[label]);
            let _ = self.concurrency_limit.remove_label_values(&[label]);
            for state in DELIVERY_STATES {
                let _ = self.subscription_state.remove_label_values(&[label, state]);
            }
        }
        if !series.rate_limited {
            let _ = self.rate_limited.remove_label_values(&[label]);
        }
        if !series.pulled {
            let _ = self.pull_redelivered.remove_label_values(&[label]);
        }
        if !series.oauth2 {
            for result in OAUTH2_REQUEST_RESULTS {
                let _ = self
                    .oauth2_token_requests
                    .remove_label_values(&[label, result]);
            }
        }
        if !series.client_cert {
            let _ = self.client_cert_expiry.remove_label_values(&[label]);
        }
    }

    /// Creates the own series of `sub` (under its name), those its channel can have.
    pub fn init_own_series(&self, sub: &Subscription) {
        self.init_subscription(&sub.name, SeriesSet::of(&sub.channel));
    }

    /// The attempt counters of a subscription counting under `label`, one per result of
    /// `series`.
    pub fn attempt_counters(&self, label: &str, series: SeriesSet) -> AttemptCounters {
        AttemptCounters(
            series
                .attempts
                .iter()
                .map(|r| (*r, self.attempts.with_label_values(&[label, r])))
                .collect(),
        )
    }

    /// Removes every per-subscription series of `label` (a deleted subscription's).
    pub fn remove_subscription(&self, label: &str) {
        let mut live = self.live_labels();
        live.remove(label);
        self.prune(label, SeriesSet::NONE);
        let _ = self.events_matched.remove_label_values(&[label]);
        let _ = self.queue_depth.remove_label_values(&[label]);
        let _ = self.oldest_pending.remove_label_values(&[label]);
    }

    /// Sets the queue gauges from store figures for the subscriptions in force; those
    /// sharing a label are summed. The oldest-pending gauge of a label with nothing
    /// undelivered is removed (not 0); dead letters show only for labels that can have them.
    pub fn set_queue_stats<'a>(
        &self,
        subs: impl Iterator<Item = &'a Subscription>,
        stats: &std::collections::HashMap<String, QueueStats>,
    ) {
        self.orphaned
            .set(stats.values().map(|s| s.orphaned as i64).sum());
        let mut by_label: std::collections::HashMap<&str, (QueueStats, SeriesSet)> =
            Default::default();
        // Always set, so it drops to zero when the last API subscription goes.
        by_label.insert(
            crate::subscription::SHARED_METRIC_LABEL,
            (QueueStats::default(), SeriesSet::SHARED),
        );
        for sub in subs {
            let s = stats.get(&sub.name).copied().unwrap_or_default();
            let (total, _) = by_label
                .entry(sub.metric_label())
                .or_insert_with(|| (QueueStats::default(), SeriesSet::of_label(sub)));
            total.depth += s.depth;
            total.dead_letters += s.dead_letters;
            total.oldest_ms = match (total.oldest_ms, s.oldest_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let live = self.live_labels();
        for (label, (s, series)) in by_label {
            // Read before a removal that has happened since: leave it removed.
            if !live.contains(label) {
                continue;
            }
            self.queue_depth
                .with_label_values(&[label])
                .set(s.depth as i64);
            if series.pushed {
                self.dead_letters
                    .with_label_values(&[label])
                    .set(s.dead_letters as i64);
            } else {
                // A scrape that read the catalog before a kind change may have set it.
                let _ = self.dead_letters.remove_label_values(&[label]);
            }
            match s.oldest_ms {
                Some(ms) => self
                    .oldest_pending
                    .with_label_values(&[label])
                    .set(ms as f64 / 1000.0),
                None => {
                    let _ = self.oldest_pending.remove_label_values(&[label]);
                }
            }
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
    use crate::subscription::tests::parse;

    /// The names of the series labelled `subscription="<label>"`, each with its other labels.
    fn series_of(text: &str, label: &str) -> Vec<String> {
        let needle = format!("subscription=\"{label}\"");
        let mut out: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(&needle))
            .map(|l| {
                l.rsplit_once(' ')
                    .map_or(l, |(series, _)| series)
                    .to_string()
            })
            .filter(|l| !l.contains("_bucket{"))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn each_kind_gets_only_its_own_series() {
        let m = Metrics::new();
        let http = parse("{name: h, url: 'http://h/', events: [x]}").unwrap();
        let limited =
            parse("{name: r, url: 'http://h/', events: [x], rate_limit: {per_second: 5}}").unwrap();
        let mail = parse(
            "{name: m, mode: email, events: [x], email: {to: [a@example.org], from: r@example.org, smtp: {host: 127.0.0.1, port: 2525, tls: none}}}",
        )
        .unwrap();
        let pull = parse("{name: p, mode: pull, events: [x]}").unwrap();
        let oauth2 = parse(
            "{name: o, url: 'https://h/', events: [x], auth: {oauth2: {token_url: 'https://i/t', client_id: c, client_secret: s}}}",
        )
        .unwrap();
        for sub in [&http, &limited, &mail, &pull, &oauth2] {
            m.init_subscription(&sub.name, SeriesSet::of(&sub.channel));
        }
        let text = m.render();
        let http = series_of(&text, "h");
        assert_eq!(
            http,
            [
                "hookrelay_dead_letters{subscription=\"h\"}",
                "hookrelay_deliveries_total{outcome=\"delivered\",subscription=\"h\"}",
                "hookrelay_deliveries_total{outcome=\"expired\",subscription=\"h\"}",
                "hookrelay_deliveries_total{outcome=\"failed\",subscription=\"h\"}",
                "hookrelay_delivery_attempts_total{result=\"connect_error\",subscription=\"h\"}",
                "hookrelay_delivery_attempts_total{result=\"http_error\",subscription=\"h\"}",
                "hookrelay_delivery_attempts_total{result=\"success\",subscription=\"h\"}",
                "hookrelay_delivery_attempts_total{result=\"timeout\",subscription=\"h\"}",
                "hookrelay_delivery_duration_seconds_count{subscription=\"h\"}",
                "hookrelay_delivery_duration_seconds_sum{subscription=\"h\"}",
                "hookrelay_events_matched_total{subscription=\"h\"}",
                "hookrelay_queue_depth{subscription=\"h\"}",
            ],
            "{text}"
        );
        assert!(
            series_of(&text, "r")
                .iter()
                .any(|s| s.starts_with("hookrelay_rate_limited_total"))
        );
        let oauth2 = series_of(&text, "o");
        for series in [
            "hookrelay_delivery_attempts_total{result=\"auth_error\",subscription=\"o\"}",
            "hookrelay_oauth2_token_requests_total{result=\"error\",subscription=\"o\"}",
            "hookrelay_oauth2_token_requests_total{result=\"ok\",subscription=\"o\"}",
        ] {
            assert!(oauth2.iter().any(|s| s == series), "{series} in {oauth2:?}");
        }
        let mail = series_of(&text, "m");
        assert!(mail.iter().any(|s| s.contains("smtp_error")), "{mail:?}");
        assert!(!mail.iter().any(|s| s.contains("http_error")), "{mail:?}");
        assert_eq!(
            series_of(&text, "p"),
            [
                "hookrelay_deliveries_total{outcome=\"delivered\",subscription=\"p\"}",
                "hookrelay_deliveries_total{outcome=\"expired\",subscription=\"p\"}",
                "hookrelay_events_matched_total{subscription=\"p\"}",
                "hookrelay_pull_redelivered_total{subscription=\"p\"}",
                "hookrelay_queue_depth{subscription=\"p\"}",
            ]
        );
    }

    #[test]
    fn a_changed_kind_loses_the_series_of_the_old_one() {
        let m = Metrics::new();
        let http = parse("{name: s, url: 'http://h/', events: [x]}").unwrap();
        let pull = parse("{name: s, mode: pull, events: [x]}").unwrap();
        m.init_subscription("s", SeriesSet::of(&http.channel));
        m.concurrency_limit.with_label_values(&["s"]).set(4);
        m.init_subscription("s", SeriesSet::of(&pull.channel));
        let text = m.render();
        for gone in [
            "hookrelay_delivery_attempts_total",
            "hookrelay_delivery_duration_seconds",
            "hookrelay_dead_letters",
            "hookrelay_delivery_concurrency_limit",
            "outcome=\"failed\"",
        ] {
            assert!(
                !series_of(&text, "s").iter().any(|s| s.contains(gone)),
                "{gone} left\n{text}"
            );
        }
    }

    #[test]
    fn the_certificate_expiry_gauge_goes_where_the_series_set_has_none() {
        let m = Metrics::new();
        let sub = parse("{name: c, url: 'https://h/', events: [x]}").unwrap();
        let plain = SeriesSet::of(&sub.channel);
        assert!(!plain.client_cert && !SeriesSet::SHARED.client_cert);
        let with_cert = SeriesSet {
            client_cert: true,
            ..plain
        };
        let gauge = "hookrelay_client_certificate_expiry_timestamp_seconds{subscription=\"c\"}";
        let set = || m.client_cert_expiry.with_label_values(&["c"]).set(1e9);
        // Not created at zero; kept while the set has it.
        m.init_subscription("c", with_cert);
        assert!(!m.render().contains(gauge));
        set();
        m.init_subscription("c", with_cert);
        assert!(m.render().contains(gauge));
        // The certificate dropped: pruned by the new set.
        m.init_subscription("c", plain);
        assert!(!m.render().contains(gauge));
        // Removed with the subscription.
        m.init_subscription("c", with_cert);
        set();
        m.remove_subscription("c");
        assert!(!m.render().contains(gauge));
    }

    #[test]
    fn oldest_pending_is_absent_while_nothing_waits() {
        let m = Metrics::new();
        let sub = parse("{name: b, url: 'http://h/', events: [x]}").unwrap();
        m.init_subscription("b", SeriesSet::of(&sub.channel));
        let waiting = QueueStats {
            depth: 1,
            oldest_ms: Some(1_500),
            ..QueueStats::default()
        };
        let stats = [("b".to_string(), waiting)].into();
        m.set_queue_stats(std::iter::once(&sub), &stats);
        assert!(
            m.render()
                .contains("hookrelay_oldest_pending_timestamp_seconds{subscription=\"b\"} 1.5")
        );
        m.set_queue_stats(std::iter::once(&sub), &Default::default());
        let text = m.render();
        assert!(
            !text.contains("hookrelay_oldest_pending_timestamp_seconds{"),
            "{text}"
        );
        assert!(text.contains("hookrelay_queue_depth{subscription=\"b\"} 0"));
    }

    #[test]
    fn a_scrape_with_an_older_catalog_does_not_bring_back_a_removed_subscription() {
        let m = Metrics::new();
        let sub = parse("{name: gone, url: 'http://h/', events: [x]}").unwrap();
        m.init_subscription("gone", SeriesSet::of(&sub.channel));
        let stats = [(
            "gone".to_string(),
            QueueStats {
                depth: 3,
                oldest_ms: Some(1_000),
                ..QueueStats::default()
            },
        )]
        .into();
        // The scrape read the catalog with `gone` in it; the removal came before its gauges.
        m.remove_subscription("gone");
        m.set_queue_stats(std::iter::once(&sub), &stats);
        let text = m.render();
        assert!(!text.contains("subscription=\"gone\""), "{text}");
    }

    #[test]
    fn attempts_of_a_result_the_channel_cannot_have_count_as_connect_errors() {
        let m = Metrics::new();
        let sub = parse("{name: h, url: 'http://h/', events: [x]}").unwrap();
        let counters = m.attempt_counters("h", SeriesSet::of(&sub.channel));
        counters.inc("http_error");
        counters.inc("smtp_error");
        let text = m.render();
        assert!(text.contains(
            "hookrelay_delivery_attempts_total{result=\"http_error\",subscription=\"h\"} 1"
        ));
        assert!(text.contains(
            "hookrelay_delivery_attempts_total{result=\"connect_error\",subscription=\"h\"} 1"
        ));
        assert!(!text.contains("smtp_error"), "{text}");
    }

    #[test]
    fn shared_and_global_series_exist_from_start() {
        let m = Metrics::new();
        m.init_subscription("_api", SeriesSet::SHARED);
        let text = m.render();
        for line in [
            "hookrelay_delivery_attempts_total{result=\"smtp_error\",subscription=\"_api\"} 0",
            "hookrelay_deliveries_total{outcome=\"cancelled\",subscription=\"_api\"} 0",
            "hookrelay_pull_redelivered_total{subscription=\"_api\"} 0",
            "hookrelay_rate_limited_total{subscription=\"_api\"} 0",
            "hookrelay_events_received_total{outcome=\"accepted\"} 0",
            "hookrelay_config_reloads_total{result=\"failure\"} 0",
            "hookrelay_subscriptions{source=\"api\"} 0",
            "hookrelay_ingest_duration_seconds_count 0",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(!text.contains("outcome=\"rejected\""), "{text}");
        assert!(text.contains("hookrelay_build_info{commit=\""));
    }
}
