//! Beta normalisation and repeat averaging.
//!
//! In: raw betas as trials are estimated, with their image ids. Out: each
//! beta z-scored per voxel — against the betas seen so far in the session
//! (running mean and population variance, ddof 0) or against statistics
//! stored from calibration — and, when asked, the average of an image's
//! presentations so far, each earlier beta re-normalised with the current
//! statistics.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Where z-scoring statistics come from.
#[derive(Debug, Clone)]
pub enum Stats {
    /// Running statistics of the session's betas (Welford, ddof 0).
    Session {
        /// Betas seen.
        n: u64,
        /// Per-voxel mean.
        mean: Vec<f64>,
        /// Per-voxel sum of squared deviations.
        m2: Vec<f64>,
    },
    /// Fixed statistics from calibration.
    Fixed {
        /// Per-voxel mean.
        mean: Vec<f64>,
        /// Per-voxel standard deviation.
        std: Vec<f64>,
    },
}

/// Why calibration statistics could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The file could not be read or parsed.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Read calibration statistics: a float32 or float64 `.npy` of shape
/// (2, voxels) — row 0 the mean, row 1 the standard deviation.
pub fn read_stats(path: &Path, voxels: usize) -> Result<Stats, StatsError> {
    let err = |message: String| StatsError::File {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let (values, rows, cols) = crate::formats::npy::decode_2d(&bytes).map_err(err)?;
    if rows != 2 || cols != voxels {
        return Err(err(format!(
            "shape ({rows}, {cols}); expected (2, {voxels}): mean and std per masked voxel"
        )));
    }
    let (mean, std) = values.split_at(voxels);
    if std.iter().any(|s| !s.is_finite() || *s < 0.0) || mean.iter().any(|m| !m.is_finite()) {
        return Err(err("non-finite mean or negative/non-finite std".into()));
    }
    Ok(Stats::Fixed {
        mean: mean.to_vec(),
        std: std.to_vec(),
    })
}

/// z-scores betas and averages repeats.
#[derive(Debug)]
pub struct Normalizer {
    stats: Stats,
    epsilon: f64,
    average_repeats: bool,
    seen: HashMap<String, Vec<Arc<[f32]>>>,
}

/// One beta after normalisation.
#[derive(Debug, Clone)]
pub struct Normalized {
    /// This presentation, z-scored.
    pub z: Arc<[f32]>,
    /// What goes to decoding: `z`, or the mean of the image's presentations
    /// so far (each z-scored with the current statistics).
    pub decode: Arc<[f32]>,
    /// Presentations of this image so far, this one included.
    pub presentations: usize,
}

impl Normalizer {
    /// Session statistics for `voxels` voxels.
    pub fn session(voxels: usize, epsilon: f64, average_repeats: bool) -> Normalizer {
        Normalizer {
            stats: Stats::Session {
                n: 0,
                mean: vec![0.0; voxels],
                m2: vec![0.0; voxels],
            },
            epsilon,
            average_repeats,
            seen: HashMap::new(),
        }
    }

    /// Fixed (calibration) statistics.
    pub fn fixed(stats: Stats, epsilon: f64, average_repeats: bool) -> Normalizer {
        Normalizer {
            stats,
            epsilon,
            average_repeats,
            seen: HashMap::new(),
        }
    }

    /// Betas folded into session statistics so far (0 for fixed statistics).
    pub fn count(&self) -> u64 {
        match &self.stats {
            Stats::Session { n, .. } => *n,
            Stats::Fixed { .. } => 0,
        }
    }

    fn z(&self, beta: &[f32]) -> Vec<f32> {
        match &self.stats {
            Stats::Session { n, mean, m2 } => beta
                .iter()
                .zip(mean.iter().zip(m2))
                .map(|(&b, (&m, &s2))| {
                    let sd = if *n > 0 { (s2 / *n as f64).sqrt() } else { 0.0 };
                    ((b as f64 - m) / (sd + self.epsilon)) as f32
                })
                .collect(),
            Stats::Fixed { mean, std } => beta
                .iter()
                .zip(mean.iter().zip(std))
                .map(|(&b, (&m, &sd))| ((b as f64 - m) / (sd + self.epsilon)) as f32)
                .collect(),
        }
    }

    /// Fold `beta` into the statistics (session mode), then normalise it.
    /// Betas of the wrong length are refused (`None`).
    pub fn push(&mut self, beta: &Arc<[f32]>, image: Option<&str>) -> Option<Normalized> {
        if let Stats::Session { n, mean, m2 } = &mut self.stats {
            if beta.len() != mean.len() {
                return None;
            }
            *n += 1;
            let nf = *n as f64;
            for ((&b, m), s) in beta.iter().zip(mean.iter_mut()).zip(m2.iter_mut()) {
                let b = b as f64;
                let d = b - *m;
                *m += d / nf;
                *s += d * (b - *m);
            }
        } else if let Stats::Fixed { mean, .. } = &self.stats
            && beta.len() != mean.len()
        {
            return None;
        }
        let z: Arc<[f32]> = self.z(beta).into();
        let Some(image) = image.filter(|_| self.average_repeats) else {
            return Some(Normalized {
                decode: z.clone(),
                z,
                presentations: 1,
            });
        };
        let list = self.seen.entry(image.to_string()).or_default();
        list.push(beta.clone());
        let list = list.clone();
        let mut avg = vec![0.0f64; beta.len()];
        for b in &list {
            for (a, v) in avg.iter_mut().zip(self.z(b)) {
                *a += v as f64;
            }
        }
        let k = list.len() as f64;
        Some(Normalized {
            z,
            decode: avg.iter().map(|a| (a / k) as f32).collect(),
            presentations: list.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arc(v: &[f32]) -> Arc<[f32]> {
        v.to_vec().into()
    }

    #[test]
    fn session_z_uses_all_betas_so_far_with_ddof_zero() {
        let mut n = Normalizer::session(2, 1e-6, false);
        let first = n.push(&arc(&[1.0, 5.0]), None).unwrap();
        // One beta: std 0, so z = 0.
        assert_eq!(&first.z[..], &[0.0, 0.0]);
        n.push(&arc(&[3.0, 5.0]), None);
        let third = n.push(&arc(&[5.0, 5.0]), None).unwrap();
        // Voxel 0: values 1, 3, 5 → mean 3, population std sqrt(8/3).
        let want = (5.0 - 3.0) / ((8.0f64 / 3.0).sqrt() + 1e-6);
        assert!((third.z[0] as f64 - want).abs() < 1e-6);
        // Voxel 1 is constant: epsilon keeps it finite (0).
        assert_eq!(third.z[1], 0.0);
    }

    #[test]
    fn repeats_average_with_current_statistics() {
        let mut n = Normalizer::session(1, 0.0, true);
        n.push(&arc(&[1.0]), Some("a"));
        n.push(&arc(&[2.0]), Some("b"));
        let r = n.push(&arc(&[3.0]), Some("a")).unwrap();
        assert_eq!(r.presentations, 2);
        // Now mean 2, std sqrt(2/3): z(1) = −1.2247, z(3) = +1.2247 → mean 0.
        assert!(r.decode[0].abs() < 1e-6, "{}", r.decode[0]);
        assert!((r.z[0] - 1.2247449).abs() < 1e-5);
    }

    #[test]
    fn calibration_statistics_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stats.npy");
        let mut a = crate::formats::npy::NpyAppender::create(&p, 3).unwrap();
        a.append(&[1.0, 2.0, 3.0]).unwrap();
        a.append(&[0.5, 1.0, 2.0]).unwrap();
        let Stats::Fixed { mean, std } = read_stats(&p, 3).unwrap() else {
            panic!("fixed statistics expected");
        };
        assert_eq!((mean, std), (vec![1.0, 2.0, 3.0], vec![0.5, 1.0, 2.0]));
        let e = read_stats(&p, 4).unwrap_err().to_string();
        assert!(
            e.contains("stats.npy") && e.contains("expected (2, 4)"),
            "{e}"
        );
        let mut bad = crate::formats::npy::NpyAppender::create(&p, 2).unwrap();
        bad.append(&[0.0, 0.0]).unwrap();
        bad.append(&[1.0, -1.0]).unwrap();
        assert!(
            read_stats(&p, 2)
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
    }

    #[test]
    fn fixed_statistics_and_shape_checks() {
        let mut n = Normalizer::fixed(
            Stats::Fixed {
                mean: vec![1.0, 2.0],
                std: vec![2.0, 0.5],
            },
            0.0,
            false,
        );
        let r = n.push(&arc(&[3.0, 1.0]), None).unwrap();
        assert_eq!(&r.z[..], &[1.0, -2.0]);
        assert!(n.push(&arc(&[1.0]), None).is_none());
    }
}
