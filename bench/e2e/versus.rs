//! The side-by-side case (issue 19): nginx and hookrelay under the same wrk load in one run,
//! with the ratios between them. nginx relays with no durability at all (`proxy_pass`, and
//! nine `mirror`s more at fan-out 10), so it is the ceiling a relay on this machine can reach.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::env_u64;
use crate::harness::{Relay, Sink, bench_schema, drop_schema, process_usage, queue_depth};

/// Targets of issue 19: hookrelay/nginx accepted/s at fan-out 1, deliveries/s at fan-out 10.
const TARGET_FANOUT1: f64 = 0.4;
const TARGET_FANOUT10: f64 = 0.5;
/// Size of the posted envelope.
const ENVELOPE: usize = 1024;

/// The side-by-side rounds, on SQLite with `sync: full` and, with `postgres`, PostgreSQL.
pub fn run(runtime: &tokio::runtime::Runtime, postgres: bool) {
    let tools = tools();
    let stores: &[&str] = if postgres {
        &["full", "postgres"]
    } else {
        &["full"]
    };
    runtime.block_on(rounds(&tools, stores));
}

/// Paths of the two programs the case drives.
struct Tools {
    nginx: PathBuf,
    wrk: PathBuf,
}

/// `name` on PATH, or in the sbin directories (Debian's nginx is /usr/sbin/nginx, off a
/// normal user's PATH).
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `apt-get` with `args`, through `sudo -n` when not root; whether it succeeded.
fn apt_get(args: &[&str]) -> bool {
    let mut argv = vec!["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"];
    argv.extend_from_slice(args);
    let mut cmd = if is_root() {
        Command::new(argv[0])
    } else {
        let mut c = Command::new("sudo");
        c.arg("-n").arg(argv[0]);
        c
    };
    cmd.args(&argv[1..])
        .status()
        .is_ok_and(|status| status.success())
}

/// nginx and wrk, installed from the distribution's packages when missing; exits when they
/// cannot be had (figures without nginx would be ratios of nothing).
fn tools() -> Tools {
    if let (Some(nginx), Some(wrk)) = (find("nginx"), find("wrk")) {
        return Tools { nginx, wrk };
    }
    println!("versus: nginx or wrk is not installed; installing nginx-light and wrk with apt-get");
    let install = ["install", "-y", "-qq", "nginx-light", "wrk"];
    // A fresh image may have no package lists yet.
    let installed = apt_get(&install) || (apt_get(&["update", "-qq"]) && apt_get(&install));
    let (Some(nginx), Some(wrk), true) = (find("nginx"), find("wrk"), installed) else {
        eprintln!(
            "versus: could not install nginx-light and wrk (apt-get install -y -qq nginx-light wrk, as root or through sudo -n); install them and run again"
        );
        std::process::exit(2);
    };
    // The package may have started the system's nginx; it would compete for the two cores.
    let stopped = Command::new(&nginx)
        .args(["-s", "stop"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    println!(
        "versus: installed {} and {}{}",
        nginx.display(),
        wrk.display(),
        if stopped {
            "; stopped the system nginx the package started"
        } else {
            ""
        }
    );
    Tools { nginx, wrk }
}

/// nginx on a generated config in its own directory; master and worker are stopped on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

/// A loopback port free a moment ago.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The config: one worker relaying `/v1/events` to the sink, `fanout - 1` mirrors besides.
fn nginx_config(dir: &Path, addr: SocketAddr, sink: SocketAddr, fanout: usize) -> String {
    let d = dir.display();
    // Workers of a master started as root run as nobody, who cannot write the temp dir.
    let user = if is_root() { "user root;\n" } else { "" };
    let mirrors: String = (1..fanout)
        .map(|i| format!("      mirror /m{i};\n"))
        .collect();
    let mirror_locations: String = (1..fanout)
        .map(|i| format!("    location = /m{i} {{ internal; proxy_pass http://sink; }}\n"))
        .collect();
    // Every upstream request can keep its connection (32 per copy), and neither side closes
    // a connection after 1000 requests (nginx's default): the best case for nginx.
    let keepalive = 64 * fanout;
    format!(
        "{user}worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  client_body_buffer_size 16k;
  keepalive_requests 1000000;
  proxy_http_version 1.1;
  proxy_set_header Connection \"\";
  upstream sink {{
    server {sink};
    keepalive {keepalive};
    keepalive_requests 1000000;
  }}
  server {{
    listen {addr};
    location = /v1/events {{
      proxy_pass http://sink;
{mirrors}      mirror_request_body on;
    }}
{mirror_locations}  }}
}}
"
    )
}

impl Nginx {
    /// Starts nginx relaying to `sink` with `fanout` copies of each request.
    async fn start(bin: &Path, sink: SocketAddr, fanout: usize) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, nginx_config(dir.path(), addr, sink, fanout)).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            // Errors before the config is read go here too, not to /var/log/nginx.
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx");
        let mut nginx = Nginx { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log =
                    std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default();
                panic!("nginx exited at start ({status}):\n{log}");
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return nginx;
            }
            assert!(Instant::now() < deadline, "nginx did not listen in 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        pids.extend(children(master));
        pids
    }

    /// (peak RSS bytes, CPU seconds), master and workers summed.
    fn usage(&self) -> (u64, f64) {
        self.pids()
            .into_iter()
            .map(process_usage)
            .fold((0, 0.0), |(rss, cpu), (r, c)| (rss + r, cpu + c))
    }
}

/// Processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command: state, then the parent's pid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Already reaped (it failed at start): its pid may be another process's by now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let workers = children(self.child.id());
        let master = self.child.id() as libc::pid_t;
        // SIGTERM: the master stops its workers. A SIGKILLed master would leave them running.
        // SAFETY: signals a process this case started and has not yet reaped.
        unsafe { libc::kill(master, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in workers {
            // SAFETY: a worker of the master above, which no longer waits for it.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// What wrk printed, in figures.
#[derive(Debug, Default)]
struct WrkReport {
    requests: u64,
    requests_per_s: f64,
    non_2xx: u64,
    socket_errors: u64,
    p50_ms: f64,
    p99_ms: f64,
}

/// A wrk duration (`812.00us`, `1.23ms`, `2.00s`, `1.00m`) in milliseconds.
fn wrk_ms(text: &str) -> Option<f64> {
    let text = text.trim_end_matches(',');
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// Reads wrk's report: totals, `Requests/sec`, `Non-2xx or 3xx responses`, socket errors and
/// the `--latency` distribution.
fn parse_wrk(out: &str) -> Option<WrkReport> {
    let mut report = WrkReport::default();
    let mut rate = None;
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [n, "requests", "in", ..] => report.requests = n.parse().ok()?,
            ["Requests/sec:", r] => rate = r.parse().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => report.non_2xx = n.parse().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                report.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum()
            }
            ["50%", t] => report.p50_ms = wrk_ms(t)?,
            ["99%", t] => report.p99_ms = wrk_ms(t)?,
            _ => {}
        }
    }
    report.requests_per_s = rate?;
    Some(report)
}

/// The wrk script: POST a 1 KiB envelope to the URL wrk is given.
fn wrk_script(dir: &Path) -> PathBuf {
    let head = r#"{"type":"bench.event","data":{"pad":""#;
    let tail = r#""}}"#;
    let pad = "x".repeat(ENVELOPE - head.len() - tail.len());
    let envelope = format!("{head}{pad}{tail}");
    debug_assert_eq!(envelope.len(), ENVELOPE);
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [[{envelope}]]\n"
        ),
    )
    .unwrap();
    script
}

/// The load both sides get.
struct Load {
    wrk: PathBuf,
    script: PathBuf,
    connections: u64,
    secs: u64,
}

/// What one side did in the window.
#[derive(Clone, Copy, Default)]
struct Window {
    accepted_per_s: f64,
    refused: u64,
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss: u64,
    cpu_s: f64,
    /// Accepted deliveries the relay still held when the load stopped (none for nginx).
    queued: f64,
}

impl Load {
    /// Runs wrk against `target` (host:port) and counts the sink's deliveries meanwhile.
    async fn window(&self, target: SocketAddr, sink: &Sink) -> Window {
        let before = sink.delivered.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let out = tokio::process::Command::new(&self.wrk)
            .arg("-t1")
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", self.secs))
            .arg("--latency")
            .arg("-s")
            .arg(&self.script)
            .arg(format!("http://{target}/v1/events"))
            .stdin(Stdio::null())
            // wrk dies with the future, on every exit path.
            .kill_on_drop(true)
            .output()
            .await
            .expect("wrk");
        let took = t0.elapsed().as_secs_f64();
        let delivered = sink.delivered.load(Ordering::Relaxed) - before;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let report = parse_wrk(&text).unwrap_or_else(|| {
            panic!(
                "wrk's report not understood ({}):\n{text}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let refused = report.non_2xx + report.socket_errors;
        let ok_share = if report.requests == 0 {
            0.0
        } else {
            report.requests.saturating_sub(report.non_2xx) as f64 / report.requests as f64
        };
        Window {
            accepted_per_s: report.requests_per_s * ok_share,
            refused,
            deliveries_per_s: delivered as f64 / took,
            p50_ms: report.p50_ms,
            p99_ms: report.p99_ms,
            ..Window::default()
        }
    }
}

/// nginx under the load at `fanout`.
async fn nginx_window(
    tools: &Tools,
    load: &Load,
    sink: &Sink,
    sink_addr: SocketAddr,
    fanout: usize,
) -> Window {
    let nginx = Nginx::start(&tools.nginx, sink_addr, fanout).await;
    let (_, cpu_before) = nginx.usage();
    let mut window = load.window(nginx.addr, sink).await;
    let (rss, cpu) = nginx.usage();
    window.rss = rss;
    window.cpu_s = cpu - cpu_before;
    window
}

/// A fresh relay (and database) on `store` under the load at `fanout`.
async fn relay_window(
    store: &str,
    load: &Load,
    sink: &Sink,
    sink_addr: SocketAddr,
    fanout: usize,
) -> Window {
    let dir = tempfile::tempdir().unwrap();
    let subs: String = (0..fanout)
        .map(|i| {
            format!(
                "  - {{name: s{i}, url: 'http://{sink_addr}/s{i}', events: ['*'], max_in_flight: 256, timeout: 30s, retries: 20}}\n"
            )
        })
        .collect();
    let relay = {
        let (path, store) = (dir.path().to_path_buf(), store.to_string());
        // Relay::start waits for the relay's first log line.
        tokio::task::spawn_blocking(move || Relay::start(&path, 0, &store, &subs))
            .await
            .unwrap()
    };
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (_, cpu_before) = relay.usage();
    let app: SocketAddr = relay.app.parse().unwrap();
    let mut window = load.window(app, sink).await;
    let (rss, cpu) = relay.usage();
    window.queued = queue_depth(&http, &relay.ops).await;
    window.rss = rss;
    window.cpu_s = cpu - cpu_before;
    drop(relay);
    if store == "postgres" {
        drop_schema(&bench_schema(dir.path())).await;
    }
    window
}

fn store_label(store: &str) -> &'static str {
    match store {
        "postgres" => "PostgreSQL",
        _ => "SQLite full",
    }
}

fn print_window(round: u64, fanout: usize, side: &str, w: &Window) {
    let queued = if side == "nginx" {
        String::new()
    } else {
        format!(", {:.0} deliveries still queued after the window", w.queued)
    };
    println!(
        "versus round {round} fan-out {fanout} {side}: accepted {:.0}/s ({} refused or failed), sink received {:.0} deliveries/s, latency p50 {:.2} ms p99 {:.2} ms, peak RSS {:.1} MiB, CPU {:.1} s{queued}",
        w.accepted_per_s,
        w.refused,
        w.deliveries_per_s,
        w.p50_ms,
        w.p99_ms,
        w.rss as f64 / 1048576.0,
        w.cpu_s
    );
}

/// The ratio issue 19 sets a target on: accepted/s at fan-out 1, deliveries/s at fan-out 10.
fn ratio(fanout: usize, relay: &Window, nginx: &Window) -> f64 {
    if fanout == 1 {
        relay.accepted_per_s / nginx.accepted_per_s
    } else {
        relay.deliveries_per_s / nginx.deliveries_per_s
    }
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `12345.6` as `12,346`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One round's figures for a fan-out: nginx's, then each store's.
struct Round {
    nginx: Window,
    relays: Vec<Window>,
}

async fn rounds(tools: &Tools, stores: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let load = Load {
        wrk: tools.wrk.clone(),
        script: wrk_script(dir.path()),
        connections: env_u64("BENCH_VERSUS_CONNECTIONS", 32),
        secs: env_u64("BENCH_VERSUS_SECS", 15),
    };
    let count = env_u64("BENCH_ROUNDS", 3).max(1);
    let (sink, sink_addr) = Sink::serve(false).await;
    println!(
        "versus: wrk -t1 -c{} -d{}s, 1 KiB envelopes; {count} rounds; load average at start {}",
        load.connections,
        load.secs,
        load_average()
    );
    let fanouts = [1usize, 10];
    let mut results: Vec<Vec<Round>> = fanouts.iter().map(|_| Vec::new()).collect();
    for round in 1..=count {
        for (f, &fanout) in fanouts.iter().enumerate() {
            let nginx = nginx_window(tools, &load, &sink, sink_addr, fanout).await;
            print_window(round, fanout, "nginx", &nginx);
            let mut relays = Vec::new();
            for store in stores {
                let relay = relay_window(store, &load, &sink, sink_addr, fanout).await;
                print_window(
                    round,
                    fanout,
                    &format!("hookrelay {}", store_label(store)),
                    &relay,
                );
                println!(
                    "versus round {round} fan-out {fanout} ratio, {}: {:.2}x nginx's {}",
                    store_label(store),
                    ratio(fanout, &relay, &nginx),
                    if fanout == 1 {
                        "accepted/s"
                    } else {
                        "deliveries/s"
                    }
                );
                relays.push(relay);
            }
            results[f].push(Round { nginx, relays });
        }
    }
    println!("versus: load average at the end {}", load_average());
    print_table(&fanouts, stores, &results);
}

/// The medians, as a markdown table for docs/benchmarks.md.
fn print_table(fanouts: &[usize], stores: &[&str], results: &[Vec<Round>]) {
    println!();
    println!(
        "| store, fan-out | hookrelay / nginx, median (each round) | target | accepted/s, nginx / hookrelay | deliveries/s, nginx / hookrelay | latency p50 / p99 ms, nginx; hookrelay | peak RSS MiB, nginx / hookrelay | CPU s, nginx / hookrelay | queued after the window |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (f, &fanout) in fanouts.iter().enumerate() {
        let rounds = &results[f];
        let nginx = |pick: fn(&Window) -> f64| median(rounds.iter().map(|r| pick(&r.nginx)));
        for (s, store) in stores.iter().enumerate() {
            let relay =
                |pick: fn(&Window) -> f64| median(rounds.iter().map(|r| pick(&r.relays[s])));
            let ratios: Vec<f64> = rounds
                .iter()
                .map(|r| ratio(fanout, &r.relays[s], &r.nginx))
                .collect();
            let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            let mid = median(ratios.iter().copied());
            let (target, measure) = if fanout == 1 {
                (TARGET_FANOUT1, "accepted/s")
            } else {
                (TARGET_FANOUT10, "deliveries/s")
            };
            println!(
                "| {}, {fanout} | {mid:.2}x {measure} ({}) | >= {target}x: {} | {} / {} | {} / {} | {:.2} / {:.2}; {:.2} / {:.2} | {:.0} / {:.0} | {:.1} / {:.1} | {} |",
                store_label(store),
                each.join(", "),
                if mid >= target { "met" } else { "not met" },
                thousands(nginx(|w| w.accepted_per_s)),
                thousands(relay(|w| w.accepted_per_s)),
                thousands(nginx(|w| w.deliveries_per_s)),
                thousands(relay(|w| w.deliveries_per_s)),
                nginx(|w| w.p50_ms),
                nginx(|w| w.p99_ms),
                relay(|w| w.p50_ms),
                relay(|w| w.p99_ms),
                nginx(|w| w.rss as f64) / 1048576.0,
                relay(|w| w.rss as f64) / 1048576.0,
                nginx(|w| w.cpu_s),
                relay(|w| w.cpu_s),
                thousands(relay(|w| w.queued)),
            );
        }
    }
}
