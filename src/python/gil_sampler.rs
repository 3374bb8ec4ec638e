//! The fallback sampler, for interpreters the GIL-free reader does not support (or when asked
//! for): it takes the GIL.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::hooks::running_task_name;
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
                native: Default::default(),
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
    Ok((out, running_task_name(py, target.loop_id)))
}
