//! The schemas of a push subscription's retry policy (`final_statuses`) and concurrency
//! (`max_in_flight`, fixed or adaptive).

use serde_json::{Value as Json, json};

use super::{integer, nullable, object};

/// `max_in_flight`: a number, `auto`, or `{"auto": true, "max": N}`.
pub(super) fn max_in_flight() -> Json {
    json!({"description": "Concurrent attempts at most: a fixed `N` (1..=1024; default 8), \
        or `auto` (`{\"auto\": true, \"max\": N}`, `max` default 64): the limit adapts to \
        the receiver's latency and failures (AIMD) within 1..=`max`.",
        "oneOf": [
            {"type": "integer", "minimum": 1, "maximum": 1024},
            {"type": "string", "enum": ["auto"]},
            object(json!({"auto": {"type": "boolean", "enum": [true]},
                "max": integer(1, 1024, "The ceiling; default 64.")}), &["auto"]),
            {"type": "null"},
        ],
        "example": {"auto": true, "max": 32}})
}

/// `final_statuses`: statuses and classes that fail a delivery at once.
pub(super) fn final_statuses() -> Json {
    nullable(
        json!({"type": "array", "uniqueItems": true, "maxItems": 500,
            "description": "Statuses that fail a delivery at once, without retries: statuses \
                (100..=599) and classes such as `\"4xx\"`; a class leaves 408 and 429 \
                retryable unless they are named too. None may also be a `success_code`, and \
                none may be listed twice (a status inside a listed class counts as listed). \
                Default none: every status but the success codes and 410 is retried.",
            "items": {"oneOf": [
                {"type": "integer", "minimum": 100, "maximum": 599},
                {"type": "string", "pattern": "^[1-5]xx$"},
            ]},
            "example": [400, 401, 403, 404, 422]}),
    )
}
