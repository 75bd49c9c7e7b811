use super::*;

#[test]
fn every_component_is_registered_and_served_as_written() {
    let mut all = Vec::new();
    SubscriptionInput::schemas(&mut all);
    SubscriptionReplacement::schemas(&mut all);
    let written = [
        ("PushSubscriptionInput", push(false)),
        ("EmailSubscriptionInput", email(false)),
        ("PullSubscriptionInput", pull()),
        ("FilterInput", filter()),
        ("BackoffInput", backoff()),
        ("RateLimitInput", rate_limit()),
        ("OrderingInput", ordering()),
        ("SuccessCodeInput", success_code()),
        ("AuthInput", auth(false)),
        ("EncodingInput", encoding()),
        ("SigningInput", signing(false)),
        ("TlsInput", tls()),
        ("EmailSettingsInput", email_settings(false)),
        ("PullSettingsInput", pull_settings()),
        ("PushSubscriptionReplacement", push(true)),
        ("EmailSubscriptionReplacement", email(true)),
        ("AuthReplacement", auth(true)),
        ("SigningReplacement", signing(true)),
        ("EmailSettingsReplacement", email_settings(true)),
    ];
    for (name, json) in written {
        let (_, schema) = all
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is registered"));
        // The OpenAPI model keeps every keyword: nothing is dropped on the way out.
        assert_eq!(serde_json::to_value(schema).unwrap(), json, "{name}");
    }
}

/// Every duration a pattern matches is within the range the validator enforces, and
/// each range's ends are matched.
#[test]
fn duration_patterns_stay_within_their_ranges() {
    use std::time::Duration;
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    let cases = [
        (TIMEOUT, ms(100)..=s(60)),
        (UP_TO_A_DAY, s(0)..=s(86_400)),
        (INITIAL, ms(1)..=s(86_400)),
        (MAX, ms(1)..=s(7 * 86_400)),
        (VISIBILITY, s(0)..=s(12 * 3600)),
        (TTL, s(1)..=s(365 * 86_400)),
        (control::HOUR_OR_LESS, ms(100)..=s(3600)),
        (control::DAY_OR_LESS, ms(100)..=s(86_400)),
    ];
    for (p, range) in cases {
        let re = regex::Regex::new(p).unwrap();
        let mut seen = (false, false);
        for unit in ["ms", "s", "m", "h", "d"] {
            for n in (0..1000).chain((1000..200_000).step_by(7)) {
                let text = format!("{n}{unit}");
                if !re.is_match(&text) {
                    continue;
                }
                let d = humantime::parse_duration(&text).unwrap();
                assert!(range.contains(&d), "{p} matches {text}, outside {range:?}");
                seen.0 |= d == *range.start();
                seen.1 |= d == *range.end();
            }
        }
        assert!(seen.0 && seen.1, "{p} reaches both ends of {range:?}");
    }
}

#[test]
fn patterns_hold_what_the_validator_takes() {
    let full = |p: &str, s: &str| regex::Regex::new(p).unwrap().is_match(s);
    assert!(full(NAME, "billing") && full(NAME, "_apis") && full(NAME, "_ap"));
    assert!(!full(NAME, "_api") && !full(NAME, "Billing") && !full(NAME, ""));
    assert!(full(TIMEOUT, "100ms") && full(TIMEOUT, "60s") && full(TIMEOUT, "59999ms"));
    assert!(!full(TIMEOUT, "99ms") && !full(TIMEOUT, "61s") && !full(TIMEOUT, "60000ms"));
    assert!(full(MAX, "168h") && full(MAX, "7d") && !full(MAX, "169h") && !full(MAX, "8d"));
    assert!(full(TTL, "365d") && !full(TTL, "366d") && !full(TTL, "0s"));
    let key = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    assert!(full(
        SIGNING_SECRET,
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwAA"
    ));
    assert!(full(SIGNING_SECRET, key));
    assert!(crate::signing::SigningKey::parse(key).is_ok());
    use base64::Engine;
    for n in 20..70 {
        let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
        let padded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        for text in [padded.clone(), padded.trim_end_matches('=').to_string()] {
            let secret = format!("whsec_{text}");
            let takes = crate::signing::SigningKey::parse(&secret).is_ok();
            assert_eq!(full(SIGNING_SECRET, &secret), takes, "{n} bytes: {secret}");
        }
    }
}
