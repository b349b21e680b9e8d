//! Putting volumes in order, per run, and deciding when one is missing.
//!
//! In: what the rest of the stage learns about each volume index — a file
//! for it was seen (a *candidate*, pending until it decodes), a candidate
//! decoded and validated (*taken*), was quarantined, or vanished — plus the
//! current time, passed in so that this is pure logic.
//! Out: [`Output`]s in the order they must be reported: runs starting and
//! ending, volumes released in index order (or late), indices given up on,
//! and duplicates.
//!
//! Rules (per run):
//! - volume `next` is released as soon as it is taken; later ones are held;
//! - `next` is declared missing when `gap_timeout` has passed since the
//!   oldest held volume was taken, or — when no candidate for it is
//!   pending — as soon as `window` later volumes are held. A pending
//!   candidate (a file still being written) thus holds later volumes back
//!   for at most `gap_timeout`: real-time consumers get a bounded latency,
//!   and the slow file is delivered late if it completes. An index whose
//!   only candidates were quarantined is declared missing at once, with the
//!   quarantine reason;
//! - a volume for an index below `next` (declared missing, or below the
//!   run's first index) is released at once with `late = true`, as is every
//!   volume of a run that has ended;
//! - a file for an index that is already taken (released or held) is a
//!   duplicate;
//! - the first taken volume of a run numbered higher than the open one ends
//!   the open run (its held volumes released, every index up to the highest
//!   seen — and up to `volumes_per_run` when set — released or declared
//!   missing, then `RunEnded`) and starts the new one (`RunStarted`). A run
//!   numbered lower than the open one that was never started is treated as
//!   already ended;
//! - a run also ends when all `volumes_per_run` indices are accounted for,
//!   or when nothing happened in it for `run_idle_timeout`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::types::messages::{MissingReason, VolumeKey};

/// The knobs of the ordering logic.
#[derive(Debug, Clone)]
pub struct ReorderConfig {
    /// Later volumes that may wait for a missing one.
    pub window: u32,
    /// How long the oldest held volume may wait for a missing one.
    pub gap_timeout: Duration,
    /// Volumes per run, when known.
    pub volumes_per_run: Option<u32>,
    /// A run with no activity for this long ends.
    pub run_idle_timeout: Duration,
}

/// What to report, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output<T> {
    /// A run opened; its volumes follow.
    /// A run started: its number and the index of its first volume.
    RunStarted(u32, u32),
    /// A volume to send downstream.
    Release {
        /// Its run and index.
        key: VolumeKey,
        /// The payload handed to [`Reorder::taken`].
        item: T,
        /// Arrived after its index was given up on, or after its run ended.
        late: bool,
    },
    /// An index given up on.
    Missing {
        /// Run and index.
        key: VolumeKey,
        /// Why.
        reason: MissingReason,
    },
    /// A taken volume for an index that already had one; not released.
    Duplicate {
        /// Run and index.
        key: VolumeKey,
        /// The payload handed to [`Reorder::taken`].
        item: T,
    },
    /// A run is over.
    RunEnded(u32),
}

/// What a newly seen file is to the ordering logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A candidate for an index not yet taken: decode it.
    Candidate,
    /// Its index is already taken: report it, do not decode it.
    Duplicate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    NotStarted,
    Open,
    Ended,
}

#[derive(Debug)]
struct Run<T> {
    status: Status,
    first_index: u32,
    /// The next index to release; everything below is released or missing.
    next: u32,
    /// Taken volumes above `next`, with the time each was taken.
    held: BTreeMap<u32, (T, Instant)>,
    /// Indices with a released or held volume.
    taken: BTreeSet<u32>,
    /// Candidates seen but neither taken, quarantined nor removed yet.
    pending: HashMap<u32, u32>,
    /// Why the last candidate of an untaken index was quarantined.
    quarantined: HashMap<u32, String>,
    highest_seen: u32,
    last_activity: Instant,
}

impl<T> Run<T> {
    fn new(first_index: u32, index: u32, now: Instant) -> Run<T> {
        Run {
            status: Status::NotStarted,
            first_index,
            next: first_index,
            held: BTreeMap::new(),
            taken: BTreeSet::new(),
            pending: HashMap::new(),
            quarantined: HashMap::new(),
            highest_seen: index,
            last_activity: now,
        }
    }

    fn touch(&mut self, index: u32, now: Instant) {
        self.highest_seen = self.highest_seen.max(index);
        self.last_activity = now;
    }

    fn unpend(&mut self, index: u32) {
        if let Some(n) = self.pending.get_mut(&index) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&index);
            }
        }
    }

    fn missing_reason(&self, index: u32) -> MissingReason {
        match self.quarantined.get(&index) {
            Some(r) => MissingReason::Quarantined(r.clone()),
            None if self.pending.contains_key(&index) => MissingReason::StillIncomplete,
            None => MissingReason::NotReceived,
        }
    }
}

/// A run as a resumed session left it (see [`crate::session::resume`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumedRun {
    /// Run number.
    pub run: u32,
    /// Index of its first volume.
    pub first_index: u32,
    /// Indices that got a volume (realigned or failed), with the file each
    /// came from.
    pub taken: BTreeMap<u32, String>,
    /// The next index to settle: everything below is taken or declared
    /// missing (a file for a missing one is delivered late).
    pub next: u32,
    /// The run had ended (its later files are late); otherwise it is the
    /// open run and continues.
    pub ended: bool,
}

/// Ordering state of every run of the session.
#[derive(Debug)]
pub struct Reorder<T> {
    cfg: ReorderConfig,
    runs: BTreeMap<u32, Run<T>>,
    open: Option<u32>,
}

impl<T> Reorder<T> {
    /// Empty state.
    pub fn new(cfg: ReorderConfig) -> Reorder<T> {
        Reorder {
            cfg,
            runs: BTreeMap::new(),
            open: None,
        }
    }

    /// Continue from a stored session's runs, as if the daemon had never
    /// stopped: no `RunStarted` again, the open run goes on from `next`.
    pub fn resume(&mut self, runs: &[ResumedRun], now: Instant) {
        for r in runs {
            let mut run = Run::new(r.first_index, r.next.saturating_sub(1), now);
            run.next = r.next;
            run.taken = r.taken.keys().copied().collect();
            if let Some(&h) = run.taken.last() {
                run.highest_seen = run.highest_seen.max(h);
            }
            run.status = if r.ended {
                Status::Ended
            } else {
                self.open = Some(r.run);
                Status::Open
            };
            self.runs.insert(r.run, run);
        }
    }

    fn run_mut(&mut self, key: VolumeKey, first_index: u32, now: Instant) -> &mut Run<T> {
        self.runs
            .entry(key.run)
            .or_insert_with(|| Run::new(first_index, key.index, now))
    }

    /// A file for `key` appeared; `first_index` is where its run starts
    /// (used when this is the run's first file).
    pub fn seen(&mut self, key: VolumeKey, first_index: u32, now: Instant) -> Seen {
        let run = self.run_mut(key, first_index, now);
        run.touch(key.index, now);
        if run.taken.contains(&key.index) {
            return Seen::Duplicate;
        }
        *run.pending.entry(key.index).or_insert(0) += 1;
        Seen::Candidate
    }

    /// Whether `key` already has a released or held volume.
    pub fn is_taken(&self, key: VolumeKey) -> bool {
        self.runs
            .get(&key.run)
            .is_some_and(|r| r.taken.contains(&key.index))
    }

    /// A candidate for `key` decoded and validated.
    pub fn taken(&mut self, key: VolumeKey, item: T, now: Instant) -> Vec<Output<T>> {
        let mut out = Vec::new();
        let run = self.run_mut(key, key.index, now);
        run.unpend(key.index);
        run.touch(key.index, now);
        if run.taken.contains(&key.index) {
            out.push(Output::Duplicate { key, item });
            return out;
        }
        if run.status == Status::NotStarted {
            match self.open {
                Some(open) if open > key.run => {
                    tracing::warn!(
                        "{key} belongs to a run numbered below the open run {open}; \
                         its volumes are delivered as late"
                    );
                    self.set_status(key.run, Status::Ended);
                }
                open => {
                    if let Some(open) = open {
                        self.end_run(open, &mut out);
                    }
                    self.set_status(key.run, Status::Open);
                    self.open = Some(key.run);
                    let first = self.runs.get(&key.run).map_or(0, |r| r.first_index);
                    out.push(Output::RunStarted(key.run, first));
                }
            }
        }
        let Some(run) = self.runs.get_mut(&key.run) else {
            return out;
        };
        run.taken.insert(key.index);
        if run.status == Status::Ended || key.index < run.next {
            // Processed, not dropped: downstream decides what a late volume is worth.
            out.push(Output::Release {
                key,
                item,
                late: true,
            });
        } else if key.index == run.next {
            out.push(Output::Release {
                key,
                item,
                late: false,
            });
            run.next += 1;
        } else {
            run.held.insert(key.index, (item, now));
        }
        if run.status == Status::Open {
            self.advance(key.run, now, &mut out);
        }
        out
    }

    /// The candidate for `key` was quarantined with `reason`.
    pub fn quarantined(&mut self, key: VolumeKey, reason: String, now: Instant) -> Vec<Output<T>> {
        let mut out = Vec::new();
        let run = self.run_mut(key, key.index, now);
        run.unpend(key.index);
        run.touch(key.index, now);
        if run.taken.contains(&key.index) {
            return out;
        }
        run.quarantined.insert(key.index, reason);
        if run.status == Status::Open {
            self.advance(key.run, now, &mut out);
        }
        out
    }

    /// The candidate for `key` vanished before it could be read.
    pub fn removed(&mut self, key: VolumeKey, now: Instant) -> Vec<Output<T>> {
        let mut out = Vec::new();
        let run = self.run_mut(key, key.index, now);
        run.unpend(key.index);
        run.touch(key.index, now);
        if run.status == Status::Open {
            self.advance(key.run, now, &mut out);
        }
        out
    }

    /// Something is still happening in `run` (a file of it is growing):
    /// it is not idle.
    pub fn activity(&mut self, run: u32, now: Instant) {
        if let Some(r) = self.runs.get_mut(&run) {
            r.last_activity = now;
        }
    }

    /// Time-driven decisions: gaps past `gap_timeout`, idle runs.
    pub fn tick(&mut self, now: Instant) -> Vec<Output<T>> {
        let mut out = Vec::new();
        if let Some(open) = self.open {
            self.advance(open, now, &mut out);
        }
        if let Some(open) = self.open {
            let idle = self
                .runs
                .get(&open)
                .is_some_and(|r| now.duration_since(r.last_activity) >= self.cfg.run_idle_timeout);
            if idle {
                tracing::info!(
                    "run {open}: no new file for {:.1} s; ending it",
                    self.cfg.run_idle_timeout.as_secs_f64()
                );
                self.end_run(open, &mut out);
            }
        }
        out
    }

    /// When [`Reorder::tick`] next has something to decide, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let run = self.runs.get(&self.open?)?;
        let idle = run.last_activity + self.cfg.run_idle_timeout;
        let gap = run
            .held
            .values()
            .map(|(_, t)| *t)
            .min()
            .map(|t| t + self.cfg.gap_timeout);
        Some(gap.map_or(idle, |g| g.min(idle)))
    }

    /// End the open run: release what is held, declare the rest missing.
    pub fn flush(&mut self) -> Vec<Output<T>> {
        let mut out = Vec::new();
        if let Some(open) = self.open {
            self.end_run(open, &mut out);
        }
        out
    }

    /// The run that is open, if any.
    pub fn open_run(&self) -> Option<u32> {
        self.open
    }

    fn set_status(&mut self, run: u32, status: Status) {
        if let Some(r) = self.runs.get_mut(&run) {
            r.status = status;
        }
    }

    /// Release and declare as far as the rules allow.
    fn advance(&mut self, run_no: u32, now: Instant, out: &mut Vec<Output<T>>) {
        let window = self.cfg.window.max(1) as usize;
        let vpr = self.cfg.volumes_per_run;
        let Some(run) = self.runs.get_mut(&run_no) else {
            return;
        };
        let complete = loop {
            while let Some((item, _)) = run.held.remove(&run.next) {
                out.push(Output::Release {
                    key: VolumeKey {
                        run: run_no,
                        index: run.next,
                    },
                    item,
                    late: false,
                });
                run.next += 1;
            }
            if vpr.is_some_and(|n| run.next >= run.first_index.saturating_add(n)) {
                break true;
            }
            let pending = run.pending.contains_key(&run.next);
            let key = VolumeKey {
                run: run_no,
                index: run.next,
            };
            let known_bad = run.quarantined.contains_key(&run.next);
            let oldest = run.held.values().map(|(_, t)| *t).min();
            let waited_out = oldest.is_some_and(|t| now.duration_since(t) >= self.cfg.gap_timeout);
            if (!pending && (known_bad || run.held.len() >= window)) || waited_out {
                out.push(Output::Missing {
                    key,
                    reason: run.missing_reason(run.next),
                });
                run.next += 1;
            } else {
                break false;
            }
        };
        if complete {
            self.end_run(run_no, out);
        }
    }

    /// Flush `run_no` and close it.
    fn end_run(&mut self, run_no: u32, out: &mut Vec<Output<T>>) {
        let vpr = self.cfg.volumes_per_run;
        let Some(run) = self.runs.get_mut(&run_no) else {
            return;
        };
        if run.status != Status::Open {
            return;
        }
        let mut last = run.highest_seen;
        if let Some((&h, _)) = run.held.last_key_value() {
            last = last.max(h);
        }
        if let Some(n) = vpr {
            last = last.max(run.first_index.saturating_add(n).saturating_sub(1));
        }
        while run.next <= last {
            let key = VolumeKey {
                run: run_no,
                index: run.next,
            };
            match run.held.remove(&run.next) {
                Some((item, _)) => out.push(Output::Release {
                    key,
                    item,
                    late: false,
                }),
                None => out.push(Output::Missing {
                    key,
                    reason: run.missing_reason(run.next),
                }),
            }
            if run.next == u32::MAX {
                break;
            }
            run.next += 1;
        }
        run.status = Status::Ended;
        if self.open == Some(run_no) {
            self.open = None;
        }
        out.push(Output::RunEnded(run_no));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs with payloads reduced to their key, for compact assertions.
    #[derive(Debug, PartialEq)]
    enum E {
        Start(u32),
        Vol(u32, u32, bool),
        Miss(u32, u32, Option<String>),
        Dup(u32, u32),
        End(u32),
    }

    fn k(run: u32, index: u32) -> VolumeKey {
        VolumeKey { run, index }
    }

    struct T {
        r: Reorder<u32>,
        t0: Instant,
        first: u32,
    }

    impl T {
        fn new(window: u32, vpr: Option<u32>) -> T {
            T {
                r: Reorder::new(ReorderConfig {
                    window,
                    gap_timeout: Duration::from_secs(3),
                    volumes_per_run: vpr,
                    run_idle_timeout: Duration::from_secs(60),
                }),
                t0: Instant::now(),
                first: 0,
            }
        }
        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }
        fn seen(&mut self, run: u32, i: u32, ms: u64) -> Seen {
            let now = self.at(ms);
            self.r.seen(k(run, i), self.first, now)
        }
        fn take(&mut self, run: u32, i: u32, ms: u64) -> Vec<E> {
            let now = self.at(ms);
            conv(self.r.taken(k(run, i), i, now))
        }
        /// Seen and taken at once (a file complete at first sight).
        fn arrive(&mut self, run: u32, i: u32, ms: u64) -> Vec<E> {
            assert_eq!(self.seen(run, i, ms), Seen::Candidate);
            self.take(run, i, ms)
        }
        fn tick(&mut self, ms: u64) -> Vec<E> {
            let now = self.at(ms);
            conv(self.r.tick(now))
        }
    }

    fn conv(out: Vec<Output<u32>>) -> Vec<E> {
        out.into_iter()
            .map(|o| match o {
                Output::RunStarted(r, _) => E::Start(r),
                Output::Release { key, item, late } => {
                    assert_eq!(item, key.index);
                    E::Vol(key.run, key.index, late)
                }
                Output::Missing { key, reason } => E::Miss(
                    key.run,
                    key.index,
                    match reason {
                        MissingReason::NotReceived => None,
                        MissingReason::Quarantined(r) => Some(r),
                        MissingReason::StillIncomplete => Some("still incomplete".into()),
                    },
                ),
                Output::Duplicate { key, .. } => E::Dup(key.run, key.index),
                Output::RunEnded(r) => E::End(r),
            })
            .collect()
    }

    use E::*;

    #[test]
    fn in_order_volumes_are_released_at_once() {
        let mut t = T::new(2, None);
        assert_eq!(t.arrive(1, 0, 0), vec![Start(1), Vol(1, 0, false)]);
        assert_eq!(t.arrive(1, 1, 10), vec![Vol(1, 1, false)]);
        assert_eq!(t.arrive(1, 2, 20), vec![Vol(1, 2, false)]);
        assert_eq!(conv(t.r.flush()), vec![End(1)]);
    }

    #[test]
    fn out_of_order_within_the_window_is_put_back_in_order() {
        let mut t = T::new(2, None);
        assert_eq!(t.arrive(1, 0, 0), vec![Start(1), Vol(1, 0, false)]);
        assert_eq!(t.arrive(1, 2, 10), vec![]);
        assert_eq!(t.arrive(1, 1, 20), vec![Vol(1, 1, false), Vol(1, 2, false)]);
    }

    #[test]
    fn a_gap_is_declared_when_the_window_fills() {
        let mut t = T::new(2, None);
        t.arrive(1, 0, 0);
        assert_eq!(t.arrive(1, 2, 10), vec![]);
        assert_eq!(
            t.arrive(1, 3, 20),
            vec![Miss(1, 1, None), Vol(1, 2, false), Vol(1, 3, false)]
        );
        // The missing one turns up after all: delivered, flagged late.
        assert_eq!(t.arrive(1, 1, 30), vec![Vol(1, 1, true)]);
        assert_eq!(t.arrive(1, 4, 40), vec![Vol(1, 4, false)]);
    }

    #[test]
    fn a_gap_is_declared_after_gap_timeout_with_fewer_held() {
        let mut t = T::new(5, None);
        t.arrive(1, 0, 0);
        assert_eq!(t.arrive(1, 2, 100), vec![]);
        assert_eq!(t.r.next_deadline(), Some(t.at(3100)));
        assert_eq!(t.tick(3099), vec![]);
        assert_eq!(t.tick(3100), vec![Miss(1, 1, None), Vol(1, 2, false)]);
    }

    #[test]
    fn the_gap_timer_runs_from_the_oldest_held_volume() {
        let mut t = T::new(2, None);
        t.arrive(1, 0, 0);
        t.arrive(1, 2, 100); // 1 missing
        assert_eq!(
            t.arrive(1, 4, 200), // 3 missing too
            vec![Miss(1, 1, None), Vol(1, 2, false)]
        );
        assert_eq!(t.tick(3199), vec![]);
        assert_eq!(t.tick(3200), vec![Miss(1, 3, None), Vol(1, 4, false)]);
    }

    #[test]
    fn a_pending_candidate_for_next_holds_later_volumes_for_gap_timeout_only() {
        let mut t = T::new(2, None);
        t.arrive(1, 0, 0);
        assert_eq!(t.seen(1, 1, 5), Seen::Candidate); // growing slowly
        // A known, incomplete file overrides the window: more than `window`
        // later volumes wait for it ...
        for i in 2..6 {
            assert_eq!(t.arrive(1, i, 10 * i as u64), vec![]);
        }
        assert_eq!(
            t.r.next_deadline(),
            Some(t.at(3020)),
            "gap_timeout after the oldest held"
        );
        assert_eq!(t.tick(3019), vec![]);
        // ... but only for gap_timeout: then the real-time stream goes on.
        assert_eq!(
            t.tick(3020),
            vec![
                Miss(1, 1, Some("still incomplete".into())),
                Vol(1, 2, false),
                Vol(1, 3, false),
                Vol(1, 4, false),
                Vol(1, 5, false)
            ]
        );
        // The slow file, once complete, is delivered late, not lost.
        assert_eq!(t.take(1, 1, 20_001), vec![Vol(1, 1, true)]);
    }

    #[test]
    fn a_pending_candidate_completing_in_time_releases_everything_in_order() {
        let mut t = T::new(2, None);
        t.arrive(1, 0, 0);
        assert_eq!(t.seen(1, 1, 5), Seen::Candidate);
        for i in 2..5 {
            assert_eq!(t.arrive(1, i, 10 * i as u64), vec![]);
        }
        assert_eq!(
            t.take(1, 1, 1500),
            vec![
                Vol(1, 1, false),
                Vol(1, 2, false),
                Vol(1, 3, false),
                Vol(1, 4, false)
            ]
        );
    }

    #[test]
    fn a_quarantined_only_candidate_becomes_missing_with_its_reason() {
        let mut t = T::new(2, None);
        t.arrive(1, 0, 0);
        t.seen(1, 1, 5);
        assert_eq!(t.arrive(1, 2, 10), vec![]);
        let out = conv(t.r.quarantined(k(1, 1), "garbage".into(), t.at(400)));
        assert_eq!(
            out,
            vec![Miss(1, 1, Some("garbage".into())), Vol(1, 2, false)]
        );
        // A good copy arriving later is taken normally, as late.
        assert_eq!(t.arrive(1, 1, 500), vec![Vol(1, 1, true)]);
    }

    #[test]
    fn a_quarantined_candidate_with_another_pending_waits_for_that_one() {
        let mut t = T::new(2, None);
        t.arrive(1, 0, 0);
        t.seen(1, 1, 5);
        t.seen(1, 1, 6); // a second copy
        t.arrive(1, 2, 10);
        assert_eq!(
            conv(t.r.quarantined(k(1, 1), "bad".into(), t.at(20))),
            vec![]
        );
        assert_eq!(t.take(1, 1, 30), vec![Vol(1, 1, false), Vol(1, 2, false)]);
    }

    #[test]
    fn quarantine_ahead_of_next_is_declared_when_next_reaches_it() {
        let mut t = T::new(3, None);
        t.arrive(1, 0, 0);
        t.seen(1, 2, 5);
        assert_eq!(
            conv(t.r.quarantined(k(1, 2), "nan".into(), t.at(6))),
            vec![]
        );
        assert_eq!(
            t.arrive(1, 1, 10),
            vec![Vol(1, 1, false), Miss(1, 2, Some("nan".into()))]
        );
    }

    #[test]
    fn a_removed_candidate_no_longer_holds_back() {
        let mut t = T::new(2, None);
        t.arrive(1, 0, 0);
        t.seen(1, 1, 1);
        t.arrive(1, 2, 2);
        assert_eq!(t.arrive(1, 3, 3), vec![]);
        assert_eq!(
            conv(t.r.removed(k(1, 1), t.at(4))),
            vec![Miss(1, 1, None), Vol(1, 2, false), Vol(1, 3, false)]
        );
    }

    #[test]
    fn duplicates_of_released_or_held_indices() {
        let mut t = T::new(2, None);
        t.arrive(1, 0, 0);
        assert_eq!(t.seen(1, 0, 1), Seen::Duplicate);
        t.arrive(1, 2, 2); // held
        assert_eq!(t.seen(1, 2, 3), Seen::Duplicate);
        // Two candidates decoding at once: the second one taken is the duplicate.
        t.seen(1, 1, 4);
        t.seen(1, 1, 4);
        assert_eq!(t.take(1, 1, 5), vec![Vol(1, 1, false), Vol(1, 2, false)]);
        assert_eq!(t.take(1, 1, 6), vec![Dup(1, 1)]);
        assert!(t.r.is_taken(k(1, 1)));
    }

    #[test]
    fn a_higher_run_flushes_and_ends_the_open_one() {
        let mut t = T::new(2, Some(6));
        t.arrive(1, 0, 0);
        t.arrive(1, 1, 1);
        t.arrive(1, 3, 2); // held, 2 missing so far
        t.seen(1, 4, 3); // seen, never completes
        assert_eq!(
            t.arrive(2, 0, 10),
            vec![
                Miss(1, 2, None),
                Vol(1, 3, false),
                Miss(1, 4, Some("still incomplete".into())),
                Miss(1, 5, None), // up to volumes_per_run
                End(1),
                Start(2),
                Vol(2, 0, false)
            ]
        );
        // Run 1's stragglers are still delivered, late.
        assert_eq!(t.take(1, 4, 20), vec![Vol(1, 4, true)]);
        assert_eq!(t.arrive(1, 9, 21), vec![Vol(1, 9, true)]);
        assert_eq!(t.seen(1, 3, 22), Seen::Duplicate);
        assert_eq!(t.r.open_run(), Some(2));
    }

    #[test]
    fn a_lower_unstarted_run_is_late() {
        let mut t = T::new(2, None);
        t.arrive(3, 0, 0);
        assert_eq!(t.arrive(2, 0, 1), vec![Vol(2, 0, true)]);
        assert_eq!(t.arrive(3, 1, 2), vec![Vol(3, 1, false)]);
    }

    #[test]
    fn volumes_per_run_ends_the_run_when_all_are_accounted_for() {
        let mut t = T::new(2, Some(3));
        t.first = 1;
        t.arrive(7, 1, 0);
        t.arrive(7, 3, 1);
        assert_eq!(
            t.arrive(7, 2, 2),
            vec![Vol(7, 2, false), Vol(7, 3, false), End(7)]
        );
        assert_eq!(t.r.open_run(), None);
        assert_eq!(t.arrive(7, 4, 3), vec![Vol(7, 4, true)]);
    }

    #[test]
    fn an_idle_run_ends_and_flush_declares_up_to_the_highest_seen() {
        let mut t = T::new(5, None);
        t.arrive(1, 0, 0);
        t.arrive(1, 2, 10);
        t.seen(1, 4, 20);
        assert_eq!(t.r.next_deadline(), Some(t.at(3010)));
        assert_eq!(t.tick(3010), vec![Miss(1, 1, None), Vol(1, 2, false)]);
        assert_eq!(t.r.next_deadline(), Some(t.at(60_020)));
        t.r.activity(1, t.at(5_000)); // volume 4's file grows
        assert_eq!(t.tick(60_020), vec![]);
        assert_eq!(t.r.next_deadline(), Some(t.at(65_000)));
        t.r.activity(1, t.at(20)); // back to the original idle start
        assert_eq!(t.tick(60_019), vec![]);
        assert_eq!(
            t.tick(60_020),
            vec![
                Miss(1, 3, None),
                Miss(1, 4, Some("still incomplete".into())),
                End(1)
            ]
        );
        assert_eq!(t.r.next_deadline(), None);
        assert_eq!(conv(t.r.flush()), vec![]);
    }

    #[test]
    fn volumes_below_the_first_index_are_late_not_lost() {
        let mut t = T::new(2, None);
        t.first = 1;
        assert_eq!(t.arrive(1, 1, 0), vec![Start(1), Vol(1, 1, false)]);
        assert_eq!(t.arrive(1, 0, 1), vec![Vol(1, 0, true)]);
    }

    #[test]
    fn the_first_volume_missing_is_detected_too() {
        let mut t = T::new(2, None);
        assert_eq!(t.arrive(1, 1, 0), vec![Start(1)]);
        assert_eq!(
            t.arrive(1, 2, 1),
            vec![Miss(1, 0, None), Vol(1, 1, false), Vol(1, 2, false)]
        );
    }

    #[test]
    fn a_resumed_session_continues_its_runs_where_they_stopped() {
        let mut t = T::new(2, Some(6));
        let taken = |ix: &[u32]| ix.iter().map(|&i| (i, format!("v{i}"))).collect();
        t.r.resume(
            &[
                ResumedRun {
                    run: 1,
                    first_index: 0,
                    taken: taken(&[0, 1, 2, 3, 4, 5]),
                    next: 6,
                    ended: true,
                },
                // Run 2 stopped after volume 2; volume 1 was declared missing.
                ResumedRun {
                    run: 2,
                    first_index: 0,
                    taken: taken(&[0, 2]),
                    next: 3,
                    ended: false,
                },
            ],
            t.t0,
        );
        assert_eq!(t.r.open_run(), Some(2));
        // A volume it had is a duplicate; the missing one comes late; the
        // open run goes on without starting again, and ends when complete.
        assert_eq!(t.seen(2, 2, 10), Seen::Duplicate);
        assert_eq!(t.arrive(2, 1, 10), vec![E::Vol(2, 1, true)]);
        assert_eq!(t.arrive(2, 3, 20), vec![E::Vol(2, 3, false)]);
        assert_eq!(t.arrive(2, 4, 30), vec![E::Vol(2, 4, false)]);
        assert_eq!(t.arrive(2, 5, 40), vec![E::Vol(2, 5, false), E::End(2)]);
        // The ended run's files are late, a new run starts as usual.
        assert_eq!(t.arrive(1, 6, 50), vec![E::Vol(1, 6, true)]);
        assert_eq!(t.arrive(3, 0, 60), vec![E::Start(3), E::Vol(3, 0, false)]);
    }
}
