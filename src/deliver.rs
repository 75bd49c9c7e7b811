//! Delivery: one attempt's tower stack per push subscription, built once and cloned per
//! attempt. Layers listed first see the request first: rate limit, the subscription's and
//! the relay's concurrency caps, classification and metrics, the timeout, then the channel's
//! transport (HTTP with its credentials layer, or SMTP). Retries are not made here: the
//! verdict goes back to the store, which schedules them.

pub mod aimd;
pub mod allowance;
pub mod auth;
pub mod classify;
pub mod destination;
pub mod email;
pub mod http_post;
pub mod oauth2;
pub mod payload;
pub mod rate_limit;
pub mod settings;
pub mod tls;
pub mod token_error;
pub mod verdict;
pub mod via;

use std::sync::Arc;

use tokio::sync::Semaphore;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::util::BoxCloneService;
use tower::{BoxError, Service, ServiceBuilder};

use crate::metrics::{Metrics, SeriesSet};
use crate::subscription::{FinalStatuses, HttpSettings, PushSettings, SuccessCodes};
use allowance::{Allowance, AllowanceLayer};
use auth::AuthLayer;
use classify::{ClassifyConfig, ClassifyLayer};
use email::{MailAttempt, Mailer};
use oauth2::{OAuth2Layer, TokenSource};
use rate_limit::{RateLimitLayer, Relays};
use verdict::{Reply, Verdict};

/// The concurrency a subscription's stack is held to.
#[derive(Clone)]
pub struct Caps {
    /// Its own adaptive allowance (`max_in_flight`, shrinking while the receiver hangs).
    pub allowance: Arc<Allowance>,
    /// The pool it shares with others, if any: API subscriptions share
    /// `delivery.api_max_in_flight`; config ones have their own slots.
    pub pool: Option<Arc<Semaphore>>,
    /// The relays its `rate_limit` is shared by (each sends its share).
    pub relays: Relays,
}

/// A subscription's attempt service: its channel's request in, a verdict out.
pub type AttemptService<R> = BoxCloneService<R, Verdict, BoxError>;

/// The stack of an HTTP push subscription: `sender` sends, with the subscription's
/// credentials added last (`token`: the lane's OAuth2 tokens, for `auth.oauth2`).
pub fn http_stack(
    label: &str,
    series: SeriesSet,
    push: &PushSettings,
    http: &HttpSettings,
    (sender, token): (http_post::Sender, Option<Arc<TokenSource>>),
    caps: Caps,
    metrics: &Metrics,
) -> AttemptService<reqwest::Request> {
    let send = tower::service_fn(move |req| sender.clone().send(req));
    let transport = ServiceBuilder::new()
        // Credentials last, marked sensitive so no layer can log them.
        .option_layer(http.auth.as_ref().and_then(AuthLayer::new))
        // Inside the timeout and the classification, which so cover the token fetch and
        // name its failures (`auth_error`).
        .option_layer(token.map(OAuth2Layer))
        .service(send);
    let policy = (http.success.clone(), http.final_statuses.clone());
    stack(label, series, push, policy, transport, caps, metrics)
}

/// The stack of an e-mail subscription: its `mailer` sends.
pub fn email_stack(
    label: &str,
    series: SeriesSet,
    push: &PushSettings,
    mailer: Arc<Mailer>,
    caps: Caps,
    metrics: &Metrics,
) -> AttemptService<MailAttempt> {
    let send = tower::service_fn(move |mail: MailAttempt| {
        let mailer = mailer.clone();
        async move { mailer.send(mail?).await }
    });
    // SMTP replies are judged by their class (5xx is final already); `success_code` and
    // `final_statuses` are HTTP's.
    let policy = (SuccessCodes::default_2xx(), FinalStatuses::default());
    stack(label, series, push, policy, send, caps, metrics)
}

/// The layers every push channel shares, around its `transport`; `policy` is what counts as
/// delivered and what as final. Its attempts count under `label`, in the results `series`
/// (the channel's) holds.
fn stack<R, T>(
    label: &str,
    series: SeriesSet,
    push: &PushSettings,
    (success, finals): (SuccessCodes, FinalStatuses),
    transport: T,
    caps: Caps,
    metrics: &Metrics,
) -> AttemptService<R>
where
    R: Send + 'static,
    T: Service<R, Response = Reply, Error = BoxError> + Clone + Send + 'static,
    T::Future: Send + 'static,
{
    let service = ServiceBuilder::new()
        // Rate limit first, so waiting for a token holds no concurrency slot.
        .option_layer(push.rate_limit.map(|r| {
            RateLimitLayer::new(
                r,
                caps.relays.clone(),
                metrics.rate_limited.with_label_values(&[label]),
            )
        }))
        // Per-subscription cap, adapted to the receiver: a slow receiver only ever holds its
        // own slots, and a hanging one soon holds one. Outside the classification, which it
        // learns from.
        .layer(AllowanceLayer(caps.allowance))
        // API subscriptions' shared pool, so together they cannot take the slots the config
        // subscriptions are promised.
        .option_layer(caps.pool.map(GlobalConcurrencyLimitLayer::with_semaphore))
        // Outside the timeout so timeouts are seen, classified and timed like any result.
        .layer(ClassifyLayer(Arc::new(ClassifyConfig {
            success,
            finals,
            timeout: push.timeout,
            attempts: metrics.attempt_counters(label, series),
            duration: metrics.attempt_duration.with_label_values(&[label]),
        })))
        // Per attempt, covering connect, send and reading the status.
        .timeout(push.timeout)
        .service(transport);
    BoxCloneService::new(service)
}
