//! Deep stacks: how much of a thread's frame chain the samplers read, and the frame that stands
//! for what they did not read (the lossless folding of repeated frames that keeps the samples of
//! a deep recursion small is in `fold`).
//!
//! Both samplers (the GIL-free reader and the one that takes the GIL) follow a chain from its
//! innermost frame outwards through a [`Chain`]: it keeps the innermost [`INNER_FRAMES`], then
//! only counts, keeping the last [`OUTER_FRAMES`] it saw (the test runner, the event loop and
//! the test's own outermost frames), and stops following after [`MAX_FOLLOWED`]. A stack
//! deeper than the two parts has [`not_read_marker`] between them, which says how many frames
//! were left out, or at least how many when the chain was too long to count.

use std::collections::VecDeque;

use crate::event::Frame;

/// Innermost frames read of a stack.
pub const INNER_FRAMES: usize = 10_000;
/// Outermost frames read of a stack deeper than [`INNER_FRAMES`].
pub const OUTER_FRAMES: usize = 100;
/// Frames of a chain followed at most: beyond, the frames not read are a lower bound. Following
/// a frame costs about a microsecond when it is an object of its own (a coroutine's), so a
/// sample of the longest chain followed costs about 0.1 s (two walks).
pub const MAX_FOLLOWED: usize = 50_000;

/// A frame chain followed from its innermost frame outwards: keeps the innermost frames, counts
/// the middle ones, keeps the outermost.
#[derive(Debug)]
pub struct Chain<T> {
    inner: Vec<T>,
    outer: VecDeque<T>,
    followed: usize,
    inner_cap: usize,
    outer_cap: usize,
    max_followed: usize,
}

/// What a [`Chain`] kept: outermost frames last in both parts.
#[derive(Debug, PartialEq, Eq)]
pub struct Cut<T> {
    /// The innermost frames, innermost first.
    pub inner: Vec<T>,
    /// Frames between `inner` and `outer` that were not kept (when not `exact`, outside
    /// `inner`, counting the one seen after the last followed).
    pub not_read: usize,
    /// False when the chain was not followed to its end: `not_read` is a lower bound and
    /// `outer` is empty.
    pub exact: bool,
    /// The outermost frames, innermost first (empty unless the chain was deeper than `inner`).
    pub outer: Vec<T>,
}

impl<T> Default for Chain<T> {
    fn default() -> Self {
        Chain::with_caps(INNER_FRAMES, OUTER_FRAMES, MAX_FOLLOWED)
    }
}

impl<T> Chain<T> {
    /// A chain that keeps `inner` innermost and `outer` outermost frames and follows at most
    /// `max_followed` (at least `inner`).
    pub fn with_caps(inner: usize, outer: usize, max_followed: usize) -> Self {
        Chain {
            inner: Vec::new(),
            outer: VecDeque::new(),
            followed: 0,
            inner_cap: inner,
            outer_cap: outer,
            max_followed: max_followed.max(inner),
        }
    }

    /// True when no more frames should be followed.
    pub fn full(&self) -> bool {
        self.followed >= self.max_followed
    }

    /// Frames followed so far.
    pub fn followed(&self) -> usize {
        self.followed
    }

    /// Adds the next frame outwards.
    pub fn push(&mut self, frame: T) {
        self.followed += 1;
        if self.inner.len() < self.inner_cap {
            self.inner.push(frame);
            return;
        }
        if self.outer_cap == 0 {
            return;
        }
        if self.outer.len() == self.outer_cap {
            self.outer.pop_front();
        }
        self.outer.push_back(frame);
    }

    /// What was kept; `ended`: the chain was followed to its outermost frame (else at least one
    /// frame after the last one pushed was seen).
    pub fn finish(self, ended: bool) -> Cut<T> {
        let kept = self.inner.len() + if ended { self.outer.len() } else { 0 };
        Cut {
            inner: self.inner,
            not_read: self.followed - kept + usize::from(!ended),
            exact: ended,
            outer: if ended { self.outer.into() } else { Vec::new() },
        }
    }
}

impl<T> Cut<T> {
    /// True when frames are missing: the stack needs a [`not_read_marker`].
    pub fn cut(&self) -> bool {
        self.not_read > 0 || !self.exact
    }
}

/// The file name of the frames the samplers add to a stack (they are no code's frames).
pub const MARKER_FILE: &str = "<loopguard>";

/// The frame that stands for the `not_read` frames of a cut stack (a lower bound unless
/// `exact`), between its innermost and outermost parts (outermost when not `exact`).
pub fn not_read_marker(not_read: usize, exact: bool) -> Frame {
    let function = if exact {
        format!(
            "<{not_read} frames not read: loopguard reads the innermost {INNER_FRAMES} and the \
             outermost {OUTER_FRAMES} frames of a stack>"
        )
    } else {
        format!(
            "<at least {not_read} outer frames not read: loopguard follows a stack for \
             {MAX_FOLLOWED} frames at most>"
        )
    };
    Frame {
        filename: MARKER_FILE.into(),
        lineno: 0,
        function: function.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `n` frames followed like the samplers do: a frame seen when the chain is full
    /// is not followed.
    fn chain_of(n: usize, inner: usize, outer: usize, max: usize) -> Cut<usize> {
        let mut c = Chain::with_caps(inner, outer, max);
        let mut frame = 0;
        while frame < n && !c.full() {
            c.push(frame);
            frame += 1;
        }
        c.finish(frame == n)
    }

    #[test]
    fn a_stack_within_the_caps_is_kept_whole() {
        let cut = chain_of(50, 10, 5, 100);
        // 10 innermost, then 5 outermost of the remaining 40: 35 not read.
        assert_eq!(cut.inner, (0..10).collect::<Vec<_>>());
        assert_eq!(cut.outer, (45..50).collect::<Vec<_>>());
        assert_eq!(cut.not_read, 35);
        assert!(cut.exact && cut.cut());
        let cut = chain_of(12, 10, 5, 100);
        assert_eq!(cut.outer, vec![10, 11]);
        assert_eq!((cut.not_read, cut.cut()), (0, false));
        let cut = chain_of(10, 10, 5, 100);
        assert!(cut.outer.is_empty() && !cut.cut());
    }

    #[test]
    fn a_chain_longer_than_followed_counts_at_least() {
        let cut = chain_of(1000, 10, 5, 100);
        assert_eq!(cut.inner.len(), 10);
        assert!(cut.outer.is_empty(), "not the outermost frames: not kept");
        // 90 followed past the innermost, and the one seen next.
        assert_eq!(cut.not_read, 91);
        assert!(!cut.exact && cut.cut());
        // As long as the limit: followed to the end, exact.
        let cut = chain_of(100, 10, 5, 100);
        assert_eq!((cut.not_read, cut.exact), (85, true));
        assert_eq!(cut.outer, (95..100).collect::<Vec<_>>());
        let cut = chain_of(101, 10, 5, 100);
        assert_eq!((cut.not_read, cut.exact), (91, false));
    }

    #[test]
    fn no_outer_frames_when_asked_for_none() {
        let cut = chain_of(30, 10, 0, 10);
        assert_eq!(cut.inner.len(), 10);
        assert!(!cut.exact && cut.outer.is_empty());
        assert_eq!(cut.not_read, 1, "the frame seen after the last one read");
        assert!(cut.cut());
        let cut = chain_of(10, 10, 0, 10);
        assert!(cut.exact && !cut.cut());
    }

    #[test]
    fn the_default_caps() {
        let cut = chain_of(3001, INNER_FRAMES, OUTER_FRAMES, MAX_FOLLOWED);
        assert_eq!((cut.inner.len(), cut.cut()), (3001, false));
        let cut = chain_of(15_000, INNER_FRAMES, OUTER_FRAMES, MAX_FOLLOWED);
        assert_eq!(cut.not_read, 15_000 - INNER_FRAMES - OUTER_FRAMES);
        assert_eq!(cut.outer.last(), Some(&14_999));
    }

    #[test]
    fn markers_say_how_many_frames_were_not_read() {
        let m = not_read_marker(4321, true);
        assert_eq!(&*m.filename, MARKER_FILE);
        assert!(
            m.function.starts_with("<4321 frames not read"),
            "{}",
            m.function
        );
        let m = not_read_marker(189_900, false);
        assert!(
            m.function
                .starts_with("<at least 189900 outer frames not read"),
            "{}",
            m.function
        );
    }
}
