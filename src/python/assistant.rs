//! The assistant: the one loopguard thread that takes the GIL, and raise mode.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use super::hooks::running_task;
use super::require;
use crate::watchdog::{BlockNotice, Watchdog};

/// The exception class raised in a blocked loop thread in raise mode. Locked only by threads
/// that hold the GIL.
static RAISE_CLASS: Mutex<Option<Py<PyAny>>> = Mutex::new(None);

/// The assistant thread (see [`assist`]): (pid, handle).
static INJECTOR: Mutex<Option<(u32, std::thread::JoinHandle<()>)>> = Mutex::new(None);

/// Whether raise mode is on.
static RAISE_ON: AtomicBool = AtomicBool::new(false);

/// The assistant thread's `threading.get_ident()` (its `pthread_t`), 0 when none runs: a
/// sample that finds it holding the GIL shows the loop thread waiting for loopguard itself.
static ASSISTANT_IDENT: AtomicU64 = AtomicU64::new(0);

/// Raise mode on: from now on, a block detected in a loop thread (not starvation) makes that
/// thread raise `exc_class` at the next bytecode it runs, if the same callback is still running
/// by then. `exc_class` must be an exception class that can be called with no arguments.
#[pyfunction]
fn enable_raise(py: Python<'_>, exc_class: Bound<'_, PyAny>) -> PyResult<()> {
    require()?;
    let base = py.get_type::<pyo3::exceptions::PyBaseException>();
    let is_exc_class = exc_class.is_instance_of::<pyo3::types::PyType>()
        && exc_class
            .cast::<pyo3::types::PyType>()?
            .is_subclass(&base)?;
    if !is_exc_class {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "enable_raise() needs an exception class",
        ));
    }
    *RAISE_CLASS.lock() = Some(exc_class.unbind());
    RAISE_ON.store(true, Ordering::Relaxed);
    Ok(())
}

/// Raise mode off.
#[pyfunction]
fn disable_raise() {
    RAISE_ON.store(false, Ordering::Relaxed);
}

/// Starts the assistant thread for `wd` (see [`assist`]).
pub(super) fn start(wd: &Arc<Watchdog>) -> PyResult<()> {
    let rx = wd.notices();
    let weak = Arc::downgrade(wd);
    let handle = crate::quiet::spawn(
        std::thread::Builder::new().name("loopguard-assistant".into()),
        move || assist(rx, weak),
    )
    .map_err(|e| PyRuntimeError::new_err(format!("cannot start loopguard's thread: {e}")))?;
    #[cfg(unix)]
    {
        use std::os::unix::thread::JoinHandleExt;
        ASSISTANT_IDENT.store(handle.as_pthread_t() as u64, Ordering::Relaxed);
    }
    *INJECTOR.lock() = Some((std::process::id(), handle));
    wd.set_notify_blocks(true);
    Ok(())
}

/// The assistant: the one loopguard thread that takes the GIL. For each block the watchdog
/// detects, while the loop thread is still in that block, it names the running asyncio task
/// (with its await chain, see `running_task`) and, in raise mode, raises the configured exception in the loop thread. The watchdog never
/// waits for it. Ends when the watchdog stops (its channel disconnects).
fn assist(rx: crossbeam_channel::Receiver<BlockNotice>, wd: std::sync::Weak<Watchdog>) {
    while let Ok((slot, start)) = rx.recv() {
        // SAFETY: `Py_IsInitialized` only reads a flag and may be called at any time.
        if unsafe { pyo3::ffi::Py_IsInitialized() } == 0 {
            return;
        }
        Python::attach(|py| {
            // Holding the GIL, the loop thread cannot move on: if it is still in the same busy
            // stretch now, what we see is the block, and an exception lands in its callback
            // (but Python code run here can let the GIL go: checked again before a raise).
            // A beating loop (uvloop) late since `start` is still blocked too, but in which
            // callback is not known: its task is named, nothing is raised in it.
            let late_beat = slot.is_late_since(start);
            if !late_beat && !slot.is_busy_since(start) {
                return;
            }
            if let Some((name, chain)) = running_task(py, slot.id, slot.target.thread_ident) {
                if let Some(wd) = wd.upgrade() {
                    wd.annotate(slot.id, start, name, chain);
                }
            }
            if late_beat || !RAISE_ON.load(Ordering::Relaxed) {
                return;
            }
            let Some(cls) = RAISE_CLASS.lock().as_ref().map(|c| c.clone_ref(py)) else {
                return;
            };
            // Naming the task ran Python code, which lets the GIL go at a thread switch (or a
            // read through a file): the loop thread may have finished the block meanwhile, and
            // the exception would land in whatever it runs next. Checked again here, with no
            // Python code between this check and the call that sends the exception.
            if !slot.is_busy_since(start) {
                return;
            }
            // `threading.get_ident()` is an unsigned long; pyo3 declares the parameter a long.
            let ident = slot.target.thread_ident as std::os::raw::c_long;
            // SAFETY: we hold the GIL (`py`), `cls` is a live exception class (checked in
            // `enable_raise` and kept alive by `RAISE_CLASS`), and an unknown thread id only
            // makes the call return 0.
            unsafe {
                pyo3::ffi::PyThreadState_SetAsyncExc(ident, cls.as_ptr());
            }
        });
    }
}

/// Stops raise mode and waits for the assistant, which ends with the watchdog (its channel
/// disconnects). It may need the GIL to finish, so it is waited for without holding the GIL.
pub(super) fn stop(py: Python<'_>) {
    let injector = INJECTOR.lock().take();
    if let Some((pid, h)) = injector {
        if pid == std::process::id() {
            py.detach(|| {
                let _ = h.join();
            });
        }
    }
    RAISE_CLASS.lock().take();
    RAISE_ON.store(false, Ordering::Relaxed);
    ASSISTANT_IDENT.store(0, Ordering::Relaxed);
}

/// The `threading.get_ident()` of loopguard's assistant thread (the one loopguard thread that
/// takes the GIL, to name a blocked loop's task), or None when it does not run (or off Unix,
/// where it is not recorded).
#[pyfunction]
fn assistant_ident() -> Option<u64> {
    match ASSISTANT_IDENT.load(Ordering::Relaxed) {
        0 => None,
        ident => Some(ident),
    }
}

/// In a forked child: leaks the parent's assistant (its thread does not exist here).
pub(super) fn leak_after_fork() {
    ASSISTANT_IDENT.store(0, Ordering::Relaxed);
    if let Some(old) = INJECTOR.lock().take() {
        std::mem::forget(old);
    }
}

/// Adds `enable_raise` and `disable_raise` to `loopguard._native`.
pub(super) fn add_to_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(enable_raise, m)?)?;
    m.add_function(wrap_pyfunction!(disable_raise, m)?)?;
    m.add_function(wrap_pyfunction!(assistant_ident, m)?)?;
    Ok(())
}
