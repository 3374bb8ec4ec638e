//! The watchdog's clock: `CLOCK_MONOTONIC` in nanoseconds.
//!
//! Read on every loop iteration, so it is the raw vDSO call (about 20 ns) rather than
//! `Instant` arithmetic.

/// Monotonic nanoseconds (`CLOCK_MONOTONIC`, the clock of Python's `time.monotonic_ns()`).
/// Never returns 0, so 0 can mean "never" in atomics.
#[cfg(unix)]
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec owned by this frame, and CLOCK_MONOTONIC is
    // always supported on Linux, so the call only writes `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64 + 1
}

/// Nanoseconds since the first call (plus one), from `Instant` (Windows' monotonic clock);
/// Python's `time.monotonic_ns()` counts from elsewhere there, so only differences compare.
#[cfg(not(unix))]
pub fn now_ns() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(std::time::Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
}

/// Milliseconds helper for tests and defaults.
pub const fn ms(n: u64) -> u64 {
    n * 1_000_000
}
