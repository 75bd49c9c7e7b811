//! The pause states the store keeps (set through the API or by a `410 Gone`), as this relay
//! last read or wrote them. A subscription with a stored state follows it; one without
//! follows its document's `paused`. On a shared store the pick-up round re-reads them every
//! second, so a pause through one relay reaches the others.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::control::Paused;
use crate::store::PauseState;

/// The stored pause states, by subscription name.
#[derive(Default)]
pub(super) struct Pauses {
    rows: Mutex<HashMap<String, PauseState>>,
    /// Counts this relay's own changes, so a read that began before one cannot undo it.
    epoch: AtomicU64,
    /// Writes of this relay's own changes under way: no re-read is taken meanwhile.
    writers: AtomicUsize,
}

/// A change of this relay's under way (applied here, being kept in the store): re-reads of
/// the store that overlap it in any way are not taken.
pub(super) struct Writing<'a>(&'a Pauses);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.writers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Pauses {
    /// Starts from what the store holds.
    pub(super) fn new(rows: Vec<PauseState>) -> Pauses {
        Pauses {
            rows: Mutex::new(rows.into_iter().map(|r| (r.name.clone(), r)).collect()),
            epoch: AtomicU64::new(0),
            writers: AtomicUsize::new(0),
        }
    }

    /// The pause a subscription should be in: its stored state, or else its document's.
    pub(super) fn wanted(&self, name: &str, in_document: bool) -> Option<Paused> {
        match self.lock().get(name) {
            Some(row) => row.paused.then(|| Paused {
                reason: row.reason.clone(),
            }),
            None => in_document.then(|| Paused {
                reason: "config".into(),
            }),
        }
    }

    /// Before this relay changes a state: until the guard is dropped (after the store has
    /// it), no re-read is taken, whenever it began.
    pub(super) fn writing(&self) -> Writing<'_> {
        self.writers.fetch_add(1, Ordering::SeqCst);
        self.touch();
        Writing(self)
    }

    fn touch(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Records a change this relay made (and wrote to the store).
    pub(super) fn local(&self, row: PauseState) {
        self.touch();
        self.lock().insert(row.name.clone(), row);
    }

    /// The counter of local changes, read before a re-read of the store begins.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Takes a re-read of the store, unless this relay changed a state since it began
    /// (`epoch`) or is writing one (then the next round takes it); true when taken.
    pub(super) fn replace(&self, rows: Vec<PauseState>, epoch: u64) -> bool {
        let mut held = self.lock();
        if self.epoch() != epoch || self.writers.load(Ordering::SeqCst) > 0 {
            return false;
        }
        *held = rows.into_iter().map(|r| (r.name.clone(), r)).collect();
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PauseState>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, paused: bool) -> PauseState {
        PauseState {
            name: name.into(),
            paused,
            reason: "api".into(),
            since_ms: 1,
        }
    }

    #[test]
    fn the_stored_state_wins_over_the_document() {
        let p = Pauses::new(vec![row("a", false), row("b", true)]);
        assert_eq!(p.wanted("a", true), None);
        assert!(p.wanted("b", false).is_some());
        assert_eq!(p.wanted("c", true).unwrap().reason, "config");
        assert_eq!(p.wanted("c", false), None);
    }

    #[test]
    fn a_read_older_than_a_local_change_is_not_taken() {
        let p = Pauses::new(vec![]);
        let before = p.epoch();
        p.local(row("a", true));
        assert!(!p.replace(vec![], before));
        assert!(p.wanted("a", false).is_some());
        assert!(p.replace(vec![], p.epoch()));
        assert_eq!(p.wanted("a", false), None);
    }

    #[test]
    fn no_read_is_taken_while_a_change_is_being_written() {
        let p = Pauses::new(vec![]);
        let writing = p.writing();
        // A read that began after the change was applied here but before the store had it.
        let during = p.epoch();
        assert!(!p.replace(vec![], during));
        p.local(row("a", true));
        drop(writing);
        assert!(
            !p.replace(vec![], during),
            "it began before the write ended"
        );
        assert!(p.replace(vec![row("a", true)], p.epoch()));
        assert!(p.wanted("a", false).is_some());
    }
}
