//! API subscriptions to and from the store: their rows, secrets sealed (`stored`); all of
//! them read at startup (`load`), and one at a time when another relay sharing the store
//! changed them (`admit`, from `sync`). A stored
//! subscription that no longer validates (a tighter destination policy), or whose secrets
//! were sealed with a key no longer in `storage.encryption_keys`, is left out, loudly: its
//! name stays taken and it can be deleted.

use std::sync::Arc;

use super::{ApiLoaded, CatalogError};
use crate::deliver::destination::DestinationGuard;
use crate::secret::{Keyring, KeyringError};
use crate::store::{Store, StoreError, StoredSubscription};
use crate::subscription::{Subscription, open_secrets};

/// What API subscriptions read from the store are admitted under.
#[derive(Clone)]
pub struct Policy {
    /// Open (and seal) their secrets (`storage.encryption_keys`).
    pub keys: Keyring,
    /// Where they may deliver (`api.allowed_destinations`).
    pub guard: Arc<DestinationGuard>,
}

/// Reads the API subscriptions kept in the store. One whose name the config now uses stops
/// startup (`ApiNameClash`); one that cannot be admitted is left out.
pub async fn load(
    store: &dyn Store,
    config: &[Arc<Subscription>],
    guard: &DestinationGuard,
    keys: &Keyring,
) -> Result<ApiLoaded, CatalogError> {
    let mut out = Vec::new();
    let mut left_out = Vec::new();
    for stored in store.subscriptions().await.map_err(CatalogError::Store)? {
        if let Some(index) = config.iter().position(|c| c.name == stored.name) {
            return Err(CatalogError::ApiNameClash {
                index,
                name: stored.name,
                id: stored.id,
            });
        }
        match admit(&stored, guard, keys) {
            Some(sub) => out.push(Arc::new(sub)),
            None => left_out.push((stored.id, stored.name)),
        }
    }
    Ok(ApiLoaded {
        subscriptions: out,
        left_out,
    })
}

/// The subscription a stored row describes, or `None` (logged) when it is left out.
pub(super) fn admit(
    stored: &StoredSubscription,
    guard: &DestinationGuard,
    keys: &Keyring,
) -> Option<Subscription> {
    // Lenient: documents stored before the API typed its scalars strictly still load.
    let mut issues = crate::yaml::Issues::default();
    let mut doc = serde_json::from_str(&stored.spec).unwrap_or(serde_json::Value::Null);
    if let Err(e) = open_secrets(&mut doc, keys) {
        let key = match &e {
            KeyringError::UnknownKey(id) | KeyringError::Forged(id) => id.as_str(),
            _ => "",
        };
        tracing::error!(
            subscription = stored.name.as_str(),
            id = stored.id.as_str(),
            key,
            reason = %e,
            "API subscription left out: its secrets cannot be decrypted (add the key it was encrypted with to storage.encryption_keys)"
        );
        return None;
    }
    let changed = (stored.created_at_ms, stored.updated_at_ms);
    let sub = Subscription::from_api(doc, &stored.id, changed, &mut issues);
    match sub {
        Some(sub) if issues.is_empty() => match guard.check_subscription(&sub) {
            Ok(()) => Some(sub),
            Err((field, reason)) => {
                tracing::error!(
                    subscription = stored.name.as_str(),
                    id = stored.id.as_str(),
                    field,
                    reason,
                    "API subscription left out: its destination is no longer allowed"
                );
                None
            }
        },
        _ => {
            tracing::error!(
                subscription = stored.name.as_str(),
                id = stored.id.as_str(),
                issues = ?issues.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "API subscription left out: it no longer validates"
            );
            None
        }
    }
}

/// What the store keeps of an API subscription: its secrets sealed when keys are set (a
/// row stored in plaintext before is sealed here the next time it is saved).
pub(super) fn stored(sub: &Subscription, keys: &Keyring) -> Result<StoredSubscription, StoreError> {
    let (created_at_ms, updated_at_ms) = sub.changed.unwrap_or((0, 0));
    let spec = sub
        .spec
        .sealed(keys)
        .map_err(|e| StoreError::unavailable_from("cannot encrypt its secrets", e))?;
    Ok(StoredSubscription {
        id: sub.id.clone(),
        name: sub.name.clone(),
        spec: spec.to_string(),
        created_at_ms,
        updated_at_ms,
    })
}
