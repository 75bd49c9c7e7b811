//! The `limits` section: bounds on every inbound request, applied by the listeners'
//! hardening layers (timeout, concurrency, body size) and by ingest (batches, data depth).

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
        }
    }
}
