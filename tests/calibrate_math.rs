//! Calibration math through the public API: ridge with grouped
//! cross-validation (recovery of known maps, dual = primal, penalty follows
//! the noise, folds keep groups whole), reliability-based voxel selection
//! on simulated repeats, the ONNX adapter run by ONNX Runtime against the
//! direct product, and the errors bad input gets.

use std::time::Instant;

use boldstream::calibrate::onnx_graph;
use boldstream::calibrate::reliability::{
    self, MIN_REPEATED_IMAGES, ReliabilityError, select_voxels_cv, voxel_reliability,
};
use boldstream::calibrate::ridge::{
    Form, RidgeError, RidgeFit, RidgeOptions, cv_score, fit_ridge, fit_ridge_cv, group_folds,
};
use boldstream::decode::runtime::{DeviceChoice, Input, Runtime, RuntimeConfig};
use boldstream::decode::tensor::{Dtype, TensorSpec};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn normal(rng: &mut ChaCha8Rng, k: usize) -> Vec<f64> {
    (0..k).map(|_| StandardNormal.sample(rng)).collect()
}

/// Row-major product of an (n × k) and a (k × m) matrix.
fn matmul(a: &[f64], n: usize, k: usize, b: &[f64], m: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for p in 0..k {
            let aip = a[i * k + p];
            for j in 0..m {
                out[i * m + j] += aip * b[p * m + j];
            }
        }
    }
    out
}

fn to_f32(a: &[f64]) -> Vec<f32> {
    a.iter().map(|&v| v as f32).collect()
}

/// R² of predictions against truth, pooled over all columns.
fn r2(truth: &[f64], pred: &[f64]) -> f64 {
    let mean = truth.iter().sum::<f64>() / truth.len() as f64;
    let sse: f64 = truth.iter().zip(pred).map(|(t, p)| (t - p).powi(2)).sum();
    let sst: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
    1.0 - sse / sst
}

fn predict_all(fit: &RidgeFit, x: &[f32], n: usize) -> Vec<f64> {
    let v = fit.voxels;
    (0..n)
        .flat_map(|r| fit.predict(&x[r * v..(r + 1) * v]).unwrap())
        .map(|p| p as f64)
        .collect()
}

/// Images shown 1–3 times in shuffled order: (image name per row, group id
/// per row).
fn presentations(rng: &mut ChaCha8Rng, images: usize) -> (Vec<String>, Vec<usize>) {
    let mut rows: Vec<usize> = Vec::new();
    for i in 0..images {
        let k = rng.random_range(1..=3);
        rows.extend(std::iter::repeat_n(i, k));
    }
    for i in (1..rows.len()).rev() {
        let j = rng.random_range(0..=i);
        rows.swap(i, j);
    }
    (rows.iter().map(|i| format!("img{i:04}")).collect(), rows)
}

/// Largest difference relative to the largest magnitude of `b`; infinite
/// when anything is not finite (so NaN cannot pass a `<` check).
fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.iter().chain(b).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    a.iter()
        .zip(b)
        .fold(0f64, |m, (&p, &q)| m.max((p as f64 - q as f64).abs()))
        / scale
}

#[test]
fn ridge_recovers_a_known_map_when_trials_outnumber_voxels() {
    let mut r = rng(10);
    let (n, v, l) = (200, 50, 8);
    let x = normal(&mut r, n * v);
    let w_true: Vec<f64> = normal(&mut r, v * l)
        .iter()
        .map(|w| w / (v as f64).sqrt())
        .collect();
    let clean = matmul(&x, n, v, &w_true, l);
    let noise = normal(&mut r, n * l);
    let y: Vec<f64> = clean
        .iter()
        .zip(&noise)
        .map(|(c, e)| c + 0.01 * e)
        .collect();
    let groups: Vec<usize> = (0..n).map(|i| i / 2).collect();
    let fit = fit_ridge_cv(
        &to_f32(&x),
        n,
        v,
        &to_f32(&y),
        l,
        &groups,
        &RidgeOptions::default(),
    )
    .unwrap();
    assert_eq!(fit.form, Form::Primal, "automatic form with V < N");
    let err: f64 = fit
        .weights
        .iter()
        .zip(&w_true)
        .map(|(&a, b)| (a as f64 - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = w_true.iter().map(|b| b * b).sum::<f64>().sqrt();
    println!(
        "V<N: |W−W_true|/|W_true| = {:.2e}, cv R² min {:.5}",
        err / norm,
        fit.cv_r2.iter().cloned().fold(f64::INFINITY, f64::min)
    );
    assert!(err / norm < 0.01, "relative weight error {}", err / norm);
    assert!(fit.cv_r2.iter().all(|&q| q > 0.99), "{:?}", fit.cv_r2);
    // Fresh data from the same map.
    let x2 = normal(&mut r, 50 * v);
    let truth = matmul(&x2, 50, v, &w_true, l);
    let pred = predict_all(&fit, &to_f32(&x2), 50);
    assert!(r2(&truth, &pred) > 0.999);
}

#[test]
fn ridge_predicts_held_out_rows_when_voxels_outnumber_trials() {
    // Voxels driven by a few image features (as real betas are), targets a
    // linear function of those features: W is not identifiable with
    // V > N, but the map from betas to targets is learnable.
    let mut r = rng(11);
    let (images, v, l, k) = (120, 300, 8, 10);
    let (_, groups) = presentations(&mut r, images);
    let n = groups.len();
    let feats = normal(&mut r, images * k);
    let mix = normal(&mut r, k * v);
    let a = normal(&mut r, k * l);
    let make = |r: &mut ChaCha8Rng, rows: &[usize]| {
        let f: Vec<f64> = rows
            .iter()
            .flat_map(|&i| feats[i * k..(i + 1) * k].to_vec())
            .collect();
        let noise = normal(r, rows.len() * v);
        let x: Vec<f64> = matmul(&f, rows.len(), k, &mix, v)
            .iter()
            .zip(&noise)
            .map(|(s, e)| s + 0.5 * e)
            .collect();
        let y = matmul(&f, rows.len(), k, &a, l);
        (x, y)
    };
    let (x, y) = make(&mut r, &groups);
    let fit = fit_ridge_cv(
        &to_f32(&x),
        n,
        v,
        &to_f32(&y),
        l,
        &groups,
        &RidgeOptions::default(),
    )
    .unwrap();
    assert_eq!(fit.form, Form::Dual, "automatic form with V > N ({n} rows)");
    let mean_cv = fit.cv_r2.iter().sum::<f64>() / l as f64;
    // Fresh presentations of the same images.
    let rows: Vec<usize> = (0..images).collect();
    let (x2, y2) = make(&mut r, &rows);
    let fresh = r2(&y2, &predict_all(&fit, &to_f32(&x2), images));
    println!("V>N: N={n}, cv R² mean {mean_cv:.4}, fresh R² {fresh:.4}");
    assert!(mean_cv > 0.95, "{:?}", fit.cv_r2);
    assert!(fresh > 0.95);
}

#[test]
fn dual_and_primal_give_the_same_weights() {
    let mut r = rng(12);
    let l = 6;
    for (n, v) in [(200, 300), (200, 50)] {
        let x = to_f32(
            &normal(&mut r, n * v)
                .iter()
                .map(|a| a + 2.0)
                .collect::<Vec<_>>(),
        );
        let y = to_f32(&normal(&mut r, n * l));
        let lambdas: Vec<f64> = (0..l).map(|i| 0.5 * 10f64.powi(i as i32)).collect();
        let p = fit_ridge(&x, n, v, &y, l, &lambdas, Form::Primal).unwrap();
        let d = fit_ridge(&x, n, v, &y, l, &lambdas, Form::Dual).unwrap();
        assert_eq!((p.form, d.form), (Form::Primal, Form::Dual));
        let dw = max_rel_diff(&d.weights, &p.weights);
        let db = max_rel_diff(&d.bias, &p.bias);
        println!("N={n} V={v}: dual vs primal max rel diff weights {dw:.1e}, bias {db:.1e}");
        assert!(dw < 1e-6 && db < 1e-6);
        // A penalty that makes no difference would make this vacuous.
        assert!(
            max_rel_diff(&p.weights[..v * l], &{
                let other = fit_ridge(&x, n, v, &y, l, &[1e3], Form::Primal).unwrap();
                other.weights
            }) > 1e-2
        );
        // Through cross-validation too: same folds, same choices.
        let opts = |form| RidgeOptions {
            form: Some(form),
            ..RidgeOptions::default()
        };
        let groups: Vec<usize> = (0..n).map(|i| i / 3).collect();
        let cp = fit_ridge_cv(&x, n, v, &y, l, &groups, &opts(Form::Primal)).unwrap();
        let cd = fit_ridge_cv(&x, n, v, &y, l, &groups, &opts(Form::Dual)).unwrap();
        assert_eq!(cp.lambdas.len(), cd.lambdas.len());
        for (a, b) in cp.lambdas.iter().zip(&cd.lambdas) {
            assert!((a - b).abs() <= 1e-9 * a);
        }
        assert!(max_rel_diff(&cd.weights, &cp.weights) < 1e-6);
    }
}

#[test]
fn cv_picks_larger_penalties_for_noisier_targets() {
    let mut r = rng(13);
    let (n, v, l) = (200, 50, 8);
    let x = normal(&mut r, n * v);
    let w_true: Vec<f64> = normal(&mut r, v * l)
        .iter()
        .map(|w| w / (v as f64).sqrt())
        .collect();
    let clean = matmul(&x, n, v, &w_true, l);
    let noise = normal(&mut r, n * l);
    // Targets 0..4 nearly clean, 4..8 three times noisier than the signal.
    let y: Vec<f64> = (0..n * l)
        .map(|i| clean[i] + if i % l < 4 { 0.05 } else { 3.0 } * noise[i])
        .collect();
    let groups: Vec<usize> = (0..n).collect();
    let fit = fit_ridge_cv(
        &to_f32(&x),
        n,
        v,
        &to_f32(&y),
        l,
        &groups,
        &RidgeOptions::default(),
    )
    .unwrap();
    let clean_max = fit.lambdas[..4].iter().cloned().fold(0.0, f64::max);
    let noisy_min = fit.lambdas[4..]
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min);
    println!(
        "penalties: clean {:?}, noisy {:?}",
        &fit.lambdas[..4],
        &fit.lambdas[4..]
    );
    assert!(noisy_min > 10.0 * clean_max, "{noisy_min} vs {clean_max}");
    assert!(fit.cv_r2[..4].iter().all(|&q| q > 0.99));
    assert!(fit.cv_r2[4..].iter().all(|&q| q < 0.5));
}

#[test]
fn grouped_folds_never_split_a_group() {
    for seed in 0..20 {
        let mut r = rng(100 + seed);
        let (_, groups) = presentations(&mut r, 30 + seed as usize);
        for k in [2, 5, 10] {
            let folds = group_folds(&groups, k, seed).unwrap();
            assert_eq!(folds.len(), groups.len());
            for f in 0..k {
                assert!(folds.contains(&f), "fold {f} of {k} empty");
            }
            let mut fold_of = std::collections::HashMap::new();
            for (g, f) in groups.iter().zip(&folds) {
                assert_eq!(*fold_of.entry(*g).or_insert(*f), *f, "group {g} split");
            }
        }
    }
    // The folds cv_score reports are the ones group_folds makes.
    let mut r = rng(14);
    let (_, groups) = presentations(&mut r, 40);
    let n = groups.len();
    let x = to_f32(&normal(&mut r, n * 20));
    let y = to_f32(&normal(&mut r, n * 2));
    let opts = RidgeOptions::default();
    let cv = cv_score(&x, n, 20, &y, 2, &groups, &opts).unwrap();
    assert_eq!(
        cv.folds,
        group_folds(&groups, opts.folds, opts.seed).unwrap()
    );
}

/// Simulated calibration betas: `signal` voxels respond to image features
/// the same way on every presentation, the rest are noise; targets are a
/// linear function of the same features.
struct Session {
    x: Vec<f32>,
    y: Vec<f32>,
    n: usize,
    v: usize,
    l: usize,
    images: Vec<String>,
    groups: Vec<usize>,
}

fn session(seed: u64, images: usize, reps: usize, signal: usize, v: usize, noise: f64) -> Session {
    let mut r = rng(seed);
    let (k, l) = (8, 8);
    let feats = normal(&mut r, images * k);
    let mut mix = normal(&mut r, k * signal);
    // Unit-norm columns: every signal voxel's pattern has unit variance, so
    // all of them are equally reliable.
    for j in 0..signal {
        let norm = (0..k)
            .map(|i| mix[i * signal + j].powi(2))
            .sum::<f64>()
            .sqrt();
        for i in 0..k {
            mix[i * signal + j] /= norm;
        }
    }
    let a = normal(&mut r, k * l);
    let mut groups: Vec<usize> = (0..images * reps).map(|i| i % images).collect();
    for i in (1..groups.len()).rev() {
        let j = r.random_range(0..=i);
        groups.swap(i, j);
    }
    let n = groups.len();
    let mut x = vec![0f64; n * v];
    let mut y = vec![0f64; n * l];
    for (row, &im) in groups.iter().enumerate() {
        let f = &feats[im * k..(im + 1) * k];
        let pattern = matmul(f, 1, k, &mix, signal);
        let e = normal(&mut r, v);
        for j in 0..v {
            let s = if j < signal { pattern[j] } else { 0.0 };
            x[row * v + j] = s + noise * e[j];
        }
        let t = matmul(f, 1, k, &a, l);
        let te = normal(&mut r, l);
        for c in 0..l {
            y[row * l + c] = t[c] + 0.1 * te[c];
        }
    }
    Session {
        x: to_f32(&x),
        y: to_f32(&y),
        n,
        v,
        l,
        images: groups.iter().map(|g| format!("img{g}")).collect(),
        groups,
    }
}

#[test]
fn reliability_is_high_for_repeated_signal_and_near_zero_for_noise() {
    let s = session(20, 80, 3, 60, 600, 0.6);
    let rel = voxel_reliability(&s.x, s.n, s.v, &s.images).unwrap();
    assert_eq!(rel.images, 80);
    let signal = &rel.per_voxel[..60];
    let noise = &rel.per_voxel[60..];
    let mean = |a: &[f64]| a.iter().sum::<f64>() / a.len() as f64;
    let sig_min = signal.iter().cloned().fold(f64::INFINITY, f64::min);
    let noise_max = noise.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    println!(
        "reliability: signal mean {:.3} min {sig_min:.3}; noise mean {:.4} max {noise_max:.3}",
        mean(signal),
        mean(noise)
    );
    assert!(mean(signal) > 0.5);
    // 80 images: a null correlation has standard deviation ≈ 0.11, so the
    // mean over 540 noise voxels is within ≈ ±0.015 of 0.
    assert!(mean(noise).abs() < 0.03);
    assert!(sig_min > noise_max);

    // Images shown once do not count; fewer than the minimum repeated is
    // an error, not a meaningless number.
    let few: Vec<String> = (0..s.n)
        .map(|i| {
            if s.groups[i] < MIN_REPEATED_IMAGES - 1 {
                s.images[i].clone()
            } else {
                format!("unique{i}")
            }
        })
        .collect();
    assert_eq!(
        voxel_reliability(&s.x, s.n, s.v, &few),
        Err(ReliabilityError::TooFewRepeats {
            images: MIN_REPEATED_IMAGES - 1,
            needed: MIN_REPEATED_IMAGES,
            fold: None
        })
    );
}

#[test]
fn selection_keeps_reliable_voxels_and_beats_no_selection() {
    let (signal, v) = (80, 1500);
    let s = session(21, 100, 2, signal, v, 0.8);
    let t0 = Instant::now();
    let sel = select_voxels_cv(
        &s.x,
        s.n,
        s.v,
        &s.y,
        s.l,
        &s.images,
        &s.groups,
        &[0.1, 0.2, 0.3, 0.5, 0.95],
        &RidgeOptions::default(),
    )
    .unwrap();
    println!(
        "selection in {:.2} s: threshold {:?}, {} voxels, scores {:?}, skipped {:?}",
        t0.elapsed().as_secs_f64(),
        sel.threshold,
        sel.voxels.len(),
        sel.scores,
        sel.skipped
    );
    assert!(sel.threshold.is_some());
    let kept_signal = sel.voxels.iter().filter(|&&j| j < signal).count();
    let kept_noise = sel.voxels.len() - kept_signal;
    assert!(kept_signal as f64 >= 0.9 * signal as f64, "{kept_signal}");
    assert!(
        kept_noise as f64 <= 0.1 * sel.voxels.len() as f64,
        "{kept_noise}"
    );
    assert!(sel.voxels.windows(2).all(|w| w[0] < w[1]));
    let score = |t: Option<f64>| sel.scores.iter().find(|c| c.0 == t).map(|c| c.2);
    let none = score(None).unwrap();
    let best = score(sel.threshold).unwrap();
    assert!(best > none + 0.02, "{best} vs {none}");
    assert!(sel.scores.iter().all(|c| c.2 <= best));
    // 0.95 keeps almost nothing: skipped, not scored.
    assert!(sel.skipped.contains(&0.95));
    assert_eq!(sel.scores.len(), 5);
    assert_eq!(sel.reliability.len(), v);
    assert!(reliability::MIN_SELECTED_VOXELS <= sel.voxels.len());
}

fn cpu_runtime() -> Runtime {
    // CPU on purpose: a GPU provider may compute in TF32, which would need
    // a looser tolerance than this check of the graph itself deserves.
    let config = RuntimeConfig {
        device: DeviceChoice::Cpu,
        threads: 1,
        ..Default::default()
    };
    match Runtime::new(&config) {
        Ok(r) => r,
        // No silent skip: without ONNX Runtime this test fails, with the
        // runtime's own message saying where it looked.
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn onnx_adapter_matches_the_direct_product() {
    let s = session(30, 40, 2, 60, 120, 1.0);
    let fit = fit_ridge_cv(
        &s.x,
        s.n,
        s.v,
        &s.y,
        s.l,
        &s.groups,
        &RidgeOptions::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter.onnx");
    // Written twice: the second write must replace the first atomically.
    for doc in ["first", "ridge adapter (test)"] {
        onnx_graph::write_linear_adapter(
            &path,
            &fit.weights,
            &fit.bias,
            fit.voxels,
            fit.targets,
            "betas",
            "latent",
            doc,
        )
        .unwrap();
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["adapter.onnx"], "no temporary files left");

    let runtime = cpu_runtime();
    let spec = |name: &str, len: usize| TensorSpec {
        name: name.to_string(),
        shape: vec![1, len as i64],
        dtype: Dtype::Float32,
    };
    let mut graph = runtime
        .load_graph(
            "adapter",
            &path,
            vec![spec("betas", fit.voxels)],
            vec![spec("latent", fit.targets)],
        )
        .unwrap();
    let (v, l) = (fit.voxels, fit.targets);
    let mut worst_fit = 0f64;
    let mut worst_direct = 0f64;
    for row in 0..10 {
        let x = &s.x[row * v..(row + 1) * v];
        let mut out = Vec::new();
        graph.run(&[Input::F32(x)], &mut [&mut out]).unwrap();
        assert_eq!(out.len(), l);
        let predicted = fit.predict(x).unwrap();
        let direct: Vec<f32> = (0..l)
            .map(|c| {
                let xw: f64 = x
                    .iter()
                    .enumerate()
                    .map(|(j, &a)| a as f64 * fit.weights[j * l + c] as f64)
                    .sum();
                (fit.bias[c] as f64 + xw) as f32
            })
            .collect();
        worst_fit = worst_fit.max(max_rel_diff(&out, &predicted));
        worst_direct = worst_direct.max(max_rel_diff(&out, &direct));
    }
    println!("onnx vs predict {worst_fit:.1e}, vs direct {worst_direct:.1e}");
    assert!(worst_fit < 1e-5 && worst_direct < 1e-5);

    // A graph with the wrong voxel count is caught by the runtime's check.
    let wrong = runtime.load_graph(
        "adapter",
        &path,
        vec![spec("betas", fit.voxels + 1)],
        vec![spec("latent", fit.targets)],
    );
    assert!(wrong.is_err());
}

#[test]
fn bad_input_gets_a_clear_error() {
    let mut r = rng(40);
    let (n, v, l) = (30, 12, 3);
    let x = to_f32(&normal(&mut r, n * v));
    let y = to_f32(&normal(&mut r, n * l));
    let groups: Vec<usize> = (0..n).map(|i| i / 2).collect();
    let o = RidgeOptions::default();

    let e = fit_ridge_cv(&x[1..], n, v, &y, l, &groups, &o).unwrap_err();
    assert_eq!(
        e,
        RidgeError::Length {
            what: "x",
            expected: n * v,
            found: n * v - 1
        }
    );
    let e = fit_ridge_cv(&x, n, v, &y, l, &groups[1..], &o).unwrap_err();
    assert!(matches!(e, RidgeError::Length { what: "groups", .. }));
    let e = fit_ridge_cv(&x, n, v, &y[..n * l - 2], l, &groups, &o).unwrap_err();
    assert!(matches!(e, RidgeError::Length { what: "y", .. }));

    let mut xn = x.clone();
    xn[3 * v + 7] = f32::NAN;
    let e = fit_ridge_cv(&xn, n, v, &y, l, &groups, &o).unwrap_err();
    assert!(
        matches!(
            e,
            RidgeError::NonFinite {
                matrix: "x",
                row: 3,
                col: 7,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("row 3, column 7"));
    let mut yn = y.clone();
    yn[5 * l + 1] = f32::INFINITY;
    let e = fit_ridge_cv(&x, n, v, &yn, l, &groups, &o).unwrap_err();
    assert!(matches!(
        e,
        RidgeError::NonFinite {
            matrix: "y",
            row: 5,
            col: 1,
            ..
        }
    ));

    let few: Vec<usize> = (0..n).map(|i| i % 3).collect();
    let e = fit_ridge_cv(&x, n, v, &y, l, &few, &o).unwrap_err();
    assert_eq!(
        e,
        RidgeError::TooFewGroups {
            groups: 3,
            folds: 5
        }
    );
    let e = fit_ridge_cv(&x[..4 * v], 4, v, &y[..4 * l], l, &groups[..4], &o).unwrap_err();
    assert_eq!(e, RidgeError::TooFewRows { rows: 4, folds: 5 });

    let bad = RidgeOptions {
        lambdas: vec![1.0, -2.0],
        ..RidgeOptions::default()
    };
    assert!(matches!(
        fit_ridge_cv(&x, n, v, &y, l, &groups, &bad),
        Err(RidgeError::Option(_))
    ));
    assert!(matches!(
        fit_ridge(&x, n, v, &y, l, &[1.0, 2.0], Form::Dual),
        Err(RidgeError::Length { .. })
    ));
    let fit = fit_ridge(&x, n, v, &y, l, &[1.0], Form::Dual).unwrap();
    assert!(matches!(
        fit.predict(&x[..v - 1]),
        Err(RidgeError::Length { .. })
    ));

    let images: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    assert!(matches!(
        voxel_reliability(&x, n, v, &images[1..]),
        Err(ReliabilityError::Ridge(RidgeError::Length {
            what: "images",
            ..
        }))
    ));
    assert!(matches!(
        select_voxels_cv(&x, n, v, &y, l, &images, &groups, &[f64::NAN], &o),
        Err(ReliabilityError::BadThreshold(_))
    ));
    assert!(matches!(
        onnx_graph::linear_adapter(&fit.weights, &fit.bias, v, l + 1, "a", "b", ""),
        Err(onnx_graph::OnnxError::Length { .. })
    ));
}

#[test]
fn realistic_size_runs_in_seconds() {
    // N = 400 trials (200 images × 2), V = 4000 voxels, L = 64, the default
    // 20 penalties and 5 folds: the size a calibration session produces.
    let (images, v, l, k) = (200, 4000, 64, 16);
    let mut r = rng(50);
    let feats = normal(&mut r, images * k);
    let mix = normal(&mut r, k * v);
    let a = normal(&mut r, k * l);
    let groups: Vec<usize> = (0..2 * images).map(|i| i % images).collect();
    let n = groups.len();
    let f: Vec<f64> = groups
        .iter()
        .flat_map(|&i| feats[i * k..(i + 1) * k].to_vec())
        .collect();
    let noise = normal(&mut r, n * v);
    let x: Vec<f64> = matmul(&f, n, k, &mix, v)
        .iter()
        .zip(&noise)
        .map(|(s, e)| s / (k as f64).sqrt() + 2.0 * e)
        .collect();
    let y = matmul(&f, n, k, &a, l);
    let (x, y) = (to_f32(&x), to_f32(&y));
    let t0 = Instant::now();
    let fit = fit_ridge_cv(&x, n, v, &y, l, &groups, &RidgeOptions::default()).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let mean_cv = fit.cv_r2.iter().sum::<f64>() / l as f64;
    println!(
        "N={n} V={v} L={l}: fit_ridge_cv {secs:.2} s, form {:?}, cv R² {mean_cv:.3}",
        fit.form
    );
    assert_eq!(fit.form, Form::Dual);
    assert!(mean_cv > 0.8);
}
