//! Per-version struct layouts of the CPython objects the reader walks.
//!
//! The numbers are `offsetof(...)` of release (non-debug, GIL) builds on 64-bit Linux, taken
//! from each version's own headers (`Include/cpython/pystate.h`, `Include/cpython/frameobject.h`
//! (3.9/3.10), `Include/internal/pycore_frame.h` (3.11+), `Include/cpython/code.h`,
//! `Include/cpython/unicodeobject.h`) of 3.9.18, 3.10.13, 3.11.7, 3.12.1 and 3.13.0, checked by
//! compiling a program that prints them against each version's headers. 3.13 also publishes
//! most of them in `_Py_DebugOffsets` at the start of `_PyRuntime`
//! (`Include/internal/pycore_runtime.h`); those are preferred when present.

use super::mem::{symbol_address, Memory};

/// How a version links and describes its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// 3.9/3.10: `PyFrameObject` linked by `f_back`; `f_lasti` is an `int`.
    Object,
    /// 3.11+: `_PyInterpreterFrame` linked by `previous`; the instruction is a pointer into the
    /// code object's `co_code_adaptive`.
    Interpreter,
}

/// Which line table format `co_linetable`/`co_lnotab` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    /// 3.9 `co_lnotab`.
    Lnotab,
    /// 3.10 `co_linetable`.
    Linetable310,
    /// 3.11+ PEP 657 location table.
    Locations,
}

/// `_PyInterpreterFrame.owner` values (`enum _frameowner`, pycore_frame.h of 3.11–3.13).
pub const OWNED_BY_GENERATOR: u8 = 1;
/// C-stack shim frames (3.12+), which are never shown in tracebacks.
pub const OWNED_BY_CSTACK: u8 = 3;

/// Offsets of everything the reader reads, for one CPython version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `(major, minor)`.
    pub version: (u8, u8),
    /// Where the offsets came from.
    pub source: &'static str,
    /// `PyObject.ob_type`.
    pub ob_type: usize,
    /// `PyVarObject.ob_size`.
    pub ob_size: usize,
    /// `PyThreadState.thread_id` (the `pthread_t`, `threading.get_ident()`).
    pub ts_thread_id: usize,
    /// `PyThreadState.frame` (3.9/3.10), `.cframe` (3.11/3.12) or `.current_frame` (3.13).
    pub ts_frame: usize,
    /// `_PyCFrame.current_frame` (3.11/3.12 only).
    pub cframe_current: Option<usize>,
    /// Frame kind.
    pub frame_kind: FrameKind,
    /// `f_back` / `previous`.
    pub f_back: usize,
    /// `f_code` / `f_executable`.
    pub f_code: usize,
    /// `f_lasti` (an `int`, 3.9/3.10) or `prev_instr` / `instr_ptr` (a pointer, 3.11+).
    pub f_instr: usize,
    /// 3.10: `f_lasti` counts code units, not bytes.
    pub lasti_in_units: bool,
    /// `_PyInterpreterFrame.owner` (a `char`), 3.11+.
    pub f_owner: Option<usize>,
    /// How many bytes of a frame to read to cover all of the above.
    pub frame_read: usize,
    /// `co_firstlineno` (an `int`).
    pub co_firstlineno: usize,
    /// `co_filename`.
    pub co_filename: usize,
    /// `co_name`.
    pub co_name: usize,
    /// `co_qualname` (3.11+).
    pub co_qualname: Option<usize>,
    /// `co_lnotab` (3.9) / `co_linetable` (3.10+).
    pub co_linetable: usize,
    /// `co_code` (a bytes object, 3.9/3.10).
    pub co_code: Option<usize>,
    /// `co_code_adaptive` (3.11+; the code object's `ob_size` counts its code units).
    pub co_code_adaptive: Option<usize>,
    /// `_co_firsttraceable` (an `int`, 3.11+).
    pub co_firsttraceable: Option<usize>,
    /// How many bytes of a code object to read to cover all of the above.
    pub code_read: usize,
    /// Line table format.
    pub line_format: LineFormat,
    /// `PyBytesObject.ob_sval`.
    pub bytes_sval: usize,
    /// `PyASCIIObject.length`.
    pub str_length: usize,
    /// `PyASCIIObject.state` (a bit field: interned:2, kind:3, compact:1, ascii:1, then `ready`
    /// before 3.12).
    pub str_state: usize,
    /// `sizeof(PyASCIIObject)`: where a compact ASCII string's characters start.
    pub str_ascii_size: usize,
    /// `sizeof(PyCompactUnicodeObject)`: where a compact non-ASCII string's characters start.
    pub str_compact_size: usize,
    /// Strings have a `ready` bit (before 3.12) that must be set.
    pub str_has_ready: bool,
}

/// Bits of `PyASCIIObject.state` (the same positions in 3.9–3.13).
pub const STATE_KIND_SHIFT: u32 = 2;
/// `kind` is three bits.
pub const STATE_KIND_MASK: u32 = 0x1c;
/// `compact`.
pub const STATE_COMPACT: u32 = 0x20;
/// `ascii`.
pub const STATE_ASCII: u32 = 0x40;
/// `ready` (3.9–3.11).
pub const STATE_READY: u32 = 0x80;

impl Layout {
    /// The built-in layout of `(major, minor)`, if the version is supported.
    pub fn builtin(version: (u8, u8)) -> Option<Layout> {
        let common = |minor: u8| Layout {
            version: (3, minor),
            source: "headers",
            ob_type: 8,
            ob_size: 16,
            ts_thread_id: 0,
            ts_frame: 0,
            cframe_current: None,
            frame_kind: FrameKind::Object,
            f_back: 0,
            f_code: 0,
            f_instr: 0,
            lasti_in_units: false,
            f_owner: None,
            frame_read: 0,
            co_firstlineno: 0,
            co_filename: 0,
            co_name: 0,
            co_qualname: None,
            co_linetable: 0,
            co_code: None,
            co_code_adaptive: None,
            co_firsttraceable: None,
            code_read: 0,
            line_format: LineFormat::Locations,
            bytes_sval: 32,
            str_length: 16,
            str_state: 32,
            str_ascii_size: if minor >= 12 { 40 } else { 48 },
            str_compact_size: if minor >= 12 { 56 } else { 72 },
            str_has_ready: minor < 12,
        };
        let l = match version {
            // 3.9.18: cpython/pystate.h, cpython/frameobject.h, cpython/code.h.
            (3, 9) => Layout {
                ts_thread_id: 176,
                ts_frame: 24,
                f_back: 24,
                f_code: 32,
                f_instr: 104,
                frame_read: 112,
                co_firstlineno: 40,
                co_code: Some(48),
                co_filename: 104,
                co_name: 112,
                co_linetable: 120,
                code_read: 128,
                line_format: LineFormat::Lnotab,
                ..common(9)
            },
            // 3.10.13: same headers; `f_lasti` counts code units; `co_linetable` replaces
            // `co_lnotab` in the struct.
            (3, 10) => Layout {
                ts_thread_id: 176,
                ts_frame: 24,
                f_back: 24,
                f_code: 32,
                f_instr: 96,
                lasti_in_units: true,
                frame_read: 104,
                co_firstlineno: 40,
                co_code: Some(48),
                co_filename: 104,
                co_name: 112,
                co_linetable: 120,
                code_read: 128,
                line_format: LineFormat::Linetable310,
                ..common(10)
            },
            // 3.11.7: cpython/pystate.h (`cframe`, `_PyCFrame.current_frame`),
            // internal/pycore_frame.h, cpython/code.h.
            (3, 11) => Layout {
                ts_thread_id: 152,
                ts_frame: 56,
                cframe_current: Some(8),
                frame_kind: FrameKind::Interpreter,
                f_code: 32,
                f_back: 48,
                f_instr: 56,
                f_owner: Some(69),
                frame_read: 72,
                co_firstlineno: 72,
                co_filename: 112,
                co_name: 120,
                co_qualname: Some(128),
                co_linetable: 136,
                co_firsttraceable: Some(168),
                co_code_adaptive: Some(184),
                code_read: 184,
                ..common(11)
            },
            // 3.12.1: same headers as 3.11, fields reordered.
            (3, 12) => Layout {
                ts_thread_id: 136,
                ts_frame: 56,
                cframe_current: Some(0),
                frame_kind: FrameKind::Interpreter,
                f_code: 0,
                f_back: 8,
                f_instr: 56,
                f_owner: Some(70),
                frame_read: 72,
                co_firstlineno: 68,
                co_filename: 112,
                co_name: 120,
                co_qualname: Some(128),
                co_linetable: 136,
                co_firsttraceable: Some(176),
                co_code_adaptive: Some(192),
                code_read: 192,
                ..common(12)
            },
            // 3.13.0: cpython/pystate.h (`current_frame`), internal/pycore_frame.h
            // (`f_executable`, `instr_ptr`), cpython/code.h.
            (3, 13) => Layout {
                ts_thread_id: 152,
                ts_frame: 72,
                frame_kind: FrameKind::Interpreter,
                f_code: 0,
                f_back: 8,
                f_instr: 56,
                f_owner: Some(70),
                frame_read: 72,
                co_firstlineno: 68,
                co_filename: 112,
                co_name: 120,
                co_qualname: Some(128),
                co_linetable: 136,
                co_firsttraceable: Some(184),
                co_code_adaptive: Some(200),
                code_read: 200,
                ..common(13)
            },
            _ => return None,
        };
        Some(l)
    }

    /// The layout of the running interpreter: the built-in one, updated from
    /// `_Py_DebugOffsets` on 3.13.
    ///
    /// # Errors
    /// Why no layout is known (unsupported version, inconsistent debug offsets).
    pub fn for_running(mem: &Memory, version: (u8, u8)) -> Result<Layout, String> {
        let mut layout = Layout::builtin(version).ok_or_else(|| {
            format!(
                "Python {}.{} is not supported by the GIL-free reader (3.9 to 3.13 are)",
                version.0, version.1
            )
        })?;
        if version == (3, 13) {
            let runtime = symbol_address("_PyRuntime")
                .ok_or("the symbol _PyRuntime is not exported by this interpreter")?;
            let mut raw = [0u8; DEBUG_OFFSETS_WORDS * 8];
            mem.read_bytes(runtime, &mut raw)
                .map_err(|e| format!("cannot read _Py_DebugOffsets: {e}"))?;
            let words: Vec<u64> = raw
                .chunks_exact(8)
                .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
                .collect();
            layout.apply_debug_offsets(&raw[..8], &words)?;
        }
        Ok(layout)
    }

    /// Takes the offsets `_Py_DebugOffsets` (3.13's `Include/internal/pycore_runtime.h`) covers.
    /// `words` is the struct as 64-bit words (the cookie is word 0).
    fn apply_debug_offsets(&mut self, cookie: &[u8], words: &[u64]) -> Result<(), String> {
        if cookie != b"xdebugpy" {
            return Err("_PyRuntime does not start with the _Py_DebugOffsets cookie".into());
        }
        let w = |i: usize| -> Result<usize, String> {
            let v = *words.get(i).ok_or("short _Py_DebugOffsets")?;
            if v >= 4096 {
                return Err(format!(
                    "implausible offset {v} in _Py_DebugOffsets word {i}"
                ));
            }
            Ok(v as usize)
        };
        let version = words.get(1).copied().unwrap_or(0);
        if (version >> 16) != 0x030d {
            return Err(format!(
                "_Py_DebugOffsets is for version {version:#x}, not 3.13"
            ));
        }
        if words.get(2).copied().unwrap_or(1) != 0 {
            return Err("_Py_DebugOffsets describes a free-threaded build".into());
        }
        // Word indices of the fields of struct _Py_DebugOffsets (3.13.0).
        self.ts_thread_id = w(24)?;
        self.ts_frame = w(23)?;
        self.f_back = w(29)?;
        self.f_code = w(30)?;
        self.f_instr = w(31)?;
        self.f_owner = Some(w(33)?);
        self.co_filename = w(35)?;
        self.co_name = w(36)?;
        self.co_qualname = Some(w(37)?);
        self.co_linetable = w(38)?;
        self.co_firstlineno = w(39)?;
        let adaptive = w(43)?;
        if Some(adaptive) != self.co_code_adaptive {
            // `_co_firsttraceable` is not published; it sits 16 bytes before the code in
            // every 3.11–3.13 layout, so follow the code if it moved.
            self.co_firsttraceable = Some(adaptive.checked_sub(16).ok_or("bad co_code_adaptive")?);
        }
        self.co_code_adaptive = Some(adaptive);
        self.ob_type = w(45)?;
        self.bytes_sval = w(66)?;
        self.ob_size = w(65)?;
        self.str_state = w(68)?;
        self.str_length = w(69)?;
        let ascii = w(70)?;
        if ascii != self.str_ascii_size {
            // PyCompactUnicodeObject adds utf8_length and utf8 to PyASCIIObject.
            self.str_compact_size = ascii + 16;
        }
        self.str_ascii_size = ascii;
        // Read at least what the built-in layout reads, and enough for every field we use.
        let owner = w(33)?;
        self.frame_read = [
            self.f_back + 8,
            self.f_code + 8,
            self.f_instr + 8,
            owner + 1,
        ]
        .into_iter()
        .fold(self.frame_read, usize::max);
        self.code_read = [
            self.co_filename,
            self.co_name,
            w(37)?,
            self.co_linetable,
            self.co_firstlineno,
            self.co_firsttraceable.unwrap_or(0),
            self.ob_size,
        ]
        .into_iter()
        .map(|o| o + 8)
        .fold(self.code_read, usize::max);
        self.source = "_Py_DebugOffsets";
        Ok(())
    }
}

/// Words of `_Py_DebugOffsets` read (through `unicode_object.asciiobject_size`).
const DEBUG_OFFSETS_WORDS: usize = 71;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_has_a_layout() {
        for minor in 9..=13 {
            let l = Layout::builtin((3, minor)).unwrap();
            assert!(l.frame_read > l.f_back && l.frame_read > l.f_code && l.frame_read > l.f_instr);
            assert!(l.code_read >= l.co_linetable + 8 && l.code_read >= l.co_filename + 8);
            assert_eq!(l.frame_kind == FrameKind::Interpreter, minor >= 11);
        }
        assert!(Layout::builtin((3, 8)).is_none());
        assert!(Layout::builtin((3, 14)).is_none());
    }

    /// The 3.13.0 `_Py_DebugOffsets` values (as printed from a 3.13.0 `_PyRuntime`) agree with
    /// the built-in layout.
    #[test]
    fn debug_offsets_313_agree_with_headers() {
        let mut words = [0u64; DEBUG_OFFSETS_WORDS];
        words[1] = 0x030d_00f0;
        words[23] = 72;
        words[24] = 152;
        words[29] = 8;
        words[30] = 0;
        words[31] = 56;
        words[33] = 70;
        words[35] = 112;
        words[36] = 120;
        words[37] = 128;
        words[38] = 136;
        words[39] = 68;
        words[43] = 200;
        words[45] = 8;
        words[65] = 16;
        words[66] = 32;
        words[68] = 32;
        words[69] = 16;
        words[70] = 40;
        let builtin = Layout::builtin((3, 13)).unwrap();
        let mut l = builtin.clone();
        l.apply_debug_offsets(b"xdebugpy", &words).unwrap();
        assert_eq!(l.source, "_Py_DebugOffsets");
        assert_eq!(
            Layout {
                source: "headers",
                ..l.clone()
            },
            builtin
        );
        assert!(l.clone().apply_debug_offsets(b"notdebug", &words).is_err());
        words[1] = 0x030e_0000;
        assert!(l.apply_debug_offsets(b"xdebugpy", &words).is_err());
    }
}
