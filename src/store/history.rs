//! The types of attempt history and replay that cross the `Store` seam: what an attempt
//! records with its outcome, what its history shows, what a replay did.

use super::DeliveryId;

/// How one attempt went, besides its outcome's status and error: kept in the delivery's
/// attempt history with the outcome, in the same write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempted {
    /// When it was sent, ms since the epoch.
    pub at_ms: i64,
    /// How long it took until the verdict, in microseconds.
    pub duration_us: i64,
    /// The `result` label of `hookrelay_delivery_attempts_total` (`success`, `http_error`...).
    pub result: &'static str,
}

/// One attempt of a delivery, as its history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptInfo {
    /// Its number among the delivery's attempts (1-based; never reset).
    pub number: u32,
    /// When it was sent, ms since the epoch.
    pub at_ms: i64,
    /// How long it took, in microseconds.
    pub duration_us: i64,
    /// The status the receiver answered, if any.
    pub status: Option<u16>,
    /// The `result` label of `hookrelay_delivery_attempts_total`.
    pub result: String,
    /// Why it failed (short, free of secrets).
    pub error: Option<String>,
}

/// Attempts an event's status shows per delivery: the latest few (the rest through
/// `GET /v1/deliveries/{id}/attempts`).
pub const RECENT_ATTEMPTS: usize = 5;

/// What a replay of an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// New deliveries, one per named subscription, in order.
    Queued(Vec<DeliveryId>),
    /// The event is unknown, or pruned after `storage.retention`.
    NoEvent,
}
