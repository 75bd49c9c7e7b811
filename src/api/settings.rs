//! The `api` section: authentication of the api listener and the bounds on subscriptions
//! registered through it.

use std::net::SocketAddr;

use crate::deliver::destination::Allowed;
use crate::secret::{Secret, TOKEN_RULE, is_token};
use crate::yaml::{Issues, Section, as_list, as_string, index};

/// Management API settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// When set, every request on `listen.api` but the OpenAPI document needs this bearer token.
    pub token: Option<Secret>,
    /// Where API-registered subscriptions may deliver; empty means anywhere not refused.
    pub allowed_destinations: Vec<Allowed>,
    /// Most subscriptions registered through the API.
    pub max_subscriptions: usize,
}

impl ApiSettings {
    /// Reads the `api` section of the config root; an api listener on `api` (not a loopback
    /// address) needs a token or an explicit opt-out.
    pub fn parse(root: &Section<'_>, api: SocketAddr, issues: &mut Issues) -> ApiSettings {
        let a = root.section(
            "api",
            &[
                "token",
                "allow_unauthenticated",
                "allowed_destinations",
                "max_subscriptions",
            ],
            issues,
        );
        let token = a.string("token", issues).map(Secret::new);
        match &token {
            Some(t) if t.expose().is_empty() => issues.push(
                &a.at("token"),
                "must not be empty (omit it to disable API auth)",
            ),
            Some(t) if !is_token(t.expose()) => issues.push(&a.at("token"), TOKEN_RULE),
            _ => {}
        }
        let allow_unauthenticated = a.boolean("allow_unauthenticated", false, issues);
        if !api.ip().is_loopback() && token.is_none() && !allow_unauthenticated {
            issues.push(
                "api.token",
                format!(
                    "is required because listen.api ({api}) is not a loopback address; set it, or set api.allow_unauthenticated: true on purpose"
                ),
            );
        }
        let mut allowed_destinations = Vec::new();
        if let Some(v) = a.get("allowed_destinations") {
            let at = a.at("allowed_destinations");
            for (i, item) in as_list(v, &at, issues)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let path = index(&at, i);
                if let Some(text) = as_string(item, &path, issues) {
                    match Allowed::parse(&text) {
                        Some(entry) => allowed_destinations.push(entry),
                        None => issues.push(
                            &path,
                            format!(
                                "{text:?} is not a host name, *.domain, IP address or CIDR network"
                            ),
                        ),
                    }
                }
            }
        }
        ApiSettings {
            token,
            allowed_destinations,
            max_subscriptions: a.integer("max_subscriptions", 0..=100_000, 10_000, issues) as usize,
        }
    }
}
