//! How long a thread of this process has waited for a CPU, from
//! `/proc/self/task/TID/schedstat`.
//!
//! The kernel keeps, per thread, the time it has spent on a CPU, the time it has spent
//! *runnable but not running* (on a run queue, waiting for a CPU) and the number of time slices
//! it ran: the file's three fields, in nanoseconds. The second one grows only while the thread
//! waits for a CPU: not while it sleeps, blocks in a system call or waits for a lock. So the
//! difference between two readings taken around a block is the part of the block that was the
//! machine's doing (other processes had the CPUs), not the code's.
//!
//! The value is updated when the thread gets a CPU: a reading taken while the thread is waiting
//! leaves out the wait in progress, which the next reading includes. Reading needs no privilege
//! and does not disturb the thread. Kernels built without `CONFIG_SCHED_INFO` have no such file;
//! callers then know nothing about run-queue time ([`run_queue_ns`] returns `None`).

/// Parses the contents of a `schedstat` file: `ON_CPU_NS RUN_QUEUE_NS SLICES`; returns the
/// second field.
pub fn parse(text: &str) -> Option<u64> {
    let mut fields = text.split_ascii_whitespace();
    let _on_cpu: u64 = fields.next()?.parse().ok()?;
    let waited: u64 = fields.next()?.parse().ok()?;
    let _slices: u64 = fields.next()?.parse().ok()?;
    Some(waited)
}

/// Nanoseconds the thread `tid` (a kernel thread id of this process) has spent waiting for a
/// CPU since it started; `None` when it cannot be read (the thread has exited, `/proc` is not
/// mounted, or the kernel keeps no such statistics).
pub fn run_queue_ns(tid: i64) -> Option<u64> {
    if tid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    parse(&text)
}

/// True when this kernel reports run-queue time for the calling thread.
pub fn available() -> bool {
    // SAFETY: gettid has no preconditions.
    run_queue_ns(i64::from(unsafe { libc::gettid() })).is_some()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn parses_the_second_field() {
        assert_eq!(parse("281637 1514601 2\n"), Some(1_514_601));
        assert_eq!(parse("0 0 0"), Some(0));
        assert_eq!(parse(""), None);
        assert_eq!(parse("12 34"), None);
        assert_eq!(parse("12 x 3"), None);
        assert_eq!(parse("-1 2 3"), None);
    }

    #[test]
    fn unknown_threads_have_no_reading() {
        assert_eq!(run_queue_ns(0), None);
        assert_eq!(run_queue_ns(-5), None);
    }

    /// Pins the calling thread to `cpu` (for tests that share a CPU on purpose).
    pub(crate) fn pin_to(cpu: usize) {
        // SAFETY: `set` is a zeroed cpu_set_t owned by this frame; CPU_SET writes inside it and
        // sched_setaffinity(0, ...) only reads it, for the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
    }

    fn spin(d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn a_thread_sharing_its_cpu_with_a_spinner_waits_for_it() {
        if !available() {
            eprintln!("no schedstat on this kernel");
            return;
        }
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinner = {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                pin_to(cpu);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    spin(Duration::from_millis(1));
                }
            })
        };
        let waited = std::thread::spawn(move || {
            pin_to(cpu);
            // SAFETY: gettid has no preconditions.
            let tid = i64::from(unsafe { libc::gettid() });
            let before = run_queue_ns(tid).unwrap();
            let t = Instant::now();
            // 300 ms of wall time on a CPU shared with a spinner: about half of it waiting.
            spin(Duration::from_millis(300));
            let wall = t.elapsed();
            let after = run_queue_ns(tid).unwrap();
            (Duration::from_nanos(after - before), wall)
        })
        .join()
        .unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spinner.join().unwrap();
        let (wait, wall) = waited;
        assert!(
            wait > Duration::from_millis(60) && wait < wall,
            "waited {wait:?} of {wall:?}"
        );
    }
}
