//! The `delivery` section: what all push subscriptions share (the relay-wide cap on
//! attempts in flight, and an outbound proxy).

use reqwest::Url;

use crate::yaml::{Issues, Section};

/// Outbound settings shared by all subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Attempts in flight across all subscriptions.
    pub max_in_flight_total: usize,
    /// Attempts in flight across all API subscriptions together; `None`: a quarter of the
    /// total, or what the config subscriptions leave if that is less.
    pub api_max_in_flight: Option<usize>,
    /// Proxy for outbound requests; never taken implicitly from the environment.
    pub proxy: Option<Url>,
}

impl DeliverySettings {
    /// Reads the `delivery` section of the config root.
    pub fn parse(root: &Section<'_>, issues: &mut Issues) -> DeliverySettings {
        let d = root.section(
            "delivery",
            &["max_in_flight_total", "api_max_in_flight", "proxy"],
            issues,
        );
        DeliverySettings {
            max_in_flight_total: d.integer("max_in_flight_total", 1..=65_536, 512, issues) as usize,
            api_max_in_flight: d
                .has("api_max_in_flight")
                .then(|| d.integer("api_max_in_flight", 0..=65_536, 0, issues) as usize),
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

impl DeliverySettings {
    /// The slots API subscriptions share, once the config subscriptions have `config_slots`.
    pub fn api_pool(&self, config_slots: usize) -> usize {
        let left = self.max_in_flight_total.saturating_sub(config_slots);
        self.api_max_in_flight
            .unwrap_or(self.max_in_flight_total / 4)
            .min(left)
    }

    /// The most one API subscription may hold of `pool`: half, so that one hanging receiver
    /// leaves the other half to the rest.
    pub fn api_share(pool: usize) -> usize {
        (pool / 2).max(1)
    }
}
