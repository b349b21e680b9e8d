//! Optimiser: inverse-compositional Gauss–Newton over the six rigid parameters.
//!
//! In: a [`ReferenceLevel`] (the metric), the moving image at that level and
//! a starting transform. Out: the refined reference → moving transform and
//! how the iterations went.

use nalgebra::{Matrix4, Vector3};

use super::RealignError;
use super::interpolate::ImageRef;
use super::metric::ReferenceLevel;
use crate::types::transform::{rigid, rigid_inverse, rotation_from_vector};

/// Stopping rules for one pyramid level.
#[derive(Debug, Clone, Copy)]
pub struct GaussNewton {
    /// Iteration cap.
    pub max_iterations: usize,
    /// Stop when an update moves no point of a `radius_mm` sphere by more
    /// than this (mm).
    pub tolerance_mm: f64,
    /// Radius used to turn rotation updates into displacements (mm).
    pub radius_mm: f64,
    /// Largest displacement one update may make (mm); larger steps are
    /// scaled down, which keeps a bad start from diverging.
    pub max_step_mm: f64,
}

/// How one level's optimisation ended.
#[derive(Debug, Clone, Copy)]
pub struct LevelReport {
    /// Iterations run.
    pub iterations: usize,
    /// Whether the tolerance was met before the cap.
    pub converged: bool,
    /// Mean squared residual at the last evaluation.
    pub mse: f64,
    /// Fraction of samples inside the moving volume at the end.
    pub overlap: f64,
    /// Fitted intensity gain.
    pub gain: f64,
}

impl GaussNewton {
    /// Refine `t` (reference FSL mm → moving FSL mm) on one level.
    ///
    /// `moving_fsl_to_vox` maps moving FSL mm to the moving image's voxel
    /// coordinates at this level; `centre` is the centre of rotation.
    pub fn optimise(
        &self,
        level: &ReferenceLevel,
        moving: ImageRef<'_>,
        moving_fsl_to_vox: &Matrix4<f64>,
        t: &mut Matrix4<f64>,
        centre: Vector3<f64>,
        scratch: &mut Vec<f32>,
    ) -> Result<LevelReport, RealignError> {
        let mut report = LevelReport {
            iterations: 0,
            converged: false,
            mse: f64::INFINITY,
            overlap: 0.0,
            gain: 1.0,
        };
        for it in 0..self.max_iterations {
            let map = moving_fsl_to_vox * *t * level.geometry.vox_to_fsl;
            let ev = level.evaluate(moving, &map, scratch);
            report.iterations = it + 1;
            report.mse = ev.mse;
            report.gain = ev.gain;
            report.overlap = ev.valid as f64 / ev.total.max(1) as f64;
            if ev.valid < 64 || report.overlap < 0.2 {
                return Err(RealignError::NoOverlap {
                    overlap: report.overlap,
                });
            }
            let delta = ev
                .hessian
                .cholesky()
                .map(|c| c.solve(&ev.rhs))
                .ok_or(RealignError::Degenerate)?;
            let mut w = Vector3::new(delta[0], delta[1], delta[2]);
            let mut d = Vector3::new(delta[3], delta[4], delta[5]);
            let step = w.norm() * self.radius_mm + d.norm();
            if !step.is_finite() {
                return Err(RealignError::Degenerate);
            }
            if step > self.max_step_mm {
                let s = self.max_step_mm / step;
                w *= s;
                d *= s;
            }
            // W(Δ)(x) = Rot(ω)(x − c) + c + Δt; the inverse-compositional
            // update is T ← T ∘ W(Δ)⁻¹.
            let r = rotation_from_vector(w);
            let inc = rigid(r, centre + d - r * centre);
            *t *= rigid_inverse(&inc);
            if step < self.tolerance_mm {
                report.converged = true;
                break;
            }
        }
        Ok(report)
    }
}
