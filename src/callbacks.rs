//! Which callback of a loop iteration each sample was taken in, and how long each could have
//! lasted.
//!
//! A loop iteration runs every callback that was ready when it began before it polls for I/O
//! again, so one busy stretch can be many short callbacks. Each sample is tagged with the
//! callback it shows: the first frame inside the loop's dispatch (asyncio's `Handle._run`,
//! trio's `unrolled_run`, or loopguard's wrapper around a uvloop run, which calls back from C),
//! identified by that frame's address and function. A task's step runs its coroutine, whose
//! frame lives in the coroutine object, so two tasks never share a tag; two plain callbacks of
//! the same function in a row may (their frames reuse one slot of the thread's frame stack).
//!
//! The samples bound each callback: it began after the last sample of the callback before it
//! and ended before the first sample of the one after it. Wherever the samples cannot tell the
//! callbacks apart, the answer is the longer one: identical tags merge, the same tag seen again
//! later merges everything in between, unreadable samples are ignored (widening the gaps), and
//! the stretch's start and end bound the first and last callbacks.

use crate::event::{Frame, Span};

const ASYNCIO_EVENTS: &str = "/asyncio/events.py";
const TRIO_RUN: &str = "/trio/_core/_run.py";
const UVLOOP_WRAPPER: &str = "/loopguard/_uvloop.py";

/// Most runs remembered per stretch; later samples extend the last run.
pub const MAX_RUNS: usize = 512;

fn is_dispatch(f: &Frame) -> bool {
    let name = f.function.rsplit('.').next().unwrap_or("");
    (name == "_run" && f.filename.ends_with(ASYNCIO_EVENTS))
        || (name == "unrolled_run" && f.filename.ends_with(TRIO_RUN))
        || (name == "_run_guarded" && f.filename.ends_with(UVLOOP_WRAPPER))
}

/// The tag of a sample's callback: `frames` outermost first, `addresses` the frames' addresses
/// in the same order. `None` when the stack shows no callback (the loop's own machinery, or a
/// dispatch frame whose callback has not started yet).
pub fn tag(frames: &[Frame], addresses: &[usize]) -> Option<u64> {
    if frames.len() != addresses.len() {
        return None;
    }
    let d = frames.iter().rposition(is_dispatch)?;
    let entry = frames.get(d + 1)?;
    let address = *addresses.get(d + 1)?;
    if address == 0 {
        return None;
    }
    Some(fnv(address as u64, &entry.filename, &entry.function))
}

fn fnv(address: u64, filename: &str, function: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    address.to_ne_bytes().into_iter().for_each(&mut eat);
    filename.bytes().for_each(&mut eat);
    eat(0);
    function.bytes().for_each(&mut eat);
    h
}

/// Consecutive samples with the same tag. Offsets are from the start of the stretch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The callback's tag; `None` for samples outside any callback.
    pub tag: Option<u64>,
    /// Offset of the run's first sample.
    pub first_ns: u64,
    /// Offset of the run's last sample.
    pub last_ns: u64,
    /// How many samples.
    pub samples: u32,
}

/// The runs of one stretch, in order.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    runs: Vec<Run>,
}

impl Timeline {
    /// Records a readable sample with `tag` taken at `offset_ns`; returns the index of its run.
    pub fn observe(&mut self, tag: Option<u64>, offset_ns: u64) -> u32 {
        let full = self.runs.len() >= MAX_RUNS;
        match self.runs.last_mut() {
            Some(last) if last.tag == tag || full => {
                last.last_ns = last.last_ns.max(offset_ns);
                last.samples += 1;
                if last.tag != tag {
                    // Out of room: the last run absorbs the rest, as one long callback.
                    last.tag = None;
                }
            }
            _ => self.runs.push(Run {
                tag,
                first_ns: offset_ns,
                last_ns: offset_ns,
                samples: 1,
            }),
        }
        (self.runs.len() - 1) as u32
    }

    /// The runs so far.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }
}

/// The spans of a stretch of `duration_ns` from its runs, and for each run the index of its
/// span. The first span is bounded by the stretch's start moved back by `start_slack_ns` (for
/// loops whose stretches are dated late, see `LoopSlot::beat`).
pub fn spans(runs: &[Run], duration_ns: u64, start_slack_ns: u64) -> (Vec<Span>, Vec<u32>) {
    // Group runs: a tag seen again later means one callback throughout.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < runs.len() {
        let mut j = i;
        let mut k = i;
        while k <= j {
            if let Some(t) = runs[k].tag {
                if let Some(last) = runs.iter().rposition(|r| r.tag == Some(t)) {
                    j = j.max(last);
                }
            }
            k += 1;
        }
        groups.push((i, j));
        i = j + 1;
    }
    let mut out = Vec::with_capacity(groups.len());
    let mut run_span = vec![0u32; runs.len()];
    for (g, &(a, b)) in groups.iter().enumerate() {
        let first = runs[a].first_ns;
        let last = runs[a..=b].iter().map(|r| r.last_ns).max().unwrap_or(first);
        let before = if g == 0 {
            0
        } else {
            let (pa, pb) = groups[g - 1];
            runs[pa..=pb].iter().map(|r| r.last_ns).max().unwrap_or(0)
        };
        let after = groups
            .get(g + 1)
            .map_or(duration_ns, |&(na, _)| runs[na].first_ns)
            .max(last);
        let slack = if g == 0 { start_slack_ns } else { 0 };
        out.push(Span {
            first_ns: first,
            last_ns: last,
            min_ns: last - first,
            max_ns: after.saturating_sub(before) + slack,
            samples: runs[a..=b].iter().map(|r| r.samples).sum(),
            in_callback: runs[a].tag.is_some(),
        });
        for s in &mut run_span[a..=b] {
            *s = g as u32;
        }
    }
    (out, run_span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(filename: &str, function: &str) -> Frame {
        Frame {
            filename: filename.into(),
            lineno: 1,
            function: function.into(),
        }
    }

    const MS: u64 = 1_000_000;

    fn timeline(samples: &[(Option<u64>, u64)]) -> Vec<Run> {
        let mut t = Timeline::default();
        for &(tag, at) in samples {
            t.observe(tag, at * MS);
        }
        t.runs().to_vec()
    }

    #[test]
    fn the_callback_is_the_first_frame_inside_the_dispatch() {
        let frames = vec![
            frame(
                "/usr/lib/python3.12/asyncio/base_events.py",
                "BaseEventLoop._run_once",
            ),
            frame("/usr/lib/python3.12/asyncio/events.py", "Handle._run"),
            frame("/src/app.py", "handler"),
            frame("/src/app.py", "helper"),
        ];
        let a = tag(&frames, &[1, 2, 0x1000, 0x2000]);
        assert!(a.is_some());
        // Deeper frames do not change the tag; another coroutine's frame does.
        assert_eq!(a, tag(&frames, &[1, 2, 0x1000, 0x3000]));
        assert_ne!(a, tag(&frames, &[1, 2, 0x5000, 0x2000]));
        // Another function in the same frame slot is another callback.
        let mut other = frames.clone();
        other[2] = frame("/src/app.py", "other_handler");
        assert_ne!(a, tag(&other, &[1, 2, 0x1000, 0x2000]));
        // Inside the dispatch but not yet in the callback; no dispatch at all.
        assert_eq!(tag(&frames[..2], &[1, 2]), None);
        assert_eq!(tag(&frames[..1], &[1]), None);
        assert_eq!(tag(&frames, &[1, 2]), None);
    }

    #[test]
    fn trio_and_uvloop_dispatch_frames_are_recognised() {
        let trio = [
            frame("/venv/site-packages/trio/_core/_run.py", "unrolled_run"),
            frame("/src/app.py", "task"),
        ];
        assert!(tag(&trio, &[1, 0x10]).is_some());
        let uv = [
            frame("/venv/site-packages/loopguard/_uvloop.py", "_run_guarded"),
            frame("/src/app.py", "cb"),
        ];
        assert!(tag(&uv, &[1, 0x10]).is_some());
        // 3.9/3.10 name code objects without their class.
        let old = [
            frame("/usr/lib/python3.9/asyncio/events.py", "_run"),
            frame("/src/app.py", "cb"),
        ];
        assert!(tag(&old, &[1, 0x10]).is_some());
        let unrelated = [frame("/src/events.py", "_run"), frame("/src/app.py", "cb")];
        assert_eq!(tag(&unrelated, &[1, 0x10]), None);
    }

    #[test]
    fn many_short_callbacks_are_bounded_by_their_neighbours() {
        // Samples every 20 ms from 25 ms, each in another callback; the stretch lasts 250 ms.
        let samples: Vec<_> = (0..12).map(|i| (Some(i), 25 + 20 * i)).collect();
        let runs = timeline(&samples);
        let (spans, map) = spans(&runs, 250 * MS, 0);
        assert_eq!(spans.len(), 12);
        assert_eq!(map.len(), 12);
        assert_eq!(spans[0].max_ns, 45 * MS); // from the start to the next sample
        assert_eq!(spans[5].max_ns, 40 * MS);
        assert_eq!(spans[11].max_ns, (250 - 225) * MS); // from the sample before to the end
        assert!(spans.iter().all(|s| s.in_callback && s.min_ns == 0));
    }

    #[test]
    fn one_long_callback_among_short_ones_keeps_its_length() {
        let mut samples: Vec<_> = vec![(Some(1), 25), (Some(2), 45)];
        samples.extend((0..8).map(|i| (Some(7), 65 + 20 * i)));
        samples.push((Some(3), 225));
        let runs = timeline(&samples);
        let (spans, _) = spans(&runs, 240 * MS, 0);
        assert_eq!(spans.len(), 4);
        assert_eq!(spans[2].min_ns, 140 * MS);
        assert_eq!(spans[2].max_ns, (225 - 45) * MS);
    }

    #[test]
    fn a_tag_seen_again_merges_everything_between() {
        let runs = timeline(&[
            (Some(1), 10),
            (None, 30),
            (Some(2), 50),
            (Some(1), 70),
            (Some(3), 90),
        ]);
        let (spans, map) = spans(&runs, 100 * MS, 0);
        assert_eq!(spans.len(), 2);
        assert_eq!(map, vec![0, 0, 0, 0, 1]);
        assert_eq!(spans[0].min_ns, 60 * MS);
        assert_eq!(spans[0].max_ns, 90 * MS);
        // Overlapping repeats chain: 1 .. 2 .. 1 .. 2 is one.
        let runs = timeline(&[(Some(1), 10), (Some(2), 20), (Some(1), 30), (Some(2), 40)]);
        assert_eq!(super::spans(&runs, 50 * MS, 0).0.len(), 1);
    }

    #[test]
    fn samples_outside_callbacks_are_spans_of_their_own() {
        let runs = timeline(&[(None, 25), (None, 45), (Some(4), 65)]);
        let (spans, _) = spans(&runs, 80 * MS, 5 * MS);
        assert_eq!(spans.len(), 2);
        assert!(!spans[0].in_callback);
        assert_eq!(spans[0].max_ns, 70 * MS); // 65 ms plus the slack
        assert!(spans[1].in_callback);
        assert_eq!(spans[1].max_ns, 35 * MS);
    }

    #[test]
    fn a_full_timeline_folds_into_one_untagged_run() {
        let mut t = Timeline::default();
        for i in 0..(MAX_RUNS as u64 + 10) {
            t.observe(Some(i), i);
        }
        assert_eq!(t.runs().len(), MAX_RUNS);
        let last = t.runs().last().unwrap();
        assert_eq!(last.tag, None);
        assert_eq!(last.samples, 11);
        assert_eq!(last.last_ns, MAX_RUNS as u64 + 9);
    }

    #[test]
    fn no_runs_no_spans() {
        let (spans, map) = spans(&[], 100, 0);
        assert!(spans.is_empty() && map.is_empty());
    }
}
