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
//! The load generator and receiver share the machine with the relay, as a sidecar's app would.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use tokio::sync::Notify;

const BIN: &str = env!("CARGO_BIN_EXE_hookrelay");
/// Concurrent connections of the load generator.
const CONNECTIONS: usize = 256;
/// Event payload size.
const PAYLOAD: usize = 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The receiver: answers 200, or holds requests while paused; records delivery latency.
#[derive(Clone)]
struct Sink {
    epoch: Instant,
    paused: Arc<AtomicBool>,
    resume: Arc<Notify>,
    delivered: Arc<AtomicU64>,
    latencies_us: Arc<Mutex<Vec<u32>>>,
}

async fn receive(State(sink): State<Sink>, body: Bytes) -> StatusCode {
    while sink.paused.load(Ordering::SeqCst) {
        let wait = sink.resume.notified();
        if !sink.paused.load(Ordering::SeqCst) {
            break;
        }
        wait.await;
    }
    // The payload starts with {"t":<microseconds since epoch>,...
    let sent = std::str::from_utf8(&body[5..body.len().min(30)])
        .ok()
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse::<u64>().ok());
    if let Some(sent) = sent {
        let now = sink.epoch.elapsed().as_micros() as u64;
        sink.latencies_us
            .lock()
            .unwrap()
            .push(now.saturating_sub(sent) as u32);
    }
    sink.delivered.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

struct Relay {
    child: Child,
    app: String,
    ops: String,
}

impl Relay {
    /// Starts relay `index` of a case (the relays of one case share its store).
    fn start(
        dir: &std::path::Path,
        index: usize,
        store: &str,
        fanout: usize,
        sink: SocketAddr,
    ) -> Relay {
        let subs: String = (0..fanout)
            .map(|i| {
                format!(
                    "  - {{name: s{i}, url: 'http://{sink}/s{i}', events: ['*'], max_in_flight: 256, timeout: 30s, retries: 20}}\n"
                )
            })
            .collect();
        let storage = match store {
            "postgres" => format!(
                "postgres: {{url: '{}', schema: {}{}}}",
                database_url(),
                bench_schema(dir),
                std::env::var("BENCH_POSTGRES")
                    .map(|keys| format!(", {keys}"))
                    .unwrap_or_default()
            ),
            sync => format!("path: '{}', sync: {sync}", dir.join("bench.db").display()),
        };
        let config = dir.join(format!("bench-{index}.yaml"));
        std::fs::write(
            &config,
            format!(
                "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\nlog: {{format: json, level: warn}}\nlimits: {{max_concurrent_requests: 4096}}\nstorage: {{{storage}, queue_capacity: 65536}}\ndelivery: {{max_in_flight_total: 4096}}\nsubscriptions:\n{subs}"
            ),
        )
        .unwrap();
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "hookrelay=info")
            .env("HOSTNAME", format!("bench-{index}"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("release binary");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "hookrelay listening"
                {
                    let _ = tx.send((
                        v["app"].as_str().unwrap().to_string(),
                        v["ops"].as_str().unwrap().to_string(),
                    ));
                }
            }
        });
        let (app, ops) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("relay started");
        Relay { child, app, ops }
    }

    /// (peak RSS bytes, CPU seconds) from /proc.
    fn usage(&self) -> (u64, f64) {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
            f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
        });
        (hwm, ticks / 100.0)
    }
}

/// The PostgreSQL server the `postgres` cases use.
fn database_url() -> String {
    std::env::var("HOOKRELAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// A schema name unique to the case's directory.
fn bench_schema(dir: &std::path::Path) -> String {
    let tag: String = dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("hr_bench_{}", tag.to_ascii_lowercase())
}

/// Drops the case's schema.
async fn drop_schema(schema: &str) {
    let (client, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL");
    tokio::spawn(conn);
    let _ = client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await;
}

/// CPU seconds used so far by every process named `postgres` (the server's backends).
fn postgres_cpu() -> f64 {
    let mut ticks = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(postgres") {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields.get(11..13).map_or(0.0, |f| {
            f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
        });
    }
    ticks / 100.0
}

/// The relay's /metrics exposition.
async fn metrics_text(http: &reqwest::Client, ops: &str) -> String {
    http.get(format!("http://{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Total queue depth from the relay's /metrics.
async fn queue_depth(http: &reqwest::Client, ops: &str) -> f64 {
    metrics_text(http, ops)
        .await
        .lines()
        .filter(|l| l.starts_with("hookrelay_queue_depth{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn payload(epoch: Instant) -> String {
    let t = epoch.elapsed().as_micros();
    let head = format!("{{\"type\":\"bench.event\",\"data\":{{\"t\":{t},\"pad\":\"");
    let pad = PAYLOAD.saturating_sub(head.len() + 4);
    format!("{head}{}\"}}}}", "x".repeat(pad))
}

/// Posts events until `until`, at most `rate` per second (0 = as fast as possible), spreading
/// the connections over `apps`.
async fn load(apps: &[String], epoch: Instant, until: Instant, rate: u64) -> (u64, u64, Vec<u32>) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for connection in 0..CONNECTIONS {
        let (http, url, accepted, refused, issued) = (
            http.clone(),
            format!("http://{}/v1/events", apps[connection % apps.len()]),
            accepted.clone(),
            refused.clone(),
            issued.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < until {
                if rate > 0 {
                    // Open loop: request n goes at start + n / rate.
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    let at = start + Duration::from_secs_f64(n as f64 / rate as f64);
                    if at >= until {
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                }
                let sent = Instant::now();
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(payload(epoch))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 202 => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        lat.push(sent.elapsed().as_micros() as u32);
                    }
                    _ => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap());
    }
    latencies.sort_unstable();
    (
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        latencies,
    )
}

async fn case(sync: &str, fanout: usize, replicas: usize) {
    let name = if replicas > 1 {
        format!("store={sync} fanout={fanout} replicas={replicas}")
    } else {
        format!("store={sync} fanout={fanout}")
    };
    let dir = tempfile::tempdir().unwrap();
    let pg_cpu = postgres_cpu();
    let epoch = Instant::now();
    let sink = Sink {
        epoch,
        paused: Arc::new(AtomicBool::new(true)),
        resume: Arc::new(Notify::new()),
        delivered: Arc::new(AtomicU64::new(0)),
        latencies_us: Arc::new(Mutex::new(Vec::new())),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .fallback(receive)
        .with_state(sink.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let relays: Vec<Relay> = (0..replicas)
        .map(|i| Relay::start(dir.path(), i, sync, fanout, sink_addr))
        .collect();
    let apps: Vec<String> = relays.iter().map(|r| r.app.clone()).collect();
    // The store's queue depth is the same from every relay; ask the first.
    let ops = relays[0].ops.clone();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // Burst ingest with the receiver paused.
    let burst = Duration::from_secs(env_u64("BENCH_BURST_SECS", 10));
    let t0 = Instant::now();
    let (accepted, refused, lat) = load(&apps, epoch, t0 + burst, 0).await;
    let took = t0.elapsed().as_secs_f64();
    println!(
        "{name} burst: accepted {:.0}/s ({accepted} in {took:.1}s, {refused} refused), accept latency p50 {:.2} ms p99 {:.2} ms",
        accepted as f64 / took,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    // Drain the backlog before the steady phase.
    sink.paused.store(false, Ordering::SeqCst);
    sink.resume.notify_waiters();
    let drain = Instant::now();
    while queue_depth(&http, &ops).await > 0.0 && drain.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "{name} drain: {} deliveries of the burst in {:.1}s ({:.0}/s)",
        sink.delivered.load(Ordering::Relaxed),
        drain.elapsed().as_secs_f64(),
        sink.delivered.load(Ordering::Relaxed) as f64 / drain.elapsed().as_secs_f64()
    );

    // Steady state at the target delivery rate.
    let target = if fanout == 1 {
        env_u64("BENCH_RATE_FANOUT1", 15_000)
    } else {
        env_u64("BENCH_RATE_FANOUT10", 25_000)
    };
    let event_rate = (target / fanout as u64).max(1);
    let steady = Duration::from_secs(env_u64("BENCH_STEADY_SECS", 60));
    sink.latencies_us.lock().unwrap().clear();
    let delivered_before = sink.delivered.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let until = t0 + steady;
    let sampler = {
        let http = http.clone();
        let ops = ops.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(5)).await;
                samples.push(queue_depth(&http, &ops).await);
            }
            samples
        })
    };
    let (accepted, refused, lat) = load(&apps, epoch, until, event_rate).await;
    let took = t0.elapsed().as_secs_f64();
    let delivered = sink.delivered.load(Ordering::Relaxed) - delivered_before;
    let depths = sampler.await.unwrap();
    let mut e2e = sink.latencies_us.lock().unwrap().clone();
    e2e.sort_unstable();
    let (rss, cpu) = relays
        .iter()
        .map(Relay::usage)
        .fold((0, 0.0), |(rss, cpu), (r, c)| (rss.max(r), cpu + c));
    let mut metrics = Vec::new();
    for relay in &relays {
        metrics.push(metrics_text(&http, &relay.ops).await);
    }
    // Each relay's own counters, summed.
    let value = |name: &str| -> f64 {
        metrics
            .iter()
            .flat_map(|m| m.lines())
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    println!(
        "{name} store: {:.0} transactions, mean {:.2} ms each, mean {:.1} jobs each",
        value("hookrelay_store_commit_duration_seconds_count"),
        1000.0 * value("hookrelay_store_commit_duration_seconds_sum")
            / value("hookrelay_store_commit_duration_seconds_count"),
        value("hookrelay_store_batch_size_sum") / value("hookrelay_store_batch_size_count"),
    );
    let tail = &depths[depths.len().saturating_sub(depths.len() * 3 / 4 + 1)..];
    let spread = tail.iter().cloned().fold(f64::MIN, f64::max)
        - tail.iter().cloned().fold(f64::MAX, f64::min);
    let flat =
        spread <= target as f64 * 0.5 && tail.last().copied().unwrap_or(0.0) <= target as f64;
    println!(
        "{name} steady: offered {event_rate} events/s ({target} deliveries/s) for {took:.0}s: accepted {:.0}/s ({refused} refused), delivered {:.0}/s, accept p50 {:.2} ms p99 {:.2} ms, event-to-delivery p50 {:.2} ms p99 {:.2} ms, queue depth samples {:?} -> {}",
        accepted as f64 / took,
        delivered as f64 / took,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&e2e, 0.5),
        percentile(&e2e, 0.99),
        depths,
        if flat {
            "flat"
        } else {
            "GROWING (target not met)"
        }
    );
    println!(
        "{name} relay: peak RSS {:.1} MiB (the largest relay), CPU {cpu:.1} s over the case (all relays)",
        rss as f64 / 1048576.0
    );
    if sync == "postgres" {
        println!(
            "{name} PostgreSQL server: CPU {:.1} s over the case",
            postgres_cpu() - pg_cpu
        );
        drop(relays);
        drop_schema(&bench_schema(dir.path())).await;
    }
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
    let only = std::env::var("BENCH_ONLY").ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (sync, fanout, replicas) in cases {
        let id = match replicas {
            1 => format!("{sync}-{fanout}"),
            n => format!("{sync}-{fanout}-r{n}"),
        };
        if only.as_deref().is_some_and(|o| o != id) {
            continue;
        }
        runtime.block_on(case(sync, fanout, replicas));
    }
}
