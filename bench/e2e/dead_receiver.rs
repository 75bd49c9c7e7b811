//! The dead-receiver case: what a receiver that is down costs everyone else. Ingest and a
//! healthy subscription's deliveries are measured with no backlog, then again with
//! `BENCH_DEAD_EVENTS` (default 100,000) events queued for a subscription whose receiver
//! refuses connections, once its retries come due.

use std::time::{Duration, Instant};

use crate::env_u64;
use crate::harness::{
    Relay, Sink, bench_schema, drop_schema, live_burst, load, metrics_text, queue_depth,
};

/// What one phase measured.
struct Phase {
    accepted_per_s: f64,
    delivered_per_s: f64,
    dead_attempts: f64,
    cpu_s: f64,
}

/// Attempts made for the dead subscription so far, from the relay's /metrics.
async fn dead_attempts(http: &reqwest::Client, ops: &str) -> f64 {
    metrics_text(http, ops)
        .await
        .lines()
        .filter(|l| {
            l.starts_with("hookrelay_delivery_attempts_total{")
                && l.contains("subscription=\"dead\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Live events posted as fast as the load generator can for `secs`, delivered as they come.
async fn phase(relay: &Relay, sink: &Sink, http: &reqwest::Client, secs: Duration) -> Phase {
    let attempts_before = dead_attempts(http, &relay.ops).await;
    let b = live_burst(relay, sink, secs).await;
    Phase {
        accepted_per_s: b.accepted_per_s,
        delivered_per_s: b.delivered_per_s,
        dead_attempts: dead_attempts(http, &relay.ops).await - attempts_before,
        cpu_s: b.cpu_s,
    }
}

/// Runs the case on `store` (`full`, `normal` or `postgres`).
pub async fn case(store: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (sink, sink_addr) = Sink::serve(false).await;
    // A port nothing listens on: every attempt is refused at once.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let subs = format!(
        "  - {{name: live, url: 'http://{sink_addr}/live', events: [live.event], max_in_flight: 256, timeout: 30s, retries: 20}}\n  - {{name: dead, url: 'http://{dead}/dead', events: [dead.event], max_in_flight: 64, timeout: 10s, retries: 20, backoff: {{initial: 1s, max: 10s}}}}\n"
    );
    let relay = Relay::start(dir.path(), 0, store, &subs);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let secs = Duration::from_secs(env_u64("BENCH_BURST_SECS", 10));
    let name = format!("store={store} dead-receiver");

    let healthy = phase(&relay, &sink, &http, secs).await;
    let drain = Instant::now();
    while queue_depth(&http, &relay.ops).await > 0.0 && drain.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let target = env_u64("BENCH_DEAD_EVENTS", 100_000);
    let mut queued = 0;
    while queued < target {
        let until = Instant::now() + Duration::from_secs(1);
        queued += load(
            std::slice::from_ref(&relay.app),
            "dead.event",
            sink.epoch,
            until,
            0,
        )
        .await
        .0;
    }
    // Let the first attempts fail and their retries (1 s to 10 s apart) come due.
    let settle = Duration::from_secs(env_u64("BENCH_DEAD_SETTLE_SECS", 15));
    tokio::time::sleep(settle).await;
    let burdened = phase(&relay, &sink, &http, secs).await;

    for (label, p) in [
        ("no backlog", &healthy),
        ("with the dead backlog", &burdened),
    ] {
        println!(
            "{name} {label}: accepted {:.0} events/s, healthy subscription delivered {:.0}/s, {:.0} attempts at the dead receiver, relay CPU {:.1} s",
            p.accepted_per_s, p.delivered_per_s, p.dead_attempts, p.cpu_s
        );
    }
    println!(
        "{name}: {queued} events queued for the dead receiver; ingest at {:.0}% of its rate with no backlog (target: at least 90%), deliveries at {:.0}%",
        100.0 * burdened.accepted_per_s / healthy.accepted_per_s,
        100.0 * burdened.delivered_per_s / healthy.delivered_per_s
    );
    if store == "postgres" {
        drop(relay);
        drop_schema(&bench_schema(dir.path())).await;
    }
}
