//! Which test and phase were current when: the history the watchdog reads to attribute a block.
//!
//! The Python layer switches the context at every test phase, so a switch must cost the caller
//! nothing but a short, uncontended critical section: [`ContextLog::begin_test`] and
//! [`ContextLog::set_phase`] append to a shared history and return; they never wait for the
//! watchdog thread or wake it. A test's name is copied once, when it begins; its phases share
//! it. The watchdog reads the history only when it needs it, to name the context of a block it
//! has just detected (or whose end was just reported), with [`ContextLog::at`] — so in a phase
//! where no loop blocks, nothing else touches the lock.
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
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::clock::ms;

/// How long a context stays known after it stopped being current (see the module docs).
pub const KEEP_NS: u64 = ms(2000);
/// The most entries kept whatever the horizon says (a safety net against unbounded growth).
pub const MAX_ENTRIES: usize = 1 << 20;
/// What separates a phase from its test in a context's text (as the Python layer reads it).
pub const SEP: char = '\u{1f}';

/// A phase of a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Setup,
    Call,
    Teardown,
}

impl Phase {
    /// The phase numbered `code` by the Python layer (1 setup, 2 call, 3 teardown); `None`
    /// for 0, outside any test. An error names any other number.
    pub fn from_code(code: u8) -> Result<Option<Phase>, String> {
        match code {
            0 => Ok(None),
            1 => Ok(Some(Phase::Setup)),
            2 => Ok(Some(Phase::Call)),
            3 => Ok(Some(Phase::Teardown)),
            _ => Err(format!(
                "phase must be 0 (none), 1 (setup), 2 (call) or 3 (teardown), got {code}"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Call => "call",
            Phase::Teardown => "teardown",
        }
    }
}

/// What was current: a phase of a test, or a text of the caller's (the empty text outside any
/// test). Cheap to clone: the text is shared.
#[derive(Clone, Debug)]
pub struct Context {
    phase: Option<Phase>,
    /// The test's name with a phase, the whole text without one.
    text: Arc<str>,
}

impl Context {
    fn same(&self, other: &Context) -> bool {
        self.phase == other.phase && self.text == other.text
    }
}

impl fmt::Display for Context {
    /// `phase SEP test` (as the Python layer reads it), or the text itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.phase {
            Some(phase) => write!(f, "{}{SEP}{}", phase.name(), self.text),
            None => f.write_str(&self.text),
        }
    }
}

#[derive(Debug)]
struct History {
    /// `(since_ns, context)`, oldest first; never empty (the first entry is the empty context).
    entries: VecDeque<(u64, Context)>,
    /// The test begun last (its phases share its name).
    test: Arc<str>,
    /// The empty text, shared by every entry outside a test.
    empty: Arc<str>,
}

/// The history of contexts, shared by the Python layer (writer) and the watchdog (reader).
#[derive(Debug)]
pub struct ContextLog {
    history: Mutex<History>,
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
        let empty: Arc<str> = Arc::from("");
        let mut entries = VecDeque::with_capacity(64);
        entries.push_back((
            0,
            Context {
                phase: None,
                text: Arc::clone(&empty),
            },
        ));
        ContextLog {
            history: Mutex::new(History {
                entries,
                test: Arc::clone(&empty),
                empty,
            }),
            horizon: AtomicU64::new(0),
        }
    }

    /// Records that the text `context` is current from `at` on (`at` not earlier than the
    /// last switch).
    pub fn set(&self, at: u64, context: &str) {
        let mut history = self.history.lock();
        let text = if context.is_empty() {
            Arc::clone(&history.empty)
        } else {
            Arc::from(context)
        };
        self.push(&mut history, at, Context { phase: None, text });
    }

    /// Records that test `test` begins at `at`: its setup is current from then on.
    pub fn begin_test(&self, at: u64, test: &str) {
        let mut history = self.history.lock();
        history.test = Arc::from(test);
        let text = Arc::clone(&history.test);
        let phase = Some(Phase::Setup);
        self.push(&mut history, at, Context { phase, text });
    }

    /// Records that phase `phase` of the test begun last is current from `at` on; `None`:
    /// no test is.
    pub fn set_phase(&self, at: u64, phase: Option<Phase>) {
        let mut history = self.history.lock();
        let text = match phase {
            Some(_) => Arc::clone(&history.test),
            None => Arc::clone(&history.empty),
        };
        self.push(&mut history, at, Context { phase, text });
    }

    /// Appends `context` unless it is current already, and forgets the entries nobody can
    /// need any more (see the module docs).
    fn push(&self, history: &mut History, at: u64, context: Context) {
        let entries = &mut history.entries;
        if entries.back().is_some_and(|(_, c)| c.same(&context)) {
            return;
        }
        let limit = self
            .horizon
            .load(Ordering::Acquire)
            .min(at.saturating_sub(KEEP_NS));
        entries.push_back((at, context));
        while entries.len() > 1 && (entries[1].0 <= limit || entries.len() > MAX_ENTRIES) {
            entries.pop_front();
        }
    }

    /// The context in force at `t`: the last one set at or before `t`.
    pub fn at(&self, t: u64) -> Context {
        let history = self.history.lock();
        let entries = &history.entries;
        let i = entries.partition_point(|(since, _)| *since <= t);
        entries[i.saturating_sub(1)].1.clone()
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
        self.history.lock().entries.len()
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
        assert_eq!(log.at(5).to_string(), "");
        assert_eq!(log.at(10).to_string(), "setup\u{1f}t1");
        assert_eq!(log.at(19).to_string(), "setup\u{1f}t1");
        assert_eq!(log.at(20).to_string(), "call\u{1f}t1");
        assert_eq!(log.at(u64::MAX).to_string(), "call\u{1f}t1");
    }

    #[test]
    fn a_test_s_phases_name_it_and_its_end_names_none() {
        let log = ContextLog::new();
        log.begin_test(10, "t.py::a");
        log.set_phase(20, Phase::from_code(2).unwrap());
        log.set_phase(30, Phase::from_code(3).unwrap());
        log.set_phase(40, Phase::from_code(0).unwrap());
        log.begin_test(50, "t.py::b");
        log.set_phase(60, Some(Phase::Teardown));
        let at = |t| log.at(t).to_string();
        assert_eq!(at(9), "");
        assert_eq!(at(10), "setup\u{1f}t.py::a");
        assert_eq!(at(25), "call\u{1f}t.py::a");
        assert_eq!(at(35), "teardown\u{1f}t.py::a");
        assert_eq!(at(45), "");
        assert_eq!(at(55), "setup\u{1f}t.py::b");
        assert_eq!(at(65), "teardown\u{1f}t.py::b");
        // Texts set by the caller mix with phases.
        log.set(70, "free text");
        log.set_phase(80, Some(Phase::Call));
        assert_eq!(at(75), "free text");
        assert_eq!(at(85), "call\u{1f}t.py::b");
    }

    #[test]
    fn a_phase_set_again_adds_nothing_and_the_same_phase_of_another_test_does() {
        let log = ContextLog::new();
        log.begin_test(10, "a");
        log.set_phase(20, Some(Phase::Call));
        log.set_phase(30, Some(Phase::Call));
        assert_eq!(log.len(), 3);
        log.begin_test(40, "b");
        log.set_phase(50, Some(Phase::Call));
        assert_eq!(log.len(), 5);
        log.set_phase(60, None);
        log.set(70, "");
        assert_eq!(log.len(), 6, "outside any test either way");
    }

    #[test]
    fn phase_codes_are_0_to_3() {
        assert_eq!(Phase::from_code(0), Ok(None));
        assert_eq!(Phase::from_code(1), Ok(Some(Phase::Setup)));
        let err = Phase::from_code(4).unwrap_err();
        assert!(err.contains("got 4"), "{err}");
    }

    #[test]
    fn setting_the_current_context_again_adds_nothing() {
        let log = ContextLog::new();
        log.set(10, "a");
        log.set(20, "a");
        assert_eq!(log.len(), 2);
        assert_eq!(log.at(15).to_string(), "a");
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
        assert_eq!(log.at(48 * S).to_string(), "even");
        assert_eq!(log.at(49 * S + 1).to_string(), "odd");
    }

    #[test]
    fn the_horizon_keeps_what_an_unattributed_block_may_need() {
        let log = ContextLog::new();
        // A loop has been busy since 3 s and the watchdog has not attributed that stretch.
        log.set_horizon(3 * S + 500);
        for i in 1..=100 {
            log.set(i * S, &format!("phase {i}"));
        }
        assert_eq!(log.at(3 * S + 500).to_string(), "phase 3");
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
