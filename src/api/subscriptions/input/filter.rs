//! The filter schema: `{}`, `all`, `any`, `not`, or one of 16 condition shapes (a field or an
//! attribute, with one operator).

use serde_json::{Value as Json, json};

use super::{FIELD_PATH, nullable, object, pattern, reference};

/// An attribute name (`hookrelay-attr-NAME`).
const ATTR: &str = r"^[a-z0-9_-]{1,64}$";

/// A filter: `{}` (everything), `all`, `any` (at least one), `not`, or one condition.
pub(super) fn filter() -> Json {
    let me = reference("FilterInput");
    let mut variants = vec![
        json!({"type": "object", "maxProperties": 0, "description": "Matches everything."}),
        object(json!({"all": {"type": "array", "items": me}}), &["all"]),
        object(
            json!({"any": {"type": "array", "minItems": 1, "items": me}}),
            &["any"],
        ),
        object(json!({"not": me}), &["not"]),
    ];
    let scalar = json!({"type": ["string", "number", "boolean"]});
    let number = json!({"type": "number"});
    let instant = json!({"type": "string", "format": "date-time"});
    let absent = json!({"type": "null"});
    // (the operand members, the one required, whether `ignore_case` applies)
    let operators: [(Json, &str, bool); 8] = [
        (json!({"equals": scalar}), "equals", true),
        (
            json!({"in": {"type": "array", "minItems": 1, "items": scalar}}),
            "in",
            true,
        ),
        (json!({"contains": scalar}), "contains", true),
        (json!({"exists": {"type": "boolean"}}), "exists", false),
        (
            json!({"from": number, "to": nullable(number.clone())}),
            "from",
            false,
        ),
        (json!({"to": number}), "to", false),
        (
            json!({"from": instant, "to": nullable(instant.clone())}),
            "from",
            false,
        ),
        (json!({"to": instant}), "to", false),
    ];
    for target in ["field", "attr"] {
        for (operand, required, case) in &operators {
            let mut p = serde_json::Map::new();
            for key in [
                "field", "attr", "equals", "in", "contains", "from", "to", "exists",
            ] {
                p.insert(key.into(), absent.clone());
            }
            p.insert(
                target.into(),
                if target == "field" {
                    pattern(FIELD_PATH, "A dotted path (`sender.id`) or a JSON Pointer.")
                } else {
                    pattern(ATTR, "A raw event's attribute (`hookrelay-attr-NAME`).")
                },
            );
            for (k, v) in operand.as_object().expect("an object") {
                p.insert(k.clone(), v.clone());
            }
            p.insert(
                "ignore_case".into(),
                if *case {
                    json!({"type": ["boolean", "null"]})
                } else {
                    absent.clone()
                },
            );
            variants.push(object(Json::Object(p), &[target, required]));
        }
    }
    json!({"description": "A filter on the event: a condition, or `all`, `any` or `not` over \
        filters; `{}` matches everything. A condition looks at one `field` of `data` or one \
        `attr` of a raw event, with one operator: `equals`, `in`, `contains`, `exists`, or a \
        range `from`/`to` (both numbers or both RFC 3339 times, `from` not after `to`); \
        `ignore_case` applies to `equals`, `in` and `contains`.",
        "oneOf": variants,
        "example": {"all": [{"field": "currency", "in": ["EUR", "USD"]},
                            {"not": {"field": "test", "equals": true}}]}})
}
