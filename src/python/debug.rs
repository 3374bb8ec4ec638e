//! Test and debug entry points (`loopguard._native._reader_*` and `_gil_*`).
//!
//! They run the same code as the watchdog's native sampler: code objects are read from memory
//! through `process_vm_readv`, not through the C API; stacks and the GIL state are read with
//! the GIL released. Nothing in the watchdog calls them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::{current_thread_state, py_info};
use crate::event::Frame;
use crate::reader::gil::GilReader;
use crate::reader::mem::{MemError, Memory};
use crate::reader::walk::{cut_marker, Walker};
use crate::sampler::Target;

// ---- the stack reader (`_reader_*`) ----

/// A walker for the debug functions, with the pid that made it (a forked child makes its own).
static WALKER: Mutex<Option<(u32, Walker)>> = Mutex::new(None);

fn new_walker(py: Python<'_>) -> PyResult<Walker> {
    let info = py_info(py)?;
    crate::reader::walker(info).map_err(PyRuntimeError::new_err)
}

/// Runs `f` with the shared walker. The lock is only ever taken by these debug functions, and
/// never while waiting for the GIL.
fn with_walker<R>(py: Python<'_>, f: impl FnOnce(&mut Walker) -> R) -> PyResult<R> {
    let pid = std::process::id();
    let mut guard = WALKER.lock();
    if !matches!(&*guard, Some((p, _)) if *p == pid) {
        *guard = Some((pid, new_walker(py)?));
    }
    match guard.as_mut() {
        Some((_, w)) => Ok(f(w)),
        None => Err(PyRuntimeError::new_err("no walker")),
    }
}

fn frames_to_py(py: Python<'_>, frames: Vec<Frame>) -> PyResult<Bound<'_, PyList>> {
    PyList::new(
        py,
        frames
            .into_iter()
            .map(|f| (f.filename.to_string(), f.lineno, f.function.to_string())),
    )
}

/// The calling thread's `PyThreadState*` as an int.
#[pyfunction]
fn _reader_current_tstate(py: Python<'_>) -> usize {
    current_thread_state(py)
}

/// Where the layout came from ("headers" or "_Py_DebugOffsets") and its version.
#[pyfunction]
fn _reader_layout(py: Python<'_>) -> PyResult<(String, (u8, u8))> {
    with_walker(py, |w| (w.layout().source.to_owned(), w.layout().version))
}

/// `(co_filename, name, co_firstlineno, bytecode size)` of `code`, read from memory.
#[pyfunction]
fn _reader_code(py: Python<'_>, code: &Bound<'_, PyAny>) -> PyResult<(String, String, i32, u32)> {
    let addr = code.as_ptr() as usize;
    let info = with_walker(py, |w| w.code(addr))?.map_err(PyRuntimeError::new_err)?;
    Ok((
        info.filename.to_string(),
        info.function.to_string(),
        info.firstlineno,
        info.code_bytes,
    ))
}

/// The line table of `code` as decoded by the reader: `(start, end, line or None)` ranges as
/// `co_lines()` yields them (not merged).
#[pyfunction]
fn _reader_lines(py: Python<'_>, code: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let addr = code.as_ptr() as usize;
    let info = with_walker(py, |w| w.code(addr))?.map_err(PyRuntimeError::new_err)?;
    Ok(PyList::new(
        py,
        info.lines
            .0
            .iter()
            .map(|&(s, e, l)| (s, e, if l < 0 { None } else { Some(l) })),
    )?
    .into_any()
    .unbind())
}

/// The line of byte offset `offset` of `code` as the reader computes it for a frame.
#[pyfunction]
fn _reader_line_for(py: Python<'_>, code: &Bound<'_, PyAny>, offset: i64) -> PyResult<Option<u32>> {
    let addr = code.as_ptr() as usize;
    let info = with_walker(py, |w| w.code(addr))?.map_err(PyRuntimeError::new_err)?;
    Ok(info.lines.line_for(offset, info.firstlineno))
}

/// Like [`_reader_line_for`] for each of `offsets`, from one read of `code`.
#[pyfunction]
fn _reader_lines_for(
    py: Python<'_>,
    code: &Bound<'_, PyAny>,
    offsets: Vec<i64>,
) -> PyResult<Vec<Option<u32>>> {
    let addr = code.as_ptr() as usize;
    let info = with_walker(py, |w| w.code(addr))?.map_err(PyRuntimeError::new_err)?;
    Ok(offsets
        .into_iter()
        .map(|o| info.lines.line_for(o, info.firstlineno))
        .collect())
}

/// The stack of the thread whose `PyThreadState*` is `tstate`, read with the GIL released,
/// outermost first, as `(filename, lineno, function)` tuples.
#[pyfunction]
#[pyo3(signature = (tstate, thread_ident=0))]
fn _reader_stack<'py>(
    py: Python<'py>,
    tstate: usize,
    thread_ident: u64,
) -> PyResult<Bound<'py, PyList>> {
    // Make the walker with the GIL, then walk without it.
    with_walker(py, |_| ())?;
    let r = py.detach(|| {
        let mut guard = WALKER.lock();
        match guard.as_mut() {
            Some((_, w)) => w.stack(tstate, thread_ident),
            None => Err("no walker".into()),
        }
    });
    frames_to_py(py, r.map_err(PyRuntimeError::new_err)?)
}

/// One sample of the thread whose `PyThreadState*` is `tstate`, taken by the watchdog's native
/// sampler (stack and GIL attribution) with the GIL released, after sleeping `delay` seconds
/// without it; returned as the JSON the watchdog would report, with `offset_ns` set to the
/// watchdog clock (`now_ns()`) at the moment the sample was complete.
#[pyfunction]
#[pyo3(signature = (tstate, thread_ident, delay=0.0))]
fn _reader_sample(
    py: Python<'_>,
    tstate: usize,
    thread_ident: u64,
    delay: f64,
) -> PyResult<String> {
    let info = py_info(py)?;
    let mut sampler = crate::reader::native_sampler(info).map_err(PyRuntimeError::new_err)?;
    let target = Target {
        loop_id: 0,
        thread_ident,
        tstate,
        native_tid: 0,
    };
    let sample = py.detach(|| {
        std::thread::sleep(Duration::from_secs_f64(delay.max(0.0)));
        let mut s = sampler.sample(&target, 0);
        s.offset_ns = crate::clock::now_ns();
        s
    });
    serde_json::to_string(&sample).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// Samples a thread in a tight loop for `seconds` with the GIL released, like the watchdog
/// does, and returns statistics: samples, errors (by message), distinct frames seen, the
/// distribution of per-sample cost in nanoseconds, how often each innermost frame was seen, the
/// depths of the stacks read and how many were marked as cut at a generator (`cut`, not in
/// `depths`).
#[pyfunction]
#[pyo3(signature = (tstate, thread_ident, seconds, pause_us=0))]
fn _reader_stress<'py>(
    py: Python<'py>,
    tstate: usize,
    thread_ident: u64,
    seconds: f64,
    pause_us: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let mut walker = new_walker(py)?;
    let budget = Duration::from_secs_f64(seconds.max(0.0));
    let (ok, cut, errors, seen, mut cost, depths, innermost) = py.detach(|| {
        let mut ok = 0u64;
        let mut cut = 0u64;
        let marker = cut_marker();
        let mut innermost: HashMap<(String, u32, String), u64> = HashMap::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut seen: HashSet<(String, u32, String)> = HashSet::new();
        let mut cost: Vec<u64> = Vec::new();
        let mut depths: BTreeMap<usize, u64> = BTreeMap::new();
        let start = Instant::now();
        while start.elapsed() < budget {
            let t0 = Instant::now();
            let r = walker.stack(tstate, thread_ident);
            cost.push(t0.elapsed().as_nanos() as u64);
            match r {
                Ok(frames) => {
                    ok += 1;
                    if frames.first() == Some(&marker) {
                        cut += 1;
                    } else {
                        *depths.entry(frames.len()).or_default() += 1;
                    }
                    if let Some(f) = frames.last() {
                        let key = (f.filename.to_string(), f.lineno, f.function.to_string());
                        *innermost.entry(key).or_default() += 1;
                    }
                    for f in frames {
                        let key = (f.filename.to_string(), f.lineno, f.function.to_string());
                        seen.insert(key);
                    }
                }
                Err(e) => {
                    // Group errors by their text without addresses.
                    let key: String = e
                        .split_whitespace()
                        .map(|w| if w.starts_with("0x") { "ADDR" } else { w })
                        .collect::<Vec<_>>()
                        .join(" ");
                    *errors.entry(key).or_default() += 1;
                }
            }
            if pause_us > 0 {
                std::thread::sleep(Duration::from_micros(pause_us));
            }
        }
        (ok, cut, errors, seen, cost, depths, innermost)
    });
    cost.sort_unstable();
    let pct = |p: f64| -> u64 {
        if cost.is_empty() {
            0
        } else {
            cost[((cost.len() - 1) as f64 * p) as usize]
        }
    };
    let d = PyDict::new(py);
    d.set_item("samples", cost.len())?;
    d.set_item("ok", ok)?;
    d.set_item("errors", errors)?;
    d.set_item("frames", seen.into_iter().collect::<Vec<_>>())?;
    d.set_item("depths", depths)?;
    d.set_item("cut", cut)?;
    d.set_item("innermost", innermost)?;
    d.set_item("p50_ns", pct(0.5))?;
    d.set_item("p99_ns", pct(0.99))?;
    d.set_item("max_ns", cost.last().copied().unwrap_or(0))?;
    let total: u64 = cost.iter().sum();
    d.set_item(
        "mean_ns",
        if cost.is_empty() {
            0
        } else {
            total / cost.len() as u64
        },
    )?;
    Ok(d)
}

// ---- the GIL reader (`_gil_*`) ----

fn new_reader(py: Python<'_>) -> PyResult<GilReader> {
    let info = py_info(py)?;
    let mem = Memory::new().map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let reader = GilReader::new(info, mem).map_err(PyRuntimeError::new_err)?;
    reader
        .verify_held_by(current_thread_state(py))
        .map_err(PyRuntimeError::new_err)?;
    Ok(reader)
}

fn mem_err(e: MemError) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

/// `(locked, holder)` where holder is `threading.get_ident()` of the GIL holder (None when the
/// GIL is free, or when the holder's thread state cannot be read: it may have just exited).
fn read_state(reader: &GilReader) -> Result<(bool, Option<u64>), MemError> {
    let s = reader.read()?;
    Ok((
        s.locked,
        s.holder().and_then(|t| reader.thread_ident_of(t).ok()),
    ))
}

/// Whether the GIL is locked and by which thread (`threading.get_ident()`), read without the
/// GIL when `release` is true (after sleeping `delay` seconds with the GIL released).
#[pyfunction]
#[pyo3(signature = (release=true, delay=0.0))]
fn _gil_state(py: Python<'_>, release: bool, delay: f64) -> PyResult<(bool, Option<u64>)> {
    let reader = new_reader(py)?;
    if !release {
        return read_state(&reader).map_err(mem_err);
    }
    py.detach(|| {
        if delay > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(delay));
        }
        read_state(&reader)
    })
    .map_err(mem_err)
}

/// The raw GIL state `(locked, last_holder PyThreadState*)`, read like [`_gil_state`].
#[pyfunction]
#[pyo3(signature = (release=true))]
fn _gil_state_raw(py: Python<'_>, release: bool) -> PyResult<(bool, usize)> {
    let reader = new_reader(py)?;
    let s = if release {
        py.detach(|| reader.read())
    } else {
        reader.read()
    }
    .map_err(mem_err)?;
    Ok((s.locked, s.holder_tstate))
}

/// Samples the GIL state with the GIL released for `seconds`, every `interval` seconds, and
/// returns `(time, locked, holder ident)` triples in order; `time` is the watchdog clock
/// (`_native.now_ns()`) when the sample was taken.
#[pyfunction]
#[pyo3(signature = (seconds, interval=0.001))]
fn _gil_sample(
    py: Python<'_>,
    seconds: f64,
    interval: f64,
) -> PyResult<Vec<(u64, bool, Option<u64>)>> {
    let reader = new_reader(py)?;
    let budget = Duration::from_secs_f64(seconds.max(0.0));
    let pause = Duration::from_secs_f64(interval.max(0.0));
    py.detach(|| {
        let start = Instant::now();
        let mut out = Vec::new();
        while start.elapsed() < budget && out.len() < 1_000_000 {
            let t = crate::clock::now_ns();
            let (locked, holder) = read_state(&reader)?;
            out.push((t, locked, holder));
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
        Ok(out)
    })
    .map_err(mem_err)
}

/// The main interpreter's threads as `(tstate, ident, native_id or None)`, read without the GIL.
#[pyfunction]
fn _gil_threads(py: Python<'_>) -> PyResult<Vec<(usize, u64, Option<u64>)>> {
    let reader = new_reader(py)?;
    py.detach(|| {
        reader.threads().and_then(|ts| {
            ts.into_iter()
                .map(|t| reader.thread_ids(t).map(|i| (t, i.ident, i.native_tid)))
                .collect()
        })
    })
    .map_err(mem_err)
}

/// `(thread ident, native id or None)` read from the thread state at `tstate`.
#[pyfunction]
fn _gil_thread_ids(py: Python<'_>, tstate: usize) -> PyResult<(u64, Option<u64>)> {
    let reader = new_reader(py)?;
    let ids = py.detach(|| reader.thread_ids(tstate)).map_err(mem_err)?;
    Ok((ids.ident, ids.native_tid))
}

/// What the reader found: version, offset source and addresses.
#[pyfunction]
fn _gil_reader_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let reader = new_reader(py)?;
    let d = PyDict::new(py);
    d.set_item("version", reader.layout().version)?;
    d.set_item("source", reader.layout().source)?;
    d.set_item("runtime", reader.runtime())?;
    d.set_item("main_interpreter", reader.main_interpreter())?;
    d.set_item("gil", reader.gil_address())?;
    Ok(d)
}

// ---- what a blocked system call waits on (`_waited_*`) ----

/// What the thread `native_tid` (a kernel thread id of this process) is blocked on, as the
/// watchdog names it for a block's sample (see `waited`), and how long naming it took in
/// nanoseconds (the kernel state read not included); read with the GIL released, with no cache.
/// `(None, ns)` when it is not in a named system call, and off Linux.
#[pyfunction]
fn _waited_describe(py: Python<'_>, native_tid: i64) -> (Option<String>, u64) {
    py.detach(|| {
        let waited = crate::waited::Waited::new();
        let state = crate::syscall::KernelState::of_thread(native_tid);
        let t = Instant::now();
        let text = waited.describe(state, &mut None);
        (text, t.elapsed().as_nanos() as u64)
    })
}

/// Adds the test and debug entry points to `loopguard._native`.
pub(super) fn add_to_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_reader_current_tstate, m)?)?;
    m.add_function(wrap_pyfunction!(_reader_layout, m)?)?;
    m.add_function(wrap_pyfunction!(_reader_code, m)?)?;
    m.add_function(wrap_pyfunction!(_reader_lines, m)?)?;
    m.add_function(wrap_pyfunction!(_reader_line_for, m)?)?;
    m.add_function(wrap_pyfunction!(_reader_lines_for, m)?)?;
    m.add_function(wrap_pyfunction!(_reader_stack, m)?)?;
    m.add_function(wrap_pyfunction!(_reader_stress, m)?)?;
    m.add_function(wrap_pyfunction!(_reader_sample, m)?)?;
    m.add_function(wrap_pyfunction!(_gil_state, m)?)?;
    m.add_function(wrap_pyfunction!(_gil_state_raw, m)?)?;
    m.add_function(wrap_pyfunction!(_gil_sample, m)?)?;
    m.add_function(wrap_pyfunction!(_gil_threads, m)?)?;
    m.add_function(wrap_pyfunction!(_gil_thread_ids, m)?)?;
    m.add_function(wrap_pyfunction!(_gil_reader_info, m)?)?;
    m.add_function(wrap_pyfunction!(_waited_describe, m)?)?;
    Ok(())
}
