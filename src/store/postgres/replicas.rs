//! The relays sharing a schema: each registers a `replicas` row at open (its id is the host
//! name plus a random suffix) and beats its heartbeat every `HEARTBEAT`; a relay is live
//! while its heartbeat is at most three beats old. Times are the database's clock.
//!
//! A pod's container restarted after a crash keeps its host name: its new relay takes back
//! at once the claims its predecessor on that host held, instead of waiting for their
//! leases, so one relay restarted after `kill -9` redelivers at once. Hence one relay per
//! host name (`HOSTNAME`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_postgres::types::Type;

use super::db::{Db, db_now_ms};
use crate::store::{StoreError, state_code};

/// How often a relay beats its heartbeat.
pub(super) const HEARTBEAT: Duration = Duration::from_millis(2000);
/// A relay whose heartbeat is older than this is not counted live.
pub(super) const LIVE_WITHIN_MS: i64 = 3 * HEARTBEAT.as_millis() as i64;

/// This relay's entry in the registry.
#[derive(Debug)]
pub(super) struct Replica {
    /// Its row's number, which its claims carry as `claim_owner`.
    pub(super) num: i64,
    /// `host-xxxxxx`, for logs.
    pub(super) id: String,
    /// The host name it registered with.
    pub(super) host: String,
    /// Relays live at the last heartbeat, this one included.
    live: AtomicU64,
    /// The subscription names its config file declares (kept for a registration anew).
    declared: std::sync::Mutex<Vec<String>>,
}

impl Replica {
    /// Relays live at the last heartbeat, this one included.
    pub(super) fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed).max(1)
    }
}

/// The host name this relay registers with: `HOSTNAME` (a pod's name), else `hookrelay`.
pub(super) fn host_from_env() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hookrelay".into())
}

/// `host` with a random suffix of six hex digits.
fn replica_id(host: &str) -> String {
    format!("{host}-{:06x}", fastrand::u32(..0x0100_0000))
}

/// Registers a relay on `host`. The claims of relays registered earlier on the same host
/// (its predecessors: this host's relay crashed) go back to pending at once and their rows
/// are removed. Returns the entry and how many claims went back.
pub(super) async fn register(db: &Db, host: &str) -> Result<(Replica, u64), StoreError> {
    let id = replica_id(host);
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(|e| db.err(e))?;
    let returned = tx
        .execute_typed(
            &db.sql(concat!(
                "UPDATE {s}.deliveries SET state = ",
                state_code!(Pending),
                ", claim_owner = NULL, lease_until = NULL WHERE state = ",
                state_code!(InFlight),
                " AND claim_owner IN (SELECT num FROM {s}.replicas WHERE host = $1)"
            )),
            &[(&host, Type::TEXT)],
        )
        .await
        .map_err(|e| db.err(e))?;
    tx.execute_typed(
        &db.sql("DELETE FROM {s}.replicas WHERE host = $1"),
        &[(&host, Type::TEXT)],
    )
    .await
    .map_err(|e| db.err(e))?;
    let row = tx
        .query_typed_one(
            &db.sql(concat!(
                "INSERT INTO {s}.replicas (id, host, started_at, heartbeat_at)
                 SELECT $1, $2, n, n FROM (SELECT ",
                db_now_ms!(),
                " AS n) now
                 RETURNING num, (SELECT count(*) FROM {s}.replicas WHERE heartbeat_at >= ",
                db_now_ms!(),
                " - $3)"
            )),
            &[
                (&id, Type::TEXT),
                (&host, Type::TEXT),
                (&LIVE_WITHIN_MS, Type::INT8),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    tx.commit().await.map_err(|e| db.err(e))?;
    let others: i64 = row.get(1);
    let replica = Replica {
        num: row.get(0),
        id,
        host: host.to_string(),
        live: AtomicU64::new(others as u64 + 1),
        declared: std::sync::Mutex::new(Vec::new()),
    };
    Ok((replica, returned))
}

/// Beats the heartbeat and counts the live relays. A row removed meanwhile (housekeeping
/// took this relay for dead after a long cut) is registered again under the same number.
pub(super) async fn heartbeat(db: &Db, me: &Replica) -> Result<(), StoreError> {
    let conn = db.conn().await?;
    let row = conn
        .query_typed_one(
            &db.sql(concat!(
                "WITH beat AS (UPDATE {s}.replicas SET heartbeat_at = ",
                db_now_ms!(),
                " WHERE num = $1 RETURNING num)
                 SELECT (SELECT count(*) FROM beat),
                        (SELECT count(*) FROM {s}.replicas WHERE num <> $1 AND heartbeat_at >= ",
                db_now_ms!(),
                " - $2)"
            )),
            &[(&me.num, Type::INT8), (&LIVE_WITHIN_MS, Type::INT8)],
        )
        .await
        .map_err(|e| db.err(e))?;
    if row.get::<_, i64>(0) == 0 {
        tracing::warn!(
            replica = me.id.as_str(),
            "this relay's registration was gone (taken for dead); registering again"
        );
        conn.execute_typed(
            &db.sql(concat!(
                "INSERT INTO {s}.replicas (num, id, host, started_at, heartbeat_at, declared)
                 OVERRIDING SYSTEM VALUE
                 SELECT $1, $2, $3, n, n, $4 FROM (SELECT ",
                db_now_ms!(),
                " AS n) now
                 ON CONFLICT DO NOTHING"
            )),
            &[
                (&me.num, Type::INT8),
                (&me.id, Type::TEXT),
                (&me.host, Type::TEXT),
                (&me.declared(), Type::TEXT_ARRAY),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    }
    let others: i64 = row.get(1);
    me.live.store(others as u64 + 1, Ordering::Relaxed);
    Ok(())
}

impl Replica {
    /// The names its config file declares, as last recorded.
    fn declared(&self) -> Vec<String> {
        self.declared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Records the subscription names this relay's config file declares, so that the others
/// do not orphan their deliveries while it is live (`declared_elsewhere`).
pub(super) async fn declare(db: &Db, me: &Replica, names: &[String]) -> Result<(), StoreError> {
    *me.declared.lock().unwrap_or_else(|e| e.into_inner()) = names.to_vec();
    let conn = db.conn().await?;
    conn.execute_typed(
        &db.sql("UPDATE {s}.replicas SET declared = $2 WHERE num = $1"),
        &[(&me.num, Type::INT8), (&names, Type::TEXT_ARRAY)],
    )
    .await
    .map_err(|e| db.err(e))?;
    Ok(())
}

/// SQL: true when `name` (an SQL expression) is declared by a live relay other than the
/// one numbered `$me` (a parameter placeholder); `$live` is `LIVE_WITHIN_MS`.
pub(super) fn declared_elsewhere(name: &str, me: &str, live: &str) -> String {
    format!(
        concat!(
            "EXISTS (SELECT 1 FROM {{s}}.replicas r WHERE r.num <> {me} AND r.heartbeat_at >= ",
            db_now_ms!(),
            " - {live} AND {name} = ANY(r.declared))"
        ),
        me = me,
        live = live,
        name = name
    )
}

/// Removes this relay's row (it stops).
pub(super) async fn deregister(db: &Db, me: &Replica) -> Result<(), StoreError> {
    let conn = db.conn().await?;
    conn.execute_typed(
        &db.sql("DELETE FROM {s}.replicas WHERE num = $1"),
        &[(&me.num, Type::INT8)],
    )
    .await
    .map_err(|e| db.err(e))?;
    Ok(())
}

/// Removes the rows of relays whose heartbeat is older than `older_than_ms` (they died
/// without leaving); their claims lapse by their leases. Runs in housekeeping.
pub(super) async fn forget_dead(
    db: &Db,
    tx: &tokio_postgres::Transaction<'_>,
    older_than_ms: i64,
) -> Result<u64, StoreError> {
    tx.execute_typed(
        &db.sql(concat!(
            "DELETE FROM {s}.replicas WHERE heartbeat_at < ",
            db_now_ms!(),
            " - $1"
        )),
        &[(&older_than_ms, Type::INT8)],
    )
    .await
    .map_err(|e| db.err(e))
}

#[cfg(test)]
mod tests {
    use super::replica_id;

    #[test]
    fn a_replica_id_is_the_host_and_six_hex_digits() {
        let id = replica_id("web-7d9f");
        let (host, suffix) = id.rsplit_once('-').unwrap();
        assert_eq!(host, "web-7d9f");
        assert_eq!(suffix.len(), 6, "{id}");
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }
}
