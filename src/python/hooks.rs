//! The loop hooks: what a loop thread calls around its selector (`Slot`, `SelectorProxy`,
//! `EpollProxy`), and the loops' Python objects, kept for the code that names the running task.
//! The timings (how long a selector may wait, how often a loop beats) are in
//! [`crate::policy`].

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;

use super::{current_thread_state, require};
use crate::event::Frame;
use crate::policy::{beat_interval, selector_cap};
use crate::sampler::Target;
use crate::watchdog::LoopSlot;

/// Loop objects by loop id, for the code that names a loop's running task (it takes the GIL).
/// Locked only by threads that hold the GIL, so it cannot deadlock with it.
static LOOP_OBJECTS: Mutex<Option<HashMap<u64, Py<PyAny>>>> = Mutex::new(None);

/// The Python function that describes a blocked loop's running task (see
/// [`set_task_reader`]). Locked only by threads that hold the GIL.
static TASK_READER: Mutex<Option<Py<PyAny>>> = Mutex::new(None);

/// The name of the asyncio task running on loop `loop_id` now, when the loop was registered
/// with its object and a task runs.
pub(super) fn running_task_name(py: Python<'_>, loop_id: u64) -> Option<String> {
    let loop_obj = loop_object(py, loop_id)?;
    current_task_name(py, loop_obj.bind(py)).unwrap_or(None)
}

fn loop_object(py: Python<'_>, loop_id: u64) -> Option<Py<PyAny>> {
    LOOP_OBJECTS
        .lock()
        .as_ref()
        .and_then(|m| m.get(&loop_id).map(|o| o.clone_ref(py)))
}

/// The asyncio task running on loop `loop_id` now, as the Python layer's task reader describes
/// it while the loop thread (`thread_ident`) is blocked: its name and its await chain (the
/// frames of the coroutines it runs, outermost first, when the loop thread's own stack does
/// not reach them). Without a reader, the name only. Called with the GIL held, so the loop
/// thread cannot move on while the chain is read.
pub(super) fn running_task(
    py: Python<'_>,
    loop_id: u64,
    thread_ident: u64,
) -> Option<(String, Vec<Frame>)> {
    let reader = TASK_READER.lock().as_ref().map(|r| r.clone_ref(py));
    let Some(reader) = reader else {
        return running_task_name(py, loop_id).map(|name| (name, Vec::new()));
    };
    let loop_obj = loop_object(py, loop_id)?;
    let found = reader.bind(py).call1((loop_obj, thread_ident)).ok()?;
    if found.is_none() {
        return None;
    }
    let (name, chain): (String, Vec<(String, u32, String)>) = found.extract().ok()?;
    let frames = chain
        .into_iter()
        .map(|(filename, lineno, function)| Frame {
            filename: filename.into(),
            lineno,
            function: function.into(),
        })
        .collect();
    Some((name, frames))
}

/// Sets the function that describes a blocked loop's running task: called as
/// `reader(loop, thread_ident)` on loopguard's assistant thread, with the GIL held, while the
/// loop thread is blocked; returns `(task name, [(filename, lineno, function), ...])` or None
/// (no task runs). None removes it.
#[pyfunction]
#[pyo3(signature = (reader))]
fn set_task_reader(reader: Option<Py<PyAny>>) {
    *TASK_READER.lock() = reader;
}

fn current_task_name(py: Python<'_>, loop_obj: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
    let task = py
        .import("asyncio")?
        .call_method1("current_task", (loop_obj,))?;
    if task.is_none() {
        return Ok(None);
    }
    Ok(Some(task.call_method0("get_name")?.extract()?))
}

/// Drops the loop objects (the watchdog stopped).
pub(super) fn forget_loops() {
    LOOP_OBJECTS.lock().take();
}

/// In a forked child: leaks the parent's loop objects (their loops do not run here).
pub(super) fn leak_loops_after_fork() {
    if let Some(old) = LOOP_OBJECTS.lock().take() {
        std::mem::forget(old);
    }
}

/// Registers the running loop `loop_obj` of the calling thread.
#[pyfunction]
#[pyo3(signature = (kind, thread_name, thread_ident, loop_obj=None))]
fn register(
    py: Python<'_>,
    kind: &str,
    thread_name: &str,
    thread_ident: u64,
    loop_obj: Option<Py<PyAny>>,
) -> PyResult<Slot> {
    let wd = require()?;
    register_loop(py, &wd, kind, thread_name, thread_ident, loop_obj)
}

/// Registers with `wd` the running loop `loop_obj` of the calling thread (see [`register`]).
pub(super) fn register_loop(
    py: Python<'_>,
    wd: &crate::watchdog::Watchdog,
    kind: &str,
    thread_name: &str,
    thread_ident: u64,
    loop_obj: Option<Py<PyAny>>,
) -> PyResult<Slot> {
    let (tstate, native_tid) = thread_identity(py);
    let slot = wd.register(
        kind,
        thread_name,
        Target {
            loop_id: 0,
            thread_ident,
            tstate,
            native_tid,
        },
    );
    if let Some(obj) = loop_obj {
        remember_loop(slot.id, obj);
    }
    Ok(Slot { slot })
}

fn remember_loop(id: u64, loop_obj: Py<PyAny>) {
    LOOP_OBJECTS
        .lock()
        .get_or_insert_with(HashMap::new)
        .insert(id, loop_obj);
}

fn forget_loop(py: Python<'_>, id: u64) {
    let removed = LOOP_OBJECTS.lock().as_mut().and_then(|map| map.remove(&id));
    // Dropped once the lock is released: the loop's last reference may run code.
    drop(removed.map(|obj| obj.into_bound(py)));
}

/// True when the calling thread is the one `target` names, the very same thread: its ident,
/// thread state and kernel thread id all match (a thread that ended and a new one may share
/// the first two).
#[cfg_attr(not(linux_full), allow(dead_code))]
pub(super) fn is_current_thread(py: Python<'_>, target: &Target, thread_ident: u64) -> bool {
    target.thread_ident == thread_ident && thread_identity(py) == (target.tstate, target.native_tid)
}

/// The calling thread's `PyThreadState*` and kernel thread id (0 where nothing reads it: off
/// Linux and in the portable build).
fn thread_identity(py: Python<'_>) -> (usize, i64) {
    #[cfg(linux_full)]
    // SAFETY: `gettid` has no preconditions.
    let tid = unsafe { libc::gettid() } as i64;
    #[cfg(not(linux_full))]
    let tid = 0;
    (current_thread_state(py), tid)
}

/// A registered loop. The loop thread calls `busy`/`idle` (or uses a `SelectorProxy`) and
/// `unregister` when the loop stops.
#[pyclass(module = "loopguard._native", frozen)]
pub(super) struct Slot {
    slot: Arc<LoopSlot>,
}

#[pymethods]
impl Slot {
    #[getter]
    fn id(&self) -> u64 {
        self.slot.id
    }

    fn busy(&self) {
        self.slot.busy();
    }

    /// Marks the loop idle before its selector waits up to `timeout` seconds (None: no
    /// limit). Returns the timeout to use: capped at [`selector_cap`] (half the threshold), so
    /// the loop comes back regularly and a loop that does not come back in time is known to be
    /// starved.
    #[pyo3(signature = (timeout))]
    fn idle(&self, timeout: Option<f64>) -> f64 {
        let wait = capped_wait(&self.slot, timeout);
        let _ = self.slot.idle(Some(secs_to_ns(wait)));
        wait
    }

    /// Marks the loop idle until `timeout` seconds from now without capping the wait (None:
    /// no limit, so the loop is never counted as starved). For loops whose wait loopguard
    /// cannot shorten (trio).
    #[pyo3(signature = (timeout))]
    fn idle_for(&self, timeout: Option<f64>) {
        self.slot.idle(timeout.map(secs_to_ns));
    }

    /// For loops without a per-iteration hook (uvloop): called by a periodic callback on the
    /// loop; returns the seconds until the next beat is due ([`beat_interval`]). See
    /// `LoopSlot::beat`.
    fn beat(&self) -> f64 {
        let interval = beat_interval(self.slot.threshold_ns());
        self.slot.beat(interval);
        interval as f64 / 1e9
    }

    pub(super) fn unregister(&self, py: Python<'_>) {
        self.slot.unregister();
        forget_loop(py, self.slot.id);
    }
}

#[cfg_attr(not(linux_full), allow(dead_code))]
impl Slot {
    /// The loop stopped and stays registered, parked (see `LoopSlot::park`); its object is
    /// let go meanwhile, so that a loop nobody closes can still be freed.
    pub(super) fn park(&self, py: Python<'_>) {
        self.slot.park();
        forget_loop(py, self.slot.id);
    }

    /// The parked loop `loop_obj` runs again.
    pub(super) fn resume(&self, loop_obj: Py<PyAny>) {
        remember_loop(self.slot.id, loop_obj);
        self.slot.resume();
    }

    pub(super) fn loop_slot(&self) -> &LoopSlot {
        &self.slot
    }
}

/// The selector timeout to use: at most [`selector_cap`] (see `Slot::idle`).
fn capped_wait(slot: &LoopSlot, timeout: Option<f64>) -> f64 {
    let cap = selector_cap(slot.threshold_ns()) as f64 / 1e9;
    match timeout {
        Some(t) if t < cap => t.max(0.0),
        _ => cap,
    }
}

fn secs_to_ns(s: f64) -> u64 {
    if s.is_nan() || s <= 0.0 {
        0
    } else {
        (s * 1e9).min(u64::MAX as f64 / 2.0) as u64
    }
}

/// Wraps a `selectors` selector: marks the loop idle around each `select` call and caps the
/// wait so that a loop starved of the GIL is noticed even when it waits for nothing.
#[pyclass(module = "loopguard._native", frozen)]
struct SelectorProxy {
    inner: Py<PyAny>,
    select_fn: Py<PyAny>,
    slot: Arc<LoopSlot>,
}

#[pymethods]
impl SelectorProxy {
    #[new]
    fn new(py: Python<'_>, inner: Py<PyAny>, slot: &Slot) -> PyResult<Self> {
        let select_fn = inner.bind(py).getattr("select")?.unbind();
        Ok(SelectorProxy {
            inner,
            select_fn,
            slot: Arc::clone(&slot.slot),
        })
    }

    #[pyo3(signature = (timeout=None))]
    fn select(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let wait = capped_wait(&self.slot, timeout);
        let _ = self.slot.idle(Some(secs_to_ns(wait)));
        let r = self.select_fn.call1(py, (wait,));
        self.slot.busy();
        r
    }

    #[getter]
    fn inner(&self, py: Python<'_>) -> Py<PyAny> {
        self.inner.clone_ref(py)
    }

    fn __getattr__(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        Ok(self.inner.bind(py).getattr(name)?.unbind())
    }
}

/// Wraps the `select.epoll` object inside an `EpollSelector`: marks the loop idle around each
/// `poll`, which it performs itself (the same `epoll_wait`, GIL released, signals checked and
/// the wait resumed on `EINTR`, as CPython's `epoll.poll` does). This is the cheapest hook there
/// is on stdlib asyncio: one native call replaces another. Between two runs of a loop watched
/// natively it stays in place, its slot parked (see `LoopSlot::park`): `poll` is then
/// `epoll.poll` itself, and closing the proxy (`loop.close()`) or freeing it unregisters the
/// loop. Linux only (not in the portable build, where `EpollSelector` gets the selector
/// subclass instead).
#[cfg(linux_full)]
#[pyclass(module = "loopguard._native", frozen)]
pub(super) struct EpollProxy {
    inner: Py<PyAny>,
    fd: i32,
    closed: std::sync::atomic::AtomicBool,
    slot: Arc<LoopSlot>,
    slot_obj: Py<Slot>,
}

#[cfg(linux_full)]
impl EpollProxy {
    /// `epoll_wait` into `buf` for at most `wait_ns`, the loop idle meanwhile (resumed on
    /// `EINTR` once signals are checked, as CPython's `epoll.poll` does); the events as
    /// `epoll.poll` returns them, a list of `(fd, mask)`.
    fn wait_for_events(
        &self,
        py: Python<'_>,
        buf: &mut [libc::epoll_event],
        wait_ns: u64,
    ) -> PyResult<Py<PyAny>> {
        let deadline = self.slot.idle(Some(wait_ns)).saturating_add(wait_ns);
        let mut left_ns = wait_ns;
        let result = loop {
            // Round up to whole milliseconds, as CPython does.
            let ms = i32::try_from(left_ns.div_ceil(1_000_000)).unwrap_or(i32::MAX);
            let fd = self.fd;
            let r = py.detach(|| crate::epoll::wait(fd, buf, ms));
            match r {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                    if let Err(sig) = py.check_signals() {
                        break Err(sig);
                    }
                    left_ns = deadline.saturating_sub(crate::clock::now_ns());
                }
                Err(e) => break Err(PyErr::from(e)),
                Ok(n) => break Ok(n),
            }
        };
        self.slot.busy();
        let n = result?;
        let list = pyo3::types::PyList::empty(py);
        for ev in &buf[..n] {
            let (fd, mask) = (ev.u64 as i32, ev.events);
            list.append((fd, mask))?;
        }
        Ok(list.into_any().unbind())
    }
}

#[cfg(linux_full)]
#[pymethods]
impl EpollProxy {
    #[new]
    pub(super) fn new(py: Python<'_>, inner: Py<PyAny>, slot: Bound<'_, Slot>) -> PyResult<Self> {
        let fd = inner.bind(py).call_method0("fileno")?.extract::<i32>()?;
        Ok(EpollProxy {
            inner,
            fd,
            closed: std::sync::atomic::AtomicBool::new(false),
            slot: Arc::clone(&slot.get().slot),
            slot_obj: slot.unbind(),
        })
    }

    /// `epoll.poll(timeout=None, maxevents=-1)`: a negative or missing timeout waits forever
    /// (here: at most [`selector_cap`], see `Slot::idle`; as asked while the loop is parked,
    /// between two runs: it is not watched then).
    #[pyo3(signature = (timeout=None, maxevents=-1))]
    fn poll(&self, py: Python<'_>, timeout: Option<f64>, maxevents: i32) -> PyResult<Py<PyAny>> {
        use std::sync::atomic::Ordering;
        if self.closed.load(Ordering::Relaxed) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "I/O operation on closed epoll object",
            ));
        }
        if self.slot.is_parked() {
            // Between two runs: the loop is not watched.
            return self
                .inner
                .call_method1(py, pyo3::intern!(py, "poll"), (timeout, maxevents));
        }
        let max = match maxevents {
            -1 => crate::epoll::DEFAULT_MAX_EVENTS,
            n if n > 0 => n as usize,
            n => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "maxevents must be greater than 0, got {n}"
                )))
            }
        };
        let timeout = timeout.filter(|t| *t >= 0.0);
        let wait = capped_wait(&self.slot, timeout);
        let wait_ns = secs_to_ns(wait);
        // This runs once per loop iteration: the events' buffer is the smallest of these that
        // the call allows, made (and zeroed) on the stack. asyncio asks for as many events as
        // it has file descriptors registered, often one or two.
        const NONE: libc::epoll_event = libc::epoll_event { events: 0, u64: 0 };
        if max <= 8 {
            self.wait_for_events(py, &mut [NONE; 8][..max], wait_ns)
        } else if max <= 64 {
            self.wait_for_events(py, &mut [NONE; 64][..max], wait_ns)
        } else {
            self.wait_for_events(py, &mut vec![NONE; max], wait_ns)
        }
    }

    #[getter]
    fn inner(&self, py: Python<'_>) -> Py<PyAny> {
        self.inner.clone_ref(py)
    }

    // The rest of the epoll API is forwarded explicitly: a `__getattr__` would make every
    // `poll` lookup allocate a bound method.

    #[getter]
    fn closed(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self
            .inner
            .bind(py)
            .getattr(pyo3::intern!(py, "closed"))?
            .unbind())
    }

    fn fileno(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.inner.call_method0(py, pyo3::intern!(py, "fileno"))
    }

    /// Closes the epoll object; a parked loop (see `LoopSlot::park`) is unregistered: it
    /// cannot run again.
    fn close(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if self.slot.is_parked() {
            self.slot_obj.get().unregister(py);
        }
        self.inner.call_method0(py, pyo3::intern!(py, "close"))
    }

    #[pyo3(signature = (fd, eventmask=None))]
    fn register(
        &self,
        py: Python<'_>,
        fd: Py<PyAny>,
        eventmask: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match eventmask {
            Some(m) => self
                .inner
                .call_method1(py, pyo3::intern!(py, "register"), (fd, m)),
            None => self
                .inner
                .call_method1(py, pyo3::intern!(py, "register"), (fd,)),
        }
    }

    fn modify(&self, py: Python<'_>, fd: Py<PyAny>, eventmask: Py<PyAny>) -> PyResult<Py<PyAny>> {
        self.inner
            .call_method1(py, pyo3::intern!(py, "modify"), (fd, eventmask))
    }

    fn unregister(&self, py: Python<'_>, fd: Py<PyAny>) -> PyResult<Py<PyAny>> {
        self.inner
            .call_method1(py, pyo3::intern!(py, "unregister"), (fd,))
    }
}

#[cfg(linux_full)]
impl EpollProxy {
    /// The slot of the loop parked on this proxy (see `LoopSlot::park`); `None` while the
    /// proxy serves a run.
    pub(super) fn parked_slot(&self) -> Option<&Py<Slot>> {
        self.slot.is_parked().then_some(&self.slot_obj)
    }

    /// The epoll object this proxy wraps.
    pub(super) fn epoll<'py>(&self, py: Python<'py>) -> &Bound<'py, PyAny> {
        self.inner.bind(py)
    }
}

#[cfg(linux_full)]
impl Drop for EpollProxy {
    /// A parked loop that nobody closed is unregistered once its selector is freed.
    fn drop(&mut self) {
        if self.slot.is_parked() {
            self.slot.unregister();
        }
    }
}

/// Adds `register` and the hook classes to `loopguard._native`.
pub(super) fn add_to_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(register, m)?)?;
    m.add_function(wrap_pyfunction!(set_task_reader, m)?)?;
    m.add_class::<Slot>()?;
    m.add_class::<SelectorProxy>()?;
    #[cfg(linux_full)]
    m.add_class::<EpollProxy>()?;
    Ok(())
}
