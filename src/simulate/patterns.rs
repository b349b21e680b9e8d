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

use std::collections::HashMap;

use super::SimError;
use crate::mask::SessionMask;
use crate::volume::{Grid, Volume};

/// Per-stimulus voxel patterns attached to reference-grid voxels.
#[derive(Debug, Clone)]
pub struct StimulusPatterns {
    /// Reference-grid file-order index of each pattern voxel, in column order.
    voxels: Vec<usize>,
    responses: HashMap<String, Vec<f32>>,
    /// Fractional signal change per unit of response at one event's peak.
    pub amplitude: f64,
}

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
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use crate::simulate::motion::MotionModel;
    use crate::simulate::synth::{SynthSeries, SynthSpec};

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
}
