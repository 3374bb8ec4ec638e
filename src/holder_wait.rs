//! What a starved loop waited for: its GIL holders' wait for a CPU, and its own.
//!
//! A starved loop thread is ready to go on but waits for the GIL; the thread holding the GIL is
//! what keeps it waiting. On a busy machine that holder may itself be runnable but off the CPU
//! (other processes have the CPUs) while it keeps the GIL: then the loop waits, through it, for
//! the machine, not for the holder's code. The loop thread's own run-queue time does not show
//! this (it sleeps on the GIL's condition variable, not on a run queue), so the watchdog reads
//! the *holder's* run-queue time too (see `schedstat`).
//!
//! Each moment of a starved stretch is charged to the thread that had to run for the loop to go
//! on: the GIL holder while another thread held the GIL, the loop thread itself while nobody
//! did (the holder let go, and the loop thread, woken, waits for a CPU to take the GIL). The
//! loop thread's run-queue time while another thread held the GIL is not counted: it could not
//! have run then anyway (and counting it too would count the same moments twice, as both
//! threads may wait for a CPU at once). So the two totals cover disjoint stretches of time and
//! add up.
//!
//! The watchdog does not see every hand-over of the GIL: it looks at a starved stretch from
//! its first look on (an eighth of the threshold in) and then at every interval of
//! `policy::holder_look_interval` (a twentieth of the threshold, 1–10 ms). [`HolderWait`] keeps, per look, the thread it charges:
//!
//! * a thread charged for the first time is read (its run-queue time) at that look;
//! * a thread no longer charged at a later look, or at the stretch's end, is read again, and
//!   the difference is added to its total.
//!
//! So each thread is charged from the look that first found it responsible to the look that
//! found it no longer so (or the end), but for one exception: when a holder lets go, the loop
//! thread is charged from the look before (the latest that saw the holder), since the hand-over
//! happened somewhere after it and the loop thread's wait right after a hand-over (woken, it
//! waits for a CPU to take the GIL) is the one that matters; while another thread holds the GIL
//! the loop thread sleeps, bar its brief wake-ups to ask for the GIL every switch interval, so
//! that interval is counted twice only for those. The approximation, per change: up to one look
//! interval of the old thread's wait after the change is counted (over), and up to one interval
//! of the new holder's wait before the look that finds it is not (under); a holder that held
//! the GIL only between two looks is not seen at all, and the wait before the first look is not
//! counted, except the part of a wait still in progress at the first reading (the kernel adds a
//! wait to the figure when it ends). A holder at the end of the stretch has let go of the GIL,
//! which it needs a CPU for, so its last reading includes all its wait while it held it; one
//! that has exited by then counts up to the last look that saw it holding the GIL (under by up
//! to one interval). The loop thread's last reading is the one it takes itself when it reports
//! the end. The totals are capped at the stretch's length.
//!
//! A holder seen asleep at two looks in a row, and given no CPU in between, slept throughout
//! (in a C call that keeps the GIL: `usleep` through `ctypes.PyDLL`, a driver's blocking read):
//! that stretch is never its wait for a CPU, whatever the kernel's figure says (see
//! `schedstat`), so the holders' total is at most the stretch less those.
//!
//! On 3.11+ a thread state records its kernel thread id; before, the Python layer tells the
//! ids of the threads it sees start ([`remember_tid`]), and a holder not in that table is not
//! measured.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::schedstat::KnownSleep;

/// Most thread ids remembered by [`remember_tid`]; the table is emptied when full.
const MAX_TIDS: usize = 4096;

/// `threading.get_ident()` → kernel thread id, for interpreters whose thread states do not
/// record the latter. Locked only to insert or look up one entry, never while doing I/O or
/// waiting for anything.
static TIDS: Mutex<Option<HashMap<u64, i64>>> = Mutex::new(None);

/// Remembers that the Python thread `ident` is the kernel thread `tid`.
pub fn remember_tid(ident: u64, tid: i64) {
    let mut tids = TIDS.lock();
    let tids = tids.get_or_insert_with(HashMap::new);
    if tids.len() >= MAX_TIDS && !tids.contains_key(&ident) {
        tids.clear();
    }
    tids.insert(ident, tid);
}

/// The kernel thread id [`remember_tid`] was told for `ident`.
pub fn remembered_tid(ident: u64) -> Option<i64> {
    TIDS.lock().as_ref()?.get(&ident).copied()
}

/// A thread holding the GIL, as the watchdog saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HolderId {
    /// `threading.get_ident()` of the holder.
    pub ident: u64,
    /// Its kernel thread id, when known (see the module docs).
    pub tid: Option<i64>,
}

/// What one look at the GIL found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Another thread than the loop's holds the GIL.
    Holder(HolderId),
    /// Nobody holds the GIL, or the loop thread does.
    Nobody,
    /// The GIL state could not be read: the look changes nothing.
    Unknown,
}

/// The thread a moment of the stretch is charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Charged {
    Holder(HolderId),
    Loop,
}

/// The thread being charged: who, and its run-queue time when the charge began and at the last
/// look.
#[derive(Clone, Copy, Debug)]
struct Charge {
    who: Charged,
    /// `None` when its run-queue time could not be read (no tid, no schedstat, gone).
    at: Option<u64>,
    /// The latest reading, used when the thread has exited by the time it is read last.
    last: Option<u64>,
}

/// One thread's total: nanoseconds, and whether anything was measured.
#[derive(Clone, Copy, Debug, Default)]
struct Total {
    ns: u64,
    measured: bool,
}

/// The waits for a CPU over one starved stretch (see the module docs).
#[derive(Clone, Debug)]
pub struct HolderWait {
    /// The loop thread's kernel thread id.
    loop_tid: i64,
    current: Option<Charge>,
    /// The loop thread's run-queue time at the latest look.
    loop_prev: Option<u64>,
    holders: Total,
    own: Total,
    /// Where the holder being charged was seen asleep, since its charge began.
    asleep: KnownSleep,
    /// The same, for the holders charged before it.
    slept_ns: u64,
}

impl HolderWait {
    /// Accounting for a starved stretch of the loop thread `loop_tid`.
    pub fn new(loop_tid: i64) -> HolderWait {
        HolderWait {
            loop_tid,
            current: None,
            loop_prev: None,
            holders: Total::default(),
            own: Total::default(),
            asleep: KnownSleep::default(),
            slept_ns: 0,
        }
    }

    /// Records one look: `seen` is who held the GIL; `read` gives a kernel thread's run-queue
    /// time now (nanoseconds), `None` when it cannot.
    pub fn look(&mut self, seen: Seen, read: impl Fn(i64) -> Option<u64>) {
        let who = match seen {
            Seen::Unknown => return,
            Seen::Nobody => Charged::Loop,
            Seen::Holder(h) => Charged::Holder(h),
        };
        let loop_now = read(self.loop_tid);
        let prev = std::mem::replace(&mut self.loop_prev, loop_now);
        if let Some(c) = self.current.as_mut().filter(|c| c.who == who) {
            let now = match who {
                Charged::Loop => loop_now,
                Charged::Holder(h) => h.tid.and_then(&read),
            };
            if now.is_some() {
                c.last = now;
            }
            return;
        }
        let after_holder = matches!(
            self.current,
            Some(Charge {
                who: Charged::Holder(_),
                ..
            })
        );
        self.close(None, &read);
        let at = match who {
            // The holder let go somewhere since the previous look: the loop thread is charged
            // from there (see the module docs).
            Charged::Loop if after_holder => prev.or(loop_now),
            Charged::Loop => loop_now,
            Charged::Holder(h) => h.tid.and_then(&read),
        };
        self.current = Some(Charge { who, at, last: at });
    }

    /// The stretch ended (or its end was seen): reads the thread being charged one last time;
    /// `loop_at_end` is the loop thread's own reading at the end, when it took one. Later calls
    /// add nothing.
    pub fn end(&mut self, loop_at_end: Option<u64>, read: impl Fn(i64) -> Option<u64>) {
        let Some(c) = self.current else {
            return;
        };
        self.close(loop_at_end, &read);
        if let Charged::Holder(_) = c.who {
            // The last holder let go somewhere since the latest look: the loop thread is
            // charged from there to the end (see the module docs).
            let at_end = loop_at_end.or_else(|| read(self.loop_tid));
            if let Some(d) = at_end
                .zip(self.loop_prev)
                .and_then(|(z, a)| z.checked_sub(a))
            {
                self.own.ns += d;
                self.own.measured = true;
            }
        }
        self.loop_prev = None;
    }

    /// After a [`HolderWait::look`]: whether the holder it charges is asleep, from a look at
    /// it that began at `began` and ended at `ended` (`asleep`: see
    /// [`crate::schedstat::asleep_after`]).
    pub fn note_asleep(&mut self, began: u64, ended: u64, asleep: Option<u64>) {
        if matches!(
            self.current,
            Some(Charge {
                who: Charged::Holder(_),
                ..
            })
        ) {
            self.asleep.look(began, ended, asleep);
        }
    }

    /// [`HolderWait::note_asleep`] from a look at the holder being charged now, if any, with
    /// its kernel thread id known.
    pub fn look_asleep(&mut self, now: impl Fn() -> u64) {
        if let Some(Charge {
            who: Charged::Holder(HolderId { tid: Some(tid), .. }),
            ..
        }) = self.current
        {
            let began = now();
            let asleep = crate::schedstat::asleep_after(tid);
            self.note_asleep(began, now(), asleep);
        }
    }

    fn close(&mut self, loop_at_end: Option<u64>, read: &impl Fn(i64) -> Option<u64>) {
        let Some(c) = self.current.take() else {
            return;
        };
        self.slept_ns += std::mem::take(&mut self.asleep).total_ns;
        let now = match c.who {
            Charged::Loop => loop_at_end.or_else(|| read(self.loop_tid)),
            Charged::Holder(h) => h.tid.and_then(read),
        };
        // A holder that has exited since the last look counts up to that look.
        let (Some(before), Some(after)) = (c.at, now.or(c.last)) else {
            return;
        };
        // A thread id reused by a new thread could read lower: then nothing is known.
        let Some(d) = after.checked_sub(before) else {
            return;
        };
        let total = match c.who {
            Charged::Loop => &mut self.own,
            Charged::Holder(_) => &mut self.holders,
        };
        total.ns += d;
        total.measured = true;
    }

    /// `(holders, own)`: the GIL holders' wait while they held the GIL (at most `limit_ns`, the
    /// stretch's length, less the time they were seen asleep), and the loop thread's while
    /// nobody held it, so far, together at most `limit_ns`; each `None` when nothing was
    /// measured.
    pub fn totals(&self, limit_ns: u64) -> (Option<u64>, Option<u64>) {
        let slept = self.slept_ns + self.asleep.total_ns;
        let holders = self.holders.ns.min(limit_ns.saturating_sub(slept));
        let own = self.own.ns.min(limit_ns - holders);
        (
            self.holders.measured.then_some(holders),
            self.own.measured.then_some(own),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// The loop thread's kernel thread id in these tests.
    const LOOP: i64 = 1;

    /// Fake schedstat readings: run-queue time per tid, changed by the test between looks.
    #[derive(Default)]
    struct Clock(RefCell<HashMap<i64, u64>>);

    impl Clock {
        fn set(&self, tid: i64, ns: u64) {
            self.0.borrow_mut().insert(tid, ns);
        }
        fn read(&self) -> impl Fn(i64) -> Option<u64> + '_ {
            |tid| self.0.borrow().get(&tid).copied()
        }
    }

    fn holder(ident: u64, tid: i64) -> Seen {
        Seen::Holder(HolderId {
            ident,
            tid: Some(tid),
        })
    }

    fn no_tid(ident: u64) -> Seen {
        Seen::Holder(HolderId { ident, tid: None })
    }

    #[test]
    fn one_holder_is_counted_from_its_first_look_to_the_end() {
        let c = Clock::default();
        let mut w = HolderWait::new(LOOP);
        c.set(7, 1_000);
        c.set(LOOP, 0);
        w.look(holder(1, 7), c.read());
        c.set(7, 40_000);
        c.set(LOOP, 300); // the loop thread's wake-ups while 7 holds the GIL: not counted
        w.look(holder(1, 7), c.read());
        assert_eq!(w.totals(u64::MAX), (None, None));
        c.set(7, 150_000);
        // 7 let go after that look; the loop thread, woken, waited 2 000 for a CPU.
        w.end(Some(2_300), c.read());
        assert_eq!(w.totals(u64::MAX), (Some(149_000), Some(2_000)));
        // Ending twice adds nothing more.
        c.set(7, 900_000);
        w.end(None, c.read());
        assert_eq!(w.totals(u64::MAX), (Some(149_000), Some(2_000)));
    }

    #[test]
    fn a_holder_seen_asleep_throughout_was_not_waiting_for_a_cpu_then() {
        let c = Clock::default();
        let mut w = HolderWait::new(LOOP);
        c.set(7, 0);
        c.set(LOOP, 0);
        w.look(holder(1, 7), c.read());
        w.note_asleep(10, 11, Some(3)); // asleep in a C call that keeps the GIL
        w.look(holder(1, 7), c.read());
        w.note_asleep(200_010, 200_011, Some(3)); // still, and given no CPU since
        w.look(holder(1, 7), c.read());
        w.note_asleep(300_000, 300_001, None); // woken
                                               // The kernel charged nearly all of it to the run queue.
        c.set(7, 290_000);
        w.end(Some(0), c.read());
        // At most the 400 000 stretch less the 199 999 known asleep.
        assert_eq!(w.totals(400_000).0, Some(200_001));
        // Without those looks, all of it counts.
        let mut plain = HolderWait::new(LOOP);
        c.set(7, 0);
        plain.look(holder(1, 7), c.read());
        c.set(7, 290_000);
        plain.end(Some(0), c.read());
        assert_eq!(plain.totals(400_000).0, Some(290_000));
    }

    #[test]
    fn each_thread_is_charged_while_it_kept_the_loop_waiting() {
        let c = Clock::default();
        let mut w = HolderWait::new(LOOP);
        c.set(7, 100);
        c.set(8, 5_000);
        c.set(LOOP, 0);
        w.look(holder(1, 7), c.read());
        c.set(7, 600);
        c.set(8, 9_000); // 8 waited before it held the GIL: not counted
        c.set(LOOP, 50); // the loop thread's wake-ups while 7 held the GIL: not counted
        w.look(holder(2, 8), c.read()); // 7 let go: 500 counted
        c.set(8, 12_000);
        c.set(7, 10_000); // 7 waits again, without the GIL: not counted
        c.set(LOOP, 450);
        // 8 let go: its 3 000; the loop thread is charged from the look before (50).
        w.look(Seen::Nobody, c.read());
        c.set(LOOP, 1_150);
        w.look(Seen::Nobody, c.read());
        c.set(LOOP, 1_200);
        w.look(holder(1, 7), c.read()); // the loop's 1 150; 7 again, from 10 000
        c.set(7, 10_250);
        c.set(LOOP, 1_210);
        w.look(holder(1, 7), c.read());
        c.set(7, 10_300);
        c.set(LOOP, 99_999); // after the end: the loop's own end reading is used
        w.end(Some(1_250), c.read()); // 7's 300; the loop's 40 since the latest look
        assert_eq!(
            w.totals(u64::MAX),
            (Some(500 + 3_000 + 300), Some(1_150 + 40))
        );
    }

    #[test]
    fn the_loop_thread_alone_is_charged_when_nobody_holds_the_gil() {
        let c = Clock::default();
        let mut w = HolderWait::new(LOOP);
        c.set(LOOP, 10);
        w.look(Seen::Nobody, c.read());
        c.set(LOOP, 510);
        w.end(None, c.read()); // no reading of its own: the watchdog's
        assert_eq!(w.totals(u64::MAX), (None, Some(500)));
    }

    #[test]
    fn a_holder_that_exited_counts_up_to_the_last_look_that_saw_it() {
        let c = Clock::default();
        let mut w = HolderWait::new(LOOP);
        c.set(7, 1_000);
        w.look(holder(1, 7), c.read());
        c.set(7, 30_000);
        w.look(holder(1, 7), c.read());
        c.set(7, 45_000);
        w.look(holder(1, 7), c.read());
        c.0.borrow_mut().remove(&7); // the thread is gone
        w.end(None, c.read());
        assert_eq!(w.totals(u64::MAX).0, Some(44_000));
    }

    #[test]
    fn an_unreadable_gil_state_changes_nothing() {
        let c = Clock::default();
        let mut w = HolderWait::new(LOOP);
        c.set(7, 0);
        w.look(holder(1, 7), c.read());
        c.set(7, 70);
        w.look(Seen::Unknown, c.read());
        c.set(7, 90);
        w.end(None, c.read());
        assert_eq!(w.totals(u64::MAX).0, Some(90));
    }

    #[test]
    fn holders_that_cannot_be_read_leave_the_wait_unknown() {
        let c = Clock::default();
        let mut w = HolderWait::new(LOOP);
        // No tid (3.10 without the table), then a tid without schedstat (it exited).
        w.look(no_tid(1), c.read());
        w.look(holder(2, 9), c.read());
        w.end(None, c.read());
        assert_eq!(w.totals(u64::MAX), (None, None));
        // A holder whose thread id went to a newer thread (lower reading): not counted.
        c.set(9, 500);
        w.look(holder(2, 9), c.read());
        c.set(9, 20);
        w.end(None, c.read());
        assert_eq!(w.totals(u64::MAX), (None, None));
        // One readable holder among unreadable ones: what is known is counted.
        c.set(9, 100);
        w.look(holder(2, 9), c.read());
        c.set(9, 400);
        w.look(no_tid(3), c.read());
        w.end(None, c.read());
        assert_eq!(w.totals(u64::MAX), (Some(300), None));
    }

    #[test]
    fn the_same_ident_on_another_kernel_thread_is_another_holder() {
        let c = Clock::default();
        let mut w = HolderWait::new(LOOP);
        c.set(7, 0);
        c.set(8, 1_000);
        w.look(holder(1, 7), c.read());
        c.set(7, 50);
        w.look(holder(1, 8), c.read());
        c.set(8, 1_100);
        w.end(None, c.read());
        assert_eq!(w.totals(u64::MAX).0, Some(150));
    }

    #[test]
    fn the_totals_together_are_capped_at_the_stretch() {
        let c = Clock::default();
        let mut w = HolderWait::new(LOOP);
        c.set(7, 0);
        c.set(LOOP, 0);
        w.look(holder(1, 7), c.read());
        c.set(7, 5_000);
        w.look(Seen::Nobody, c.read());
        c.set(LOOP, 2_000);
        w.end(None, c.read());
        assert_eq!(w.totals(u64::MAX), (Some(5_000), Some(2_000)));
        assert_eq!(w.totals(6_000), (Some(5_000), Some(1_000)));
        assert_eq!(w.totals(3_000), (Some(3_000), Some(0)));
    }

    #[test]
    fn thread_ids_told_by_the_python_layer_are_remembered() {
        remember_tid(0xdead_0001, 4242);
        remember_tid(0xdead_0002, 4243);
        remember_tid(0xdead_0001, 4244); // the ident reused by a new thread
        assert_eq!(remembered_tid(0xdead_0001), Some(4244));
        assert_eq!(remembered_tid(0xdead_0002), Some(4243));
        assert_eq!(remembered_tid(0xdead_0003), None);
    }
}
