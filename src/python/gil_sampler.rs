//! The fallback sampler, for interpreters the GIL-free reader does not support (or when asked
//! for): it takes the GIL. It reads as much of a deep stack as the GIL-free reader does (see
//! `crate::deep`).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::hooks::running_task_name;
use crate::deep::{self, Chain};
use crate::event::{Frame, Gil, Sample};
use crate::sampler::{Sampler, Target};

/// The fallback sampler: takes the GIL and reads `sys._current_frames()`. Late whenever C code
/// holds the GIL, so its samples are marked `late`.
pub(super) struct GilSampler;

impl Sampler for GilSampler {
    fn sample(&mut self, target: &Target, offset_ns: u64) -> Sample {
        // SAFETY: `Py_IsInitialized` only reads a flag and may be called at any time.
        if unsafe { pyo3::ffi::Py_IsInitialized() } == 0 {
            return Sample::failed(offset_ns, "the interpreter is shutting down");
        }
        Python::attach(|py| match gil_stack(py, target) {
            Ok((frames, task_name)) => Sample {
                late: true,
                task_name,
                ..Sample::new(offset_ns, frames, Gil::Unknown)
            },
            Err(e) => {
                let mut s = Sample::failed(offset_ns, e.to_string());
                s.late = true;
                s
            }
        })
    }

    fn name(&self) -> &'static str {
        "gil"
    }
}

fn gil_stack(py: Python<'_>, target: &Target) -> PyResult<(Vec<Frame>, Option<String>)> {
    let frames = py.import("sys")?.call_method0("_current_frames")?;
    let frames = frames.cast::<PyDict>()?;
    // Both ends of a deep stack, and the frames between counted (see `deep`).
    let mut chain = Chain::default();
    let mut ended = true;
    if let Some(mut f) = frames.get_item(target.thread_ident)? {
        while !f.is_none() {
            if chain.full() {
                ended = false;
                break;
            }
            let back = f.getattr("f_back")?;
            chain.push(f);
            f = back;
        }
    }
    let cut = chain.finish(ended);
    // A code object's names, and the line of each of its instructions, read once per stack:
    // the frames of a recursion share them.
    let mut names = Names::new();
    let mut out = Vec::with_capacity(cut.inner.len() + cut.outer.len() + 1);
    for (i, f) in cut.inner.iter().chain(&cut.outer).enumerate() {
        if i == cut.inner.len() && cut.cut() {
            out.push(deep::not_read_marker(cut.not_read, cut.exact));
        }
        out.push(frame_of(py, f, &mut names)?);
    }
    if cut.outer.is_empty() && cut.cut() {
        out.push(deep::not_read_marker(cut.not_read, cut.exact));
    }
    out.reverse();
    Ok((out, running_task_name(py, target.loop_id)))
}

/// What [`frame_of`] read of the code objects of one stack (alive while it is read, so their
/// addresses are theirs): each one's file and function, and the line of each instruction seen.
struct Names {
    code: HashMap<usize, (Arc<str>, Arc<str>)>,
    lines: HashMap<(usize, i64), u32>,
}

impl Names {
    fn new() -> Self {
        Names {
            code: HashMap::new(),
            lines: HashMap::new(),
        }
    }
}

/// The frame of the frame object `f`.
fn frame_of(py: Python<'_>, f: &Bound<'_, PyAny>, names: &mut Names) -> PyResult<Frame> {
    let code = f.getattr("f_code")?;
    let key = code.as_ptr() as usize;
    let (filename, function) = match names.code.get(&key) {
        Some((file, function)) => (Arc::clone(file), Arc::clone(function)),
        None => {
            let function: Arc<str> = match code.getattr("co_qualname") {
                Ok(q) => q.extract::<String>()?,
                Err(_) => code.getattr("co_name")?.extract::<String>()?,
            }
            .into();
            let file: Arc<str> = code.getattr("co_filename")?.extract::<String>()?.into();
            names
                .code
                .insert(key, (Arc::clone(&file), Arc::clone(&function)));
            (file, function)
        }
    };
    let lasti: i64 = f.getattr("f_lasti")?.extract()?;
    let lineno = match names.lines.get(&(key, lasti)) {
        Some(&line) => line,
        None => {
            let line = match f.getattr("f_lineno")?.extract::<Option<u32>>()? {
                Some(line) => line,
                None => line_of_lineless(py, &code, lasti)?,
            };
            names.lines.insert((key, lasti), line);
            line
        }
    };
    Ok(Frame {
        filename,
        lineno,
        function,
    })
}

/// Lines found by [`line_of_lineless`], by code object (kept alive here, so its address stays
/// its own) and instruction offset.
type LinelessLines = HashMap<(usize, i64), (Py<PyAny>, u32)>;

/// The [`LinelessLines`] of the process. Locked only by threads that hold the GIL.
static LINELESS: Mutex<Option<LinelessLines>> = Mutex::new(None);

/// Most entries [`LINELESS`] keeps before it starts afresh.
const LINELESS_MAX: usize = 256;

/// The line of a frame stopped at byte offset `lasti` of `code`, for when its `f_lineno` is
/// None because that instruction has no line. CPython 3.10 and 3.11 give none to the jump back to
/// the start of a loop, and that jump is where a thread running Python code lets another thread
/// take the GIL: where this sampler, which needs the GIL, finds a pure-Python loop most often.
/// A jump is named by the line it goes to (a loop's header); another instruction by the
/// closest line before it; the code's first line when there is none.
fn line_of_lineless(py: Python<'_>, code: &Bound<'_, PyAny>, lasti: i64) -> PyResult<u32> {
    let key = (code.as_ptr() as usize, lasti);
    if let Some((_, line)) = LINELESS.lock().as_ref().and_then(|m| m.get(&key)) {
        return Ok(*line);
    }
    // Costs a disassembly (milliseconds for a long function), so once per instruction.
    let line = resolve_lineless(py, code, lasti)?;
    let dropped = {
        let mut cache = LINELESS.lock();
        let map = cache.get_or_insert_with(HashMap::new);
        let full = (map.len() >= LINELESS_MAX).then(|| std::mem::take(map));
        (full, map.insert(key, (code.clone().unbind(), line)))
    };
    // Dropped with the lock released: freeing a code object may run Python code.
    drop(dropped);
    Ok(line)
}

fn resolve_lineless(py: Python<'_>, code: &Bound<'_, PyAny>, lasti: i64) -> PyResult<u32> {
    let mut ranges = Vec::new();
    for entry in code.call_method0("co_lines")?.try_iter()? {
        ranges.push(entry?.extract::<(i64, i64, Option<u32>)>()?);
    }
    let line_at = |offset: i64| {
        ranges
            .iter()
            .find(|&&(start, end, _)| start <= offset && offset < end)
            .and_then(|&(_, _, line)| line)
    };
    let dis = py.import("dis")?;
    // `hasjump` from 3.13 on; `hasjrel` and `hasjabs` before.
    let mut jump_ops = Vec::new();
    for name in ["hasjump", "hasjrel", "hasjabs"] {
        if let Ok(ops) = dis.getattr(name) {
            jump_ops.extend(ops.extract::<Vec<u32>>()?);
        }
    }
    let mut targets = HashMap::new();
    for ins in dis.call_method1("get_instructions", (code,))?.try_iter()? {
        let ins = ins?;
        if jump_ops.contains(&ins.getattr("opcode")?.extract()?) {
            if let Ok(target) = ins.getattr("argval")?.extract::<i64>() {
                targets.insert(ins.getattr("offset")?.extract::<i64>()?, target);
            }
        }
    }
    // A jump to a jump that has no line either is followed, a few times at most.
    let mut offset = lasti;
    for _ in 0..4 {
        if let Some(line) = line_at(offset) {
            return Ok(line);
        }
        match targets.get(&offset) {
            Some(&target) => offset = target,
            None => break,
        }
    }
    let before = ranges
        .iter()
        .filter(|&&(start, _, _)| start <= lasti)
        .filter_map(|&(_, _, line)| line)
        .next_back();
    match before {
        Some(line) => Ok(line),
        None => code.getattr("co_firstlineno")?.extract(),
    }
}

/// The line the GIL-taking sampler names for a frame of `code` stopped at byte offset `lasti`:
/// its line, or when it has none the one [`line_of_lineless`] finds.
#[pyfunction]
pub(super) fn _gil_sampler_line(
    py: Python<'_>,
    code: &Bound<'_, PyAny>,
    lasti: i64,
) -> PyResult<u32> {
    line_of_lineless(py, code, lasti)
}
