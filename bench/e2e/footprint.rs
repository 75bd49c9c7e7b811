//! The footprint case: how soon a started relay is ready, what it holds while idle, and
//! whether its memory comes back after a backlog drains. Each figure is printed beside its
//! target from issue 19.
//!
//! The relay runs with the default settings but for its ports, its store and its
//! subscriptions, as a sidecar would: the other cases raise the limits for throughput.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::env_u64;
use crate::harness::{Sink, bench_schema, bin, drop_schema, post_count, queue_depth, storage};

/// Starts timed per kind of start; the median is reported.
const STARTS: usize = 5;
/// How long the relay idles before its memory is read.
const IDLE: Duration = Duration::from_secs(3);
/// How long after the drain its memory is read again.
const AFTER_DRAIN: Duration = Duration::from_secs(5);
const MIB: f64 = 1048576.0;

/// A relay started on ports picked beforehand, so `/readyz` can be polled from the spawn on.
struct Spawned {
    child: Child,
    app: String,
    ops: SocketAddr,
    log: PathBuf,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three free loopback ports (held together while picked, so they differ).
fn free_ports() -> [u16; 3] {
    let held: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    [0, 1, 2].map(|i| held[i].local_addr().unwrap().port())
}

/// Spawns a relay on the store of `dir` with `subs`; its log goes to `dir/relay-N.log`.
fn spawn(dir: &Path, store: &str, subs: &str, n: usize) -> Spawned {
    let [app, api, ops] = free_ports();
    let config = dir.join(format!("footprint-{n}.yaml"));
    std::fs::write(
        &config,
        format!(
            "listen: {{app: '127.0.0.1:{app}', api: '127.0.0.1:{api}', ops: '127.0.0.1:{ops}'}}\nlog: {{format: json, level: warn}}\nstorage: {{{}}}\nsubscriptions:\n{subs}",
            storage(dir, store)
        ),
    )
    .unwrap();
    let log = dir.join(format!("relay-{n}.log"));
    let child = Command::new(bin())
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("release binary");
    Spawned {
        child,
        app: format!("127.0.0.1:{app}"),
        ops: SocketAddr::from(([127, 0, 0, 1], ops)),
        log,
    }
}

/// True when `/readyz` answers 200 now (a fresh connection each time, as a kubelet probes).
async fn ready_now(ops: SocketAddr) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(ops).await.ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nhost: relay\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(&head == b"HTTP/1.1 200")
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Polls `/readyz` every millisecond until it answers 200; the time since `since`.
async fn until_ready(relay: &mut Spawned, since: Instant) -> Duration {
    loop {
        if ready_now(relay.ops).await {
            return since.elapsed();
        }
        if let Some(status) = relay.child.try_wait().unwrap() {
            panic!(
                "the relay exited ({status}): {}",
                std::fs::read_to_string(&relay.log).unwrap_or_default()
            );
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "the relay was not ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Spawns a relay and times it to ready.
async fn start(dir: &Path, store: &str, subs: &str, n: usize) -> (Spawned, Duration) {
    let since = Instant::now();
    let mut relay = spawn(dir, store, subs, n);
    let took = until_ready(&mut relay, since).await;
    (relay, took)
}

/// A process's memory (bytes) and threads, from /proc/PID/status.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss: u64,
    anon: u64,
    file: u64,
    peak: u64,
    threads: u64,
}

impl Memory {
    fn of(relay: &Spawned) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", relay.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Memory {
            rss: field("VmRSS") * 1024,
            anon: field("RssAnon") * 1024,
            file: field("RssFile") * 1024,
            peak: field("VmHWM") * 1024,
            threads: field("Threads"),
        }
    }

    /// `29.1 MiB (anon 16.7, file 12.4), 7 threads`.
    fn describe(&self) -> String {
        format!(
            "{:.1} MiB (anon {:.1}, file {:.1}), {} threads",
            self.rss as f64 / MIB,
            self.anon as f64 / MIB,
            self.file as f64 / MIB,
            self.threads
        )
    }
}

/// The median of some durations, with the smallest and largest, in ms.
fn spread(mut times: Vec<Duration>) -> String {
    times.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{:.1} ms ({:.1}-{:.1})",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1])
    )
}

/// A subscription line to the receiver; 30 s per attempt so a held one is not retried.
fn subscription(sink: SocketAddr, i: usize) -> String {
    format!("  - {{name: s{i}, url: 'http://{sink}/s{i}', events: ['*'], timeout: 30s}}\n")
}

/// Drops what a start left on PostgreSQL.
async fn clean(store: &str, dir: &Path) {
    if store == "postgres" {
        drop_schema(&bench_schema(dir)).await;
    }
}

/// Runs the case on `store` (`full` or `postgres`) and prints its table.
pub async fn case(store: &str) {
    let name = format!("store={store} footprint");
    let (sink, sink_addr) = Sink::serve(true).await;
    let mut rows: Vec<(String, String, &str)> = Vec::new();

    // Ready: each start on a fresh store (its schema created), then restarts on one store.
    let mut fresh = Vec::new();
    for n in 0..STARTS {
        let dir = tempfile::tempdir().unwrap();
        let (relay, took) = start(dir.path(), store, &subscription(sink_addr, 0), n).await;
        fresh.push(took);
        drop(relay);
        clean(store, dir.path()).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut restarts = Vec::new();
    let mut idle_relay = None;
    for n in 0..=STARTS {
        drop(idle_relay.take());
        let (relay, took) = start(dir.path(), store, &subscription(sink_addr, 0), n).await;
        // The first start creates the store; the others reopen it.
        if n > 0 {
            restarts.push(took);
        }
        idle_relay = Some(relay);
    }
    println!("{name} ready, fresh store: {fresh:?}; same store again: {restarts:?}");
    rows.push((
        format!("ready after spawn, fresh store (median of {STARTS}, min-max)"),
        spread(fresh),
        "<= 50 ms",
    ));
    rows.push((
        format!("ready after spawn, restart on the same store (median of {STARTS})"),
        spread(restarts),
        "<= 50 ms",
    ));

    // Idle: one subscription, nothing to do.
    tokio::time::sleep(IDLE).await;
    let idle = Memory::of(idle_relay.as_ref().unwrap());
    drop(idle_relay);
    clean(store, dir.path()).await;
    println!("{name} idle, 1 subscription: {}", idle.describe());
    rows.push((
        "idle RSS, 1 subscription, 3 s after ready".into(),
        idle.describe(),
        "<= 12 MiB",
    ));

    // Backlog: events fanned out to 10 subscriptions while the receiver holds every request.
    let backlog = env_u64("BENCH_BACKLOG", 100_000);
    let fanout = 10;
    let dir = tempfile::tempdir().unwrap();
    let subs: String = (0..fanout).map(|i| subscription(sink_addr, i)).collect();
    let (relay, _) = start(dir.path(), store, &subs, 0).await;
    tokio::time::sleep(IDLE).await;
    let before = Memory::of(&relay);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let events = backlog.div_ceil(fanout as u64);
    let took = post_count(&relay.app, "bench.event", sink.epoch, events).await;
    let queued = queue_depth(&http, &relay.ops.to_string()).await;
    let posted = Memory::of(&relay);
    sink.paused.store(false, Ordering::SeqCst);
    sink.resume.notify_waiters();
    let drain = Instant::now();
    while queue_depth(&http, &relay.ops.to_string()).await > 0.0 {
        assert!(
            drain.elapsed() < Duration::from_secs(600),
            "the backlog did not drain in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drained_in = drain.elapsed().as_secs_f64();
    tokio::time::sleep(AFTER_DRAIN).await;
    let after = Memory::of(&relay);
    println!(
        "{name} backlog: {events} events to {fanout} subscriptions posted in {took:.1} s, queue depth {queued:.0}, RSS then {}; drained in {drained_in:.1} s ({:.0} deliveries/s), {} delivered",
        posted.describe(),
        queued / drained_in,
        sink.delivered.load(Ordering::Relaxed)
    );
    println!(
        "{name} backlog: idle before {}; peak {:.1} MiB; {} s after the drain {}",
        before.describe(),
        after.peak as f64 / MIB,
        AFTER_DRAIN.as_secs(),
        after.describe()
    );
    drop(relay);
    clean(store, dir.path()).await;
    rows.push((
        format!("idle RSS, {fanout} subscriptions (before the backlog)"),
        before.describe(),
        "-",
    ));
    rows.push((
        format!("peak RSS, {queued:.0} deliveries queued and drained"),
        format!("{:.1} MiB", after.peak as f64 / MIB),
        "-",
    ));
    rows.push((
        format!("RSS {} s after the drain", AFTER_DRAIN.as_secs()),
        format!(
            "{}: {:.0}% of idle",
            after.describe(),
            100.0 * after.rss as f64 / before.rss as f64
        ),
        "<= 120% of idle",
    ));

    println!("\n| {name} | measured | target |\n| --- | --- | --- |");
    for (what, figure, target) in rows {
        println!("| {what} | {figure} | {target} |");
    }
    println!();
}
