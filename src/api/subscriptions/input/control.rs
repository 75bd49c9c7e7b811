//! The delivery control members of push and e-mail documents: `circuit`, `paused` and (HTTP
//! only) `on_gone`.

use serde_json::{Map, Value as Json, json};

use super::{integer, nullable, object, pattern};

/// Durations within `100ms..=1h`.
pub(super) const HOUR_OR_LESS: &str =
    r"^([1-9][0-9]{2,5}ms|[1-9][0-9]{0,2}s|([1-9]|[1-5][0-9]|60)m|1h)$";
/// Durations within `100ms..=24h`.
pub(super) const DAY_OR_LESS: &str =
    r"^([1-9][0-9]{2,5}ms|[1-9][0-9]{0,3}s|[1-9][0-9]{0,2}m|([1-9]|1[0-9]|2[0-4])h)$";

/// `circuit` and `paused`, which push and e-mail subscriptions have.
pub(super) fn control(properties: &mut Map<String, Json>) {
    let duration = |p: &str, d: &str| {
        nullable(pattern(
            p,
            &format!("{d} Durations as `250ms`, `10s`, `5m` or `1h`."),
        ))
    };
    let settings = object(
        json!({
            "enabled": {"type": ["boolean", "null"],
                "description": "`false` turns the breaker off; default `true`."},
            "failures": integer(1, 1000,
                "Consecutive failed attempts (no answer, 408, 429, 5xx) that open it; default 5."),
            "window": duration(HOUR_OR_LESS,
                "A streak of failures older than this starts again, `100ms`..`1h`; default `30s`."),
            "cool_down": duration(HOUR_OR_LESS,
                "How long it stays open before one probe, `100ms`..`1h`; default `30s`; doubled by each failed probe."),
            "max_cool_down": duration(DAY_OR_LESS,
                "The longest cool-down, `100ms`..`24h`, not below `cool_down`; default `10m`."),
            "failure_ratio": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1,
                "description": "Also opens it when this share of the attempts in a `window` \
                    failed (a fixed window from its first attempt), once there were \
                    `min_attempts`; default none (the rule is off)."},
            "min_attempts": integer(1, 100_000,
                "Attempts in a window before `failure_ratio` counts; default 20; only with `failure_ratio`."),
        }),
        &[],
    );
    properties.insert(
        "circuit".into(),
        json!({"oneOf": [{"type": "string", "enum": ["off"]}, settings, {"type": "null"}],
            "description": "The circuit breaker, on by default: after `failures` consecutive \
                failed attempts (or, with `failure_ratio`, that share of the attempts in a \
                window) no attempt goes out (deliveries wait queued) until one probe \
                after `cool_down` succeeds. `off` turns it off.",
            "example": {"failures": 5, "window": "30s", "cool_down": "30s", "max_cool_down": "10m"}}),
    );
    properties.insert(
        "paused".into(),
        json!({"type": ["boolean", "null"], "description":
            "Starts paused: events keep queueing, nothing is sent until resumed \
             (`POST /v1/subscriptions/{id}/resume`). Once paused or resumed through the API, \
             that stored state wins."}),
    );
}

/// `on_gone`, which HTTP push subscriptions have.
pub(super) fn on_gone(properties: &mut Map<String, Json>) {
    properties.insert(
        "on_gone".into(),
        json!({"type": ["string", "null"], "enum": ["pause", "fail", null],
            "description": "What a `410 Gone` does: `pause` (default) pauses the subscription \
                (reason `gone`) and keeps the delivery queued; `fail` fails that delivery."}),
    );
}
