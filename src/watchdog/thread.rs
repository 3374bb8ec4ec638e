//! The watchdog thread: its start ([`Watchdog::start`], called on the Python layer's thread), its
//! loop over the mailbox and the registered loops (`Runner`, owned by that thread alone), the
//! first look at a stretch, the samples of a block while it lasts, and its event once it ends
//! (from the loop thread's end report, the unregistration of its loop, or the end the watchdog
//! saw itself).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::Mutex;

use super::{BlockNotice, LoopSlot, Mailbox, Msg, Shared, Watchdog};
use crate::callbacks::{spans, Timeline};
use crate::clock::now_ns;
use crate::context::{Context, ContextLog};
use crate::event::{BlockEvent, Frame, Sample};
use crate::holder_wait::HolderWait;
use crate::policy::{
    after_registration, early_sampling, first_look, holder_look_interval, longest_sleep,
    sample_interval, END_GRACE_NS,
};
use crate::sampler::{Sampler, Target};
use crate::schedstat::KnownSleep;
use crate::waited::{Cache, Waited};

/// Most distinct samples kept per block; later ones are folded into the last.
const MAX_SAMPLES: usize = 200;
/// Most frames the samples of a block hold (folded: a deep recursion's stack holds a few); past
/// it later samples are folded into the last, as past [`MAX_SAMPLES`]. Bounds what a block of
/// deep stacks that do not repeat (a 10,000-frame stack every sample) costs: about 40 bytes a
/// frame, so 8 MB.
const MAX_HELD_FRAMES: usize = 200_000;

/// A block being watched: from the first look at a stretch (see the module docs), confirmed
/// once it lasts the threshold.
struct Block {
    start: u64,
    starved: bool,
    threshold: u64,
    /// True once the stretch has lasted its threshold; until then it may still be forgotten.
    confirmed: bool,
    context: Context,
    samples: Vec<Sample>,
    /// The callbacks the samples were taken in.
    timeline: Timeline,
    /// The loop thread's run-queue time at the first look.
    run_queue_at_look: Option<u64>,
    /// Where the loop thread was seen asleep throughout: never a wait for a CPU (see
    /// `schedstat`).
    slept: KnownSleep,
    /// For a starved stretch: the GIL holders' wait for a CPU, and the loop thread's own while
    /// nobody held the GIL (see `holder_wait`).
    holder_wait: Option<HolderWait>,
    captured_after: Option<u64>,
    next_sample: u64,
    /// When the watchdog saw the loop beat again (if it did before the end report arrived).
    seen_end: Option<u64>,
    /// The asyncio task that was running, if someone could tell (see [`Watchdog::annotate`]).
    task_name: Option<String>,
    /// That task's await chain, when the loop thread's stack did not reach it.
    await_chain: Vec<Frame>,
    /// What the loop thread's system call waited on at the block's last sample, kept while
    /// the call and its descriptor stay the same (see `waited`).
    waited: Cache,
}

struct Watched {
    slot: Arc<LoopSlot>,
    /// The stretch in progress, once the watchdog has looked at it.
    block: Option<Block>,
    /// A stretch that has ended and may have reached the threshold: it waits for the loop
    /// thread's end report (see [`Runner::on_end`]), or is closed `END_GRACE_NS` after its end
    /// was seen. Kept apart so that the stretch after it is watched meanwhile.
    ended: Option<Block>,
}

impl Watchdog {
    /// Starts the watchdog thread with a sampler built on that thread by `make_sampler`.
    ///
    /// # Errors
    /// Returns the thread-spawn error or the sampler's start-up error; the thread reports its
    /// start-up over a channel before it begins watching, so a failure reaches the caller.
    pub fn start<F>(threshold_ns: u64, make_sampler: F) -> Result<Watchdog, String>
    where
        F: FnOnce() -> Result<Box<dyn Sampler>, String> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            threshold_ns: AtomicU64::new(threshold_ns.max(1)),
            running: AtomicBool::new(true),
            notify_blocks: AtomicBool::new(false),
            registered: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            contexts: ContextLog::new(),
            wakeups: AtomicU64::new(0),
            asleep_until: AtomicU64::new(0),
        });
        let (queue_tx, queue) = crossbeam_channel::unbounded();
        let bell = Arc::new(OnceLock::new());
        let mailbox = Arc::new(Mailbox {
            queue: queue_tx,
            bell: Arc::clone(&bell),
            #[cfg(test)]
            rings: AtomicU64::new(0),
        });
        // Bounded: if nobody consumes notices, the watchdog drops them rather than queue.
        let (notice_tx, notice_rx) = crossbeam_channel::bounded(64);
        let events = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<&'static str, String>>(1);
        let thread_shared = Arc::clone(&shared);
        let thread_events = Arc::clone(&events);
        let slice = crate::sched::watchdog_slice_from_env();
        let handle = crate::quiet::spawn(
            std::thread::Builder::new().name("loopguard-watchdog".into()),
            move || {
                let _ = bell.set(std::thread::current());
                // Wake up on time even when the machine is busy (see sched.rs).
                if let Some(ns) = slice {
                    crate::sched::request_slice(ns);
                }
                let sampler = match make_sampler() {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(s.name()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                Runner::new(thread_shared, queue, thread_events, sampler, notice_tx).run();
            },
        )
        .map_err(|e| format!("cannot start the loopguard watchdog thread: {e}"))?;
        let sampler_name = match ready_rx.recv() {
            Ok(Ok(name)) => name,
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => {
                let _ = handle.join();
                return Err("the loopguard watchdog thread died during start-up".into());
            }
        };
        Ok(Watchdog {
            shared,
            notices: notice_rx,
            mailbox,
            events,
            next_id: AtomicU64::new(1),
            thread: Mutex::new(Some(handle)),
            sampler_name,
        })
    }
}

/// The watchdog thread's state. Owned by that thread alone: no locks but the event list.
struct Runner {
    shared: Arc<Shared>,
    /// The mailbox's queue (disconnected once every `Mailbox` is gone); its doorbell is this
    /// thread's park token.
    queue: Receiver<Msg>,
    events: Arc<Mutex<Vec<BlockEvent>>>,
    sampler: Box<dyn Sampler>,
    /// Names what a blocked system call waits on.
    waited: Waited,
    loops: HashMap<u64, Watched>,
    /// When the last loop's registration was read: for a while after it the watchdog looks
    /// at least every first look (see `policy::after_registration`).
    registered_at: Option<u64>,
    next_event: u64,
    notices: Sender<BlockNotice>,
}

impl Runner {
    fn new(
        shared: Arc<Shared>,
        queue: Receiver<Msg>,
        events: Arc<Mutex<Vec<BlockEvent>>>,
        sampler: Box<dyn Sampler>,
        notices: Sender<BlockNotice>,
    ) -> Runner {
        Runner {
            shared,
            queue,
            events,
            sampler,
            waited: Waited::new(),
            loops: HashMap::new(),
            registered_at: None,
            next_event: 1,
            notices,
        }
    }

    fn run(&mut self) {
        loop {
            // Everything posted so far, in order; never blocking on the queue (see `Mailbox`).
            loop {
                match self.queue.try_recv() {
                    Ok(msg) => {
                        if !self.handle(msg) {
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            let now = now_ns();
            let mut wake_at = self.check(now);
            let threshold = self.shared.threshold_ns();
            match self.registered_at {
                Some(at) if now < at.saturating_add(after_registration(threshold)) => {
                    wake_at = wake_at.min(now + first_look(threshold));
                }
                _ => self.registered_at = None,
            }
            // The plan first, then one more look at the queue (see `Mailbox::post_looked_at`):
            // a loop registered since was told the plan, or its message is seen here.
            self.shared.asleep_until.store(wake_at, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::SeqCst);
            if !self.queue.is_empty() {
                continue;
            }
            let timeout = std::time::Duration::from_nanos(wake_at.saturating_sub(now_ns()));
            // Woken by a ring (or spuriously, which costs one more look), or on time.
            std::thread::park_timeout(timeout);
            self.shared.wakeups.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Handles one message; false means stop.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Register(slot) => {
                self.registered_at = Some(now_ns());
                #[cfg(test)]
                slot.known_at.store(now_ns(), Ordering::Relaxed);
                self.loops.insert(
                    slot.id,
                    Watched {
                        slot,
                        block: None,
                        ended: None,
                    },
                );
            }
            Msg::Unregister { id, closes } => {
                if let Some(w) = self.loops.remove(&id) {
                    // The exact end reports (if any) were sent before the unregistration.
                    for b in [w.ended, w.block].into_iter().flatten() {
                        if b.confirmed {
                            let end = b.seen_end.unwrap_or_else(now_ns);
                            self.finish(&w.slot, b, end, false, None);
                        }
                    }
                }
                if closes {
                    self.shared.pending.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Msg::End {
                id,
                start,
                end,
                starved,
                run_queue_ns,
            } => {
                self.on_end(id, start, end, starved, run_queue_ns);
                self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            }
            Msg::Annotate {
                id,
                start,
                task_name,
                await_chain,
            } => {
                if let Some(w) = self.loops.get_mut(&id) {
                    let mut watched = [w.block.as_mut(), w.ended.as_mut()].into_iter().flatten();
                    if let Some(b) = watched.find(|b| b.start == start) {
                        b.task_name = Some(task_name);
                        b.await_chain = await_chain;
                    }
                }
            }
            Msg::Flush(done) => {
                // Blocks whose end was seen but not reported are closed now.
                let now = now_ns();
                self.close_stale(now, 0);
                let _ = done.send(());
            }
            Msg::Stop => return false,
        }
        self.shared.running.load(Ordering::Relaxed)
    }

    fn context_at(&self, t: u64) -> Context {
        self.shared.contexts.at(t)
    }

    fn on_end(&mut self, id: u64, start: u64, end: u64, starved: bool, run_queue: Option<u64>) {
        let Some(w) = self.loops.get_mut(&id) else {
            return;
        };
        let slot = Arc::clone(&w.slot);
        let watched = if w.ended.as_ref().is_some_and(|b| b.start == start) {
            w.ended.take()
        } else if w.block.as_ref().is_some_and(|b| b.start == start) {
            w.block.take()
        } else {
            None
        };
        match watched {
            Some(mut b) => {
                // Over the threshold, even if the watchdog had not confirmed it yet.
                if b.captured_after.is_none() {
                    b.captured_after = b.samples.first().map(|s| s.offset_ns);
                }
                self.finish(&slot, b, end, true, run_queue);
            }
            None => {
                // A block the watchdog did not see in time (it ended right at the threshold):
                // report it without a stack.
                let threshold = self.shared.threshold_ns();
                let b = Block {
                    start,
                    starved,
                    threshold,
                    confirmed: true,
                    context: self.context_at(start),
                    samples: Vec::new(),
                    timeline: Timeline::default(),
                    run_queue_at_look: None,
                    slept: KnownSleep::default(),
                    holder_wait: None,
                    captured_after: None,
                    next_sample: 0,
                    seen_end: None,
                    task_name: None,
                    await_chain: Vec::new(),
                    waited: None,
                };
                self.finish(&slot, b, end, true, None);
            }
        }
    }

    /// Reports block `b`, which ended at `end`; `run_queue` is the loop thread's run-queue time
    /// at the end, when it reported the end itself.
    fn finish(
        &mut self,
        slot: &LoopSlot,
        mut b: Block,
        end: u64,
        exact: bool,
        run_queue: Option<u64>,
    ) {
        // Another block of this loop may be open (see `on_end`): only this one is closed.
        let _ = slot
            .open_block
            .compare_exchange(b.start, 0, Ordering::AcqRel, Ordering::Relaxed);
        let id = self.next_event;
        self.next_event += 1;
        let end = end.max(b.start);
        // No more than the block holds outside the time its thread was seen asleep.
        let mut cpu_wait_ns = match (b.run_queue_at_look, run_queue) {
            (Some(a), Some(z)) => Some(
                z.saturating_sub(a)
                    .min((end - b.start).saturating_sub(b.slept.total_ns)),
            ),
            _ => None,
        };
        let mut holder_cpu_wait_ns = None;
        if let Some(h) = b.holder_wait.as_mut() {
            // Read now unless the watchdog saw the end itself (and read then): the end report
            // is handled as soon as it comes.
            h.end(run_queue, crate::schedstat::run_queue_ns);
            let (holders, own) = h.totals(end - b.start);
            if holders.is_some() || own.is_some() {
                // Starvation: the loop thread's wait counts only while nobody held the GIL
                // (see `holder_wait`).
                holder_cpu_wait_ns = holders;
                cpu_wait_ns = own.or(holders.map(|_| 0));
            }
        }
        let mut samples = b.samples;
        crate::native_stack::resolve(samples.iter_mut().map(|s| &mut s.native));
        // Spans mean something only when some sample was seen inside a callback (a sampler
        // that cannot tag, or a block in the loop's own machinery, leaves none).
        let any_callback = b.timeline.runs().iter().any(|r| r.tag.is_some());
        let callbacks = if b.starved || !any_callback {
            for s in &mut samples {
                s.callback = None;
            }
            Vec::new()
        } else {
            let slack = if slot.is_beating() {
                slot.beat_interval.load(Ordering::Relaxed)
            } else {
                0
            };
            let (spans, run_span) = spans(b.timeline.runs(), end - b.start, slack);
            for s in &mut samples {
                s.callback = s.callback.and_then(|r| run_span.get(r as usize).copied());
            }
            spans
        };
        let ev = BlockEvent {
            id,
            loop_id: slot.id,
            loop_kind: slot.kind.clone(),
            thread_ident: slot.target.thread_ident,
            thread_name: slot.thread_name.clone(),
            context: b.context.to_string(),
            start_ns: b.start,
            end_ns: end,
            duration_ns: end - b.start,
            threshold_ns: b.threshold,
            starved: b.starved,
            captured_after_ns: b.captured_after,
            end_exact: exact,
            task_name: b
                .task_name
                .or_else(|| samples.iter().find_map(|s| s.task_name.clone())),
            await_chain: b.await_chain,
            cpu_wait_ns,
            holder_cpu_wait_ns,
            callbacks,
            samples,
        };
        let mut events = self.events.lock();
        events.push(ev);
        self.shared
            .ready
            .store(events.len() as u64, Ordering::Release);
    }

    /// Closes blocks whose end the watchdog saw more than `grace` ago without an end report.
    fn close_stale(&mut self, now: u64, grace: u64) {
        let stale: Vec<u64> = self
            .loops
            .iter()
            .filter(|(_, w)| {
                w.ended
                    .as_ref()
                    .and_then(|b| b.seen_end)
                    .is_some_and(|t| now.saturating_sub(t) >= grace)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            let w = self.loops.get_mut(&id).expect("present");
            let b = w.ended.take().expect("present");
            if !b.confirmed {
                // No end report came: the stretch ended under the threshold.
                continue;
            }
            let slot = Arc::clone(&w.slot);
            let end = b.seen_end.unwrap_or(now);
            self.finish(&slot, b, end, false, None);
        }
    }

    /// Looks at every loop; samples blocked ones. Returns when to look again.
    fn check(&mut self, now: u64) -> u64 {
        let threshold = self.shared.threshold_ns();
        let interval = sample_interval(threshold);
        let tags = self.sampler.tags_callbacks();
        // Never sleep longer than one threshold (see the module docs).
        let mut wake_at = now + longest_sleep(threshold);
        let mut stale = false;
        // The earliest start of a stretch not attributed yet (see `ContextLog`): a stretch
        // that begins from now on cannot begin earlier than `now`.
        let mut horizon = now;
        let mut superseded = Vec::new();
        for w in self.loops.values_mut() {
            let (busy, since, wake_by) = w.slot.snapshot();
            // The moment from which the loop counts as stuck, and whether it is starved.
            let stuck_from = if busy {
                Some((since, false))
            } else if wake_by != 0 {
                Some((wake_by, !w.slot.is_beating()))
            } else {
                None
            };
            if let Some((s, _)) = stuck_from {
                if w.block.as_ref().is_none_or(|b| b.start != s) {
                    horizon = horizon.min(s);
                }
            }
            if let Some(b) = w.block.as_mut() {
                let still = stuck_from.is_some_and(|(s, st)| s == b.start && st == b.starved);
                let deadline = b.start.saturating_add(b.threshold);
                if let Some(h) = b.holder_wait.as_mut() {
                    // Starved: who holds the GIL now; or the stretch is over and its last
                    // holder has let go.
                    if still {
                        h.look(
                            self.sampler.gil_holder(&w.slot.target),
                            crate::schedstat::run_queue_ns,
                        );
                        h.look_asleep(now_ns);
                    } else {
                        h.end(None, crate::schedstat::run_queue_ns);
                    }
                }
                if still {
                    if !b.starved {
                        b.slept.look_at(w.slot.target.native_tid, now_ns);
                    }
                    if !b.confirmed && now >= deadline {
                        b.confirmed = true;
                        w.slot.open_block.store(b.start, Ordering::Release);
                        let mut s = self.sampler.sample(&w.slot.target, now - b.start);
                        add_native(&mut s, &w.slot.target, b.starved);
                        // Counted when the sample is in hand: a sampler that had to wait (for
                        // the GIL) must not look punctual.
                        b.captured_after = Some(now_ns().saturating_sub(b.start));
                        add_object(&self.waited, &mut s, &mut b.waited, b.starved);
                        observe(b, s);
                        b.next_sample = now_ns() + interval;
                        if !b.starved && self.shared.notify_blocks.load(Ordering::Relaxed) {
                            let _ = self.notices.try_send((Arc::clone(&w.slot), b.start));
                        }
                    } else if now >= b.next_sample && (b.confirmed || (tags && !b.starved)) {
                        let mut s = self.sampler.sample(&w.slot.target, now - b.start);
                        if b.confirmed {
                            add_native(&mut s, &w.slot.target, b.starved);
                            add_object(&self.waited, &mut s, &mut b.waited, b.starved);
                        }
                        observe(b, s);
                        b.next_sample = now_ns() + interval;
                    }
                    wake_at = wake_at.min(if b.confirmed || (tags && !b.starved) {
                        b.next_sample
                            .min(if b.confirmed { u64::MAX } else { deadline })
                    } else {
                        deadline
                    });
                    if b.starved {
                        // Who holds the GIL is looked at more often (see `holder_wait`).
                        wake_at = wake_at.min(now_ns() + holder_look_interval(threshold));
                    }
                    continue;
                }
                // The stretch ended, at or before the loop's last change of state (`since`).
                // Under the threshold for sure: forget it (the loop thread reports no end).
                let under = !b.confirmed
                    && (now_ns() < deadline
                        || since.saturating_sub(b.start) < b.threshold.min(threshold));
                let mut b = w.block.take().expect("present");
                if !under {
                    // Its end report decides (or the grace period runs out), while the
                    // stretch after it is watched as any other.
                    b.seen_end.get_or_insert(now);
                    if let Some(old) = w.ended.replace(b).filter(|old| old.confirmed) {
                        // Two ended stretches in a row without an end report: the older one
                        // is closed at the end the watchdog saw.
                        let end = old.seen_end.unwrap_or(now);
                        superseded.push((Arc::clone(&w.slot), old, end));
                    }
                    stale = true;
                    wake_at = wake_at.min(now + END_GRACE_NS);
                }
            }
            let Some((start, starved)) = stuck_from else {
                continue;
            };
            let deadline = start.saturating_add(threshold);
            let look = start.saturating_add(first_look(threshold));
            if now < look {
                wake_at = wake_at.min(look);
                continue;
            }
            let confirmed = now >= deadline;
            let early_samples = tags && !starved;
            let run_queue_at_look = crate::schedstat::run_queue_ns(w.slot.target.native_tid);
            let mut slept = KnownSleep::default();
            if !starved {
                slept.look_at(w.slot.target.native_tid, now_ns);
            }
            let context = self.shared.contexts.at(start);
            if confirmed {
                w.slot.open_block.store(start, Ordering::Release);
            }
            let mut holder_wait = starved.then(|| HolderWait::new(w.slot.target.native_tid));
            if let Some(h) = holder_wait.as_mut() {
                h.look(
                    self.sampler.gil_holder(&w.slot.target),
                    crate::schedstat::run_queue_ns,
                );
                h.look_asleep(now_ns);
            }
            let mut b = Block {
                start,
                starved,
                threshold,
                confirmed,
                context,
                samples: Vec::new(),
                timeline: Timeline::default(),
                run_queue_at_look,
                slept,
                holder_wait,
                captured_after: None,
                next_sample: start.saturating_add(early_sampling(threshold)),
                seen_end: None,
                task_name: None,
                await_chain: Vec::new(),
                waited: None,
            };
            if confirmed || (early_samples && now >= b.next_sample) {
                let t0 = now_ns();
                let mut s = self
                    .sampler
                    .sample(&w.slot.target, t0.saturating_sub(start));
                if confirmed {
                    add_native(&mut s, &w.slot.target, starved);
                    b.captured_after = Some(now_ns().saturating_sub(start));
                    add_object(&self.waited, &mut s, &mut b.waited, starved);
                }
                observe(&mut b, s);
                b.next_sample = now_ns() + interval;
            }
            if confirmed || early_samples {
                wake_at = wake_at.min(b.next_sample);
            }
            if !confirmed {
                wake_at = wake_at.min(deadline);
            }
            if starved {
                wake_at = wake_at.min(now_ns() + holder_look_interval(threshold));
            }
            if confirmed && !starved && self.shared.notify_blocks.load(Ordering::Relaxed) {
                let _ = self.notices.try_send((Arc::clone(&w.slot), start));
            }
            w.block = Some(b);
        }
        for (slot, b, end) in superseded {
            self.finish(&slot, b, end, false, None);
        }
        if stale {
            self.close_stale(now, END_GRACE_NS);
        }
        self.shared.contexts.set_horizon(horizon);
        wake_at
    }
}

/// Adds sample `s` to block `b`, noting the callback it shows in the block's timeline.
fn observe(b: &mut Block, mut s: Sample) {
    s.callback = if s.error.is_none() && !s.frames.is_empty() {
        Some(b.timeline.observe(s.callback_tag, s.offset_ns))
    } else {
        // Unreadable: it says nothing about which callback ran.
        None
    };
    s.fold();
    push_sample(&mut b.samples, s);
}

/// Adds the loop thread's native frames to `s`, a sample of a confirmed block, when they are
/// asked for (see `native_stack`). Not for starvation: the loop thread is only waiting for the
/// GIL then.
fn add_native(s: &mut Sample, target: &Target, starved: bool) {
    if starved || !crate::native_stack::enabled() {
        return;
    }
    s.native.raw = Some(if s.late {
        crate::native_stack::RawStack {
            ips: Vec::new(),
            note: Some(crate::native_stack::NEEDS_READER.into()),
        }
    } else {
        crate::native_stack::capture(target.native_tid)
    });
}

/// Names what the system call of `s`, a sample of a confirmed block, waited on (see `waited`),
/// after the stack is in hand. Not for starvation, nor for a sample taken while another thread
/// held the GIL: the loop thread's call is then its wait for the GIL.
fn add_object(waited: &Waited, s: &mut Sample, cache: &mut Cache, starved: bool) {
    if starved || s.gil == crate::event::Gil::Other {
        return;
    }
    s.syscall_object = waited.describe(s.kernel, cache);
}

fn push_sample(samples: &mut Vec<Sample>, s: Sample) {
    let full = samples.len() >= MAX_SAMPLES
        || samples.iter().map(Sample::frames_held).sum::<usize>() + s.frames_held()
            > MAX_HELD_FRAMES;
    if let Some(last) = samples.last_mut() {
        if full || last.same_content(&s) {
            last.count += 1;
            return;
        }
    }
    samples.push(s);
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ms_d, start, target, the_only_event, Fixed};
    use super::super::Watchdog;
    use super::*;
    use crate::clock::ms;
    use crate::event::Frame;
    #[cfg(linux_full)]
    use crate::schedstat::tests::{gettid, pin_to, spin, Spinner};
    use std::thread::sleep;

    /// A sampler that tags each sample with the callback the test says is running.
    struct Tagging(Arc<AtomicU64>);

    impl Sampler for Tagging {
        fn sample(&mut self, target: &Target, offset_ns: u64) -> Sample {
            let tag = self.0.load(Ordering::SeqCst);
            Sample {
                callback_tag: (tag != 0).then_some(tag),
                ..Fixed.sample(target, offset_ns)
            }
        }

        fn name(&self) -> &'static str {
            "tagging"
        }

        fn tags_callbacks(&self) -> bool {
            true
        }
    }

    fn start_tagging(threshold: u64) -> (Watchdog, Arc<AtomicU64>) {
        let current = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&current);
        let wd = Watchdog::start(threshold, move || {
            Ok(Box::new(Tagging(c)) as Box<dyn Sampler>)
        })
        .unwrap();
        (wd, current)
    }

    /// Runs `callbacks` callbacks of `each` in one busy stretch, telling the sampler which.
    fn run_callbacks(slot: &LoopSlot, current: &AtomicU64, callbacks: &[(u64, u64)]) {
        slot.busy();
        for &(tag, each_ms) in callbacks {
            current.store(tag, Ordering::SeqCst);
            sleep(ms_d(each_ms));
        }
        current.store(0, Ordering::SeqCst);
        slot.idle(Some(ms(10)));
    }

    #[test]
    fn a_stretch_under_the_threshold_is_forgotten_with_its_early_samples() {
        let (wd, current) = start_tagging(ms(100));
        let slot = wd.register("asyncio", "main", target());
        // Long enough for the first look (25 ms) and a few samples, short of 100 ms.
        run_callbacks(&slot, &current, &[(1, 30), (2, 30)]);
        sleep(ms_d(300));
        let events = wd.flush(ms(2000));
        wd.stop();
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn early_samples_show_the_callbacks_a_block_began_with() {
        let (wd, current) = start_tagging(ms(100));
        let slot = wd.register("asyncio", "main", target());
        let many: Vec<(u64, u64)> = (1..=30).map(|i| (i, 8)).collect();
        run_callbacks(&slot, &current, &many);
        let ev = &the_only_event(wd);
        // Sampled from a quarter of the threshold on: well before the threshold.
        assert!(ev.samples[0].offset_ns < ms(90), "{:?}", ev.samples[0]);
        assert!(ev.callbacks.len() >= 3, "{:?}", ev.callbacks);
        assert!(ev.callbacks.iter().all(|c| c.in_callback));
        // Every sample points at its callback, in order.
        let idx: Vec<u32> = ev.samples.iter().filter_map(|s| s.callback).collect();
        assert!(idx.windows(2).all(|w| w[0] <= w[1]), "{idx:?}");
        assert_eq!(*idx.last().unwrap() as usize, ev.callbacks.len() - 1);
        // The longest could not have been longer than the gap around it; the threshold is far.
        let longest = ev.callbacks.iter().map(|c| c.max_ns).max().unwrap();
        assert!(longest < ms(100), "{:?}", ev.callbacks);
    }

    #[test]
    fn one_long_callback_is_bounded_below_by_its_samples() {
        let (wd, current) = start_tagging(ms(50));
        let slot = wd.register("asyncio", "main", target());
        run_callbacks(&slot, &current, &[(1, 5), (2, 5), (3, 200), (4, 5)]);
        let events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events.len(), 1, "{events:?}");
        let long = ev_longest(&events[0]);
        assert!(long.min_ns >= ms(100), "{:?}", events[0].callbacks);
        assert!(long.max_ns >= ms(200), "{:?}", events[0].callbacks);
    }

    fn ev_longest(ev: &BlockEvent) -> &crate::event::Span {
        ev.callbacks.iter().max_by_key(|c| c.max_ns).unwrap()
    }

    #[test]
    fn a_sampler_that_cannot_tag_samples_from_the_threshold_as_before() {
        let wd = start(ms(100));
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        sleep(ms_d(160));
        slot.idle(None);
        let events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events.len(), 1);
        assert!(events[0].samples[0].offset_ns >= ms(100));
        assert!(events[0].callbacks.is_empty());
    }

    #[cfg(linux_full)]
    #[test]
    fn the_wait_for_a_cpu_is_measured_from_the_first_look_to_the_end() {
        if !crate::schedstat::available() {
            eprintln!("no schedstat on this kernel");
            return;
        }
        let wd = Arc::new(start(ms(100)));
        let spinner = Spinner::on_this_cpu();
        let cpu = spinner.cpu;
        let loop_thread = {
            let wd = Arc::clone(&wd);
            std::thread::spawn(move || {
                pin_to(cpu);
                let slot = wd.register(
                    "asyncio",
                    "main",
                    Target {
                        native_tid: gettid(),
                        ..target()
                    },
                );
                slot.busy();
                spin(ms_d(300));
                slot.idle(None);
                slot.unregister();
            })
        };
        loop_thread.join().unwrap();
        spinner.stop();
        let events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events.len(), 1, "{events:?}");
        let wait = events[0].cpu_wait_ns.expect("measured");
        // About half of the 275 ms after the first look; the spinner had the CPU the rest.
        assert!(wait > ms(60) && wait < events[0].duration_ns, "{wait}");
    }

    /// A sampler that reports the thread the test names as the GIL holder (tid 0: nobody).
    #[cfg(linux_full)]
    struct Holding(Arc<std::sync::atomic::AtomicI64>);

    #[cfg(linux_full)]
    impl Sampler for Holding {
        fn sample(&mut self, target: &Target, offset_ns: u64) -> Sample {
            Fixed.sample(target, offset_ns)
        }

        fn name(&self) -> &'static str {
            "holding"
        }

        fn gil_holder(&mut self, _target: &Target) -> crate::holder_wait::Seen {
            use crate::holder_wait::{HolderId, Seen};
            match self.0.load(Ordering::SeqCst) {
                0 => Seen::Nobody,
                tid => Seen::Holder(HolderId {
                    ident: 2,
                    tid: Some(tid),
                }),
            }
        }
    }

    #[cfg(linux_full)]
    #[test]
    fn a_starved_loop_counts_its_gil_holders_wait_for_a_cpu() {
        if !crate::schedstat::available() {
            eprintln!("no schedstat on this kernel");
            return;
        }
        let holder = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let wd = {
            let holder = Arc::clone(&holder);
            Watchdog::start(ms(100), move || {
                Ok(Box::new(Holding(holder)) as Box<dyn Sampler>)
            })
            .unwrap()
        };
        let spinner = Spinner::on_this_cpu();
        let cpu = spinner.cpu;
        // The loop waits in its selector for 1 ms and does not come back until the "holder"
        // has run 300 ms of wall time on a CPU it shares with the spinner.
        let slot = wd.register("asyncio", "main", target());
        slot.idle(Some(ms(1)));
        let h = Arc::clone(&holder);
        std::thread::spawn(move || {
            pin_to(cpu);
            h.store(gettid(), Ordering::SeqCst);
            spin(ms_d(300));
            h.store(0, Ordering::SeqCst);
        })
        .join()
        .unwrap();
        slot.busy();
        slot.idle(None);
        spinner.stop();
        let ev = the_only_event(wd);
        assert!(ev.starved, "{ev:?}");
        let wait = ev.holder_cpu_wait_ns.expect("measured");
        // About half of the ~285 ms after the first look; the spinner had the CPU the rest.
        assert!(wait > ms(60) && wait < ev.duration_ns, "{wait} of {ev:?}");
    }

    #[test]
    fn blocks_and_unknown_holders_have_no_holder_wait() {
        let wd = start(ms(50));
        let slot = wd.register("asyncio", "main", target());
        slot.idle(Some(ms(1)));
        sleep(ms_d(150));
        slot.busy();
        sleep(ms_d(150));
        slot.idle(None);
        let events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events[0].starved && !events[1].starved, "{events:?}");
        // The sampler cannot tell who holds the GIL; a block is not starvation.
        assert!(events.iter().all(|e| e.holder_cpu_wait_ns.is_none()));
    }

    #[test]
    fn a_long_busy_stretch_is_one_event_with_exact_duration() {
        let wd = start(ms(50));
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        sleep(ms_d(200));
        slot.idle(Some(ms(10)));
        let ev = &the_only_event(wd);
        assert!(!ev.starved);
        assert!(ev.end_exact);
        assert!(
            ev.duration_ns >= ms(200) && ev.duration_ns < ms(1000),
            "{ev:?}"
        );
        // Sampled while blocked, at (or after) the threshold.
        let cap = ev.captured_after_ns.expect("sampled");
        assert!(cap >= ms(50) && cap < ev.duration_ns, "{ev:?}");
        assert_eq!(&*ev.samples[0].frames[0].function, "handler");
        assert_eq!(ev.thread_name, "main");
    }

    #[test]
    fn a_block_right_after_a_short_stretch_is_sampled() {
        // A sampler without early samples sleeps until the first stretch's deadline and then
        // finds the loop in another stretch: the first one ended under the threshold (it ended
        // before the second began, 60 ms after it started) and must not hide the block.
        let wd = start(ms(100));
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        sleep(ms_d(60));
        slot.idle(Some(ms(1)));
        slot.busy();
        sleep(ms_d(200));
        slot.idle(Some(ms(10)));
        let ev = &the_only_event(wd);
        assert!(ev.duration_ns >= ms(200), "{ev:?}");
        let cap = ev.captured_after_ns.expect("sampled while it lasted");
        assert!(cap < ev.duration_ns, "{ev:?}");
        assert!(!ev.samples.is_empty(), "{ev:?}");
    }

    #[test]
    fn an_event_belongs_to_the_context_where_it_began() {
        let wd = start(ms(50));
        wd.set_context("call\u{1f}test_a");
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        sleep(ms_d(120));
        wd.set_context("teardown\u{1f}test_a");
        slot.idle(None);
        let events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].context, "call\u{1f}test_a");
    }

    #[test]
    fn a_registration_wakes_a_watchdog_that_sleeps_without_a_deadline() {
        let wd = start(ms(100));
        // Nothing to watch: the watchdog sleeps until rung.
        sleep(ms_d(50));
        let before = wd.wakeups();
        let slot = wd.register("asyncio", "main", target());
        let t0 = std::time::Instant::now();
        while wd.wakeups() == before {
            assert!(
                t0.elapsed() < ms_d(2000),
                "the registration did not wake the watchdog"
            );
            sleep(ms_d(1));
        }
        slot.unregister();
        wd.stop();
    }

    #[test]
    fn the_watchdog_thread_ends_when_every_handle_on_it_is_gone() {
        let wd = start(ms(100));
        let slot = wd.register("asyncio", "main", target());
        slot.unregister();
        drop(slot);
        wd.flush(ms(2000)); // the watchdog has let go of the loop's slot
        sleep(ms_d(20)); // and sleeps
        let thread = wd.thread.lock().take().expect("a running thread");
        drop(wd);
        let t0 = std::time::Instant::now();
        while !thread.is_finished() {
            assert!(t0.elapsed() < ms_d(2000), "the watchdog thread did not end");
            sleep(ms_d(1));
        }
    }

    #[test]
    fn block_notices_are_sent_only_when_asked_for() {
        let wd = start(ms(30));
        let notices = wd.notices();
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        sleep(ms_d(80));
        slot.idle(None);
        assert!(notices.try_recv().is_err());
        wd.set_notify_blocks(true);
        slot.busy();
        sleep(ms_d(80));
        let (noticed, start) = notices.recv_timeout(ms_d(2000)).expect("a notice");
        assert_eq!(noticed.id, slot.id);
        assert!(slot.is_busy_since(start));
        slot.idle(None);
        assert!(!slot.is_busy_since(start));
        wd.stop();
    }

    #[test]
    fn a_block_can_be_annotated_with_its_task_while_it_lasts() {
        let wd = start(ms(30));
        wd.set_notify_blocks(true);
        let notices = wd.notices();
        let slot = wd.register("asyncio", "main", target());
        slot.busy();
        let (noticed, start) = notices.recv_timeout(ms_d(2000)).expect("a notice");
        wd.annotate(noticed.id, start, "Task-7".into(), Vec::new());
        wd.annotate(noticed.id, start + 1, "wrong block".into(), Vec::new());
        sleep(ms_d(20));
        slot.idle(None);
        let events = wd.flush(ms(2000));
        wd.stop();
        assert_eq!(events[0].task_name.as_deref(), Some("Task-7"));
    }

    #[test]
    fn the_watchdog_keeps_the_context_of_a_stretch_it_has_not_judged_yet() {
        let wd = start(ms(60_000));
        wd.set_context("call\u{1f}test_0");
        let slot = wd.register("asyncio", "bg", target());
        slot.busy();
        let (_, since, _) = slot.snapshot();
        // Wait for the watchdog to look at the loop and publish its horizon.
        let t0 = std::time::Instant::now();
        while wd.shared.contexts.len() < 2 || horizon(&wd) == 0 || horizon(&wd) > since {
            assert!(t0.elapsed() < ms_d(5000), "no horizon at or before {since}");
            sleep(ms_d(5));
        }
        // Switches long after the grace period cannot drop the context in force at `since`.
        for i in 1..=100 {
            wd.shared
                .contexts
                .set(since + i * ms(60_000), &format!("call\u{1f}test_{i}"));
        }
        assert_eq!(wd.shared.contexts.at(since).to_string(), "call\u{1f}test_0");
        slot.unregister();
        wd.stop();
    }

    fn horizon(wd: &Watchdog) -> u64 {
        wd.shared.contexts.horizon()
    }

    /// A sample of a recursion `depth` deep, blocked at line `line`.
    fn deep_sample(depth: usize, line: u32) -> Sample {
        let f = |lineno: u32, function: &str| Frame {
            filename: "app.py".into(),
            lineno,
            function: function.into(),
        };
        let mut s = Fixed.sample(&target(), 0);
        s.frames = std::iter::once(f(3, "test"))
            .chain((0..depth).map(|_| f(10, "dig")))
            .chain([f(line, "dig")])
            .collect();
        s
    }

    #[test]
    fn samples_of_a_deep_recursion_are_stored_folded() {
        let mut b = Vec::new();
        for i in 0..3 {
            let mut s = deep_sample(3000, 8);
            s.offset_ns = i;
            let whole = s.frames.clone();
            s.fold();
            assert_eq!(s.frames.len(), 3);
            assert_eq!(crate::fold::unfold(&s.frames, &s.repeats), whole);
            push_sample(&mut b, s);
        }
        // Identical deep samples stay one, counted.
        assert_eq!((b.len(), b[0].count), (1, 3));
        let mut other = deep_sample(3000, 9);
        other.fold();
        push_sample(&mut b, other);
        assert_eq!(b.len(), 2);
        let json = serde_json::to_string(&b[0]).unwrap();
        assert!(
            json.contains(r#""repeats":[{"at":1,"frames":1,"times":3000}]"#),
            "{json}"
        );
        assert!(json.len() < 1000, "{}", json.len());
    }

    #[test]
    fn the_frames_a_block_holds_are_bounded() {
        let mut b = Vec::new();
        // Deep stacks that do not repeat: each sample holds all its frames.
        let distinct = |line: u32| {
            let mut s = Fixed.sample(&target(), 0);
            s.frames = (0..10_000u32)
                .map(|i| Frame {
                    filename: "app.py".into(),
                    lineno: i,
                    function: "f".into(),
                })
                .chain([Frame {
                    filename: "app.py".into(),
                    lineno: line,
                    function: "g".into(),
                }])
                .collect();
            s.fold();
            s
        };
        for line in 0..100 {
            push_sample(&mut b, distinct(line));
        }
        let held: usize = b.iter().map(Sample::frames_held).sum();
        assert!(held <= MAX_HELD_FRAMES, "{held}");
        assert_eq!(b.len(), MAX_HELD_FRAMES / 10_001);
        // Every sample is still counted, in the last one kept.
        assert_eq!(b.iter().map(|s| s.count).sum::<u32>(), 100);
    }

    #[test]
    fn consecutive_identical_samples_are_folded() {
        let mut v = Vec::new();
        let mut f = Fixed;
        for i in 0..5 {
            push_sample(&mut v, f.sample(&target(), i));
        }
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].count, 5);
    }
}
