//! What the app listener's routes take and answer, as the OpenAPI document describes them:
//! the envelope (a schema only: `Event::parse` reads it by hand), the receipts, the event
//! status, and the error rows every route shares.

use serde::Serialize;
use utoipa::openapi::schema::{Object, SchemaType, Type};
use utoipa::{IntoResponses, ToSchema};

use crate::inbound::error::ErrorBody;
use crate::store::DeliveryStatus;

/// An event envelope as the app posts it.
// Only describes the body: `Event::parse` reads it by hand.
#[derive(ToSchema)]
#[schema(as = EventEnvelope)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(super) struct Envelope {
    /// The event type: 1 to 128 of `A-Z a-z 0-9 . _ : -`.
    #[serde(rename = "type")]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$", example = "invoice.paid")]
    event_type: String,
    /// The app's event id, same characters; without one the relay assigns a lowercase
    /// UUIDv7. An id the store already holds makes the post a duplicate.
    #[schema(
        nullable = false,
        pattern = "^[A-Za-z0-9._:-]{1,128}$",
        example = "inv-42-paid"
    )]
    id: Option<String>,
    /// Any JSON value but `null`; subscribers receive these exact bytes.
    #[schema(schema_with = not_null, example = json!({"invoice": "in_42"}))]
    data: serde_json::Value,
}

/// Any JSON value but `null` (the relay refuses a `null` `data`).
fn not_null() -> Object {
    Object::builder()
        .schema_type(SchemaType::Array(vec![
            Type::Object,
            Type::Array,
            Type::String,
            Type::Number,
            Type::Boolean,
        ]))
        .description(Some(
            "Any JSON value but `null`; subscribers receive these exact bytes.",
        ))
        .build()
}

/// What ingest answers for one event.
#[derive(Serialize, ToSchema)]
pub(super) struct Receipt {
    /// The event id: the app's, or the one the relay assigned.
    #[schema(example = "inv-42-paid")]
    id: String,
    /// Names of the subscriptions it was matched to (for a duplicate, those of the first
    /// time); empty when it matched none.
    #[schema(example = json!(["billing", "audit"]))]
    subscriptions: Vec<String>,
    /// Present, and true, when the id was stored already: nothing was stored or delivered
    /// again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(required = false)]
    duplicate: bool,
}

impl Receipt {
    pub(super) fn new(id: &str, subscriptions: Vec<String>, duplicate: bool) -> Receipt {
        Receipt {
            id: id.to_string(),
            subscriptions,
            duplicate,
        }
    }
}

/// What ingest answers for a batch.
#[derive(Serialize, ToSchema)]
pub(super) struct BatchReceipt {
    /// One per element, in order.
    pub(super) results: Vec<Receipt>,
}

/// An event and where each of its deliveries stands.
#[derive(Serialize, ToSchema)]
#[schema(as = EventStatus)]
pub(super) struct EventView<'a> {
    /// The event id.
    #[schema(example = "inv-42-paid")]
    pub(super) id: &'a str,
    /// The event type.
    #[serde(rename = "type")]
    #[schema(example = "invoice.paid")]
    pub(super) event_type: &'a str,
    /// When the relay accepted it (RFC 3339, UTC).
    #[schema(format = DateTime, example = "2026-11-22T20:58:50.730Z")]
    pub(super) received_at: String,
    /// A raw event's content type as received (`application/octet-stream` when it had
    /// none); absent for an envelope event (`application/json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "application/xml")]
    pub(super) content_type: Option<&'a str>,
    /// A raw event's attributes (`hookrelay-attr-NAME` headers) by name; absent for an
    /// envelope event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::HashMap<String, String>>, nullable = false)]
    pub(super) attributes: Option<std::collections::BTreeMap<&'a str, &'a str>>,
    /// One per matched subscription.
    pub(super) deliveries: Vec<DeliveryStatus<'a>>,
}

/// `401` on the app listener.
// Only describes the response: the bearer check answers it (`inbound::auth`).
#[derive(IntoResponses)]
#[response(
    status = 401,
    description = "`ingest.token` is set and the bearer token is missing or wrong (`unauthorized`).",
    headers(("WWW-Authenticate" = String, description = "`Bearer`"))
)]
#[allow(dead_code)]
pub(super) struct Unauthorized(ErrorBody<'static>);

/// `503` when the store refuses events.
// Only describes the response: the handlers answer it with an `HttpError`.
#[derive(IntoResponses)]
#[response(
    status = 503,
    description = "The store cannot take events now (`store_unavailable`): its write queue is full (`storage.queue_capacity`), the database is above `storage.max_size`, or the store failed. Nothing was stored; retry, with the same ids.",
    headers(("Retry-After" = u64, description = "Seconds to wait: `1`."))
)]
#[allow(dead_code)]
pub(super) struct StoreRefused(ErrorBody<'static>);

/// `508` when a post went round a delivery loop.
// Only describes the response: the handlers answer it with an `HttpError`.
#[derive(IntoResponses)]
#[response(
    status = 508,
    description = "A delivery loop (`loop_detected`): the `hookrelay-via` header names this relay (its own delivery came back), or the event has passed 8 relays already. Nothing was stored; do not retry.",
    example = json!({"error": {"code": "loop_detected", "message": "hookrelay-via: this relay delivered the event itself (a delivery loop)", "fields": [{"field": "headers.hookrelay-via", "reason": "this relay delivered the event itself (a delivery loop)"}]}})
)]
#[allow(dead_code)]
pub(super) struct LoopDetected(ErrorBody<'static>);
