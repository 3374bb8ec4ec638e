//! The interface between the watchdog and whatever reads a blocked thread's stack.
//!
//! The watchdog calls a [`Sampler`] on its own thread while a loop is blocked. Two
//! implementations exist: the GIL-free frame reader (`crate::reader`), which reads the
//! interpreter's memory directly, and the fallback in the Python layer, which takes the GIL
//! (and is therefore late whenever C code holds it).

use crate::event::Sample;
use crate::holder_wait::Seen;

/// What a sampler needs to know about the thread it samples.
#[derive(Clone, Debug)]
pub struct Target {
    /// The registered loop's id.
    pub loop_id: u64,
    /// `threading.get_ident()` of the loop thread (its `pthread_t`).
    pub thread_ident: u64,
    /// The loop thread's `PyThreadState*`, taken on that thread while it held the GIL.
    /// Valid while the loop is registered (the loop unregisters before its thread can exit).
    pub tstate: usize,
    /// The kernel thread id of the loop thread (`gettid()`).
    pub native_tid: i64,
}

/// Reads one stack sample of a target thread.
///
/// Implementations must never block on a lock that a Python thread can hold while it waits
/// for the watchdog; the GIL fallback may wait for the GIL, because the watchdog holds no lock
/// that Python threads need.
pub trait Sampler: Send {
    /// Takes one sample. `offset_ns` is the time since the block began, to store in the sample.
    fn sample(&mut self, target: &Target, offset_ns: u64) -> Sample;

    /// A short name for reports and diagnostics ("native", "gil").
    fn name(&self) -> &'static str;

    /// True when samples carry callback tags (`Sample::callback_tag`) and taking one does not
    /// disturb the target thread: the watchdog then samples busy loops before they reach the
    /// threshold, to see the callbacks a stretch began with.
    fn tags_callbacks(&self) -> bool {
        false
    }

    /// Who holds the GIL now, from the point of view of `target` (its own holding is
    /// [`Seen::Nobody`]), with the holder's kernel thread id when known; cheap (no stack walk)
    /// and never waits for the GIL. [`Seen::Unknown`] when the sampler cannot tell.
    fn gil_holder(&mut self, _target: &Target) -> Seen {
        Seen::Unknown
    }
}
