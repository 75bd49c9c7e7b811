//! Attempt outcomes, coalesced: the first one queued sends a writer job that records all
//! queued by the time it runs, so a busy relay writes them in bulk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::writer::{Finish, Job, stopped};
use super::{ordering, sql_error};
use crate::store::{Attempted, DeliveryId, DeliveryState, Outcome, StoreError, state_code};

/// An attempt outcome waiting for the writer, with whom to tell once it is kept.
type QueuedOutcome = (
    DeliveryId,
    Outcome,
    Attempted,
    oneshot::Sender<Result<(), StoreError>>,
);

#[derive(Default)]
struct OutcomeQueue {
    items: Vec<QueuedOutcome>,
    /// A job that will take `items` is on its way to the writer.
    job_queued: bool,
}

/// Attempt outcomes waiting for the writer; one job records all of them.
#[derive(Clone)]
pub(super) struct Outcomes {
    queue: Arc<Mutex<OutcomeQueue>>,
    /// Raised while the disk is full: outcomes are then kept without their history rows, so
    /// they complete in the space the reserve freed (see `space`).
    disk_full: Arc<AtomicBool>,
}

impl Outcomes {
    /// No outcome queued yet; `disk_full` is the store's full-disk flag.
    pub(super) fn new(disk_full: Arc<AtomicBool>) -> Outcomes {
        Outcomes {
            queue: Arc::default(),
            disk_full,
        }
    }

    /// Records the outcome of an attempt on claimed delivery `id`; returns once committed.
    pub(super) async fn complete(
        &self,
        jobs: &mpsc::Sender<Job>,
        id: DeliveryId,
        outcome: Outcome,
        attempt: Attempted,
    ) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let send_job = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.items.push((id, outcome, attempt, tx));
            !std::mem::replace(&mut q.job_queued, true)
        };
        if send_job {
            let mut guard = OutcomeBatch {
                outcomes: self.clone(),
                taken: false,
            };
            let disk_full = self.disk_full.clone();
            let job: Job = Box::new(move |conn| {
                let batch = guard.take();
                let history = !disk_full.load(Ordering::Relaxed);
                let result = conn.and_then(|conn| record_outcomes(conn, &batch, history));
                let ok = result.is_ok();
                let finish: Finish = Box::new(move |commit| {
                    let outcome = commit.and(result);
                    for (_, _, _, tx) in batch {
                        let _ = tx.send(outcome.clone());
                    }
                });
                (ok, finish)
            });
            // If the writer is gone, the job is dropped here and its guard answers everyone.
            let _ = jobs.send(job).await;
        }
        rx.await.map_err(|_| stopped())?
    }
}

/// Takes the queued outcomes for the job that records them. If that job is dropped without
/// running (the writer died), the outcomes are answered with an error instead of waiting.
struct OutcomeBatch {
    outcomes: Outcomes,
    taken: bool,
}

impl OutcomeBatch {
    fn take(&mut self) -> Vec<QueuedOutcome> {
        self.taken = true;
        let mut q = self
            .outcomes
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        q.job_queued = false;
        std::mem::take(&mut q.items)
    }
}

impl Drop for OutcomeBatch {
    fn drop(&mut self) {
        if !self.taken {
            for (_, _, _, tx) in self.take() {
                let _ = tx.send(Err(stopped()));
            }
        }
    }
}

/// Writes a batch of attempt outcomes, each with its attempt's history row unless `history`
/// is false (a full disk); only rows still in flight change.
fn record_outcomes(
    conn: &Connection,
    batch: &[QueuedOutcome],
    history: bool,
) -> Result<(), StoreError> {
    let now = crate::time::now_ms();
    let mut update = conn
        .prepare_cached(concat!(
            "UPDATE deliveries SET state = ?2, attempts = attempts + 1,
             budget_used = budget_used + 1, last_status = ?3,
             last_error = ?4, next_attempt_at = coalesce(?5, next_attempt_at),
             delivered_at = ?6, finished_at = ?7
             WHERE id = ?1 AND state = ",
            state_code!(InFlight)
        ))
        .map_err(sql_error)?;
    // A rowid lookup after final outcomes only: RETURNING on every update costs a statement
    // journal per row.
    let mut keyed = conn
        .prepare_cached(
            "SELECT subscription, ordering_key FROM deliveries
             WHERE id = ?1 AND ordering_key IS NOT NULL",
        )
        .map_err(sql_error)?;
    // Numbered by the count just raised: a rowid lookup on a page the update just read. A
    // cached statement per row costs SQLite what a row of a multi-row INSERT would (no
    // round trip), without a statement per batch size.
    let mut insert_history = conn
        .prepare_cached(
            "INSERT INTO attempts (delivery_id, number, at, duration_us, status, result, error)
             SELECT id, attempts, ?2, ?3, ?4, ?5, ?6 FROM deliveries WHERE id = ?1",
        )
        .map_err(sql_error)?;
    for (id, outcome, attempt, _) in batch {
        let (state, status, error, next, delivered, finished) = match outcome {
            Outcome::Delivered { status } => (
                DeliveryState::Delivered,
                Some(status),
                None,
                None,
                Some(now),
                Some(now),
            ),
            Outcome::Retry {
                at_ms,
                status,
                error,
            } => (
                DeliveryState::Pending,
                status.as_ref(),
                Some(error),
                Some(at_ms),
                None,
                None,
            ),
            Outcome::Failed { status, error } => (
                DeliveryState::Failed,
                status.as_ref(),
                Some(error),
                None,
                None,
                Some(now),
            ),
        };
        let changed = update
            .execute(params![id, state, status, error, next, delivered, finished])
            .map_err(sql_error)?;
        if changed == 1 && history {
            insert_history
                .execute(params![
                    id,
                    attempt.at_ms,
                    attempt.duration_us,
                    status,
                    attempt.result,
                    error
                ])
                .map_err(sql_error)?;
        }
        // A finished head lets the next delivery of its key go.
        if changed == 1 && state != DeliveryState::Pending {
            let ordered = keyed
                .query_row([id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .optional()
                .map_err(sql_error)?;
            if let Some((name, key)) = ordered {
                ordering::promote_next(conn, &name, &key)?;
            }
        }
    }
    Ok(())
}
