//! Shared API subscriptions: relays sharing a store (PostgreSQL) see each other's changes.
//! Every change bumps the store's catalog revision; `keep_in_sync` reads it every
//! `storage.postgres.sync_interval`, and at once when the store's listener signals a
//! change, and when it moved, `Catalog::resync` brings this relay's API subscriptions in
//! line with the stored ones: new and changed ones start (or restart) their pumps, gone ones
//! stop (their long polls end). Config subscriptions are each relay's own and untouched.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::load::admit;
use super::{Catalog, CatalogError};
use crate::matching::Place;
use crate::subscription::{self, Subscription};

/// What a resync changed, by subscription name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resynced {
    /// Registered through another relay: started here.
    pub added: Vec<String>,
    /// Changed through another relay: restarted with the new settings.
    pub changed: Vec<String>,
    /// Deleted through another relay: stopped here.
    pub removed: Vec<String>,
    /// Stored, but left out here (a config name, an invalid spec or an unreadable secret).
    pub left_out: Vec<String>,
}

impl Catalog {
    /// Brings the API subscriptions in force in line with those in the store. A stored one
    /// whose name this relay's config declares is left out (logged; the config wins here), as
    /// is one that does not validate here; left-out ones keep their names taken. Runs under
    /// the edit lock, so it never interleaves with an update or delete made here; creates in
    /// progress here are left to finish on their own.
    pub async fn resync(&self) -> Result<Resynced, CatalogError> {
        let _edit = self.edits.lock().await;
        // Only what was in force before the read may be found gone: a create here that
        // completes after the read is not in it, and not gone.
        let before: HashSet<String> = self.lock().api.keys().cloned().collect();
        let stored = self.store.subscriptions().await?;
        let mut out = Resynced::default();
        let mut start: Vec<(Arc<Subscription>, Option<Arc<Subscription>>)> = Vec::new();
        let mut left_out = Vec::new();
        let seen: HashSet<&str> = stored.iter().map(|s| s.id.as_str()).collect();
        for row in &stored {
            let (current, skip, config_name) = {
                let state = self.lock();
                let current = state.api.get(&row.id).cloned();
                // Left out before, or being created here (its id reserved, not yet in force).
                let skip = current.is_none()
                    && (state.left_out.contains_key(&row.id) || state.taken.contains_key(&row.id));
                let config_name = state.config.iter().any(|c| c.name == row.name);
                (current, skip, config_name)
            };
            if skip {
                continue;
            }
            if let Some(cur) = &current
                && cur.changed == Some((row.created_at_ms, row.updated_at_ms))
            {
                continue;
            }
            if current.is_none() && config_name {
                tracing::error!(
                    subscription = row.name.as_str(),
                    id = row.id.as_str(),
                    "API subscription registered through another relay left out: this relay's config file declares the name"
                );
                left_out.push((row.id.clone(), row.name.clone()));
                continue;
            }
            match admit(row, &self.policy.guard, &self.policy.keys) {
                Some(sub) => start.push((Arc::new(sub), current)),
                None => left_out.push((row.id.clone(), row.name.clone())),
            }
        }
        let gone: Vec<Arc<Subscription>> = {
            let state = self.lock();
            state
                .api
                .values()
                .filter(|s| before.contains(&s.id) && !seen.contains(s.id.as_str()))
                .cloned()
                .collect()
        };
        // A changed one that no longer validates here stops as if deleted.
        let mut stop: Vec<Arc<Subscription>> = gone;
        for (id, _) in &left_out {
            if let Some(sub) = self.lock().api.get(id).cloned() {
                stop.push(sub);
            }
        }
        if start.is_empty() && stop.is_empty() && left_out.is_empty() {
            self.forget_left_out(&seen);
            return Ok(out);
        }

        // Stopped first: a name deleted and created again through another relay (a new id)
        // is stopped under its old id, then started under its new one.
        let mut waiters = Vec::new();
        for sub in &stop {
            waiters.extend(self.dispatcher.arrivals(&sub.name));
            self.dispatcher.remove(&sub.name);
        }
        for (sub, old) in &start {
            if sub.own_metrics {
                self.metrics.init_own_series(sub);
            }
            if let Some(old) = old
                && *sub.ordering() == subscription::DeliveryOrder::None
                && *old.ordering() != subscription::DeliveryOrder::None
            {
                self.unorder(vec![sub.name.clone()]).await;
            }
            self.dispatcher.add(sub.clone());
        }
        let start_lanes: Vec<_> = start
            .iter()
            .map(|(sub, _)| self.dispatcher.lane(&sub.name))
            .collect();
        let version = {
            let mut state = self.lock();
            for sub in &stop {
                state.api.remove(&sub.id);
                state.index.remove(&Place::api(sub));
                state.taken.remove(&sub.id);
                state.taken.remove(&sub.name);
                state.own_metrics -= usize::from(sub.own_metrics);
            }
            for ((sub, old), lane) in start.iter().zip(start_lanes) {
                state.index_api(sub, lane);
                if let Some(old) = old {
                    state.own_metrics -= usize::from(old.own_metrics);
                }
                state.own_metrics += usize::from(sub.own_metrics);
                state.taken.insert(sub.id.clone(), sub.id.clone());
                state.taken.insert(sub.name.clone(), sub.id.clone());
                state.api.insert(sub.id.clone(), sub.clone());
            }
            for (id, name) in &left_out {
                state.taken.insert(id.clone(), id.clone());
                // A config subscription of the name keeps it.
                state
                    .taken
                    .entry(name.clone())
                    .or_insert_with(|| id.clone());
                state.left_out.insert(id.clone(), name.clone());
            }
            state.version += 1;
            state.version
        };
        self.forget_left_out(&seen);
        self.publish(version);
        self.count();
        for waiters in waiters {
            waiters.notify_waiters();
        }
        for sub in &stop {
            let restarted = start.iter().any(|(s, _)| s.name == sub.name);
            if sub.own_metrics && !restarted {
                self.metrics.remove_subscription(&sub.name);
            }
            tracing::info!(
                subscription = sub.name.as_str(),
                id = sub.id.as_str(),
                "subscription deleted through another relay; stopped here"
            );
            out.removed.push(sub.name.clone());
        }
        for (sub, old) in &start {
            match old {
                Some(old) => {
                    if old.own_metrics && !sub.own_metrics {
                        self.metrics.remove_subscription(&old.name);
                    }
                    // Long polls on the old version see the change and end.
                    self.dispatcher.wake(&sub.name);
                    out.changed.push(sub.name.clone());
                }
                None => out.added.push(sub.name.clone()),
            }
            tracing::info!(
                subscription = sub.name.as_str(),
                id = sub.id.as_str(),
                destination = sub.target(),
                "subscription registered or changed through another relay; in force here"
            );
        }
        out.left_out = left_out.into_iter().map(|(_, name)| name).collect();
        Ok(out)
    }

    /// Frees the names of left-out subscriptions that are no longer stored (deleted
    /// through another relay).
    fn forget_left_out(&self, stored: &HashSet<&str>) {
        let mut state = self.lock();
        let gone: Vec<(String, String)> = state
            .left_out
            .iter()
            .filter(|(id, _)| !stored.contains(id.as_str()))
            .map(|(id, name)| (id.clone(), name.clone()))
            .collect();
        for (id, name) in gone {
            state.left_out.remove(&id);
            state.taken.remove(&id);
            // The config may hold the name (a left-out clash): it keeps it.
            if state.taken.get(&name) == Some(&id) {
                state.taken.remove(&name);
            }
        }
    }
}

/// Resyncs `catalog` whenever the store's catalog revision moves away from `revision` (the
/// one its API subscriptions were read at): checked every `interval`, and at once when the
/// store signals a change. Until `stop`.
pub async fn keep_in_sync(
    catalog: Arc<Catalog>,
    mut revision: i64,
    interval: Duration,
    stop: CancellationToken,
) {
    let signal = catalog.store.catalog_signal();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let signalled = async {
            match &signal {
                Some(signal) => signal.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = signalled => {}
            _ = stop.cancelled() => return,
        }
        let now = match catalog.store.catalog_revision().await {
            Ok(Some(now)) => now,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the catalog revision");
                continue;
            }
        };
        if now == revision {
            continue;
        }
        match catalog.resync().await {
            Ok(_) => revision = now,
            Err(e) => {
                tracing::warn!(error = %e, "cannot resync the API subscriptions; retrying")
            }
        }
    }
}
