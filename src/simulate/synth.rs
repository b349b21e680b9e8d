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
use crate::messages::VolumeKey;
use crate::realign::transform::MotionParams;
use crate::volume::{Grid, Volume};

const TAG_MOTION: u64 = 1;
const TAG_NOISE: u64 = 2;
const TAG_EVENTS: u64 = 3;
const TAG_DRIFT: u64 = 4;

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
}

/// A synthetic session: renders volumes and reports their truth.
#[derive(Debug, Clone)]
pub struct SynthSeries {
    spec: SynthSpec,
    grid: Grid,
    phantom: Phantom,
    /// FSL scaled mm (reference frame) → head coordinates.
    head_from_fsl: Matrix4<f64>,
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
    /// Stimulus-specific patterns, with each reference voxel's column
    /// (`u32::MAX`: none) and the head → reference voxel map.
    patterns: Option<PatternState>,
}

#[derive(Debug, Clone)]
struct PatternState {
    patterns: std::sync::Arc<StimulusPatterns>,
    slot: Vec<u32>,
    ref_from_head: Matrix4<f64>,
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
        let threads = if spec.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            spec.threads
        };

        let mut series = SynthSeries {
            spec,
            grid,
            phantom,
            head_from_fsl,
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
        };
        // Volume 0 has zero motion, so its matrix is the identity whatever
        // the centre: it can be rendered before the centre is known.
        let q0 = series.head_from_fsl * series.vox_to_fsl;
        let clean = series.render(0, &q0, false);
        let brain = series.par_slices(|k, out| {
            series.for_each_voxel(&q0, k, out, |q| {
                let b = series.phantom.brain_weight(q);
                if b > 0.5 { 1.0 } else { 0.0 }
            })
        });
        let (sum, count) = clean
            .values()
            .iter()
            .zip(&brain)
            .filter(|(_, b)| **b > 0.0)
            .fold((0.0f64, 0usize), |(s, c), (v, _)| (s + *v as f64, c + 1));
        series.brain_mean = if count > 0 { sum / count as f64 } else { 0.0 };
        series.sigma = series.spec.noise * series.brain_mean;
        let first = series.render(0, &q0, true);
        series.centre = first.fsl_centre_of_gravity();
        series.first = first;
        Ok(series)
    }

    /// Add stimulus-specific patterns: from now on each event whose
    /// stimulus has a pattern adds it (scaled by the event's BOLD response
    /// and the amplitude) to the head tissue at the pattern's reference
    /// voxels, moving with the head. Volume 0 (no response yet) is unchanged.
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
        let q0 = self.head_from_fsl * self.vox_to_fsl;
        let ref_from_head = q0
            .try_inverse()
            .ok_or_else(|| SimError::Spec("voxel → head matrix is singular".into()))?;
        self.patterns = Some(PatternState {
            patterns: std::sync::Arc::new(patterns),
            slot,
            ref_from_head,
        });
        Ok(self)
    }

    /// Brain tissue (weight > 0.5) on the reference grid, as 0/1.
    pub fn brain_map(&self) -> Volume {
        let q0 = self.head_from_fsl * self.vox_to_fsl;
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
    /// responding events of amplitude × BOLD × the stimulus's pattern.
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
                .and_then(|id| ps.patterns.response(id))
            else {
                continue;
            };
            let a = act.get_or_insert_with(|| vec![0.0; resp.len()]);
            let g = (w * ps.patterns.amplitude) as f32;
            for (x, &v) in a.iter_mut().zip(resp) {
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
        FrameTruth {
            key,
            time_s: t,
            params: self.motion[i],
            bold: self.bold[r].at(t),
            drift,
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
    /// phantom's head coordinates (world RAS about the field-of-view centre).
    pub fn head_from_fsl(&self) -> Matrix4<f64> {
        self.head_from_fsl
    }

    /// Noise-free phantom intensity at a point given in the reference's FSL
    /// scaled-mm frame (no task, no drift).
    pub fn reference_intensity(&self, y_fsl: Vector3<f64>) -> f64 {
        self.phantom
            .intensity(Grid::apply(&self.head_from_fsl, y_fsl))
    }

    /// Task weight (0..1) at a point of the reference's FSL frame.
    pub fn task_weight(&self, y_fsl: Vector3<f64>) -> f64 {
        self.phantom
            .task_weight(Grid::apply(&self.head_from_fsl, y_fsl))
    }

    /// The generated volume `i`, noise included. Panics when `i` is out of
    /// range.
    pub fn volume(&self, i: usize) -> Volume {
        if i == 0 {
            return self.first.clone();
        }
        let q = self.head_from_fsl * self.matrix(i) * self.vox_to_fsl;
        self.render(i, &q, true)
    }

    /// Volume `i` without noise (motion, task and drift included).
    pub fn clean_volume(&self, i: usize) -> Volume {
        let q = self.head_from_fsl * self.matrix(i) * self.vox_to_fsl;
        self.render(i, &q, false)
    }

    /// Task weight sampled on the reference (volume 0) grid.
    pub fn task_map(&self) -> Volume {
        let q = self.head_from_fsl * self.vox_to_fsl;
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

    /// Render volume `i` through the voxel → head map `q`.
    fn render(&self, i: usize, q: &Matrix4<f64>, noise: bool) -> Volume {
        let frame = self.frame(i);
        let task_gain = self.spec.activation * frame.bold;
        let want_task = task_gain != 0.0;
        let drift = frame.drift;
        let sigma = if noise { self.sigma } else { 0.0 };
        let noise_seed = mix_seed(mix_seed(self.spec.seed, TAG_NOISE), i as u64);
        let activity = self.pattern_activity(i);
        let pattern = |p: &Vector3<f64>| -> f64 {
            let (Some(act), Some(ps)) = (&activity, &self.patterns) else {
                return 0.0;
            };
            // The reference voxel this head point belongs to (nearest).
            let v = Grid::apply(&ps.ref_from_head, *p);
            let [nx, ny, nz] = self.grid.dims;
            let (i, j, k) = (v.x.round(), v.y.round(), v.z.round());
            if i < 0.0 || j < 0.0 || k < 0.0 || i >= nx as f64 || j >= ny as f64 || k >= nz as f64 {
                return 0.0;
            }
            let idx = i as usize + nx * (j as usize + ny * k as usize);
            match ps.slot[idx] {
                u32::MAX => 0.0,
                c => act[c as usize] as f64,
            }
        };
        let vals = self.par_slices(|k, out| {
            // One generator per slice: the same numbers whatever the
            // thread count.
            let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(noise_seed, k as u64));
            self.for_each_voxel(q, k, out, |p| {
                let (ph, w) = self.phantom.eval(p, want_task);
                let s = ph * (1.0 + task_gain * w + pattern(p)) * drift;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
