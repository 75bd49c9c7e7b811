//! What every case uses: the receiver, the relay process, the load generator and readings
//! from /proc and /metrics.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use tokio::sync::Notify;

/// The release build of this checkout.
const BIN: &str = env!("CARGO_BIN_EXE_hookrelay");

/// The relay binary the cases start: `BENCH_BIN` when set (the static build the image
/// ships, say), else the release build of this checkout.
pub fn bin() -> std::ffi::OsString {
    std::env::var_os("BENCH_BIN").unwrap_or_else(|| BIN.into())
}

/// Concurrent connections of the load generator.
pub const CONNECTIONS: usize = 256;
/// Event payload size.
const PAYLOAD: usize = 1024;

/// The receiver: answers 200, or holds requests while paused; records delivery latency.
#[derive(Clone)]
pub struct Sink {
    pub epoch: Instant,
    pub paused: Arc<AtomicBool>,
    pub resume: Arc<Notify>,
    pub delivered: Arc<AtomicU64>,
    pub latencies_us: Arc<Mutex<Vec<u32>>>,
}

impl Sink {
    /// A receiver on a loopback port, holding requests from the start if `paused`.
    pub async fn serve(paused: bool) -> (Sink, std::net::SocketAddr) {
        let sink = Sink {
            epoch: Instant::now(),
            paused: Arc::new(AtomicBool::new(paused)),
            resume: Arc::new(Notify::new()),
            delivered: Arc::new(AtomicU64::new(0)),
            latencies_us: Arc::new(Mutex::new(Vec::new())),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(sink.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (sink, addr)
    }
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

pub struct Relay {
    child: Child,
    pub app: String,
    pub ops: String,
}

impl Relay {
    /// Starts relay `index` of a case (the relays of one case share its store).
    pub fn start(dir: &Path, index: usize, store: &str, subs: &str) -> Relay {
        let storage = storage(dir, store);
        let config = dir.join(format!("bench-{index}.yaml"));
        std::fs::write(
            &config,
            format!(
                "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\nlog: {{format: json, level: warn}}\nlimits: {{max_concurrent_requests: 4096}}\nstorage: {{{storage}, queue_capacity: 65536}}\ndelivery: {{max_in_flight_total: 4096}}\nsubscriptions:\n{subs}"
            ),
        )
        .unwrap();
        let mut child = Command::new(bin())
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
    pub fn usage(&self) -> (u64, f64) {
        process_usage(self.child.id())
    }
}

/// The `storage` keys of a case's relays: `full` and `normal` are SQLite's `sync` (the file
/// in `dir`), `postgres` the case's schema on the server (plus `BENCH_POSTGRES`'s keys).
pub fn storage(dir: &Path, store: &str) -> String {
    match store {
        "postgres" => format!(
            "postgres: {{url: '{}', schema: {}{}}}",
            database_url(),
            bench_schema(dir),
            std::env::var("BENCH_POSTGRES")
                .map(|keys| format!(", {keys}"))
                .unwrap_or_default()
        ),
        sync => format!("path: '{}', sync: {sync}", dir.join("bench.db").display()),
    }
}

/// (peak RSS bytes, CPU seconds) of process `pid`, from /proc.
pub fn process_usage(pid: u32) -> (u64, f64) {
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

/// The PostgreSQL server the `postgres` cases use.
pub fn database_url() -> String {
    std::env::var("HOOKRELAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// A schema name unique to the case's directory.
pub fn bench_schema(dir: &Path) -> String {
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
pub async fn drop_schema(schema: &str) {
    let (client, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL");
    tokio::spawn(conn);
    let _ = client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await;
}

/// CPU seconds used so far by every process named `postgres` (the server's backends).
pub fn postgres_cpu() -> f64 {
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
pub async fn metrics_text(http: &reqwest::Client, ops: &str) -> String {
    http.get(format!("http://{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Total queue depth from the relay's /metrics.
pub async fn queue_depth(http: &reqwest::Client, ops: &str) -> f64 {
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

pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// An event of `kind` (`bench.event`) whose data starts with its send time.
pub fn payload(epoch: Instant, kind: &str) -> String {
    let t = epoch.elapsed().as_micros();
    let head = format!("{{\"type\":\"{kind}\",\"data\":{{\"t\":{t},\"pad\":\"");
    let pad = PAYLOAD.saturating_sub(head.len() + 4);
    format!("{head}{}\"}}}}", "x".repeat(pad))
}

/// Posts events until `until`, at most `rate` per second (0 = as fast as possible), spreading
/// the connections over `apps`.
pub async fn load(
    apps: &[String],
    kind: &str,
    epoch: Instant,
    until: Instant,
    rate: u64,
) -> (u64, u64, Vec<u32>) {
    let http = load_client();
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for connection in 0..CONNECTIONS {
        let kind = kind.to_string();
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
                let r = post_event(&http, &url, epoch, &kind).await;
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

/// Posts exactly `count` events of `kind` over the load generator's connections, as fast as
/// the relay takes them (a refused one is posted again); returns the seconds it took.
pub async fn post_count(app: &str, kind: &str, epoch: Instant, count: u64) -> f64 {
    let http = load_client();
    let next = Arc::new(AtomicU64::new(0));
    let url = format!("http://{app}/v1/events");
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONNECTIONS {
        let (http, url, next, kind) = (http.clone(), url.clone(), next.clone(), kind.to_string());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                loop {
                    let r = post_event(&http, &url, epoch, &kind).await;
                    if r.is_ok_and(|r| r.status() == 202) {
                        break;
                    }
                    // Full (503) or a dropped connection: the relay sheds load; try again.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    start.elapsed().as_secs_f64()
}

/// The load generator's HTTP client: keep-alive for every connection.
fn load_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap()
}

/// What a burst of live events did.
pub struct LiveBurst {
    pub accepted_per_s: f64,
    pub delivered_per_s: f64,
    /// Accept latencies, sorted, in microseconds.
    pub latencies: Vec<u32>,
    pub cpu_s: f64,
}

/// `live.event`s posted as fast as the load generator can for `secs`, delivered as they come.
pub async fn live_burst(relay: &Relay, sink: &Sink, secs: Duration) -> LiveBurst {
    let cpu_before = relay.usage().1;
    let delivered_before = sink.delivered.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let (accepted, _, latencies) = load(
        std::slice::from_ref(&relay.app),
        "live.event",
        sink.epoch,
        t0 + secs,
        0,
    )
    .await;
    let took = t0.elapsed().as_secs_f64();
    LiveBurst {
        accepted_per_s: accepted as f64 / took,
        delivered_per_s: (sink.delivered.load(Ordering::Relaxed) - delivered_before) as f64 / took,
        latencies,
        cpu_s: relay.usage().1 - cpu_before,
    }
}

/// Posts one event of `kind` to `url`.
async fn post_event(
    http: &reqwest::Client,
    url: &str,
    epoch: Instant,
    kind: &str,
) -> reqwest::Result<reqwest::Response> {
    http.post(url)
        .header("content-type", "application/json")
        .body(payload(epoch, kind))
        .send()
        .await
}
