//! The OpenAPI document of all three listeners, served on the api listener at
//! `GET /v1/openapi.json`. It comes from the routers themselves: every listener registers
//! its routes with `utoipa_axum::routes!`, which takes each route's method and path from its
//! handler's `#[utoipa::path]`, so a route cannot be served without being described. Here
//! the three descriptions are merged, each path is given its listener's default address in
//! `servers`, and the statuses the shared middleware adds to every route are filled in.

use std::sync::LazyLock;

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{Object, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::server::ServerBuilder;
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{Components, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, Response};

/// A listener: its tag, config key, default address and what it serves.
struct Listener {
    tag: &'static str,
    setting: &'static str,
    url: &'static str,
    serves: &'static str,
}

const APP: Listener = Listener {
    tag: "app",
    setting: "listen.app",
    url: "http://127.0.0.1:8787",
    serves: "Ingest: the application posts events here. Guarded by `ingest.token` when set.",
};
const API: Listener = Listener {
    tag: "api",
    setting: "listen.api",
    url: "http://127.0.0.1:8788",
    serves: "Management: subscriptions, dead letters, the notification queues of pull \
             subscriptions, and this document. Guarded by `api.token` when set (except this \
             document); a pull subscription's `pull.token` also opens its notification routes.",
};
const OPS: Listener = Listener {
    tag: "ops",
    setting: "listen.ops",
    url: "http://0.0.0.0:9464",
    serves: "Operations: liveness and readiness probes and Prometheus metrics. No token.",
};

const DESCRIPTION: &str = "hookrelay is a webhook relay that runs as a sidecar: the \
application posts events to it, and it delivers them to subscribers with retries, or queues \
them for subscribers that pull. It listens on three ports, each a tag of this document; \
every path lists its listener's default address in `servers` (the configured `listen.*` \
address is what counts).\n\n\
Every error, on every listener, has one JSON shape (the `Error` schema): \
`{\"error\": {\"code\": \"...\", \"message\": \"...\", \"fields\": [...]}}`, where `fields` \
appears only when fields are at fault. Any request may also be answered `408` (`timeout`, \
slower than `limits.request_timeout`) or `503` (`unavailable`, more than \
`limits.max_concurrent_requests` at once, with `Retry-After`); an unknown path is `404` \
(`not_found`) and a known path with another method `405` (`method_not_allowed`).";

/// The document as JSON, built once, on first use.
static JSON: LazyLock<String> = LazyLock::new(|| {
    document()
        .to_json()
        .expect("the OpenAPI document serializes")
});

/// The document as JSON.
pub fn json() -> &'static str {
    &JSON
}

/// The OpenAPI document of the three listeners.
pub fn document() -> OpenApi {
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("hookrelay")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(DESCRIPTION)),
        )
        .tags(Some(
            [&APP, &API, &OPS]
                .map(|l| {
                    TagBuilder::new()
                        .name(l.tag)
                        .description(Some(format!(
                            "The {} listener (`{}`, default `{}`). {}",
                            l.tag,
                            l.setting,
                            l.url.trim_start_matches("http://"),
                            l.serves
                        )))
                        .build()
                })
                .to_vec(),
        ))
        .build();
    for (listener, mut part) in [
        (&APP, crate::ingest::openapi()),
        (&API, super::openapi()),
        (&OPS, crate::ops::openapi()),
    ] {
        let server = ServerBuilder::new()
            .url(listener.url)
            .description(Some(format!("default `{}`", listener.setting)))
            .build();
        for item in part.paths.paths.values_mut() {
            item.servers = Some(vec![server.clone()]);
            for op in operations(item) {
                add_middleware_statuses(op);
            }
        }
        merge(&mut doc, part);
    }
    let components = doc.components.get_or_insert_with(Components::default);
    for (name, description) in [
        (
            "ingestToken",
            "`ingest.token`: every request to the app listener needs it when it is set.",
        ),
        (
            "apiToken",
            "`api.token`: every request to the api listener but `GET /v1/openapi.json` needs \
             it when it is set.",
        ),
        (
            "pullToken",
            "A pull subscription's `pull.token`: opens that subscription's notification routes \
             (besides `api.token`).",
        ),
    ] {
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(description.to_string());
        components
            .security_schemes
            .insert(name.to_string(), RefOr::T(SecurityScheme::Http(scheme)));
    }
    doc
}

/// Merges a listener's description into `doc`; two different schemas of one name are a bug.
fn merge(doc: &mut OpenApi, mut part: OpenApi) {
    if let (Some(ours), Some(theirs)) = (&doc.components, &part.components) {
        for (name, schema) in &theirs.schemas {
            if let Some(existing) = ours.schemas.get(name) {
                assert!(
                    existing == schema,
                    "two different OpenAPI schemas are named {name}"
                );
            }
        }
    }
    part.tags = None;
    doc.merge(part);
}

/// The operations of a path.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Adds what `server::harden` may answer on any route: `408` past `limits.request_timeout`
/// and `503` when the listener sheds load.
fn add_middleware_statuses(op: &mut Operation) {
    const OVERLOADED: &str = "More than `limits.max_concurrent_requests` requests at once on \
                              this listener (`unavailable`); retry after `Retry-After`.";
    const ALSO_OVERLOADED: &str = "Also when this listener has more than \
                                   `limits.max_concurrent_requests` requests at once \
                                   (`unavailable`).";
    let responses = &mut op.responses.responses;
    responses.entry("408".into()).or_insert_with(|| {
        error_response(
            "The request took longer than `limits.request_timeout` (`timeout`).",
            false,
        )
    });
    match responses.get_mut("503") {
        Some(RefOr::T(response)) => {
            response.description = format!("{} {ALSO_OVERLOADED}", response.description);
            if !response.headers.contains_key("Retry-After") {
                response
                    .headers
                    .insert("Retry-After".into(), RefOr::T(retry_after()));
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            responses.insert("503".into(), error_response(OVERLOADED, true));
        }
    }
}

/// An error response in the `Error` shape.
fn error_response(description: &str, with_retry_after: bool) -> RefOr<Response> {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Error")))
            .build(),
    );
    if with_retry_after {
        response = response.header("Retry-After", retry_after());
    }
    RefOr::T(response.build())
}

fn retry_after() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(Some(Object::with_type(Type::Integer)))
        .description(Some("Seconds to wait before retrying."))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves_and_every_operation_names_its_listener() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for reference in text.split("\"$ref\":\"").skip(1) {
            let target = &reference[..reference.find('"').unwrap()];
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected reference {target}"));
            assert!(schemas.contains_key(name), "no schema {name}");
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            let servers = item["servers"].as_array().unwrap();
            assert_eq!(servers.len(), 1, "{path}");
            for (method, op) in item.as_object().unwrap() {
                if method == "servers" {
                    continue;
                }
                let tags = op["tags"].as_array().unwrap();
                assert_eq!(tags.len(), 1, "{method} {path}");
                let tag = tags[0].as_str().unwrap();
                let listener = [&APP, &API, &OPS]
                    .into_iter()
                    .find(|l| l.tag == tag)
                    .unwrap();
                assert_eq!(servers[0]["url"], listener.url, "{method} {path}");
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.contains_key("408"), "{method} {path}");
                assert!(responses.contains_key("503"), "{method} {path}");
                assert!(op["operationId"].is_string(), "{method} {path}");
            }
        }
    }
}
