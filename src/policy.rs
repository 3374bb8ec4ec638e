//! Timing policy: every moment and interval the crate derives from the detection threshold,
//! and the fixed grace periods, in one place.
//!
//! All of them trade detection slack against cost. The threshold `T` is the only promise made
//! to the user (a block of `T` or more is reported); everything else is chosen so that the
//! promise holds on a loaded machine while a loop that never blocks costs next to nothing:
//!
//! | when / how often                              | value          | used by                  |
//! |-----------------------------------------------|----------------|--------------------------|
//! | longest watchdog sleep                        | `T`            | `watchdog`               |
//! | first look at a busy stretch                  | `T/8`          | `watchdog`, `schedstat`  |
//! | longest watchdog sleep after a registration   | `T/8`, for `8T`| `watchdog`               |
//! | early sampling (callback tagging)             | `T/4`          | `watchdog`, `callbacks`  |
//! | sampling interval of a block                  | `T/5`, 2–50 ms | `watchdog`               |
//! | GIL holder looks while starved                | `T/20`, 1–10 ms| `watchdog`, `holder_wait`|
//! | longest selector wait (hooked loops)          | `T/2`, ≥ 1 ms  | `python::hooks`          |
//! | beat interval (loops without a hook: uvloop)  | `T/10`, 1–25 ms| `python::hooks`          |
//! | wait for a loop thread's own end report       | 200 ms         | `watchdog`               |

use crate::clock::ms;

/// The longest the watchdog sleeps between looks: one threshold.
///
/// A loop that becomes busy just after the watchdog went to sleep cannot cross its threshold
/// before the watchdog's next wake-up, so a block is detected late only by the OS wake-up
/// latency (see `watchdog`'s module docs). Sleeping longer would let a block go unseen for up
/// to the extra time; sleeping less would wake an idle process for nothing.
#[inline]
pub fn longest_sleep(threshold_ns: u64) -> u64 {
    threshold_ns
}

/// When the watchdog first looks at a busy stretch (and reads the loop thread's run-queue
/// time): an eighth of the threshold after it began.
///
/// Early enough that most of the block's wait for a CPU is counted (the wait before the first
/// look is not, so the figure errs low by at most an eighth), late enough that the many short
/// stretches of a healthy loop end before the watchdog ever looks at them.
#[inline]
pub fn first_look(threshold_ns: u64) -> u64 {
    threshold_ns / 8
}

/// For how long after it learns of a new loop the watchdog sleeps no longer than a
/// [`first_look`]: eight thresholds (64 looks at most).
///
/// A loop is known to the watchdog only once it has read the loop's registration, and it must
/// be known before the first look at its first stretch. Ringing the watchdog at every
/// registration puts a futex wake on the loop thread's path, and on two CPUs often a switch
/// to the watchdog thread and back (tens of microseconds, measured: more than the rest of a
/// new loop's run); suites that start a loop per test or per request (a test client's
/// portal) pay it each time. A loop thread rings only when the watchdog plans to sleep past
/// its loop's first look (see `Mailbox::post_looked_at`): after one registration the watchdog
/// looks at least every `T/8` for a while, so the next ones in a run of them need no ring.
#[inline]
pub fn after_registration(threshold_ns: u64) -> u64 {
    threshold_ns.saturating_mul(8)
}

/// When the watchdog starts sampling a busy stretch, with a sampler that tags callbacks: a
/// quarter of the threshold after it began.
///
/// A block may be a run of short callbacks, none of which is the culprit alone; sampling from
/// a quarter on sees the callbacks the stretch began with (about four samples before the
/// threshold at [`sample_interval`]'s pace), while stretches shorter than that, the vast
/// majority, are never sampled.
#[inline]
pub fn early_sampling(threshold_ns: u64) -> u64 {
    threshold_ns / 4
}

/// How often a blocked (or early-sampled) loop is sampled after its first sample: a fifth of
/// the threshold, between 2 ms and 50 ms.
///
/// A fifth gives a handful of samples per threshold, enough to bound each callback's length
/// (see `callbacks::spans`). The floor keeps a tiny threshold from turning the watchdog into
/// a busy loop; the ceiling keeps long blocks under a long threshold finely resolved.
#[inline]
pub fn sample_interval(threshold_ns: u64) -> u64 {
    (threshold_ns / 5).clamp(ms(2), ms(50))
}

/// How often the watchdog looks at who holds the GIL while a loop is starved, from its first
/// look at the stretch: a twentieth of the threshold, between 1 ms and 10 ms.
///
/// Each change of GIL holder is seen up to one such interval late, and a holder that has exited
/// by the end is counted up to the last look that saw it: the holders' wait for a CPU (see
/// `holder_wait`) is off by up to one interval per change. A look is two small memory reads and
/// one read of a `/proc` file, and is made only while a loop is starved, so it can be finer
/// than [`sample_interval`] (which walks stacks); the floor keeps a tiny threshold from making
/// the watchdog spin, the ceiling keeps the error small at long thresholds.
#[inline]
pub fn holder_look_interval(threshold_ns: u64) -> u64 {
    (threshold_ns / 20).clamp(ms(1), ms(10))
}

/// The longest a hooked loop's selector may wait: half the threshold, at least 1 ms.
///
/// A loop waiting for nothing must still come back regularly: one that does not come back
/// within the threshold after its wait was due is known to be starved of the GIL. Half the
/// threshold keeps an idle loop's extra wake-ups to two per threshold; the floor keeps a tiny
/// threshold from making the selector spin.
#[inline]
pub fn selector_cap(threshold_ns: u64) -> u64 {
    (threshold_ns / 2).max(ms(1))
}

/// How often a loop without a per-iteration hook (uvloop) beats: a tenth of the threshold,
/// between 1 ms and 25 ms.
///
/// A block on such a loop is dated from the beat that did not come back, up to one interval
/// after it really began, so the interval is detection slack: a tenth keeps it small. Each beat
/// is one callback on the loop: the floor and ceiling bound that cost at tiny thresholds and
/// keep the slack small at long ones.
#[inline]
pub fn beat_interval(threshold_ns: u64) -> u64 {
    (threshold_ns / 10).clamp(ms(1), ms(25))
}

/// How long the watchdog waits for the loop thread's exact end report of a block before it
/// closes the block with the time it observed the end itself.
///
/// The loop thread sends the report at once when it is back; 200 ms covers it being descheduled
/// on a loaded machine, and is short enough that a loop thread that died is not waited for at
/// length.
pub const END_GRACE_NS: u64 = ms(200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_looks_before_it_samples_and_samples_before_the_threshold() {
        for t in [ms(1), ms(10), ms(50), ms(100), ms(1000), ms(10_000)] {
            assert!(first_look(t) < early_sampling(t), "{t}");
            assert!(early_sampling(t) < t, "{t}");
            assert_eq!(longest_sleep(t), t);
        }
        assert_eq!(first_look(ms(100)), 12_500_000);
        assert_eq!(early_sampling(ms(100)), ms(25));
    }

    #[test]
    fn sample_interval_is_a_fifth_within_bounds() {
        assert_eq!(sample_interval(ms(1)), ms(2));
        assert_eq!(sample_interval(ms(100)), ms(20));
        assert_eq!(sample_interval(ms(10_000)), ms(50));
    }

    #[test]
    fn holder_looks_are_finer_than_samples_within_bounds() {
        assert_eq!(holder_look_interval(ms(100)), ms(5));
        assert_eq!(holder_look_interval(ms(5)), ms(1));
        assert_eq!(holder_look_interval(ms(10_000)), ms(10));
        for t in [ms(1), ms(10), ms(100), ms(1000), ms(60_000)] {
            assert!(holder_look_interval(t) <= sample_interval(t), "{t}");
        }
    }

    #[test]
    fn selector_cap_is_half_the_threshold_at_least_a_millisecond() {
        assert_eq!(selector_cap(ms(100)), ms(50));
        assert_eq!(selector_cap(ms(1)), ms(1));
        assert_eq!(selector_cap(0), ms(1));
        assert_eq!(selector_cap(ms(60_000)), ms(30_000));
    }

    #[test]
    fn beat_interval_is_a_tenth_within_bounds() {
        assert_eq!(beat_interval(ms(100)), ms(10));
        assert_eq!(beat_interval(ms(5)), ms(1));
        assert_eq!(beat_interval(ms(1000)), ms(25));
        // A beat always comes back well within the threshold it serves (above the floor).
        for t in [ms(10), ms(50), ms(100), ms(1000)] {
            assert!(beat_interval(t) * 10 <= t, "{t}");
        }
    }
}
