//! The per-subscription concurrency layer, with an allowance that adapts to the receiver:
//! it halves (down to one attempt) each time an attempt times out or cannot connect, and
//! grows back by one with each attempt the receiver answers, up to `max_in_flight`. A
//! receiver that hangs therefore holds one slot, not all of them, and a recovering one gets
//! its concurrency back as it proves it can take it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower::{BoxError, Layer, Service};

use super::verdict::Verdict;

/// The adaptive limit of one subscription, shared by every clone of its stack.
#[derive(Debug)]
pub struct Allowance {
    permits: Arc<Semaphore>,
    max: usize,
    state: Mutex<Level>,
}

/// The current limit and the permits still to take back from attempts in flight.
#[derive(Debug)]
struct Level {
    limit: usize,
    debt: usize,
}

impl Allowance {
    /// An allowance of `max` attempts at once, starting at `max`.
    pub fn new(max: usize) -> Arc<Allowance> {
        let max = max.max(1);
        Arc::new(Allowance {
            permits: Arc::new(Semaphore::new(max)),
            max,
            state: Mutex::new(Level {
                limit: max,
                debt: 0,
            }),
        })
    }

    /// The attempts allowed at once now.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Level> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Halves the limit (at least one stays); permits held by attempts in flight are taken
    /// back as those attempts end.
    fn shrink(&self, level: &mut Level) {
        let target = (level.limit / 2).max(1);
        level.debt += level.limit - target;
        level.limit = target;
        let taken = self.permits.forget_permits(level.debt);
        level.debt -= taken;
    }

    /// Grows the limit by one, up to `max`.
    fn grow(&self, level: &mut Level) {
        if level.limit >= self.max {
            return;
        }
        level.limit += 1;
        if level.debt > 0 {
            level.debt -= 1;
        } else {
            self.permits.add_permits(1);
        }
    }

    /// Gives an ended attempt's permit back, unless the limit shrank meanwhile.
    fn give_back(level: &mut Level, permit: OwnedSemaphorePermit) {
        if level.debt > 0 {
            level.debt -= 1;
            permit.forget();
        }
    }

    /// Adjusts the limit to what the receiver did with one attempt.
    fn adjust(&self, level: &mut Level, verdict: &Verdict) {
        match verdict {
            Verdict::Retryable { result, .. } if matches!(*result, "timeout" | "connect_error") => {
                self.shrink(level)
            }
            _ => self.grow(level),
        }
    }

    /// Ends one attempt under one lock: learns from its verdict (none if the stack failed),
    /// then gives its permit back.
    fn settle(&self, verdict: Option<&Verdict>, permit: OwnedSemaphorePermit) {
        let mut level = self.lock();
        if let Some(verdict) = verdict {
            self.adjust(&mut level, verdict);
        }
        Allowance::give_back(&mut level, permit);
    }

    #[cfg(test)]
    fn learn(&self, verdict: &Verdict) {
        self.adjust(&mut self.lock(), verdict);
    }

    #[cfg(test)]
    fn release(&self, permit: OwnedSemaphorePermit) {
        Allowance::give_back(&mut self.lock(), permit);
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
        let future = self.inner.call(req);
        Box::pin(async move {
            let result = future.await;
            allowance.settle(result.as_ref().ok(), permit);
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
        let a = Allowance::new(8);
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
        let a = Allowance::new(4);
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
