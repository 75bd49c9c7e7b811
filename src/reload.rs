//! Config reload: on SIGHUP, or when the config file changes, the file is validated whole and
//! its subscriptions are swapped in through the catalog. An invalid file changes nothing.
//! Sections that only a restart applies (listeners, storage, ...) keep their running values,
//! and a warning names them.
//!
//! The file's directory is watched rather than the file, because Kubernetes updates a
//! mounted ConfigMap by swapping a `..data` symlink next to it, and editors often replace a
//! file instead of writing into it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;

/// How long the file must stay quiet before it is read: one save or ConfigMap update makes
/// several events.
const SETTLE: Duration = Duration::from_millis(200);
/// How often the fallback watcher looks when the OS watcher cannot be had.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read or did not validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new subscriptions could not be swapped in.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    /// The subscriptions need more attempts in flight than the running relay allows.
    #[error(
        "delivery.max_in_flight_total: the running value {running} is below the sum of the subscriptions' max_in_flight and the API subscriptions' share ({wanted}); changing delivery needs a restart"
    )]
    OverCapacity {
        /// The running cap.
        running: usize,
        /// The new subscriptions' sum plus the API subscriptions' pool.
        wanted: usize,
    },
    /// The loading thread failed.
    #[error("the config could not be read: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What starts a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// SIGHUP: reload even if the file looks unchanged.
    Signal,
    /// A file event: reload only if the text changed.
    FileChanged,
}

/// Reloads the config file into a running relay.
pub struct Reloader {
    path: PathBuf,
    /// The config the relay started with: the sections a reload cannot change.
    running: Config,
    /// Digest of the text in force, so repeated events for one change reload once.
    digest: u64,
    catalog: Arc<Catalog>,
    metrics: Metrics,
    /// The slots API subscriptions share, fixed at start: a reload keeps them free.
    api_pool: usize,
}

impl Reloader {
    /// A reloader of `path` for a relay started with `running`.
    pub fn new(path: PathBuf, running: Config, catalog: Arc<Catalog>, metrics: Metrics) -> Self {
        let digest = running.source_digest;
        let api_pool = running
            .delivery
            .api_pool(crate::subscription::push_slots(&running.subscriptions));
        Reloader {
            api_pool,
            path,
            running,
            digest,
            catalog,
            metrics,
        }
    }

    /// Starts reloading on SIGHUP, and on file changes when `reload.watch` is on, until
    /// `stop`; returns how reloads are triggered, for the startup log line.
    pub fn spawn(self, stop: CancellationToken) -> &'static str {
        let changed = Arc::new(Notify::new());
        let watcher = if self.running.reload.watch {
            let mut paths = vec![self.path.clone()];
            paths.extend(self.running.watched_files());
            watch(&paths, changed.clone())
        } else {
            None
        };
        #[cfg(unix)]
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        #[cfg(not(unix))]
        let hangup: Option<()> = None;
        let mode = match (watcher.is_some(), hangup.is_some()) {
            (true, true) => "file change or SIGHUP",
            (true, false) => "file change",
            (false, true) => "SIGHUP",
            (false, false) => "off",
        };
        if watcher.is_some() {
            // A change made between the first load and the watcher's start.
            changed.notify_one();
        }
        tokio::spawn(self.run(watcher, hangup, changed, stop));
        mode
    }

    async fn run(
        mut self,
        // Kept alive for as long as the loop runs; dropping it stops watching.
        _watcher: Option<Box<dyn Watcher + Send>>,
        #[cfg(unix)] mut hangup: Option<tokio::signal::unix::Signal>,
        #[cfg(not(unix))] _hangup: Option<()>,
        changed: Arc<Notify>,
        stop: CancellationToken,
    ) {
        loop {
            #[cfg(unix)]
            let signal = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let signal = std::future::pending::<Option<()>>();
            let trigger = tokio::select! {
                _ = stop.cancelled() => return,
                _ = signal => Trigger::Signal,
                _ = changed.notified() => {
                    // Settle: wait until the events stop.
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = changed.notified() => {}
                            _ = tokio::time::sleep(SETTLE) => break,
                        }
                    }
                    Trigger::FileChanged
                }
            };
            self.reload(trigger).await;
        }
    }

    async fn reload(&mut self, trigger: Trigger) {
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
        let new = match loaded.map_err(ReloadError::from).and_then(|r| Ok(r?)) {
            Ok(new) => new,
            Err(e) => return self.failed(&e),
        };
        if trigger == Trigger::FileChanged && new.source_digest == self.digest {
            return;
        }
        let restart = self.running.restart_needed(&new);
        let wanted = crate::subscription::push_slots(&new.subscriptions) + self.api_pool;
        let running = self.running.delivery.max_in_flight_total;
        if wanted > running {
            return self.failed(&ReloadError::OverCapacity { running, wanted });
        }
        let digest = new.source_digest;
        let change = match self.catalog.replace_config(new.subscriptions).await {
            Ok(change) => change,
            Err(e) => return self.failed(&e.into()),
        };
        self.digest = digest;
        self.metrics
            .config_reloads
            .with_label_values(&["success"])
            .inc();
        self.metrics
            .config_last_reload_success
            .set(crate::time::now_ms() as f64 / 1000.0);
        tracing::info!(
            path = %self.path.display(),
            trigger = ?trigger,
            added = ?change.added,
            changed = ?change.changed,
            removed = ?change.removed,
            orphaned = change.orphaned,
            resumed = change.resumed,
            "config reloaded"
        );
        if !restart.is_empty() {
            tracing::warn!(
                sections = ?restart,
                "these sections changed but only a restart applies them; they keep their running values"
            );
        }
    }

    fn failed(&self, e: &ReloadError) {
        self.metrics
            .config_reloads
            .with_label_values(&["failure"])
            .inc();
        let problems: Vec<String> = match e {
            ReloadError::Config(c) => c.problems(),
            other => vec![other.to_string()],
        };
        tracing::error!(
            path = %self.path.display(),
            ?problems,
            "config reload failed; the running config is kept"
        );
    }
}

/// Watches the directories of `paths` (the config file, then the TLS files it names) and
/// notifies `changed` on events about one of them (or the symlink it goes through); `None`,
/// with a warning, when no watcher can be had.
fn watch(paths: &[PathBuf], changed: Arc<Notify>) -> Option<Box<dyn Watcher + Send>> {
    let mut dirs: Vec<PathBuf> = paths
        .iter()
        .map(|path| match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    let links: Vec<(PathBuf, OsString)> = paths
        .iter()
        .filter_map(|p| Some((p.clone(), p.file_name()?.to_os_string())))
        .collect();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        // Read again on every event: a ConfigMap swap moves where the symlinks point.
        let names: Vec<OsString> = links
            .iter()
            .flat_map(|(link, file)| watched_names(link, file))
            .collect();
        if event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| names.iter().any(|w| w == n)))
        {
            changed.notify_one();
        }
    };
    let mut watcher: Box<dyn Watcher + Send> = match notify::recommended_watcher(handler.clone()) {
        Ok(w) => Box::new(w),
        Err(e) => {
            tracing::warn!(error = %e, "no file-system watcher; polling the config file instead");
            let config = notify::Config::default().with_poll_interval(POLL_INTERVAL);
            match notify::PollWatcher::new(handler, config) {
                Ok(w) => Box::new(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP");
                    return None;
                }
            }
        }
    };
    let config_dir = paths.first().map(|p| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    });
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            if Some(dir) == config_dir.as_ref() {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config file's directory; reload with SIGHUP");
                return None;
            }
            // A certificate's directory: the config file is still watched.
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a certificate's directory; its changes apply on SIGHUP or a config change");
        }
    }
    Some(watcher)
}

/// The entries of the directory whose change may change the config: the file itself, and
/// the first step of its symlink when that stays in the directory (a ConfigMap's `..data`).
fn watched_names(path: &Path, file: &OsString) -> Vec<OsString> {
    let mut names = vec![file.clone()];
    if let Ok(target) = std::fs::read_link(path)
        && target.is_relative()
        && let Some(std::path::Component::Normal(first)) = target.components().next()
    {
        names.push(first.to_os_string());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_configmap_symlink_is_followed_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("..2026_11_23_01_00_00.1");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("config.yaml"), "{}").unwrap();
        std::os::unix::fs::symlink("..2026_11_23_01_00_00.1", dir.path().join("..data")).unwrap();
        let path = dir.path().join("config.yaml");
        std::os::unix::fs::symlink("..data/config.yaml", &path).unwrap();
        let names = watched_names(&path, &OsString::from("config.yaml"));
        assert_eq!(
            names,
            vec![OsString::from("config.yaml"), OsString::from("..data")]
        );

        let plain = dir.path().join("plain.yaml");
        std::fs::write(&plain, "{}").unwrap();
        assert_eq!(
            watched_names(&plain, &OsString::from("plain.yaml")),
            vec![OsString::from("plain.yaml")]
        );
    }
}
