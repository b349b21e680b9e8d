//! The GLM stage of the pipeline.
//!
//! In: [`PipelineEvent`]s from realign (volumes in order, gaps, late
//! volumes, run starts and ends) and [`LiveEvent`]s from the stimulus
//! program. Out: the same events passed on, plus a [`TrialBeta`] for every
//! trial as soon as its window is in (z-scored, repeats averaged), a
//! `TrialSkipped` for every trial that will not get one, per-volume
//! neurofeedback values, and notices (restarted runs, disabled outputs).
//! The stage owns the runs' ring buffers of realigned voxels.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::feedback::{self, Series};
use super::model::ModelSpec;
use super::normalize::{Normalizer, read_stats};
use super::run::{NotEstimated, RingView, RunGlm, TrialOutcome};
use super::spec::GlmConfig;
use crate::glm::buffer::{BufferConfig, RunBuffers};
use crate::glm::live::LiveEvent;
use crate::types::events::Event;
use crate::types::mask::SessionMask;
use crate::types::messages::{FeedbackSample, IngestEvent, PipelineEvent, TrialBeta, VolumeKey};

struct RunState {
    glm: Option<RunGlm>,
    /// The run's events table, kept until the model can be built (the mask
    /// is known only once the first volume is realigned).
    events: Vec<Event>,
    ended: bool,
    first_index: u32,
    warmup: bool,
    schedule: Option<usize>,
    /// Positions settled so far (received or declared missing): how far
    /// the run got.
    reached: u32,
}

/// The stage's state.
pub struct GlmStage {
    cfg: GlmConfig,
    spec: Option<ModelSpec>,
    volumes_per_run: Option<u32>,
    schedules: Vec<(PathBuf, Vec<Event>)>,
    buffers: RunBuffers,
    mask: Option<Arc<SessionMask>>,
    runs: BTreeMap<u32, RunState>,
    open_run: Option<u32>,
    runs_started: usize,
    next_schedule: usize,
    /// The last run's schedule, when that run ended before all its trials
    /// could be estimated: the next run restarts it.
    restart: Option<(u32, Option<usize>)>,
    normalizer: Option<Normalizer>,
    feedback: Vec<Series>,
    queued_live: Vec<LiveEvent>,
    /// Outputs a resumed session's replay left to send before any new input.
    replayed: Vec<PipelineEvent>,
}

impl GlmStage {
    /// Prepare the stage; bad settings or events tables are errors here,
    /// before the session starts.
    pub fn new(
        cfg: GlmConfig,
        buffers: BufferConfig,
        volumes_per_run: Option<u32>,
    ) -> Result<GlmStage, String> {
        let schedules = cfg.load_events()?;
        let spec = cfg.model_spec();
        Ok(GlmStage {
            spec,
            volumes_per_run,
            schedules,
            buffers: RunBuffers::new(buffers),
            mask: None,
            runs: BTreeMap::new(),
            open_run: None,
            runs_started: 0,
            next_schedule: 0,
            restart: None,
            normalizer: None,
            feedback: Vec::new(),
            queued_live: Vec::new(),
            replayed: Vec::new(),
            cfg,
        })
    }

    /// Send `outputs` (what a resumed session's store lacks) downstream
    /// first, before any new input.
    pub fn send_first(&mut self, outputs: Vec<PipelineEvent>) {
        self.replayed = outputs;
    }

    fn planned(&self, events: &[Event]) -> usize {
        let from_events = self.spec.as_ref().and_then(|s| {
            events
                .iter()
                .map(|e| e.onset + e.duration)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
                .map(|end| ((end + 32.0) / s.design.tr).ceil() as usize + 1)
        });
        self.cfg
            .planned_volumes
            .or(self.volumes_per_run.map(|v| v as usize))
            .or(from_events)
            .unwrap_or(300)
            .max(10)
    }

    fn start_run(&mut self, run: u32, first_index: u32, emit: &mut dyn FnMut(PipelineEvent)) {
        self.runs_started += 1;
        self.open_run = Some(run);
        let schedule = match self.restart.take() {
            Some((previous, schedule)) => {
                let what = schedule.and_then(|s| self.schedules.get(s)).map_or_else(
                    || "its live events".to_string(),
                    |(p, _)| p.display().to_string(),
                );
                emit(PipelineEvent::Notice(format!(
                    "run {run} starts after run {previous} ended early: treated as a restart of run {previous}'s schedule ({what}); run {previous}'s betas are kept"
                )));
                schedule
            }
            None if self.next_schedule < self.schedules.len() => {
                self.next_schedule += 1;
                Some(self.next_schedule - 1)
            }
            None => None,
        };
        let events: Vec<Event> = schedule
            .and_then(|s| self.schedules.get(s))
            .map(|(_, e)| e.clone())
            .unwrap_or_default();
        if schedule.is_none() && !self.schedules.is_empty() {
            emit(PipelineEvent::Notice(format!(
                "run {run}: no events table left ({} configured, all used); betas only from live events",
                self.schedules.len()
            )));
        }
        let warmup = self.runs_started <= self.cfg.warmup_runs;
        for s in &mut self.feedback {
            s.reset();
        }
        self.runs.insert(
            run,
            RunState {
                glm: None,
                events,
                ended: false,
                first_index,
                warmup,
                schedule,
                reached: 0,
            },
        );
        self.build_models();
        // Live trials that came before the run was seen belong to it.
        for le in std::mem::take(&mut self.queued_live) {
            self.live(le, emit);
        }
    }

    /// Build the model of every open run that has none yet (it needs both
    /// the TR and the mask).
    fn build_models(&mut self) {
        let (Some(spec), Some(mask)) = (&self.spec, &self.mask) else {
            return;
        };
        let planned: Vec<(u32, usize)> = self
            .runs
            .iter()
            .filter(|(_, s)| s.glm.is_none() && !s.ended)
            .map(|(r, s)| (*r, self.planned(&s.events)))
            .collect();
        for (run, planned) in planned {
            if let Some(state) = self.runs.get_mut(&run) {
                state.glm = Some(RunGlm::new(
                    spec.clone(),
                    planned,
                    mask.len(),
                    self.cfg.schedule(),
                    &state.events,
                ));
            }
        }
    }

    fn reference(&mut self, mask: Arc<SessionMask>, emit: &mut dyn FnMut(PipelineEvent)) {
        let v = mask.len();
        self.normalizer = Some(match &self.cfg.zscore_stats {
            Some(path) => match read_stats(path, v) {
                Ok(stats) => {
                    Normalizer::fixed(stats, self.cfg.zscore_epsilon, self.cfg.average_repeats)
                }
                Err(e) => {
                    tracing::error!(
                        "calibration statistics unusable, z-scoring against the session instead: {e}"
                    );
                    emit(PipelineEvent::Notice(format!(
                        "calibration statistics unusable ({e}); z-scoring against the session's betas instead"
                    )));
                    Normalizer::session(v, self.cfg.zscore_epsilon, self.cfg.average_repeats)
                }
            },
            None => Normalizer::session(v, self.cfg.zscore_epsilon, self.cfg.average_repeats),
        });
        match feedback::load(&self.cfg.feedback, &mask) {
            Ok(series) => self.feedback = series,
            Err(e) => {
                tracing::error!("neurofeedback outputs disabled: {e}");
                emit(PipelineEvent::Notice(format!(
                    "neurofeedback outputs disabled: {e}"
                )));
            }
        }
        self.mask = Some(mask);
        self.build_models();
    }

    /// Turn trial outcomes into events.
    fn outcomes(
        &mut self,
        run: u32,
        outcomes: Vec<TrialOutcome>,
        trigger_seen: Option<Instant>,
        emit: &mut dyn FnMut(PipelineEvent),
    ) {
        let Some(state) = self.runs.get(&run) else {
            return;
        };
        let (first_index, warmup) = (state.first_index, state.warmup);
        for o in outcomes {
            match o.result {
                Ok(est) => {
                    let start = Instant::now();
                    let raw: Arc<[f32]> = est.beta.into();
                    let Some(norm) = self
                        .normalizer
                        .as_mut()
                        .and_then(|n| n.push(&raw, o.event.stim_id.as_deref()))
                    else {
                        continue;
                    };
                    let ready = Instant::now();
                    emit(PipelineEvent::Beta(Box::new(TrialBeta {
                        run,
                        trial: o.trial,
                        trigger: VolumeKey {
                            run,
                            index: o.trigger as u32 + first_index,
                        },
                        event: o.event,
                        frames: est.frames,
                        regressors: est.regressors,
                        delayed: o.delayed,
                        warmup,
                        raw,
                        z: norm.z,
                        decode: norm.decode,
                        presentations: norm.presentations,
                        compute_seconds: o.compute_seconds + (ready - start).as_secs_f64(),
                        trigger_seen,
                        ready,
                        ready_wall: SystemTime::now(),
                    })));
                }
                Err(reason) => {
                    tracing::warn!("run {run} trial {}: {reason}", o.trial);
                    emit(PipelineEvent::TrialSkipped {
                        run,
                        trial: o.trial,
                        event: o.event,
                        reason: reason.to_string(),
                    });
                }
            }
        }
    }

    fn position(&self, key: VolumeKey) -> Option<usize> {
        let state = self.runs.get(&key.run)?;
        key.index.checked_sub(state.first_index).map(|p| p as usize)
    }

    /// A live trial event.
    pub fn live(&mut self, le: LiveEvent, emit: &mut dyn FnMut(PipelineEvent)) {
        let run = le.run.or(self.open_run);
        let Some(run) = run.filter(|r| self.runs.contains_key(r)) else {
            if le.run.is_none() || le.run > self.open_run {
                // The run has not started yet: it will get the trial.
                self.queued_live.push(le);
            } else {
                emit(PipelineEvent::Notice(format!(
                    "live trial from {} for run {:?} ignored: that run is over",
                    le.peer, le.run
                )));
            }
            return;
        };
        let Some(state) = self.runs.get_mut(&run) else {
            return;
        };
        let first_index = state.first_index;
        match (state.glm.as_mut(), self.buffers.run(run)) {
            (Some(glm), ring) => {
                let empty;
                let view = match ring {
                    Some(ring) => RingView { ring, first_index },
                    None => {
                        empty = crate::glm::buffer::RunBuffer::new(run, 1, 0);
                        RingView {
                            ring: &empty,
                            first_index,
                        }
                    }
                };
                let k = glm.add_event(le.event, &view);
                tracing::info!("run {run}: live trial {k} from {}", le.peer);
            }
            (None, _) if self.spec.is_some() && !state.ended => {
                // The model is built once the first volume is realigned.
                state.events.push(le.event);
            }
            (None, _) => emit(PipelineEvent::Notice(format!(
                "live trial for run {run} ignored: no GLM (set [glm] tr) or the run is over"
            ))),
        }
    }

    /// One pipeline event.
    pub fn handle(&mut self, ev: PipelineEvent, emit: &mut dyn FnMut(PipelineEvent)) {
        self.buffers.handle(&ev);
        match ev {
            PipelineEvent::ReferenceReady { ref mask, .. } => {
                let mask = mask.clone();
                emit(ev);
                self.reference(mask, emit);
            }
            PipelineEvent::Ingest(IngestEvent::RunStarted { run, first_index }) => {
                emit(ev);
                self.start_run(run, first_index, emit);
            }
            PipelineEvent::Realigned(r) => {
                let (key, late, seen, params) = (r.key, r.late, r.ingest.first_seen, r.params.0);
                let masked = r.masked.clone();
                emit(PipelineEvent::Realigned(r));
                self.frame(key, &masked, params, late, seen, emit);
            }
            PipelineEvent::RealignFailed { key, .. }
            | PipelineEvent::Ingest(IngestEvent::Missing { key, .. }) => {
                emit(ev);
                self.missing(key, emit);
            }
            PipelineEvent::Ingest(IngestEvent::RunEnded { run }) => {
                self.end_run(run, emit);
                emit(ev);
            }
            other => emit(other),
        }
    }

    fn frame(
        &mut self,
        key: VolumeKey,
        masked: &[f32],
        params: [f64; 6],
        late: bool,
        seen: Instant,
        emit: &mut dyn FnMut(PipelineEvent),
    ) {
        let Some(pos) = self.position(key) else {
            return;
        };
        let Some(state) = self.runs.get_mut(&key.run) else {
            return;
        };
        state.reached = state.reached.max(pos as u32 + 1);
        let first_index = state.first_index;
        let (Some(glm), Some(ring)) = (state.glm.as_mut(), self.buffers.run(key.run)) else {
            return;
        };
        let view = RingView { ring, first_index };
        let outcomes = glm.frame(pos, masked, params, late, &view);
        let mut values = Vec::new();
        if !late {
            for s in &mut self.feedback {
                if let Some(v) = s.value(glm.model(), &view, self.cfg.min_dof) {
                    values.push(v);
                }
            }
        }
        self.outcomes(key.run, outcomes, Some(seen), emit);
        if !values.is_empty() {
            emit(PipelineEvent::Feedback(Box::new(FeedbackSample {
                key,
                values,
            })));
        }
    }

    fn missing(&mut self, key: VolumeKey, emit: &mut dyn FnMut(PipelineEvent)) {
        let Some(pos) = self.position(key) else {
            return;
        };
        let Some(state) = self.runs.get_mut(&key.run) else {
            return;
        };
        state.reached = state.reached.max(pos as u32 + 1);
        let first_index = state.first_index;
        let (Some(glm), Some(ring)) = (state.glm.as_mut(), self.buffers.run(key.run)) else {
            return;
        };
        let outcomes = glm.missing(pos, &RingView { ring, first_index });
        self.outcomes(key.run, outcomes, None, emit);
    }

    fn end_run(&mut self, run: u32, emit: &mut dyn FnMut(PipelineEvent)) {
        let Some(mut state) = self.runs.remove(&run) else {
            return;
        };
        if self.open_run == Some(run) {
            self.open_run = None;
        }
        let outcomes = state.glm.as_mut().map(RunGlm::finish).unwrap_or_default();
        let cut_short = outcomes
            .iter()
            .any(|o| matches!(o.result, Err(NotEstimated::RunEnded { .. })))
            || self.volumes_per_run.is_some_and(|v| state.reached < v);
        self.runs.insert(
            run,
            RunState {
                glm: None,
                ended: true,
                ..state
            },
        );
        self.outcomes(run, outcomes, None, emit);
        if let Some(s) = self.runs.get_mut(&run) {
            s.glm = None;
            if cut_short {
                self.restart = Some((run, s.schedule));
            }
        }
    }
}

/// The GLM's inputs: the realigned stream, and trials announced live.
pub enum GlmInput {
    /// From realign.
    Event(PipelineEvent),
    /// From the live-events listener.
    Live(LiveEvent),
}

impl From<PipelineEvent> for GlmInput {
    fn from(e: PipelineEvent) -> Self {
        GlmInput::Event(e)
    }
}

impl From<LiveEvent> for GlmInput {
    fn from(e: LiveEvent) -> Self {
        GlmInput::Live(e)
    }
}

impl crate::stage::Stage for GlmStage {
    type Input = GlmInput;
    type Output = PipelineEvent;
    /// The ring buffers as they were at the end (for the pipeline's summary).
    type Summary = RunBuffers;
    const NAME: &'static str = "glm";

    fn start(&mut self, emit: &mut crate::stage::Emit<'_, PipelineEvent>) {
        for out in std::mem::take(&mut self.replayed) {
            emit(out);
        }
    }

    fn handle(&mut self, input: GlmInput, emit: &mut crate::stage::Emit<'_, PipelineEvent>) {
        match input {
            GlmInput::Event(e) => self.handle(e, emit),
            GlmInput::Live(e) => self.live(e, emit),
        }
    }

    fn finish(self, _emit: &mut crate::stage::Emit<'_, PipelineEvent>) -> RunBuffers {
        self.buffers
    }
}
