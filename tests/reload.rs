//! Config reload: a changed file (plain or a Kubernetes ConfigMap's symlink swap) swaps the
//! subscriptions; an invalid one changes nothing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Answer, Backend, Receiver, TestDb, TestRelay, poll};
use serde_json::json;

/// A complete config file: loopback listeners on free ports, the store `db`.
fn file(db: &TestDb, subs: &[String]) -> String {
    with_storage(&db.storage(""), subs)
}

/// A complete config file with the given `storage:` line.
fn with_storage(storage: &str, subs: &[String]) -> String {
    format!(
        "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\n\
         {storage}\
         subscriptions:\n{}",
        subs.concat()
    )
}

fn sub(name: &str, url: &str, extra: &str) -> String {
    format!("  - {{name: {name}, url: '{url}', events: ['*'], {extra}}}\n")
}

/// Replaces the file the way an editor or `kubectl cp` would: a new file renamed over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A relay on `db` reloading `config.yaml` in the database's temporary directory, which
/// `file` fills.
async fn start(db: &TestDb, subs: &[String]) -> (TestRelay, PathBuf) {
    let path = db.dir.path().join("config.yaml");
    std::fs::write(&path, file(db, subs)).unwrap();
    (
        TestRelay::start_from_file(&path, db.dir.clone()).await,
        path,
    )
}

async fn wait_reloads(relay: &TestRelay, result: &str, n: f64) {
    relay
        .wait_metric("hookrelay_config_reloads_total", &[("result", result)], n)
        .await;
}

async fn a_changed_file_adds_changes_and_removes_subscriptions(backend: Backend) {
    let db = TestDb::new(backend);
    let (old_rx, new_rx, added_rx) = (
        Receiver::ok().await,
        Receiver::ok().await,
        Receiver::ok().await,
    );
    let failing = Receiver::scripted(|_| Answer::status(500)).await;
    // Its retries come 3 s apart, so they are still queued when it goes, and soon due when
    // it returns (resumed deliveries keep their schedule).
    let gone = sub(
        "gone",
        &failing.url("/"),
        "backoff: {schedule: [3s]}, retries: 3",
    );
    let (relay, path) = start(&db, &[sub("kept", &old_rx.url("/"), ""), gone]).await;
    assert_eq!(
        relay
            .metric("hookrelay_subscriptions", &[("source", "config")])
            .await,
        Some(2.0)
    );
    let last_load = relay
        .metric(
            "hookrelay_config_last_reload_success_timestamp_seconds",
            &[],
        )
        .await
        .unwrap();
    assert!(last_load > 1.7e9, "startup counts as a load: {last_load}");

    for i in 0..3 {
        assert_eq!(
            relay
                .post(&json!({"type": "t", "id": format!("a{i}"), "data": {}}))
                .await
                .0,
            202
        );
    }
    old_rx.wait_for(3).await;
    failing.wait_for(3).await;

    replace(
        &path,
        &file(
            &db,
            &[
                sub("kept", &new_rx.url("/"), ""),
                sub("added", &added_rx.url("/"), ""),
            ],
        ),
    );
    wait_reloads(&relay, "success", 1.0).await;
    assert_eq!(
        relay
            .metric("hookrelay_subscriptions", &[("source", "config")])
            .await,
        Some(2.0)
    );
    // The removed subscription's retries wait as orphans; its series are gone.
    relay
        .wait_metric("hookrelay_orphaned_deliveries", &[], 3.0)
        .await;
    assert_eq!(
        relay
            .metric("hookrelay_queue_depth", &[("subscription", "gone")])
            .await,
        None
    );

    let (status, answer) = relay
        .post(&json!({"type": "t", "id": "b", "data": {}}))
        .await;
    assert_eq!(status, 202);
    let mut matched: Vec<String> = serde_json::from_value(answer["subscriptions"].clone()).unwrap();
    matched.sort();
    assert_eq!(matched, ["added", "kept"]);
    new_rx.wait_for(1).await;
    added_rx.wait_for(1).await;
    assert_eq!(
        old_rx.count(),
        3,
        "the old URL gets nothing after the reload"
    );

    // Back again: its orphans resume under the restored subscription.
    replace(
        &path,
        &file(
            &db,
            &[
                sub("kept", &new_rx.url("/"), ""),
                sub("gone", &new_rx.url("/gone"), ""),
            ],
        ),
    );
    wait_reloads(&relay, "success", 2.0).await;
    relay
        .wait_metric("hookrelay_orphaned_deliveries", &[], 0.0)
        .await;
    relay.wait_outcome("gone", "delivered", 3.0).await;
    relay.stop().await;
}

async fn attempts_in_flight_finish_under_their_settings_and_queued_ones_take_the_new(
    backend: Backend,
) {
    let db = TestDb::new(backend);
    // The old receiver holds each request for a while, so one attempt is in flight and the
    // rest wait in the queue when the URL changes.
    let slow = Receiver::scripted(|_| Answer::status(200).after(Duration::from_millis(800))).await;
    let fast = Receiver::ok().await;
    let (relay, path) = start(&db, &[sub("one", &slow.url("/"), "max_in_flight: 1")]).await;
    for i in 0..3 {
        relay
            .post(&json!({"type": "t", "id": format!("e{i}"), "data": {}}))
            .await;
    }
    slow.wait_for(1).await;
    replace(
        &path,
        &file(&db, &[sub("one", &fast.url("/"), "max_in_flight: 1")]),
    );
    wait_reloads(&relay, "success", 1.0).await;
    let got = fast.wait_for(2).await;
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["e1", "e2"]);
    relay.wait_outcome("one", "delivered", 3.0).await;
    assert_eq!(
        slow.count(),
        1,
        "only the attempt in flight went to the old URL"
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_seen() {
    let (first, second) = (Receiver::ok().await, Receiver::ok().await);
    let db = TestDb::new(Backend::Sqlite);
    let dir = db.dir.clone();
    let mount = dir.path().join("etc");
    std::fs::create_dir(&mount).unwrap();
    // The kubelet's layout: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>.
    let publish = |version: &str, text: &str| {
        let data = mount.join(format!("..{version}"));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("config.yaml"), text).unwrap();
        let tmp = mount.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
        std::fs::rename(&tmp, mount.join("..data")).unwrap();
    };
    publish("v1", &file(&db, &[sub("a", &first.url("/"), "")]));
    let path = mount.join("config.yaml");
    std::os::unix::fs::symlink("..data/config.yaml", &path).unwrap();
    let relay = TestRelay::start_from_file(&path, dir.clone()).await;

    publish("v2", &file(&db, &[sub("a", &second.url("/"), "")]));
    std::fs::remove_dir_all(mount.join("..v1")).unwrap();
    wait_reloads(&relay, "success", 1.0).await;
    relay.post(&json!({"type": "t", "data": {}})).await;
    second.wait_for(1).await;
    assert_eq!(first.count(), 0);
    relay.stop().await;
}

#[tokio::test]
async fn an_invalid_file_keeps_the_running_config() {
    let db = TestDb::new(Backend::Sqlite);
    let rx = Receiver::ok().await;
    let (relay, path) = start(&db, &[sub("a", &rx.url("/"), "")]).await;

    replace(&path, &file(&db, &[sub("a", &rx.url("/"), "retries: 99")]));
    wait_reloads(&relay, "failure", 1.0).await;
    replace(&path, "subscriptions: [unclosed");
    wait_reloads(&relay, "failure", 2.0).await;
    relay.post(&json!({"type": "t", "data": {}})).await;
    rx.wait_for(1).await;
    assert_eq!(
        relay
            .metric("hookrelay_config_reloads_total", &[("result", "success")])
            .await,
        Some(0.0)
    );

    // Fixed again: a good file reloads.
    replace(&path, &file(&db, &[sub("b", &rx.url("/b"), "")]));
    wait_reloads(&relay, "success", 1.0).await;
    relay.stop().await;
}

async fn a_name_used_by_an_api_subscription_fails_the_reload(backend: Backend) {
    let db = TestDb::new(backend);
    let rx = Receiver::ok().await;
    let (relay, path) = start(&db, &[sub("a", &rx.url("/"), "")]).await;
    let (status, _) = relay
        .api(
            reqwest::Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": "theirs", "url": rx.url("/api"), "events": ["*"]})),
        )
        .await;
    assert_eq!(status, 201);
    let text = std::fs::read_to_string(&path).unwrap() + &sub("theirs", &rx.url("/"), "");
    replace(&path, &text);
    wait_reloads(&relay, "failure", 1.0).await;
    assert_eq!(
        relay
            .metric("hookrelay_subscriptions", &[("source", "api")])
            .await,
        Some(1.0)
    );
    relay.stop().await;
}

#[tokio::test]
async fn sections_that_need_a_restart_keep_their_running_values() {
    let db = TestDb::new(Backend::Sqlite);
    let rx = Receiver::ok().await;
    let (relay, path) = start(&db, &[sub("a", &rx.url("/"), "")]).await;
    // A new app port and store path, plus a new subscription: only the last applies.
    let elsewhere = db.dir.path().join("elsewhere");
    let moved = with_storage(
        &format!(
            "storage: {{path: '{}'}}\n",
            elsewhere.join("hookrelay.db").display()
        ),
        &[sub("b", &rx.url("/b"), "")],
    )
    .replace("app: '127.0.0.1:0'", "app: '127.0.0.1:1'");
    replace(&path, &moved);
    wait_reloads(&relay, "success", 1.0).await;
    let (status, answer) = relay.post(&json!({"type": "t", "data": {}})).await;
    assert_eq!(
        (status, answer["subscriptions"].clone()),
        (202, json!(["b"]))
    );
    poll(|| async { rx.received().iter().any(|r| r.path == "/b") }).await;
    assert!(!elsewhere.exists());
    relay.stop().await;
}

crate::both_backends!(
    a_changed_file_adds_changes_and_removes_subscriptions,
    attempts_in_flight_finish_under_their_settings_and_queued_ones_take_the_new,
    a_name_used_by_an_api_subscription_fails_the_reload,
);
