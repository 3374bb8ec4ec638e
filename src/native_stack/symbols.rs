//! Names for native addresses: the function (and, with debug information, file and line)
//! from the `backtrace` crate, the library from `dladdr`. Runs on the watchdog thread when a
//! block is finished, never in the signal handler; results are cached per address for the
//! block.

use std::collections::HashMap;

use super::NativeFrame;

/// Resolves addresses, caching each one's frames.
#[derive(Default)]
pub struct Symbolizer {
    cache: HashMap<(usize, bool), Vec<NativeFrame>>,
}

impl Symbolizer {
    /// The frames at `ip`, innermost first (more than one where functions were inlined).
    /// `exact`: `ip` is the instruction the thread was at, not a return address.
    pub fn resolve(&mut self, ip: usize, exact: bool) -> Vec<NativeFrame> {
        self.cache
            .entry((ip, exact))
            .or_insert_with(|| resolve(ip, exact))
            .clone()
    }
}

/// The library containing `ip` (its file name) and the offset of `ip` in it, and the nearest
/// exported symbol below it.
#[cfg(not(unix))]
fn library_of(_ip: usize) -> (Option<String>, usize, Option<String>) {
    (None, 0, None)
}

/// The library containing `ip` (its file name) and the offset of `ip` in it, and the nearest
/// exported symbol below it.
#[cfg(unix)]
fn library_of(ip: usize) -> (Option<String>, usize, Option<String>) {
    // SAFETY: `dladdr` only reads the loader's tables; `info` is a valid out-parameter, and
    // the strings it points to live as long as the library stays loaded (we copy them now).
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(ip as *const libc::c_void, &mut info) == 0 {
            return (None, 0, None);
        }
        let text = |p: *const libc::c_char| {
            (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
        };
        let path = text(info.dli_fname).filter(|p| !p.is_empty());
        let library = path.map(|p| p.rsplit('/').next().unwrap_or(&p).to_owned());
        let offset = ip.saturating_sub(info.dli_fbase as usize);
        (library, offset, text(info.dli_sname))
    }
}

fn resolve(ip: usize, exact: bool) -> Vec<NativeFrame> {
    let (library, offset, exported) = library_of(ip);
    let mut frames = Vec::new();
    // `backtrace::resolve` looks up `addr - 1` (right for a return address, which follows the
    // call): an exact address is passed one further.
    let addr = if exact { ip.wrapping_add(1) } else { ip };
    backtrace::resolve(addr as *mut std::ffi::c_void, |sym| {
        frames.push(NativeFrame {
            function: sym.name().map(|n| n.to_string()),
            library: library.clone(),
            offset,
            file: sym.filename().map(|p| p.display().to_string()),
            line: sym.lineno(),
        });
    });
    if frames.is_empty() || frames.iter().all(|f| f.function.is_none()) {
        frames = vec![NativeFrame {
            function: exported,
            library,
            offset,
            file: None,
            line: None,
        }];
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_named_function() -> usize {
        std::hint::black_box(a_named_function as fn() -> usize as usize)
    }

    #[test]
    fn an_address_in_libc_names_the_function_and_the_library() {
        let addr = libc::getpid as *const () as usize;
        let frames = Symbolizer::default().resolve(addr, true);
        let f = &frames[0];
        assert!(
            f.function.as_deref().is_some_and(|n| n.contains("getpid")),
            "{f:?}"
        );
        assert!(
            f.library.as_deref().is_some_and(|l| l.starts_with("libc")),
            "{f:?}"
        );
    }

    #[test]
    fn an_address_in_this_binary_names_the_function() {
        let addr = a_named_function();
        let frames = Symbolizer::default().resolve(addr, true);
        assert!(
            frames.iter().any(|f| f
                .function
                .as_deref()
                .is_some_and(|n| n.contains("a_named_function"))),
            "{frames:?}"
        );
    }
}
