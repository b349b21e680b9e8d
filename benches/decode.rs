//! The decode stage on graphs of MindEye2's real shapes: per-graph time and
//! the daemon's own overhead per trial.
//!
//! The graphs (random weights; adapter 8,627 → 1,024, backbone → 256×1,664
//! tokens and a 768 retrieval head, a 6-layer width-1,664 prior over 256
//! tokens, 20 DDIM steps, a one-pass decoder, a 1,000-candidate bank) are
//! generated at benchmark time by `onnx/bench_graphs.py` (`make bench` does
//! it), never committed.
//!
//! Each trial goes through the decode stage exactly as in the daemon: the
//! beta is handed to [`DecodeStage::handle`] (fast path on this thread),
//! the reconstruction runs on the stage's worker thread, and the result
//! comes back through [`DecodeStage::done`]. A trial's wall time runs from
//! handing over the beta to the reconstruction event; its overhead is that
//! wall time minus the time ONNX Runtime spent inside `Session::run` for
//! the trial's 23 graph calls. `tests/parity/decode_reference.py` runs the
//! same folder the way a Python pipeline does, for the ratio side by side.
//!
//! `cargo bench --bench decode -- MODEL_DIR SUBJECT_DIR [TRIALS]`
//! (defaults: target/bench-models/{model,subject}, 5 trials). Device from
//! `BOLDSTREAM_DEVICE` (auto, cpu, cuda, tensorrt; default auto), so the
//! same command runs on a GPU machine with onnxruntime-gpu installed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use boldstream::decode::runtime::DeviceChoice;
use boldstream::decode::{DecodeConfig, DecodeStage};
use boldstream::types::messages::{PipelineEvent, TrialBeta, VolumeKey};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

fn beta(trial: usize, voxels: usize) -> TrialBeta {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ trial as u64;
    let values: Arc<[f32]> = (0..voxels)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / 16_777_216.0 - 0.5) * 3.0
        })
        .collect();
    TrialBeta {
        run: 1,
        trial,
        event: boldstream::types::events::Event {
            onset: trial as f64 * 4.5,
            duration: 3.0,
            trial_type: "image".into(),
            stim_id: Some(format!("bench-{trial:04}")),
            modulation: 1.0,
        },
        trigger: VolumeKey { run: 1, index: 0 },
        frames: 100,
        regressors: 12,
        delayed: false,
        warmup: false,
        raw: values.clone(),
        z: values.clone(),
        decode: values,
        presentations: 1,
        compute_seconds: 0.0,
        trigger_seen: None,
        ready: Instant::now(),
        ready_wall: SystemTime::now(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let model = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench-models/model"));
    let subject = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench-models/subject"));
    let trials: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let device = match std::env::var("BOLDSTREAM_DEVICE").as_deref() {
        Ok("cpu") => DeviceChoice::Cpu,
        Ok("cuda") => DeviceChoice::Cuda,
        Ok("tensorrt") => DeviceChoice::Tensorrt,
        _ => DeviceChoice::Auto,
    };
    if !model.join("model.toml").is_file() {
        eprintln!(
            "no model folder at {}: generate it with `python onnx/bench_graphs.py target/bench-models` (make bench does)",
            model.display()
        );
        std::process::exit(2);
    }
    let config = DecodeConfig {
        model: Some(model.clone()),
        subject: Some(subject),
        device,
        warmup_calls: 2,
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut stage = match DecodeStage::start(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("decode stage: {e}");
            std::process::exit(1);
        }
    };
    let load_s = t0.elapsed().as_secs_f64();
    let mut events: Vec<PipelineEvent> = Vec::new();
    stage.announce(&mut |e| events.push(e));
    for e in events.drain(..) {
        match e {
            PipelineEvent::DecoderReady(r) => {
                println!(
                    "decode bench: {} on ONNX Runtime {} ({}); loaded and warmed up in {load_s:.1} s",
                    r.model.display(),
                    r.version,
                    r.library.display()
                );
                for g in &r.graphs {
                    println!(
                        "  {:<15} {:<8} first call {:>9.2} ms",
                        g.role,
                        g.provider,
                        g.first_seconds * 1e3
                    );
                }
            }
            PipelineEvent::Notice(n) => println!("  notice: {n}"),
            _ => {}
        }
    }
    let voxels = match boldstream::decode::manifest::SubjectManifest::load(
        config.subject.as_deref().unwrap_or(&model),
    ) {
        Ok(s) => s.voxels,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let results = stage.results();
    let (mut adapter, mut backbone, mut prior_step, mut decoder) = (vec![], vec![], vec![], vec![]);
    let (mut fast_wall, mut fast_over, mut wall, mut graphs, mut over, mut ratio) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for trial in 1..=trials {
        let b = beta(trial, voxels);
        let mut out = Vec::new();
        let start = Instant::now();
        stage.handle(PipelineEvent::Beta(Box::new(b)), &mut |e| out.push(e));
        let done = match results.recv() {
            Ok(d) => d,
            Err(_) => {
                eprintln!("the reconstruction worker stopped");
                std::process::exit(1);
            }
        };
        stage.done(done, &mut |e| out.push(e));
        let trial_wall = start.elapsed().as_secs_f64();
        let mut graph_s = 0.0;
        for e in &out {
            match e {
                PipelineEvent::Decoded(d) => {
                    let g: f64 = d.graphs.iter().map(|(_, s)| s).sum();
                    graph_s += g;
                    fast_wall.push(d.seconds);
                    fast_over.push(d.seconds - g);
                    for (role, s) in &d.graphs {
                        match *role {
                            "adapter" => adapter.push(*s),
                            "backbone" => backbone.push(*s),
                            _ => {}
                        }
                    }
                }
                PipelineEvent::Reconstructed(r) => {
                    graph_s += r.prior_steps.iter().sum::<f64>()
                        + r.decoder_steps.iter().sum::<f64>()
                        + r.latent_decoder_seconds;
                    prior_step.extend(&r.prior_steps);
                    decoder.extend(&r.decoder_steps);
                }
                PipelineEvent::DecodeSkipped { reason, .. } => {
                    eprintln!("trial {trial} not reconstructed: {reason}");
                    std::process::exit(1);
                }
                _ => {}
            }
        }
        let o = trial_wall - graph_s;
        println!(
            "  trial {trial}: {:.1} ms, of which ONNX Runtime {:.1} ms, daemon {:.3} ms ({:.3} %)",
            trial_wall * 1e3,
            graph_s * 1e3,
            o * 1e3,
            100.0 * o / trial_wall
        );
        wall.push(trial_wall);
        graphs.push(graph_s);
        over.push(o);
        ratio.push(o / trial_wall);
    }
    stage.finish(&mut |_| {});
    let ms = |v: &mut Vec<f64>| median(v) * 1e3;
    println!("per graph (median ms over {trials} trials):");
    println!("  adapter      {:>10.3}", ms(&mut adapter));
    println!("  backbone     {:>10.3}", ms(&mut backbone));
    println!(
        "  prior step   {:>10.3}  (x {} steps)",
        ms(&mut prior_step),
        prior_step.len() / trials.max(1)
    );
    println!("  decoder      {:>10.3}", ms(&mut decoder));
    println!(
        "fast path (adapter + backbone + top-5 of 1,000): {:.3} ms, daemon {:.3} ms",
        ms(&mut fast_wall),
        ms(&mut fast_over)
    );
    println!(
        "per trial (median): wall {:.1} ms, ONNX Runtime {:.1} ms, daemon overhead {:.3} ms = {:.3} % of the trial (target < 2 %)",
        ms(&mut wall),
        ms(&mut graphs),
        ms(&mut over),
        100.0 * median(&mut ratio)
    );
}
