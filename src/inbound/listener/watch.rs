//! How long one connection may go without a request in progress. A connection is in one of
//! three phases: reading a head (from the accept, or from the first byte after a response),
//! bounded by `limits.header_read_timeout`; waiting for the next request on keep-alive,
//! bounded by `limits.idle_timeout`; or busy with a request (from its complete head to the
//! end of its response body), not bounded here: `limits.request_timeout` bounds the handler,
//! and a long poll may wait longer than any idle time.
//!
//! hyper's own `header_read_timeout` is not used: it starts when the connection begins to
//! wait for a head, so it would also cut idle keep-alive time at the header timeout.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading a request head: its first byte has arrived, or the connection is new.
    Head,
    /// Nothing of the next request yet, none in progress (keep-alive).
    Idle,
    /// A request in progress, from its complete head to the end of its response body.
    Busy,
}

/// One connection's phase and since when, shared by its IO, its requests and its watchdog.
pub struct Watch {
    state: Mutex<State>,
    changed: Notify,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

struct State {
    phase: Phase,
    since: Instant,
    /// Requests in progress (more than one only while a response body outlives its request).
    busy: usize,
}

impl Watch {
    /// A new connection: reading its first head from now.
    pub fn new(header_read_timeout: Duration, idle_timeout: Duration) -> Arc<Watch> {
        Arc::new(Watch {
            state: Mutex::new(State {
                phase: Phase::Head,
                since: Instant::now(),
                busy: 0,
            }),
            changed: Notify::new(),
            header_read_timeout,
            idle_timeout,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain fields; a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, state: &mut State, phase: Phase) {
        state.phase = phase;
        state.since = Instant::now();
        self.changed.notify_waiters();
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        self.state().phase
    }

    /// Bytes arrived: an idle connection starts reading a head, whose time runs from now.
    fn read(&self) {
        let mut state = self.state();
        if state.phase == Phase::Idle {
            self.set(&mut state, Phase::Head);
        }
    }

    /// A request's head is complete: busy until the returned guard (held by its response
    /// body) is dropped.
    pub fn begin(self: &Arc<Watch>) -> Busy {
        let mut state = self.state();
        state.busy += 1;
        self.set(&mut state, Phase::Busy);
        Busy(self.clone())
    }

    /// Resolves with the phase that outlived its limit; never while busy.
    pub async fn expired(&self) -> Phase {
        loop {
            // Made before reading the state, so a change in between still wakes it.
            let changed = self.changed.notified();
            let (phase, since) = {
                let state = self.state();
                (state.phase, state.since)
            };
            let limit = match phase {
                Phase::Head => self.header_read_timeout,
                Phase::Idle => self.idle_timeout,
                Phase::Busy => {
                    changed.await;
                    continue;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(since + limit) => {
                    let state = self.state();
                    if state.phase == phase && state.since == since {
                        return phase;
                    }
                }
                _ = changed => {}
            }
        }
    }
}

/// A request in progress; its drop ends it.
pub struct Busy(Arc<Watch>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.busy -= 1;
        if state.busy == 0 {
            self.0.set(&mut state, Phase::Idle);
        }
    }
}

/// The connection's socket, telling its watch when bytes arrive.
pub struct WatchedIo<I> {
    io: I,
    watch: Arc<Watch>,
}

impl<I> WatchedIo<I> {
    /// Wraps `io`.
    pub fn new(io: I, watch: Arc<Watch>) -> WatchedIo<I> {
        WatchedIo { io, watch }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WatchedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.watch.read();
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WatchedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A response body that keeps its request busy until the body is done with.
pub struct WatchedBody<B> {
    body: B,
    _busy: Busy,
}

impl<B> WatchedBody<B> {
    /// Wraps `body`, holding `busy` as long as it lives.
    pub fn new(body: B, busy: Busy) -> WatchedBody<B> {
        WatchedBody { body, _busy: busy }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for WatchedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(1);
    const IDLE: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_has_the_header_timeout() {
        let watch = Watch::new(HEAD, IDLE);
        let start = Instant::now();
        assert_eq!(watch.expired().await, Phase::Head);
        assert_eq!(start.elapsed(), HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_during_a_head_do_not_extend_it() {
        let watch = Watch::new(HEAD, IDLE);
        let start = Instant::now();
        let reader = {
            let watch = watch.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    watch.read();
                }
            }
        };
        tokio::select! {
            phase = watch.expired() => assert_eq!(phase, Phase::Head),
            _ = reader => unreachable!(),
        }
        assert_eq!(start.elapsed(), HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_never_expires_and_idle_follows_it() {
        let watch = Watch::new(HEAD, IDLE);
        let busy = watch.begin();
        let long = Duration::from_secs(600);
        let waited = tokio::time::timeout(long, watch.expired()).await;
        assert!(waited.is_err(), "a request in progress is never cut here");
        drop(busy);
        let start = Instant::now();
        assert_eq!(watch.expired().await, Phase::Idle);
        assert_eq!(start.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_byte_after_idle_starts_the_header_timeout() {
        let watch = Watch::new(HEAD, IDLE);
        drop(watch.begin());
        tokio::time::sleep(Duration::from_secs(4)).await;
        watch.read();
        let start = Instant::now();
        assert_eq!(watch.expired().await, Phase::Head);
        assert_eq!(start.elapsed(), HEAD);
    }
}
