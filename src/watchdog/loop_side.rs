//! The loop thread's side of the watchdog: what a loop thread calls, and nothing that waits for
//! the watchdog thread. Registering a loop ([`Watchdog::register`]); its heartbeat around the
//! selector ([`LoopSlot::busy`], [`LoopSlot::idle`]) or its periodic beat ([`LoopSlot::beat`]);
//! the end report of a block over the threshold, read and sent from the loop thread at the end
//! itself; [`LoopSlot::unregister`] when the loop stops.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::{LoopSlot, Msg, Watchdog};
use crate::clock::now_ns;
use crate::policy::first_look;
use crate::sampler::Target;

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

    /// Called by the loop thread when the loop stops running but is likely to run again (a
    /// test's loop runs once for each fixture and for the test): the loop stays registered,
    /// idle with no limit on its wait (so never late), and is not counted as registered until
    /// [`LoopSlot::resume`]. Closes any block in progress, as [`LoopSlot::unregister`] does.
    /// The loop's thread may end meanwhile: nothing reads a parked loop's thread, and the
    /// caller resumes a loop only on the very thread it was registered on.
    pub fn park(&self) {
        if self.unregistered.load(Ordering::Acquire) || self.parked.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.registered.fetch_sub(1, Ordering::Relaxed);
        self.shared.parked.fetch_add(1, Ordering::Relaxed);
        self.idle(None);
    }

    /// Called by the loop thread when a parked loop runs again: busy from now on.
    pub fn resume(&self) {
        if self.parked.swap(false, Ordering::AcqRel) {
            self.shared.parked.fetch_sub(1, Ordering::Relaxed);
            self.shared.registered.fetch_add(1, Ordering::Relaxed);
        }
        self.busy();
    }

    /// True between [`LoopSlot::park`] and [`LoopSlot::resume`] or [`LoopSlot::unregister`].
    #[inline]
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Relaxed)
    }

    /// True while this slot is registered with `wd` (not with a watchdog stopped since, or a
    /// forked parent's).
    pub fn is_registered_with(&self, wd: &Watchdog) -> bool {
        Arc::ptr_eq(&self.shared, &wd.shared) && !self.unregistered.load(Ordering::Acquire)
    }

    /// Called by the loop thread when the loop stops running (or, parked, when it is closed or
    /// freed); closes any block in progress.
    pub fn unregister(&self) {
        if self.unregistered.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.parked.swap(false, Ordering::AcqRel) {
            self.shared.parked.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.shared.registered.fetch_sub(1, Ordering::Relaxed);
        }
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
}

impl Watchdog {
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
            parked: AtomicBool::new(false),
            open_block: AtomicU64::new(0),
            shared: Arc::clone(&self.shared),
            mailbox: Arc::clone(&self.mailbox),
            #[cfg(test)]
            known_at: AtomicU64::new(0),
        });
        self.shared.registered.fetch_add(1, Ordering::Relaxed);
        if self.shared.running.load(Ordering::Relaxed) {
            // The watchdog must know the loop before its first look at a stretch, an eighth of
            // a threshold after it begins: rung only if it would sleep past that (see
            // `policy::after_registration`).
            let by = now_ns().saturating_add(first_look(self.shared.threshold_ns()));
            self.mailbox.post_looked_at(
                Msg::Register(Arc::clone(&slot)),
                by,
                &self.shared.asleep_until,
            );
        }
        slot
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

#[cfg(test)]
mod tests {
    use super::super::testing::{ms_d, start, target};
    use super::*;
    use crate::clock::ms;
    use std::thread::sleep;

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
    fn parking_closes_a_block_in_progress_and_a_parked_loop_never_blocks() {
        let wd = start(ms(50));
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        sleep(ms_d(150));
        slot.park();
        slot.park(); // a second call does nothing
        assert_eq!((wd.registered(), wd.parked()), (0, 1));
        assert!(slot.is_parked() && slot.is_registered_with(&wd));
        // Parked far longer than the threshold: not a block, not a starved loop.
        sleep(ms_d(200));
        let events = wd.flush(ms(2000));
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].duration_ns >= ms(150) && events[0].duration_ns < ms(340));
        // Resumed, it is watched again.
        slot.resume();
        assert_eq!((wd.registered(), wd.parked()), (1, 0));
        sleep(ms_d(150));
        slot.idle(None);
        let events = wd.flush(ms(2000));
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].duration_ns >= ms(150) && events[0].duration_ns < ms(340));
        // Unregistered while parked: counted once.
        slot.park();
        slot.unregister();
        slot.unregister();
        slot.park();
        assert_eq!((wd.registered(), wd.parked()), (0, 0));
        assert!(!slot.is_parked() && !slot.is_registered_with(&wd));
        let other = start(ms(50));
        let slot = other.register("asyncio", "main", target());
        assert!(slot.is_registered_with(&other) && !slot.is_registered_with(&wd));
        wd.stop();
        other.stop();
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
    fn a_wait_while_the_loop_thread_reads_its_schedstat_is_not_the_blocks() {
        // Read at once: the reading stands.
        assert_eq!(run_queue_at(1_000, 50_000, 1_000), 50_000);
        // The read took 200 ms (the thread waited for a CPU in it): none of that is the block's.
        assert_eq!(run_queue_at(1_000, 250_000_000, 200_001_000), 50_000_000);
        // Never below nothing.
        assert_eq!(run_queue_at(1_000, 10, 5_000), 0);
    }
}
