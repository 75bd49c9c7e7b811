//! The feeder of a push subscription: claims due deliveries from the store (retries, released
//! dead letters, rows recovered at start or from other relays, deliveries ingest could not
//! hand over) into the pump's queue, only as many as the queue has room for. While its
//! subscription is paused or its breaker open it claims nothing (the deliveries wait in the
//! store, holding no slot); when the cool-down is over it claims one, the probe.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::STORE_ERROR_PAUSE;
use super::control::{Control, Gate};
use crate::store::{Delivery, Store};
use crate::subscription::Subscription;
use crate::time::now_ms;

/// Longest a feeder sleeps without re-reading its next due time (a safety net: wake-ups and
/// the due time do the work).
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// Moves due deliveries from the store into the pump's queue, as room frees up.
pub(super) struct Feeder {
    /// The subscription's breaker and pause.
    pub(super) control: Arc<Control>,
    /// Its subscription.
    pub(super) sub: Arc<Subscription>,
    /// Deliveries claimed at most per store call.
    pub(super) batch: usize,
    /// The subscription's attempt timeout, which a claim's lease outlasts.
    pub(super) timeout: Duration,
    /// Where due deliveries are claimed.
    pub(super) store: Arc<dyn Store>,
    /// Signals new work (shared with the lane).
    pub(super) wake: Arc<Notify>,
    /// The pump's queue.
    pub(super) queue: mpsc::Sender<Delivery>,
    /// Stops it with its pump.
    pub(super) shutdown: CancellationToken,
}

impl Feeder {
    pub(super) async fn run(self) {
        let name = self.sub.name.as_str();
        loop {
            let (batch, probing) = match self.control.gate() {
                Gate::Claim => (self.batch, false),
                Gate::Probe => (1, true),
                Gate::Wait(until) => {
                    let cool_down = async {
                        match until {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = self.control.changed.notified() => {}
                        _ = cool_down => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                    continue;
                }
            };
            // Room first, so nothing claimed ever waits outside the bounded queue.
            let first = tokio::select! {
                p = self.queue.reserve() => match p { Ok(p) => p, Err(_) => return },
                _ = self.shutdown.cancelled() => return,
            };
            let mut slots = vec![first];
            while slots.len() < batch {
                match self.queue.try_reserve() {
                    Ok(p) => slots.push(p),
                    Err(_) => break,
                }
            }
            let claimed = self
                .store
                .claim_due(name, now_ms(), slots.len(), self.timeout)
                .await;
            match claimed {
                Ok(due) => {
                    if probing && due.is_empty() {
                        // Nothing due to probe with: the next due delivery will be.
                        self.control.no_probe();
                    }
                    let full = due.len() == slots.len();
                    for (slot, delivery) in slots.drain(..).zip(due) {
                        slot.send(delivery);
                    }
                    if !full {
                        drop(slots);
                        self.idle().await;
                    }
                }
                Err(e) => {
                    if probing {
                        self.control.no_probe();
                    }
                    tracing::warn!(subscription = name, error = %e, "cannot claim deliveries");
                    drop(slots);
                    tokio::select! {
                        _ = tokio::time::sleep(STORE_ERROR_PAUSE) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Returns when new work is signalled, a retry falls due, or on shutdown. Without a
    /// signal it only re-reads the due time (on the read connection) now and then, so idle
    /// subscriptions cost no writes however many there are.
    async fn idle(&self) {
        loop {
            let next_due = self.store.next_due_ms(&self.sub.name).await.ok().flatten();
            let now = now_ms();
            let wait = match next_due {
                Some(at) if at <= now => return,
                Some(at) => Duration::from_millis((at - now) as u64).min(IDLE_RECHECK),
                None => IDLE_RECHECK,
            };
            tokio::select! {
                _ = self.wake.notified() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }
}
