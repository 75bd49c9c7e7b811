//! Connections are timed and capped per listener: half-sent heads, slowloris clients and idle
//! keep-alive connections are closed (`limits.header_read_timeout`, `limits.idle_timeout`),
//! at most `limits.max_connections` are open, and none of it cuts a request in progress.
//! Raw sockets on 127.0.0.1, so nothing hides what the relay does to the connection.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{DEADLINE, TestRelay, poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// Waits until the relay closes the connection (end of stream or reset); returns how long
/// that took, or None if it stayed open until the test's deadline. Bytes read are dropped.
async fn closed_after(stream: &mut TcpStream) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    while start.elapsed() < DEADLINE {
        match tokio::time::timeout(DEADLINE - start.elapsed(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Sends a GET and reads its response; returns the status and the body.
async fn get(stream: &mut TcpStream, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nhost: relay\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .expect("send request");
    read_response(stream).await
}

/// Reads one response with a `content-length`.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("response within the deadline")
            .expect("read response");
        assert!(n > 0, "connection closed before a response: {data:?}");
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = text[..end].to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if data.len() >= end + 4 + length {
            let status = head[9..12].parse().unwrap();
            return (status, text[end + 4..end + 4 + length].to_string());
        }
    }
}

/// A relay with these `limits` (flow mapping contents).
async fn relay(limits: &str, rest: &str) -> TestRelay {
    TestRelay::start(&format!("limits: {{{limits}}}\n{rest}")).await
}

#[tokio::test]
async fn a_half_sent_head_is_cut_off_at_the_header_timeout() {
    let r = relay("header_read_timeout: 1s, idle_timeout: 60s", "").await;
    let mut s = connect(r.addrs.app).await;
    s.write_all(b"POST /v1/events HTTP/1.1\r\nhost: relay\r\n")
        .await
        .unwrap();
    let took = closed_after(&mut s).await.expect("closed");
    assert!(took >= Duration::from_millis(900), "closed early: {took:?}");
    // A connection that sends nothing at all gets no more time.
    let mut silent = connect(r.addrs.api).await;
    let took = closed_after(&mut silent).await.expect("closed");
    assert!(took >= Duration::from_millis(900), "closed early: {took:?}");
    r.stop().await;
}

#[tokio::test]
async fn a_slowloris_is_cut_off_however_steadily_it_sends() {
    let r = relay("header_read_timeout: 1s, idle_timeout: 60s", "").await;
    let mut s = connect(r.addrs.app).await;
    s.write_all(b"GET /v1/events/x HTTP/1.1\r\nx-slow: ")
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let closed = loop {
        assert!(start.elapsed() < DEADLINE, "still open after {DEADLINE:?}");
        // One byte every 300 ms: each would restart a timer that counts from the last byte.
        if s.write_all(b"a").await.is_err() {
            break start.elapsed();
        }
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break start.elapsed(),
            Ok(Ok(_)) | Err(_) => {}
        }
    };
    assert!(
        closed >= Duration::from_millis(900),
        "closed early: {closed:?}"
    );
    assert!(closed < Duration::from_secs(3), "closed late: {closed:?}");
    r.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let r = relay("header_read_timeout: 1s, idle_timeout: 2s", "").await;
    let mut s = connect(r.addrs.ops).await;
    assert_eq!(get(&mut s, "/healthz").await.0, 200);
    // Idle longer than the header timeout: still open, and reused.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(&mut s, "/healthz").await.0, 200);
    let took = closed_after(&mut s).await.expect("closed");
    assert!(
        took >= Duration::from_millis(1900),
        "closed early: {took:?}"
    );
    r.stop().await;
}

#[tokio::test]
async fn a_long_poll_outlasts_the_idle_and_header_timeouts() {
    let r = relay(
        "header_read_timeout: 1s, idle_timeout: 1s",
        "subscriptions:\n  - {name: poll, mode: pull, events: ['*']}\n",
    )
    .await;
    let mut s = connect(r.addrs.api).await;
    let start = Instant::now();
    let (status, body) = get(&mut s, "/v1/subscriptions/poll/notifications?wait=3s").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        start.elapsed() >= Duration::from_millis(2900),
        "the wait was cut short"
    );
    // The same connection serves the next request.
    assert_eq!(
        get(&mut s, "/v1/subscriptions/poll/notifications").await.0,
        200
    );
    r.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_counted() {
    let r = relay(
        "header_read_timeout: 60s, idle_timeout: 60s, max_connections: 3",
        "",
    )
    .await;
    let open = [("listener", "app")];
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(r.addrs.app).await);
    }
    r.wait_metric("hookrelay_connections", &open, 3.0).await;
    let refused = [("listener", "app")];
    let before = r
        .metric("hookrelay_connections_refused_total", &refused)
        .await;
    assert_eq!(before, Some(0.0));

    let mut fourth = connect(r.addrs.app).await;
    let took = closed_after(&mut fourth)
        .await
        .expect("the fourth is closed");
    assert!(took < Duration::from_secs(2), "closed late: {took:?}");
    r.wait_metric("hookrelay_connections_refused_total", &refused, 1.0)
        .await;
    // The held ones still work.
    assert_eq!(get(&mut held[0], "/v1/events/unknown").await.0, 404);

    drop(held.pop());
    r.wait_metric("hookrelay_connections", &open, 2.0).await;
    let mut next = connect(r.addrs.app).await;
    assert_eq!(get(&mut next, "/v1/events/unknown").await.0, 404);
    // Each listener has its own cap: the api listener was never full.
    assert_eq!(
        r.metric(
            "hookrelay_connections_refused_total",
            &[("listener", "api")]
        )
        .await,
        Some(0.0)
    );
    r.stop().await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_answers_requests_in_progress() {
    let mut r = relay(
        "header_read_timeout: 60s, idle_timeout: 60s",
        "subscriptions:\n  - {name: poll, mode: pull, events: ['*']}\n",
    )
    .await;
    let mut idle = connect(r.addrs.app).await;
    assert_eq!(get(&mut idle, "/v1/events/unknown").await.0, 404);
    let mut half = connect(r.addrs.app).await;
    half.write_all(b"GET /v1/events/x HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut polling = connect(r.addrs.api).await;
    let req = "GET /v1/subscriptions/poll/notifications?wait=20s HTTP/1.1\r\nhost: relay\r\n\r\n";
    polling.write_all(req.as_bytes()).await.unwrap();
    r.wait_metric("hookrelay_connections", &[("listener", "api")], 1.0)
        .await;

    r.begin_stop();
    let (status, _) = read_response(&mut polling).await;
    assert_eq!(status, 200, "the long poll in progress is answered");
    assert!(closed_after(&mut idle).await.is_some(), "idle closed");
    assert!(closed_after(&mut half).await.is_some(), "half-sent closed");
    poll(|| async { !r.running() }).await;
}

#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookrelay.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\nstorage: {{path: '{}'}}\nlog: {{format: json}}\nreload: {{watch: false}}\n",
            dir.path().join("db.sqlite").display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(common::bin());
    cmd.arg("--config").arg(&config).env_remove("RUST_LOG");
    // A file limit far below limits.max_connections, so accept itself fails (EMFILE).
    // SAFETY: setrlimit(2) is async-signal-safe and changes only the child's own limits.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    let mut relay = common::Binary::start(cmd);
    let app: SocketAddr = relay.app.parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(connect(app).await);
    }
    // The connections left in the backlog keep accept failing: count its warnings for 2s.
    let window = Instant::now() + Duration::from_secs(2);
    let mut warnings = 0;
    while let Some(left) = window.checked_duration_since(Instant::now()) {
        match relay.lines.recv_timeout(left) {
            Ok(line) if line["message"] == "accept failed; backing off" => warnings += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(warnings >= 1, "accept never failed: the limit did not bite");
    assert!(
        warnings <= 20,
        "{warnings} accept failures in 2s: a hot loop"
    );

    drop(held);
    let served = common::deadline(|| async {
        let Ok(mut s) = TcpStream::connect(app).await else {
            return false;
        };
        let req = b"GET /v1/events/x HTTP/1.1\r\nhost: relay\r\n\r\n";
        s.write_all(req).await.is_ok() && {
            let mut buf = [0u8; 12];
            let read = tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf));
            matches!(read.await, Ok(Ok(_))) && buf.starts_with(b"HTTP/1.1 404")
        }
    })
    .await;
    assert!(
        served,
        "the relay did not serve again once descriptors were free"
    );
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
}
