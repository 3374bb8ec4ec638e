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
//! starts running wakes the watchdog, without waiting for it, only when the watchdog would
//! otherwise sleep past the loop's first look at a stretch (it must know the loop by then);
//! after it learns of a loop it looks at least that often for a while, so loops that start one
//! after another (one per test, one per request) do not wake it. One that stops without a
//! block open does not wake it (see [`Mailbox`]).
//!
//! # Where the code is
//! By thread: `loop_side` holds what a loop thread calls (its registration, [`LoopSlot::busy`],
//! [`LoopSlot::idle`], [`LoopSlot::beat`], [`LoopSlot::unregister`] and the end report), `thread`
//! the watchdog thread ([`Watchdog::start`], checking the loops, sampling a block, finishing its
//! event). This module holds what both share (the [`LoopSlot`] cell, [`Shared`], the [`Mailbox`]
//! and its messages) and the rest of the [`Watchdog`] handle the Python layer holds (threshold,
//! context, taking events, stop). Neither side imports the other.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::clock::now_ns;
use crate::context::{ContextLog, Phase};
use crate::event::{BlockEvent, Frame};
use crate::sampler::Target;

mod loop_side;
mod thread;

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
    /// How many loops are registered and not yet unregistered, parked ones left out (see
    /// [`LoopSlot::park`]).
    registered: AtomicU64,
    /// How many registered loops are parked.
    parked: AtomicU64,
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
    /// When the watchdog thread will next look at the loops at the latest: set before it
    /// sleeps (see [`Mailbox::post_looked_at`]).
    asleep_until: AtomicU64,
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
    /// See [`LoopSlot::park`].
    parked: AtomicBool,
    /// The start of the block the watchdog is watching on this loop, 0 when none: such a
    /// block's end is always reported, whatever the threshold is by then.
    open_block: AtomicU64,
    shared: Arc<Shared>,
    mailbox: Arc<Mailbox>,
    /// When the watchdog read the loop's registration (tests only).
    #[cfg(test)]
    known_at: AtomicU64,
}

impl LoopSlot {
    /// True once the loop is watched by a periodic beat.
    #[inline]
    fn is_beating(&self) -> bool {
        self.beating.load(Ordering::Relaxed)
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
/// registration rings only if the watchdog plans to sleep past the loop's first look (see
/// [`Mailbox::post_looked_at`]): the watchdog first looks at a busy stretch an eighth of a
/// threshold after it began (run-queue time, early samples), which it cannot do for a loop it
/// does not know yet.
///
/// Posting never waits for the watchdog thread, not even for a lock it might hold while a busy
/// machine has it off its CPU (a loop thread that waited 128 ms so, in its own registration,
/// was reported blocked there): the queue is a channel that the watchdog only ever drains
/// without blocking on it (so a send never has a sleeping receiver to wake, which takes the
/// channel's lock), and the doorbell is the watchdog thread's park token (`Thread::unpark`:
/// an atomic swap and, when the thread sleeps, a futex wake).
struct Mailbox {
    queue: Sender<Msg>,
    /// The watchdog thread, once it has started; ringing before that is not needed (it drains
    /// the queue before it first sleeps).
    bell: Arc<OnceLock<std::thread::Thread>>,
    /// How many times the bell was rung (tests only).
    #[cfg(test)]
    rings: AtomicU64,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").finish_non_exhaustive()
    }
}

impl Mailbox {
    fn post(&self, msg: Msg, ring: bool) {
        // Unbounded: never full. Disconnected: the watchdog thread has ended and nobody will
        // read the message.
        let _ = self.queue.send(msg);
        if ring {
            self.ring();
        }
    }

    /// Posts `msg`, which the watchdog must have read by `by`: rung only when it plans to
    /// sleep past that (`asleep_until`, which it sets before it sleeps and then looks at the
    /// queue once more).
    ///
    /// The two fences make the message and the plan meet: either the watchdog's last look at
    /// the queue, after its fence, sees the message, or this thread's read of the plan, after
    /// its fence, sees the plan the watchdog sleeps on (or a later one).
    fn post_looked_at(&self, msg: Msg, by: u64, asleep_until: &AtomicU64) {
        let _ = self.queue.send(msg);
        std::sync::atomic::fence(Ordering::SeqCst);
        if asleep_until.load(Ordering::Relaxed) > by {
            self.ring();
        }
    }

    fn ring(&self) {
        #[cfg(test)]
        self.rings.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = self.bell.get() {
            t.unpark();
        }
    }
}

impl Drop for Mailbox {
    /// The last handle is gone: disconnect the queue, then wake the watchdog so that it sees
    /// it and ends.
    fn drop(&mut self) {
        let (gone, _) = crossbeam_channel::unbounded();
        drop(std::mem::replace(&mut self.queue, gone));
        self.ring();
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
    /// The name of the sampler in use.
    pub fn sampler_name(&self) -> &'static str {
        self.sampler_name
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

    /// How many loops are registered now, parked ones left out (for tests and diagnostics).
    pub fn registered(&self) -> u64 {
        self.shared.registered.load(Ordering::Relaxed)
    }

    /// How many registered loops are parked now (for tests and diagnostics).
    pub fn parked(&self) -> u64 {
        self.shared.parked.load(Ordering::Relaxed)
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

    /// Records that test `test` begins at `at` (its setup is current from then on). Never
    /// waits for the watchdog thread.
    pub fn begin_test(&self, at: u64, test: &str) {
        self.shared.contexts.begin_test(at, test);
    }

    /// Records that phase `phase` of the test begun last is current from now on (`None`: no
    /// test is). Never waits for the watchdog thread.
    pub fn set_phase(&self, phase: Option<Phase>) {
        self.shared.contexts.set_phase(now_ns(), phase);
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

#[cfg(test)]
mod testing {
    //! What the tests of the three modules share: a sampler that records a fixed frame, a
    //! watchdog with it, a loop's target.
    use super::*;
    use crate::clock::ms;
    use crate::event::{Frame, Gil, Sample};
    use crate::sampler::Sampler;
    use std::time::Duration;

    /// A sampler that records nothing but a fixed frame.
    pub(super) struct Fixed;

    impl Sampler for Fixed {
        fn sample(&mut self, _target: &Target, offset_ns: u64) -> Sample {
            Sample::new(
                offset_ns,
                vec![Frame {
                    filename: "app.py".into(),
                    lineno: 7,
                    function: "handler".into(),
                }],
                Gil::Loop,
            )
        }

        fn name(&self) -> &'static str {
            "fixed"
        }
    }

    pub(super) fn start(threshold: u64) -> Watchdog {
        Watchdog::start(threshold, || Ok(Box::new(Fixed) as Box<dyn Sampler>)).unwrap()
    }

    pub(super) fn target() -> Target {
        Target {
            loop_id: 0,
            thread_ident: 1,
            tstate: 0,
            native_tid: 0,
        }
    }

    pub(super) fn ms_d(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Flushes and stops `wd`, asserting that it reported exactly one event.
    pub(super) fn the_only_event(wd: Watchdog) -> BlockEvent {
        let mut events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events.len(), 1, "{events:?}");
        events.remove(0)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{ms_d, start, target, Fixed};
    use super::*;
    use crate::clock::ms;
    use crate::event::Sample;
    use crate::sampler::Sampler;
    use std::thread::sleep;

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

    /// Waits up to 5 s for the watchdog to read `slot`'s registration: when it did.
    fn known_at(slot: &LoopSlot) -> u64 {
        let deadline = std::time::Instant::now() + ms_d(5000);
        loop {
            let at = slot.known_at.load(Ordering::Relaxed);
            if at != 0 || std::time::Instant::now() > deadline {
                return at;
            }
            sleep(ms_d(1));
        }
    }

    #[test]
    fn every_loop_is_known_by_its_first_look_rung_or_not() {
        // A 2 s threshold: a watchdog with no loop to watch sleeps that long, and its first
        // look at a stretch is 250 ms after the stretch began.
        let threshold = ms(2000);
        let wd = start(threshold);
        // Known by the first look (250 ms), with room for a loaded machine's wake-up; a
        // watchdog that slept on would be two seconds late.
        let bound = crate::policy::first_look(threshold) + ms(750);
        sleep(ms_d(100)); // the watchdog sleeps, with nothing to watch
        for round in 0..3 {
            // The first round's loop finds the watchdog asleep for a threshold: it rings. The
            // next ones come while it still looks every first look after the last one.
            for which in ["first", "next"] {
                let registered = now_ns();
                let slot = wd.register("asyncio", "main", target());
                slot.busy();
                let known = known_at(&slot);
                assert_ne!(known, 0, "round {round}: the {which} loop was never known");
                let late = known.saturating_sub(registered);
                assert!(
                    late <= bound,
                    "round {round}: the watchdog knew of the {which} loop {} ms after its \
                     registration",
                    late / 1_000_000
                );
                slot.unregister();
                sleep(ms_d(50));
            }
        }
        wd.stop();
    }

    #[test]
    fn loops_registered_one_after_another_ring_the_watchdog_once() {
        // A loop a tenth of a second, each busy for a moment: the watchdog's first looks
        // come 50 ms after each began, and it would sleep a threshold (400 ms) once the loop
        // is gone, but for the loops that followed it.
        let wd = start(ms(400));
        sleep(ms_d(100));
        let before = wd.mailbox.rings.load(Ordering::Relaxed);
        for _ in 0..10 {
            let slot = wd.register("asyncio", "main", target());
            slot.busy();
            sleep(ms_d(1));
            slot.idle(Some(ms(1)));
            slot.unregister();
            sleep(ms_d(100));
        }
        let rings = wd.mailbox.rings.load(Ordering::Relaxed) - before;
        assert!(
            rings <= 1,
            "10 loops in a row rang the watchdog {rings} times"
        );
        wd.stop();
    }

    #[test]
    fn test_phases_do_not_wake_the_watchdog_and_loops_in_a_row_wake_it_once() {
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
        // The first loop rings; the watchdog then looks every first look (7.5 s here) for a
        // while, and the next loops, knowing that, do not ring. The ring is not waited for,
        // so give the watchdog a moment to answer it.
        let deadline = std::time::Instant::now() + ms_d(2000);
        while wd.wakeups() == before && std::time::Instant::now() < deadline {
            sleep(ms_d(1));
        }
        sleep(ms_d(100));
        let woken = wd.wakeups() - before;
        assert!((1..=2).contains(&woken), "{woken} wake-ups for 50 loops");
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
    fn a_failing_sampler_is_reported_at_start() {
        let r = Watchdog::start(ms(10), || Err("no sampler here".to_string()));
        assert_eq!(r.err().as_deref(), Some("no sampler here"));
    }
}
