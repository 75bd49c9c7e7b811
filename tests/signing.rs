//! Signed deliveries (Standard Webhooks), verified on the receiving side by an independent
//! implementation (the reference `standardwebhooks` crate), and `hookrelay verify`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Answer, Received, Receiver, TestRelay, bin};
use hookrelay::signing::SigningKey;
use reqwest::Method;
use serde_json::json;

const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn header(r: &Received, name: &str) -> String {
    r.headers[name].to_str().unwrap().to_string()
}

/// Verifies a received request with the Standard Webhooks reference library, which knows
/// nothing of `hookrelay::signing`.
fn reference_verifies(secret: &str, r: &Received) -> bool {
    // The Rust reference wants canonical base64 padding (its Python twin pads by itself); the
    // relay takes a secret either way, so `NEW` is configured unpadded.
    let base64 = secret.strip_prefix("whsec_").unwrap();
    let padding = "=".repeat((4 - base64.len() % 4) % 4);
    let webhook = standardwebhooks::Webhook::new(&format!("whsec_{base64}{padding}"))
        .expect("the reference library reads the secret");
    webhook.verify(&r.body, &r.headers).is_ok()
}

/// Two attempts (the first fails) of an event signed with `OLD` and `NEW`.
async fn two_signed_attempts() -> Vec<Received> {
    // The first attempt fails, so the retry shows a fresh timestamp and signature.
    let rx = Receiver::scripted(|n| Answer::status(if n == 0 { 500 } else { 200 })).await;
    let relay = TestRelay::start(&format!(
        "subscriptions:\n  - {{name: signed, url: '{}', events: ['*'], backoff: {{schedule: [1100ms]}}, signing: {{secrets: ['{OLD}', '{NEW}']}}}}\n",
        rx.url("/")
    ))
    .await;
    let body =
        r#"{"type":"invoice.paid","id":"evt-signed","data":{"amount":12.5,"note":"caf\u00e9 ☕"}}"#;
    assert_eq!(relay.post_raw(body, "application/json").await.0, 202);
    let got = rx.wait_for(2).await;
    relay.wait_outcome("signed", "delivered", 1.0).await;
    relay.stop().await;
    got
}

#[tokio::test]
async fn every_attempt_is_signed_with_every_secret() {
    let got = two_signed_attempts().await;
    let (old, new) = (
        SigningKey::parse(OLD).unwrap(),
        SigningKey::parse(NEW).unwrap(),
    );
    for r in &got {
        let signature = header(r, "webhook-signature");
        assert_eq!(signature.split(' ').count(), 2, "{signature}");
        let ts: u64 = header(r, "webhook-timestamp").parse().unwrap();
        assert!(old.verifies("evt-signed", ts, &r.body, &signature));
        assert!(new.verifies("evt-signed", ts, &r.body, &signature));
        assert!(!old.verifies("evt-signed", ts, b"{}", &signature));
    }
    // Each attempt is signed at its own time.
    assert_ne!(
        header(&got[0], "webhook-timestamp"),
        header(&got[1], "webhook-timestamp")
    );
}

#[tokio::test]
async fn every_attempt_verifies_with_the_reference_library() {
    let got = two_signed_attempts().await;
    for r in &got {
        assert!(reference_verifies(OLD, r), "the old secret does not verify");
        assert!(reference_verifies(NEW, r), "the new secret does not verify");
    }
    let other = "whsec_ZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZm";
    assert!(
        !reference_verifies(other, &got[0]),
        "an unrelated secret verifies"
    );
}

#[tokio::test]
async fn signing_secrets_are_validated_and_never_shown_by_the_api() {
    let rx = Receiver::ok().await;
    let relay = TestRelay::start("").await;
    let (status, answer) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": "bad", "url": rx.url("/"), "events": ["*"],
                "signing": {"secrets": ["not-a-secret", "whsec_c2hvcnQ="]}})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    let fields: Vec<&str> = answer["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["signing.secrets[0]", "signing.secrets[1]"],
        "{answer}"
    );
    assert!(!answer.to_string().contains("not-a-secret"), "{answer}");

    let (status, created) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(
                json!({"name": "api-signed", "url": rx.url("/"), "events": ["*"],
                "signing": {"secrets": [NEW]}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["signing"], json!({"secrets": [{}]}));
    // Sent back as shown, the secret is kept.
    let (status, replaced) = relay
        .api(
            Method::PUT,
            "/v1/subscriptions/api-signed",
            Some(created.clone()),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    assert!(!replaced.to_string().contains(&NEW[6..]));
    relay
        .post(&json!({"type": "t", "id": "e1", "data": {}}))
        .await;
    let got = rx.wait_for(1).await;
    let ts: u64 = header(&got[0], "webhook-timestamp").parse().unwrap();
    let key = SigningKey::parse(NEW).unwrap();
    assert!(key.verifies(
        "e1",
        ts,
        &got[0].body,
        &header(&got[0], "webhook-signature")
    ));
    relay.stop().await;
}

#[test]
fn verify_checks_a_body_from_stdin() {
    let key = SigningKey::parse(OLD).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = b"<notification>caf\xc3\xa9</notification>";
    let run = |env: Option<&str>, ts: u64, body: &[u8], extra: &[&str]| {
        let signature = key.sign("msg-1", ts, b"<notification>caf\xc3\xa9</notification>");
        let mut cmd = Command::new(bin());
        cmd.args([
            "verify",
            "--secret-env",
            "HOOKRELAY_TEST_SECRET",
            "--id",
            "msg-1",
        ])
        .args(["--timestamp", &ts.to_string(), "--signature", &signature])
        .args(extra)
        .env_remove("HOOKRELAY_TEST_SECRET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(secret) = env {
            cmd.env("HOOKRELAY_TEST_SECRET", secret);
        }
        let mut child = cmd.spawn().unwrap();
        // The command may refuse its arguments and exit before it reads stdin.
        match child.stdin.take().unwrap().write_all(body) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.unwrap(),
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, text) = run(Some(OLD), now, body, &[]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run(
        Some(OLD),
        now,
        b"<notification>tampered</notification>",
        &[],
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no v1 signature matches"), "{text}");
    let (code, text) = run(Some(NEW), now, body, &[]);
    assert_eq!(code, Some(1), "{text}");
    // An old timestamp is refused, unless the tolerance covers it.
    let (code, text) = run(Some(OLD), now - 600, body, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("beyond the tolerance"), "{text}");
    let (code, text) = run(Some(OLD), now - 600, body, &["--tolerance", "15m"]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run(None, now, body, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("HOOKRELAY_TEST_SECRET is not set"), "{text}");
    let (code, text) = run(Some("whsec_!!"), now, body, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        !text.contains("whsec_!!"),
        "the secret is never printed: {text}"
    );
}

/// One attempt of an event sent as an envelope, signed with `OLD`.
async fn one_enveloped_attempt() -> Received {
    let rx = Receiver::ok().await;
    let relay = TestRelay::start(&format!(
        "subscriptions:\n  - {{name: wrapped, url: '{}', events: ['*'], encoding: envelope, signing: {{secrets: ['{OLD}']}}}}\n",
        rx.url("/")
    ))
    .await;
    relay
        .post(&json!({"type": "t", "id": "enc-1", "data": {"n": 1}}))
        .await;
    let got = rx.wait_for(1).await;
    relay.stop().await;
    got.into_iter().next().unwrap()
}

#[tokio::test]
async fn the_signature_covers_the_encoded_body() {
    let got = [one_enveloped_attempt().await];
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["data"], json!({"n": 1}), "an envelope was sent");
    let ts: u64 = header(&got[0], "webhook-timestamp").parse().unwrap();
    let key = SigningKey::parse(OLD).unwrap();
    assert!(key.verifies(
        "enc-1",
        ts,
        &got[0].body,
        &header(&got[0], "webhook-signature")
    ));
}

#[tokio::test]
async fn the_encoded_body_verifies_with_the_reference_library() {
    let got = one_enveloped_attempt().await;
    assert!(reference_verifies(OLD, &got));
}
