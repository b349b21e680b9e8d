//! Synthetic fMRI series with exact truth.
//!
//! In: a [`SynthSpec`]. Out: a [`SynthSeries`] that renders any volume of
//! the session on demand ([`SynthSeries::volume`]), bit-for-bit reproducible,
//! and knows the truth behind it: motion parameters, the centre they are
//! expressed about, task events, BOLD and drift factors.
//!
//! Volume `i` is generated exactly as the brief for MCFLIRT-style truth
//! requires: for voxel `x` with FSL scaled-mm coordinate `p = vox_to_fsl·x`,
//! the head point seen there is `y = M_i·p` with `M_i =
//! truth(i).to_matrix(c)` (volume → reference) and `c` the FSL centre of
//! gravity of the generated volume 0 — the centre MCFLIRT decomposes its
//! parameters about. The value is
//! `phantom(y)·(1 + amplitude·task(y)·bold(t))·drift(t)`, then Rician noise
//! `sqrt((s + σn₁)² + (σn₂)²)` with `σ = noise × mean brain intensity`.
//!
//! The phantom lives in the reference's FSL frame through a fixed map to
//! head coordinates (world RAS relative to the field-of-view centre), so it
//! is anatomically oriented whatever the storage order of the grid.
//!
//! Optional extras, all off by default so a spec without them renders
//! bit-for-bit as before:
//! - a session head pose ([`SynthSpec::head_pose`]): the whole head placed
//!   differently in the scanner, as in a later session of the same subject.
//!   Motion stays relative to this session's volume 0; stimulus patterns and
//!   per-voxel physiology stay attached to the calibration grid (pose zero),
//!   so they land on the same tissue in every session;
//! - physiological-like noise ([`PhysioSpec`]): global respiratory and
//!   cardiac modulations (sampled, hence aliased, at the TR) and slow
//!   per-voxel fluctuations, multiplying the signal before thermal noise.

use nalgebra::{Matrix4, Vector3};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::events::{Event, default_design};
use super::hrf::BoldModel;
use super::motion::{Jerk, MotionModel, random_trajectory};
use super::patterns::StimulusPatterns;
use super::phantom::Phantom;
use super::{SimError, mix_seed};
use crate::types::messages::VolumeKey;
use crate::types::transform::{MotionParams, rigid_inverse};
use crate::types::volume::{Grid, Volume};

const TAG_MOTION: u64 = 1;
const TAG_NOISE: u64 = 2;
const TAG_EVENTS: u64 = 3;
const TAG_DRIFT: u64 = 4;
const TAG_PHYSIO: u64 = 5;
const TAG_LOW_FREQ: u64 = 6;

/// Peak excursion (radians) of the slow wander of the respiratory and
/// cardiac phases: a few % of rate variability, as breathing and heart rate
/// drift over minutes.
const PHASE_WANDER_RAD: f64 = 1.5;
/// Frequencies (Hz) of that wander.
const PHASE_WANDER_HZ: [f64; 2] = [0.005, 0.02];
/// Distinct frequencies the per-voxel fluctuations are drawn from, so each
/// volume needs one sine and cosine per frequency instead of per voxel.
const LOW_FREQ_BINS: usize = 64;

/// Physiological-like noise; amplitudes 0 (the default) turn each part off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PhysioSpec {
    /// Global multiplicative respiratory modulation, peak fraction.
    pub respiration: f64,
    /// Mean breathing period in seconds.
    pub respiration_period_s: f64,
    /// Global multiplicative cardiac modulation, peak fraction (sampled at
    /// the TR, it aliases to a slow beat).
    pub cardiac: f64,
    /// Mean heartbeat period in seconds.
    pub cardiac_period_s: f64,
    /// Per-brain-voxel slow fluctuation, sd as a fraction of the signal.
    pub low_freq: f64,
    /// Sinusoids per voxel.
    pub low_freq_components: usize,
    /// Frequency band of the per-voxel sinusoids, Hz.
    pub low_freq_band_hz: [f64; 2],
}

impl Default for PhysioSpec {
    fn default() -> Self {
        PhysioSpec {
            respiration: 0.0,
            respiration_period_s: 4.0,
            cardiac: 0.0,
            cardiac_period_s: 1.0,
            low_freq: 0.0,
            low_freq_components: 3,
            low_freq_band_hz: [0.01, 0.1],
        }
    }
}

impl PhysioSpec {
    /// True when every part is off.
    pub fn is_off(&self) -> bool {
        self.respiration == 0.0 && self.cardiac == 0.0 && self.low_freq == 0.0
    }

    fn validate(&self) -> Result<(), String> {
        let frac = |v: f64| v.is_finite() && (0.0..0.5).contains(&v);
        if !(frac(self.respiration) && frac(self.cardiac) && frac(self.low_freq)) {
            return Err("physio amplitudes must be fractions in 0..0.5".into());
        }
        let period = |v: f64| v.is_finite() && v > 0.0;
        if !(period(self.respiration_period_s) && period(self.cardiac_period_s)) {
            return Err("physio periods must be positive".into());
        }
        let [lo, hi] = self.low_freq_band_hz;
        if self.low_freq > 0.0
            && (self.low_freq_components == 0
                || !(lo.is_finite() && hi.is_finite() && 0.0 < lo && lo <= hi))
        {
            return Err("low-frequency noise needs ≥ 1 component and a band 0 < lo ≤ hi".into());
        }
        Ok(())
    }
}

/// Slow multiplicative scanner drift within each run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftSpec {
    /// Linear change over a run, as a fraction (0.01 = +1 %).
    pub linear: f64,
    /// Amplitude of a slow sinusoidal wobble, as a fraction.
    pub wobble: f64,
    /// Period of the wobble in seconds.
    pub wobble_period_s: f64,
}

impl Default for DriftSpec {
    fn default() -> Self {
        DriftSpec {
            linear: 0.01,
            wobble: 0.003,
            wobble_period_s: 90.0,
        }
    }
}

impl DriftSpec {
    /// No drift.
    pub fn none() -> DriftSpec {
        DriftSpec {
            linear: 0.0,
            wobble: 0.0,
            wobble_period_s: 90.0,
        }
    }
}

/// Everything that defines a synthetic session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthSpec {
    /// Voxels along i, j, k.
    pub dims: [usize; 3],
    /// Voxel size in mm.
    pub voxel_mm: [f64; 3],
    /// Voxel → world affine, row-major; `None` for [`Grid::centred`] (RAS,
    /// centred on the field of view).
    pub affine: Option<[[f64; 4]; 4]>,
    /// Repetition time in seconds.
    pub tr: f64,
    /// Number of runs (numbered from 1).
    pub runs: usize,
    /// Volumes in each run.
    pub volumes_per_run: usize,
    /// Rician noise σ as a fraction of the mean brain intensity (0.02 is
    /// SNR 50); 0 for none.
    pub noise: f64,
    /// Head motion.
    pub motion: MotionModel,
    /// Task response amplitude as a fraction (0.02 = 2 % signal change at
    /// full task weight and one event's peak).
    pub activation: f64,
    /// Scanner drift.
    pub drift: DriftSpec,
    /// Events per run (one list is used for every run); `None` for the
    /// default design ([`default_design`]).
    #[serde(skip)]
    pub events: Option<Vec<Vec<Event>>>,
    /// Logistic edge scale of tissue boundaries in mm.
    pub edge_mm: f64,
    /// Scalp semi-axes in mm; `None` fits the head to the field of view.
    pub head_mm: Option<[f64; 3]>,
    /// Seed for motion, noise, drift phase and the default design.
    pub seed: u64,
    /// Threads used to render a volume; 0 for all available cores.
    pub threads: usize,
    /// Physiological-like noise (default: off).
    #[serde(default)]
    pub physio: PhysioSpec,
    /// Head position for the whole session relative to the calibration
    /// session: rx, ry, rz (radians, MCFLIRT's Euler convention) then tx,
    /// ty, tz (mm), applied to the head about its centre (head coordinates):
    /// tissue at head point `h` sits where `R·h + t` was at pose zero.
    /// Zeros (the default) for the calibration position.
    #[serde(default)]
    pub head_pose: [f64; 6],
}

impl Default for SynthSpec {
    fn default() -> Self {
        SynthSpec {
            dims: [64, 64, 36],
            voxel_mm: [3.0, 3.0, 3.0],
            affine: None,
            tr: 1.5,
            runs: 1,
            volumes_per_run: 200,
            noise: 0.02,
            motion: MotionModel::default(),
            activation: 0.02,
            drift: DriftSpec::default(),
            events: None,
            edge_mm: 1.0,
            head_mm: None,
            seed: 1,
            threads: 0,
            physio: PhysioSpec::default(),
            head_pose: [0.0; 6],
        }
    }
}

impl SynthSpec {
    /// The voxel grid this spec describes.
    pub fn grid(&self) -> Grid {
        match self.affine {
            Some(rows) => Grid {
                dims: self.dims,
                pixdim: self.voxel_mm,
                affine: Matrix4::from_fn(|r, c| rows[r][c]),
            },
            None => Grid::centred(self.dims, self.voxel_mm),
        }
    }

    fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::Spec(m));
        if self.dims.contains(&0) {
            return bad(format!("dimensions {:?} must all be at least 1", self.dims));
        }
        if self.voxel_mm.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return bad(format!("voxel sizes {:?} must be positive", self.voxel_mm));
        }
        if !(self.tr.is_finite() && self.tr > 0.0) {
            return bad(format!("TR {} must be positive", self.tr));
        }
        if self.runs == 0 || self.volumes_per_run == 0 {
            return bad("at least one run of at least one volume is needed".into());
        }
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            return bad(format!(
                "noise {} must be a non-negative fraction",
                self.noise
            ));
        }
        if !(self.activation.is_finite() && self.edge_mm.is_finite() && self.edge_mm > 0.0) {
            return bad("activation and edge width must be finite (edge > 0)".into());
        }
        if let Err(m) = self.physio.validate() {
            return bad(m);
        }
        if self.head_pose.iter().any(|v| !v.is_finite()) {
            return bad(format!("head pose {:?} must be finite", self.head_pose));
        }
        let g = self.grid();
        if g.affine.fixed_view::<3, 3>(0, 0).determinant().abs() < 1e-9 {
            return bad("the affine is singular".into());
        }
        Ok(())
    }
}

/// The truth about one volume.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameTruth {
    /// Run (from 1) and index within the run (from 0).
    pub key: VolumeKey,
    /// Seconds since the run started (acquisition start of the volume, as
    /// nilearn's frame times with `slice_time_ref = 0`).
    pub time_s: f64,
    /// Motion, MCFLIRT convention, relative to the session's first volume.
    pub params: MotionParams,
    /// BOLD response (1 = one lone event's peak).
    pub bold: f64,
    /// Multiplicative drift factor.
    pub drift: f64,
    /// Global physiological factor (respiration and cardiac; 1 when off).
    pub physio: f64,
}

/// A synthetic session: renders volumes and reports their truth.
#[derive(Debug, Clone)]
pub struct SynthSeries {
    spec: SynthSpec,
    grid: Grid,
    phantom: Phantom,
    /// FSL scaled mm (reference frame) → head coordinates at pose zero.
    canonical_head_from_fsl: Matrix4<f64>,
    /// FSL scaled mm (reference frame) → the head coordinates of the tissue
    /// there in this session: `canonical_head_from_fsl` with the session pose undone
    /// (the same matrix at pose zero).
    tissue_from_fsl: Matrix4<f64>,
    /// Head coordinates → calibration-grid voxel (pose zero, volume 0).
    canon_from_head: Matrix4<f64>,
    vox_to_fsl: Matrix4<f64>,
    motion: Vec<MotionParams>,
    jerks: Vec<Jerk>,
    events: Vec<Vec<Event>>,
    bold: Vec<BoldModel>,
    drift_phase: Vec<f64>,
    brain_mean: f64,
    sigma: f64,
    centre: Vector3<f64>,
    threads: usize,
    first: Volume,
    /// Stimulus-specific patterns, with each calibration voxel's column
    /// (`u32::MAX`: none).
    patterns: Option<PatternState>,
    /// Respiratory and cardiac phase per run; empty when both are off.
    physio_runs: Vec<[Rhythm; 2]>,
    low_freq: Option<std::sync::Arc<LowFreq>>,
}

#[derive(Debug, Clone)]
struct PatternState {
    patterns: std::sync::Arc<StimulusPatterns>,
    slot: Vec<u32>,
}

/// A quasi-periodic rhythm: `sin(ω·t + φ₀ + Σ aⱼ·sin(ωⱼ·t + ψⱼ))`.
#[derive(Debug, Clone)]
struct Rhythm {
    omega: f64,
    phase: f64,
    wander: [(f64, f64); 2],
}

impl Rhythm {
    fn new(period_s: f64, rng: &mut ChaCha8Rng) -> Rhythm {
        use rand::RngExt;
        let tau = std::f64::consts::TAU;
        Rhythm {
            omega: tau / period_s,
            phase: rng.random_range(0.0..tau),
            wander: PHASE_WANDER_HZ.map(|f| (tau * f, rng.random_range(0.0..tau))),
        }
    }

    fn at(&self, t: f64) -> f64 {
        let wander: f64 = self
            .wander
            .iter()
            .map(|(w, psi)| PHASE_WANDER_RAD * (w * t + psi).sin())
            .sum();
        (self.omega * t + self.phase + wander).sin()
    }
}

/// Per-voxel slow fluctuations on the calibration grid: each brain voxel
/// has `components` terms `A·sin(ω_b·t) + B·cos(ω_b·t)` on shared
/// frequencies `ω_b`.
#[derive(Debug)]
struct LowFreq {
    omegas: Vec<f64>,
    components: usize,
    /// Calibration voxel → row of `terms` (`u32::MAX`: not brain).
    slot: Vec<u32>,
    /// `components` entries per brain voxel: (bin, A, B).
    terms: Vec<(u16, f32, f32)>,
}

impl LowFreq {
    /// Each brain voxel's value at session time `t`, given the table of
    /// `(sin, cos)` per bin.
    #[inline]
    fn value(&self, row: usize, table: &[(f32, f32)]) -> f64 {
        let terms = &self.terms[row * self.components..(row + 1) * self.components];
        terms
            .iter()
            .map(|&(b, a, c)| {
                let (s, co) = table[b as usize];
                (a * s + c * co) as f64
            })
            .sum()
    }

    fn table(&self, t: f64) -> Vec<(f32, f32)> {
        self.omegas
            .iter()
            .map(|w| {
                let (s, c) = (w * t).sin_cos();
                (s as f32, c as f32)
            })
            .collect()
    }
}

impl SynthSeries {
    /// Build the session: motion, events, noise level, and volume 0 (from
    /// which the centre of rotation is computed).
    pub fn new(spec: SynthSpec) -> Result<SynthSeries, SimError> {
        spec.validate()?;
        let grid = spec.grid();
        let n = spec.runs * spec.volumes_per_run;
        let fov: [f64; 3] = std::array::from_fn(|a| spec.dims[a] as f64 * spec.voxel_mm[a]);
        let phantom = match spec.head_mm {
            Some(h) => Phantom::new(h, spec.edge_mm),
            None => Phantom::fitted(fov, spec.edge_mm),
        };
        let vox_to_fsl = grid.vox_to_fsl();
        let fsl_to_vox = vox_to_fsl
            .try_inverse()
            .ok_or_else(|| SimError::Spec("voxel → FSL matrix is singular".into()))?;
        let fov_centre_vox =
            Vector3::from(std::array::from_fn(|a| 0.5 * (spec.dims[a] as f64 - 1.0)));
        let world_centre = Grid::apply(&grid.affine, fov_centre_vox);
        let mut head_from_fsl = grid.affine * fsl_to_vox;
        for a in 0..3 {
            head_from_fsl[(a, 3)] -= world_centre[a];
        }
        let tissue_from_fsl = if spec.head_pose.iter().any(|v| *v != 0.0) {
            // Tissue at h sits at P·h, so a scanner point shows P⁻¹ of it.
            let pose = MotionParams(spec.head_pose).to_matrix(Vector3::zeros());
            rigid_inverse(&pose) * head_from_fsl
        } else {
            head_from_fsl
        };
        let canon_from_head = (head_from_fsl * vox_to_fsl)
            .try_inverse()
            .ok_or_else(|| SimError::Spec("voxel → head matrix is singular".into()))?;

        let (motion, jerks) = match &spec.motion {
            MotionModel::Still => (vec![MotionParams::default(); n], Vec::new()),
            MotionModel::Random(m) => {
                let t = random_trajectory(
                    m,
                    spec.runs,
                    spec.volumes_per_run,
                    mix_seed(spec.seed, TAG_MOTION),
                );
                (t.params, t.jerks)
            }
            MotionModel::Explicit(rows) => {
                if rows.len() != n {
                    return Err(SimError::Spec(format!(
                        "explicit motion has {} rows for {n} volumes",
                        rows.len()
                    )));
                }
                if rows.first().is_some_and(|r| r.iter().any(|v| *v != 0.0)) {
                    return Err(SimError::Spec(
                        "explicit motion must start with all zeros (volume 0 is the reference)"
                            .into(),
                    ));
                }
                if rows.iter().flatten().any(|v| !v.is_finite()) {
                    return Err(SimError::Spec(
                        "explicit motion has non-finite values".into(),
                    ));
                }
                (rows.iter().map(|r| MotionParams(*r)).collect(), Vec::new())
            }
        };

        let run_seconds = spec.volumes_per_run as f64 * spec.tr;
        let events: Vec<Vec<Event>> = match &spec.events {
            Some(e) if e.len() == spec.runs => e.clone(),
            Some(e) if e.len() == 1 => vec![e[0].clone(); spec.runs],
            Some(e) => {
                return Err(SimError::Spec(format!(
                    "{} event lists for {} runs (give one, or one per run)",
                    e.len(),
                    spec.runs
                )));
            }
            None => {
                let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(spec.seed, TAG_EVENTS));
                let (mut next, mut shown) = (1, Vec::new());
                (0..spec.runs)
                    .map(|_| default_design(run_seconds, &mut rng, &mut next, &mut shown))
                    .collect()
            }
        };
        let bold = events.iter().map(|e| BoldModel::new(e)).collect();
        let drift_phase = (0..spec.runs)
            .map(|r| {
                let u = mix_seed(mix_seed(spec.seed, TAG_DRIFT), r as u64);
                (u >> 11) as f64 / (1u64 << 53) as f64 * std::f64::consts::TAU
            })
            .collect();
        let physio_runs = if spec.physio.respiration > 0.0 || spec.physio.cardiac > 0.0 {
            (0..spec.runs)
                .map(|r| {
                    let seed = mix_seed(mix_seed(spec.seed, TAG_PHYSIO), r as u64);
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    [
                        Rhythm::new(spec.physio.respiration_period_s, &mut rng),
                        Rhythm::new(spec.physio.cardiac_period_s, &mut rng),
                    ]
                })
                .collect()
        } else {
            Vec::new()
        };
        let threads = if spec.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            spec.threads
        };

        let mut series = SynthSeries {
            spec,
            grid,
            phantom,
            canonical_head_from_fsl: head_from_fsl,
            tissue_from_fsl,
            canon_from_head,
            vox_to_fsl,
            motion,
            jerks,
            events,
            bold,
            drift_phase,
            brain_mean: 0.0,
            sigma: 0.0,
            centre: Vector3::zeros(),
            threads,
            first: Volume::zeros(Grid::centred([1, 1, 1], [1.0; 3])),
            patterns: None,
            physio_runs,
            low_freq: None,
        };
        // Volume 0 has zero motion, so its matrix is the identity whatever
        // the centre: it can be rendered before the centre is known. The
        // brain mean (and so the noise level) is taken at pose zero, a
        // property of the subject and scanner, not of where the head sits.
        let q0 = series.canonical_head_from_fsl * series.vox_to_fsl;
        let brain = series.par_slices(|k, out| {
            series.for_each_voxel(&q0, k, out, |q| {
                let b = series.phantom.brain_weight(q);
                if b > 0.5 { 1.0 } else { 0.0 }
            })
        });
        if series.spec.physio.low_freq > 0.0 {
            series.low_freq = Some(std::sync::Arc::new(low_freq_terms(&series.spec, &brain)));
        }
        let clean = series.render(0, &q0, false);
        let (sum, count) = clean
            .values()
            .iter()
            .zip(&brain)
            .filter(|(_, b)| **b > 0.0)
            .fold((0.0f64, 0usize), |(s, c), (v, _)| (s + *v as f64, c + 1));
        series.brain_mean = if count > 0 { sum / count as f64 } else { 0.0 };
        series.sigma = series.spec.noise * series.brain_mean;
        let q0 = series.tissue_from_fsl * series.vox_to_fsl;
        let first = series.render(0, &q0, true);
        series.centre = first.fsl_centre_of_gravity();
        series.first = first;
        Ok(series)
    }

    /// Add stimulus-specific patterns: from now on each event whose
    /// stimulus has a pattern adds it (scaled by the event's BOLD response
    /// and the amplitude) to the head tissue at the pattern's voxels, moving
    /// with the head. The voxels are those of the calibration grid (volume
    /// 0 at pose zero, see [`SynthSeries::canonical_task_map`]), so the same
    /// patterns land on the same tissue whatever the session's head pose.
    /// Volume 0 (no response yet) is unchanged.
    pub fn with_patterns(mut self, patterns: StimulusPatterns) -> Result<SynthSeries, SimError> {
        let n = self.grid.len();
        let mut slot = vec![u32::MAX; n];
        for (c, &v) in patterns.voxels().iter().enumerate() {
            if v >= n {
                return Err(SimError::Spec(format!(
                    "pattern voxel {v} is outside the {n}-voxel grid"
                )));
            }
            slot[v] = c as u32;
        }
        self.patterns = Some(PatternState {
            patterns: std::sync::Arc::new(patterns),
            slot,
        });
        Ok(self)
    }

    /// Brain tissue (weight > 0.5) on the reference grid (this session's
    /// volume 0, head pose included), as 0/1.
    pub fn brain_map(&self) -> Volume {
        self.brain_map_through(&(self.tissue_from_fsl * self.vox_to_fsl))
    }

    /// Brain tissue (weight > 0.5) on the calibration grid (volume 0 at
    /// head pose zero), as 0/1: the same whatever this session's pose.
    pub fn canonical_brain_map(&self) -> Volume {
        self.brain_map_through(&(self.canonical_head_from_fsl * self.vox_to_fsl))
    }

    fn brain_map_through(&self, q0: &Matrix4<f64>) -> Volume {
        let q0 = *q0;
        let vals = self.par_slices(|k, out| {
            self.for_each_voxel(&q0, k, out, |q| {
                if self.phantom.brain_weight(q) > 0.5 {
                    1.0
                } else {
                    0.0
                }
            })
        });
        self.wrap(vals)
    }

    /// Each pattern voxel's signal change (fraction) at volume `i`: Σ over
    /// responding events of amplitude × BOLD × the stimulus's pattern (with
    /// that event's own trial-to-trial noise, when the patterns have some).
    /// `None` without patterns or when no patterned event is responding.
    pub fn pattern_activity(&self, i: usize) -> Option<Vec<f32>> {
        let ps = self.patterns.as_ref()?;
        let key = self.key(i);
        let r = key.run as usize - 1;
        let t = key.index as f64 * self.spec.tr;
        let events = self.events.get(r)?;
        let mut act: Option<Vec<f32>> = None;
        for (e, w) in self.bold.get(r)?.each(t) {
            let Some(resp) = events[e]
                .stim_id
                .as_deref()
                .and_then(|id| ps.patterns.event_response(id, key.run, e))
            else {
                continue;
            };
            let a = act.get_or_insert_with(|| vec![0.0; resp.len()]);
            let g = (w * ps.patterns.amplitude) as f32;
            for (x, &v) in a.iter_mut().zip(resp.iter()) {
                *x += g * v;
            }
        }
        act
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &SynthSpec {
        &self.spec
    }

    /// The voxel grid of every volume.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// The phantom.
    pub fn phantom(&self) -> &Phantom {
        &self.phantom
    }

    /// Volumes in the session (all runs).
    pub fn len(&self) -> usize {
        self.motion.len()
    }

    /// True when the session has no volumes (never, once built).
    pub fn is_empty(&self) -> bool {
        self.motion.is_empty()
    }

    /// Repetition time in seconds.
    pub fn tr(&self) -> f64 {
        self.spec.tr
    }

    /// Run and index within the run of session volume `i`.
    pub fn key(&self, i: usize) -> VolumeKey {
        let v = self.spec.volumes_per_run;
        VolumeKey {
            run: (i / v + 1) as u32,
            index: (i % v) as u32,
        }
    }

    /// Session index of a run/index pair, if it exists.
    pub fn session_index(&self, key: VolumeKey) -> Option<usize> {
        let v = self.spec.volumes_per_run;
        let r = key.run as usize;
        (r >= 1 && r <= self.spec.runs && (key.index as usize) < v)
            .then(|| (r - 1) * v + key.index as usize)
    }

    /// Centre of rotation (FSL scaled mm) the truth is expressed about: the
    /// centre of gravity of volume 0 as generated.
    pub fn centre(&self) -> Vector3<f64> {
        self.centre
    }

    /// Motion of session volume `i` (MCFLIRT convention, relative to volume
    /// 0). Panics when `i` is out of range.
    pub fn truth(&self, i: usize) -> MotionParams {
        self.motion[i]
    }

    /// All motion parameters, one per session volume.
    pub fn trajectory(&self) -> &[MotionParams] {
        &self.motion
    }

    /// The jerks of a random trajectory.
    pub fn jerks(&self) -> &[Jerk] {
        &self.jerks
    }

    /// Volume → reference matrix (FSL scaled mm) of volume `i`. Panics when
    /// `i` is out of range.
    pub fn matrix(&self, i: usize) -> Matrix4<f64> {
        self.motion[i].to_matrix(self.centre)
    }

    /// Task events of `run` (from 1); empty for a run that does not exist.
    pub fn events(&self, run: u32) -> &[Event] {
        (run as usize)
            .checked_sub(1)
            .and_then(|r| self.events.get(r))
            .map_or(&[], Vec::as_slice)
    }

    /// Everything known about volume `i`. Panics when `i` is out of range.
    pub fn frame(&self, i: usize) -> FrameTruth {
        let key = self.key(i);
        let r = key.run as usize - 1;
        let t = key.index as f64 * self.spec.tr;
        let d = &self.spec.drift;
        let ph = self.drift_phase[r];
        let run_len = self.spec.volumes_per_run as f64 * self.spec.tr;
        let drift = 1.0
            + d.linear * t / run_len
            + d.wobble
                * ((std::f64::consts::TAU * t / d.wobble_period_s.max(1e-9) + ph).sin() - ph.sin());
        let physio = match self.physio_runs.get(r) {
            Some([resp, card]) => {
                let p = &self.spec.physio;
                1.0 + p.respiration * resp.at(t) + p.cardiac * card.at(t)
            }
            None => 1.0,
        };
        FrameTruth {
            key,
            time_s: t,
            params: self.motion[i],
            bold: self.bold[r].at(t),
            drift,
            physio,
        }
    }

    /// Mean noise-free intensity inside the brain of volume 0.
    pub fn brain_mean(&self) -> f64 {
        self.brain_mean
    }

    /// Standard deviation of each Gaussian noise component.
    pub fn noise_sigma(&self) -> f64 {
        self.sigma
    }

    /// The fixed map from the reference's FSL scaled-mm frame to the
    /// phantom's head coordinates (world RAS about the field-of-view centre)
    /// of the tissue there; with a session head pose, the pose is included.
    pub fn head_from_fsl(&self) -> Matrix4<f64> {
        self.tissue_from_fsl
    }

    /// This session's reference (volume 0, FSL scaled mm) → the calibration
    /// reference (volume 0 at head pose zero, FSL scaled mm): where the
    /// tissue seen at a point now was seen in calibration. The identity at
    /// pose zero; the transform a realignment to the calibration grid should
    /// find.
    pub fn calibration_from_session(&self) -> Matrix4<f64> {
        // head_from_fsl is rigid up to the grid's (non-singular) axes, so
        // its inverse exists; validate() refused singular affines.
        self.canonical_head_from_fsl
            .try_inverse()
            .map_or_else(Matrix4::identity, |f| f * self.tissue_from_fsl)
    }

    /// Noise-free phantom intensity at a point given in the reference's FSL
    /// scaled-mm frame (no task, no drift).
    pub fn reference_intensity(&self, y_fsl: Vector3<f64>) -> f64 {
        self.phantom
            .intensity(Grid::apply(&self.tissue_from_fsl, y_fsl))
    }

    /// Task weight (0..1) at a point of the reference's FSL frame.
    pub fn task_weight(&self, y_fsl: Vector3<f64>) -> f64 {
        self.phantom
            .task_weight(Grid::apply(&self.tissue_from_fsl, y_fsl))
    }

    /// The generated volume `i`, noise included. Panics when `i` is out of
    /// range.
    pub fn volume(&self, i: usize) -> Volume {
        if i == 0 {
            return self.first.clone();
        }
        let q = self.tissue_from_fsl * self.matrix(i) * self.vox_to_fsl;
        self.render(i, &q, true)
    }

    /// Volume `i` without thermal noise (motion, task, drift and
    /// physiological noise included).
    pub fn clean_volume(&self, i: usize) -> Volume {
        let q = self.tissue_from_fsl * self.matrix(i) * self.vox_to_fsl;
        self.render(i, &q, false)
    }

    /// [`SynthSeries::clean_volume`]`(0)` as the calibration session would
    /// see it (head pose zero): the reference to pick calibration-grid
    /// regions from ([`super::patterns::pick_region`]) whatever this
    /// session's pose. Equal to `clean_volume(0)` at pose zero.
    pub fn canonical_reference(&self) -> Volume {
        let q = self.canonical_head_from_fsl * self.vox_to_fsl;
        self.render(0, &q, false)
    }

    /// Task weight sampled on the reference (this session's volume 0, head
    /// pose included) grid.
    pub fn task_map(&self) -> Volume {
        self.task_map_through(&(self.tissue_from_fsl * self.vox_to_fsl))
    }

    /// Task weight sampled on the calibration grid (volume 0 at head pose
    /// zero): the same whatever this session's pose.
    pub fn canonical_task_map(&self) -> Volume {
        self.task_map_through(&(self.canonical_head_from_fsl * self.vox_to_fsl))
    }

    fn task_map_through(&self, q: &Matrix4<f64>) -> Volume {
        let q = *q;
        let vals = self.par_slices(|k, out| {
            self.for_each_voxel(&q, k, out, |p| self.phantom.task_weight(*p) as f32)
        });
        self.wrap(vals)
    }

    fn wrap(&self, vals: Vec<f32>) -> Volume {
        // The buffer is built from the grid's own dimensions.
        Volume::from_file_order(self.grid.clone(), vals)
            .unwrap_or_else(|| Volume::zeros(self.grid.clone()))
    }

    /// Run `f` on every slice (k, its values) across the worker threads.
    fn par_slices<F>(&self, f: F) -> Vec<f32>
    where
        F: Fn(usize, &mut [f32]) + Sync,
    {
        let [nx, ny, nz] = self.grid.dims;
        let slice = nx * ny;
        let mut out = vec![0.0f32; slice * nz];
        let threads = self.threads.clamp(1, nz);
        if threads == 1 {
            for (k, s) in out.chunks_mut(slice).enumerate() {
                f(k, s);
            }
            return out;
        }
        let per = nz.div_ceil(threads);
        std::thread::scope(|scope| {
            for (c, chunk) in out.chunks_mut(per * slice).enumerate() {
                let f = &f;
                scope.spawn(move || {
                    for (dk, s) in chunk.chunks_mut(slice).enumerate() {
                        f(c * per + dk, s);
                    }
                });
            }
        });
        out
    }

    /// Fill slice `k` with `f(head point)` for each voxel, where the head
    /// point of voxel (i, j, k) is `q·(i, j, k, 1)`.
    #[inline]
    fn for_each_voxel<G>(&self, q: &Matrix4<f64>, k: usize, out: &mut [f32], mut g: G)
    where
        G: FnMut(&Vector3<f64>) -> f32,
    {
        let nx = self.grid.dims[0];
        let step = Vector3::new(q[(0, 0)], q[(1, 0)], q[(2, 0)]);
        for (j, row) in out.chunks_mut(nx).enumerate() {
            let base = Grid::apply(q, Vector3::new(0.0, j as f64, k as f64));
            for (i, v) in row.iter_mut().enumerate() {
                *v = g(&(base + step * i as f64));
            }
        }
    }

    /// The calibration-grid voxel (file order) whose centre is nearest to
    /// head point `p`, when it is inside the grid.
    #[inline]
    fn canonical_voxel(&self, p: &Vector3<f64>) -> Option<usize> {
        let v = Grid::apply(&self.canon_from_head, *p);
        let [nx, ny, nz] = self.grid.dims;
        let (i, j, k) = (v.x.round(), v.y.round(), v.z.round());
        if i < 0.0 || j < 0.0 || k < 0.0 || i >= nx as f64 || j >= ny as f64 || k >= nz as f64 {
            return None;
        }
        Some(i as usize + nx * (j as usize + ny * k as usize))
    }

    /// Render volume `i` through the voxel → head map `q`.
    fn render(&self, i: usize, q: &Matrix4<f64>, noise: bool) -> Volume {
        let frame = self.frame(i);
        let task_gain = self.spec.activation * frame.bold;
        let want_task = task_gain != 0.0;
        let drift = frame.drift;
        let physio = (!self.physio_runs.is_empty()).then_some(frame.physio);
        let sigma = if noise { self.sigma } else { 0.0 };
        let noise_seed = mix_seed(mix_seed(self.spec.seed, TAG_NOISE), i as u64);
        let activity = self.pattern_activity(i);
        let low_freq = self
            .low_freq
            .as_deref()
            .map(|lf| (lf, lf.table(i as f64 * self.spec.tr)));
        // Signal change carried by the tissue's calibration voxel: its
        // stimulus pattern and its slow fluctuation.
        let tissue = |p: &Vector3<f64>| -> f64 {
            if activity.is_none() && low_freq.is_none() {
                return 0.0;
            }
            let Some(idx) = self.canonical_voxel(p) else {
                return 0.0;
            };
            let mut e = 0.0;
            if let (Some(act), Some(ps)) = (&activity, &self.patterns)
                && let c = ps.slot[idx]
                && c != u32::MAX
            {
                e += act[c as usize] as f64;
            }
            if let Some((lf, table)) = &low_freq
                && let row = lf.slot[idx]
                && row != u32::MAX
            {
                e += lf.value(row as usize, table);
            }
            e
        };
        let vals = self.par_slices(|k, out| {
            // One generator per slice: the same numbers whatever the
            // thread count.
            let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(noise_seed, k as u64));
            self.for_each_voxel(q, k, out, |p| {
                let (ph, w) = self.phantom.eval(p, want_task);
                // Air carries no tissue signal: skip the voxel lookup there.
                let extra = if ph == 0.0 { 0.0 } else { tissue(p) };
                let mut s = ph * (1.0 + task_gain * w + extra) * drift;
                if let Some(g) = physio {
                    s *= g;
                }
                if sigma > 0.0 {
                    let n1: f64 = StandardNormal.sample(&mut rng);
                    let n2: f64 = StandardNormal.sample(&mut rng);
                    let re = s + sigma * n1;
                    let im = sigma * n2;
                    (re * re + im * im).sqrt() as f32
                } else {
                    s.abs() as f32
                }
            })
        });
        self.wrap(vals)
    }
}

/// Per-voxel slow fluctuations for the brain voxels (`brain`, 0/1 in file
/// order, on the calibration grid), each with the sd the spec asks for.
fn low_freq_terms(spec: &SynthSpec, brain: &[f32]) -> LowFreq {
    use rand::RngExt;
    let p = &spec.physio;
    let [lo, hi] = p.low_freq_band_hz;
    let omegas = (0..LOW_FREQ_BINS)
        .map(|b| std::f64::consts::TAU * (lo + (hi - lo) * (b as f64 + 0.5) / LOW_FREQ_BINS as f64))
        .collect();
    let components = p.low_freq_components;
    let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(spec.seed, TAG_LOW_FREQ));
    let mut slot = vec![u32::MAX; brain.len()];
    let mut terms = Vec::new();
    let mut rows = 0u32;
    for (v, &b) in brain.iter().enumerate() {
        if b <= 0.0 {
            continue;
        }
        slot[v] = rows;
        rows += 1;
        let raw: Vec<(u16, f64, f64)> = (0..components)
            .map(|_| {
                let bin = rng.random_range(0..LOW_FREQ_BINS) as u16;
                let amp: f64 = rng.random_range(0.5..1.5);
                let phase: f64 = rng.random_range(0.0..std::f64::consts::TAU);
                (bin, amp, phase)
            })
            .collect();
        // A sinusoid of amplitude a has sd a/√2.
        let sd = (raw.iter().map(|(_, a, _)| a * a).sum::<f64>() / 2.0).sqrt();
        let scale = p.low_freq / sd;
        // a·sin(ωt + φ) = a·cos φ·sin ωt + a·sin φ·cos ωt.
        terms.extend(raw.into_iter().map(|(bin, a, ph)| {
            (
                bin,
                (scale * a * ph.cos()) as f32,
                (scale * a * ph.sin()) as f32,
            )
        }));
    }
    LowFreq {
        omegas,
        components,
        slot,
        terms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::simulate::patterns::pick_region;

    fn small() -> SynthSpec {
        SynthSpec {
            dims: [24, 28, 20],
            voxel_mm: [6.0, 6.0, 6.0],
            volumes_per_run: 4,
            ..Default::default()
        }
    }

    #[test]
    fn thread_count_does_not_change_the_numbers() {
        let one = SynthSeries::new(SynthSpec {
            threads: 1,
            ..small()
        })
        .unwrap();
        let three = SynthSeries::new(SynthSpec {
            threads: 3,
            ..small()
        })
        .unwrap();
        assert_eq!(one.volume(2).values(), three.volume(2).values());
        assert_eq!(one.centre(), three.centre());
    }

    #[test]
    fn bad_specs_are_errors() {
        for spec in [
            SynthSpec {
                dims: [0, 4, 4],
                ..small()
            },
            SynthSpec {
                tr: -1.0,
                ..small()
            },
            SynthSpec {
                motion: MotionModel::Explicit(vec![[0.0; 6]; 3]),
                ..small()
            },
            SynthSpec {
                motion: MotionModel::Explicit(vec![[0.1; 6]; 4]),
                ..small()
            },
        ] {
            assert!(SynthSeries::new(spec).is_err());
        }
    }

    /// The renderer as it was before physiology and head poses existed
    /// (patterns aside): with those off, not a bit may change.
    fn render_before_extras(s: &SynthSeries, i: usize) -> Vec<f32> {
        let q = s.canonical_head_from_fsl * s.matrix(i) * s.vox_to_fsl;
        let frame = s.frame(i);
        let task_gain = s.spec.activation * frame.bold;
        let want_task = task_gain != 0.0;
        let sigma = s.sigma;
        let noise_seed = mix_seed(mix_seed(s.spec.seed, TAG_NOISE), i as u64);
        s.par_slices(|k, out| {
            let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(noise_seed, k as u64));
            s.for_each_voxel(&q, k, out, |p| {
                let (ph, w) = s.phantom.eval(p, want_task);
                let v = ph * (1.0 + task_gain * w + 0.0) * frame.drift;
                if sigma > 0.0 {
                    let n1: f64 = StandardNormal.sample(&mut rng);
                    let n2: f64 = StandardNormal.sample(&mut rng);
                    let re = v + sigma * n1;
                    let im = sigma * n2;
                    (re * re + im * im).sqrt() as f32
                } else {
                    v.abs() as f32
                }
            })
        })
    }

    #[test]
    fn extras_off_render_as_before() {
        let s = SynthSeries::new(SynthSpec {
            physio: PhysioSpec::default(),
            head_pose: [0.0; 6],
            threads: 2,
            ..small()
        })
        .unwrap();
        assert!(s.spec().physio.is_off());
        for i in 1..4 {
            assert_eq!(s.volume(i).values(), render_before_extras(&s, i).as_slice());
            assert_eq!(s.frame(i).physio, 1.0);
        }
        // At pose zero the calibration grid is the session's own.
        assert_eq!(s.canonical_reference().values(), s.clean_volume(0).values());
        assert_eq!(s.canonical_task_map().values(), s.task_map().values());
        assert_eq!(s.canonical_brain_map().values(), s.brain_map().values());
        assert_eq!(s.calibration_from_session(), Matrix4::identity());
    }

    fn quiet(volumes: usize) -> SynthSpec {
        SynthSpec {
            dims: [24, 28, 20],
            voxel_mm: [6.0, 6.0, 6.0],
            volumes_per_run: volumes,
            motion: MotionModel::Still,
            noise: 0.0,
            activation: 0.0,
            drift: DriftSpec::none(),
            ..Default::default()
        }
    }

    fn sd(v: &[f64]) -> f64 {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    }

    #[test]
    fn physiological_noise_has_the_asked_size_and_is_reproducible() {
        let n = 200;
        let physio = PhysioSpec {
            respiration: 0.01,
            cardiac: 0.005,
            low_freq: 0.01,
            ..PhysioSpec::default()
        };
        let plain = SynthSeries::new(quiet(n)).unwrap();
        let one = SynthSeries::new(SynthSpec {
            physio: physio.clone(),
            threads: 1,
            ..quiet(n)
        })
        .unwrap();
        let three = SynthSeries::new(SynthSpec {
            physio: physio.clone(),
            threads: 3,
            ..quiet(n)
        })
        .unwrap();
        assert_eq!(one.volume(7).values(), three.volume(7).values());
        assert_ne!(one.volume(7).values(), plain.volume(7).values());

        // Global: two sinusoids of peak 1 % and 0.5 %.
        let g: Vec<f64> = (0..n).map(|i| one.frame(i).physio).collect();
        let want = (physio.respiration.powi(2) / 2.0 + physio.cardiac.powi(2) / 2.0).sqrt();
        assert!((sd(&g) / want - 1.0).abs() < 0.3, "{} vs {want}", sd(&g));

        // Per voxel: what is left after the global factor, in the brain.
        let brain = one.canonical_brain_map();
        let inside: Vec<usize> = (0..brain.values().len())
            .filter(|&v| brain.values()[v] > 0.5)
            .collect();
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for i in 0..n {
            with.push(one.clean_volume(i).values().to_vec());
            without.push(plain.clean_volume(i).values().to_vec());
        }
        let sds: Vec<f64> = inside
            .iter()
            .map(|&v| {
                let series: Vec<f64> = (0..n)
                    .map(|i| with[i][v] as f64 / without[i][v] as f64 / g[i] - 1.0)
                    .collect();
                sd(&series)
            })
            .collect();
        let mean_sd = sds.iter().sum::<f64>() / sds.len() as f64;
        assert!((mean_sd / physio.low_freq - 1.0).abs() < 0.2, "{mean_sd}");
        // Outside the brain nothing fluctuates per voxel.
        let outside = (0..brain.values().len())
            .find(|&v| brain.values()[v] == 0.0 && without[0][v] > 100.0)
            .unwrap();
        for i in [3, 50, 120] {
            let r = with[i][outside] as f64 / without[i][outside] as f64 / g[i];
            assert!((r - 1.0).abs() < 1e-5, "{r}");
        }
    }

    /// Trilinear sample of `vol` at voxel coordinates `x`; `None` outside.
    fn trilinear(vol: &Volume, x: Vector3<f64>) -> Option<f64> {
        let [nx, ny, nz] = vol.grid().dims;
        let f = [x.x.floor(), x.y.floor(), x.z.floor()];
        if f.iter().any(|v| *v < 0.0)
            || f[0] + 1.0 >= nx as f64
            || f[1] + 1.0 >= ny as f64
            || f[2] + 1.0 >= nz as f64
        {
            return None;
        }
        let (i, j, k) = (f[0] as usize, f[1] as usize, f[2] as usize);
        let (a, b, c) = (x.x - f[0], x.y - f[1], x.z - f[2]);
        let at = |di: usize, dj: usize, dk: usize| {
            vol.values()[(i + di) + nx * ((j + dj) + ny * (k + dk))] as f64
        };
        let mut v = 0.0;
        for (di, wi) in [(0, 1.0 - a), (1, a)] {
            for (dj, wj) in [(0, 1.0 - b), (1, b)] {
                for (dk, wk) in [(0, 1.0 - c), (1, c)] {
                    v += wi * wj * wk * at(di, dj, dk);
                }
            }
        }
        Some(v)
    }

    fn correlation(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        cov / (va * vb).sqrt()
    }

    #[test]
    fn a_session_pose_moves_the_head_and_patterns_follow_the_tissue() {
        let event = Event {
            onset: 3.0,
            duration: 3.0,
            trial_type: "stimulus".into(),
            stim_id: Some("a".into()),
            modulation: 1.0,
        };
        let spec = SynthSpec {
            dims: [48, 56, 40],
            voxel_mm: [3.5, 3.5, 3.5],
            events: Some(vec![vec![event]]),
            ..quiet(10)
        };
        let pose = [0.05, -0.03, 0.04, 5.0, -4.0, 3.0];
        let cal = SynthSeries::new(spec.clone()).unwrap();
        let live = SynthSeries::new(SynthSpec {
            head_pose: pose,
            ..spec
        })
        .unwrap();
        assert_eq!(live.truth(0), MotionParams::default());
        // The calibration-grid views do not depend on the pose.
        assert_eq!(
            live.canonical_reference().values(),
            cal.clean_volume(0).values()
        );
        assert_eq!(live.canonical_task_map().values(), cal.task_map().values());
        assert_eq!(
            live.canonical_brain_map().values(),
            cal.brain_map().values()
        );
        assert_ne!(live.task_map().values(), cal.task_map().values());

        // Resampling the posed volume 0 through the pose gives the
        // calibration volume 0.
        let v = live.grid().vox_to_fsl();
        let v_inv = v.try_inverse().unwrap();
        let to_session = v_inv * live.calibration_from_session().try_inverse().unwrap() * v;
        let (a, b) = (cal.clean_volume(0), live.clean_volume(0));
        let brain = cal.brain_map();
        let [nx, ny, _] = a.grid().dims;
        let ijk = |n: usize| {
            Vector3::new(
                (n % nx) as f64,
                ((n / nx) % ny) as f64,
                (n / (nx * ny)) as f64,
            )
        };
        let (mut x, mut y, mut z) = (Vec::new(), Vec::new(), Vec::new());
        for n in (0..brain.values().len()).filter(|&n| brain.values()[n] > 0.5) {
            if let Some(s) = trilinear(&b, Grid::apply(&to_session, ijk(n))) {
                x.push(a.values()[n] as f64);
                y.push(s);
                z.push(b.values()[n] as f64);
            }
        }
        let (posed_back, unposed) = (correlation(&x, &y), correlation(&x, &z));
        assert!(posed_back > 0.99, "{posed_back}");
        assert!(
            unposed < posed_back - 0.05,
            "the pose moved little: {unposed}"
        );

        // Patterns picked on the calibration grid land on the same tissue.
        let (_, order) = pick_region(
            &cal.canonical_reference(),
            &cal.canonical_brain_map(),
            &cal.canonical_task_map(),
            60,
        )
        .unwrap();
        let patterns = StimulusPatterns::new(
            order.clone(),
            std::collections::HashMap::from([("a".to_string(), vec![1.0f32; 60])]),
            0.05,
        )
        .unwrap();
        let with = live.clone().with_patterns(patterns).unwrap();
        let (on, off) = (with.clean_volume(5), live.clean_volume(5));
        let set: std::collections::HashSet<usize> = order.iter().copied().collect();
        let to_calibration = to_session.try_inverse().unwrap();
        let (mut changed, mut same_tissue, mut same_index) = (0, 0, 0);
        for n in 0..on.values().len() {
            if off.values()[n] > 50.0 && on.values()[n] / off.values()[n] - 1.0 > 0.01 {
                changed += 1;
                // Nearest calibration voxel of the tissue seen here.
                let c = Grid::apply(&to_calibration, ijk(n)).map(f64::round);
                let idx = c.x as usize + nx * (c.y as usize + ny * c.z as usize);
                same_tissue += usize::from(set.contains(&idx));
                same_index += usize::from(set.contains(&n));
            }
        }
        assert!(changed >= 50, "{changed}");
        assert_eq!(same_tissue, changed);
        // Read on the session grid as if unposed, most would be elsewhere.
        assert!(same_index < changed / 2, "{same_index} of {changed}");
    }
}
