//! Group commit: requests wait in a bounded channel; one task takes every request waiting
//! (up to a batch) and writes them in one transaction, so concurrent ingests (or attempt
//! outcomes) share a commit and its round trips. Ingest is refused at once when the
//! channel is full.

use std::future::Future;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::store::{StoreError, WriterMetrics};

/// The answer once the writer task is gone.
pub(super) fn stopped() -> StoreError {
    StoreError::unavailable("the store's writer has stopped")
}

/// Where requests for one writer task go.
pub(super) struct Writer<T> {
    tx: mpsc::Sender<T>,
}

impl<T: Send + 'static> Writer<T> {
    /// Starts a task that hands every batch of up to `max_batch` waiting requests to
    /// `write`, one batch at a time; at most `capacity` requests wait.
    pub(super) fn start<F, Fut>(
        capacity: usize,
        max_batch: usize,
        metrics: WriterMetrics,
        mut write: F,
    ) -> Writer<T>
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (tx, mut rx) = mpsc::channel(capacity);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut batch, max_batch).await > 0 {
                metrics.batch_size.observe(batch.len() as f64);
                let start = Instant::now();
                write(std::mem::take(&mut batch)).await;
                metrics
                    .commit_duration
                    .observe(start.elapsed().as_secs_f64());
            }
        });
        Writer { tx }
    }

    /// Queues `item`, refusing at once (`Busy`) when the queue is full.
    pub(super) fn try_send(&self, item: T) -> Result<(), StoreError> {
        self.tx.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                StoreError::Busy("the store's write queue is full".into())
            }
            mpsc::error::TrySendError::Closed(_) => stopped(),
        })
    }

    /// Queues `item`, waiting for room.
    pub(super) async fn send(&self, item: T) -> Result<(), StoreError> {
        self.tx.send(item).await.map_err(|_| stopped())
    }

    /// False once the task has stopped.
    pub(super) fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }
}
