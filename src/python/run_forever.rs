//! `RunForever`: the `run_forever` loopguard gives a loop class, as a native callable.
//!
//! Asyncio's debug mode (the mode unittest's `IsolatedAsyncioTestCase` runs in) records the
//! stack at every future, task and callback a loop creates, and a traceback through a loop
//! shows every frame under its callbacks: a Python wrapper around `run_forever` would be one
//! frame more in each, the loop's whole run long. This one is not a Python frame. It calls the
//! Python layer's `enter(loop)` before the loop runs and `leave(token)` after it stops (those
//! frames are gone by the time the loop runs a callback), and the original method in between.

use std::sync::atomic::{AtomicU8, Ordering};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PySet, PyTuple};

/// What a patched `run_forever` does (see [`set_run_mode`]).
static MODE: AtomicU8 = AtomicU8::new(MODE_OFF);
/// Nobody wants loops watched: the original runs alone.
const MODE_OFF: u8 = 0;
/// Loops are watched: the common case natively (see [`Fast`]), others through `enter`/`leave`.
const MODE_NATIVE: u8 = 1;
/// Loops are watched, all through `enter`/`leave` (the Python layer has more to do at each
/// run: a lag probe).
const MODE_PYTHON: u8 = 2;

/// Tells every patched `run_forever` what to do from now on: 0, run the original alone (the
/// runtime is not active); 1, watch the loop, natively where it can (a stdlib loop on an
/// `EpollSelector`), through `enter`/`leave` otherwise; 2, watch it through `enter`/`leave`.
/// Set by the Python layer's runtime whenever what it wants changes.
#[pyfunction]
fn set_run_mode(mode: u8) -> PyResult<()> {
    if mode > MODE_PYTHON {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "run mode must be 0, 1 or 2, got {mode}"
        )));
    }
    MODE.store(mode, Ordering::Relaxed);
    Ok(())
}

/// A loop class's `run_forever`: `enter(loop)` returns a token (None: the loop is not
/// watched, and `leave` is not called), then the original `run_forever(loop)` runs, then
/// `leave(token)`, whatever way the original left (a return or any exception, `SystemExit`
/// and `KeyboardInterrupt` included). An exception from `leave` replaces the original's, as a
/// `finally` block's would (the original's becomes its `__context__`).
///
/// A method descriptor, as a function is: read from an instance it returns a bound method
/// (`types.MethodType`), from the class itself. Its instance dictionary holds what
/// `functools.wraps` would give a function (`__wrapped__`, `__doc__`, `__qualname__`...),
/// set by the Python layer.
#[pyclass(module = "loopguard._native", frozen, dict)]
pub(super) struct RunForever {
    original: Py<PyAny>,
    enter: Py<PyAny>,
    leave: Py<PyAny>,
    method_type: Py<PyAny>,
    #[cfg_attr(not(linux_full), allow(dead_code))]
    fast: Option<Fast>,
}

/// What the native path needs: the watched loops and each thread's slot, as the Python layer
/// keeps them, and what a stdlib loop on an `EpollSelector` looks like. That common case is
/// registered and its epoll object wrapped by an `EpollProxy` here, as the Python layer's
/// `enter` would, without a Python call; at the end of the run it is parked rather than
/// undone (see [`Fast::leave`]). Linux only (the portable build has no `EpollProxy`: every
/// watched run goes through `enter` and `leave`).
#[cfg_attr(not(linux_full), allow(dead_code))]
struct Fast {
    kind: String,
    /// `id()` of the loops running registered.
    watched: Py<PySet>,
    /// The slot of the loop each thread runs, by thread ident.
    thread_slots: Py<PyDict>,
    epoll_selector: Py<PyAny>,
    epoll: Py<PyAny>,
    threading: Py<PyModule>,
}

/// How a run began.
enum Entry {
    /// Not watched: the original runs alone.
    Plain,
    /// Through the Python layer's `enter` and `leave`.
    Python,
    /// Watched natively: what to undo.
    #[cfg_attr(not(linux_full), allow(dead_code))]
    Native(Entered),
}

#[cfg_attr(not(linux_full), allow(dead_code))]
struct Entered {
    selector: Py<PyAny>,
    inner: Py<PyAny>,
    proxy: Py<PyAny>,
    slot: Py<super::hooks::Slot>,
    thread: u64,
    outer: Option<Py<PyAny>>,
    loop_id: usize,
}

#[pymethods]
impl RunForever {
    /// `fast`: `(kind, watched, thread_slots, EpollSelector, epoll)` for the native path
    /// (see [`Fast`]); None: every watched run goes through `enter` and `leave`.
    #[new]
    #[pyo3(signature = (original, enter, leave, fast=None))]
    #[allow(clippy::type_complexity)]
    fn new(
        py: Python<'_>,
        original: Py<PyAny>,
        enter: Py<PyAny>,
        leave: Py<PyAny>,
        fast: Option<(String, Py<PySet>, Py<PyDict>, Py<PyAny>, Py<PyAny>)>,
    ) -> PyResult<Self> {
        let method_type = py.import("types")?.getattr("MethodType")?.unbind();
        let threading = py.import("threading")?.unbind();
        let fast = fast.map(
            |(kind, watched, thread_slots, epoll_selector, epoll)| Fast {
                kind,
                watched,
                thread_slots,
                epoll_selector,
                epoll,
                threading,
            },
        );
        Ok(RunForever {
            original,
            enter,
            leave,
            method_type,
            fast,
        })
    }

    fn __get__(
        slf: Bound<'_, Self>,
        obj: Option<Bound<'_, PyAny>>,
        _owner: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match obj {
            Some(obj) if !obj.is_none() => {
                let method_type = slf.get().method_type.bind(slf.py());
                Ok(method_type.call1((&slf, obj))?.unbind())
            }
            _ => Ok(slf.into_any().unbind()),
        }
    }

    #[pyo3(signature = (loop_obj, *args))]
    fn __call__(
        &self,
        py: Python<'_>,
        loop_obj: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<PyAny>> {
        let call = || -> PyResult<Py<PyAny>> {
            let mut all = vec![loop_obj.clone()];
            all.extend(args.iter());
            call_parking(py, self.original.bind(py), &PyTuple::new(py, all)?)
        };
        let entry = match MODE.load(Ordering::Relaxed) {
            MODE_OFF => Entry::Plain,
            MODE_NATIVE => match &self.fast {
                Some(fast) => fast.enter(py, &loop_obj)?,
                None => Entry::Python,
            },
            _ => Entry::Python,
        };
        match entry {
            Entry::Plain => call(),
            #[cfg(linux_full)]
            Entry::Native(entered) => {
                let fast = self.fast.as_ref().expect("entered natively");
                let result = call();
                finish(py, result, fast.leave(py, entered, true))
            }
            #[cfg(not(linux_full))]
            Entry::Native(_) => unreachable!("no native path in this build"),
            Entry::Python => {
                let one = PyTuple::new(py, [&loop_obj])?;
                let token = call_parking(py, self.enter.bind(py), &one)?;
                if token.is_none(py) {
                    return call();
                }
                let result = call();
                let one = PyTuple::new(py, [token])?;
                finish(
                    py,
                    result,
                    call_parking(py, self.leave.bind(py), &one).map(drop),
                )
            }
        }
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.original)?;
        visit.call(&self.enter)?;
        visit.call(&self.leave)?;
        if let Some(fast) = &self.fast {
            visit.call(&fast.watched)?;
            visit.call(&fast.thread_slots)?;
        }
        Ok(())
    }
}

/// Calls `callable(*args)`, for the calls a loop thread makes from
/// `RunForever` (the original `run_forever`, `enter`, `leave`, `is_running`).
///
/// Before 3.14, a daemon thread that wants the GIL back after the interpreter began to finalize
/// is ended by `pthread_exit`, whose forced unwinding would cross this frame and abort the
/// process at the trampoline's edge (a daemon thread whose loop runs at interpreter exit: its
/// `run_forever` is under every callback). As pyo3 does around its own GIL reacquisition, the
/// call is declared as one that may unwind, and a guard on this frame parks the thread forever
/// instead, as Python 3.14 does with such a thread.
fn call_parking(
    py: Python<'_>,
    callable: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
) -> PyResult<Py<PyAny>> {
    let guard = ParkOnUnwind;
    // SAFETY: both pointers are live objects borrowed for the call (`callable`, `args`, a
    // tuple), and the `Python` token proves the GIL is held.
    let result = unsafe { unwinding::PyObject_CallObject(callable.as_ptr(), args.as_ptr()) };
    std::mem::forget(guard);
    // SAFETY: `PyObject_CallObject` returns a new reference, or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, result) }.map(Bound::unbind)
}

mod unwinding {
    use pyo3::ffi::PyObject;

    // Not `PyObject_Call`: pyo3 declares and calls that one as a function that cannot
    // unwind, and one symbol has one declaration in the compiled code (the call would get no
    // landing pad). pyo3 never calls this one.
    #[allow(clashing_extern_declarations)]
    extern "C-unwind" {
        /// `PyObject_CallObject`, declared as a function that may unwind (see
        /// `call_parking`).
        pub fn PyObject_CallObject(callable: *mut PyObject, args: *mut PyObject) -> *mut PyObject;
    }
}

/// Dropped only while a forced unwinding (a thread ended by `pthread_exit` during interpreter
/// finalization) crosses the frame that holds it: the thread then waits forever.
struct ParkOnUnwind;

impl Drop for ParkOnUnwind {
    fn drop(&mut self) {
        loop {
            std::thread::park();
        }
    }
}

/// The outcome of a run whose end (`leave`) may have failed too: as a `finally` block's, the
/// end's exception replaces the run's (which becomes its `__context__`).
fn finish(py: Python<'_>, result: PyResult<Py<PyAny>>, leave: PyResult<()>) -> PyResult<Py<PyAny>> {
    match leave {
        Ok(()) => result,
        Err(err) => {
            if let Err(original) = result {
                err.set_context(py, Some(original));
            }
            Err(err)
        }
    }
}

impl Fast {
    /// Begins a run of `loop_obj`: registered and its epoll wrapped here when it is a stdlib
    /// loop on an `EpollSelector`; [`Entry::Python`] for any other loop.
    #[cfg(linux_full)]
    fn enter(&self, py: Python<'_>, loop_obj: &Bound<'_, PyAny>) -> PyResult<Entry> {
        use pyo3::intern;
        let Some(wd) = super::current() else {
            return Ok(Entry::Plain);
        };
        let is_running = loop_obj.getattr(intern!(py, "is_running"))?;
        if call_parking(py, &is_running, &PyTuple::empty(py))?
            .bind(py)
            .is_truthy()?
        {
            return Ok(Entry::Plain); // the original raises
        }
        let Ok(selector) = loop_obj.getattr(intern!(py, "_selector")) else {
            return Ok(Entry::Python);
        };
        if !selector.is_instance(self.epoll_selector.bind(py))? {
            return Ok(Entry::Python);
        }
        let Ok(mut inner) = selector.getattr(intern!(py, "_selector")) else {
            return Ok(Entry::Python);
        };
        // SAFETY: `PyThread_get_thread_ident` has no preconditions (it is what
        // `threading.get_ident` returns).
        let thread = unsafe { pyo3::ffi::PyThread_get_thread_ident() } as u64;
        let parked = match inner.cast::<super::hooks::EpollProxy>() {
            Ok(proxy) => match proxy.get().parked_slot() {
                Some(slot) => Some((proxy.clone(), slot.clone_ref(py))),
                None => return Ok(Entry::Python), // a proxy of the Python layer's
            },
            Err(_) => None,
        };
        if let Some((proxy, slot)) = parked {
            // This loop ran before and stayed registered (see `Fast::leave`): it runs again
            // where it ran, watched by the same watchdog, or it is watched as a new one.
            let same = {
                let s = slot.get().loop_slot();
                s.is_registered_with(&wd) && super::hooks::is_current_thread(py, &s.target, thread)
            };
            if same {
                slot.get().resume(loop_obj.clone().unbind());
                let epoll = proxy.get().epoll(py).clone().unbind();
                return self.track(
                    py,
                    loop_obj,
                    &selector,
                    epoll,
                    proxy.into_any().unbind(),
                    slot,
                    thread,
                );
            }
            slot.get().unregister(py);
            inner = proxy.get().epoll(py).clone();
            selector.setattr(intern!(py, "_selector"), &inner)?;
        }
        if !inner.is_instance(self.epoll.bind(py))? {
            return Ok(Entry::Python);
        }
        let name = self.thread_name(py, thread)?;
        let slot = super::hooks::register_loop(
            py,
            &wd,
            &self.kind,
            &name,
            thread,
            Some(loop_obj.clone().unbind()),
        )?;
        let slot = Py::new(py, slot)?;
        let proxy =
            super::hooks::EpollProxy::new(py, inner.clone().unbind(), slot.bind(py).clone())
                .and_then(|proxy| Py::new(py, proxy));
        let proxy = match proxy {
            Ok(proxy) => proxy.into_any(),
            Err(e) => {
                slot.get().unregister(py);
                return Err(e);
            }
        };
        if let Err(e) = selector.setattr(intern!(py, "_selector"), &proxy) {
            slot.get().unregister(py);
            return Err(e);
        }
        self.track(py, loop_obj, &selector, inner.unbind(), proxy, slot, thread)
    }

    /// The run of `loop_obj`, its `proxy` in place of `epoll` in `selector` and its `slot`
    /// registered (or resumed), begins: the loop is watched, and the thread's loop.
    #[cfg(linux_full)]
    #[allow(clippy::too_many_arguments)]
    fn track(
        &self,
        py: Python<'_>,
        loop_obj: &Bound<'_, PyAny>,
        selector: &Bound<'_, PyAny>,
        epoll: Py<PyAny>,
        proxy: Py<PyAny>,
        slot: Py<super::hooks::Slot>,
        thread: u64,
    ) -> PyResult<Entry> {
        let loop_id = loop_obj.as_ptr() as usize;
        let mut entered = Entered {
            selector: selector.clone().unbind(),
            inner: epoll,
            proxy,
            slot,
            thread,
            outer: None,
            loop_id,
        };
        let track = |entered: &mut Entered| -> PyResult<()> {
            self.watched.bind(py).add(loop_id)?;
            let slots = self.thread_slots.bind(py);
            let key = thread.into_pyobject(py)?;
            entered.outer = slots.get_item(&key)?.map(Bound::unbind);
            slots.set_item(key, &entered.slot)
        };
        match track(&mut entered) {
            Ok(()) => Ok(Entry::Native(entered)),
            Err(e) => {
                // Nothing half done stays: undone as at the end of a run, and not parked.
                let _ = self.leave(py, entered, false);
                Err(e)
            }
        }
    }

    #[cfg(not(linux_full))]
    fn enter(&self, _py: Python<'_>, _loop_obj: &Bound<'_, PyAny>) -> PyResult<Entry> {
        Ok(Entry::Python)
    }

    /// The current thread's name, as `threading.current_thread().name` gives it.
    #[cfg(linux_full)]
    fn thread_name(&self, py: Python<'_>, thread: u64) -> PyResult<String> {
        use pyo3::intern;
        let threading = self.threading.bind(py);
        // The thread object from threading's table, read without its `name` property's frame.
        if let Ok(active) = threading.getattr(intern!(py, "_active")) {
            if let Ok(active) = active.cast::<PyDict>() {
                if let Some(t) = active.get_item(thread)? {
                    if let Ok(name) = t.getattr(intern!(py, "_name")) {
                        if let Ok(name) = name.extract::<String>() {
                            return Ok(name);
                        }
                    }
                }
            }
        }
        threading
            .call_method0(intern!(py, "current_thread"))?
            .getattr(intern!(py, "name"))?
            .extract()
    }

    /// Ends a run begun natively: what [`Fast::enter`] did, undone in reverse. With `park`, the
    /// loop stays registered, parked, its proxy in place for its next run (a test's loop runs
    /// once for each async fixture and once for the test: registering it and wrapping its
    /// epoll object each time cost more than the rest of the run's watching); it is
    /// unregistered when its epoll object is closed (`loop.close()`) or freed, or when it runs
    /// again on another thread or under another watchdog. Without `park`, or when something
    /// else has taken the proxy's place, or when anything fails (the first failure is
    /// returned), the epoll object is put back and the loop unregistered.
    #[cfg(linux_full)]
    fn leave(&self, py: Python<'_>, e: Entered, park: bool) -> PyResult<()> {
        use pyo3::intern;
        let undo = || -> PyResult<()> {
            let slots = self.thread_slots.bind(py);
            match e.outer {
                None => match slots.del_item(e.thread) {
                    Err(err) if !err.is_instance_of::<pyo3::exceptions::PyKeyError>(py) => {
                        return Err(err)
                    }
                    _ => {}
                },
                Some(outer) => slots.set_item(e.thread, outer)?,
            }
            self.watched.bind(py).discard(e.loop_id)?;
            Ok(())
        };
        let undone = undo();
        let selector = e.selector.bind(py);
        let in_place = selector
            .getattr(intern!(py, "_selector"))
            .map(|s| s.is(e.proxy.bind(py)));
        match in_place {
            Ok(true) if park && undone.is_ok() => {
                e.slot.get().park(py);
                return Ok(());
            }
            Ok(true) => {
                if let Err(err) = selector.setattr(intern!(py, "_selector"), &e.inner) {
                    e.slot.get().unregister(py);
                    return undone.and(Err(err));
                }
            }
            Ok(false) => {}
            Err(err) => {
                e.slot.get().unregister(py);
                return undone.and(Err(err));
            }
        }
        e.slot.get().unregister(py);
        undone
    }
}

/// Adds `RunForever` and `set_run_mode` to `loopguard._native`.
pub(super) fn add_to_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_run_mode, m)?)?;
    m.add_class::<RunForever>()
}
