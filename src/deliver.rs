//! One delivery attempt: the request a subscriber receives, and the tower stack it passes
//! through (rate limit, concurrency caps, classification and metrics, timeout, credentials)
//! around the channel's transport: a shared HTTP client, or the subscription's SMTP mailer
//! (`mode: email`). Retries are not made here: the outcome goes back to the store.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use prometheus::{Histogram, IntCounter};
use tokio::sync::Semaphore;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, Service, ServiceBuilder};

use crate::backoff::Pressure;
use crate::config::Delivery as DeliveryConfig;
use crate::destination::{DestinationGuard, GuardedResolver};
use crate::metrics::{ATTEMPT_RESULTS, Metrics};
use crate::store::Delivery;
use crate::subscription::{Auth, RateLimit, Subscription, SuccessCodes};

/// `user-agent` of every attempt.
pub const USER_AGENT: &str = concat!("hookrelay/", env!("CARGO_PKG_VERSION"));
/// Response bytes read (and dropped) so the connection can be reused.
const DRAIN_LIMIT: usize = 64 * 1024;
/// Longest `last_error` kept.
const ERROR_LIMIT: usize = 300;

/// The per-subscription attempt service: a request in, a classified attempt out.
pub type AttemptService = BoxCloneService<Outbound, Verdict, BoxError>;

/// What one attempt sends: an HTTP request, or a mail.
#[derive(Debug)]
pub enum Outbound {
    /// A push subscription's POST.
    Http(Box<reqwest::Request>),
    /// An e-mail subscription's message.
    Mail(Box<crate::email::Mail>),
    /// An attempt that could not be built (the reason); it fails as a connect error.
    Unbuildable(String),
}

/// The innermost service of a stack: where attempts leave the relay.
#[derive(Clone)]
pub enum Transport {
    /// The shared HTTP client.
    Http(reqwest::Client),
    /// The subscription's SMTP mailer.
    Smtp(Arc<crate::email::Mailer>),
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// reqwest refused the client settings (proxy, TLS).
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// What the receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An HTTP response.
    Http {
        /// Response status.
        status: StatusCode,
        /// `Retry-After`, when given in seconds or as a date.
        retry_after: Option<Duration>,
    },
    /// An SMTP server's final reply to the mail (or its first refusal).
    Smtp {
        /// Reply code: 2xx accepted, 4xx try again later, 5xx refused for good.
        code: u16,
        /// The server's text.
        text: String,
    },
}

/// The verdict on one attempt: its reply classified once; metrics, logs and scheduling all
/// follow from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Status matched `success_code`.
    Delivered(StatusCode),
    /// Worth retrying later.
    Retryable {
        /// Metric label: `http_error`, `smtp_error`, `timeout` or `connect_error`.
        result: &'static str,
        /// Status, when the receiver answered.
        status: Option<StatusCode>,
        /// Whether the receiver signalled overload (429, timeout).
        pressure: Pressure,
        /// The receiver's `Retry-After`.
        retry_after: Option<Duration>,
        /// Short reason, free of secrets.
        error: String,
    },
    /// Never worth retrying (`410 Gone`, an SMTP 5xx).
    Permanent {
        /// Metric label: `http_error` or `smtp_error`.
        result: &'static str,
        /// The status (the SMTP reply code for mail).
        status: StatusCode,
        /// Short reason.
        error: String,
    },
}

impl Verdict {
    /// The `result` label of `hookrelay_delivery_attempts_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            Verdict::Delivered(_) => "success",
            Verdict::Retryable { result, .. } => result,
            Verdict::Permanent { result, .. } => result,
        }
    }

    /// The status the receiver answered, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            Verdict::Delivered(s) | Verdict::Permanent { status: s, .. } => Some(s.as_u16()),
            Verdict::Retryable { status, .. } => status.map(|s| s.as_u16()),
        }
    }
}

/// Classifies an attempt's result; the one place that decides success, retry or failure.
pub fn classify(
    result: Result<Reply, BoxError>,
    success: &SuccessCodes,
    timeout: Duration,
) -> Verdict {
    match result {
        Ok(Reply::Http { status, .. }) if success.contains(status.as_u16()) => {
            Verdict::Delivered(status)
        }
        Ok(Reply::Http { status, .. }) if status == StatusCode::GONE => Verdict::Permanent {
            result: "http_error",
            status,
            error: "HTTP 410 Gone: the receiver asked to stop".to_string(),
        },
        Ok(Reply::Http {
            status,
            retry_after,
        }) => Verdict::Retryable {
            result: "http_error",
            status: Some(status),
            pressure: if status == StatusCode::TOO_MANY_REQUESTS {
                Pressure::Overloaded
            } else {
                Pressure::Normal
            },
            retry_after,
            error: format!("HTTP {status}"),
        },
        Ok(Reply::Smtp { code, text }) => {
            // SMTP codes are 2xx..5xx, inside StatusCode's 100..=999.
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            let error = clip(format!("SMTP {code}: {text}"));
            match code {
                200..=299 => Verdict::Delivered(status),
                500.. => Verdict::Permanent {
                    result: "smtp_error",
                    status,
                    error,
                },
                _ => Verdict::Retryable {
                    result: "smtp_error",
                    status: Some(status),
                    pressure: Pressure::Normal,
                    retry_after: None,
                    error,
                },
            }
        }
        Err(e) if e.is::<tower::timeout::error::Elapsed>() => Verdict::Retryable {
            result: "timeout",
            status: None,
            pressure: Pressure::Overloaded,
            retry_after: None,
            error: format!("no response within {}", crate::yaml::fmt_duration(timeout)),
        },
        Err(e) => {
            let timed_out = e
                .downcast_ref::<reqwest::Error>()
                .is_some_and(reqwest::Error::is_timeout)
                || e.downcast_ref::<lettre::transport::smtp::Error>()
                    .is_some_and(lettre::transport::smtp::Error::is_timeout);
            Verdict::Retryable {
                result: if timed_out {
                    "timeout"
                } else {
                    "connect_error"
                },
                status: None,
                pressure: if timed_out {
                    Pressure::Overloaded
                } else {
                    Pressure::Normal
                },
                retry_after: None,
                error: describe_error(e),
            }
        }
    }
}

/// An attempt that failed in the stack's outer layers, before it could be classified there.
pub fn stack_error(e: BoxError) -> Verdict {
    classify(Err(e), &SuccessCodes::default(), Duration::ZERO)
}

/// An error and its causes on one line, without URLs (which may carry tokens in queries).
fn describe_error(e: BoxError) -> String {
    let e = match e.downcast::<reqwest::Error>() {
        Ok(re) => return chain(&re.without_url()),
        Err(other) => other,
    };
    chain(e.as_ref())
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    clip(text)
}

/// `text` cut to the longest `last_error` kept.
fn clip(mut text: String) -> String {
    if text.len() > ERROR_LIMIT {
        let mut cut = ERROR_LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Builds a shared HTTP client: no redirects, no proxy unless configured; with a `guard`,
/// every resolved address is checked against it.
pub fn client(
    config: &DeliveryConfig,
    guard: Option<Arc<DestinationGuard>>,
) -> Result<reqwest::Client, DeliverError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true);
    if let Some(guard) = guard {
        builder = builder.dns_resolver(Arc::new(GuardedResolver(guard)));
    }
    builder = match &config.proxy {
        Some(url) => builder.proxy(reqwest::Proxy::all(url.as_str())?),
        None => builder.no_proxy(),
    };
    Ok(builder.build()?)
}

/// The request for attempt number `attempt` (1-based) of a delivery to `url`.
pub fn request(
    sub: &Subscription,
    url: &reqwest::Url,
    delivery: &Delivery,
    attempt: u32,
) -> reqwest::Request {
    let mut req = reqwest::Request::new(Method::POST, url.clone());
    // Body and content type follow the subscription's encoding.
    let (body, content_type) = crate::payload::encode(&sub.encoding, delivery);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Over the exact bytes sent (after encoding), at this attempt's time.
    let signature = (!sub.signing.is_empty())
        .then(|| crate::signing::signature_header(&sub.signing, &delivery.event_id, now, &body));
    *req.body_mut() = Some(reqwest::Body::from(body));
    let h = req.headers_mut();
    h.insert(CONTENT_TYPE, content_type);
    for (name, value) in &sub.headers {
        h.insert(name.clone(), value.clone());
    }
    // Ids and types are validated to header-safe characters at ingest.
    let set = |h: &mut http::HeaderMap, name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set(h, "webhook-id", &delivery.event_id);
    set(h, "webhook-timestamp", &now.to_string());
    if let Some(signature) = &signature {
        set(h, "webhook-signature", signature);
    }
    set(h, "hookrelay-event-type", &delivery.event_type);
    set(h, "hookrelay-attempt", &attempt.to_string());
    req
}

/// What attempt number `attempt` (1-based) of a delivery sends, by the subscription's channel.
pub fn outbound(sub: &Subscription, delivery: &Delivery, attempt: u32) -> Outbound {
    match (&sub.email, &sub.url) {
        (Some(email), _) => match crate::email::message(email, delivery, attempt) {
            Ok(mail) => Outbound::Mail(Box::new(mail)),
            Err(reason) => Outbound::Unbuildable(reason),
        },
        (None, Some(url)) => Outbound::Http(Box::new(request(sub, url, delivery, attempt))),
        (None, None) => Outbound::Unbuildable("a pull subscription is not pushed".into()),
    }
}

/// Builds a subscription's attempt stack. Layers listed first see the request first.
pub fn stack(
    sub: &Subscription,
    transport: Transport,
    global: Arc<Semaphore>,
    metrics: &Metrics,
) -> AttemptService {
    let name = sub.metric_label();
    let send = tower::service_fn(move |req: Outbound| {
        let transport = transport.clone();
        async move {
            match (&transport, req) {
                (Transport::Http(client), Outbound::Http(req)) => send(client, *req).await,
                (Transport::Smtp(mailer), Outbound::Mail(mail)) => mailer.send(*mail).await,
                (_, Outbound::Unbuildable(reason)) => Err(reason.into()),
                _ => Err("the attempt does not match the subscription's channel".into()),
            }
        }
    });
    let service = ServiceBuilder::new()
        // Rate limit first, so waiting for a token holds no concurrency slot.
        .option_layer(
            sub.rate_limit
                .map(|r| RateLimitLayer::new(r, metrics.rate_limited.with_label_values(&[name]))),
        )
        // Per-subscription cap: a slow receiver only ever holds its own slots.
        .concurrency_limit(sub.max_in_flight)
        // Relay-wide cap on sockets and memory across all subscriptions.
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(global))
        // Outside the timeout so timeouts are seen, classified and timed like any result.
        .layer(ClassifyLayer(Arc::new(ClassifyConfig {
            success: sub.success.clone(),
            timeout: sub.timeout,
            attempts: ATTEMPT_RESULTS.map(|r| metrics.attempts.with_label_values(&[name, r])),
            duration: metrics.attempt_duration.with_label_values(&[name]),
        })))
        // Per attempt, covering connect, send and reading the status.
        .timeout(sub.timeout)
        // Credentials last, marked sensitive so no layer can log them.
        .option_layer(sub.auth.as_ref().map(AuthLayer::new))
        .service(send);
    BoxCloneService::new(service)
}

async fn send(client: &reqwest::Client, req: reqwest::Request) -> Result<Reply, BoxError> {
    let mut response = client.execute(req).await?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    // Read a little of the body so the connection goes back to the pool; stop early on big ones.
    let mut read = 0;
    while read < DRAIN_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
    Ok(Reply::Http {
        status,
        retry_after,
    })
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Adds the subscription's `Authorization` header.
#[derive(Clone)]
pub struct AuthLayer {
    value: HeaderValue,
}

impl AuthLayer {
    fn new(auth: &Auth) -> Self {
        let text = match auth {
            Auth::Basic { username, password } => {
                let raw = format!("{username}:{}", password.expose());
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            }
            Auth::Bearer(token) => format!("Bearer {}", token.expose()),
        };
        // Validated at load; an impossible value degrades to no header rather than a panic.
        let mut value =
            HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
        value.set_sensitive(true);
        AuthLayer { value }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = SetAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetAuth {
            inner,
            value: self.value.clone(),
        }
    }
}

/// Service made by [`AuthLayer`].
#[derive(Clone)]
pub struct SetAuth<S> {
    inner: S,
    value: HeaderValue,
}

impl<S: Service<Outbound>> Service<Outbound> for SetAuth<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Outbound) -> Self::Future {
        if let Outbound::Http(req) = &mut req
            && !self.value.is_empty()
        {
            req.headers_mut().insert(AUTHORIZATION, self.value.clone());
        }
        self.inner.call(req)
    }
}

/// Classifies each attempt once and records its result and duration.
#[derive(Clone)]
struct ClassifyLayer(Arc<ClassifyConfig>);

/// What [`ClassifyLayer`] needs, shared by every attempt.
struct ClassifyConfig {
    success: SuccessCodes,
    timeout: Duration,
    attempts: [IntCounter; ATTEMPT_RESULTS.len()],
    duration: Histogram,
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

impl<S> Service<Outbound> for Classify<S>
where
    S: Service<Outbound, Response = Reply>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Verdict;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Verdict, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Outbound) -> Self::Future {
        let started = Instant::now();
        let future = self.inner.call(req);
        let config = self.config.clone();
        Box::pin(async move {
            let result = future.await.map_err(Into::into);
            let attempt = classify(result, &config.success, config.timeout);
            config.duration.observe(started.elapsed().as_secs_f64());
            let i = ATTEMPT_RESULTS
                .iter()
                .position(|l| *l == attempt.result_label())
                .unwrap_or(ATTEMPT_RESULTS.len() - 1);
            config.attempts[i].inc();
            Ok(attempt)
        })
    }
}

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
    use tower::ServiceExt;

    fn reply(code: u16) -> Result<Reply, BoxError> {
        Ok(Reply::Http {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after: None,
        })
    }

    fn smtp(code: u16) -> Result<Reply, BoxError> {
        Ok(Reply::Smtp {
            code,
            text: "text".into(),
        })
    }

    #[test]
    fn smtp_classification() {
        let ok = SuccessCodes::default_2xx();
        let t = Duration::from_secs(1);
        assert_eq!(
            classify(smtp(250), &ok, t),
            Verdict::Delivered(StatusCode::from_u16(250).unwrap())
        );
        let retry = classify(smtp(451), &ok, t);
        assert!(
            matches!(&retry, Verdict::Retryable { status: Some(s), error, .. }
                if s.as_u16() == 451 && error == "SMTP 451: text"),
            "{retry:?}"
        );
        assert_eq!(retry.result_label(), "smtp_error");
        let refused = classify(smtp(550), &ok, t);
        assert!(matches!(refused, Verdict::Permanent { .. }), "{refused:?}");
        assert_eq!(refused.result_label(), "smtp_error");
        assert_eq!(refused.status(), Some(550));
    }

    #[test]
    fn classification() {
        let ok = SuccessCodes::default_2xx();
        let t = Duration::from_secs(1);
        assert_eq!(
            classify(reply(204), &ok, t),
            Verdict::Delivered(StatusCode::NO_CONTENT)
        );
        assert_eq!(classify(reply(302), &ok, t).result_label(), "http_error");
        assert!(matches!(
            classify(reply(410), &ok, t),
            Verdict::Permanent { .. }
        ));
        assert!(matches!(
            classify(reply(429), &ok, t),
            Verdict::Retryable {
                pressure: Pressure::Overloaded,
                ..
            }
        ));
        assert!(matches!(
            classify(reply(500), &ok, t),
            Verdict::Retryable {
                pressure: Pressure::Normal,
                status: Some(_),
                ..
            }
        ));
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        let a = classify(Err(elapsed), &ok, t);
        assert_eq!(a.result_label(), "timeout");
        let other: BoxError = "connection refused".into();
        assert_eq!(classify(Err(other), &ok, t).result_label(), "connect_error");
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

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
