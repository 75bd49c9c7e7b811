//! The relay on PostgreSQL through PgBouncer in transaction pooling mode (Debian's
//! `pgbouncer`, started here on a free port in front of the test server): accept, deliver in
//! order, pull and ack, and event status, with no session state the pooler would break; and
//! API subscriptions shared between two relays by the periodic resync.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};

use common::{Backend, Receiver, TestDb, TestRelay, poll, test_database_addr};
use reqwest::Method;
use serde_json::{Value, json};

const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// A PgBouncer process, killed when dropped.
struct Bouncer {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bouncer {
    /// Starts PgBouncer in transaction mode in front of the test server, trusting every
    /// user (the test server trusts them too). It refuses to run as root, so as root it
    /// drops to the `postgres` user (`-u`), which must be able to read its files.
    async fn start() -> Bouncer {
        assert!(
            std::path::Path::new(PGBOUNCER).exists(),
            "{PGBOUNCER} is missing: apt-get install pgbouncer"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = test_database_addr();
        let user = reqwest::Url::parse(&common::test_database_url())
            .unwrap()
            .username()
            .to_string();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host={} port={}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
                 default_pool_size = 8\nmax_client_conn = 100\n\
                 pidfile = {}\nlogfile = {}\n",
                server.ip(),
                server.port(),
                dir.path().join("userlist.txt").display(),
                dir.path().join("pgbouncer.pid").display(),
                dir.path().join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("userlist.txt"),
            format!("\"{user}\" \"\"\n"),
        )
        .unwrap();
        let mut cmd = Command::new(PGBOUNCER);
        if is_root() {
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let addr = ([127, 0, 0, 1], port).into();
        let mut bouncer = Bouncer {
            child,
            addr,
            _dir: dir,
        };
        poll(|| async { tokio::net::TcpStream::connect(addr).await.is_ok() }).await;
        assert!(
            bouncer.child.try_wait().unwrap().is_none(),
            "pgbouncer exited at start"
        );
        bouncer
    }
}

/// Whether this process runs as root (uid 0), read from /proc.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        .unwrap_or(false)
}

#[tokio::test]
#[ignore = "needs pgbouncer (/usr/sbin/pgbouncer) and PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn the_core_path_works_through_pgbouncer_in_transaction_mode() {
    let bouncer = Bouncer::start().await;
    let db = TestDb::new(Backend::Postgres);
    let rx = Receiver::ok().await;
    let yaml = format!(
        "{}release: {{min_interval: 0s}}\nsubscriptions:\n  \
         - {{name: hooks, url: '{}', events: ['*'], max_in_flight: 4, ordering: {{key: k}}}}\n  \
         - {{name: inbox, mode: pull, events: ['*'], pull: {{ack: explicit, visibility_timeout: 30s}}}}\n",
        // PgBouncer 1.18 keeps no prepared statements in transaction mode.
        db.storage_at(
            bouncer.addr,
            "connect_timeout: 2s, prepared_statements: false"
        ),
        rx.url("/hook"),
    );
    let relay = TestRelay::start_in(&yaml, db.dir.clone()).await;

    // Accept: singles and a batch, a duplicate answered 200.
    for i in 0..40 {
        let event = json!({"type": "t", "id": format!("e{i}"), "data": {"k": i % 2, "i": i}});
        assert_eq!(relay.post(&event).await.0, 202);
    }
    let batch: Vec<Value> = (40..60)
        .map(|i| json!({"type": "t", "id": format!("e{i}"), "data": {"k": i % 2, "i": i}}))
        .collect();
    let r = relay
        .http
        .post(format!("http://{}/v1/events/batch", relay.addrs.app))
        .header("content-type", "application/json")
        .body(Value::Array(batch).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        relay
            .post(&json!({"type": "t", "id": "e0", "data": {}}))
            .await
            .0,
        200
    );

    // Deliver, each key in order.
    relay.wait_outcome("hooks", "delivered", 60.0).await;
    let mut by_key: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
    for got in rx.received() {
        let body: Value = serde_json::from_slice(&got.body).unwrap();
        by_key[body["k"].as_i64().unwrap() as usize].push(body["i"].as_i64().unwrap());
    }
    for seqs in &by_key {
        assert_eq!(seqs.len(), 30);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "out of order: {seqs:?}"
        );
    }

    // Pull and ack.
    let (status, list) = relay
        .api(
            Method::GET,
            "/v1/subscriptions/inbox/notifications?limit=100",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let notes = list["notifications"].as_array().unwrap();
    assert_eq!(notes.len(), 60);
    assert_eq!(notes[0]["event_id"], "e0");
    let ids: Vec<i64> = notes.iter().map(|n| n["id"].as_i64().unwrap()).collect();
    let (status, acked) = relay
        .api(
            Method::POST,
            "/v1/subscriptions/inbox/notifications/ack",
            Some(json!({"ids": ids})),
        )
        .await;
    assert_eq!((status, acked["acked"].clone()), (200, json!(60)));

    // Status.
    let (status, body) = relay.event_status("e7").await;
    assert_eq!(status, 200);
    let mut states: Vec<(String, String)> = body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["subscription"].as_str().unwrap().to_string(),
                d["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    states.sort();
    assert_eq!(
        states,
        [
            ("hooks".to_string(), "delivered".to_string()),
            ("inbox".to_string(), "delivered".to_string())
        ]
    );
    assert_eq!(relay.metric("hookrelay_store_up", &[]).await, Some(1.0));
    // Release and a restart through the pooler too: the schema is there, nothing to redo.
    let (status, _) = relay
        .api(Method::POST, "/v1/deliveries/release", None)
        .await;
    assert_eq!(status, 202);
    relay.stop().await;
    let relay = TestRelay::start_in(&yaml, db.dir.clone()).await;
    assert_eq!(
        relay
            .post(&json!({"type": "t", "id": "after", "data": {"k": 0, "i": 60}}))
            .await
            .0,
        202
    );
    rx.wait_for(61).await;
    relay.stop().await;
    drop(bouncer);
}

/// Two relays on one schema through PgBouncer in transaction mode, with no `direct_url`:
/// their `LISTEN` goes through the pooler and hears nothing, but the periodic resync (the
/// catalog revision, read through the pool) brings an API subscription created through one
/// to the other within a second.
#[tokio::test]
#[ignore = "needs pgbouncer (/usr/sbin/pgbouncer) and PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn api_subscriptions_reach_the_other_relay_through_pgbouncer_by_the_periodic_resync() {
    let bouncer = Bouncer::start().await;
    let db = TestDb::new(Backend::Postgres);
    let rx = Receiver::ok().await;
    let yaml = db.storage_at(
        bouncer.addr,
        "connect_timeout: 2s, prepared_statements: false, sync_interval: 250ms",
    );
    let a = TestRelay::start_in(&yaml, db.dir.clone()).await;
    let b = TestRelay::start_in(&yaml, db.dir.clone()).await;
    let (status, created) = a
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": "shared", "url": rx.url("/s"), "events": ["*"]})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let start = std::time::Instant::now();
    while b.api(Method::GET, "/v1/subscriptions/shared", None).await.0 != 200 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "b did not see the subscription within 1 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    println!(
        "create via a seen on b through PgBouncer: {:?}",
        start.elapsed()
    );
    assert_eq!(
        b.post(&json!({"type": "t", "id": "via-b", "data": {}}))
            .await
            .0,
        202
    );
    rx.wait_for(1).await;
    let (status, _) = b
        .api(Method::DELETE, "/v1/subscriptions/shared", None)
        .await;
    assert_eq!(status, 204);
    poll(|| async { a.api(Method::GET, "/v1/subscriptions/shared", None).await.0 == 404 }).await;
    a.stop().await;
    b.stop().await;
    drop(bouncer);
}
