//! The `--tiny` MindEye2 export (tests/fixtures/mindeye2_tiny, written by
//! `onnx/export_mindeye2.py --tiny --seed 0 --reference ...`): ONNX Runtime
//! reproduces PyTorch's output of every graph, and the folder runs through
//! the decode stage's loops (dalle2 prior grid, batched guided unCLIP steps,
//! the low-level branch).

use std::path::{Path, PathBuf};

use boldstream::decode::models::ModelSet;
use boldstream::decode::runtime::{DeviceChoice, Input, Runtime, RuntimeConfig};
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
    let bytes = std::fs::read(dir().join("reference").join(name)).expect(name);
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
    let latent: Vec<f32> = npy("backbone_latent.npy")
        .0
        .iter()
        .map(|&v| v as f32)
        .collect();
    // Bank row 7 is the normalised retrieval of this latent (reference/README.md).
    let (mut fast, recon) = set.split();
    let _ = &mut fast;
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
    drop(latent);
}
