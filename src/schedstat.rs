//! How long a thread of this process has run on a CPU and waited for one, from
//! `/proc/self/task/TID/schedstat` (the one reader of that file).
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
//!
//! The run-queue figure is not always all waiting for a CPU: on Linux 6.18 here, a thread that
//! slept 300 ms in `time.sleep` on a loaded machine was charged up to 288 ms of run-queue time
//! over that sleep (a sleeping thread can stay on its run queue for the scheduler's books until
//! it is picked, and the kernel counts that as waiting). [`KnownSleep`] bounds the figure by
//! what the watchdog saw for itself: the stretches over which the thread was asleep throughout.

/// One reading of a thread's `schedstat` (nanoseconds since the thread started).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedstat {
    /// Time on a CPU (the first field).
    pub on_cpu_ns: u64,
    /// Time runnable but waiting for a CPU (the second field).
    pub run_queue_ns: u64,
    /// How many times the thread was given a CPU (the third field).
    pub slices: u64,
}

/// Parses the contents of a `schedstat` file: `ON_CPU_NS RUN_QUEUE_NS SLICES`.
pub fn parse(text: &str) -> Option<Schedstat> {
    let mut fields = text.split_ascii_whitespace();
    let on_cpu_ns: u64 = fields.next()?.parse().ok()?;
    let run_queue_ns: u64 = fields.next()?.parse().ok()?;
    let slices: u64 = fields.next()?.parse().ok()?;
    Some(Schedstat {
        on_cpu_ns,
        run_queue_ns,
        slices,
    })
}

/// The `schedstat` of thread `tid` (a kernel thread id of this process); `None` when it cannot
/// be read (the thread has exited, `/proc` is not mounted, or the kernel keeps no such
/// statistics).
pub fn read(tid: i64) -> Option<Schedstat> {
    if tid <= 0 || !crate::LINUX_FULL {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    parse(&text)
}

/// Nanoseconds the thread `tid` has spent waiting for a CPU since it started (see [`read`]).
pub fn run_queue_ns(tid: i64) -> Option<u64> {
    read(tid).map(|s| s.run_queue_ns)
}

/// The scheduling state letter of `/proc/.../stat` (`R`, `S`, `D`, ...): the first field after
/// the command name, which is in parentheses and may itself hold any character.
pub fn parse_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().next()?.chars().next()
}

/// When thread `tid` is asleep now (state `S` or `D`: in a system call, waiting for something
/// other than a CPU), how many times it has been given a CPU so far; `None` when it is runnable
/// or running, or cannot be read. The count is read before and after the state, and must not
/// have moved: the state then holds for that count.
pub fn asleep_after(tid: i64) -> Option<u64> {
    if tid <= 0 || !crate::LINUX_FULL {
        return None;
    }
    let before = read(tid)?.slices;
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let asleep = matches!(parse_state(&stat)?, 'S' | 'D');
    (asleep && read(tid)?.slices == before).then_some(before)
}

/// The time over which a thread is known to have slept, from looks at it (see the module
/// docs): two looks that both found it asleep, with no CPU given to it in between, bound a
/// stretch it slept throughout. It cannot have waited for a CPU then: to be woken and fall
/// asleep again it must have run, which the count of CPUs given would show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KnownSleep {
    /// The latest look, when it found the thread asleep: when it ended, and the count.
    last: Option<(u64, u64)>,
    /// Nanoseconds known asleep so far.
    pub total_ns: u64,
}

impl KnownSleep {
    /// Records a look that began at `began` and ended at `ended` (nanoseconds on one clock);
    /// `asleep` is [`asleep_after`]'s answer. Only the time between two looks counts, never
    /// the looks' own.
    pub fn look(&mut self, began: u64, ended: u64, asleep: Option<u64>) {
        if let (Some((prev_end, prev)), Some(now)) = (self.last, asleep) {
            if prev == now {
                self.total_ns += began.saturating_sub(prev_end);
            }
        }
        self.last = asleep.map(|count| (ended, count));
    }

    /// Looks at thread `tid` now (`now` gives the clock).
    pub fn look_at(&mut self, tid: i64, now: impl Fn() -> u64) {
        let began = now();
        let asleep = asleep_after(tid);
        self.look(began, now(), asleep);
    }
}

/// True when this kernel reports run-queue time for the calling thread.
#[cfg(linux_full)]
pub fn available() -> bool {
    // SAFETY: gettid has no preconditions.
    run_queue_ns(i64::from(unsafe { libc::gettid() })).is_some()
}

/// Off Linux (and in the portable build) run-queue time is unknown.
#[cfg(not(linux_full))]
pub fn available() -> bool {
    false
}

#[cfg(all(test, linux_full))]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    #[test]
    fn parses_cpu_and_run_queue_time() {
        let s = parse("281637 1514601 2\n").unwrap();
        assert_eq!((s.on_cpu_ns, s.run_queue_ns), (281_637, 1_514_601));
        assert!(parse("0 0 0").is_some());
        assert_eq!(parse(""), None);
        assert_eq!(parse("12 34"), None);
        assert_eq!(parse("12 x 3"), None);
        assert_eq!(parse("-1 2 3"), None);
    }

    #[test]
    fn the_state_follows_the_command_name_whatever_it_holds() {
        assert_eq!(parse_state("12 (python3) S 1 12 12 0"), Some('S'));
        assert_eq!(parse_state("12 (a) R (b)) D 1 2"), Some('D'));
        assert_eq!(parse_state("12 (x"), None);
        assert_eq!(parse_state("12 (x)"), None);
    }

    #[test]
    fn only_stretches_between_two_looks_asleep_with_no_cpu_given_count_as_sleep() {
        let mut k = KnownSleep::default();
        k.look(0, 1, Some(5)); // asleep after 5 slices
        k.look(10, 11, Some(5)); // still: 1..10 slept
        k.look(20, 21, Some(5)); // still: 11..20
        assert_eq!(k.total_ns, 18);
        k.look(30, 31, Some(6)); // asleep again, but it ran in between: nothing known
        assert_eq!(k.total_ns, 18);
        k.look(40, 41, None); // running or waiting for a CPU
        k.look(50, 51, Some(6)); // asleep, but it was not at the look before
        assert_eq!(k.total_ns, 18);
        k.look(60, 61, Some(6));
        assert_eq!(k.total_ns, 27);
    }

    #[test]
    fn a_thread_in_a_sleep_is_known_asleep_and_a_spinning_one_is_not() {
        if !available() {
            eprintln!("no schedstat on this kernel");
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(i64::from(unsafe { libc::gettid() })).unwrap();
            std::thread::sleep(Duration::from_millis(400));
        });
        let tid = rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut k = KnownSleep::default();
        let t0 = Instant::now();
        let now = || t0.elapsed().as_nanos() as u64;
        k.look_at(tid, now);
        std::thread::sleep(Duration::from_millis(100));
        k.look_at(tid, now);
        sleeper.join().unwrap();
        assert!(k.total_ns >= 90_000_000, "{k:?}");
        // SAFETY: gettid has no preconditions.
        let me = i64::from(unsafe { libc::gettid() });
        assert_eq!(asleep_after(me), None, "the reading thread runs");
    }

    #[test]
    fn unknown_threads_have_no_reading() {
        assert_eq!(read(0), None);
        assert_eq!(run_queue_ns(-5), None);
    }

    #[test]
    fn one_reading_gives_this_threads_cpu_and_run_queue_time() {
        if !available() {
            eprintln!("no schedstat on this kernel");
            return;
        }
        // SAFETY: gettid has no preconditions.
        let tid = i64::from(unsafe { libc::gettid() });
        let before = read(tid).unwrap();
        spin(Duration::from_millis(20));
        let after = read(tid).unwrap();
        // 20 ms of wall time spinning: on a CPU or waiting for one (the kernel may account the
        // running thread's time up to a scheduler tick late, hence the margin).
        let used = after.on_cpu_ns - before.on_cpu_ns + after.run_queue_ns - before.run_queue_ns;
        assert!(
            after.on_cpu_ns > before.on_cpu_ns,
            "{before:?} then {after:?}"
        );
        assert!(used >= 10_000_000, "{before:?} then {after:?}");
        assert_eq!(
            run_queue_ns(tid).map(|w| w >= after.run_queue_ns),
            Some(true)
        );
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

    /// Keeps the calling thread busy on its CPU for `d` of wall time.
    pub(crate) fn spin(d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            std::hint::spin_loop();
        }
    }

    /// The calling thread's kernel thread id.
    pub(crate) fn gettid() -> i64 {
        // SAFETY: gettid has no preconditions.
        i64::from(unsafe { libc::gettid() })
    }

    /// A thread that spins on the CPU its creator runs on, pinned there, until it is stopped
    /// (or dropped): a thread pinned to the same CPU ([`Spinner::cpu`]) shares it and waits
    /// for it about half of the time.
    pub(crate) struct Spinner {
        pub(crate) cpu: usize,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Spinner {
        pub(crate) fn on_this_cpu() -> Self {
            // SAFETY: sched_getcpu has no preconditions.
            let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0);
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    pin_to(cpu);
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            };
            Spinner {
                cpu,
                stop,
                thread: Some(thread),
            }
        }

        /// Stops the spinner and waits for its thread to end.
        pub(crate) fn stop(self) {
            drop(self);
        }
    }

    impl Drop for Spinner {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(thread) = self.thread.take() {
                let ended = thread.join();
                // A test that is already failing is not made to abort by a second panic.
                if !std::thread::panicking() {
                    ended.unwrap();
                }
            }
        }
    }

    #[test]
    fn a_thread_sharing_its_cpu_with_a_spinner_waits_for_it() {
        if !available() {
            eprintln!("no schedstat on this kernel");
            return;
        }
        let spinner = Spinner::on_this_cpu();
        let cpu = spinner.cpu;
        let waited = std::thread::spawn(move || {
            pin_to(cpu);
            let tid = gettid();
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
        spinner.stop();
        let (wait, wall) = waited;
        assert!(
            wait > Duration::from_millis(60) && wait < wall,
            "waited {wait:?} of {wall:?}"
        );
    }
}
