//! The incremental LSS model against a direct, textbook computation of the
//! same fit (nilearn's algorithm written out on the full design and data,
//! solved by QR), to f32 output precision (1e-6 relative):
//! frames in order, with gaps, late frames, and trials announced mid-run.

use boldstream::glm::design::{
    DesignSpec, Stimulus, condition_regressor, cosine_drift, drift_order, frame_times,
};
use boldstream::glm::model::{ModelSpec, NoiseModel, RunModel, SignalScaling};
use std::collections::BTreeMap;

use nalgebra::{DMatrix, DVector};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const V: usize = 40;
const N: usize = 90;

struct Data {
    y: Vec<Vec<f32>>,
    motion: Vec<[f64; 6]>,
    trials: Vec<Stimulus>,
}

fn data(seed: u64) -> Data {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let trials: Vec<Stimulus> = (0..14)
        .map(|i| Stimulus {
            onset: 6.0 + 6.5 * i as f64 + rng.random_range(0.0..1.0),
            duration: 3.0,
            value: 1.0,
        })
        .collect();
    let spec = DesignSpec::default();
    let ft = frame_times(N, spec.tr, spec.slice_time_ref);
    let regs: Vec<Vec<f64>> = trials
        .iter()
        .map(|s| condition_regressor(std::slice::from_ref(s), &ft, &spec))
        .collect();
    let mut motion = Vec::new();
    let mut m = [0.0f64; 6];
    for _ in 0..N {
        for (a, v) in m.iter_mut().enumerate() {
            let scale = if a < 3 { 0.002 } else { 0.05 };
            *v += rng.random_range(-1.0..1.0) * scale;
        }
        motion.push(m);
    }
    let mut y = vec![vec![0f32; V]; N];
    for v in 0..V {
        let base = 500.0 + 100.0 * v as f64;
        let amps: Vec<f64> = trials
            .iter()
            .map(|_| rng.random_range(-5.0..15.0))
            .collect();
        let rho = rng.random_range(-0.2..0.6);
        let mut e = 0.0;
        for (t, (frame, m)) in y.iter_mut().zip(&motion).enumerate() {
            e = rho * e + rng.random_range(-3.0..3.0);
            let task: f64 = regs.iter().zip(&amps).map(|(r, a)| r[t] * a).sum();
            let drift = 4.0 * (t as f64 / 30.0).sin();
            let mot = 30.0 * m[3] - 200.0 * m[0];
            frame[v] = (base + task + drift + mot + e) as f32;
        }
    }
    Data { y, motion, trials }
}

/// Least squares by Householder QR (accurate; nalgebra's SVD pseudo-inverse
/// is not, at these condition numbers).
fn lstsq(x: &DMatrix<f64>, y: &DMatrix<f64>) -> DMatrix<f64> {
    let qr = x.clone().qr();
    let qty = qr.q().transpose() * y;
    qr.r().solve_upper_triangular(&qty).unwrap()
}

/// nilearn's run_glm on an explicit design, written out plainly.
fn reference_fit(
    x: &DMatrix<f64>,
    y: &DMatrix<f64>,
    noise: NoiseModel,
    percent: bool,
) -> DVector<f64> {
    let (n, v) = (y.nrows(), y.ncols());
    let mut y = y.clone();
    if percent {
        for j in 0..v {
            let mean = y.column(j).mean().max(1.0);
            for i in 0..n {
                y[(i, j)] = 100.0 * (y[(i, j)] / mean - 1.0);
            }
        }
    }
    let b = lstsq(x, &y);
    if noise == NoiseModel::Ols {
        return b.row(0).transpose();
    }
    let r = &y - x * &b;
    let mut out = DVector::zeros(v);
    for j in 0..v {
        let col = r.column(j);
        let m = col.mean();
        let c: Vec<f64> = col.iter().map(|a| a - m).collect();
        let r0: f64 = c.iter().map(|a| a * a).sum::<f64>() / (n * n) as f64;
        let r1: f64 = c.windows(2).map(|w| w[0] * w[1]).sum::<f64>() / ((n - 1) * n) as f64;
        let rho = ((r1 / r0) * 100.0) as i64 as f64 * 1.0 / 100.0;
        let whiten = |m: &DMatrix<f64>| {
            let mut w = m.clone();
            for i in 1..m.nrows() {
                for c in 0..m.ncols() {
                    w[(i, c)] = m[(i, c)] - rho * m[(i - 1, c)];
                }
            }
            w
        };
        let xw = whiten(x);
        let yw = whiten(&DMatrix::from_column_slice(n, 1, y.column(j).as_slice()));
        let bw = lstsq(&xw, &yw);
        out[j] = bw[(0, 0)];
    }
    out
}

/// The design the model should use for trial `k` over `pos`.
fn design(d: &Data, k: usize, pos: &[usize], known: &[usize], spec: &DesignSpec) -> DMatrix<f64> {
    design_n(d, k, pos, known, spec, N)
}

/// The same for a run planned at `planned` frames.
fn design_n(
    d: &Data,
    k: usize,
    pos: &[usize],
    known: &[usize],
    spec: &DesignSpec,
    planned: usize,
) -> DMatrix<f64> {
    let ft = frame_times(planned, spec.tr, spec.slice_time_ref);
    let reg = |i: usize| condition_regressor(std::slice::from_ref(&d.trials[i]), &ft, spec);
    let probe = reg(k);
    let mut reference = vec![0.0; planned];
    for &j in known.iter().filter(|&&j| j != k) {
        for (a, b) in reference.iter_mut().zip(reg(j)) {
            *a += b;
        }
    }
    let drift = cosine_drift(&ft, spec.high_pass);
    let span = pos.last().unwrap() + 1;
    let order = drift_order(span, spec.tr, spec.high_pass).min(drift.len());
    let mut cols: Vec<Vec<f64>> = vec![pos.iter().map(|&t| probe[t]).collect()];
    if pos.iter().any(|&t| reference[t].abs() > 1e-12) {
        cols.push(pos.iter().map(|&t| reference[t]).collect());
    }
    for a in 0..6 {
        cols.push(pos.iter().map(|&t| d.motion[t][a]).collect());
    }
    for c in drift.iter().take(order) {
        cols.push(pos.iter().map(|&t| c[t]).collect());
    }
    cols.push(vec![1.0; pos.len()]);
    DMatrix::from_fn(pos.len(), cols.len(), |i, c| cols[c][i])
}

fn check(noise: NoiseModel, scaling: SignalScaling, tol: f64) {
    let d = data(42);
    let spec = ModelSpec {
        noise,
        scaling,
        ..ModelSpec::default()
    };
    let mut m = RunModel::new(spec.clone(), N, V);
    let mut held: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
    // Trials 0..8 known at the start; the rest announced live at frame 40.
    let mut known: Vec<usize> = (0..8).collect();
    for &k in &known {
        m.add_trial(d.trials[k], &held);
    }
    let missing = [17usize, 18, 51];
    let late = 33usize; // arrives after frame 36
    let mut pos = Vec::new();
    let mut compared = 0;
    for t in 0..N {
        if t == 40 {
            for k in 8..14 {
                m.add_trial(d.trials[k], &held);
                known.push(k);
            }
        }
        if missing.contains(&t) || t == late {
            continue;
        }
        assert!(m.add_frame(t, &d.y[t], d.motion[t], &held));
        held.insert(t, d.y[t].clone());
        pos.push(t);
        if t == 36 {
            assert!(m.add_frame(late, &d.y[late], d.motion[late], &held));
            held.insert(late, d.y[late].clone());
            pos.push(late);
            pos.sort();
        }
        // Compare every trial whose response has started at a few points.
        if [30usize, 45, 70, N - 1].contains(&t) {
            for &k in &known {
                let Ok(est) = m.estimate(k, 5, &held) else {
                    continue;
                };
                let x = design(&d, k, &pos, &known, &spec.design);
                assert_eq!(
                    x.ncols(),
                    est.regressors,
                    "trial {k} at frame {t}: {:?}",
                    est.columns
                );
                let y = DMatrix::from_fn(pos.len(), V, |i, j| d.y[pos[i]][j] as f64);
                let want = reference_fit(&x, &y, noise, scaling == SignalScaling::Percent);
                let scale = want.amax();
                for j in 0..V {
                    let err = (est.beta[j] as f64 - want[j]).abs();
                    assert!(
                        err <= tol * want[j].abs().max(0.1 * scale),
                        "{noise:?} trial {k} frame {t} voxel {j}: {} vs {}",
                        est.beta[j],
                        want[j]
                    );
                }
                compared += 1;
            }
        }
    }
    assert!(compared > 20, "only {compared} comparisons");
}

#[test]
fn ols_raw_equals_the_direct_fit() {
    check(NoiseModel::Ols, SignalScaling::None, 1e-6);
}

#[test]
fn ols_percent_equals_the_direct_fit() {
    check(NoiseModel::Ols, SignalScaling::Percent, 1e-6);
}

#[test]
fn ar1_equals_nilearns_algorithm_written_out() {
    check(NoiseModel::Ar1, SignalScaling::Percent, 1e-6);
}

/// Real data shape: ~20,000 voxels and 300 volumes, the model's betas on a
/// spread of voxels against the direct fit, OLS and AR(1), at the start,
/// middle and end of the run.
#[test]
fn full_shape_20k_voxels_300_volumes_matches_the_direct_fit() {
    const VOX: usize = 20_000;
    const NF: usize = 300;
    let spec_design = DesignSpec::default();
    let ft = frame_times(NF, spec_design.tr, spec_design.slice_time_ref);
    let trials: Vec<Stimulus> = (0..60)
        .map(|i| Stimulus {
            onset: 6.0 + 7.2 * i as f64,
            duration: 3.0,
            value: 1.0,
        })
        .collect();
    let regs: Vec<Vec<f64>> = trials
        .iter()
        .map(|s| condition_regressor(std::slice::from_ref(s), &ft, &spec_design))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let motion: Vec<[f64; 6]> = {
        let mut m = [0.0f64; 6];
        (0..NF)
            .map(|_| {
                for (a, v) in m.iter_mut().enumerate() {
                    *v += rng.random_range(-1.0..1.0) * if a < 3 { 0.0005 } else { 0.02 };
                }
                m
            })
            .collect()
    };
    // Voxel v: baseline, a response of its own to every trial, AR noise.
    let amp: Vec<f64> = (0..VOX).map(|v| ((v * 37) % 101) as f64 / 10.0).collect();
    let rho: Vec<f64> = (0..VOX)
        .map(|v| ((v * 13) % 7) as f64 / 10.0 - 0.1)
        .collect();
    let mut e = vec![0.0f64; VOX];
    let frames: Vec<Vec<f32>> = (0..NF)
        .map(|t| {
            let task: f64 = regs.iter().map(|r| r[t]).sum();
            (0..VOX)
                .map(|v| {
                    e[v] = rho[v] * e[v] + rng.random_range(-4.0..4.0);
                    (800.0 + (v % 300) as f64 + amp[v] * task + 15.0 * motion[t][3] + e[v]) as f32
                })
                .collect()
        })
        .collect();
    let probe_voxels: Vec<usize> = (0..VOX).step_by(VOX / 60).collect();
    for noise in [NoiseModel::Ols, NoiseModel::Ar1] {
        let spec = ModelSpec {
            noise,
            ..ModelSpec::default()
        };
        let mut m = RunModel::new(spec.clone(), NF, VOX);
        let mut held: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        for s in &trials {
            m.add_trial(*s, &held);
        }
        let mut checked = 0;
        for (t, y) in frames.iter().enumerate() {
            m.add_frame(t, y, motion[t], &held);
            held.insert(t, y.clone());
            if ![40usize, 150, NF - 1].contains(&t) {
                continue;
            }
            let pos: Vec<usize> = (0..=t).collect();
            let d = Data {
                y: Vec::new(),
                motion: motion.clone(),
                trials: trials.clone(),
            };
            let known: Vec<usize> = (0..trials.len()).collect();
            for k in [2usize, 17, 40, 58] {
                let Ok(est) = m.estimate(k, 5, &held) else {
                    continue;
                };
                let x = design_n(&d, k, &pos, &known, &spec.design, NF);
                assert_eq!(x.ncols(), est.regressors);
                let y = DMatrix::from_fn(pos.len(), probe_voxels.len(), |i, j| {
                    frames[pos[i]][probe_voxels[j]] as f64
                });
                let want = reference_fit(&x, &y, noise, true);
                let scale = want.amax();
                for (j, &v) in probe_voxels.iter().enumerate() {
                    let err = (est.beta[v] as f64 - want[j]).abs();
                    assert!(
                        err <= 1e-5 * want[j].abs().max(1e-3 * scale),
                        "{noise:?} trial {k} at frame {t}, voxel {v}: {} vs {}",
                        est.beta[v],
                        want[j]
                    );
                }
                checked += 1;
            }
        }
        assert_eq!(
            checked, 7,
            "{noise:?}: trial fits checked (1 at frame 40, 2 at 150, 4 at the end)"
        );
    }
}
