//! Which test and phase were current when: the history the watchdog reads to attribute a block.
//!
//! The Python layer switches the context at every test phase, so a switch must cost the caller
//! nothing but a short, uncontended critical section: [`ContextLog::set`] appends to a shared
//! history and returns; it never waits for the watchdog thread or wakes it. The watchdog reads
//! the history only when it needs it, to name the context of a block it has just detected (or
//! whose end was just reported), with [`ContextLog::at`] — so in a phase where no loop
//! blocks, nothing else touches the lock.
//!
//! # Keeping enough history
//! A block belongs to the context in force when it *began*, and the watchdog only learns of a
//! block up to one threshold (plus its wake-up latency) later, or when its end is reported. So
//! an entry may only be forgotten once no block can still be attributed to a time it covers:
//!
//! - the watchdog publishes a *horizon* ([`ContextLog::set_horizon`]): no block it has not
//!   attributed yet began before it (it is the earliest moment a watched loop could have begun
//!   its current stretch, see `Runner::check`);
//! - an end report may still be on its way from a loop thread that was preempted after the
//!   block ended, so entries are also kept for [`KEEP_NS`] after they stopped being current.
//!
//! An entry is dropped once its successor began before both limits. A watchdog that cannot run
//! (a starved machine) therefore makes the history grow rather than lose an attribution; the
//! history is capped at [`MAX_ENTRIES`] all the same.
//!
//! The lock is never held while waiting for anything else (the GIL included), so it cannot
//! deadlock with the interpreter.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::clock::ms;

/// How long a context stays known after it stopped being current (see the module docs).
pub const KEEP_NS: u64 = ms(2000);
/// The most entries kept whatever the horizon says (a safety net against unbounded growth).
pub const MAX_ENTRIES: usize = 1 << 20;

/// The history of contexts, shared by the Python layer (writer) and the watchdog (reader).
#[derive(Debug)]
pub struct ContextLog {
    /// `(since_ns, context)`, oldest first; never empty (the first entry is the empty context).
    entries: Mutex<VecDeque<(u64, Arc<str>)>>,
    /// See [`ContextLog::set_horizon`]; 0 (keep everything) until the watchdog publishes one.
    horizon: AtomicU64,
}

impl Default for ContextLog {
    fn default() -> Self {
        Self::new()
    }
}

impl ContextLog {
    /// A history holding the empty context since time 0.
    pub fn new() -> ContextLog {
        let mut entries = VecDeque::with_capacity(64);
        entries.push_back((0, Arc::from("")));
        ContextLog {
            entries: Mutex::new(entries),
            horizon: AtomicU64::new(0),
        }
    }

    /// Records that `context` is current from `at` on (`at` not earlier than the last switch).
    /// Forgets the entries nobody can need any more (see the module docs).
    pub fn set(&self, at: u64, context: &str) {
        let limit = self
            .horizon
            .load(Ordering::Acquire)
            .min(at.saturating_sub(KEEP_NS));
        let mut entries = self.entries.lock();
        if entries.back().is_some_and(|(_, c)| &**c == context) {
            return;
        }
        entries.push_back((at, Arc::from(context)));
        while entries.len() > 1 && (entries[1].0 <= limit || entries.len() > MAX_ENTRIES) {
            entries.pop_front();
        }
    }

    /// The context in force at `t`: the last one set at or before `t`.
    pub fn at(&self, t: u64) -> Arc<str> {
        let entries = self.entries.lock();
        let i = entries.partition_point(|(since, _)| *since <= t);
        Arc::clone(&entries[i.saturating_sub(1)].1)
    }

    /// Called by the watchdog: no block that it has not attributed yet began before `t`.
    pub fn set_horizon(&self, t: u64) {
        self.horizon.store(t, Ordering::Release);
    }

    /// The horizon last published.
    pub fn horizon(&self) -> u64 {
        self.horizon.load(Ordering::Acquire)
    }

    /// How many entries are kept (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Never true: the history always holds at least one context.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_time_maps_to_the_context_set_last_at_or_before_it() {
        let log = ContextLog::new();
        log.set_horizon(0);
        log.set(10, "setup\u{1f}t1");
        log.set(20, "call\u{1f}t1");
        assert_eq!(&*log.at(5), "");
        assert_eq!(&*log.at(10), "setup\u{1f}t1");
        assert_eq!(&*log.at(19), "setup\u{1f}t1");
        assert_eq!(&*log.at(20), "call\u{1f}t1");
        assert_eq!(&*log.at(u64::MAX), "call\u{1f}t1");
    }

    #[test]
    fn setting_the_current_context_again_adds_nothing() {
        let log = ContextLog::new();
        log.set(10, "a");
        log.set(20, "a");
        assert_eq!(log.len(), 2);
        assert_eq!(&*log.at(15), "a");
    }

    #[test]
    fn entries_before_the_horizon_and_the_grace_period_are_dropped() {
        let log = ContextLog::new();
        log.set_horizon(100 * S);
        for i in 1..=50 {
            log.set(i * S, if i % 2 == 0 { "even" } else { "odd" });
        }
        // At 50 s, entries older than 48 s are of no use: the one in force at 48 s is kept.
        assert_eq!(log.len(), 3, "kept 48, 49, 50");
        assert_eq!(&*log.at(48 * S), "even");
        assert_eq!(&*log.at(49 * S + 1), "odd");
    }

    #[test]
    fn the_horizon_keeps_what_an_unattributed_block_may_need() {
        let log = ContextLog::new();
        // A loop has been busy since 3 s and the watchdog has not attributed that stretch.
        log.set_horizon(3 * S + 500);
        for i in 1..=100 {
            log.set(i * S, &format!("phase {i}"));
        }
        assert_eq!(&*log.at(3 * S + 500), "phase 3");
        // Once attributed, the watchdog moves the horizon on; the next switch forgets.
        log.set_horizon(99 * S);
        log.set(101 * S, "last");
        assert_eq!(log.len(), 3, "kept 99, 100, 101");
    }

    #[test]
    fn the_history_is_capped() {
        let log = ContextLog::new();
        log.set_horizon(0);
        for i in 1..=(MAX_ENTRIES as u64 + 10) {
            log.set(i, if i % 2 == 0 { "a" } else { "b" });
        }
        assert_eq!(log.len(), MAX_ENTRIES);
    }
}
