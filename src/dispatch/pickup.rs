//! Work other relays left, on a store several relays share. Every `EVERY`: the live relays
//! are counted (every rate limit takes its share of them); claims whose
//! lease ran out (their relay died, or lost the database) go back to pending, counted in
//! `hookrelay_lease_takeovers_total`; then the feeders of the subscriptions with due work
//! are woken, and the long polls of pull subscriptions with available notifications. A
//! hand-back or takeover by another relay notifies no feeder here, and an idle feeder
//! otherwise looks again only after its own recheck; an event another relay accepted
//! notifies no long poll here, which would otherwise wait to its end: so a long poll learns
//! of it within `EVERY`. Each round also re-reads the pause states, so a pause or resume
//! through another relay holds here within `EVERY`.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Dispatcher;
use crate::time::now_ms;

/// How often lapsed claims are looked for and due work is picked up.
const EVERY: Duration = Duration::from_secs(1);

/// Until the relay stops.
pub(super) async fn run(dispatcher: Dispatcher) {
    let shared = dispatcher.shared.clone();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        // Every rate limit is shared by the live relays.
        let relays = shared.store.replicas().max(1);
        shared.relays.store(relays, Ordering::Relaxed);
        shared.metrics.replicas.set(relays as i64);
        let mut wake = BTreeSet::new();
        match shared.store.take_over_lapsed().await {
            Ok(taken) if !taken.is_empty() => {
                shared.metrics.lease_takeovers.inc_by(taken.len() as u64);
                tracing::info!(
                    deliveries = taken.len(),
                    "took over claims whose lease ran out (another relay died or lost the database)"
                );
                wake.extend(taken);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot look for lapsed claims"),
        }
        match shared.store.due_subscriptions(now_ms()).await {
            Ok(due) => wake.extend(due),
            Err(e) => tracing::warn!(error = %e, "cannot look for due deliveries"),
        }
        for name in &wake {
            dispatcher.wake(name);
        }
        if let Err(e) = dispatcher.sync_pauses().await {
            tracing::warn!(error = %e, "cannot read the subscriptions' pause states");
        }
    }
}
