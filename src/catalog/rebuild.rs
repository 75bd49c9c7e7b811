//! Where the catalog's registries are built and dropped: one long-lived thread, off the
//! async runtime.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::Entry;
use crate::dispatch::Lane;
use crate::matching::Matcher;

/// A job for the builder thread.
enum BuildJob {
    Build(Vec<Entry>, oneshot::Sender<Arc<Matcher<Arc<Lane>>>>),
    Dispose(Arc<Matcher<Arc<Lane>>>),
}

/// Builds registries on one long-lived thread, off the async runtime (at 10,000
/// subscriptions a build takes milliseconds), and drops the replaced ones there too. One
/// thread allocates and frees every index, so its memory is reused: built on the blocking
/// pool, a bulk import of 10,000 subscriptions left about 300 MB spread over its threads.
pub(super) struct Builder {
    jobs: std::sync::mpsc::Sender<BuildJob>,
}

impl Builder {
    pub(super) fn start() -> Builder {
        let (jobs, rx) = std::sync::mpsc::channel::<BuildJob>();
        let spawned = std::thread::Builder::new()
            .name("hookrelay-registry".into())
            .spawn(move || {
                // Ends when the catalog, and with it the sender, is dropped.
                for job in rx {
                    match job {
                        BuildJob::Build(subs, reply) => {
                            let _ = reply.send(Arc::new(Matcher::new(subs)));
                        }
                        BuildJob::Dispose(old) => drop(old),
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the registry builder thread");
        }
        Builder { jobs }
    }

    /// A registry of `subs`; `None` if the thread is gone.
    pub(super) async fn build(&self, subs: Vec<Entry>) -> Option<Arc<Matcher<Arc<Lane>>>> {
        let (reply, built) = oneshot::channel();
        self.jobs.send(BuildJob::Build(subs, reply)).ok()?;
        built.await.ok()
    }

    /// Drops a replaced registry on the builder thread (unless a reader still holds it).
    pub(super) fn dispose(&self, old: Arc<Matcher<Arc<Lane>>>) {
        let _ = self.jobs.send(BuildJob::Dispose(old));
    }
}
