//! Attempt history, the retry budget and replay through the `Store` trait, on every
//! backend (see `tests`).

use std::time::Duration;

use super::tests::{Backend, accepted, store_tests};
use crate::store::{
    AttemptInfo, Attempted, DeliveryState, Outcome, RECENT_ATTEMPTS, Release, Replayed, Store,
};

store_tests!(
    every_attempt_is_kept_in_order_and_release_keeps_the_count,
    an_event_status_shows_the_latest_attempts_only,
    attempts_go_with_their_delivery,
    a_replay_makes_new_deliveries_of_the_same_event,
    a_range_replay_takes_the_events_of_the_range_that_matched,
);

fn attempt(at_ms: i64, duration_us: i64, result: &'static str) -> Attempted {
    Attempted {
        at_ms,
        duration_us,
        result,
    }
}

fn retry(at_ms: i64) -> Outcome {
    Outcome::Retry {
        at_ms,
        status: Some(503),
        error: "HTTP 503".into(),
    }
}

/// Claims the one due delivery of `sub` at `now` and records `outcome` for it.
async fn attempt_once(s: &dyn Store, sub: &str, now: i64, outcome: Outcome, a: Attempted) {
    let claimed = s.claim_due(sub, now, 10, Duration::ZERO).await.unwrap();
    assert_eq!(claimed.len(), 1, "one due at {now}");
    s.complete(claimed[0].id, claimed[0].token, outcome, a)
        .await
        .unwrap();
}

async fn every_attempt_is_kept_in_order_and_release_keeps_the_count(b: Backend) {
    let s = b.open().await;
    s.accept(vec![accepted("e1", 0, &["a"])]).await.unwrap();
    attempt_once(&*s, "a", 10, retry(20), attempt(10, 1500, "http_error")).await;
    let timeout = Outcome::Failed {
        status: None,
        error: "no response within 1s".into(),
    };
    attempt_once(&*s, "a", 20, timeout, attempt(20, 1_000_000, "timeout")).await;
    let info = s.event_status("e1").await.unwrap().unwrap().deliveries[0].clone();
    assert_eq!(
        (info.state, info.attempts, info.budget_used),
        (DeliveryState::Failed, 2, 2)
    );
    let history = s.attempts(info.id).await.unwrap().unwrap();
    assert_eq!(
        history,
        [
            AttemptInfo {
                number: 1,
                at_ms: 10,
                duration_us: 1500,
                status: Some(503),
                result: "http_error".into(),
                error: Some("HTTP 503".into()),
            },
            AttemptInfo {
                number: 2,
                at_ms: 20,
                duration_us: 1_000_000,
                status: None,
                result: "timeout".into(),
                error: Some("no response within 1s".into()),
            },
        ]
    );
    // A release starts the budget over and keeps the count and the history.
    let released = s.release(None, vec!["a".into()], 30, 0).await.unwrap();
    assert_eq!(released, Release::Released(1));
    let claimed = s.claim_due("a", 30, 10, Duration::ZERO).await.unwrap();
    assert_eq!((claimed[0].attempts, claimed[0].budget_used), (2, 0));
    s.complete(
        claimed[0].id,
        claimed[0].token,
        Outcome::Delivered { status: 200 },
        attempt(30, 700, "success"),
    )
    .await
    .unwrap();
    let history = s.attempts(info.id).await.unwrap().unwrap();
    let seen: Vec<_> = history
        .iter()
        .map(|a| (a.number, a.status, a.result.as_str(), a.error.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (1, Some(503), "http_error", Some("HTTP 503")),
            (2, None, "timeout", Some("no response within 1s")),
            (3, Some(200), "success", None),
        ]
    );
    let info = s.event_status("e1").await.unwrap().unwrap().deliveries[0].clone();
    assert_eq!((info.attempts, info.budget_used), (3, 1));
    // A retry of one dead letter does the same.
    s.accept(vec![accepted("e2", 0, &["a"])]).await.unwrap();
    let failed = Outcome::Failed {
        status: Some(500),
        error: "HTTP 500".into(),
    };
    attempt_once(&*s, "a", 40, failed, attempt(40, 5, "http_error")).await;
    let id = s.event_status("e2").await.unwrap().unwrap().deliveries[0].id;
    s.retry_delivery(id, 50, vec!["a".into()]).await.unwrap();
    let claimed = s.claim_due("a", 50, 10, Duration::ZERO).await.unwrap();
    assert_eq!((claimed[0].attempts, claimed[0].budget_used), (1, 0));
    assert!(s.attempts(id + 1000).await.unwrap().is_none(), "unknown");
}

async fn an_event_status_shows_the_latest_attempts_only(b: Backend) {
    let s = b.open().await;
    s.accept(vec![accepted("e1", 0, &["a", "b"])])
        .await
        .unwrap();
    let n = RECENT_ATTEMPTS as i64 + 2;
    for i in 1..=n {
        attempt_once(
            &*s,
            "a",
            i * 10,
            retry(i * 10 + 10),
            attempt(i, i, "http_error"),
        )
        .await;
    }
    let status = s.event_status("e1").await.unwrap().unwrap();
    let recent = status.deliveries[0].recent_attempts.as_ref().unwrap();
    let numbers: Vec<u32> = recent.iter().map(|a| a.number).collect();
    assert_eq!(
        numbers,
        (3..=n as u32).collect::<Vec<_>>(),
        "latest, oldest first"
    );
    assert_eq!(status.deliveries[0].attempts, n as u32);
    assert_eq!(status.deliveries[1].recent_attempts, Some(vec![]));
    assert_eq!(
        s.attempts(status.deliveries[0].id)
            .await
            .unwrap()
            .unwrap()
            .len(),
        n as usize
    );
}

async fn attempts_go_with_their_delivery(b: Backend) {
    let s = b
        .open_with(|st| st.retention = Duration::from_millis(100))
        .await;
    s.accept(vec![accepted("e1", 0, &["a"])]).await.unwrap();
    let failed = Outcome::Failed {
        status: Some(500),
        error: "HTTP 500".into(),
    };
    attempt_once(&*s, "a", 10, failed, attempt(10, 5, "http_error")).await;
    let first = s.event_status("e1").await.unwrap().unwrap().deliveries[0].id;
    s.delete_delivery(first).await.unwrap();
    assert!(s.attempts(first).await.unwrap().is_none());
    // A new delivery (SQLite may give it the same id) starts with no history.
    s.accept(vec![accepted("e2", 0, &["a"])]).await.unwrap();
    let second = s.event_status("e2").await.unwrap().unwrap().deliveries[0].id;
    assert_eq!(s.attempts(second).await.unwrap(), Some(vec![]));
    // Pruned after retention, with its attempts.
    attempt_once(
        &*s,
        "a",
        20,
        Outcome::Delivered { status: 200 },
        attempt(20, 5, "success"),
    )
    .await;
    let now = crate::time::now_ms() + 10_000;
    s.housekeeping(now).await.unwrap();
    assert!(s.attempts(second).await.unwrap().is_none());
    s.accept(vec![accepted("e3", now, &["a"])]).await.unwrap();
    let third = s.event_status("e3").await.unwrap().unwrap().deliveries[0].id;
    assert_eq!(s.attempts(third).await.unwrap(), Some(vec![]));
}

async fn a_replay_makes_new_deliveries_of_the_same_event(b: Backend) {
    let s = b.open().await;
    s.accept(vec![accepted("e1", 5, &["a"])]).await.unwrap();
    attempt_once(
        &*s,
        "a",
        10,
        Outcome::Delivered { status: 200 },
        attempt(10, 5, "success"),
    )
    .await;
    assert_eq!(
        s.replay("nope".into(), vec!["a".into()], 20).await.unwrap(),
        Replayed::NoEvent
    );
    let Replayed::Queued(ids) = s
        .replay("e1".into(), vec!["a".into(), "b".into()], 20)
        .await
        .unwrap()
    else {
        panic!("not queued")
    };
    let status = s.event_status("e1").await.unwrap().unwrap();
    let rows: Vec<_> = status
        .deliveries
        .iter()
        .map(|d| (d.subscription.as_str(), d.state, d.attempts))
        .collect();
    assert_eq!(
        rows,
        [
            ("a", DeliveryState::Delivered, 1),
            ("a", DeliveryState::Pending, 0),
            ("b", DeliveryState::Pending, 0)
        ]
    );
    assert_eq!(ids, [status.deliveries[1].id, status.deliveries[2].id]);
    let claimed = s.claim_due("a", 20, 10, Duration::ZERO).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (
            &*claimed[0].event_id,
            claimed[0].attempts,
            claimed[0].budget_used
        ),
        ("e1", 0, 0)
    );
    assert_eq!(claimed[0].received_at_ms, 5, "the event's own time");
    assert_eq!(&claimed[0].data[..], b"{\"k\":1}");
}

async fn a_range_replay_takes_the_events_of_the_range_that_matched(b: Backend) {
    let s = b.open().await;
    s.accept(vec![
        accepted("e100", 100, &["a"]),
        accepted("e200", 200, &["a", "b"]),
        accepted("e250", 250, &["b"]),
        accepted("e300", 300, &["a"]),
    ])
    .await
    .unwrap();
    for d in s.claim_due("a", 1000, 10, Duration::ZERO).await.unwrap() {
        s.complete(
            d.id,
            d.token,
            Outcome::Delivered { status: 200 },
            attempt(1000, 5, "success"),
        )
        .await
        .unwrap();
    }
    let now = 10_000;
    let queued = s
        .replay_range("a".into(), 150, 300, now, 60_000)
        .await
        .unwrap();
    assert_eq!(queued, Release::Released(1), "from inclusive, to exclusive");
    let again = s
        .replay_range("a".into(), 0, 1000, now + 1, 60_000)
        .await
        .unwrap();
    assert_eq!(
        again,
        Release::TooSoon {
            next_allowed_ms: now + 60_000
        }
    );
    // Each subscription has its own clock, apart from the releases'.
    let other = s
        .replay_range("b".into(), 0, 1000, now + 1, 60_000)
        .await
        .unwrap();
    assert_eq!(other, Release::Released(2));
    assert_eq!(
        s.release(Some("a".into()), vec![], now + 1, 60_000)
            .await
            .unwrap(),
        Release::Released(0)
    );
    let claimed = s.claim_due("a", now, 10, Duration::ZERO).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|d| d.event_id.to_string()).collect();
    assert_eq!(ids, ["e200"]);
}
