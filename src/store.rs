//! The queue behind delivery. Ingest writes accepted events with one delivery per matched
//! subscription; dispatch claims due deliveries and records each attempt's result. Retry
//! scheduling lives here (`next_attempt_at`), not in memory loops, so a durable store resumes
//! after a restart exactly where it stopped.

pub mod memory;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::event::Event;

/// Store-assigned delivery id.
pub type DeliveryId = i64;

/// An accepted event and the subscriptions it must reach.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The event.
    pub event: Event,
    /// Names of the matched subscriptions (one delivery each).
    pub subscriptions: Vec<Arc<str>>,
}

/// A delivery claimed for an attempt.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Store id.
    pub id: DeliveryId,
    /// Subscription it belongs to.
    pub subscription: Arc<str>,
    /// Event id (`webhook-id`).
    pub event_id: Arc<str>,
    /// Event type.
    pub event_type: Arc<str>,
    /// Body to send.
    pub data: Bytes,
    /// Attempts already made.
    pub attempts: u32,
    /// When the event was accepted (ms since the epoch).
    pub received_at_ms: i64,
}

/// What happened to a claimed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The receiver answered with a success status.
    Delivered {
        /// That status.
        status: u16,
    },
    /// Try again at `at_ms`.
    Retry {
        /// Next attempt time (ms since the epoch).
        at_ms: i64,
        /// Status of the failed attempt, if it got one.
        status: Option<u16>,
        /// Short reason, never containing secrets.
        error: String,
    },
    /// Retries spent or a permanent refusal: a dead letter.
    Failed {
        /// Status of the last attempt, if it got one.
        status: Option<u16>,
        /// Short reason, never containing secrets.
        error: String,
    },
}

/// Undelivered work of one subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Pending plus in-flight deliveries.
    pub depth: u64,
    /// Acceptance time of the oldest of them (ms since the epoch).
    pub oldest_ms: Option<i64>,
    /// Deliveries kept as dead letters.
    pub dead_letters: u64,
}

/// Why the store could not do something.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Full: the caller should retry later (ingest answers 503).
    #[error("store is full: {0}")]
    Busy(String),
    /// The store failed (I/O, corruption).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A delivery queue: in memory, or durable.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores events and their deliveries, all or nothing; returns once they are kept.
    async fn accept(&self, batch: Vec<Accepted>) -> Result<(), StoreError>;

    /// Claims up to `limit` deliveries of `subscription` due at `now_ms`, oldest due first.
    async fn claim_due(
        &self,
        subscription: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// When the next pending delivery of `subscription` is due, if any.
    async fn next_due_ms(&self, subscription: &str) -> Result<Option<i64>, StoreError>;

    /// Records the result of an attempt on a claimed delivery.
    async fn complete(&self, id: DeliveryId, completion: Completion) -> Result<(), StoreError>;

    /// Returns claimed deliveries that were never attempted to pending.
    async fn unclaim(&self, ids: Vec<DeliveryId>) -> Result<(), StoreError>;

    /// Per-subscription queue figures, for gauges.
    async fn stats(&self) -> Result<HashMap<String, QueueStats>, StoreError>;
}
