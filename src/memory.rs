//! Memory given back to the system. A sidecar's idle footprint is paid once per pod, so the
//! relay hands back what it no longer uses instead of keeping it for the next burst.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Turns transparent huge pages off for the process from here on (the C heap, stacks) on
/// hosts whose THP setting is `always`. mimalloc is built not to ask for them (`no_thp`):
/// with them every touched 2 MiB region of its arena was resident whole (idle RSS 34 MB
/// against 19 MB without, on a host set to `madvise`).
pub fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only this process's
        // flag (unsigned long arguments, as the kernel reads them; it refuses non-zero extras).
        let done = unsafe {
            libc::prctl(
                libc::PR_SET_THP_DISABLE,
                1 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if done != 0 {
            eprintln!(
                "warning: transparent huge pages stay on: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Has mimalloc return freed memory at once rather than after its default second: it purges
/// a delayed free only when the freeing thread allocates again, so a thread that went idle
/// kept what it freed for good (3.3 MB of start-up garbage at idle, more after a backlog).
pub fn purge_promptly() {
    // SAFETY: setting an option is thread-safe and takes effect on the next purge.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

/// Least time between two collections on one thread.
const COLLECT_EVERY: Duration = Duration::from_millis(100);

/// Gives back what this thread's heap no longer uses, at most every 100 ms: mimalloc frees a
/// thread's emptied pages only when that thread allocates again, and an idle async worker
/// does not (for the runtime's workers as they park; 10 MB stayed after a backlog drained).
pub fn collect_if_due() {
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    LAST.with(|last| {
        let now = Instant::now();
        if last
            .get()
            .is_some_and(|t| now.duration_since(t) < COLLECT_EVERY)
        {
            return;
        }
        last.set(Some(now));
        // SAFETY: collects the calling thread's own heap.
        unsafe { libmimalloc_sys::mi_collect(false) };
    });
}

/// `mi_option_purge_delay` in mimalloc.h, which the bindings name no constant for.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Returns the C heap's free pages to the system (SQLite's page caches live there; glibc
/// keeps freed pages of a thread's arena otherwise).
pub fn trim_c_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_is_the_option_set() {
        // SAFETY: reading an option.
        let get = || unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        assert_eq!(get(), 1000, "mimalloc's default purge delay, in ms");
        purge_promptly();
        assert_eq!(get(), 0);
    }
}
