//! Deep stacks: how much of a thread's frame chain the samplers read, the frame that stands for
//! what they did not read, and the lossless folding of repeated frames that keeps the samples
//! of a deep recursion small.
//!
//! Both samplers (the GIL-free reader and the one that takes the GIL) follow a chain from its
//! innermost frame outwards through a [`Chain`]: it keeps the innermost [`INNER_FRAMES`], then
//! only counts, keeping the last [`OUTER_FRAMES`] it saw (the test runner, the event loop and
//! the test's own outermost frames), and stops following after [`MAX_FOLLOWED`]. A stack
//! deeper than the two parts has [`not_read_marker`] between them, which says how many frames
//! were left out, or at least how many when the chain was too long to count.
//!
//! A recursion 3,000 deep repeats one frame (or a short cycle of frames, for mutual recursion)
//! thousands of times, and every sample of it holds the whole stack. [`fold`] keeps each
//! repeated block once and records where it repeats ([`Repeat`]); the watchdog stores and sends
//! samples folded, the Python layer unfolds them. Folding is exact: [`unfold`] gives back the
//! frames.

use std::collections::VecDeque;

use serde::Serialize;

use crate::event::Frame;

/// Innermost frames read of a stack.
pub const INNER_FRAMES: usize = 10_000;
/// Outermost frames read of a stack deeper than [`INNER_FRAMES`].
pub const OUTER_FRAMES: usize = 100;
/// Frames of a chain followed at most: beyond, the frames not read are a lower bound. Following
/// a frame costs about a microsecond when it is an object of its own (a coroutine's), so a
/// sample of the longest chain followed costs about 0.1 s (two walks).
pub const MAX_FOLLOWED: usize = 50_000;
/// Longest block of frames [`fold`] looks for (a cycle of mutual recursion).
pub const MAX_PERIOD: usize = 8;

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

/// A block of frames of a folded stack that stands for `times` consecutive copies of itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Repeat {
    /// Index of the block's first frame in the folded stack.
    pub at: u32,
    /// Frames in the block.
    pub frames: u32,
    /// Copies of the block in the stack (at least 2).
    pub times: u32,
}

/// Folds `stack` in place: each run of a block of up to [`MAX_PERIOD`] frames repeated
/// consecutively is kept once. Returns the runs, in order. Of the blocks a run could be made of
/// at one place, the one covering most frames wins (the shortest on a tie); runs do not nest.
pub fn fold<T: PartialEq>(stack: &mut Vec<T>) -> Vec<Repeat> {
    let n = stack.len();
    let mut repeats = Vec::new();
    // Frames kept, by index in `stack`; the folded stack is built at the end.
    let mut keep = vec![true; n];
    let mut kept = 0usize;
    let mut i = 0;
    while i < n {
        let mut best = (1usize, 1usize); // (frames in the block, copies)
        for p in 1..=MAX_PERIOD.min((n - i) / 2) {
            if stack[i] != stack[i + p] {
                continue;
            }
            let mut times = 1;
            while i + (times + 1) * p <= n
                && (0..p).all(|k| stack[i + k] == stack[i + times * p + k])
            {
                times += 1;
            }
            if times >= 2 && p * times > best.0 * best.1 {
                best = (p, times);
            }
        }
        let (p, times) = best;
        if times >= 2 {
            repeats.push(Repeat {
                at: u32::try_from(kept).unwrap_or(u32::MAX),
                frames: p as u32,
                times: u32::try_from(times).unwrap_or(u32::MAX),
            });
            for k in &mut keep[i + p..i + p * times] {
                *k = false;
            }
            kept += p;
            i += p * times;
        } else {
            kept += 1;
            i += 1;
        }
    }
    if !repeats.is_empty() {
        let mut flags = keep.into_iter();
        stack.retain(|_| flags.next().unwrap_or(true));
    }
    repeats
}

/// The stack that [`fold`] folded into `folded` and `repeats`.
pub fn unfold<T: Clone>(folded: &[T], repeats: &[Repeat]) -> Vec<T> {
    let mut out = Vec::with_capacity(folded.len());
    let mut i = 0;
    for r in repeats {
        let at = (r.at as usize).min(folded.len());
        let end = (at + r.frames as usize).min(folded.len());
        if at < i {
            continue; // malformed: overlapping runs
        }
        out.extend_from_slice(&folded[i..at]);
        for _ in 0..r.times {
            out.extend_from_slice(&folded[at..end]);
        }
        i = end;
    }
    out.extend_from_slice(&folded[i.min(folded.len())..]);
    out
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

    fn folded(stack: &str) -> (String, Vec<(u32, u32, u32)>) {
        let mut v: Vec<char> = stack.chars().collect();
        let original = v.clone();
        let repeats = fold(&mut v);
        assert_eq!(unfold(&v, &repeats), original, "lossless: {stack}");
        (
            v.into_iter().collect(),
            repeats.iter().map(|r| (r.at, r.frames, r.times)).collect(),
        )
    }

    #[test]
    fn recursion_folds_to_one_frame() {
        let stack = format!("tr{}s", "d".repeat(3000));
        let (f, r) = folded(&stack);
        assert_eq!(f, "trds");
        assert_eq!(r, vec![(2, 1, 3000)]);
    }

    #[test]
    fn mutual_recursion_folds_to_its_cycle() {
        let stack = format!("t{}s", "ab".repeat(1500));
        assert_eq!(folded(&stack), ("tabs".into(), vec![(1, 2, 1500)]));
        // A cycle of three with a run inside it: the cycle covers more.
        let stack = format!("t{}", "aab".repeat(10));
        assert_eq!(folded(&stack), ("taab".into(), vec![(1, 3, 10)]));
        // Two runs, and frames between.
        assert_eq!(
            folded("xaaaayzbzbzbw"),
            ("xayzbw".into(), vec![(1, 1, 4), (3, 2, 3)])
        );
    }

    #[test]
    fn the_shortest_block_wins_a_tie() {
        // "abab" twice or "ab" four times: the same frames, folded as "ab".
        assert_eq!(folded("abababab"), ("ab".into(), vec![(0, 2, 4)]));
    }

    #[test]
    fn nothing_to_fold() {
        assert_eq!(folded("abcdefg"), ("abcdefg".into(), vec![]));
        assert_eq!(folded(""), ("".into(), vec![]));
        assert_eq!(folded("a"), ("a".into(), vec![]));
        // A cycle longer than MAX_PERIOD is not looked for.
        let stack = "abcdefghi".repeat(3);
        assert_eq!(folded(&stack).1, vec![]);
    }

    #[test]
    fn unfold_ignores_malformed_runs() {
        let v = vec![1, 2, 3];
        let bad = [
            Repeat {
                at: 1,
                frames: 1,
                times: 2,
            },
            Repeat {
                at: 0,
                frames: 1,
                times: 2,
            },
        ];
        assert_eq!(unfold(&v, &bad), vec![1, 2, 2, 3]);
        let past = [Repeat {
            at: 9,
            frames: 4,
            times: 2,
        }];
        assert_eq!(unfold(&v, &past), vec![1, 2, 3]);
    }
}
