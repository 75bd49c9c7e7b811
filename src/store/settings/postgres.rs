//! `storage.postgres`: where the PostgreSQL store connects and how. The URL carries the
//! password, so it is only ever shown redacted (`postgres://user:***@host/db`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::yaml::{Issues, Section};

/// The PostgreSQL store's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// The database to connect to, password included.
    pub url: DatabaseUrl,
    /// The schema that holds every table; created if missing.
    pub schema: String,
    /// Connections this relay keeps at most.
    pub pool: usize,
    /// Whether and how the connection is encrypted.
    pub tls: TlsMode,
    /// Roots that verify the server's certificate (`verify-full`); unset: the system's.
    pub ca: Option<PathBuf>,
    /// How long connecting (and waiting for a pooled connection) may take.
    pub connect_timeout: Duration,
    /// Whether hot statements are prepared once per connection (named) rather than parsed
    /// and planned on every use; off for a pooler that keeps no prepared statements.
    pub prepared_statements: bool,
    /// How long a claim lasts without renewal before other relays may take it over
    /// (at least the subscription's timeout plus 10 s for each claim).
    pub lease: Duration,
    /// A direct (not pooled) connection for `LISTEN`, by which changes to API subscriptions
    /// through other relays arrive at once; unset: `url` itself.
    pub direct_url: Option<DatabaseUrl>,
    /// How often the relay checks whether another relay changed the API subscriptions
    /// (works through any pooler; the `LISTEN` connection makes it faster).
    pub sync_interval: Duration,
}

/// TLS to the database server (rustls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP (or a Unix socket).
    Disable,
    /// Encrypted; the server's certificate is not checked (as libpq's `require`).
    Require,
    /// Encrypted; the certificate must chain to the roots and name the host.
    VerifyFull,
}

impl TlsMode {
    /// The name used in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Require => "require",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

/// A `postgres://` URL. `Debug` and `Display` show it with the password replaced by `***`;
/// only [`DatabaseUrl::expose`] gives the real text, for connecting.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Checks `text`: a `postgres://` or `postgresql://` URL the driver accepts, with a user
    /// and a host, and no `sslmode` (that is `tls.mode`). Errors never quote the URL.
    pub fn parse(text: &str) -> Result<DatabaseUrl, String> {
        let text = text.trim();
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err("must be a postgres:// URL (postgres://user:password@host:5432/db)".into());
        }
        let url = DatabaseUrl(text.to_string());
        let config = tokio_postgres::Config::from_str(text).map_err(|e| {
            // The driver's message names an option, never a value; checked all the same.
            let e = e.to_string();
            if url
                .password()
                .is_some_and(|p| !p.is_empty() && e.contains(&p))
            {
                "is not a valid PostgreSQL URL".to_string()
            } else {
                format!("is not a valid PostgreSQL URL: {e}")
            }
        })?;
        if config.get_user().is_none_or(str::is_empty) {
            return Err("names no user (postgres://user:password@host:5432/db)".into());
        }
        if config.get_hosts().is_empty() {
            return Err("names no host (postgres://user:password@host:5432/db)".into());
        }
        if text.contains("sslmode=") {
            return Err("sets sslmode: use storage.postgres.tls.mode instead".into());
        }
        Ok(url)
    }

    /// The URL as written, password included: for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The password in the URL, decoded, if it has one.
    fn password(&self) -> Option<String> {
        url::Url::parse(&self.0)
            .ok()?
            .password()
            .map(percent_decode)
    }

    /// The URL with its password (in the authority or a `password=` parameter) as `***`.
    pub fn redacted(&self) -> String {
        let Ok(mut url) = url::Url::parse(&self.0) else {
            return "postgres://***".into();
        };
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "password" { "***".into() } else { v };
                    (k.into_owned(), v.into_owned())
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }
}

/// `%XX` escapes decoded (a password may hold any byte).
fn percent_decode(s: &str) -> String {
    let bytes: Vec<u8> = form_urlencoded::parse(format!("p={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned().into_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Whether `s` may name the schema: 1 to 63 of `a-z 0-9 _`, not starting with a digit or
/// `pg_` (PostgreSQL's own). Quoted in SQL all the same.
pub fn valid_schema(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && !b[0].is_ascii_digit()
        && !s.starts_with("pg_")
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

impl PostgresSettings {
    /// Reads `storage.postgres`; `None` (with issues) when it cannot be used.
    pub fn parse(st: &Section<'_>, issues: &mut Issues) -> Option<PostgresSettings> {
        let pg = st.section(
            "postgres",
            &[
                "url",
                "schema",
                "pool",
                "tls",
                "connect_timeout",
                "prepared_statements",
                "lease",
                "direct_url",
                "sync_interval",
            ],
            issues,
        );
        let before = issues.0.len();
        let url = pg
            .required("url", issues)
            .and(pg.string("url", issues))
            .and_then(|text| match DatabaseUrl::parse(&text) {
                Ok(url) => Some(url),
                Err(why) => {
                    issues.push(&pg.at("url"), why);
                    None
                }
            });
        let schema = pg
            .string("schema", issues)
            .unwrap_or_else(|| "hookrelay".into());
        if !valid_schema(&schema) {
            issues.push(
                &pg.at("schema"),
                format!(
                    "{schema:?} is not a schema name: 1 to 63 of a-z 0-9 _, not starting with a digit or pg_"
                ),
            );
        }
        let pool = pg.integer("pool", 1..=1000, 4, issues) as usize;
        let tls = pg.section("tls", &["mode", "ca"], issues);
        let mode = match tls.string("mode", issues).as_deref() {
            None | Some("disable") => TlsMode::Disable,
            Some("require") => TlsMode::Require,
            Some("verify-full") => TlsMode::VerifyFull,
            Some(other) => {
                issues.push(
                    &tls.at("mode"),
                    format!("{other:?} is not disable, require or verify-full"),
                );
                TlsMode::Disable
            }
        };
        let ca = tls.string("ca", issues).map(PathBuf::from);
        if let Some(path) = &ca {
            if mode != TlsMode::VerifyFull {
                issues.push(&tls.at("ca"), "only applies with mode: verify-full");
            } else if let Err(why) = read_ca(path) {
                issues.push(&tls.at("ca"), why);
            }
        }
        let connect_timeout = pg.duration(
            "connect_timeout",
            Duration::from_millis(100)..=Duration::from_secs(300),
            Duration::from_secs(5),
            issues,
        );
        let prepared_statements = pg.boolean("prepared_statements", true, issues);
        let lease = pg.duration(
            "lease",
            Duration::from_secs(5)..=Duration::from_secs(3600),
            DEFAULT_LEASE,
            issues,
        );
        let direct_url = pg
            .string("direct_url", issues)
            .and_then(|text| match DatabaseUrl::parse(&text) {
                Ok(url) => Some(url),
                Err(why) => {
                    issues.push(&pg.at("direct_url"), why);
                    None
                }
            });
        let sync_interval = pg.duration(
            "sync_interval",
            Duration::from_millis(100)..=Duration::from_secs(3600),
            DEFAULT_SYNC_INTERVAL,
            issues,
        );
        if issues.0.len() > before {
            return None;
        }
        Some(PostgresSettings {
            url: url?,
            schema,
            pool,
            tls: mode,
            ca,
            connect_timeout,
            prepared_statements,
            lease,
            direct_url,
            sync_interval,
        })
    }
}

/// `storage.postgres.sync_interval` when not set.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// `storage.postgres.lease` when not set.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

pub use crate::pem::read_ca;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_shown_without_its_password() {
        let url = DatabaseUrl::parse("postgres://app:s%40cret@db.internal:5432/relay").unwrap();
        assert_eq!(
            url.expose(),
            "postgres://app:s%40cret@db.internal:5432/relay"
        );
        assert_eq!(url.to_string(), "postgres://app:***@db.internal:5432/relay");
        assert_eq!(
            format!("{url:?}"),
            "\"postgres://app:***@db.internal:5432/relay\""
        );
        let url = DatabaseUrl::parse("postgresql://app@db/relay?password=hunter2").unwrap();
        assert!(!url.to_string().contains("hunter2"), "{url}");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(url.password(), None);
        let url = DatabaseUrl::parse("postgres://app:p%2Bq@db/relay").unwrap();
        assert_eq!(url.password().as_deref(), Some("p+q"));
    }

    #[test]
    fn bad_urls_are_refused_without_quoting_them() {
        for (text, why) in [
            ("mysql://u:pw@h/db", "must be a postgres:// URL"),
            ("postgres://h/db", "names no user"),
            (
                "postgres://u:pw@h:notaport/db",
                "is not a valid PostgreSQL URL",
            ),
            ("postgres://u:pw@h/db?sslmode=require", "tls.mode"),
        ] {
            let err = DatabaseUrl::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
            assert!(!err.contains("pw"), "{err}");
        }
    }

    #[test]
    fn schema_names() {
        for ok in ["hookrelay", "relay_2", "_x"] {
            assert!(valid_schema(ok), "{ok}");
        }
        for bad in ["", "2x", "Hook", "a-b", "pg_x", "a\"b", &"x".repeat(64)] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}
