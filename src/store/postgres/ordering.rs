//! Ordered delivery: of an ordering key's unfinished deliveries only the oldest (the head)
//! may be pending or in flight; the later ones are `waiting` until promoted one at a time.
//! Whatever may change a head, and storing a keyed delivery, holds the ordering lock, so a
//! new delivery never misses the promotion of the head it waits behind.

use std::collections::BTreeSet;

use tokio_postgres::types::Type;

use super::db::{Db, Session, locks};
use crate::store::{StoreError, state_code};

/// Takes the ordering lock for the rest of the transaction `tx` runs in.
pub(super) async fn lock(db: &Db, tx: &Session<'_>) -> Result<(), StoreError> {
    tx.query(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[(&locks::ORDER, Type::INT4), (&db.schema, Type::TEXT)],
    )
    .await
    .map_err(|e| db.err(e))?;
    Ok(())
}

/// Under the ordering lock, makes the oldest unfinished delivery of each (subscription,
/// key) pending if it was waiting. Changes nothing while a key's head is pending, in flight
/// or orphaned.
pub(super) async fn promote_next(
    db: &Db,
    tx: &Session<'_>,
    keys: BTreeSet<(String, String)>,
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    lock(db, tx).await?;
    let (subs, keys): (Vec<String>, Vec<String>) = keys.into_iter().unzip();
    tx.query(
        &db.sql(concat!(
            "UPDATE {s}.deliveries d SET state = ",
            state_code!(Pending),
            "
             FROM (SELECT (SELECT x.id FROM {s}.deliveries x
                           WHERE x.subscription = k.sub AND x.ordering_key = k.key AND x.state IN ",
            states!(Pending, InFlight, Orphaned, Waiting),
            "
                           ORDER BY x.id LIMIT 1) AS head
                   FROM unnest($1::text[], $2::text[]) AS k(sub, key)) h
             WHERE d.id = h.head AND d.state = ",
            state_code!(Waiting)
        )),
        &[(&subs, Type::TEXT_ARRAY), (&keys, Type::TEXT_ARRAY)],
    )
    .await
    .map_err(|e| db.err(e))?;
    Ok(())
}

/// Lifts ordering from the undelivered deliveries of `subscriptions`: waiting ones become
/// pending, and none keeps its key; returns how many changed.
pub(super) async fn clear_ordering(db: &Db, subscriptions: &[String]) -> Result<u64, StoreError> {
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(|e| db.err(e))?;
    lock(db, &db.session_in(&tx)).await?;
    let changed = tx
        .execute_typed(
            &db.sql(concat!(
                "UPDATE {s}.deliveries SET state = CASE state WHEN ",
                state_code!(Waiting),
                " THEN ",
                state_code!(Pending),
                " ELSE state END, ordering_key = NULL
                 WHERE subscription = ANY($1) AND ordering_key IS NOT NULL AND state IN ",
                states!(Pending, InFlight, Orphaned, Waiting)
            )),
            &[(&subscriptions, Type::TEXT_ARRAY)],
        )
        .await
        .map_err(|e| db.err(e))?;
    tx.commit().await.map_err(|e| db.err(e))?;
    Ok(changed)
}
