//! Test harness: the real relay started in-process on 127.0.0.1:0, real HTTP receivers, and
//! polling with deadlines (never bare sleeps) to synchronise.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hookrelay::config::Listen;
use hookrelay::{Config, Relay};
use serde_json::Value;
use tokio::sync::oneshot;

mod backend;
pub mod proxy;
pub mod replicas;
pub mod smtp;
pub mod tls;
pub mod token_endpoint;
#[allow(unused_imports)]
pub use backend::{Backend, TestDb, test_database_addr, test_database_url};

/// The relay binary: `HOOKRELAY_BIN` when set (CI points it at the static release build it
/// ships in the image), else the one cargo built for these tests.
pub fn bin() -> String {
    std::env::var("HOOKRELAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hookrelay").to_string())
}

/// Sends `signal` (`libc::SIGTERM`, `libc::SIGHUP`...) to a child process: kill(2) itself,
/// since a `kill` program is not on every machine.
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a child's pid has no memory effects.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// The relay binary running as a child process, with its JSON log lines.
pub struct Binary {
    pub child: std::process::Child,
    /// The app listener's address, read from the "hookrelay listening" line.
    pub app: String,
    /// The API listener's address, likewise.
    pub api: SocketAddr,
    /// Every later log line, parsed.
    pub lines: std::sync::mpsc::Receiver<Value>,
    /// The "hookrelay listening" line.
    pub started: Value,
}

impl Binary {
    /// Runs `cmd` (the config must ask for `log: {format: json}`) and waits until it listens.
    pub fn start(mut cmd: std::process::Command) -> Binary {
        use std::io::BufRead;
        let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel::<Value>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let started = std::iter::from_fn(|| lines.recv_timeout(DEADLINE).ok())
            .find(|l| l["message"] == "hookrelay listening")
            .expect("the relay did not log its listening line");
        let app = started["app"].as_str().unwrap().to_string();
        let api = started["api"].as_str().unwrap().parse().unwrap();
        Binary {
            child,
            app,
            api,
            lines,
            started,
        }
    }

    /// Posts one event; returns the status.
    pub async fn post(&self, event: &Value) -> u16 {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("http://{}/v1/events", self.app))
            .header("content-type", "application/json")
            .body(event.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// A request to an API listener, with an optional bearer token; returns the status, the JSON
/// answer and the headers.
pub async fn api_request(
    http: &reqwest::Client,
    api: SocketAddr,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = http.request(method, format!("http://{api}{path}"));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("api request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    )
}

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A relay running in this process.
pub struct TestRelay {
    pub addrs: Listen,
    /// Directory holding the database (kept alive as long as the relay).
    pub dir: Arc<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub http: reqwest::Client,
}

impl TestRelay {
    /// Starts a relay from YAML; listeners default to 127.0.0.1:0 and the store to a SQLite
    /// file in a new temporary directory.
    pub async fn start(yaml: &str) -> TestRelay {
        TestRelay::start_in(yaml, Arc::new(tempfile::tempdir().unwrap())).await
    }

    /// Starts a relay whose default store lives in `dir` (to restart on the same database).
    pub async fn start_in(yaml: &str, dir: Arc<tempfile::TempDir>) -> TestRelay {
        let mut yaml = yaml.to_string();
        if !yaml.contains("listen:") {
            yaml = format!(
                "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\n{yaml}"
            );
        }
        if !yaml.contains("storage:") {
            let db = dir.path().join("hookrelay.db");
            yaml = format!(
                "storage: {{path: '{}', sync: normal}}\n{yaml}",
                db.display()
            );
        }
        let config = Config::from_yaml(&yaml, "test.yaml", &|_| None)
            .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        TestRelay::launch(Relay::bind(config).await.expect("bind"), dir).await
    }

    /// Starts a relay on `db` (again, to restart on the same database).
    pub async fn on(db: &TestDb, yaml: &str) -> TestRelay {
        TestRelay::on_with(db, "", yaml).await
    }

    /// Starts a relay on `db` with extra `storage` settings (`"ttl: 1s"`).
    pub async fn on_with(db: &TestDb, storage: &str, yaml: &str) -> TestRelay {
        let yaml = format!("{}{yaml}", db.storage(storage));
        TestRelay::start_in(&yaml, db.dir.clone()).await
    }

    /// Starts a relay from a config file that it reloads on change (`reload.watch`); the
    /// file must name its listeners and store.
    pub async fn start_from_file(path: &std::path::Path, dir: Arc<tempfile::TempDir>) -> TestRelay {
        let config = Config::load(path).unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let relay = Relay::bind(config).await.expect("bind").reload_from(path);
        TestRelay::launch(relay, dir).await
    }

    async fn launch(relay: Relay, dir: Arc<tempfile::TempDir>) -> TestRelay {
        let addrs = relay.local_addrs();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            relay
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("relay runs");
        });
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let relay = TestRelay {
            addrs,
            dir,
            stop: Some(stop),
            task,
            http,
        };
        let ready = format!("http://{}/readyz", relay.addrs.ops);
        poll(|| async {
            relay
                .http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        relay
    }

    /// Posts an event envelope; returns the status and the JSON answer.
    pub async fn post(&self, body: &Value) -> (u16, Value) {
        self.post_raw(&body.to_string(), "application/json").await
    }

    /// Posts raw bytes with a content type.
    pub async fn post_raw(&self, body: &str, content_type: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("http://{}/v1/events", self.addrs.app))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("post event");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Starts a relay on its own database file with extra `storage` settings (`"ttl: 1s"`);
    /// returns the file's path too.
    pub async fn start_with_storage(storage: &str, yaml: &str) -> (TestRelay, std::path::PathBuf) {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let db = dir.path().join("relay.db");
        let yaml = format!("storage: {{path: '{}', {storage}}}\n{yaml}", db.display());
        (TestRelay::start_in(&yaml, dir).await, db)
    }

    /// A request to the API listener; returns the status and the JSON answer.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, value, _) =
            api_request(&self.http, self.addrs.api, method, path, body, None).await;
        (status, value)
    }

    /// A request to the API listener with a bearer token; also returns the headers.
    pub async fn api_as(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        api_request(&self.http, self.addrs.api, method, path, body, token).await
    }

    /// `GET /v1/events/{id}` on the app listener.
    pub async fn event_status(&self, id: &str) -> (u16, Value) {
        self.get_json(format!("http://{}/v1/events/{id}", self.addrs.app))
            .await
    }

    /// `GET /readyz` on the ops listener.
    pub async fn readyz(&self) -> (u16, Value) {
        self.get_json(format!("http://{}/readyz", self.addrs.ops))
            .await
    }

    /// A GET's status and JSON body (`null` when the body is not JSON).
    async fn get_json(&self, url: String) -> (u16, Value) {
        let r = self.http.get(url).send().await.unwrap();
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    /// The metrics exposition.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.addrs.ops))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// One sample's value, e.g. `metric("hookrelay_deliveries_total", &[("subscription", "a"), ("outcome", "failed")])`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        sample(&self.metrics().await, name, labels)
    }

    /// Waits until a sample reaches `value`.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        let ok = deadline(|| async { self.metric(name, labels).await == Some(value) }).await;
        if !ok {
            panic!(
                "{name}{labels:?} never reached {value}; now {:?}",
                self.metric(name, labels).await
            );
        }
    }

    /// Waits until `hookrelay_deliveries_total{subscription, outcome}` reaches `n`.
    pub async fn wait_outcome(&self, subscription: &str, outcome: &str, n: f64) {
        self.wait_metric(
            "hookrelay_deliveries_total",
            &[("subscription", subscription), ("outcome", outcome)],
            n,
        )
        .await;
    }

    /// `hookrelay_delivery_attempts_total{subscription, result}` now.
    pub async fn attempts(&self, subscription: &str, result: &str) -> Option<f64> {
        self.metric(
            "hookrelay_delivery_attempts_total",
            &[("subscription", subscription), ("result", result)],
        )
        .await
    }

    /// True until the relay's run has returned.
    pub fn running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Starts the shutdown (as SIGTERM would) without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Stops the relay and waits for it to return.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("relay stops within the deadline")
            .expect("relay task");
    }
}

/// Finds a sample in a Prometheus exposition, whatever the order of its labels.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let rest = rest.strip_suffix('}')?;
        let mut found: Vec<(&str, &str)> = rest
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                Some((k, v.trim_matches('"')))
            })
            .collect();
        let mut want = labels.to_vec();
        found.sort();
        want.sort();
        (found == want).then(|| value.parse().ok())?
    })
}

/// A port on 127.0.0.1 that was free a moment ago (bound, then let go): for a listener a
/// config must name in advance, or an address where nothing answers.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` until it is true or the deadline passes; returns whether it became true.
pub async fn deadline<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + DEADLINE;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `cond` until true; panics at the deadline.
pub async fn poll<F, Fut>(cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        deadline(cond).await,
        "condition not met within {DEADLINE:?}"
    );
}

/// A request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

/// How a receiver answers its n-th request (0-based).
pub type Script = Arc<dyn Fn(usize) -> Answer + Send + Sync>;

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }
}

/// A real HTTP receiver on 127.0.0.1 that records what it gets.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
}

/// How a receiver answers a request, seeing it (and its 0-based number).
type Judge = Arc<dyn Fn(usize, &Received) -> Answer + Send + Sync>;

#[derive(Clone)]
struct ReceiverState {
    got: Arc<Mutex<Vec<Received>>>,
    judge: Judge,
}

impl Receiver {
    /// A receiver answering 200 to everything.
    pub async fn ok() -> Receiver {
        Receiver::scripted(|_| Answer::status(200)).await
    }

    /// A receiver answering 200 on a given port.
    pub async fn on_port(port: u16) -> Receiver {
        Receiver::listen(("127.0.0.1", port), |_| Answer::status(200)).await
    }

    /// A receiver answering by `script`.
    pub async fn scripted(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Receiver {
        Receiver::listen(("127.0.0.1", 0), script).await
    }

    /// A receiver answering each request by what it holds (its headers, say).
    pub async fn judging(judge: impl Fn(&Received) -> Answer + Send + Sync + 'static) -> Receiver {
        Receiver::serve(("127.0.0.1", 0), Arc::new(move |_, r: &Received| judge(r))).await
    }

    async fn listen(
        addr: (&str, u16),
        script: impl Fn(usize) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        Receiver::serve(addr, Arc::new(move |n, _: &Received| script(n))).await
    }

    async fn serve(addr: (&str, u16), judge: Judge) -> Receiver {
        let (app, got) = Receiver::app(judge);
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, got }
    }

    /// The router that records requests and answers by `judge`, and what it records.
    fn app(judge: Judge) -> (axum::Router, Arc<Mutex<Vec<Received>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let state = ReceiverState {
            got: got.clone(),
            judge,
        };
        (axum::Router::new().fallback(receive).with_state(state), got)
    }

    /// Its URL with `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let ok = deadline(|| async { self.count() >= n }).await;
        assert!(ok, "receiver got {} of {n} requests", self.count());
        self.received()
    }
}

async fn receive(
    State(state): State<ReceiverState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = Received {
        path: uri.path().to_string(),
        headers,
        body,
        at: Instant::now(),
    };
    let n = {
        let mut got = state.got.lock().unwrap();
        got.push(received.clone());
        got.len() - 1
    };
    let answer = (state.judge)(n, &received);
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = StatusCode::from_u16(answer.status).unwrap().into_response();
    for (name, value) in answer.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}
