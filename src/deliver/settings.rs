//! The `delivery` section: what all push subscriptions share (the relay-wide cap on
//! attempts in flight, and an outbound proxy).

use reqwest::Url;

use crate::yaml::{Issues, Section};

/// Outbound settings shared by all subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Attempts in flight across all subscriptions.
    pub max_in_flight_total: usize,
    /// Proxy for outbound requests; never taken implicitly from the environment.
    pub proxy: Option<Url>,
}

impl DeliverySettings {
    /// Reads the `delivery` section of the config root.
    pub fn parse(root: &Section<'_>, issues: &mut Issues) -> DeliverySettings {
        let d = root.section("delivery", &["max_in_flight_total", "proxy"], issues);
        DeliverySettings {
            max_in_flight_total: d.integer("max_in_flight_total", 1..=65_536, 512, issues) as usize,
            proxy: d
                .string("proxy", issues)
                .and_then(|p| match Url::parse(&p) {
                    Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                        // A URL is printed in logs and Debug output; credentials must not be.
                        issues.push(&d.at("proxy"), "must not carry credentials");
                        None
                    }
                    Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
                    _ => {
                        issues.push(&d.at("proxy"), "is not an http:// or https:// proxy URL");
                        None
                    }
                }),
        }
    }
}
