//! The HTTP transport: the delivery clients (no redirects, no proxy unless configured, and a
//! resolver that checks every address a name resolves to: own listeners for every
//! subscription, the whole destination guard for API ones), the POST of an attempt with its
//! Standard Webhooks and `hookrelay-via` headers, and sending it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Method};
use reqwest::Url;
use tower::BoxError;

use super::destination::{
    DeliveryResolver, Lookup, OWN_LISTENER, Policy, literal_targets_listener,
};
use super::payload::encode;
use super::settings::DeliverySettings;
use super::verdict::{Reply, parse_retry_after};
use super::via;
use crate::signing::signature_header;
use crate::store::Delivery;
use crate::subscription::{HttpSettings, TlsSettings};

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
    /// The subscription's TLS material does not make a client configuration.
    #[error("{0}")]
    Tls(String),
}

/// The delivery clients, one per policy and destination port: reqwest's resolver is given a
/// name only, and whether an address is one of the relay's listeners depends on the port.
/// Subscriptions to the same port share a client and its connection pool; those with `tls`
/// settings share one per TLS identity too, kept only while a lane uses it.
pub struct Clients {
    settings: DeliverySettings,
    lookup: Lookup,
    built: Mutex<SharedClients>,
    with_tls: Mutex<HashMap<TlsKey, Weak<reqwest::Client>>>,
}

/// The clients without TLS settings, by policy and port.
type SharedClients = HashMap<(Policy, Option<u16>), Arc<reqwest::Client>>;

/// A TLS client's key: policy, port and the digest of the TLS material.
type TlsKey = (Policy, Option<u16>, [u8; 32]);

impl Clients {
    /// The clients for `settings`, resolving through `lookup`. One client is built now, so
    /// settings it refuses (proxy, TLS) fail the start.
    pub fn new(settings: &DeliverySettings, lookup: Lookup) -> Result<Clients, DeliverError> {
        let clients = Clients {
            settings: settings.clone(),
            lookup,
            built: Mutex::default(),
            with_tls: Mutex::default(),
        };
        let first = clients.build(Policy::OwnListeners, None, None)?;
        clients
            .cache()
            .insert((Policy::OwnListeners, None), Arc::new(first));
        Ok(clients)
    }

    /// What sends the attempts of a subscription to `url` under `policy`, with its `tls`
    /// settings if it has any.
    pub fn sender(&self, policy: Policy, url: &Url, tls: Option<&Arc<TlsSettings>>) -> Sender {
        // Behind a proxy the destination is resolved there; `hookrelay-via` still holds.
        let port = match self.settings.proxy {
            Some(_) => None,
            None => url.port_or_known_default(),
        };
        if url.scheme() == "https" && tls.is_none_or(|t| t.roots.is_empty()) {
            super::tls::load_system_roots_soon();
        }
        // Literal addresses are not resolved, so the resolver never sees them.
        let wide = policy == Policy::Guarded;
        let own = port.is_some() && literal_targets_listener(url, self.lookup.guard(), wide);
        let client = match tls {
            Some(tls) => match self.tls_client(policy, port, tls) {
                Ok(client) => client,
                // Never the shared client: it would send without the client certificate or
                // trust the public roots despite `ca`. Every attempt fails visibly instead.
                Err(e) => {
                    tracing::error!(error = %e, "cannot build a TLS delivery client");
                    return Sender {
                        client: self.cache()[&(Policy::OwnListeners, None)].clone(),
                        own,
                        refused: Some(Arc::from(format!("tls: cannot build the client: {e}"))),
                    };
                }
            },
            None => self.shared_client(policy, port),
        };
        Sender {
            client,
            own,
            refused: None,
        }
    }

    /// The client without TLS settings for `policy` and `port`.
    fn shared_client(&self, policy: Policy, port: Option<u16>) -> Arc<reqwest::Client> {
        let key = (policy, port);
        let cached = self.cache().get(&key).cloned();
        cached.unwrap_or_else(|| {
            let client = match self.build(policy, port, None) {
                Ok(client) => Arc::new(client),
                Err(e) => {
                    // The same settings built a client at start; should this one fail
                    // anyway, the shared one still refuses own listeners by address, less
                    // exactly.
                    tracing::error!(error = %e, "cannot build a delivery client; using the shared one");
                    self.cache()[&(Policy::OwnListeners, None)].clone()
                }
            };
            self.cache().entry(key).or_insert(client).clone()
        })
    }

    /// The client for `tls`'s identity, shared by lanes with the same material and port.
    fn tls_client(
        &self,
        policy: Policy,
        port: Option<u16>,
        tls: &TlsSettings,
    ) -> Result<Arc<reqwest::Client>, DeliverError> {
        let key = (policy, port, tls.digest);
        let mut map = self.with_tls.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, client| client.strong_count() > 0);
        if let Some(client) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(client);
        }
        let config = super::tls::client_config(tls).map_err(DeliverError::Tls)?;
        let client = Arc::new(self.build(policy, port, Some(config))?);
        map.insert(key, Arc::downgrade(&client));
        Ok(client)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, SharedClients> {
        self.built.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client: no redirects, no proxy unless configured, every resolved address checked;
    /// with `tls`, that rustls configuration instead of reqwest's own.
    fn build(
        &self,
        policy: Policy,
        port: Option<u16>,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<reqwest::Client, DeliverError> {
        let resolver = DeliveryResolver {
            lookup: self.lookup.clone(),
            policy,
            port,
        };
        let builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .dns_resolver(Arc::new(resolver));
        let builder = match &self.settings.proxy {
            Some(url) => builder.proxy(reqwest::Proxy::all(url.as_str())?),
            None => builder.no_proxy(),
        };
        let config = match tls {
            Some(config) => config,
            None => super::tls::default_config().map_err(DeliverError::Tls)?,
        };
        let builder = builder.tls_backend_preconfigured(config);
        Ok(builder.build()?)
    }
}

/// Sends a subscription's attempts.
#[derive(Clone)]
pub struct Sender {
    client: Arc<reqwest::Client>,
    /// The URL names one of the relay's listeners by address: every attempt fails.
    own: bool,
    /// Why no client could be built for this subscription: every attempt fails with it.
    refused: Option<Arc<str>>,
}

impl Sender {
    /// Sends one POST; the status and `Retry-After` are the reply, anything else an error.
    pub async fn send(self, req: reqwest::Request) -> Result<Reply, BoxError> {
        if self.own {
            return Err(OWN_LISTENER.into());
        }
        if let Some(why) = self.refused {
            return Err(why.to_string().into());
        }
        send(&self.client, req).await
    }

    /// Sends `req` and reads the answer's body, up to `limit` bytes: for requests whose
    /// answer matters, such as an OAuth2 token request.
    pub async fn exchange(&self, req: reqwest::Request, limit: usize) -> Result<Answer, BoxError> {
        if self.own {
            return Err(OWN_LISTENER.into());
        }
        let mut response = self.client.execute(req).await?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > limit {
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            retry_after,
            body,
            truncated,
        })
    }
}

/// A response read whole by [`Sender::exchange`].
pub struct Answer {
    /// Its status.
    pub status: http::StatusCode,
    /// Its `Retry-After`, when given in seconds or as a date.
    pub retry_after: Option<Duration>,
    /// Its body, up to the limit.
    pub body: Vec<u8>,
    /// Whether the body was longer than the limit (and so cut).
    pub truncated: bool,
}

/// The POST of attempt number `attempt` (1-based) of a delivery.
/// `relay` is this relay's id, last in the `hookrelay-via` header.
pub fn request(
    http: &HttpSettings,
    delivery: &Delivery,
    attempt: u32,
    relay: &str,
) -> reqwest::Request {
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
    // The relays' own ingest refuses what went round a loop (custom headers cannot set it).
    if let Some(path) = via::outgoing(delivery.raw.as_deref(), relay) {
        h.insert(HeaderName::from_static(via::HEADER), path);
    }
    req
}

/// A response's `Retry-After`, in seconds or as a date.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// Sends one POST on `client`.
async fn send(client: &reqwest::Client, req: reqwest::Request) -> Result<Reply, BoxError> {
    let mut response = client.execute(req).await?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
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
