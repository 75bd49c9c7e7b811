//! The layer that waits for a governor token before each attempt: the limit delays, never
//! drops, and it comes first in the stack, so waiting holds no concurrency slot.
//!
//! A subscription's `rate_limit` is what its receiver sees from all relays together: where
//! relays share one store, each takes an equal share of the rate and of the burst (the live
//! relays, counted by the store). When that count changes, the limiter is replaced by one
//! for the new share that starts with no burst saved, so a change never adds a burst.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, NotUntil, Quota};
use prometheus::IntCounter;
use tower::{Layer, Service};

use crate::subscription::RateLimit;

/// How many relays share each rate limit: the live relays on a shared store, else 1.
pub type Relays = Arc<AtomicU64>;

/// Waits for a governor token before each attempt: the limit delays, never drops.
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<Limiter>,
    waited: IntCounter,
}

impl RateLimitLayer {
    /// A limiter for this relay's share of `limit` among `relays`, counting delayed
    /// attempts in `waited`.
    pub fn new(limit: RateLimit, relays: Relays, waited: IntCounter) -> Self {
        let n = relays.load(Ordering::Relaxed).max(1);
        RateLimitLayer {
            limiter: Arc::new(Limiter {
                share: ArcSwap::from_pointee(Share::new(limit, n, false)),
                limit,
                relays,
            }),
            waited,
        }
    }
}

/// A subscription's limiter, rebuilt when the number of relays sharing it changes.
struct Limiter {
    share: ArcSwap<Share>,
    limit: RateLimit,
    relays: Relays,
}

/// The limiter of one share: `1/n` of the rate and of the burst (at least 1).
struct Share {
    n: u64,
    limiter: DefaultDirectRateLimiter,
}

impl Share {
    fn new(limit: RateLimit, n: u64, empty: bool) -> Share {
        let per_second = limit.per_second / n as f64;
        let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
        let burst = limit
            .burst
            .max(1)
            .div_ceil(n.min(u64::from(u32::MAX)) as u32);
        let burst = std::num::NonZeroU32::new(burst.max(1)).expect("burst is at least 1");
        let quota = Quota::with_period(period)
            .expect("period is positive")
            .allow_burst(burst);
        let limiter = governor::RateLimiter::direct(quota);
        if empty {
            // Spend the saved burst: only the steady rate is available at first.
            let _ = limiter.check_n(burst);
        }
        Share { n, limiter }
    }
}

impl Limiter {
    /// A token now, or when the next one is due.
    fn check(&self) -> Result<(), NotUntil<<DefaultClock as Clock>::Instant>> {
        let n = self.relays.load(Ordering::Relaxed).max(1);
        let share = self.share.load();
        if share.n == n {
            // The common case: no Arc is cloned per attempt.
            return share.limiter.check();
        }
        let share = Arc::new(Share::new(self.limit, n, true));
        self.share.store(share.clone());
        share.limiter.check()
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
    limiter: Arc<Limiter>,
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
            Arc::new(AtomicU64::new(1)),
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

    #[test]
    fn each_relay_takes_its_share_and_a_change_adds_no_burst() {
        let relays = Arc::new(AtomicU64::new(1));
        let limit = RateLimit {
            per_second: 20.0,
            burst: 6,
        };
        let limiter =
            RateLimitLayer::new(limit, relays.clone(), IntCounter::new("w", "w").unwrap()).limiter;
        // Alone: the whole burst.
        assert_eq!((0..10).filter(|_| limiter.check().is_ok()).count(), 6);
        // Three relays: a third of the rate (one token each 150 ms) and no saved burst.
        relays.store(3, Ordering::Relaxed);
        assert_eq!((0..10).filter(|_| limiter.check().is_ok()).count(), 0);
        let wait = limiter
            .check()
            .unwrap_err()
            .wait_time_from(DefaultClock::default().now());
        assert!(
            wait > Duration::from_millis(100) && wait <= Duration::from_millis(150),
            "{wait:?}"
        );
        assert_eq!(limiter.share.load_full().n, 3);
        // Alone again: the whole rate, still without a saved burst.
        relays.store(1, Ordering::Relaxed);
        assert!(limiter.check().is_err());
        assert_eq!(limiter.share.load_full().n, 1);
    }
}
