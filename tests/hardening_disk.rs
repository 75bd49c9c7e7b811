//! A full disk degrades the relay visibly and it recovers by itself: on a small tmpfs, ingest
//! answers 503 once the volume is full, the deliveries already accepted still complete and
//! prune, and ingest resumes with no restart. Mounting needs root, so the test is ignored
//! in a plain `cargo test` (with the reason) and `.ci/run` runs it with `--include-ignored`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Answer, Receiver, TestRelay};
use serde_json::json;

/// A tmpfs of `size` mounted on a new directory, unmounted on drop.
struct Volume {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Volume {
    fn mount(size: &str) -> Volume {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        std::fs::create_dir(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs (this test needs root): {status}"
        );
        Volume { path, _dir: dir }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Bytes of the database files on the volume, the reserve left out.
fn used(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().ends_with("-reserve"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test]
#[ignore = "mounts a tmpfs, which needs root; .ci/run runs ignored tests"]
async fn a_full_disk_refuses_ingest_then_frees_itself_and_resumes() {
    let volume = Volume::mount("24m");
    let db = volume.path.join("hookrelay.db");
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    let rx = Receiver::scripted(move |_| {
        Answer::status(if gate.load(Ordering::SeqCst) {
            200
        } else {
            503
        })
    })
    .await;
    let relay = TestRelay::start(&format!(
        "storage: {{path: '{}', sync: normal, reserve: 5MiB, max_size: 1GiB, retention: 1s}}
shutdown: {{grace: 0s}}
subscriptions:
  - {{name: sink, url: '{}', events: ['*'], retries: 20, backoff: {{schedule: [3s]}},
     circuit: {{cool_down: 1s, max_cool_down: 2s}}}}
",
        db.display(),
        rx.url("/")
    ))
    .await;
    assert!(volume.path.join("hookrelay.db-reserve").exists());

    // Fill the volume: batches first, then single events, until the store refuses them.
    let payload = "x".repeat(2048);
    let event = |id: &str| json!({"type": "t", "id": id, "data": {"pad": payload}});
    let mut accepted = Vec::new();
    let mut refused = 0;
    let end = Instant::now() + Duration::from_secs(90);
    let mut i = 0;
    let mut batches = true;
    while refused < 20 && Instant::now() < end {
        if batches {
            let ids: Vec<String> = (i..i + 100).map(|n| format!("e{n}")).collect();
            i += 100;
            let body: Vec<_> = ids.iter().map(|id| event(id)).collect();
            let response = relay
                .http
                .post(format!("http://{}/v1/events/batch", relay.addrs.app))
                .header("content-type", "application/json")
                .body(serde_json::to_string(&body).unwrap())
                .send()
                .await
                .unwrap();
            match response.status().as_u16() {
                202 => accepted.extend(ids),
                503 => batches = false,
                other => panic!("unexpected {other} for a batch"),
            }
            continue;
        }
        let id = format!("e{i}");
        i += 1;
        let (status, answer) = relay.post(&event(&id)).await;
        match status {
            202 => accepted.push(id),
            503 => {
                assert_eq!(answer["error"]["code"], "store_unavailable", "{answer}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    assert_eq!(refused, 20, "the volume never filled");
    assert!(accepted.len() > 100, "only {} accepted", accepted.len());
    relay
        .wait_metric("hookrelay_store_writable", &[], 0.0)
        .await;
    let (_, ready) = relay.readyz().await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["store"], "the disk is full", "{ready}");
    let full = used(&volume.path);

    // The receiver comes back: every accepted event is delivered on the full volume, pruned
    // after retention, and ingest resumes by itself.
    open.store(true, Ordering::SeqCst);
    let n = accepted.len() as f64;
    let end = Instant::now() + Duration::from_secs(60);
    while relay
        .metric(
            "hookrelay_deliveries_total",
            &[("subscription", "sink"), ("outcome", "delivered")],
        )
        .await
        < Some(n)
    {
        if Instant::now() > end {
            let m = relay.metrics().await;
            let lines: Vec<&str> = m
                .lines()
                .filter(|l| {
                    l.contains("sink") || l.contains("store_writable") || l.contains("queue")
                })
                .filter(|l| !l.starts_with('#'))
                .collect();
            panic!(
                "{} accepted events were not all delivered:\n{}",
                accepted.len(),
                lines.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got: std::collections::HashSet<String> = rx
        .received()
        .iter()
        .filter_map(|r| r.headers.get("webhook-id"))
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        accepted.iter().all(|id| got.contains(id)),
        "an event answered 202 was lost"
    );
    let end = Instant::now() + Duration::from_secs(60);
    let mut resumed = false;
    while !resumed {
        if Instant::now() > end {
            let files: Vec<String> = std::fs::read_dir(&volume.path)
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| format!("{:?} {}", e.file_name(), e.metadata().unwrap().len()))
                .collect();
            let df = std::process::Command::new("df")
                .arg(&volume.path)
                .output()
                .unwrap();
            panic!(
                "ingest did not resume after space freed: {files:?}\n{}\nqueue {:?} writable {:?}",
                String::from_utf8_lossy(&df.stdout),
                relay
                    .metric("hookrelay_queue_depth", &[("subscription", "sink")])
                    .await,
                relay.metric("hookrelay_store_writable", &[]).await,
            );
        }
        let (status, _) = relay
            .post(&json!({"type": "t", "id": format!("after-{i}"), "data": {}}))
            .await;
        i += 1;
        resumed = status == 202;
        if !resumed {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    relay
        .wait_metric("hookrelay_store_writable", &[], 1.0)
        .await;
    // The pruned events' space takes new ones: a hundred more fit on the volume. Pruning
    // goes in small batches, so a post may still meet the full mark for a moment; each must
    // get in within the deadline.
    let end = Instant::now() + Duration::from_secs(60);
    for j in 0..100 {
        loop {
            let (status, answer) = relay.post(&event(&format!("more-{j}"))).await;
            if status == 202 {
                break;
            }
            assert_eq!(status, 503, "event {j} after recovery: {answer}");
            assert!(Instant::now() < end, "event {j} never got in: {answer}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "accepted {} events before the volume filled ({full} bytes of database files then, {} now)",
        accepted.len(),
        used(&volume.path)
    );
    relay.stop().await;
}
