//! The lossless folding of repeated frames that keeps the samples of a deep recursion small.
//!
//! A recursion 3,000 deep repeats one frame (or a short cycle of frames, for mutual recursion)
//! thousands of times, and every sample of it holds the whole stack. [`fold`] keeps each
//! repeated block once and records where it repeats ([`Repeat`]); the watchdog stores and sends
//! samples folded, the Python layer unfolds them. Folding is exact: [`unfold`] gives back the
//! frames. Generic over what a stack holds: it depends on no other module.

use serde::Serialize;

/// Longest block of frames [`fold`] looks for (a cycle of mutual recursion).
pub const MAX_PERIOD: usize = 8;

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
