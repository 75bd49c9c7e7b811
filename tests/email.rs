//! The e-mail channel against a real SMTP server on 127.0.0.1 (`common::smtp`, in-process),
//! with each received message read back by an independent MIME parser (`mail-parser`).

mod common;

use std::collections::HashMap;

use common::TestRelay;
use common::smtp::{DataReply, SmtpServer};
use mail_parser::{MessageParser, MimeHeaders};
use reqwest::Method;
use serde_json::json;

/// A received message as its reader sees it.
#[derive(Debug)]
struct Parsed {
    /// Each header by its lowercased name: the value as sent, unfolded.
    headers: HashMap<String, String>,
    /// `type/subtype`, lowercased, without parameters.
    content_type: String,
    /// The body with its transfer encoding undone: the bytes the sender meant.
    body: Vec<u8>,
}

impl Parsed {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// Parses a received message with `mail-parser`: headers and the decoded body.
fn parse_message(raw: &[u8]) -> Parsed {
    let m = MessageParser::default()
        .parse(raw)
        .expect("a parsable message");
    let headers = m
        .headers_raw()
        .map(|(name, value)| {
            let unfolded = value.replace("\r\n", "").replace('\n', "");
            (name.to_ascii_lowercase(), unfolded.trim().to_string())
        })
        .collect();
    let content_type = m.content_type().map_or(String::new(), |ct| {
        format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()).to_ascii_lowercase()
    });
    Parsed {
        headers,
        content_type,
        body: m.root_part().contents().to_vec(),
    }
}

fn email_sub(name: &str, smtp: &str, extra: &str) -> String {
    format!(
        "subscriptions:
  - name: {name}
    mode: email
    events: ['invoice.*']
    backoff: {{schedule: [50ms, 50ms]}}
    email:
      to: [billing@example.com, 'Ops Team <ops@example.org>']
      from: 'Hookrelay <relay@example.net>'
      subject_template: 'Event {{type}} ({{id}})'
      smtp: {smtp}
{extra}"
    )
}

#[tokio::test]
async fn mail_arrives_with_headers_and_the_exact_body() {
    let smtp = SmtpServer::start(DataReply::ACCEPT, None);
    let relay = TestRelay::start(&email_sub("mail", &smtp.smtp(), "")).await;
    let body = r#"{"type":"invoice.paid","id":"evt-1","data":{"amount": 12.50, "note":"caf\u00e9 ü","long":"__LONG__"}}"#
        .replace("__LONG__", &"x".repeat(1200));
    let (status, answer) = relay.post_raw(&body, "application/json").await;
    assert_eq!(status, 202, "{answer}");

    let got = smtp.wait_message(1).await;
    assert_eq!(got.mail_from, "relay@example.net");
    assert_eq!(got.rcpt_tos, ["billing@example.com", "ops@example.org"]);
    let m = parse_message(&got.raw);
    let h = |name: &str| m.header(name);
    assert_eq!(h("from"), "Hookrelay <relay@example.net>");
    assert_eq!(
        h("to"),
        "billing@example.com, \"Ops Team\" <ops@example.org>"
    );
    assert_eq!(h("subject"), "Event invoice.paid (evt-1)");
    assert_eq!(h("x-hookrelay-event-id"), "evt-1");
    assert_eq!(h("x-hookrelay-event-type"), "invoice.paid");
    assert_eq!(h("x-hookrelay-attempt"), "1");
    assert!(h("message-id").starts_with('<'), "{m:?}");
    assert!(!h("date").is_empty(), "{m:?}");
    assert_eq!(m.content_type, "application/json");
    // The data exactly as received: its bytes, long line and escapes included.
    let data = m.body;
    let expected = format!(
        r#"{{"amount": 12.50, "note":"caf\u00e9 ü","long":"{}"}}"#,
        "x".repeat(1200)
    );
    assert_eq!(String::from_utf8(data).unwrap(), expected);
    relay.wait_outcome("mail", "delivered", 1.0).await;
    assert_eq!(relay.attempts("mail", "success").await, Some(1.0));
    relay.stop().await;
}

/// What the docs promise (docs/delivery.md, "E-mail delivery"): every body in base64,
/// decoding to the data byte for byte, whatever the data holds.
#[tokio::test]
async fn every_body_is_base64_and_decodes_to_the_data_exactly() {
    let smtp = SmtpServer::start(DataReply::ACCEPT, None);
    let relay = TestRelay::start(&email_sub("mail", &smtp.smtp(), "")).await;
    let long = format!(r#"{{"note":"{}"}}"#, "x".repeat(100));
    // Short ASCII, a long line, UTF-8, and a pretty-printed event with bare line feeds.
    let cases = [
        r#"{"invoice":"in_42","amount":1200}"#.to_string(),
        long,
        r#"{"note":"café"}"#.to_string(),
        "{\n  \"invoice\": \"in_42\",\n  \"amount\": 1200\n}".to_string(),
    ];
    for (n, data) in cases.iter().enumerate() {
        let body = format!(r#"{{"type":"invoice.paid","id":"evt-{n}","data":{data}}}"#);
        let (status, answer) = relay.post_raw(&body, "application/json").await;
        assert_eq!(status, 202, "{answer}");
        let m = parse_message(&smtp.wait_message(n + 1).await.raw);
        assert_eq!(m.header("content-transfer-encoding"), "base64", "{data}");
        assert_eq!(String::from_utf8(m.body).unwrap(), *data);
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_451_is_retried_and_the_second_attempt_delivered() {
    let smtp = SmtpServer::start(DataReply::FailFirst(1), None);
    let relay = TestRelay::start(&email_sub("flaky", &smtp.smtp(), "")).await;
    relay
        .post(&json!({"type": "invoice.sent", "id": "evt-2", "data": {"n": 1}}))
        .await;
    let got = smtp.wait_message(1).await;
    let m = parse_message(&got.raw);
    assert_eq!(m.header("x-hookrelay-attempt"), "2");
    assert_eq!(m.header("x-hookrelay-event-id"), "evt-2");
    relay.wait_outcome("flaky", "delivered", 1.0).await;
    assert_eq!(relay.attempts("flaky", "smtp_error").await, Some(1.0));
    assert_eq!(relay.attempts("flaky", "success").await, Some(1.0));
    assert_eq!(smtp.data_commands(), 2);
    relay.stop().await;
}

#[tokio::test]
async fn a_550_fails_at_once_as_a_dead_letter() {
    let smtp = SmtpServer::start(DataReply::Reject, None);
    // Retries are left, but a permanent refusal does not use them.
    let relay = TestRelay::start(&email_sub("refused", &smtp.smtp(), "    retries: 3\n")).await;
    relay
        .post(&json!({"type": "invoice.void", "id": "evt-3", "data": {}}))
        .await;
    relay.wait_outcome("refused", "failed", 1.0).await;
    assert_eq!(relay.attempts("refused", "smtp_error").await, Some(1.0));
    assert_eq!(smtp.data_commands(), 1);
    let (_, dead) = relay
        .api(Method::GET, "/v1/deliveries?subscription=refused", None)
        .await;
    let d = &dead["deliveries"][0];
    assert_eq!(d["attempts"], 1, "{dead}");
    let error = d["last_error"].as_str().unwrap();
    assert!(error.starts_with("SMTP 550"), "{error}");
    relay.stop().await;
}

#[tokio::test]
async fn smtp_auth_with_username_and_password() {
    let smtp = SmtpServer::start(DataReply::ACCEPT, Some(("relay", "pw-s3cret")));
    let relay = TestRelay::start(&email_sub(
        "authed",
        &format!(
            "{{host: 127.0.0.1, port: {}, tls: none, username: relay, password: 'pw-s3cret'}}",
            smtp.port
        ),
        "",
    ))
    .await;
    relay
        .post(&json!({"type": "invoice.paid", "id": "evt-4", "data": {}}))
        .await;
    // The server takes no mail without AUTH.
    let got = smtp.wait_message(1).await;
    assert_eq!(got.login.as_deref(), Some("relay"));
    relay.wait_outcome("authed", "delivered", 1.0).await;
    relay.stop().await;
}

#[tokio::test]
async fn api_email_subscriptions_pass_the_destination_guard_and_hide_the_password() {
    let smtp = SmtpServer::start(DataReply::ACCEPT, Some(("relay", "pw-s3cret")));
    let relay =
        TestRelay::start("api: {allowed_destinations: ['10.0.0.0/8', '127.0.0.1/32']}").await;
    let doc = |host: &str| {
        json!({"name": "api-mail", "mode": "email", "events": ["*"], "retries": 0, "metrics": true,
               "email": {"to": ["a@example.com"], "from": "r@example.com",
                         "smtp": {"host": host, "port": smtp.port, "tls": "none",
                                  "username": "relay", "password": "pw-s3cret"}}})
    };
    for host in ["169.254.169.254", "192.168.1.1"] {
        let (status, answer) = relay
            .api(Method::POST, "/v1/subscriptions", Some(doc(host)))
            .await;
        assert_eq!(status, 422, "{host}: {answer}");
        assert_eq!(
            answer["error"]["fields"][0]["field"], "email.smtp.host",
            "{answer}"
        );
    }
    let (status, created) = relay
        .api(Method::POST, "/v1/subscriptions", Some(doc("127.0.0.1")))
        .await;
    assert_eq!(status, 201, "{created}");
    assert!(!created.to_string().contains("pw-s3cret"), "{created}");
    assert_eq!(created["email"]["smtp"]["username"], "relay");
    let (_, list) = relay.api(Method::GET, "/v1/subscriptions", None).await;
    assert!(!list.to_string().contains("pw-s3cret"), "{list}");
    // Sent back as shown (no password), the stored password is kept.
    let id = created["id"].as_str().unwrap();
    let (status, replaced) = relay
        .api(
            Method::PUT,
            &format!("/v1/subscriptions/{id}"),
            Some(created.clone()),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    relay
        .post(&json!({"type": "t", "id": "evt-5", "data": {}}))
        .await;
    // The server requires AUTH: the mail arriving proves the kept password was used.
    let got = smtp.wait_message(1).await;
    assert_eq!(got.login.as_deref(), Some("relay"));
    relay.wait_outcome("api-mail", "delivered", 1.0).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_name_resolving_outside_the_allow_list_is_refused_at_connect() {
    let smtp = SmtpServer::start(DataReply::ACCEPT, None);
    let relay = TestRelay::start("api: {allowed_destinations: ['10.0.0.0/8']}").await;
    // Accepted when registered (the name could resolve into 10/8), refused once resolved.
    let (status, created) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({
            "name": "sneaky", "mode": "email", "events": ["*"], "retries": 0, "metrics": true,
            "email": {"to": ["a@example.com"], "from": "r@example.com",
                      "smtp": {"host": "localhost", "port": smtp.port, "tls": "none"}}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    relay.post(&json!({"type": "t", "data": {}})).await;
    relay.wait_outcome("sneaky", "failed", 1.0).await;
    assert_eq!(relay.attempts("sneaky", "connect_error").await, Some(1.0));
    assert_eq!(smtp.data_commands(), 0);
    let (_, dead) = relay
        .api(Method::GET, "/v1/deliveries?subscription=sneaky", None)
        .await;
    let error = dead["deliveries"][0]["last_error"].as_str().unwrap();
    assert!(error.contains("destination refused"), "{error}");
    relay.stop().await;
}

#[tokio::test]
async fn a_raw_xml_event_is_mailed_as_its_xml() {
    let smtp = SmtpServer::start(DataReply::ACCEPT, None);
    let relay = TestRelay::start(&email_sub("mail", &smtp.smtp(), "")).await;
    let xml =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><notify><domain>příklad.cz</domain></notify>";
    let r = relay
        .http
        .post(format!("http://{}/v1/events", relay.addrs.app))
        .header("content-type", "application/xml")
        .header("hookrelay-event-type", "invoice.xml")
        .header("hookrelay-event-id", "sv-42")
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let got = smtp.wait_message(1).await;
    let m = parse_message(&got.raw);
    assert_eq!(m.content_type, "application/xml");
    assert_eq!(String::from_utf8(m.body).unwrap(), xml);
    relay.stop().await;
}
