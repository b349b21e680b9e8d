//! The typed messages stages send each other over channels.
//!
//! Each stage owns its state; what crosses a thread boundary is one of these
//! values. Timestamps are [`Instant`]s for latency arithmetic plus a wall-clock
//! [`SystemTime`] where a figure is written to disk.

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use crate::types::volume::Volume;

/// Which volume of the session: run number and volume index, as the file
/// name (or header) gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeKey {
    /// Run (series) number.
    pub run: u32,
    /// Volume index within the run, as numbered by the exporter.
    pub index: u32,
}

impl std::fmt::Display for VolumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "run {} volume {}", self.run, self.index)
    }
}

/// When ingest saw and finished a volume's file.
#[derive(Debug, Clone, Copy)]
pub struct IngestTiming {
    /// Wall-clock time the file was first noticed.
    pub first_seen_wall: SystemTime,
    /// Monotonic time the file was first noticed.
    pub first_seen: Instant,
    /// When the file decoded in full.
    pub decoded: Instant,
    /// When ingest released it downstream (after any re-ordering wait).
    pub released: Instant,
    /// Decode attempts (1 when the file was complete at first sight).
    pub attempts: u32,
    /// Time spent in the last, successful decode, in seconds.
    pub decode_seconds: f64,
}

/// A volume that decoded in full and passed validation.
#[derive(Debug, Clone)]
pub struct IngestedVolume {
    /// Run and index.
    pub key: VolumeKey,
    /// Where it was read from.
    pub path: PathBuf,
    /// The voxels.
    pub volume: Volume,
    /// Ingest timings.
    pub timing: IngestTiming,
    /// True when it arrived after its index had been declared missing.
    pub late: bool,
    /// When each slice (k) was acquired, seconds from the volume's first
    /// slice, as the DICOM header says (dcm2niix's `SliceTiming`); `None`
    /// for NIfTI input.
    pub slice_timing: Option<std::sync::Arc<[f64]>>,
}

impl IngestedVolume {
    /// A volume handed over now, outside the watcher (offline tools,
    /// calibration, tests): every timing is this instant, one attempt.
    pub fn now(key: VolumeKey, path: PathBuf, volume: Volume) -> IngestedVolume {
        let now = std::time::Instant::now();
        IngestedVolume {
            key,
            path,
            volume,
            timing: IngestTiming {
                first_seen_wall: std::time::SystemTime::now(),
                first_seen: now,
                decoded: now,
                released: now,
                attempts: 1,
                decode_seconds: 0.0,
            },
            late: false,
            slice_timing: None,
        }
    }
}

/// Why ingest gave up waiting for a volume index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissingReason {
    /// No file for this index arrived within the re-ordering window.
    NotReceived,
    /// The only file for this index was quarantined (reason attached).
    Quarantined(String),
    /// A file for this index was still incomplete when the wait for it ran
    /// out; later volumes went on, and it is delivered late if it completes.
    StillIncomplete,
}

/// Everything ingest reports downstream, in the order it happens.
#[derive(Debug, Clone)]
pub enum IngestEvent {
    /// A new run started (its first volume is about to follow).
    RunStarted {
        /// Run number.
        run: u32,
        /// Index of the run's first volume (0 or 1, by exporter): volume
        /// `first_index` is at time 0 of the run.
        first_index: u32,
    },
    /// A good volume, released in index order within its run (or late).
    Volume(Box<IngestedVolume>),
    /// An index that will not be filled unless a late file arrives.
    Missing {
        /// The index given up on.
        key: VolumeKey,
        /// Why.
        reason: MissingReason,
    },
    /// A second file for an index that already has a good volume; ignored.
    Duplicate {
        /// The index.
        key: VolumeKey,
        /// The ignored file.
        path: PathBuf,
    },
    /// A file moved aside because it never decoded or failed validation.
    Quarantined {
        /// Its index, when the name gave one.
        key: Option<VolumeKey>,
        /// Where it was.
        path: PathBuf,
        /// Where it is now.
        moved_to: PathBuf,
        /// Why, in words naming the problem.
        reason: String,
    },
    /// A run is over (a later run started, its expected count arrived, it
    /// went idle, or the daemon is stopping).
    RunEnded {
        /// Run number.
        run: u32,
    },
    /// Watching changed behaviour (e.g. auto mode fell back to polling).
    Notice(String),
    /// Ingest is alive; sent about once a second and passed through every
    /// stage to the end of the pipeline, where it feeds the service
    /// watchdog. Sinks ignore it.
    Heartbeat(Instant),
}

/// One volume after motion correction.
#[derive(Debug, Clone)]
pub struct RealignedVolume {
    /// Run and index.
    pub key: VolumeKey,
    /// The file it came from.
    pub path: PathBuf,
    /// Arrived after its index had been declared missing.
    pub late: bool,
    /// MCFLIRT-convention parameters relative to the session reference.
    pub params: crate::types::transform::MotionParams,
    /// The registration's reference → volume world map, at full precision:
    /// the next volume of the run starts from it (and a resumed session
    /// from the stored copy).
    pub ref_to_volume: nalgebra::Matrix4<f64>,
    /// Framewise displacement (Power, mm) against the previous volume of
    /// the run; `None` for the first volume of a run.
    pub fd: Option<f64>,
    /// RMS of the change in realigned masked intensities against the
    /// previous volume of the run (DVARS, signal units); `None` for the first.
    pub dvars: Option<f64>,
    /// DVARS as a percentage of the reference's mean masked intensity.
    pub dvars_pct: Option<f64>,
    /// Realigned voxels inside the session mask, in `np.where` order.
    pub masked: std::sync::Arc<[f32]>,
    /// Ingest timings.
    pub ingest: IngestTiming,
    /// When realignment finished.
    pub realigned_at: Instant,
    /// Time spent registering and resampling, seconds.
    pub realign_seconds: f64,
    /// Gauss–Newton iterations per pyramid level, coarsest first.
    pub iterations: Vec<usize>,
    /// Fitted global intensity gain against the reference.
    pub gain: f64,
}

/// Milliseconds each step of a volume's path took.
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq)]
pub struct VolumeLatency {
    /// Decoding the file (the last, successful attempt).
    pub read_ms: f64,
    /// Held back by ingest for ordering.
    pub reorder_ms: f64,
    /// Waiting in the queue before realign.
    pub queue_ms: f64,
    /// Registration and resampling.
    pub realign_ms: f64,
    /// File first seen → realigned.
    pub total_ms: f64,
}

impl VolumeLatency {
    /// The steps of `r`, measured from its timestamps.
    pub fn of(r: &RealignedVolume) -> VolumeLatency {
        let ms = |later: Instant, earlier: Instant| {
            later.saturating_duration_since(earlier).as_secs_f64() * 1e3
        };
        let t = &r.ingest;
        let realign_start = r
            .realigned_at
            .checked_sub(std::time::Duration::from_secs_f64(r.realign_seconds))
            .unwrap_or(r.realigned_at);
        VolumeLatency {
            read_ms: t.decode_seconds * 1e3,
            reorder_ms: ms(t.released, t.decoded),
            queue_ms: ms(realign_start, t.released),
            realign_ms: r.realign_seconds * 1e3,
            total_ms: ms(r.realigned_at, t.first_seen),
        }
    }
}

/// What the realign stage sends on: realigned volumes, failures, and every
/// ingest event that is not a volume, in arrival order.
#[derive(Debug, Clone)]
pub enum PipelineEvent {
    /// The session reference is set (first volume, or the configured image).
    ReferenceReady {
        /// Where it came from.
        source: String,
        /// Voxels in the session mask.
        mask_voxels: usize,
        /// The reference volume.
        reference: std::sync::Arc<Volume>,
        /// The session mask (on the output grid).
        mask: std::sync::Arc<crate::types::mask::SessionMask>,
        /// The calibration reference registered to this session's, when
        /// asked for (`[realign] register_target`).
        cross_session: Option<CrossSession>,
    },
    /// A realigned volume.
    Realigned(Box<RealignedVolume>),
    /// A volume that decoded but could not be realigned.
    RealignFailed {
        /// Run and index.
        key: VolumeKey,
        /// Its file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A non-volume ingest event, passed through.
    Ingest(IngestEvent),
    /// A trial's beta.
    Beta(Box<TrialBeta>),
    /// A trial that will not get a beta, and why.
    TrialSkipped {
        /// Run number.
        run: u32,
        /// Trial number within the run.
        trial: usize,
        /// Its event.
        event: crate::types::events::Event,
        /// Why, in words.
        reason: String,
    },
    /// Neurofeedback values for a volume.
    Feedback(Box<FeedbackSample>),
    /// Something the operator should know (restarts, disabled outputs…).
    Notice(String),
    /// The decoder's graphs are loaded and warmed up.
    DecoderReady(Box<DecoderReport>),
    /// A trial's fast decode: retrieval, as soon as its beta arrived.
    Decoded(Box<TrialDecoded>),
    /// A trial's reconstruction.
    Reconstructed(Box<TrialReconstructed>),
    /// A trial that will not be reconstructed (or decoded), and why.
    DecodeSkipped {
        /// Run number.
        run: u32,
        /// Trial number within the run.
        trial: usize,
        /// The image shown, when known.
        stim_id: Option<String>,
        /// Which output is missing: `decode` or `reconstruction`.
        what: &'static str,
        /// Why, in words.
        reason: String,
    },
}

/// A trial's response pattern, estimated.
#[derive(Debug, Clone)]
pub struct TrialBeta {
    /// Run number.
    pub run: u32,
    /// Trial number within the run (order of registration).
    pub trial: usize,
    /// The trial's event.
    pub event: crate::types::events::Event,
    /// The volume whose arrival made the trial due.
    pub trigger: VolumeKey,
    /// Frames used.
    pub frames: usize,
    /// Regressors in its model.
    pub regressors: usize,
    /// Estimated later than planned (too few frames at first).
    pub delayed: bool,
    /// From a warm-up run: stored and counted in the statistics, not decoded.
    pub warmup: bool,
    /// Probe effect size per voxel (mask order), after signal scaling.
    pub raw: std::sync::Arc<[f32]>,
    /// z-scored.
    pub z: std::sync::Arc<[f32]>,
    /// What the decoder gets: `z`, or the mean over the image's presentations.
    pub decode: std::sync::Arc<[f32]>,
    /// Presentations of this image so far, this one included.
    pub presentations: usize,
    /// Time spent estimating and normalising, seconds.
    pub compute_seconds: f64,
    /// When the trigger volume's file was first seen (None when the
    /// trigger was a gap).
    pub trigger_seen: Option<Instant>,
    /// When the beta was ready.
    pub ready: Instant,
    /// Wall-clock time the beta was ready.
    pub ready_wall: SystemTime,
}

/// Per-volume neurofeedback values.
#[derive(Debug, Clone)]
pub struct FeedbackSample {
    /// The volume.
    pub key: VolumeKey,
    /// One value per configured region or decoder.
    pub values: Vec<FeedbackValue>,
}

/// One neurofeedback value.
#[derive(Debug, Clone)]
pub struct FeedbackValue {
    /// Name from the configuration.
    pub name: String,
    /// The value: percent signal change of a region (cleaned of drift and
    /// motion), or a decoder's output.
    pub value: f64,
    /// After the configured smoothing (equal to `value` when none).
    pub smoothed: f64,
}

/// The decode stage's models, as loaded and warmed up.
#[derive(Debug, Clone)]
pub struct DecoderReport {
    /// The model folder's manifest.
    pub model: PathBuf,
    /// The subject.
    pub subject: String,
    /// The ONNX Runtime library in use.
    pub library: PathBuf,
    /// Its version.
    pub version: String,
    /// Per graph: role, file, provider, first-call and median seconds.
    pub graphs: Vec<GraphReport>,
}

/// One graph of a [`DecoderReport`].
#[derive(Debug, Clone)]
pub struct GraphReport {
    /// Role.
    pub role: &'static str,
    /// File.
    pub file: PathBuf,
    /// Execution provider.
    pub provider: String,
    /// First (warm-up) call, seconds.
    pub first_seconds: f64,
    /// Median of the timed calls after it, seconds.
    pub median_seconds: f64,
}

/// A trial's fast decode.
#[derive(Debug, Clone)]
pub struct TrialDecoded {
    /// Run number.
    pub run: u32,
    /// Trial number within the run.
    pub trial: usize,
    /// The image shown, when the events table says.
    pub stim_id: Option<String>,
    /// Best candidates, best first: (id, cosine similarity).
    pub top: Vec<(String, f32)>,
    /// Rank (1 = best) of the image shown among all candidates, when it is
    /// in the bank.
    pub true_rank: Option<usize>,
    /// Candidates in the bank.
    pub bank_size: usize,
    /// The retrieval query (embedding).
    pub query: std::sync::Arc<[f32]>,
    /// ONNX Runtime seconds per graph (adapter, backbone).
    pub graphs: Vec<(&'static str, f64)>,
    /// Wall seconds of the fast path.
    pub seconds: f64,
    /// Seconds from the beta being ready to this output.
    pub since_beta: f64,
    /// Seconds from the trigger volume's file appearing to this output.
    pub since_trigger: Option<f64>,
    /// Voxels that were not finite (fed as 0).
    pub nonfinite_voxels: usize,
}

/// A trial's reconstruction.
#[derive(Debug, Clone)]
pub struct TrialReconstructed {
    /// Run number.
    pub run: u32,
    /// Trial number within the run.
    pub trial: usize,
    /// The image shown, when known.
    pub stim_id: Option<String>,
    /// Image, channel-major `[C, H, W]`, nominally in [0, 1].
    pub image: std::sync::Arc<[f32]>,
    /// `(C, H, W)`.
    pub chw: (usize, usize, usize),
    /// Seed of the prior's noise.
    pub prior_seed: u64,
    /// Seed of the decoder's noise.
    pub decoder_seed: u64,
    /// ONNX Runtime seconds per prior step.
    pub prior_steps: Vec<f64>,
    /// ONNX Runtime seconds per decoder step.
    pub decoder_steps: Vec<f64>,
    /// ONNX Runtime seconds of the latent decoder.
    pub latent_decoder_seconds: f64,
    /// Seconds it waited for the worker.
    pub queued_seconds: f64,
    /// Wall seconds of the reconstruction itself.
    pub seconds: f64,
    /// Of those, seconds not spent inside ONNX Runtime.
    pub overhead_seconds: f64,
    /// Seconds from the trigger volume's file appearing to this output.
    pub since_trigger: Option<f64>,
}

/// Where the calibration session's reference lies in this session: the
/// once-per-session registration behind `register_target`.
#[derive(Debug, Clone)]
pub struct CrossSession {
    /// The target image (the calibration reference).
    pub target: String,
    /// World (RAS mm) map from the target's frame to this session's
    /// reference frame, row-major.
    pub target_to_reference: [[f64; 4]; 4],
    /// The same map as MCFLIRT-convention parameters about this session's
    /// reference centre (this session's reference → the target): how far
    /// the head moved between sessions.
    pub params: crate::types::transform::MotionParams,
    /// Registration time in seconds.
    pub seconds: f64,
}
