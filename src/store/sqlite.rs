//! The embedded store: SQLite (WAL) owned by one writer thread. This file is the
//! `SqliteStore` itself: what it holds, how it opens, and where each operation runs.
//!
//! Where each operation runs is decided here, in the `Store` impl: writes go to the writer's
//! next group commit (`run`; ingest's `accept` is refused at once when its queue is full),
//! reads to the read connection (`read`), and the writes that change tombstones through
//! `run_marking`. The SQL lives in the child files, one family of operations each:
//!
//! - `schema`: the schema version, migrations, opening and checking a file.
//! - `file`: the file on disk: its modes (0600) and the lock that keeps a second relay out.
//! - `writer`: the writer thread, group commit and the size check; `run`, `read`,
//!   `run_marking`.
//! - `accept`, `claims`, `outcomes` (attempt outcomes with their history rows, coalesced
//!   into one job), `ordering` (ordered delivery), `pull`, `queries`, `history` (attempts
//!   read back), `dead_letters`, `replay`, `subscriptions`, `housekeeping`.
//! - `retired`: tombstones of deleted and removed subscriptions; `rows`: row mappers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::mpsc;

use super::settings::{StorageLocation, StorageSettings};
use super::{
    Accepted, Admission, AttemptInfo, Attempted, ClaimToken, Completed, Delivery, DeliveryId,
    DeliveryInfo, DeliveryQuery, DeliveryState, EventStatus, Housekeeping, Outcome, PauseState,
    PullMode, Pulled, QueueStats, Release, Replayed, Store, StoreError, StoredSubscription,
    WriterMetrics,
};

mod accept;
mod claims;
mod dead_letters;
mod file;
mod history;
mod housekeeping;
mod ordering;
mod outcomes;
mod pull;
mod queries;
mod replay;
mod retired;
mod rows;
mod schema;
mod space;
mod subscriptions;
#[cfg(test)]
mod tests;
mod writer;

pub use file::FileLock;
pub use schema::SCHEMA_VERSION;

use outcomes::Outcomes;
use retired::Retired;
use space::{Space, default_max_size};
use writer::{Job, Writer};

/// The read-only connection, locked before a read takes a blocking thread.
type Reader = Arc<tokio::sync::Mutex<Connection>>;

/// The SQLite store.
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    /// The read-only connection for queries that change nothing (file databases only).
    reader: Option<Reader>,
    /// Highest event `seq` the pruning scan has passed.
    prune_cursor: Arc<AtomicI64>,
    outcomes: Outcomes,
    over_size: Arc<AtomicBool>,
    /// Raised while the disk is full (see `space`).
    disk_full: Arc<AtomicBool>,
    /// Subscriptions deleted (state `cancelled`) or gone from the config (`orphaned`) since
    /// the start, with the state their new deliveries get. Only writer jobs touch it, so an
    /// event matched before the change but stored after it never leaves a pending delivery
    /// that no pump will send.
    retired: Retired,
    ttl_ms: i64,
    retention_ms: i64,
}

impl SqliteStore {
    /// Locks the database file for this process (`None` in memory); a second relay on the
    /// same file is refused here, before opening resets in-flight deliveries to pending.
    pub fn lock(settings: &StorageSettings) -> Result<Option<FileLock>, StoreError> {
        match &settings.location {
            StorageLocation::File(path) => file::lock(path).map(Some),
            StorageLocation::Memory | StorageLocation::Postgres(_) => Ok(None),
        }
    }

    /// Opens (creating, migrating) the database and starts the writer thread.
    pub fn open(
        settings: &StorageSettings,
        metrics: WriterMetrics,
    ) -> Result<SqliteStore, StoreError> {
        let conn = schema::open_connection(settings)?;
        // Reads (scrapes, status, lists, due times) use their own connection, so they never
        // wait for or delay a group commit; without one they go through the writer.
        let reader = schema::open_reader(settings)?;
        let db = match &settings.location {
            StorageLocation::File(path) => Some(path.as_path()),
            StorageLocation::Memory | StorageLocation::Postgres(_) => None,
        };
        let space = Space::open(db, settings.reserve);
        let disk_full = space.full_flag();
        let max_size = settings.max_size.or_else(|| db.and_then(default_max_size));
        if settings.max_size.is_none()
            && let Some(max) = max_size
        {
            tracing::info!(
                max_size = max,
                "storage.max_size defaults to 80% of the volume"
            );
        }
        let (jobs, over_size) =
            Writer::start(conn, settings.queue_capacity, metrics, max_size, space)?;
        Ok(SqliteStore {
            jobs,
            reader,
            prune_cursor: Arc::default(),
            retired: Retired::default(),
            outcomes: Outcomes::new(disk_full.clone()),
            over_size,
            disk_full,
            ttl_ms: settings.ttl.as_millis() as i64,
            retention_ms: settings.retention.as_millis() as i64,
        })
    }
}

/// A store error for an SQLite failure: busy or locked is `Busy` (retry later), the rest
/// `Unavailable`, keeping the SQLite error as its source.
fn sql_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => StoreError::unavailable_from("disk full", e),
        Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Busy("the database is locked".into())
        }
        _ => StoreError::unavailable_from("", e),
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn healthy(&self) -> bool {
        !self.jobs.is_closed()
    }

    fn refusing(&self) -> Option<&'static str> {
        if self.disk_full.load(Ordering::Relaxed) {
            Some("the disk is full")
        } else if self.over_size.load(Ordering::Relaxed) {
            Some("the store is above storage.max_size")
        } else {
            None
        }
    }

    async fn accept(&self, batch: Vec<Accepted>) -> Result<Vec<Admission>, StoreError> {
        if let Some(why) = self.refusing() {
            return Err(StoreError::Busy(why.into()));
        }
        let (ttl_ms, retired) = (self.ttl_ms, self.retired.clone());
        self.run(true, move |conn| {
            accept::accept(conn, &batch, ttl_ms, &retired)
        })
        .await
    }

    async fn claim_due(
        &self,
        subscription: &str,
        now_ms: i64,
        limit: usize,
        _attempt_timeout: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        let sub = subscription.to_string();
        self.run(false, move |conn| {
            claims::claim_due(conn, &sub, now_ms, limit)
        })
        .await
    }

    async fn next_due_ms(&self, subscription: &str) -> Result<Option<i64>, StoreError> {
        let sub = subscription.to_string();
        self.read(move |conn| claims::next_due_ms(conn, &sub)).await
    }

    /// One relay per file: every claim is this relay's, so tokens are not kept.
    async fn complete(
        &self,
        id: DeliveryId,
        _token: ClaimToken,
        outcome: Outcome,
        attempt: Attempted,
    ) -> Result<Completed, StoreError> {
        self.outcomes
            .complete(&self.jobs, id, outcome, attempt)
            .await?;
        Ok(Completed::Recorded)
    }

    async fn unclaim(&self, claims: Vec<(DeliveryId, ClaimToken)>) -> Result<(), StoreError> {
        let ids: Vec<DeliveryId> = claims.into_iter().map(|(id, _)| id).collect();
        self.run(false, move |conn| claims::unclaim(conn, &ids))
            .await
    }

    async fn stats(&self) -> Result<HashMap<String, QueueStats>, StoreError> {
        self.read(queries::stats).await
    }

    async fn event_status(&self, id: &str) -> Result<Option<EventStatus>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| queries::event_status(conn, &id))
            .await
    }

    async fn deliveries(&self, q: DeliveryQuery) -> Result<Vec<DeliveryInfo>, StoreError> {
        self.read(move |conn| queries::deliveries(conn, &q)).await
    }

    async fn release(
        &self,
        scope: Option<String>,
        subscriptions: Vec<String>,
        now_ms: i64,
        min_interval_ms: i64,
    ) -> Result<Release, StoreError> {
        let ttl_ms = self.ttl_ms;
        self.run(false, move |conn| {
            dead_letters::release(conn, scope, subscriptions, now_ms, min_interval_ms, ttl_ms)
        })
        .await
    }

    async fn retry_delivery(
        &self,
        id: DeliveryId,
        now_ms: i64,
        subscriptions: Vec<String>,
    ) -> Result<Option<(DeliveryState, String)>, StoreError> {
        let ttl_ms = self.ttl_ms;
        self.run(false, move |conn| {
            dead_letters::retry_delivery(conn, id, now_ms, &subscriptions, ttl_ms)
        })
        .await
    }

    async fn attempts(&self, id: DeliveryId) -> Result<Option<Vec<AttemptInfo>>, StoreError> {
        self.read(move |conn| history::attempts(conn, id)).await
    }

    async fn replay(
        &self,
        event_id: String,
        subscriptions: Vec<String>,
        now_ms: i64,
    ) -> Result<Replayed, StoreError> {
        let (ttl_ms, retired) = (self.ttl_ms, self.retired.clone());
        self.run(false, move |conn| {
            replay::replay(conn, &event_id, &subscriptions, now_ms, ttl_ms, &retired)
        })
        .await
    }

    async fn replay_range(
        &self,
        subscription: String,
        from_ms: i64,
        to_ms: i64,
        now_ms: i64,
        min_interval_ms: i64,
    ) -> Result<Release, StoreError> {
        let (ttl_ms, retired) = (self.ttl_ms, self.retired.clone());
        self.run(false, move |conn| {
            replay::replay_range(
                conn,
                &subscription,
                from_ms,
                to_ms,
                now_ms,
                min_interval_ms,
                ttl_ms,
                &retired,
            )
        })
        .await
    }

    async fn delete_delivery(&self, id: DeliveryId) -> Result<Option<DeliveryState>, StoreError> {
        self.run(false, move |conn| dead_letters::delete_delivery(conn, id))
            .await
    }

    async fn subscriptions(&self) -> Result<Vec<StoredSubscription>, StoreError> {
        self.read(subscriptions::subscriptions).await
    }

    async fn pause_states(&self) -> Result<Vec<PauseState>, StoreError> {
        self.read(subscriptions::pause_states).await
    }

    async fn set_pause_state(&self, state: PauseState) -> Result<(), StoreError> {
        self.run(false, move |conn| {
            subscriptions::set_pause_state(conn, &state)
        })
        .await
    }

    async fn save_subscription(&self, sub: StoredSubscription) -> Result<(), StoreError> {
        let retired = self.retired.clone();
        self.run(false, move |conn| {
            subscriptions::save_subscription(conn, &sub, &retired)
        })
        .await
    }

    async fn delete_subscription(
        &self,
        id: String,
        name: String,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        // The tombstone: events matched before the delete but stored after it are cancelled.
        let marks = vec![(name.clone(), Some(DeliveryState::Cancelled))];
        self.run_marking(marks, move |conn| {
            subscriptions::delete_subscription(conn, &id, &name, now_ms)
        })
        .await
    }

    async fn pull(
        &self,
        subscription: String,
        now_ms: i64,
        limit: usize,
        mode: PullMode,
    ) -> Result<Pulled, StoreError> {
        self.run(false, move |conn| {
            pull::pull(conn, &subscription, now_ms, limit, mode)
        })
        .await
    }

    async fn ack(
        &self,
        subscription: String,
        ids: Vec<DeliveryId>,
        now_ms: i64,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        self.run(false, move |conn| {
            pull::ack(conn, &subscription, &ids, now_ms)
        })
        .await
    }

    async fn retire_subscriptions(
        &self,
        removed: Vec<String>,
        restored: Vec<String>,
    ) -> Result<(u64, u64), StoreError> {
        // Tombstones: events matched before the reload but stored after it are orphaned.
        let marks = removed
            .iter()
            .map(|n| (n.clone(), Some(DeliveryState::Orphaned)))
            .chain(restored.iter().map(|n| (n.clone(), None)))
            .collect();
        self.run_marking(marks, move |conn| {
            subscriptions::retire_subscriptions(conn, &removed, &restored)
        })
        .await
    }

    async fn clear_ordering(&self, subscriptions: Vec<String>) -> Result<u64, StoreError> {
        self.run(false, move |conn| {
            ordering::clear_ordering(conn, &subscriptions)
        })
        .await
    }

    async fn sync_subscriptions(&self, known: Vec<String>) -> Result<(u64, u64), StoreError> {
        self.run(false, move |conn| {
            subscriptions::sync_subscriptions(conn, &known)
        })
        .await
    }

    async fn housekeeping(&self, now_ms: i64) -> Result<Housekeeping, StoreError> {
        let cutoff = now_ms - self.retention_ms;
        let cursor = self.prune_cursor.clone();
        self.run(false, move |conn| {
            housekeeping::housekeeping(conn, now_ms, cutoff, &cursor)
        })
        .await
    }
}
