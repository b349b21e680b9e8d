use boldstream::glm::design::Stimulus;
use boldstream::glm::model::{ModelSpec, NoiseModel, RunModel};
use std::time::Instant;
#[test]
fn perf() {
    let v = 20_000;
    let n_total = 300;
    for noise in [NoiseModel::Ols, NoiseModel::Ar1] {
        let mut m = RunModel::new(
            ModelSpec {
                noise,
                ..Default::default()
            },
            n_total,
            v,
        );
        let mut held: std::collections::BTreeMap<usize, Vec<f32>> = Default::default();
        for i in 0..65 {
            m.add_trial(
                Stimulus {
                    onset: 6.0 + 6.8 * i as f64,
                    duration: 3.0,
                    value: 1.0,
                },
                &held,
            );
        }
        let mut state = 1u64;
        let mut frame = vec![0f32; v];
        let t0 = Instant::now();
        for t in 0..n_total {
            for x in frame.iter_mut() {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *x = 1000.0 + ((state >> 40) as f32 / 16777216.0) * 20.0;
            }
            let tf = t as f64;
            let mo = [
                0.001 * (tf / 7.0).sin(),
                0.0004 * (tf / 11.0).cos(),
                0.0005 * (tf / 3.0).sin(),
                0.01 * (tf / 13.0).sin(),
                0.02 * (tf / 5.0).cos(),
                -0.01 * (tf / 17.0).cos(),
            ];
            m.add_frame(t, &frame, mo, &held);
            held.insert(t, frame.clone());
        }
        let per_frame = t0.elapsed().as_secs_f64() * 1e3 / n_total as f64;
        let t1 = Instant::now();
        let e = m.estimate(60, 5, &held).unwrap();
        let est = t1.elapsed().as_secs_f64() * 1e3;
        eprintln!(
            "{noise:?}: per frame {per_frame:.2} ms, estimate {est:.2} ms ({} regressors, {} frames)",
            e.regressors, e.frames
        );
    }
}
