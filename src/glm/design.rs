//! Design-matrix columns, built the way nilearn's
//! `make_first_level_design_matrix` builds them.
//!
//! In: frame times (from TR, number of frames and `slice_time_ref`), events
//! and the model settings. Out: one column per condition (events sampled on
//! nilearn's oversampled grid, convolved with the HRF, interpolated at the
//! frame times) and the cosine drift basis — equal to nilearn's to rounding.
//!
//! The convolution exploits that an event regressor on the fine grid is a
//! sum of steps: each output sample is a difference of the HRF's cumulative
//! sum, O(events) instead of O(kernel length).

use super::hrf::{HrfModel, kernel, linspace};

/// How the design is built (`[glm]` settings that shape the columns).
#[derive(Debug, Clone, PartialEq)]
pub struct DesignSpec {
    /// Repetition time in seconds.
    pub tr: f64,
    /// Where in the TR the frame time sits (nilearn's `slice_time_ref`, 0..1).
    pub slice_time_ref: f64,
    /// Canonical HRF.
    pub hrf: HrfModel,
    /// Fine-grid oversampling (nilearn: 50).
    pub oversampling: usize,
    /// Earliest onset considered, seconds relative to the first frame (nilearn: -24).
    pub min_onset: f64,
    /// Cosine drift cut-off in Hz (nilearn: 0.01); 0 for no drift columns.
    pub high_pass: f64,
}

impl Default for DesignSpec {
    fn default() -> Self {
        DesignSpec {
            tr: 1.5,
            slice_time_ref: 0.0,
            hrf: HrfModel::Glover,
            oversampling: 50,
            min_onset: -24.0,
            high_pass: 0.01,
        }
    }
}

/// One event as the design sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stimulus {
    /// Onset, seconds from the first volume.
    pub onset: f64,
    /// Duration, seconds.
    pub duration: f64,
    /// Amplitude (nilearn's modulation).
    pub value: f64,
}

/// Frame times as FirstLevelModel makes them: `linspace(start, end, n)` with
/// `start = slice_time_ref · tr`.
pub fn frame_times(n: usize, tr: f64, slice_time_ref: f64) -> Vec<f64> {
    let start = slice_time_ref * tr;
    let end = (n as f64 - 1.0) * tr + start;
    linspace(start, end, n)
}

/// nilearn's cosine drift order for `n` frames spaced `dt` apart.
pub fn drift_order(n: usize, dt: f64, high_pass: f64) -> usize {
    if n < 2 || high_pass <= 0.0 {
        return 0;
    }
    let order = (2.0 * n as f64 * high_pass * dt).floor();
    (order.max(0.0) as usize).min(n - 1)
}

/// nilearn's cosine drift columns (without the constant) for `frame_times`.
pub fn cosine_drift(frame_times: &[f64], high_pass: f64) -> Vec<Vec<f64>> {
    let n = frame_times.len();
    if n < 2 {
        return Vec::new();
    }
    let dt = (frame_times[n - 1] - frame_times[0]) / (n - 1) as f64;
    let order = drift_order(n, dt, high_pass);
    let normalizer = (2.0 / n as f64).sqrt();
    let nf = n as f64;
    (1..=order)
        .map(|k| {
            (0..n)
                .map(|t| {
                    normalizer * ((std::f64::consts::PI / nf) * (t as f64 + 0.5) * k as f64).cos()
                })
                .collect()
        })
        .collect()
}

/// nilearn's oversampled time grid (a `linspace`), evaluated on demand.
#[derive(Debug, Clone, Copy)]
struct FineGrid {
    start: f64,
    stop: f64,
    step: f64,
    num: usize,
}

impl FineGrid {
    fn new(frame_times: &[f64], min_onset: f64, oversampling: usize) -> Option<FineGrid> {
        let n = frame_times.len();
        if n < 2 {
            return None;
        }
        let mini = frame_times.iter().copied().fold(f64::INFINITY, f64::min);
        let maxi = frame_times
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let nm1 = (n - 1) as f64;
        // Same order of operations as nilearn's _compute_n_frames_high_res.
        let mut n_hr = nm1 * 1.0 / (maxi - mini);
        n_hr *= (maxi * (1.0 + 1.0 / nm1) - mini - min_onset) * oversampling as f64;
        let num = (n_hr + 1.0).round_ties_even();
        if !(num.is_finite() && num >= 2.0) {
            return None;
        }
        let num = num as usize;
        let start = mini + min_onset;
        let stop = maxi * (1.0 + 1.0 / nm1);
        Some(FineGrid {
            start,
            stop,
            step: (stop - start) / (num - 1) as f64,
            num,
        })
    }

    #[inline]
    fn at(&self, i: usize) -> f64 {
        if i + 1 == self.num {
            self.stop
        } else {
            i as f64 * self.step + self.start
        }
    }

    /// numpy's `searchsorted(grid, x)` (side left): first `i` with grid[i] ≥ x.
    fn searchsorted(&self, x: f64) -> usize {
        let guess = ((x - self.start) / self.step).ceil();
        let mut i = if guess.is_finite() {
            guess.clamp(0.0, self.num as f64) as usize
        } else if guess > 0.0 {
            self.num
        } else {
            0
        };
        while i > 0 && self.at(i - 1) >= x {
            i -= 1;
        }
        while i < self.num && self.at(i) < x {
            i += 1;
        }
        i
    }
}

/// The regressor of one condition (all `events` together), sampled at
/// `frame_times`, exactly as nilearn's `compute_regressor` with a single
/// canonical HRF. Returns zeros if the frame times cannot carry a grid.
pub fn condition_regressor(
    events: &[Stimulus],
    frame_times: &[f64],
    spec: &DesignSpec,
) -> Vec<f64> {
    let n = frame_times.len();
    let Some(grid) = FineGrid::new(frame_times, spec.min_onset, spec.oversampling) else {
        return vec![0.0; n];
    };
    // nilearn's kernel uses the smallest frame spacing as "t_r".
    let t_r = frame_times
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f64::INFINITY, f64::min);
    let h = kernel(spec.hrf, t_r, spec.oversampling);
    let mut cum = Vec::with_capacity(h.len());
    let mut acc = 0.0;
    for v in &h {
        acc += v;
        cum.push(acc);
    }
    let k = cum.len();
    // Steps of the fine-grid boxcars: (+value at onset, −value at offset),
    // with nilearn's clamping and its zero-duration rule.
    let tmax = grid.num;
    let mut steps: Vec<(usize, f64)> = Vec::with_capacity(2 * events.len());
    for e in events {
        let t_on = grid.searchsorted(e.onset).min(tmax - 1);
        let mut t_off = grid.searchsorted(e.onset + e.duration).min(tmax - 1);
        if t_off < tmax - 1 && t_off == t_on {
            t_off += 1;
        }
        steps.push((t_on, e.value));
        steps.push((t_off, -e.value));
    }
    // conv[i] = Σ_steps v · H[i − pos], H the cumulative kernel (H[m] for
    // m ≥ K is the total): np.convolve(cumsum(steps), h)[:size].
    let conv = |i: usize| -> f64 {
        steps
            .iter()
            .filter(|(pos, _)| *pos <= i)
            .map(|(pos, v)| v * cum[(i - pos).min(k - 1)])
            .sum()
    };
    frame_times
        .iter()
        .map(|&f| {
            // scipy interp1d (linear): bracket from searchsorted, clipped.
            let idx = grid.searchsorted(f).clamp(1, tmax - 1);
            let (lo, hi) = (idx - 1, idx);
            let (x_lo, x_hi) = (grid.at(lo), grid.at(hi));
            let (y_lo, y_hi) = (conv(lo), conv(hi));
            let slope = (y_hi - y_lo) / (x_hi - x_lo);
            slope * (f - x_lo) + y_lo
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_times_follow_slice_time_ref() {
        let ft = frame_times(4, 2.0, 0.5);
        assert_eq!(ft, vec![1.0, 3.0, 5.0, 7.0]);
    }

    #[test]
    fn drift_columns_are_orthonormal_cosines() {
        let ft = frame_times(200, 1.5, 0.0);
        let d = cosine_drift(&ft, 0.01);
        assert_eq!(d.len(), 6); // floor(2·200·0.01·1.5)
        for a in &d {
            let norm: f64 = a.iter().map(|v| v * v).sum();
            assert!((norm - 1.0).abs() < 1e-9);
            let mean: f64 = a.iter().sum::<f64>() / 200.0;
            assert!(mean.abs() < 1e-12);
        }
    }

    #[test]
    fn a_regressor_is_causal_linear_and_peaks_after_the_onset() {
        let spec = DesignSpec::default();
        let ft = frame_times(60, 1.5, 0.0);
        let a = Stimulus {
            onset: 15.0,
            duration: 3.0,
            value: 1.0,
        };
        let b = Stimulus {
            onset: 40.0,
            duration: 3.0,
            value: 2.0,
        };
        let ra = condition_regressor(&[a], &ft, &spec);
        let rb = condition_regressor(&[b], &ft, &spec);
        let rab = condition_regressor(&[a, b], &ft, &spec);
        for t in 0..60 {
            assert!((rab[t] - ra[t] - rb[t]).abs() < 1e-12);
            if ft[t] < 15.0 {
                assert_eq!(ra[t], 0.0, "frame {t} before the onset");
            }
        }
        let peak = (0..60).max_by(|&i, &j| ra[i].total_cmp(&ra[j])).unwrap();
        assert!((19.0..=24.0).contains(&ft[peak]), "peak at {}", ft[peak]);
    }
}
