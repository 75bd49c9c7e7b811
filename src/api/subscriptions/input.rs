//! The subscription document as POST and PUT take it, as exact JSON Schemas: one per `mode`,
//! each member with the range the validator enforces, so that a document the schema accepts
//! is one the relay registers. Written as JSON rather than derived, because the rules need
//! `oneOf` shapes (a condition's target and operator, backoff's two forms, SMTP credentials
//! that go together) that field attributes cannot state.
//!
//! What JSON Schema cannot state is in the descriptions: a backoff's `max` not below its
//! `initial`, a circuit's `max_cool_down` not below its `cool_down` and its `min_attempts`
//! only with a `failure_ratio`, a range's `from` not after its `to`, header names the relay
//! sets itself, and
//! durations in other spellings than the patterns list (`1h30m`, `90 seconds`), which are
//! accepted when in range.

use std::borrow::Cow;

use serde_json::{Value as Json, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{PartialSchema, ToSchema};

use control::{control, on_gone};
use filter::filter;
use policy::{final_statuses, max_in_flight};

mod control;
mod filter;
mod policy;

/// Durations within `100ms..=60s`.
const TIMEOUT: &str = r"^(([1-9][0-9]{2,3}|[1-5][0-9]{4})ms|([1-9]|[1-5][0-9]|60)s|1m)$";
/// Durations within `0s..=24h`.
const UP_TO_A_DAY: &str = r"^([0-9]{1,5}ms|[0-9]{1,4}s|[0-9]{1,3}m|([0-9]|1[0-9]|2[0-4])h)$";
/// Durations within `1ms..=24h`.
const INITIAL: &str =
    r"^([1-9][0-9]{0,4}ms|[1-9][0-9]{0,3}s|[1-9][0-9]{0,2}m|([1-9]|1[0-9]|2[0-4])h)$";
/// Durations within `1ms..=7d`.
const MAX: &str = r"^([1-9][0-9]{0,4}ms|[1-9][0-9]{0,4}s|[1-9][0-9]{0,3}m|([1-9]|[1-9][0-9]|1[0-5][0-9]|16[0-8])h|[1-7]d)$";
/// Durations within `0s..=12h`.
const VISIBILITY: &str = r"^([0-9]{1,5}ms|[0-9]{1,4}s|[0-9]{1,2}m|([0-9]|1[0-2])h)$";
/// Durations within `1s..=365d`.
const TTL: &str = r"^([1-9][0-9]{0,5}s|[1-9][0-9]{0,4}m|([1-9][0-9]{0,2}|[1-7][0-9]{3})h|([1-9]|[1-9][0-9]|[12][0-9]{2}|3[0-5][0-9]|36[0-5])d)$";

/// A subscription name: `[a-z0-9_-]{1,64}` but not `_api` (the shared metric label).
const NAME: &str = r"^([a-z0-9-][a-z0-9_-]{0,63}|_([a-z0-9_-]{0,2}|[b-z0-9_-][a-z0-9_-]{2}|a[a-oq-z0-9_-][a-z0-9_-]|ap[a-hj-z0-9_-]|[a-z0-9_-]{4,63}))$";
/// A host name of lowercase labels, none starting or ending with `-`.
const HOST: &str = r"[a-z]([a-z0-9-]{0,18}[a-z0-9])?(\.[a-z]([a-z0-9-]{0,18}[a-z0-9])?){0,3}";
/// A bearer or pull token: visible ASCII.
const TOKEN: &str = r"^[!-~]+$";
/// `whsec_` and the base64 of 24 to 64 bytes, padded or not, with canonical trailing bits.
const SIGNING_SECRET: &str = r"^whsec_(([A-Za-z0-9+/]{4}){8,21}([A-Za-z0-9+/][AQgw]={0,2})?|([A-Za-z0-9+/]{4}){8,20}[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=?)$";
/// A field of `data`: a JSON Pointer, or dot-separated non-empty segments.
const FIELD_PATH: &str = r"^(/.*|[^.]+(\.[^.]+)*)$";

/// `{}`, as the API shows a secret: on PUT, keeps the stored one (`409` when none is stored).
fn placeholder() -> Json {
    json!({"type": "object", "maxProperties": 0,
        "description": "`{}`, as shown: keeps the stored secret (`409` when none is stored)."})
}

/// `secret`, or on PUT (`replace`) also the `{}` that keeps the stored one.
fn or_kept(secret: Json, replace: bool) -> Json {
    if replace {
        json!({"oneOf": [secret, placeholder()]})
    } else {
        secret
    }
}

/// The component `name` of POST's document, or of PUT's (`replace`) where they differ.
fn variant(name: &str, replace: bool) -> Json {
    reference(&if replace {
        format!("{name}Replacement")
    } else {
        format!("{name}Input")
    })
}

fn reference(name: &str) -> Json {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// `schema` or `null` (an explicit `null` is the same as leaving the member out).
fn nullable(schema: Json) -> Json {
    match schema {
        Json::Object(mut map) if map.get("type").is_some_and(Json::is_string) => {
            let t = map.remove("type").expect("checked");
            map.insert("type".into(), json!([t, "null"]));
            Json::Object(map)
        }
        other => json!({"oneOf": [other, {"type": "null"}]}),
    }
}

fn pattern(p: &str, description: &str) -> Json {
    json!({"type": "string", "pattern": p, "description": description})
}

fn duration(p: &str, description: &str) -> Json {
    nullable(pattern(
        p,
        &format!("{description} Durations as `250ms`, `10s`, `5m`, `2h` or `3d`."),
    ))
}

fn integer(min: u64, max: u64, description: &str) -> Json {
    nullable(json!({"type": "integer", "minimum": min, "maximum": max, "description": description}))
}

/// An object with exactly `properties`, of which `required` must be there.
fn object(properties: Json, required: &[&str]) -> Json {
    let mut o = json!({"type": "object", "properties": properties, "additionalProperties": false});
    if !required.is_empty() {
        o["required"] = json!(required);
    }
    o
}

fn with_description(mut schema: Json, description: &str) -> Json {
    schema["description"] = description.into();
    schema
}

/// Members every mode has.
fn common(properties: &mut serde_json::Map<String, Json>) {
    properties.insert(
        "name".into(),
        nullable(pattern(
            NAME,
            "`[a-z0-9_-]{1,64}`, not `_api`. Optional on POST (defaults to the id); immutable \
             afterwards (a different name on PUT is `409`).",
        )),
    );
    properties.insert(
        "events".into(),
        json!({"type": "array", "minItems": 1,
            "description": "Event types to select: exact types, prefix globs (`invoice.*`) or `*`.",
            "items": {"type": "string", "pattern": r"^(\*|[A-Za-z0-9._:-]{1,128}\*?)$"},
            "example": ["invoice.paid", "customer.*"]}),
    );
    properties.insert("filter".into(), nullable(reference("FilterInput")));
    properties.insert(
        "metrics".into(),
        json!({"type": ["boolean", "null"], "description":
            "Its own metric series (at most 100 API subscriptions); default `false`: the shared `_api` series."}),
    );
}

/// Members of push and e-mail subscriptions: retries, timing, rate and order.
fn delivery(properties: &mut serde_json::Map<String, Json>) {
    properties.insert(
        "retries".into(),
        integer(
            0,
            20,
            "Retries after the first attempt; default the schedule's length (6 for an exponential backoff).",
        ),
    );
    properties.insert(
        "timeout".into(),
        duration(
            TIMEOUT,
            "Per-attempt timeout, `100ms`..`60s`; default `10s`.",
        ),
    );
    properties.insert("backoff".into(), nullable(reference("BackoffInput")));
    properties.insert("rate_limit".into(), nullable(reference("RateLimitInput")));
    properties.insert("max_in_flight".into(), max_in_flight());
    properties.insert("ordering".into(), nullable(reference("OrderingInput")));
    control(properties);
}

fn push(replace: bool) -> Json {
    let mut p = serde_json::Map::new();
    common(&mut p);
    delivery(&mut p);
    p.insert(
        "mode".into(),
        json!({"type": ["string", "null"], "enum": ["push", null],
            "description": "`push` (the default): each event is POSTed to `url`."}),
    );
    p.insert(
        "url".into(),
        pattern(
            &format!(r"^https?://{HOST}(:[1-9][0-9]{{0,3}})?(/[A-Za-z0-9._~-]{{0,20}}){{0,4}}$"),
            "Where attempts are POSTed: `http` or `https`, no credentials; checked by the \
             destination guard (`api.allowed_destinations`). Any such URL is accepted; the \
             pattern lists the plainest ones.",
        ),
    );
    p.insert(
        "success_code".into(),
        nullable(reference("SuccessCodeInput")),
    );
    p.insert("final_statuses".into(), final_statuses());
    p.insert("auth".into(), nullable(variant("Auth", replace)));
    p.insert(
        "headers".into(),
        nullable(json!({"type": "object",
            "description": "Extra headers sent with every attempt: not the relay's own \
                (`content-type`, `content-length`, `host`, `transfer-encoding`, `connection`, \
                `user-agent`, `webhook-*`, `hookrelay-*`), nor `authorization` with `auth`. On \
                PUT, a value of `{}` (as shown) keeps the stored one.",
            "propertyNames": {"type": "string", "pattern": r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"},
            "additionalProperties": or_kept(json!({"type": "string", "pattern": "^[\\t -~]*$"}), replace)})),
    );
    p.insert("encoding".into(), nullable(reference("EncodingInput")));
    p.insert("signing".into(), nullable(variant("Signing", replace)));
    // One schema for POST and PUT: a key left out is told apart by the validator.
    p.insert("tls".into(), nullable(reference("TlsInput")));
    on_gone(&mut p);
    with_description(
        object(Json::Object(p), &["url", "events"]),
        "A push subscription: each matching event is POSTed to `url`.",
    )
}

fn email(replace: bool) -> Json {
    let mut p = serde_json::Map::new();
    common(&mut p);
    delivery(&mut p);
    p.insert("mode".into(), json!({"type": "string", "enum": ["email"]}));
    p.insert("email".into(), variant("EmailSettings", replace));
    with_description(
        object(Json::Object(p), &["mode", "email", "events"]),
        "An e-mail subscription: each matching event is mailed, with the push rules for \
         retries and ordering.",
    )
}

fn pull() -> Json {
    let mut p = serde_json::Map::new();
    common(&mut p);
    p.insert("mode".into(), json!({"type": "string", "enum": ["pull"]}));
    p.insert("pull".into(), nullable(reference("PullSettingsInput")));
    with_description(
        object(Json::Object(p), &["mode", "events"]),
        "A pull subscription: matching events wait in a FIFO queue that a consumer takes \
         from `/v1/subscriptions/{id}/notifications`.",
    )
}

fn backoff() -> Json {
    let floor = duration(
        UP_TO_A_DAY,
        "Least delay after a 429 or a timeout, `0s`..`24h`; default `60s`.",
    );
    let absent = json!({"type": "null"});
    let schedule = object(
        json!({
            "schedule": {"type": "array", "minItems": 1, "maxItems": 20,
                "description": "Delays before each retry, each `0s`..`24h`; the last repeats.",
                "items": pattern(UP_TO_A_DAY, "A delay, `0s`..`24h`.")},
            "overload_floor": floor,
            "initial": absent, "max": absent, "multiplier": absent,
        }),
        &["schedule"],
    );
    let exponential = object(
        json!({
            "initial": duration(INITIAL, "First delay, `1ms`..`24h`; default `5s`."),
            "max": duration(MAX, "Largest delay, `1ms`..`7d`, not below `initial`; default `1h`."),
            "multiplier": nullable(json!({"type": "number", "minimum": 1, "maximum": 100,
                "description": "Growth per retry; default 2."})),
            "overload_floor": floor,
            "schedule": absent,
        }),
        &[],
    );
    json!({"description": "Spacing of retries: `schedule`, or the exponential \
        `initial`/`max`/`multiplier` (not both). Default schedule: 5s, 5m, 30m, 2h, 5h, 10h, \
        the last step repeating. Every delay gets ±20% jitter.",
        "oneOf": [schedule, exponential],
        "example": {"schedule": ["1s", "30s", "5m"]}})
}

fn success_code() -> Json {
    let one = json!({"oneOf": [
        {"type": "integer", "minimum": 100, "maximum": 599},
        {"type": "string", "pattern": "^[1-5]xx$"},
    ]});
    json!({"description": "Statuses that count as delivered: a status (100..=599), a class \
        such as `\"2xx\"`, or a list of them; default `\"2xx\"`.",
        "oneOf": [one, {"type": "array", "minItems": 1, "items": one}],
        "example": [200, 202]})
}

fn auth(replace: bool) -> Json {
    let absent = json!({"type": "null"});
    let basic = object(
        json!({
            "basic": object(json!({
                "username": {"type": "string", "pattern": "^[^:]*$", "description": "User name, without `:`."},
                "password": {"type": "string", "writeOnly": true, "description": "A secret, never shown; on PUT, leaving it out keeps the stored one."},
            }), if replace { &["username"] } else { &["username", "password"] }),
            "bearer": absent,
        }),
        &["basic"],
    );
    let token = pattern(TOKEN, "The token: visible ASCII; a secret, never shown.");
    let bearer = object(
        json!({
            // On PUT, `{}` is the object form without its token: the stored one is kept.
            "bearer": {"oneOf": [token, object(json!({"token": token}),
                if replace { &[] } else { &["token"] })]},
            "basic": absent,
        }),
        &["bearer"],
    );
    let oauth2 = object(
        json!({
            "oauth2": object(json!({
                "token_url": {"type": "string", "format": "uri", "description": "The token \
                    endpoint: https, or http to a loopback address; checked by the destination guard."},
                "client_id": {"type": "string", "minLength": 1, "description": "The client's id; not secret."},
                "client_secret": {"type": "string", "minLength": 1, "writeOnly": true, "description": "A \
                    secret, never shown; on PUT, leaving it out keeps the stored one while \
                    `token_url` and `client_id` are unchanged."},
                "scopes": {"type": "array", "items": pattern(r#"^[!#-\[\]-~]+$"#,
                    "An RFC 6749 scope-token."), "description": "Sent space-separated as `scope`."},
                "audience": {"type": "string", "minLength": 1, "description": "Sent as the `audience` form field."},
                "auth_style": {"type": "string", "enum": ["basic", "body"], "description": "`basic` \
                    (default): `Authorization: Basic`; `body`: `client_id` and `client_secret` form fields."},
            }), if replace { &["token_url", "client_id"] } else { &["token_url", "client_id", "client_secret"] }),
            "basic": absent,
            "bearer": absent,
        }),
        &["oauth2"],
    );
    json!({"description": "Credentials sent with every attempt: `basic`, `bearer` or `oauth2` \
        (client credentials: the relay fetches and refreshes the bearer token). On PUT, \
        `bearer` sent as `{}` (as shown) keeps the stored token.",
        "oneOf": [basic, bearer, oauth2], "example": {"bearer": "crm-s3cret"}})
}

fn tls() -> Json {
    let pem = |what: &str| {
        pattern(
            r"^\s*-----BEGIN ",
            &format!("{what}, as PEM text (file paths are for the config file only)."),
        )
    };
    let mut key =
        pem("The client certificate's private key (PKCS#8, PKCS#1 or SEC1, not encrypted)");
    key["writeOnly"] = true.into();
    key["description"] = format!(
        "{} A secret, never shown; on PUT, leaving it out keeps the stored one.",
        key["description"].as_str().unwrap_or_default()
    )
    .into();
    json!({"type": "object", "additionalProperties": false,
    "description": "TLS to the receiver (`https` URLs only): a client certificate and its \
        key (mutual TLS, given together; on PUT the key may be left out to keep the \
        stored one), a CA trusted instead of the system roots, and \
        the name the receiver's certificate is checked against instead of the URL's host. \
        Verification cannot be turned off.",
    "properties": {
        "client_cert": pem("The client certificate, then its chain"),
        "client_key": key,
        "ca": pem("The certificates trusted instead of the system roots"),
        "server_name": {"type": "string", "minLength": 1,
            "description": "A DNS name or IP address checked against the receiver's certificate; the SNI stays the URL's host."},
    }})
}

fn encoding() -> Json {
    json!({"description": "How each attempt carries the event: `raw` (default: the data or \
        body as received), `envelope` (JSON `{\"id\", \"type\", \"received_at\", \"data\"}`), \
        or `{\"form\": {\"field\": NAME}}` (`application/x-www-form-urlencoded` with the data \
        in that field).",
        "oneOf": [
            {"type": "string", "enum": ["raw", "envelope"]},
            object(json!({"form": object(json!({"field": {"type": "string",
                "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]{1,128}$",
                "description": "The field's name, 1 to 128 characters, no control characters."}}),
                &["field"])}), &["form"]),
        ],
        "example": {"form": {"field": "request"}}})
}

fn signing(replace: bool) -> Json {
    with_description(
        object(
            json!({"secrets": {"type": "array", "minItems": 1, "maxItems": 10,
                "description": "Two at once rotate a key without downtime. On PUT, a secret \
                    sent back as `{}` (as shown) keeps the stored one at that position.",
                "items": or_kept(json!({"type": "string", "pattern": SIGNING_SECRET, "writeOnly": true}), replace),
                "example": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}}),
            &["secrets"],
        ),
        "Standard Webhooks signing: every attempt carries `webhook-signature` with one `v1,` \
         entry per secret (`whsec_` + base64 of 24 to 64 bytes).",
    )
}

fn ordering() -> Json {
    json!({"description": "Delivery order: `none` (default, fully parallel), `fifo` (one at \
        a time, in acceptance order), or `{\"key\": FIELD}` (in acceptance order per value of \
        that field of `data`). While a key's oldest delivery is retrying, the later ones wait.",
        "oneOf": [
            {"type": "string", "enum": ["none", "fifo"]},
            object(json!({"key": pattern(FIELD_PATH, "A dotted path or a JSON Pointer.")}), &["key"]),
        ],
        "example": {"key": "sender.id"}})
}

fn rate_limit() -> Json {
    with_description(
        object(
            json!({
                "per_second": {"type": "number", "minimum": 0.0001, "maximum": 1_000_000,
                    "description": "Attempts per second: one per 10,000 s at the slowest."},
                "burst": integer(1, 100_000, "Attempts allowed at once above the rate; default 1."),
            }),
            &["per_second"],
        ),
        "An outbound rate limit; attempts wait for it, none is dropped.",
    )
}

fn email_settings(replace: bool) -> Json {
    let mailbox = pattern(
        &format!("^[a-z0-9]{{1,8}}([._+-][a-z0-9]{{1,8}}){{0,3}}@{HOST}$"),
        "An address; `Name <a@example.com>` is accepted too.",
    );
    let smtp = |credentials: bool| {
        let mut p = json!({
            "host": pattern(&format!("^{HOST}$"), "Host name or address; checked by the destination guard."),
            "port": integer(1, 65_535, "Default by `tls`: 25 (`none`), 587 (`starttls`), 465 (`tls`)."),
            "tls": {"type": ["string", "null"], "enum": ["none", "starttls", "tls", null],
                "description": "`starttls` (default), `tls` (SMTPS) or `none`. Certificates are always verified."},
        });
        if credentials {
            p["username"] = json!({"type": "string", "description": "SMTP AUTH user name."});
            p["password"] = json!({"type": "string", "writeOnly": true,
                "description": "A secret, never shown; on PUT, leaving it out (same `username`) keeps the stored one."});
            object(
                p,
                if replace {
                    &["host", "username"]
                } else {
                    &["host", "username", "password"]
                },
            )
        } else {
            p["username"] = json!({"type": "null"});
            p["password"] = json!({"type": "null"});
            object(p, &["host"])
        }
    };
    with_description(
        object(
            json!({
                "to": {"oneOf": [mailbox, {"type": "array", "minItems": 1, "maxItems": 50, "items": mailbox}],
                    "description": "Recipients, 1 to 50."},
                "from": mailbox,
                "subject_template": nullable(pattern(r"^([^{}\r\n]|\{type\}|\{id\})*$",
                    "One line with `{type}` and `{id}` placeholders only; default `{type} {id}`.")),
                "smtp": {"description": "The SMTP server; `username` and `password` go together.",
                    "oneOf": [smtp(true), smtp(false)]},
            }),
            &["to", "from", "smtp"],
        ),
        "Each delivery becomes one mail whose body is the event's data as received.",
    )
}

fn pull_settings() -> Json {
    with_description(
        object(
            json!({
                "ack": {"type": ["string", "null"], "enum": ["explicit", "auto", null],
                    "description": "`explicit` (default): queued until acknowledged; `auto`: taking consumes."},
                "visibility_timeout": duration(VISIBILITY,
                    "How long a taken, unacknowledged notification is hidden; `0s`..`12h`, default `30s`."),
                "ttl": duration(TTL, "Expiry after acceptance, `1s`..`365d`; default `72h`."),
                "token": nullable(pattern(TOKEN,
                    "A bearer token for this subscription's notification endpoints; a secret, \
                     never shown. On PUT, leaving it out keeps the stored one.")),
            }),
            &[],
        ),
        "Settings of a pull subscription.",
    )
}

/// Declares a component whose schema is written as JSON by `build`.
macro_rules! component {
    ($(#[$doc:meta])* $name:ident, $build:expr $(, $dep:ident)*) => {
        $(#[$doc])*
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                serde_json::from_value($build).expect("a valid schema")
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }

            #[allow(unused_variables)]
            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                $(
                    schemas.push(($dep::name().into(), $dep::schema()));
                    <$dep as ToSchema>::schemas(schemas);
                )*
            }
        }
    };
}

component!(
    /// A subscription document, one shape per `mode`.
    SubscriptionInput,
    json!({"description": "A subscription document, as POST and PUT take it: the YAML \
        entry's fields as JSON, with the same rules and ranges, plus `metrics`. On PUT, `id`, \
        `name`, `source`, `created_at` and `updated_at` may be sent back unchanged.",
        "oneOf": [reference("PushSubscriptionInput"), reference("EmailSubscriptionInput"),
            reference("PullSubscriptionInput")],
        "example": {"name": "crm", "url": "http://127.0.0.1:9000/crm",
            "events": ["customer.*"], "retries": 3, "auth": {"bearer": "crm-s3cret"}}}),
    PushSubscriptionInput,
    EmailSubscriptionInput,
    PullSubscriptionInput
);
component!(
    /// A subscription document as PUT takes it: secrets may be kept as shown.
    SubscriptionReplacement,
    json!({"description": "A subscription document, as PUT takes it: as POST's, except that \
        secrets may be sent back as the API shows them to keep the stored ones (`{}` for a \
        header value, a signing secret or `auth.bearer`; a basic or SMTP password or \
        `tls.client_key` left out). \
        Keeping a secret that is not stored is `409`.",
        "oneOf": [reference("PushSubscriptionReplacement"),
            reference("EmailSubscriptionReplacement"), reference("PullSubscriptionInput")]}),
    PushSubscriptionReplacement,
    EmailSubscriptionReplacement,
    PullSubscriptionInput
);
component!(
    /// A push subscription's document on PUT.
    PushSubscriptionReplacement,
    push(true),
    FilterInput,
    BackoffInput,
    RateLimitInput,
    OrderingInput,
    SuccessCodeInput,
    AuthReplacement,
    EncodingInput,
    SigningReplacement,
    TlsInput
);
component!(
    /// An e-mail subscription's document on PUT.
    EmailSubscriptionReplacement,
    email(true),
    FilterInput,
    BackoffInput,
    RateLimitInput,
    OrderingInput,
    EmailSettingsReplacement
);
component!(
    /// Credentials on PUT.
    AuthReplacement,
    auth(true)
);
component!(
    /// Signing on PUT.
    SigningReplacement,
    signing(true)
);
component!(
    /// E-mail settings on PUT.
    EmailSettingsReplacement,
    email_settings(true)
);
component!(
    /// A push subscription's document.
    PushSubscriptionInput,
    push(false),
    FilterInput,
    BackoffInput,
    RateLimitInput,
    OrderingInput,
    SuccessCodeInput,
    AuthInput,
    EncodingInput,
    SigningInput,
    TlsInput
);
component!(
    /// An e-mail subscription's document.
    EmailSubscriptionInput,
    email(false),
    FilterInput,
    BackoffInput,
    RateLimitInput,
    OrderingInput,
    EmailSettingsInput
);
component!(
    /// A pull subscription's document.
    PullSubscriptionInput,
    pull(),
    FilterInput,
    PullSettingsInput
);
component!(
    /// A filter on the event.
    FilterInput,
    filter()
);
component!(
    /// Spacing of retries.
    BackoffInput,
    backoff()
);
component!(
    /// An outbound rate limit.
    RateLimitInput,
    rate_limit()
);
component!(
    /// Delivery order.
    OrderingInput,
    ordering()
);
component!(
    /// Statuses that count as delivered.
    SuccessCodeInput,
    success_code()
);
component!(
    /// Credentials sent with every attempt.
    AuthInput,
    auth(false)
);
component!(
    /// How each attempt carries the event.
    EncodingInput,
    encoding()
);
component!(
    /// Standard Webhooks signing.
    SigningInput,
    signing(false)
);
component!(
    /// TLS to the receiver.
    TlsInput,
    tls()
);
component!(
    /// An e-mail subscription's settings.
    EmailSettingsInput,
    email_settings(false)
);
component!(
    /// A pull subscription's settings.
    PullSettingsInput,
    pull_settings()
);

#[cfg(test)]
mod tests;
