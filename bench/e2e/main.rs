//! End-to-end benchmark against the release binary, on loopback only.
//!
//! `cargo bench --bench e2e` runs, for `storage.sync` full and normal and fan-out 1 and 10:
//! - burst ingest: events posted as fast as the load generator can for `BENCH_BURST_SECS`
//!   (default 10) while the receiver holds every request (paused): accepted events/s and
//!   accept latency;
//! - steady state: events offered at a fixed rate for `BENCH_STEADY_SECS` (default 60) with
//!   the receiver answering 200: delivered/s, event-to-delivery latency, and whether the queue
//!   depth stayed flat. The offered delivery rate is `BENCH_RATE_FANOUT1` (default 15000) and
//!   `BENCH_RATE_FANOUT10` (default 25000) deliveries/s.
//!
//! Also the relay's peak RSS and CPU time. `BENCH_ONLY=full-1` (store-fanout) runs one case.
//!
//! `cargo bench --bench e2e -- --store postgres` runs the PostgreSQL store (the server at
//! `HOOKRELAY_TEST_DATABASE_URL`, default `postgres://root@127.0.0.1:5432/test`, a fresh
//! schema per case) beside SQLite with `sync: full` (each commit durable, as PostgreSQL's
//! default `synchronous_commit = on`), and reports the server's CPU time too (every
//! `postgres` process on the machine). Cases are named `full`, `normal` and `postgres`.
//! `BENCH_POSTGRES` adds keys to `storage.postgres` (`BENCH_POSTGRES='prepared_statements:
//! false'`).
//!
//! `cargo bench --bench e2e -- --replicas 1,2,3` runs the PostgreSQL fan-out 10 case once per
//! count, with that many relays sharing one schema (each its own `HOSTNAME`); the load
//! generator spreads its connections over their app ports. CPU is summed over the relays,
//! peak RSS is the largest one's. Cases are named `postgres-10-r2` and so on.
//!
//! `cargo bench --bench e2e -- --dead-receiver` measures ingest and a healthy subscription's
//! deliveries with no backlog, then with `BENCH_DEAD_EVENTS` (default 100,000) events queued
//! for a receiver that refuses connections, `BENCH_DEAD_SETTLE_SECS` (default 15) after they
//! were queued; with `--store postgres`, on PostgreSQL too.
//!
//! `cargo bench --bench e2e -- --footprint` starts the relay with the default settings (one
//! subscription, `sync: full`) and reports the time from the spawn to `/readyz` answering 200
//! (median of 5 starts on a fresh store, and of 5 restarts on the same one), its memory
//! (VmRSS, RssAnon, RssFile) and threads after 3 s idle, then with 10 subscriptions the peak
//! RSS while `BENCH_BACKLOG` (default 100,000) deliveries queue up behind a receiver holding
//! every request and drain, and the RSS 5 s after the drain against the idle one.
//!
//! `cargo bench --bench e2e -- --queued` measures, on an empty store and again with
//! `BENCH_QUEUED` (default 1,000,000) deliveries queued for 10 paused subscriptions, burst
//! ingest of a live subscription's events (`BENCH_BURST_SECS`) and its deliveries through the
//! relay, and in process against the store: single-event accepts and claims of 100 (with their
//! outcomes). Both take `--store postgres` to run PostgreSQL after SQLite.
//!
//! `cargo bench --bench e2e -- --versus` runs nginx (`proxy_pass`, one worker, no durability)
//! and hookrelay (`sync: full`) side by side under the same wrk load: `-t1`,
//! `BENCH_VERSUS_CONNECTIONS` (default 32) connections for `BENCH_VERSUS_SECS` (default 15),
//! at fan-out 1 and 10 (nginx with nine `mirror`s more), a fresh nginx, relay and database
//! each time, `BENCH_ROUNDS` (default 3) rounds. It prints hookrelay/nginx ratios (accepted/s
//! at fan-out 1, deliveries/s at 10) and their medians as a markdown table, issue 19's targets
//! beside them; `--store postgres` adds PostgreSQL. Missing nginx or wrk is installed with
//! apt-get.
//!
//! The load generator and receiver share the machine with the relay, as a sidecar's app would.

mod dead_receiver;
mod footprint;
mod harness;
mod queued;
mod throughput;
mod versus;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes --bench; `--store postgres` adds the PostgreSQL cases beside
    // SQLite's durable ones; other arguments are ignored.
    let args: Vec<String> = std::env::args().collect();
    let postgres = args
        .windows(2)
        .any(|w| w[0] == "--store" && w[1] == "postgres")
        || args.iter().any(|a| a == "--store=postgres");
    let replicas: Option<Vec<usize>> = args.windows(2).find(|w| w[0] == "--replicas").map(|w| {
        w[1].split(',')
            .map(|n| n.parse().expect("--replicas 1,2,3"))
            .collect()
    });
    let cases: Vec<(&str, usize, usize)> = match replicas {
        Some(counts) => counts
            .into_iter()
            .map(|n| ("postgres", 10, n.max(1)))
            .collect(),
        None if postgres => vec![
            ("full", 1, 1),
            ("postgres", 1, 1),
            ("full", 10, 1),
            ("postgres", 10, 1),
        ],
        None => vec![
            ("full", 1, 1),
            ("full", 10, 1),
            ("normal", 1, 1),
            ("normal", 10, 1),
        ],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if args.iter().any(|a| a == "--versus") {
        versus::run(&runtime, postgres);
        return;
    }
    if args.iter().any(|a| a == "--dead-receiver") {
        runtime.block_on(dead_receiver::case("full"));
        if postgres {
            runtime.block_on(dead_receiver::case("postgres"));
        }
        return;
    }
    let stores: &[&str] = if postgres {
        &["full", "postgres"]
    } else {
        &["full"]
    };
    if args.iter().any(|a| a == "--footprint") {
        stores
            .iter()
            .for_each(|s| runtime.block_on(footprint::case(s)));
        return;
    }
    if args.iter().any(|a| a == "--queued") {
        stores
            .iter()
            .for_each(|s| runtime.block_on(queued::case(s)));
        return;
    }
    let only = std::env::var("BENCH_ONLY").ok();
    for (sync, fanout, replicas) in cases {
        let id = match replicas {
            1 => format!("{sync}-{fanout}"),
            n => format!("{sync}-{fanout}-r{n}"),
        };
        if only.as_deref().is_some_and(|o| o != id) {
            continue;
        }
        runtime.block_on(throughput::case(sync, fanout, replicas));
    }
}
