//! Which reconstruction runs next when trials come faster than the
//! reconstruction worker finishes them.
//!
//! In: jobs as their betas arrive, and "finished" signals from the worker.
//! Out: the job to hand the worker now (if any) and every job dropped, with
//! the reason, so the stage can report each one. No clocks or threads in
//! here: the decode stage passes `now` in, which keeps the policy testable.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// What to do with a trial whose reconstruction cannot start at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconPolicy {
    /// Wait in order (up to `max_queue`, dropping the oldest beyond it).
    #[default]
    Queue,
    /// Keep only the newest waiting trial; an older waiting one is dropped.
    KeepLatest,
    /// Drop the new trial while the worker is busy.
    Skip,
}

/// Why a job was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// A newer trial replaced it (keep_latest).
    Superseded,
    /// The worker was busy when it arrived (skip).
    Busy,
    /// The queue was full; it was the oldest (queue).
    QueueFull,
    /// It waited longer than `max_wait` (any policy).
    Stale(Duration),
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DropReason::Superseded => {
                f.write_str("superseded by a newer trial (policy keep_latest)")
            }
            DropReason::Busy => f.write_str("the reconstruction worker was busy (policy skip)"),
            DropReason::QueueFull => {
                f.write_str("the reconstruction queue was full (max_queue); oldest dropped")
            }
            DropReason::Stale(w) => {
                write!(f, "waited {:.1} s, longer than max_wait", w.as_secs_f64())
            }
        }
    }
}

/// The policy's state: whether the worker is busy and who waits.
#[derive(Debug)]
pub struct Scheduler<J> {
    policy: ReconPolicy,
    max_queue: usize,
    max_wait: Option<Duration>,
    busy: bool,
    waiting: VecDeque<(J, Instant)>,
}

impl<J> Scheduler<J> {
    /// A scheduler with an idle worker. `max_queue` ≥ 1 bounds the queue.
    pub fn new(policy: ReconPolicy, max_queue: usize, max_wait: Option<Duration>) -> Self {
        Scheduler {
            policy,
            max_queue: max_queue.max(1),
            max_wait,
            busy: false,
            waiting: VecDeque::new(),
        }
    }

    /// Whether the worker has a job.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// Jobs waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// A job arrived at `now`. Returns the job to start now (when the
    /// worker was idle) and the jobs dropped.
    pub fn submit(&mut self, job: J, now: Instant) -> (Option<J>, Vec<(J, DropReason)>) {
        let mut dropped = Vec::new();
        if !self.busy {
            self.busy = true;
            return (Some(job), dropped);
        }
        match self.policy {
            ReconPolicy::Skip => dropped.push((job, DropReason::Busy)),
            ReconPolicy::KeepLatest => {
                dropped.extend(
                    self.waiting
                        .drain(..)
                        .map(|(j, _)| (j, DropReason::Superseded)),
                );
                self.waiting.push_back((job, now));
            }
            ReconPolicy::Queue => {
                self.waiting.push_back((job, now));
                while self.waiting.len() > self.max_queue {
                    if let Some((j, _)) = self.waiting.pop_front() {
                        dropped.push((j, DropReason::QueueFull));
                    }
                }
            }
        }
        (None, dropped)
    }

    /// The worker finished at `now`. Returns the next job to start and the
    /// jobs dropped for having waited too long.
    pub fn finished(&mut self, now: Instant) -> (Option<J>, Vec<(J, DropReason)>) {
        let mut dropped = Vec::new();
        while let Some((job, since)) = self.waiting.pop_front() {
            let waited = now.saturating_duration_since(since);
            match self.max_wait {
                Some(limit) if waited > limit => dropped.push((job, DropReason::Stale(waited))),
                _ => {
                    self.busy = true;
                    return (Some(job), dropped);
                }
            }
        }
        self.busy = false;
        (None, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[(u32, DropReason)]) -> Vec<u32> {
        v.iter().map(|(j, _)| *j).collect()
    }

    #[test]
    fn idle_worker_starts_at_once() {
        let now = Instant::now();
        for p in [
            ReconPolicy::Queue,
            ReconPolicy::KeepLatest,
            ReconPolicy::Skip,
        ] {
            let mut s = Scheduler::new(p, 4, None);
            assert_eq!(s.submit(1u32, now), (Some(1), vec![]));
            assert!(s.busy());
            assert_eq!(s.finished(now), (None, vec![]));
            assert!(!s.busy());
        }
    }

    #[test]
    fn queue_keeps_order_and_bounds() {
        let now = Instant::now();
        let mut s = Scheduler::new(ReconPolicy::Queue, 2, None);
        assert_eq!(s.submit(1u32, now).0, Some(1));
        assert_eq!(s.submit(2, now), (None, vec![]));
        assert_eq!(s.submit(3, now), (None, vec![]));
        let (start, dropped) = s.submit(4, now);
        assert_eq!(start, None);
        assert_eq!(dropped, vec![(2, DropReason::QueueFull)]);
        assert_eq!(s.finished(now).0, Some(3));
        assert_eq!(s.finished(now).0, Some(4));
        assert_eq!(s.finished(now).0, None);
    }

    #[test]
    fn keep_latest_replaces_the_waiting_one() {
        let now = Instant::now();
        let mut s = Scheduler::new(ReconPolicy::KeepLatest, 8, None);
        s.submit(1u32, now);
        assert!(s.submit(2, now).1.is_empty());
        let (_, d) = s.submit(3, now);
        assert_eq!(ids(&d), vec![2]);
        assert_eq!(d[0].1, DropReason::Superseded);
        let (_, d) = s.submit(4, now);
        assert_eq!(ids(&d), vec![3]);
        assert_eq!(s.finished(now).0, Some(4));
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn skip_drops_while_busy_only() {
        let now = Instant::now();
        let mut s = Scheduler::new(ReconPolicy::Skip, 8, None);
        s.submit(1u32, now);
        let (start, d) = s.submit(2, now);
        assert_eq!(start, None);
        assert_eq!(d, vec![(2, DropReason::Busy)]);
        assert_eq!(s.finished(now).0, None);
        assert_eq!(s.submit(3, now).0, Some(3));
    }

    #[test]
    fn stale_jobs_are_dropped_and_reported() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(ReconPolicy::Queue, 8, Some(Duration::from_secs(2)));
        s.submit(1u32, t0);
        s.submit(2, t0);
        s.submit(3, t0 + Duration::from_secs(2));
        let (start, d) = s.finished(t0 + Duration::from_secs(3));
        assert_eq!(start, Some(3));
        assert_eq!(ids(&d), vec![2]);
        assert!(matches!(d[0].1, DropReason::Stale(w) if w == Duration::from_secs(3)));
    }
}
