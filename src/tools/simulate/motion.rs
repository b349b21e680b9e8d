//! Head-motion trajectories with known truth.
//!
//! In: amplitude limits, a jerk count, the session length and a seed. Out:
//! one [`MotionParams`] per volume of the session (MCFLIRT `.par`
//! convention: the volume → reference map, rotations in radians then
//! translations in mm), relative to the session's first volume, which has
//! exactly zero motion.
//!
//! The motion is slow drift (a few low-frequency sinusoids and a linear
//! trend per parameter, each starting at 0) plus sudden jerks: steps that
//! persist (the subject settles somewhere else) or return after 1–4 volumes
//! (a twitch), and optionally a repositioning step between runs. Each
//! parameter is passed through `L·tanh(x/L)` so it never exceeds its limit
//! `L` while small motions are untouched to first order.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::types::transform::MotionParams;

/// Parameters of the random trajectory generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MotionSpec {
    /// Largest translation in mm (each axis).
    pub max_mm: f64,
    /// Largest rotation in degrees (each axis).
    pub max_deg: f64,
    /// Sudden jerks per run.
    pub jerks_per_run: usize,
    /// Slow drift amplitude as a fraction of the limits.
    pub drift: f64,
    /// Whether the head moves (persistently) between runs.
    pub between_runs: bool,
}

impl Default for MotionSpec {
    fn default() -> Self {
        MotionSpec {
            max_mm: 2.0,
            max_deg: 2.0,
            jerks_per_run: 3,
            drift: 0.4,
            between_runs: true,
        }
    }
}

/// How volumes move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MotionModel {
    /// No motion at all.
    Still,
    /// Seeded random drift and jerks.
    Random(MotionSpec),
    /// Given parameters per session volume (`[rx, ry, rz, tx, ty, tz]`,
    /// MCFLIRT convention); the first must be all zeros.
    Explicit(Vec<[f64; 6]>),
}

impl Default for MotionModel {
    fn default() -> Self {
        MotionModel::Random(MotionSpec::default())
    }
}

impl MotionModel {
    /// Random motion within `max_mm` and `max_deg` with `jerks` per run;
    /// [`MotionModel::Still`] when both limits are zero.
    pub fn within(max_mm: f64, max_deg: f64, jerks: usize) -> MotionModel {
        if max_mm == 0.0 && max_deg == 0.0 {
            MotionModel::Still
        } else {
            MotionModel::Random(MotionSpec {
                max_mm,
                max_deg,
                jerks_per_run: jerks,
                ..MotionSpec::default()
            })
        }
    }
}

/// A sudden movement in the trajectory.
#[derive(Debug, Clone, PartialEq)]
pub struct Jerk {
    /// Session index of the first moved volume.
    pub at: usize,
    /// Volumes until the head returns; `None` for a persistent step.
    pub returns_after: Option<usize>,
    /// Parameter change before the `tanh` limit.
    pub delta: [f64; 6],
}

/// A generated trajectory.
#[derive(Debug, Clone)]
pub struct Trajectory {
    /// One entry per session volume.
    pub params: Vec<MotionParams>,
    /// The jerks in it, in time order.
    pub jerks: Vec<Jerk>,
}

/// Limits per parameter: radians for rotations, mm for translations.
fn limits(spec: &MotionSpec) -> [f64; 6] {
    let r = spec.max_deg.abs().to_radians();
    let t = spec.max_mm.abs();
    [r, r, r, t, t, t]
}

/// A random trajectory for `runs` × `volumes_per_run` volumes.
pub fn random_trajectory(
    spec: &MotionSpec,
    runs: usize,
    volumes_per_run: usize,
    seed: u64,
) -> Trajectory {
    let n = runs * volumes_per_run;
    let lim = limits(spec);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut raw = vec![[0.0f64; 6]; n];
    if n == 0 {
        return Trajectory {
            params: Vec::new(),
            jerks: Vec::new(),
        };
    }

    // Drift: zero at the first volume by construction (sin(φ) subtracted).
    for (j, &l) in lim.iter().enumerate() {
        let comps: Vec<(f64, f64, f64)> = (0..3)
            .map(|_| {
                (
                    rng.random_range(-1.0..1.0),
                    rng.random_range(0.3..2.0),
                    rng.random_range(0.0..std::f64::consts::TAU),
                )
            })
            .collect();
        let slope: f64 = rng.random_range(-1.0..1.0);
        let share: f64 = rng.random_range(0.3..1.0);
        let curve: Vec<f64> = (0..n)
            .map(|g| {
                let x = g as f64 / n as f64;
                comps
                    .iter()
                    .map(|(a, f, ph)| a * ((std::f64::consts::TAU * f * x + ph).sin() - ph.sin()))
                    .sum::<f64>()
                    + slope * x
            })
            .collect();
        let peak = curve.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if peak > 0.0 {
            let scale = spec.drift * l * share / peak;
            for (r, c) in raw.iter_mut().zip(&curve) {
                r[j] = c * scale;
            }
        }
    }

    let mut jerks = Vec::new();
    for run in 0..runs {
        let first = run * volumes_per_run;
        let start = first.max(1);
        let end = first + volumes_per_run;
        if spec.between_runs && run > 0 {
            let delta = std::array::from_fn(|j| rng.random_range(-0.25..0.25) * lim[j]);
            jerks.push(Jerk {
                at: first,
                returns_after: None,
                delta,
            });
        }
        if start >= end {
            continue;
        }
        for _ in 0..spec.jerks_per_run {
            let at = rng.random_range(start..end);
            let mut delta = [0.0; 6];
            let mut any = false;
            for (j, d) in delta.iter_mut().enumerate() {
                if rng.random_bool(0.5) {
                    let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                    *d = sign * rng.random_range(0.15..0.5) * lim[j];
                    any = true;
                }
            }
            if !any {
                let j = rng.random_range(0..6);
                delta[j] = rng.random_range(0.15..0.5) * lim[j];
            }
            let returns_after = rng.random_bool(0.5).then(|| rng.random_range(1..=4usize));
            jerks.push(Jerk {
                at,
                returns_after,
                delta,
            });
        }
    }
    jerks.sort_by_key(|j| j.at);
    for jerk in &jerks {
        let stop = jerk.returns_after.map_or(n, |k| (jerk.at + k).min(n));
        for r in &mut raw[jerk.at..stop] {
            for (v, d) in r.iter_mut().zip(&jerk.delta) {
                *v += d;
            }
        }
    }

    // Exactly zero, not −0.0, at the reference.
    raw[0] = [0.0; 6];
    let params = raw
        .iter()
        .map(|r| {
            MotionParams(std::array::from_fn(|j| {
                if lim[j] > 0.0 {
                    lim[j] * (r[j] / lim[j]).tanh()
                } else {
                    0.0
                }
            }))
        })
        .collect();
    Trajectory { params, jerks }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_zero_stays_within_limits_and_is_reproducible() {
        let spec = MotionSpec::default();
        let a = random_trajectory(&spec, 2, 100, 7);
        let b = random_trajectory(&spec, 2, 100, 7);
        let c = random_trajectory(&spec, 2, 100, 8);
        assert_eq!(a.params, b.params);
        assert_ne!(a.params, c.params);
        assert_eq!(a.params[0], MotionParams([0.0; 6]));
        let lim = limits(&spec);
        for p in &a.params {
            for (v, l) in p.0.iter().zip(&lim) {
                assert!(v.abs() < *l);
            }
        }
        // Some motion actually happens, and jerks make visible steps.
        let max_t = a.params.iter().map(|p| p.0[3].abs()).fold(0.0, f64::max);
        assert!(max_t > 0.1);
        assert_eq!(a.jerks.len(), 2 * spec.jerks_per_run + 1);
    }
}
