//! The HTTP transport: the shared clients (no redirects, no proxy unless configured, and for
//! API subscriptions a resolver that is the destination guard), the POST of an attempt with
//! its Standard Webhooks headers, and sending it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Method};
use tower::BoxError;

use super::destination::{DestinationGuard, GuardedResolver};
use super::payload::encode;
use super::settings::DeliverySettings;
use super::verdict::{Reply, parse_retry_after};
use crate::signing::signature_header;
use crate::store::Delivery;
use crate::subscription::HttpSettings;

/// `user-agent` of every attempt.
pub const USER_AGENT: &str = concat!("hookrelay/", env!("CARGO_PKG_VERSION"));
/// Response bytes read (and dropped) so the connection can be reused.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// reqwest refused the client settings (proxy, TLS).
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Builds a shared HTTP client: no redirects, no proxy unless configured; with a `guard`,
/// every resolved address is checked against it.
pub fn client(
    settings: &DeliverySettings,
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
    builder = match &settings.proxy {
        Some(url) => builder.proxy(reqwest::Proxy::all(url.as_str())?),
        None => builder.no_proxy(),
    };
    Ok(builder.build()?)
}

/// The POST of attempt number `attempt` (1-based) of a delivery.
pub fn request(http: &HttpSettings, delivery: &Delivery, attempt: u32) -> reqwest::Request {
    let mut req = reqwest::Request::new(Method::POST, http.url.clone());
    // Body and content type follow the subscription's encoding.
    let (body, content_type) = encode(&http.encoding, delivery);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Over the exact bytes sent (after encoding), at this attempt's time.
    let signature = (!http.signing.is_empty())
        .then(|| signature_header(&http.signing, &delivery.event_id, now, &body));
    *req.body_mut() = Some(reqwest::Body::from(body));
    let h = req.headers_mut();
    h.insert(CONTENT_TYPE, content_type);
    for (name, value) in &http.headers {
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

/// Sends one POST; the status and `Retry-After` are the reply, anything else an error.
pub async fn send(client: reqwest::Client, req: reqwest::Request) -> Result<Reply, BoxError> {
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
