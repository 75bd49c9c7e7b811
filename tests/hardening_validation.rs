//! Issue 13, items 5 and 7: nesting depth, tokens, attribute values and duplicate envelope
//! members are refused at the edge with a JSON error naming the field.

mod common;

use common::{Receiver, TestRelay};
use hookrelay::Config;
use reqwest::Method;
use serde_json::{Value, json};

/// A JSON array nested `depth` levels deep (`0` is a scalar).
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// An envelope whose `data` is an object (one level) holding `status` and `deep`, so the
/// data is `depth` levels deep.
fn deep_envelope(depth: usize) -> String {
    format!(
        r#"{{"type":"t","data":{{"status":"ok","deep":{}}}}}"#,
        nested(depth - 1)
    )
}

/// A response's JSON body.
async fn json_of(resp: reqwest::Response) -> Value {
    serde_json::from_str(&resp.text().await.unwrap()).unwrap()
}

/// The one `fields` entry of a JSON error: (field, reason).
fn field_of(body: &Value) -> (&str, &str) {
    let fields = body["error"]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no fields: {body}"));
    assert_eq!(fields.len(), 1, "{body}");
    (
        fields[0]["field"].as_str().unwrap(),
        fields[0]["reason"].as_str().unwrap(),
    )
}

async fn filtered(limits: &str) -> (TestRelay, Receiver) {
    let rx = Receiver::ok().await;
    let relay = TestRelay::start(&format!(
        "{limits}subscriptions:\n  - {{name: deep, url: '{}', events: ['*'], filter: {{field: status, in: [ok]}}}}\n",
        rx.url("/")
    ))
    .await;
    (relay, rx)
}

#[tokio::test]
async fn data_below_the_default_depth_limit_is_matched_and_deeper_data_is_refused() {
    let (r, _rx) = filtered("").await;
    // 63 levels (the default limit is 64): the filter sees the data.
    let (status, body) = r.post_raw(&deep_envelope(63), "application/json").await;
    assert_eq!((status, &body["subscriptions"]), (202, &json!(["deep"])));
    let (status, body) = r.post_raw(&deep_envelope(64), "application/json").await;
    assert_eq!((status, &body["subscriptions"]), (202, &json!(["deep"])));

    // 65 levels: refused, naming the member and the setting, counted as invalid.
    let (status, body) = r.post_raw(&deep_envelope(65), "application/json").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_event");
    let (field, reason) = field_of(&body);
    assert_eq!(field, "data");
    assert!(reason.contains("limits.max_depth (64)"), "{reason}");
    assert_eq!(
        r.metric("hookrelay_events_rejected_total", &[("reason", "invalid")])
            .await,
        Some(1.0)
    );

    // Where the parser's own limit used to hide the data from filters (128 levels), and a
    // hostile depth that a recursive check would overflow the stack on.
    for depth in [128, 200_000] {
        let (status, body) = r.post_raw(&deep_envelope(depth), "application/json").await;
        assert_eq!(status, 422, "{depth}: {body}");
        assert_eq!(field_of(&body).0, "data");
    }
    r.stop().await;
}

#[tokio::test]
async fn batches_and_raw_json_events_are_held_to_the_depth_limit() {
    let (r, _rx) = filtered("limits: {max_depth: 4}\n").await;
    let batch = format!("[{},{}]", deep_envelope(4), deep_envelope(5));
    let resp = r
        .http
        .post(format!("http://{}/v1/events/batch", r.addrs.app))
        .header("content-type", "application/json")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = json_of(resp).await;
    assert_eq!(field_of(&body).0, "[1].data");

    // A raw event declared JSON: the whole body is the data that filters read.
    let raw = |body: String, content_type: &'static str| {
        r.http
            .post(format!("http://{}/v1/events", r.addrs.app))
            .header("hookrelay-event-type", "t")
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let ok = format!(r#"{{"status":"ok","deep":{}}}"#, nested(3));
    let resp = raw(ok, "application/json").await.unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = json_of(resp).await;
    assert_eq!(body["subscriptions"], json!(["deep"]));
    let too_deep = format!(r#"{{"status":"ok","deep":{}}}"#, nested(4));
    let resp = raw(too_deep.clone(), "application/json").await.unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = json_of(resp).await;
    let (field, reason) = field_of(&body);
    assert_eq!(field, "body");
    assert!(reason.contains("limits.max_depth (4)"), "{reason}");
    // Not declared JSON: opaque bytes, which no filter reads.
    let resp = raw(too_deep, "text/plain").await.unwrap();
    assert_eq!(resp.status(), 202);
    r.stop().await;
}

#[test]
fn max_depth_is_bounded() {
    for good in ["1", "100"] {
        let yaml = format!("limits: {{max_depth: {good}}}\nsubscriptions: []\n");
        Config::from_yaml(&yaml, "t.yaml", &|_| None).unwrap();
    }
    for bad in ["0", "101", "deep"] {
        let err = Config::from_yaml(
            &format!("limits: {{max_depth: {bad}}}\nsubscriptions: []\n"),
            "t.yaml",
            &|_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("limits.max_depth"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn duplicate_envelope_members_are_refused_naming_the_member() {
    let r = TestRelay::start("subscriptions: []\n").await;
    let cases = [
        (r#"{"type":"a","type":"b","data":{}}"#, "type"),
        (r#"{"type":"a","id":"x","id":"y","data":{}}"#, "id"),
        (r#"{"type":"a","data":{"n":1},"data":{"n":2}}"#, "data"),
        // The same name once escaped is the same member.
        (r#"{"type":"a","typ\u0065":"b","data":{}}"#, "type"),
    ];
    for (envelope, member) in cases {
        let (status, body) = r.post_raw(envelope, "application/json").await;
        assert_eq!(status, 422, "{envelope}: {body}");
        let (field, reason) = field_of(&body);
        assert_eq!(field, member, "{envelope}");
        assert!(reason.contains("more than once"), "{reason}");
    }
    let resp = r
        .http
        .post(format!("http://{}/v1/events/batch", r.addrs.app))
        .header("content-type", "application/json")
        .body(format!(
            r#"[{{"type":"a","data":1}},{}]"#,
            r#"{"type":"a","data":1,"data":2}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(field_of(&json_of(resp).await).0, "[1].data");
    r.stop().await;
}

#[tokio::test]
async fn control_characters_in_attribute_values_are_refused() {
    let r = TestRelay::start("subscriptions: []\n").await;
    // (Tabs at either end are whitespace around the value, which the HTTP parser drops.)
    for value in ["a\tb", "x\t\ty"] {
        let resp = r
            .http
            .post(format!("http://{}/v1/events", r.addrs.app))
            .header("hookrelay-event-type", "t")
            .header("hookrelay-attr-zone", value)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 422, "{value:?}");
        let body: Value = json_of(resp).await;
        let (field, reason) = field_of(&body);
        assert_eq!(field, "headers.hookrelay-attr-zone");
        assert!(reason.contains("control"), "{reason}");
    }
    r.stop().await;
}

/// The config problems of `yaml`, one per line.
fn config_errors(yaml: &str) -> String {
    match Config::from_yaml(yaml, "t.yaml", &|_| None) {
        Ok(_) => panic!("accepted: {yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tokens_must_be_visible_ascii_without_spaces() {
    for token in ["'a b'", "'t\u{f6}ken'", "\"tab\\there\"", "\"bell\\a\""] {
        for (yaml, path) in [
            (format!("ingest: {{token: {token}}}\n"), "ingest.token"),
            (format!("api: {{token: {token}}}\n"), "api.token"),
            (
                format!(
                    "subscriptions:\n  - {{name: s, url: 'http://127.0.0.1:9/', events: [x], auth: {{bearer: {token}}}}}\n"
                ),
                "subscriptions[0].auth.bearer",
            ),
            (
                format!(
                    "subscriptions:\n  - {{name: s, mode: pull, events: [x], pull: {{token: {token}}}}}\n"
                ),
                "subscriptions[0].pull.token",
            ),
        ] {
            let errors = config_errors(&yaml);
            assert!(
                errors.contains(&format!("{path}: must be visible ASCII")),
                "{yaml}: {errors}"
            );
        }
    }
}

#[tokio::test]
async fn the_api_refuses_tokens_with_spaces() {
    let r = TestRelay::start("subscriptions: []\n").await;
    let (status, body) = r
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(
                json!({"name": "a", "url": "http://127.0.0.1:9/", "events": ["x"],
                        "auth": {"bearer": "two words"}}),
            ),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("auth.bearer"), "{body}");
    let (status, body) = r
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": "p", "mode": "pull", "events": ["x"],
                        "pull": {"token": "t\u{e9}"}})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("pull.token"), "{body}");
    r.stop().await;
}

/// Sends raw bytes to the app listener; returns what came back before it closed.
async fn exchange(relay: &TestRelay, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(relay.addrs.app)
        .await
        .unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(common::DEADLINE, socket.read_to_end(&mut answer))
        .await
        .expect("the relay closes the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The known limit documented in docs/api.md (Errors): what hyper refuses before the relay's
/// code runs leaves with the status and an empty body; what gets as far as the relay leaves
/// in the JSON shape. Should hyper gain a hook for its answers, this test says so.
#[tokio::test]
async fn protocol_errors_the_relay_sees_are_json_and_the_parsers_own_are_bare() {
    let r = TestRelay::start("subscriptions: []\n").await;
    let bare = [
        (b"GARBAGE\r\n\r\n".to_vec(), "400"),
        (
            b"POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}".to_vec(),
            "400",
        ),
        (
            [
                b"GET /v1/events/x HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec(),
                vec![b'a'; 500_000],
                b"\r\n\r\n".to_vec(),
            ]
            .concat(),
            "431",
        ),
    ];
    for (request, status) in bare {
        let answer = exchange(&r, &request).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
        assert!(answer.contains("content-length: 0\r\n"), "{answer}");
    }
    let answer = exchange(
        &r,
        b"POST /v1/events HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.contains(r#"{"error":{"code":"unreadable_body""#),
        "{answer}"
    );
    r.stop().await;
}
