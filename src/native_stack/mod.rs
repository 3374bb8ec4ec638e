//! Native frames of a loop thread blocked in C code: the part of its stack below the Python
//! frame that made the C call (`sqlite3VdbeExec ← sqlite3_step ← pysqlite_step`).
//!
//! # How a stack is taken
//! Only once a block is confirmed (never before the threshold, never while no loop is
//! blocked), and only when asked for ([`set_enabled`]). The watchdog first asks the kernel
//! what the loop thread is doing (`/proc/self/task/TID/syscall`):
//!
//! * **in a system call** (a sleep, a read, a lock): the kernel also gives the instruction the
//!   thread will return to. That one frame is taken from outside; the thread is not disturbed.
//!   A signal would interrupt the call, and calls such as `nanosleep`, `poll`, `epoll_wait`,
//!   `select`, a socket read with a timeout or a futex wait with a timeout fail with `EINTR`
//!   whatever `SA_RESTART` says; C code that does not retry would then behave differently.
//! * **running** (a regex, `deflate`, a query planner): no system call to interrupt. The
//!   watchdog sends the thread a signal ([`signal`]); the handler, on the loop thread, walks its
//!   own stack with `backtrace::trace_unsynchronized` into preallocated storage (no allocation,
//!   no lock of ours) and the watchdog waits for it, with a time limit.
//!
//! The raw addresses are turned into names later, when the block is finished, on the watchdog
//! thread ([`symbols`]), and folded ([`fold`]): the interpreter's own frames (the eval loop and
//! the call machinery between it and the C function) are dropped, so what is left is what runs
//! below the innermost Python frame.
//!
//! Wherever this cannot work (another architecture, a thread that blocks the signal, a signal
//! taken by another library, a handler that did not answer in time) a sample gets no native
//! frames and a note that says why.

use serde::Serialize;

#[cfg(linux_full)]
pub mod signal;
pub mod symbols;

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether native frames are captured for blocks detected from now on.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns native frames on or off for blocks detected from now on.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// True when native frames are asked for.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// One native frame, symbolized.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NativeFrame {
    /// The function's name (`sqlite3_step`), `None` when no symbol covers the address.
    pub function: Option<String>,
    /// The file name of the library or executable it is in (`libsqlite3.so.0`).
    pub library: Option<String>,
    /// Offset of the address in that library, for frames without a name.
    pub offset: usize,
    /// Source file, where debug information exists.
    pub file: Option<String>,
    /// Source line, where debug information exists.
    pub line: Option<u32>,
}

impl NativeFrame {
    /// One line for a report: `sqlite3_step (libsqlite3.so.0)`, `deflate_slow (libz.so.1)
    /// deflate.c:1820`, `libfoo.so+0x1a2b` for a frame without a name.
    pub fn label(&self) -> String {
        let mut text = match (&self.function, &self.library) {
            (Some(f), Some(l)) => format!("{f} ({l})"),
            (Some(f), None) => f.clone(),
            (None, Some(l)) => format!("{l}+{:#x}", self.offset),
            (None, None) => format!("{:#x}", self.offset),
        };
        if let (Some(file), Some(line)) = (&self.file, self.line) {
            let base = file.rsplit('/').next().unwrap_or(file);
            text.push_str(&format!(" {base}:{line}"));
        }
        text
    }
}

/// The raw result of one capture, kept in a sample until the block is finished.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawStack {
    /// Instruction addresses, innermost first. The first is the exact instruction the thread
    /// was at; the others are return addresses.
    pub ips: Vec<usize>,
    /// Why the stack is missing or only partial, if it is.
    pub note: Option<String>,
}

/// The native part of a sample: what was captured, then (once the block is finished) what it
/// means.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NativeStack {
    /// What the capture took; replaced by `native_stack` when the block is finished.
    #[serde(skip)]
    pub raw: Option<RawStack>,
    /// The native frames below the innermost Python frame, innermost first; empty when none
    /// were captured.
    pub native_stack: Vec<NativeFrame>,
    /// Why there are no native frames (or only the innermost), when they were asked for.
    pub native_note: Option<String>,
}

impl NativeStack {
    /// True when both were taken, or neither, and show the same chain of calls (the return
    /// addresses: the exact instruction differs from one sample of a loop to the next).
    pub fn same_calls(&self, other: &NativeStack) -> bool {
        match (&self.raw, &other.raw) {
            (None, None) => true,
            (Some(a), Some(b)) => a.ips.get(1..) == b.ips.get(1..) && a.note == b.note,
            _ => false,
        }
    }
}

/// Takes the native stack of the thread `tid` (a kernel thread id of this process), as
/// described in the module docs. Call only on the watchdog thread, while the thread is blocked.
#[cfg(not(linux_full))]
pub fn capture(_tid: i64) -> RawStack {
    RawStack {
        ips: Vec::new(),
        note: Some(format!("not read in this build: {}", crate::NOT_BUILT)),
    }
}

/// Takes the native stack of the thread `tid` (a kernel thread id of this process), as
/// described in the module docs. Call only on the watchdog thread, while the thread is blocked.
#[cfg(linux_full)]
pub fn capture(tid: i64) -> RawStack {
    let from_kernel = |why: String| match signal::Thread::read(tid) {
        Ok(signal::Thread::InKernel { pc }) => RawStack {
            ips: pc.into_iter().collect(),
            note: Some(IN_KERNEL.into()),
        },
        _ => RawStack {
            ips: Vec::new(),
            note: Some(why),
        },
    };
    match signal::Thread::read(tid) {
        Err(why) => from_kernel(why),
        Ok(signal::Thread::InKernel { .. }) => from_kernel(IN_KERNEL.into()),
        Ok(signal::Thread::Running) => match signal::capture(tid) {
            Ok(ips) => RawStack { ips, note: None },
            // It went (back) into the kernel: where it is there is still worth naming.
            Err(why) => from_kernel(why),
        },
    }
}

/// The note on a stack taken while the thread was in a system call.
pub const IN_KERNEL: &str =
    "in a system call: only the innermost native frame is read, without interrupting the call";

/// The note on a sample read by taking the GIL (after the block, so its native stack would not
/// be the block's).
pub const NEEDS_READER: &str =
    "native frames need the GIL-free stack reader (--loopguard-sampler=auto or native)";

/// Names the raw stacks of `stacks` (see [`symbols`]) and folds them (see [`fold`]).
pub fn resolve<'a>(stacks: impl IntoIterator<Item = &'a mut NativeStack>) {
    let mut names = symbols::Symbolizer::default();
    for s in stacks {
        let Some(raw) = s.raw.take() else {
            continue;
        };
        let frames = raw
            .ips
            .iter()
            .enumerate()
            .flat_map(|(i, &ip)| names.resolve(ip, i == 0))
            .collect::<Vec<_>>();
        s.native_stack = fold(frames);
        s.native_note = raw.note;
        if s.native_stack.is_empty() && s.native_note.is_none() {
            s.native_note = Some("no native frame below the Python frame".into());
        }
    }
}

/// Functions of the interpreter's eval loop: the native stack stops at the first of them (what
/// lies beyond is the Python stack, already shown).
const EVAL: &[&str] = &[
    "_PyEval_EvalFrameDefault",
    "_PyEval_EvalFrame",
    "_PyEval_Vector",
    "PyEval_EvalCode",
    "_PyEval_EvalCode",
    "PyEval_EvalFrame",
];

/// Prefixes of the interpreter's call machinery between the eval loop and a C function: folded
/// when they are the outermost frames left.
const CALL_MACHINERY: &[&str] = &[
    "_PyObject_Vectorcall",
    "PyObject_Vectorcall",
    "_PyObject_Call",
    "PyObject_Call",
    "_PyObject_MakeTpCall",
    "_PyObject_FastCall",
    "PyCFunction_Call",
    "_PyCFunction",
    "cfunction_",
    "method_vectorcall",
    "_PyFunction_Vectorcall",
    "vectorcall_",
    "slot_tp_call",
    "method_call",
    "object_vacall",
    "callmethod",
    "call_function", // CPython 3.10's ceval.c, between the eval loop and the callee
    "PyVectorcall_",
    "_Py_call",
    "_PyEval_Call",
];

fn is_eval(f: &NativeFrame) -> bool {
    f.function.as_deref().is_some_and(|name| {
        EVAL.iter()
            .any(|e| name == *e || name.starts_with(&format!("{e}.")))
    })
}

fn is_call_machinery(f: &NativeFrame) -> bool {
    f.function
        .as_deref()
        .is_some_and(|name| CALL_MACHINERY.iter().any(|p| name.starts_with(p)))
}

/// Most frames kept below a Python frame.
pub const MAX_SHOWN: usize = 24;

/// The frames below the innermost Python frame, innermost first: cut at the first eval-loop
/// frame, then without the call machinery that the cut leaves at the outer end. A stack whose
/// innermost frame is the eval loop itself (the thread was running Python code) has no native
/// part.
pub fn fold(frames: Vec<NativeFrame>) -> Vec<NativeFrame> {
    let mut out: Vec<NativeFrame> = frames.into_iter().take_while(|f| !is_eval(f)).collect();
    while out.last().is_some_and(is_call_machinery) {
        out.pop();
    }
    out.truncate(MAX_SHOWN);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, lib: &str) -> NativeFrame {
        NativeFrame {
            function: Some(name.into()),
            library: Some(lib.into()),
            offset: 0,
            file: None,
            line: None,
        }
    }

    fn names(frames: &[NativeFrame]) -> Vec<&str> {
        frames
            .iter()
            .map(|f| f.function.as_deref().unwrap_or("?"))
            .collect()
    }

    #[test]
    fn folds_at_the_eval_loop_and_drops_the_call_machinery_above_the_c_function() {
        let stack = vec![
            f("sqlite3VdbeExec", "libsqlite3.so.0"),
            f("sqlite3_step", "libsqlite3.so.0"),
            f("pysqlite_step", "_sqlite3.so"),
            f("_pysqlite_query_execute", "_sqlite3.so"),
            f("method_vectorcall_FASTCALL_KEYWORDS", "libpython3.11.so"),
            f("PyObject_Vectorcall", "libpython3.11.so"),
            f("_PyEval_EvalFrameDefault", "libpython3.11.so"),
            f("_PyEval_Vector", "libpython3.11.so"),
            f("pysqlite_step", "_sqlite3.so"),
        ];
        assert_eq!(
            names(&fold(stack)),
            [
                "sqlite3VdbeExec",
                "sqlite3_step",
                "pysqlite_step",
                "_pysqlite_query_execute"
            ]
        );
    }

    #[test]
    fn a_thread_running_python_code_has_no_native_part() {
        let stack = vec![
            f("_PyEval_EvalFrameDefault", "libpython3.11.so"),
            f("_PyEval_Vector", "libpython3.11.so"),
        ];
        assert!(fold(stack).is_empty());
    }

    #[test]
    fn a_compiler_clone_of_the_eval_loop_is_the_eval_loop() {
        let stack = vec![
            f("deflate", "libz.so.1"),
            f("cfunction_vectorcall_FASTCALL_KEYWORDS", "python3"),
            f("_PyEval_EvalFrameDefault.cold", "python3"),
        ];
        assert_eq!(names(&fold(stack)), ["deflate"]);
    }

    #[test]
    fn machinery_inside_the_c_call_is_kept() {
        // A C function that calls back into Python through the call machinery: the frames
        // below it are the C function's own work, not the eval loop's.
        let stack = vec![
            f("clock_nanosleep", "libc.so.6"),
            f("PyObject_Call", "libpython3.11.so"),
            f("my_extension_fn", "ext.so"),
            f("cfunction_call", "libpython3.11.so"),
            f("_PyEval_EvalFrameDefault", "libpython3.11.so"),
        ];
        assert_eq!(
            names(&fold(stack)),
            ["clock_nanosleep", "PyObject_Call", "my_extension_fn"]
        );
    }

    #[test]
    fn a_stack_without_the_eval_loop_is_cut_to_a_bounded_length() {
        let stack = (0..100).map(|i| f(&format!("f{i}"), "lib.so")).collect();
        assert_eq!(fold(stack).len(), MAX_SHOWN);
    }

    #[test]
    fn samples_in_the_same_calls_are_the_same_whatever_the_instruction() {
        let stack = |ips: &[usize]| NativeStack {
            raw: Some(RawStack {
                ips: ips.to_vec(),
                note: None,
            }),
            ..NativeStack::default()
        };
        assert!(stack(&[10, 20, 30]).same_calls(&stack(&[11, 20, 30])));
        assert!(!stack(&[10, 20, 30]).same_calls(&stack(&[10, 21, 30])));
        assert!(!stack(&[10, 20]).same_calls(&NativeStack::default()));
        assert!(NativeStack::default().same_calls(&NativeStack::default()));
    }

    #[test]
    fn labels_name_the_library_and_the_line_where_known() {
        let mut frame = f("deflate_slow", "libz.so.1");
        assert_eq!(frame.label(), "deflate_slow (libz.so.1)");
        frame.file = Some("/build/zlib/deflate.c".into());
        frame.line = Some(1820);
        assert_eq!(frame.label(), "deflate_slow (libz.so.1) deflate.c:1820");
        let anon = NativeFrame {
            function: None,
            library: Some("libfoo.so".into()),
            offset: 0x1a2b,
            file: None,
            line: None,
        };
        assert_eq!(anon.label(), "libfoo.so+0x1a2b");
    }
}
