//! `/v1/subscriptions`: register, list, show, replace, patch and delete subscriptions. A body
//! is the YAML entry's fields as JSON, validated by the same code, every problem reported at
//! once. Responses show the document as sent, without its secrets.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as Json};

use super::ApiState;
use super::responses::{StoreUnavailable, Unauthorized, UnknownSubscription, unknown_subscription};
use crate::inbound::body::{BadBody, BodyTooLarge, NotJson, malformed, read_body, require_json};
use crate::inbound::error::{ErrorBody, HttpError};
use crate::subscription::{Subscription, forget_moved_secrets, keep_secrets, unkept_secrets};
use crate::time::{new_id, now_ms};
use crate::yaml::Issues;

mod input;
mod page;
pub(super) mod pause;
mod schema;

use input::{SubscriptionInput, SubscriptionReplacement};
use schema::{Subscription as SubscriptionView, SubscriptionPatch};

/// `500` when a change panicked.
const INTERNAL: &str = "The change failed unexpectedly (`internal`); see the relay's log.";

/// Fields the relay sets; a body may repeat them unchanged but not change them.
const READ_ONLY: &[&str] = &["id", "name", "source", "created_at", "updated_at"];

fn invalid(message: &str) -> HttpError {
    HttpError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_subscription",
        message,
    )
}

/// A subscription as the API shows it, with its delivery state on this relay.
fn view(state: &ApiState, sub: &Subscription) -> Json {
    let mut doc = sub.view();
    if let (Json::Object(map), Some(d)) = (&mut doc, state.dispatcher.delivery_state(&sub.name)) {
        map.insert(
            "delivery".into(),
            serde_json::to_value(d).unwrap_or(Json::Null),
        );
    }
    doc
}

/// Reads a JSON body (any JSON value; callers decide what shape they need).
async fn json_body(state: &ApiState, headers: &HeaderMap, body: Body) -> Result<Json, HttpError> {
    require_json(headers)?;
    let body = read_body(body, state.max_body, "limits.max_body").await?;
    serde_json::from_slice(&body).map_err(|e| malformed(&e))
}

fn object(doc: Json) -> Result<Map<String, Json>, HttpError> {
    match doc {
        Json::Object(map) => Ok(map),
        _ => Err(invalid("the body must be a JSON object")),
    }
}

/// Validates `doc` as the API subscription `id` and checks its destination.
fn validate(
    state: &ApiState,
    doc: Map<String, Json>,
    id: &str,
    changed: (i64, i64),
) -> Result<Subscription, HttpError> {
    let mut issues = Issues::json();
    let sub = Subscription::from_api(Json::Object(doc), id, changed, &mut issues);
    if let Some(sub) = &sub
        && let Err((field, reason)) = state.guard.check_subscription(sub)
    {
        issues.push(&field, reason);
    }
    match sub {
        Some(sub) if issues.is_empty() => Ok(sub),
        _ => {
            let mut e = invalid("the subscription is invalid; see fields");
            for issue in issues.0 {
                let field = if issue.path.is_empty() {
                    "(body)".to_string()
                } else {
                    issue.path
                };
                e = e.field(field, issue.reason);
            }
            Err(e)
        }
    }
}

/// Register a subscription.
///
/// The body is validated whole: every problem is reported at once in `fields`. A change
/// applies to the next event posted after the answer.
#[utoipa::path(
    post,
    path = "/v1/subscriptions",
    tag = "api",
    operation_id = "createSubscription",
    security(("apiToken" = []), ()),
    request_body(content = SubscriptionInput, content_type = "application/json",
        description = "A subscription document; any `application/*+json` content type is accepted too."),
    responses(
        (status = 201, description = "Registered.", body = SubscriptionView,
            headers(("Location" = String, description = "`/v1/subscriptions/{id}`"))),
        BadBody,
        Unauthorized,
        (status = 409, description = "The name is taken (config subscriptions included), `api.max_subscriptions` is reached, or a 101st subscription asks for `metrics: true` (`conflict`).", body = ErrorBody),
        BodyTooLarge,
        NotJson,
        (status = 422, description = INVALID, body = ErrorBody,
            example = json!({"error": {"code": "invalid_subscription", "message": "the subscription is invalid; see fields",
                "fields": [{"field": "retries", "reason": "42 is out of range 0..=20"}]}})),
        (status = 500, description = INTERNAL, body = ErrorBody),
        StoreUnavailable,
    )
)]
pub async fn create(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let doc = object(json_body(&state, &headers, body).await?)?;
    let mut refused = invalid("the subscription is invalid; see fields");
    let mut bad = false;
    for key in READ_ONLY.iter().filter(|k| **k != "name") {
        if doc.contains_key(*key) {
            refused = refused.field(*key, "is set by the relay");
            bad = true;
        }
    }
    if bad {
        return Err(refused);
    }
    let now = now_ms();
    let sub = validate(&state, doc, &new_id(), (now, now))?;
    let catalog = state.catalog.clone();
    let sub =
        to_completion(async move { catalog.create(sub).await.map_err(HttpError::from) }).await?;
    let location = format!("/v1/subscriptions/{}", sub.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(view(&state, &sub)),
    )
        .into_response())
}

/// `422` for a subscription document.
const INVALID: &str = "The body is not an object, sets a read-only field, or has invalid fields, its `url` included when the destination guard refuses it (`invalid_subscription`); `fields` names every one.";

/// List subscriptions.
///
/// The config file's first (in file order), then the API's, oldest first; a page at a time.
#[utoipa::path(
    get,
    path = "/v1/subscriptions",
    tag = "api",
    operation_id = "listSubscriptions",
    security(("apiToken" = []), ()),
    params(
        ("event" = Option<String>, Query,
            description = "Only subscriptions whose `events` select this event type (filters are not applied)."),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000,
            description = "Subscriptions on the page at most; default 100."),
        ("after" = Option<String>, Query,
            description = "Start after this subscription (name or id): the last one of the previous page."),
    ),
    responses(
        (status = 200, description = "A page of subscriptions. When more follow, a `Link: <...>; rel=\"next\"` header gives the next page's address.",
            body = Vec<SubscriptionView>,
            headers(("Link" = String, description = "`<next page>; rel=\"next\"`, when more follow."))),
        Unauthorized,
        (status = 404, description = "`after` names no listed subscription: it was deleted since, or never listed (`not_found`); start again without it.", body = ErrorBody),
        (status = 422, description = "An unknown query parameter or a `limit` out of range (`invalid_query`); `fields` names each.", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, HttpError> {
    let mut error = HttpError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_query",
        "invalid query parameters",
    );
    for key in q
        .keys()
        .filter(|k| !["event", "limit", "after"].contains(&k.as_str()))
    {
        error = error.field(key.clone(), "unknown parameter");
    }
    let (page, error) = page::PageQuery::parse(&q, error);
    if error.has_fields() {
        return Err(error);
    }
    let registry = state.catalog.matcher();
    let listed: Vec<&Subscription> = match q.get("event") {
        None => registry.all().map(|s| &**s).collect(),
        Some(event_type) => registry
            .candidates(event_type)
            .into_iter()
            .map(|s| &**s)
            .collect(),
    };
    let keys: Vec<(&str, &str)> = listed
        .iter()
        .map(|s| (s.name.as_str(), s.id.as_str()))
        .collect();
    // The cursor is a subscription, so one that is gone is a 404, as its own address is.
    let Some((range, more)) = page.window(&keys) else {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "after names no listed subscription (deleted since?); start again without it",
        )
        .field("after", "no listed subscription by this name or id"));
    };
    let on_page = &listed[range];
    let views: Vec<Json> = on_page.iter().map(|s| view(&state, s)).collect();
    let mut response = axum::Json(Json::Array(views)).into_response();
    if let (true, Some(last)) = (more, on_page.last()) {
        let link = page::next_link(q.get("event").map(String::as_str), page.limit, &last.name);
        if let Ok(value) = header::HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

/// Show a subscription.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}",
    tag = "api",
    operation_id = "getSubscription",
    security(("apiToken" = []), ()),
    params(("id" = String, Path, description = "Subscription id or name.")),
    responses(
        (status = 200, description = "The subscription.", body = SubscriptionView),
        Unauthorized,
        UnknownSubscription,
    )
)]
pub async fn show(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Response, HttpError> {
    let sub = state
        .catalog
        .find(&key)
        .ok_or_else(|| unknown_subscription(&key))?;
    Ok(axum::Json(view(&state, &sub)).into_response())
}

/// Runs a catalog change on its own task: a client that gives up, or a request timeout,
/// drops the handler but never a change half made.
async fn to_completion<T: Send + 'static>(
    change: impl std::future::Future<Output = Result<T, HttpError>> + Send + 'static,
) -> Result<T, HttpError> {
    tokio::spawn(change).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "subscription change failed");
        Err(HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the change failed; see the relay's log",
        ))
    })
}

/// `409` for a change of a subscription.
const CHANGE_CONFLICT: &str = "The subscription comes from the config file (change the YAML instead), the body names it differently (a name never changes), the body keeps a secret (`{}`, or a password left out) that is not stored, or a 101st subscription asks for `metrics: true` (`conflict`).";

/// Replace an API subscription.
///
/// The body replaces the document: a field left out goes back to its default, except the
/// name and the secrets (a `password` left out of `auth.basic`, `auth.bearer` sent as `{}`,
/// a header value sent as `{}`, a `pull.token` left out are kept).
#[utoipa::path(
    put,
    path = "/v1/subscriptions/{id}",
    tag = "api",
    operation_id = "replaceSubscription",
    security(("apiToken" = []), ()),
    params(("id" = String, Path, description = "Subscription id or name.")),
    request_body(content = SubscriptionReplacement, content_type = "application/json",
        description = "A subscription document; any `application/*+json` content type is accepted too."),
    responses(
        (status = 200, description = "The subscription as changed.", body = SubscriptionView),
        BadBody,
        Unauthorized,
        UnknownSubscription,
        (status = 409, description = CHANGE_CONFLICT, body = ErrorBody),
        BodyTooLarge,
        NotJson,
        (status = 422, description = INVALID, body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        StoreUnavailable,
    )
)]
pub async fn replace(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let doc = object(json_body(&state, &headers, body).await?)?;
    update(state, key, true, |_| Ok(doc)).await
}

/// Change an API subscription with a JSON Merge Patch.
///
/// The patch (RFC 7396) merges into the stored document, secrets included, so they are
/// kept unless replaced or set to `null`; what it leaves out stays. Same rules as PUT.
#[utoipa::path(
    patch,
    path = "/v1/subscriptions/{id}",
    tag = "api",
    operation_id = "patchSubscription",
    security(("apiToken" = []), ()),
    params(("id" = String, Path, description = "Subscription id or name.")),
    request_body(content(
        (SubscriptionPatch = "application/merge-patch+json"),
        (SubscriptionPatch = "application/json"),
    )),
    responses(
        (status = 200, description = "The subscription as changed.", body = SubscriptionView),
        BadBody,
        Unauthorized,
        UnknownSubscription,
        (status = 409, description = CHANGE_CONFLICT, body = ErrorBody),
        BodyTooLarge,
        NotJson,
        (status = 422, description = INVALID, body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        StoreUnavailable,
    )
)]
pub async fn patch(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let patch = json_body(&state, &headers, body).await?;
    // The merge starts from the stored document, secrets included, so a `null` removes the
    // pull token like any other member; placeholders (`{}`) are still filled in.
    update(state, key, false, move |stored| {
        let mut doc = stored.clone();
        json_patch::merge(&mut doc, &patch);
        forget_moved_secrets(&mut doc, stored, &patch);
        object(doc)
    })
    .await
}

/// Shared by PUT and PATCH: `make` builds the new document from the stored one, under the
/// catalog's edit lock. Secrets shown as placeholders are restored; a `pull.token` left out is
/// too when `refill_pull_token` (PUT; a merge patch keeps or removes it itself).
async fn update(
    state: ApiState,
    key: String,
    refill_pull_token: bool,
    make: impl FnOnce(&Json) -> Result<Map<String, Json>, HttpError> + Send + 'static,
) -> Result<Response, HttpError> {
    let catalog = state.catalog.clone();
    let shown = state.clone();
    let sub = to_completion(async move {
        catalog
            .update(&key, |old| {
                let mut doc = make(old.spec.expose())?;
                // The delivery state is the relay's, shown beside the document: a body
                // that sends it back is not changing it.
                doc.remove("delivery");
                let current = old.view();
                let mut refused = invalid("the subscription is invalid; see fields");
                let (mut bad, mut renamed) = (false, false);
                for field in READ_ONLY {
                    match doc.remove(*field) {
                        // `null` is a member left out, as everywhere in the document.
                        Some(v) if !v.is_null() && Some(&v) != current.get(*field) => {
                            refused = refused.field(*field, "is read-only");
                            if *field == "name" && v.is_string() {
                                renamed = true;
                            } else {
                                bad = true;
                            }
                        }
                        _ => {}
                    }
                }
                if bad {
                    return Err(refused);
                }
                if renamed {
                    // A well-formed document whose only fault is another name: it conflicts
                    // with the resource, whose name never changes.
                    return Err(HttpError::new(
                        StatusCode::CONFLICT,
                        "conflict",
                        format!("the name is {:?} and cannot change", old.name),
                    )
                    .field("name", "is immutable"));
                }
                // The name is immutable, also when the document never spelled it out.
                doc.insert("name".into(), old.name.clone().into());
                let mut doc = Json::Object(doc);
                keep_secrets(&mut doc, old.spec.expose(), refill_pull_token);
                // A well-formed request to keep a secret this subscription does not have: the
                // body is valid, the stored state is what it conflicts with.
                let unkept = unkept_secrets(&doc);
                if !unkept.is_empty() {
                    let mut e = HttpError::new(
                        StatusCode::CONFLICT,
                        "conflict",
                        "the body keeps stored secrets that this subscription does not have",
                    );
                    for field in unkept {
                        e = e.field(field, "keeps a stored secret, and none is stored here");
                    }
                    return Err(e);
                }
                let Json::Object(doc) = doc else {
                    unreachable!("still an object")
                };
                let created = old.changed.map_or(0, |(c, _)| c);
                validate(&state, doc, &old.id, (created, now_ms()))
            })
            .await
    })
    .await?;
    Ok(axum::Json(view(&shown, &sub)).into_response())
}

/// Delete an API subscription.
///
/// Its `pending`, `in_flight`, `orphaned`, `failed` and `expired` deliveries become
/// `cancelled`. Answered `204` whether or not it existed.
#[utoipa::path(
    delete,
    path = "/v1/subscriptions/{id}",
    tag = "api",
    operation_id = "deleteSubscription",
    security(("apiToken" = []), ()),
    params(("id" = String, Path, description = "Subscription id or name.")),
    responses(
        (status = 204, description = "Deleted, or there was no such subscription."),
        Unauthorized,
        (status = 409, description = "The subscription comes from the config file (`conflict`).", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        StoreUnavailable,
    )
)]
pub async fn remove(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Response, HttpError> {
    let catalog = state.catalog.clone();
    to_completion(async move { catalog.delete(&key).await.map_err(HttpError::from) }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
