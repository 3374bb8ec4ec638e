//! The watchdog's clock: monotonic nanoseconds since the first use in this process.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Monotonic nanoseconds since the clock was first read in this process. Never returns 0, so
/// 0 can mean "never" in atomics.
#[inline]
pub fn now_ns() -> u64 {
    let epoch = EPOCH.get_or_init(Instant::now);
    // u64 nanoseconds last 584 years.
    epoch.elapsed().as_nanos() as u64 + 1
}

/// Milliseconds helper for tests and defaults.
pub const fn ms(n: u64) -> u64 {
    n * 1_000_000
}
