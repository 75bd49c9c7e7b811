//! Leases on claims, for relays sharing a schema. Every claim (a fresh delivery stored
//! handed off, or one claimed from the table) names its relay, counts up its delivery's
//! `claim_token` and lasts until `lease_until` on the database's clock. This relay keeps the
//! claims it holds (`Held`) and renews those held for a third of their lease; an outcome or a hand-
//! back counts only where the token still matches, so a relay that lost a claim cannot
//! overwrite its new owner's result. Claims whose lease ran out (their relay died, or lost
//! the database) are put back to pending by whichever relay looks first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use super::db::{Db, db_now_ms};
use super::replicas::{self, HEARTBEAT, Replica};
use crate::store::{ClaimToken, DeliveryId, StoreError, state_code};

/// Added to a subscription's timeout for the shortest lease of its claims.
const ATTEMPT_MARGIN: Duration = Duration::from_secs(10);
/// Lapsed claims put back per statement at most.
const TAKEOVER_BATCH: i64 = 1000;

/// How this relay claims: as whom, and for how long.
#[derive(Debug, Clone, Copy)]
pub(super) struct Claimer {
    /// Its `replicas` row.
    pub(super) owner: i64,
    /// `storage.postgres.lease`.
    pub(super) lease: Duration,
}

impl Claimer {
    /// The lease of a claim for a subscription whose attempts take up to `timeout`: the
    /// configured lease, and never less than the timeout plus a margin.
    pub(super) fn lease_ms(&self, timeout: Duration) -> i64 {
        self.lease.max(timeout + ATTEMPT_MARGIN).as_millis() as i64
    }
}

/// One claim held: its token, its lease in ms, and when it was taken or last renewed.
#[derive(Debug, Clone, Copy)]
struct Claim {
    token: ClaimToken,
    lease_ms: i64,
    since: Instant,
}

/// The claims this relay holds, by delivery id.
#[derive(Debug, Default)]
pub(super) struct Held(Mutex<HashMap<DeliveryId, Claim>>);

impl Held {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<DeliveryId, Claim>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a claim taken.
    pub(super) fn hold(&self, id: DeliveryId, token: ClaimToken, lease_ms: i64) {
        let since = Instant::now();
        self.map().insert(
            id,
            Claim {
                token,
                lease_ms,
                since,
            },
        );
    }

    /// Forgets a claim (its outcome is recorded, or it went back), unless a later claim of
    /// the same delivery replaced it.
    pub(super) fn release(&self, id: DeliveryId, token: ClaimToken) {
        let mut map = self.map();
        if map.get(&id).is_some_and(|c| c.token == token) {
            map.remove(&id);
        }
    }

    /// How many claims are held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map().len()
    }

    /// The claims held for a third of their lease or more since taken or renewed, as
    /// columns: ids, tokens, leases. Most claims end within seconds and are never renewed;
    /// renewing every claim would rewrite thousands of rows (and lock them against their
    /// outcomes) at each round.
    fn due_for_renewal(&self) -> (Vec<DeliveryId>, Vec<ClaimToken>, Vec<i64>) {
        let map = self.map();
        let mut cols = (Vec::new(), Vec::new(), Vec::new());
        for (id, c) in map.iter() {
            if c.since.elapsed().as_millis() as i64 >= c.lease_ms / 3 {
                cols.0.push(*id);
                cols.1.push(c.token);
                cols.2.push(c.lease_ms);
            }
        }
        cols
    }

    /// Notes that a claim's lease was renewed at `at`, if it is still the one held.
    fn renewed(&self, id: DeliveryId, token: ClaimToken, at: Instant) {
        if let Some(c) = self.map().get_mut(&id).filter(|c| c.token == token) {
            c.since = at;
        }
    }

    /// Takes every claim out.
    pub(super) fn take_all(&self) -> Vec<(DeliveryId, ClaimToken)> {
        self.map().drain().map(|(id, c)| (id, c.token)).collect()
    }
}

/// Extends the lease of every claim held for a third of its lease that is still this
/// relay's; the others were lost (taken over after their lease ran out) and are forgotten.
/// Returns how many were lost.
pub(super) async fn renew(db: &Db, held: &Held) -> Result<usize, StoreError> {
    let (ids, tokens, leases) = held.due_for_renewal();
    let at = Instant::now();
    if ids.is_empty() {
        return Ok(0);
    }
    let conn = db.conn().await?;
    let rows = conn
        .query_typed(
            &db.sql(concat!(
                "UPDATE {s}.deliveries d SET lease_until = ",
                db_now_ms!(),
                " + h.lease
                 FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS h(id, token, lease)
                 WHERE d.id = h.id AND d.claim_token = h.token AND d.state = ",
                state_code!(InFlight),
                "
                 RETURNING d.id"
            )),
            &[
                (&ids, Type::INT8_ARRAY),
                (&tokens, Type::INT8_ARRAY),
                (&leases, Type::INT8_ARRAY),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    let kept: std::collections::HashSet<DeliveryId> = rows.iter().map(|r| r.get(0)).collect();
    let mut lost = 0;
    for (id, token) in ids.into_iter().zip(tokens) {
        if kept.contains(&id) {
            held.renewed(id, token, at);
        } else {
            held.release(id, token);
            lost += 1;
        }
    }
    Ok(lost)
}

/// Puts in-flight deliveries whose lease ran out back to pending (oldest lease first, a
/// batch at most); returns the subscription of each.
pub(super) async fn take_over_lapsed(db: &Db) -> Result<Vec<String>, StoreError> {
    let conn = db.conn().await?;
    let rows = conn
        .query_typed(
            &db.sql(concat!(
                "WITH lapsed AS (
                    SELECT id FROM {s}.deliveries WHERE state = ",
                state_code!(InFlight),
                " AND lease_until < ",
                db_now_ms!(),
                "
                    ORDER BY lease_until LIMIT $1 FOR UPDATE SKIP LOCKED
                 )
                 UPDATE {s}.deliveries d SET state = ",
                state_code!(Pending),
                ", claim_owner = NULL, lease_until = NULL
                 FROM lapsed WHERE d.id = lapsed.id
                 RETURNING d.subscription"
            )),
            &[(&TAKEOVER_BATCH, Type::INT8)],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Until `stop`: beats the heartbeat every `HEARTBEAT` and, every third of the lease,
/// renews the claims held for a third of theirs (so each is renewed before it ends). Failures (the database unreachable) are retried at the next tick;
/// claims whose lease runs out meanwhile are lost to other relays, which is what renewal
/// finds out when the database is back.
pub(super) async fn keep(
    db: Arc<Db>,
    me: Arc<Replica>,
    held: Arc<Held>,
    lease: Duration,
    stop: CancellationToken,
) {
    let mut beat = tokio::time::interval(HEARTBEAT);
    let mut renewal = tokio::time::interval(lease / 3);
    for tick in [&mut beat, &mut renewal] {
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = beat.tick() => {
                if let Err(e) = db.run(replicas::heartbeat(&db, &me)).await {
                    tracing::warn!(replica = me.id.as_str(), error = %e, "cannot beat the heartbeat");
                }
            }
            _ = renewal.tick() => match db.run(renew(&db, &held)).await {
                Ok(0) => {}
                Ok(lost) => tracing::warn!(
                    replica = me.id.as_str(),
                    lost,
                    "claims lost: their lease ran out and other relays took them over; their outcomes will not be recorded here"
                ),
                Err(e) => tracing::warn!(replica = me.id.as_str(), error = %e, "cannot renew the leases of claims held"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_outlasts_the_attempt_timeout() {
        let c = Claimer {
            owner: 1,
            lease: Duration::from_secs(60),
        };
        assert_eq!(c.lease_ms(Duration::ZERO), 60_000);
        assert_eq!(c.lease_ms(Duration::from_secs(30)), 60_000);
        assert_eq!(c.lease_ms(Duration::from_secs(55)), 65_000);
        let short = Claimer {
            lease: Duration::from_secs(5),
            ..c
        };
        assert_eq!(short.lease_ms(Duration::from_secs(1)), 11_000);
    }

    #[test]
    fn a_claim_is_released_only_by_its_own_token() {
        let held = Held::default();
        held.hold(7, 1, 1000);
        held.hold(7, 2, 1000);
        held.release(7, 1);
        assert_eq!(held.len(), 1, "a later claim stays");
        held.release(7, 2);
        assert_eq!(held.len(), 0);
        held.hold(8, 3, 1000);
        assert_eq!(held.take_all(), [(8, 3)]);
        assert_eq!(held.len(), 0);
    }

    #[test]
    fn only_claims_held_a_third_of_their_lease_are_renewed() {
        let held = Held::default();
        held.hold(1, 1, 0);
        held.hold(2, 1, 60_000);
        assert_eq!(held.due_for_renewal().0, [1], "a fresh claim waits");
        held.renewed(1, 2, Instant::now());
        held.renewed(2, 1, Instant::now());
        assert_eq!(
            held.due_for_renewal().0,
            [1],
            "another token's renewal changes nothing"
        );
    }
}
