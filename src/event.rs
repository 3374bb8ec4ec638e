//! The event model shared by the watchdog, the samplers and the Python layer.
//!
//! Everything here is plain data with `serde` derives: the Python layer receives
//! finished events as JSON and turns them into `loopguard.BlockEvent` objects.

use std::sync::Arc;

use serde::Serialize;

use crate::fold::Repeat;
use crate::native_stack::NativeStack;

/// One Python frame as captured from a thread's stack. Its strings are shared with every frame
/// of the same code object (a deep recursion's frames cost a few words each), and two frames
/// of one code object compare without reading them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// `co_filename` of the frame's code object.
    pub filename: Arc<str>,
    /// Line being executed (0 when unknown).
    pub lineno: u32,
    /// `co_name` (3.10) or `co_qualname` (3.11+) of the code object.
    pub function: Arc<str>,
}

/// One callback (or stretch of the loop's own work) as the samples bound it (worked out in
/// `crate::callbacks`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Span {
    /// Offset of its first sample from the start of the block.
    pub first_ns: u64,
    /// Offset of its last sample.
    pub last_ns: u64,
    /// It lasted at least this long (from its first sample to its last).
    pub min_ns: u64,
    /// It lasted at most this long (from the last sample before it to the first after it).
    pub max_ns: u64,
    /// Samples taken in it.
    pub samples: u32,
    /// True for a callback; false for samples outside any callback (the loop's own work).
    pub in_callback: bool,
}

/// Who held the GIL when a sample was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gil {
    /// The loop thread itself held the GIL (Python code or C code holding it).
    Loop,
    /// Nobody held the GIL (a syscall or a C call that released it).
    Released,
    /// Another thread held the GIL: the loop thread is starved.
    Other,
    /// Not known (the sampler cannot read the GIL state).
    Unknown,
}

/// The thread that held the GIL while the loop was blocked, when it was not the loop thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// `threading.get_ident()` of the holder (its `pthread_t`), 0 when unknown.
    pub thread_ident: u64,
    /// The holder's Python stack, outermost frame first (folded once stored: see `repeats`).
    pub frames: Vec<Frame>,
    /// Where `frames` repeat (see `fold::fold`); empty until folded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repeats: Vec<Repeat>,
}

/// One stack sample of a blocked loop thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Nanoseconds from the start of the block to this sample.
    pub offset_ns: u64,
    /// How many consecutive samples had exactly this content (consecutive duplicates are folded).
    pub count: u32,
    /// The loop thread's Python stack, outermost frame first (folded once stored in a block:
    /// see `repeats`).
    pub frames: Vec<Frame>,
    /// Where `frames` repeat (see `fold::fold`): a block of them stands for several copies of
    /// itself. Empty until folded, and when nothing repeats.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repeats: Vec<Repeat>,
    /// GIL attribution at the time of the sample.
    pub gil: Gil,
    /// The GIL holder when `gil == Gil::Other`.
    pub holder: Option<Holder>,
    /// True when the stack was read by taking the GIL, so it may have been taken after the block.
    pub late: bool,
    /// Why the stack could not be read, if it could not.
    pub error: Option<String>,
    /// Name of the asyncio task that was running, when the sampler could tell.
    pub task_name: Option<String>,
    /// The system call the loop thread was blocked in (`recvfrom`, `clock_nanosleep`, ...),
    /// when it was in one and the kernel said so.
    pub syscall: Option<String>,
    /// What that system call waited on (`TCP 127.0.0.1:51234 → 127.0.0.1:8080`, `/tmp/x.fifo
    /// (FIFO)`, `pid 1234 (sleep 1)`, `a lock or condition`, `sleeping`), for samples of a
    /// confirmed block on Linux (see `waited`).
    pub syscall_object: Option<String>,
    /// The kernel's view of the thread when the sample was taken, for the watchdog to describe
    /// what the call waited on.
    #[serde(skip)]
    pub kernel: Option<crate::syscall::KernelState>,
    /// True when the kernel reported the loop thread on a CPU (running code, not waiting).
    pub running: bool,
    /// The callback the sample was taken in, as the sampler tagged it (see `callbacks::tag`);
    /// `None` outside any callback or when the sampler cannot tell.
    #[serde(skip)]
    pub callback_tag: Option<u64>,
    /// Index of the sample's entry in [`BlockEvent::callbacks`], once the block is finished.
    pub callback: Option<u32>,
    /// The loop thread's native frames below its Python stack, when asked for (compared by
    /// [`Sample::same_content`] without the exact instruction: see `NativeStack::same_calls`).
    #[serde(flatten)]
    pub native: NativeStack,
}

impl Sample {
    /// A sample of the stack `frames` at `offset_ns`, seen once, the GIL's state `gil`; nothing
    /// else known (a sampler sets what more it knows with `..Sample::new(...)`).
    pub fn new(offset_ns: u64, frames: Vec<Frame>, gil: Gil) -> Sample {
        Sample {
            offset_ns,
            count: 1,
            frames,
            repeats: Vec::new(),
            gil,
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
            native: NativeStack::default(),
        }
    }

    /// A sample that carries only an error.
    pub fn failed(offset_ns: u64, error: impl Into<String>) -> Sample {
        Sample {
            error: Some(error.into()),
            ..Sample::new(offset_ns, Vec::new(), Gil::Unknown)
        }
    }

    /// Folds the stacks of the sample (the loop thread's and the GIL holder's) in place (see
    /// `fold::fold`): how a block stores its samples.
    pub fn fold(&mut self) {
        if self.repeats.is_empty() {
            self.repeats = crate::fold::fold(&mut self.frames);
        }
        if let Some(h) = self.holder.as_mut() {
            if h.repeats.is_empty() {
                h.repeats = crate::fold::fold(&mut h.frames);
            }
        }
    }

    /// Frames held (folded ones count once), for the watchdog's bound on a block's samples.
    pub fn frames_held(&self) -> usize {
        self.frames.len() + self.holder.as_ref().map_or(0, |h| h.frames.len())
    }

    /// True when `other` has the same content (everything but offset and count).
    pub fn same_content(&self, other: &Sample) -> bool {
        self.frames == other.frames
            && self.repeats == other.repeats
            && self.gil == other.gil
            && self.holder == other.holder
            && self.late == other.late
            && self.error == other.error
            && self.syscall == other.syscall
            && self.syscall_object == other.syscall_object
            && self.running == other.running
            && self.callback_tag == other.callback_tag
            && self.callback == other.callback
            && self.native.same_calls(&other.native)
    }
}

/// A finished block: one stretch during which a loop did not get back to its selector.
#[derive(Clone, Debug, Serialize)]
pub struct BlockEvent {
    /// Sequence number, unique per watchdog.
    pub id: u64,
    /// The registered loop's id.
    pub loop_id: u64,
    /// What kind of loop ("asyncio", "uvloop", ...), as given at registration.
    pub loop_kind: String,
    /// `threading.get_ident()` of the loop thread.
    pub thread_ident: u64,
    /// Name of the loop thread at registration.
    pub thread_name: String,
    /// The context (test id and phase) that was current when the block began.
    pub context: String,
    /// Start of the block, in watchdog clock nanoseconds.
    pub start_ns: u64,
    /// End of the block, in watchdog clock nanoseconds.
    pub end_ns: u64,
    /// `end_ns - start_ns`.
    pub duration_ns: u64,
    /// The detection threshold that was in force when the block was detected.
    pub threshold_ns: u64,
    /// True when the loop thread was waiting to get back from its selector (GIL starvation)
    /// rather than running a callback.
    pub starved: bool,
    /// Nanoseconds from the start of the block to the first stack sample, if one was taken.
    pub captured_after_ns: Option<u64>,
    /// Whether the end time is exact (reported by the loop thread) or observed by the watchdog.
    pub end_exact: bool,
    /// The asyncio task that was running, when known.
    pub task_name: Option<String>,
    /// That task's await chain, outermost first: the frames of the coroutines it was running
    /// (down to the innermost one), read while the block lasted, when the loop thread's stack
    /// did not reach them (its code ran on another stack, a greenlet's); empty otherwise.
    pub await_chain: Vec<Frame>,
    /// Nanoseconds of the block during which the loop thread was runnable but waited for a CPU
    /// (the kernel's run-queue time), from when the watchdog first looked at the block to its
    /// end; `None` when not known (no schedstat, or the end was not reported by the loop). For
    /// a starved block whose GIL holders were followed (`holder_cpu_wait_ns` is not `None`),
    /// only while no other thread held the GIL: the two then cover disjoint moments and add up.
    pub cpu_wait_ns: Option<u64>,
    /// For a starved block: nanoseconds during which the threads holding the GIL were runnable
    /// but waited for a CPU while they held it (their run-queue time, per holder, from the
    /// watchdog's first look to the end; see `holder_wait`); with `cpu_wait_ns`, at most
    /// `duration_ns`. `None` for a block that was not starvation, or when no holder's wait
    /// could be read.
    pub holder_cpu_wait_ns: Option<u64>,
    /// The callbacks the samples saw, in order, each bounded by the samples around it (see
    /// `callbacks`); empty when the sampler cannot tell callbacks apart.
    pub callbacks: Vec<Span>,
    /// Stack samples taken while the block lasted, in order.
    pub samples: Vec<Sample>,
}
