//! Several relays on one PostgreSQL schema: each the real binary in a process of its own,
//! with its own `HOSTNAME` (its registry name) and `application_name` (so a test can kill
//! its connections), stopped by SIGTERM or killed with SIGKILL.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Binary, TestDb, bin, sample};

/// One relay process of a set sharing a schema.
pub struct Replica {
    /// Its `HOSTNAME`.
    pub host: String,
    /// The `application_name` of its database sessions.
    pub app_name: String,
    /// The process and its log.
    pub binary: Binary,
    /// Its ops listener.
    pub ops: SocketAddr,
    http: reqwest::Client,
}

impl Replica {
    /// Starts the binary on `db` as host `host`, with `pg` settings of `storage.postgres`
    /// (`"lease: 5s"`) and `yaml` after the listeners, log and storage lines (the
    /// subscriptions, `shutdown`, ...).
    pub fn start(db: &TestDb, host: &str, pg: &str, yaml: &str) -> Replica {
        let schema = db.schema.as_deref().expect("a PostgreSQL database");
        let app_name = format!("{schema}_{host}");
        let config = db.dir.path().join(format!("{host}.yaml"));
        std::fs::write(
            &config,
            format!(
                "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\nlog: {{format: json}}\n{}{yaml}",
                db.storage_named(&app_name, pg)
            ),
        )
        .unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(&config)
            .env("HOSTNAME", host)
            .env("RUST_LOG", "hookrelay=info");
        let binary = Binary::start(cmd);
        let ops = binary.started["ops"].as_str().unwrap().parse().unwrap();
        Replica {
            host: host.to_string(),
            app_name,
            binary,
            ops,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// Posts one event to its app listener; returns the status.
    pub async fn post(&self, event: &Value) -> u16 {
        self.binary.post(event).await
    }

    /// `GET /v1/events/{id}`: the status and JSON answer.
    pub async fn event_status(&self, id: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("http://{}/v1/events/{id}", self.binary.app))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// One sample of its metrics, if it answers.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let r = self
            .http
            .get(format!("http://{}/metrics", self.ops))
            .send()
            .await
            .ok()?;
        sample(&r.text().await.ok()?, name, labels)
    }

    /// Sends SIGTERM (a graceful stop) without waiting.
    pub fn terminate(&self) {
        super::signal(self.binary.child.id(), libc::SIGTERM);
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.binary.child.kill();
        let _ = self.binary.child.wait();
    }

    /// Waits up to `limit` for the process to exit; true if it did.
    pub fn exited_within(&mut self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.binary.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Takes the log lines received so far; returns those whose message is `message`.
    pub fn take_logged(&self, message: &str) -> Vec<Value> {
        self.binary
            .lines
            .try_iter()
            .filter(|l| l["message"] == message)
            .collect()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until every relay in `relays` counts `n` live relays (`hookrelay_replicas`).
pub async fn wait_replicas(relays: &[&Replica], n: f64) {
    for r in relays {
        let seen =
            super::deadline(|| async { r.metric("hookrelay_replicas", &[]).await == Some(n) })
                .await;
        assert!(
            seen,
            "{} counts {:?} relays, not {n}",
            r.host,
            r.metric("hookrelay_replicas", &[]).await
        );
    }
}

/// Starts one relay per host in `hosts` on `db`, each as `Replica::start`.
pub fn start_all(db: &TestDb, hosts: &[&str], pg: &str, yaml: &str) -> Vec<Replica> {
    hosts
        .iter()
        .map(|h| Replica::start(db, h, pg, yaml))
        .collect()
}
