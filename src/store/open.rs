//! Opening the configured store: the SQLite file (locked for this process) or memory, or
//! PostgreSQL, from `StorageSettings` alone, so wiring and tests open either the same way.

use std::sync::Arc;

use prometheus::Histogram;

use super::postgres::PostgresStore;
use super::settings::{StorageLocation, StorageSettings};
use super::sqlite::{FileLock, SqliteStore};
use super::{Store, StoreError};

/// Histograms a store's writer fills.
#[derive(Clone)]
pub struct WriterMetrics {
    /// Seconds per transaction, commit included.
    pub commit_duration: Histogram,
    /// Jobs (SQLite) or requests (PostgreSQL's ingest and outcome batches) per transaction.
    pub batch_size: Histogram,
}

/// An open store, and the lock that keeps a second relay off its file (SQLite only).
pub struct Opened {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Held while the store is in use; `None` in memory and for PostgreSQL.
    pub lock: Option<FileLock>,
}

/// Opens the store `settings` name: SQLite is locked first (a second relay on the same file
/// is refused before opening resets its in-flight deliveries); PostgreSQL is connected,
/// migrated and checked.
pub async fn open(
    settings: &StorageSettings,
    metrics: WriterMetrics,
) -> Result<Opened, StoreError> {
    match &settings.location {
        StorageLocation::Postgres(pg) => {
            let store = PostgresStore::open(pg, settings, metrics).await?;
            Ok(Opened {
                store: Arc::new(store),
                lock: None,
            })
        }
        StorageLocation::File(_) | StorageLocation::Memory => {
            let lock = SqliteStore::lock(settings)?;
            let store = SqliteStore::open(settings, metrics)?;
            Ok(Opened {
                store: Arc::new(store),
                lock,
            })
        }
    }
}
