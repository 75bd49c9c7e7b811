//! The layer that classifies each attempt once, into a [`Verdict`], and records its result
//! and duration. It sits outside the timeout, so timeouts are classified and timed too.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::Histogram;
use tower::{BoxError, Layer, Service};

use super::verdict::{Reply, Verdict, classify};
use crate::metrics::AttemptCounters;
use crate::subscription::{FinalStatuses, SuccessCodes};

/// Classifies each attempt once and records its result and duration.
#[derive(Clone)]
pub struct ClassifyLayer(pub Arc<ClassifyConfig>);

/// What [`ClassifyLayer`] needs, shared by every attempt.
pub struct ClassifyConfig {
    /// Statuses that count as delivered.
    pub success: SuccessCodes,
    /// Statuses that fail the delivery at once.
    pub finals: FinalStatuses,
    /// The attempt timeout, named in the error of a timed-out attempt.
    pub timeout: Duration,
    /// `hookrelay_delivery_attempts_total`, one counter per result the channel can have.
    pub attempts: AttemptCounters,
    /// `hookrelay_delivery_duration_seconds` of the subscription.
    pub duration: Histogram,
}

impl<S> Layer<S> for ClassifyLayer {
    type Service = Classify<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Classify {
            inner,
            config: self.0.clone(),
        }
    }
}

/// Service made by [`ClassifyLayer`].
#[derive(Clone)]
pub struct Classify<S> {
    inner: S,
    config: Arc<ClassifyConfig>,
}

impl<S, R> Service<R> for Classify<S>
where
    S: Service<R, Response = Reply>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Verdict;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Verdict, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let started = Instant::now();
        let future = self.inner.call(req);
        let config = self.config.clone();
        Box::pin(async move {
            let result = future.await.map_err(Into::into);
            let attempt = classify(result, &config.success, &config.finals, config.timeout);
            config.duration.observe(started.elapsed().as_secs_f64());
            config.attempts.inc(attempt.result_label());
            Ok(attempt)
        })
    }
}
