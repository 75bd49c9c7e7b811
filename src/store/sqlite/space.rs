//! The disk under the database. A full volume must not wedge the relay: claiming, recording
//! outcomes and pruning need writes too. So the relay keeps a reserve file of its own beside
//! the database and gives it back the moment the disk fills. Ingest is then refused (`503`),
//! while the deliveries already accepted complete and prune in the space the reserve freed
//! (their attempts are then not added to the history, which would eat that space).
//! The WAL is checkpointed and truncated, and pruned pages are given back to the volume
//! (incremental auto-vacuum), so they return their space too. Once the volume has room for
//! the reserve and a WAL's worth more, the reserve is laid again and ingest resumes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::Connection;

use super::file;

/// Free space below which a failed write counts as a full disk even when SQLite said
/// otherwise (an I/O error while the volume is all but full).
const NEARLY_FULL: u64 = 64 * 1024;
/// Room the WAL takes between two automatic checkpoints (1,000 pages of 4 KiB). A checkpoint
/// on a full disk needs about that much to move the WAL into the database, so the reserve is
/// at least this; and ingest only resumes with this much free beside the reserve.
use crate::store::WAL_ROOM;

/// The reserve file and the state of the volume, kept by the writer thread.
pub(super) struct Space {
    /// The reserve file; `None` for an in-memory store or `storage.reserve: 0`.
    reserve_path: Option<PathBuf>,
    /// The reserve's size.
    reserve: u64,
    /// The database's directory, whose volume is measured.
    dir: Option<PathBuf>,
    /// Raised while the disk is full: ingest is refused.
    full: Arc<AtomicBool>,
}

impl Space {
    /// Lays the reserve beside `db` (`None`: in memory). A volume too full to hold it starts
    /// in the full state.
    pub(super) fn open(db: Option<&Path>, reserve: u64) -> Space {
        let dir = db.map(|p| {
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()
        });
        let reserve_path = db
            .filter(|_| reserve > 0)
            .map(|p| file::sibling(p, "-reserve"));
        let space = Space {
            reserve_path,
            reserve,
            dir,
            full: Arc::new(AtomicBool::new(false)),
        };
        if let Err(e) = space.lay_reserve() {
            tracing::warn!(error = %e, "cannot lay the storage reserve: the disk is full; ingest is refused until space frees");
            space.full.store(true, Ordering::Relaxed);
        }
        space
    }

    /// The flag raised while the disk is full.
    pub(super) fn full_flag(&self) -> Arc<AtomicBool> {
        self.full.clone()
    }

    /// Bytes the volume has free for the relay, if it can be measured.
    pub(super) fn available(&self) -> Option<u64> {
        available(self.dir.as_deref()?)
    }

    /// After a failed transaction: a full disk (SQLite said so, or the volume is all but
    /// full) gives the reserve back and truncates the WAL, so the jobs that only finish work
    /// already accepted can run when they are tried again.
    pub(super) fn after_failure(&self, conn: &Connection, disk_full: bool) {
        let nearly_full = self.available().is_some_and(|a| a < NEARLY_FULL);
        if !(disk_full || nearly_full) {
            return;
        }
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                available = self.available(),
                "the disk is full: ingest answers 503 while accepted deliveries complete and prune"
            );
        }
        if let Some(path) = &self.reserve_path {
            match std::fs::remove_file(path) {
                Ok(()) => tracing::info!(bytes = self.reserve, "storage reserve given back"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(error = %e, "cannot give the storage reserve back"),
            }
        }
        checkpoint(conn);
    }

    /// Called now and then: while full, truncates the WAL and, once the volume has room for
    /// the reserve and a WAL's worth more, lays it again and lets ingest resume.
    pub(super) fn tick(&self, conn: &Connection) {
        if !self.full.load(Ordering::Relaxed) {
            return;
        }
        checkpoint(conn);
        let wanted = self.reserve + WAL_ROOM;
        if self.available().is_some_and(|a| a >= wanted) && self.lay_reserve().is_ok() {
            self.full.store(false, Ordering::Relaxed);
            tracing::info!(
                available = self.available(),
                "the disk has room again: ingest resumes"
            );
        }
    }

    /// Writes the reserve file (real blocks, not a sparse file, so its space is held).
    fn lay_reserve(&self) -> std::io::Result<()> {
        let Some(path) = &self.reserve_path else {
            return Ok(());
        };
        if std::fs::metadata(path).is_ok_and(|m| m.len() >= self.reserve) {
            return Ok(());
        }
        let result = (|| {
            // Private like the database beside it (it only holds zeros, but one rule is simpler).
            let mut out = file::private_options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?;
            if allocate(&out, self.reserve) {
                return out.sync_all();
            }
            let chunk = vec![0u8; 64 * 1024];
            let mut left = self.reserve;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                out.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            out.sync_all()
        })();
        if result.is_err() {
            // A partial reserve would hold space it cannot promise.
            let _ = std::fs::remove_file(path);
        }
        result
    }
}

/// The default `storage.max_size`: 80% of the database's volume, so the queue stops taking
/// events before the volume fills.
pub(super) fn default_max_size(db: &Path) -> Option<u64> {
    let dir = db.parent().filter(|d| !d.as_os_str().is_empty())?;
    volume_size(dir).map(|total| total / 10 * 8)
}

/// Asks the file system for `len` bytes of blocks at once (ext4, XFS, tmpfs): writing the
/// zeros made laying a fresh reserve the slowest step of starting (about 150 ms). `false`
/// where it cannot, or where the blocks are not really held (OpenZFS answers success and
/// reserves nothing), and the zeros are written instead.
#[cfg(target_os = "linux")]
fn allocate(file: &std::fs::File, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(size) = libc::off_t::try_from(len) else {
        return false;
    };
    // SAFETY: the descriptor is open for writing for the duration of the call.
    let allocated = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size) == 0 };
    allocated && file.metadata().is_ok_and(|m| m.blocks() * 512 >= len)
}

#[cfg(not(target_os = "linux"))]
fn allocate(_: &std::fs::File, _: u64) -> bool {
    false
}

/// Gives pruned pages back to the volume (files created with incremental auto-vacuum),
/// then moves the WAL into the database and truncates it, giving its space back too.
fn checkpoint(conn: &Connection) {
    // Each step frees one page, so every step is taken.
    let vacuum = conn.prepare("PRAGMA incremental_vacuum").and_then(|mut s| {
        let mut rows = s.query([])?;
        while rows.next()?.is_some() {}
        Ok(())
    });
    if let Err(e) = vacuum {
        tracing::debug!(error = %e, "incremental vacuum while the disk is full");
    }
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::debug!(error = %e, "checkpoint while the disk is full");
    }
}

fn statvfs(dir: &Path) -> Option<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut out = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `out` a writable statvfs buffer.
    let rc = unsafe { libc::statvfs(path.as_ptr(), out.as_mut_ptr()) };
    // SAFETY: statvfs filled `out` when it returned 0.
    (rc == 0).then(|| unsafe { out.assume_init() })
}

/// Bytes free for unprivileged writers on the volume of `dir`.
// statvfs's field widths differ across platforms.
#[allow(clippy::unnecessary_cast)]
fn available(dir: &Path) -> Option<u64> {
    statvfs(dir).map(|s| s.f_bavail as u64 * s.f_frsize as u64)
}

/// The size of the volume of `dir`.
#[allow(clippy::unnecessary_cast)]
fn volume_size(dir: &Path) -> Option<u64> {
    statvfs(dir).map(|s| s.f_blocks as u64 * s.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_laid_beside_the_database_and_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let space = Space::open(Some(&db), 128 * 1024);
        let reserve = dir.path().join("q.db-reserve");
        let meta = std::fs::metadata(&reserve).unwrap();
        assert_eq!(meta.len(), 128 * 1024);
        // Blocks held, not a sparse file: deleting it must free space.
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 >= 128 * 1024,
            "{} blocks",
            meta.blocks()
        );
        assert!(!space.full_flag().load(Ordering::Relaxed));
        let conn = Connection::open(&db).unwrap();
        space.after_failure(&conn, true);
        assert!(space.full_flag().load(Ordering::Relaxed));
        assert!(!reserve.exists(), "given back");
        // A real disk has room: the next tick lays it again and lifts the refusal.
        space.tick(&conn);
        assert!(!space.full_flag().load(Ordering::Relaxed));
        assert!(reserve.exists());
    }

    #[test]
    fn a_failure_with_room_left_is_not_a_full_disk() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let space = Space::open(Some(&db), 4096);
        let conn = Connection::open(&db).unwrap();
        space.after_failure(&conn, false);
        assert!(!space.full_flag().load(Ordering::Relaxed));
    }

    #[test]
    fn checkpoint_gives_every_pruned_page_back() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("v.db")).unwrap();
        conn.execute_batch(
            "PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL; CREATE TABLE t(x);",
        )
        .unwrap();
        for _ in 0..200 {
            conn.execute("INSERT INTO t VALUES (zeroblob(4000))", [])
                .unwrap();
        }
        conn.execute("DELETE FROM t", []).unwrap();
        checkpoint(&conn);
        let free: i64 = conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap();
        assert_eq!(free, 0, "every free page went back to the volume");
        assert!(std::fs::metadata(dir.path().join("v.db")).unwrap().len() < 100 * 4096);
    }

    #[test]
    fn the_default_size_limit_is_most_of_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let max = default_max_size(&dir.path().join("q.db")).unwrap();
        let total = volume_size(dir.path()).unwrap();
        assert!(max < total && max >= total / 2, "{max} of {total}");
        assert_eq!(Space::open(None, 4096).available(), None);
    }
}
