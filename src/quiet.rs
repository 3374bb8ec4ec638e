//! loopguard's own threads never take a signal meant for the program.
//!
//! A signal sent to the process (SIGINT from a terminal, SIGTERM from a supervisor, pytest-
//! timeout's SIGALRM) goes to any one thread that does not block it. Python runs its handlers
//! on the main thread only, and only between bytecodes: when the kernel picks one of loopguard's
//! threads, the main thread, waiting in its selector, is not interrupted, and the program hears
//! of the signal only when its loop next wakes (a `loopguard run` of a server asleep in
//! `asyncio.sleep(60)` ignored Ctrl-C for a minute). So loopguard's threads are started with
//! every signal blocked but those a fault raises in the thread itself: a process signal then
//! always goes to a thread of the program.

use std::thread::{Builder, JoinHandle};

/// Spawns `f` on a thread built by `builder` that blocks every asynchronous signal (see the
/// module docs). The blocking is done around the spawn, in the calling thread, so the new
/// thread never runs a moment without it: it inherits the mask.
pub fn spawn<F, T>(builder: Builder, f: F) -> std::io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    #[cfg(unix)]
    {
        let saved = block_async_signals();
        let spawned = builder.spawn(f);
        restore(&saved);
        spawned
    }
    #[cfg(not(unix))]
    {
        builder.spawn(f)
    }
}

/// Signals a thread raises on itself when its code faults: left unblocked (blocking them would
/// make a fault hang or kill the process without its handler).
#[cfg(unix)]
const SYNCHRONOUS: [libc::c_int; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// Blocks every asynchronous signal in the calling thread; returns the mask it had.
#[cfg(unix)]
fn block_async_signals() -> libc::sigset_t {
    // SAFETY: both sets are zero-initialised sigset_t values owned by this frame, filled by
    // sigfillset/sigdelset before use; pthread_sigmask reads `all` and writes `saved`, for the
    // calling thread only, and cannot fail with a valid `how`.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut saved: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        for s in SYNCHRONOUS {
            libc::sigdelset(&mut all, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut saved);
        saved
    }
}

/// Puts back the calling thread's mask saved by [`block_async_signals`].
#[cfg(unix)]
fn restore(saved: &libc::sigset_t) {
    // SAFETY: `saved` is a mask pthread_sigmask filled in; this only sets the calling thread's
    // mask to it.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, saved, std::ptr::null_mut());
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// Whether `sig` is blocked in the calling thread.
    fn blocked(sig: libc::c_int) -> bool {
        // SAFETY: a zeroed sigset_t owned by this frame; pthread_sigmask with a null new set
        // only reads the calling thread's mask into it.
        unsafe {
            let mut now: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut now);
            libc::sigismember(&now, sig) == 1
        }
    }

    #[test]
    fn the_thread_blocks_process_signals_and_its_spawner_is_unchanged() {
        let before = (blocked(libc::SIGINT), blocked(libc::SIGTERM));
        let seen = spawn(Builder::new(), || {
            (
                blocked(libc::SIGINT),
                blocked(libc::SIGTERM),
                blocked(libc::SIGALRM),
                blocked(libc::SIGSEGV),
            )
        })
        .unwrap()
        .join()
        .unwrap();
        assert_eq!(seen, (true, true, true, false));
        assert_eq!((blocked(libc::SIGINT), blocked(libc::SIGTERM)), before);
    }
}
