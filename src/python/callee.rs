//! `running_callee`: the coroutine that a running coroutine's frame runs, for the await chain of
//! a blocked task on CPython 3.10 and 3.11 (see `loopguard._chain`).
//!
//! Those versions keep no reference from a running frame to the coroutine it runs that Python
//! code can follow: the callee sits somewhere on the frame's value stack, whose depth a running
//! frame does not record. The candidates are words of this process's memory, read without
//! trusting them; one becomes an object only after checks that a freed or reused block fails.
//! Reading and checking happen here, with the GIL held from the first read to the new
//! reference, so that nothing can free the object in between. In Python, each read through a
//! file (`os.pread`) lets the GIL go: the loop thread ran on between the checks and the use, and
//! the coroutine it had finished meanwhile was turned into an object after its memory was freed
//! and reused (a crash of the process under test).

use pyo3::prelude::*;

use crate::reader::mem::{MemError, Memory};

/// The most value-stack words looked at (a frame's locals and stack are far fewer).
const MAX_SLOTS: usize = 4096;

/// Where a coroutine (or generator) object keeps its frame, and where its frame keeps its state
/// and its caller: `(frame_at, frame_is_pointer, state_at, caller_at, executing)`. The frame
/// is at `object + frame_at` (3.11: inside the object) or at the address stored there (3.10:
/// a frame object); its state is the byte at `frame + state_at`, `executing` while it runs,
/// and its caller's frame the word at `frame + caller_at`.
type Layout = (isize, bool, isize, isize, u8);

/// The coroutine or generator object that the frame at `caller` runs, found among the `count`
/// words at `slots` (that frame's locals and value stack), from the top of the stack down:
/// the first word that points at an object of one of `types` (their addresses), alive, other
/// than `exclude` (the running coroutine itself), whose frame is executing and was called by
/// the frame at `caller`. None when no word does, or this process's memory cannot be read
/// (the `portable` build, a sandbox that denies `process_vm_readv`).
#[pyfunction]
fn running_callee(
    py: Python<'_>,
    slots: usize,
    count: usize,
    caller: usize,
    exclude: usize,
    types: Vec<usize>,
    layout: Layout,
) -> Option<Py<PyAny>> {
    if count == 0 || count > MAX_SLOTS {
        return None;
    }
    let mem = Memory::new().ok()?;
    let words = mem.read_vec(slots, count * 8).ok()?;
    let found = words
        .chunks_exact(8)
        .rev()
        .map(|w| usize::from_ne_bytes(w.try_into().expect("8 bytes")))
        .filter(|&addr| addr != 0 && addr % 8 == 0 && addr != exclude)
        .find(|&addr| is_callee(&mem, addr, caller, &types, layout).unwrap_or(false))?;
    // SAFETY: the GIL has been held since the first read above (nothing here lets it go), so
    // no thread has run Python code, freed an object or changed a reference count since the
    // checks. They passed: the word points at an object with a live reference count, one of the
    // coroutine or generator types, whose frame is executing and was called by the frame at
    // `caller`. An executing coroutine is referenced by its caller for the whole call, and the
    // caller's frame belongs to a coroutine the Python layer holds. A freed block fails them
    // (the allocator overwrites its first word, and a coroutine is freed only once its frame
    // has completed or been cleared); a reused one is another live object, checked as such.
    // `from_borrowed_ptr` takes a new reference to it.
    Some(unsafe { Bound::from_borrowed_ptr(py, found as *mut pyo3::ffi::PyObject) }.unbind())
}

/// The checks of [`running_callee`] on the word `addr`.
fn is_callee(
    mem: &Memory,
    addr: usize,
    caller: usize,
    types: &[usize],
    (frame_at, frame_is_pointer, state_at, caller_at, executing): Layout,
) -> Result<bool, MemError> {
    // `ob_refcnt`, then `ob_type`. A block the allocator took back holds a free-list pointer
    // (or its bookkeeping) where the count was.
    let refcnt = mem.read_usize(addr)?;
    if refcnt == 0 || refcnt > (1 << 32) {
        return Ok(false);
    }
    if !types.contains(&mem.read_usize(addr + 8)?) {
        return Ok(false);
    }
    let frame = if frame_is_pointer {
        mem.read_usize(addr.wrapping_add_signed(frame_at))?
    } else {
        addr.wrapping_add_signed(frame_at)
    };
    if frame == 0 || mem.read_u8(frame.wrapping_add_signed(state_at))? != executing {
        return Ok(false);
    }
    Ok(mem.read_usize(frame.wrapping_add_signed(caller_at))? == caller)
}

/// Adds `running_callee` to `loopguard._native`.
pub(super) fn add_to_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(running_callee, m)?)
}

#[cfg(all(test, linux_full))]
mod tests {
    use super::*;

    /// A block laid out as a 3.11 coroutine would be, as far as the checks read it: reference
    /// count, type, then (at word 4) a frame whose state byte is at word 5 and its caller's
    /// frame at word 6.
    fn block(refcnt: usize, ty: usize, state: u8, caller: usize) -> Vec<usize> {
        vec![refcnt, ty, 0, 0, 0, usize::from(state), caller, 0]
    }

    const INLINE: Layout = (32, false, 8, 16, 0);

    fn check(b: &[usize], layout: Layout, caller: usize) -> bool {
        let mem = Memory::new().expect("process_vm_readv on ourselves");
        is_callee(&mem, b.as_ptr() as usize, caller, &[0x1000, 0x2000], layout).unwrap()
    }

    #[test]
    fn a_live_executing_coroutine_called_by_the_frame_passes() {
        assert!(check(&block(1, 0x1000, 0, 0xabc0), INLINE, 0xabc0));
        assert!(check(&block(3, 0x2000, 0, 0xabc0), INLINE, 0xabc0));
    }

    #[test]
    fn anything_else_fails() {
        // Freed (a count the allocator overwrote), another type, not running, another caller.
        assert!(!check(&block(0, 0x1000, 0, 0xabc0), INLINE, 0xabc0));
        assert!(!check(
            &block(0x7f00_0000_1000, 0x1000, 0, 0xabc0),
            INLINE,
            0xabc0
        ));
        assert!(!check(&block(1, 0x3000, 0, 0xabc0), INLINE, 0xabc0));
        assert!(!check(&block(1, 0x1000, 0xff, 0xabc0), INLINE, 0xabc0));
        assert!(!check(&block(1, 0x1000, 4, 0xabc0), INLINE, 0xabc0));
        assert!(!check(&block(1, 0x1000, 0, 0xabd0), INLINE, 0xabc0));
    }

    #[test]
    fn a_frame_held_by_pointer_is_followed() {
        // 3.10: the object points at its frame (a frame object) from word 2.
        let frame = [0usize, usize::from(0u8), 0xabc0];
        let mut b = block(1, 0x1000, 0xff, 0);
        b[2] = frame.as_ptr() as usize;
        let pointer: Layout = (16, true, 8, 16, 0);
        assert!(check(&b, pointer, 0xabc0));
        assert!(!check(&b, pointer, 0xabd0));
        b[2] = 0;
        assert!(!check(&b, pointer, 0xabc0));
    }
}
