//! Receiver credentials against a real token endpoint and receivers on 127.0.0.1: OAuth2
//! client credentials (one fetch for many deliveries, refresh on expiry and after a 401,
//! token endpoint failures in `last_error`), their secrets in the API and the logs.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use common::token_endpoint::{TokenAnswer, TokenEndpoint};
use common::{Answer, Binary, Receiver, TestRelay, bin, deadline, poll};
use reqwest::Method;
use serde_json::{Value, json};

const CLIENT_SECRET: &str = "cs-4f9a1d7e-secret";

/// A config with one subscription `reg` to `rx` whose tokens come from `endpoint`.
fn config(rx: &Receiver, endpoint: &TokenEndpoint, extra: &str) -> String {
    format!(
        "subscriptions:\n  - {{name: reg, url: '{}', events: ['*'], {extra}
      auth: {{oauth2: {{token_url: '{}', client_id: hookrelay, client_secret: '{CLIENT_SECRET}',
              scopes: [webhooks.write]}}}}}}\n",
        rx.url("/hook"),
        endpoint.url()
    )
}

fn bearer(r: &common::Received) -> String {
    r.headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// A receiver that takes every token until told to refuse `tok-1` with a `401`.
async fn revoking_receiver() -> (Receiver, Arc<AtomicBool>) {
    let revoked = Arc::new(AtomicBool::new(false));
    let flag = revoked.clone();
    let rx = Receiver::judging(move |r| {
        if flag.load(Ordering::SeqCst) && bearer(r) == "Bearer tok-1" {
            Answer::status(401)
        } else {
            Answer::status(200)
        }
    })
    .await;
    (rx, revoked)
}

async fn post(relay: &TestRelay, n: usize) {
    let (status, answer) = relay.post(&json!({"type": "t", "data": {"n": n}})).await;
    assert_eq!(status, 202, "{answer}");
}

/// Fifty events queued while paused, then resumed with 16 in flight: the first attempts all
/// wait on one fetch from a slow endpoint issuing tokens of `expires_in`.
async fn fifty_at_once(expires_in: Option<u64>) -> (TokenEndpoint, Receiver, TestRelay) {
    let endpoint = TokenEndpoint::start_slow(Duration::from_millis(300), move |_| {
        TokenAnswer::Issue { expires_in }
    })
    .await;
    let rx = Receiver::ok().await;
    let relay = TestRelay::start(&config(&rx, &endpoint, "max_in_flight: 16, paused: true,")).await;
    for n in 0..50 {
        post(&relay, n).await;
    }
    let (status, body) = relay
        .api(Method::POST, "/v1/subscriptions/reg/resume", None)
        .await;
    assert!(status < 300, "{status} {body}");
    (endpoint, rx, relay)
}

#[tokio::test]
async fn one_token_fetch_serves_many_deliveries() {
    let (endpoint, rx, relay) = fifty_at_once(Some(3600)).await;
    let got = rx.wait_for(50).await;
    assert!(got.iter().all(|r| bearer(r) == "Bearer tok-1"));
    assert_eq!(endpoint.count(), 1);
    // The grant as RFC 6749 has it: basic client authentication by default.
    let request = &endpoint.requests()[0];
    assert_eq!(request.field("grant_type"), Some("client_credentials"));
    assert_eq!(request.field("scope"), Some("webhooks.write"));
    assert_eq!(request.field("client_secret"), None);
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("hookrelay:{CLIENT_SECRET}"));
    assert_eq!(
        request.headers["authorization"].to_str().unwrap(),
        format!("Basic {basic}")
    );
    relay
        .wait_metric(
            "hookrelay_oauth2_token_requests_total",
            &[("subscription", "reg"), ("result", "ok")],
            1.0,
        )
        .await;
    relay.stop().await;
}

/// An endpoint whose tokens expire at once: attempts waiting on a fetch share its token
/// instead of each fetching in turn behind the one before.
#[tokio::test]
async fn tokens_that_expire_at_once_are_still_shared_by_the_waiters() {
    let (endpoint, rx, relay) = fifty_at_once(Some(0)).await;
    rx.wait_for(50).await;
    // One fetch per second at most (the floor), plus the waves of waiters: never one each.
    assert!(endpoint.count() <= 10, "{} fetches", endpoint.count());
    relay.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_refreshed() {
    // Used for a second (the floor; a tenth before expiry would be 0.9s).
    let endpoint = TokenEndpoint::issuing(Some(1)).await;
    let rx = Receiver::ok().await;
    let relay = TestRelay::start(&config(&rx, &endpoint, "")).await;
    // Deliver one event after another until a second token was needed.
    let mut n = 0;
    let refreshed = deadline(|| {
        n += 1;
        let n = n;
        let (relay, rx, endpoint) = (&relay, &rx, &endpoint);
        async move {
            post(relay, n).await;
            rx.wait_for(n).await;
            endpoint.count() >= 2
        }
    })
    .await;
    assert!(refreshed, "no second token fetch");
    let got = rx.received();
    let tokens: Vec<String> = got.iter().map(bearer).collect();
    let first_new = tokens.iter().position(|t| t == "Bearer tok-2").unwrap();
    assert!(first_new > 0);
    assert!(tokens[..first_new].iter().all(|t| t == "Bearer tok-1"));
    // Not fetched again before the first one's time was up.
    let requests = endpoint.requests();
    let held = requests[1].at - requests[0].at;
    assert!(held >= Duration::from_millis(850), "{held:?}");
    relay.stop().await;
}

#[tokio::test]
async fn a_401_refreshes_once_within_the_attempt() {
    let endpoint = TokenEndpoint::issuing(None).await;
    let (rx, revoked) = revoking_receiver().await;
    let relay = TestRelay::start(&config(&rx, &endpoint, "")).await;
    post(&relay, 1).await;
    rx.wait_for(1).await;
    revoked.store(true, Ordering::SeqCst);
    post(&relay, 2).await;
    relay.wait_outcome("reg", "delivered", 2.0).await;
    let tokens: Vec<String> = rx.received().iter().map(bearer).collect();
    assert_eq!(tokens, ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]);
    assert_eq!(endpoint.count(), 2);
    // The 401 and its retry were one attempt, a success.
    assert_eq!(relay.attempts("reg", "success").await, Some(2.0));
    assert_eq!(relay.attempts("reg", "http_error").await, Some(0.0));
    relay.stop().await;
}

#[tokio::test]
async fn a_fresh_token_refused_is_an_http_error_not_a_loop() {
    let endpoint = TokenEndpoint::issuing(None).await;
    let rx = Receiver::scripted(|_| Answer::status(401)).await;
    let relay = TestRelay::start(&config(&rx, &endpoint, "retries: 0,")).await;
    post(&relay, 1).await;
    relay.wait_outcome("reg", "failed", 1.0).await;
    // The token was fetched for this attempt: its refusal is the answer.
    assert_eq!(rx.count(), 1);
    assert_eq!(endpoint.count(), 1);
    assert_eq!(relay.attempts("reg", "http_error").await, Some(1.0));
    relay.stop().await;
}

#[tokio::test]
async fn invalid_client_surfaces_in_last_error() {
    let endpoint =
        TokenEndpoint::start(|_| TokenAnswer::Refuse(400, json!({"error": "invalid_client"})))
            .await;
    let rx = Receiver::ok().await;
    let relay = TestRelay::start(&config(
        &rx,
        &endpoint,
        "retries: 2, backoff: {schedule: [10ms]}, circuit: off,",
    ))
    .await;
    post(&relay, 1).await;
    relay.wait_outcome("reg", "failed", 1.0).await;
    assert_eq!(relay.attempts("reg", "auth_error").await, Some(3.0));
    assert_eq!(endpoint.count(), 3);
    assert_eq!(rx.count(), 0);
    let (_, dead) = relay
        .api(Method::GET, "/v1/deliveries?subscription=reg", None)
        .await;
    assert_eq!(
        dead["deliveries"][0]["last_error"],
        "oauth2: token endpoint answered 400 invalid_client (after 3 attempts)"
    );
    assert_eq!(
        relay
            .metric(
                "hookrelay_oauth2_token_requests_total",
                &[("subscription", "reg"), ("result", "error")],
            )
            .await,
        Some(3.0)
    );
    relay.stop().await;
}

#[tokio::test]
async fn an_unreachable_token_endpoint_is_an_auth_error() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let rx = Receiver::ok().await;
    let yaml = format!(
        "subscriptions:\n  - {{name: reg, url: '{}', events: ['*'], retries: 0,
      auth: {{oauth2: {{token_url: 'http://127.0.0.1:{port}/t', client_id: c, client_secret: s}}}}}}\n",
        rx.url("/")
    );
    let relay = TestRelay::start(&yaml).await;
    post(&relay, 1).await;
    relay.wait_outcome("reg", "failed", 1.0).await;
    let (_, dead) = relay
        .api(Method::GET, "/v1/deliveries?subscription=reg", None)
        .await;
    let error = dead["deliveries"][0]["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("oauth2: cannot reach the token endpoint: "),
        "{error}"
    );
    assert!(!error.contains(&port.to_string()), "URL in {error}");
    assert_eq!(relay.attempts("reg", "auth_error").await, Some(1.0));
    relay.stop().await;
}

/// A relay with encryption keys and the API open to 127.0.0.1; returns it and its database.
/// A change refused for keeping a client secret the subscription does not have.
fn secret_not_kept(status: u16, body: &serde_json::Value) {
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["fields"]
            .to_string()
            .contains("auth.oauth2.client_secret"),
        "{body}"
    );
}

async fn api_relay() -> (TestRelay, std::path::PathBuf) {
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    TestRelay::start_with_storage(
        &format!("sync: normal, encryption_keys: [{{id: k1, key: '{key}'}}]"),
        "api: {allowed_destinations: ['127.0.0.1/32']}\n",
    )
    .await
}

fn stored_spec(db: &std::path::Path, name: &str) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(
        "SELECT spec FROM subscriptions WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test]
async fn api_oauth2_secrets_are_redacted_kept_and_sealed() {
    let endpoint = TokenEndpoint::issuing(Some(3600)).await;
    let rx = Receiver::ok().await;
    let (relay, db) = api_relay().await;
    let doc = json!({"name": "reg", "url": rx.url("/"), "events": ["*"],
        "auth": {"oauth2": {"token_url": endpoint.url(), "client_id": "hookrelay",
                            "client_secret": CLIENT_SECRET, "auth_style": "body"}}});
    let (status, created) = relay
        .api(Method::POST, "/v1/subscriptions", Some(doc))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let (_, shown) = relay
        .api(Method::GET, &format!("/v1/subscriptions/{id}"), None)
        .await;
    assert!(!shown.to_string().contains(CLIENT_SECRET), "{shown}");
    assert_eq!(shown["auth"]["oauth2"]["client_id"], "hookrelay");
    // Sealed at rest.
    let stored = stored_spec(&db, "reg");
    assert!(!stored.contains(CLIENT_SECRET));
    assert!(stored.contains("$enc"), "{stored}");
    // What was shown, sent back, keeps the secret: delivery still authenticates.
    let back = shown.clone();
    let (status, body) = relay
        .api(
            Method::PUT,
            &format!("/v1/subscriptions/{id}"),
            Some(back.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    post(&relay, 1).await;
    rx.wait_for(1).await;
    assert_eq!(
        endpoint.requests()[0].field("client_secret"),
        Some(CLIENT_SECRET)
    );
    // A new token endpoint does not get the stored secret.
    let mut moved = back.clone();
    // Read-only fields as the first PUT left them are refused; this one changes only the URL.
    moved.as_object_mut().unwrap().remove("updated_at");
    moved["auth"]["oauth2"]["token_url"] = json!("http://127.0.0.1:1/elsewhere");
    let (status, body) = relay
        .api(Method::PUT, &format!("/v1/subscriptions/{id}"), Some(moved))
        .await;
    secret_not_kept(status, &body);
    // Nor by a merge patch, which starts from the stored document with its secret.
    let (status, body) = relay
        .api(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(json!({"auth": {"oauth2": {"token_url": "http://127.0.0.1:1/elsewhere"}}})),
        )
        .await;
    secret_not_kept(status, &body);
    // The same patch giving the secret again is a change like any other.
    let (status, body) = relay
        .api(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(
                json!({"auth": {"oauth2": {"token_url": "http://127.0.0.1:1/elsewhere",
                "client_secret": CLIENT_SECRET}}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The token endpoint passes the destination guard.
    let (status, body) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": "meta", "url": rx.url("/"), "events": ["*"],
                "auth": {"oauth2": {"token_url": "http://169.254.169.254/token",
                    "client_id": "c", "client_secret": "s"}}})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["fields"]
            .to_string()
            .contains("auth.oauth2.token_url"),
        "{body}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn secrets_never_reach_the_logs_at_trace() {
    let endpoint = TokenEndpoint::issuing(Some(1)).await;
    let (rx, revoked) = revoking_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookrelay.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\nstorage: {{path: '{}'}}\nlog: {{format: json}}\n{}",
            dir.path().join("db.sqlite").display(),
            config(&rx, &endpoint, "")
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("--config").arg(&path).env("RUST_LOG", "trace");
    let relay = Binary::start(cmd);
    let mut lines: Vec<Value> = Vec::new();
    // A delivery, a 401 and its refresh, then deliveries until the token expired once more.
    assert_eq!(relay.post(&json!({"type": "t", "data": {}})).await, 202);
    rx.wait_for(1).await;
    revoked.store(true, Ordering::SeqCst);
    let mut n = 1;
    poll(|| {
        n += 1;
        let (relay, rx, endpoint) = (&relay, &rx, &endpoint);
        let n = n;
        async move {
            assert_eq!(relay.post(&json!({"type": "t", "data": {}})).await, 202);
            deadline(|| async { rx.count() >= n }).await;
            endpoint.count() >= 3
        }
    })
    .await;
    let mut child = relay.child;
    child.kill().unwrap();
    child.wait().unwrap();
    // Until the reader thread has passed on every line and ended.
    while let Ok(line) = relay.lines.recv_timeout(common::DEADLINE) {
        lines.push(line);
    }
    assert!(lines.len() > 50, "too few trace lines: {}", lines.len());
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("hookrelay:{CLIENT_SECRET}"));
    let mut secrets = vec![CLIENT_SECRET.to_string(), basic];
    secrets.extend(endpoint.issued());
    assert!(secrets.len() >= 5, "{secrets:?}");
    for line in &text {
        for secret in &secrets {
            assert!(!line.contains(secret.as_str()), "{secret} in {line}");
        }
    }
}
