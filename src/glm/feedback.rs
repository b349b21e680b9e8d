//! Per-volume neurofeedback values from the same incremental model.
//!
//! In: the run's model after each in-order volume, the configured regions
//! (mask images) and decoders (weight maps). Out: for every volume, per
//! region the signal cleaned of drift and motion as percent signal change
//! against the run's mean, per decoder `Σ w·(cleaned % signal change of
//! each voxel) + bias`, each with an optional smoothed version (exponential
//! or Kalman filter, settings as configured and recorded in the session's
//! `session.toml`).
//!
//! Linearity keeps this cheap: cleaning a weighted sum of voxels equals the
//! weighted sum of cleaned voxels, so each value is one pass over the
//! voxels plus a small regression, O(columns·voxels) per volume.

use std::path::PathBuf;

use super::model::{FrameSource, RunModel};
use crate::formats::nifti;
use crate::types::mask::SessionMask;
use crate::types::messages::FeedbackValue;

/// `[glm.feedback]`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedbackConfig {
    /// Regions of interest.
    pub rois: Vec<RoiConfig>,
    /// Linear decoders.
    pub decoders: Vec<DecoderConfig>,
    /// Smoothing of every value.
    pub smoothing: Smoothing,
}

/// A region: a mask image on the output grid.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoiConfig {
    /// Name in outputs.
    pub name: String,
    /// Mask image (non-zero voxels are in), on the session's output grid.
    pub mask: PathBuf,
}

/// A linear decoder: a weight map on the output grid and a bias.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    /// Name in outputs.
    pub name: String,
    /// Weight image on the session's output grid (voxels outside the
    /// session mask are ignored).
    pub weights: PathBuf,
    /// Added to the weighted sum.
    #[serde(default)]
    pub bias: f64,
}

/// Smoothing of a feedback value over volumes.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Smoothing {
    /// Raw values.
    #[default]
    None,
    /// `s ← α·x + (1 − α)·s`.
    Ema {
        /// Weight of the new value (0 < α ≤ 1).
        alpha: f64,
    },
    /// A random-walk Kalman filter.
    Kalman {
        /// Variance the true value drifts by per volume.
        process_variance: f64,
        /// Variance of a single measurement.
        measurement_variance: f64,
    },
}

/// The state of one smoothing filter.
#[derive(Debug, Clone)]
pub struct Smoother {
    kind: Smoothing,
    state: Option<f64>,
    variance: f64,
}

impl Smoother {
    /// A filter with no history.
    pub fn new(kind: Smoothing) -> Smoother {
        Smoother {
            kind,
            state: None,
            variance: 0.0,
        }
    }

    /// Forget the history (a new run).
    pub fn reset(&mut self) {
        self.state = None;
        self.variance = 0.0;
    }

    /// Feed one value; returns the smoothed one. Non-finite values pass
    /// through without touching the state.
    pub fn update(&mut self, x: f64) -> f64 {
        if !x.is_finite() {
            return x;
        }
        let s = match (&self.kind, self.state) {
            (Smoothing::None, _) | (_, None) => {
                if let Smoothing::Kalman {
                    measurement_variance,
                    ..
                } = self.kind
                {
                    self.variance = measurement_variance;
                }
                x
            }
            (Smoothing::Ema { alpha }, Some(s)) => alpha * x + (1.0 - alpha) * s,
            (
                Smoothing::Kalman {
                    process_variance,
                    measurement_variance,
                },
                Some(s),
            ) => {
                let p = self.variance + process_variance;
                let k = p / (p + measurement_variance);
                self.variance = (1.0 - k) * p;
                s + k * (x - s)
            }
        };
        self.state = Some(s);
        s
    }
}

enum Kind {
    Roi(Vec<f64>),
    Decoder { weights: Vec<f64>, bias: f64 },
}

/// One configured output, ready to compute.
pub struct Series {
    name: String,
    kind: Kind,
    smoother: Smoother,
}

/// Load the configured regions and decoders onto `mask`'s voxels. A file
/// that cannot be used is an error naming it and the reason.
pub fn load(cfg: &FeedbackConfig, mask: &SessionMask) -> Result<Vec<Series>, String> {
    let check = |smoothing: &Smoothing| -> Result<(), String> {
        match *smoothing {
            Smoothing::Ema { alpha } if !(alpha > 0.0 && alpha <= 1.0) => {
                Err(format!("feedback smoothing: alpha {alpha} must be in (0, 1]"))
            }
            Smoothing::Kalman {
                process_variance,
                measurement_variance,
            } if !(process_variance >= 0.0 && measurement_variance > 0.0) => Err(
                "feedback smoothing: Kalman variances must be non-negative (process) and positive (measurement)".into(),
            ),
            _ => Ok(()),
        }
    };
    check(&cfg.smoothing)?;
    let read = |path: &PathBuf| -> Result<Vec<f32>, String> {
        let vol = nifti::read_volume(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !vol.grid().matches(mask.grid(), 1e-3) {
            return Err(format!(
                "{}: grid {} is not the session's output grid {}",
                path.display(),
                vol.grid().describe(),
                mask.grid().describe()
            ));
        }
        let mut v = Vec::new();
        mask.gather_into(vol.values(), &mut v);
        Ok(v)
    };
    let mut out = Vec::new();
    for r in &cfg.rois {
        let inside: Vec<bool> = read(&r.mask)?
            .iter()
            .map(|&v| v.is_finite() && v != 0.0)
            .collect();
        let count = inside.iter().filter(|&&b| b).count();
        if count == 0 {
            return Err(format!(
                "region '{}' ({}) has no voxel inside the session mask",
                r.name,
                r.mask.display()
            ));
        }
        let w = inside
            .iter()
            .map(|&b| if b { 1.0 / count as f64 } else { 0.0 })
            .collect();
        out.push(Series {
            name: r.name.clone(),
            kind: Kind::Roi(w),
            smoother: Smoother::new(cfg.smoothing.clone()),
        });
    }
    for d in &cfg.decoders {
        let w: Vec<f64> = read(&d.weights)?
            .iter()
            .map(|&v| if v.is_finite() { v as f64 } else { 0.0 })
            .collect();
        if w.iter().all(|&v| v == 0.0) {
            return Err(format!(
                "decoder '{}' ({}) has no non-zero weight inside the session mask",
                d.name,
                d.weights.display()
            ));
        }
        out.push(Series {
            name: d.name.clone(),
            kind: Kind::Decoder {
                weights: w,
                bias: d.bias,
            },
            smoother: Smoother::new(cfg.smoothing.clone()),
        });
    }
    Ok(out)
}

impl Series {
    /// Forget smoothing history (a new run).
    pub fn reset(&mut self) {
        self.smoother.reset();
    }

    /// The value at the model's last frame.
    pub fn value(
        &mut self,
        model: &RunModel,
        frames: &dyn FrameSource,
        min_dof: usize,
    ) -> Option<FeedbackValue> {
        let value = match &self.kind {
            Kind::Roi(w) => {
                let (clean, mean) = model.clean_last(w, frames, min_dof)?;
                if mean > 0.0 {
                    100.0 * clean / mean
                } else {
                    f64::NAN
                }
            }
            Kind::Decoder { weights, bias } => {
                // Weight each voxel's cleaned signal in % of its own mean.
                let means = model.voxel_means()?;
                let w: Vec<f64> = weights
                    .iter()
                    .zip(&means)
                    .map(|(w, m)| {
                        if *w != 0.0 {
                            100.0 * w / m.max(1.0)
                        } else {
                            0.0
                        }
                    })
                    .collect();
                model.clean_last(&w, frames, min_dof)?.0 + bias
            }
        };
        Some(FeedbackValue {
            name: self.name.clone(),
            value,
            smoothed: self.smoother.update(value),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_and_kalman_smooth_towards_the_signal() {
        let mut e = Smoother::new(Smoothing::Ema { alpha: 0.5 });
        assert_eq!(e.update(2.0), 2.0);
        assert_eq!(e.update(4.0), 3.0);
        assert!(e.update(f64::NAN).is_nan());
        assert_eq!(e.update(3.0), 3.0);
        let mut k = Smoother::new(Smoothing::Kalman {
            process_variance: 0.0,
            measurement_variance: 1.0,
        });
        // With no process noise the filter is the running mean.
        let xs = [1.0, 3.0, 5.0, 7.0];
        let mut last = 0.0;
        for x in xs {
            last = k.update(x);
        }
        assert!((last - 4.0).abs() < 1e-12, "{last}");
        k.reset();
        assert_eq!(k.update(10.0), 10.0);
    }
}
