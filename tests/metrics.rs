//! The exposition as Prometheus scrapes it from the ops listener: each subscription has
//! exactly the series its kind can have, gauges of nothing are absent, and the ingest and
//! request series count what the listeners answered.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Receiver, TestRelay, deadline, free_port, sample};
use reqwest::Method;
use serde_json::json;

/// Metric names (histogram suffixes taken off) by the `subscription` label of their series.
fn names_by_subscription(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some(sub) = rest
            .split_once("subscription=\"")
            .and_then(|(_, v)| v.split_once('"'))
            .map(|(v, _)| v)
        else {
            continue;
        };
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.entry(sub.to_string())
            .or_default()
            .insert(name.to_string());
    }
    out
}

/// The values a label takes among the series of `name` for `subscription`.
fn label_values(text: &str, name: &str, subscription: &str, label: &str) -> BTreeSet<String> {
    let sub = format!("subscription=\"{subscription}\"");
    let key = format!("{label}=\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&sub))
        .filter_map(|l| l.split_once(&key).and_then(|(_, v)| v.split_once('"')))
        .map(|(v, _)| v.to_string())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// The names a pull subscription's series have.
fn pull_series() -> BTreeSet<String> {
    set(&[
        "hookrelay_events_matched_total",
        "hookrelay_deliveries_total",
        "hookrelay_queue_depth",
        "hookrelay_pull_redelivered_total",
    ])
}

/// `hookrelay_http_requests_total` of one listener and status in `text`.
fn requests(text: &str, listener: &str, status: &str) -> Option<f64> {
    sample(
        text,
        "hookrelay_http_requests_total",
        &[("listener", listener), ("status", status)],
    )
}

#[tokio::test]
async fn series_per_subscription_kind() {
    let rx = Receiver::ok().await;
    let yaml = format!(
        "subscriptions:
  - {{name: hooks, url: '{}', events: ['order.*']}}
  - name: mail
    mode: email
    events: ['mail.*']
    email: {{to: [ops@example.org], from: relay@example.org, smtp: {{host: 127.0.0.1, port: {}, tls: none}}}}
  - {{name: queue, mode: pull, events: ['order.*'], pull: {{ack: auto}}}}
",
        rx.url("/"),
        free_port()
    );
    let relay = TestRelay::start(&yaml).await;

    let idle = relay.metrics().await;
    let by_sub = names_by_subscription(&idle);
    let push = set(&[
        "hookrelay_events_matched_total",
        "hookrelay_delivery_attempts_total",
        "hookrelay_deliveries_total",
        "hookrelay_delivery_duration_seconds",
        "hookrelay_queue_depth",
        "hookrelay_dead_letters",
        "hookrelay_delivery_concurrency_limit",
        "hookrelay_subscription_state",
    ]);
    assert_eq!(by_sub["hooks"], push, "{idle}");
    assert_eq!(by_sub["mail"], push, "{idle}");
    assert_eq!(by_sub["queue"], pull_series(), "{idle}");
    let attempts = "hookrelay_delivery_attempts_total";
    assert_eq!(
        label_values(&idle, attempts, "hooks", "result"),
        set(&["success", "http_error", "timeout", "connect_error"])
    );
    assert_eq!(
        label_values(&idle, attempts, "mail", "result"),
        set(&["success", "smtp_error", "timeout", "connect_error"])
    );
    let outcomes = "hookrelay_deliveries_total";
    assert_eq!(
        label_values(&idle, outcomes, "hooks", "outcome"),
        set(&["delivered", "failed", "expired"])
    );
    assert_eq!(
        label_values(&idle, outcomes, "queue", "outcome"),
        set(&["delivered", "expired"])
    );
    // Nothing waits: no oldest-pending series at all (not 0).
    assert!(
        !idle.contains("hookrelay_oldest_pending_timestamp_seconds{"),
        "{idle}"
    );
    // Events refused never count as received.
    assert!(!idle.contains("outcome=\"rejected\""), "{idle}");
    let build = idle
        .lines()
        .find(|l| l.starts_with("hookrelay_build_info{"))
        .expect("build info");
    for label in ["version", "commit", "rustc"] {
        assert!(build.contains(&format!("{label}=\"")), "{build}");
        assert!(!build.contains(&format!("{label}=\"\"")), "{build}");
    }
    assert!(build.ends_with(" 1"), "{build}");

    // One event for the HTTP and the pull subscription, one refused post.
    let (status, _) = relay
        .post(&json!({"type": "order.created", "data": {}}))
        .await;
    assert_eq!(status, 202);
    let (status, _) = relay.post(&json!({"data": {}})).await;
    assert_eq!(status, 422);
    relay.wait_outcome("hooks", "delivered", 1.0).await;

    let m = relay.metrics().await;
    let app = (requests(&m, "app", "202"), requests(&m, "app", "422"));
    assert_eq!(app, (Some(1.0), Some(1.0)), "{m}");
    assert_eq!(
        sample(&m, "hookrelay_ingest_duration_seconds_count", &[]),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &m,
            "hookrelay_events_rejected_total",
            &[("reason", "invalid")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "hookrelay_events_received_total",
            &[("outcome", "accepted")]
        ),
        Some(1.0)
    );
    assert!(!m.contains("outcome=\"rejected\""), "{m}");
    // The pull notification waits; the pushed delivery is done.
    let oldest = "hookrelay_oldest_pending_timestamp_seconds";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let waiting = sample(&m, oldest, &[("subscription", "queue")]).expect("queue waits");
    assert!((now - waiting).abs() < 60.0, "{waiting} vs {now}");
    assert_eq!(sample(&m, oldest, &[("subscription", "hooks")]), None);
    // The kinds still have only their own series after the traffic.
    let by_sub = names_by_subscription(&m);
    assert!(!by_sub["hooks"].contains("hookrelay_pull_redelivered_total"));
    assert!(!by_sub["queue"].contains(attempts));
    assert!(!label_values(&m, attempts, "hooks", "result").contains("smtp_error"));

    // Taken and so consumed (ack: auto): nothing waits any more, and the series goes.
    let (status, _) = relay
        .api(
            Method::GET,
            "/v1/subscriptions/queue/notifications/next",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let gone = deadline(|| async {
        relay
            .metric(oldest, &[("subscription", "queue")])
            .await
            .is_none()
    })
    .await;
    assert!(gone, "{}", relay.metrics().await);
    let m = relay.metrics().await;
    assert_eq!(requests(&m, "api", "200"), Some(1.0), "{m}");
    // The readiness polls and the scrapes so far.
    assert!(requests(&m, "ops", "200").is_some_and(|n| n >= 1.0), "{m}");
    relay.stop().await;
}

#[tokio::test]
async fn a_deleted_subscription_leaves_no_series() {
    let relay = TestRelay::start("subscriptions: []\n").await;
    let (status, _) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": "own", "mode": "pull", "events": ["*"], "metrics": true})),
        )
        .await;
    assert_eq!(status, 201);
    let m = relay.metrics().await;
    assert_eq!(names_by_subscription(&m)["own"], pull_series(), "{m}");
    let (status, _) = relay
        .api(Method::DELETE, "/v1/subscriptions/own", None)
        .await;
    assert_eq!(status, 204);
    let m = relay.metrics().await;
    assert!(!names_by_subscription(&m).contains_key("own"), "{m}");
    relay.stop().await;
}

#[tokio::test]
async fn a_reload_that_changes_a_kind_changes_its_series() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let path = dir.path().join("config.yaml");
    let head = format!(
        "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\n\
         storage: {{path: '{}'}}\nsubscriptions:\n",
        dir.path().join("relay.db").display()
    );
    let push = "  - {name: s, url: 'http://127.0.0.1:9/', events: ['*']}\n";
    std::fs::write(&path, format!("{head}{push}")).unwrap();
    let relay = TestRelay::start_from_file(&path, dir.clone()).await;
    let m = relay.metrics().await;
    assert!(names_by_subscription(&m)["s"].contains("hookrelay_delivery_attempts_total"));

    // Renamed over, as an editor would.
    let tmp = path.with_extension("tmp");
    let pull = "  - {name: s, mode: pull, events: ['*']}\n";
    std::fs::write(&tmp, format!("{head}{pull}")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    relay
        .wait_metric(
            "hookrelay_config_reloads_total",
            &[("result", "success")],
            1.0,
        )
        .await;
    let m = relay.metrics().await;
    assert_eq!(names_by_subscription(&m)["s"], pull_series(), "{m}");
    relay.stop().await;
}

/// A post whose body never finishes is cut off by `limits.request_timeout` (408) and still
/// observed by the ingest histogram, with the time it had.
#[tokio::test]
async fn a_post_cut_off_by_the_request_timeout_is_timed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = TestRelay::start("limits: {request_timeout: 300ms}\nsubscriptions: []\n").await;
    let mut s = tokio::net::TcpStream::connect(relay.addrs.app)
        .await
        .unwrap();
    s.write_all(
        b"POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"type\":",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(common::DEADLINE, s.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer before the deadline");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let m = relay.metrics().await;
    assert_eq!(
        sample(&m, "hookrelay_ingest_duration_seconds_count", &[]),
        Some(1.0),
        "{m}"
    );
    let sum = sample(&m, "hookrelay_ingest_duration_seconds_sum", &[]).unwrap();
    assert!(sum >= 0.29, "timed {sum}s");
    assert_eq!(requests(&m, "app", "408"), Some(1.0), "{m}");
}
