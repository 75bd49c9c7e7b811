//! The subscriptions API on `listen.api`: the whole cycle, validation, persistence across
//! restarts, deletion, secrets, the token and the destination guard.

mod common;

use std::sync::Arc;

use common::{Answer, Backend, Binary, Receiver, TestDb, TestRelay, api_request, poll};
use reqwest::Method;
use serde_json::{Value, json};

const CONFIG_SUB: &str = "subscriptions:
  - {name: from-yaml, url: 'http://127.0.0.1:9/', events: ['order.*']}
";

fn sub_body(url: &str, events: &[&str]) -> Value {
    json!({ "url": url, "events": events, "backoff": {"schedule": ["50ms"]}, "retries": 1 })
}

/// Field names of a 422 answer.
fn fields(answer: &Value) -> Vec<String> {
    answer["error"]["fields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| f["field"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn create_list_get_update_delete(backend: Backend) {
    let db = TestDb::new(backend);
    let relay = TestRelay::on(&db, CONFIG_SUB).await;
    let (status, list) = relay.api(Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["source"], "config");
    assert_eq!(list[0]["id"], "from-yaml");

    // Created without a name: the id is a lowercase UUIDv7 and the name defaults to it.
    let (status, created, headers) = relay
        .api_as(
            Method::POST,
            "/v1/subscriptions",
            Some(sub_body("http://127.0.0.1:9/a", &["invoice.paid"])),
            None,
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "7", "UUIDv7: {id}");
    assert_eq!(id, id.to_lowercase());
    assert_eq!(created["name"], id.as_str());
    assert_eq!(created["source"], "api");
    assert_eq!(created["url"], "http://127.0.0.1:9/a");
    assert_eq!(created["retries"], 1);
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        headers["location"].to_str().unwrap(),
        format!("/v1/subscriptions/{id}")
    );

    let (status, named) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": "crm", "url": "http://127.0.0.1:9/b", "events": ["invoice.*", "user.created"]})),
        )
        .await;
    assert_eq!(status, 201, "{named}");
    let crm_id = named["id"].as_str().unwrap().to_string();

    let (status, list) = relay.api(Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["from-yaml", id.as_str(), "crm"]);
    let (_, by_type) = relay
        .api(Method::GET, "/v1/subscriptions?event=user.created", None)
        .await;
    assert_eq!(by_type.as_array().unwrap().len(), 1);
    assert_eq!(by_type[0]["name"], "crm");
    let (_, by_type) = relay
        .api(Method::GET, "/v1/subscriptions?event=nothing.here", None)
        .await;
    assert_eq!(by_type, json!([]));

    // By id and by name.
    for key in [crm_id.as_str(), "crm"] {
        let (status, one) = relay
            .api(Method::GET, &format!("/v1/subscriptions/{key}"), None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(one["id"], crm_id.as_str());
    }
    let (status, missing) = relay.api(Method::GET, "/v1/subscriptions/nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "not_found");

    // PUT replaces the document; the name is kept even though the body leaves it out.
    let (status, replaced) = relay
        .api(
            Method::PUT,
            "/v1/subscriptions/crm",
            Some(json!({"url": "http://127.0.0.1:9/c", "events": ["user.*"], "max_in_flight": 2})),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["name"], "crm");
    assert_eq!(replaced["url"], "http://127.0.0.1:9/c");
    assert_eq!(replaced["max_in_flight"], 2);
    assert_eq!(replaced["created_at"], named["created_at"]);
    // PATCH merges: null removes a field, the rest stays.
    let (status, patched) = relay
        .api(
            Method::PATCH,
            &format!("/v1/subscriptions/{crm_id}"),
            Some(json!({"retries": 3, "max_in_flight": null})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["retries"], 3);
    assert_eq!(patched["url"], "http://127.0.0.1:9/c");
    assert!(patched.get("max_in_flight").is_none(), "{patched}");
    // Read-only fields cannot change.
    let (status, refused) = relay
        .api(
            Method::PATCH,
            "/v1/subscriptions/crm",
            Some(json!({"name": "other", "id": "x", "source": "config"})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(fields(&refused), ["id", "name", "source"]);
    // A document whose only fault is another name conflicts with the subscription: 409.
    let (status, refused) = relay
        .api(
            Method::PATCH,
            "/v1/subscriptions/crm",
            Some(json!({"name": "other"})),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(fields(&refused), ["name"]);
    // Keeping a secret (`{}`, as shown) that was never stored conflicts too, and changes nothing.
    let mut keeps = patched.clone();
    keeps["signing"] = json!({"secrets": [{}]});
    keeps["headers"] = json!({"x-api-key": {}});
    let (status, refused) = relay
        .api(Method::PUT, "/v1/subscriptions/crm", Some(keeps))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(
        fields(&refused),
        ["headers.x-api-key", "signing.secrets[0]"]
    );
    // Repeating them unchanged is fine (a client may PUT back what it got).
    let mut back = patched.clone();
    back["retries"] = json!(4);
    let (status, put_back) = relay
        .api(Method::PUT, "/v1/subscriptions/crm", Some(back))
        .await;
    assert_eq!(status, 200, "{put_back}");
    assert_eq!(put_back["retries"], 4);

    // The name is taken, by API and by config subscriptions alike.
    for name in ["crm", "from-yaml"] {
        let (status, taken) = relay
            .api(
                Method::POST,
                "/v1/subscriptions",
                Some(json!({"name": name, "url": "http://127.0.0.1:9/", "events": ["x"]})),
            )
            .await;
        assert_eq!(status, 409, "{name}: {taken}");
    }

    // Config subscriptions are read-only.
    for method in [Method::PUT, Method::PATCH, Method::DELETE] {
        let (status, answer) = relay
            .api(
                method.clone(),
                "/v1/subscriptions/from-yaml",
                Some(json!({"retries": 1})),
            )
            .await;
        assert_eq!(status, 409, "{method}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("YAML"),
            "{answer}"
        );
    }

    // DELETE is idempotent.
    for _ in 0..2 {
        let (status, _) = relay
            .api(Method::DELETE, "/v1/subscriptions/crm", None)
            .await;
        assert_eq!(status, 204);
    }
    let (status, _) = relay
        .api(Method::GET, &format!("/v1/subscriptions/{crm_id}"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = relay
        .api(
            Method::PUT,
            "/v1/subscriptions/crm",
            Some(sub_body("http://127.0.0.1:9/", &["x"])),
        )
        .await;
    assert_eq!(status, 404);

    // Malformed JSON, and a body that is not an object.
    let r = relay
        .http
        .post(format!("http://{}/v1/subscriptions", relay.addrs.api))
        .header("content-type", "application/json")
        .body("{\"url\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (status, _) = relay
        .api(Method::POST, "/v1/subscriptions", Some(json!([1, 2])))
        .await;
    assert_eq!(status, 422);
    relay.stop().await;
}

#[tokio::test]
async fn invalid_bodies_name_every_bad_field() {
    let relay = TestRelay::start("").await;
    let (status, answer) = relay
        .api(Method::POST, "/v1/subscriptions", Some(json!({})))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_subscription");
    assert_eq!(fields(&answer), ["url", "events"]);
    assert_eq!(answer["error"]["fields"][0]["reason"], "missing");

    let (status, answer) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({
                "url": "http://127.0.0.1:9/", "events": ["x"], "retries": 21,
                "timeout": "50ms", "success_code": 700, "colour": "red", "id": "mine"
            })),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    // Read-only fields are refused before anything else is looked at.
    assert_eq!(fields(&answer), ["id"]);

    let (status, answer) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({
                "url": "http://127.0.0.1:9/", "events": ["x"], "retries": 21,
                "timeout": "50ms", "success_code": 700, "colour": "red"
            })),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    let mut got = fields(&answer);
    got.sort();
    assert_eq!(got, ["colour", "retries", "success_code", "timeout"]);
    let reason = |field: &str| {
        answer["error"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["field"] == field)
            .unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(reason("retries").contains("0..=20"), "{answer}");
    assert!(reason("timeout").contains("100ms"), "{answer}");
    assert!(reason("success_code").contains("100..=599"), "{answer}");
    // The slowest rate has a floor: the smallest positive float once panicked (500) when
    // its period (1 / rate) did not fit a duration.
    let (status, answer) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": "http://127.0.0.1:9/", "events": ["x"],
                "rate_limit": {"per_second": 5e-324}})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(fields(&answer), ["rate_limit.per_second"]);
    // A filter flag that cannot apply is refused even when false.
    let (status, answer) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": "http://127.0.0.1:9/", "events": ["x"],
                "filter": {"field": "n", "from": 1, "ignore_case": false}})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(fields(&answer), ["filter.ignore_case"]);
    let (_, list) = relay.api(Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(list, json!([]));
    relay.stop().await;
}

async fn a_registered_subscription_receives_events_also_after_a_restart(backend: Backend) {
    let db = TestDb::new(backend);
    let rx = Receiver::ok().await;
    let relay = TestRelay::on(&db, "").await;
    // Nothing matches before it exists.
    let (_, answer) = relay
        .post(&json!({"type": "invoice.paid", "data": {"n": 0}}))
        .await;
    assert_eq!(answer["subscriptions"], json!([]));

    let (status, created) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({
                "name": "billing", "url": rx.url("/hook"), "events": ["invoice.*"],
                "filter": {"field": "n", "from": 1}, "metrics": true
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let (_, answer) = relay
        .post(&json!({"type": "invoice.paid", "data": {"n": 1}}))
        .await;
    assert_eq!(answer["subscriptions"], json!(["billing"]));
    let (_, answer) = relay
        .post(&json!({"type": "invoice.paid", "data": {"n": 0}}))
        .await;
    assert_eq!(answer["subscriptions"], json!([]), "the filter applies");
    assert_eq!(&rx.wait_for(1).await[0].body[..], br#"{"n":1}"#);
    // metrics: true gives it its own series.
    relay.wait_outcome("billing", "delivered", 1.0).await;
    relay.stop().await;

    let relay = TestRelay::on(&db, "").await;
    let (status, kept) = relay
        .api(Method::GET, "/v1/subscriptions/billing", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(kept["id"], created["id"]);
    assert_eq!(kept["created_at"], created["created_at"]);
    assert_eq!(kept["filter"], json!({"field": "n", "from": 1}));
    let (_, answer) = relay
        .post(&json!({"type": "invoice.sent", "data": {"n": 2}}))
        .await;
    assert_eq!(answer["subscriptions"], json!(["billing"]));
    assert_eq!(&rx.wait_for(2).await[1].body[..], br#"{"n":2}"#);
    relay.stop().await;
}

async fn a_deleted_subscription_gets_nothing_more_and_its_pending_deliveries_are_cancelled(
    backend: Backend,
) {
    let db = TestDb::new(backend);
    // Fails every attempt with a long backoff, so deliveries stay pending.
    let rx = Receiver::scripted(|_| Answer::status(503)).await;
    let ok = Receiver::ok().await;
    let relay = TestRelay::on(&db, "").await;
    let body = json!({
        "name": "flaky", "url": rx.url("/"), "events": ["*"],
        "backoff": {"schedule": ["1h"]}, "retries": 5
    });
    let (status, _) = relay
        .api(Method::POST, "/v1/subscriptions", Some(body))
        .await;
    assert_eq!(status, 201);
    let (status, _) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(sub_body(&ok.url("/"), &["*"])),
        )
        .await;
    assert_eq!(status, 201);
    for i in 0..3 {
        let (status, _) = relay
            .post(&json!({"id": format!("e{i}"), "type": "t", "data": {}}))
            .await;
        assert_eq!(status, 202);
    }
    rx.wait_for(3).await;
    ok.wait_for(3).await;
    // API subscriptions without metrics: true share the `_api` series.
    relay.wait_outcome("_api", "delivered", 3.0).await;
    assert!(relay.attempts("flaky", "http_error").await.is_none());
    relay
        .wait_metric("hookrelay_queue_depth", &[("subscription", "_api")], 3.0)
        .await;

    let (status, _) = relay
        .api(Method::DELETE, "/v1/subscriptions/flaky", None)
        .await;
    assert_eq!(status, 204);
    relay.wait_outcome("_api", "cancelled", 3.0).await;
    let (_, event) = relay.event_status("e0").await;
    let states: Vec<&str> = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"cancelled"), "{event}");
    relay
        .wait_metric("hookrelay_queue_depth", &[("subscription", "_api")], 0.0)
        .await;

    let (_, answer) = relay
        .post(&json!({"id": "after", "type": "t", "data": {}}))
        .await;
    assert_eq!(answer["subscriptions"].as_array().unwrap().len(), 1);
    ok.wait_for(4).await;
    assert_eq!(rx.count(), 3, "the deleted subscription received more");
    relay.stop().await;
}

async fn concurrent_creates_of_one_name_have_one_winner(backend: Backend) {
    let db = TestDb::new(backend);
    let relay = Arc::new(TestRelay::on(&db, "").await);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let relay = relay.clone();
        tasks.push(tokio::spawn(async move {
            let body =
                json!({"name": "same", "url": format!("http://127.0.0.1:9/{i}"), "events": ["x"]});
            relay
                .api(Method::POST, "/v1/subscriptions", Some(body))
                .await
                .0
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409]);
    let (_, list) = relay.api(Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    Arc::into_inner(relay).unwrap().stop().await;
}

#[tokio::test]
async fn the_api_token_is_required_except_for_the_openapi_document() {
    let relay = TestRelay::start("api: {token: api-t0ken, max_subscriptions: 1}").await;
    let call = |token: Option<&'static str>,
                method: Method,
                path: &'static str,
                body: Option<Value>| { relay.api_as(method, path, body, token) };
    for token in [None, Some("wrong")] {
        for (method, path) in [
            (Method::GET, "/v1/subscriptions"),
            (Method::POST, "/v1/subscriptions"),
            (Method::GET, "/v1/deliveries"),
            (Method::DELETE, "/v1/subscriptions/x"),
        ] {
            let (status, answer, headers) = call(token, method, path, Some(json!({}))).await;
            assert_eq!(status, 401, "{path}");
            assert_eq!(answer["error"]["code"], "unauthorized");
            assert_eq!(headers["www-authenticate"], "Bearer");
        }
    }
    let (status, _, _) = call(Some("api-t0ken"), Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 200);
    // Unknown paths too: without the token nothing tells what exists.
    let (status, _, _) = call(None, Method::GET, "/v1/nothing", None).await;
    assert_eq!(status, 401);
    let (status, _, _) = call(Some("api-t0ken"), Method::GET, "/v1/nothing", None).await;
    assert_eq!(status, 404);
    let (status, doc, _) = call(None, Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/v1/subscriptions/{id}"]["patch"].is_object());

    // api.max_subscriptions: one.
    let body = || Some(sub_body("http://127.0.0.1:9/", &["x"]));
    let (status, _, _) = call(Some("api-t0ken"), Method::POST, "/v1/subscriptions", body()).await;
    assert_eq!(status, 201);
    let (status, full, _) =
        call(Some("api-t0ken"), Method::POST, "/v1/subscriptions", body()).await;
    assert_eq!(status, 409);
    assert!(
        full["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_subscriptions")
    );
    relay.stop().await;
}

/// Every route of the three listeners: (listener, method, path).
const ROUTES: &[(&str, &str, &str)] = &[
    ("app", "POST", "/v1/events"),
    ("app", "POST", "/v1/events/batch"),
    ("app", "GET", "/v1/events/{id}"),
    ("api", "POST", "/v1/subscriptions"),
    ("api", "GET", "/v1/subscriptions"),
    ("api", "GET", "/v1/subscriptions/{id}"),
    ("api", "PUT", "/v1/subscriptions/{id}"),
    ("api", "PATCH", "/v1/subscriptions/{id}"),
    ("api", "DELETE", "/v1/subscriptions/{id}"),
    ("api", "POST", "/v1/subscriptions/{id}/pause"),
    ("api", "POST", "/v1/subscriptions/{id}/resume"),
    ("api", "GET", "/v1/subscriptions/{id}/notifications/next"),
    ("api", "GET", "/v1/subscriptions/{id}/notifications"),
    ("api", "POST", "/v1/subscriptions/{id}/notifications/ack"),
    ("api", "POST", "/v1/deliveries/release"),
    ("api", "GET", "/v1/deliveries"),
    ("api", "POST", "/v1/deliveries/{id}/retry"),
    ("api", "DELETE", "/v1/deliveries/{id}"),
    ("api", "GET", "/v1/deliveries/{id}/attempts"),
    ("api", "POST", "/v1/events/{id}/replay"),
    ("api", "POST", "/v1/subscriptions/{id}/replay"),
    ("api", "GET", "/v1/queue"),
    ("api", "GET", "/v1/openapi.json"),
    ("ops", "GET", "/healthz"),
    ("ops", "GET", "/readyz"),
    ("ops", "GET", "/metrics"),
];

#[tokio::test]
async fn the_openapi_document_describes_every_route_of_the_three_listeners() {
    let relay = TestRelay::start("").await;
    let answer = relay
        .http
        .get(format!("http://{}/v1/openapi.json", relay.addrs.api))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/json");
    let doc: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );

    // Exactly the routes above, each tagged with its listener.
    let methods = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if methods.contains(&method.as_str()) {
                let tags: Vec<&str> = op["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap())
                    .collect();
                assert_eq!(tags.len(), 1, "{method} {path}: {tags:?}");
                documented.push((tags[0].to_string(), method.to_uppercase(), path.clone()));
            }
        }
    }
    let mut expected: Vec<(String, String, String)> = ROUTES
        .iter()
        .map(|(l, m, p)| (l.to_string(), m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    expected.sort();
    assert_eq!(documented, expected);

    // And each is served on its listener: it reaches a handler, not the fallback or a 405.
    for (listener, method, path) in ROUTES {
        let addr = match *listener {
            "app" => relay.addrs.app,
            "api" => relay.addrs.api,
            _ => relay.addrs.ops,
        };
        let url = format!("http://{addr}{}", path.replace("{id}", "x"));
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let answer = relay
            .http
            .request(method.clone(), url)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let body: Value =
            serde_json::from_str(&answer.text().await.unwrap()).unwrap_or(Value::Null);
        assert_ne!(status, 405, "{method} {path} on {listener}");
        assert_ne!(
            body["error"]["message"], "no such endpoint",
            "{method} {path} on {listener}"
        );
        // The path's server is its listener's default address.
        let port = match *listener {
            "app" => "8787",
            "api" => "8788",
            _ => "9464",
        };
        let server = doc["paths"][path]["servers"][0]["url"].as_str().unwrap();
        assert!(server.ends_with(port), "{path}: {server}");
    }

    // Some details, from the handlers' annotations.
    let statuses = |method: &str, path: &str| -> Vec<String> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path}"))
            .keys()
            .cloned()
            .collect()
    };
    let events = statuses("post", "/v1/events");
    for status in ["202", "200", "400", "413", "415", "422", "503"] {
        assert!(events.contains(&status.to_string()), "{status}: {events:?}");
    }
    let create = statuses("post", "/v1/subscriptions");
    for status in ["201", "401", "409", "422"] {
        assert!(create.contains(&status.to_string()), "{status}: {create:?}");
    }
    assert!(statuses("post", "/v1/deliveries/release").contains(&"429".to_string()));
    // Errors refer to the one error shape, which has code, message and fields.
    let error = &doc["paths"]["/v1/events"]["post"]["responses"]["413"]["content"]["application/json"]
        ["schema"]["$ref"];
    assert_eq!(error, "#/components/schemas/Error");
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["Error"]["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    let detail = schemas["ErrorDetail"]["properties"].as_object().unwrap();
    let mut members: Vec<&str> = detail.keys().map(String::as_str).collect();
    members.sort();
    assert_eq!(members, ["code", "fields", "message"]);
    // Tokens: bearer schemes, applied where they are checked and not to the document itself.
    for scheme in ["ingestToken", "apiToken", "pullToken"] {
        assert_eq!(
            doc["components"]["securitySchemes"][scheme]["scheme"],
            "bearer"
        );
    }
    assert_eq!(
        doc["paths"]["/v1/events"]["post"]["security"][0]["ingestToken"],
        json!([])
    );
    assert!(doc["paths"]["/v1/openapi.json"]["get"]["security"].is_null());
    relay.stop().await;
}

#[tokio::test]
async fn metadata_link_local_and_own_addresses_are_refused() {
    let relay = TestRelay::start("").await;
    let own = format!("http://{}/v1/events", relay.addrs.app);
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
        "http://[fe80::1]:8080/",
        own.as_str(),
    ] {
        let (status, answer) = relay
            .api(
                Method::POST,
                "/v1/subscriptions",
                Some(sub_body(url, &["x"])),
            )
            .await;
        assert_eq!(status, 422, "{url}: {answer}");
        assert_eq!(fields(&answer), ["url"], "{url}");
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_name_resolving_outside_the_allow_list_is_refused_at_delivery() {
    let rx = Receiver::ok().await;
    let relay = TestRelay::start("api: {allowed_destinations: ['10.0.0.0/8']}").await;
    // Accepted when registered (the name could resolve into 10/8), refused once resolved.
    let url = rx.url("/").replace("127.0.0.1", "localhost");
    let (status, created) = relay
        .api(Method::POST, "/v1/subscriptions", Some(json!({"name": "sneaky", "url": url, "events": ["*"], "retries": 0, "metrics": true})))
        .await;
    assert_eq!(status, 201, "{created}");
    let (status, answer) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(sub_body(&rx.url("/"), &["*"])),
        )
        .await;
    assert_eq!(status, 422, "an IP literal outside the list: {answer}");
    relay.post(&json!({"type": "t", "data": {}})).await;
    relay.wait_outcome("sneaky", "failed", 1.0).await;
    assert_eq!(relay.attempts("sneaky", "connect_error").await, Some(1.0));
    assert_eq!(rx.count(), 0);
    let (_, dead) = relay
        .api(Method::GET, "/v1/deliveries?subscription=sneaky", None)
        .await;
    let error = dead["deliveries"][0]["last_error"].as_str().unwrap();
    assert!(error.contains("destination refused"), "{error}");
    relay.stop().await;
}

#[tokio::test]
async fn secrets_never_appear_in_responses_or_logs() {
    let rx = Receiver::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}
log: {{level: debug, format: json}}
storage: {{path: '{}'}}
api: {{token: '${{API_TOKEN}}'}}
",
            dir.path().join("db").display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(common::bin());
    cmd.arg("--config")
        .arg(&config)
        .env("API_TOKEN", "tok-API-secret");
    let mut relay = Binary::start(cmd);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let token = Some("tok-API-secret");
    let mut responses = Vec::new();
    let mut call = async |method: Method, path: &str, body: Option<Value>| {
        let (status, answer, _) = api_request(&http, relay.api, method, path, body, token).await;
        responses.push(answer.to_string());
        (status, answer)
    };
    let (status, basic) = call(
        Method::POST,
        "/v1/subscriptions",
        Some(json!({
            "name": "basic", "url": rx.url("/b"), "events": ["*"],
            "auth": {"basic": {"username": "relay", "password": "pw-BASIC-secret"}}
        })),
    )
    .await;
    assert_eq!(status, 201, "{basic}");
    assert_eq!(basic["auth"], json!({"basic": {"username": "relay"}}));
    let (status, bearer) = call(
        Method::POST,
        "/v1/subscriptions",
        Some(json!({
            "name": "bearer", "url": rx.url("/t"), "events": ["*"],
            "auth": {"bearer": "tok-BEARER-secret"}, "headers": {"x-api-key": "key-HEADER-secret"}
        })),
    )
    .await;
    assert_eq!(status, 201, "{bearer}");
    assert_eq!(bearer["auth"], json!({"bearer": {}}));
    assert_eq!(bearer["headers"], json!({"x-api-key": {}}));
    // Sending back what was shown keeps the stored secrets.
    let mut shown = bearer.clone();
    shown["url"] = json!(rx.url("/t2"));
    let (status, _) = call(Method::PUT, "/v1/subscriptions/bearer", Some(shown)).await;
    assert_eq!(status, 200);
    let (status, _) = call(
        Method::PATCH,
        "/v1/subscriptions/basic",
        Some(json!({"auth": {"basic": {"username": "relay2"}}})),
    )
    .await;
    assert_eq!(status, 200);
    call(Method::GET, "/v1/subscriptions", None).await;
    call(Method::GET, "/v1/subscriptions/basic", None).await;

    assert_eq!(
        relay
            .post(&json!({"id": "s1", "type": "t", "data": {}}))
            .await,
        202
    );
    let got = rx.wait_for(2).await;
    let auth = |path: &str| {
        got.iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("nothing at {path}"))
            .headers["authorization"]
            .to_str()
            .unwrap()
            .to_string()
    };
    // base64("relay2:pw-BASIC-secret")
    assert_eq!(auth("/b"), "Basic cmVsYXkyOnB3LUJBU0lDLXNlY3JldA==");
    assert_eq!(auth("/t2"), "Bearer tok-BEARER-secret");
    let t2 = got.iter().find(|r| r.path == "/t2").unwrap();
    assert_eq!(t2.headers["x-api-key"], "key-HEADER-secret");
    // A refused call is logged too.
    let (status, _, _) = api_request(
        &http,
        relay.api,
        Method::GET,
        "/v1/subscriptions",
        None,
        Some("wrong"),
    )
    .await;
    assert_eq!(status, 401);

    sigterm(relay.child.id());
    relay.child.wait().unwrap();
    let logs: Vec<String> = relay.lines.try_iter().map(|l| l.to_string()).collect();
    assert!(
        logs.iter().any(|l| l.contains("subscription created")),
        "logs were captured"
    );
    for secret in [
        "pw-BASIC-secret",
        "tok-BEARER-secret",
        "tok-API-secret",
        "cmVsYXky",
    ] {
        for text in logs.iter().chain(&responses) {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
}

/// SIGTERM, so the relay logs its shutdown too.
fn sigterm(pid: u32) {
    common::signal(pid, libc::SIGTERM);
}

#[tokio::test]
async fn a_config_name_taken_by_an_api_subscription_stops_startup() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let relay = TestRelay::start_in("", dir.clone()).await;
    let (status, _) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": "shared", "url": "http://127.0.0.1:9/", "events": ["x"]})),
        )
        .await;
    assert_eq!(status, 201);
    relay.stop().await;

    let yaml = format!(
        "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}
storage: {{path: '{}'}}
subscriptions:
  - {{name: shared, url: 'http://127.0.0.1:9/', events: [x]}}
",
        dir.path().join("hookrelay.db").display()
    );
    let config = hookrelay::Config::from_yaml(&yaml, "test.yaml", &|_| None).unwrap();
    let relay = hookrelay::Relay::bind(config).await.unwrap();
    let err = relay.run(async {}).await.unwrap_err().to_string();
    assert!(
        err.contains("subscriptions[0].name") && err.contains("\"shared\""),
        "{err}"
    );
}

// Two workers: the relay, its 10,000 pumps and 32 clients share this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_subscriptions_and_matching_stays_indexed() {
    let rx = Receiver::ok().await;
    let relay = Arc::new(TestRelay::start("").await);
    let url = rx.url("/");
    let total = 10_000;
    // Many at once, as a bulk import would: each edits the index, none rebuilds it.
    let workers = 128;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let relay = relay.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..total).step_by(workers) {
                let body =
                    json!({"name": format!("s{i}"), "url": url, "events": [format!("type.{i}")]});
                let (status, answer) = relay
                    .api(Method::POST, "/v1/subscriptions", Some(body))
                    .await;
                assert_eq!(status, 201, "{answer}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The default api.max_subscriptions is 10,000.
    let (status, _) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(sub_body(&url, &["x"])),
        )
        .await;
    assert_eq!(status, 409);
    let (_, answer) = relay.post(&json!({"type": "type.9876", "data": {}})).await;
    assert_eq!(answer["subscriptions"], json!(["s9876"]));
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].headers["hookrelay-event-type"], "type.9876");
    let (_, listed) = relay
        .api(Method::GET, "/v1/subscriptions?event=type.42", None)
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    poll(|| async { rx.count() == 1 }).await;
    Arc::into_inner(relay).unwrap().stop().await;
}

async fn a_subscription_the_policy_no_longer_allows_is_left_out_but_keeps_its_name(
    backend: Backend,
) {
    let db = TestDb::new(backend);
    let relay = TestRelay::on(&db, "").await;
    let body = json!({"name": "legacy", "url": "http://127.0.0.1:9/", "events": ["x"]});
    let (status, _) = relay
        .api(Method::POST, "/v1/subscriptions", Some(body.clone()))
        .await;
    assert_eq!(status, 201);
    relay.stop().await;

    // The allow-list now excludes its URL: it is left out, its name stays taken.
    let relay = TestRelay::on(&db, "api: {allowed_destinations: ['10.0.0.0/8']}").await;
    let (status, _) = relay
        .api(Method::GET, "/v1/subscriptions/legacy", None)
        .await;
    assert_eq!(status, 404);
    let moved = json!({"name": "legacy", "url": "http://10.0.0.9/", "events": ["x"]});
    let (status, _) = relay
        .api(Method::POST, "/v1/subscriptions", Some(moved.clone()))
        .await;
    assert_eq!(status, 409);
    let (status, _) = relay
        .api(Method::DELETE, "/v1/subscriptions/legacy", None)
        .await;
    assert_eq!(status, 204);
    let (status, created) = relay
        .api(Method::POST, "/v1/subscriptions", Some(moved))
        .await;
    assert_eq!(status, 201, "{created}");
    relay.stop().await;
}

crate::both_backends!(
    create_list_get_update_delete,
    a_registered_subscription_receives_events_also_after_a_restart,
    a_deleted_subscription_gets_nothing_more_and_its_pending_deliveries_are_cancelled,
    concurrent_creates_of_one_name_have_one_winner,
    a_subscription_the_policy_no_longer_allows_is_left_out_but_keeps_its_name,
);
