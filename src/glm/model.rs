//! The incremental LSS model of one run.
//!
//! In: realigned masked frames (in any order, with gaps), their motion
//! parameters, and trials as they become known. Out: for any trial, its
//! least-squares-separate beta per voxel — OLS or nilearn's AR(1) — from the
//! frames in so far.
//!
//! How it stays cheap: the design is nilearn's design of the whole planned
//! run (every column a fixed function of the frame), so each frame only adds
//! its products with those columns into per-voxel sums (`P = Xᵀy`, the lag-1
//! sums `Σ xᵢ yᵢ₋₁`, `Σ xᵢ₋₁ yᵢ`, `Σ y²`, `Σ yᵢ yᵢ₋₁`). A trial's fit then
//! needs only those sums and a few p×p matrices: O(p²·V) per trial and
//! O(active columns·V) per frame, whatever the run length. The drift
//! columns used at a given point are the first `k` of the run's cosine
//! basis, with `k` the order nilearn would give the time span so far, so an
//! early trial is not fitted with more drift terms than its data support.

use std::collections::{BTreeMap, BTreeSet};

use nalgebra::{DMatrix, DVector};

use super::design::{
    DesignSpec, Stimulus, condition_regressor, cosine_drift, drift_order, frame_times,
};

/// How noise is modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseModel {
    /// Ordinary least squares.
    Ols,
    /// nilearn's AR(1): per-voxel lag-1 coefficient from the OLS residuals,
    /// truncated to 1/100 bins, whitened refit per bin.
    Ar1,
}

/// How voxel time series are scaled before the fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalScaling {
    /// Raw signal units (nilearn `signal_scaling=False`).
    None,
    /// Percent of each voxel's mean over the frames used (nilearn's default
    /// `signal_scaling=0`: `100·(y/max(mean, 1) − 1)`).
    Percent,
}

/// Which cosine drift basis a trial's model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftBasis {
    /// The planned run's basis, its first k columns with k nilearn's order
    /// for the span so far: accumulated per frame, O(p²·V) per trial.
    #[default]
    Run,
    /// nilearn's basis for the frames so far (N = span so far), rebuilt
    /// for each trial: what real-time MindEye gets by refitting nilearn's
    /// `FirstLevelModel` on the run so far at every trial. Costs one pass
    /// over the frames held per drift column and trial.
    FramesSoFar,
}

/// Model settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Design settings.
    pub design: DesignSpec,
    /// Noise model.
    pub noise: NoiseModel,
    /// Signal scaling.
    pub scaling: SignalScaling,
    /// AR(1) bins per unit of the coefficient (nilearn: 100).
    pub ar_bins: usize,
    /// The drift basis of each trial's model.
    pub drift_basis: DriftBasis,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            design: DesignSpec::default(),
            noise: NoiseModel::Ar1,
            scaling: SignalScaling::Percent,
            ar_bins: 100,
            drift_basis: DriftBasis::Run,
        }
    }
}

/// Why a trial could not be estimated now.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EstimateError {
    /// No such trial.
    #[error("unknown trial {0}")]
    UnknownTrial(usize),
    /// Too few frames for the number of regressors.
    #[error(
        "{frames} frames for {regressors} regressors: need {needed} residual degrees of freedom"
    )]
    TooFewFrames {
        /// Frames in.
        frames: usize,
        /// Regressors in the model.
        regressors: usize,
        /// Residual degrees of freedom required.
        needed: usize,
    },
    /// The trial's regressor is zero over the frames in.
    #[error("the trial's regressor is zero over the frames received (onset after the last frame?)")]
    NoResponse,
    /// The design is singular.
    #[error("the design matrix is singular")]
    Singular,
    /// A frame the fit needs has left the ring buffer.
    #[error("frame {0} is no longer held in the ring buffer")]
    FrameNotHeld(usize),
}

/// A trial's estimate.
#[derive(Debug, Clone)]
pub struct Estimate {
    /// Probe effect size per voxel (after signal scaling).
    pub beta: Vec<f32>,
    /// Frames used.
    pub frames: usize,
    /// Regressors in the model (probe, reference, motion, drift, constant).
    pub regressors: usize,
    /// Names of the regressors, in design order.
    pub columns: Vec<String>,
}

/// Where the model reads frames it has seen before: the run's ring buffer.
/// Positions count from the run's first volume.
pub trait FrameSource {
    /// Masked voxels of the frame at `position`, if still held.
    fn frame(&self, position: usize) -> Option<&[f32]>;
}

impl FrameSource for BTreeMap<usize, Vec<f32>> {
    fn frame(&self, position: usize) -> Option<&[f32]> {
        self.get(&position).map(Vec::as_slice)
    }
}

/// A source plus the frame being added (which may not be stored yet).
struct WithFrame<'a> {
    inner: &'a dyn FrameSource,
    position: usize,
    data: &'a [f32],
}

impl FrameSource for WithFrame<'_> {
    fn frame(&self, position: usize) -> Option<&[f32]> {
        if position == self.position {
            Some(self.data)
        } else {
            self.inner.frame(position)
        }
    }
}

/// Column kinds of the accumulated design ("atoms").
const CONST: usize = 0;
const MOTION: usize = 1; // 6 columns
const ALL_TRIALS: usize = 7;
const DRIFT: usize = 8;

/// Per-voxel sums for one time function `x`.
#[derive(Debug, Clone)]
struct Sums {
    /// Σ x_t y_t
    p: Vec<f64>,
    /// Σ_i x_i y_{i-1} over consecutive frames
    l1: Vec<f64>,
    /// Σ_i x_{i-1} y_i
    l2: Vec<f64>,
}

impl Sums {
    fn new(v: usize, lags: bool) -> Sums {
        let l = if lags { v } else { 0 };
        Sums {
            p: vec![0.0; v],
            l1: vec![0.0; l],
            l2: vec![0.0; l],
        }
    }

    fn add_scaled(&mut self, other: &Sums, s: f64) {
        for (a, b) in self.p.iter_mut().zip(&other.p) {
            *a += s * b;
        }
        for (a, b) in self.l1.iter_mut().zip(&other.l1) {
            *a += s * b;
        }
        for (a, b) in self.l2.iter_mut().zip(&other.l2) {
            *a += s * b;
        }
    }
}

#[inline]
fn axpy64(acc: &mut [f64], s: f64, y: &[f64]) {
    if s == 0.0 {
        return;
    }
    for (a, &v) in acc.iter_mut().zip(y) {
        *a += s * v;
    }
}

#[inline]
fn axpy(acc: &mut [f64], s: f64, y: &[f32]) {
    if s == 0.0 {
        return;
    }
    for (a, &v) in acc.iter_mut().zip(y) {
        *a += s * v as f64;
    }
}

struct Trial {
    regressor: Vec<f64>,
    /// Sums while the trial still needs estimating.
    sums: Option<Sums>,
}

/// The model of one run.
pub struct RunModel {
    spec: ModelSpec,
    voxels: usize,
    planned: usize,
    drift: Vec<Vec<f64>>,
    all_trials: Vec<f64>,
    motion: Vec<[f64; 6]>,
    trials: Vec<Trial>,
    stimuli: Vec<Stimulus>,
    present: BTreeSet<usize>,
    /// Per-voxel value subtracted from every frame before it enters the
    /// sums (the first frame's). The constant column absorbs it exactly,
    /// and the sums then hold fluctuations rather than squared means:
    /// r0 = Σy² − bᵀP stops losing ~7 digits to cancellation, which would
    /// otherwise flip the odd voxel's AR(1) bin.
    offset: Option<Vec<f32>>,
    /// Sums of the fixed atoms: constant, 6 motion, all-trials, drift.
    atoms: Vec<Sums>,
    syy: Vec<f64>,
    sll: Vec<f64>,
}

impl RunModel {
    /// A run of `planned` frames (grown automatically if exceeded) with
    /// `voxels` masked voxels.
    pub fn new(spec: ModelSpec, planned: usize, voxels: usize) -> RunModel {
        let planned = planned.max(2);
        let lags = spec.noise == NoiseModel::Ar1;
        let ft = frame_times(planned, spec.design.tr, spec.design.slice_time_ref);
        let drift = cosine_drift(&ft, spec.design.high_pass);
        let atoms = (0..DRIFT + drift.len())
            .map(|_| Sums::new(voxels, lags))
            .collect();
        RunModel {
            voxels,
            planned,
            all_trials: vec![0.0; planned],
            motion: vec![[0.0; 6]; planned],
            trials: Vec::new(),
            stimuli: Vec::new(),
            present: BTreeSet::new(),
            offset: None,
            atoms,
            syy: vec![0.0; voxels],
            sll: if lags { vec![0.0; voxels] } else { Vec::new() },
            drift,
            spec,
        }
    }

    /// Frames planned (the length the design is built for).
    pub fn planned(&self) -> usize {
        self.planned
    }

    /// Frames received.
    pub fn frames_in(&self) -> usize {
        self.present.len()
    }

    /// Position of the last frame received.
    pub fn last_position(&self) -> Option<usize> {
        self.present.iter().next_back().copied()
    }

    /// Value of atom `a` at position `t`.
    fn atom(&self, a: usize, t: usize) -> f64 {
        match a {
            CONST => 1.0,
            ALL_TRIALS => self.all_trials[t],
            a if a < ALL_TRIALS => self.motion[t][a - MOTION],
            a => self.drift[a - DRIFT][t],
        }
    }

    fn lags(&self) -> bool {
        self.spec.noise == NoiseModel::Ar1
    }

    /// Add the contribution of the pair of consecutive frames (p, q) with
    /// sign `s` to every lag sum (atoms, trials, Σyy lagged).
    fn pair(&mut self, p: usize, q: usize, s: f64, frames: &dyn FrameSource) {
        let (Some(yp), Some(yq)) = (frames.frame(p), frames.frame(q)) else {
            tracing::warn!("frames {p} and {q} are no longer held; lag-1 sums skip that pair");
            return;
        };
        let (yp, yq) = (self.centred(yp), self.centred(yq));
        for a in 0..self.atoms.len() {
            let (xq, xp) = (self.atom(a, q), self.atom(a, p));
            axpy(&mut self.atoms[a].l1, s * xq, &yp);
            axpy(&mut self.atoms[a].l2, s * xp, &yq);
        }
        for tr in &mut self.trials {
            if let Some(sums) = tr.sums.as_mut() {
                axpy(&mut sums.l1, s * tr.regressor[q], &yp);
                axpy(&mut sums.l2, s * tr.regressor[p], &yq);
            }
        }
        for ((a, &u), &w) in self.sll.iter_mut().zip(&yq).zip(&yp) {
            *a += s * u as f64 * w as f64;
        }
    }

    /// Add a frame at `position` (0 = the run's first volume). Frames may
    /// come in any order; a frame already in is ignored (returns false).
    /// `frames` must hold the frames seen so far (at least the neighbours
    /// of `position`); `data` is this frame's voxels.
    pub fn add_frame(
        &mut self,
        position: usize,
        data: &[f32],
        motion: [f64; 6],
        frames: &dyn FrameSource,
    ) -> bool {
        if data.len() != self.voxels || self.present.contains(&position) {
            return false;
        }
        if position >= self.planned {
            self.grow(position + 1, frames);
        }
        let frames = WithFrame {
            inner: frames,
            position,
            data,
        };
        self.motion[position] = motion;
        if self.offset.is_none() {
            self.offset = Some(data.to_vec());
        }
        let prev = self.present.range(..position).next_back().copied();
        let next = self.present.range(position + 1..).next().copied();
        self.present.insert(position);
        let centred = self.centred(data);
        let data = centred.as_slice();
        for a in 0..self.atoms.len() {
            let x = self.atom(a, position);
            axpy(&mut self.atoms[a].p, x, data);
        }
        for tr in &mut self.trials {
            if let Some(sums) = tr.sums.as_mut() {
                axpy(&mut sums.p, tr.regressor[position], data);
            }
        }
        for (a, &v) in self.syy.iter_mut().zip(data) {
            *a += v as f64 * v as f64;
        }
        if self.lags() {
            if let (Some(p), Some(q)) = (prev, next) {
                self.pair(p, q, -1.0, &frames);
            }
            if let Some(p) = prev {
                self.pair(p, position, 1.0, &frames);
            }
            if let Some(q) = next {
                self.pair(position, q, 1.0, &frames);
            }
        }
        true
    }

    /// A frame minus the per-voxel offset (exact in f32: both values are
    /// close, so the subtraction is exact by Sterbenz's lemma).
    fn centred(&self, y: &[f32]) -> Vec<f32> {
        match &self.offset {
            Some(o) => y.iter().zip(o).map(|(a, b)| a - b).collect(),
            None => y.to_vec(),
        }
    }

    /// The sums of time function `x` over the frames in.
    fn sums_of(&self, x: &[f64], frames: &dyn FrameSource) -> Sums {
        let mut s = Sums::new(self.voxels, self.lags());
        let pos: Vec<usize> = self.present.iter().copied().collect();
        for (i, &t) in pos.iter().enumerate() {
            // Only frames where the function (or its lag partner) is non-zero
            // contribute: a new trial touches only frames after its onset.
            let partner = if i > 0 { x[pos[i - 1]] } else { 0.0 };
            if x[t] == 0.0 && partner == 0.0 {
                continue;
            }
            let Some(y) = frames.frame(t) else {
                tracing::warn!("frame {t} is no longer held; a new column's sums skip it");
                continue;
            };
            let y = self.centred(y);
            axpy(&mut s.p, x[t], &y);
            if self.lags() && i > 0 {
                let p = pos[i - 1];
                if let Some(yp) = frames.frame(p) {
                    let yp = self.centred(yp);
                    axpy(&mut s.l1, x[t], &yp);
                    axpy(&mut s.l2, x[p], &y);
                }
            }
        }
        s
    }

    /// The sums of several time functions in one pass over the frames
    /// (each frame centred once): the per-trial drift basis.
    fn sums_of_many(&self, xs: &[Vec<f64>], frames: &dyn FrameSource) -> Vec<Sums> {
        let lags = self.lags();
        let mut out: Vec<Sums> = xs.iter().map(|_| Sums::new(self.voxels, lags)).collect();
        let mut prev: Option<(usize, Vec<f32>)> = None;
        for &t in &self.present {
            let Some(y) = frames.frame(t) else {
                tracing::warn!("frame {t} is no longer held; the drift sums skip it");
                prev = None;
                continue;
            };
            let y = self.centred(y);
            for (x, s) in xs.iter().zip(out.iter_mut()) {
                let xt = x.get(t).copied().unwrap_or(0.0);
                axpy(&mut s.p, xt, &y);
                if let Some((p, yp)) = &prev
                    && lags
                {
                    axpy(&mut s.l1, xt, yp);
                    axpy(&mut s.l2, x.get(*p).copied().unwrap_or(0.0), &y);
                }
            }
            prev = Some((t, y));
        }
        out
    }

    /// nilearn's cosine drift for the frames so far (positions 0..span),
    /// with its sums, when the spec asks for it; else nothing.
    fn local_drift(&self, frames: &dyn FrameSource) -> Local {
        if self.spec.drift_basis != DriftBasis::FramesSoFar {
            return Local::default();
        }
        let span = self.last_position().map_or(0, |p| p + 1);
        let ft = frame_times(span, self.spec.design.tr, self.spec.design.slice_time_ref);
        let x = cosine_drift(&ft, self.spec.design.high_pass);
        let sums = self.sums_of_many(&x, frames);
        Local { x, sums }
    }

    /// Register a trial; returns its index. Frames already in (read from
    /// `frames`) are folded in.
    pub fn add_trial(&mut self, stimulus: Stimulus, frames: &dyn FrameSource) -> usize {
        let ft = frame_times(
            self.planned,
            self.spec.design.tr,
            self.spec.design.slice_time_ref,
        );
        let regressor = condition_regressor(&[stimulus], &ft, &self.spec.design);
        let sums = self.sums_of(&regressor, frames);
        self.atoms[ALL_TRIALS].add_scaled(&sums, 1.0);
        for (a, r) in self.all_trials.iter_mut().zip(&regressor) {
            *a += r;
        }
        self.trials.push(Trial {
            regressor,
            sums: Some(sums),
        });
        self.stimuli.push(stimulus);
        self.trials.len() - 1
    }

    /// Release a trial's own sums once it will not be estimated again.
    pub fn retire_trial(&mut self, trial: usize) {
        if let Some(t) = self.trials.get_mut(trial) {
            t.sums = None;
        }
    }

    /// Rebuild for a longer run: new design (drift basis, regressors) and
    /// all sums recomputed from the frames kept.
    fn grow(&mut self, needed: usize, frames: &dyn FrameSource) {
        let planned = needed.max(self.planned * 3 / 2);
        tracing::warn!(
            "run longer than planned ({} frames): rebuilding the design for {planned} frames",
            self.planned
        );
        let mut fresh = RunModel::new(self.spec.clone(), planned, self.voxels);
        fresh.offset = self.offset.clone();
        let stimuli = std::mem::take(&mut self.stimuli);
        let retired: Vec<bool> = self.trials.iter().map(|t| t.sums.is_none()).collect();
        let mut lost = 0;
        for &t in &self.present {
            match frames.frame(t) {
                Some(y) => {
                    fresh.add_frame(t, y, self.motion[t], frames);
                }
                None => lost += 1,
            }
        }
        if lost > 0 {
            tracing::error!(
                "{lost} early frames are no longer held: the rebuilt sums leave them out"
            );
        }
        for (s, r) in stimuli.into_iter().zip(retired) {
            let i = fresh.add_trial(s, frames);
            if r {
                fresh.retire_trial(i);
            }
        }
        *self = fresh;
    }

    /// The stimulus of trial `k`.
    pub fn stimulus(&self, k: usize) -> Option<Stimulus> {
        self.stimuli.get(k).copied()
    }

    /// Number of regressors trial `k`'s model would have now (for the
    /// degrees-of-freedom check before estimating).
    pub fn regressors_now(&self, k: usize) -> usize {
        self.columns(k).map_or(0, |c| c.len())
    }

    /// The design columns for trial `k` over the frames in: (name, values).
    fn columns(&self, k: usize) -> Option<Vec<(String, Col)>> {
        let trial = self.trials.get(k)?;
        let pos: Vec<usize> = self.present.iter().copied().collect();
        let nonzero = |f: &dyn Fn(usize) -> f64| pos.iter().any(|&t| f(t).abs() > 1e-12);
        let mut cols = vec![("probe".to_string(), Col::Probe)];
        if nonzero(&|t| self.all_trials[t] - trial.regressor[t]) {
            cols.push(("reference".into(), Col::Reference));
        }
        for (i, name) in ["rx", "ry", "rz", "tx", "ty", "tz"].iter().enumerate() {
            if nonzero(&|t| self.motion[t][i]) {
                cols.push(((*name).into(), Col::Atom(MOTION + i)));
            }
        }
        let span = self.last_position().map_or(0, |p| p + 1);
        let order = drift_order(span, self.spec.design.tr, self.spec.design.high_pass);
        match self.spec.drift_basis {
            DriftBasis::Run => {
                for d in 0..order.min(self.drift.len()) {
                    cols.push((format!("drift_{}", d + 1), Col::Atom(DRIFT + d)));
                }
            }
            DriftBasis::FramesSoFar => {
                for d in 0..order {
                    cols.push((format!("drift_{}", d + 1), Col::Local(d)));
                }
            }
        }
        cols.push(("constant".into(), Col::Atom(CONST)));
        Some(cols)
    }

    fn col_value(&self, k: usize, c: Col, t: usize, local: &Local) -> f64 {
        match c {
            Col::Probe => self.trials[k].regressor[t],
            Col::Reference => self.all_trials[t] - self.trials[k].regressor[t],
            Col::Atom(a) => self.atom(a, t),
            Col::Local(d) => local
                .x
                .get(d)
                .and_then(|x| x.get(t))
                .copied()
                .unwrap_or(0.0),
        }
    }

    /// Per-voxel sums for column `c` of trial `k`'s model (sum kind `f`).
    fn col_sums<'a>(
        &'a self,
        k: usize,
        c: Col,
        local: &'a Local,
        f: fn(&'a Sums) -> &'a [f64],
    ) -> ColSums<'a> {
        let own = self.trials[k].sums.as_ref();
        match (c, own) {
            (Col::Probe, Some(s)) => ColSums::One(f(s)),
            (Col::Reference, Some(s)) => ColSums::Diff(f(&self.atoms[ALL_TRIALS]), f(s)),
            (Col::Atom(a), _) => ColSums::One(f(&self.atoms[a])),
            (Col::Local(d), _) => local
                .sums
                .get(d)
                .map_or(ColSums::Zero, |s| ColSums::One(f(s))),
            _ => ColSums::Zero,
        }
    }

    /// Estimate trial `k` from the frames in, requiring `min_dof` residual
    /// degrees of freedom.
    pub fn estimate(
        &self,
        k: usize,
        min_dof: usize,
        frames: &dyn FrameSource,
    ) -> Result<Estimate, EstimateError> {
        let cols = self.columns(k).ok_or(EstimateError::UnknownTrial(k))?;
        if self.trials[k].sums.is_none() {
            return Err(EstimateError::UnknownTrial(k));
        }
        let pos: Vec<usize> = self.present.iter().copied().collect();
        let (n, p) = (pos.len(), cols.len());
        if n < p + min_dof {
            return Err(EstimateError::TooFewFrames {
                frames: n,
                regressors: p,
                needed: min_dof,
            });
        }
        if !pos
            .iter()
            .any(|&t| self.trials[k].regressor[t].abs() > 1e-12)
        {
            return Err(EstimateError::NoResponse);
        }
        let local = self.local_drift(frames);
        let x = DMatrix::from_fn(n, p, |i, c| self.col_value(k, cols[c].1, pos[i], &local));
        let g = x.transpose() * &x;
        let v = self.voxels;
        let sums: Vec<ColSums> = cols
            .iter()
            .map(|(_, c)| self.col_sums(k, *c, &local, |s| &s.p))
            .collect();
        let mut beta = vec![0.0f64; v];
        match self.spec.noise {
            NoiseModel::Ols => {
                let gi = solve_columns(&g, &[0]).ok_or(EstimateError::Singular)?;
                for (c, s) in sums.iter().enumerate() {
                    s.axpy_into(&mut beta, gi[(c, 0)]);
                }
            }
            NoiseModel::Ar1 => {
                self.ar1(k, &cols, &pos, &x, &g, &sums, &local, frames, &mut beta)?
            }
        }
        if self.spec.scaling == SignalScaling::Percent {
            let sum_y = &self.atoms[CONST].p;
            let offset = self.offset.as_deref().unwrap_or(&[]);
            for (i, (b, s)) in beta.iter_mut().zip(sum_y).enumerate() {
                let mean = s / n as f64 + offset.get(i).copied().unwrap_or(0.0) as f64;
                *b *= 100.0 / mean.max(1.0);
            }
        }
        Ok(Estimate {
            beta: beta.iter().map(|&b| b as f32).collect(),
            frames: n,
            regressors: p,
            columns: cols.into_iter().map(|(name, _)| name).collect(),
        })
    }

    /// nilearn's AR(1) refit, from the sums.
    #[allow(clippy::too_many_arguments)]
    fn ar1(
        &self,
        k: usize,
        cols: &[(String, Col)],
        pos: &[usize],
        x: &DMatrix<f64>,
        g: &DMatrix<f64>,
        sums: &[ColSums],
        local: &Local,
        frames: &dyn FrameSource,
        beta: &mut [f64],
    ) -> Result<(), EstimateError> {
        let (n, p, v) = (pos.len(), cols.len(), self.voxels);
        let l1: Vec<ColSums> = cols
            .iter()
            .map(|(_, c)| self.col_sums(k, *c, local, |s| &s.l1))
            .collect();
        let l2: Vec<ColSums> = cols
            .iter()
            .map(|(_, c)| self.col_sums(k, *c, local, |s| &s.l2))
            .collect();
        // Full OLS coefficients b = G⁻¹P and the residual sums
        //   r0 = Σy² − bᵀP,  r1 = Σyᵢyᵢ₋₁ − bᵀ(L1 + L2) + bᵀCb,
        // with C = Σ_{i≥1} x_i x_{i−1}ᵀ over consecutive frames. Voxels go in
        // blocks that stay in L1 cache, and P, L1 + L2 are read straight from
        // the running sums: whole-length temporaries would make this
        // memory-bound (and page-fault on every estimate).
        let gi = solve_columns(g, &(0..p).collect::<Vec<_>>()).ok_or(EstimateError::Singular)?;
        let mut cm = DMatrix::<f64>::zeros(p, p);
        for i in 1..n {
            cm += x.row(i).transpose() * x.row(i - 1);
        }
        const BLOCK: usize = 64;
        let mut pb = vec![0.0f64; p * BLOCK];
        let mut lb = vec![0.0f64; p * BLOCK];
        let fill = |pb: &mut [f64], lb: &mut [f64], start: usize, len: usize| {
            for c in 0..p {
                sums[c].fill(start, &mut pb[c * BLOCK..c * BLOCK + len]);
                l1[c].fill(start, &mut lb[c * BLOCK..c * BLOCK + len]);
                l2[c].add_to(start, &mut lb[c * BLOCK..c * BLOCK + len]);
            }
        };
        let bins = self.spec.ar_bins.max(1) as f64;
        let nf = n as f64;
        let mut label = vec![0i64; v];
        let mut b = vec![0.0f64; p * BLOCK];
        let mut cb = vec![0.0f64; p * BLOCK];
        let mut r0 = [0.0f64; BLOCK];
        let mut r1 = [0.0f64; BLOCK];
        for start in (0..v).step_by(BLOCK) {
            let len = BLOCK.min(v - start);
            fill(&mut pb, &mut lb, start, len);
            b.iter_mut().for_each(|a| *a = 0.0);
            cb.iter_mut().for_each(|a| *a = 0.0);
            for c in 0..p {
                let bc = &mut b[c * BLOCK..c * BLOCK + len];
                for d in 0..p {
                    axpy64(bc, gi[(c, d)], &pb[d * BLOCK..d * BLOCK + len]);
                }
            }
            for c in 0..p {
                let cbc = &mut cb[c * BLOCK..c * BLOCK + len];
                for d in 0..p {
                    axpy64(cbc, cm[(c, d)], &b[d * BLOCK..d * BLOCK + len]);
                }
            }
            r0[..len].copy_from_slice(&self.syy[start..start + len]);
            r1[..len].copy_from_slice(&self.sll[start..start + len]);
            for c in 0..p {
                let o = c * BLOCK;
                for i in 0..len {
                    r0[i] -= pb[o + i] * b[o + i];
                    r1[i] += b[o + i] * (cb[o + i] - lb[o + i]);
                }
            }
            // nilearn's Yule–Walker lag-1 coefficient, truncated to 1/bins.
            // A lag-1 autocorrelation lies in [−1, 1]; outside means a
            // degenerate voxel (flat, or numerically exhausted), which must
            // not blow up the number of bins.
            for i in 0..len {
                let rho = if r0[i] > 0.0 {
                    (r1[i] / ((nf - 1.0) * nf)) / (r0[i] / (nf * nf))
                } else {
                    0.0
                };
                label[start + i] = if rho.is_finite() {
                    ((rho * bins) as i64).clamp(-(bins as i64), bins as i64)
                } else {
                    0
                };
            }
        }
        let (lo, hi) = label
            .iter()
            .fold((i64::MAX, i64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
        let last = *pos.last().ok_or(EstimateError::Singular)?;
        let y_last = self.centred(
            frames
                .frame(last)
                .ok_or(EstimateError::FrameNotHeld(last))?,
        );
        let x_last = x.row(n - 1).transpose();
        let g_tail = g - &x_last * x_last.transpose();
        let cs = &cm + cm.transpose();
        // Whitened-fit weights per bin (the probe row of G_w⁻¹, with
        // G_w = G − ρ(C + Cᵀ) + ρ²(G − x_last x_lastᵀ)), and their product
        // with the last frame's regressors.
        let nb = (hi - lo + 1).max(0) as usize;
        let mut w = vec![0.0f64; p * nb];
        let mut w_last = vec![0.0f64; nb];
        let mut used = vec![false; nb];
        for &lab in &label {
            used[(lab - lo) as usize] = true;
        }
        for j in (0..nb).filter(|&j| used[j]) {
            let rho = (lo + j as i64) as f64 * 1.0 / bins;
            let gw = g - &cs * rho + &g_tail * (rho * rho);
            let sol = solve_columns(&gw, &[0]).ok_or(EstimateError::Singular)?;
            for c in 0..p {
                w[j * p + c] = sol[(c, 0)];
            }
            w_last[j] = (0..p).map(|c| sol[(c, 0)] * x_last[c]).sum();
        }
        // β = wᵀ[P − ρ(L1 + L2) + ρ²(P − x_last·y_last)] per voxel
        //   = (1 + ρ²)·wᵀP − ρ·wᵀ(L1 + L2) − ρ²·y_last·wᵀx_last.
        for start in (0..v).step_by(BLOCK) {
            let len = BLOCK.min(v - start);
            fill(&mut pb, &mut lb, start, len);
            for i in 0..len {
                let vox = start + i;
                let j = (label[vox] - lo) as usize;
                let wj = &w[j * p..(j + 1) * p];
                let (mut wp, mut wl) = (0.0, 0.0);
                for c in 0..p {
                    wp += wj[c] * pb[c * BLOCK + i];
                    wl += wj[c] * lb[c * BLOCK + i];
                }
                let rho = label[vox] as f64 * 1.0 / bins;
                beta[vox] =
                    (1.0 + rho * rho) * wp - rho * wl - rho * rho * y_last[vox] as f64 * w_last[j];
            }
        }
        Ok(())
    }

    /// The last frame of the weighted series `z = Σ w_v y_v`, cleaned of
    /// the nuisance part of the design (motion, drift, constant) fitted on
    /// all frames in: `(cleaned value, mean of z over the frames)`. With too
    /// few frames for the full nuisance model (fewer than its columns plus
    /// `min_dof`), only the mean is removed. Used for per-volume feedback;
    /// O(columns·voxels).
    pub fn clean_last(
        &self,
        weights: &[f64],
        frames: &dyn FrameSource,
        min_dof: usize,
    ) -> Option<(f64, f64)> {
        let pos: Vec<usize> = self.present.iter().copied().collect();
        let last = *pos.last()?;
        let n = pos.len();
        let y_last = self.centred(frames.frame(last)?);
        let offset = self.offset.as_deref()?;
        let sum_const = &self.atoms[CONST].p;
        let mut z_last = 0.0;
        let mut mean = 0.0;
        let mut pw_const = 0.0;
        for (i, &w) in weights.iter().enumerate().take(self.voxels) {
            if w != 0.0 {
                z_last += w * y_last[i] as f64;
                mean += w * (sum_const[i] / n as f64 + offset[i] as f64);
                pw_const += w * sum_const[i];
            }
        }
        // Nuisance columns: motion (if it varies), drift by span, constant.
        let mut cols: Vec<usize> = (0..6)
            .filter(|&i| pos.iter().any(|&t| self.motion[t][i].abs() > 1e-12))
            .map(|i| MOTION + i)
            .collect();
        let span = last + 1;
        let order = drift_order(span, self.spec.design.tr, self.spec.design.high_pass)
            .min(self.drift.len());
        cols.extend((0..order).map(|d| DRIFT + d));
        cols.push(CONST);
        if n < cols.len() + min_dof {
            return Some((z_last - pw_const / n as f64, mean));
        }
        let q = cols.len();
        let x = DMatrix::from_fn(n, q, |i, c| self.atom(cols[c], pos[i]));
        let g = x.transpose() * &x;
        let mut pw = DVector::<f64>::zeros(q);
        for (c, &a) in cols.iter().enumerate() {
            let p = &self.atoms[a].p;
            pw[c] = weights.iter().zip(p).map(|(w, v)| w * v).sum();
        }
        let gi = solve_columns(&g, &(0..q).collect::<Vec<_>>())?;
        let b = gi * pw;
        let fitted: f64 = (0..q).map(|c| x[(n - 1, c)] * b[c]).sum();
        Some((z_last - fitted, mean))
    }

    /// Per-voxel mean of the frames in (signal units).
    pub fn voxel_means(&self) -> Option<Vec<f64>> {
        let n = self.present.len();
        let offset = self.offset.as_deref()?;
        Some(
            self.atoms[CONST]
                .p
                .iter()
                .zip(offset)
                .map(|(s, &o)| s / n.max(1) as f64 + o as f64)
                .collect(),
        )
    }
}

/// Which design column.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Col {
    Probe,
    Reference,
    Atom(usize),
    /// Column d of the per-trial drift basis ([`DriftBasis::FramesSoFar`]).
    Local(usize),
}

/// The per-trial drift basis and its sums (empty for [`DriftBasis::Run`]).
#[derive(Default)]
struct Local {
    x: Vec<Vec<f64>>,
    sums: Vec<Sums>,
}

/// Per-voxel sums of one column, possibly a difference of two.
enum ColSums<'a> {
    One(&'a [f64]),
    Diff(&'a [f64], &'a [f64]),
    Zero,
}

impl ColSums<'_> {
    /// out = self[start..start + out.len()]
    fn fill(&self, start: usize, out: &mut [f64]) {
        let r = start..start + out.len();
        match self {
            ColSums::One(a) => out.copy_from_slice(&a[r]),
            ColSums::Diff(a, b) => out
                .iter_mut()
                .zip(a[r.clone()].iter().zip(&b[r]))
                .for_each(|(o, (x, y))| *o = x - y),
            ColSums::Zero => out.iter_mut().for_each(|o| *o = 0.0),
        }
    }

    /// out += self[start..start + out.len()]
    fn add_to(&self, start: usize, out: &mut [f64]) {
        let r = start..start + out.len();
        match self {
            ColSums::One(a) => out.iter_mut().zip(&a[r]).for_each(|(o, x)| *o += x),
            ColSums::Diff(a, b) => out
                .iter_mut()
                .zip(a[r.clone()].iter().zip(&b[r]))
                .for_each(|(o, (x, y))| *o += x - y),
            ColSums::Zero => {}
        }
    }

    fn axpy_into(&self, out: &mut [f64], w: f64) {
        if w == 0.0 {
            return;
        }
        match self {
            ColSums::One(a) => out.iter_mut().zip(a.iter()).for_each(|(o, x)| *o += w * x),
            ColSums::Diff(a, b) => out
                .iter_mut()
                .zip(a.iter().zip(b.iter()))
                .for_each(|(o, (x, y))| *o += w * (x - y)),
            ColSums::Zero => {}
        }
    }
}

/// Columns `which` of `g⁻¹` for symmetric positive (semi)definite `g`:
/// equilibrated Cholesky, else the pseudo-inverse (nilearn uses pinv).
fn solve_columns(g: &DMatrix<f64>, which: &[usize]) -> Option<DMatrix<f64>> {
    let p = g.nrows();
    let scale = DVector::from_fn(p, |i, _| {
        let d = g[(i, i)];
        if d > 0.0 { 1.0 / d.sqrt() } else { 1.0 }
    });
    let gs = DMatrix::from_fn(p, p, |i, j| g[(i, j)] * scale[i] * scale[j]);
    let rhs = DMatrix::from_fn(
        p,
        which.len(),
        |i, j| if i == which[j] { scale[i] } else { 0.0 },
    );
    // Cholesky when well conditioned; otherwise the pseudo-inverse, as
    // nilearn (pinv, with full_rank's guard at condition 1e15) would.
    let eig = gs.clone().symmetric_eigen();
    let (lmin, lmax) = eig
        .eigenvalues
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(a, b), &l| {
            (a.min(l), b.max(l.abs()))
        });
    let well = lmax > 0.0 && lmin > 1e-13 * lmax;
    let sol = match (well, gs.clone().cholesky()) {
        (true, Some(ch)) => ch.solve(&rhs),
        _ => {
            let inv = &eig.eigenvectors
                * DMatrix::from_diagonal(
                    &eig.eigenvalues
                        .map(|l| if l > 1e-13 * lmax { 1.0 / l } else { 0.0 }),
                )
                * eig.eigenvectors.transpose();
            inv * &rhs
        }
    };
    let out = DMatrix::from_fn(p, which.len(), |i, j| sol[(i, j)] * scale[i]);
    out.iter().all(|v| v.is_finite()).then_some(out)
}
