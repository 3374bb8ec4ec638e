//! The pyo3 layer: the private module `loopguard._native`. The logic lives in the pure-Rust
//! modules; what is here is what needs the interpreter:
//!
//! * this file: the module itself and the watchdog's lifecycle (start, stop, fork, settings,
//!   events out as JSON), and the facts about the interpreter the readers need;
//! * [`hooks`]: the loop hooks (`Slot`, `SelectorProxy`, `EpollProxy`) and the loops'
//!   Python objects;
//! * [`run_forever`]: `RunForever`, the `run_forever` loopguard gives a loop class, a native
//!   callable so that no Python frame of loopguard's stays under a running loop's callbacks;
//! * [`assistant`]: the one loopguard thread that takes the GIL (names the running task,
//!   raise mode);
//! * [`gil_sampler`]: the fallback sampler, which takes the GIL;
//! * [`offload`]: `OffloadSampler`, the face of [`crate::offload`];
//! * [`debug`]: the readers' test entry points (`_reader_*`, `_gil_*`).
//!
//! Locking rule: the statics here are locked either without waiting for the GIL, or only by
//! threads that hold it; none is held while waiting for the GIL.

use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::clock::now_ns;
use crate::context::Phase;
use crate::event::BlockEvent;
use crate::reader::PyInfo;
use crate::sampler::Sampler;
use crate::watchdog::Watchdog;

mod assistant;
mod callee;
mod debug;
mod gil_sampler;
mod hooks;
mod native_stack;
mod offload;
mod run_forever;

/// The process's watchdog, with the pid that started it (a forked child starts afresh).
static WATCHDOG: Mutex<Option<(u32, Arc<Watchdog>)>> = Mutex::new(None);

fn current() -> Option<Arc<Watchdog>> {
    let guard = WATCHDOG.lock();
    match &*guard {
        Some((pid, wd)) if *pid == crate::pid::pid() && wd.is_running() => Some(Arc::clone(wd)),
        _ => None,
    }
}

fn require() -> PyResult<Arc<Watchdog>> {
    current().ok_or_else(|| PyRuntimeError::new_err("the loopguard watchdog is not running"))
}

/// Starts the watchdog if it is not running. `sampler` is "auto", "native" or "gil".
/// Returns the name of the sampler in use.
#[pyfunction]
fn start(py: Python<'_>, threshold_ns: u64, sampler: &str) -> PyResult<String> {
    if let Some(wd) = current() {
        return Ok(wd.sampler_name().to_owned());
    }
    let choice = sampler.to_owned();
    let info = py_info(py)?;
    let wd = py
        .detach(move || Watchdog::start(threshold_ns, move || make_sampler(&choice, info)))
        .map_err(PyRuntimeError::new_err)?;
    let name = wd.sampler_name().to_owned();
    let wd = Arc::new(wd);
    assistant::start(&wd)?;
    *WATCHDOG.lock() = Some((std::process::id(), wd));
    Ok(name)
}

/// Why the GIL-free stack reader cannot be used in this process, in words for a user; None
/// when it can.
#[pyfunction]
fn reader_unavailable(py: Python<'_>) -> PyResult<Option<String>> {
    let info = py_info(py)?;
    Ok(crate::reader::native_sampler(info).err())
}

/// Why the Linux-only parts (the GIL-free reader, system call names, run-queue and CPU time,
/// the epoll hook) are not in this build, in words for a user; None when they are.
#[pyfunction]
fn portable() -> Option<&'static str> {
    (!crate::LINUX_FULL).then_some(crate::NOT_BUILT)
}

/// Facts about the running interpreter that the GIL-free reader depends on.
///
/// `LOOPGUARD_SIMULATE_PYTHON=X.Y` makes the readers believe they run on CPython X.Y (for the
/// tests of what users of a version without a layout see).
fn py_info(py: Python<'_>) -> PyResult<PyInfo> {
    let mut v = py.version_info();
    let simulated = std::env::var("LOOPGUARD_SIMULATE_PYTHON")
        .ok()
        .and_then(|s| {
            let (major, minor) = s.split_once('.')?;
            Some((major.parse::<u8>().ok()?, minor.parse::<u8>().ok()?))
        });
    if let Some((major, minor)) = simulated {
        v = pyo3::PythonVersionInfo {
            major,
            minor,
            patch: 0,
            suffix: None,
        };
    }
    let sys = py.import("sys")?;
    let debug = sys.hasattr("gettotalrefcount")?;
    // Free-threaded builds exist from 3.13 on: older interpreters are spared importing
    // sysconfig (millions of instructions at every start-up).
    let free_threaded = py.version_info() >= (3, 13)
        && py
            .import("sysconfig")?
            .call_method1("get_config_var", ("Py_GIL_DISABLED",))?
            .extract::<Option<i64>>()
            .unwrap_or(None)
            .unwrap_or(0)
            != 0;
    Ok(PyInfo {
        version: (v.major, v.minor, v.patch),
        debug,
        free_threaded,
    })
}

/// The calling thread's `PyThreadState*`.
fn current_thread_state(_py: Python<'_>) -> usize {
    // SAFETY: the `Python` token proves this thread holds the GIL, so it has a current thread
    // state and `PyThreadState_Get` returns it (it cannot fail).
    unsafe { pyo3::ffi::PyThreadState_Get() as usize }
}

fn make_sampler(choice: &str, info: PyInfo) -> Result<Box<dyn Sampler>, String> {
    let gil = || Box::new(gil_sampler::GilSampler) as Box<dyn Sampler>;
    match choice {
        "gil" => Ok(gil()),
        "auto" | "native" => match crate::reader::native_sampler(info) {
            Ok(s) => Ok(s),
            Err(e) if choice == "native" => {
                Err(format!("the GIL-free stack reader is unavailable: {e}"))
            }
            Err(_) => Ok(gil()),
        },
        other => Err(format!(
            "unknown sampler {other:?}: expected 'auto', 'native' or 'gil'"
        )),
    }
}

/// Stops the watchdog and waits for its thread. Safe to call repeatedly.
#[pyfunction]
fn stop(py: Python<'_>) {
    let taken = WATCHDOG.lock().take();
    if let Some((pid, wd)) = taken {
        if pid == std::process::id() {
            py.detach(|| wd.stop());
        }
    }
    assistant::stop(py);
    hooks::forget_loops();
}

/// In a forked child: forget the parent's watchdog (its thread does not exist here).
#[pyfunction]
fn after_fork_child() {
    // The parent's watchdog cannot be stopped or joined from here; leak it.
    if let Some(old) = WATCHDOG.lock().take() {
        old.1.abandon();
        std::mem::forget(old);
    }
    hooks::leak_loops_after_fork();
    assistant::leak_after_fork();
}

/// True while the watchdog runs in this process.
#[pyfunction]
fn is_running() -> bool {
    current().is_some()
}

/// Name of the sampler in use, or None.
#[pyfunction]
fn sampler_name() -> Option<String> {
    current().map(|wd| wd.sampler_name().to_owned())
}

#[pyfunction]
fn set_threshold(ns: u64) -> PyResult<()> {
    require()?.set_threshold_ns(ns);
    Ok(())
}

#[pyfunction]
fn threshold() -> PyResult<u64> {
    Ok(require()?.threshold_ns())
}

#[pyfunction]
fn set_context(context: &str) -> PyResult<()> {
    require()?.set_context(context);
    Ok(())
}

/// Test `nodeid` begins: its setup is the context from now on (when the watchdog runs), and
/// its blocks' samples read native frames when `native_stacks`. Returns the watchdog clock's
/// time, when the test began. One call, where a test's start would otherwise make three.
#[pyfunction]
fn begin_test(nodeid: &str, native_stacks: bool) -> u64 {
    crate::native_stack::set_enabled(native_stacks);
    let at = now_ns();
    if let Some(wd) = current() {
        wd.begin_test(at, nodeid);
    }
    at
}

/// Phase `phase` (0 none, 1 setup, 2 call, 3 teardown) of the test begun last is the context
/// from now on. Does nothing when the watchdog is not running.
#[pyfunction]
fn set_phase(phase: u8) -> PyResult<()> {
    let phase = Phase::from_code(phase).map_err(PyValueError::new_err)?;
    if let Some(wd) = current() {
        wd.set_phase(phase);
    }
    Ok(())
}

/// The events that finished, as [`take`] gives them, when there are any: the context stays as
/// it is (the caller judges them, then calls `set_phase`). Otherwise None, and phase `phase`
/// (as for `set_phase`) is the context from now on: the end of a test phase in one call.
#[pyfunction]
fn advance(py: Python<'_>, phase: u8, timeout_s: f64) -> PyResult<Option<String>> {
    let phase = Phase::from_code(phase).map_err(PyValueError::new_err)?;
    let Some(wd) = current() else {
        return Ok(None);
    };
    let events = take_events(py, &wd, timeout_s);
    if events.is_empty() {
        wd.set_phase(phase);
        return Ok(None);
    }
    let json =
        serde_json::to_string(&events).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(Some(json))
}

/// Waits for the watchdog to handle everything sent so far, then returns the finished events
/// as a JSON array.
#[pyfunction]
fn flush(py: Python<'_>, timeout_s: f64) -> PyResult<String> {
    let Some(wd) = current() else {
        return Ok("[]".into());
    };
    let timeout = (timeout_s.max(0.0) * 1e9) as u64;
    let events = py.detach(|| wd.flush(timeout));
    serde_json::to_string(&events).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// The finished events as a JSON array, or None when there are none. Returns at once unless
/// the end of a block has been reported and the watchdog has not handled it yet; then waits
/// for it (up to `timeout_s`) without holding the GIL.
#[pyfunction]
fn take(py: Python<'_>, timeout_s: f64) -> PyResult<Option<String>> {
    let Some(wd) = current() else {
        return Ok(None);
    };
    let events = take_events(py, &wd, timeout_s);
    if events.is_empty() {
        return Ok(None);
    }
    let json =
        serde_json::to_string(&events).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(Some(json))
}

/// The finished events; waits (up to `timeout_s`, without the GIL) only when the end of a
/// block has been reported and the watchdog has not handled it yet.
fn take_events(py: Python<'_>, wd: &Watchdog, timeout_s: f64) -> Vec<BlockEvent> {
    match wd.take_now() {
        Some(events) => events,
        None => {
            let timeout = (timeout_s.max(0.0) * 1e9) as u64;
            py.detach(|| wd.take(timeout))
        }
    }
}

/// How many loops are registered now, parked ones (between two runs) left out; 0 when the
/// watchdog is not running.
#[pyfunction]
fn registered_loops() -> u64 {
    current().map_or(0, |wd| wd.registered())
}

/// How many registered loops are parked between two runs (0 when the watchdog is not
/// running).
#[pyfunction]
fn parked_loops() -> u64 {
    current().map_or(0, |wd| wd.parked())
}

/// Tells the watchdog that the Python thread `ident` is the kernel thread `native_id`, for
/// interpreters whose thread states do not record it (before 3.11): a GIL holder is then
/// known by its kernel thread id too (see `holder_wait`). Takes a short lock, never the
/// watchdog's.
#[pyfunction]
fn remember_native_id(ident: u64, native_id: i64) {
    crate::holder_wait::remember_tid(ident, native_id);
}

/// The watchdog clock, in nanoseconds.
#[pyfunction(name = "now_ns")]
fn py_now_ns() -> u64 {
    now_ns()
}

// `gil_used = true`: the watchdog's locking rules assume the GIL (see the statics), so on a
// free-threaded build CPython keeps the GIL on rather than run this module without it.
// `loopguard/__init__.py` refuses such builds before this module is loaded.
#[pymodule(gil_used = true)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(start, m)?)?;
    m.add_function(wrap_pyfunction!(stop, m)?)?;
    m.add_function(wrap_pyfunction!(after_fork_child, m)?)?;
    m.add_function(wrap_pyfunction!(is_running, m)?)?;
    m.add_function(wrap_pyfunction!(sampler_name, m)?)?;
    m.add_function(wrap_pyfunction!(reader_unavailable, m)?)?;
    m.add_function(wrap_pyfunction!(portable, m)?)?;
    m.add_function(wrap_pyfunction!(set_threshold, m)?)?;
    m.add_function(wrap_pyfunction!(threshold, m)?)?;
    m.add_function(wrap_pyfunction!(set_context, m)?)?;
    m.add_function(wrap_pyfunction!(begin_test, m)?)?;
    m.add_function(wrap_pyfunction!(set_phase, m)?)?;
    m.add_function(wrap_pyfunction!(advance, m)?)?;
    m.add_function(wrap_pyfunction!(flush, m)?)?;
    m.add_function(wrap_pyfunction!(take, m)?)?;
    m.add_function(wrap_pyfunction!(parked_loops, m)?)?;
    m.add_function(wrap_pyfunction!(py_now_ns, m)?)?;
    m.add_function(wrap_pyfunction!(registered_loops, m)?)?;
    m.add_function(wrap_pyfunction!(remember_native_id, m)?)?;
    hooks::add_to_module(m)?;
    run_forever::add_to_module(m)?;
    assistant::add_to_module(m)?;
    callee::add_to_module(m)?;
    offload::add_to_module(m)?;
    native_stack::add_to_module(m)?;
    debug::add_to_module(m)?;
    m.add_function(wrap_pyfunction!(gil_sampler::_gil_sampler_line, m)?)?;
    Ok(())
}
