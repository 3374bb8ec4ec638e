//! The pyo3 layer: `loopguard._native`. Thin by design; the logic lives in the pure-Rust
//! modules.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::clock::now_ns;
use crate::event::{Frame, Gil, Sample};
use crate::reader::PyInfo;
use crate::sampler::{Sampler, Target};
use crate::watchdog::{LoopSlot, Watchdog};

/// The process's watchdog, with the pid that started it (a forked child starts afresh).
static WATCHDOG: Mutex<Option<(u32, Arc<Watchdog>)>> = Mutex::new(None);

/// Loop objects by loop id, for samplers that take the GIL (to name the running task).
/// Locked only by threads that hold the GIL, so it cannot deadlock with it.
static LOOP_OBJECTS: Mutex<Option<HashMap<u64, Py<PyAny>>>> = Mutex::new(None);

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

/// The exception class raised in a blocked loop thread in raise mode. Locked only by threads
/// that hold the GIL.
static RAISE_CLASS: Mutex<Option<Py<PyAny>>> = Mutex::new(None);

/// The assistant thread (see [`assist`]): (pid, handle).
static INJECTOR: Mutex<Option<(u32, std::thread::JoinHandle<()>)>> = Mutex::new(None);

/// Whether raise mode is on.
static RAISE_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
    RAISE_ON.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Raise mode off.
#[pyfunction]
fn disable_raise() {
    RAISE_ON.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// Starts the assistant thread for `wd` (see [`assist`]).
fn start_assistant(wd: &Arc<Watchdog>) -> PyResult<()> {
    let rx = wd.notices();
    let weak = Arc::downgrade(wd);
    let handle = std::thread::Builder::new()
        .name("loopguard-assistant".into())
        .spawn(move || assist(rx, weak))
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start loopguard's thread: {e}")))?;
    *INJECTOR.lock() = Some((std::process::id(), handle));
    wd.set_notify_blocks(true);
    Ok(())
}

/// The assistant: the one loopguard thread that takes the GIL. For each block the watchdog
/// detects, while the loop thread is still in that block, it names the running asyncio task
/// and, in raise mode, raises the configured exception in the loop thread. The watchdog never
/// waits for it. Ends when the watchdog stops (its channel disconnects).
fn assist(
    rx: crossbeam_channel::Receiver<crate::watchdog::BlockNotice>,
    wd: std::sync::Weak<Watchdog>,
) {
    while let Ok((slot, start)) = rx.recv() {
        // SAFETY: `Py_IsInitialized` only reads a flag and may be called at any time.
        if unsafe { pyo3::ffi::Py_IsInitialized() } == 0 {
            return;
        }
        Python::attach(|py| {
            // Holding the GIL, the loop thread cannot move on: if it is still in the same busy
            // stretch now, what we see is the block, and an exception lands in its callback.
            // A beating loop (uvloop) late since `start` is still blocked too, but in which
            // callback is not known: its task is named, nothing is raised in it.
            let late_beat = slot.is_late_since(start);
            if !late_beat && !slot.is_busy_since(start) {
                return;
            }
            let loop_obj = LOOP_OBJECTS
                .lock()
                .as_ref()
                .and_then(|m| m.get(&slot.id).map(|o| o.clone_ref(py)));
            if let Some(lo) = loop_obj {
                if let Ok(Some(name)) = current_task_name(py, lo.bind(py)) {
                    if let Some(wd) = wd.upgrade() {
                        wd.annotate(slot.id, start, name);
                    }
                }
            }
            if late_beat || !RAISE_ON.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let Some(cls) = RAISE_CLASS.lock().as_ref().map(|c| c.clone_ref(py)) else {
                return;
            };
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
    start_assistant(&wd)?;
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

/// Facts about the running interpreter that the GIL-free reader depends on.
///
/// `LOOPGUARD_SIMULATE_PYTHON=X.Y` makes the readers believe they run on CPython X.Y (for the
/// tests of what users of a version without a layout see).
pub fn py_info(py: Python<'_>) -> PyResult<PyInfo> {
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
    let free_threaded = py
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

fn make_sampler(choice: &str, info: PyInfo) -> Result<Box<dyn Sampler>, String> {
    match choice {
        "gil" => Ok(Box::new(GilSampler)),
        "auto" | "native" => match crate::reader::native_sampler(info) {
            Ok(s) => Ok(s),
            Err(e) if choice == "native" => {
                Err(format!("the GIL-free stack reader is unavailable: {e}"))
            }
            Err(_) => Ok(Box::new(GilSampler)),
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
    // The assistant ends with the watchdog (its channel disconnects); it may need the GIL to
    // finish, so wait for it without holding the GIL.
    let injector = INJECTOR.lock().take();
    if let Some((pid, h)) = injector {
        if pid == std::process::id() {
            py.detach(|| {
                let _ = h.join();
            });
        }
    }
    RAISE_CLASS.lock().take();
    RAISE_ON.store(false, std::sync::atomic::Ordering::Relaxed);
    LOOP_OBJECTS.lock().take();
}

/// In a forked child: forget the parent's watchdog (its thread does not exist here).
#[pyfunction]
fn after_fork_child() {
    // The parent's watchdog cannot be stopped or joined from here; leak it.
    if let Some(old) = WATCHDOG.lock().take() {
        old.1.abandon();
        std::mem::forget(old);
    }
    if let Some(old) = LOOP_OBJECTS.lock().take() {
        std::mem::forget(old);
    }
    if let Some(old) = INJECTOR.lock().take() {
        std::mem::forget(old);
    }
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
    let events = match wd.take_now() {
        Some(events) => events,
        None => {
            let timeout = (timeout_s.max(0.0) * 1e9) as u64;
            py.detach(|| wd.take(timeout))
        }
    };
    if events.is_empty() {
        return Ok(None);
    }
    let json =
        serde_json::to_string(&events).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(Some(json))
}

/// How many loops are registered now (0 when the watchdog is not running).
#[pyfunction]
fn registered_loops() -> u64 {
    current().map_or(0, |wd| wd.registered())
}

/// The watchdog clock, in nanoseconds.
#[pyfunction(name = "now_ns")]
fn py_now_ns() -> u64 {
    now_ns()
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
        LOOP_OBJECTS
            .lock()
            .get_or_insert_with(HashMap::new)
            .insert(slot.id, obj);
    }
    Ok(Slot { slot })
}

/// The calling thread's `PyThreadState*` and kernel thread id.
fn thread_identity(_py: Python<'_>) -> (usize, i64) {
    // SAFETY: the `Python` token proves this thread holds the GIL, so it has a current thread
    // state and `PyThreadState_Get` returns it (it cannot fail). `gettid` has no preconditions.
    unsafe {
        let tstate = pyo3::ffi::PyThreadState_Get() as usize;
        let tid = libc::gettid() as i64;
        (tstate, tid)
    }
}

/// A registered loop. The loop thread calls `busy`/`idle` (or uses a `SelectorProxy`) and
/// `unregister` when the loop stops.
#[pyclass(module = "loopguard._native", frozen)]
struct Slot {
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
    /// limit). Returns the timeout to use: capped at half the threshold, so the loop comes
    /// back regularly and a loop that does not come back in time is known to be starved.
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
    /// loop; returns the seconds until the next beat is due (a tenth of the threshold,
    /// between 1 ms and 25 ms). See `LoopSlot::beat`.
    fn beat(&self) -> f64 {
        let interval = beat_interval_ns(self.slot.threshold_ns());
        self.slot.beat(interval);
        interval as f64 / 1e9
    }

    fn unregister(&self, py: Python<'_>) {
        self.slot.unregister();
        if let Some(map) = LOOP_OBJECTS.lock().as_mut() {
            if let Some(obj) = map.remove(&self.slot.id) {
                drop(obj.into_bound(py));
            }
        }
    }
}

/// The selector timeout to use: at most half the threshold (see `Slot::idle`).
fn capped_wait(slot: &LoopSlot, timeout: Option<f64>) -> f64 {
    let cap = (slot.threshold_ns() / 2).max(1_000_000) as f64 / 1e9;
    match timeout {
        Some(t) if t < cap => t.max(0.0),
        _ => cap,
    }
}

/// How often a beating loop beats: detection slack against cost (one callback per beat).
fn beat_interval_ns(threshold_ns: u64) -> u64 {
    (threshold_ns / 10).clamp(1_000_000, 25_000_000)
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
/// is on stdlib asyncio: one native call replaces another.
#[pyclass(module = "loopguard._native", frozen)]
struct EpollProxy {
    inner: Py<PyAny>,
    fd: i32,
    closed: std::sync::atomic::AtomicBool,
    slot: Arc<LoopSlot>,
}

#[pymethods]
impl EpollProxy {
    #[new]
    fn new(py: Python<'_>, inner: Py<PyAny>, slot: &Slot) -> PyResult<Self> {
        let fd = inner.bind(py).call_method0("fileno")?.extract::<i32>()?;
        Ok(EpollProxy {
            inner,
            fd,
            closed: std::sync::atomic::AtomicBool::new(false),
            slot: Arc::clone(&slot.slot),
        })
    }

    /// `epoll.poll(timeout=None, maxevents=-1)`: a negative or missing timeout waits forever
    /// (here: at most half the threshold, see `Slot::idle`).
    #[pyo3(signature = (timeout=None, maxevents=-1))]
    fn poll(&self, py: Python<'_>, timeout: Option<f64>, maxevents: i32) -> PyResult<Py<PyAny>> {
        use std::sync::atomic::Ordering;
        if self.closed.load(Ordering::Relaxed) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "I/O operation on closed epoll object",
            ));
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
        let wait = capped_wait(&self.slot, timeout.filter(|t| *t >= 0.0));
        let wait_ns = secs_to_ns(wait);
        // Small waits use a stack buffer: this runs once per loop iteration.
        let mut stack_buf = [libc::epoll_event { events: 0, u64: 0 }; 64];
        let mut heap_buf = Vec::new();
        let buf: &mut [libc::epoll_event] = if max <= stack_buf.len() {
            &mut stack_buf[..max]
        } else {
            heap_buf.resize(max, libc::epoll_event { events: 0, u64: 0 });
            &mut heap_buf
        };
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
                    left_ns = deadline.saturating_sub(now_ns());
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

    #[getter]
    fn inner(&self, py: Python<'_>) -> Py<PyAny> {
        self.inner.clone_ref(py)
    }

    // The rest of the epoll API is forwarded explicitly: a `__getattr__` would make every
    // `poll` lookup allocate a bound method.

    #[getter]
    fn closed(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.inner.bind(py).getattr("closed")?.unbind())
    }

    fn fileno(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.inner.call_method0(py, "fileno")
    }

    fn close(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.call_method0(py, "close")
    }

    #[pyo3(signature = (fd, eventmask=None))]
    fn register(
        &self,
        py: Python<'_>,
        fd: Py<PyAny>,
        eventmask: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match eventmask {
            Some(m) => self.inner.call_method1(py, "register", (fd, m)),
            None => self.inner.call_method1(py, "register", (fd,)),
        }
    }

    fn modify(&self, py: Python<'_>, fd: Py<PyAny>, eventmask: Py<PyAny>) -> PyResult<Py<PyAny>> {
        self.inner.call_method1(py, "modify", (fd, eventmask))
    }

    fn unregister(&self, py: Python<'_>, fd: Py<PyAny>) -> PyResult<Py<PyAny>> {
        self.inner.call_method1(py, "unregister", (fd,))
    }
}

/// The fallback sampler: takes the GIL and reads `sys._current_frames()`. Late whenever C code
/// holds the GIL, so its samples are marked `late`.
struct GilSampler;

impl Sampler for GilSampler {
    fn sample(&mut self, target: &Target, offset_ns: u64) -> Sample {
        // SAFETY: `Py_IsInitialized` only reads a flag and may be called at any time.
        if unsafe { pyo3::ffi::Py_IsInitialized() } == 0 {
            return Sample::failed(offset_ns, "the interpreter is shutting down");
        }
        Python::attach(|py| match gil_stack(py, target) {
            Ok((frames, task_name)) => Sample {
                offset_ns,
                count: 1,
                frames,
                gil: Gil::Unknown,
                holder: None,
                late: true,
                error: None,
                task_name,
                syscall: None,
                running: false,
                callback_tag: None,
                callback: None,
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
    let mut out = Vec::new();
    if let Some(mut f) = frames.get_item(target.thread_ident)? {
        while !f.is_none() && out.len() < 1000 {
            let code = f.getattr("f_code")?;
            let function = match code.getattr("co_qualname") {
                Ok(q) => q.extract::<String>()?,
                Err(_) => code.getattr("co_name")?.extract::<String>()?,
            };
            out.push(Frame {
                filename: code.getattr("co_filename")?.extract()?,
                lineno: f
                    .getattr("f_lineno")?
                    .extract::<Option<u32>>()?
                    .unwrap_or(0),
                function,
            });
            f = f.getattr("f_back")?;
        }
    }
    out.reverse();
    let loop_obj = LOOP_OBJECTS
        .lock()
        .as_ref()
        .and_then(|m| m.get(&target.loop_id).map(|o| o.clone_ref(py)));
    let task_name = match loop_obj {
        Some(lo) => current_task_name(py, lo.bind(py)).unwrap_or(None),
        None => None,
    };
    Ok((out, task_name))
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

// `gil_used = true`: the watchdog's locking rules assume the GIL (see the statics above), so
// on a free-threaded build CPython keeps the GIL on rather than run this module without it.
// `loopguard/__init__.py` refuses such builds before this module is loaded.
#[pymodule(gil_used = true)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(start, m)?)?;
    m.add_function(wrap_pyfunction!(stop, m)?)?;
    m.add_function(wrap_pyfunction!(after_fork_child, m)?)?;
    m.add_function(wrap_pyfunction!(is_running, m)?)?;
    m.add_function(wrap_pyfunction!(sampler_name, m)?)?;
    m.add_function(wrap_pyfunction!(reader_unavailable, m)?)?;
    m.add_function(wrap_pyfunction!(set_threshold, m)?)?;
    m.add_function(wrap_pyfunction!(threshold, m)?)?;
    m.add_function(wrap_pyfunction!(set_context, m)?)?;
    m.add_function(wrap_pyfunction!(flush, m)?)?;
    m.add_function(wrap_pyfunction!(take, m)?)?;
    m.add_function(wrap_pyfunction!(py_now_ns, m)?)?;
    m.add_function(wrap_pyfunction!(registered_loops, m)?)?;
    m.add_function(wrap_pyfunction!(register, m)?)?;
    m.add_function(wrap_pyfunction!(enable_raise, m)?)?;
    m.add_function(wrap_pyfunction!(disable_raise, m)?)?;
    m.add_class::<Slot>()?;
    m.add_class::<SelectorProxy>()?;
    m.add_class::<EpollProxy>()?;
    crate::reader::python::add_to_module(m)?;
    crate::reader::gil::add_debug_functions(m)?;
    crate::offload_python::add_to_module(m)?;
    Ok(())
}
