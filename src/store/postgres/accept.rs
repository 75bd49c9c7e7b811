//! Accepting events, grouped: every ingest request waiting for the writer goes into one
//! transaction of one round trip (BEGIN, the locks, one statement, COMMIT, pipelined; the
//! statements prepared once per connection). The
//! statement inserts all events and all deliveries from arrays (`unnest`), each event once:
//! a repeated id (stored before, or earlier in the group) answers with the first result.

use std::borrow::Cow;
use std::collections::HashMap;

use futures_util::future::join4;
use tokio::sync::oneshot;
use tokio_postgres::types::Type;

use super::db::{Db, Param, db_now_ms, is_connection_error, locks};
use super::leases::Claimer;
use crate::store::{Accepted, Admission, DeliveryId, StoreError, attributes, state_code};

/// One ingest request waiting for the writer: its events and whom to answer.
pub(super) type AcceptRequest = (
    Vec<Accepted>,
    oneshot::Sender<Result<Vec<Admission>, StoreError>>,
);

/// Parameters `$1..$7` are the events' columns, `$8..$12` and `$14` the deliveries' (`$8`
/// the 1-based position of the delivery's event, `$14` a handed-off one's lease in ms);
/// `$13` is this relay's `replicas` row. A delivery waits behind an unfinished one of its
/// key, stored before or earlier in the group; a tombstone gives its state first. A handed-
/// off delivery is this relay's first claim of it (token 1), with a lease if in flight.
/// The lookup of events stored before takes only the ids not inserted now: a generic plan
/// made while `events` was small hashes them and scans `events`, and an empty hash (no
/// duplicate, the usual case) ends that scan at its first row instead of the whole table.
const INSERT: &str = concat!(
    "WITH input AS (
    SELECT t.*, t.ord = min(t.ord) OVER (PARTITION BY t.id) AS first
    FROM unnest($1::text[], $2::text[], $3::int8[], $4::bytea[], $5::text[], $6::text[], $7::text[])
         WITH ORDINALITY AS t(id, type, received_at, data, subscriptions, content_type, attributes, ord)
), ins AS (
    INSERT INTO {s}.events (id, type, received_at, data, subscriptions, content_type, attributes)
    SELECT id, type, received_at, data, subscriptions, content_type, attributes
    FROM input WHERE first ORDER BY ord
    ON CONFLICT (id) DO NOTHING
    RETURNING seq, id
), wanted AS (
    SELECT ins.seq, d.sub, d.handed, d.expires, d.key, d.lease, input.received_at, d.ord,
           t.state AS retired,
           row_number() OVER (PARTITION BY d.sub, d.key ORDER BY d.ord) AS nth
    FROM unnest($8::int8[], $9::text[], $10::bool[], $11::int8[], $12::text[], $14::int8[])
         WITH ORDINALITY AS d(ev, sub, handed, expires, key, lease, ord)
    JOIN input ON input.ord = d.ev AND input.first
    JOIN ins ON ins.id = input.id
    LEFT JOIN {s}.tombstones t ON t.name = d.sub
), dl AS (
    INSERT INTO {s}.deliveries (event_seq, subscription, state, received_at, next_attempt_at,
                                expires_at, ordering_key, finished_at, claim_owner, claim_token,
                                lease_until)
    SELECT w.seq, w.sub, st.state, w.received_at, w.received_at, w.expires, w.key,
           CASE WHEN st.state = ",
    state_code!(Cancelled),
    " THEN w.received_at END,
           CASE WHEN st.state = ",
    state_code!(InFlight),
    " THEN $13::int8 END,
           CASE WHEN w.handed THEN 1 ELSE 0 END,
           CASE WHEN st.state = ",
    state_code!(InFlight),
    " THEN ",
    db_now_ms!(),
    " + w.lease END
    FROM wanted w, LATERAL (SELECT CASE
        WHEN w.retired IS NOT NULL THEN w.retired
        WHEN w.key IS NOT NULL AND (w.nth > 1 OR EXISTS (
            SELECT 1 FROM {s}.deliveries x
            WHERE x.subscription = w.sub AND x.ordering_key = w.key AND x.state IN ",
    states!(Pending, InFlight, Orphaned, Waiting),
    ")) THEN ",
    state_code!(Waiting),
    "
        WHEN w.handed THEN ",
    state_code!(InFlight),
    " ELSE ",
    state_code!(Pending),
    " END AS state) st
    ORDER BY w.ord
    RETURNING id, event_seq, subscription
)
SELECT 1, seq, NULL::int8, id, NULL::text FROM ins
UNION ALL SELECT 2, event_seq, id, subscription, NULL FROM dl
UNION ALL SELECT 3, NULL, NULL, e.id, e.subscriptions FROM {s}.events e
    WHERE e.id IN (SELECT id FROM input WHERE NOT first OR id NOT IN (SELECT id FROM ins))"
);

/// An ordering key as a `text` value: PostgreSQL's text cannot hold NUL, which a key (a
/// value of the event's data) may. Keys are only compared with each other in the store, so an
/// injective escape is enough: a key with a backslash or a NUL gets each escaped (`\\`,
/// `\0`); any other key, which has neither, stays as it is.
fn storable_key(key: &str) -> Cow<'_, str> {
    if !key.contains(['\\', '\0']) {
        return Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len() + 2);
    for c in key.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The group's advisory locks: the retire lock shared, then the ordering lock if it stores
/// a keyed delivery, then the queue lock if it stores a pull delivery (`$1..$3` the classes,
/// `$4` the schema; an unused class is only read, so every variant has the same parameters).
fn lock_statement(keyed: bool, pulled: bool) -> &'static str {
    match (keyed, pulled) {
        (false, false) => {
            "SELECT pg_advisory_xact_lock_shared($1, hashtext($4)), $2::int4, $3::int4"
        }
        (true, false) => {
            "SELECT pg_advisory_xact_lock_shared($1, hashtext($4)), pg_advisory_xact_lock($2, hashtext($4)), $3::int4"
        }
        (false, true) => {
            "SELECT pg_advisory_xact_lock_shared($1, hashtext($4)), $2::int4, pg_advisory_xact_lock($3, hashtext($4))"
        }
        (true, true) => {
            "SELECT pg_advisory_xact_lock_shared($1, hashtext($4)), pg_advisory_xact_lock($2, hashtext($4)), pg_advisory_xact_lock($3, hashtext($4))"
        }
    }
}

/// Stores every request of a group in one transaction and answers each. If the group
/// fails for a reason of its own data (not the connection), each request is tried alone,
/// so one bad request cannot fail the others.
pub(super) async fn accept_group(
    db: &Db,
    group: Vec<AcceptRequest>,
    ttl_ms: i64,
    claimer: &Claimer,
) {
    let (batches, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
    match write_within(db, &batches, ttl_ms, claimer).await {
        Ok(mut admissions) => {
            for (batch, reply) in batches.iter().zip(replies) {
                let rest = admissions.split_off(batch.len());
                let _ = reply.send(Ok(std::mem::replace(&mut admissions, rest)));
            }
        }
        Err((e, connection)) if connection || batches.len() == 1 => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(_) => {
            for (batch, reply) in batches.into_iter().zip(replies) {
                let one = [batch];
                let written = write_within(db, &one, ttl_ms, claimer).await;
                let _ = reply.send(written.map_err(|(e, _)| e));
            }
        }
    }
}

/// `write`, given up (as a lost connection) when the server does not answer in twice
/// `connect_timeout`: a connection wait and the group's one round trip.
async fn write_within(
    db: &Db,
    batches: &[Vec<Accepted>],
    ttl_ms: i64,
    claimer: &Claimer,
) -> Result<Vec<Admission>, (StoreError, bool)> {
    let limit = db.connect_timeout * 2;
    tokio::time::timeout(limit, write(db, batches, ttl_ms, claimer))
        .await
        .unwrap_or_else(|_| Err((db.abandon(limit), true)))
}

/// Column arrays of a group's events and deliveries.
#[derive(Default)]
struct Columns<'a> {
    ids: Vec<&'a str>,
    types: Vec<&'a str>,
    received: Vec<i64>,
    data: Vec<&'a [u8]>,
    names: Vec<String>,
    content_types: Vec<Option<&'a str>>,
    attributes: Vec<Option<String>>,
    d_event: Vec<i64>,
    d_sub: Vec<&'a str>,
    d_handed: Vec<bool>,
    d_expires: Vec<i64>,
    d_key: Vec<Option<Cow<'a, str>>>,
    d_lease: Vec<i64>,
}

/// One transaction for every event of `batches`; the admissions in order, or the error and
/// whether the connection failed.
async fn write(
    db: &Db,
    batches: &[Vec<Accepted>],
    ttl_ms: i64,
    claimer: &Claimer,
) -> Result<Vec<Admission>, (StoreError, bool)> {
    let mut c = Columns::default();
    for a in batches.iter().flatten() {
        let e = &a.event;
        c.ids.push(&e.id);
        c.types.push(&e.event_type);
        c.received.push(e.received_at_ms);
        c.data.push(&e.data[..]);
        let names: Vec<&str> = a.subscriptions().map(|s| &**s).collect();
        c.names
            .push(serde_json::to_string(&names).unwrap_or_else(|_| "[]".into()));
        c.content_types
            .push(e.raw.as_deref().map(|r| r.content_type.as_str()));
        c.attributes.push(
            e.raw
                .as_deref()
                .and_then(|r| attributes::to_json(&r.attributes)),
        );
        for d in &a.deliveries {
            c.d_event.push(c.ids.len() as i64);
            c.d_sub.push(&d.subscription);
            c.d_handed.push(d.handed_off);
            c.d_expires
                .push(e.received_at_ms + d.ttl_ms.unwrap_or(ttl_ms));
            c.d_key.push(d.ordering_key.as_deref().map(storable_key));
            c.d_lease.push(claimer.lease_ms(d.attempt_timeout));
        }
    }
    let keyed = c.d_key.iter().any(Option::is_some);
    let pulled = batches
        .iter()
        .flatten()
        .flat_map(|a| &a.deliveries)
        .any(|d| d.pulled);
    let sql = db.sql(INSERT);
    let params: [Param<'_>; 14] = [
        (&c.ids, Type::TEXT_ARRAY),
        (&c.types, Type::TEXT_ARRAY),
        (&c.received, Type::INT8_ARRAY),
        (&c.data, Type::BYTEA_ARRAY),
        (&c.names, Type::TEXT_ARRAY),
        (&c.content_types, Type::TEXT_ARRAY),
        (&c.attributes, Type::TEXT_ARRAY),
        (&c.d_event, Type::INT8_ARRAY),
        (&c.d_sub, Type::TEXT_ARRAY),
        (&c.d_handed, Type::BOOL_ARRAY),
        (&c.d_expires, Type::INT8_ARRAY),
        (&c.d_key, Type::TEXT_ARRAY),
        (&claimer.owner, Type::INT8),
        (&c.d_lease, Type::INT8_ARRAY),
    ];
    // Shared: a delete or retire (exclusive) waits for this group, or this group for it,
    // so no delivery of a retired name is stored pending. The ordering lock makes "is the
    // key busy" and a head's promotion happen one after the other. The queue lock, held
    // from before the INSERT to the COMMIT by every group with a pull delivery, gives those
    // ids in commit order (see `locks::QUEUE`). Always taken in this order.
    let lock = lock_statement(keyed, pulled);
    let lock_params: [Param<'_>; 4] = [
        (&locks::RETIRE, Type::INT4),
        (&locks::ORDER, Type::INT4),
        (&locks::QUEUE, Type::INT4),
        (&db.schema, Type::TEXT),
    ];
    let conn = db.conn().await.map_err(|e| (e, true))?;
    let session = db.session(&conn);
    let result = async {
        // Prepared first: a statement that waited for its Parse would go after the COMMIT.
        let lock = session.ready(lock, &lock_params).await?;
        let insert = session.ready(&sql, &params).await?;
        // One round trip: the four are sent before the first answer is read. A failure
        // aborts the transaction, and the COMMIT then rolls it back.
        let (begin, locked, rows, commit) = join4(
            conn.batch_execute("BEGIN"),
            session.run(&lock, &lock_params),
            session.run(&insert, &params),
            conn.batch_execute("COMMIT"),
        )
        .await;
        begin
            .and(locked)
            .and(rows)
            .and_then(|rows| commit.map(|()| rows))
    }
    .await;
    let rows = match result {
        Ok(rows) => rows,
        Err(e) => {
            // Whatever state the session is in, it is not reused.
            drop(deadpool_postgres::Object::take(conn));
            let connection = is_connection_error(&e);
            return Err((db.err(e), connection));
        }
    };
    admissions(batches, &rows).map_err(|e| (e, false))
}

/// Each event's admission from the statement's rows: 1 = an event stored (seq, id), 2 = a
/// delivery stored (event seq, id, subscription), 3 = an event stored before (id, names).
fn admissions(
    batches: &[Vec<Accepted>],
    rows: &[tokio_postgres::Row],
) -> Result<Vec<Admission>, StoreError> {
    let mut stored: HashMap<&str, i64> = HashMap::new();
    let mut delivery: HashMap<(i64, &str), DeliveryId> = HashMap::new();
    let mut before: HashMap<&str, &str> = HashMap::new();
    for row in rows {
        match row.get::<_, i32>(0) {
            1 => {
                stored.insert(row.get(3), row.get(1));
            }
            2 => {
                delivery.insert((row.get(1), row.get(3)), row.get(2));
            }
            _ => {
                before.insert(row.get(3), row.get(4));
            }
        }
    }
    let mut out = Vec::new();
    // Names matched by the first occurrence of each id in this group.
    let mut first: HashMap<&str, Vec<String>> = HashMap::new();
    for a in batches.iter().flatten() {
        let id = a.event.id.as_str();
        if let Some(names) = first.get(id) {
            out.push(Admission::Duplicate {
                subscriptions: names.clone(),
            });
            continue;
        }
        let admission = match stored.get(id) {
            Some(seq) => {
                let ids = a
                    .deliveries
                    .iter()
                    .map(|d| delivery.get(&(*seq, &*d.subscription)).copied())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| StoreError::unavailable("a stored delivery went missing"))?;
                first.insert(id, a.subscriptions().map(|s| s.to_string()).collect());
                Admission::Stored(ids)
            }
            None => {
                let names: Vec<String> = before
                    .get(id)
                    .and_then(|text| serde_json::from_str(text).ok())
                    .unwrap_or_default();
                first.insert(id, names.clone());
                Admission::Duplicate {
                    subscriptions: names,
                }
            }
        };
        out.push(admission);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::storable_key;

    #[test]
    fn keys_with_nul_or_backslash_are_escaped_apart() {
        assert_eq!(storable_key("plain"), "plain");
        assert_eq!(storable_key("a\0b"), "a\\0b");
        assert_eq!(storable_key("a\\0b"), "a\\\\0b");
        assert_ne!(storable_key("a\0"), storable_key("a\\0"));
        assert!(!storable_key("\0\0").contains('\0'));
    }
}
