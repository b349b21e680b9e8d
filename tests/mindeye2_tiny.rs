//! The `--tiny` MindEye2 export (tests/fixtures/mindeye2_tiny, written by
//! `onnx/export_mindeye2.py --tiny --seed 0 --reference ...`): ONNX Runtime
//! reproduces PyTorch's output of every graph, and the folder runs through
//! the decode stage's loops (dalle2 prior grid, batched guided unCLIP steps,
//! the low-level branch).

use std::path::{Path, PathBuf};

use boldstream::decode::manifest::{
    DiscreteKind, EulerGrid, Prediction, ScheduleKind, ScheduleSpec,
};
use boldstream::decode::models::ModelSet;
use boldstream::decode::runtime::{DeviceChoice, Input, Runtime, RuntimeConfig};
use boldstream::decode::sampler::{
    DiscreteRun, DiscreteSchedule, EulerRun, EulerStart, Level, ReplayNoise, StepAlphas, Uncond,
    dalle2_pairs, euler_sigmas, one_pass, sample_discrete, sample_euler,
};
use boldstream::decode::tensor::{Dtype, TensorSpec};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mindeye2_tiny")
}

fn runtime() -> Runtime {
    Runtime::new(&RuntimeConfig {
        device: DeviceChoice::Cpu,
        threads: 1,
        ..Default::default()
    })
    .expect("ONNX Runtime from PyPI (make test installs it into .venv)")
}

fn npy(name: &str) -> (Vec<f64>, Vec<i64>) {
    npy_in("reference", name)
}

/// An `.npy` file (little-endian f32 or i64) of a fixture sub-folder.
fn npy_in(folder: &str, name: &str) -> (Vec<f64>, Vec<i64>) {
    let bytes = std::fs::read(dir().join(folder).join(name)).expect(name);
    let header = String::from_utf8_lossy(&bytes[10..10 + bytes[8] as usize]).to_string();
    let shape: Vec<i64> = header
        .split("'shape': (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or("")
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let data = &bytes[10 + bytes[8] as usize..];
    let values = if header.contains("<i8") {
        data.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect()
    } else {
        assert!(header.contains("<f4"), "{name}: {header}");
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect()
    };
    (values, shape)
}

fn spec(name: &str, file: &str, dtype: Dtype) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        shape: npy(file).1,
        dtype,
    }
}

/// max|ort − torch| / max|torch| of each output of one graph.
fn graph_errors(
    rt: &Runtime,
    path: &Path,
    graph: &str,
    inputs: &[(&str, Dtype)],
    outputs: &[&str],
) -> Vec<(String, f64)> {
    let file = |n: &str| format!("{graph}_{n}.npy");
    let ins: Vec<TensorSpec> = inputs.iter().map(|(n, d)| spec(n, &file(n), *d)).collect();
    let outs: Vec<TensorSpec> = outputs
        .iter()
        .map(|o| spec(o, &file(o), Dtype::Float32))
        .collect();
    let mut g = rt.load_graph("check", path, ins, outs).expect(graph);
    let values: Vec<Vec<f64>> = inputs.iter().map(|(n, _)| npy(&file(n)).0).collect();
    let f32s: Vec<Vec<f32>> = values
        .iter()
        .map(|v| v.iter().map(|&x| x as f32).collect())
        .collect();
    let i64s: Vec<Vec<i64>> = values
        .iter()
        .map(|v| v.iter().map(|&x| x as i64).collect())
        .collect();
    let feed: Vec<Input<'_>> = inputs
        .iter()
        .enumerate()
        .map(|(k, (_, d))| match d {
            Dtype::Float32 => Input::F32(&f32s[k]),
            Dtype::Int64 => Input::I64(&i64s[k]),
        })
        .collect();
    let mut got: Vec<Vec<f32>> = vec![Vec::new(); outputs.len()];
    {
        let mut refs: Vec<&mut Vec<f32>> = got.iter_mut().collect();
        g.run(&feed, &mut refs).expect(graph);
    }
    outputs
        .iter()
        .zip(&got)
        .map(|(o, got)| {
            let want = npy(&file(o)).0;
            assert_eq!(got.len(), want.len(), "{graph}.{o}");
            let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let err = got
                .iter()
                .zip(&want)
                .fold(0.0f64, |a, (g, w)| a.max((*g as f64 - w).abs()));
            (format!("{graph}.{o}"), err / scale.max(1e-30))
        })
        .collect()
}

#[test]
fn onnx_runtime_equals_pytorch_on_every_tiny_graph() {
    let rt = runtime();
    let m = dir().join("model");
    let f = Dtype::Float32;
    type Case<'a> = (PathBuf, &'a str, Vec<(&'a str, Dtype)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            dir().join("subject/adapter.onnx"),
            "adapter",
            vec![("voxels", f)],
            vec!["latent"],
        ),
        (
            m.join("backbone.onnx"),
            "backbone",
            vec![("latent", f)],
            vec!["tokens", "retrieval", "lowlevel"],
        ),
        (
            m.join("prior.onnx"),
            "prior",
            vec![("x_t", f), ("t", Dtype::Int64), ("cond", f)],
            vec!["x0"],
        ),
        (
            m.join("unclip_step.onnx"),
            "unclip_step",
            vec![("x", f), ("sigma", f), ("context", f)],
            vec!["denoised"],
        ),
        (
            m.join("vae_decoder.onnx"),
            "vae_decoder",
            vec![("latent", f)],
            vec!["image"],
        ),
        (
            m.join("lowlevel_decoder.onnx"),
            "lowlevel_decoder",
            vec![("latent", f)],
            vec!["image"],
        ),
    ];
    for (path, graph, inputs, outputs) in cases {
        for (name, e) in graph_errors(&rt, &path, graph, &inputs, &outputs) {
            eprintln!("{name}: max relative error {e:.2e}");
            assert!(e <= 1e-4, "{name}: {e:e}");
        }
    }
}

#[test]
fn the_tiny_export_retrieves_and_reconstructs_through_the_mindeye2_loops() {
    let rt = runtime();
    let set = ModelSet::load(&rt, &dir().join("model"), &dir().join("subject"), None)
        .expect("the tiny export loads");
    let (mut fast, recon) = set.split();
    let mut recon = recon.expect("a decoder");
    assert!(recon.has_lowlevel());
    let voxels: Vec<f32> = npy("adapter_voxels.npy")
        .0
        .iter()
        .map(|&v| v as f32)
        .collect();
    let out = fast.run(&voxels).expect("fast path");
    assert_eq!(out.top.len(), 5);
    let plain = recon.run(&out.tokens).expect("reconstruction");
    assert_eq!(plain.prior_steps.len(), 19, "dalle2 grid: 19 prior calls");
    assert_eq!(
        plain.decoder_steps.len(),
        38,
        "38 guided unCLIP steps, one batched call each"
    );
    assert_eq!(plain.image.len(), 3 * 32 * 32);
    assert!(
        plain
            .image
            .iter()
            .all(|v| v.is_finite() && (0.0..=1.0).contains(v))
    );
    let blended = recon
        .run_blended(&out.tokens, out.lowlevel.as_deref())
        .expect("blended");
    assert!(blended.lowlevel_seconds > 0.0);
    assert_ne!(
        plain.image, blended.image,
        "the blurry branch was blended in"
    );
}

fn f32s_in(folder: &str, name: &str) -> Vec<f32> {
    npy_in(folder, name).0.iter().map(|&v| v as f32).collect()
}

/// max|a − b| / max|b|.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let worst = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
    worst / scale.max(1e-30)
}

#[test]
fn rust_loops_equal_the_pytorch_port_of_mindeye2_sampling() {
    // tests/fixtures/mindeye2_tiny/sampling: tests/parity/mindeye2_sampling.py
    // ran dalle2's DDIM prior loop and sgm's Euler/LegacyDDPM unCLIP loop on
    // the PyTorch modules these graphs were exported from, and saved its
    // noise; the Rust loops draw the same values in the same order.
    let rt = runtime();
    let set = ModelSet::load(&rt, &dir().join("model"), &dir().join("subject"), None)
        .expect("the tiny export loads");
    let (_, recon) = set.split();
    let mut recon = recon.expect("a decoder");
    let s = "sampling";
    let prior_noise = f32s_in(s, "prior_noise.npy");
    let unclip_noise = f32s_in(s, "unclip_noise.npy");
    let (n_prior, n_unclip) = (prior_noise.len(), unclip_noise.len());
    let mut np = ReplayNoise::new(prior_noise);
    let mut nd = ReplayNoise::new(unclip_noise);
    let r = recon
        .run_with(&f32s_in(s, "cond.npy"), Some((&mut np, &mut nd)))
        .expect("reconstruction");
    assert_eq!(np.used(), n_prior, "prior noise: start + 18 steps");
    assert_eq!(nd.used(), n_unclip, "unCLIP noise: z, uncond, n, offset");
    let prior = rel_err(&r.prior_tokens, &f32s_in(s, "prior_out.npy"));
    let latent = rel_err(&r.latent, &f32s_in(s, "latent.npy"));
    let image = rel_err(&r.image, &f32s_in(s, "image.npy"));
    eprintln!("relative error: prior {prior:.2e}, unCLIP latent {latent:.2e}, image {image:.2e}");
    // The random tiny prior turns a 1e-6 change of its start into ~3e-3 of
    // its output (sampling/README.md), so through the graph the two loops
    // can only agree that far; `the_prior_loop_is_dalle2s_ddim` checks its
    // arithmetic exactly. A wrong grid, ᾱ or noise order is off by O(1).
    assert!(prior <= 1e-2, "prior sample {prior:e}");
    assert!(latent <= 1e-4, "unCLIP latent {latent:e}");
    assert!(image <= 1e-4, "image {image:e}");
}

#[test]
fn the_prior_loop_is_dalle2s_ddim() {
    // The network's answers are replayed from the PyTorch run, so what is
    // left is the loop: the grid, the ᾱ it reads, η = 1 noise, the update.
    let s = "sampling";
    let xs = f32s_in(s, "prior_calls_x.npy");
    let x0s = f32s_in(s, "prior_calls_x0.npy");
    let len = f32s_in(s, "prior_out.npy").len();
    let run = DiscreteRun {
        kind: DiscreteKind::Ddim,
        pairs: dalle2_pairs(100, 20),
        alphas: StepAlphas::Previous,
        eta: 1.0,
        guidance: 1.0,
        uncond: Uncond::Zeros,
        prediction: Prediction::X0,
    };
    let schedule = DiscreteSchedule::new(&ScheduleSpec {
        kind: ScheduleKind::Cosine,
        train_steps: 100,
        beta_start: 0.0,
        beta_end: 0.0,
    });
    assert_eq!(xs.len(), 19 * len);
    let (mut call, mut worst_in) = (0usize, 0f64);
    let mut denoise = one_pass(|x: &[f32], level: Level, _c: &[f32], out: &mut Vec<f32>| {
        let want = &xs[call * len..(call + 1) * len];
        worst_in = worst_in.max(rel_err(x, want));
        assert!(matches!(level, Level::Timestep(_)));
        out.clear();
        out.extend_from_slice(&x0s[call * len..(call + 1) * len]);
        call += 1;
        Ok::<(), ()>(())
    });
    let mut noise = ReplayNoise::new(f32s_in(s, "prior_noise.npy"));
    let cond = f32s_in(s, "cond.npy");
    let out = sample_discrete(&run, &schedule, len, &cond, &mut noise, &mut denoise).expect("loop");
    drop(denoise);
    let end = rel_err(&out, &f32s_in(s, "prior_out.npy"));
    eprintln!("prior loop, answers replayed: worst input {worst_in:.2e}, output {end:.2e}");
    assert_eq!(call, 19);
    assert!(worst_in <= 1e-5, "sample given to a call: {worst_in:e}");
    assert!(end <= 1e-5, "final sample: {end:e}");
}

#[test]
fn the_unclip_loop_is_sgms_euler_over_the_legacy_ddpm_grid() {
    // As above for the unCLIP: the batched [uncond; cond] answers of every
    // step are replayed; the start (z + σ₀(n + 0.04 s)), the σ grid, the
    // fresh-noise unconditional tokens and the guided Euler update are Rust's.
    let s = "sampling";
    let xs = f32s_in(s, "unclip_calls_x.npy");
    let ds = f32s_in(s, "unclip_calls_denoised.npy");
    let len = f32s_in(s, "latent.npy").len();
    let run = EulerRun {
        sigmas: euler_sigmas(&EulerGrid::LegacyDdpm {
            steps: 38,
            linear_start: 0.00085,
            linear_end: 0.012,
            train_steps: 1000,
        }),
        guidance: 5.0,
        uncond: Uncond::Noise,
        start: EulerStart::Unclip,
        offset_noise: 0.04,
        prediction: Prediction::X0,
    };
    assert_eq!(xs.len(), 38 * len);
    let (mut call, mut worst_in) = (0usize, 0f64);
    let mut denoise = |x: &[f32],
                       level: Level,
                       _c: &[f32],
                       u: Option<&[f32]>,
                       out: &mut Vec<f32>,
                       out_u: &mut Vec<f32>| {
        worst_in = worst_in.max(rel_err(x, &xs[call * len..(call + 1) * len]));
        assert!(matches!(level, Level::Sigma(_)));
        assert!(u.is_some(), "guided steps get the unconditional tokens");
        let pair = &ds[2 * call * len..2 * (call + 1) * len];
        out_u.clear();
        out_u.extend_from_slice(&pair[..len]);
        out.clear();
        out.extend_from_slice(&pair[len..]);
        call += 1;
        Ok::<(), ()>(())
    };
    let mut noise = ReplayNoise::new(f32s_in(s, "unclip_noise.npy"));
    let cond = f32s_in(s, "prior_out.npy");
    let out = sample_euler(&run, len, &cond, &mut noise, &mut denoise).expect("loop");
    let end = rel_err(&out, &f32s_in(s, "latent.npy"));
    eprintln!("unCLIP loop, answers replayed: worst input {worst_in:.2e}, latent {end:.2e}");
    assert_eq!(call, 38);
    assert!(worst_in <= 1e-5, "sample given to a step: {worst_in:e}");
    assert!(end <= 1e-5, "final latent: {end:e}");
}
