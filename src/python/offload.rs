//! The pyo3 face of [`crate::offload`]: `loopguard._native.OffloadSampler`.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::offload::{Sampling, Settings, Tally};
use crate::reader::gil::GilReader;
use crate::reader::mem::Memory;

use super::{current_thread_state, py_info};

/// Samples who holds the GIL and what every Python thread runs, from a native thread, until
/// [`OffloadSampler::finish`].
#[pyclass(module = "loopguard._native")]
struct OffloadSampler {
    sampling: Option<Sampling>,
    /// The process that started the sampler thread (a forked child has no such thread).
    pid: u32,
}

#[pymethods]
impl OffloadSampler {
    /// Starts sampling every `interval` seconds; the thread list and CPU times every
    /// `threads_every` readings.
    #[new]
    #[pyo3(signature = (interval=0.001, threads_every=5))]
    fn new(py: Python<'_>, interval: f64, threads_every: u32) -> PyResult<Self> {
        if !(interval.is_finite() && (0.0001..=1.0).contains(&interval)) {
            return Err(PyValueError::new_err(format!(
                "invalid value for interval: {interval} (from OffloadSampler()); \
                 expected seconds between 0.0001 and 1"
            )));
        }
        if threads_every == 0 {
            return Err(PyValueError::new_err(
                "invalid value for threads_every: 0 (from OffloadSampler()); expected at least 1",
            ));
        }
        let info = py_info(py)?;
        let mem = Memory::new().map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        let gil = GilReader::new(info, mem).map_err(PyRuntimeError::new_err)?;
        gil.verify_held_by(current_thread_state(py))
            .map_err(PyRuntimeError::new_err)?;
        let walker = crate::reader::walker(info).map_err(PyRuntimeError::new_err)?;
        let settings = Settings {
            interval: std::time::Duration::from_secs_f64(interval),
            threads_every,
        };
        let sampling = Sampling::start(gil, walker, settings).map_err(PyRuntimeError::new_err)?;
        Ok(OffloadSampler {
            sampling: Some(sampling),
            pid: std::process::id(),
        })
    }

    /// Stops sampling (waiting for the sampler with the GIL released) and returns what it saw:
    /// `{"start_ns", "end_ns", "ticks", "errors", "threads": [...]}`, each thread a dict with
    /// `ident`, `native_id`, `first_seen_ns`, `last_seen_ns`, `existed_at_start`, `held_ns`,
    /// `held_ticks`, `cpu_ns` (None when unknown) and `stacks`: `[(held_ns, cpu_ns, [(filename,
    /// lineno, function), ...outermost first])]`.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let Some(mut sampling) = self.sampling.take() else {
            return Err(PyRuntimeError::new_err(
                "this offload sampler was already finished",
            ));
        };
        if self.pid != std::process::id() {
            sampling.abandon();
            return Err(PyRuntimeError::new_err(
                "this offload sampler was started in another process (before a fork)",
            ));
        }
        let tally = py.detach(move || sampling.finish());
        to_dict(py, &tally)
    }
}

fn to_dict<'py>(py: Python<'py>, tally: &Tally) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("start_ns", tally.start_ns)?;
    d.set_item("end_ns", tally.end_ns)?;
    d.set_item("ticks", tally.ticks)?;
    d.set_item("errors", tally.errors)?;
    let threads = PyList::empty(py);
    for t in tally.threads.values() {
        let td = PyDict::new(py);
        td.set_item("ident", t.ident)?;
        td.set_item("native_id", t.native_tid)?;
        td.set_item("first_seen_ns", t.first_seen_ns)?;
        td.set_item("last_seen_ns", t.last_seen_ns)?;
        td.set_item("existed_at_start", t.existed_at_start)?;
        td.set_item("held_ns", t.held_ns)?;
        td.set_item("held_ticks", t.held_ticks)?;
        td.set_item("cpu_ns", t.cpu_ns())?;
        let stacks = PyList::empty(py);
        for (key, w) in &t.stacks {
            stacks.append((w.held_ns, w.cpu_ns, key.clone()))?;
        }
        td.set_item("stacks", stacks)?;
        threads.append(td)?;
    }
    d.set_item("threads", threads)?;
    Ok(d)
}

/// Adds `OffloadSampler` to `loopguard._native`.
pub(super) fn add_to_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<OffloadSampler>()
}
