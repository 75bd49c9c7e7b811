//! A real OAuth2 token endpoint on 127.0.0.1 (plain http, which the relay allows to a
//! loopback address): it records every request, issues `tok-1`, `tok-2`, ... with a lifetime,
//! or refuses as its judge says.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A token request the endpoint got.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub headers: HeaderMap,
    /// The form fields, decoded.
    pub form: Vec<(String, String)>,
    pub at: Instant,
}

impl TokenRequest {
    /// The value of form field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the endpoint answers one request.
#[derive(Debug, Clone)]
pub enum TokenAnswer {
    /// The next token, with `expires_in` when given.
    Issue { expires_in: Option<u64> },
    /// This status and JSON body.
    Refuse(u16, Value),
}

type Judge = Arc<dyn Fn(&TokenRequest) -> TokenAnswer + Send + Sync>;

#[derive(Clone)]
struct EndpointState {
    got: Arc<Mutex<Vec<TokenRequest>>>,
    issued: Arc<Mutex<Vec<String>>>,
    judge: Judge,
    delay: Duration,
}

/// The token endpoint.
#[derive(Clone)]
pub struct TokenEndpoint {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<TokenRequest>>>,
    issued: Arc<Mutex<Vec<String>>>,
}

impl TokenEndpoint {
    /// An endpoint issuing tokens that live `expires_in` seconds (none: no `expires_in`).
    pub async fn issuing(expires_in: Option<u64>) -> TokenEndpoint {
        TokenEndpoint::start(move |_| TokenAnswer::Issue { expires_in }).await
    }

    /// An endpoint answering by `judge`.
    pub async fn start(
        judge: impl Fn(&TokenRequest) -> TokenAnswer + Send + Sync + 'static,
    ) -> TokenEndpoint {
        TokenEndpoint::start_slow(Duration::ZERO, judge).await
    }

    /// An endpoint answering by `judge`, each answer `delay` after the request.
    pub async fn start_slow(
        delay: Duration,
        judge: impl Fn(&TokenRequest) -> TokenAnswer + Send + Sync + 'static,
    ) -> TokenEndpoint {
        let got = Arc::new(Mutex::new(Vec::new()));
        let issued = Arc::new(Mutex::new(Vec::new()));
        let state = EndpointState {
            got: got.clone(),
            issued: issued.clone(),
            judge: Arc::new(judge),
            delay,
        };
        let app = axum::Router::new().fallback(answer).with_state(state);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TokenEndpoint { addr, got, issued }
    }

    /// Its token URL.
    pub fn url(&self) -> String {
        format!("http://{}/oauth2/token", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.got.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Every token issued so far, in order.
    pub fn issued(&self) -> Vec<String> {
        self.issued.lock().unwrap().clone()
    }
}

async fn answer(State(state): State<EndpointState>, headers: HeaderMap, body: Bytes) -> Response {
    let request = TokenRequest {
        headers,
        form: url::form_urlencoded::parse(&body).into_owned().collect(),
        at: Instant::now(),
    };
    state.got.lock().unwrap().push(request.clone());
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    match (state.judge)(&request) {
        TokenAnswer::Issue { expires_in } => {
            let token = {
                let mut issued = state.issued.lock().unwrap();
                let token = format!("tok-{}", issued.len() + 1);
                issued.push(token.clone());
                token
            };
            let mut doc = json!({"access_token": token, "token_type": "Bearer"});
            if let Some(secs) = expires_in {
                doc["expires_in"] = secs.into();
            }
            axum::Json(doc).into_response()
        }
        TokenAnswer::Refuse(status, doc) => {
            (StatusCode::from_u16(status).unwrap(), axum::Json(doc)).into_response()
        }
    }
}
