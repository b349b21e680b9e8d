//! Trigger volume → z-scored beta, one thread, 20,000 voxels.
//!
//! For a trial due at volume n (n = 50, 150, 300 of a 300-volume run), the
//! time from handing the GLM that volume (after realign) to the z-scored
//! beta: the frame's update of the sums, the trial's LSS fit (OLS or AR(1))
//! and the normalisation. Medians over repeats, OLS and AR(1). nilearn's
//! time for the same beta comes from `tests/parity/glm_compare.py` on the
//! same machine (`make bench` runs both); the design target is 10 ms at
//! 300 volumes.
//!
//! `cargo bench --bench glm`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use boldstream::glm::model::{DriftBasis, ModelSpec, NoiseModel};
use boldstream::glm::normalize::Normalizer;
use boldstream::glm::run::{RunGlm, Schedule};
use boldstream::types::events::Event;

const VOXELS: usize = 20_000;
const PLANNED: usize = 300;
const REPEATS: usize = 5;

fn frames(n: usize) -> Vec<Vec<f32>> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|t| {
            (0..VOXELS)
                .map(|v| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let noise = (state >> 40) as f32 / 16_777_216.0;
                    900.0 + (v % 200) as f32 + 20.0 * noise + 0.05 * t as f32
                })
                .collect()
        })
        .collect()
}

fn motion(t: usize) -> [f64; 6] {
    let x = t as f64;
    [
        0.001 * (x / 13.0).sin(),
        0.0007 * (x / 19.0).cos(),
        0.0004 * (x / 7.0).sin(),
        0.03 * (x / 23.0).sin(),
        0.02 * (x / 11.0).cos(),
        0.01 * x / 100.0,
    ]
}

/// A MindEye-like schedule whose last trial is due exactly at volume `n`.
fn events(n: usize) -> Vec<Event> {
    let due_onset = (n - 1) as f64 * 1.5 - 7.5;
    let mut ev: Vec<Event> = (0..)
        .map(|i| 6.0 + 4.5 * i as f64)
        .take_while(|&o| o < due_onset - 3.0)
        .map(|onset| Event {
            onset,
            duration: 3.0,
            trial_type: "image".into(),
            stim_id: None,
            modulation: 1.0,
        })
        .collect();
    ev.push(Event {
        onset: due_onset,
        duration: 3.0,
        trial_type: "image".into(),
        stim_id: None,
        modulation: 1.0,
    });
    ev
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    println!(
        "trigger volume -> z-scored beta, {VOXELS} voxels, one thread (boldstream {})",
        env!("CARGO_PKG_VERSION")
    );
    let data = frames(PLANNED);
    for (noise, drift_basis) in [
        (NoiseModel::Ols, DriftBasis::Run),
        (NoiseModel::Ar1, DriftBasis::Run),
        (NoiseModel::Ols, DriftBasis::FramesSoFar),
        (NoiseModel::Ar1, DriftBasis::FramesSoFar),
    ] {
        for n in [50usize, 150, 300] {
            let ev = events(n);
            let mut total = Vec::new();
            let mut fit = Vec::new();
            for _ in 0..REPEATS {
                let spec = ModelSpec {
                    noise,
                    drift_basis,
                    ..ModelSpec::default()
                };
                let mut glm = RunGlm::new(spec, PLANNED, VOXELS, Schedule::default(), &ev);
                let mut norm = Normalizer::session(VOXELS, 1e-6, false);
                let mut held: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
                for (t, frame) in data.iter().enumerate().take(n - 1) {
                    held.insert(t, frame.clone());
                    for o in glm.frame(t, frame, motion(t), false, &held) {
                        if let Ok(e) = o.result {
                            norm.push(&Arc::from(e.beta), None);
                        }
                    }
                }
                held.insert(n - 1, data[n - 1].clone());
                let start = Instant::now();
                let outcomes = glm.frame(n - 1, &data[n - 1], motion(n - 1), false, &held);
                let due: Vec<_> = outcomes
                    .into_iter()
                    .filter(|o| o.trigger == n - 1)
                    .collect();
                assert_eq!(due.len(), 1, "exactly one trial due at volume {n}");
                let est = due[0].result.as_ref().expect("estimated");
                let z = norm
                    .push(&Arc::from(est.beta.clone()), None)
                    .expect("normalised");
                let elapsed = start.elapsed().as_secs_f64() * 1e3;
                std::hint::black_box(&z);
                total.push(elapsed);
                fit.push(due[0].compute_seconds * 1e3);
            }
            let t = median(&mut total);
            println!(
                "{:<4} {:<6} drift {n:>3} volumes: trigger -> z-scored beta p50 {t:>6.2} ms (LSS fit {:>5.2} ms) | p50 / 10 ms target = {:.2}",
                format!("{noise:?}").to_uppercase(),
                match drift_basis {
                    DriftBasis::Run => "run",
                    DriftBasis::FramesSoFar => "so-far",
                },
                median(&mut fit),
                t / 10.0
            );
        }
    }
}
