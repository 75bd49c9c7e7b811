//! The store a test runs on: a SQLite file in a temporary directory, or a fresh PostgreSQL
//! schema at `HOOKRELAY_TEST_DATABASE_URL` that is dropped when the test ends. Tests that
//! exercise the store take a `Backend` and are instantiated for both by `both_backends!`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// The server the PostgreSQL tests use.
pub fn test_database_url() -> String {
    std::env::var("HOOKRELAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// The test server's address, from its URL.
pub fn test_database_addr() -> SocketAddr {
    let url = reqwest::Url::parse(&test_database_url()).unwrap();
    (url.host_str().unwrap(), url.port().unwrap_or(5432))
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap()
}

/// Which store implementation a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One test's database, kept across the relay's restarts; a PostgreSQL schema is dropped
/// with this value, test failed or not.
pub struct TestDb {
    pub backend: Backend,
    /// A temporary directory: the SQLite file, config files, anything the test writes.
    pub dir: Arc<tempfile::TempDir>,
    /// The PostgreSQL schema (a random name), if any.
    pub schema: Option<String>,
}

impl TestDb {
    /// A new, empty database for `backend`.
    pub fn new(backend: Backend) -> TestDb {
        let schema =
            (backend == Backend::Postgres).then(|| format!("hr_it_{:016x}", fastrand::u64(..)));
        TestDb {
            backend,
            dir: Arc::new(tempfile::tempdir().unwrap()),
            schema,
        }
    }

    /// The `storage:` line, with `extra` settings (`"ttl: 1s"`); SQLite syncs `normal`
    /// unless `extra` says otherwise.
    pub fn storage(&self, extra: &str) -> String {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        match &self.schema {
            Some(schema) => format!(
                "storage: {{postgres: {{url: '{}', schema: {schema}, pool: 4, connect_timeout: 2s}}{extra}}}\n",
                test_database_url()
            ),
            None => {
                let sync = if extra.contains("sync:") {
                    ""
                } else {
                    ", sync: normal"
                };
                format!(
                    "storage: {{path: '{}'{sync}{extra}}}\n",
                    self.dir.path().join("hookrelay.db").display()
                )
            }
        }
    }
}

impl TestDb {
    /// The `storage:` line for this schema on the test server reached at `addr` (a proxy
    /// or a pooler), its sessions named after the schema (`application_name`), with
    /// `pg` settings of `storage.postgres` (`"connect_timeout: 1s"`).
    pub fn storage_at(&self, addr: SocketAddr, pg: &str) -> String {
        let schema = self.schema.as_deref().expect("a PostgreSQL database");
        let mut url = reqwest::Url::parse(&test_database_url()).unwrap();
        url.set_ip_host(addr.ip()).unwrap();
        url.set_port(Some(addr.port())).unwrap();
        url.query_pairs_mut()
            .append_pair("application_name", schema);
        format!("storage: {{postgres: {{url: '{url}', schema: {schema}, pool: 4, {pg}}}}}\n")
    }
}

impl TestDb {
    /// The `storage:` line for this schema on the test server, its sessions named `app`
    /// (`application_name`, so a test can find and kill one relay's connections), with `pg`
    /// settings of `storage.postgres` (`"lease: 5s"`).
    pub fn storage_named(&self, app: &str, pg: &str) -> String {
        let schema = self.schema.as_deref().expect("a PostgreSQL database");
        let mut url = reqwest::Url::parse(&test_database_url()).unwrap();
        url.query_pairs_mut().append_pair("application_name", app);
        let pg = if pg.is_empty() {
            String::new()
        } else {
            format!(", {pg}")
        };
        format!(
            "storage: {{postgres: {{url: '{url}', schema: {schema}, pool: 4, connect_timeout: 2s{pg}}}}}\n"
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(schema) = self.schema.clone() else {
            return;
        };
        // Its own thread and runtime: this may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (client, conn) =
                    tokio_postgres::connect(&test_database_url(), tokio_postgres::NoTls)
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!(
                        "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    ))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
    }
}

/// Instantiates each `async fn name(backend: Backend)` as `name::sqlite` and
/// `name::postgres` (ignored unless asked for: it needs the server). `multi_thread:` first
/// runs them on two worker threads.
#[macro_export]
macro_rules! both_backends {
    (multi_thread: $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )+};
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test]
            #[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )+};
}
