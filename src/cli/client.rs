//! The HTTP side of the operator CLI: where the relay is (`--api`, `--app` and their
//! environment variables), its bearer token (from the environment only, never a flag: a
//! flag ends up in shell history and process lists), requests, and the API's answers turned
//! into values or a [`CliError`].

use std::time::Duration;

use clap::Args;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, LINK};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use url::Url;

/// How long one request may take; a listing makes one per page.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take before the relay counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The api listener, for every command but `events`.
#[derive(Args, Debug, Clone)]
pub struct ApiTarget {
    /// URL of the relay's api listener (`listen.api`). The token is read from
    /// HOOKRELAY_API_TOKEN.
    #[arg(
        long = "api",
        value_name = "URL",
        env = "HOOKRELAY_API_URL",
        default_value = "http://127.0.0.1:8788",
        value_parser = parse_base,
        global = true
    )]
    pub url: Url,
    /// Print the API's JSON (lists: one array of every page) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The app listener, which serves an event's status.
#[derive(Args, Debug, Clone)]
pub struct AppTarget {
    /// URL of the relay's app listener (`listen.app`), which serves event status. The token
    /// is read from HOOKRELAY_INGEST_TOKEN.
    #[arg(
        long = "app",
        value_name = "URL",
        env = "HOOKRELAY_APP_URL",
        default_value = "http://127.0.0.1:8787",
        value_parser = parse_base,
        global = true
    )]
    pub url: Url,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Which listener a client talks to: names for the messages that tell how to change it.
#[derive(Debug, Clone, Copy)]
pub struct Listener {
    /// The flag that sets its URL.
    pub flag: &'static str,
    /// The environment variable that sets its URL.
    pub url_var: &'static str,
    /// The environment variable holding its token.
    pub token_var: &'static str,
}

/// The api listener's names.
pub const API: Listener = Listener {
    flag: "--api",
    url_var: "HOOKRELAY_API_URL",
    token_var: "HOOKRELAY_API_TOKEN",
};

/// The app listener's names.
pub const APP: Listener = Listener {
    flag: "--app",
    url_var: "HOOKRELAY_APP_URL",
    token_var: "HOOKRELAY_INGEST_TOKEN",
};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API answered with its JSON error.
    #[error("{code}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error's stable code.
        code: String,
        /// The error's message for people.
        message: String,
        /// `(field, reason)` for each field at fault.
        fields: Vec<(String, String)>,
        /// A hint of ours for this status, if any.
        hint: Option<String>,
    },
    /// An error status without the API's JSON error: probably not a hookrelay listener.
    #[error(
        "{url} answered HTTP {status} without hookrelay's JSON error; is it the right listener?"
    )]
    Status {
        /// The request's URL.
        url: String,
        /// The HTTP status.
        status: StatusCode,
    },
    /// A success whose body is not the JSON expected.
    #[error("unexpected answer from {url}: {reason}")]
    Response {
        /// The request's URL.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The relay could not be reached.
    #[error(
        "cannot connect to {url}: {reason}; is the relay running there? Pass {flag} URL or set {var}"
    )]
    Connect {
        /// The request's URL.
        url: String,
        /// The cause, such as `Connection refused (os error 111)`.
        reason: String,
        /// The flag that sets the URL.
        flag: &'static str,
        /// The environment variable that sets the URL.
        var: &'static str,
    },
    /// The request failed after connecting (a timeout, a broken connection).
    #[error("request to {url} failed: {reason}")]
    Request {
        /// The request's URL.
        url: String,
        /// The cause.
        reason: String,
    },
    /// Bad local input: a token that cannot be a header, an unusable URL.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The process's exit code: 1 when the API refused, 2 for usage and connection errors.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Api { .. } | CliError::Status { .. } | CliError::Response { .. } => 1,
            CliError::Connect { .. } | CliError::Request { .. } | CliError::Usage(_) => 2,
        }
    }
}

/// `http://host:port` (a scheme may be left out) with a path ending in `/`, so that relative
/// paths join below any prefix a proxy adds.
fn parse_base(text: &str) -> Result<Url, String> {
    let full = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let mut url = Url::parse(&full).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    // Errors print the URL; the token comes from the environment anyway.
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password".into());
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// An answer's JSON and the address of its next page (`Link: <...>; rel="next"`).
#[derive(Debug)]
pub struct Answer {
    /// The body.
    pub body: Value,
    /// The next page, when the answer says one follows.
    pub next: Option<Url>,
}

/// A client of one listener.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<HeaderValue>,
    listener: Listener,
}

impl Client {
    /// A client of the listener at `base`, with the token from `listener.token_var`.
    pub fn new(base: Url, listener: Listener) -> Result<Client, CliError> {
        let token = match std::env::var(listener.token_var) {
            Ok(t) if !t.is_empty() => {
                let mut value = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    CliError::Usage(format!(
                        "{} holds characters a token cannot have",
                        listener.token_var
                    ))
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            _ => None,
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("hookrelay-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| CliError::Usage(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            token,
            listener,
        })
    }

    /// The URL of `segments` (each percent-encoded) below the base, with `query`.
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// The next page's URL: the relay's link is a path from its root, which is taken below
    /// the base (a proxy's path prefix kept); one elsewhere never gets the token.
    fn next_page(&self, link: &str) -> Option<Url> {
        let url = self.base.join(link.trim_start_matches('/')).ok()?;
        (url.origin() == self.base.origin()).then_some(url)
    }

    /// GETs `url`.
    pub async fn get(&self, url: Url) -> Result<Answer, CliError> {
        self.send(Method::GET, url, None).await
    }

    /// POSTs `body` (none: an empty body) to `url`.
    pub async fn post(&self, url: Url, body: Option<Value>) -> Result<Value, CliError> {
        Ok(self.send(Method::POST, url, body).await?.body)
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Value>,
    ) -> Result<Answer, CliError> {
        let mut req = self.http.request(method, url.clone());
        if let Some(token) = &self.token {
            req = req.header(AUTHORIZATION, token.clone());
        }
        if let Some(body) = body {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = req.send().await.map_err(|e| self.failed(&url, e))?;
        let status = response.status();
        let next = next_link(response.headers()).and_then(|link| self.next_page(&link));
        let text = response.text().await.map_err(|e| self.failed(&url, e))?;
        let parsed = serde_json::from_str::<Value>(&text);
        if !status.is_success() {
            let error = parsed.ok().and_then(|v| self.api_error(status, &v));
            return Err(error.unwrap_or_else(|| CliError::Status {
                url: url.to_string(),
                status,
            }));
        }
        match parsed {
            Ok(body) => Ok(Answer { body, next }),
            Err(e) => Err(CliError::Response {
                url: url.to_string(),
                reason: format!("HTTP {status} with a body that is not JSON ({e})"),
            }),
        }
    }

    /// The API's `{"error": {"code", "message", "fields"}}`, if `v` is one.
    fn api_error(&self, status: StatusCode, v: &Value) -> Option<CliError> {
        let e = v.get("error")?;
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(String::from);
        let fields = e
            .get("fields")
            .and_then(Value::as_array)
            .map(|all| {
                all.iter()
                    .map(|f| {
                        let field = text(f, "field").unwrap_or_default();
                        (field, text(f, "reason").unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let hint = (status == StatusCode::UNAUTHORIZED).then(|| {
            let var = self.listener.token_var;
            match self.token {
                Some(_) => format!("the token in {var} is not the one the relay expects"),
                None => format!("set {var} to the relay's token"),
            }
        });
        Some(CliError::Api {
            status: status.as_u16(),
            code: text(e, "code")?,
            message: text(e, "message").unwrap_or_default(),
            fields,
            hint,
        })
    }

    fn failed(&self, url: &Url, e: reqwest::Error) -> CliError {
        // The innermost cause says what happened ("Connection refused (os error 111)").
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            reason = cause.to_string();
            source = cause.source();
        }
        let url = url.to_string();
        if e.is_connect() {
            CliError::Connect {
                url,
                reason,
                flag: self.listener.flag,
                var: self.listener.url_var,
            }
        } else if e.is_timeout() {
            CliError::Request {
                url,
                reason: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
            }
        } else {
            CliError::Request { url, reason }
        }
    }
}

/// The target of the `rel="next"` link among a response's `Link` headers (RFC 8288: each
/// value a comma-separated list of `<uri>; param=value`, `rel` a space-separated list).
fn next_link(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
            let next = params.split(';').any(|param| {
                let Some((name, value)) = param.split_once('=') else {
                    return false;
                };
                name.trim().eq_ignore_ascii_case("rel")
                    && value
                        .trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            });
            next.then(|| target.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(values: &[&str]) -> Option<String> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(LINK, HeaderValue::from_str(v).unwrap());
        }
        next_link(&headers)
    }

    #[test]
    fn the_next_link_is_found_among_others() {
        assert_eq!(
            link(&["</v1/subscriptions?limit=2&after=b>; rel=\"next\""]).as_deref(),
            Some("/v1/subscriptions?limit=2&after=b")
        );
        assert_eq!(
            link(&["</a>; rel=prev, </b>; title=\"x\"; REL=\"last next\""]).as_deref(),
            Some("/b")
        );
        assert_eq!(link(&["</a>; rel=\"prev\""]), None);
        assert_eq!(link(&["garbage", "<unclosed; rel=next"]), None);
        assert_eq!(link(&[]), None);
    }

    #[test]
    fn base_urls_get_a_scheme_and_a_trailing_slash() {
        assert_eq!(
            parse_base("127.0.0.1:8788").unwrap().as_str(),
            "http://127.0.0.1:8788/"
        );
        assert_eq!(
            parse_base("https://relay.example/hookrelay")
                .unwrap()
                .as_str(),
            "https://relay.example/hookrelay/"
        );
        assert!(parse_base("ftp://relay.example").is_err());
        assert!(parse_base("http://relay.example/?x=1").is_err());
        assert!(parse_base("http://").is_err());
        assert!(parse_base("http://u:p@relay.example").is_err());
    }

    #[test]
    fn a_next_page_stays_below_the_base_and_on_its_origin() {
        let client = Client::new(parse_base("https://h/hookrelay").unwrap(), API).unwrap();
        let next = client
            .next_page("/v1/subscriptions?limit=2&after=b")
            .unwrap();
        assert_eq!(
            next.as_str(),
            "https://h/hookrelay/v1/subscriptions?limit=2&after=b"
        );
        assert_eq!(client.next_page("https://elsewhere/v1/subscriptions"), None);
    }

    #[test]
    fn paths_are_joined_below_the_base_and_escaped() {
        let client = Client::new(parse_base("http://h:1/pre").unwrap(), API).unwrap();
        let url = client.url(&["v1", "events", "a/b c"], &[("state", "failed")]);
        assert_eq!(
            url.as_str(),
            "http://h:1/pre/v1/events/a%2Fb%20c?state=failed"
        );
    }
}
