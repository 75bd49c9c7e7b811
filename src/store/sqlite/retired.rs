//! Tombstones of retired subscriptions: names deleted (their new deliveries are stored
//! `cancelled`) or gone from the config (`orphaned`) since the start. Only writer jobs use them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::DeliveryState;

/// A tombstone change: set a name's state (`Some`) or clear it (`None`).
pub(super) type Mark = (String, Option<DeliveryState>);

/// Tombstones of retired subscriptions: name -> the state their new deliveries get.
#[derive(Clone, Default)]
pub(super) struct Retired(Arc<Mutex<HashMap<String, DeliveryState>>>);

impl Retired {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<String, DeliveryState>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets (`Some`) or clears (`None`) each name's tombstone; returns what undoes it.
    pub(super) fn mark(&self, changes: Vec<Mark>) -> Vec<Mark> {
        let mut map = self.lock();
        let mut undo: Vec<_> = changes
            .into_iter()
            .map(|(name, state)| {
                let before = match state {
                    Some(s) => map.insert(name.clone(), s),
                    None => map.remove(&name),
                };
                (name, before)
            })
            .collect();
        // Undone in reverse, so a name changed twice gets its first value back.
        undo.reverse();
        undo
    }
}
