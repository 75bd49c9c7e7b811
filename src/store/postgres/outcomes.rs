//! Attempt outcomes, grouped: every outcome waiting for the writer is recorded by one
//! statement from arrays (only rows still in flight change), and the keys whose head
//! finished let their next delivery go, in the same transaction.

use std::collections::BTreeSet;

use tokio::sync::oneshot;
use tokio_postgres::types::Type;

use super::db::Db;
use super::ordering;
use crate::store::{DeliveryId, DeliveryState, Outcome, StoreError, state_code};

/// One outcome waiting for the writer, with whom to tell once it is kept.
pub(super) type OutcomeRequest = (DeliveryId, Outcome, oneshot::Sender<Result<(), StoreError>>);

/// Records a group of outcomes in one transaction and answers each.
pub(super) async fn record_group(db: &Db, group: Vec<OutcomeRequest>) {
    // Given up when the server does not answer: the pumps try again.
    let result = db.within(db.connect_timeout * 2, record(db, &group)).await;
    for (_, _, reply) in group {
        let _ = reply.send(result.clone());
    }
}

/// Text PostgreSQL can hold (no NUL).
fn text(s: &str) -> String {
    s.replace('\0', "")
}

async fn record(db: &Db, group: &[OutcomeRequest]) -> Result<(), StoreError> {
    let now = crate::time::now_ms();
    let n = group.len();
    let (mut ids, mut states, mut statuses, mut errors) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut next, mut delivered, mut finished) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (id, outcome, _) in group {
        let (state, status, error, at, done) = match outcome {
            Outcome::Delivered { status } => {
                (DeliveryState::Delivered, Some(*status), None, None, true)
            }
            Outcome::Retry {
                at_ms,
                status,
                error,
            } => (
                DeliveryState::Pending,
                *status,
                Some(text(error)),
                Some(*at_ms),
                false,
            ),
            Outcome::Failed { status, error } => (
                DeliveryState::Failed,
                *status,
                Some(text(error)),
                None,
                true,
            ),
        };
        ids.push(*id);
        states.push(state.code() as i32);
        statuses.push(status.map(i32::from));
        errors.push(error);
        next.push(at);
        delivered.push((state == DeliveryState::Delivered).then_some(now));
        finished.push(done.then_some(now));
    }
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(|e| db.err(e))?;
    let session = db.session_in(&tx);
    let rows = session
        .query(
            &db.sql(concat!(
                "UPDATE {s}.deliveries d SET state = o.state, attempts = d.attempts + 1,
                 last_status = o.status, last_error = o.error,
                 next_attempt_at = coalesce(o.next, d.next_attempt_at),
                 delivered_at = o.delivered, finished_at = o.finished
                 FROM unnest($1::int8[], $2::int4[], $3::int4[], $4::text[], $5::int8[], $6::int8[], $7::int8[])
                      AS o(id, state, status, error, next, delivered, finished)
                 WHERE d.id = o.id AND d.state = ",
                state_code!(InFlight),
                "
                 RETURNING d.subscription, d.ordering_key, d.state"
            )),
            &[
                (&ids, Type::INT8_ARRAY),
                (&states, Type::INT4_ARRAY),
                (&statuses, Type::INT4_ARRAY),
                (&errors, Type::TEXT_ARRAY),
                (&next, Type::INT8_ARRAY),
                (&delivered, Type::INT8_ARRAY),
                (&finished, Type::INT8_ARRAY),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    // A finished head lets the next delivery of its key go.
    let keys: BTreeSet<(String, String)> = rows
        .iter()
        .filter(|r| r.get::<_, i32>(2) != DeliveryState::Pending.code() as i32)
        .filter_map(|r| Some((r.get(0), r.get::<_, Option<String>>(1)?)))
        .collect();
    ordering::promote_next(db, &session, keys).await?;
    tx.commit().await.map_err(|e| db.err(e))
}
