//! The `storage` section: where the queue lives and how it is kept.

use std::path::PathBuf;
use std::time::Duration;

use crate::yaml::{Issues, Section};

/// Queue storage settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSettings {
    /// A database file, or memory.
    pub location: StorageLocation,
    /// How hard commits are pushed to disk.
    pub sync: SyncMode,
    /// Jobs waiting for the writer at most; beyond it ingest answers 503.
    pub queue_capacity: usize,
    /// Undelivered deliveries expire this long after acceptance (or release).
    pub ttl: Duration,
    /// Terminal deliveries and finished events are kept this long.
    pub retention: Duration,
    /// Above this database size ingest answers 503; unset: 80% of the volume.
    pub max_size: Option<u64>,
    /// Space the relay holds beside the database and gives back when the disk fills, so
    /// accepted deliveries can still complete and prune.
    pub reserve: u64,
}

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    /// A file (created with its directories).
    File(PathBuf),
    /// In memory: lost on exit. For ephemeral use.
    Memory,
}

/// Commit durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// fsync on every group commit: survives OS crashes and power loss.
    Full,
    /// fsync at checkpoints only: survives process crashes, faster.
    Normal,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            location: StorageLocation::File(PathBuf::from("./data/hookrelay.db")),
            sync: SyncMode::Full,
            queue_capacity: 4096,
            ttl: Duration::from_secs(72 * 3600),
            retention: Duration::from_secs(72 * 3600),
            max_size: None,
            reserve: 16 * 1024 * 1024,
        }
    }
}

impl StorageSettings {
    /// Reads the `storage` section of the config root.
    pub fn parse(root: &Section<'_>, issues: &mut Issues) -> StorageSettings {
        let st = root.section(
            "storage",
            &[
                "memory",
                "path",
                "sync",
                "queue_capacity",
                "ttl",
                "retention",
                "max_size",
                "reserve",
            ],
            issues,
        );
        let defaults = StorageSettings::default();
        let memory = st.boolean("memory", false, issues);
        let location = match (memory, st.string("path", issues)) {
            (true, Some(_)) => {
                issues.push(st.path(), "use either memory: true or path, not both");
                StorageLocation::Memory
            }
            (true, None) => StorageLocation::Memory,
            (false, Some(p)) if p.trim().is_empty() => {
                issues.push(&st.at("path"), "must not be empty");
                defaults.location.clone()
            }
            (false, Some(p)) => StorageLocation::File(PathBuf::from(p)),
            (false, None) => defaults.location.clone(),
        };
        let sync = match st.string("sync", issues).as_deref() {
            None | Some("full") => SyncMode::Full,
            Some("normal") => SyncMode::Normal,
            Some(other) => {
                issues.push(&st.at("sync"), format!("{other:?} is not full or normal"));
                SyncMode::Full
            }
        };
        let year = Duration::from_secs(365 * 86_400);
        StorageSettings {
            location,
            sync,
            queue_capacity: st.integer(
                "queue_capacity",
                1..=1_000_000,
                defaults.queue_capacity as u64,
                issues,
            ) as usize,
            ttl: st.duration(
                "ttl",
                Duration::from_millis(100)..=year,
                defaults.ttl,
                issues,
            ),
            retention: st.duration(
                "retention",
                Duration::from_secs(1)..=year,
                defaults.retention,
                issues,
            ),
            max_size: st
                .has("max_size")
                .then(|| st.size("max_size", 64 * 1024..=u64::MAX, u64::MAX, issues)),
            reserve: {
                let reserve = st.size("reserve", 0..=1024 * 1024 * 1024, defaults.reserve, issues);
                if reserve != 0 && reserve < crate::store::WAL_ROOM {
                    issues.push(
                        &st.at("reserve"),
                        format!("{reserve} bytes is below 4MiB, what a checkpoint of the WAL needs on a full disk (or 0 to keep no reserve)"),
                    );
                }
                reserve
            },
        }
    }
}
