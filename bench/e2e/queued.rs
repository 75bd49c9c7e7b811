//! The queued case: whether the cost of new work grows with the work already waiting. Ingest
//! through the relay, and claims and single accepts against the store in process, each
//! measured on an empty store and again with `BENCH_QUEUED` (default 1,000,000) deliveries of
//! other subscriptions queued. Issue 19's target: within 10% of the empty store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use hookrelay::event::Event;
use hookrelay::store::settings::{
    DatabaseUrl, PostgresSettings, StorageLocation, StorageSettings, SyncMode, TlsMode,
};
use hookrelay::store::{Accepted, Attempted, NewDelivery, Outcome, Store, WriterMetrics};
use hookrelay::time::{new_id, now_ms};

use crate::env_u64;
use crate::harness::{
    Relay, Sink, bench_schema, database_url, drop_schema, live_burst, metrics_text, percentile,
    post_count, queue_depth,
};

/// Subscriptions that hold the queued deliveries (each queued event matches all of them).
const HOLDERS: usize = 10;
/// Single-event accepts timed per store state.
const ACCEPTS: usize = 1000;
/// Claims timed per store state, and the batch each asks for.
const CLAIMS: usize = 500;
const CLAIM_BATCH: usize = 100;
/// Events per `Store::accept` call when filling in process.
const FILL_BATCH: usize = 1000;
/// Quiet time after a fill or drain, so checkpoints and vacuums are not in the next phase.
const SETTLE: Duration = Duration::from_secs(5);

/// Runs both halves on `store` (`full` or `postgres`).
pub async fn case(store: &str) {
    let queued = env_u64("BENCH_QUEUED", 1_000_000);
    ingest(store, queued).await;
    claims(store, queued).await;
}

/// What one burst of live events measured.
struct Burst {
    accepted_per_s: f64,
    delivered_per_s: f64,
    accept_p50_ms: f64,
    accept_p99_ms: f64,
    cpu_s: f64,
}

/// Live events posted as fast as the load generator can for `secs`, delivered as they come.
async fn burst(relay: &Relay, sink: &Sink, secs: Duration) -> Burst {
    let b = live_burst(relay, sink, secs).await;
    Burst {
        accepted_per_s: b.accepted_per_s,
        delivered_per_s: b.delivered_per_s,
        accept_p50_ms: percentile(&b.latencies, 0.5),
        accept_p99_ms: percentile(&b.latencies, 0.99),
        cpu_s: b.cpu_s,
    }
}

/// The live subscription's queue depth, and how long the scrape that read it took.
async fn live_depth(http: &reqwest::Client, ops: &str) -> (f64, Duration) {
    let t0 = Instant::now();
    let text = metrics_text(http, ops).await;
    let took = t0.elapsed();
    let depth = text
        .lines()
        .filter(|l| l.starts_with("hookrelay_queue_depth{") && l.contains("subscription=\"live\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    (depth, took)
}

/// Waits until the live subscription has nothing queued; the last scrape's duration.
async fn drain_live(http: &reqwest::Client, ops: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (depth, scrape) = live_depth(http, ops).await;
        if depth == 0.0 {
            return scrape;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the live subscription did not drain in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Ingest through the relay: one live subscription, `HOLDERS` paused ones that keep what
/// they match queued.
async fn ingest(store: &str, queued: u64) {
    let name = format!("store={store} queued ingest");
    let dir = tempfile::tempdir().unwrap();
    let (sink, sink_addr) = Sink::serve(false).await;
    let mut subs = format!(
        "  - {{name: live, url: 'http://{sink_addr}/live', events: [live.event], max_in_flight: 256, timeout: 30s}}\n"
    );
    for i in 0..HOLDERS {
        subs.push_str(&format!(
            "  - {{name: q{i}, url: 'http://{sink_addr}/q{i}', events: [queued.event], paused: true}}\n"
        ));
    }
    let relay = Relay::start(dir.path(), 0, store, &subs);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let secs = Duration::from_secs(env_u64("BENCH_BURST_SECS", 10));

    let empty = burst(&relay, &sink, secs).await;
    let scrape_empty = drain_live(&http, &relay.ops).await;
    tokio::time::sleep(SETTLE).await;

    let events = queued.div_ceil(HOLDERS as u64);
    let took = post_count(&relay.app, "queued.event", sink.epoch, events).await;
    let depth = queue_depth(&http, &relay.ops).await;
    println!(
        "{name}: {events} events for {HOLDERS} paused subscriptions posted in {took:.1} s ({:.0} events/s); queue depth {depth:.0}",
        events as f64 / took
    );
    assert!(depth >= queued as f64, "fewer deliveries queued than asked");
    let scrape_queued = drain_live(&http, &relay.ops).await;
    tokio::time::sleep(SETTLE).await;
    let full = burst(&relay, &sink, secs).await;
    let (peak_rss, _) = relay.usage();

    for (label, b) in [("empty store", &empty), ("with the queue", &full)] {
        println!(
            "{name} {label}: accepted {:.0} events/s (accept p50 {:.2} ms p99 {:.2} ms), delivered {:.0}/s, relay CPU {:.1} s",
            b.accepted_per_s, b.accept_p50_ms, b.accept_p99_ms, b.delivered_per_s, b.cpu_s
        );
    }
    println!(
        "{name}: one /metrics scrape took {:.1} ms empty, {:.1} ms with the queue; relay peak RSS {:.1} MiB",
        scrape_empty.as_secs_f64() * 1000.0,
        scrape_queued.as_secs_f64() * 1000.0,
        peak_rss as f64 / 1048576.0
    );
    println!(
        "\n| {name}, {depth:.0} queued | empty | queued | ratio | target |\n| --- | --- | --- | --- | --- |"
    );
    println!(
        "| accepted events/s | {:.0} | {:.0} | {:.2} | >= 0.90 |",
        empty.accepted_per_s,
        full.accepted_per_s,
        full.accepted_per_s / empty.accepted_per_s
    );
    println!(
        "| live delivered/s | {:.0} | {:.0} | {:.2} | >= 0.90 |\n",
        empty.delivered_per_s,
        full.delivered_per_s,
        full.delivered_per_s / empty.delivered_per_s
    );
    drop(relay);
    if store == "postgres" {
        drop_schema(&bench_schema(dir.path())).await;
    }
}

/// Histograms nobody reads.
fn writer_metrics() -> WriterMetrics {
    let h = || prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).unwrap();
    WriterMetrics {
        commit_duration: h(),
        batch_size: h(),
    }
}

/// Settings of an in-process store: SQLite `sync: full` in `dir`, or `schema` on the server.
fn settings(store: &str, dir: &std::path::Path, schema: &str) -> StorageSettings {
    let location = match store {
        "postgres" => StorageLocation::Postgres(PostgresSettings {
            url: DatabaseUrl::parse(&database_url()).expect("HOOKRELAY_TEST_DATABASE_URL"),
            schema: schema.into(),
            pool: 4,
            tls: TlsMode::Disable,
            ca: None,
            connect_timeout: Duration::from_secs(5),
            prepared_statements: true,
            lease: Duration::from_secs(60),
            direct_url: None,
            sync_interval: Duration::from_secs(1),
        }),
        _ => StorageLocation::File(dir.join("claims.db")),
    };
    StorageSettings {
        location,
        sync: SyncMode::Full,
        ..StorageSettings::default()
    }
}

/// A 1 KiB event of `kind` accepted now, with one delivery to each of `subs`.
fn accepted(kind: &str, subs: &[Arc<str>]) -> Accepted {
    let data = format!("{{\"pad\":\"{}\"}}", "x".repeat(1010));
    Accepted::new(
        Event {
            id: new_id(),
            event_type: kind.into(),
            data: Bytes::from(data),
            received_at_ms: now_ms(),
            raw: None,
        },
        subs.iter().map(|s| NewDelivery::new(s.clone())).collect(),
    )
}

/// Stores `events` events of `kind` for `subs`, `FILL_BATCH` per call.
async fn fill(store: &dyn Store, kind: &str, subs: &[Arc<str>], events: usize) {
    let mut left = events;
    while left > 0 {
        let n = left.min(FILL_BATCH);
        let batch = (0..n).map(|_| accepted(kind, subs)).collect();
        store.accept(batch).await.expect("accept");
        left -= n;
    }
}

/// Sorted latencies in µs, as `percentile` reads them (it answers in ms).
fn sorted(mut us: Vec<u32>) -> Vec<u32> {
    us.sort_unstable();
    us
}

/// What one store state measured, each sorted, in µs.
struct Timings {
    accept: Vec<u32>,
    claim: Vec<u32>,
    cycle: Vec<u32>,
}

/// Single accepts, then claims of `CLAIM_BATCH` with the outcome of each, for `live`.
async fn measure(store: &dyn Store, live: &Arc<str>) -> Timings {
    let one = std::slice::from_ref(live);
    let mut accept = Vec::with_capacity(ACCEPTS);
    for _ in 0..ACCEPTS {
        let a = accepted("live.event", one);
        let t0 = Instant::now();
        store.accept(vec![a]).await.expect("accept");
        accept.push(t0.elapsed().as_micros() as u32);
    }
    fill(store, "live.event", one, CLAIMS * CLAIM_BATCH).await;
    let (mut claim, mut cycle) = (Vec::new(), Vec::new());
    // Every live delivery is taken, so the next state starts with none; full batches timed.
    loop {
        let t0 = Instant::now();
        let claimed = store
            .claim_due(live, now_ms(), CLAIM_BATCH, Duration::from_secs(10))
            .await
            .expect("claim");
        let claimed_in = t0.elapsed();
        let n = claimed.len();
        let at_ms = now_ms();
        let outcomes = claimed.into_iter().map(|d| {
            store.complete(
                d.id,
                d.token,
                Outcome::Delivered { status: 200 },
                Attempted {
                    at_ms,
                    duration_us: 1000,
                    result: "success",
                },
            )
        });
        for done in join_all(outcomes).await {
            done.expect("complete");
        }
        if n < CLAIM_BATCH {
            break;
        }
        claim.push(claimed_in.as_micros() as u32);
        cycle.push(t0.elapsed().as_micros() as u32);
    }
    Timings {
        accept: sorted(accept),
        claim: sorted(claim),
        cycle: sorted(cycle),
    }
}

/// Claims and accepts against the store in process, empty and then with the queue.
async fn claims(store: &str, queued: u64) {
    let name = format!("store={store} queued store");
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("hr_bench_claims_{:08x}", fastrand::u32(..));
    let opened = hookrelay::store::open(&settings(store, dir.path(), &schema), writer_metrics())
        .await
        .expect("store");
    let s = opened.store.clone();
    let live: Arc<str> = Arc::from("live");
    let holders: Vec<Arc<str>> = (0..HOLDERS).map(|i| Arc::from(format!("q{i}"))).collect();

    let empty = measure(&*s, &live).await;
    let t0 = Instant::now();
    let events = queued.div_ceil(HOLDERS as u64) as usize;
    fill(&*s, "queued.event", &holders, events).await;
    println!(
        "{name}: {} deliveries of {HOLDERS} other subscriptions stored in {:.1} s",
        events * HOLDERS,
        t0.elapsed().as_secs_f64()
    );
    tokio::time::sleep(SETTLE).await;
    let full = measure(&*s, &live).await;
    drop(s);
    drop(opened);

    println!(
        "\n| {name}, {} queued | empty p50 / p99 | queued p50 / p99 | ratio p50 / p99 | target |\n| --- | --- | --- | --- | --- |",
        events * HOLDERS
    );
    for (what, e, f) in [
        (
            "accept of one event (one delivery)",
            &empty.accept,
            &full.accept,
        ),
        ("claim_due of 100", &empty.claim, &full.claim),
        (
            "claim_due of 100 and their 100 outcomes",
            &empty.cycle,
            &full.cycle,
        ),
    ] {
        let (e50, e99, f50, f99) = (
            percentile(e, 0.5),
            percentile(e, 0.99),
            percentile(f, 0.5),
            percentile(f, 0.99),
        );
        println!(
            "| {what} | {e50:.2} / {e99:.2} ms | {f50:.2} / {f99:.2} ms | {:.2} / {:.2} | <= 1.10 |",
            f50 / e50,
            f99 / e99
        );
    }
    println!();
    if store == "postgres" {
        drop_schema(&schema).await;
    }
}
