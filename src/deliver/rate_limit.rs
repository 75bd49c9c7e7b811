//! The layer that waits for a governor token before each attempt: the limit delays, never
//! drops, and it comes first in the stack, so waiting holds no concurrency slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use prometheus::IntCounter;
use tower::{Layer, Service};

use crate::subscription::RateLimit;

/// Waits for a governor token before each attempt: the limit delays, never drops.
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<DefaultDirectRateLimiter>,
    waited: IntCounter,
}

impl RateLimitLayer {
    /// A limiter for `limit`, counting delayed attempts in `waited`.
    pub fn new(limit: RateLimit, waited: IntCounter) -> Self {
        let period = Duration::from_secs_f64(1.0 / limit.per_second).max(Duration::from_nanos(1));
        let burst = std::num::NonZeroU32::new(limit.burst.max(1)).expect("burst is at least 1");
        let quota = Quota::with_period(period)
            .expect("period is positive")
            .allow_burst(burst);
        RateLimitLayer {
            limiter: Arc::new(governor::RateLimiter::direct(quota)),
            waited,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limiter: self.limiter.clone(),
            waited: self.waited.clone(),
            state: Token::None,
        }
    }
}

/// Service made by [`RateLimitLayer`].
pub struct RateLimited<S> {
    inner: S,
    limiter: Arc<DefaultDirectRateLimiter>,
    waited: IntCounter,
    state: Token,
}

enum Token {
    None,
    Waiting(Pin<Box<tokio::time::Sleep>>),
    Held,
}

impl<S: Clone> Clone for RateLimited<S> {
    fn clone(&self) -> Self {
        // A clone shares the limiter but not this instance's token.
        RateLimited {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            waited: self.waited.clone(),
            state: Token::None,
        }
    }
}

impl<S, Req> Service<Req> for RateLimited<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        loop {
            match &mut self.state {
                Token::Held => return self.inner.poll_ready(cx),
                Token::Waiting(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    match self.limiter.check() {
                        Ok(()) => self.state = Token::Held,
                        Err(not_until) => {
                            let wait = not_until.wait_time_from(DefaultClock::default().now());
                            self.state = Token::Waiting(Box::pin(tokio::time::sleep(wait)));
                        }
                    }
                }
                Token::None => match self.limiter.check() {
                    Ok(()) => self.state = Token::Held,
                    Err(not_until) => {
                        self.waited.inc();
                        let wait = not_until.wait_time_from(DefaultClock::default().now());
                        self.state = Token::Waiting(Box::pin(tokio::time::sleep(wait)));
                    }
                },
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        debug_assert!(matches!(self.state, Token::Held), "call before poll_ready");
        self.state = Token::None;
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{BoxError, ServiceExt};

    #[tokio::test]
    async fn rate_limit_waits_for_tokens() {
        let counter = IntCounter::new("w", "w").unwrap();
        let layer = RateLimitLayer::new(
            RateLimit {
                per_second: 10.0,
                burst: 2,
            },
            counter.clone(),
        );
        let mut svc = layer.layer(tower::service_fn(|_: ()| async { Ok::<_, BoxError>(()) }));
        for _ in 0..2 {
            svc.ready().await.unwrap().call(()).await.unwrap();
        }
        assert_eq!(counter.get(), 0, "the burst goes through without waiting");
        svc.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(counter.get(), 1, "the third waits");
    }
}
