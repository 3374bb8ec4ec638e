//! GIL-free reader of CPython thread stacks.
//!
//! The watchdog thread reads the loop thread's frame chain straight from memory while the loop
//! thread keeps running (or stays blocked), without the GIL and without any lock a Python
//! thread could hold:
//!
//! * [`mem`] reads memory with `process_vm_readv` on our own pid, so a stale pointer is an
//!   error, not a crash;
//! * [`layout`] knows where the fields are in each supported version (3.10–3.15, release GIL
//!   builds; one table for both readers), chosen at run time so one abi3 build serves them all;
//! * [`walk`] follows the chain with validation (type checks, bounded depth and sizes, two walks
//!   that must agree) and caches decoded code objects;
//! * [`lines`] decodes each version's line table.

use crate::event::{Gil, Holder, Sample};
use crate::holder_wait::{HolderId, Seen};
use crate::sampler::{Sampler, Target};
use crate::syscall::KernelState;

pub mod gil;
pub mod layout;
pub mod lines;
pub mod mem;
pub mod walk;

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

/// Builds a [`walk::Walker`] for the running interpreter.
///
/// # Errors
/// Why the GIL-free reader cannot work here.
pub fn walker(info: PyInfo) -> Result<walk::Walker, String> {
    info.check_supported("the GIL-free reader")?;
    let mem = mem::Memory::new().map_err(|e| e.to_string())?;
    let layout = layout::Layout::for_running(
        &mem,
        (info.version.0, info.version.1),
        "the GIL-free reader",
    )?;
    walk::Walker::new(mem, layout)
}

impl PyInfo {
    /// Refuses builds whose layouts the readers do not know; `what` names the reader.
    ///
    /// # Errors
    /// Why `what` cannot work on this platform or build.
    pub fn check_supported(&self, what: &str) -> Result<(), String> {
        if cfg!(not(linux_full)) {
            return Err(crate::NOT_BUILT.to_owned());
        }
        if cfg!(not(target_pointer_width = "64")) {
            return Err(format!("{what} supports 64-bit Linux only"));
        }
        if self.debug {
            return Err("this is a debug build of Python, whose object layouts differ".into());
        }
        if self.free_threaded {
            return Err("this is a free-threaded build of Python, whose layouts differ".into());
        }
        Ok(())
    }
}

/// The GIL-free sampler for the running interpreter, or why there is none.
///
/// # Errors
/// Unsupported versions, debug and free-threaded builds, and `process_vm_readv` being
/// unavailable.
pub fn native_sampler(info: PyInfo) -> Result<Box<dyn Sampler>, String> {
    let walker = walker(info)?;
    // Without GIL attribution the stacks are still worth having: the GIL reader is optional.
    let gil = mem::Memory::new()
        .ok()
        .and_then(|m| gil::GilReader::new(info, m).ok());
    Ok(Box::new(NativeSampler { walker, gil }))
}

/// Samples a thread by walking its frames through [`walk::Walker`], and tells who holds the
/// GIL through [`gil::GilReader`].
pub struct NativeSampler {
    walker: walk::Walker,
    gil: Option<gil::GilReader>,
}

impl NativeSampler {
    /// The GIL holder `tstate` and its stack (empty when it cannot be read: it may just have
    /// let go of the GIL or exited).
    fn holder(&mut self, tstate: usize, ids: Option<gil::ThreadIds>) -> Holder {
        let ident = ids.map_or(0, |i| i.ident);
        let frames = if ident != 0 {
            self.walker.stack(tstate, ident).unwrap_or_default()
        } else {
            Vec::new()
        };
        Holder {
            thread_ident: ident,
            frames,
            repeats: Vec::new(),
        }
    }
}

impl Sampler for NativeSampler {
    fn sample(&mut self, target: &Target, offset_ns: u64) -> Sample {
        let mut attribution = self
            .gil
            .as_ref()
            .and_then(|g| g.attribute(target.tstate).ok());
        let kernel = KernelState::of_thread(target.native_tid);
        if let (Some(a), Some(k), Some(g)) = (attribution.as_mut(), kernel, self.gil.as_ref()) {
            // Another thread holds the GIL, but the loop thread is not waiting for it: it is in
            // a blocking call of its own (or running C code that let go of the GIL). The block
            // is the loop thread's, not starvation. Waiting for the GIL is a futex wait on the
            // GIL state's condition variable or mutex.
            if a.gil == Gil::Other && k != KernelState::Blocked && !k.waits_on(&g.gil_span()) {
                a.gil = Gil::Released;
                a.holder = None;
            }
        }
        let gil = attribution.as_ref().map_or(Gil::Unknown, |a| a.gil);
        let holder = attribution
            .and_then(|a| a.holder)
            .map(|(tstate, ids)| self.holder(tstate, ids));
        let mut sample = match self
            .walker
            .stack_with_addresses(target.tstate, target.thread_ident)
        {
            Ok((frames, addresses)) => Sample {
                callback_tag: crate::callbacks::tag(&frames, &addresses),
                ..Sample::new(offset_ns, frames, gil)
            },
            Err(e) => Sample::failed(offset_ns, e),
        };
        sample.syscall = kernel.and_then(|k| k.syscall_name());
        sample.kernel = kernel;
        sample.running = kernel == Some(KernelState::Running);
        sample.gil = gil;
        sample.holder = holder;
        sample
    }

    fn name(&self) -> &'static str {
        "native"
    }

    fn tags_callbacks(&self) -> bool {
        true
    }

    fn gil_holder(&mut self, target: &Target) -> Seen {
        let Some(g) = self.gil.as_ref() else {
            return Seen::Unknown;
        };
        match g.holder() {
            Ok(None) => Seen::Nobody,
            Ok(Some((tstate, _))) if tstate == target.tstate => Seen::Nobody,
            Ok(Some((_, ids))) => Seen::Holder(HolderId {
                ident: ids.ident,
                // 3.11+ thread states record it; before, the Python layer told it.
                tid: ids
                    .native_tid
                    .and_then(|t| i64::try_from(t).ok())
                    .filter(|&t| t > 0)
                    .or_else(|| crate::holder_wait::remembered_tid(ids.ident)),
            }),
            // The holder may have just exited: its thread state is gone.
            Err(_) => Seen::Unknown,
        }
    }
}

#[cfg(all(test, linux_full))]
mod tests {
    use super::*;

    #[test]
    fn unsupported_builds_are_refused() {
        let base = PyInfo {
            version: (3, 11, 7),
            debug: false,
            free_threaded: false,
        };
        let e = native_sampler(PyInfo {
            debug: true,
            ..base
        })
        .err()
        .unwrap();
        assert!(e.contains("debug"), "{e}");
        let e = native_sampler(PyInfo {
            free_threaded: true,
            ..base
        })
        .err()
        .unwrap();
        assert!(e.contains("free-threaded"), "{e}");
        let e = native_sampler(PyInfo {
            version: (3, 16, 0),
            ..base
        })
        .err()
        .unwrap();
        assert!(e.contains("3.16"), "{e}");
    }
}
