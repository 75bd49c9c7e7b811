//! The `limits` section: bounds on every inbound connection and request, applied by the
//! accept loop (connections, header and idle timeouts), the listeners' hardening layers
//! (timeout, concurrency, body size) and by ingest (batches, data depth).

use std::time::Duration;

use crate::yaml::{Issues, Section};

/// Inbound limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body: usize,
    /// Bound on every inbound request.
    pub request_timeout: Duration,
    /// Requests served at once per listener; more are answered 503.
    pub max_concurrent_requests: usize,
    /// Most events in one batch request.
    pub max_batch: usize,
    /// Largest batch request body.
    pub max_batch_body: usize,
    /// Deepest nesting of arrays and objects in event data that filters read.
    pub max_depth: usize,
    /// Time a client has to send a request's head, from its first byte.
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request in progress.
    pub idle_timeout: Duration,
    /// Connections open at once per listener; more are closed at once.
    pub max_connections: usize,
}

/// Most `limits.max_depth` may be: filters and ordering keys parse data with serde_json,
/// whose recursion limit is 128 levels; this leaves room for the wrapping around data.
pub const MAX_DEPTH_LIMIT: u64 = 100;

impl Limits {
    /// Reads the `limits` section of the config root.
    pub fn parse(root: &Section<'_>, issues: &mut Issues) -> Limits {
        let lim = root.section(
            "limits",
            &[
                "max_body",
                "request_timeout",
                "max_concurrent_requests",
                "max_batch",
                "max_batch_body",
                "max_depth",
                "header_read_timeout",
                "idle_timeout",
                "max_connections",
            ],
            issues,
        );
        Limits {
            max_body: lim.size("max_body", 1024..=64 * 1024 * 1024, 1024 * 1024, issues) as usize,
            request_timeout: lim.duration(
                "request_timeout",
                Duration::from_millis(100)..=Duration::from_secs(300),
                Duration::from_secs(10),
                issues,
            ),
            max_concurrent_requests: lim.integer(
                "max_concurrent_requests",
                1..=100_000,
                1024,
                issues,
            ) as usize,
            max_batch: lim.integer("max_batch", 1..=10_000, 500, issues) as usize,
            max_batch_body: lim.size(
                "max_batch_body",
                1024..=256 * 1024 * 1024,
                16 * 1024 * 1024,
                issues,
            ) as usize,
            max_depth: lim.integer("max_depth", 1..=MAX_DEPTH_LIMIT, 64, issues) as usize,
            header_read_timeout: lim.duration(
                "header_read_timeout",
                Duration::from_millis(100)..=Duration::from_secs(300),
                Duration::from_secs(10),
                issues,
            ),
            idle_timeout: lim.duration(
                "idle_timeout",
                Duration::from_millis(100)..=Duration::from_secs(3600),
                Duration::from_secs(60),
                issues,
            ),
            // Three listeners at 256 stay under the common soft limit of 1024 open files,
            // leaving room for the store and outbound connections.
            max_connections: lim.integer("max_connections", 1..=1_000_000, 256, issues) as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> (Limits, Vec<String>) {
        let doc: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let mut issues = Issues::default();
        let root = Section::new(Some(&doc), "", &["limits"], &mut issues);
        let limits = Limits::parse(&root, &mut issues);
        (limits, issues.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn connection_limits_have_safe_defaults() {
        let (limits, issues) = parse("limits: {}");
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(limits.header_read_timeout, Duration::from_secs(10));
        assert!(limits.header_read_timeout <= limits.request_timeout);
        assert_eq!(limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(limits.max_connections, 256);
    }

    #[test]
    fn connection_limits_out_of_range_name_their_key() {
        let (_, issues) =
            parse("limits: {header_read_timeout: 0s, idle_timeout: 2h, max_connections: 0}");
        for key in [
            "limits.header_read_timeout",
            "limits.idle_timeout",
            "limits.max_connections",
        ] {
            assert!(
                issues
                    .iter()
                    .any(|i| i.starts_with(key) && i.contains("range")),
                "{key} missing in {issues:?}"
            );
        }
    }
}
