//! Who holds the GIL, read from the runtime's GIL state without taking it.
//!
//! CPython keeps the GIL's state in a `struct _gil_runtime_state` (`Include/internal/pycore_gil.h`):
//!
//! ```c
//! struct _gil_runtime_state {
//!     unsigned long interval;          // switch interval, microseconds
//!     PyThreadState *last_holder;      // atomic; NOT cleared when the GIL is dropped
//!     int locked;                      // atomic; -1 before init / after fini
//!     unsigned long switch_number;     // bumped when the holder changes
//!     ...condition variables and mutexes...
//! };
//! ```
//!
//! Before 3.12 there is one, at `_PyRuntime.ceval.gil`. From 3.12 each interpreter points at
//! its GIL with `interp->ceval.gil`; the main interpreter owns its GIL, which lives inline at
//! `interp->_gil` (we check that the pointer says so: it is a cheap proof that the offsets fit
//! the running binary). The main interpreter is `_PyRuntime.interpreters.main`.
//!
//! The reader holds no lock and never takes the GIL: it reads `locked` and `last_holder` through
//! [`Memory`] (so a stale pointer is an error, not a crash), twice, until two reads agree.
//! `last_holder` names the holder only while `locked` is 1.
//!
//! Only the main interpreter is read (a thread of a 3.12+ sub-interpreter with its own GIL is
//! not covered). A reader reads the memory of the process that made it: make a new one after
//! `fork()`.
//!
//! The offsets come from the one per-version table in [`super::layout`] (updated from the
//! runtime's `_Py_DebugOffsets` on 3.13+).

use std::collections::HashSet;

use super::layout::{i32_at as int_at, u64_at, usize_at, GilLocation, Layout};
use super::mem::{symbol_address, MemError, Memory};
use super::PyInfo;
use crate::event::Gil;

/// Most thread states [`GilReader::threads`] follows before it decides the list is garbage.
pub const MAX_THREADS: usize = 4096;

/// The GIL reader's view of the [`Layout`].
impl Layout {
    /// Bytes of a thread state to read to see `next`, `interp` and the thread ids.
    fn tstate_read(&self) -> usize {
        [
            self.ts_next,
            self.ts_interp,
            self.ts_thread_id,
            self.ts_native_thread_id.unwrap_or(0),
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + 8
    }

    /// Bytes of the GIL state to read to see `last_holder`, `locked` and `switch_number`.
    fn gil_read(&self) -> usize {
        self.gil_last_holder
            .max(self.gil_locked)
            .max(self.gil_switch_number)
            + 8
    }

    /// Decodes the start of a `struct _gil_runtime_state`: `(locked, last_holder,
    /// switch_number)`; `locked` is the raw `int` (-1 when the GIL is not initialised).
    fn parse_gil(&self, raw: &[u8]) -> (i32, usize, u64) {
        (
            int_at(raw, self.gil_locked),
            usize_at(raw, self.gil_last_holder),
            u64_at(raw, self.gil_switch_number),
        )
    }

    /// Decodes the start of a `PyThreadState`.
    fn parse_tstate(&self, raw: &[u8]) -> RawThread {
        RawThread {
            next: usize_at(raw, self.ts_next),
            interp: usize_at(raw, self.ts_interp),
            ident: u64_at(raw, self.ts_thread_id),
            native_tid: self.ts_native_thread_id.map(|o| u64_at(raw, o)),
        }
    }
}

/// The fields of a thread state the reader uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RawThread {
    next: usize,
    interp: usize,
    ident: u64,
    native_tid: Option<u64>,
}

/// One reading of the GIL state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GilState {
    /// The GIL's `locked` field is 1: some thread holds the GIL.
    pub locked: bool,
    /// `last_holder`: the `PyThreadState*` that holds the GIL when `locked`, or held it last
    /// (it is not cleared on release, so it means nothing when not `locked`).
    pub holder_tstate: usize,
}

impl GilState {
    /// The `PyThreadState*` holding the GIL, if any thread does.
    pub fn holder(&self) -> Option<usize> {
        (self.locked && self.holder_tstate != 0).then_some(self.holder_tstate)
    }

    /// Who holds the GIL from the point of view of the thread whose state is `tstate`.
    pub fn attribution(&self, tstate: usize) -> Gil {
        match (self.locked, self.holder()) {
            (false, _) => Gil::Released,
            (true, None) => Gil::Unknown,
            (true, Some(h)) if h == tstate => Gil::Loop,
            (true, Some(_)) => Gil::Other,
        }
    }
}

/// Who holds the GIL, as seen from one thread (see [`GilReader::attribute`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attribution {
    /// The thread itself, nobody, or another thread.
    pub gil: Gil,
    /// When another thread holds the GIL: its `PyThreadState*` and, if readable, its ids.
    pub holder: Option<(usize, Option<ThreadIds>)>,
}

/// The identities of a Python thread, read from its `PyThreadState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadIds {
    /// `thread_id`: `threading.get_ident()` (the `pthread_t`).
    pub ident: u64,
    /// `native_thread_id`: `threading.get_native_id()` (3.11+; None before).
    pub native_tid: Option<u64>,
}

/// Reads the main interpreter's GIL state and thread list without the GIL.
#[derive(Clone, Debug)]
pub struct GilReader {
    mem: Memory,
    layout: Layout,
    runtime: usize,
    main_interp: usize,
    gil: usize,
}

/// How often [`GilReader::read`] reads the state looking for two identical reads in a row.
const READ_ATTEMPTS: usize = 4;

impl GilReader {
    /// A reader for the running interpreter, described by `info`.
    ///
    /// Checks the layout against the live runtime: the main interpreter exists, its first thread
    /// state points back at it, the GIL state is initialised, and (3.12+) the main interpreter's
    /// GIL pointer points at its own inline GIL. The check is strongest when the caller holds
    /// the GIL (then `last_holder` must be a thread of the main interpreter).
    ///
    /// # Errors
    /// Unsupported versions, debug and free-threaded builds, `_PyRuntime` not found, or a
    /// runtime that does not look like the layout says.
    pub fn new(info: PyInfo, mem: Memory) -> Result<GilReader, String> {
        let version = (info.version.0, info.version.1);
        info.check_supported("the GIL reader")?;
        let layout = Layout::for_running(&mem, version, "the GIL reader")?;
        let runtime = symbol_address("_PyRuntime")
            .ok_or("the symbol _PyRuntime is not exported by this interpreter")?;
        GilReader::at(mem, layout, runtime)
    }

    /// A reader for the runtime at `runtime` with `layout` (also used by the tests, on fake
    /// runtimes).
    fn at(mem: Memory, layout: Layout, runtime: usize) -> Result<GilReader, String> {
        let err = |what: &str, e: MemError| format!("cannot read {what}: {e}");
        let main_interp = mem
            .read_usize(runtime + layout.runtime_main_interp)
            .map_err(|e| err("_PyRuntime.interpreters.main", e))?;
        if main_interp == 0 {
            return Err("the interpreter is not initialised (no main interpreter)".into());
        }
        let gil = match layout.gil {
            GilLocation::Runtime(off) => runtime + off,
            GilLocation::Interpreter { pointer, inline } => {
                let gil = mem
                    .read_usize(main_interp + pointer)
                    .map_err(|e| err("interp->ceval.gil", e))?;
                if gil != main_interp + inline {
                    return Err(format!(
                        "the main interpreter's GIL pointer {gil:#x} is not its own GIL at \
                         {:#x}: the layout does not fit this interpreter",
                        main_interp + inline
                    ));
                }
                gil
            }
        };
        let reader = GilReader {
            mem,
            layout,
            runtime,
            main_interp,
            gil,
        };
        let head = reader
            .mem
            .read_usize(main_interp + layout.interp_threads_head)
            .map_err(|e| err("the main interpreter's thread list", e))?;
        if head != 0 {
            reader
                .thread(head)
                .map_err(|e| format!("the first thread state does not fit the layout: {e}"))?;
        }
        reader.check_gil()?;
        Ok(reader)
    }

    /// Checks that the GIL state looks initialised and that a holder is a thread of the main
    /// interpreter.
    fn check_gil(&self) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..5 {
            if attempt > 0 {
                std::thread::yield_now();
            }
            let raw = self
                .mem
                .read_vec(self.gil, self.layout.gil_read())
                .map_err(|e| format!("cannot read the GIL state: {e}"))?;
            let (locked, holder, _) = self.layout.parse_gil(&raw);
            match locked {
                0 => return Ok(()),
                1 if holder == 0 => last = "the GIL is locked by nobody".into(),
                1 => match self.thread(holder) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = format!("the GIL holder is not a thread state: {e}"),
                },
                -1 => return Err("the GIL is not initialised".into()),
                v => {
                    return Err(format!(
                        "the GIL's `locked` is {v}: the layout does not fit this interpreter"
                    ))
                }
            }
        }
        Err(last)
    }

    /// Checks the reader against a fact the caller knows: it holds the GIL and its thread state
    /// is `tstate` (call it on a Python thread, with the GIL). A layout that does not fit reads
    /// `locked` or `last_holder` from the wrong place and fails this, where [`GilReader::new`]
    /// alone could only check plausibility.
    ///
    /// # Errors
    /// What was read instead.
    pub fn verify_held_by(&self, tstate: usize) -> Result<(), String> {
        let s = self
            .read()
            .map_err(|e| format!("cannot read the GIL state: {e}"))?;
        if s.holder() != Some(tstate) {
            return Err(format!(
                "the GIL state reads locked={} last_holder={:#x} while the thread state {tstate:#x} \
                 holds the GIL: the layout does not fit this interpreter",
                s.locked, s.holder_tstate
            ));
        }
        self.thread(tstate)
            .map(|_| ())
            .map_err(|e| format!("the current thread state does not fit the layout: {e}"))
    }

    /// The layout in use.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The address of `_PyRuntime`.
    pub fn runtime(&self) -> usize {
        self.runtime
    }

    /// The main interpreter's `PyInterpreterState*`.
    pub fn main_interpreter(&self) -> usize {
        self.main_interp
    }

    /// The address of the GIL state being read.
    pub fn gil_address(&self) -> usize {
        self.gil
    }

    /// The addresses of the whole GIL state, `struct _gil_runtime_state`: `interval`,
    /// `last_holder`, `locked` and `switch_number` (a word each), then the condition variables
    /// and mutexes a thread waiting for the GIL sleeps on (`cond`, `mutex`, `switch_cond`,
    /// `switch_mutex`; the same on 3.10-3.15 builds with a GIL).
    pub fn gil_span(&self) -> std::ops::Range<usize> {
        #[cfg(unix)]
        let sync = std::mem::size_of::<libc::pthread_cond_t>()
            + std::mem::size_of::<libc::pthread_mutex_t>();
        // Never read: the readers refuse to start off Linux.
        #[cfg(not(unix))]
        let sync = 0;
        self.gil..self.gil + 4 * 8 + 2 * sync
    }

    /// Reads the GIL state once (one `process_vm_readv`).
    fn read_raw(&self) -> Result<(i32, usize, u64), MemError> {
        let mut buf = [0u8; 64];
        let n = self.layout.gil_read().min(buf.len());
        self.mem.read_bytes(self.gil, &mut buf[..n])?;
        Ok(self.layout.parse_gil(&buf[..n]))
    }

    /// Who holds the GIL now. Takes no lock and never waits for the GIL.
    ///
    /// `take_gil` sets `locked` before `last_holder`, so a single read can pair a new lock with
    /// the previous holder; the state is read until two reads in a row agree (a few attempts).
    pub fn read(&self) -> Result<GilState, MemError> {
        let mut prev = self.read_raw()?;
        for _ in 1..READ_ATTEMPTS {
            let next = self.read_raw()?;
            if next == prev {
                break;
            }
            prev = next;
        }
        Ok(GilState {
            locked: prev.0 == 1,
            holder_tstate: prev.1,
        })
    }

    /// Reads a thread state of the main interpreter; a pointer that leads elsewhere (its
    /// `interp` is not the main interpreter) is reported as [`MemError::Fault`] of `tstate`.
    fn thread(&self, tstate: usize) -> Result<RawThread, MemError> {
        if tstate % 8 != 0 {
            return Err(MemError::Fault(tstate));
        }
        let mut buf = [0u8; 256];
        let n = self.layout.tstate_read().min(buf.len());
        self.mem.read_bytes(tstate, &mut buf[..n])?;
        let t = self.layout.parse_tstate(&buf[..n]);
        if t.interp != self.main_interp {
            return Err(MemError::Fault(tstate));
        }
        Ok(t)
    }

    /// `threading.get_ident()` of the thread whose `PyThreadState*` is `tstate`.
    ///
    /// # Errors
    /// Unreadable memory, or `tstate` is not a thread state of the main interpreter
    /// ([`MemError::Fault`]).
    pub fn thread_ident_of(&self, tstate: usize) -> Result<u64, MemError> {
        Ok(self.thread(tstate)?.ident)
    }

    /// `threading.get_native_id()` of the thread whose `PyThreadState*` is `tstate`: `None`
    /// before 3.11, whose thread states do not record it.
    ///
    /// # Errors
    /// As [`GilReader::thread_ident_of`].
    pub fn native_tid_of(&self, tstate: usize) -> Result<Option<u64>, MemError> {
        Ok(self.thread(tstate)?.native_tid)
    }

    /// Both identities of a thread, in one read.
    ///
    /// # Errors
    /// As [`GilReader::thread_ident_of`].
    pub fn thread_ids(&self, tstate: usize) -> Result<ThreadIds, MemError> {
        let t = self.thread(tstate)?;
        Ok(ThreadIds {
            ident: t.ident,
            native_tid: t.native_tid,
        })
    }

    /// The main interpreter's thread states, newest first (`threads.head`, then `next`).
    ///
    /// Threads come and go while we read; a list that leads out of the main interpreter, loops,
    /// or is longer than [`MAX_THREADS`] is an error ([`MemError::Fault`] of the bad entry):
    /// retry.
    pub fn threads(&self) -> Result<Vec<usize>, MemError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut t = self
            .mem
            .read_usize(self.main_interp + self.layout.interp_threads_head)?;
        while t != 0 {
            if out.len() >= MAX_THREADS || !seen.insert(t) {
                return Err(MemError::Fault(t));
            }
            let raw = self.thread(t)?;
            out.push(t);
            t = raw.next;
        }
        Ok(out)
    }

    /// GIL attribution for a sample of the thread whose state is `loop_tstate`: whether it holds
    /// the GIL, nobody does, or another thread does (then with that thread's state and ids, so
    /// its stack can be read too). A holder whose thread state cannot be read (it may have just
    /// exited) still counts as [`Gil::Other`], without ids.
    ///
    /// # Errors
    /// The GIL state itself is unreadable.
    pub fn attribute(&self, loop_tstate: usize) -> Result<Attribution, MemError> {
        let state = self.read()?;
        let gil = state.attribution(loop_tstate);
        let holder = match (gil, state.holder()) {
            (Gil::Other, Some(t)) => Some((t, self.thread_ids(t).ok())),
            _ => None,
        };
        Ok(Attribution { gil, holder })
    }

    /// The GIL holder's `PyThreadState*` and identity, when a thread holds the GIL.
    ///
    /// # Errors
    /// Unreadable memory; a holder that is not a thread state of the main interpreter (it may
    /// have just exited) is [`MemError::Fault`].
    pub fn holder(&self) -> Result<Option<(usize, ThreadIds)>, MemError> {
        match self.read()?.holder() {
            None => Ok(None),
            Some(t) => Ok(Some((t, self.thread_ids(t)?))),
        }
    }
}

#[cfg(all(test, linux_full))]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_has_a_consistent_layout() {
        for minor in super::super::layout::SUPPORTED {
            let l = Layout::builtin((3, minor)).unwrap();
            assert_eq!(l.version, (3, minor));
            // struct _gil_runtime_state: interval, last_holder, locked, switch_number.
            assert_eq!(
                (l.gil_last_holder, l.gil_locked, l.gil_switch_number),
                (8, 16, 24)
            );
            assert_eq!(l.gil_read(), 32);
            // PyThreadState: prev, next, interp first; thread ids after them, distinct.
            assert_eq!((l.ts_next, l.ts_interp), (8, 16));
            assert!(l.ts_thread_id > l.ts_interp);
            assert_eq!(l.ts_native_thread_id.is_some(), minor >= 11);
            if let Some(n) = l.ts_native_thread_id {
                assert_eq!(n, l.ts_thread_id + 8);
            }
            assert!(l.tstate_read() <= 256);
            assert!(l.runtime_main_interp % 8 == 0 && l.interp_threads_head % 8 == 0);
            match l.gil {
                GilLocation::Runtime(off) => {
                    assert!(minor < 12);
                    assert!(off > l.runtime_main_interp && off % 8 == 0);
                }
                GilLocation::Interpreter { pointer, inline } => {
                    assert!(minor >= 12);
                    assert!(pointer % 8 == 0 && inline % 8 == 0 && pointer != inline);
                }
            }
        }
    }

    #[test]
    fn parses_gil_and_thread_state() {
        let l = Layout::builtin((3, 11)).unwrap();
        let mut gil = vec![0u8; 32];
        gil[0..8].copy_from_slice(&5000u64.to_ne_bytes());
        gil[8..16].copy_from_slice(&0x7f00_dead_bee8usize.to_ne_bytes());
        gil[16..20].copy_from_slice(&1i32.to_ne_bytes());
        gil[24..32].copy_from_slice(&42u64.to_ne_bytes());
        assert_eq!(l.parse_gil(&gil), (1, 0x7f00_dead_bee8, 42));
        gil[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert_eq!(l.parse_gil(&gil).0, -1);
        // A short buffer reads as zeros rather than panicking.
        assert_eq!(l.parse_gil(&gil[..10]), (0, 0, 0));

        let mut ts = vec![0u8; l.tstate_read()];
        ts[8..16].copy_from_slice(&0x1000usize.to_ne_bytes());
        ts[16..24].copy_from_slice(&0x2000usize.to_ne_bytes());
        ts[152..160].copy_from_slice(&0x7f12_3456_7000u64.to_ne_bytes());
        ts[160..168].copy_from_slice(&4321u64.to_ne_bytes());
        assert_eq!(
            l.parse_tstate(&ts),
            RawThread {
                next: 0x1000,
                interp: 0x2000,
                ident: 0x7f12_3456_7000,
                native_tid: Some(4321),
            }
        );
        let l310 = Layout::builtin((3, 10)).unwrap();
        assert_eq!(l310.parse_tstate(&ts).native_tid, None);
    }

    #[test]
    fn attribution() {
        let free = GilState {
            locked: false,
            holder_tstate: 0x1000,
        };
        assert_eq!(free.holder(), None);
        assert_eq!(free.attribution(0x1000), Gil::Released);
        let held = GilState {
            locked: true,
            holder_tstate: 0x1000,
        };
        assert_eq!(held.holder(), Some(0x1000));
        assert_eq!(held.attribution(0x1000), Gil::Loop);
        assert_eq!(held.attribution(0x2000), Gil::Other);
        let odd = GilState {
            locked: true,
            holder_tstate: 0,
        };
        assert_eq!(odd.attribution(0x1000), Gil::Unknown);
    }

    #[test]
    fn unsupported_builds_are_refused() {
        let base = PyInfo {
            version: (3, 11, 7),
            debug: false,
            free_threaded: false,
        };
        let mem = || Memory::new().unwrap();
        let e = GilReader::new(
            PyInfo {
                debug: true,
                ..base
            },
            mem(),
        )
        .unwrap_err();
        assert!(e.contains("debug"), "{e}");
        let e = GilReader::new(
            PyInfo {
                free_threaded: true,
                ..base
            },
            mem(),
        )
        .unwrap_err();
        assert!(e.contains("free-threaded"), "{e}");
        let e = GilReader::new(
            PyInfo {
                version: (3, 16, 0),
                ..base
            },
            mem(),
        )
        .unwrap_err();
        assert!(e.contains("3.16"), "{e}");
        // No interpreter runs in the test binary: either `_PyRuntime` is missing or it has no
        // main interpreter.
        assert!(GilReader::new(base, mem()).is_err());
    }

    /// A fake runtime, interpreter and thread states in our own memory, laid out like 3.10, 3.12
    /// or 3.15, read through the real [`Memory`] path.
    struct Fake {
        runtime: Vec<u64>,
        interp: Vec<u64>,
        threads: Vec<Vec<u64>>,
    }

    impl Fake {
        fn new(l: &Layout, nthreads: usize) -> Fake {
            let mut f = Fake {
                runtime: vec![0; 128],
                interp: vec![0; 256],
                threads: (0..nthreads).map(|_| vec![0u64; 32]).collect(),
            };
            let interp = f.interp.as_ptr() as usize;
            f.runtime[l.runtime_main_interp / 8] = interp as u64;
            if let GilLocation::Interpreter { pointer, inline } = l.gil {
                f.interp[pointer / 8] = (interp + inline) as u64;
            }
            let addrs: Vec<usize> = f.threads.iter().map(|t| t.as_ptr() as usize).collect();
            f.interp[l.interp_threads_head / 8] = addrs.first().copied().unwrap_or(0) as u64;
            for (i, t) in f.threads.iter_mut().enumerate() {
                t[l.ts_next / 8] = addrs.get(i + 1).copied().unwrap_or(0) as u64;
                t[l.ts_interp / 8] = interp as u64;
                t[l.ts_thread_id / 8] = 0x7f00_0000_0000 + i as u64;
                if let Some(o) = l.ts_native_thread_id {
                    t[o / 8] = 1000 + i as u64;
                }
            }
            f
        }

        fn gil_words(&mut self, l: &Layout) -> &mut [u64] {
            match l.gil {
                GilLocation::Runtime(off) => &mut self.runtime[off / 8..off / 8 + 4],
                GilLocation::Interpreter { inline, .. } => {
                    &mut self.interp[inline / 8..inline / 8 + 4]
                }
            }
        }

        fn set_gil(&mut self, l: &Layout, locked: i32, holder: usize) {
            let g = self.gil_words(l);
            g[1] = holder as u64;
            g[2] = locked as u32 as u64;
            g[3] += 1;
        }

        fn tstate(&self, i: usize) -> usize {
            self.threads[i].as_ptr() as usize
        }

        fn reader(&self, l: Layout) -> Result<GilReader, String> {
            GilReader::at(Memory::new().unwrap(), l, self.runtime.as_ptr() as usize)
        }
    }

    fn small(l: Layout) -> Layout {
        // Shrink the offsets so the fake structs stay small; keep their relative order.
        Layout {
            runtime_main_interp: 40,
            gil: match l.gil {
                GilLocation::Runtime(_) => GilLocation::Runtime(352),
                GilLocation::Interpreter { .. } => GilLocation::Interpreter {
                    pointer: 384,
                    inline: 1040,
                },
            },
            interp_threads_head: 72,
            ..l
        }
    }

    #[test]
    fn reads_a_fake_runtime() {
        for minor in [10u8, 12, 15] {
            let l = small(Layout::builtin((3, minor)).unwrap());
            let mut f = Fake::new(&l, 3);
            let t1 = f.tstate(1);
            f.set_gil(&l, 1, t1);
            let r = f.reader(l).unwrap();
            assert_eq!(
                r.read().unwrap(),
                GilState {
                    locked: true,
                    holder_tstate: t1
                }
            );
            assert_eq!(r.thread_ident_of(t1).unwrap(), 0x7f00_0000_0001);
            assert_eq!(r.native_tid_of(t1).unwrap(), (minor >= 11).then_some(1001));
            assert_eq!(
                r.holder().unwrap().map(|(t, ids)| (t, ids.ident)),
                Some((t1, 0x7f00_0000_0001))
            );
            assert_eq!(r.threads().unwrap(), vec![f.tstate(0), t1, f.tstate(2)]);
            assert_eq!(r.attribute(t1).unwrap().gil, Gil::Loop);
            assert_eq!(r.attribute(t1).unwrap().holder, None);
            let other = r.attribute(f.tstate(0)).unwrap();
            assert_eq!(other.gil, Gil::Other);
            let (h, ids) = other.holder.unwrap();
            assert_eq!((h, ids.unwrap().ident), (t1, 0x7f00_0000_0001));

            r.verify_held_by(t1).unwrap();
            assert!(r.verify_held_by(f.tstate(0)).is_err());

            f.set_gil(&l, 0, t1);
            assert!(r.verify_held_by(t1).is_err());
            let s = r.read().unwrap();
            assert!(!s.locked);
            assert_eq!(s.holder(), None);
            assert_eq!(r.holder().unwrap(), None);
            assert_eq!(
                r.attribute(t1).unwrap(),
                Attribution {
                    gil: Gil::Released,
                    holder: None
                }
            );

            // A pointer that is not a thread state of the main interpreter is refused.
            let not_a_thread = f.runtime.as_ptr() as usize;
            assert!(r.thread_ident_of(not_a_thread).is_err());
            assert!(r.thread_ident_of(t1 + 3).is_err());

            // A loop in the thread list is an error, not a hang.
            let (l0, t0) = (l.ts_next / 8, f.tstate(0));
            f.threads[2][l0] = t0 as u64;
            assert!(r.threads().is_err());
        }
    }

    #[test]
    fn refuses_a_fake_runtime_that_does_not_fit() {
        for minor in [10u8, 13, 14] {
            let l = small(Layout::builtin((3, minor)).unwrap());
            let mut f = Fake::new(&l, 2);
            // Uninitialised GIL.
            f.set_gil(&l, -1, 0);
            assert!(f.reader(l).unwrap_err().contains("not initialised"));
            // Garbage in `locked`.
            f.set_gil(&l, 7, 0);
            assert!(f.reader(l).unwrap_err().contains("locked"));
            // Locked by something that is not a thread of the main interpreter.
            let bogus = f.interp.as_ptr() as usize;
            f.set_gil(&l, 1, bogus);
            assert!(f.reader(l).unwrap_err().contains("holder"));
            let t0 = f.tstate(0);
            f.set_gil(&l, 1, t0);
            assert!(f.reader(l).is_ok());
            // No main interpreter.
            let mut f2 = Fake::new(&l, 1);
            f2.runtime[l.runtime_main_interp / 8] = 0;
            assert!(f2.reader(l).unwrap_err().contains("not initialised"));
            // 3.12+: the GIL pointer does not point at the interpreter's own GIL.
            if let GilLocation::Interpreter { pointer, .. } = l.gil {
                let mut f3 = Fake::new(&l, 1);
                f3.interp[pointer / 8] += 8;
                assert!(f3.reader(l).unwrap_err().contains("GIL pointer"));
            }
        }
    }
}
