//! The database file on disk: private to the relay's user (0600, its directory 0700 when the
//! relay creates it), and used by one relay at a time (an advisory lock on `<db>.lock`).
//!
//! The lock is a `flock` on a file of its own, not SQLite's `locking_mode = EXCLUSIVE`: in
//! WAL mode that would shut out the store's own read connection, and `flock` on the
//! database file itself could meet SQLite's `fcntl` locks where a file system emulates one
//! with the other. The kernel drops it when the process dies, so a crash never leaves it
//! behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::StoreError;

/// Read and write for the owner only: the file holds events and subscription secrets.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;
/// The database's directory, when the relay creates it.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;

/// Held while a relay uses a database file; dropping it lets another relay open the file.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// Takes the lock on `path` (the database file), or refuses: another relay uses the file.
pub(super) fn lock(path: &Path) -> Result<FileLock, StoreError> {
    let lock_path = sibling(path, ".lock");
    let open_error = |context: String, e: std::io::Error| StoreError::Open {
        path: path.display().to_string(),
        context,
        source: Some(Arc::new(e)),
    };
    create_dir(path).map_err(|e| open_error("cannot create its directory".into(), e))?;
    let file = private_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| open_error(format!("cannot open {}", lock_path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(FileLock { _file: file }),
        Err(TryLockError::WouldBlock) => Err(StoreError::Open {
            path: path.display().to_string(),
            context: format!(
                "another hookrelay is using this database (it holds the lock {}); run one relay per database file",
                lock_path.display()
            ),
            source: None,
        }),
        Err(TryLockError::Error(e)) => Err(open_error(
            format!("cannot lock {}", lock_path.display()),
            e,
        )),
    }
}

/// Creates the directory (0700) and the database file (0600) when missing, and tightens an
/// existing file, its `-wal` and `-shm` to 0600, with a warning. SQLite creates `-wal` and
/// `-shm` with the database file's mode, so a new WAL is private too.
pub(super) fn prepare(path: &Path) -> std::io::Result<()> {
    create_dir(path)?;
    match private_options().write(true).create_new(true).open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for file in [
        path.to_path_buf(),
        sibling(path, "-wal"),
        sibling(path, "-shm"),
    ] {
        tighten(&file)?;
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name (`hookrelay.db-wal`).
pub(super) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn create_dir(path: &Path) -> std::io::Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir)
}

/// Options that create a file readable by its owner only.
pub(super) fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options
}

/// Sets an existing file's mode to 0600 when it grants anything to group or others.
#[cfg(unix)]
fn tighten(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::metadata(file) {
        Ok(meta) => meta.permissions().mode() & 0o777,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if mode & 0o077 != 0 {
        tracing::warn!(
            file = %file.display(),
            mode = format!("{mode:o}"),
            "database file readable by others; its mode is now 600"
        );
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten(_file: &Path) -> std::io::Result<()> {
    Ok(())
}
