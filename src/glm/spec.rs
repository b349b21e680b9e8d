//! The GLM's settings — `[glm]` in the config — and the one place they
//! become a model and a schedule. The live stage, the offline `boldstream
//! glm` command and calibration all build their models from a
//! [`GlmConfig`], so the betas a session produces, the ones calibration
//! fits on and the ones the parity script checks come from one spec.

use std::path::PathBuf;

use super::design::DesignSpec;
use super::feedback::FeedbackConfig;
use super::hrf::HrfModel;
use super::model::{DriftBasis, ModelSpec, NoiseModel, SignalScaling};
use super::run::Schedule;
use crate::formats::events_tsv::read_events;
use crate::types::events::Event;

/// `[glm]` settings.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GlmConfig {
    /// Repetition time in seconds; required for betas and feedback.
    pub tr: Option<f64>,
    /// nilearn's `slice_time_ref` (0 = frame time at the start of the TR).
    pub slice_time_ref: f64,
    /// `glover` or `spm`.
    pub hrf: HrfModel,
    /// Cosine drift cut-off, Hz.
    pub high_pass: f64,
    /// `ar1` (nilearn's default) or `ols`.
    pub noise_model: NoiseModel,
    /// `percent` (nilearn's default `signal_scaling=0`) or `none`.
    pub signal_scaling: SignalScaling,
    /// `run` (the planned run's cosine basis, cut to the span so far) or
    /// `frames_so_far` (nilearn's basis for the frames so far, rebuilt per
    /// trial: real-time MindEye's betas, which refit nilearn each trial).
    pub drift_basis: DriftBasis,
    /// Seconds after a trial's onset at which it is estimated.
    pub delay: f64,
    /// Residual degrees of freedom a trial's model must have.
    pub min_dof: usize,
    /// Trial types modelled but never estimated (e.g. `["blank"]`).
    pub skip_trial_types: Vec<String>,
    /// Events tables, one per run in the order runs start. A run that
    /// starts after the previous one ended early reuses its table (the
    /// scan was restarted).
    pub events: Vec<PathBuf>,
    /// Frames the design is built for; default: ingest's `volumes_per_run`,
    /// else the events' span, else 300 (grown automatically if exceeded).
    pub planned_volumes: Option<usize>,
    /// The first this many runs are warm-up: betas are computed, stored and
    /// counted in the statistics, but not sent to decoding.
    pub warmup_runs: usize,
    /// Calibration statistics for z-scoring (`.npy`, shape (2, voxels):
    /// mean, std); default: the session's betas so far.
    pub zscore_stats: Option<PathBuf>,
    /// z-score against the session's own betas even when the decoder's
    /// subject folder has calibration statistics (which are used by
    /// default, so live betas are scaled as the adapter's training betas).
    pub session_zscore: bool,
    /// Added to the standard deviation when z-scoring.
    pub zscore_epsilon: f64,
    /// Average an image's repeated presentations for decoding.
    pub average_repeats: bool,
    /// Listen for live trial events here (`host:port`, TCP and UDP).
    pub live_events: Option<String>,
    /// Per-volume neurofeedback outputs.
    pub feedback: FeedbackConfig,
}

impl Default for GlmConfig {
    fn default() -> Self {
        GlmConfig {
            tr: None,
            slice_time_ref: 0.0,
            hrf: HrfModel::Glover,
            high_pass: 0.01,
            noise_model: NoiseModel::Ar1,
            signal_scaling: SignalScaling::Percent,
            drift_basis: DriftBasis::Run,
            delay: 7.5,
            min_dof: 5,
            skip_trial_types: Vec::new(),
            events: Vec::new(),
            planned_volumes: None,
            warmup_runs: 0,
            zscore_stats: None,
            session_zscore: false,
            zscore_epsilon: 1e-6,
            average_repeats: false,
            live_events: None,
            feedback: FeedbackConfig::default(),
        }
    }
}

impl GlmConfig {
    /// Whether anything asks for the GLM.
    pub fn wanted(&self) -> bool {
        !self.events.is_empty()
            || self.live_events.is_some()
            || !self.feedback.rois.is_empty()
            || !self.feedback.decoders.is_empty()
    }

    /// The model settings, when a TR is given.
    pub fn model_spec(&self) -> Option<ModelSpec> {
        Some(ModelSpec {
            design: DesignSpec {
                tr: self.tr?,
                slice_time_ref: self.slice_time_ref,
                hrf: self.hrf,
                high_pass: self.high_pass,
                ..DesignSpec::default()
            },
            noise: self.noise_model,
            scaling: self.signal_scaling,
            ar_bins: 100,
            drift_basis: self.drift_basis,
        })
    }

    /// When each trial is estimated.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            delay: self.delay,
            min_dof: self.min_dof,
            skip_trial_types: self.skip_trial_types.clone(),
        }
    }

    /// Read and check every events table; errors name the file and line.
    pub fn load_events(&self) -> Result<Vec<(PathBuf, Vec<Event>)>, String> {
        if self.wanted() && !self.tr.is_some_and(|t| t.is_finite() && t > 0.0) {
            return Err(
                "[glm] needs `tr` (the repetition time in seconds) for betas or feedback".into(),
            );
        }
        if !(self.delay.is_finite() && self.delay >= 0.0) {
            return Err(format!(
                "[glm] delay = {}: must be a non-negative number of seconds",
                self.delay
            ));
        }
        if !(0.0..=1.0).contains(&self.slice_time_ref) {
            return Err(format!(
                "[glm] slice_time_ref = {}: must be between 0 and 1",
                self.slice_time_ref
            ));
        }
        self.events
            .iter()
            .map(|p| {
                read_events(p)
                    .map(|e| (p.clone(), e))
                    .map_err(|e| e.to_string())
            })
            .collect()
    }
}
