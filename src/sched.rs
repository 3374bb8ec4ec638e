//! Prompt wake-ups for the watchdog on a busy machine, without privileges.
//!
//! The watchdog sleeps until a deadline; how late it runs after that is the scheduler's
//! wake-up latency, which on a loaded machine (a test suite running `-n auto`) reaches several
//! milliseconds, and hundreds under heavy load: the woken thread waits for the running ones'
//! time slices to end. Each system has an unprivileged way to ask for better, and the watchdog
//! (which runs for microseconds per wake-up) asks for it on every build, the portable one too:
//! this is a scheduling hint, not one of the Linux-only readers.
//!
//! - **Linux** 6.12+ lets an ordinary thread ask for a shorter slice (`sched_setattr` with
//!   `sched_runtime` on a `SCHED_OTHER` thread): its virtual deadline comes sooner, so it
//!   preempts on wake-up. It gets no more CPU than before, and the request needs no capability.
//!   Older kernels ignore the field; kernels without `sched_setattr` refuse the call; either way
//!   nothing changes.
//! - **macOS**: the thread's quality-of-service class becomes user-interactive (the class of a
//!   UI's main thread), which the scheduler runs first and wakes on time.
//! - **Windows**: the thread's priority becomes "highest" within the process's class (one step
//!   below time-critical), which any process may set for its own threads.
//!
//! Only the Linux request is exercised here (the portable build on Linux makes it too); the
//! other two are compiled for their targets by `script/lint` and not run.

/// The calling thread's nice value (`getpriority(PRIO_PROCESS, 0)` is per thread on Linux).
#[cfg(target_os = "linux")]
fn current_nice() -> Option<i32> {
    // SAFETY: getpriority takes no pointers; errno is thread-local. -1 is also a valid nice
    // value, so errno (cleared first) tells an error apart.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, 0);
        (n != -1 || *libc::__errno_location() == 0).then_some(n)
    }
}

/// `struct sched_attr` (linux/sched/types.h), version 1 (with utilisation clamps): 56 bytes.
#[cfg(target_os = "linux")]
#[repr(C)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

/// The slice the watchdog asks for: the kernel's smallest (0.1 ms).
pub const WATCHDOG_SLICE_NS: u64 = 100_000;

/// The slice for the watchdog: `LOOPGUARD_WATCHDOG_SLICE_US` microseconds when set (`0`: ask
/// for nothing, which `benchmarks/detection_accuracy.py --ab-slice` compares against), else
/// [`WATCHDOG_SLICE_NS`]. Read once, by the thread that starts the watchdog.
pub fn watchdog_slice_from_env() -> Option<u64> {
    match std::env::var("LOOPGUARD_WATCHDOG_SLICE_US") {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(0) => None,
            Ok(us) => Some(us.saturating_mul(1000)),
            Err(_) => Some(WATCHDOG_SLICE_NS),
        },
        Err(_) => Some(WATCHDOG_SLICE_NS),
    }
}

/// Asks the kernel for a time slice of `slice_ns` for the calling thread, keeping its policy
/// (`SCHED_OTHER`) and nice value. Returns whether the kernel accepted the request (a kernel
/// before 6.12 accepts it and ignores the slice).
#[cfg(target_os = "linux")]
pub fn request_slice(slice_ns: u64) -> bool {
    let Some(nice) = current_nice() else {
        return false;
    };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: slice_ns,
        sched_deadline: 0,
        sched_period: 0,
        sched_util_min: 0,
        sched_util_max: 0,
    };
    // SAFETY: `attr` is a valid, initialised `struct sched_attr` whose `size` field gives its
    // length; the kernel only reads it during the call. pid 0 is the calling thread.
    unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) == 0 }
}

/// On macOS: the calling thread's quality-of-service class becomes user-interactive (a slice
/// cannot be asked for, so `_slice_ns` only says that something should be). Returns whether
/// the system accepted it.
#[cfg(target_vendor = "apple")]
pub fn request_slice(_slice_ns: u64) -> bool {
    // SAFETY: pthread_set_qos_class_self_np takes no pointers and changes only the calling
    // thread's own class; a relative priority of 0 is always valid.
    unsafe {
        libc::pthread_set_qos_class_self_np(libc::qos_class_t::QOS_CLASS_USER_INTERACTIVE, 0) == 0
    }
}

/// On Windows: the calling thread's priority becomes `THREAD_PRIORITY_HIGHEST` within its
/// process's class. Returns whether the system accepted it.
#[cfg(windows)]
pub fn request_slice(_slice_ns: u64) -> bool {
    use std::ffi::c_void;
    const THREAD_PRIORITY_HIGHEST: i32 = 2;
    // SAFETY: these are kernel32.dll's signatures (HANDLE is a pointer, BOOL an i32); every
    // Windows process has it loaded, and Rust's standard library links it.
    unsafe extern "system" {
        fn GetCurrentThread() -> *mut c_void;
        fn SetThreadPriority(thread: *mut c_void, priority: i32) -> i32;
    }
    // SAFETY: GetCurrentThread returns a pseudo-handle for the calling thread that needs no
    // closing, and SetThreadPriority only reads its two arguments.
    unsafe { SetThreadPriority(GetCurrentThread(), THREAD_PRIORITY_HIGHEST) != 0 }
}

/// Elsewhere nothing is asked for.
#[cfg(not(any(target_os = "linux", target_vendor = "apple", windows)))]
pub fn request_slice(_slice_ns: u64) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn sched_attr_has_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<SchedAttr>(), 56);
    }

    #[test]
    fn the_request_keeps_the_policy_and_nice_value() {
        std::thread::spawn(|| {
            let before = current_nice();
            let accepted = request_slice(WATCHDOG_SLICE_NS);
            // SAFETY: sched_getscheduler(0) takes no pointers and reads the calling thread's
            // policy.
            let policy = unsafe { libc::sched_getscheduler(0) };
            let after = current_nice();
            assert_eq!(policy, libc::SCHED_OTHER);
            assert!(before.is_some());
            assert_eq!(before, after);
            // Only a kernel without sched_setattr (before 3.14) or a seccomp filter refuses it.
            let _ = accepted;
        })
        .join()
        .unwrap();
    }
}
