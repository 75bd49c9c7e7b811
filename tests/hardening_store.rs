//! The database file: private modes, one relay per file, and subscription secrets encrypted
//! at rest (issue 13, item 8).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::TestRelay;
use hookrelay::{Config, Relay};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// A relay on `db` with `extra` YAML; the listeners on port 0.
fn config(db: &Path, extra: &str) -> Config {
    let yaml = format!(
        "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\nstorage: {{path: '{}', sync: normal}}\n{extra}",
        db.display()
    );
    Config::from_yaml(&yaml, "test.yaml", &|_| None).unwrap()
}

#[tokio::test]
async fn the_database_its_wal_and_a_new_directory_are_private() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = dir.path().join("new/nested/relay.db");
    let relay = TestRelay::start_in(
        &format!("storage: {{path: '{}', sync: normal}}\n", db.display()),
        dir.clone(),
    )
    .await;
    let (status, _) = relay
        .post(&serde_json::json!({"type": "a", "data": {}}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(mode(&db), 0o600, "database file");
    assert_eq!(mode(&sibling(&db, "-wal")), 0o600, "WAL file");
    assert_eq!(mode(&sibling(&db, "-shm")), 0o600, "shared-memory file");
    assert_eq!(mode(&sibling(&db, ".lock")), 0o600, "lock file");
    assert_eq!(mode(&dir.path().join("new")), 0o700, "created directory");
    assert_eq!(
        mode(&dir.path().join("new/nested")),
        0o700,
        "created directory"
    );
    relay.stop().await;
}

#[tokio::test]
async fn an_existing_file_readable_by_others_is_tightened() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = dir.path().join("hookrelay.db");
    let relay = TestRelay::start_in("", dir.clone()).await;
    relay.stop().await;
    for file in [db.clone(), sibling(&db, "-wal"), sibling(&db, "-shm")] {
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let relay = TestRelay::start_in("", dir.clone()).await;
    assert_eq!(mode(&db), 0o600);
    for file in [sibling(&db, "-wal"), sibling(&db, "-shm")] {
        if file.exists() {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_second_relay_on_the_same_file_fails_to_start() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = dir.path().join("hookrelay.db");
    let first = TestRelay::start_in("", dir.clone()).await;
    let second = Relay::bind(config(&db, "")).await.unwrap();
    let result = tokio::time::timeout(common::DEADLINE, second.run(std::future::pending()))
        .await
        .expect("the second relay stops at once");
    let message = result
        .expect_err("a second relay must not start")
        .to_string();
    assert!(
        message.contains("another hookrelay is using this database"),
        "{message}"
    );
    assert!(message.contains(&db.display().to_string()), "{message}");
    // The first one is unharmed, and once it stops the file is free again.
    assert!(first.running());
    first.stop().await;
    let again = TestRelay::start_in("", dir.clone()).await;
    again.stop().await;
}

#[tokio::test]
async fn relays_in_memory_need_no_lock() {
    let yaml = "storage: {memory: true}\n";
    let a = TestRelay::start(yaml).await;
    let b = TestRelay::start(yaml).await;
    a.stop().await;
    b.stop().await;
}
