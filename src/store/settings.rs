//! The `storage` section: where the queue lives and how it is kept. `postgres` (its own
//! file) puts it in PostgreSQL instead of the SQLite file.

mod postgres;

pub use postgres::{DatabaseUrl, PostgresSettings, TlsMode, read_ca, valid_schema};

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;

use crate::secret::{KEY_LEN, Keyring, valid_id};
use crate::yaml::{Issues, Section, as_list, index};

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
    /// Keys that encrypt the secrets of API subscriptions in the file; empty: stored as sent.
    pub encryption_keys: Keyring,
}

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    /// A file (created with its directories).
    File(PathBuf),
    /// In memory: lost on exit. For ephemeral use.
    Memory,
    /// A PostgreSQL database (`storage.postgres`).
    Postgres(PostgresSettings),
}

impl StorageLocation {
    /// Where the queue lives, for the start line: a path, `memory`, or the URL with its
    /// password as `***`.
    pub fn describe(&self) -> String {
        match self {
            StorageLocation::File(path) => format!("sqlite:{}", path.display()),
            StorageLocation::Memory => "sqlite:memory".into(),
            StorageLocation::Postgres(pg) => pg.url.redacted(),
        }
    }
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
            encryption_keys: Keyring::default(),
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
                "encryption_keys",
                "postgres",
            ],
            issues,
        );
        let defaults = StorageSettings::default();
        let memory = st.boolean("memory", false, issues);
        if st.has("postgres") {
            return StorageSettings::parse_postgres(&st, defaults, issues);
        }
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
        StorageSettings {
            location,
            sync,
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
            ..StorageSettings::common(&st, defaults, issues)
        }
    }

    /// The keys both stores read: the queue, ttl, retention and encryption keys.
    fn common(st: &Section<'_>, defaults: StorageSettings, issues: &mut Issues) -> StorageSettings {
        let year = Duration::from_secs(365 * 86_400);
        StorageSettings {
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
            encryption_keys: encryption_keys(st, issues),
            ..defaults
        }
    }

    /// `storage` with `postgres`: the SQLite file's own keys are refused, naming each.
    fn parse_postgres(
        st: &Section<'_>,
        defaults: StorageSettings,
        issues: &mut Issues,
    ) -> StorageSettings {
        for (key, why) in [
            (
                "path",
                "use either storage.path or storage.postgres, not both",
            ),
            (
                "memory",
                "use either storage.memory or storage.postgres, not both",
            ),
            (
                "sync",
                "applies to the SQLite file only; PostgreSQL's durability is its synchronous_commit",
            ),
            (
                "max_size",
                "applies to the SQLite file only; size PostgreSQL on its server",
            ),
            (
                "reserve",
                "applies to the SQLite file only; PostgreSQL's disk is its server's",
            ),
        ] {
            if st.has(key) {
                issues.push(&st.at(key), why);
            }
        }
        let location = match PostgresSettings::parse(st, issues) {
            Some(pg) => StorageLocation::Postgres(pg),
            None => defaults.location.clone(),
        };
        StorageSettings {
            location,
            ..StorageSettings::common(st, defaults, issues)
        }
    }
}

/// Reads `encryption_keys`: a list of `{id, key}`, `key` the base64 of 32 bytes. Issues
/// never quote a key.
fn encryption_keys(st: &Section<'_>, issues: &mut Issues) -> Keyring {
    let path = st.at("encryption_keys");
    let Some(list) = st
        .get("encryption_keys")
        .and_then(|v| as_list(v, &path, issues))
    else {
        return Keyring::default();
    };
    let mut keys: Vec<(String, [u8; KEY_LEN])> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let k = Section::new(Some(item), &index(&path, i), &["id", "key"], issues);
        let id = k.required("id", issues).and(k.string("id", issues));
        if let Some(id) = &id {
            if !valid_id(id) {
                issues.push(&k.at("id"), "must be 1 to 64 of A-Z a-z 0-9 _ - .");
            } else if keys.iter().any(|(other, _)| other == id) {
                issues.push(&k.at("id"), format!("{id:?} is used by an earlier key"));
            }
        }
        let key = k.required("key", issues).and(k.string("key", issues));
        let bytes = key.and_then(|key| {
            let decoded = base64::engine::general_purpose::STANDARD.decode(key.trim());
            let bytes = decoded.ok().and_then(|b| <[u8; KEY_LEN]>::try_from(b).ok());
            if bytes.is_none() {
                issues.push(
                    &k.at("key"),
                    "must be the base64 of 32 random bytes (openssl rand -base64 32)",
                );
            }
            bytes
        });
        if let (Some(id), Some(bytes)) = (id, bytes) {
            keys.push((id, bytes));
        }
    }
    Keyring::new(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> (StorageSettings, Vec<String>) {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let mut issues = Issues::default();
        let root = Section::new(Some(&v), "", &["storage"], &mut issues);
        let settings = StorageSettings::parse(&root, &mut issues);
        (settings, issues.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn encryption_keys_are_checked_without_quoting_them() {
        let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        let (s, issues) = parse(&format!(
            "storage: {{encryption_keys: [{{id: new, key: '{key}'}}, {{id: old, key: '{key}'}}]}}"
        ));
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(format!("{:?}", s.encryption_keys), r#"["new", "old"]"#);
        assert!(parse("storage: {}").0.encryption_keys.is_empty());

        let (_, issues) = parse(&format!(
            "storage: {{encryption_keys: [{{id: 'a:b', key: 'c2hvcnQ='}}, {{key: '{key}'}}, {{id: x, key: '{key}'}}, {{id: x, key: '{key}', extra: 1}}]}}"
        ));
        let text = issues.join("\n");
        for expected in [
            "storage.encryption_keys[0].id: must be 1 to 64",
            "storage.encryption_keys[0].key: must be the base64 of 32 random bytes",
            "storage.encryption_keys[1].id: missing",
            "storage.encryption_keys[3].id: \"x\" is used by an earlier key",
            "storage.encryption_keys[3].extra: unknown field",
        ] {
            assert!(text.contains(expected), "{expected} not in {text}");
        }
        assert!(!text.contains("c2hvcnQ") && !text.contains(key), "{text}");
    }

    #[test]
    fn postgres_is_read_whole_and_excludes_the_files_keys() {
        let (s, issues) = parse(
            "storage: {postgres: {url: 'postgres://app:pw@db:5432/relay', schema: relay_1, pool: 8, tls: {mode: require}, connect_timeout: 2s, prepared_statements: false}, ttl: 1h, queue_capacity: 10}",
        );
        assert!(issues.is_empty(), "{issues:?}");
        let StorageLocation::Postgres(pg) = &s.location else {
            panic!("{s:?}")
        };
        assert_eq!(
            (pg.schema.as_str(), pg.pool, pg.tls, pg.connect_timeout),
            ("relay_1", 8, TlsMode::Require, Duration::from_secs(2))
        );
        assert!(!pg.prepared_statements);
        assert_eq!((s.ttl, s.queue_capacity), (Duration::from_secs(3600), 10));
        assert!(!format!("{s:?}").contains(":pw@"), "{s:?}");
        assert_eq!(s.location.describe(), "postgres://app:***@db:5432/relay");
        assert_eq!(
            parse("storage: {path: /var/lib/q.db}")
                .0
                .location
                .describe(),
            "sqlite:/var/lib/q.db"
        );

        let (_, issues) = parse(
            "storage: {path: x.db, sync: normal, max_size: 1MiB, reserve: 0, postgres: {url: 'postgres://app:pw@db/relay', schema: Bad-Name, pool: 0, tls: {mode: prefer, ca: /nonexistent.pem}, prepared_statements: maybe, extra: 1}}",
        );
        let text = issues.join("\n");
        for expected in [
            "storage.path: use either storage.path or storage.postgres, not both",
            "storage.sync: applies to the SQLite file only",
            "storage.max_size: applies to the SQLite file only",
            "storage.reserve: applies to the SQLite file only",
            "storage.postgres.schema: \"Bad-Name\" is not a schema name",
            "storage.postgres.pool:",
            "storage.postgres.tls.mode: \"prefer\" is not disable, require or verify-full",
            "storage.postgres.tls.ca: only applies with mode: verify-full",
            "storage.postgres.prepared_statements:",
            "storage.postgres.extra: unknown field",
        ] {
            assert!(text.contains(expected), "{expected} not in {text}");
        }
        let (_, issues) = parse(
            "storage: {postgres: {url: 'mysql://app:pw@db/relay', tls: {mode: verify-full, ca: /nonexistent.pem}}}",
        );
        let text = issues.join("\n");
        assert!(
            text.contains("storage.postgres.url: must be a postgres:// URL"),
            "{text}"
        );
        assert!(
            text.contains("storage.postgres.tls.ca: cannot read /nonexistent.pem"),
            "{text}"
        );
        assert!(!text.contains(":pw@"), "{text}");
        let (_, issues) = parse("storage: {postgres: {schema: x}}");
        assert_eq!(issues, ["storage.postgres.url: missing"]);
    }

    #[test]
    fn the_lease_defaults_to_a_minute_and_stays_within_5s_to_1h() {
        let lease = |yaml: &str| {
            let (s, issues) = parse(yaml);
            match s.location {
                StorageLocation::Postgres(pg) if issues.is_empty() => Ok(pg.lease),
                _ => Err(issues.join("\n")),
            }
        };
        let url = "url: 'postgres://app@db/relay'";
        assert_eq!(
            lease(&format!("storage: {{postgres: {{{url}}}}}")),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            lease(&format!("storage: {{postgres: {{{url}, lease: 5s}}}}")),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(
            lease(&format!("storage: {{postgres: {{{url}, lease: 1h}}}}")),
            Ok(Duration::from_secs(3600))
        );
        for bad in ["4s", "61m", "soon"] {
            let err =
                lease(&format!("storage: {{postgres: {{{url}, lease: {bad}}}}}")).unwrap_err();
            assert!(err.contains("storage.postgres.lease"), "{bad}: {err}");
        }
    }
}
