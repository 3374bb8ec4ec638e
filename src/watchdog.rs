//! The watchdog: one thread per process that notices when a loop misses its deadline.
//!
//! # How a loop is watched
//! Each registered loop owns a [`LoopSlot`]. The loop thread writes two atomics around its
//! selector call: [`LoopSlot::idle`] just before the selector waits (with the time by which it
//! expects to be back), [`LoopSlot::busy`] as soon as it is back. Nothing else happens on the
//! loop thread, and it never waits for the watchdog.
//!
//! The watchdog thread sleeps until the earliest moment a loop could cross the threshold:
//! `busy_since + threshold` for a busy loop, `wake_by + threshold` for a loop in its selector
//! (a loop that does not come back from its selector in time is *starved*: it is waiting for
//! the GIL). A loop that becomes busy after the watchdog went to sleep cannot cross its
//! threshold before the watchdog's next wake-up, because the watchdog never sleeps longer than
//! one threshold. So detection is late only by the OS wake-up latency.
//!
//! Once a block is detected the watchdog samples the loop thread's stack through a
//! [`Sampler`] at once and then periodically until the loop beats again. The loop thread
//! reports the exact end of every block longer than the threshold over a channel, so the
//! duration is exact even though the watchdog only polls.
//!
//! # Before the threshold
//! The watchdog first looks at a busy stretch an eighth of the threshold after it began
//! ([`first_look`]) and reads the loop thread's run-queue time (see `schedstat`); with a
//! sampler that tags callbacks, it starts sampling at a quarter of the threshold
//! ([`early_sampling`]), so that the callbacks a long stretch began with are seen (see
//! `callbacks`). A stretch that ends under the threshold is forgotten with its early samples;
//! nothing is reported and nobody is told. At the block's end the loop thread reads its
//! run-queue time again, in the cold path that reports the end: the difference is the time the
//! block spent waiting for a CPU. The wait before the first look is not counted, so the figure
//! errs low. From the first look at a *starved* stretch on, the watchdog also reads, every
//! [`holder_look_interval`], which thread holds the GIL and that thread's run-queue time: the
//! part of the starvation the holder spent waiting for a CPU while it kept the GIL was the
//! machine's doing, not its code's (see `holder_wait`).
//!
//! # What a test phase costs
//! Nothing here makes the Python layer wait for the watchdog thread, or even wake it, unless a
//! block is being reported. The current test and phase go into a shared [`ContextLog`] that the
//! watchdog reads only when it attributes a block. Finished blocks are counted:
//! [`Watchdog::take`] returns at once when none is finished and no end report is on its way
//! (`Shared::pending` counts those from the moment a loop thread sends one until the watchdog
//! has turned it into an event), and waits for the watchdog only while one is. A loop that
//! starts running wakes the watchdog once, without waiting for it (the watchdog must know the
//! loop before its first look at a stretch); one that stops without a block open does not wake
//! it (see [`Mailbox`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;

use crate::callbacks::{spans, Timeline};
use crate::clock::now_ns;
use crate::context::ContextLog;
use crate::event::{BlockEvent, Frame, Sample};
use crate::holder_wait::HolderWait;
use crate::policy::{
    early_sampling, first_look, holder_look_interval, longest_sleep, sample_interval, END_GRACE_NS,
};
use crate::sampler::{Sampler, Target};
use crate::schedstat::KnownSleep;
use crate::waited::{Cache, Waited};

/// Most distinct samples kept per block; later ones are folded into the last.
const MAX_SAMPLES: usize = 200;
/// Most frames the samples of a block hold (folded: a deep recursion's stack holds a few); past
/// it later samples are folded into the last, as past [`MAX_SAMPLES`]. Bounds what a block of
/// deep stacks that do not repeat (a 10,000-frame stack every sample) costs: about 40 bytes a
/// frame, so 8 MB.
const MAX_HELD_FRAMES: usize = 200_000;

/// Settings and counters shared between the watchdog, the loop threads and the Python layer.
#[derive(Debug)]
pub struct Shared {
    /// Blocks at least this long are detected and reported (nanoseconds).
    threshold_ns: AtomicU64,
    /// False once the watchdog has stopped; loop threads then stop sending.
    running: AtomicBool,
    /// When set, each detected block (not starvation) is also announced on the notice channel,
    /// for the Python layer to raise an exception in the loop thread ("raise mode").
    notify_blocks: AtomicBool,
    /// How many loops are registered and not yet unregistered.
    registered: AtomicU64,
    /// Messages sent to the watchdog that will each finish a block (an end report, or the
    /// unregistration of a loop with a block open) and that it has not handled yet. Raised by
    /// the sender before it sends, lowered by the watchdog once the event is in `events`.
    pending: AtomicU64,
    /// How many finished events wait in `Watchdog::events` (changed under its lock).
    ready: AtomicU64,
    /// Which test and phase were current when (see [`ContextLog`]).
    contexts: ContextLog,
    /// How many times the watchdog thread has woken up (for tests and diagnostics).
    wakeups: AtomicU64,
}

impl Shared {
    /// The detection threshold in nanoseconds.
    #[inline]
    pub fn threshold_ns(&self) -> u64 {
        self.threshold_ns.load(Ordering::Relaxed)
    }
}

/// The per-loop heartbeat cell, written by the loop thread and read by the watchdog.
#[derive(Debug)]
pub struct LoopSlot {
    /// Unique id of this registration.
    pub id: u64,
    /// What kind of loop this is ("asyncio", "uvloop", ...).
    pub kind: String,
    /// Name of the loop thread at registration.
    pub thread_name: String,
    /// What the sampler needs to read the loop thread.
    pub target: Target,
    /// `(busy_since_ns << 1) | 1` while running callbacks, `(idle_since_ns << 1)` while in the
    /// selector.
    state: AtomicU64,
    /// While idle: the time by which the selector call should have returned.
    wake_by: AtomicU64,
    /// True for loops watched by a periodic beat (see [`LoopSlot::beat`]): a beat that does
    /// not come back in time means the loop was blocked, not starved.
    beating: AtomicBool,
    /// For a beating loop, the interval of its last beat: a block is dated up to this much
    /// after the stretch really began.
    beat_interval: AtomicU64,
    /// Set by the first [`LoopSlot::unregister`]; later calls do nothing.
    unregistered: AtomicBool,
    /// The start of the block the watchdog is watching on this loop, 0 when none: such a
    /// block's end is always reported, whatever the threshold is by then.
    open_block: AtomicU64,
    shared: Arc<Shared>,
    mailbox: Arc<Mailbox>,
}

impl LoopSlot {
    /// Called by the loop thread when it is back from its selector.
    #[inline]
    pub fn busy(&self) {
        let now = now_ns();
        let prev = self.state.swap((now << 1) | 1, Ordering::AcqRel);
        if prev & 1 == 0 {
            // Back from the selector: late by more than the threshold means the loop thread
            // could not get going again (it waited for the GIL).
            let wake_by = self.wake_by.load(Ordering::Relaxed);
            if wake_by != 0 && now > wake_by && self.is_block(wake_by, now) {
                self.report_end(wake_by, now, !self.is_beating());
            }
        }
    }

    /// Called by the loop thread just before its selector waits; `timeout_ns` is how long the
    /// selector may wait (`None`: no limit).
    /// Returns the time it recorded.
    #[inline]
    pub fn idle(&self, timeout_ns: Option<u64>) -> u64 {
        let now = now_ns();
        let wake_by = match timeout_ns {
            Some(t) => now.saturating_add(t),
            None => 0,
        };
        self.wake_by.store(wake_by, Ordering::Relaxed);
        let prev = self.state.swap(now << 1, Ordering::AcqRel);
        self.check_busy_end(prev, now);
        now
    }

    /// Called by a periodic beat on a loop that cannot be hooked at each iteration: the loop
    /// is running callbacks now, and promises to beat again within `interval_ns` unless it is
    /// blocked. A beat that comes back more than the threshold after it was due closes a block
    /// that began when it was due (the true start lies up to one interval earlier).
    #[inline]
    pub fn beat(&self, interval_ns: u64) {
        self.beating.store(true, Ordering::Relaxed);
        self.beat_interval.store(interval_ns, Ordering::Relaxed);
        self.busy();
        self.idle(Some(interval_ns));
    }

    /// True once the loop is watched by a periodic beat.
    #[inline]
    fn is_beating(&self) -> bool {
        self.beating.load(Ordering::Relaxed)
    }

    /// Called by the loop thread when the loop stops running; closes any block in progress.
    pub fn unregister(&self) {
        if self.unregistered.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.registered.fetch_sub(1, Ordering::Relaxed);
        let now = now_ns();
        let prev = self.state.swap(now << 1, Ordering::AcqRel);
        self.wake_by.store(0, Ordering::Relaxed);
        self.check_busy_end(prev, now);
        // Read after the end report (if any) was counted: a block still open now is closed by
        // the unregistration, which then finishes an event like an end report does.
        let closes = self.open_block.load(Ordering::Acquire) != 0;
        // A loop that stops without a block open does not wake the watchdog.
        self.send_counted(
            Msg::Unregister {
                id: self.id,
                closes,
            },
            closes,
        );
    }

    /// True when the stretch from `start` to `now` is a block to report: it reached the
    /// threshold, or the watchdog is already watching it.
    #[inline]
    fn is_block(&self, start: u64, now: u64) -> bool {
        now.saturating_sub(start) >= self.shared.threshold_ns()
            || self.open_block.load(Ordering::Acquire) == start
    }

    #[inline]
    fn check_busy_end(&self, prev: u64, now: u64) {
        if prev & 1 == 1 {
            let start = prev >> 1;
            if self.is_block(start, now) {
                self.report_end(start, now, false);
            }
        }
    }

    #[cold]
    fn report_end(&self, start: u64, end: u64, starved: bool) {
        if !self.shared.running.load(Ordering::Relaxed) {
            return;
        }
        // Read here, on the loop thread, at the end itself: only for blocks over the
        // threshold, never on the per-iteration path.
        let run_queue_ns = crate::schedstat::run_queue_ns(self.target.native_tid)
            .map(|read| run_queue_at(end, read, now_ns()));
        let msg = Msg::End {
            id: self.id,
            start,
            end,
            starved,
            run_queue_ns,
        };
        self.send_counted(msg, true);
    }

    /// Posts `msg` while the watchdog runs; `finishes`: the message will finish an event, so it
    /// is counted in `Shared::pending` until the watchdog has handled it, and it wakes the
    /// watchdog (otherwise the watchdog reads it at its next wake-up).
    fn send_counted(&self, msg: Msg, finishes: bool) {
        if !self.shared.running.load(Ordering::Relaxed) {
            return;
        }
        if finishes {
            self.shared.pending.fetch_add(1, Ordering::AcqRel);
        }
        self.mailbox.post(msg, finishes);
    }

    /// The detection threshold in force.
    #[inline]
    pub fn threshold_ns(&self) -> u64 {
        self.shared.threshold_ns()
    }

    /// True while the loop is still in the busy stretch that began at `start`.
    pub fn is_busy_since(&self, start: u64) -> bool {
        let (busy, since, _) = self.snapshot();
        busy && since == start
    }

    /// For a beating loop: true while it still has not beaten since the beat due at `start`
    /// (it is somewhere in a long stretch, but which callback is not known).
    pub fn is_late_since(&self, start: u64) -> bool {
        let (busy, _, wake_by) = self.snapshot();
        self.is_beating() && !busy && wake_by == start
    }

    /// Reads `(busy, since, wake_by)` consistently.
    fn snapshot(&self) -> (bool, u64, u64) {
        loop {
            let s1 = self.state.load(Ordering::Acquire);
            let w = self.wake_by.load(Ordering::Relaxed);
            let s2 = self.state.load(Ordering::Acquire);
            if s1 == s2 {
                return (s1 & 1 == 1, s1 >> 1, w);
            }
        }
    }
}

/// A block just detected: the loop's slot and the block's start (watchdog clock).
pub type BlockNotice = (Arc<LoopSlot>, u64);

/// The watchdog thread's in-tray: messages in the order they were posted, and a doorbell.
///
/// A message that nobody waits for and that cannot make a block late to detect or judge is
/// posted without ringing; others ring, so the watchdog handles them at once. A loop's
/// registration rings: the watchdog first looks at a busy stretch an eighth of a threshold after
/// it began (run-queue time, early samples), which it cannot do for a loop it does not know yet.
/// Ringing never makes the poster wait. The queue's lock is held only to push one message or to take
/// them all, never while waiting for anything (the GIL included).
struct Mailbox {
    queue: Arc<Mutex<Vec<Msg>>>,
    /// Rung by [`Mailbox::post`]; holds at most one ring, so ringing never blocks.
    bell: Sender<()>,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").finish_non_exhaustive()
    }
}

impl Mailbox {
    fn post(&self, msg: Msg, ring: bool) {
        self.queue.lock().push(msg);
        if ring {
            // Full: a ring is already waiting, which is as good. Disconnected: the watchdog
            // thread has ended and nobody will read the message.
            let _: Result<(), TrySendError<()>> = self.bell.try_send(());
        }
    }
}

/// Messages to the watchdog thread.
enum Msg {
    Register(Arc<LoopSlot>),
    Unregister {
        id: u64,
        /// Counted in `Shared::pending` (the loop had a block open).
        closes: bool,
    },
    End {
        id: u64,
        start: u64,
        end: u64,
        starved: bool,
        /// The loop thread's run-queue time at the end, when the kernel reports it.
        run_queue_ns: Option<u64>,
    },
    Annotate {
        id: u64,
        start: u64,
        task_name: String,
        await_chain: Vec<Frame>,
    },
    Flush(Sender<()>),
    Stop,
}

/// A block being watched: from the first look at a stretch (see the module docs), confirmed
/// once it lasts the threshold.
struct Block {
    start: u64,
    starved: bool,
    threshold: u64,
    /// True once the stretch has lasted its threshold; until then it may still be forgotten.
    confirmed: bool,
    context: Arc<str>,
    samples: Vec<Sample>,
    /// The callbacks the samples were taken in.
    timeline: Timeline,
    /// The loop thread's run-queue time at the first look.
    run_queue_at_look: Option<u64>,
    /// Where the loop thread was seen asleep throughout: never a wait for a CPU (see
    /// `schedstat`).
    slept: KnownSleep,
    /// For a starved stretch: the GIL holders' wait for a CPU, and the loop thread's own while
    /// nobody held the GIL (see `holder_wait`).
    holder_wait: Option<HolderWait>,
    captured_after: Option<u64>,
    next_sample: u64,
    /// When the watchdog saw the loop beat again (if it did before the end report arrived).
    seen_end: Option<u64>,
    /// The asyncio task that was running, if someone could tell (see [`Watchdog::annotate`]).
    task_name: Option<String>,
    /// That task's await chain, when the loop thread's stack did not reach it.
    await_chain: Vec<Frame>,
    /// What the loop thread's system call waited on at the block's last sample, kept while
    /// the call and its descriptor stay the same (see `waited`).
    waited: Cache,
}

struct Watched {
    slot: Arc<LoopSlot>,
    /// The stretch in progress, once the watchdog has looked at it.
    block: Option<Block>,
    /// A stretch that has ended and may have reached the threshold: it waits for the loop
    /// thread's end report (see [`Runner::on_end`]), or is closed `END_GRACE_NS` after its end
    /// was seen. Kept apart so that the stretch after it is watched meanwhile.
    ended: Option<Block>,
}

/// A running watchdog. Dropping it does not stop the thread; call [`Watchdog::stop`].
pub struct Watchdog {
    shared: Arc<Shared>,
    notices: Receiver<BlockNotice>,
    mailbox: Arc<Mailbox>,
    events: Arc<Mutex<Vec<BlockEvent>>>,
    next_id: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
    sampler_name: &'static str,
}

impl Watchdog {
    /// Starts the watchdog thread with a sampler built on that thread by `make_sampler`.
    ///
    /// # Errors
    /// Returns the thread-spawn error or the sampler's start-up error; the thread reports its
    /// start-up over a channel before it begins watching, so a failure reaches the caller.
    pub fn start<F>(threshold_ns: u64, make_sampler: F) -> Result<Watchdog, String>
    where
        F: FnOnce() -> Result<Box<dyn Sampler>, String> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            threshold_ns: AtomicU64::new(threshold_ns.max(1)),
            running: AtomicBool::new(true),
            notify_blocks: AtomicBool::new(false),
            registered: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            contexts: ContextLog::new(),
            wakeups: AtomicU64::new(0),
        });
        let queue = Arc::new(Mutex::new(Vec::new()));
        let (bell, rung) = crossbeam_channel::bounded(1);
        let mailbox = Arc::new(Mailbox {
            queue: Arc::clone(&queue),
            bell,
        });
        // Bounded: if nobody consumes notices, the watchdog drops them rather than queue.
        let (notice_tx, notice_rx) = crossbeam_channel::bounded(64);
        let events = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<&'static str, String>>(1);
        let thread_shared = Arc::clone(&shared);
        let thread_events = Arc::clone(&events);
        let slice = crate::sched::watchdog_slice_from_env();
        let handle = std::thread::Builder::new()
            .name("loopguard-watchdog".into())
            .spawn(move || {
                // Wake up on time even when the machine is busy (see sched.rs).
                if let Some(ns) = slice {
                    crate::sched::request_slice(ns);
                }
                let sampler = match make_sampler() {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(s.name()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                Runner::new(
                    thread_shared,
                    queue,
                    rung,
                    thread_events,
                    sampler,
                    notice_tx,
                )
                .run();
            })
            .map_err(|e| format!("cannot start the loopguard watchdog thread: {e}"))?;
        let sampler_name = match ready_rx.recv() {
            Ok(Ok(name)) => name,
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => {
                let _ = handle.join();
                return Err("the loopguard watchdog thread died during start-up".into());
            }
        };
        Ok(Watchdog {
            shared,
            notices: notice_rx,
            mailbox,
            events,
            next_id: AtomicU64::new(1),
            thread: Mutex::new(Some(handle)),
            sampler_name,
        })
    }

    /// The name of the sampler in use.
    pub fn sampler_name(&self) -> &'static str {
        self.sampler_name
    }

    /// Registers a loop; call from the loop thread when it starts running.
    pub fn register(&self, kind: &str, thread_name: &str, target: Target) -> Arc<LoopSlot> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(LoopSlot {
            id,
            kind: kind.to_owned(),
            thread_name: thread_name.to_owned(),
            target: Target {
                loop_id: id,
                ..target
            },
            state: AtomicU64::new((now_ns() << 1) | 1),
            wake_by: AtomicU64::new(0),
            beating: AtomicBool::new(false),
            beat_interval: AtomicU64::new(0),
            unregistered: AtomicBool::new(false),
            open_block: AtomicU64::new(0),
            shared: Arc::clone(&self.shared),
            mailbox: Arc::clone(&self.mailbox),
        });
        self.shared.registered.fetch_add(1, Ordering::Relaxed);
        if self.shared.running.load(Ordering::Relaxed) {
            // Rung (see `Mailbox`): the watchdog must know the loop before its first look at a
            // stretch, an eighth of a threshold after it begins.
            self.mailbox.post(Msg::Register(Arc::clone(&slot)), true);
        }
        slot
    }

    /// Turns block notices on or off (see [`Watchdog::notices`]).
    pub fn set_notify_blocks(&self, on: bool) {
        self.shared.notify_blocks.store(on, Ordering::Relaxed);
    }

    /// Where detected blocks are announced while notices are on: the loop's slot and the start
    /// of the block. The receiver must never hold a lock a loop thread needs.
    pub fn notices(&self) -> Receiver<BlockNotice> {
        self.notices.clone()
    }

    /// Names the asyncio task of the block that began at `start` on loop `loop_id`, with its
    /// await chain (outermost first; empty when the loop thread's stack shows it), if that
    /// block is still being watched.
    pub fn annotate(&self, loop_id: u64, start: u64, task_name: String, await_chain: Vec<Frame>) {
        let msg = Msg::Annotate {
            id: loop_id,
            start,
            task_name,
            await_chain,
        };
        self.mailbox.post(msg, true);
    }

    /// How many loops are registered now (for tests and diagnostics).
    pub fn registered(&self) -> u64 {
        self.shared.registered.load(Ordering::Relaxed)
    }

    /// How many times the watchdog thread has woken up so far (for tests and diagnostics).
    pub fn wakeups(&self) -> u64 {
        self.shared.wakeups.load(Ordering::Relaxed)
    }

    /// Sets the detection threshold.
    pub fn set_threshold_ns(&self, ns: u64) {
        self.shared.threshold_ns.store(ns.max(1), Ordering::Relaxed);
    }

    /// The detection threshold.
    pub fn threshold_ns(&self) -> u64 {
        self.shared.threshold_ns()
    }

    /// Records that `context` is current from now on. Never waits for the watchdog thread
    /// (see [`ContextLog`]).
    pub fn set_context(&self, context: &str) {
        self.shared.contexts.set(now_ns(), context);
    }

    /// Takes the finished events, the blocks whose end was reported before this call included:
    /// returns at once when no end report is on its way; otherwise waits (up to `timeout_ns`)
    /// for the watchdog to handle the reports sent so far. Unlike [`Watchdog::flush`], blocks
    /// that ended without an end report are left to the watchdog (it closes them within
    /// `END_GRACE_NS`). Never call while holding a lock a loop thread needs (the Python layer
    /// releases the GIL around it when [`Watchdog::take_now`] says it must wait).
    pub fn take(&self, timeout_ns: u64) -> Vec<BlockEvent> {
        match self.take_now() {
            Some(events) => events,
            None => self.flush(timeout_ns),
        }
    }

    /// [`Watchdog::take`] without waiting: `None` when an end report is on its way (then call
    /// `take`). Costs two atomic loads when nothing has finished.
    pub fn take_now(&self) -> Option<Vec<BlockEvent>> {
        if self.shared.pending.load(Ordering::Acquire) != 0 {
            return None;
        }
        if self.shared.ready.load(Ordering::Acquire) == 0 {
            return Some(Vec::new());
        }
        Some(self.take_ready())
    }

    fn take_ready(&self) -> Vec<BlockEvent> {
        let mut events = self.events.lock();
        self.shared.ready.store(0, Ordering::Release);
        std::mem::take(&mut *events)
    }

    /// Waits (up to `timeout_ns`) until the watchdog has handled every message sent before this
    /// call, then takes the finished events. Never call while holding a lock a loop thread needs
    /// (the Python layer releases the GIL around it).
    pub fn flush(&self, timeout_ns: u64) -> Vec<BlockEvent> {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        if self.shared.running.load(Ordering::Relaxed) {
            self.mailbox.post(Msg::Flush(done_tx), true);
            let _ = done_rx.recv_timeout(std::time::Duration::from_nanos(timeout_ns));
        }
        self.take_ready()
    }

    /// Stops the watchdog thread and waits for it. Idempotent.
    pub fn stop(&self) {
        self.shared.running.store(false, Ordering::Relaxed);
        self.mailbox.post(Msg::Stop, true);
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
    }

    /// In a forked child, where the watchdog thread does not exist: makes every handle on this
    /// watchdog (loop slots included) a no-op from now on, without waiting for anything.
    pub fn abandon(&self) {
        self.shared.running.store(false, Ordering::Relaxed);
    }

    /// True until [`Watchdog::stop`] is called.
    pub fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::Relaxed)
    }
}

/// The loop thread's run-queue time at `end`, from a reading of it (`read`) that finished at
/// `read_done`. A loop thread that reads its schedstat on a busy machine can wait for a CPU
/// inside that read (a system call, a preemption point): after the block's end, so not the
/// block's. All the read's time is taken off, as if it all were such a wait: the figure errs
/// low, as its start does (the first look is an eighth of the threshold in), and never counts
/// a wait the block's duration does not hold (a 300 ms sleep was once excused as 200 ms of
/// waiting for a CPU).
fn run_queue_at(end: u64, read: u64, read_done: u64) -> u64 {
    read.saturating_sub(read_done.saturating_sub(end))
}

/// The watchdog thread's state. Owned by that thread alone: no locks but the event list.
struct Runner {
    shared: Arc<Shared>,
    /// The mailbox's queue; `rung` is its doorbell (disconnected once every `Mailbox` is gone).
    queue: Arc<Mutex<Vec<Msg>>>,
    rung: Receiver<()>,
    events: Arc<Mutex<Vec<BlockEvent>>>,
    sampler: Box<dyn Sampler>,
    /// Names what a blocked system call waits on.
    waited: Waited,
    loops: HashMap<u64, Watched>,
    next_event: u64,
    notices: Sender<BlockNotice>,
}

impl Runner {
    fn new(
        shared: Arc<Shared>,
        queue: Arc<Mutex<Vec<Msg>>>,
        rung: Receiver<()>,
        events: Arc<Mutex<Vec<BlockEvent>>>,
        sampler: Box<dyn Sampler>,
        notices: Sender<BlockNotice>,
    ) -> Runner {
        Runner {
            shared,
            queue,
            rung,
            events,
            sampler,
            waited: Waited::new(),
            loops: HashMap::new(),
            next_event: 1,
            notices,
        }
    }

    fn run(&mut self) {
        let mut batch = Vec::new();
        loop {
            // Everything posted so far, in order (the lock is held only for the swap).
            std::mem::swap(&mut batch, &mut *self.queue.lock());
            for msg in batch.drain(..) {
                if !self.handle(msg) {
                    return;
                }
            }
            let now = now_ns();
            let wake_at = self.check(now);
            let timeout = std::time::Duration::from_nanos(wake_at.saturating_sub(now_ns()));
            match self.rung.recv_timeout(timeout) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.shared.wakeups.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Handles one message; false means stop.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Register(slot) => {
                self.loops.insert(
                    slot.id,
                    Watched {
                        slot,
                        block: None,
                        ended: None,
                    },
                );
            }
            Msg::Unregister { id, closes } => {
                if let Some(w) = self.loops.remove(&id) {
                    // The exact end reports (if any) were sent before the unregistration.
                    for b in [w.ended, w.block].into_iter().flatten() {
                        if b.confirmed {
                            let end = b.seen_end.unwrap_or_else(now_ns);
                            self.finish(&w.slot, b, end, false, None);
                        }
                    }
                }
                if closes {
                    self.shared.pending.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Msg::End {
                id,
                start,
                end,
                starved,
                run_queue_ns,
            } => {
                self.on_end(id, start, end, starved, run_queue_ns);
                self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            }
            Msg::Annotate {
                id,
                start,
                task_name,
                await_chain,
            } => {
                if let Some(w) = self.loops.get_mut(&id) {
                    let mut watched = [w.block.as_mut(), w.ended.as_mut()].into_iter().flatten();
                    if let Some(b) = watched.find(|b| b.start == start) {
                        b.task_name = Some(task_name);
                        b.await_chain = await_chain;
                    }
                }
            }
            Msg::Flush(done) => {
                // Blocks whose end was seen but not reported are closed now.
                let now = now_ns();
                self.close_stale(now, 0);
                let _ = done.send(());
            }
            Msg::Stop => return false,
        }
        self.shared.running.load(Ordering::Relaxed)
    }

    fn context_at(&self, t: u64) -> Arc<str> {
        self.shared.contexts.at(t)
    }

    fn on_end(&mut self, id: u64, start: u64, end: u64, starved: bool, run_queue: Option<u64>) {
        let Some(w) = self.loops.get_mut(&id) else {
            return;
        };
        let slot = Arc::clone(&w.slot);
        let watched = if w.ended.as_ref().is_some_and(|b| b.start == start) {
            w.ended.take()
        } else if w.block.as_ref().is_some_and(|b| b.start == start) {
            w.block.take()
        } else {
            None
        };
        match watched {
            Some(mut b) => {
                // Over the threshold, even if the watchdog had not confirmed it yet.
                if b.captured_after.is_none() {
                    b.captured_after = b.samples.first().map(|s| s.offset_ns);
                }
                self.finish(&slot, b, end, true, run_queue);
            }
            None => {
                // A block the watchdog did not see in time (it ended right at the threshold):
                // report it without a stack.
                let threshold = self.shared.threshold_ns();
                let b = Block {
                    start,
                    starved,
                    threshold,
                    confirmed: true,
                    context: self.context_at(start),
                    samples: Vec::new(),
                    timeline: Timeline::default(),
                    run_queue_at_look: None,
                    slept: KnownSleep::default(),
                    holder_wait: None,
                    captured_after: None,
                    next_sample: 0,
                    seen_end: None,
                    task_name: None,
                    await_chain: Vec::new(),
                    waited: None,
                };
                self.finish(&slot, b, end, true, None);
            }
        }
    }

    /// Reports block `b`, which ended at `end`; `run_queue` is the loop thread's run-queue time
    /// at the end, when it reported the end itself.
    fn finish(
        &mut self,
        slot: &LoopSlot,
        mut b: Block,
        end: u64,
        exact: bool,
        run_queue: Option<u64>,
    ) {
        // Another block of this loop may be open (see `on_end`): only this one is closed.
        let _ = slot
            .open_block
            .compare_exchange(b.start, 0, Ordering::AcqRel, Ordering::Relaxed);
        let id = self.next_event;
        self.next_event += 1;
        let end = end.max(b.start);
        // No more than the block holds outside the time its thread was seen asleep.
        let mut cpu_wait_ns = match (b.run_queue_at_look, run_queue) {
            (Some(a), Some(z)) => Some(
                z.saturating_sub(a)
                    .min((end - b.start).saturating_sub(b.slept.total_ns)),
            ),
            _ => None,
        };
        let mut holder_cpu_wait_ns = None;
        if let Some(h) = b.holder_wait.as_mut() {
            // Read now unless the watchdog saw the end itself (and read then): the end report
            // is handled as soon as it comes.
            h.end(run_queue, crate::schedstat::run_queue_ns);
            let (holders, own) = h.totals(end - b.start);
            if holders.is_some() || own.is_some() {
                // Starvation: the loop thread's wait counts only while nobody held the GIL
                // (see `holder_wait`).
                holder_cpu_wait_ns = holders;
                cpu_wait_ns = own.or(holders.map(|_| 0));
            }
        }
        let mut samples = b.samples;
        crate::native_stack::resolve(samples.iter_mut().map(|s| &mut s.native));
        // Spans mean something only when some sample was seen inside a callback (a sampler
        // that cannot tag, or a block in the loop's own machinery, leaves none).
        let any_callback = b.timeline.runs().iter().any(|r| r.tag.is_some());
        let callbacks = if b.starved || !any_callback {
            for s in &mut samples {
                s.callback = None;
            }
            Vec::new()
        } else {
            let slack = if slot.is_beating() {
                slot.beat_interval.load(Ordering::Relaxed)
            } else {
                0
            };
            let (spans, run_span) = spans(b.timeline.runs(), end - b.start, slack);
            for s in &mut samples {
                s.callback = s.callback.and_then(|r| run_span.get(r as usize).copied());
            }
            spans
        };
        let ev = BlockEvent {
            id,
            loop_id: slot.id,
            loop_kind: slot.kind.clone(),
            thread_ident: slot.target.thread_ident,
            thread_name: slot.thread_name.clone(),
            context: b.context.to_string(),
            start_ns: b.start,
            end_ns: end,
            duration_ns: end - b.start,
            threshold_ns: b.threshold,
            starved: b.starved,
            captured_after_ns: b.captured_after,
            end_exact: exact,
            task_name: b
                .task_name
                .or_else(|| samples.iter().find_map(|s| s.task_name.clone())),
            await_chain: b.await_chain,
            cpu_wait_ns,
            holder_cpu_wait_ns,
            callbacks,
            samples,
        };
        let mut events = self.events.lock();
        events.push(ev);
        self.shared
            .ready
            .store(events.len() as u64, Ordering::Release);
    }

    /// Closes blocks whose end the watchdog saw more than `grace` ago without an end report.
    fn close_stale(&mut self, now: u64, grace: u64) {
        let stale: Vec<u64> = self
            .loops
            .iter()
            .filter(|(_, w)| {
                w.ended
                    .as_ref()
                    .and_then(|b| b.seen_end)
                    .is_some_and(|t| now.saturating_sub(t) >= grace)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            let w = self.loops.get_mut(&id).expect("present");
            let b = w.ended.take().expect("present");
            if !b.confirmed {
                // No end report came: the stretch ended under the threshold.
                continue;
            }
            let slot = Arc::clone(&w.slot);
            let end = b.seen_end.unwrap_or(now);
            self.finish(&slot, b, end, false, None);
        }
    }

    /// Looks at every loop; samples blocked ones. Returns when to look again.
    fn check(&mut self, now: u64) -> u64 {
        let threshold = self.shared.threshold_ns();
        let interval = sample_interval(threshold);
        let tags = self.sampler.tags_callbacks();
        // Never sleep longer than one threshold (see the module docs).
        let mut wake_at = now + longest_sleep(threshold);
        let mut stale = false;
        // The earliest start of a stretch not attributed yet (see `ContextLog`): a stretch
        // that begins from now on cannot begin earlier than `now`.
        let mut horizon = now;
        let mut superseded = Vec::new();
        for w in self.loops.values_mut() {
            let (busy, since, wake_by) = w.slot.snapshot();
            // The moment from which the loop counts as stuck, and whether it is starved.
            let stuck_from = if busy {
                Some((since, false))
            } else if wake_by != 0 {
                Some((wake_by, !w.slot.is_beating()))
            } else {
                None
            };
            if let Some((s, _)) = stuck_from {
                if w.block.as_ref().is_none_or(|b| b.start != s) {
                    horizon = horizon.min(s);
                }
            }
            if let Some(b) = w.block.as_mut() {
                let still = stuck_from.is_some_and(|(s, st)| s == b.start && st == b.starved);
                let deadline = b.start.saturating_add(b.threshold);
                if let Some(h) = b.holder_wait.as_mut() {
                    // Starved: who holds the GIL now; or the stretch is over and its last
                    // holder has let go.
                    if still {
                        h.look(
                            self.sampler.gil_holder(&w.slot.target),
                            crate::schedstat::run_queue_ns,
                        );
                    } else {
                        h.end(None, crate::schedstat::run_queue_ns);
                    }
                }
                if still {
                    if !b.starved {
                        b.slept.look_at(w.slot.target.native_tid, now_ns);
                    }
                    if !b.confirmed && now >= deadline {
                        b.confirmed = true;
                        w.slot.open_block.store(b.start, Ordering::Release);
                        let mut s = self.sampler.sample(&w.slot.target, now - b.start);
                        add_native(&mut s, &w.slot.target, b.starved);
                        // Counted when the sample is in hand: a sampler that had to wait (for
                        // the GIL) must not look punctual.
                        b.captured_after = Some(now_ns().saturating_sub(b.start));
                        add_object(&self.waited, &mut s, &mut b.waited, b.starved);
                        observe(b, s);
                        b.next_sample = now_ns() + interval;
                        if !b.starved && self.shared.notify_blocks.load(Ordering::Relaxed) {
                            let _ = self.notices.try_send((Arc::clone(&w.slot), b.start));
                        }
                    } else if now >= b.next_sample && (b.confirmed || (tags && !b.starved)) {
                        let mut s = self.sampler.sample(&w.slot.target, now - b.start);
                        if b.confirmed {
                            add_native(&mut s, &w.slot.target, b.starved);
                            add_object(&self.waited, &mut s, &mut b.waited, b.starved);
                        }
                        observe(b, s);
                        b.next_sample = now_ns() + interval;
                    }
                    wake_at = wake_at.min(if b.confirmed || (tags && !b.starved) {
                        b.next_sample
                            .min(if b.confirmed { u64::MAX } else { deadline })
                    } else {
                        deadline
                    });
                    if b.starved {
                        // Who holds the GIL is looked at more often (see `holder_wait`).
                        wake_at = wake_at.min(now_ns() + holder_look_interval(threshold));
                    }
                    continue;
                }
                // The stretch ended, at or before the loop's last change of state (`since`).
                // Under the threshold for sure: forget it (the loop thread reports no end).
                let under = !b.confirmed
                    && (now_ns() < deadline
                        || since.saturating_sub(b.start) < b.threshold.min(threshold));
                let mut b = w.block.take().expect("present");
                if !under {
                    // Its end report decides (or the grace period runs out), while the
                    // stretch after it is watched as any other.
                    b.seen_end.get_or_insert(now);
                    if let Some(old) = w.ended.replace(b).filter(|old| old.confirmed) {
                        // Two ended stretches in a row without an end report: the older one
                        // is closed at the end the watchdog saw.
                        let end = old.seen_end.unwrap_or(now);
                        superseded.push((Arc::clone(&w.slot), old, end));
                    }
                    stale = true;
                    wake_at = wake_at.min(now + END_GRACE_NS);
                }
            }
            let Some((start, starved)) = stuck_from else {
                continue;
            };
            let deadline = start.saturating_add(threshold);
            let look = start.saturating_add(first_look(threshold));
            if now < look {
                wake_at = wake_at.min(look);
                continue;
            }
            let confirmed = now >= deadline;
            let early_samples = tags && !starved;
            let run_queue_at_look = crate::schedstat::run_queue_ns(w.slot.target.native_tid);
            let mut slept = KnownSleep::default();
            if !starved {
                slept.look_at(w.slot.target.native_tid, now_ns);
            }
            let context = self.shared.contexts.at(start);
            if confirmed {
                w.slot.open_block.store(start, Ordering::Release);
            }
            let mut holder_wait = starved.then(|| HolderWait::new(w.slot.target.native_tid));
            if let Some(h) = holder_wait.as_mut() {
                h.look(
                    self.sampler.gil_holder(&w.slot.target),
                    crate::schedstat::run_queue_ns,
                );
            }
            let mut b = Block {
                start,
                starved,
                threshold,
                confirmed,
                context,
                samples: Vec::new(),
                timeline: Timeline::default(),
                run_queue_at_look,
                slept,
                holder_wait,
                captured_after: None,
                next_sample: start.saturating_add(early_sampling(threshold)),
                seen_end: None,
                task_name: None,
                await_chain: Vec::new(),
                waited: None,
            };
            if confirmed || (early_samples && now >= b.next_sample) {
                let t0 = now_ns();
                let mut s = self
                    .sampler
                    .sample(&w.slot.target, t0.saturating_sub(start));
                if confirmed {
                    add_native(&mut s, &w.slot.target, starved);
                    b.captured_after = Some(now_ns().saturating_sub(start));
                    add_object(&self.waited, &mut s, &mut b.waited, starved);
                }
                observe(&mut b, s);
                b.next_sample = now_ns() + interval;
            }
            if confirmed || early_samples {
                wake_at = wake_at.min(b.next_sample);
            }
            if !confirmed {
                wake_at = wake_at.min(deadline);
            }
            if starved {
                wake_at = wake_at.min(now_ns() + holder_look_interval(threshold));
            }
            if confirmed && !starved && self.shared.notify_blocks.load(Ordering::Relaxed) {
                let _ = self.notices.try_send((Arc::clone(&w.slot), start));
            }
            w.block = Some(b);
        }
        for (slot, b, end) in superseded {
            self.finish(&slot, b, end, false, None);
        }
        if stale {
            self.close_stale(now, END_GRACE_NS);
        }
        self.shared.contexts.set_horizon(horizon);
        wake_at
    }
}

/// Adds sample `s` to block `b`, noting the callback it shows in the block's timeline.
fn observe(b: &mut Block, mut s: Sample) {
    s.callback = if s.error.is_none() && !s.frames.is_empty() {
        Some(b.timeline.observe(s.callback_tag, s.offset_ns))
    } else {
        // Unreadable: it says nothing about which callback ran.
        None
    };
    s.fold();
    push_sample(&mut b.samples, s);
}

/// Adds the loop thread's native frames to `s`, a sample of a confirmed block, when they are
/// asked for (see `native_stack`). Not for starvation: the loop thread is only waiting for the
/// GIL then.
fn add_native(s: &mut Sample, target: &Target, starved: bool) {
    if starved || !crate::native_stack::enabled() {
        return;
    }
    s.native.raw = Some(if s.late {
        crate::native_stack::RawStack {
            ips: Vec::new(),
            note: Some(crate::native_stack::NEEDS_READER.into()),
        }
    } else {
        crate::native_stack::capture(target.native_tid)
    });
}

/// Names what the system call of `s`, a sample of a confirmed block, waited on (see `waited`),
/// after the stack is in hand. Not for starvation, nor for a sample taken while another thread
/// held the GIL: the loop thread's call is then its wait for the GIL.
fn add_object(waited: &Waited, s: &mut Sample, cache: &mut Cache, starved: bool) {
    if starved || s.gil == crate::event::Gil::Other {
        return;
    }
    s.syscall_object = waited.describe(s.kernel, cache);
}

fn push_sample(samples: &mut Vec<Sample>, s: Sample) {
    let full = samples.len() >= MAX_SAMPLES
        || samples.iter().map(Sample::frames_held).sum::<usize>() + s.frames_held()
            > MAX_HELD_FRAMES;
    if let Some(last) = samples.last_mut() {
        if full || last.same_content(&s) {
            last.count += 1;
            return;
        }
    }
    samples.push(s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ms;
    use crate::event::{Frame, Gil};
    use std::thread::sleep;
    use std::time::Duration;

    /// A sampler that records nothing but a fixed frame.
    struct Fixed;

    impl Sampler for Fixed {
        fn sample(&mut self, _target: &Target, offset_ns: u64) -> Sample {
            Sample {
                offset_ns,
                count: 1,
                frames: vec![Frame {
                    filename: "app.py".into(),
                    lineno: 7,
                    function: "handler".into(),
                }],
                repeats: Vec::new(),
                gil: Gil::Loop,
                holder: None,
                late: false,
                error: None,
                task_name: None,
                syscall: None,
                syscall_object: None,
                kernel: None,
                running: false,
                callback_tag: None,
                callback: None,
                native: Default::default(),
            }
        }

        fn name(&self) -> &'static str {
            "fixed"
        }
    }

    /// A sampler that tags each sample with the callback the test says is running.
    struct Tagging(Arc<AtomicU64>);

    impl Sampler for Tagging {
        fn sample(&mut self, target: &Target, offset_ns: u64) -> Sample {
            let tag = self.0.load(Ordering::SeqCst);
            Sample {
                callback_tag: (tag != 0).then_some(tag),
                ..Fixed.sample(target, offset_ns)
            }
        }

        fn name(&self) -> &'static str {
            "tagging"
        }

        fn tags_callbacks(&self) -> bool {
            true
        }
    }

    fn start_tagging(threshold: u64) -> (Watchdog, Arc<AtomicU64>) {
        let current = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&current);
        let wd = Watchdog::start(threshold, move || {
            Ok(Box::new(Tagging(c)) as Box<dyn Sampler>)
        })
        .unwrap();
        (wd, current)
    }

    /// Runs `callbacks` callbacks of `each` in one busy stretch, telling the sampler which.
    fn run_callbacks(slot: &LoopSlot, current: &AtomicU64, callbacks: &[(u64, u64)]) {
        slot.busy();
        for &(tag, each_ms) in callbacks {
            current.store(tag, Ordering::SeqCst);
            sleep(ms_d(each_ms));
        }
        current.store(0, Ordering::SeqCst);
        slot.idle(Some(ms(10)));
    }

    #[test]
    fn a_stretch_under_the_threshold_is_forgotten_with_its_early_samples() {
        let (wd, current) = start_tagging(ms(100));
        let slot = wd.register("asyncio", "main", target());
        // Long enough for the first look (25 ms) and a few samples, short of 100 ms.
        run_callbacks(&slot, &current, &[(1, 30), (2, 30)]);
        sleep(ms_d(300));
        let events = wd.flush(ms(2000));
        wd.stop();
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn early_samples_show_the_callbacks_a_block_began_with() {
        let (wd, current) = start_tagging(ms(100));
        let slot = wd.register("asyncio", "main", target());
        let many: Vec<(u64, u64)> = (1..=30).map(|i| (i, 8)).collect();
        run_callbacks(&slot, &current, &many);
        let ev = &the_only_event(wd);
        // Sampled from a quarter of the threshold on: well before the threshold.
        assert!(ev.samples[0].offset_ns < ms(90), "{:?}", ev.samples[0]);
        assert!(ev.callbacks.len() >= 3, "{:?}", ev.callbacks);
        assert!(ev.callbacks.iter().all(|c| c.in_callback));
        // Every sample points at its callback, in order.
        let idx: Vec<u32> = ev.samples.iter().filter_map(|s| s.callback).collect();
        assert!(idx.windows(2).all(|w| w[0] <= w[1]), "{idx:?}");
        assert_eq!(*idx.last().unwrap() as usize, ev.callbacks.len() - 1);
        // The longest could not have been longer than the gap around it; the threshold is far.
        let longest = ev.callbacks.iter().map(|c| c.max_ns).max().unwrap();
        assert!(longest < ms(100), "{:?}", ev.callbacks);
    }

    #[test]
    fn one_long_callback_is_bounded_below_by_its_samples() {
        let (wd, current) = start_tagging(ms(50));
        let slot = wd.register("asyncio", "main", target());
        run_callbacks(&slot, &current, &[(1, 5), (2, 5), (3, 200), (4, 5)]);
        let events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events.len(), 1, "{events:?}");
        let long = ev_longest(&events[0]);
        assert!(long.min_ns >= ms(100), "{:?}", events[0].callbacks);
        assert!(long.max_ns >= ms(200), "{:?}", events[0].callbacks);
    }

    fn ev_longest(ev: &BlockEvent) -> &crate::event::Span {
        ev.callbacks.iter().max_by_key(|c| c.max_ns).unwrap()
    }

    #[test]
    fn a_sampler_that_cannot_tag_samples_from_the_threshold_as_before() {
        let wd = start(ms(100));
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        sleep(ms_d(160));
        slot.idle(None);
        let events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events.len(), 1);
        assert!(events[0].samples[0].offset_ns >= ms(100));
        assert!(events[0].callbacks.is_empty());
    }

    #[cfg(linux_full)]
    #[test]
    fn the_wait_for_a_cpu_is_measured_from_the_first_look_to_the_end() {
        if !crate::schedstat::available() {
            eprintln!("no schedstat on this kernel");
            return;
        }
        let wd = Arc::new(start(ms(100)));
        let stop = Arc::new(AtomicBool::new(false));
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0);
        let spinner = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                crate::schedstat::tests::pin_to(cpu);
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let loop_thread = {
            let wd = Arc::clone(&wd);
            std::thread::spawn(move || {
                crate::schedstat::tests::pin_to(cpu);
                // SAFETY: gettid has no preconditions.
                let tid = i64::from(unsafe { libc::gettid() });
                let slot = wd.register(
                    "asyncio",
                    "main",
                    Target {
                        native_tid: tid,
                        ..target()
                    },
                );
                slot.busy();
                let t = std::time::Instant::now();
                while t.elapsed() < ms_d(300) {
                    std::hint::spin_loop();
                }
                slot.idle(None);
                slot.unregister();
            })
        };
        loop_thread.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        let events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events.len(), 1, "{events:?}");
        let wait = events[0].cpu_wait_ns.expect("measured");
        // About half of the 275 ms after the first look; the spinner had the CPU the rest.
        assert!(wait > ms(60) && wait < events[0].duration_ns, "{wait}");
    }

    /// A sampler that reports the thread the test names as the GIL holder (tid 0: nobody).
    #[cfg(linux_full)]
    struct Holding(Arc<std::sync::atomic::AtomicI64>);

    #[cfg(linux_full)]
    impl Sampler for Holding {
        fn sample(&mut self, target: &Target, offset_ns: u64) -> Sample {
            Fixed.sample(target, offset_ns)
        }

        fn name(&self) -> &'static str {
            "holding"
        }

        fn gil_holder(&mut self, _target: &Target) -> crate::holder_wait::Seen {
            use crate::holder_wait::{HolderId, Seen};
            match self.0.load(Ordering::SeqCst) {
                0 => Seen::Nobody,
                tid => Seen::Holder(HolderId {
                    ident: 2,
                    tid: Some(tid),
                }),
            }
        }
    }

    #[cfg(linux_full)]
    #[test]
    fn a_starved_loop_counts_its_gil_holders_wait_for_a_cpu() {
        if !crate::schedstat::available() {
            eprintln!("no schedstat on this kernel");
            return;
        }
        let holder = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let wd = {
            let holder = Arc::clone(&holder);
            Watchdog::start(ms(100), move || {
                Ok(Box::new(Holding(holder)) as Box<dyn Sampler>)
            })
            .unwrap()
        };
        let stop = Arc::new(AtomicBool::new(false));
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0);
        let spinner = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                crate::schedstat::tests::pin_to(cpu);
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        // The loop waits in its selector for 1 ms and does not come back until the "holder"
        // has run 300 ms of wall time on a CPU it shares with the spinner.
        let slot = wd.register("asyncio", "main", target());
        slot.idle(Some(ms(1)));
        let h = Arc::clone(&holder);
        std::thread::spawn(move || {
            crate::schedstat::tests::pin_to(cpu);
            // SAFETY: gettid has no preconditions.
            h.store(i64::from(unsafe { libc::gettid() }), Ordering::SeqCst);
            let t = std::time::Instant::now();
            while t.elapsed() < ms_d(300) {
                std::hint::spin_loop();
            }
            h.store(0, Ordering::SeqCst);
        })
        .join()
        .unwrap();
        slot.busy();
        slot.idle(None);
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        let ev = the_only_event(wd);
        assert!(ev.starved, "{ev:?}");
        let wait = ev.holder_cpu_wait_ns.expect("measured");
        // About half of the ~285 ms after the first look; the spinner had the CPU the rest.
        assert!(wait > ms(60) && wait < ev.duration_ns, "{wait} of {ev:?}");
    }

    #[test]
    fn blocks_and_unknown_holders_have_no_holder_wait() {
        let wd = start(ms(50));
        let slot = wd.register("asyncio", "main", target());
        slot.idle(Some(ms(1)));
        sleep(ms_d(150));
        slot.busy();
        sleep(ms_d(150));
        slot.idle(None);
        let events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events[0].starved && !events[1].starved, "{events:?}");
        // The sampler cannot tell who holds the GIL; a block is not starvation.
        assert!(events.iter().all(|e| e.holder_cpu_wait_ns.is_none()));
    }

    fn start(threshold: u64) -> Watchdog {
        Watchdog::start(threshold, || Ok(Box::new(Fixed) as Box<dyn Sampler>)).unwrap()
    }

    fn target() -> Target {
        Target {
            loop_id: 0,
            thread_ident: 1,
            tstate: 0,
            native_tid: 0,
        }
    }

    fn ms_d(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Flushes and stops `wd`, asserting that it reported exactly one event.
    fn the_only_event(wd: Watchdog) -> BlockEvent {
        let mut events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events.len(), 1, "{events:?}");
        events.remove(0)
    }

    #[test]
    fn a_long_busy_stretch_is_one_event_with_exact_duration() {
        let wd = start(ms(50));
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        sleep(ms_d(200));
        slot.idle(Some(ms(10)));
        let ev = &the_only_event(wd);
        assert!(!ev.starved);
        assert!(ev.end_exact);
        assert!(
            ev.duration_ns >= ms(200) && ev.duration_ns < ms(1000),
            "{ev:?}"
        );
        // Sampled while blocked, at (or after) the threshold.
        let cap = ev.captured_after_ns.expect("sampled");
        assert!(cap >= ms(50) && cap < ev.duration_ns, "{ev:?}");
        assert_eq!(&*ev.samples[0].frames[0].function, "handler");
        assert_eq!(ev.thread_name, "main");
    }

    #[test]
    fn a_block_right_after_a_short_stretch_is_sampled() {
        // A sampler without early samples sleeps until the first stretch's deadline and then
        // finds the loop in another stretch: the first one ended under the threshold (it ended
        // before the second began, 60 ms after it started) and must not hide the block.
        let wd = start(ms(100));
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        sleep(ms_d(60));
        slot.idle(Some(ms(1)));
        slot.busy();
        sleep(ms_d(200));
        slot.idle(Some(ms(10)));
        let ev = &the_only_event(wd);
        assert!(ev.duration_ns >= ms(200), "{ev:?}");
        let cap = ev.captured_after_ns.expect("sampled while it lasted");
        assert!(cap < ev.duration_ns, "{ev:?}");
        assert!(!ev.samples.is_empty(), "{ev:?}");
    }

    #[test]
    fn short_busy_stretches_make_no_event() {
        let wd = start(ms(100));
        let slot = wd.register("asyncio", "main", target());
        for _ in 0..5 {
            slot.busy();
            sleep(ms_d(10));
            slot.idle(Some(ms(1)));
        }
        let events = wd.flush(ms(2000));
        wd.stop();
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn an_idle_loop_waiting_long_is_not_blocked() {
        let wd = start(ms(30));
        let slot = wd.register("asyncio", "main", target());
        slot.idle(None);
        sleep(ms_d(150));
        slot.busy();
        slot.idle(None);
        let events = wd.flush(ms(2000));
        wd.stop();
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn a_loop_late_back_from_its_selector_is_starved() {
        let wd = start(ms(50));
        let slot = wd.register("asyncio", "main", target());
        slot.idle(Some(ms(10)));
        sleep(ms_d(200));
        slot.busy();
        slot.idle(None);
        let events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].starved);
        assert!(events[0].duration_ns >= ms(150), "{events:?}");
    }

    #[test]
    fn a_late_beat_is_a_block_from_when_it_was_due() {
        let wd = start(ms(50));
        let slot = wd.register("uvloop", "main", target());
        slot.beat(ms(10));
        sleep(ms_d(200));
        slot.beat(ms(10));
        let events = wd.flush(ms(1000));
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert!(!e.starved);
        // Dated from when the beat was due: 10 ms after the first beat.
        assert!(
            e.duration_ns >= ms(185) && e.duration_ns < ms(400),
            "{}",
            e.duration_ns
        );
        assert!(e.captured_after_ns.is_some());
        slot.unregister();
    }

    #[test]
    fn an_event_belongs_to_the_context_where_it_began() {
        let wd = start(ms(50));
        wd.set_context("call\u{1f}test_a");
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        sleep(ms_d(120));
        wd.set_context("teardown\u{1f}test_a");
        slot.idle(None);
        let events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].context, "call\u{1f}test_a");
    }

    #[test]
    fn unregistering_closes_a_block_in_progress() {
        let wd = start(ms(50));
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        sleep(ms_d(150));
        assert_eq!(wd.registered(), 1);
        slot.unregister();
        slot.unregister(); // a second call does nothing
        assert_eq!(wd.registered(), 0);
        let events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].duration_ns >= ms(150));
    }

    #[test]
    fn block_notices_are_sent_only_when_asked_for() {
        let wd = start(ms(30));
        let notices = wd.notices();
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        sleep(ms_d(80));
        slot.idle(None);
        assert!(notices.try_recv().is_err());
        wd.set_notify_blocks(true);
        slot.busy();
        sleep(ms_d(80));
        let (noticed, start) = notices.recv_timeout(ms_d(2000)).expect("a notice");
        assert_eq!(noticed.id, slot.id);
        assert!(slot.is_busy_since(start));
        slot.idle(None);
        assert!(!slot.is_busy_since(start));
        wd.stop();
    }

    #[test]
    fn a_block_can_be_annotated_with_its_task_while_it_lasts() {
        let wd = start(ms(30));
        wd.set_notify_blocks(true);
        let notices = wd.notices();
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        let (noticed, start) = notices.recv_timeout(ms_d(2000)).expect("a notice");
        wd.annotate(noticed.id, start, "Task-7".into(), Vec::new());
        wd.annotate(noticed.id, start + 1, "wrong block".into(), Vec::new());
        sleep(ms_d(20));
        slot.idle(None);
        let events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events[0].task_name.as_deref(), Some("Task-7"));
    }

    /// A sampler that holds the watchdog thread until told to go on (like the GIL fallback
    /// waiting for the GIL).
    struct Stuck(Receiver<()>);

    impl Sampler for Stuck {
        fn sample(&mut self, target: &Target, offset_ns: u64) -> Sample {
            let _ = self.0.recv_timeout(ms_d(10_000));
            Fixed.sample(target, offset_ns)
        }

        fn name(&self) -> &'static str {
            "stuck"
        }
    }

    #[test]
    fn phases_without_a_finished_block_never_wait_for_the_watchdog() {
        let (go_tx, go_rx) = crossbeam_channel::bounded(0);
        let wd = Watchdog::start(ms(30), move || {
            Ok(Box::new(Stuck(go_rx)) as Box<dyn Sampler>)
        })
        .unwrap();
        // A loop in another thread blocks; the watchdog thread is now inside the sampler.
        let slot = wd.register("asyncio", "bg", target());
        slot.busy();
        sleep(ms_d(100));
        // Meanwhile test phases go on: switching the context and taking events do not wait.
        let t0 = std::time::Instant::now();
        for i in 0..1000 {
            wd.set_context(&format!("call\u{1f}test_{i}"));
            assert!(wd.take_now().expect("nothing on its way").is_empty());
        }
        assert!(t0.elapsed() < ms_d(1000), "{:?}", t0.elapsed());
        // The block ends: its report is on its way, so taking now must wait for it.
        slot.idle(None);
        assert!(wd.take_now().is_none());
        go_tx.send(()).unwrap();
        let events = wd.take(ms(5000));
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].context, "", "began before the first test");
        assert!(wd.take_now().expect("nothing left").is_empty());
        drop(go_tx);
        wd.stop();
    }

    #[test]
    fn a_wait_while_the_loop_thread_reads_its_schedstat_is_not_the_blocks() {
        // Read at once: the reading stands.
        assert_eq!(run_queue_at(1_000, 50_000, 1_000), 50_000);
        // The read took 200 ms (the thread waited for a CPU in it): none of that is the block's.
        assert_eq!(run_queue_at(1_000, 250_000_000, 200_001_000), 50_000_000);
        // Never below nothing.
        assert_eq!(run_queue_at(1_000, 10, 5_000), 0);
    }

    #[test]
    fn test_phases_do_not_wake_the_watchdog_and_loops_wake_it_once_each() {
        // The watchdog sleeps up to one threshold between looks: a long one here.
        let wd = start(ms(60_000));
        wd.flush(ms(5000));
        // The flush's ring may still be on its way (the watchdog can take the flush with a
        // batch before it reads the ring): let the count settle first.
        let mut before = wd.wakeups();
        loop {
            sleep(ms_d(100));
            let now = wd.wakeups();
            if now == before {
                break;
            }
            before = now;
        }
        for i in 0..50 {
            wd.set_context(&format!("setup\u{1f}test_{i}"));
            wd.set_context(&format!("call\u{1f}test_{i}"));
            assert!(wd.take_now().expect("nothing on its way").is_empty());
            wd.set_context(&format!("teardown\u{1f}test_{i}"));
        }
        assert_eq!(wd.wakeups(), before, "a test phase woke the watchdog");
        for i in 0..50 {
            wd.set_context(&format!("call\u{1f}loop_{i}"));
            let slot = wd.register("asyncio", "main", target());
            slot.busy();
            slot.idle(Some(ms(1)));
            slot.busy();
            slot.unregister();
            assert!(wd.take_now().expect("nothing on its way").is_empty());
        }
        // At most one wake-up per loop (rings that come while it is awake merge); the rings
        // are not waited for, so give the watchdog a moment to answer them.
        let deadline = std::time::Instant::now() + ms_d(2000);
        while wd.wakeups() == before && std::time::Instant::now() < deadline {
            sleep(ms_d(1));
        }
        let woken = wd.wakeups() - before;
        assert!((1..=50).contains(&woken), "{woken} wake-ups for 50 loops");
        wd.flush(ms(5000));
        assert_eq!(wd.registered(), 0);
        wd.stop();
    }

    #[test]
    fn a_block_ended_before_take_is_taken_with_its_context() {
        let wd = start(ms(50));
        wd.set_context("call\u{1f}test_a");
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        sleep(ms_d(120));
        slot.idle(None);
        wd.set_context("teardown\u{1f}test_a");
        // The end report was sent before this call: take() returns the block.
        let events = wd.take(ms(5000));
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].context, "call\u{1f}test_a");
        assert!(events[0].end_exact);
        // Short stretches make nothing to take, and nothing to wait for.
        slot.busy();
        slot.idle(None);
        assert!(wd.take_now().expect("nothing on its way").is_empty());
        wd.stop();
    }

    #[test]
    fn a_block_outlives_thousands_of_context_switches() {
        let wd = start(ms(300));
        wd.set_context("call\u{1f}test_0");
        let slot = wd.register("asyncio", "bg", target());
        slot.busy();
        // Many short tests run while the loop in another thread is blocked.
        for i in 1..=5000 {
            wd.set_context(&format!("call\u{1f}test_{i}"));
        }
        sleep(ms_d(450));
        slot.idle(None);
        let events = wd.take(ms(5000));
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].context, "call\u{1f}test_0");
        wd.stop();
    }

    #[test]
    fn the_watchdog_keeps_the_context_of_a_stretch_it_has_not_judged_yet() {
        let wd = start(ms(60_000));
        wd.set_context("call\u{1f}test_0");
        let slot = wd.register("asyncio", "bg", target());
        slot.busy();
        let (_, since, _) = slot.snapshot();
        // Wait for the watchdog to look at the loop and publish its horizon.
        let t0 = std::time::Instant::now();
        while wd.shared.contexts.len() < 2 || horizon(&wd) == 0 || horizon(&wd) > since {
            assert!(t0.elapsed() < ms_d(5000), "no horizon at or before {since}");
            sleep(ms_d(5));
        }
        // Switches long after the grace period cannot drop the context in force at `since`.
        for i in 1..=100 {
            wd.shared
                .contexts
                .set(since + i * ms(60_000), &format!("call\u{1f}test_{i}"));
        }
        assert_eq!(&*wd.shared.contexts.at(since), "call\u{1f}test_0");
        slot.unregister();
        wd.stop();
    }

    fn horizon(wd: &Watchdog) -> u64 {
        wd.shared.contexts.horizon()
    }

    #[test]
    fn a_watched_block_is_reported_exactly_even_if_the_threshold_rose_meanwhile() {
        let wd = start(ms(40));
        wd.set_notify_blocks(true);
        let notices = wd.notices();
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        notices.recv_timeout(ms_d(5000)).expect("detected");
        wd.set_threshold_ns(ms(10_000));
        slot.idle(None);
        let events = wd.take(ms(5000));
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].end_exact, "{events:?}");
        wd.stop();
    }

    #[test]
    fn unregistering_a_loop_with_a_block_open_is_waited_for() {
        let wd = start(ms(30));
        let slot = wd.register("asyncio", "main", target());
        // Idle past its deadline: a starved loop, whose unregistration sends no end report.
        slot.idle(Some(ms(1)));
        let t0 = std::time::Instant::now();
        while slot.open_block.load(Ordering::Acquire) == 0 {
            assert!(t0.elapsed() < ms_d(5000), "never detected");
            sleep(ms_d(5));
        }
        slot.unregister();
        let events = wd.take(ms(5000));
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].starved);
        wd.stop();
    }

    #[test]
    fn a_failing_sampler_is_reported_at_start() {
        let r = Watchdog::start(ms(10), || Err("no sampler here".to_string()));
        assert_eq!(r.err().as_deref(), Some("no sampler here"));
    }

    /// A sample of a recursion `depth` deep, blocked at line `line`.
    fn deep_sample(depth: usize, line: u32) -> Sample {
        let f = |lineno: u32, function: &str| Frame {
            filename: "app.py".into(),
            lineno,
            function: function.into(),
        };
        let mut s = Fixed.sample(&target(), 0);
        s.frames = std::iter::once(f(3, "test"))
            .chain((0..depth).map(|_| f(10, "dig")))
            .chain([f(line, "dig")])
            .collect();
        s
    }

    #[test]
    fn samples_of_a_deep_recursion_are_stored_folded() {
        let mut b = Vec::new();
        for i in 0..3 {
            let mut s = deep_sample(3000, 8);
            s.offset_ns = i;
            let whole = s.frames.clone();
            s.fold();
            assert_eq!(s.frames.len(), 3);
            assert_eq!(crate::deep::unfold(&s.frames, &s.repeats), whole);
            push_sample(&mut b, s);
        }
        // Identical deep samples stay one, counted.
        assert_eq!((b.len(), b[0].count), (1, 3));
        let mut other = deep_sample(3000, 9);
        other.fold();
        push_sample(&mut b, other);
        assert_eq!(b.len(), 2);
        let json = serde_json::to_string(&b[0]).unwrap();
        assert!(
            json.contains(r#""repeats":[{"at":1,"frames":1,"times":3000}]"#),
            "{json}"
        );
        assert!(json.len() < 1000, "{}", json.len());
    }

    #[test]
    fn the_frames_a_block_holds_are_bounded() {
        let mut b = Vec::new();
        // Deep stacks that do not repeat: each sample holds all its frames.
        let distinct = |line: u32| {
            let mut s = Fixed.sample(&target(), 0);
            s.frames = (0..10_000u32)
                .map(|i| Frame {
                    filename: "app.py".into(),
                    lineno: i,
                    function: "f".into(),
                })
                .chain([Frame {
                    filename: "app.py".into(),
                    lineno: line,
                    function: "g".into(),
                }])
                .collect();
            s.fold();
            s
        };
        for line in 0..100 {
            push_sample(&mut b, distinct(line));
        }
        let held: usize = b.iter().map(Sample::frames_held).sum();
        assert!(held <= MAX_HELD_FRAMES, "{held}");
        assert_eq!(b.len(), MAX_HELD_FRAMES / 10_001);
        // Every sample is still counted, in the last one kept.
        assert_eq!(b.iter().map(|s| s.count).sum::<u32>(), 100);
    }

    #[test]
    fn consecutive_identical_samples_are_folded() {
        let mut v = Vec::new();
        let mut f = Fixed;
        for i in 0..5 {
            push_sample(&mut v, f.sample(&target(), i));
        }
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].count, 5);
    }
}
