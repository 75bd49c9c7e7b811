//! Attempt outcomes, grouped: every outcome waiting for the writer is recorded by one
//! statement from arrays, and the keys whose head finished let their next delivery go, in
//! the same transaction. Only rows still in flight under the outcome's own claim (its
//! token) change: an outcome whose claim lapsed and was taken by a later one is fenced.

use std::collections::{BTreeSet, HashMap, HashSet};

use tokio::sync::oneshot;
use tokio_postgres::types::Type;

use super::db::Db;
use super::ordering;
use crate::store::{
    Attempted, ClaimToken, Completed, DeliveryId, DeliveryState, Outcome, StoreError, state_code,
};

/// One outcome of claim `token` waiting for the writer, with whom to tell once it is kept.
pub(super) type OutcomeRequest = (
    DeliveryId,
    ClaimToken,
    Outcome,
    Attempted,
    oneshot::Sender<Result<Completed, StoreError>>,
);

/// Records a group of outcomes in one transaction and answers each: recorded or fenced.
pub(super) async fn record_group(db: &Db, group: Vec<OutcomeRequest>) {
    // Given up when the server does not answer: the pumps try again.
    let result = db.within(db.connect_timeout * 2, record(db, &group)).await;
    for (id, token, _, _, reply) in group {
        let answer = match &result {
            Ok(fenced) if fenced.contains(&(id, token)) => Ok(Completed::Fenced),
            Ok(_) => Ok(Completed::Recorded),
            Err(e) => Err(e.clone()),
        };
        let _ = reply.send(answer);
    }
}

/// Text PostgreSQL can hold (no NUL).
fn text(s: &str) -> String {
    s.replace('\0', "")
}

/// Records the group; returns the outcomes that were fenced, as (id, token).
async fn record(
    db: &Db,
    group: &[OutcomeRequest],
) -> Result<HashSet<(DeliveryId, ClaimToken)>, StoreError> {
    let now = crate::time::now_ms();
    let n = group.len();
    let (mut ids, mut tokens, mut states, mut statuses, mut errors) = (
        Vec::with_capacity(n),
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
    let (mut sent, mut durations, mut results) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (id, token, outcome, attempt, _) in group {
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
        tokens.push(*token);
        states.push(state.code() as i32);
        statuses.push(status.map(i32::from));
        errors.push(error);
        next.push(at);
        delivered.push((state == DeliveryState::Delivered).then_some(now));
        finished.push(done.then_some(now));
        sent.push(attempt.at_ms);
        durations.push(attempt.duration_us);
        results.push(attempt.result);
    }
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(|e| db.err(e))?;
    // The rows still held by the outcome's claim change; the statement joins the arrays to
    // the rows by primary key (the shape the planner keeps to whatever its row estimates).
    // The same statement writes each changed row's attempt into the history, numbered by
    // the count it just raised: no round trip more.
    let session = db.session_in(&tx);
    let rows = session
        .query(
            &db.sql(concat!(
                "WITH o AS (
                    SELECT * FROM unnest($1::int8[], $2::int4[], $3::int4[], $4::text[], $5::int8[], $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::text[])
                         AS o(id, state, status, error, next, delivered, finished, token, at, duration, result)
                 ), changed AS (
                    UPDATE {s}.deliveries d SET state = o.state, attempts = d.attempts + 1,
                    budget_used = d.budget_used + 1,
                    last_status = o.status, last_error = o.error,
                    next_attempt_at = coalesce(o.next, d.next_attempt_at),
                    delivered_at = o.delivered, finished_at = o.finished,
                    claim_owner = NULL, lease_until = NULL
                    FROM o
                    WHERE d.id = o.id AND d.claim_token = o.token AND d.state = ",
                state_code!(InFlight),
                "
                    RETURNING d.id, d.subscription, d.ordering_key, d.state, d.attempts, d.claim_token
                 ), history AS (
                    INSERT INTO {s}.attempts (delivery_id, number, at, duration_us, status, result, error)
                    SELECT c.id, c.attempts, o.at, o.duration, o.status, o.result, o.error
                    FROM changed c JOIN o ON o.id = c.id AND o.token = c.claim_token
                 )
                 SELECT id, subscription, ordering_key, state FROM changed"
            )),
            &[
                (&ids, Type::INT8_ARRAY),
                (&states, Type::INT4_ARRAY),
                (&statuses, Type::INT4_ARRAY),
                (&errors, Type::TEXT_ARRAY),
                (&next, Type::INT8_ARRAY),
                (&delivered, Type::INT8_ARRAY),
                (&finished, Type::INT8_ARRAY),
                (&tokens, Type::INT8_ARRAY),
                (&sent, Type::INT8_ARRAY),
                (&durations, Type::INT8_ARRAY),
                (&results, Type::TEXT_ARRAY),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    // A finished head lets the next delivery of its key go.
    let keys: BTreeSet<(String, String)> = rows
        .iter()
        .filter(|r| r.get::<_, i32>(3) != DeliveryState::Pending.code() as i32)
        .filter_map(|r| Some((r.get(1), r.get::<_, Option<String>>(2)?)))
        .collect();
    ordering::promote_next(db, &session, keys).await?;
    // Rarely, an outcome changed nothing: fenced where its delivery was claimed again since
    // (another token); otherwise it left flight some other way (deleted, retired).
    let recorded: HashSet<DeliveryId> = rows.iter().map(|r| r.get(0)).collect();
    let missed: Vec<(DeliveryId, ClaimToken)> = ids
        .iter()
        .zip(&tokens)
        .filter(|(id, _)| !recorded.contains(id))
        .map(|(id, token)| (*id, *token))
        .collect();
    let mut fenced = HashSet::new();
    if !missed.is_empty() {
        let missed_ids: Vec<DeliveryId> = missed.iter().map(|(id, _)| *id).collect();
        let now: HashMap<DeliveryId, ClaimToken> = tx
            .query_typed(
                &db.sql("SELECT id, claim_token FROM {s}.deliveries WHERE id = ANY($1)"),
                &[(&missed_ids, Type::INT8_ARRAY)],
            )
            .await
            .map_err(|e| db.err(e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        fenced.extend(
            missed
                .into_iter()
                .filter(|(id, token)| now.get(id).is_some_and(|t| t != token)),
        );
    }
    tx.commit().await.map_err(|e| db.err(e))?;
    Ok(fenced)
}
