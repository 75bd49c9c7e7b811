//! The PostgreSQL store, for one relay: the same behaviour as the SQLite store through the
//! same trait, on a database a platform team already runs. This file is the
//! `PostgresStore` itself: what it holds, how it opens, and where each operation runs.
//!
//! Ingest and attempt outcomes go to a writer task each (`writer`), which groups every
//! request waiting into one transaction (group commit); everything else runs as its own
//! statement or short transaction on a pooled connection. Concurrency that SQLite's single
//! writer rules out is handled in the database: claims and pulls take rows with
//! `FOR UPDATE SKIP LOCKED`, and transaction-scoped advisory locks order ingest against
//! tombstone changes and ordering-key promotions (`db::locks`). The SQL lives in the child
//! files, one family of operations each:
//!
//! - `db`: the pool, the schema's name in SQL, errors, whether the database answers;
//!   `tls`: rustls for the connection.
//! - `schema`: the version table and migrations, under an advisory lock.
//! - `writer`: group commit; `accept`, `outcomes`: what the two writers write.
//! - `claims`, `ordering`, `pull`, `queries`, `dead_letters`, `subscriptions`
//!   (tombstones included), `housekeeping`; `rows`: row mappers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::settings::{PostgresSettings, StorageSettings};
use super::{
    Accepted, Admission, Delivery, DeliveryId, DeliveryInfo, DeliveryQuery, DeliveryState,
    EventStatus, Housekeeping, Outcome, PullMode, Pulled, QueueStats, Release, Store, StoreError,
    StoredSubscription, WriterMetrics,
};

mod accept;
mod claims;
mod db;
mod dead_letters;
mod housekeeping;
mod ordering;
mod outcomes;
mod pull;
mod queries;
mod rows;
mod schema;
mod subscriptions;
#[cfg(test)]
mod tests;
mod tls;
mod writer;

pub use schema::SCHEMA_VERSION;

use accept::AcceptRequest;
use db::Db;
use outcomes::OutcomeRequest;
use writer::{Writer, stopped};

/// Ingest requests in one transaction at most.
const MAX_ACCEPT_GROUP: usize = 512;
/// Attempt outcomes in one transaction at most.
const MAX_OUTCOME_GROUP: usize = 2048;

/// The PostgreSQL store.
pub struct PostgresStore {
    db: Arc<Db>,
    accepts: Writer<AcceptRequest>,
    outcomes: Writer<OutcomeRequest>,
    /// Highest event `seq` the pruning scan has passed.
    prune_cursor: AtomicI64,
    ttl_ms: i64,
    retention_ms: i64,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.db.shown)
            .field("schema", &self.db.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, creates or migrates the schema (refusing one newer than this build), puts
    /// in-flight deliveries back to pending and starts the writers.
    pub async fn open(
        pg: &PostgresSettings,
        settings: &StorageSettings,
        metrics: WriterMetrics,
    ) -> Result<PostgresStore, StoreError> {
        let db = Arc::new(Db::new(pg)?);
        schema::migrate(&db).await?;
        let ttl_ms = settings.ttl.as_millis() as i64;
        let accepts = {
            let db = db.clone();
            Writer::start(
                settings.queue_capacity,
                MAX_ACCEPT_GROUP,
                metrics.clone(),
                move |group| {
                    let db = db.clone();
                    async move { accept::accept_group(&db, group, ttl_ms).await }
                },
            )
        };
        let outcomes = {
            let db = db.clone();
            Writer::start(
                settings.queue_capacity.max(MAX_OUTCOME_GROUP),
                MAX_OUTCOME_GROUP,
                metrics,
                move |group| {
                    let db = db.clone();
                    async move { outcomes::record_group(&db, group).await }
                },
            )
        };
        Ok(PostgresStore {
            db,
            accepts,
            outcomes,
            prune_cursor: AtomicI64::new(0),
            ttl_ms,
            retention_ms: settings.retention.as_millis() as i64,
        })
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn healthy(&self) -> bool {
        self.accepts.is_open() && self.outcomes.is_open()
    }

    fn refusing(&self) -> Option<&'static str> {
        (!self.db.up()).then_some("the database is unreachable")
    }

    fn up(&self) -> bool {
        self.healthy() && self.db.up()
    }

    async fn accept(&self, batch: Vec<Accepted>) -> Result<Vec<Admission>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.accepts.try_send((batch, tx))?;
        // Answered within connect_timeout whatever the server does: a 503 the app retries
        // (the event may have been kept after all: the retry is then a duplicate, 200).
        let db = &self.db;
        let answer = async { rx.await.map_err(|_| stopped())? };
        db.seen(db.within(db.connect_timeout, answer).await)
    }

    async fn claim_due(
        &self,
        subscription: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let db = &self.db;
        db.run(claims::claim_due(db, subscription, now_ms, limit))
            .await
    }

    async fn next_due_ms(&self, subscription: &str) -> Result<Option<i64>, StoreError> {
        let db = &self.db;
        db.run(claims::next_due_ms(db, subscription)).await
    }

    async fn complete(&self, id: DeliveryId, outcome: Outcome) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.outcomes.send((id, outcome, tx)).await?;
        self.db.seen(rx.await.map_err(|_| stopped())?)
    }

    async fn unclaim(&self, ids: Vec<DeliveryId>) -> Result<(), StoreError> {
        let db = &self.db;
        db.run(claims::unclaim(db, &ids)).await
    }

    async fn stats(&self) -> Result<HashMap<String, QueueStats>, StoreError> {
        let db = &self.db;
        db.run(queries::stats(db)).await
    }

    async fn event_status(&self, id: &str) -> Result<Option<EventStatus>, StoreError> {
        let db = &self.db;
        db.run(queries::event_status(db, id)).await
    }

    async fn deliveries(&self, q: DeliveryQuery) -> Result<Vec<DeliveryInfo>, StoreError> {
        let db = &self.db;
        db.run(queries::deliveries(db, &q)).await
    }

    async fn release(
        &self,
        scope: Option<String>,
        subscriptions: Vec<String>,
        now_ms: i64,
        min_interval_ms: i64,
    ) -> Result<Release, StoreError> {
        let db = &self.db;
        let released = dead_letters::release(
            db,
            scope,
            subscriptions,
            now_ms,
            min_interval_ms,
            self.ttl_ms,
        );
        db.run(released).await
    }

    async fn retry_delivery(
        &self,
        id: DeliveryId,
        now_ms: i64,
        subscriptions: Vec<String>,
    ) -> Result<Option<(DeliveryState, String)>, StoreError> {
        let db = &self.db;
        db.run(dead_letters::retry_delivery(
            db,
            id,
            now_ms,
            &subscriptions,
            self.ttl_ms,
        ))
        .await
    }

    async fn delete_delivery(&self, id: DeliveryId) -> Result<Option<DeliveryState>, StoreError> {
        let db = &self.db;
        db.run(dead_letters::delete_delivery(db, id)).await
    }

    async fn subscriptions(&self) -> Result<Vec<StoredSubscription>, StoreError> {
        let db = &self.db;
        db.run(subscriptions::subscriptions(db)).await
    }

    async fn save_subscription(&self, sub: StoredSubscription) -> Result<(), StoreError> {
        let db = &self.db;
        db.run(subscriptions::save_subscription(db, &sub)).await
    }

    async fn delete_subscription(
        &self,
        id: String,
        name: String,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let db = &self.db;
        db.run(subscriptions::delete_subscription(db, &id, &name, now_ms))
            .await
    }

    async fn pull(
        &self,
        subscription: String,
        now_ms: i64,
        limit: usize,
        mode: PullMode,
    ) -> Result<Pulled, StoreError> {
        let db = &self.db;
        db.run(pull::pull(db, &subscription, now_ms, limit, mode))
            .await
    }

    async fn ack(
        &self,
        subscription: String,
        ids: Vec<DeliveryId>,
        now_ms: i64,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        let db = &self.db;
        db.run(pull::ack(db, &subscription, &ids, now_ms)).await
    }

    async fn retire_subscriptions(
        &self,
        removed: Vec<String>,
        restored: Vec<String>,
    ) -> Result<(u64, u64), StoreError> {
        let db = &self.db;
        db.run(subscriptions::retire_subscriptions(db, &removed, &restored))
            .await
    }

    async fn clear_ordering(&self, subscriptions: Vec<String>) -> Result<u64, StoreError> {
        let db = &self.db;
        db.run(ordering::clear_ordering(db, &subscriptions)).await
    }

    async fn sync_subscriptions(&self, known: Vec<String>) -> Result<(u64, u64), StoreError> {
        let db = &self.db;
        db.run(subscriptions::sync_subscriptions(db, &known)).await
    }

    async fn housekeeping(&self, now_ms: i64) -> Result<Housekeeping, StoreError> {
        let db = &self.db;
        let cutoff = now_ms - self.retention_ms;
        db.run(housekeeping::housekeeping(
            db,
            now_ms,
            cutoff,
            &self.prune_cursor,
        ))
        .await
    }
}
