//! OAuth2 client credentials (RFC 6749 §4.4) for HTTP push: a [`TokenSource`] per lane that
//! fetches, caches and refreshes the bearer token (one fetch in flight), and the layer that
//! sends it, refreshing once within the attempt when the receiver answers `401`.
//!
//! Written by hand, not with the `oauth2` crate: oauth2 5.0's HTTP client is reqwest 0.12
//! (a second reqwest; the 0.13 adapter is an alpha), it brings its own rand 0.8 and sha2
//! 0.10 into a static image with little room left, and its error keeps the answer's body but
//! not the status that `last_error` reports. The grant is one form POST and two JSON shapes;
//! the traps the crate would cover are tested below.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::Engine;
use futures_util::future::BoxFuture;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, StatusCode};
use prometheus::IntCounter;
use serde_json::Value as Json;
use tower::{BoxError, Layer, Service, ServiceExt};

use super::http_post::Sender;
pub use super::token_error::TokenError;
use super::verdict::{Reply, clip, describe_cause};
use crate::secret::is_token;
use crate::subscription::{ClientAuthStyle, OAuth2Settings};

/// Largest token endpoint answer read.
const BODY_LIMIT: usize = 64 * 1024;
/// Longest refresh margin before a token's expiry.
const MAX_MARGIN: Duration = Duration::from_secs(30);
/// Shortest time a fetched token is used before another fetch.
const MIN_FRESH: Duration = Duration::from_secs(1);
/// Longest lifetime believed (`expires_in` beyond it is cut to it).
const MAX_LIFETIME_SECS: u64 = 365 * 86_400;
/// Longest `error` and `error_description` kept from a refusal.
const ERROR_CODE_LIMIT: usize = 64;
const DESCRIPTION_LIMIT: usize = 120;

/// A bearer token as sent: the header value, marked sensitive.
pub struct Token {
    header: HeaderValue,
    /// Until when it is used without a fetch; `None`: until a receiver refuses it.
    fresh_until: Option<Instant>,
}

impl Token {
    fn fresh(&self, now: Instant) -> bool {
        self.fresh_until.is_none_or(|t| now < t)
    }
}

/// A lane's tokens: fetched on demand, cached until shortly before they expire, one fetch in
/// flight at a time, whose result (token or error) every waiter takes.
pub struct TokenSource {
    settings: Arc<OAuth2Settings>,
    /// The token endpoint's client (the policy's shared one: system roots, no certificate).
    sender: Sender,
    /// A fetch's share of the attempt timeout, so a slow endpoint is named as such.
    fetch_timeout: Duration,
    /// The subscription, for logs.
    label: String,
    current: ArcSwapOption<Token>,
    /// Held across a fetch; keeps the last fetch's error with the fetch count it ended.
    gate: tokio::sync::Mutex<Option<(u64, TokenError)>>,
    fetches: AtomicU64,
    ok: IntCounter,
    failed: IntCounter,
}

/// The counters of a source's token requests: answered with a token, and not.
pub struct TokenCounters {
    /// Requests that gave a token.
    pub ok: IntCounter,
    /// Requests that did not.
    pub failed: IntCounter,
}

impl TokenSource {
    /// The tokens of subscription `label`, fetched through `sender` within `fetch_timeout`.
    pub fn new(
        settings: Arc<OAuth2Settings>,
        sender: Sender,
        fetch_timeout: Duration,
        label: &str,
        counters: TokenCounters,
    ) -> TokenSource {
        TokenSource {
            settings,
            sender,
            fetch_timeout,
            label: label.to_string(),
            current: ArcSwapOption::empty(),
            gate: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
            ok: counters.ok,
            failed: counters.failed,
        }
    }

    /// A fresh token and whether it is new (fetched since this call began, by it or by the
    /// fetch it waited for).
    pub async fn token(&self) -> Result<(Arc<Token>, bool), TokenError> {
        // Read before the cache: a fetch that ends in between is then seen as new.
        let seen = self.fetches.load(Ordering::Acquire);
        if let Some(t) = self.current.load_full()
            && t.fresh(Instant::now())
        {
            return Ok((t, false));
        }
        self.fetch_once(seen).await
    }

    /// A token to replace `used`, which a receiver refused: `used` is dropped unless another
    /// attempt already replaced it, so refusals at once share one fetch.
    pub async fn after_401(&self, used: &Arc<Token>) -> Result<Arc<Token>, TokenError> {
        let seen = self.fetches.load(Ordering::Acquire);
        let current = self.current.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, used)) {
            self.current.compare_and_swap(&*current, None);
        }
        drop(current);
        if let Some(t) = self.current.load_full()
            && t.fresh(Instant::now())
        {
            return Ok(t);
        }
        self.fetch_once(seen).await.map(|(t, _)| t)
    }

    /// Fetches a token unless a fetch ended since `seen`, whose result is taken instead.
    async fn fetch_once(&self, seen: u64) -> Result<(Arc<Token>, bool), TokenError> {
        let mut last = self.gate.lock().await;
        let count = self.fetches.load(Ordering::Acquire);
        if count != seen {
            match &*last {
                Some((at, error)) if *at == count => return Err(error.clone()),
                // The fetch that ended meanwhile succeeded: its token, however short its
                // life, so waiters never fetch one after another.
                None => {
                    if let Some(t) = self.current.load_full() {
                        return Ok((t, true));
                    }
                }
                Some(_) => {}
            }
        }
        let fetched = match tokio::time::timeout(self.fetch_timeout, self.fetch()).await {
            Ok(result) => result,
            Err(_) => Err(TokenError::TimedOut(self.fetch_timeout)),
        };
        let result = match fetched {
            Ok((token, expires_in)) => {
                self.ok.inc();
                tracing::debug!(subscription = %self.label, expires_in, "oauth2 token fetched");
                let token = Arc::new(token);
                self.current.store(Some(token.clone()));
                *last = None;
                Ok((token, true))
            }
            Err(error) => {
                self.failed.inc();
                *last = Some((count + 1, error.clone()));
                Err(error)
            }
        };
        // Counted after the cache is set, so a waiter that sees the count sees the token.
        self.fetches.store(count + 1, Ordering::Release);
        result
    }

    /// One token request.
    async fn fetch(&self) -> Result<(Token, Option<u64>), TokenError> {
        let answer = self
            .sender
            .exchange(request(&self.settings), BODY_LIMIT)
            .await
            .map_err(|e| TokenError::Unreachable(describe_cause(e)))?;
        if !answer.status.is_success() {
            return Err(refusal(answer.status, answer.retry_after, &answer.body));
        }
        if answer.truncated {
            return Err(TokenError::Malformed(format!(
                "longer than {} KiB",
                BODY_LIMIT / 1024
            )));
        }
        parse_token(&answer.body, Instant::now())
    }
}

/// The token request (RFC 6749 §4.4.2), with the client's credentials in `style`.
fn request(o: &OAuth2Settings) -> reqwest::Request {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if !o.scopes.is_empty() {
        form.append_pair("scope", &o.scopes.join(" "));
    }
    if let Some(audience) = &o.audience {
        form.append_pair("audience", audience);
    }
    let mut req = reqwest::Request::new(Method::POST, o.token_url.clone());
    match o.style {
        ClientAuthStyle::Basic => {
            let mut value = basic_credentials(&o.client_id, o.client_secret.expose());
            value.set_sensitive(true);
            req.headers_mut().insert(AUTHORIZATION, value);
        }
        ClientAuthStyle::Body => {
            form.append_pair("client_id", &o.client_id);
            form.append_pair("client_secret", o.client_secret.expose());
        }
    }
    let h = req.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    h.insert(ACCEPT, HeaderValue::from_static("application/json"));
    *req.body_mut() = Some(form.finish().into());
    req
}

/// `Basic` credentials as RFC 6749 §2.3.1 has them: id and secret form-urlencoded before
/// they are joined and base64-encoded (unlike plain HTTP basic auth).
fn basic_credentials(id: &str, secret: &str) -> HeaderValue {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let joined = format!("{}:{}", encode(id), encode(secret));
    let text = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(joined)
    );
    // Base64 and the scheme are header-safe.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A success answer (RFC 6749 §5.1) as a token and its `expires_in`.
fn parse_token(body: &[u8], now: Instant) -> Result<(Token, Option<u64>), TokenError> {
    let malformed = |why: &str| TokenError::Malformed(why.to_string());
    let doc: Json = serde_json::from_slice(body).map_err(|_| malformed("not JSON"))?;
    let token = doc
        .get("access_token")
        .and_then(Json::as_str)
        .ok_or_else(|| malformed("no access_token"))?;
    if !is_token(token) {
        return Err(malformed("access_token is not a token"));
    }
    // Required by §5.1, yet some providers leave it out; any other type cannot be sent.
    if let Some(kind) = doc.get("token_type")
        && !kind
            .as_str()
            .is_some_and(|k| k.eq_ignore_ascii_case("bearer"))
    {
        let shown: String = kind.to_string().chars().take(24).collect();
        return Err(TokenError::Malformed(format!(
            "token_type {shown} is not bearer"
        )));
    }
    // A number, or (some providers) a numeric string.
    let expires_in = match doc.get("expires_in") {
        None | Some(Json::Null) => None,
        Some(Json::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Some(Json::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    if doc.get("expires_in").is_some_and(|v| !v.is_null()) && expires_in.is_none() {
        return Err(malformed("expires_in is not a number of seconds"));
    }
    let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| malformed("access_token is not a token"))?;
    header.set_sensitive(true);
    // Clamped: an absurd lifetime must not overflow the clock (a year is plenty).
    let fresh_until = expires_in.and_then(|secs| {
        now.checked_add(fresh_for(Duration::from_secs(secs.min(MAX_LIFETIME_SECS))))
    });
    Ok((
        Token {
            header,
            fresh_until,
        },
        expires_in,
    ))
}

/// How long a token of `lifetime` is used: up to 30 s (a tenth of short ones) less, so it
/// is replaced before a receiver sees it expire; at least a second, so an endpoint that
/// hands out expired tokens is asked at most once a second (a `401` still refreshes).
fn fresh_for(lifetime: Duration) -> Duration {
    (lifetime - MAX_MARGIN.min(lifetime / 10)).max(MIN_FRESH)
}

/// A failing answer: its RFC 6749 §5.2 error when it has one, else only its status.
fn refusal(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> TokenError {
    let doc: Option<Json> = serde_json::from_slice(body).ok();
    let field = |key: &str, limit: usize| -> Option<String> {
        let text = doc.as_ref()?.get(key)?.as_str()?;
        // §5.2 limits both to printable ASCII; anything else is not shown.
        let shown: String = text
            .chars()
            .filter(|c| (' '..='~').contains(c))
            .take(limit)
            .collect();
        (!shown.trim().is_empty()).then_some(shown)
    };
    match field("error", ERROR_CODE_LIMIT) {
        Some(error) => TokenError::Refused {
            status: status.as_u16(),
            error,
            description: field("error_description", DESCRIPTION_LIMIT).map(clip),
            retry_after,
        },
        None => TokenError::Status {
            status: status.as_u16(),
            retry_after,
        },
    }
}

/// Sends each HTTP attempt with the lane's OAuth2 token.
#[derive(Clone)]
pub struct OAuth2Layer(pub Arc<TokenSource>);

impl<S> Layer<S> for OAuth2Layer {
    type Service = SetToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetToken {
            inner,
            source: self.0.clone(),
        }
    }
}

/// Service made by [`OAuth2Layer`].
#[derive(Clone)]
pub struct SetToken<S> {
    inner: S,
    source: Arc<TokenSource>,
}

impl<S> Service<reqwest::Request> for SetToken<S>
where
    S: Service<reqwest::Request, Response = Reply, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Reply, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: reqwest::Request) -> Self::Future {
        // The service made ready takes this request; a clone of it, any second send.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let source = self.source.clone();
        Box::pin(async move {
            let (token, new) = source.token().await?;
            // Bodies are bytes, so the request can be sent again.
            let again = req.try_clone();
            req.headers_mut()
                .insert(AUTHORIZATION, token.header.clone());
            let reply = inner.call(req).await?;
            let refused =
                matches!(reply, Reply::Http { status, .. } if status == StatusCode::UNAUTHORIZED);
            match again {
                // A token just fetched and refused is not stale: the 401 is the answer.
                Some(mut again) if refused && !new => {
                    let token = source.after_401(&token).await?;
                    again
                        .headers_mut()
                        .insert(AUTHORIZATION, token.header.clone());
                    inner.ready().await?.call(again).await
                }
                _ => Ok(reply),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn settings(style: ClientAuthStyle) -> OAuth2Settings {
        OAuth2Settings {
            token_url: "https://idp.example/token".parse().unwrap(),
            client_id: "relay:1".into(),
            client_secret: Secret::new("s3cr t/+%".into()),
            scopes: vec!["a.write".into(), "b".into()],
            audience: Some("https://aud.example".into()),
            style,
        }
    }

    fn body(req: &reqwest::Request) -> String {
        let bytes = req.body().and_then(reqwest::Body::as_bytes).unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn basic_style_form_encodes_id_and_secret_before_base64() {
        let req = request(&settings(ClientAuthStyle::Basic));
        let auth = req.headers()[AUTHORIZATION].clone();
        assert!(auth.is_sensitive());
        let encoded = auth.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "relay%3A1:s3cr+t%2F%2B%25"
        );
        assert_eq!(
            body(&req),
            "grant_type=client_credentials&scope=a.write+b&audience=https%3A%2F%2Faud.example"
        );
        assert_eq!(req.headers()[ACCEPT], "application/json");
        assert_eq!(
            req.headers()[CONTENT_TYPE],
            "application/x-www-form-urlencoded"
        );
    }

    #[test]
    fn body_style_sends_the_credentials_as_form_fields() {
        let req = request(&settings(ClientAuthStyle::Body));
        assert!(req.headers().get(AUTHORIZATION).is_none());
        assert!(body(&req).ends_with("&client_id=relay%3A1&client_secret=s3cr+t%2F%2B%25"));
    }

    #[test]
    fn tokens_parse_with_expires_in_as_number_or_string() {
        let now = Instant::now();
        let (t, e) = parse_token(
            br#"{"access_token":"tok-1","token_type":"Bearer","expires_in":3600}"#,
            now,
        )
        .unwrap();
        assert_eq!(e, Some(3600));
        assert_eq!(t.header, "Bearer tok-1");
        assert!(t.header.is_sensitive());
        assert_eq!(t.fresh_until, Some(now + Duration::from_secs(3570)));
        let (_, e) = parse_token(
            br#"{"access_token":"t","token_type":"bearer","expires_in":"60"}"#,
            now,
        )
        .unwrap();
        assert_eq!(e, Some(60));
        let (t, e) = parse_token(br#"{"access_token":"t"}"#, now).unwrap();
        assert_eq!((t.fresh_until, e), (None, None));
        assert!(t.fresh(now + Duration::from_secs(86_400)));
    }

    #[test]
    fn unusable_tokens_are_malformed() {
        let now = Instant::now();
        for (body, why) in [
            (&b"<html>"[..], "not JSON"),
            (br#"{"token_type":"bearer"}"#, "no access_token"),
            (br#"{"access_token":"a b"}"#, "access_token is not a token"),
            (
                br#"{"access_token":"t","token_type":"mac"}"#,
                "token_type \"mac\" is not bearer",
            ),
            (
                br#"{"access_token":"t","expires_in":"soon"}"#,
                "expires_in is not a number of seconds",
            ),
        ] {
            let e = parse_token(body, now).err().unwrap();
            assert_eq!(e, TokenError::Malformed(why.into()));
        }
    }

    #[test]
    fn a_token_is_replaced_before_it_expires() {
        assert_eq!(
            fresh_for(Duration::from_secs(3600)),
            Duration::from_secs(3570)
        );
        assert_eq!(fresh_for(Duration::from_secs(10)), Duration::from_secs(9));
        // An endpoint handing out expired tokens is asked at most once a second.
        assert_eq!(fresh_for(Duration::ZERO), Duration::from_secs(1));
    }

    #[test]
    fn an_absurd_lifetime_does_not_overflow_the_clock() {
        let now = Instant::now();
        for body in [
            &br#"{"access_token":"t","expires_in":18446744073709551615}"#[..],
            br#"{"access_token":"t","expires_in":1e300}"#,
        ] {
            let (t, _) = parse_token(body, now).unwrap();
            let until = t.fresh_until.expect("a lifetime");
            assert!(
                until <= now + Duration::from_secs(MAX_LIFETIME_SECS),
                "{until:?}"
            );
        }
    }

    #[test]
    fn refusals_show_the_status_and_error_but_never_a_body() {
        let e = refusal(
            StatusCode::BAD_REQUEST,
            None,
            br#"{"error":"invalid_client","error_description":"Unknown client\u0007"}"#,
        );
        assert_eq!(
            e.to_string(),
            "oauth2: token endpoint answered 400 invalid_client: Unknown client"
        );
        let e = refusal(
            StatusCode::BAD_REQUEST,
            None,
            br#"{"error":"invalid_scope"}"#,
        );
        assert_eq!(
            e.to_string(),
            "oauth2: token endpoint answered 400 invalid_scope"
        );
        let e = refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(5)),
            b"<html>secret internals</html>",
        );
        assert_eq!(e.to_string(), "oauth2: token endpoint answered 503");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
        assert_eq!(e.status(), Some(503));
        assert_eq!(
            TokenError::TimedOut(Duration::from_millis(7500)).to_string(),
            "oauth2: no answer from the token endpoint within 7s500ms"
        );
    }
}
