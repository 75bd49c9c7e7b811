//! The writer thread: one connection, jobs over a bounded channel, and group commit (all
//! waiting jobs in one transaction, one fsync); `run`, `read` and `run_marking` submit work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::retired::Mark;
use super::space::Space;
use super::{SqliteStore, sql_error};
use crate::store::{StoreError, WriterMetrics};

/// Most jobs in one transaction.
const MAX_BATCH: usize = 2048;
/// How often the size limit is re-checked.
const SIZE_CHECK_EVERY: Duration = Duration::from_millis(500);
/// Jobs in one such period at or under which the store is quiet (housekeeping, a scrape):
/// after a busy period, a quiet one gives the page cache's memory back.
const QUIET_JOBS: usize = 4;

/// Called once the job's transaction has committed (or failed), with that result.
pub(super) type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// Work for the writer: runs inside the transaction (or is told why it cannot) and returns
/// whether it succeeded (a failed job's writes are rolled back to its savepoint) and what
/// to do after the commit.
pub(super) type Job = Box<dyn FnOnce(Result<&Connection, StoreError>) -> (bool, Finish) + Send>;

/// The answer to every job once the writer is gone.
pub(super) fn stopped() -> StoreError {
    StoreError::unavailable("the store's writer has stopped")
}

/// Owns the database's write connection on its own thread; every change goes through it.
pub(super) struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Job>,
    metrics: WriterMetrics,
    max_size: Option<u64>,
    over_size: Arc<AtomicBool>,
    space: Space,
}

impl Writer {
    /// Starts the writer thread on `conn`. Returns where to send its jobs (at most `capacity`
    /// waiting) and the flag it keeps raised while the file is above `max_size`; `space`
    /// keeps the disk's own flag.
    pub(super) fn start(
        conn: Connection,
        capacity: usize,
        metrics: WriterMetrics,
        max_size: Option<u64>,
        space: Space,
    ) -> Result<(mpsc::Sender<Job>, Arc<AtomicBool>), StoreError> {
        let (jobs, rx) = mpsc::channel(capacity);
        let over_size = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            conn,
            rx,
            metrics,
            max_size,
            over_size: over_size.clone(),
            space,
        };
        std::thread::Builder::new()
            .name("hookrelay-store".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::unavailable_from("cannot start the writer thread", e))?;
        Ok((jobs, over_size))
    }

    /// Takes jobs until every sender is gone, committing whatever is waiting at once.
    fn run(mut self) {
        let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        let mut size_checked = Instant::now() - SIZE_CHECK_EVERY;
        let (mut period_jobs, mut holding) = (0, false);
        self.check_size();
        while let Some(first) = self.rx.blocking_recv() {
            jobs.push(first);
            while jobs.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let size = jobs.len();
            if let Some(disk_full) = self.transaction(&mut jobs) {
                self.space.after_failure(&self.conn, disk_full);
            }
            self.metrics
                .commit_duration
                .observe(started.elapsed().as_secs_f64());
            self.metrics.batch_size.observe(size as f64);
            period_jobs += size;
            if size_checked.elapsed() >= SIZE_CHECK_EVERY {
                self.check_size();
                self.space.tick(&self.conn);
                if period_jobs > QUIET_JOBS {
                    holding = true;
                } else if holding {
                    self.release_memory();
                    holding = false;
                }
                period_jobs = 0;
                size_checked = Instant::now();
            }
        }
        // Every sender is gone: the relay is stopping. Closing checkpoints the WAL.
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(error = %e, "closing the store");
        }
    }

    /// Frees the connection's page cache and gives the C heap's free pages back: a drained
    /// backlog left the cache full (and the relay 20 MB larger) until the next restart.
    fn release_memory(&self) {
        if let Err(e) = self.conn.execute_batch("PRAGMA shrink_memory") {
            tracing::debug!(error = %e, "shrinking the store's page cache");
        }
        crate::memory::trim_c_heap();
    }

    /// Runs `jobs` in one transaction. `None` when it committed; else whether SQLite said
    /// the disk is full.
    fn transaction(&mut self, jobs: &mut Vec<Job>) -> Option<bool> {
        let conn = &self.conn;
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let disk_full = is_disk_full(&e);
            let err = sql_error(e);
            tracing::error!(error = %err, "store transaction could not start");
            for job in jobs.drain(..) {
                let (_, finish) = job(Err(err.clone()));
                finish(Err(err.clone()));
            }
            return Some(disk_full);
        }
        let mut failed_jobs = false;
        let mut finishes = Vec::with_capacity(jobs.len());
        let mut aborted = None;
        for job in jobs.drain(..) {
            if let Some(err) = &aborted {
                let (_, finish) = job(Err(StoreError::clone(err)));
                finish(Err(StoreError::clone(err)));
                continue;
            }
            // A savepoint per job: one failing job leaves the others' writes intact.
            let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
            let _ = run("SAVEPOINT job");
            let (ok, finish) = job(Ok(conn));
            if !ok {
                failed_jobs = true;
                let _ = run("ROLLBACK TO job");
            }
            let _ = run("RELEASE job");
            finishes.push(finish);
            // SQLite rolls the whole transaction back by itself on some errors (disk full,
            // I/O): then nothing of this batch is kept, and no later job may run outside it.
            if conn.is_autocommit() {
                aborted = Some(StoreError::unavailable(
                    "the store's transaction was rolled back",
                ));
            }
        }
        let mut disk_full = false;
        let commit = match aborted {
            Some(err) => Err(err),
            None => conn.execute_batch("COMMIT").map_err(|e| {
                disk_full = is_disk_full(&e);
                sql_error(e)
            }),
        };
        if let Err(e) = &commit {
            tracing::error!(error = %e, "store commit failed");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        let failed = commit.is_err() || failed_jobs;
        for finish in finishes {
            finish(commit.clone());
        }
        failed.then_some(disk_full)
    }

    fn check_size(&self) {
        let Some(max) = self.max_size else { return };
        let used = self
            .conn
            .query_row(
                "SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count()), (SELECT page_size FROM pragma_page_size())",
                [],
                |r| Ok(r.get::<_, i64>(0)? * r.get::<_, i64>(1)?),
            )
            .unwrap_or(0);
        let over = used as u64 > max;
        if over != self.over_size.swap(over, Ordering::Relaxed) {
            if over {
                tracing::warn!(
                    used,
                    max,
                    "store is above storage.max_size: ingest answers 503"
                );
            } else {
                tracing::info!(used, max, "store is below storage.max_size again");
            }
        }
    }
}

/// True when SQLite refused a write for want of disk space.
fn is_disk_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

impl SqliteStore {
    /// Runs a query that changes nothing: on the read connection, off the async runtime.
    pub(super) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let Some(reader) = self.reader.clone() else {
            return self.run(false, f).await;
        };
        // Queued here, not on blocking threads: reads waiting for the one connection each
        // held a thread (and its C heap arena) until the others were done.
        let conn = reader.lock_owned().await;
        tokio::task::spawn_blocking(move || f(&conn))
            .await
            .map_err(|e| StoreError::unavailable_from("read task failed", e))?
    }

    /// Runs `f` in the writer's next transaction and returns its result once committed.
    /// `admission` jobs are refused at once when the channel is full.
    pub(super) async fn run<T, F>(&self, admission: bool, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| match conn {
            Err(e) => {
                let _ = tx.send(Err(e));
                (false, Box::new(|_| {}))
            }
            Ok(conn) => {
                let result = f(conn);
                let ok = result.is_ok();
                let finish: Finish = Box::new(move |commit| {
                    let _ = tx.send(commit.and(result));
                });
                (ok, finish)
            }
        });
        if admission {
            self.jobs.try_send(job).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    StoreError::Busy("the store's write queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => stopped(),
            })?;
        } else {
            self.jobs.send(job).await.map_err(|_| stopped())?;
        }
        rx.await.map_err(|_| stopped())?
    }

    /// Like `run`, and once `f` succeeds, changes the tombstones by `marks` inside the same
    /// job (so later jobs of the batch see them); puts them back if the commit fails.
    pub(super) async fn run_marking<T, F>(&self, marks: Vec<Mark>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let retired = self.retired.clone();
        let job: Job = Box::new(move |conn| {
            let result = conn.and_then(f);
            let ok = result.is_ok();
            let undo = if ok { retired.mark(marks) } else { Vec::new() };
            let finish: Finish = Box::new(move |commit| {
                if commit.is_err() {
                    retired.mark(undo);
                }
                let _ = tx.send(commit.and(result));
            });
            (ok, finish)
        });
        self.jobs.send(job).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}
