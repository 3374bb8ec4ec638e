//! This process's id, without a system call each time.
//!
//! glibc stopped caching `getpid()` (2.25), so every call is a system call, and the pyo3 layer
//! checks the pid on every call (a forked child must not use its parent's watchdog). Here the
//! pid is read once and forgotten in the child of every `fork()`, by a `pthread_atfork` handler
//! (it runs in the child before `fork()` returns there, while the child has a single thread).

use std::sync::atomic::{AtomicU32, Ordering};
#[cfg(unix)]
use std::sync::Once;

/// The pid read last; 0 when it must be read again.
static PID: AtomicU32 = AtomicU32::new(0);
#[cfg(unix)]
static AT_FORK: Once = Once::new();

#[cfg(unix)]
extern "C" fn forget_in_child() {
    // Async-signal-safe, as a handler run in a forked child must be: one atomic store.
    PID.store(0, Ordering::Relaxed);
}

/// The id of this process (the same value as `std::process::id()`).
pub fn pid() -> u32 {
    let cached = PID.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    #[cfg(unix)]
    AT_FORK.call_once(|| {
        // SAFETY: `forget_in_child` is an `extern "C" fn()` that lives as long as the process
        // and only stores to an atomic; the other two handlers may be null.
        unsafe { libc::pthread_atfork(None, None, Some(forget_in_child)) };
    });
    let pid = std::process::id();
    PID.store(pid, Ordering::Relaxed);
    pid
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn the_pid_is_this_process_s_and_a_forked_child_sees_its_own() {
        assert_eq!(pid(), std::process::id());
        assert_eq!(pid(), std::process::id());
        // SAFETY: the child calls only `pid` (atomics, a `Once` already completed, `getpid`)
        // and `_exit`, which are safe in the child of a multi-threaded process.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let ok = pid() == std::process::id() && pid() != 0;
            // SAFETY: `_exit` ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: `child` is our child's pid and `status` a valid out-pointer.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_ne!(child as u32, pid());
    }
}
