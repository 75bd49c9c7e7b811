//! In-memory store: fast and bounded, lost on exit. For ephemeral use and tests.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Accepted, Completion, Delivery, DeliveryId, QueueStats, Store, StoreError};

/// A bounded in-memory queue.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: DeliveryId,
    records: HashMap<DeliveryId, Record>,
    queues: HashMap<Arc<str>, Queue>,
    /// Dead letters, oldest first; the oldest are dropped beyond capacity.
    dead: VecDeque<DeliveryId>,
    /// Pending plus in-flight deliveries across all subscriptions.
    live: usize,
}

#[derive(Debug, Default)]
struct Queue {
    /// (due ms, id) of pending deliveries.
    pending: BTreeSet<(i64, DeliveryId)>,
    /// (accepted ms, id) of live deliveries, for the oldest-pending gauge.
    live: BTreeSet<(i64, DeliveryId)>,
    dead: u64,
}

#[derive(Debug)]
struct Record {
    delivery: Delivery,
    state: State,
    due_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    InFlight,
    Failed,
}

impl MemoryStore {
    /// A store holding at most `capacity` undelivered deliveries (and as many dead letters).
    pub fn new(capacity: usize) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping delivery, so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn accept(&self, batch: Vec<Accepted>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let incoming: usize = batch.iter().map(|a| a.subscriptions.len()).sum();
        if inner.live + incoming > self.capacity {
            return Err(StoreError::Busy(format!(
                "{} undelivered deliveries held (capacity {})",
                inner.live, self.capacity
            )));
        }
        for accepted in batch {
            let event_id: Arc<str> = accepted.event.id.into();
            let event_type: Arc<str> = accepted.event.event_type.into();
            let data: Bytes = accepted.event.data;
            let received = accepted.event.received_at_ms;
            for sub in accepted.subscriptions {
                inner.next_id += 1;
                let id = inner.next_id;
                let queue = inner.queues.entry(sub.clone()).or_default();
                queue.pending.insert((received, id));
                queue.live.insert((received, id));
                inner.live += 1;
                inner.records.insert(
                    id,
                    Record {
                        delivery: Delivery {
                            id,
                            subscription: sub,
                            event_id: event_id.clone(),
                            event_type: event_type.clone(),
                            data: data.clone(),
                            attempts: 0,
                            received_at_ms: received,
                        },
                        state: State::Pending,
                        due_ms: received,
                    },
                );
            }
        }
        Ok(())
    }

    async fn claim_due(
        &self,
        subscription: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut inner = self.lock();
        let Inner {
            queues, records, ..
        } = &mut *inner;
        let Some(queue) = queues.get_mut(subscription) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        while out.len() < limit {
            match queue.pending.first() {
                Some(&(due, id)) if due <= now_ms => {
                    queue.pending.pop_first();
                    if let Some(record) = records.get_mut(&id) {
                        record.state = State::InFlight;
                        out.push(record.delivery.clone());
                    }
                }
                _ => break,
            }
        }
        Ok(out)
    }

    async fn next_due_ms(&self, subscription: &str) -> Result<Option<i64>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .queues
            .get(subscription)
            .and_then(|q| q.pending.first())
            .map(|(due, _)| *due))
    }

    async fn complete(&self, id: DeliveryId, completion: Completion) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let Some(record) = inner.records.get_mut(&id) else {
            return Ok(());
        };
        if record.state != State::InFlight {
            return Ok(());
        }
        record.delivery.attempts += 1;
        let sub = record.delivery.subscription.clone();
        let key = (record.delivery.received_at_ms, id);
        match completion {
            Completion::Retry { at_ms, .. } => {
                record.state = State::Pending;
                record.due_ms = at_ms;
                if let Some(q) = inner.queues.get_mut(&sub) {
                    q.pending.insert((at_ms, id));
                }
            }
            Completion::Delivered { .. } => {
                inner.records.remove(&id);
                inner.live -= 1;
                if let Some(q) = inner.queues.get_mut(&sub) {
                    q.live.remove(&key);
                }
            }
            Completion::Failed { .. } => {
                record.state = State::Failed;
                inner.live -= 1;
                if let Some(q) = inner.queues.get_mut(&sub) {
                    q.live.remove(&key);
                    q.dead += 1;
                }
                inner.dead.push_back(id);
                // Keep dead letters bounded too; the oldest go first.
                while inner.dead.len() > self.capacity {
                    if let Some(old) = inner.dead.pop_front()
                        && let Some(r) = inner.records.remove(&old)
                        && let Some(q) = inner.queues.get_mut(&r.delivery.subscription)
                    {
                        q.dead -= 1;
                    }
                }
            }
        }
        Ok(())
    }

    async fn unclaim(&self, ids: Vec<DeliveryId>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let Inner {
            queues, records, ..
        } = &mut *inner;
        for id in ids {
            if let Some(record) = records.get_mut(&id)
                && record.state == State::InFlight
            {
                record.state = State::Pending;
                if let Some(q) = queues.get_mut(&record.delivery.subscription) {
                    q.pending.insert((record.due_ms, id));
                }
            }
        }
        Ok(())
    }

    async fn stats(&self) -> Result<HashMap<String, QueueStats>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .queues
            .iter()
            .map(|(name, q)| {
                (
                    name.to_string(),
                    QueueStats {
                        depth: q.live.len() as u64,
                        oldest_ms: q.live.first().map(|(at, _)| *at),
                        dead_letters: q.dead,
                    },
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn accepted(id: &str, at: i64, subs: &[&str]) -> Accepted {
        Accepted {
            event: Event {
                id: id.into(),
                event_type: "t".into(),
                data: Bytes::from_static(b"{}"),
                received_at_ms: at,
            },
            subscriptions: subs.iter().map(|s| Arc::from(*s)).collect(),
        }
    }

    #[tokio::test]
    async fn claims_due_in_order_and_schedules_retries() {
        let s = MemoryStore::new(10);
        s.accept(vec![
            accepted("e1", 100, &["a", "b"]),
            accepted("e2", 200, &["a"]),
        ])
        .await
        .unwrap();
        assert!(s.claim_due("a", 50, 10).await.unwrap().is_empty());
        let claimed = s.claim_due("a", 1000, 10).await.unwrap();
        let ids: Vec<_> = claimed.iter().map(|d| d.event_id.to_string()).collect();
        assert_eq!(ids, ["e1", "e2"]);
        s.complete(
            claimed[0].id,
            Completion::Retry {
                at_ms: 5000,
                status: Some(500),
                error: "HTTP 500".into(),
            },
        )
        .await
        .unwrap();
        s.complete(claimed[1].id, Completion::Delivered { status: 200 })
            .await
            .unwrap();
        assert_eq!(s.next_due_ms("a").await.unwrap(), Some(5000));
        let again = s.claim_due("a", 5000, 10).await.unwrap();
        assert_eq!(again[0].attempts, 1);
        s.complete(
            again[0].id,
            Completion::Failed {
                status: None,
                error: "x".into(),
            },
        )
        .await
        .unwrap();
        let stats = s.stats().await.unwrap();
        assert_eq!(
            stats["a"],
            QueueStats {
                depth: 0,
                oldest_ms: None,
                dead_letters: 1
            }
        );
        assert_eq!(stats["b"].depth, 1);
        assert_eq!(stats["b"].oldest_ms, Some(100));
    }

    #[tokio::test]
    async fn refuses_beyond_capacity() {
        let s = MemoryStore::new(2);
        s.accept(vec![accepted("e1", 1, &["a", "b"])])
            .await
            .unwrap();
        assert!(matches!(
            s.accept(vec![accepted("e2", 1, &["a"])]).await,
            Err(StoreError::Busy(_))
        ));
        // Unmatched events take no room.
        s.accept(vec![accepted("e3", 1, &[])]).await.unwrap();
    }

    #[tokio::test]
    async fn unclaimed_deliveries_come_back() {
        let s = MemoryStore::new(10);
        s.accept(vec![accepted("e1", 1, &["a"])]).await.unwrap();
        let claimed = s.claim_due("a", 10, 10).await.unwrap();
        assert!(s.claim_due("a", 10, 10).await.unwrap().is_empty());
        s.unclaim(vec![claimed[0].id]).await.unwrap();
        assert_eq!(s.claim_due("a", 10, 10).await.unwrap().len(), 1);
    }
}
