//! The per-subscription concurrency layer, with an allowance that adapts to the receiver.
//! With a fixed `max_in_flight` it halves (down to one attempt) each time an attempt times
//! out or cannot connect, and grows back by one with each attempt the receiver answers, up
//! to `max_in_flight`: a receiver that hangs holds one slot, not all of them. With
//! `max_in_flight: auto`, the [`Aimd`] controller sets it from latency and failures.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use prometheus::IntGauge;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower::{BoxError, Layer, Service};

use super::aimd::{Aimd, Signal};
use super::verdict::Verdict;
use crate::subscription::Concurrency;

/// The adaptive limit of one subscription, shared by every clone of its stack.
#[derive(Debug)]
pub struct Allowance {
    permits: Arc<Semaphore>,
    max: usize,
    state: Mutex<Level>,
    /// `hookrelay_delivery_concurrency_limit` of a subscription with its own series.
    gauge: Option<IntGauge>,
}

/// The current limit and the permits still to take back from attempts in flight.
#[derive(Debug)]
struct Level {
    limit: usize,
    debt: usize,
    /// The controller of `max_in_flight: auto`.
    aimd: Option<Aimd>,
}

impl Allowance {
    /// An allowance of `max` attempts at once: starting at `max` when fixed, at one
    /// attempt when `auto`. `gauge` shows the limit.
    pub fn new(max: usize, mode: Concurrency, gauge: Option<IntGauge>) -> Arc<Allowance> {
        let max = max.max(1);
        let aimd = match mode {
            Concurrency::Fixed => None,
            Concurrency::Auto => Some(Aimd::new(max)),
        };
        let limit = aimd.as_ref().map_or(max, Aimd::limit);
        if let Some(g) = &gauge {
            g.set(limit as i64);
        }
        Arc::new(Allowance {
            permits: Arc::new(Semaphore::new(limit)),
            max,
            state: Mutex::new(Level {
                limit,
                debt: 0,
                aimd,
            }),
            gauge,
        })
    }

    /// The attempts allowed at once now.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Moves the limit to `target` (within 1..=max): permits are added or taken at once
    /// where idle, and those held by attempts in flight are taken back as they end.
    fn resize(&self, level: &mut Level, target: usize) {
        let target = target.clamp(1, self.max);
        if target < level.limit {
            level.debt += level.limit - target;
            level.limit = target;
            let taken = self.permits.forget_permits(level.debt);
            level.debt -= taken;
        } else if target > level.limit {
            let more = target - level.limit;
            level.limit = target;
            let repaid = more.min(level.debt);
            level.debt -= repaid;
            if more > repaid {
                self.permits.add_permits(more - repaid);
            }
        }
        if let Some(g) = &self.gauge {
            g.set(level.limit as i64);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Level> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives an ended attempt's permit back, unless the limit shrank meanwhile.
    fn give_back(level: &mut Level, permit: OwnedSemaphorePermit) {
        if level.debt > 0 {
            level.debt -= 1;
            permit.forget();
        }
    }

    /// Adjusts the limit to what the receiver did with one attempt, which took `latency`.
    fn adjust(&self, level: &mut Level, verdict: &Verdict, latency: Duration) {
        let target = match &mut level.aimd {
            // Attempts in flight now, this one included (its permit is not back yet).
            Some(aimd) => {
                let held =
                    (level.limit + level.debt).saturating_sub(self.permits.available_permits());
                aimd.observe(latency, signal(verdict), held.max(1))
            }
            None if overloaded(verdict) => level.limit / 2,
            None => level.limit + 1,
        };
        self.resize(level, target);
    }

    /// Ends one attempt under one lock: learns from its verdict (none if the stack failed),
    /// then gives its permit back.
    fn settle(&self, verdict: Option<&Verdict>, latency: Duration, permit: OwnedSemaphorePermit) {
        let mut level = self.lock();
        if let Some(verdict) = verdict {
            self.adjust(&mut level, verdict, latency);
        }
        Allowance::give_back(&mut level, permit);
    }

    #[cfg(test)]
    fn learn(&self, verdict: &Verdict) {
        self.adjust(&mut self.lock(), verdict, Duration::from_millis(10));
    }

    #[cfg(test)]
    fn release(&self, permit: OwnedSemaphorePermit) {
        Allowance::give_back(&mut self.lock(), permit);
    }
}

/// Whether a fixed allowance halves: the receiver hangs or cannot be reached.
fn overloaded(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Retryable { result, .. } if matches!(*result, "timeout" | "connect_error"))
}

/// What a verdict tells the AIMD controller: overload (see [`Verdict::is_overload`]), or
/// an answer.
fn signal(verdict: &Verdict) -> Signal {
    if verdict.is_overload() {
        Signal::Failed
    } else {
        Signal::Answered
    }
}

/// Applies a subscription's [`Allowance`] around its inner service.
#[derive(Clone)]
pub struct AllowanceLayer(pub Arc<Allowance>);

impl<S> Layer<S> for AllowanceLayer {
    type Service = Allowed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Allowed {
            inner,
            allowance: self.0.clone(),
            semaphore: PollSemaphore::new(self.0.permits.clone()),
            permit: None,
        }
    }
}

/// Service made by [`AllowanceLayer`].
pub struct Allowed<S> {
    inner: S,
    allowance: Arc<Allowance>,
    semaphore: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
}

impl<S: Clone> Clone for Allowed<S> {
    fn clone(&self) -> Self {
        // A clone shares the allowance but not this instance's permit.
        Allowed {
            inner: self.inner.clone(),
            allowance: self.allowance.clone(),
            semaphore: self.semaphore.clone(),
            permit: None,
        }
    }
}

impl<S, R> Service<R> for Allowed<S>
where
    S: Service<R, Response = Verdict, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Verdict;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Verdict, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.permit.is_none() {
            match ready!(self.semaphore.poll_acquire(cx)) {
                Some(permit) => self.permit = Some(permit),
                None => return Poll::Ready(Err("the allowance is closed".into())),
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let permit = self.permit.take().expect("call after poll_ready");
        let allowance = self.allowance.clone();
        let started = Instant::now();
        let future = self.inner.call(req);
        Box::pin(async move {
            let result = future.await;
            allowance.settle(result.as_ref().ok(), started.elapsed(), permit);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Pressure;

    fn timeout() -> Verdict {
        Verdict::Retryable {
            result: "timeout",
            status: None,
            pressure: Pressure::Overloaded,
            retry_after: None,
            error: "no response".into(),
        }
    }

    #[test]
    fn a_hanging_receiver_shrinks_to_one_and_recovers_one_by_one() {
        let a = Allowance::new(8, Concurrency::Fixed, None);
        assert_eq!(a.permits.available_permits(), 8);
        a.learn(&timeout());
        assert_eq!(a.limit(), 4);
        assert_eq!(
            a.permits.available_permits(),
            4,
            "idle permits are taken at once"
        );
        for _ in 0..5 {
            a.learn(&timeout());
        }
        assert_eq!(a.limit(), 1);
        assert_eq!(a.permits.available_permits(), 1);
        a.learn(&Verdict::Delivered(http::StatusCode::OK));
        assert_eq!(a.limit(), 2);
        assert_eq!(a.permits.available_permits(), 2);
        for _ in 0..20 {
            a.learn(&Verdict::Delivered(http::StatusCode::OK));
        }
        assert_eq!(a.limit(), 8, "never above max_in_flight");
        assert_eq!(a.permits.available_permits(), 8);
    }

    #[test]
    fn permits_held_while_it_shrinks_are_taken_back_when_released() {
        let a = Allowance::new(4, Concurrency::Fixed, None);
        let held: Vec<_> = (0..4)
            .map(|_| a.permits.clone().try_acquire_owned().unwrap())
            .collect();
        a.learn(&timeout());
        assert_eq!(a.limit(), 2);
        for p in held {
            a.release(p);
        }
        assert_eq!(a.permits.available_permits(), 2);
    }
}

#[cfg(test)]
mod auto_tests {
    use super::*;
    use crate::backoff::Pressure;
    use http::StatusCode;

    fn server_error() -> Verdict {
        Verdict::Retryable {
            result: "http_error",
            status: Some(StatusCode::SERVICE_UNAVAILABLE),
            pressure: Pressure::Normal,
            retry_after: None,
            error: "HTTP 503".into(),
        }
    }

    #[test]
    fn auto_starts_at_one_grows_on_used_answers_and_shrinks_on_failures() {
        let gauge = IntGauge::new("limit", "limit").unwrap();
        let a = Allowance::new(16, Concurrency::Auto, Some(gauge.clone()));
        assert_eq!((a.limit(), a.permits.available_permits()), (1, 1));
        assert_eq!(gauge.get(), 1);
        let ok = Verdict::Delivered(StatusCode::OK);
        let fast = Duration::from_millis(5);
        // Each attempt holds every permit, as a busy subscription does.
        for _ in 0..40 {
            let held: Vec<_> = (0..a.limit())
                .map(|_| a.permits.clone().try_acquire_owned().unwrap())
                .collect();
            for p in held {
                a.settle(Some(&ok), fast, p);
            }
        }
        assert_eq!(a.limit(), 16);
        assert_eq!(a.permits.available_permits(), 16);
        assert_eq!(gauge.get(), 16);
        let p = a.permits.clone().try_acquire_owned().unwrap();
        a.settle(Some(&server_error()), fast, p);
        assert_eq!((a.limit(), a.permits.available_permits()), (8, 8));
        assert_eq!(gauge.get(), 8);
        // A 4xx the receiver chose is an answer, not overload.
        assert_eq!(
            signal(&Verdict::Retryable {
                result: "http_error",
                status: Some(StatusCode::NOT_FOUND),
                pressure: Pressure::Normal,
                retry_after: None,
                error: String::new(),
            }),
            Signal::Answered
        );
    }
}
