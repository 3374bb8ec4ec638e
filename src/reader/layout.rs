//! Per-version struct layouts of the CPython objects the readers read: one table for the frame
//! walker ([`super::walk`]) and the GIL reader ([`super::gil`]).
//!
//! Each entry is `offsetof(...)` of a release (non-debug, GIL) build on 64-bit Linux, printed by
//! `script/offsets/print PYTHON` (which compiles `script/offsets/offsets.c` against that
//! interpreter's own headers) and pasted here. Adding a CPython version is one entry plus a
//! review of what the printer cannot see: frame-owner codes, tagged references, the line table
//! format, the string state bits.
//!
//! From 3.13 the interpreter also publishes most of these offsets in `_Py_DebugOffsets`, the
//! structure at the start of `_PyRuntime` that CPython keeps for out-of-process debuggers
//! (`Include/internal/pycore_debug_offsets.h`, cookie `xdebugpy`). Where it exists it wins over
//! the table ([`Layout::for_running`]), so a point release that moves a field does not break
//! the readers; the table keeps where each field sits in that structure ([`DebugWords`]), which
//! moves with each minor version.

use super::mem::{symbol_address, Memory};

/// How a version links and describes its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// 3.10: `PyFrameObject` linked by `f_back`; `f_lasti` is an `int` counting code units.
    Object,
    /// 3.11+: `_PyInterpreterFrame` linked by `previous`; the instruction is a pointer into the
    /// code object's `co_code_adaptive`.
    Interpreter,
}

/// Which line table format `co_linetable` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    /// 3.10 `co_linetable`.
    Linetable310,
    /// 3.11+ PEP 657 location table.
    Locations,
}

/// `_PyInterpreterFrame.owner` of a generator's or coroutine's frame (`enum _frameowner`, the
/// same value in 3.11–3.15).
pub const OWNED_BY_GENERATOR: u8 = 1;

/// 3.11: a frame entered from C (`_PyInterpreterFrame.is_entry`) has, as its caller, the current
/// frame of the previous C frame (`_PyCFrame.previous`). While C code resumes generators (the
/// interpreter enters and leaves a C frame for each resume), the thread's C frame can name a
/// generator's frame whose link to its caller is not set, for longer than reading again takes;
/// the walk then takes the caller from the C frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryLink {
    /// `_PyInterpreterFrame.is_entry` (a `bool`).
    pub f_is_entry: usize,
    /// `_PyCFrame.previous`.
    pub cframe_previous: usize,
}

/// Where the GIL state of the main interpreter lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GilLocation {
    /// Before 3.12: inline in the runtime, at this offset of `_PyRuntime` (`ceval.gil`).
    Runtime(usize),
    /// 3.12+: `interp->ceval.gil` (a pointer) is at `pointer`; the main interpreter's own GIL is
    /// inline at `inline` (`interp->_gil`), where the pointer must point.
    Interpreter {
        /// `offsetof(PyInterpreterState, ceval.gil)`.
        pointer: usize,
        /// `offsetof(PyInterpreterState, _gil)`.
        inline: usize,
    },
}

/// Word indices of the fields the readers use in one version's `struct _Py_DebugOffsets`
/// (every field after the 8-byte cookie is a `uint64_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugWords {
    /// `version` (`PY_VERSION_HEX`).
    pub version: usize,
    /// `free_threaded`.
    pub free_threaded: usize,
    /// `runtime_state.interpreters_head`.
    pub interpreters_head: usize,
    /// `interpreter_state.threads_head`.
    pub threads_head: usize,
    /// `interpreter_state.ceval_gil`.
    pub ceval_gil: usize,
    /// `interpreter_state.gil_runtime_state`.
    pub gil_runtime_state: usize,
    /// `interpreter_state.gil_runtime_state_locked`.
    pub gil_locked: usize,
    /// `interpreter_state.gil_runtime_state_holder`.
    pub gil_holder: usize,
    /// `thread_state.next`.
    pub ts_next: usize,
    /// `thread_state.interp`.
    pub ts_interp: usize,
    /// `thread_state.current_frame`.
    pub ts_current_frame: usize,
    /// `thread_state.thread_id`.
    pub ts_thread_id: usize,
    /// `thread_state.native_thread_id`.
    pub ts_native_thread_id: usize,
    /// `interpreter_frame.previous`.
    pub f_previous: usize,
    /// `interpreter_frame.executable`.
    pub f_executable: usize,
    /// `interpreter_frame.instr_ptr`.
    pub f_instr_ptr: usize,
    /// `interpreter_frame.owner`.
    pub f_owner: usize,
    /// `code_object.filename`.
    pub co_filename: usize,
    /// `code_object.name`.
    pub co_name: usize,
    /// `code_object.qualname`.
    pub co_qualname: usize,
    /// `code_object.linetable`.
    pub co_linetable: usize,
    /// `code_object.firstlineno`.
    pub co_firstlineno: usize,
    /// `code_object.co_code_adaptive`.
    pub co_code_adaptive: usize,
    /// `pyobject.ob_type`.
    pub ob_type: usize,
    /// `bytes_object.ob_size`.
    pub bytes_ob_size: usize,
    /// `bytes_object.ob_sval`.
    pub bytes_ob_sval: usize,
    /// `unicode_object.state`.
    pub str_state: usize,
    /// `unicode_object.length`.
    pub str_length: usize,
    /// `unicode_object.asciiobject_size`.
    pub str_ascii_size: usize,
}

impl DebugWords {
    /// How many words of `_Py_DebugOffsets` to read to see every field used.
    fn words(&self) -> usize {
        [
            self.version,
            self.free_threaded,
            self.interpreters_head,
            self.threads_head,
            self.ceval_gil,
            self.gil_runtime_state,
            self.gil_locked,
            self.gil_holder,
            self.ts_next,
            self.ts_interp,
            self.ts_current_frame,
            self.ts_thread_id,
            self.ts_native_thread_id,
            self.f_previous,
            self.f_executable,
            self.f_instr_ptr,
            self.f_owner,
            self.co_filename,
            self.co_name,
            self.co_qualname,
            self.co_linetable,
            self.co_firstlineno,
            self.co_code_adaptive,
            self.ob_type,
            self.bytes_ob_size,
            self.bytes_ob_sval,
            self.str_state,
            self.str_length,
            self.str_ascii_size,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + 1
    }
}

/// Offsets of everything the readers read, for one CPython version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `(major, minor)`.
    pub version: (u8, u8),
    /// Where the offsets came from: `"headers"` (the table) or `"_Py_DebugOffsets"`.
    pub source: &'static str,
    /// `PyObject.ob_type`.
    pub ob_type: usize,
    /// `PyVarObject.ob_size`.
    pub ob_size: usize,
    /// `PyThreadState.next`.
    pub ts_next: usize,
    /// `PyThreadState.interp`.
    pub ts_interp: usize,
    /// `PyThreadState.thread_id` (the `pthread_t`, `threading.get_ident()`).
    pub ts_thread_id: usize,
    /// `PyThreadState.native_thread_id` (3.11+: `threading.get_native_id()`).
    pub ts_native_thread_id: Option<usize>,
    /// `PyThreadState.frame` (3.10), `.cframe` (3.11/3.12) or `.current_frame` (3.13+).
    pub ts_frame: usize,
    /// `_PyCFrame.current_frame` (3.11/3.12 only).
    pub cframe_current: Option<usize>,
    /// How a frame entered from C links to its caller (3.11 only): see [`EntryLink`].
    pub entry_link: Option<EntryLink>,
    /// Frame kind.
    pub frame_kind: FrameKind,
    /// `f_back` / `previous`.
    pub f_back: usize,
    /// `f_code` / `f_executable` (a tagged `_PyStackRef` from 3.14).
    pub f_code: usize,
    /// `f_lasti` (an `int`, 3.10) or `prev_instr` / `instr_ptr` (a pointer, 3.11+).
    pub f_instr: usize,
    /// `_PyInterpreterFrame.owner` (a `char`), 3.11+.
    pub f_owner: Option<usize>,
    /// `PyFrameObject.f_gen` (3.10): the generator or coroutine the frame belongs to, or NULL.
    pub f_gen: Option<usize>,
    /// `PyCodeObject.co_flags` (an `int`; 3.10, where a finished generator's frame no longer
    /// names its generator).
    pub co_flags: Option<usize>,
    /// `co_firstlineno` (an `int`).
    pub co_firstlineno: usize,
    /// `co_filename`.
    pub co_filename: usize,
    /// `co_name`.
    pub co_name: usize,
    /// `co_qualname` (3.11+).
    pub co_qualname: Option<usize>,
    /// `co_linetable`.
    pub co_linetable: usize,
    /// `co_code` (a bytes object, 3.10).
    pub co_code: Option<usize>,
    /// `co_code_adaptive` (3.11+; the code object's `ob_size` counts its code units).
    pub co_code_adaptive: Option<usize>,
    /// `_co_firsttraceable` (an `int`, 3.11+).
    pub co_firsttraceable: Option<usize>,
    /// `co_version` (a `uint32_t`, 3.12+): set once, when the code object is made, from a
    /// counter of the interpreter that each new code object advances (0 once it ran out).
    pub co_version: Option<usize>,
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
    /// `offsetof(_PyRuntimeState, interpreters.main)`.
    pub runtime_main_interp: usize,
    /// `offsetof(PyInterpreterState, tstate_head)` (3.10) or `threads.head` (3.11+).
    pub interp_threads_head: usize,
    /// Where the main interpreter's GIL state is.
    pub gil: GilLocation,
    /// `offsetof(struct _gil_runtime_state, last_holder)`.
    pub gil_last_holder: usize,
    /// `offsetof(struct _gil_runtime_state, locked)` (a C `int`).
    pub gil_locked: usize,
    /// `offsetof(struct _gil_runtime_state, switch_number)` (an `unsigned long`).
    pub gil_switch_number: usize,
    /// Where `_Py_DebugOffsets` keeps these offsets (3.13+).
    pub debug: Option<DebugWords>,
}

/// Bits of `PyASCIIObject.state` (the same positions in 3.10–3.15).
pub const STATE_KIND_SHIFT: u32 = 2;
/// `kind` is three bits.
pub const STATE_KIND_MASK: u32 = 0x1c;
/// `compact`.
pub const STATE_COMPACT: u32 = 0x20;
/// `ascii`.
pub const STATE_ASCII: u32 = 0x40;
/// `ready` (3.10, 3.11).
pub const STATE_READY: u32 = 0x80;

/// The versions in [`TABLE`], oldest first.
pub const SUPPORTED: std::ops::RangeInclusive<u8> = 10..=15;

/// The table: one entry per supported minor version, as `script/offsets/print` prints it.
const TABLE: [Layout; 6] = [
    // 3.10.13: printed by script/offsets/print from its headers.
    Layout {
        version: (3, 10),
        source: "headers",
        ob_type: 8,
        ob_size: 16,
        ts_next: 8,
        ts_interp: 16,
        ts_thread_id: 176,
        ts_native_thread_id: None,
        ts_frame: 24,
        cframe_current: None,
        entry_link: None,
        frame_kind: FrameKind::Object,
        f_back: 24,
        f_code: 32,
        f_instr: 96,
        f_owner: None,
        f_gen: Some(88),
        co_flags: Some(36),
        co_firstlineno: 40,
        co_filename: 104,
        co_name: 112,
        co_qualname: None,
        co_linetable: 120,
        co_code: Some(48),
        co_code_adaptive: None,
        co_firsttraceable: None,
        co_version: None,
        bytes_sval: 32,
        str_length: 16,
        str_state: 32,
        str_ascii_size: 48,
        str_compact_size: 72,
        runtime_main_interp: 40,
        interp_threads_head: 8,
        gil: GilLocation::Runtime(352),
        gil_last_holder: 8,
        gil_locked: 16,
        gil_switch_number: 24,
        debug: None,
    },
    // 3.11.7: printed by script/offsets/print from its headers.
    Layout {
        version: (3, 11),
        source: "headers",
        ob_type: 8,
        ob_size: 16,
        ts_next: 8,
        ts_interp: 16,
        ts_thread_id: 152,
        ts_native_thread_id: Some(160),
        ts_frame: 56,
        cframe_current: Some(8),
        entry_link: Some(EntryLink {
            f_is_entry: 68,
            cframe_previous: 16,
        }),
        frame_kind: FrameKind::Interpreter,
        f_back: 48,
        f_code: 32,
        f_instr: 56,
        f_owner: Some(69),
        f_gen: None,
        co_flags: None,
        co_firstlineno: 72,
        co_filename: 112,
        co_name: 120,
        co_qualname: Some(128),
        co_linetable: 136,
        co_code: None,
        co_code_adaptive: Some(184),
        co_firsttraceable: Some(168),
        co_version: None,
        bytes_sval: 32,
        str_length: 16,
        str_state: 32,
        str_ascii_size: 48,
        str_compact_size: 72,
        runtime_main_interp: 48,
        interp_threads_head: 16,
        gil: GilLocation::Runtime(360),
        gil_last_holder: 8,
        gil_locked: 16,
        gil_switch_number: 24,
        debug: None,
    },
    // 3.12.1: printed by script/offsets/print from its headers.
    Layout {
        version: (3, 12),
        source: "headers",
        ob_type: 8,
        ob_size: 16,
        ts_next: 8,
        ts_interp: 16,
        ts_thread_id: 136,
        ts_native_thread_id: Some(144),
        ts_frame: 56,
        cframe_current: Some(0),
        entry_link: None,
        frame_kind: FrameKind::Interpreter,
        f_back: 8,
        f_code: 0,
        f_instr: 56,
        f_owner: Some(70),
        f_gen: None,
        co_flags: None,
        co_firstlineno: 68,
        co_filename: 112,
        co_name: 120,
        co_qualname: Some(128),
        co_linetable: 136,
        co_code: None,
        co_code_adaptive: Some(192),
        co_firsttraceable: Some(176),
        co_version: Some(92),
        bytes_sval: 32,
        str_length: 16,
        str_state: 32,
        str_ascii_size: 40,
        str_compact_size: 56,
        runtime_main_interp: 48,
        interp_threads_head: 72,
        gil: GilLocation::Interpreter {
            pointer: 384,
            inline: 1040,
        },
        gil_last_holder: 8,
        gil_locked: 16,
        gil_switch_number: 24,
        debug: None,
    },
    // 3.13.0: printed by script/offsets/print from its headers.
    Layout {
        version: (3, 13),
        source: "headers",
        ob_type: 8,
        ob_size: 16,
        ts_next: 8,
        ts_interp: 16,
        ts_thread_id: 152,
        ts_native_thread_id: Some(160),
        ts_frame: 72,
        cframe_current: None,
        entry_link: None,
        frame_kind: FrameKind::Interpreter,
        f_back: 8,
        f_code: 0,
        f_instr: 56,
        f_owner: Some(70),
        f_gen: None,
        co_flags: None,
        co_firstlineno: 68,
        co_filename: 112,
        co_name: 120,
        co_qualname: Some(128),
        co_linetable: 136,
        co_code: None,
        co_code_adaptive: Some(200),
        co_firsttraceable: Some(184),
        co_version: Some(92),
        bytes_sval: 32,
        str_length: 16,
        str_state: 32,
        str_ascii_size: 40,
        str_compact_size: 56,
        runtime_main_interp: 640,
        interp_threads_head: 7344,
        gil: GilLocation::Interpreter {
            pointer: 16,
            inline: 7752,
        },
        gil_last_holder: 8,
        gil_locked: 16,
        gil_switch_number: 24,
        debug: Some(DebugWords {
            version: 1,
            free_threaded: 2,
            interpreters_head: 5,
            threads_head: 9,
            ceval_gil: 14,
            gil_runtime_state: 15,
            gil_locked: 17,
            gil_holder: 18,
            ts_next: 21,
            ts_interp: 22,
            ts_current_frame: 23,
            ts_thread_id: 24,
            ts_native_thread_id: 25,
            f_previous: 29,
            f_executable: 30,
            f_instr_ptr: 31,
            f_owner: 33,
            co_filename: 35,
            co_name: 36,
            co_qualname: 37,
            co_linetable: 38,
            co_firstlineno: 39,
            co_code_adaptive: 43,
            ob_type: 45,
            bytes_ob_size: 65,
            bytes_ob_sval: 66,
            str_state: 68,
            str_length: 69,
            str_ascii_size: 70,
        }),
    },
    // 3.14.10: printed by script/offsets/print from its headers.
    Layout {
        version: (3, 14),
        source: "headers",
        ob_type: 8,
        ob_size: 16,
        ts_next: 8,
        ts_interp: 16,
        ts_thread_id: 152,
        ts_native_thread_id: Some(160),
        ts_frame: 72,
        cframe_current: None,
        entry_link: None,
        frame_kind: FrameKind::Interpreter,
        f_back: 8,
        f_code: 0,
        f_instr: 56,
        f_owner: Some(74),
        f_gen: None,
        co_flags: None,
        co_firstlineno: 68,
        co_filename: 112,
        co_name: 120,
        co_qualname: Some(128),
        co_linetable: 136,
        co_code: None,
        co_code_adaptive: Some(208),
        co_firsttraceable: Some(192),
        co_version: Some(92),
        bytes_sval: 32,
        str_length: 16,
        str_state: 32,
        str_ascii_size: 40,
        str_compact_size: 56,
        runtime_main_interp: 816,
        interp_threads_head: 7344,
        gil: GilLocation::Interpreter {
            pointer: 16,
            inline: 7784,
        },
        gil_last_holder: 8,
        gil_locked: 16,
        gil_switch_number: 24,
        debug: Some(DebugWords {
            version: 1,
            free_threaded: 2,
            interpreters_head: 5,
            threads_head: 9,
            ceval_gil: 15,
            gil_runtime_state: 16,
            gil_locked: 18,
            gil_holder: 19,
            ts_next: 24,
            ts_interp: 25,
            ts_current_frame: 26,
            ts_thread_id: 27,
            ts_native_thread_id: 28,
            f_previous: 32,
            f_executable: 33,
            f_instr_ptr: 34,
            f_owner: 36,
            co_filename: 40,
            co_name: 41,
            co_qualname: 42,
            co_linetable: 43,
            co_firstlineno: 44,
            co_code_adaptive: 48,
            ob_type: 51,
            bytes_ob_size: 75,
            bytes_ob_sval: 76,
            str_state: 78,
            str_length: 79,
            str_ascii_size: 80,
        }),
    },
    // 3.15.2: printed by script/offsets/print from its headers.
    Layout {
        version: (3, 15),
        source: "headers",
        ob_type: 8,
        ob_size: 16,
        ts_next: 8,
        ts_interp: 16,
        ts_thread_id: 176,
        ts_native_thread_id: Some(184),
        ts_frame: 72,
        cframe_current: None,
        entry_link: None,
        frame_kind: FrameKind::Interpreter,
        f_back: 8,
        f_code: 0,
        f_instr: 56,
        f_owner: Some(74),
        f_gen: None,
        co_flags: None,
        co_firstlineno: 68,
        co_filename: 112,
        co_name: 120,
        co_qualname: Some(128),
        co_linetable: 136,
        co_code: None,
        co_code_adaptive: Some(208),
        co_firsttraceable: Some(192),
        co_version: Some(92),
        bytes_sval: 32,
        str_length: 16,
        str_state: 32,
        str_ascii_size: 40,
        str_compact_size: 56,
        runtime_main_interp: 944,
        interp_threads_head: 7336,
        gil: GilLocation::Interpreter {
            pointer: 16,
            inline: 7736,
        },
        gil_last_holder: 8,
        gil_locked: 16,
        gil_switch_number: 24,
        debug: Some(DebugWords {
            version: 1,
            free_threaded: 2,
            interpreters_head: 5,
            threads_head: 9,
            ceval_gil: 15,
            gil_runtime_state: 16,
            gil_locked: 18,
            gil_holder: 19,
            ts_next: 24,
            ts_interp: 25,
            ts_current_frame: 26,
            ts_thread_id: 30,
            ts_native_thread_id: 31,
            f_previous: 40,
            f_executable: 41,
            f_instr_ptr: 42,
            f_owner: 44,
            co_filename: 48,
            co_name: 49,
            co_qualname: 50,
            co_linetable: 51,
            co_firstlineno: 52,
            co_code_adaptive: 56,
            ob_type: 59,
            bytes_ob_size: 87,
            bytes_ob_sval: 88,
            str_state: 90,
            str_length: 91,
            str_ascii_size: 92,
        }),
    },
];

/// Why a version has no layout, in words a user understands.
pub fn unsupported_version(version: (u8, u8), what: &str) -> String {
    format!(
        "Python {}.{} is not supported by {what} ({}.{} to {}.{} are)",
        version.0,
        version.1,
        3,
        SUPPORTED.start(),
        3,
        SUPPORTED.end()
    )
}

/// The 64-bit word at byte `off` of `b` (0 past its end).
pub fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// The pointer at byte `off` of `b` (0 past its end).
pub fn usize_at(b: &[u8], off: usize) -> usize {
    u64_at(b, off) as usize
}

/// The C `int` at byte `off` of `b` (0 past its end).
pub fn i32_at(b: &[u8], off: usize) -> i32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, i32::from_ne_bytes)
}

impl Layout {
    /// The table's layout of `(major, minor)`, if the version is supported.
    pub fn builtin(version: (u8, u8)) -> Option<Layout> {
        TABLE.iter().find(|l| l.version == version).copied()
    }

    /// The layout of the running interpreter: the table's, updated from `_Py_DebugOffsets`
    /// where the interpreter publishes it (3.13+). `what` names the reader in errors.
    ///
    /// # Errors
    /// Why no layout is known (unsupported version, inconsistent debug offsets).
    pub fn for_running(mem: &Memory, version: (u8, u8), what: &str) -> Result<Layout, String> {
        let mut layout =
            Layout::builtin(version).ok_or_else(|| unsupported_version(version, what))?;
        if let Some(words) = layout.debug {
            let runtime = symbol_address("_PyRuntime")
                .ok_or("the symbol _PyRuntime is not exported by this interpreter")?;
            let raw = mem
                .read_vec(runtime, words.words() * 8)
                .map_err(|e| format!("cannot read _Py_DebugOffsets: {e}"))?;
            layout.apply_debug_offsets(&raw)?;
        }
        Ok(layout)
    }

    /// 3.10: `f_lasti` counts code units, not bytes.
    pub fn lasti_in_units(&self) -> bool {
        self.frame_kind == FrameKind::Object
    }

    /// The format of `co_linetable`.
    pub fn line_format(&self) -> LineFormat {
        if self.version >= (3, 11) {
            LineFormat::Locations
        } else {
            LineFormat::Linetable310
        }
    }

    /// Strings have a `ready` bit (before 3.12) that must be set.
    pub fn str_has_ready(&self) -> bool {
        self.version < (3, 12)
    }

    /// Low bits of `f_executable` that tag the reference (3.14+: a `_PyStackRef`, whose low two
    /// bits say deferred or tagged int) and must be cleared to get the object's address.
    pub fn code_tag_bits(&self) -> usize {
        if self.version >= (3, 14) {
            0b11
        } else {
            0
        }
    }

    /// Whether a frame with this `owner` is an interpreter-internal frame that is never shown in
    /// a traceback: the C-stack shim of 3.12/3.13 (`FRAME_OWNED_BY_CSTACK` = 3), the entry
    /// frames of 3.14 (`FRAME_OWNED_BY_INTERPRETER` = 3, `FRAME_OWNED_BY_CSTACK` = 4) and 3.15
    /// (`FRAME_OWNED_BY_INTERPRETER` = 3). 3.11 has no such owner.
    pub fn is_shim_owner(&self, owner: u8) -> bool {
        self.version >= (3, 12) && owner >= 3
    }

    /// The largest valid `owner` value.
    pub fn max_owner(&self) -> u8 {
        match self.version {
            (3, 11) => 2,
            (3, 14) => 4,
            _ => 3,
        }
    }

    /// How many bytes of a frame to read to cover every field used.
    pub fn frame_read(&self) -> usize {
        let owner = self.f_owner.map_or(0, |o| o + 1);
        let entry = self.entry_link.map_or(0, |e| e.f_is_entry + 1);
        let gen = self.f_gen.map_or(0, |g| g + 8);
        let instr = self.f_instr + if self.lasti_in_units() { 4 } else { 8 };
        [
            self.f_back + 8,
            self.f_code + 8,
            self.ob_type + 8,
            instr,
            owner,
            entry,
            gen,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }

    /// How many bytes of a code object to read to cover every field used.
    pub fn code_read(&self) -> usize {
        [
            Some(self.co_filename),
            Some(self.co_name),
            self.co_qualname,
            Some(self.co_linetable),
            self.co_code,
            Some(self.ob_type),
            Some(self.ob_size),
        ]
        .into_iter()
        .flatten()
        .map(|o| o + 8)
        .chain([self.co_firstlineno + 4])
        .chain(self.co_firsttraceable.map(|o| o + 4))
        .chain(self.co_version.map(|o| o + 4))
        .max()
        .unwrap_or(0)
    }

    /// Takes the offsets `_Py_DebugOffsets` publishes. `raw` is the start of `_PyRuntime`.
    fn apply_debug_offsets(&mut self, raw: &[u8]) -> Result<(), String> {
        let d = self
            .debug
            .ok_or("this version publishes no _Py_DebugOffsets")?;
        if raw.len() < d.words() * 8 {
            return Err("short _Py_DebugOffsets".into());
        }
        if raw.get(..8) != Some(b"xdebugpy".as_slice()) {
            return Err("_PyRuntime does not start with the _Py_DebugOffsets cookie".into());
        }
        let word = |i: usize| u64_at(raw, i * 8);
        let version = word(d.version);
        let want = u64::from(self.version.0) << 8 | u64::from(self.version.1);
        if (version >> 16) != want {
            return Err(format!(
                "_Py_DebugOffsets describes version {version:#x}, not {}.{}",
                self.version.0, self.version.1
            ));
        }
        if word(d.free_threaded) != 0 {
            return Err("_Py_DebugOffsets describes a free-threaded build".into());
        }
        // Offsets into the big structs can be large (PyInterpreterState is ~190 kB in 3.13);
        // anything past 1 MB is not an offset. Offsets into objects and frames stay small.
        let big = |i: usize| -> Result<usize, String> {
            let v = word(i);
            if v >= 1 << 20 {
                return Err(format!(
                    "implausible offset {v} in _Py_DebugOffsets word {i}"
                ));
            }
            Ok(v as usize)
        };
        let small = |i: usize| -> Result<usize, String> {
            let v = big(i)?;
            if v >= 512 {
                return Err(format!(
                    "implausible offset {v} in _Py_DebugOffsets word {i}"
                ));
            }
            Ok(v)
        };
        // The GIL state: inline in the main interpreter; `locked` and `last_holder` are
        // published relative to the interpreter.
        let inline = big(d.gil_runtime_state)?;
        let gil_holder = big(d.gil_holder)?;
        let gil_locked = big(d.gil_locked)?;
        if gil_holder <= inline || gil_locked <= inline || gil_holder - inline >= 64 {
            return Err("inconsistent GIL offsets in _Py_DebugOffsets".into());
        }
        // `interpreters.main` follows `interpreters.head` (struct pyinterpreters: mutex, head,
        // main, next_id).
        self.runtime_main_interp = big(d.interpreters_head)? + 8;
        self.gil = GilLocation::Interpreter {
            pointer: big(d.ceval_gil)?,
            inline,
        };
        self.gil_last_holder = gil_holder - inline;
        self.gil_locked = gil_locked - inline;
        self.interp_threads_head = big(d.threads_head)?;
        self.ts_next = small(d.ts_next)?;
        self.ts_interp = small(d.ts_interp)?;
        self.ts_frame = small(d.ts_current_frame)?;
        self.ts_thread_id = small(d.ts_thread_id)?;
        self.ts_native_thread_id = Some(small(d.ts_native_thread_id)?);
        self.f_back = small(d.f_previous)?;
        self.f_code = small(d.f_executable)?;
        self.f_instr = small(d.f_instr_ptr)?;
        self.f_owner = Some(small(d.f_owner)?);
        let filename = small(d.co_filename)?;
        if filename != self.co_filename {
            // `co_version` is not published: when the header moved, do without it (the code
            // cache then compares contents, see `walk::CodeKey`).
            self.co_version = None;
        }
        self.co_filename = filename;
        self.co_name = small(d.co_name)?;
        self.co_qualname = Some(small(d.co_qualname)?);
        self.co_linetable = small(d.co_linetable)?;
        self.co_firstlineno = small(d.co_firstlineno)?;
        let adaptive = small(d.co_code_adaptive)?;
        if Some(adaptive) != self.co_code_adaptive {
            // `_co_firsttraceable` is not published; it sits 16 bytes before the code in
            // every 3.11–3.15 layout, so follow the code if it moved.
            self.co_firsttraceable = Some(adaptive.checked_sub(16).ok_or("bad co_code_adaptive")?);
        }
        self.co_code_adaptive = Some(adaptive);
        self.ob_type = small(d.ob_type)?;
        self.ob_size = small(d.bytes_ob_size)?;
        self.bytes_sval = small(d.bytes_ob_sval)?;
        self.str_state = small(d.str_state)?;
        self.str_length = small(d.str_length)?;
        let ascii = small(d.str_ascii_size)?;
        if ascii != self.str_ascii_size {
            // PyCompactUnicodeObject adds utf8_length and utf8 to PyASCIIObject.
            self.str_compact_size = ascii + 16;
        }
        self.str_ascii_size = ascii;
        self.source = "_Py_DebugOffsets";
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn every_supported_version_has_a_consistent_layout() {
        for minor in SUPPORTED {
            let l = Layout::builtin((3, minor)).unwrap();
            assert_eq!(l.version, (3, minor));
            assert_eq!(l.source, "headers");
            assert!(l.frame_read() > l.f_back && l.frame_read() > l.f_code);
            assert!(l.frame_read() > l.f_instr);
            assert!(l.code_read() >= l.co_linetable + 8 && l.code_read() >= l.co_filename + 8);
            assert_eq!(l.frame_kind == FrameKind::Interpreter, minor >= 11);
            assert_eq!(l.f_owner.is_some(), minor >= 11);
            assert_eq!(l.debug.is_some(), minor >= 13);
            assert_eq!(l.ts_native_thread_id.is_some(), minor >= 11);
            assert_eq!(l.co_version.is_some(), minor >= 12);
            assert!(
                l.code_read() <= 256,
                "the walker reads code headers into 256 bytes"
            );
            if let Some(adaptive) = l.co_code_adaptive {
                // What apply_debug_offsets relies on when the code moves.
                assert_eq!(l.co_firsttraceable, Some(adaptive - 16));
            }
            // The GIL state's fields are read in one small buffer.
            assert!(l.gil_last_holder.max(l.gil_locked).max(l.gil_switch_number) < 56);
        }
        assert!(Layout::builtin((3, 9)).is_none());
        assert!(Layout::builtin((3, 16)).is_none());
        assert!(Layout::builtin((2, 7)).is_none());
        let e = unsupported_version((3, 16), "the GIL-free reader");
        assert_eq!(
            e,
            "Python 3.16 is not supported by the GIL-free reader (3.10 to 3.15 are)"
        );
    }

    #[test]
    fn frame_owners_and_tags_by_version() {
        let l = |m| Layout::builtin((3, m)).unwrap();
        assert!(!l(11).is_shim_owner(2));
        assert!(l(12).is_shim_owner(3) && l(13).is_shim_owner(3));
        assert!(l(14).is_shim_owner(3) && l(14).is_shim_owner(4));
        assert!(l(15).is_shim_owner(3) && !l(15).is_shim_owner(OWNED_BY_GENERATOR));
        assert_eq!(l(14).max_owner(), 4);
        assert_eq!(l(15).max_owner(), 3);
        assert_eq!(l(13).code_tag_bits(), 0);
        assert_eq!(l(14).code_tag_bits(), 3);
        assert_eq!(l(15).code_tag_bits(), 3);
        assert_eq!(l(10).line_format(), LineFormat::Linetable310);
        assert_eq!(l(15).line_format(), LineFormat::Locations);
        assert!(l(11).str_has_ready() && !l(12).str_has_ready());
    }

    /// A `_PyRuntime` whose `_Py_DebugOffsets` says what `l`'s table entry says.
    pub(crate) fn debug_offsets_of(l: &Layout) -> Vec<u8> {
        let d = l.debug.unwrap();
        let mut words = vec![0u64; d.words()];
        let mut set = |i: usize, v: usize| words[i] = v as u64;
        set(
            d.version,
            (usize::from(l.version.0) << 24) | (usize::from(l.version.1) << 16) | 0xf0,
        );
        let GilLocation::Interpreter { pointer, inline } = l.gil else {
            panic!("3.13+ keeps the GIL in the interpreter")
        };
        set(d.interpreters_head, l.runtime_main_interp - 8);
        set(d.threads_head, l.interp_threads_head);
        set(d.ceval_gil, pointer);
        set(d.gil_runtime_state, inline);
        set(d.gil_locked, inline + l.gil_locked);
        set(d.gil_holder, inline + l.gil_last_holder);
        set(d.ts_next, l.ts_next);
        set(d.ts_interp, l.ts_interp);
        set(d.ts_current_frame, l.ts_frame);
        set(d.ts_thread_id, l.ts_thread_id);
        set(d.ts_native_thread_id, l.ts_native_thread_id.unwrap());
        set(d.f_previous, l.f_back);
        set(d.f_executable, l.f_code);
        set(d.f_instr_ptr, l.f_instr);
        set(d.f_owner, l.f_owner.unwrap());
        set(d.co_filename, l.co_filename);
        set(d.co_name, l.co_name);
        set(d.co_qualname, l.co_qualname.unwrap());
        set(d.co_linetable, l.co_linetable);
        set(d.co_firstlineno, l.co_firstlineno);
        set(d.co_code_adaptive, l.co_code_adaptive.unwrap());
        set(d.ob_type, l.ob_type);
        set(d.bytes_ob_size, l.ob_size);
        set(d.bytes_ob_sval, l.bytes_sval);
        set(d.str_state, l.str_state);
        set(d.str_length, l.str_length);
        set(d.str_ascii_size, l.str_ascii_size);
        let mut raw: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        raw[..8].copy_from_slice(b"xdebugpy");
        raw
    }

    /// The debug offsets of 3.13–3.15, written from each table entry at that version's word
    /// indices, read back to the same layout: the word indices and the parser agree.
    #[test]
    fn debug_offsets_agree_with_headers() {
        for minor in 13..=15 {
            let builtin = Layout::builtin((3, minor)).unwrap();
            let raw = debug_offsets_of(&builtin);
            let mut l = builtin;
            l.apply_debug_offsets(&raw).unwrap();
            assert_eq!(l.source, "_Py_DebugOffsets");
            assert_eq!(
                Layout {
                    source: "headers",
                    ..l
                },
                builtin,
                "3.{minor}"
            );
        }
    }

    #[test]
    fn a_moved_field_is_followed() {
        let builtin = Layout::builtin((3, 14)).unwrap();
        let d = builtin.debug.unwrap();
        let mut raw = debug_offsets_of(&builtin);
        raw[d.co_code_adaptive * 8..d.co_code_adaptive * 8 + 8]
            .copy_from_slice(&216u64.to_ne_bytes());
        raw[d.ts_current_frame * 8..d.ts_current_frame * 8 + 8]
            .copy_from_slice(&80u64.to_ne_bytes());
        let mut l = builtin;
        l.apply_debug_offsets(&raw).unwrap();
        assert_eq!(l.co_code_adaptive, Some(216));
        assert_eq!(l.co_firsttraceable, Some(200));
        assert_eq!(l.ts_frame, 80);
        assert_eq!(
            l.co_version, builtin.co_version,
            "the code's header did not move"
        );
    }

    #[test]
    fn co_version_is_dropped_when_the_code_header_moved() {
        // `co_version` is not published: a layout whose `co_filename` moved keeps none, and the
        // code cache compares contents instead.
        let builtin = Layout::builtin((3, 14)).unwrap();
        assert!(builtin.co_version.is_some());
        let d = builtin.debug.unwrap();
        let mut raw = debug_offsets_of(&builtin);
        raw[d.co_filename * 8..d.co_filename * 8 + 8]
            .copy_from_slice(&(builtin.co_filename as u64 + 8).to_ne_bytes());
        let mut l = builtin;
        l.apply_debug_offsets(&raw).unwrap();
        assert_eq!(l.co_filename, builtin.co_filename + 8);
        assert_eq!(l.co_version, None);
    }

    #[test]
    fn bad_debug_offsets_are_refused() {
        let builtin = Layout::builtin((3, 15)).unwrap();
        let d = builtin.debug.unwrap();
        let good = debug_offsets_of(&builtin);
        let refuse = |raw: &[u8], needle: &str| {
            let e = builtin.clone().apply_debug_offsets(raw).unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        let mut raw = good.clone();
        raw[..8].copy_from_slice(b"notdebug");
        refuse(&raw, "cookie");
        // 3.14's offsets on 3.15 (or the reverse): the version word says so.
        let mut raw = good.clone();
        raw[8..16].copy_from_slice(&0x030e_0af0u64.to_ne_bytes());
        refuse(&raw, "not 3.15");
        let mut raw = good.clone();
        raw[d.free_threaded * 8..d.free_threaded * 8 + 8].copy_from_slice(&1u64.to_ne_bytes());
        refuse(&raw, "free-threaded");
        let mut raw = good.clone();
        raw[d.f_owner * 8..d.f_owner * 8 + 8].copy_from_slice(&4096u64.to_ne_bytes());
        refuse(&raw, "implausible");
        let mut raw = good.clone();
        raw[d.gil_holder * 8..d.gil_holder * 8 + 8].copy_from_slice(&8u64.to_ne_bytes());
        refuse(&raw, "inconsistent GIL");
        refuse(&good[..good.len() - 8], "short");
        assert!(Layout::builtin((3, 12))
            .unwrap()
            .apply_debug_offsets(&good)
            .is_err());
    }
}
