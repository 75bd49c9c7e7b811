//! The accept loop every listener runs: HTTP/1.1 connections, at most
//! `limits.max_connections` open at once (more are closed as soon as they are accepted), each
//! timed by its [`watch::Watch`] (`limits.header_read_timeout`, `limits.idle_timeout`).
//! Accept errors such as running out of file descriptors back off instead of spinning. On
//! stop, the listener closes, idle connections close, and requests in progress finish.

pub mod watch;

use std::convert::Infallible;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::{IntCounter, IntGauge};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::inbound::limits::Limits;
use watch::{Phase, Watch, WatchedBody, WatchedIo};

/// The listener's connection metrics (`hookrelay_connections{listener}` and
/// `hookrelay_connections_refused_total{listener}`).
#[derive(Clone)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: IntGauge,
    /// Connections closed at once because `max_connections` were open.
    pub refused: IntCounter,
}

/// Serves `router` on `listener` until `stop` is cancelled, then returns once every
/// connection has closed.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: ConnectionMetrics,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.reset();
                stream
            }
            // The client gave up before the accept: nothing is wrong here.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(listener = name, error = %e, ?delay, "accept failed; backing off");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = stop.cancelled() => break,
                }
            }
        };
        // Closed at once rather than left in the backlog: the client learns now, and the
        // descriptor is free again.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused.inc();
            tracing::debug!(
                listener = name,
                max = limits.max_connections,
                "connection refused: limits.max_connections are open"
            );
            continue;
        };
        connections.spawn(connection(
            stream,
            router.clone(),
            limits,
            Open::new(slot, metrics.open.clone()),
            stop.clone(),
        ));
    }
    // Closing the socket makes the kernel refuse new connections while the open ones drain.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// A connection's place under the cap, counted in the gauge while it lives.
struct Open {
    _slot: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Open {
    fn new(slot: OwnedSemaphorePermit, gauge: IntGauge) -> Open {
        gauge.inc();
        Open { _slot: slot, gauge }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Serves one connection until the client closes it, its phase outlives its limit, or the
/// relay stops (a request in progress still finishes then; a head not yet complete is not
/// served).
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    _open: Open,
    stop: CancellationToken,
) {
    let watch = Watch::new(limits.header_read_timeout, limits.idle_timeout);
    let io = TokioIo::new(WatchedIo::new(stream, watch.clone()));
    let requests = watch.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = requests.begin();
        let router = router.clone();
        async move {
            let response = router.oneshot(req.map(Body::new)).await;
            let response = response.unwrap_or_else(|never: Infallible| match never {});
            Ok::<_, Infallible>(response.map(|body| WatchedBody::new(body, busy)))
        }
    });
    let mut conn = pin!(
        hyper::server::conn::http1::Builder::new()
            // The watch times heads; hyper's own timer would also cut idle time short.
            .header_read_timeout(None)
            .serve_connection(io, service)
    );
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            phase = watch.expired() => {
                let reason = match phase {
                    Phase::Head => "limits.header_read_timeout",
                    Phase::Idle | Phase::Busy => "limits.idle_timeout",
                };
                tracing::debug!(reason, "connection closed: timed out");
                return;
            }
            _ = stop.cancelled(), if !stopping => {
                // Nothing in progress: close now (hyper would wait for a half-sent head).
                if watch.phase() != Phase::Busy {
                    return;
                }
                // Finish the request in progress, then close.
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Errors of one connection that went away before it was accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Delays between failed accepts: 10ms doubling to 1s, back to 10ms after a success.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn next_delay(&mut self) -> Duration {
        let delay = Self::FIRST.saturating_mul(1 << self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        delay.min(Self::MAX)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_a_second_and_resets() {
        let mut b = AcceptBackoff::default();
        let ms: Vec<u128> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), AcceptBackoff::MAX);
        b.reset();
        assert_eq!(b.next_delay(), AcceptBackoff::FIRST);
    }
}
