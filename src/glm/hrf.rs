//! Haemodynamic response kernels, as nilearn samples them.
//!
//! In: the HRF model, the repetition time and the oversampling factor.
//! Out: the kernel on the oversampled grid (`dt = t_r / oversampling`, 32 s
//! long, normalised to sum 1) — nilearn's `glover_hrf` / `spm_hrf`: a
//! difference of two gamma densities.

/// Which canonical HRF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HrfModel {
    /// Glover (1999) as nilearn's `glover_hrf` has it: peak 6 s, undershoot
    /// 12 s, dispersion 0.9, ratio 0.48 (the paper's own ratio is 0.35,
    /// which the simulator uses on purpose).
    Glover,
    /// SPM's canonical HRF: peak 6 s, undershoot 16 s, dispersion 1, ratio 1/6.
    Spm,
}

/// scipy's `gamma.pdf(x, a, loc, scale)`.
fn gamma_pdf(x: f64, a: f64, loc: f64, scale: f64) -> f64 {
    let y = (x - loc) / scale;
    if y <= 0.0 {
        return 0.0;
    }
    ((a - 1.0) * y.ln() - y - libm::lgamma(a)).exp() / scale
}

/// numpy's `linspace(start, stop, num)`: `i·step + start`, last value exact.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// The kernel nilearn convolves with (its `_gamma_difference_hrf`, 32 s).
pub fn kernel(model: HrfModel, t_r: f64, oversampling: usize) -> Vec<f64> {
    let (delay, undershoot, dispersion, u_dispersion, ratio) = match model {
        HrfModel::Glover => (6.0, 12.0, 0.9, 0.9, 0.48),
        HrfModel::Spm => (6.0, 16.0, 1.0, 1.0, 0.167),
    };
    let time_length = 32.0;
    let dt = t_r / oversampling as f64;
    let n = (time_length / dt).round_ties_even() as usize;
    let ts = linspace(0.0, time_length, n);
    let mut h: Vec<f64> = ts
        .iter()
        .map(|&t| {
            gamma_pdf(t, delay / dispersion, dt, dispersion)
                - ratio * gamma_pdf(t, undershoot / u_dispersion, dt, u_dispersion)
        })
        .collect();
    let sum: f64 = h.iter().sum();
    if sum != 0.0 {
        for v in &mut h {
            *v /= sum;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_shape_peaks_near_five_seconds_and_sums_to_one() {
        for model in [HrfModel::Glover, HrfModel::Spm] {
            let h = kernel(model, 1.5, 50);
            assert_eq!(h.len(), (32.0f64 / 0.03).round() as usize);
            assert!((h.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            let peak = h
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as f64 * 32.0 / (h.len() - 1) as f64)
                .unwrap();
            assert!((4.0..6.5).contains(&peak), "{model:?} peak at {peak}");
            // An undershoot after the peak.
            assert!(h.iter().any(|&v| v < 0.0));
        }
    }
}
