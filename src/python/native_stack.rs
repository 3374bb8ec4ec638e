//! The pyo3 face of [`crate::native_stack`]: `loopguard._native.set_native_stacks` and debug
//! entry points for tests and benchmarks.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::native_stack::{self, NativeStack};

/// Native frames on or off for blocks detected from now on (see `native_stack`).
#[pyfunction]
fn set_native_stacks(on: bool) {
    native_stack::set_enabled(on);
}

/// Whether native frames are on.
#[pyfunction]
fn native_stacks() -> bool {
    native_stack::enabled()
}

/// Takes the native stack of thread `native_tid` now, as the watchdog does for a blocked loop,
/// and (with `resolve`) names and folds it: `(frames, note, addresses taken)`, each frame a dict
/// like the JSON report's. For tests and benchmarks; the GIL is released throughout.
#[pyfunction]
#[pyo3(signature = (native_tid, resolve=true))]
#[allow(clippy::type_complexity)]
fn _native_stack_of(
    py: Python<'_>,
    native_tid: i64,
    resolve: bool,
) -> PyResult<(Vec<Py<PyAny>>, Option<String>, usize)> {
    let (mut stack, taken) = py.detach(|| {
        let raw = native_stack::capture(native_tid);
        let taken = raw.ips.len();
        let mut s = NativeStack {
            native_note: raw.note.clone(),
            raw: Some(raw),
            ..NativeStack::default()
        };
        if resolve {
            native_stack::resolve([&mut s]);
        }
        (s, taken)
    });
    let frames = stack
        .native_stack
        .drain(..)
        .map(|f| {
            let d = PyDict::new(py);
            d.set_item("function", f.function)?;
            d.set_item("library", f.library)?;
            d.set_item("offset", f.offset)?;
            d.set_item("file", f.file)?;
            d.set_item("line", f.line)?;
            Ok(d.into_any().unbind())
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok((frames, stack.native_note, taken))
}

/// `(restarted, not restarted)`: the system calls of this process that the capture's signal
/// interrupted (see `native_stack::signal::repair`).
#[pyfunction]
fn _native_interrupted_calls() -> (u64, u64) {
    #[cfg(linux_full)]
    return native_stack::signal::interrupted_calls();
    #[cfg(not(linux_full))]
    (0, 0)
}

pub fn add_to_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_native_interrupted_calls, m)?)?;
    m.add_function(wrap_pyfunction!(set_native_stacks, m)?)?;
    m.add_function(wrap_pyfunction!(native_stacks, m)?)?;
    m.add_function(wrap_pyfunction!(_native_stack_of, m)?)
}
