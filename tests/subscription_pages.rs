//! `GET /v1/subscriptions` a page at a time: `limit`, the `after` cursor and the `Link` header.

mod common;

use common::TestRelay;
use reqwest::Method;
use serde_json::{Value, json};

/// The names on a listing.
fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn pages_follow_the_link_header_to_the_end() {
    let relay = TestRelay::start(
        "subscriptions:\n  - {name: file, url: 'http://127.0.0.1:9/', events: [x]}\n",
    )
    .await;
    for name in ["b", "c", "d", "e"] {
        let doc = json!({"name": name, "url": "http://127.0.0.1:9/", "events": [if name == "d" { "y" } else { "x" }]});
        let (status, body) = relay
            .api(Method::POST, "/v1/subscriptions", Some(doc))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // Without `limit` all five fit on the default page of 100: no Link.
    let (status, all, headers) = relay
        .api_as(Method::GET, "/v1/subscriptions", None, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(names(&all), ["file", "b", "c", "d", "e"]);
    assert!(headers.get("link").is_none());

    let mut seen = Vec::new();
    let mut path = "/v1/subscriptions?limit=2".to_string();
    let mut pages = 0;
    loop {
        let (status, page, headers) = relay.api_as(Method::GET, &path, None, None).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        seen.extend(names(&page).into_iter().map(String::from));
        let Some(link) = headers.get("link") else {
            break;
        };
        let link = link.to_str().unwrap();
        assert!(link.ends_with(">; rel=\"next\""), "{link}");
        path = link[1..link.find('>').unwrap()].to_string();
    }
    assert_eq!(seen, ["file", "b", "c", "d", "e"]);
    assert_eq!(pages, 3);

    // The cursor may be an id; `event` is kept in the next link.
    let c_id = all[2]["id"].as_str().unwrap();
    let (_, page, headers) = relay
        .api_as(
            Method::GET,
            &format!("/v1/subscriptions?event=x&limit=1&after={c_id}"),
            None,
            None,
        )
        .await;
    assert_eq!(names(&page), ["e"]);
    assert!(headers.get("link").is_none());
    let (_, page, headers) = relay
        .api_as(Method::GET, "/v1/subscriptions?event=x&limit=1", None, None)
        .await;
    assert_eq!(names(&page), ["file"]);
    assert_eq!(
        headers["link"],
        "</v1/subscriptions?event=x&limit=1&after=file>; rel=\"next\""
    );

    // Bad values name their fields, every one at once.
    let (status, body) = relay
        .api(Method::GET, "/v1/subscriptions?limit=1001&colour=red", None)
        .await;
    assert_eq!(status, 422, "{body}");
    let mut fields: Vec<&str> = body["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(fields, ["colour", "limit"], "{body}");
    let (status, body) = relay
        .api(Method::GET, "/v1/subscriptions?after=nobody", None)
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(body["error"]["fields"][0]["field"], "after");
    relay.stop().await;
}
