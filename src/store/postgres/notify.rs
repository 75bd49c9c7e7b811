//! The listener: one connection of its own (`storage.postgres.direct_url`, else `url`;
//! never the pool's, whose connections a pooler shares) that `LISTEN`s for changes to the
//! API subscriptions made through other relays and signals the catalog at once. Each change
//! is notified by its transaction at commit (`subscriptions::changed`), with the schema as
//! payload, so relays on other schemas are ignored. After every (re)connect it signals too:
//! what was notified while it was away is found by the resync. Reconnects with backoff; the
//! periodic resync (`catalog_revision`) covers the gaps and works without it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::poll_fn;
use tokio::sync::Notify;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Socket};
use tokio_util::sync::CancellationToken;

use super::db::client_config;
use super::subscriptions::CHANNEL;
use super::tls;
use crate::store::settings::PostgresSettings;

/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why listening stopped (logged, then retried).
#[derive(Debug, thiserror::Error)]
enum ListenError {
    /// The URL or TLS setup is unusable (as the pool's would be).
    #[error("{0}")]
    Setup(String),
    /// The connection failed or ended.
    #[error("the listening connection failed: {0}")]
    Connection(#[from] tokio_postgres::Error),
    /// The server closed the connection.
    #[error("the listening connection was closed")]
    Closed,
}

/// Listens until `stop`, signalling `signal` at each change notified for `schema` and after
/// each (re)connect.
pub(super) async fn listen(pg: PostgresSettings, signal: Arc<Notify>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let run = listen_once(&pg, &signal, &mut backoff);
        let result = tokio::select! {
            r = run => r,
            _ = stop.cancelled() => return,
        };
        if let Err(e) = result {
            tracing::warn!(
                error = %e,
                retry_in = ?backoff,
                "cannot listen for changes to API subscriptions; the periodic resync still finds them"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: connects, listens and forwards notifications until it fails.
async fn listen_once(
    pg: &PostgresSettings,
    signal: &Arc<Notify>,
    backoff: &mut Duration,
) -> Result<(), ListenError> {
    let url = pg.direct_url.as_ref().unwrap_or(&pg.url);
    let mut config = client_config(url, pg)
        .map_err(|_| ListenError::Setup(format!("{url} is not a valid PostgreSQL URL")))?;
    match tls::connector(&mut config, pg).map_err(ListenError::Setup)? {
        None => listen_with(config, tokio_postgres::NoTls, &pg.schema, signal, backoff).await,
        Some(tls) => listen_with(config, tls, &pg.schema, signal, backoff).await,
    }
}

async fn listen_with<T>(
    config: tokio_postgres::Config,
    tls: T,
    schema: &str,
    signal: &Arc<Notify>,
    backoff: &mut Duration,
) -> Result<(), ListenError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = config.connect(tls).await?;
    let payload = format!("{schema}\tc");
    let forwarded = signal.clone();
    // Drives the connection and forwards this schema's notifications.
    let mut driver = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if n.channel() == CHANNEL && n.payload() == payload {
                        forwarded.notify_one();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return ListenError::Connection(e),
                None => return ListenError::Closed,
            }
        }
    });
    let statement = format!("LISTEN {CHANNEL}");
    let listening = tokio::select! {
        r = client.batch_execute(&statement) => r,
        ended = &mut driver => {
            return Err(ended.unwrap_or(ListenError::Closed));
        }
    };
    if let Err(e) = listening {
        driver.abort();
        return Err(e.into());
    }
    tracing::debug!("listening for changes to API subscriptions");
    *backoff = Duration::from_millis(250);
    // Whatever changed while not listening.
    signal.notify_one();
    let ended = driver.await.unwrap_or(ListenError::Closed);
    drop(client);
    Err(ended)
}
