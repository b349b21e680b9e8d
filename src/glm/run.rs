//! One run's trials: when each is due, and estimating it then.
//!
//! In: the run's frames in order (with explicit gaps and late arrivals) and
//! its events (from an events table at run start, or live, one per trial).
//! Out: [`TrialOutcome`]s — each trial estimated as soon as the frame at
//! `onset + delay` has been settled (received or declared missing), later
//! if there are not yet enough frames for its model; at the end of the run,
//! every trial that was never estimated, with the reason.
//!
//! The live GLM stage and the offline `boldstream glm` command both drive
//! this, so the betas a session produces are the ones the parity script
//! checks against nilearn.

use std::time::Instant;

use super::design::Stimulus;
use super::model::{Estimate, EstimateError, FrameSource, ModelSpec, RunModel};
use crate::glm::buffer::RunBuffer;
use crate::types::events::Event;

/// Scheduling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Seconds after a trial's onset at which it is estimated (real-time
    /// MindEye: 7.5 s at TR 1.5 s).
    pub delay: f64,
    /// Residual degrees of freedom required before a trial is estimated.
    pub min_dof: usize,
    /// Trial types modelled (as "reference") but never estimated, e.g. blanks.
    pub skip_trial_types: Vec<String>,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            delay: 7.5,
            min_dof: 5,
            skip_trial_types: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Status {
    Pending,
    Done,
    Skipped,
}

#[derive(Debug, Clone)]
struct TrialState {
    event: Event,
    trigger: usize,
    status: Status,
    /// Why the last attempt did not produce a beta (for the end-of-run note).
    last_error: Option<EstimateError>,
}

/// Why a trial got no beta. Typed, so that "the run ended first" is told
/// apart from a failed estimate without reading the message.
#[derive(Debug, Clone, PartialEq)]
pub enum NotEstimated {
    /// The run ended before the trial's estimation frame was reached.
    RunEnded {
        /// The last frame received, if any.
        last_frame: Option<usize>,
        /// The scheduling delay after onset, seconds.
        delay: f64,
        /// Onset + delay, seconds.
        due_at: f64,
        /// The frame it was waiting for.
        trigger: usize,
    },
    /// The estimate failed (or never became possible), with the model's reason.
    Failed(Option<EstimateError>),
}

impl std::fmt::Display for NotEstimated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotEstimated::RunEnded {
                last_frame,
                delay,
                due_at,
                trigger,
            } => write!(
                f,
                "not estimated: the run ended at frame {} before onset + {delay:.1} s = {due_at:.1} s (frame {trigger}) was reached",
                last_frame.map_or_else(|| "none".to_string(), |l| l.to_string()),
            ),
            NotEstimated::Failed(Some(e)) => write!(f, "not estimated: {e}"),
            NotEstimated::Failed(None) => f.write_str("not estimated: no estimate was possible"),
        }
    }
}

/// What happened to one trial.
#[derive(Debug, Clone)]
pub struct TrialOutcome {
    /// Trial number within the run (order of registration).
    pub trial: usize,
    /// Its event.
    pub event: Event,
    /// Position of the frame whose arrival made it due.
    pub trigger: usize,
    /// The estimate, or why there is none.
    pub result: Result<Estimate, NotEstimated>,
    /// Estimated after its planned moment (too few frames at first).
    pub delayed: bool,
    /// Time spent estimating, seconds.
    pub compute_seconds: f64,
    /// Position of the last frame received when it was estimated.
    pub last_position: Option<usize>,
}

/// A run's ring buffer seen by position (volume index − the run's first
/// index), as the model reads frames.
pub struct RingView<'a> {
    /// The run's ring.
    pub ring: &'a RunBuffer,
    /// Index of the run's first volume.
    pub first_index: u32,
}

impl FrameSource for RingView<'_> {
    fn frame(&self, position: usize) -> Option<&[f32]> {
        let index = u32::try_from(position)
            .ok()?
            .checked_add(self.first_index)?;
        // Recent frames are at the back; that is where lookups go.
        self.ring
            .frames_rev()
            .find(|f| f.index == index)
            .filter(|f| f.present)
            .map(|f| f.data.as_slice())
    }
}

/// The GLM of one run. Frames are read from the run's ring buffer, which
/// the caller keeps (and updates before each call).
pub struct RunGlm {
    model: RunModel,
    schedule: Schedule,
    trials: Vec<TrialState>,
    /// Positions below this are settled (received or declared missing).
    next: usize,
    tr: f64,
    slice_time_ref: f64,
}

impl RunGlm {
    /// A run of `planned` frames with `voxels` masked voxels and the events
    /// known at its start.
    pub fn new(
        spec: ModelSpec,
        planned: usize,
        voxels: usize,
        schedule: Schedule,
        events: &[Event],
    ) -> RunGlm {
        let (tr, slice_time_ref) = (spec.design.tr, spec.design.slice_time_ref);
        let mut run = RunGlm {
            model: RunModel::new(spec, planned, voxels),
            schedule,
            trials: Vec::new(),
            next: 0,
            tr,
            slice_time_ref,
        };
        let none: std::collections::BTreeMap<usize, Vec<f32>> = Default::default();
        for e in events {
            run.add_event(e.clone(), &none);
        }
        run
    }

    /// The run's model (for per-volume feedback).
    pub fn model(&self) -> &RunModel {
        &self.model
    }

    /// Trials registered.
    pub fn trials(&self) -> usize {
        self.trials.len()
    }

    /// Position whose frame time is the first at or after `t` seconds.
    fn position_at(&self, t: f64) -> usize {
        let p = (t / self.tr - self.slice_time_ref - 1e-9).ceil();
        if p > 0.0 { p as usize } else { 0 }
    }

    /// Register a trial (events table or live message); returns its number.
    /// A trial whose moment has already passed is estimated at the next
    /// frame (its data are in).
    pub fn add_event(&mut self, event: Event, frames: &dyn FrameSource) -> usize {
        let stimulus = Stimulus {
            onset: event.onset,
            duration: event.duration,
            value: event.modulation,
        };
        let k = self.model.add_trial(stimulus, frames);
        let skip = self.schedule.skip_trial_types.contains(&event.trial_type);
        if skip {
            self.model.retire_trial(k);
        }
        self.trials.push(TrialState {
            trigger: self.position_at(event.onset + self.schedule.delay),
            event,
            status: if skip {
                Status::Skipped
            } else {
                Status::Pending
            },
            last_error: None,
        });
        k
    }

    /// Estimate every pending trial whose moment has come.
    fn due(&mut self, frames: &dyn FrameSource) -> Vec<TrialOutcome> {
        let mut out = Vec::new();
        let settled = self.next;
        for k in 0..self.trials.len() {
            let t = &self.trials[k];
            if t.status != Status::Pending || t.trigger >= settled {
                continue;
            }
            let start = Instant::now();
            match self.model.estimate(k, self.schedule.min_dof, frames) {
                Ok(est) => {
                    let delayed = settled > t.trigger + 1;
                    let outcome = TrialOutcome {
                        trial: k,
                        event: t.event.clone(),
                        trigger: t.trigger,
                        result: Ok(est),
                        delayed,
                        compute_seconds: start.elapsed().as_secs_f64(),
                        last_position: self.model.last_position(),
                    };
                    self.trials[k].status = Status::Done;
                    self.model.retire_trial(k);
                    out.push(outcome);
                }
                // Not enough frames yet, or the response has not started in
                // the data: wait for more.
                Err(e @ (EstimateError::TooFewFrames { .. } | EstimateError::NoResponse)) => {
                    self.trials[k].last_error = Some(e);
                }
                Err(e) => {
                    self.trials[k].status = Status::Skipped;
                    self.model.retire_trial(k);
                    out.push(TrialOutcome {
                        trial: k,
                        event: self.trials[k].event.clone(),
                        trigger: self.trials[k].trigger,
                        result: Err(NotEstimated::Failed(Some(e))),
                        delayed: false,
                        compute_seconds: start.elapsed().as_secs_f64(),
                        last_position: self.model.last_position(),
                    });
                }
            }
        }
        out
    }

    /// A frame arrived (and is already in `frames`). In-order frames
    /// advance the schedule and return the trials now estimated; late frames
    /// only join the sums.
    pub fn frame(
        &mut self,
        position: usize,
        data: &[f32],
        motion: [f64; 6],
        late: bool,
        frames: &dyn FrameSource,
    ) -> Vec<TrialOutcome> {
        self.model.add_frame(position, data, motion, frames);
        if late || position < self.next {
            return Vec::new();
        }
        self.next = position + 1;
        self.due(frames)
    }

    /// A frame was declared missing: the schedule moves on without it.
    pub fn missing(&mut self, position: usize, frames: &dyn FrameSource) -> Vec<TrialOutcome> {
        if position < self.next {
            return Vec::new();
        }
        self.next = position + 1;
        self.due(frames)
    }

    /// The run ended: every trial never estimated, with the reason.
    pub fn finish(&mut self) -> Vec<TrialOutcome> {
        let last = self.model.last_position();
        let mut out = Vec::new();
        for k in 0..self.trials.len() {
            if self.trials[k].status != Status::Pending {
                continue;
            }
            let t = &self.trials[k];
            let due_at = t.event.onset + self.schedule.delay;
            let reason = if t.trigger >= self.next {
                NotEstimated::RunEnded {
                    last_frame: last,
                    delay: self.schedule.delay,
                    due_at,
                    trigger: t.trigger,
                }
            } else {
                NotEstimated::Failed(t.last_error.clone())
            };
            out.push(TrialOutcome {
                trial: k,
                event: t.event.clone(),
                trigger: t.trigger,
                result: Err(reason),
                delayed: false,
                compute_seconds: 0.0,
                last_position: last,
            });
            self.trials[k].status = Status::Skipped;
            self.model.retire_trial(k);
        }
        out
    }
}
