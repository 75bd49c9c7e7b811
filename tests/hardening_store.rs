//! The database file: private modes, one relay per file, and subscription secrets encrypted
//! at rest (issue 13, item 8).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{Receiver, TestRelay};
use hookrelay::signing::SigningKey;
use hookrelay::{Config, Relay};
use reqwest::Method;
use serde_json::{Value, json};

/// 32 bytes of 0x01 and of 0x02, base64.
const K1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const K2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
const BEARER: &str = "bearer-plaintext-7f3a";
const HEADER: &str = "header-plaintext-91c2";
const SIGNING: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// The `storage` line of a relay on `db` with these `(id, key)` encryption keys.
fn storage(db: &Path, keys: &[(&str, &str)]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|(id, key)| format!("{{id: {id}, key: '{key}'}}"))
        .collect();
    format!(
        "storage: {{path: '{}', sync: normal, encryption_keys: [{}]}}\n",
        db.display(),
        keys.join(", ")
    )
}

/// The database file and its WAL, as bytes.
fn file_bytes(db: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(db).unwrap();
    bytes.extend(std::fs::read(sibling(db, "-wal")).unwrap_or_default());
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The stored spec of each API subscription, by name, read from the file.
fn stored_specs(db: &Path) -> Vec<(String, String)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut s = conn
        .prepare("SELECT name, spec FROM subscriptions ORDER BY name")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Registers an API subscription with a bearer token, a secret header and a signing secret.
async fn register(relay: &TestRelay, name: &str, rx: &Receiver) {
    let (status, created) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": name, "url": rx.url("/"), "events": ["*"],
                "auth": {"bearer": BEARER}, "headers": {"X-Api-Key": HEADER},
                "signing": {"secrets": [SIGNING]}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
}

/// Posts one event and checks that `rx` got it with the subscription's credentials.
async fn delivered_with_credentials(relay: &TestRelay, rx: &Receiver, n: usize) {
    let (status, answer) = relay.post(&json!({"type": "a", "data": {"n": n}})).await;
    assert_eq!(status, 202, "{answer}");
    let got = rx.wait_for(n).await;
    let r = &got[n - 1];
    let header = |name: &str| r.headers[name].to_str().unwrap().to_string();
    assert_eq!(header("authorization"), format!("Bearer {BEARER}"));
    assert_eq!(header("x-api-key"), HEADER);
    let key = SigningKey::parse(SIGNING).unwrap();
    assert!(key.verifies(
        &header("webhook-id"),
        header("webhook-timestamp").parse().unwrap(),
        &r.body,
        &header("webhook-signature"),
    ));
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// A relay on `db` with `extra` YAML; the listeners on port 0.
fn config(db: &Path, extra: &str) -> Config {
    let yaml = format!(
        "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\nstorage: {{path: '{}', sync: normal}}\n{extra}",
        db.display()
    );
    Config::from_yaml(&yaml, "test.yaml", &|_| None).unwrap()
}

#[tokio::test]
async fn the_database_its_wal_and_a_new_directory_are_private() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = dir.path().join("new/nested/relay.db");
    let relay = TestRelay::start_in(
        &format!("storage: {{path: '{}', sync: normal}}\n", db.display()),
        dir.clone(),
    )
    .await;
    let (status, _) = relay
        .post(&serde_json::json!({"type": "a", "data": {}}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(mode(&db), 0o600, "database file");
    assert_eq!(mode(&sibling(&db, "-wal")), 0o600, "WAL file");
    assert_eq!(mode(&sibling(&db, "-shm")), 0o600, "shared-memory file");
    assert_eq!(mode(&sibling(&db, ".lock")), 0o600, "lock file");
    assert_eq!(mode(&dir.path().join("new")), 0o700, "created directory");
    assert_eq!(
        mode(&dir.path().join("new/nested")),
        0o700,
        "created directory"
    );
    relay.stop().await;
}

#[tokio::test]
async fn an_existing_file_readable_by_others_is_tightened() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = dir.path().join("hookrelay.db");
    let relay = TestRelay::start_in("", dir.clone()).await;
    relay.stop().await;
    for file in [db.clone(), sibling(&db, "-wal"), sibling(&db, "-shm")] {
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let relay = TestRelay::start_in("", dir.clone()).await;
    assert_eq!(mode(&db), 0o600);
    for file in [sibling(&db, "-wal"), sibling(&db, "-shm")] {
        if file.exists() {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_second_relay_on_the_same_file_fails_to_start() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = dir.path().join("hookrelay.db");
    let first = TestRelay::start_in("", dir.clone()).await;
    let second = Relay::bind(config(&db, "")).await.unwrap();
    let result = tokio::time::timeout(common::DEADLINE, second.run(std::future::pending()))
        .await
        .expect("the second relay stops at once");
    let message = result
        .expect_err("a second relay must not start")
        .to_string();
    assert!(
        message.contains("another hookrelay is using this database"),
        "{message}"
    );
    assert!(message.contains(&db.display().to_string()), "{message}");
    // The first one is unharmed, and once it stops the file is free again.
    assert!(first.running());
    first.stop().await;
    let again = TestRelay::start_in("", dir.clone()).await;
    again.stop().await;
}

#[tokio::test]
async fn relays_in_memory_need_no_lock() {
    let yaml = "storage: {memory: true}\n";
    let a = TestRelay::start(yaml).await;
    let b = TestRelay::start(yaml).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn api_secrets_are_encrypted_in_the_file_and_delivered_after_a_restart() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = dir.path().join("hookrelay.db");
    let rx = Receiver::ok().await;
    let relay = TestRelay::start_in(&storage(&db, &[("k1", K1)]), dir.clone()).await;
    register(&relay, "sealed", &rx).await;
    delivered_with_credentials(&relay, &rx, 1).await;
    let bytes = file_bytes(&db);
    for secret in [BEARER, HEADER, SIGNING, &SIGNING[6..]] {
        assert!(!contains(&bytes, secret), "{secret} in the database file");
    }
    assert!(contains(&bytes, "v1:k1:"), "the sealed secrets are stored");
    relay.stop().await;
    for secret in [BEARER, HEADER, SIGNING] {
        assert!(!contains(&file_bytes(&db), secret), "{secret} in the file");
    }

    let relay = TestRelay::start_in(&storage(&db, &[("k1", K1)]), dir.clone()).await;
    delivered_with_credentials(&relay, &rx, 2).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_new_key_first_seals_new_saves_while_old_rows_still_load() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = dir.path().join("hookrelay.db");
    let (rx_plain, rx_old, rx_new) = (
        Receiver::ok().await,
        Receiver::ok().await,
        Receiver::ok().await,
    );
    // Stored before any key was set: plaintext.
    let relay = TestRelay::start_in(&storage(&db, &[]), dir.clone()).await;
    register(&relay, "plain", &rx_plain).await;
    relay.stop().await;
    let relay = TestRelay::start_in(&storage(&db, &[("k1", K1)]), dir.clone()).await;
    register(&relay, "old", &rx_old).await;
    relay.stop().await;

    let relay = TestRelay::start_in(&storage(&db, &[("k2", K2), ("k1", K1)]), dir.clone()).await;
    register(&relay, "new", &rx_new).await;
    let specs = stored_specs(&db);
    let spec = |name: &str| specs.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert!(spec("new").contains("v1:k2:") && !spec("new").contains(BEARER));
    assert!(spec("old").contains("v1:k1:") && !spec("old").contains(BEARER));
    assert!(
        spec("plain").contains(BEARER),
        "untouched until saved again"
    );
    // All three load and deliver with their credentials.
    let (status, answer) = relay.post(&json!({"type": "a", "data": {}})).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer["subscriptions"].as_array().unwrap().len(),
        3,
        "{answer}"
    );
    for rx in [&rx_plain, &rx_old, &rx_new] {
        let r = &rx.wait_for(1).await[0];
        assert_eq!(
            r.headers["authorization"],
            format!("Bearer {BEARER}").as_str()
        );
    }
    // Saved again, the plaintext row and the old one are sealed with the new key.
    for name in ["plain", "old"] {
        let (status, answer) = relay
            .api(
                Method::PATCH,
                &format!("/v1/subscriptions/{name}"),
                Some(json!({"retries": 3})),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let specs = stored_specs(&db);
    for (name, spec) in &specs {
        assert!(spec.contains("v1:k2:"), "{name}: {spec}");
        assert!(
            !spec.contains("v1:k1:") && !spec.contains(BEARER),
            "{name}: {spec}"
        );
    }
    relay.stop().await;
}

/// Runs the relay binary on `config` until it listens; returns it with the lines it logged
/// before that, and its API address.
fn run_binary(
    config: &Path,
    env: &[(&str, &str)],
) -> (std::process::Child, Vec<Value>, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(common::bin());
    cmd.arg("--config").arg(config).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut lines = Vec::new();
    for line in stderr.by_ref().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["message"] == "hookrelay listening" {
            let api = v["api"].as_str().unwrap().parse().unwrap();
            // Keep reading, so the relay's later log lines never meet a closed pipe.
            std::thread::spawn(move || stderr.for_each(drop));
            return (child, lines, api);
        }
        lines.push(v);
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the relay exited before listening: {lines:?}");
}

#[tokio::test]
async fn a_secret_sealed_with_an_unknown_key_leaves_its_subscription_out_and_no_key_warns() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = dir.path().join("hookrelay.db");
    let rx = Receiver::ok().await;
    let relay = TestRelay::start_in(&storage(&db, &[("k1", K1)]), dir.clone()).await;
    register(&relay, "sealed", &rx).await;
    relay.stop().await;

    // Only a new key, given through the environment: the old row cannot be read.
    let config = dir.path().join("config.yaml");
    let listen = "listen: {app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}\nlog: {format: json}\n";
    std::fs::write(
        &config,
        format!(
            "{listen}storage: {{path: '{}', encryption_keys: [{{id: k2, key: '${{HOOKRELAY_KEY}}'}}]}}\n",
            db.display()
        ),
    )
    .unwrap();
    let (mut child, lines, api) = run_binary(&config, &[("HOOKRELAY_KEY", K2)]);
    let left_out = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("API subscription left out: its secrets"))
        })
        .unwrap_or_else(|| panic!("no left-out error in {lines:?}"));
    assert_eq!(left_out["level"], "ERROR", "{left_out}");
    assert_eq!(left_out["key"], "k1", "{left_out}");
    assert_eq!(left_out["subscription"], "sealed", "{left_out}");
    assert!(!lines.iter().any(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("stored unencrypted"))
    }));
    let text = serde_json::to_string(&lines).unwrap();
    assert!(!text.contains(K2) && !text.contains(K1), "a key was logged");
    // Left out, its name stays taken and it can be deleted.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (status, _, _) = common::api_request(
        &http,
        api,
        Method::DELETE,
        "/v1/subscriptions/sealed",
        None,
        None,
    )
    .await;
    assert_eq!(status, 204);
    child.kill().unwrap();
    child.wait().unwrap();

    // Without keys: a warning, once.
    std::fs::write(
        &config,
        format!("{listen}storage: {{path: '{}'}}\n", db.display()),
    )
    .unwrap();
    let (mut child, lines, _) = run_binary(&config, &[]);
    let warnings: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["message"]
                == "API subscription secrets are stored unencrypted; set storage.encryption_keys"
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{lines:?}");
    assert_eq!(warnings[0]["level"], "WARN");
    child.kill().unwrap();
    child.wait().unwrap();
}
