//! Payload formats: raw events (any content type, `hookrelay-*` headers) and the delivery
//! encodings (raw, envelope, form), through a real relay and real receivers.

mod common;

use common::{Answer, Receiver, TestRelay, poll};
use reqwest::Method;
use serde_json::{Value, json};

/// UTF-8 XML with non-ASCII text, an XML declaration and characters a form must escape.
const XML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<notification type=\"signed\" a=\"1&amp;2\">\n  <subject>Договір №5 — ü + é = ok?</subject>\n</notification>\n";

fn sub(name: &str, url: &str, extra: &str) -> String {
    format!("  - {{name: {name}, url: '{url}', events: ['*'], retries: 0{extra}}}\n")
}

fn config(subs: &[String]) -> String {
    format!("subscriptions:\n{}", subs.concat())
}

/// Posts a raw event: `headers` are (name, value) pairs, content type included if wanted.
async fn post_raw_event(
    relay: &TestRelay,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = relay
        .http
        .post(format!("http://{}/v1/events", relay.addrs.app))
        .body(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let r = req.send().await.expect("post raw event");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn content_type(got: &common::Received) -> &str {
    got.headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn raw_xml_in_is_byte_identical_xml_out() {
    let rx = Receiver::ok().await;
    let relay = TestRelay::start(&config(&[sub("xml", &rx.url("/in"), "")])).await;
    let (status, answer) = post_raw_event(
        &relay,
        XML,
        &[
            ("hookrelay-event-type", "doc.signed"),
            ("hookrelay-event-id", "doc-1"),
            ("content-type", "application/xml; charset=utf-8"),
        ],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer, json!({"id": "doc-1", "subscriptions": ["xml"]}));
    let got = rx.wait_for(1).await;
    assert_eq!(&got[0].body[..], XML.as_bytes());
    assert_eq!(content_type(&got[0]), "application/xml; charset=utf-8");
    assert_eq!(got[0].headers["hookrelay-event-type"], "doc.signed");
    assert_eq!(got[0].headers["webhook-id"], "doc-1");

    // Without a content type the body is stored and sent as application/octet-stream.
    let (status, _) = post_raw_event(
        &relay,
        vec![0u8, 159, 146, 150],
        &[("hookrelay-event-type", "blob.put")],
    )
    .await;
    assert_eq!(status, 202);
    let got = rx.wait_for(2).await;
    assert_eq!(&got[1].body[..], &[0u8, 159, 146, 150]);
    assert_eq!(content_type(&got[1]), "application/octet-stream");
    relay.stop().await;
}

#[tokio::test]
async fn attributes_select_subscriptions_through_filters() {
    let eu = Receiver::ok().await;
    let urgent = Receiver::ok().await;
    let relay = TestRelay::start(&config(&[
        sub("eu", &eu.url("/"), ", filter: {attr: zone, equals: eu}"),
        sub(
            "urgent",
            &urgent.url("/"),
            ", filter: {all: [{attr: priority, from: 5}, {attr: channel, contains: REG, ignore_case: true}]}",
        ),
    ]))
    .await;
    let (status, answer) = post_raw_event(
        &relay,
        XML,
        &[
            ("hookrelay-event-type", "doc.signed"),
            ("content-type", "application/xml"),
            ("hookrelay-attr-zone", "eu"),
            ("hookrelay-attr-priority", "7"),
            ("hookrelay-attr-channel", "registrar"),
        ],
    )
    .await;
    assert_eq!(
        (status, &answer["subscriptions"]),
        (202, &json!(["eu", "urgent"]))
    );
    let (_, answer) = post_raw_event(
        &relay,
        XML,
        &[
            ("hookrelay-event-type", "doc.signed"),
            ("hookrelay-attr-zone", "us"),
            ("hookrelay-attr-priority", "9"),
        ],
    )
    .await;
    assert_eq!(answer["subscriptions"], json!([]));
    // An envelope event has no attributes.
    let (_, answer) = relay
        .post(&json!({"type": "doc.signed", "data": {"zone": "eu"}}))
        .await;
    assert_eq!(answer["subscriptions"], json!([]));
    eu.wait_for(1).await;
    urgent.wait_for(1).await;

    // The event's view shows its content type and attributes.
    let id = {
        let (_, a) = post_raw_event(
            &relay,
            "x",
            &[
                ("hookrelay-event-type", "t"),
                ("hookrelay-event-id", "seen"),
                ("content-type", "text/plain"),
                ("hookrelay-attr-zone", "eu"),
            ],
        )
        .await;
        a["id"].as_str().unwrap().to_string()
    };
    let (_, view) = relay.event_status(&id).await;
    assert_eq!(view["content_type"], "text/plain");
    assert_eq!(view["attributes"], json!({"zone": "eu"}));
    let (_, view) = relay
        .event_status(
            relay
                .post(&json!({"type": "t", "id": "env", "data": 1}))
                .await
                .1["id"]
                .as_str()
                .unwrap(),
        )
        .await;
    assert!(view.get("content_type").is_none() && view.get("attributes").is_none());
    relay.stop().await;
}

#[tokio::test]
async fn raw_header_refusals_name_the_header() {
    let relay = TestRelay::start("limits: {max_body: 1KiB}\nsubscriptions: []\n").await;
    let long = "v".repeat(600);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("hookrelay-event-type", "a b")],
            "headers.hookrelay-event-type",
        ),
        (
            vec![
                ("hookrelay-event-type", "t"),
                ("hookrelay-event-id", "no spaces"),
            ],
            "headers.hookrelay-event-id",
        ),
        (
            vec![("hookrelay-event-type", "t"), ("hookrelay-attr-a.b", "1")],
            "headers.hookrelay-attr-a.b",
        ),
        (
            vec![
                ("hookrelay-event-type", "t"),
                ("hookrelay-attr-x", long.as_str()),
            ],
            "headers.hookrelay-attr-x",
        ),
    ];
    for (headers, field) in cases {
        let (status, body) = post_raw_event(&relay, "<a/>", &headers).await;
        assert_eq!(status, 422, "{headers:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_event");
        assert_eq!(body["error"]["fields"][0]["field"], field, "{body}");
    }
    // Body limits are those of envelopes.
    let (status, _) = post_raw_event(
        &relay,
        "x".repeat(2000),
        &[
            ("hookrelay-event-type", "t"),
            ("content-type", "text/plain"),
        ],
    )
    .await;
    assert_eq!(status, 413);
    // Raw event headers without hookrelay-event-type are refused, not ignored.
    let r = relay
        .http
        .post(format!("http://{}/v1/events", relay.addrs.app))
        .header("content-type", "application/json")
        .header("hookrelay-attr-zone", "eu")
        .body(json!({"type": "t", "data": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(
        body["error"]["fields"][0]["field"],
        "headers.hookrelay-attr-zone"
    );
    // A batch takes envelopes only.
    let r = relay
        .http
        .post(format!("http://{}/v1/events/batch", relay.addrs.app))
        .header("content-type", "application/json")
        .header("hookrelay-event-type", "t")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    relay.stop().await;
}

#[tokio::test]
async fn without_the_type_header_a_non_json_body_is_415() {
    let relay = TestRelay::start("subscriptions: []\n").await;
    let (status, body) = relay.post_raw(XML, "application/xml").await;
    assert_eq!(status, 415);
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hookrelay-event-type"),
        "{body}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_json_body_with_the_type_header_is_raw() {
    let rx = Receiver::ok().await;
    let relay = TestRelay::start(&config(&[
        sub("plain", &rx.url("/plain"), ""),
        sub("env", &rx.url("/env"), ", encoding: envelope"),
        // A raw JSON body is data that `field` can look into.
        sub(
            "total",
            &rx.url("/total"),
            ", filter: {field: total, from: 10}",
        ),
    ]))
    .await;
    // Looks like an envelope, but the header makes it a raw event: not parsed as one.
    let body = r#"{"type": "not.this", "data": {"x": 1}, "total": 12}"#;
    let (status, answer) = post_raw_event(
        &relay,
        body,
        &[
            ("hookrelay-event-type", "order.placed"),
            ("hookrelay-event-id", "o-1"),
            ("content-type", "application/json"),
        ],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["subscriptions"], json!(["plain", "env", "total"]));
    let got = rx.wait_for(3).await;
    let by_path = |p: &str| got.iter().find(|r| r.path == p).unwrap().clone();
    let plain = by_path("/plain");
    assert_eq!(&plain.body[..], body.as_bytes());
    assert_eq!(plain.headers["hookrelay-event-type"], "order.placed");
    assert_eq!(content_type(&plain), "application/json");
    // In an envelope, a raw body is a string, whatever its type.
    let env: Value = serde_json::from_slice(&by_path("/env").body).unwrap();
    assert_eq!(env["type"], "order.placed");
    assert_eq!(env["data"], body);
    assert_eq!(env["content_type"], "application/json");
    relay.stop().await;
}

#[tokio::test]
async fn envelope_encoding_of_raw_and_envelope_events() {
    let rx = Receiver::ok().await;
    let relay =
        TestRelay::start(&config(&[sub("env", &rx.url("/"), ", encoding: envelope")])).await;
    post_raw_event(
        &relay,
        XML,
        &[
            ("hookrelay-event-type", "doc.signed"),
            ("hookrelay-event-id", "x-1"),
            ("content-type", "application/xml"),
            ("hookrelay-attr-zone", "eu"),
        ],
    )
    .await;
    let got = rx.wait_for(1).await;
    assert_eq!(content_type(&got[0]), "application/json");
    let env: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(env["id"], "x-1");
    assert_eq!(env["type"], "doc.signed");
    assert_eq!(env["data"], XML);
    assert_eq!(env["content_type"], "application/xml");
    assert_eq!(env["attributes"], json!({"zone": "eu"}));
    let received_at = env["received_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(received_at).is_ok(),
        "{received_at}"
    );

    // A body that is not UTF-8 comes as data_base64.
    let bytes = vec![0xffu8, 0xfe, 0x00, 0x41];
    post_raw_event(
        &relay,
        bytes.clone(),
        &[
            ("hookrelay-event-type", "blob.put"),
            ("content-type", "image/x-test"),
        ],
    )
    .await;
    let got = rx.wait_for(2).await;
    let env: Value = serde_json::from_slice(&got[1].body).unwrap();
    assert!(env.get("data").is_none(), "{env}");
    assert_eq!(env["data_base64"], "//4AQQ==");
    assert_eq!(env["content_type"], "image/x-test");

    // An envelope event's data is embedded as JSON, byte for byte.
    relay
        .post_raw(
            r#"{"type": "invoice.paid", "id": "inv-1", "data": {"amount": 1.50, "n": "é"}}"#,
            "application/json",
        )
        .await;
    let got = rx.wait_for(3).await;
    let text = std::str::from_utf8(&got[2].body).unwrap();
    assert!(
        text.ends_with(r#","data":{"amount": 1.50, "n": "é"}}"#),
        "{text}"
    );
    let env: Value = serde_json::from_str(text).unwrap();
    assert_eq!(env["id"], "inv-1");
    assert_eq!(env["type"], "invoice.paid");
    assert!(env.get("content_type").is_none());
    relay.stop().await;
}

#[tokio::test]
async fn form_encoding_decodes_back_to_the_original_body() {
    let rx = Receiver::ok().await;
    let relay = TestRelay::start(&config(&[sub(
        "registrar",
        &rx.url("/notify"),
        ", encoding: {form: {field: request}}",
    )]))
    .await;
    let (status, _) = post_raw_event(
        &relay,
        XML,
        &[
            ("hookrelay-event-type", "doc.signed"),
            ("content-type", "application/xml; charset=utf-8"),
        ],
    )
    .await;
    assert_eq!(status, 202);
    let got = rx.wait_for(1).await;
    assert_eq!(content_type(&got[0]), "application/x-www-form-urlencoded");
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&got[0].body)
        .into_owned()
        .collect();
    assert_eq!(pairs, [("request".to_string(), XML.to_string())]);
    relay.stop().await;
}

#[tokio::test]
async fn api_subscriptions_take_the_encoding_with_the_same_validation() {
    let rx = Receiver::ok().await;
    let relay =
        TestRelay::start("api: {allowed_destinations: ['127.0.0.0/8']}\nsubscriptions: []\n").await;
    let (status, body) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": "bad", "url": rx.url("/"), "events": ["*"],
                        "encoding": {"form": {}}})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("encoding.form.field"), "{body}");
    let (status, body) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": "bad", "url": rx.url("/"), "events": ["*"], "encoding": "xml"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": "form", "url": rx.url("/"), "events": ["*"],
                        "encoding": {"form": {"field": "request"}}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["encoding"], json!({"form": {"field": "request"}}));
    post_raw_event(&relay, XML, &[("hookrelay-event-type", "doc.signed")]).await;
    let got = rx.wait_for(1).await;
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&got[0].body)
        .into_owned()
        .collect();
    assert_eq!(pairs, [("request".to_string(), XML.to_string())]);
    relay.stop().await;
}

#[tokio::test]
async fn raw_duplicates_by_event_id() {
    let rx = Receiver::ok().await;
    let relay = TestRelay::start(&config(&[sub("a", &rx.url("/"), "")])).await;
    let headers = [
        ("hookrelay-event-type", "doc.signed"),
        ("hookrelay-event-id", "same"),
    ];
    let (status, first) = post_raw_event(&relay, "<a>1</a>", &headers).await;
    assert_eq!((status, &first["subscriptions"]), (202, &json!(["a"])));
    let (status, again) = post_raw_event(&relay, "<a>2</a>", &headers).await;
    assert_eq!(status, 200);
    assert_eq!(
        again,
        json!({"id": "same", "subscriptions": ["a"], "duplicate": true})
    );
    // The same id as an envelope is the same event too.
    let (status, _) = relay
        .post(&json!({"type": "t", "id": "same", "data": {}}))
        .await;
    assert_eq!(status, 200);
    poll(|| async { relay.event_status("same").await.1["deliveries"][0]["state"] == "delivered" })
        .await;
    // The event has one delivery, made once, with the first body.
    let (_, view) = relay.event_status("same").await;
    assert_eq!(view["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(rx.count(), 1);
    assert_eq!(&rx.received()[0].body[..], b"<a>1</a>");
    relay.stop().await;
}

#[tokio::test]
async fn the_pull_queue_shows_raw_xml_as_its_string() {
    let relay = TestRelay::start(
        "subscriptions:\n  - {name: q, mode: pull, events: ['*'], pull: {ack: auto}}\n",
    )
    .await;
    post_raw_event(
        &relay,
        XML,
        &[
            ("hookrelay-event-type", "doc.signed"),
            ("content-type", "application/xml"),
            ("hookrelay-attr-zone", "eu"),
        ],
    )
    .await;
    // Text that happens to be valid JSON stays a string too when it is not declared JSON.
    post_raw_event(
        &relay,
        "42",
        &[
            ("hookrelay-event-type", "n"),
            ("content-type", "text/plain"),
        ],
    )
    .await;
    let (status, list) = relay
        .api(
            Method::GET,
            "/v1/subscriptions/q/notifications?limit=10",
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    let n = &list["notifications"];
    assert_eq!(n[0]["data"], XML);
    assert_eq!(n[0]["content_type"], "application/xml");
    assert_eq!(n[0]["attributes"], json!({"zone": "eu"}));
    assert_eq!(n[1]["data"], "42");
    assert_eq!(n[1]["content_type"], "text/plain");
    relay.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_content_type_and_attributes() {
    let rx = Receiver::ok().await;
    // First run: the receiver refuses, so the event waits for a retry.
    let refusing = Receiver::scripted(|_| Answer::status(503)).await;
    let yaml = |url: &str| {
        format!(
            "subscriptions:\n  - {{name: later, url: '{url}', events: ['*'], retries: 5, backoff: {{schedule: [300ms]}}, filter: {{attr: zone, equals: eu}}}}\n"
        )
    };
    let relay = TestRelay::start(&yaml(&refusing.url("/"))).await;
    let (status, answer) = post_raw_event(
        &relay,
        XML,
        &[
            ("hookrelay-event-type", "doc.signed"),
            ("hookrelay-event-id", "kept"),
            ("content-type", "application/xml"),
            ("hookrelay-attr-zone", "eu"),
        ],
    )
    .await;
    assert_eq!((status, &answer["subscriptions"]), (202, &json!(["later"])));
    poll(|| async {
        relay.event_status("kept").await.1["deliveries"][0]["attempts"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    let dir = relay.dir.clone();
    relay.stop().await;

    let relay = TestRelay::start_in(&yaml(&rx.url("/")), dir).await;
    let got = rx.wait_for(1).await;
    assert_eq!(&got[0].body[..], XML.as_bytes());
    assert_eq!(content_type(&got[0]), "application/xml");
    let (_, view) = relay.event_status("kept").await;
    assert_eq!(view["content_type"], "application/xml");
    assert_eq!(view["attributes"], json!({"zone": "eu"}));
    relay.stop().await;
}
