//! Stimulus-specific response patterns: each image shown evokes its own
//! pattern over a set of voxels, so the simulator's scans carry something a
//! decoder can read.
//!
//! In: the voxels (reference-grid indices, in the decoder's `np.where`
//! order), each stimulus's response over them (e.g. the demo subject's
//! `sim_responses.npy`), and an amplitude. Out: per frame, each pattern
//! voxel's signal change — the sum over the run's events of the event's
//! BOLD response times its stimulus's pattern — which
//! [`super::synth::SynthSeries`] adds where the head carries that voxel.
//! Optionally each event's pattern carries its own trial-to-trial noise
//! ([`StimulusPatterns::with_response_noise`]), drawn from the seed, the run
//! and the event's index, so any volume re-renders to the same numbers.
//!
//! The voxels are those of the calibration grid (head at pose zero): a
//! session with another head pose carries them to the same tissue.

use std::borrow::Cow;
use std::collections::HashMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::{SimError, mix_seed};
use crate::types::mask::SessionMask;
use crate::types::volume::{Grid, Volume};

/// Per-stimulus voxel patterns attached to reference-grid voxels.
#[derive(Debug, Clone)]
pub struct StimulusPatterns {
    /// Reference-grid file-order index of each pattern voxel, in column order.
    voxels: Vec<usize>,
    responses: HashMap<String, Vec<f32>>,
    /// Fractional signal change per unit of response at one event's peak.
    pub amplitude: f64,
    /// Trial-to-trial noise sd in units of the response (0: none).
    response_noise: f64,
    noise_seed: u64,
}

const TAG_RESPONSE_NOISE: u64 = 31;

impl StimulusPatterns {
    /// `voxels` (file-order indices of the reference grid) and one response
    /// per stimulus id, each with one value per voxel.
    pub fn new(
        voxels: Vec<usize>,
        responses: HashMap<String, Vec<f32>>,
        amplitude: f64,
    ) -> Result<StimulusPatterns, SimError> {
        if let Some((id, r)) = responses.iter().find(|(_, r)| r.len() != voxels.len()) {
            return Err(SimError::Spec(format!(
                "stimulus {id} has a response over {} voxels, not {}",
                r.len(),
                voxels.len()
            )));
        }
        if !amplitude.is_finite() {
            return Err(SimError::Spec("pattern amplitude must be finite".into()));
        }
        Ok(StimulusPatterns {
            voxels,
            responses,
            amplitude,
            response_noise: 0.0,
            noise_seed: 0,
        })
    }

    /// Give every event its own noisy copy of its stimulus's pattern:
    /// `response + sd × n`, n ~ N(0, 1) per voxel, drawn from `seed`, the
    /// run and the event's index in the run. 0 turns it off.
    pub fn with_response_noise(mut self, sd: f64, seed: u64) -> Result<Self, SimError> {
        if !(sd.is_finite() && sd >= 0.0) {
            return Err(SimError::Spec(format!(
                "response noise {sd} must be a non-negative sd"
            )));
        }
        self.response_noise = sd;
        self.noise_seed = seed;
        Ok(self)
    }

    /// Trial-to-trial noise sd (0: none).
    pub fn response_noise(&self) -> f64 {
        self.response_noise
    }

    /// The pattern event `event` (index in its run's event list) of `run`
    /// (from 1) evokes when it shows stimulus `id`: the stimulus's response
    /// plus that event's own noise. `None` when `id` has no pattern.
    pub fn event_response(&self, id: &str, run: u32, event: usize) -> Option<Cow<'_, [f32]>> {
        let base = self.responses.get(id)?;
        if self.response_noise == 0.0 {
            return Some(Cow::Borrowed(base));
        }
        let seed = mix_seed(
            mix_seed(mix_seed(self.noise_seed, TAG_RESPONSE_NOISE), run as u64),
            event as u64,
        );
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let sd = self.response_noise as f32;
        Some(Cow::Owned(
            base.iter()
                .map(|&v| {
                    let n: f32 = StandardNormal.sample(&mut rng);
                    v + sd * n
                })
                .collect(),
        ))
    }

    /// The pattern voxels (reference-grid file-order indices, column order).
    pub fn voxels(&self) -> &[usize] {
        &self.voxels
    }

    /// A stimulus's response, when it has one.
    pub fn response(&self, id: &str) -> Option<&[f32]> {
        self.responses.get(id).map(Vec::as_slice)
    }

    /// Stimulus ids with a pattern, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.responses.keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// `n` voxels for patterns: the brain voxels of `reference` (above half its
/// mean over `brain`) nearest the centroid of `weight` (e.g. the task
/// region), as a mask volume and its voxels in `np.where` order — the order
/// a decoder trained in Python indexes them.
pub fn pick_region(
    reference: &Volume,
    brain: &Volume,
    weight: &Volume,
    n: usize,
) -> Result<(Volume, Vec<usize>), SimError> {
    let grid: &Grid = reference.grid();
    let [nx, ny, _] = grid.dims;
    let vals = reference.values();
    let inside: Vec<usize> = (0..vals.len())
        .filter(|&i| brain.values()[i] > 0.5)
        .collect();
    let mean = inside.iter().map(|&i| vals[i] as f64).sum::<f64>() / inside.len().max(1) as f64;
    let (mut c, mut wsum) = ([0.0f64; 3], 0.0);
    for (i, &w) in weight.values().iter().enumerate() {
        if w > 0.0 {
            let ijk = [i % nx, (i / nx) % ny, i / (nx * ny)];
            for a in 0..3 {
                c[a] += w as f64 * ijk[a] as f64 * grid.pixdim[a];
            }
            wsum += w as f64;
        }
    }
    if wsum <= 0.0 {
        return Err(SimError::Spec(
            "no voxel has a positive weight to centre the patterns on".into(),
        ));
    }
    let c = c.map(|v| v / wsum);
    let mut candidates: Vec<(f64, usize)> = inside
        .into_iter()
        .filter(|&i| vals[i] as f64 > 0.5 * mean)
        .map(|i| {
            let ijk = [i % nx, (i / nx) % ny, i / (nx * ny)];
            let d2: f64 = (0..3)
                .map(|a| (ijk[a] as f64 * grid.pixdim[a] - c[a]).powi(2))
                .sum();
            (d2, i)
        })
        .collect();
    if candidates.len() < n {
        return Err(SimError::Spec(format!(
            "only {} brain voxels for {n} pattern voxels",
            candidates.len()
        )));
    }
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut mask = Volume::zeros(grid.clone());
    for &(_, i) in &candidates[..n] {
        mask.values_mut()[i] = 1.0;
    }
    // The pipeline's own mask type gives the np.where order it will use.
    let order = SessionMask::from_image(&mask, grid)
        .map_err(|e| SimError::Spec(format!("pattern mask: {e}")))?
        .indices()
        .iter()
        .map(|&i| i as usize)
        .collect();
    Ok((mask, order))
}

/// Each voxel's response replaced by a Gaussian-weighted mean (σ
/// `sigma_voxels`, in voxel units, truncated at 2σ) over the pattern voxels
/// around it, then re-standardised per voxel over the stimuli: real cortical
/// patterns are spatially smooth at fMRI resolution, and independent
/// neighbours would not survive motion and resampling as real patterns do.
/// `voxels` are file-order indices of `grid`, one per response value.
pub fn smooth_in_space(
    responses: &HashMap<String, Vec<f32>>,
    voxels: &[usize],
    grid: &Grid,
    sigma_voxels: f64,
) -> HashMap<String, Vec<f32>> {
    if sigma_voxels <= 0.0 || voxels.is_empty() {
        return responses.clone();
    }
    let [nx, ny, _] = grid.dims;
    let ijk: Vec<[i64; 3]> = voxels
        .iter()
        .map(|&v| {
            [
                (v % nx) as i64,
                ((v / nx) % ny) as i64,
                (v / (nx * ny)) as i64,
            ]
        })
        .collect();
    let slot: HashMap<[i64; 3], usize> = ijk.iter().enumerate().map(|(c, p)| (*p, c)).collect();
    let r = (2.0 * sigma_voxels).ceil() as i64;
    // Neighbour lists once; every stimulus reuses them.
    let weights: Vec<Vec<(usize, f32)>> = ijk
        .iter()
        .map(|p| {
            let mut w = Vec::new();
            for dk in -r..=r {
                for dj in -r..=r {
                    for di in -r..=r {
                        let q = [p[0] + di, p[1] + dj, p[2] + dk];
                        if let Some(&c) = slot.get(&q) {
                            let d2 = (di * di + dj * dj + dk * dk) as f64;
                            w.push((c, (-0.5 * d2 / (sigma_voxels * sigma_voxels)).exp() as f32));
                        }
                    }
                }
            }
            let sum: f32 = w.iter().map(|x| x.1).sum();
            w.iter_mut().for_each(|x| x.1 /= sum.max(f32::MIN_POSITIVE));
            w
        })
        .collect();
    let mut out: HashMap<String, Vec<f32>> = responses
        .iter()
        .map(|(id, resp)| {
            let smooth = weights
                .iter()
                .map(|w| {
                    w.iter()
                        .map(|&(c, x)| x * resp.get(c).copied().unwrap_or(0.0))
                        .sum()
                })
                .collect();
            (id.clone(), smooth)
        })
        .collect();
    let n = out.len().max(1) as f64;
    for c in 0..voxels.len() {
        let mean = out.values().map(|r| r[c] as f64).sum::<f64>() / n;
        let sd = (out
            .values()
            .map(|r| (r[c] as f64 - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        for r in out.values_mut() {
            r[c] = if sd > 0.0 {
                ((r[c] as f64 - mean) / sd) as f32
            } else {
                0.0
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::simulate::motion::MotionModel;
    use crate::tools::simulate::synth::{SynthSeries, SynthSpec};
    use crate::types::events::Event;

    fn series(events: Vec<Event>) -> SynthSeries {
        SynthSeries::new(SynthSpec {
            dims: [24, 28, 20],
            voxel_mm: [6.0, 6.0, 6.0],
            volumes_per_run: 20,
            motion: MotionModel::Still,
            noise: 0.0,
            activation: 0.0,
            events: Some(vec![events]),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn each_stimulus_adds_its_own_pattern_where_the_voxels_are() {
        let ev = |onset: f64, id: &str| Event {
            onset,
            duration: 3.0,
            trial_type: "image".into(),
            stim_id: Some(id.into()),
            modulation: 1.0,
        };
        let plain = series(vec![ev(3.0, "a"), ev(18.0, "b")]);
        let reference = plain.clean_volume(0);
        let brain = plain.brain_map();
        let (mask, order) = pick_region(&reference, &brain, &plain.task_map(), 50).unwrap();
        assert_eq!(order.len(), 50);
        assert_eq!(mask.values().iter().filter(|v| **v > 0.0).count(), 50);
        // np.where order: first axis slowest.
        let nx = reference.grid().dims[0];
        let ny = reference.grid().dims[1];
        let key = |i: usize| (i % nx, (i / nx) % ny, i / (nx * ny));
        assert!(order.windows(2).all(|w| key(w[0]) < key(w[1])));
        let pa: Vec<f32> = (0..50)
            .map(|c| if c % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let pb: Vec<f32> = (0..50).map(|c| (c as f32 / 25.0) - 1.0).collect();
        let responses = HashMap::from([("a".to_string(), pa.clone()), ("b".to_string(), pb)]);
        let patterned = series(vec![ev(3.0, "a"), ev(18.0, "b")])
            .with_patterns(StimulusPatterns::new(order.clone(), responses, 0.05).unwrap())
            .unwrap();
        // Volume 6 (9 s) is near the peak of event "a" only.
        let act = patterned.pattern_activity(6).unwrap();
        let w = act[0] / (0.05 * pa[0]);
        assert!(w > 0.5 && w <= 1.0, "BOLD weight {w}");
        for (c, &a) in act.iter().enumerate() {
            assert!((a - 0.05 * w * pa[c]).abs() < 1e-6);
        }
        let (with, without) = (patterned.clean_volume(6), plain.clean_volume(6));
        for (c, &v) in order.iter().enumerate() {
            let ratio = with.values()[v] / without.values()[v] - 1.0;
            assert!(
                (ratio - act[c]).abs() < 1e-4,
                "voxel {v}: {ratio} vs {}",
                act[c]
            );
        }
        // Outside the pattern voxels nothing changes.
        let changed = (0..with.values().len())
            .filter(|&i| (with.values()[i] - without.values()[i]).abs() > 1e-3)
            .count();
        assert_eq!(changed, 50);
        assert!(patterned.pattern_activity(0).is_none());
    }

    #[test]
    fn responses_of_the_wrong_length_are_refused() {
        let r = HashMap::from([("a".to_string(), vec![0.0; 3])]);
        assert!(StimulusPatterns::new(vec![1, 2], r, 0.01).is_err());
    }

    #[test]
    fn per_event_noise_is_reproducible_and_has_the_asked_size() {
        let n = 4000;
        let base: Vec<f32> = (0..n).map(|c| ((c % 7) as f32 - 3.0) / 2.0).collect();
        let responses = HashMap::from([("a".to_string(), base.clone())]);
        let p = StimulusPatterns::new((0..n).collect(), responses.clone(), 0.02)
            .unwrap()
            .with_response_noise(0.5, 9)
            .unwrap();
        let e = |run, ev| p.event_response("a", run, ev).unwrap().into_owned();
        assert_eq!(e(1, 3), e(1, 3));
        assert_ne!(e(1, 3), e(1, 4));
        assert_ne!(e(1, 3), e(2, 3));
        let d: Vec<f64> = e(2, 5)
            .iter()
            .zip(&base)
            .map(|(a, b)| (a - b) as f64)
            .collect();
        let mean = d.iter().sum::<f64>() / n as f64;
        let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!(mean.abs() < 0.05 && (sd - 0.5).abs() < 0.05, "{mean} {sd}");
        // Off by default: the stored response itself.
        let quiet = StimulusPatterns::new((0..n).collect(), responses, 0.02).unwrap();
        assert_eq!(quiet.response_noise(), 0.0);
        assert!(matches!(
            quiet.event_response("a", 1, 0),
            Some(Cow::Borrowed(_))
        ));
        assert!(quiet.event_response("b", 1, 0).is_none());
        assert!(quiet.with_response_noise(-1.0, 1).is_err());
    }

    #[test]
    fn noisy_trials_render_the_same_twice_and_differ_between_repeats() {
        let ev = |onset: f64| Event {
            onset,
            duration: 3.0,
            trial_type: "image".into(),
            stim_id: Some("a".into()),
            modulation: 1.0,
        };
        // The same image twice, far enough apart for the first response to
        // be over when the second peaks.
        let series = |events: Vec<Event>| {
            SynthSeries::new(SynthSpec {
                dims: [24, 28, 20],
                voxel_mm: [6.0, 6.0, 6.0],
                volumes_per_run: 30,
                motion: MotionModel::Still,
                activation: 0.0,
                events: Some(vec![events]),
                ..Default::default()
            })
            .unwrap()
        };
        let plain = series(vec![ev(3.0), ev(33.0)]);
        let (_, order) = pick_region(
            &plain.clean_volume(0),
            &plain.brain_map(),
            &plain.task_map(),
            40,
        )
        .unwrap();
        let resp = HashMap::from([("a".to_string(), vec![1.0f32; 40])]);
        let noisy = |seed| {
            series(vec![ev(3.0), ev(33.0)])
                .with_patterns(
                    StimulusPatterns::new(order.clone(), resp.clone(), 0.05)
                        .unwrap()
                        .with_response_noise(0.4, seed)
                        .unwrap(),
                )
                .unwrap()
        };
        let s = noisy(1);
        // Volumes 6 and 26 sit at the same delay after each event.
        let (a, b) = (
            s.pattern_activity(6).unwrap(),
            s.pattern_activity(26).unwrap(),
        );
        assert_ne!(a, b);
        assert_eq!(s.volume(6).values(), s.volume(6).values());
        assert_eq!(s.volume(6).values(), noisy(1).volume(6).values());
        assert_ne!(s.volume(6).values(), noisy(2).volume(6).values());
        // Each trial's pattern scatters around the clean one.
        let w = a.iter().sum::<f32>() / (0.05 * a.len() as f32);
        assert!(w > 0.5 && w <= 1.2, "{w}");
    }
}
