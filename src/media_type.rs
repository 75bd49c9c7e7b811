//! Media types: whether a `Content-Type` declares JSON. A leaf shared by the inbound edge
//! (which bodies are read as JSON) and events (which raw bodies filters may look into).

/// `application/json` or any `application/*+json` type, parameters allowed, in any case.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let (Some(head), Some(tail)) = (
        essence.get(.."application/".len()),
        essence.get(essence.len().saturating_sub(5)..),
    ) else {
        return false;
    };
    head.eq_ignore_ascii_case("application/")
        && (essence.len() == "application/json".len() && tail.eq_ignore_ascii_case("/json")
            || essence.len() > "application/".len() + 5 && tail.eq_ignore_ascii_case("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/cloudevents+json",
        ] {
            assert!(is_json(ct), "{ct}");
        }
        for ct in [
            "text/json",
            "application/xml",
            "application/+json",
            "application/jsonx",
            "",
            "é",
        ] {
            assert!(!is_json(ct), "{ct}");
        }
    }
}
