//! Receiver credentials over real TLS on 127.0.0.1: client certificates (mutual TLS), private
//! CAs trusted instead of the system roots, `server_name`, the client certificate's expiry
//! metric, and a rotated certificate file picked up by a reload.

mod common;

use std::path::Path;

use common::tls::{Leaf, Role, TestCa, TlsReceiver, unix_now};
use common::{Binary, DEADLINE, TestRelay, api_request, bin, deadline, poll};
use serde_json::{Value, json};

/// A pending delivery's `last_error` for `subscription` (the newest first).
async fn last_error(relay: &TestRelay, subscription: &str) -> String {
    let (_, page) = relay
        .api(
            reqwest::Method::GET,
            &format!("/v1/deliveries?state=pending&subscription={subscription}"),
            None,
        )
        .await;
    page["deliveries"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until `subscription`'s delivery failed with an error containing every one of
/// `parts`, and returns that error.
async fn wait_error(relay: &TestRelay, subscription: &str, parts: &[&str]) -> String {
    let found = deadline(|| async {
        let seen = last_error(relay, subscription).await;
        parts.iter().all(|p| seen.contains(p))
    })
    .await;
    let seen = last_error(relay, subscription).await;
    assert!(found, "last_error never held {parts:?}; it is {seen:?}");
    seen
}

/// Writes a certificate and key pair as `NAME.crt` and `NAME.key` in `dir`.
fn write_leaf(dir: &Path, name: &str, leaf: &Leaf) {
    std::fs::write(dir.join(format!("{name}.crt")), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &leaf.key_pem).unwrap();
}

/// A receiver on 127.0.0.1 with a certificate from the first CA, requiring a client
/// certificate from the second.
async fn mtls_receiver() -> (TestCa, TestCa, TlsReceiver) {
    let (server_ca, client_ca) = (TestCa::new("servers"), TestCa::new("clients"));
    let rx = TlsReceiver::start(
        &server_ca.leaf(&["127.0.0.1"], Role::Server),
        Some(&client_ca),
    )
    .await;
    (server_ca, client_ca, rx)
}

fn event() -> Value {
    json!({"type": "t", "data": {"n": 1}})
}

/// Retries come quickly, so a failure is seen and a fix delivers within the deadline.
const FAST_RETRIES: &str = "retries: 20, backoff: {initial: 50ms, max: 200ms}";

#[tokio::test]
async fn mtls_delivers_with_the_right_certificate() {
    let (server_ca, client_ca, rx) = mtls_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    write_leaf(
        dir.path(),
        "client",
        &client_ca.leaf(&["relay"], Role::Client),
    );
    std::fs::write(dir.path().join("ca.crt"), &server_ca.cert_pem).unwrap();
    let d = dir.path().display();
    let relay = TestRelay::start(&format!(
        "subscriptions:\n  - {{name: a, url: '{}', events: ['*'], tls: {{client_cert: '{d}/client.crt', client_key: '{d}/client.key', ca: '{d}/ca.crt'}}}}\n",
        rx.url("127.0.0.1", "/hook")
    ))
    .await;

    relay.post(&event()).await;
    relay.wait_outcome("a", "delivered", 1.0).await;
    relay.post(&event()).await;
    relay.wait_outcome("a", "delivered", 2.0).await;
    assert_eq!(rx.receiver.count(), 2);
    // The second delivery went over the first connection: one handshake, no failures.
    assert_eq!(rx.handshakes(), 1, "failures: {:?}", rx.failures());
    assert_eq!(relay.attempts("a", "connect_error").await, Some(0.0));
    relay.stop().await;
}

#[tokio::test]
async fn a_wrong_client_certificate_fails_the_handshake_and_a_rotated_file_fixes_it() {
    let (server_ca, client_ca, rx) = mtls_receiver().await;
    let stranger = TestCa::new("strangers");
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    write_leaf(&etc, "client", &stranger.leaf(&["relay"], Role::Client));
    std::fs::write(etc.join("ca.crt"), &server_ca.cert_pem).unwrap();
    let config = etc.join("config.yaml");
    // Paths relative to the config file's directory.
    std::fs::write(
        &config,
        format!(
            "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\n\
             storage: {{path: '{}'}}\n\
             subscriptions:\n  - {{name: a, url: '{}', events: ['*'], {FAST_RETRIES}, tls: {{client_cert: client.crt, client_key: client.key, ca: ca.crt}}}}\n",
            dir.path().join("relay.db").display(),
            rx.url("127.0.0.1", "/hook")
        ),
    )
    .unwrap();
    let relay = TestRelay::start_from_file(&config, dir.clone()).await;

    relay.post(&event()).await;
    let error = wait_error(
        &relay,
        "a",
        &["tls: the receiver refused the client certificate"],
    )
    .await;
    assert!(error.contains("certificate"), "{error}");
    assert!(relay.attempts("a", "connect_error").await >= Some(1.0));
    assert_eq!(rx.receiver.count(), 0);
    assert!(!rx.failures().is_empty());

    // Rotated in place (the config text unchanged): the watcher reloads, the delivery goes.
    let good = client_ca.leaf(&["relay"], Role::Client);
    for (name, text) in [
        ("client.key", &good.key_pem),
        ("client.crt", &good.cert_pem),
    ] {
        let tmp = etc.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, etc.join(name)).unwrap();
    }
    relay.wait_outcome("a", "delivered", 1.0).await;
    assert_eq!(rx.receiver.count(), 1);
    assert!(
        relay
            .metric("hookrelay_config_reloads_total", &[("result", "success")])
            .await
            >= Some(1.0)
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_private_ca_is_trusted_instead_of_the_system_roots() {
    let (server_ca, other_ca) = (TestCa::new("servers"), TestCa::new("others"));
    let rx = TlsReceiver::start(&server_ca.leaf(&["127.0.0.1"], Role::Server), None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), &server_ca.cert_pem).unwrap();
    std::fs::write(dir.path().join("other.crt"), &other_ca.cert_pem).unwrap();
    let d = dir.path().display();
    let url = rx.url("127.0.0.1", "/hook");
    let relay = TestRelay::start(&format!(
        "subscriptions:\n\
         \x20 - {{name: private, url: '{url}', events: ['*'], tls: {{ca: '{d}/ca.crt'}}}}\n\
         \x20 - {{name: system, url: '{url}', events: ['*'], {FAST_RETRIES}}}\n\
         \x20 - {{name: other, url: '{url}', events: ['*'], {FAST_RETRIES}, tls: {{ca: '{d}/other.crt'}}}}\n"
    ))
    .await;

    relay.post(&event()).await;
    relay.wait_outcome("private", "delivered", 1.0).await;
    // Without `ca` the system's roots do not know the private CA; another CA replaces them.
    for name in ["system", "other"] {
        wait_error(
            &relay,
            name,
            &[
                "tls: the receiver's certificate is not trusted",
                "set tls.ca",
            ],
        )
        .await;
    }
    assert_eq!(rx.receiver.count(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn server_name_overrides_the_checked_name() {
    let ca = TestCa::new("servers");
    let rx = TlsReceiver::start(&ca.leaf(&["receiver.test"], Role::Server), None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), &ca.cert_pem).unwrap();
    let d = dir.path().display();
    let url = rx.url("127.0.0.1", "/hook");
    let relay = TestRelay::start(&format!(
        "subscriptions:\n\
         \x20 - {{name: named, url: '{url}', events: ['*'], tls: {{ca: '{d}/ca.crt', server_name: receiver.test}}}}\n\
         \x20 - {{name: unnamed, url: '{url}', events: ['*'], {FAST_RETRIES}, tls: {{ca: '{d}/ca.crt'}}}}\n"
    ))
    .await;

    relay.post(&event()).await;
    relay.wait_outcome("named", "delivered", 1.0).await;
    wait_error(
        &relay,
        "unnamed",
        &["not for this host", "set tls.server_name"],
    )
    .await;
    assert_eq!(rx.receiver.count(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn the_client_certificate_expiry_is_a_metric() {
    let (server_ca, client_ca, rx) = mtls_receiver().await;
    let expires = unix_now() + 10 * 86_400;
    let client = client_ca.leaf_until(&["relay"], Role::Client, expires);
    // Inline PEM, as YAML block scalars.
    let indent = |pem: &str| pem.replace('\n', "\n        ");
    let relay = TestRelay::start(&format!(
        "subscriptions:\n  - name: a\n    url: '{}'\n    events: ['*']\n    tls:\n      client_cert: |\n        {}\n      client_key: |\n        {}\n      ca: |\n        {}\n",
        rx.url("127.0.0.1", "/"),
        indent(&client.cert_pem),
        indent(&client.key_pem),
        indent(&server_ca.cert_pem),
    ))
    .await;
    let labels = [("subscription", "a")];
    relay
        .wait_metric(
            "hookrelay_client_certificate_expiry_timestamp_seconds",
            &labels,
            expires as f64,
        )
        .await;
    relay.post(&event()).await;
    relay.wait_outcome("a", "delivered", 1.0).await;
    poll(|| async { rx.receiver.count() == 1 }).await;
    relay.stop().await;
}

#[tokio::test]
async fn the_client_key_never_reaches_the_logs_or_the_api_at_trace() {
    let (server_ca, client_ca, rx) = mtls_receiver().await;
    let (file_client, api_client) = (
        client_ca.leaf(&["relay"], Role::Client),
        client_ca.leaf(&["api"], Role::Client),
    );
    let dir = tempfile::tempdir().unwrap();
    write_leaf(dir.path(), "client", &file_client);
    std::fs::write(dir.path().join("ca.crt"), &server_ca.cert_pem).unwrap();
    let config = dir.path().join("config.yaml");
    // The config's key comes inline from the environment; the API's inline in the document.
    std::fs::write(
        &config,
        format!(
            "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\n\
             storage: {{path: '{}'}}\nlog: {{format: json}}\n\
             subscriptions:\n  - {{name: file, url: '{}', events: ['*'], tls: {{client_cert: client.crt, client_key: '${{KEY_PEM}}', ca: ca.crt}}}}\n",
            dir.path().join("relay.db").display(),
            rx.url("127.0.0.1", "/file")
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("--config")
        .arg(&config)
        .env("KEY_PEM", &file_client.key_pem)
        .env("RUST_LOG", "trace");
    let mut relay = Binary::start(cmd);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let doc = json!({"name": "api", "url": rx.url("127.0.0.1", "/api"), "events": ["*"],
        "tls": {"client_cert": api_client.cert_pem, "client_key": api_client.key_pem,
                "ca": server_ca.cert_pem}});
    let (status, shown, _) = api_request(
        &http,
        relay.api,
        reqwest::Method::POST,
        "/v1/subscriptions",
        Some(doc),
        None,
    )
    .await;
    assert_eq!(status, 201, "{shown}");
    assert!(shown["tls"].get("client_key").is_none(), "{shown}");
    assert!(shown["tls"]["client_cert"].is_string());
    // Sent back as shown, the stored key is kept.
    let mut back = shown.clone();
    for key in ["id", "source", "created_at", "updated_at"] {
        back.as_object_mut().unwrap().remove(key);
    }
    let (status, body, _) = api_request(
        &http,
        relay.api,
        reqwest::Method::PUT,
        "/v1/subscriptions/api",
        Some(back),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    assert_eq!(relay.post(&event()).await, 202);
    let got = rx.receiver.wait_for(2).await;
    let mut paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/api", "/file"]);
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
    let lines: Vec<String> = std::iter::from_fn(|| relay.lines.recv_timeout(DEADLINE / 10).ok())
        .map(|l| l.to_string())
        .collect();
    assert!(lines.len() > 10, "too few lines at trace: {lines:?}");
    // The base64 body of each key: any line of it would be a leak.
    for key in [&file_client.key_pem, &api_client.key_pem] {
        for part in key.lines().filter(|l| !l.starts_with("-----")) {
            assert!(
                !lines.iter().any(|l| l.contains(part)),
                "a key line reached the log"
            );
        }
    }
}
