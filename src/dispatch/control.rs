//! The delivery state of one push subscription: its circuit breaker and whether it is
//! paused, what ingest, the feeder and the pump ask before moving a delivery, and what the
//! API shows. Kept in memory per relay (each replica has its own breaker); the pause is also
//! kept in the store, which the dispatcher reads at start and, on a shared store, every
//! second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::IntGauge;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::breaker::{Admit, Breaker, Change};
use crate::deliver::verdict::Verdict;
use crate::metrics::{DELIVERY_STATES, Metrics};
use crate::subscription::CircuitSettings;
use crate::time::{now_ms, rfc3339};

/// What the feeder may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// Claim as many as there is room for.
    Claim,
    /// Claim one: the half-open breaker's probe.
    Probe,
    /// Claim nothing until woken, or until this time (the end of a cool-down).
    Wait(Option<Instant>),
}

/// A subscription's delivery state as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ControlState {
    /// `active`, `open`, `half_open` or `paused`.
    pub state: &'static str,
    /// When it entered this state (RFC 3339, UTC).
    pub since: String,
    /// Why: `failures`, `failure_ratio`, `cool_down`, `probe`, `api`, `gone`, `config`...
    pub reason: Option<String>,
    /// The last failed attempt's error, if any.
    pub last_error: Option<String>,
}

/// A pause, as the relay applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Paused {
    /// Why it is paused.
    pub(super) reason: String,
}

struct Inner {
    /// The document's `paused`, which applies while the store holds no state.
    in_document: bool,
    circuit: Option<CircuitSettings>,
    breaker: Breaker,
    paused: Option<Paused>,
    /// The state's name, when it was entered, and why.
    state: &'static str,
    since_ms: i64,
    reason: Option<String>,
    last_error: Option<String>,
}

/// One push subscription's delivery control, shared by its lane, feeder and pump.
pub struct Control {
    name: Arc<str>,
    inner: Mutex<Inner>,
    /// Active (closed and not paused): ingest may hand deliveries straight to the pump.
    flowing: AtomicBool,
    /// Wakes the feeder when it may claim again.
    pub(super) changed: Notify,
    /// `hookrelay_subscription_state`, one gauge per state; none without own series.
    gauges: Option<[IntGauge; 4]>,
}

impl Control {
    /// A closed breaker, paused if `paused` says so; `in_document` is the document's
    /// `paused`.
    pub(super) fn new(
        name: Arc<str>,
        circuit: Option<CircuitSettings>,
        in_document: bool,
        paused: Option<Paused>,
        metrics: Option<&Metrics>,
    ) -> Control {
        let gauges = metrics
            .map(|m| DELIVERY_STATES.map(|s| m.subscription_state.with_label_values(&[&*name, s])));
        let control = Control {
            name,
            inner: Mutex::new(Inner {
                in_document,
                circuit,
                breaker: Breaker::default(),
                paused: None,
                state: "active",
                since_ms: now_ms(),
                reason: None,
                last_error: None,
            }),
            flowing: AtomicBool::new(true),
            changed: Notify::new(),
            gauges,
        };
        control.show(&control.lock());
        if let Some(p) = paused {
            control.pause(p);
        }
        control
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closed and not paused: new deliveries may skip the store's queue.
    pub(super) fn flowing(&self) -> bool {
        self.flowing.load(Ordering::Relaxed)
    }

    /// The state as the API shows it.
    pub fn state(&self) -> ControlState {
        let inner = self.lock();
        ControlState {
            state: inner.state,
            since: rfc3339(inner.since_ms),
            reason: inner.reason.clone(),
            last_error: inner.last_error.clone(),
        }
    }

    /// Whether it is paused.
    pub(super) fn is_paused(&self) -> bool {
        self.lock().paused.is_some()
    }

    /// The document's `paused`, which applies while the store holds no state.
    pub(super) fn in_document(&self) -> bool {
        self.lock().in_document
    }

    /// What the feeder may claim now; a cool-down over turns the breaker half-open.
    pub(super) fn gate(&self) -> Gate {
        let mut inner = self.lock();
        if inner.paused.is_some() {
            return Gate::Wait(None);
        }
        let breaker = inner.breaker;
        match breaker {
            Breaker::Closed { .. } => Gate::Claim,
            Breaker::HalfOpen { .. } => Gate::Wait(None),
            Breaker::Open { until, .. } => {
                if inner.breaker.try_half_open(Instant::now()) == Some(Change::HalfOpened) {
                    self.enter(&mut inner, "cool_down");
                    Gate::Probe
                } else {
                    Gate::Wait(Some(until))
                }
            }
        }
    }

    /// The feeder found nothing due to probe with: open again, the cool-down still over.
    pub(super) fn no_probe(&self) {
        let mut inner = self.lock();
        if matches!(inner.breaker, Breaker::HalfOpen { sent: false, .. }) {
            inner.breaker.no_probe(Instant::now());
            self.enter(&mut inner, "cool_down");
        }
    }

    /// Whether nothing may be sent now (a quick check before waiting for a slot).
    pub(super) fn holding(&self) -> bool {
        let inner = self.lock();
        inner.paused.is_some()
            || matches!(
                inner.breaker,
                Breaker::Open { .. } | Breaker::HalfOpen { sent: true, .. }
            )
    }

    /// Whether this attempt may go now: the pump asks just before sending it.
    pub(super) fn admit(&self) -> Admit {
        let mut inner = self.lock();
        if inner.paused.is_some() {
            return Admit::Hold;
        }
        inner.breaker.admit()
    }

    /// Records an attempt's verdict (`probe`: the half-open breaker's probe).
    pub(super) fn record(&self, verdict: &Verdict, probe: bool) {
        let failed = is_failure(verdict);
        let mut inner = self.lock();
        if let Verdict::Retryable { error, .. } | Verdict::Permanent { error, .. } = verdict {
            inner.last_error = Some(error.clone());
        }
        let Some(settings) = inner.circuit else {
            return;
        };
        let change = inner
            .breaker
            .record(&settings, Instant::now(), probe, failed);
        match change {
            Some(Change::Opened) => {
                let reason = if probe { "probe_failed" } else { "failures" };
                self.enter(&mut inner, reason);
            }
            Some(Change::OpenedByRatio) => self.enter(&mut inner, "failure_ratio"),
            Some(Change::Closed) => self.enter(&mut inner, "probe_succeeded"),
            Some(Change::HalfOpened) | None => {}
        }
    }

    /// Pauses it (no attempt goes out; deliveries keep queueing); false if it already was.
    pub(super) fn pause(&self, paused: Paused) -> bool {
        let mut inner = self.lock();
        if inner.paused.is_some() {
            return false;
        }
        let reason = paused.reason.clone();
        inner.paused = Some(paused);
        self.enter(&mut inner, &reason);
        true
    }

    /// Takes the pause the stored state (or the document) asks for.
    pub(super) fn settle(&self, wanted: Option<Paused>) {
        match wanted {
            Some(p) => {
                self.pause(p);
            }
            None => {
                self.resume("resumed");
            }
        }
    }

    /// Resumes it with a closed breaker; false if it was not paused.
    pub(super) fn resume(&self, reason: &str) -> bool {
        let mut inner = self.lock();
        if inner.paused.take().is_none() {
            return false;
        }
        inner.breaker = Breaker::default();
        self.enter(&mut inner, reason);
        true
    }

    /// Takes the state the breaker and the pause now give: logs the change, sets the gauges.
    fn enter(&self, inner: &mut Inner, reason: &str) {
        let to = match (&inner.paused, inner.breaker) {
            (Some(_), _) => "paused",
            (None, Breaker::Closed { .. }) => "active",
            (None, Breaker::Open { .. }) => "open",
            (None, Breaker::HalfOpen { .. }) => "half_open",
        };
        self.flowing.store(to == "active", Ordering::Relaxed);
        let from = inner.state;
        if from == to {
            return;
        }
        inner.state = to;
        // The feeder waits on each state for a different thing: it looks again.
        self.changed.notify_one();
        inner.since_ms = now_ms();
        inner.reason = Some(reason.to_string());
        let name = &*self.name;
        let error = inner.last_error.as_deref().unwrap_or("");
        match to {
            "open" | "paused" => tracing::warn!(
                subscription = name,
                from,
                to,
                reason,
                last_error = error,
                "delivery state changed"
            ),
            _ => tracing::info!(
                subscription = name,
                from,
                to,
                reason,
                "delivery state changed"
            ),
        }
        self.show(inner);
    }

    /// Sets the gauges to the current state.
    fn show(&self, inner: &Inner) {
        if let Some(gauges) = &self.gauges {
            for (gauge, state) in gauges.iter().zip(DELIVERY_STATES) {
                gauge.set(i64::from(state == inner.state));
            }
        }
    }
}

/// Whether a verdict counts against the breaker: a sign of overload
/// ([`Verdict::is_overload`]) or a token that could not be had (a dead token endpoint fails
/// every attempt alike); any other answer shows a live receiver.
fn is_failure(verdict: &Verdict) -> bool {
    verdict.is_overload() || verdict.result_label() == "auth_error"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Pressure;
    use http::StatusCode;

    fn retryable(status: Option<u16>) -> Verdict {
        Verdict::Retryable {
            result: if status.is_some() {
                "http_error"
            } else {
                "timeout"
            },
            status: status.map(|s| StatusCode::from_u16(s).unwrap()),
            pressure: Pressure::Normal,
            retry_after: None,
            error: "x".into(),
        }
    }

    #[test]
    fn failures_are_the_receiver_not_answering_or_refusing_for_now() {
        for s in [None, Some(500), Some(503), Some(429), Some(408)] {
            assert!(is_failure(&retryable(s)), "{s:?}");
        }
        assert!(!is_failure(&retryable(Some(400))));
        assert!(!is_failure(&Verdict::Delivered(StatusCode::OK)));
        // A dead token endpoint opens the circuit, though the receiver was not reached.
        let auth = Verdict::Retryable {
            result: "auth_error",
            status: None,
            pressure: Pressure::Normal,
            retry_after: None,
            error: "oauth2: token endpoint answered 503".into(),
        };
        assert!(!auth.is_overload());
        assert!(is_failure(&auth));
    }

    #[tokio::test]
    async fn pause_holds_everything_and_resume_closes() {
        let c = Control::new(
            "a".into(),
            Some(CircuitSettings::default()),
            false,
            None,
            None,
        );
        assert!(c.flowing());
        assert!(c.pause(Paused {
            reason: "api".into()
        }));
        assert_eq!(c.state().state, "paused");
        assert_eq!(c.gate(), Gate::Wait(None));
        assert_eq!(c.admit(), Admit::Hold);
        assert!(!c.flowing());
        assert!(c.resume("api"));
        assert_eq!(c.state().state, "active");
        assert_eq!(c.admit(), Admit::Send { probe: false });
    }

    #[tokio::test]
    async fn opens_after_failures_then_probes() {
        let settings = CircuitSettings {
            failures: 2,
            cool_down: std::time::Duration::ZERO,
            ..CircuitSettings::default()
        };
        let c = Control::new("a".into(), Some(settings), false, None, None);
        c.record(&retryable(Some(500)), false);
        assert_eq!(c.state().state, "active");
        c.record(&retryable(None), false);
        let s = c.state();
        assert_eq!((s.state, s.reason.as_deref()), ("open", Some("failures")));
        assert_eq!(s.last_error.as_deref(), Some("x"));
        assert!(c.holding());
        assert_eq!(c.gate(), Gate::Probe);
        assert_eq!(c.state().state, "half_open");
        assert_eq!(c.admit(), Admit::Send { probe: true });
        assert_eq!(c.admit(), Admit::Hold);
        c.record(&Verdict::Delivered(StatusCode::OK), true);
        assert_eq!(c.state().state, "active");
        assert!(c.flowing());
    }
}
