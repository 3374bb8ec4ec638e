//! GIL shares of every Python thread over a stretch of time, for `offload_check()`.
//!
//! While a check is open, one sampler thread (native, no Python thread state, never takes the
//! GIL) wakes every [`Settings::interval`] and reads:
//!
//! * who holds the GIL ([`GilReader::read`]); the time since the previous tick is counted as
//!   GIL-held time of that thread, and its stack is walked ([`Walker`]) so the time can be
//!   attributed to a call site;
//! * every [`Settings::threads_every`] ticks, the main interpreter's thread list and each
//!   thread's CPU time ([`crate::schedstat`]); a thread whose CPU time grew since the previous
//!   reading has its stack walked too, weighted by the CPU time it used. A thread is known by
//!   its identity, not by its thread state alone (see [`distinct_threads`]).
//!
//! A thread's *busy time* is the larger of its CPU time and its GIL-held time inside the
//! check (a thread can hold the GIL while it is off the CPU: descheduled by a busy machine, or
//! blocked in C code that did not release it). Its *GIL share* is held time over busy time.
//! Work that releases the GIL (system calls, hashing, image filters) uses CPU without holding
//! the GIL: a share near 0. Pure-Python work holds it the whole time: a share near 1.
//!
//! Nothing here waits for the GIL or takes a lock a Python thread could hold, so the sampler
//! cannot deadlock with the interpreter. The sampler thread belongs to the process that started
//! it: after `fork()` the child has no such thread, and [`Sampling::finish`] in the child
//! returns without joining (see the pyo3 layer).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::now_ns;
use crate::event::Frame;
use crate::reader::gil::{GilReader, ThreadIds};
use crate::reader::walk::Walker;
use crate::schedstat;

/// Distinct stacks remembered per thread; later new stacks are counted in no site.
const MAX_STACKS: usize = 256;
/// Innermost frames kept of each sampled stack.
const MAX_FRAMES: usize = 64;
/// The longest gap between two ticks counted as GIL-held time (a sampler starved for longer
/// than this on a busy machine does not inflate anyone's share).
const MAX_TICK_NS: u64 = 100_000_000;
/// How long [`Sampling::start`] waits for the sampler's first reading.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// How the sampler samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Time between two readings of the GIL state.
    pub interval: Duration,
    /// The thread list and CPU times are read every this many ticks.
    pub threads_every: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interval: Duration::from_millis(1),
            threads_every: 5,
        }
    }
}

/// A stack key: `(filename, lineno, function)` per frame, outermost first.
pub type StackKey = Vec<(String, u32, String)>;

/// How often a stack was seen for one thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteWeight {
    /// GIL-held time attributed to this stack (ns).
    pub held_ns: u64,
    /// CPU time attributed to this stack from the thread-list readings (ns).
    pub cpu_ns: u64,
}

/// What the sampler learned about one thread.
#[derive(Clone, Debug, Default)]
pub struct ThreadTally {
    /// `threading.get_ident()`.
    pub ident: u64,
    /// `threading.get_native_id()` (3.11+), the kernel's thread id.
    pub native_tid: Option<u64>,
    /// When the thread was first and last seen (watchdog clock, ns).
    pub first_seen_ns: u64,
    /// See `first_seen_ns`.
    pub last_seen_ns: u64,
    /// Whether it already existed at the first reading of the thread list.
    pub existed_at_start: bool,
    /// GIL-held time (ns), estimated from the ticks that found it holding the GIL.
    pub held_ns: u64,
    /// Ticks that found it holding the GIL.
    pub held_ticks: u64,
    /// First and last CPU-time readings (ns of CPU since the thread started).
    pub cpu_first: Option<u64>,
    /// See `cpu_first`.
    pub cpu_last: Option<u64>,
    /// Sampled stacks and their weights.
    pub stacks: HashMap<StackKey, SiteWeight>,
}

impl ThreadTally {
    /// CPU time used inside the check (ns): a thread born inside counts from 0.
    pub fn cpu_ns(&self) -> Option<u64> {
        let last = self.cpu_last?;
        let first = if self.existed_at_start {
            self.cpu_first?
        } else {
            0
        };
        Some(last.saturating_sub(first))
    }

    fn add_stack(&mut self, frames: Vec<Frame>, w: SiteWeight) {
        let skip = frames.len().saturating_sub(MAX_FRAMES);
        let key: StackKey = frames
            .into_iter()
            .skip(skip)
            .map(|f| (f.filename.to_string(), f.lineno, f.function.to_string()))
            .collect();
        if key.is_empty() || (self.stacks.len() >= MAX_STACKS && !self.stacks.contains_key(&key)) {
            return;
        }
        let e = self.stacks.entry(key).or_default();
        e.held_ns += w.held_ns;
        e.cpu_ns += w.cpu_ns;
    }
}

/// The result of one sampling run.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Start and end (watchdog clock, ns).
    pub start_ns: u64,
    /// See `start_ns`.
    pub end_ns: u64,
    /// GIL readings taken.
    pub ticks: u64,
    /// Readings that failed (the GIL state or a thread list could not be read).
    pub errors: u64,
    /// The threads, keyed by `(PyThreadState*, ident)` (a state's address can be reused by a
    /// later thread).
    pub threads: HashMap<(usize, u64), ThreadTally>,
}

/// One running sampler; [`Sampling::finish`] stops it and returns what it saw.
pub struct Sampling {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Tally>>,
}

impl Sampling {
    /// Starts a sampler thread.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start(gil: GilReader, walker: Walker, settings: Settings) -> Result<Sampling, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = crate::quiet::spawn(
            std::thread::Builder::new().name("loopguard-offload".into()),
            move || run(&gil, walker, settings, &flag, &ready_tx),
        )
        .map_err(|e| format!("cannot start the offload sampler thread: {e}"))?;
        // The first reading of the thread list tells which threads existed before the check:
        // wait for it, so that a thread started right after this returns counts as started
        // inside. The sampler never needs the GIL, so waiting with it held cannot deadlock.
        if ready_rx.recv_timeout(READY_TIMEOUT).is_err() {
            stop.store(true, Ordering::Release);
            return Err("the offload sampler thread did not start within 2 s".into());
        }
        Ok(Sampling {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the sampler and returns its tally (empty if the thread panicked).
    pub fn finish(&mut self) -> Tally {
        self.stop.store(true, Ordering::Release);
        match self.handle.take() {
            Some(h) => h.join().unwrap_or_default(),
            None => Tally::default(),
        }
    }

    /// Forgets the sampler thread without joining it (after `fork()`, in the child, where it
    /// does not exist).
    pub fn abandon(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            std::mem::forget(h);
        }
    }
}

impl Drop for Sampling {
    fn drop(&mut self) {
        // Stop, but do not wait: the Python side joins explicitly with the GIL released.
        self.stop.store(true, Ordering::Release);
    }
}

fn tally_for(tally: &mut Tally, tstate: usize, ids: ThreadIds, now: u64) -> (usize, u64) {
    let key = (tstate, ids.ident);
    let t = tally.threads.entry(key).or_insert_with(|| ThreadTally {
        ident: ids.ident,
        native_tid: ids.native_tid,
        first_seen_ns: now,
        ..ThreadTally::default()
    });
    t.last_seen_ns = now;
    key
}

/// The thread states of one reading of the thread list (`list`: newest first, with their ids)
/// that are running threads' own, oldest first, one per thread identity.
///
/// `threading.Thread.start()` makes the new thread's state in the starting thread, and until
/// the new thread runs and takes it up that state carries the *starting* thread's ids (before
/// 3.12; zeros from 3.12). On a busy machine that lasts several readings: keyed by state alone,
/// the starting thread would be counted twice, the second time as a thread started inside with
/// all the CPU time of its life. A thread's own state is older than any state it made, so the
/// oldest state with an ident is that thread's.
fn distinct_threads(list: Vec<(usize, ThreadIds)>) -> Vec<(usize, ThreadIds)> {
    let mut idents = std::collections::HashSet::new();
    list.into_iter()
        .rev()
        .filter(|(_, ids)| ids.ident != 0 && idents.insert(ids.ident))
        .collect()
}

fn run(
    gil: &GilReader,
    mut walker: Walker,
    settings: Settings,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::Sender<()>,
) -> Tally {
    // Only the innermost frames count here: the rest of a deep stack is neither read nor counted.
    walker.limit_depth(MAX_FRAMES);
    let mut tally = Tally {
        start_ns: now_ns(),
        ..Tally::default()
    };
    let mut prev = tally.start_ns;
    let mut tick: u64 = 0;
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let now = now_ns();
        let dt = now.saturating_sub(prev).min(MAX_TICK_NS);
        prev = now;
        let mut holder_key = None;
        match gil.read() {
            Ok(state) => {
                if let Some(h) = state.holder() {
                    holder_key = gil
                        .thread_ids(h)
                        .ok()
                        .map(|ids| tally_for(&mut tally, h, ids, now));
                    if let Some(key) = holder_key {
                        let frames = walker.stack(h, key.1).unwrap_or_default();
                        if let Some(t) = tally.threads.get_mut(&key) {
                            t.held_ns += dt;
                            t.held_ticks += 1;
                            t.add_stack(
                                frames,
                                SiteWeight {
                                    held_ns: dt,
                                    cpu_ns: 0,
                                },
                            );
                        }
                    }
                }
            }
            Err(_) => tally.errors += 1,
        }
        if tick % u64::from(settings.threads_every.max(1)) == 0 || stopping {
            read_threads(&mut tally, gil, &mut walker, holder_key, now, tick == 0);
        }
        if tick == 0 {
            // The receiver is gone only when start() gave up waiting; keep going until stopped.
            let _ = ready.send(());
        }
        tally.ticks += 1;
        tick += 1;
        if stopping {
            break;
        }
        std::thread::sleep(settings.interval);
    }
    tally.end_ns = now_ns();
    tally
}

/// Reads the thread list and every thread's CPU time; walks the stacks of threads that used
/// CPU since the previous reading (the GIL holder's was walked already).
fn read_threads(
    tally: &mut Tally,
    gil: &GilReader,
    walker: &mut Walker,
    holder: Option<(usize, u64)>,
    now: u64,
    first: bool,
) {
    let Ok(list) = gil.threads() else {
        tally.errors += 1;
        return;
    };
    let list = list
        .into_iter()
        .filter_map(|t| Some((t, gil.thread_ids(t).ok()?)))
        .collect();
    for (tstate, ids) in distinct_threads(list) {
        let key = tally_for(tally, tstate, ids, now);
        let Some(t) = tally.threads.get_mut(&key) else {
            continue;
        };
        if first {
            t.existed_at_start = true;
        }
        let cpu = t
            .native_tid
            .and_then(|tid| schedstat::read(i64::try_from(tid).ok()?));
        let Some(cpu) = cpu.map(|s| s.on_cpu_ns) else {
            continue;
        };
        let before = t
            .cpu_last
            .or(if t.existed_at_start { None } else { Some(0) });
        if t.cpu_first.is_none() {
            t.cpu_first = Some(cpu);
        }
        t.cpu_last = Some(cpu);
        let used = before.map_or(0, |b| cpu.saturating_sub(b));
        if used == 0 || holder == Some(key) {
            continue;
        }
        if let Ok(frames) = walker.stack(tstate, key.1) {
            if let Some(t) = tally.threads.get_mut(&key) {
                t.add_stack(
                    frames,
                    SiteWeight {
                        held_ns: 0,
                        cpu_ns: used,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ident: u64, native_tid: u64) -> ThreadIds {
        ThreadIds {
            ident,
            native_tid: Some(native_tid),
        }
    }

    #[test]
    fn a_state_made_for_a_new_thread_is_not_its_makers_second_entry() {
        // Newest first: 0x30 was made by the thread of 0x10 and still carries its ids (before
        // 3.12); 0x40 is a state not yet taken up on 3.12+ (zeros); 0x20 is another thread.
        let list = vec![
            (0x40, ids(0, 0)),
            (0x30, ids(7, 70)),
            (0x20, ids(8, 80)),
            (0x10, ids(7, 70)),
        ];
        assert_eq!(
            distinct_threads(list),
            vec![(0x10, ids(7, 70)), (0x20, ids(8, 80))]
        );
        // Once the new thread runs, its state carries its own ids and it is listed.
        let list = vec![(0x30, ids(9, 90)), (0x20, ids(8, 80)), (0x10, ids(7, 70))];
        assert_eq!(distinct_threads(list).len(), 3);
    }

    #[test]
    fn born_inside_counts_cpu_from_zero() {
        let mut t = ThreadTally {
            cpu_first: Some(5),
            cpu_last: Some(9),
            ..ThreadTally::default()
        };
        assert_eq!(t.cpu_ns(), Some(9));
        t.existed_at_start = true;
        assert_eq!(t.cpu_ns(), Some(4));
        t.cpu_last = None;
        assert_eq!(t.cpu_ns(), None);
    }

    #[test]
    fn stacks_are_capped_and_keep_the_innermost_frames() {
        let mut t = ThreadTally::default();
        let frames: Vec<Frame> = (0..100)
            .map(|i| Frame {
                filename: "f.py".into(),
                lineno: i,
                function: "g".into(),
            })
            .collect();
        t.add_stack(
            frames,
            SiteWeight {
                held_ns: 3,
                cpu_ns: 0,
            },
        );
        let (key, w) = t.stacks.iter().next().unwrap();
        assert_eq!(key.len(), MAX_FRAMES);
        assert_eq!(key.last().unwrap().1, 99);
        assert_eq!(w.held_ns, 3);
        t.add_stack(Vec::new(), SiteWeight::default());
        assert_eq!(t.stacks.len(), 1);
    }
}
