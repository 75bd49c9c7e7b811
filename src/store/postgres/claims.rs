//! Claiming due deliveries for their pump (pending -> in flight, this relay's claim with a
//! new token and a lease) in one statement, when the next one is due, which subscriptions
//! have due work, and handing back claims that were never attempted. `SKIP LOCKED`: a row
//! another transaction (another relay) is changing is left to it.

use std::sync::Arc;

use bytes::Bytes;
use tokio_postgres::types::Type;

use super::db::{Db, db_now_ms};
use super::leases::{Claimer, Held};
use crate::store::{ClaimToken, Delivery, DeliveryId, StoreError, attributes, state_code};

/// `$1` subscription, `$2` now, `$3` limit, `$4` this relay, `$5` the lease in ms: due
/// deliveries (through `deliveries_due`), claimed and returned with their events.
pub(super) const CLAIM_DUE: &str = concat!(
    "WITH due AS (
    SELECT id FROM {s}.deliveries
    WHERE subscription = $1 AND state = ",
    state_code!(Pending),
    " AND next_attempt_at <= $2 AND expires_at > $2
    ORDER BY next_attempt_at, id LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE {s}.deliveries d SET state = ",
    state_code!(InFlight),
    ", claim_owner = $4, claim_token = d.claim_token + 1, lease_until = ",
    db_now_ms!(),
    " + $5
FROM due, {s}.events e
WHERE d.id = due.id AND e.seq = d.event_seq
RETURNING d.id, d.attempts, e.id, e.type, e.data, e.received_at, e.content_type, e.attributes,
          d.next_attempt_at, d.claim_token, d.budget_used"
);

/// Claims up to `limit` deliveries of `sub` due at `now_ms`, oldest due first, each for
/// `lease_ms`; notes them in `held`.
pub(super) async fn claim_due(
    db: &Db,
    claimer: &Claimer,
    held: &Held,
    sub: &str,
    now_ms: i64,
    limit: usize,
    lease_ms: i64,
) -> Result<Vec<Delivery>, StoreError> {
    let conn = db.conn().await?;
    let rows = db
        .session(&conn)
        .query_in_order(
            &db.sql(CLAIM_DUE),
            &[
                (&sub, Type::TEXT),
                (&now_ms, Type::INT8),
                (&(limit as i64), Type::INT8),
                (&claimer.owner, Type::INT8),
                (&lease_ms, Type::INT8),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    let name: Arc<str> = Arc::from(sub);
    let mut claimed: Vec<(i64, Delivery)> = rows
        .iter()
        .map(|r| {
            let delivery = Delivery {
                id: r.get(0),
                attempts: r.get::<_, i32>(1) as u32,
                budget_used: r.get::<_, i32>(10) as u32,
                event_id: Arc::from(r.get::<_, &str>(2)),
                event_type: Arc::from(r.get::<_, &str>(3)),
                data: Bytes::copy_from_slice(r.get::<_, &[u8]>(4)),
                received_at_ms: r.get(5),
                raw: attributes::raw_meta(r.get(6), r.get(7)),
                subscription: name.clone(),
                token: r.get(9),
            };
            held.hold(delivery.id, delivery.token, lease_ms);
            (r.get(8), delivery)
        })
        .collect();
    // RETURNING keeps no order.
    claimed.sort_by_key(|(due, d)| (*due, d.id));
    Ok(claimed.into_iter().map(|(_, d)| d).collect())
}

/// When the next pending delivery of `sub` is due, if any.
pub(super) async fn next_due_ms(db: &Db, sub: &str) -> Result<Option<i64>, StoreError> {
    let conn = db.conn().await?;
    let rows = db
        .session(&conn)
        .query(
            &db.sql(concat!(
                "SELECT min(next_attempt_at) FROM {s}.deliveries WHERE subscription = $1 AND state = ",
                state_code!(Pending)
            )),
            &[(&sub, Type::TEXT)],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(rows.first().and_then(|row| row.get(0)))
}

/// Subscriptions with a pending delivery due at `now_ms`: a skip scan over the distinct
/// names of `deliveries_due`, then each one's earliest due time from the same index.
pub(super) async fn due_subscriptions(db: &Db, now_ms: i64) -> Result<Vec<String>, StoreError> {
    let conn = db.conn().await?;
    let rows = conn
        .query_typed(
            &db.sql(concat!(
                "WITH RECURSIVE names AS (
                    (SELECT subscription AS name FROM {s}.deliveries WHERE state = ",
                state_code!(Pending),
                " ORDER BY subscription LIMIT 1)
                    UNION ALL
                    SELECT (SELECT d.subscription FROM {s}.deliveries d WHERE d.state = ",
                state_code!(Pending),
                " AND d.subscription > names.name ORDER BY d.subscription LIMIT 1)
                    FROM names WHERE names.name IS NOT NULL
                 )
                 SELECT name FROM names WHERE name IS NOT NULL
                   AND (SELECT min(d.next_attempt_at) FROM {s}.deliveries d
                        WHERE d.subscription = names.name AND d.state = ",
                state_code!(Pending),
                ") <= $1"
            )),
            &[(&now_ms, Type::INT8)],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Returns claimed deliveries that were never attempted to pending, each only while its
/// claim `(id, token)` still holds it; returns how many went back.
pub(super) async fn unclaim(
    db: &Db,
    claims: &[(DeliveryId, ClaimToken)],
) -> Result<u64, StoreError> {
    let (ids, tokens): (Vec<DeliveryId>, Vec<ClaimToken>) = claims.iter().copied().unzip();
    let conn = db.conn().await?;
    conn.execute_typed(
        &db.sql(concat!(
            "UPDATE {s}.deliveries d SET state = ",
            state_code!(Pending),
            ", claim_owner = NULL, lease_until = NULL
             FROM unnest($1::int8[], $2::int8[]) AS c(id, token)
             WHERE d.id = c.id AND d.claim_token = c.token AND d.state = ",
            state_code!(InFlight)
        )),
        &[(&ids, Type::INT8_ARRAY), (&tokens, Type::INT8_ARRAY)],
    )
    .await
    .map_err(|e| db.err(e))
}
