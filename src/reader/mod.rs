//! GIL-free reader of CPython thread stacks.

use crate::sampler::Sampler;

pub mod gil;
pub mod mem;
pub mod python;

/// What the reader needs to know about the running interpreter (gathered with the GIL held).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyInfo {
    /// `sys.version_info[:3]`.
    pub version: (u8, u8, u8),
    /// A debug build (`sys.gettotalrefcount` exists): struct layouts differ.
    pub debug: bool,
    /// A free-threaded build (`Py_GIL_DISABLED`): layouts and GIL semantics differ.
    pub free_threaded: bool,
}

/// The GIL-free sampler for the running interpreter, or why there is none.
pub fn native_sampler(_info: PyInfo) -> Result<Box<dyn Sampler>, String> {
    Err("not built yet".into())
}
