//! The haemodynamic response: Glover's HRF and the BOLD time course of a run.
//!
//! In: task events (onset and duration in seconds from the run start).
//! Out: the BOLD signal change at any time, as a fraction of the task
//! amplitude: each event, taken alone, peaks at exactly 1; overlapping
//! events add linearly.
//!
//! The HRF is Glover (1999)'s difference of gammas with the paper's own
//! undershoot ratio, [`GLOVER_1999_RATIO`] = 0.35 (peak delay 6 s,
//! undershoot 12 s, dispersions 0.9), evaluated as a continuous function; a
//! boxcar event is the integral of it over the event.
//!
//! This is deliberately *not* the analysis model: nilearn's `glover_hrf`,
//! which the GLM uses ([`crate::glm::hrf`]), takes ratio 0.48. Simulating
//! with the paper's kernel keeps the simulated brain from matching the
//! estimator's assumption exactly, as no real brain does; the demo's and
//! the tests' figures are made with it.

use super::events::Event;

/// The undershoot ratio of Glover (1999), eq. 3 (nilearn uses 0.48).
pub const GLOVER_1999_RATIO: f64 = 0.35;

/// Length of the HRF support in seconds (nilearn's `time_length`).
pub const HRF_LENGTH_S: f64 = 32.0;
const DT: f64 = 0.01;

/// ln Γ(x) for x > 0 (Lanczos, g = 7): ~15 significant digits.
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

fn gamma_pdf(t: f64, shape: f64, scale: f64) -> f64 {
    if t <= 0.0 {
        return 0.0;
    }
    ((shape - 1.0) * t.ln() - t / scale - ln_gamma(shape) - shape * scale.ln()).exp()
}

/// Glover's HRF at `t` seconds after an impulse (unnormalised; 0 for t ≤ 0
/// and beyond [`HRF_LENGTH_S`]).
pub fn glover(t: f64) -> f64 {
    if !(0.0..=HRF_LENGTH_S).contains(&t) {
        return 0.0;
    }
    gamma_pdf(t, 6.0 / 0.9, 0.9) - GLOVER_1999_RATIO * gamma_pdf(t, 12.0 / 0.9, 0.9)
}

/// The HRF with its running integral tabulated, for boxcar responses.
#[derive(Debug, Clone)]
pub struct Hrf {
    /// ∫₀^(i·DT) h.
    integral: Vec<f64>,
    peak: f64,
}

impl Default for Hrf {
    fn default() -> Self {
        Hrf::glover()
    }
}

impl Hrf {
    /// Glover's HRF, tabulated at 10 ms.
    pub fn glover() -> Hrf {
        let n = (HRF_LENGTH_S / DT).round() as usize;
        let mut integral = Vec::with_capacity(n + 1);
        let mut acc = 0.0;
        integral.push(0.0);
        let mut peak = 0.0f64;
        for i in 0..n {
            let (a, b) = (glover(i as f64 * DT), glover((i + 1) as f64 * DT));
            peak = peak.max(b);
            acc += 0.5 * (a + b) * DT;
            integral.push(acc);
        }
        Hrf { integral, peak }
    }

    fn cumulative(&self, t: f64) -> f64 {
        if t <= 0.0 {
            return 0.0;
        }
        let x = t / DT;
        let i = x.floor() as usize;
        if i + 1 >= self.integral.len() {
            return self.integral[self.integral.len() - 1];
        }
        let f = x - i as f64;
        self.integral[i] * (1.0 - f) + self.integral[i + 1] * f
    }

    /// Unnormalised response at `t` (s after onset) to a boxcar of
    /// `duration` s; an impulse when the duration is 0.
    pub fn boxcar(&self, t: f64, duration: f64) -> f64 {
        if duration <= 0.0 {
            glover(t)
        } else {
            self.cumulative(t) - self.cumulative(t - duration)
        }
    }

    /// Peak of [`Hrf::boxcar`] over time for this duration.
    pub fn boxcar_peak(&self, duration: f64) -> f64 {
        if duration <= 0.0 {
            return self.peak;
        }
        let end = HRF_LENGTH_S + duration;
        let steps = (end / 0.02).ceil() as usize;
        (0..=steps)
            .map(|i| self.boxcar(i as f64 * 0.02, duration))
            .fold(0.0, f64::max)
    }
}

/// BOLD time course of one run: sum of per-event responses, each scaled so
/// that it peaks at 1 when alone.
#[derive(Debug, Clone)]
pub struct BoldModel {
    hrf: Hrf,
    /// (onset, duration, 1 / peak)
    events: Vec<(f64, f64, f64)>,
}

impl BoldModel {
    /// The model for `events` with Glover's HRF.
    pub fn new(events: &[Event]) -> BoldModel {
        let hrf = Hrf::glover();
        let events = events
            .iter()
            .map(|e| {
                let peak = hrf.boxcar_peak(e.duration);
                let inv = if peak > 0.0 { 1.0 / peak } else { 0.0 };
                (e.onset, e.duration, inv)
            })
            .collect();
        BoldModel { hrf, events }
    }

    /// Each event's own response at `t` (event index, value; 1 = its peak),
    /// for the events still responding.
    pub fn each(&self, t: f64) -> impl Iterator<Item = (usize, f64)> + '_ {
        self.events
            .iter()
            .enumerate()
            .filter(move |(_, (on, dur, _))| t > *on && t < on + dur + HRF_LENGTH_S)
            .map(move |(i, (on, dur, inv))| (i, self.hrf.boxcar(t - on, *dur) * inv))
    }

    /// Signal change at `t` seconds from the run start (1 = one event's peak).
    pub fn at(&self, t: f64) -> f64 {
        self.events
            .iter()
            .filter(|(on, dur, _)| t > *on && t < on + dur + HRF_LENGTH_S)
            .map(|(on, dur, inv)| self.hrf.boxcar(t - on, *dur) * inv)
            // An empty float sum is −0.0; truth files should say 0.
            .fold(0.0, |a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_factorials() {
        for (x, f) in [(1.0, 1.0f64), (2.0, 1.0), (5.0, 24.0), (7.0, 720.0)] {
            assert!((ln_gamma(x) - f.ln()).abs() < 1e-12, "{x}");
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }

    #[test]
    fn glover_peaks_near_five_seconds_and_undershoots() {
        let hrf = Hrf::glover();
        let tpk = (0..3200)
            .map(|i| i as f64 * 0.01)
            .max_by(|a, b| glover(*a).total_cmp(&glover(*b)))
            .unwrap_or(0.0);
        assert!((4.5..6.0).contains(&tpk), "{tpk}");
        assert!(glover(15.0) < 0.0);
        // Integral of the difference of unit-area gammas: 1 − 0.35.
        assert!((hrf.cumulative(HRF_LENGTH_S) - 0.65).abs() < 1e-3);
    }

    #[test]
    fn a_lone_event_peaks_at_one_and_events_add() {
        let e = |onset| Event {
            onset,
            duration: 3.0,
            trial_type: "stim".into(),
            stim_id: None,
            modulation: 1.0,
        };
        let one = BoldModel::new(&[e(10.0)]);
        let peak = (0..5000)
            .map(|i| one.at(i as f64 * 0.01))
            .fold(0.0, f64::max);
        assert!((peak - 1.0).abs() < 1e-3, "{peak}");
        assert_eq!(one.at(9.0), 0.0);
        let two = BoldModel::new(&[e(10.0), e(40.0)]);
        let b = BoldModel::new(&[e(40.0)]);
        for t in [12.0, 20.0, 45.0] {
            assert!((two.at(t) - one.at(t) - b.at(t)).abs() < 1e-12);
        }
    }
}
