//! Housekeeping: expires overdue deliveries and prunes terminal ones past retention, then
//! their events, in small batches so a pass never holds locks long; forgets relays that
//! died without leaving. One relay at a time: a pass that cannot take the housekeeping lock
//! at once (another relay's pass holds it) is skipped.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio_postgres::types::Type;

use super::db::{Db, locks};
use super::{ordering, replicas};
use crate::store::{Housekeeping, StoreError, state_code};

/// Rows changed per housekeeping statement.
const BATCH: i64 = 1000;

/// One pass at `now_ms`: rows finished at or before `cutoff` are pruned; `cursor` is the
/// highest event `seq` the scan for events without deliveries has passed; relays silent
/// for `dead_ms` are removed from the registry.
pub(super) async fn housekeeping(
    db: &Db,
    now_ms: i64,
    cutoff: i64,
    cursor: &AtomicI64,
    dead_ms: i64,
) -> Result<Housekeeping, StoreError> {
    let mut report = Housekeeping::default();
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(|e| db.err(e))?;
    let ours: bool = tx
        .query_typed_one(
            "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
            &[(&locks::HOUSEKEEPING, Type::INT4), (&db.schema, Type::TEXT)],
        )
        .await
        .map_err(|e| db.err(e))?
        .get(0);
    if !ours {
        // Another relay's pass is running; the next tick tries again.
        tx.rollback().await.map_err(|e| db.err(e))?;
        return Ok(report);
    }
    replicas::forget_dead(db, &tx, dead_ms).await?;
    let expired = tx
        .query_typed(
            &db.sql(concat!(
                "UPDATE {s}.deliveries SET state = ",
                state_code!(Expired),
                ", finished_at = $1
                 WHERE id IN (SELECT id FROM {s}.deliveries WHERE state IN ",
                states!(Pending, Orphaned, Waiting),
                " AND expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING subscription, ordering_key"
            )),
            &[(&now_ms, Type::INT8), (&BATCH, Type::INT8)],
        )
        .await
        .map_err(|e| db.err(e))?;
    let mut keys = BTreeSet::new();
    for row in &expired {
        let name: String = row.get(0);
        if let Some(key) = row.get::<_, Option<String>>(1) {
            keys.insert((name.clone(), key));
        }
        *report.expired.entry(name).or_default() += 1;
    }
    // An expired head lets the next delivery of its key go.
    ordering::promote_next(db, &db.session_in(&tx), keys).await?;
    // Terminal deliveries past retention (and their attempts), then their events once
    // nothing refers to them;
    // events that never had a delivery are found by a cursor over `seq`. One statement:
    // its parts see the table as it was before it, hence the check against `gone`.
    let last = cursor.load(Ordering::Relaxed);
    let row = tx
        .query_typed_one(
            &db.sql(concat!(
                "WITH gone AS (
                    DELETE FROM {s}.deliveries WHERE id IN (
                        SELECT id FROM {s}.deliveries WHERE state IN ",
                states!(Delivered, Failed, Expired, Cancelled),
                " AND finished_at <= $1 LIMIT $2)
                    RETURNING id, event_seq
                 ), forgotten AS (
                    DELETE FROM {s}.attempts a USING gone g WHERE a.delivery_id = g.id
                 ), scanned AS (
                    SELECT seq, received_at FROM {s}.events WHERE seq > $3 ORDER BY seq LIMIT $2
                 ), passed AS (
                    SELECT seq FROM scanned
                    WHERE seq < coalesce((SELECT min(seq) FROM scanned WHERE received_at > $1), 9223372036854775807)
                 ), candidates AS (
                    SELECT event_seq AS seq FROM gone UNION SELECT seq FROM passed
                 ), dropped AS (
                    DELETE FROM {s}.events e USING candidates c
                    WHERE e.seq = c.seq AND e.received_at <= $1
                      AND NOT EXISTS (SELECT 1 FROM {s}.deliveries d WHERE d.event_seq = c.seq
                                      AND NOT EXISTS (SELECT 1 FROM gone g WHERE g.id = d.id))
                    RETURNING e.seq
                 )
                 SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM dropped),
                        (SELECT max(seq) FROM passed)"
            )),
            &[(&cutoff, Type::INT8), (&BATCH, Type::INT8), (&last, Type::INT8)],
        )
        .await
        .map_err(|e| db.err(e))?;
    tx.commit().await.map_err(|e| db.err(e))?;
    if let Some(passed) = row.get::<_, Option<i64>>(2) {
        cursor.store(passed, Ordering::Relaxed);
    }
    report.pruned = (row.get::<_, i64>(0) + row.get::<_, i64>(1)) as u64;
    Ok(report)
}
