//! At-least-once through `kill -9`: every event answered `202` is delivered after a restart,
//! on either store.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Binary, Receiver, TestDb, bin, deadline};
use serde_json::json;

const EVENTS: usize = 400;
const KILL_AFTER: usize = 150;

/// Starts the binary and returns it with its app address.
fn spawn(config: &Path) -> (Child, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("--config")
        .arg(config)
        .env("RUST_LOG", "hookrelay=info");
    let relay = Binary::start(cmd);
    (relay.child, relay.app)
}

async fn every_accepted_event_survives_kill_9(backend: Backend) {
    let db = TestDb::new(backend);
    // SQLite syncs every commit; PostgreSQL keeps its own synchronous_commit.
    let storage = match backend {
        Backend::Sqlite => db.storage("sync: full"),
        Backend::Postgres => db.storage(""),
    };
    // A port with nothing listening yet: the receiver comes up there after the crash.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = db.dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}
log: {{format: json}}
{storage}subscriptions:
  - name: crash
    url: 'http://127.0.0.1:{port}/hook'
    events: ['*']
    retries: 20
    timeout: 1s
    max_in_flight: 16
    backoff: {{schedule: [100ms, 200ms, 500ms, 1s], overload_floor: 0s}}
    # The receiver is down until after the restart: probe it as often as the retries go.
    circuit: {{cool_down: 200ms, max_cool_down: 1s}}
"
        ),
    )
    .unwrap();

    let (mut relay, app) = spawn(&config);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (http, app, accepted, next) =
            (http.clone(), app.clone(), accepted.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= EVENTS {
                    return;
                }
                let id = format!("crash-{i}");
                let sent = http
                    .post(format!("http://{app}/v1/events"))
                    .header("content-type", "application/json")
                    .body(json!({"type": "t", "id": id, "data": {"i": i}}).to_string())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 202 => accepted.lock().unwrap().push(id),
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    // The relay is gone: nothing was promised for this one.
                    Err(_) => {}
                }
            }
        }));
    }
    // Kill mid-stream, while requests are in flight.
    let killed = deadline(|| async { accepted.lock().unwrap().len() >= KILL_AFTER }).await;
    assert!(killed, "relay accepted too few events");
    relay.kill().unwrap();
    relay.wait().unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let promised: Vec<String> = accepted.lock().unwrap().clone();
    assert!(
        promised.len() >= KILL_AFTER && promised.len() < EVENTS,
        "{} accepted",
        promised.len()
    );

    let (mut relay, _) = spawn(&config);
    let rx = loop {
        // Bind the reserved port; retry briefly if the OS still holds it.
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => {
                drop(l);
                break Receiver::on_port(port).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let all_arrived = deadline(|| async {
        let seen: std::collections::HashSet<String> = rx
            .received()
            .iter()
            .map(|r| r.headers["webhook-id"].to_str().unwrap().to_string())
            .collect();
        promised.iter().all(|id| seen.contains(id))
    })
    .await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in rx.received() {
        *counts
            .entry(r.headers["webhook-id"].to_str().unwrap().to_string())
            .or_default() += 1;
    }
    let missing: Vec<&String> = promised
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let duplicates = counts.values().filter(|n| **n > 1).count();
    eprintln!(
        "crash test: {} accepted before kill -9, {} delivered, {} delivered more than once, {} missing",
        promised.len(),
        counts.len(),
        duplicates,
        missing.len()
    );
    relay.kill().unwrap();
    relay.wait().unwrap();
    assert!(
        all_arrived && missing.is_empty(),
        "missing after restart: {missing:?}"
    );
}

crate::both_backends!(multi_thread: every_accepted_event_survives_kill_9);
