//! Taking a running thread's native stack with a signal.
//!
//! # The protocol
//! One capture at a time per process, through the static [`SLOT`]:
//!
//! 1. the watchdog checks that the thread does not block the signal (`SigBlk` in
//!    `/proc/self/task/TID/status`) and is not in a system call, sets the slot to *requested*
//!    (stamped with the pid, so a forked child never mistakes its parent's request for its
//!    own) and sends the signal to that one thread (`tgkill`);
//! 2. the handler, on the loop thread, moves the slot from *requested* to *writing* (so a late
//!    signal finds nothing to do), stores the interrupted instruction and the return addresses
//!    that `backtrace::trace_unsynchronized` finds above it into the slot's fixed array, and
//!    marks it *done*. It allocates nothing and takes no lock of ours; `errno` is kept;
//! 3. the watchdog waits for *done* ([`ANSWER`]); if the handler has not started by then it
//!    takes the request back, so a signal delivered later does nothing; if it started and did
//!    not finish in [`STUCK`] the capture is turned off for the process, so the watchdog never
//!    waits on a stuck thread twice.
//!
//! The handler is installed with `SA_RESTART` on the first capture only: a process that never
//! has a block, or never asks for native frames, never gets a handler or a signal. It uses the
//! first real-time signal from `SIGRTMIN + 4` on whose disposition is the default (no library
//! uses it), and checks before each capture that the handler is still ours.
//!
//! Unwinding in a handler: libgcc finds unwind tables through `_dl_find_object` (glibc 2.35
//! and later: no lock), and the first unwind (which initialises libgcc's state and binds the
//! symbols it calls) is done on the watchdog thread before the handler is installed.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Most addresses one capture keeps.
pub const MAX_FRAMES: usize = 96;
/// How long the watchdog waits for the handler to start.
pub const ANSWER: Duration = Duration::from_millis(50);
/// How long the watchdog waits for a started handler to finish before it gives up on native
/// frames for the rest of the process's life.
pub const STUCK: Duration = Duration::from_millis(500);

const IDLE: u64 = 0;
const REQUESTED: u64 = 1;
const WRITING: u64 = 2;
const DONE: u64 = 3;

/// The one capture in flight: state `(pid << 2) | phase`, the target thread and the result.
struct Slot {
    state: AtomicU64,
    tid: AtomicU64,
    len: AtomicUsize,
    ips: [AtomicUsize; MAX_FRAMES],
}

static SLOT: Slot = Slot {
    state: AtomicU64::new(IDLE),
    tid: AtomicU64::new(0),
    len: AtomicUsize::new(0),
    ips: [const { AtomicUsize::new(0) }; MAX_FRAMES],
};

/// The signal in use (0 until installed), and why capture is off for good, if it is.
static SIGNAL: AtomicU64 = AtomicU64::new(0);
static BROKEN: AtomicBool = AtomicBool::new(false);
/// System calls the handler found interrupted by its signal and restarted, and those it could
/// not restart (see `repair`).
static RESTARTED: AtomicU64 = AtomicU64::new(0);
static LOST: AtomicU64 = AtomicU64::new(0);

/// `(restarted, not restarted)`: how many system calls loopguard's signal interrupted in this
/// process (see `repair`).
pub fn interrupted_calls() -> (u64, u64) {
    (
        RESTARTED.load(Ordering::Relaxed),
        LOST.load(Ordering::Relaxed),
    )
}
static INSTALL: parking_lot::Mutex<Option<String>> = parking_lot::Mutex::new(None);

fn pid() -> u64 {
    u64::from(crate::pid::pid())
}

/// Moves the slot of process `me` from phase `from` to `to`; false when it was not in `from`.
fn advance(me: u64, from: u64, to: u64) -> bool {
    SLOT.state
        .compare_exchange(
            (me << 2) | from,
            (me << 2) | to,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
}

/// Sends `sig` to thread `tid` of this process; false when it could not.
fn send(tid: i64, sig: i32) -> bool {
    // SAFETY: tgkill only sends a signal; callers send only a signal our handler is installed
    // for.
    unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::c_long::from(crate::pid::pid() as i32),
            tid as libc::c_long,
            libc::c_long::from(sig),
        ) == 0
    }
}

/// What the kernel says the thread is doing, for choosing how to read its stack.
#[derive(Debug, PartialEq, Eq)]
pub enum Thread {
    /// On a CPU or runnable, in user code: it can take a signal without any call failing.
    Running,
    /// In a system call (or a page fault): `pc` is where it will return to, when known.
    InKernel { pc: Option<usize> },
}

impl Thread {
    /// Reads the state of thread `tid` of this process.
    ///
    /// # Errors
    /// Why its native stack cannot be read (no `/proc`, the thread is gone).
    pub fn read(tid: i64) -> Result<Thread, String> {
        let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
            .map_err(|e| format!("cannot read the thread's state from /proc: {e}"))?;
        Thread::parse(&text).ok_or_else(|| format!("unexpected /proc syscall line {text:?}"))
    }

    /// Parses `/proc/.../syscall`: `running`, `-1 SP PC`, or `NR ARG1 .. ARG6 SP PC`.
    pub fn parse(text: &str) -> Option<Thread> {
        let words: Vec<&str> = text.split_ascii_whitespace().collect();
        match words.as_slice() {
            ["running"] => Some(Thread::Running),
            [_, .., pc] if words.len() >= 3 => Some(Thread::InKernel {
                pc: pc
                    .strip_prefix("0x")
                    .and_then(|h| usize::from_str_radix(h, 16).ok())
                    .filter(|&pc| pc != 0),
            }),
            _ => None,
        }
    }
}

/// The thread's count of voluntary context switches (each time it slept: a blocking system
/// call, a lock) from `/proc/.../status` text.
pub fn voluntary_switches(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

/// How long a thread must have run without sleeping before it is signalled.
pub const SETTLED: Duration = Duration::from_millis(1);

/// True when `signal` is in the blocked mask of `/proc/.../status` text.
pub fn blocks(status: &str, signal: i32) -> Option<bool> {
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))?
        .trim();
    let mask = u64::from_str_radix(mask, 16).ok()?;
    let bit = u32::try_from(signal - 1).ok()?;
    Some(bit < 64 && mask & (1u64 << bit) != 0)
}

/// The interrupted instruction in a signal's context.
///
/// # Safety
/// `ctx` must be the `ucontext_t` pointer the kernel passed to an `SA_SIGINFO` handler.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
unsafe fn interrupted_pc(ctx: *mut libc::c_void) -> usize {
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: the caller passes the kernel's context, which stays valid during the handler.
    unsafe { (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] as usize }
}

/// See the x86-64 version.
///
/// # Safety
/// `ctx` must be the `ucontext_t` pointer the kernel passed to an `SA_SIGINFO` handler.
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
unsafe fn interrupted_pc(ctx: *mut libc::c_void) -> usize {
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: the caller passes the kernel's context, which stays valid during the handler.
    unsafe { (*uc).uc_mcontext.pc as usize }
}

/// Undoes the one harm the signal can do: a thread that entered a waiting system call in the
/// microseconds between the watchdog's last look and the signal has that call interrupted, and
/// calls such as `nanosleep`, `poll` or `epoll_wait` then return `EINTR` despite `SA_RESTART`.
/// The handler sees it (the interrupted instruction follows a `syscall` instruction and the
/// result is `-EINTR`) and restarts the call as the kernel does for `SA_RESTART` (back to the
/// `syscall` instruction, the number back in `rax`; the arguments are still in their
/// registers), when the number is known: glibc's wrappers load it just before
/// (`mov $NR, %eax`). A timed wait restarts with its full timeout (`select`, `ppoll` and
/// `pselect6` store the time left, so theirs is exact). Any other is counted in `LOST`, and
/// capture is turned off for the process (see [`capture`]).
///
/// # Safety
/// `ctx` must be the `ucontext_t` pointer the kernel passed to an `SA_SIGINFO` handler.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
unsafe fn repair(ctx: *mut libc::c_void) {
    const SYSCALL: [u8; 2] = [0x0f, 0x05];
    const MOV_EAX: u8 = 0xb8;
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: the kernel's context stays valid and is ours to change during the handler (the
    // registers are restored from it when the handler returns).
    let gregs = unsafe { &mut (*uc).uc_mcontext.gregs };
    if gregs[libc::REG_RAX as usize] != -i64::from(libc::EINTR) {
        return;
    }
    let rip = gregs[libc::REG_RIP as usize] as usize;
    // Only bytes in the page of the interrupted instruction, which is mapped and executable
    // (so readable: glibc's text is r-x).
    if rip < 7 || (rip - 7) / 4096 != rip / 4096 {
        return;
    }
    // SAFETY: the 7 bytes before `rip` lie in `rip`'s page (checked above).
    let code = unsafe { std::slice::from_raw_parts((rip - 7) as *const u8, 7) };
    if code[5..] != SYSCALL {
        return; // not back from a system call
    }
    if code[0] == MOV_EAX {
        let nr = u32::from_le_bytes([code[1], code[2], code[3], code[4]]);
        gregs[libc::REG_RAX as usize] = i64::from(nr);
        gregs[libc::REG_RIP as usize] = (rip - 2) as i64;
        RESTARTED.fetch_add(1, Ordering::Relaxed);
    } else {
        LOST.fetch_add(1, Ordering::Relaxed);
    }
}

/// On aarch64 the call's first argument is overwritten by its result, so an interrupted call
/// cannot be restarted: it is only counted (see the x86-64 version).
///
/// # Safety
/// `ctx` must be the `ucontext_t` pointer the kernel passed to an `SA_SIGINFO` handler.
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
unsafe fn repair(ctx: *mut libc::c_void) {
    const SVC_0: [u8; 4] = [0x01, 0x00, 0x00, 0xd4];
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: the kernel's context stays valid during the handler.
    let (x0, pc) = unsafe {
        (
            (*uc).uc_mcontext.regs[0] as i64,
            (*uc).uc_mcontext.pc as usize,
        )
    };
    if x0 != -i64::from(libc::EINTR) || pc < 4 || (pc - 4) / 4096 != pc / 4096 {
        return;
    }
    // SAFETY: the 4 bytes before `pc` lie in `pc`'s page, which is mapped and executable.
    let code = unsafe { std::slice::from_raw_parts((pc - 4) as *const u8, 4) };
    if code == SVC_0 {
        LOST.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
extern "C" fn on_signal(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: `__errno_location` returns this thread's errno; reading and restoring it keeps
    // the interrupted code's errno as it was.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: `getpid` and `gettid` have no preconditions and are async-signal-safe.
    let (me, tid) = unsafe { (libc::getpid() as u64, libc::gettid() as u64) };
    if SLOT.tid.load(Ordering::Acquire) == tid && advance(me, REQUESTED, WRITING) {
        // SAFETY: the kernel passed `ctx` to this SA_SIGINFO handler.
        let pc = unsafe { interrupted_pc(ctx) };
        SLOT.ips[0].store(pc, Ordering::Relaxed);
        let mut n = 1;
        let mut above = false;
        // SAFETY: the unwinder runs on this thread's own stack and the closure only stores
        // into the fixed array (no allocation, no lock, no panic: `n` is checked first).
        // Frames up to the interrupted one (this handler, the signal trampoline) are skipped.
        unsafe {
            backtrace::trace_unsynchronized(|frame| {
                let ip = frame.ip() as usize;
                if !above {
                    above = ip == pc;
                    return true;
                }
                if n >= MAX_FRAMES || ip == 0 {
                    return false;
                }
                SLOT.ips[n].store(ip, Ordering::Relaxed);
                n += 1;
                true
            });
        }
        SLOT.len.store(n, Ordering::Relaxed);
        SLOT.state.store((me << 2) | DONE, Ordering::Release);
    }
    // SAFETY: the kernel passed `ctx` to this SA_SIGINFO handler.
    unsafe { repair(ctx) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// The handler's address as `sigaction` wants it.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn handler_address() -> usize {
    on_signal as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize
}

/// The current disposition of `sig`.
fn disposition(sig: i32) -> Option<usize> {
    // SAFETY: a zeroed `sigaction` is a valid out-parameter; a null new action only queries.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(sig, std::ptr::null(), &mut old) == 0).then_some(old.sa_sigaction)
    }
}

/// Installs the handler on the first free real-time signal; returns it.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn install() -> Result<i32, String> {
    // Bounded: a child forked while another thread held the lock must not hang on it.
    let Some(mut failed) = INSTALL.try_lock_for(Duration::from_millis(100)) else {
        return Err("the signal handler's installation is stuck (a fork?)".into());
    };
    if let Some(why) = failed.as_ref() {
        return Err(why.clone());
    }
    let current = SIGNAL.load(Ordering::Acquire) as i32;
    if current != 0 {
        return Ok(current);
    }
    // The first unwind initialises libgcc's unwinder and binds what it calls: done here, on
    // the watchdog thread, never first in a handler.
    // SAFETY: an ordinary unwind of this thread's stack.
    unsafe { backtrace::trace_unsynchronized(|_| true) };
    let free = (libc::SIGRTMIN() + 4..=libc::SIGRTMAX())
        .find(|&sig| disposition(sig) == Some(libc::SIG_DFL));
    let Some(sig) = free else {
        let why = "every real-time signal is in use by another library".to_owned();
        *failed = Some(why.clone());
        return Err(why);
    };
    // SAFETY: `action` is fully initialised (zeroed, then the handler, flags and an empty
    // mask); the handler only touches atomics and the unwinder (see `on_signal`).
    let ok = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler_address();
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(sig, &action, std::ptr::null_mut()) == 0
    };
    if !ok {
        let why = format!(
            "cannot install a signal handler: {}",
            std::io::Error::last_os_error()
        );
        *failed = Some(why.clone());
        return Err(why);
    }
    SIGNAL.store(sig as u64, Ordering::Release);
    Ok(sig)
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn install() -> Result<i32, String> {
    Err("native frames are read on Linux x86-64 and aarch64 only".into())
}

/// Why a running thread's native frames are not read on glibc 2.41 and later.
pub const GLIBC_CANCELLABLE: &str = "native frames of a running thread are not read with glibc \
     2.41 or later: its system calls that wait go through one routine that keeps the call's \
     number in no register, so one that the signal interrupted could not be restarted";

/// Whether glibc `version` (`gnu_get_libc_version()`, "2.41") makes its waiting system calls
/// through `__syscall_cancel_arch`, which loads the call's number from a register that the
/// call's arguments then overwrite: [`repair`] cannot find the number to restart the call.
pub fn glibc_calls_cannot_be_restarted(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (2, 41),
        _ => true, // unknown: assume the worst
    }
}

/// The C library's reason not to signal a running thread, if it has one.
fn library_refuses() -> Option<&'static str> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: gnu_get_libc_version returns a pointer to a static NUL-terminated string.
        let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
        if glibc_calls_cannot_be_restarted(&version.to_string_lossy()) {
            return Some(GLIBC_CANCELLABLE);
        }
    }
    None
}

/// Why a thread that sleeps now and then is not signalled.
pub const SLEEPING: &str = "the thread was making system calls that wait: the native frames \
     are not read (a signal could interrupt such a call)";

/// Takes the native stack of the running thread `tid` with a signal (see the module docs).
/// Returns the addresses, innermost first.
///
/// # Errors
/// Why it could not (the reasons in the module docs), in words for a report.
pub fn capture(tid: i64) -> Result<Vec<usize>, String> {
    if BROKEN.load(Ordering::Relaxed) {
        return Err(
            "turned off: an earlier capture did not finish, or interrupted a system call it \
             could not restart"
                .into(),
        );
    }
    if let Some(why) = library_refuses() {
        return Err(why.into());
    }
    let sig = install()?;
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    if disposition(sig) != Some(handler_address()) {
        return Err("another library took over loopguard's signal".into());
    }
    let status = || {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
            .map_err(|e| format!("cannot read the thread's status from /proc: {e}"))
    };
    // A thread that slept in the last `SETTLED` (a system call that waited, a lock) may be about
    // to sleep again, and a signal that lands in such a call makes it fail with EINTR: only a
    // thread that kept running (a regex, a compression, a query plan) is signalled. What is left
    // is a thread whose long stretch of running ends in the microseconds between the last look
    // below and the signal.
    let before = voluntary_switches(&status()?);
    std::thread::sleep(SETTLED);
    let now = status()?;
    if blocks(&now, sig) != Some(false) {
        return Err("the thread blocks signals".into());
    }
    if before.is_none() || voluntary_switches(&now) != before {
        return Err(SLEEPING.into());
    }
    // The last look before the signal.
    if Thread::read(tid)? != Thread::Running {
        return Err(super::IN_KERNEL.into());
    }
    let me = pid();
    let state = SLOT.state.load(Ordering::Acquire);
    if state >> 2 == me && state & 3 != IDLE {
        return Err("another capture is in progress".into());
    }
    SLOT.len.store(0, Ordering::Relaxed);
    SLOT.tid.store(tid as u64, Ordering::Release);
    SLOT.state.store((me << 2) | REQUESTED, Ordering::Release);
    // Our handler is installed for `sig` (checked above).
    let sent = send(tid, sig);
    if !sent {
        SLOT.state.store((me << 2) | IDLE, Ordering::Release);
        return Err(format!(
            "cannot signal the thread: {}",
            std::io::Error::last_os_error()
        ));
    }
    let lost = LOST.load(Ordering::Relaxed);
    let start = Instant::now();
    loop {
        let phase = SLOT.state.load(Ordering::Acquire) & 3;
        if phase == DONE {
            break;
        }
        let waited = start.elapsed();
        if phase == REQUESTED && waited >= ANSWER {
            // Not started: take the request back, so a late signal does nothing.
            if advance(me, REQUESTED, IDLE) {
                return Err("the thread did not take the signal in time".into());
            }
            continue;
        }
        if waited >= ANSWER + STUCK {
            BROKEN.store(true, Ordering::Relaxed);
            return Err("the signal handler did not finish; native frames are off".into());
        }
        std::thread::sleep(Duration::from_micros(20));
    }
    if LOST.load(Ordering::Relaxed) != lost {
        BROKEN.store(true, Ordering::Relaxed);
    }
    let n = SLOT.len.load(Ordering::Relaxed).min(MAX_FRAMES);
    let ips = SLOT.ips[..n]
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    SLOT.state.store((me << 2) | IDLE, Ordering::Release);
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_line_says_running_or_where_the_call_returns() {
        assert_eq!(Thread::parse("running\n"), Some(Thread::Running));
        assert_eq!(
            Thread::parse("230 0x0 0x0 0x7ffc 0x0 0x0 0x0 0x7ffde0 0x7f12a4e5c8b5\n"),
            Some(Thread::InKernel {
                pc: Some(0x7f12_a4e5_c8b5)
            })
        );
        assert_eq!(
            Thread::parse("-1 0x7ffde0 0x7f12a4e5c8b5\n"),
            Some(Thread::InKernel {
                pc: Some(0x7f12_a4e5_c8b5)
            })
        );
        assert_eq!(Thread::parse(""), None);
    }

    #[test]
    fn glibc_from_2_41_on_is_not_signalled() {
        assert!(!glibc_calls_cannot_be_restarted("2.36"));
        assert!(!glibc_calls_cannot_be_restarted("2.40"));
        assert!(glibc_calls_cannot_be_restarted("2.41"));
        assert!(glibc_calls_cannot_be_restarted("2.100"));
        assert!(glibc_calls_cannot_be_restarted("3.0"));
        assert!(glibc_calls_cannot_be_restarted("unknown"));
    }

    #[test]
    fn the_blocked_mask_is_read_by_signal_number() {
        let status = "Name:\tpython\nSigBlk:\t0000000400000000\nSigIgn:\t0\n";
        assert_eq!(blocks(status, 35), Some(true));
        assert_eq!(blocks(status, 36), Some(false));
        assert_eq!(blocks("Name:\tx\n", 35), None);
        let status = "voluntary_ctxt_switches:\t152\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(voluntary_switches(status), Some(152));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_wait_the_signal_interrupts_is_restarted_not_failed() {
        let sig = install().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            // SAFETY: `gettid` has no preconditions.
            tx.send(unsafe { libc::gettid() } as i64).unwrap();
            let mut failed = 0;
            for _ in 0..100 {
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 2_000_000,
                };
                // SAFETY: `ts` is a valid timespec; no remainder is asked for.
                if unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) } != 0 {
                    failed += 1;
                }
            }
            failed
        });
        let tid = rx.recv().unwrap();
        let before = interrupted_calls().0;
        for _ in 0..60 {
            // The handler is installed for `sig`; the thread exits only after its loop.
            assert!(send(tid, sig));
            std::thread::sleep(Duration::from_micros(2500));
        }
        assert_eq!(sleeper.join().unwrap(), 0);
        assert!(interrupted_calls().0 > before);
    }

    #[test]
    fn a_running_thread_of_this_process_gives_its_stack() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = Arc::clone(&stop);
        let spinner = std::thread::spawn(move || {
            // SAFETY: `gettid` has no preconditions.
            tx.send(unsafe { libc::gettid() } as i64).unwrap();
            let mut x = 0u64;
            while !flag.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            x
        });
        let tid = rx.recv().unwrap();
        let mut got = None;
        for _ in 0..50 {
            match capture(tid) {
                Ok(ips) => {
                    got = Some(ips);
                    break;
                }
                Err(e) if e == super::super::IN_KERNEL || e == SLEEPING => {}
                Err(e) => panic!("{e}"),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        let ips = got.expect("the spinning thread was never seen running");
        assert!(ips.len() >= 2, "{ips:?}");
    }
}
