//! The PostgreSQL store: the same behaviour as the SQLite store through the same trait, on
//! a database a platform team already runs, and shared by any number of relays (replicas)
//! on one schema. This file is the `PostgresStore` itself: what it holds, how it opens, and
//! where each operation runs.
//!
//! Ingest and attempt outcomes go to a writer task each (`writer`), which groups every
//! request waiting into one transaction (group commit); everything else runs as its own
//! statement or short transaction on a pooled connection. Concurrency that SQLite's single
//! writer rules out is handled in the database: claims and pulls take rows with
//! `FOR UPDATE SKIP LOCKED`, and transaction-scoped advisory locks order ingest against
//! tombstone changes and ordering-key promotions (`db::locks`). A claim belongs to one
//! relay, with a token and a lease (`leases`); each relay registers itself (`replicas`).
//! The SQL lives in the child files, one family of operations each:
//!
//! - `db`: the pool, the schema's name in SQL, errors, whether the database answers;
//!   `tls`: rustls for the connection.
//! - `schema`: the version table and migrations, under an advisory lock.
//! - `writer`: group commit; `accept`, `outcomes`: what the two writers write.
//! - `claims`, `ordering`, `pull`, `queries`, `history` (attempts read back; the outcome's
//!   statement writes them), `dead_letters`, `replay`, `subscriptions` (tombstones
//!   included), `housekeeping`; `rows`: row mappers.
//! - `replicas`: the relays' registry and heartbeats; `leases`: the claims this relay holds,
//!   their renewal, and taking over lapsed ones.
//! - `notify`: the `LISTEN` connection by which changes to API subscriptions made through
//!   other relays arrive (`subscriptions` bumps `catalog_revision` and notifies).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::settings::{PostgresSettings, StorageSettings};
use super::{
    Accepted, Admission, AttemptInfo, Attempted, ClaimToken, Completed, Delivery, DeliveryId,
    DeliveryInfo, DeliveryQuery, DeliveryState, EventStatus, Housekeeping, Outcome, PauseState,
    PullMode, Pulled, QueueStats, Release, Replayed, Store, StoreError, StoredSubscription,
    WriterMetrics,
};

mod accept;
mod claims;
mod db;
mod dead_letters;
mod history;
mod housekeeping;
mod leases;
mod notify;
mod ordering;
mod outcomes;
mod pull;
#[cfg(test)]
mod pull_tests;
mod queries;
mod replay;
#[cfg(test)]
mod replica_tests;
mod replicas;
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
use leases::{Claimer, Held};
use outcomes::OutcomeRequest;
use replicas::Replica;
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
    /// This relay in the registry.
    me: Arc<Replica>,
    /// Who claims, for how long.
    claimer: Claimer,
    /// The claims this relay holds.
    held: Arc<Held>,
    /// Stops the heartbeat and renewal (at `leave`, or when the store is dropped).
    upkeep: CancellationToken,
    /// Signalled by the listener (`notify`) when API subscriptions may have changed.
    catalog_signal: Option<Arc<tokio::sync::Notify>>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.upkeep.cancel();
    }
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
    /// Connects, creates or migrates the schema (refusing one newer than this build),
    /// registers this relay under its host name (`HOSTNAME`), and starts the writers, the
    /// heartbeat and the renewal of leases.
    pub async fn open(
        pg: &PostgresSettings,
        settings: &StorageSettings,
        metrics: WriterMetrics,
    ) -> Result<PostgresStore, StoreError> {
        PostgresStore::open_as(pg, settings, metrics, &replicas::host_from_env()).await
    }

    /// `open` for a relay on `host`: the claims of an earlier relay registered on the same
    /// host (which crashed) go back to pending at once.
    pub(crate) async fn open_as(
        pg: &PostgresSettings,
        settings: &StorageSettings,
        metrics: WriterMetrics,
        host: &str,
    ) -> Result<PostgresStore, StoreError> {
        let db = Arc::new(Db::new(pg)?);
        schema::migrate(&db).await?;
        let (me, returned) = db.run(replicas::register(&db, host)).await?;
        tracing::info!(
            replica = me.id.as_str(),
            live = me.live(),
            returned,
            "registered with the relays sharing the schema"
        );
        let me = Arc::new(me);
        let claimer = Claimer {
            owner: me.num,
            lease: pg.lease,
        };
        let ttl_ms = settings.ttl.as_millis() as i64;
        let accepts = {
            let db = db.clone();
            Writer::start(
                settings.queue_capacity,
                MAX_ACCEPT_GROUP,
                metrics.clone(),
                move |group| {
                    let db = db.clone();
                    async move { accept::accept_group(&db, group, ttl_ms, &claimer).await }
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
        let held = Arc::new(Held::default());
        let upkeep = CancellationToken::new();
        tokio::spawn(leases::keep(
            db.clone(),
            me.clone(),
            held.clone(),
            pg.lease,
            upkeep.clone(),
        ));
        let catalog_signal = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(notify::listen(
            pg.clone(),
            catalog_signal.clone(),
            upkeep.clone(),
        ));
        Ok(PostgresStore {
            db,
            accepts,
            outcomes,
            prune_cursor: AtomicI64::new(0),
            ttl_ms,
            retention_ms: settings.retention.as_millis() as i64,
            me,
            claimer,
            held,
            upkeep,
            catalog_signal: Some(catalog_signal),
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
        // The lease of each delivery handed off, which this relay then holds (token 1).
        let handed: Vec<Vec<Option<i64>>> = batch
            .iter()
            .map(|a| {
                a.deliveries
                    .iter()
                    .map(|d| {
                        d.handed_off
                            .then(|| self.claimer.lease_ms(d.attempt_timeout))
                    })
                    .collect()
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        self.accepts.try_send((batch, tx))?;
        // Answered within connect_timeout whatever the server does: a 503 the app retries
        // (the event may have been kept after all: the retry is then a duplicate, 200, and
        // its handed-off deliveries, held by no one here, are taken over when their leases
        // run out).
        let db = &self.db;
        let answer = async { rx.await.map_err(|_| stopped())? };
        let admissions = db.seen(db.within(db.connect_timeout, answer).await)?;
        for (admission, leases) in admissions.iter().zip(handed) {
            if let Admission::Stored(ids) = admission {
                for (id, lease) in ids.iter().zip(leases) {
                    if let Some(lease) = lease {
                        self.held.hold(*id, 1, lease);
                    }
                }
            }
        }
        Ok(admissions)
    }

    async fn claim_due(
        &self,
        subscription: &str,
        now_ms: i64,
        limit: usize,
        attempt_timeout: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        let db = &self.db;
        let lease_ms = self.claimer.lease_ms(attempt_timeout);
        db.run(claims::claim_due(
            db,
            &self.claimer,
            &self.held,
            subscription,
            now_ms,
            limit,
            lease_ms,
        ))
        .await
    }

    async fn next_due_ms(&self, subscription: &str) -> Result<Option<i64>, StoreError> {
        let db = &self.db;
        db.run(claims::next_due_ms(db, subscription)).await
    }

    async fn complete(
        &self,
        id: DeliveryId,
        token: ClaimToken,
        outcome: Outcome,
        attempt: Attempted,
    ) -> Result<Completed, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.outcomes
            .send((id, token, outcome, attempt, tx))
            .await?;
        let completed = self.db.seen(rx.await.map_err(|_| stopped())?)?;
        self.held.release(id, token);
        Ok(completed)
    }

    async fn unclaim(&self, claims: Vec<(DeliveryId, ClaimToken)>) -> Result<(), StoreError> {
        let db = &self.db;
        db.run(claims::unclaim(db, &claims)).await?;
        for (id, token) in claims {
            self.held.release(id, token);
        }
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    fn replicas(&self) -> u64 {
        self.me.live()
    }

    async fn take_over_lapsed(&self) -> Result<Vec<String>, StoreError> {
        let db = &self.db;
        db.run(leases::take_over_lapsed(db)).await
    }

    async fn due_subscriptions(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let db = &self.db;
        db.run(claims::due_subscriptions(db, now_ms)).await
    }

    async fn leave(&self) -> Result<u64, StoreError> {
        // No renewal from here on: what is not handed back lapses.
        self.upkeep.cancel();
        let claims = self.held.take_all();
        let db = &self.db;
        let returned = if claims.is_empty() {
            0
        } else {
            db.run(claims::unclaim(db, &claims)).await?
        };
        db.run(replicas::deregister(db, &self.me)).await?;
        Ok(returned)
    }

    async fn declare(&self, names: Vec<String>) -> Result<(), StoreError> {
        let db = &self.db;
        db.run(replicas::declare(db, &self.me, &names)).await
    }

    async fn catalog_revision(&self) -> Result<Option<i64>, StoreError> {
        let db = &self.db;
        db.run(subscriptions::catalog_revision(db)).await.map(Some)
    }

    fn catalog_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.catalog_signal.clone()
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

    async fn attempts(&self, id: DeliveryId) -> Result<Option<Vec<AttemptInfo>>, StoreError> {
        let db = &self.db;
        db.run(history::attempts(db, id)).await
    }

    async fn replay(
        &self,
        event_id: String,
        subscriptions: Vec<String>,
        now_ms: i64,
    ) -> Result<Replayed, StoreError> {
        let db = &self.db;
        db.run(replay::replay(
            db,
            &event_id,
            &subscriptions,
            now_ms,
            self.ttl_ms,
        ))
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
        let db = &self.db;
        db.run(replay::replay_range(
            db,
            &subscription,
            (from_ms, to_ms),
            now_ms,
            min_interval_ms,
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

    async fn pause_states(&self) -> Result<Vec<PauseState>, StoreError> {
        let db = &self.db;
        db.run(subscriptions::pause_states(db)).await
    }

    async fn set_pause_state(&self, state: PauseState) -> Result<(), StoreError> {
        let db = &self.db;
        db.run(subscriptions::set_pause_state(db, &state)).await
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
        db.run(subscriptions::retire_subscriptions(
            db,
            self.me.num,
            &removed,
            &restored,
        ))
        .await
    }

    async fn clear_ordering(&self, subscriptions: Vec<String>) -> Result<u64, StoreError> {
        let db = &self.db;
        db.run(ordering::clear_ordering(db, &subscriptions)).await
    }

    async fn sync_subscriptions(&self, known: Vec<String>) -> Result<(u64, u64), StoreError> {
        let db = &self.db;
        db.run(subscriptions::sync_subscriptions(db, self.me.num, &known))
            .await
    }

    async fn housekeeping(&self, now_ms: i64) -> Result<Housekeeping, StoreError> {
        let db = &self.db;
        let cutoff = now_ms - self.retention_ms;
        // A relay silent for a lease is gone: its claims have lapsed by then.
        let dead_ms = self.claimer.lease.as_millis() as i64;
        db.run(housekeeping::housekeeping(
            db,
            now_ms,
            cutoff,
            &self.prune_cursor,
            dead_ms,
        ))
        .await
    }
}
