//! Reading this process's own memory without trusting the pointers.
//!
//! The frame chain of a thread that is running changes under our feet: a frame can be freed
//! between reading its address and reading its fields. Plain pointer reads then segfault. We read
//! with `process_vm_readv(2)` on our own pid instead: an unmapped address comes back as `EFAULT`
//! rather than a crash. Memory that was freed and reused yields garbage, which the walker
//! validates (types, bounds, two walks agreeing).
//!
//! This module holds the reader's only `unsafe` code.

use std::fmt;

/// Why a read failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// The address range is not mapped (`EFAULT`), or only partly readable.
    Fault(usize),
    /// The syscall is not available here (`EPERM` under seccomp, `ENOSYS`).
    Unavailable(i32),
    /// Any other errno.
    Os(i32),
    /// This build has no `process_vm_readv`: not Linux, or the `portable` feature.
    NotBuilt,
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemError::Fault(a) => write!(f, "unreadable address {a:#x}"),
            MemError::Unavailable(e) if *e == libc::ENOSYS => {
                write!(f, "this kernel has no process_vm_readv system call")
            }
            MemError::Unavailable(e) => write!(
                f,
                "the system call process_vm_readv is denied here (errno {e}; a seccomp \
                 sandbox, such as a container's default profile, does that)"
            ),
            MemError::Os(e) => write!(f, "process_vm_readv failed (errno {e})"),
            MemError::NotBuilt => write!(f, "{}", crate::NOT_BUILT),
        }
    }
}

/// A reader of this process's memory.
#[derive(Clone, Debug)]
pub struct Memory {
    pid: i32,
}

impl Memory {
    /// Checks that `process_vm_readv` works on our own pid.
    ///
    /// Setting `LOOPGUARD_DISABLE_VM_READV=1` simulates a sandbox that denies the syscall.
    ///
    /// # Errors
    /// [`MemError::Unavailable`] when the syscall is denied or missing.
    pub fn new() -> Result<Memory, MemError> {
        if std::env::var_os("LOOPGUARD_DISABLE_VM_READV").is_some_and(|v| v == "1") {
            return Err(MemError::Unavailable(libc::EPERM));
        }
        if cfg!(not(linux_full)) {
            return Err(MemError::NotBuilt);
        }
        let m = Memory {
            pid: std::process::id() as i32,
        };
        let probe: u64 = 0x6c6f_6f70_6775_6172;
        let got = m.read_u64(&probe as *const u64 as usize)?;
        if got != probe {
            return Err(MemError::Os(0));
        }
        Ok(m)
    }

    /// Reads `buf.len()` bytes at `addr`.
    pub fn read_bytes(&self, addr: usize, buf: &mut [u8]) -> Result<(), MemError> {
        if buf.is_empty() {
            return Ok(());
        }
        if addr < 4096 {
            return Err(MemError::Fault(addr));
        }
        self.read_unchecked(addr, buf)
    }

    #[cfg(not(linux_full))]
    fn read_unchecked(&self, _addr: usize, _buf: &mut [u8]) -> Result<(), MemError> {
        // `new` refuses to make a `Memory` here.
        let _ = self.pid;
        Err(MemError::NotBuilt)
    }

    #[cfg(linux_full)]
    fn read_unchecked(&self, addr: usize, buf: &mut [u8]) -> Result<(), MemError> {
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes `buf`, which we own mutably for the call, so the kernel
        // writes only into memory we own. `remote` is never dereferenced by us: the kernel reads
        // it on our behalf and reports an unmapped range as EFAULT instead of faulting.
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            return Err(match errno {
                libc::EFAULT => MemError::Fault(addr),
                libc::EPERM | libc::ENOSYS => MemError::Unavailable(errno),
                e => MemError::Os(e),
            });
        }
        if n as usize != buf.len() {
            return Err(MemError::Fault(addr + n as usize));
        }
        Ok(())
    }

    /// Reads a `usize` (a pointer).
    pub fn read_usize(&self, addr: usize) -> Result<usize, MemError> {
        let mut b = [0u8; std::mem::size_of::<usize>()];
        self.read_bytes(addr, &mut b)?;
        Ok(usize::from_ne_bytes(b))
    }

    /// Reads a `u64`.
    pub fn read_u64(&self, addr: usize) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read_bytes(addr, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }

    /// Reads an `i64` (`Py_ssize_t`).
    pub fn read_i64(&self, addr: usize) -> Result<i64, MemError> {
        let mut b = [0u8; 8];
        self.read_bytes(addr, &mut b)?;
        Ok(i64::from_ne_bytes(b))
    }

    /// Reads a `u32`.
    pub fn read_u32(&self, addr: usize) -> Result<u32, MemError> {
        let mut b = [0u8; 4];
        self.read_bytes(addr, &mut b)?;
        Ok(u32::from_ne_bytes(b))
    }

    /// Reads an `i32` (a C `int`).
    pub fn read_i32(&self, addr: usize) -> Result<i32, MemError> {
        let mut b = [0u8; 4];
        self.read_bytes(addr, &mut b)?;
        Ok(i32::from_ne_bytes(b))
    }

    /// Reads a `u16`.
    pub fn read_u16(&self, addr: usize) -> Result<u16, MemError> {
        let mut b = [0u8; 2];
        self.read_bytes(addr, &mut b)?;
        Ok(u16::from_ne_bytes(b))
    }

    /// Reads a `u8`.
    pub fn read_u8(&self, addr: usize) -> Result<u8, MemError> {
        let mut b = [0u8; 1];
        self.read_bytes(addr, &mut b)?;
        Ok(b[0])
    }

    /// Reads `len` bytes into a new vector.
    pub fn read_vec(&self, addr: usize, len: usize) -> Result<Vec<u8>, MemError> {
        let mut v = vec![0u8; len];
        self.read_bytes(addr, &mut v)?;
        Ok(v)
    }
}

/// Looks up a symbol of the running process (e.g. `_PyRuntime`) with `dlsym`.
#[cfg(unix)]
pub fn symbol_address(name: &str) -> Option<usize> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call, and
    // `RTLD_DEFAULT` searches the global symbol scope; `dlsym` does not retain the pointer.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, cname.as_ptr()) };
    if p.is_null() {
        None
    } else {
        Some(p as usize)
    }
}

/// Without `dlsym` (Windows) no symbol is found.
#[cfg(not(unix))]
pub fn symbol_address(_name: &str) -> Option<usize> {
    None
}

#[cfg(all(test, linux_full))]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory() {
        let m = Memory::new().expect("process_vm_readv works here");
        let x: u32 = 0xdead_beef;
        assert_eq!(m.read_u32(&x as *const u32 as usize).unwrap(), 0xdead_beef);
        let v = [1u8, 2, 3, 4, 5];
        assert_eq!(m.read_vec(v.as_ptr() as usize, 5).unwrap(), v);
    }

    #[test]
    fn bad_address_is_an_error_not_a_crash() {
        let m = Memory::new().unwrap();
        assert!(matches!(m.read_u64(8), Err(MemError::Fault(_))));
        assert!(matches!(
            m.read_u64(usize::MAX - 16),
            Err(MemError::Fault(_))
        ));
    }
}
