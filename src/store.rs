//! The queue behind delivery. Ingest writes accepted events with one delivery per matched
//! subscription; dispatch claims due deliveries and records each attempt's result. Retry
//! scheduling lives here (`next_attempt_at`), not in memory loops, so a durable store resumes
//! after a restart exactly where it stopped.
//!
//! This file is the seam: the `Store` trait and the types that cross it. Behind it,
//! [`sqlite`] (the default) and [`postgres`] are the backends, [`settings`] their
//! configuration and `open` picks one from it; `views` holds the HTTP API's JSON of a
//! delivery (re-exported here); `history` the types of attempt history and replay.

/// `states!(Pending, Waiting)` is the SQL text `"(0, 7)"`, for `state IN` lists.
///
/// States are written into the SQL as literals (through this and `state_code!`), never bound
/// as parameters: SQLite uses a partial index only when the query's WHERE literally implies
/// the index's own (`state = 0`, `state IN (0, 1, 5, 7)`), which `state = ?1` never does,
/// and PostgreSQL proves a partial index's predicate from literals only too. Defined before
/// the backends' modules, which all see it.
macro_rules! states {
    ($first:ident $(, $rest:ident)*) => {
        concat!(
            "(",
            $crate::store::state_code!($first)
            $(, ", ", $crate::store::state_code!($rest))*,
            ")"
        )
    };
}

mod attributes;
mod history;
#[cfg(test)]
mod history_tests;
mod open;
pub mod postgres;
pub mod settings;
pub mod sqlite;
#[cfg(test)]
mod tests;
mod views;

pub use history::{AttemptInfo, Attempted, RECENT_ATTEMPTS, Replayed};
pub use open::{Opened, WriterMetrics, open};

/// Room the WAL takes between two checkpoints; the storage reserve is at least this.
pub const WAL_ROOM: u64 = 4 * 1024 * 1024;

pub use views::{AttemptView, DeliveryStatus, DeliveryView};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::event::{Event, RawMeta};

/// Store-assigned delivery id.
pub type DeliveryId = i64;

/// An accepted event and the deliveries to create for it.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The event.
    pub event: Event,
    /// One per matched subscription.
    pub deliveries: Vec<NewDelivery>,
}

impl Accepted {
    /// An event and its deliveries.
    pub fn new(event: Event, deliveries: Vec<NewDelivery>) -> Accepted {
        Accepted { event, deliveries }
    }

    /// Names of the matched subscriptions, in the order of `deliveries`.
    pub fn subscriptions(&self) -> impl Iterator<Item = &Arc<str>> {
        self.deliveries.iter().map(|d| &d.subscription)
    }
}

/// One delivery to create for an accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// Name of the matched subscription it goes to.
    pub subscription: Arc<str>,
    /// Stored as already claimed, because the caller hands it to its pump in memory right
    /// after the commit.
    pub handed_off: bool,
    /// Its own ttl in ms (a pull subscription's `pull.ttl`); `None` takes `storage.ttl`.
    pub ttl_ms: Option<i64>,
    /// The ordering key of an ordered subscription's delivery, which then waits for the
    /// earlier unfinished deliveries of that key.
    pub ordering_key: Option<String>,
    /// The subscription's attempt timeout: a shared store's claim of a handed-off delivery
    /// lasts at least this long plus a margin (zero: no floor).
    pub attempt_timeout: Duration,
    /// It goes to a pull subscription's queue, which consumers take in id order: a shared
    /// store then gives its id in commit order.
    pub pulled: bool,
}

impl NewDelivery {
    /// A delivery to `subscription`: not handed off, `storage.ttl`, unordered.
    pub fn new(subscription: Arc<str>) -> NewDelivery {
        NewDelivery {
            subscription,
            handed_off: false,
            ttl_ms: None,
            ordering_key: None,
            attempt_timeout: Duration::ZERO,
            pulled: false,
        }
    }
}

/// How a pull takes notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullMode {
    /// Taken for good (`ack: auto`, at-most-once).
    Consume,
    /// Hidden this many ms, then available again unless acknowledged (`ack: explicit`);
    /// 0 leaves them available, so the next pull returns them again.
    Hide(i64),
}

/// A notification handed to a pull consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Delivery id, used to acknowledge it.
    pub id: DeliveryId,
    /// Event id.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// When the event was accepted, ms since the epoch.
    pub received_at_ms: i64,
    /// The event's data, as received.
    pub data: Bytes,
    /// Content type and attributes of a raw event; `None` for an envelope event.
    pub raw: Option<Arc<RawMeta>>,
    /// It was handed out before and not acknowledged.
    pub redelivered: bool,
}

/// The result of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// Oldest first.
    pub notifications: Vec<Notification>,
    /// Notifications still available after this pull.
    pub remaining: u64,
    /// When the next hidden notification becomes available again, ms since the epoch.
    pub next_visible_ms: Option<i64>,
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
    /// Content type and attributes of a raw event; `None` for an envelope event (JSON).
    pub raw: Option<Arc<RawMeta>>,
    /// Attempts already made, ever (a release does not reset it).
    pub attempts: u32,
    /// Attempts counted against the retry budget: since the delivery was created, released,
    /// retried or replayed.
    pub budget_used: u32,
    /// When the event was accepted (ms since the epoch).
    pub received_at_ms: i64,
    /// The claim's token: a store shared by several relays records an outcome, or takes a
    /// claim back, only while the delivery is still held by this claim (PostgreSQL counts
    /// claims per delivery: a handed-off delivery's is 1; SQLite ignores it, always 0).
    pub token: ClaimToken,
}

/// Which claim of a delivery an attempt holds (see [`Delivery::token`]).
pub type ClaimToken = i64;

/// What became of an attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// Recorded; or nothing was left to record because the delivery left flight otherwise
    /// (deleted or retired meanwhile).
    Recorded,
    /// Not recorded: the claim had lapsed and the delivery is held by a later claim (another
    /// relay's), whose outcome counts instead.
    Fenced,
}

/// Content type of an envelope event's data (JSON).
pub const JSON_CONTENT_TYPE: &str = "application/json";

impl Delivery {
    /// The media type of `data` as received: a raw event's own, JSON for an envelope event.
    pub fn content_type(&self) -> &str {
        self.raw
            .as_ref()
            .map_or(JSON_CONTENT_TYPE, |raw| raw.content_type.as_str())
    }
}

/// What happened to a claimed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
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
    /// Pending plus in-flight deliveries (and ordered ones waiting for their key).
    pub depth: u64,
    /// Of them, those claimed for an attempt now.
    pub in_flight: u64,
    /// Acceptance time of the oldest of them (ms since the epoch).
    pub oldest_ms: Option<i64>,
    /// Deliveries kept as dead letters.
    pub dead_letters: u64,
    /// Deliveries waiting for their subscription to come back.
    pub orphaned: u64,
}

/// How the store answered one event of an accepted batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Newly stored; the ids of its deliveries, in the order of `Accepted::deliveries`.
    Stored(Vec<DeliveryId>),
    /// Its id was accepted before (within retention): nothing stored; the original result.
    Duplicate {
        /// Subscriptions matched when it was first accepted.
        subscriptions: Vec<String>,
    },
}

/// The storage code of each delivery state, and the only place they are written:
/// `DeliveryState`'s discriminants and the stores' SQL both expand it (`state_code!(Pending)`
/// is the literal `0`), so they cannot disagree. Existing files hold these numbers: never
/// change one.
macro_rules! state_code {
    (Pending) => {
        0
    };
    (InFlight) => {
        1
    };
    (Delivered) => {
        2
    };
    (Failed) => {
        3
    };
    (Expired) => {
        4
    };
    (Orphaned) => {
        5
    };
    (Cancelled) => {
        6
    };
    (Waiting) => {
        7
    };
}
pub(crate) use state_code;

/// Lifecycle of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[repr(i64)]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending = state_code!(Pending),
    /// An attempt is under way.
    InFlight = state_code!(InFlight),
    /// Delivered.
    Delivered = state_code!(Delivered),
    /// Retries spent or refused: a dead letter.
    Failed = state_code!(Failed),
    /// Not delivered within the ttl.
    Expired = state_code!(Expired),
    /// Its subscription is gone from the config; resumes if it comes back.
    Orphaned = state_code!(Orphaned),
    /// Its subscription was deleted.
    Cancelled = state_code!(Cancelled),
    /// Ordered: waits until the earlier deliveries of its key are finished.
    Waiting = state_code!(Waiting),
}

impl DeliveryState {
    /// Every state, in storage code order.
    pub const ALL: [DeliveryState; 8] = [
        DeliveryState::Pending,
        DeliveryState::InFlight,
        DeliveryState::Delivered,
        DeliveryState::Failed,
        DeliveryState::Expired,
        DeliveryState::Orphaned,
        DeliveryState::Cancelled,
        DeliveryState::Waiting,
    ];

    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::InFlight => "in_flight",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Expired => "expired",
            DeliveryState::Orphaned => "orphaned",
            DeliveryState::Cancelled => "cancelled",
            DeliveryState::Waiting => "waiting",
        }
    }

    /// Parses an API name.
    pub fn parse(s: &str) -> Option<DeliveryState> {
        DeliveryState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Storage code (see `state_code!`).
    pub fn code(self) -> i64 {
        self as i64
    }

    /// From a storage code; an unknown one reads as pending.
    pub fn from_code(code: i64) -> DeliveryState {
        DeliveryState::ALL
            .into_iter()
            .find(|s| s.code() == code)
            .unwrap_or(DeliveryState::Pending)
    }
}

/// A delivery as the status and dead-letter APIs show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// Store id.
    pub id: DeliveryId,
    /// Subscription name.
    pub subscription: String,
    /// Event id.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Current state.
    pub state: DeliveryState,
    /// Attempts made, ever.
    pub attempts: u32,
    /// Attempts counted against the retry budget (since creation, release or retry).
    pub budget_used: u32,
    /// The latest attempts (at most `RECENT_ATTEMPTS`, oldest first): set by an event's
    /// status only.
    pub recent_attempts: Option<Vec<AttemptInfo>>,
    /// Status of the last attempt.
    pub last_status: Option<u16>,
    /// Reason of the last failure.
    pub last_error: Option<String>,
    /// Next attempt (pending only), ms since the epoch.
    pub next_attempt_at_ms: Option<i64>,
    /// When delivered, ms since the epoch.
    pub delivered_at_ms: Option<i64>,
    /// When the event was accepted, ms since the epoch.
    pub received_at_ms: i64,
}

/// An event and its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventStatus {
    /// Event id.
    pub id: String,
    /// Event type.
    pub event_type: String,
    /// Accepted at, ms since the epoch.
    pub received_at_ms: i64,
    /// Content type and attributes of a raw event; `None` for an envelope event.
    pub raw: Option<Arc<RawMeta>>,
    /// One per matched subscription.
    pub deliveries: Vec<DeliveryInfo>,
}

/// A page query over deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryQuery {
    /// Only this state.
    pub state: DeliveryState,
    /// Only this subscription.
    pub subscription: Option<String>,
    /// Only ids above this one (the previous page's last).
    pub after: Option<DeliveryId>,
    /// Page size.
    pub limit: usize,
}

/// The key under which a release's clock is kept: `*` for all subscriptions, or
/// `subscription:NAME`. Stored, so the same for every backend.
pub(crate) fn release_scope_key(scope: Option<&str>) -> String {
    scope.map_or_else(|| "*".to_string(), |s| format!("subscription:{s}"))
}

/// The key of a bulk replay's clock for one subscription (kept beside the releases').
pub(crate) fn replay_scope_key(subscription: &str) -> String {
    format!("replay:{subscription}")
}

/// The result of a release request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Deliveries put back to pending.
    Released(u64),
    /// The scope was released less than `release.min_interval` ago.
    TooSoon {
        /// When the next release is allowed, ms since the epoch.
        next_allowed_ms: i64,
    },
}

/// What a housekeeping pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Housekeeping {
    /// Deliveries newly expired, per subscription.
    pub expired: HashMap<String, u64>,
    /// Terminal deliveries and finished events removed.
    pub pruned: u64,
}

/// Whether a subscription is paused, as set through the API or by a `410 Gone`: operational
/// state kept in the store (config subscriptions included), not in its document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseState {
    /// The subscription's name.
    pub name: String,
    /// Paused (`true`) or resumed (`false`).
    pub paused: bool,
    /// Why: `api`, `gone`, `config`...
    pub reason: String,
    /// When it was set, ms since the epoch.
    pub since_ms: i64,
}

/// A subscription registered through the API, as kept in the store.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    /// Its id (UUIDv7).
    pub id: String,
    /// Its unique name.
    pub name: String,
    /// The JSON document, secrets included.
    pub spec: String,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
    /// Last changed, ms since the epoch.
    pub updated_at_ms: i64,
}

impl std::fmt::Debug for StoredSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The spec carries credentials.
        f.debug_struct("StoredSubscription")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The failure underneath a [`StoreError`]: shared, so one error can answer every caller
/// whose work went into the same failed transaction.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Why the store could not do something. Backend-neutral: a cause is kept as its `source`,
/// and its text also ends the message, because logs and startup errors print that alone.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Full: the caller should retry later (ingest answers 503).
    #[error("store is full: {0}")]
    Busy(String),
    /// A uniqueness rule refused the write (a subscription name in use).
    #[error("{0}")]
    Conflict(String),
    /// The store failed (I/O, corruption).
    #[error("store unavailable: {}", describe(.context, .source))]
    Unavailable {
        /// What failed; empty when the cause says it all.
        context: String,
        /// The underlying error, if there is one.
        #[source]
        source: Option<Cause>,
    },
    /// The store could not be opened; startup stops with this message.
    #[error("cannot open the store at {path}: {}", describe(.context, .source))]
    Open {
        /// Database path.
        path: String,
        /// What is wrong; empty when the cause says it all.
        context: String,
        /// The underlying error, if there is one.
        #[source]
        source: Option<Cause>,
    },
}

impl StoreError {
    /// The store failed for a reason of its own.
    pub fn unavailable(context: impl Into<String>) -> StoreError {
        StoreError::Unavailable {
            context: context.into(),
            source: None,
        }
    }

    /// The store failed because of `source`.
    pub fn unavailable_from(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError::Unavailable {
            context: context.into(),
            source: Some(Arc::new(source)),
        }
    }
}

/// `context: cause`, or whichever of the two there is.
fn describe(context: &str, source: &Option<Cause>) -> String {
    match source {
        None => context.to_string(),
        Some(cause) if context.is_empty() => cause.to_string(),
        Some(cause) => format!("{context}: {cause}"),
    }
}

/// A delivery queue: in memory, or durable.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// False once the store can no longer take work (its writer has stopped).
    fn healthy(&self) -> bool;

    /// Why the store refuses new events now (full disk, size limit), if it does; the work
    /// already accepted goes on.
    fn refusing(&self) -> Option<&'static str> {
        None
    }

    /// False while the store cannot reach its database (`hookrelay_store_up`); an embedded
    /// store is up while it is healthy.
    fn up(&self) -> bool {
        self.healthy()
    }

    /// Stores events and their deliveries, all or nothing; returns once they are durable.
    async fn accept(&self, batch: Vec<Accepted>) -> Result<Vec<Admission>, StoreError>;

    /// Claims up to `limit` deliveries of `subscription` due at `now_ms`, oldest due first.
    /// `attempt_timeout` is the subscription's: a shared store's claims last at least that
    /// long plus a margin.
    async fn claim_due(
        &self,
        subscription: &str,
        now_ms: i64,
        limit: usize,
        attempt_timeout: Duration,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// When the next pending delivery of `subscription` is due, if any.
    async fn next_due_ms(&self, subscription: &str) -> Result<Option<i64>, StoreError>;

    /// Records the result of an attempt on a delivery held by claim `token`, and the attempt
    /// in its history, in one write.
    async fn complete(
        &self,
        id: DeliveryId,
        token: ClaimToken,
        outcome: Outcome,
        attempt: Attempted,
    ) -> Result<Completed, StoreError>;

    /// Returns claimed deliveries that were never attempted to pending, each while still
    /// held by its claim `(id, token)`.
    async fn unclaim(&self, claims: Vec<(DeliveryId, ClaimToken)>) -> Result<(), StoreError>;

    /// True when several relays may share this store (PostgreSQL): claims then carry
    /// leases that lapse, and work another relay hands back wakes no feeder here by itself.
    fn shared(&self) -> bool {
        false
    }

    /// Live relays on this store, this one included (`hookrelay_replicas`).
    fn replicas(&self) -> u64 {
        1
    }

    /// Puts deliveries whose claim lapsed (their relay died or lost the database) back to
    /// pending; returns the subscription of each.
    async fn take_over_lapsed(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// Subscriptions with a pending delivery due at `now_ms`.
    async fn due_subscriptions(&self, _now_ms: i64) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// At stop, once attempts have finished or been abandoned: hands every claim this relay
    /// still holds back to pending for the other relays, and leaves the relays' registry.
    /// Returns how many claims went back.
    async fn leave(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Records the subscription names this relay's config file declares, which the relays
    /// sharing the store then leave in force (no orphaning) while this one is live.
    async fn declare(&self, _names: Vec<String>) -> Result<(), StoreError> {
        Ok(())
    }

    /// The revision of the stored API subscriptions, bumped by every change through any
    /// relay; `None` when no other relay can change them (not shared).
    async fn catalog_revision(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }

    /// Signalled when another relay may have changed the API subscriptions (a database
    /// notification, or the listener reconnected); `None` without a listener.
    fn catalog_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    /// Per-subscription queue figures, for gauges and `GET /v1/queue`.
    async fn stats(&self) -> Result<HashMap<String, QueueStats>, StoreError>;

    /// An event and its deliveries, unless unknown or pruned.
    async fn event_status(&self, id: &str) -> Result<Option<EventStatus>, StoreError>;

    /// One page of deliveries, oldest first.
    async fn deliveries(&self, query: DeliveryQuery) -> Result<Vec<DeliveryInfo>, StoreError>;

    /// Puts `failed` and `expired` deliveries of `subscriptions` (all of them, or the one named
    /// by `scope`) back to pending with a fresh budget and ttl, at most once per `min_interval`
    /// per scope.
    async fn release(
        &self,
        scope: Option<String>,
        subscriptions: Vec<String>,
        now_ms: i64,
        min_interval_ms: i64,
    ) -> Result<Release, StoreError>;

    /// Puts one `failed` or `expired` delivery of one of `subscriptions` (those configured)
    /// back to pending; returns its state and subscription before.
    async fn retry_delivery(
        &self,
        id: DeliveryId,
        now_ms: i64,
        subscriptions: Vec<String>,
    ) -> Result<Option<(DeliveryState, String)>, StoreError>;

    /// The attempts of one delivery, oldest first; `None` for an unknown (or pruned) one.
    async fn attempts(&self, id: DeliveryId) -> Result<Option<Vec<AttemptInfo>>, StoreError>;

    /// New deliveries of stored event `event_id` to `subscriptions` (push ones, in force),
    /// pending now with a fresh budget and ttl, unordered.
    async fn replay(
        &self,
        event_id: String,
        subscriptions: Vec<String>,
        now_ms: i64,
    ) -> Result<Replayed, StoreError>;

    /// New deliveries to `subscription` of every stored event received in `[from_ms, to_ms)`
    /// that matched it, as `replay` makes them; at most once per `min_interval_ms` per
    /// subscription (the release clock, scope `replay:NAME`). `Released(n)`: n queued.
    async fn replay_range(
        &self,
        subscription: String,
        from_ms: i64,
        to_ms: i64,
        now_ms: i64,
        min_interval_ms: i64,
    ) -> Result<Release, StoreError>;

    /// Removes one delivery unless an attempt is under way or due; returns its state before.
    async fn delete_delivery(&self, id: DeliveryId) -> Result<Option<DeliveryState>, StoreError>;

    /// Subscriptions registered through the API, oldest first.
    async fn subscriptions(&self) -> Result<Vec<StoredSubscription>, StoreError>;

    /// Every subscription's stored pause state.
    async fn pause_states(&self) -> Result<Vec<PauseState>, StoreError>;

    /// Records a subscription's pause state, replacing the one before.
    async fn set_pause_state(&self, state: PauseState) -> Result<(), StoreError>;

    /// Creates an API subscription, or replaces the one with the same id.
    async fn save_subscription(&self, sub: StoredSubscription) -> Result<(), StoreError>;

    /// Removes an API subscription and cancels its undelivered deliveries (also those of
    /// events stored later that were matched before), and forgets its pause state; returns
    /// how many were cancelled.
    async fn delete_subscription(
        &self,
        id: String,
        name: String,
        now_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Takes up to `limit` of the oldest available notifications of a pull subscription, in
    /// acceptance order. Concurrent pulls run one after the other, so none hands out a
    /// notification another holds (consumed or hidden).
    async fn pull(
        &self,
        subscription: String,
        now_ms: i64,
        limit: usize,
        mode: PullMode,
    ) -> Result<Pulled, StoreError>;

    /// Acknowledges pulled notifications of `subscription`; returns the ids that were not
    /// waiting for an acknowledgement (unknown, of another subscription, never pulled, or
    /// acked already).
    async fn ack(
        &self,
        subscription: String,
        ids: Vec<DeliveryId>,
        now_ms: i64,
    ) -> Result<Vec<DeliveryId>, StoreError>;

    /// Retires subscriptions gone from the config: their undelivered deliveries, and those of
    /// events matched before but stored later, become orphaned; orphans of `restored` names
    /// are pending again. Returns (orphaned, resumed).
    async fn retire_subscriptions(
        &self,
        removed: Vec<String>,
        restored: Vec<String>,
    ) -> Result<(u64, u64), StoreError>;

    /// Lifts ordering from the undelivered deliveries of these (now unordered) subscriptions:
    /// waiting ones become pending; returns how many deliveries it changed.
    async fn clear_ordering(&self, subscriptions: Vec<String>) -> Result<u64, StoreError>;

    /// Marks deliveries of unknown subscriptions orphaned and resumes orphans of known ones;
    /// returns (orphaned, resumed).
    async fn sync_subscriptions(&self, known: Vec<String>) -> Result<(u64, u64), StoreError>;

    /// Expires overdue deliveries and prunes old terminal rows, in small batches.
    async fn housekeeping(&self, now_ms: i64) -> Result<Housekeeping, StoreError>;
}
