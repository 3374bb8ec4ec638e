//! Debug entry points of the reader for tests (`loopguard._native._reader_*`).

use pyo3::prelude::*;

/// Adds the reader's functions to `loopguard._native`.
pub fn add_to_module(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
