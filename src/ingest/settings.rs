//! The `ingest` section: authentication of the app listener.

use std::net::SocketAddr;

use crate::secret::{Secret, TOKEN_RULE, is_token};
use crate::yaml::{Issues, Section};

/// Ingest authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestSettings {
    /// When set, `POST /v1/events` needs `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
}

impl IngestSettings {
    /// Reads the `ingest` section of the config root; an app listener on `app` (not a
    /// loopback address) needs a token or an explicit opt-out.
    pub fn parse(root: &Section<'_>, app: SocketAddr, issues: &mut Issues) -> IngestSettings {
        let ing = root.section("ingest", &["token", "allow_unauthenticated"], issues);
        let ingest = IngestSettings {
            token: ing.string("token", issues).map(Secret::new),
        };
        match &ingest.token {
            Some(t) if t.expose().is_empty() => issues.push(
                &ing.at("token"),
                "must not be empty (omit it to disable ingest auth)",
            ),
            Some(t) if !is_token(t.expose()) => issues.push(&ing.at("token"), TOKEN_RULE),
            _ => {}
        }

        let ingest_open = ing.boolean("allow_unauthenticated", false, issues);
        if !app.ip().is_loopback() && ingest.token.is_none() && !ingest_open {
            issues.push(
                "ingest.token",
                format!(
                    "is required because listen.app ({app}) is not a loopback address; set it, or set ingest.allow_unauthenticated: true on purpose"
                ),
            );
        }
        ingest
    }
}
