//! The decode stage on real ONNX graphs (the committed demo model folder,
//! run by the ONNX Runtime that `make test` installs from PyPI): manifest
//! validation for every kind of mismatch, decoding quality on held-out
//! betas, sampler determinism, and the reconstruction policies.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use boldstream::decode::error::ModelError;
use boldstream::decode::error::RuntimeError;
use boldstream::decode::models::ModelSet;
use boldstream::decode::runtime::{DeviceChoice, Runtime, RuntimeConfig};
use boldstream::decode::schedule::ReconPolicy;
use boldstream::decode::{DecodeConfig, DecodeStage};
use boldstream::stage::{Delivery, Outlet};
use boldstream::types::messages::{PipelineEvent, TrialBeta, VolumeKey};

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("onnx/demo")
}

fn cpu() -> RuntimeConfig {
    RuntimeConfig {
        device: DeviceChoice::Cpu,
        threads: 1,
        ..Default::default()
    }
}

fn runtime() -> Runtime {
    Runtime::new(&cpu()).expect(
        "ONNX Runtime from PyPI (make test installs it into .venv; or set BOLDSTREAM_ORT_DYLIB)",
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// A private copy of the demo folder with `model.toml` and `subject.toml`
/// edited by string replacement.
struct Folder {
    _tmp: tempfile::TempDir,
    model: PathBuf,
    subject: PathBuf,
}

fn edited(model_edit: &[(&str, &str)], subject_edit: &[(&str, &str)]) -> Folder {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("demo");
    copy_dir(&demo(), &root);
    for (file, edits) in [
        (root.join("model.toml"), model_edit),
        (root.join("subject-sim01/subject.toml"), subject_edit),
    ] {
        let mut text = std::fs::read_to_string(&file).unwrap();
        for (from, to) in edits {
            assert!(text.contains(from), "{} has no {from:?}", file.display());
            text = text.replacen(from, to, 1);
        }
        std::fs::write(&file, text).unwrap();
    }
    Folder {
        model: root.clone(),
        subject: root.join("subject-sim01"),
        _tmp: tmp,
    }
}

fn load(f: &Folder) -> Result<ModelSet, ModelError> {
    ModelSet::load(&runtime(), &f.model, &f.subject, None)
}

fn err_text(f: &Folder) -> String {
    match load(f) {
        Ok(_) => panic!("the edited folder loaded"),
        Err(e) => e.to_string(),
    }
}

fn contains_all(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "error {text:?} does not mention {p:?}");
    }
}

#[test]
fn the_demo_folder_loads() {
    let f = edited(&[], &[]);
    let set = load(&f).unwrap();
    assert_eq!(set.fast.subject().voxels, 2000);
    assert_eq!(set.fast.bank().map(|b| b.len()), Some(150));
    assert!(set.recon.is_some());
}

#[test]
fn a_wrong_input_name_names_the_graph_and_what_it_has() {
    let f = edited(&[(r#"name = "latent""#, r#"name = "latnt""#)], &[]);
    let e = load(&f).unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::Mismatch {
                role: "backbone",
                ..
            }
        ),
        "{e}"
    );
    contains_all(&e.to_string(), &["backbone.onnx", "`latnt`", "`latent`"]);
}

#[test]
fn a_wrong_output_name_is_caught() {
    let f = edited(&[(r#"name = "x0""#, r#"name = "x_0""#)], &[]);
    let e = load(&f).unwrap_err();
    assert!(
        matches!(e, ModelError::Mismatch { role: "prior", .. }),
        "{e}"
    );
    contains_all(&e.to_string(), &["output `x_0`", "prior.onnx"]);
}

#[test]
fn a_wrong_shape_against_the_graph_is_caught() {
    // Consistent within the manifest (tokens and prior agree), wrong
    // against the backbone graph.
    let f = edited(
        &[
            (
                "tokens = { name = \"tokens\", shape = [1, 16, 32]",
                "tokens = { name = \"tokens\", shape = [1, 32, 16]",
            ),
            ("x_t\", shape = [1, 16, 32]", "x_t\", shape = [1, 32, 16]"),
            ("cond\", shape = [1, 16, 32]", "cond\", shape = [1, 32, 16]"),
            ("x0\", shape = [1, 16, 32]", "x0\", shape = [1, 32, 16]"),
        ],
        &[],
    );
    let e = load(&f).unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::Mismatch {
                role: "backbone",
                ..
            }
        ),
        "{e}"
    );
    contains_all(
        &e.to_string(),
        &["`tokens` shape", "[1, 32, 16]", "[1, 16, 32]"],
    );
}

#[test]
fn shapes_that_disagree_between_roles_are_caught_before_any_graph_loads() {
    let f = edited(
        &[("x_t\", shape = [1, 16, 32]", "x_t\", shape = [1, 16, 31]")],
        &[],
    );
    let e = load(&f).unwrap_err();
    assert!(matches!(e, ModelError::Manifest { .. }), "{e}");
    contains_all(
        &e.to_string(),
        &["prior.sample", "backbone.tokens", "model.toml"],
    );
}

#[test]
fn a_wrong_dtype_is_caught() {
    let f = edited(
        &[(
            r#"shape = [1], dtype = "int64""#,
            r#"shape = [1], dtype = "float32""#,
        )],
        &[],
    );
    let e = load(&f).unwrap_err();
    assert!(
        matches!(e, ModelError::Mismatch { role: "prior", .. }),
        "{e}"
    );
    contains_all(&e.to_string(), &["`t` dtype", "float32", "int64"]);
}

#[test]
fn the_adapter_voxel_count_must_match_the_graph_and_the_session() {
    // Manifest says 1999 voxels everywhere; the graph takes 2000.
    let f = edited(
        &[],
        &[
            ("voxels = 2000", "voxels = 1999"),
            ("[1, 2000]", "[1, 1999]"),
        ],
    );
    let e = load(&f).unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::Mismatch {
                role: "adapter",
                ..
            }
        ),
        "{e}"
    );
    contains_all(&e.to_string(), &["adapter.onnx", "[1, 1999]", "[1, 2000]"]);

    // voxels disagreeing with the adapter's input shape.
    let f = edited(&[], &[("voxels = 2000", "voxels = 2001")]);
    let e = load(&f).unwrap_err();
    contains_all(
        &e.to_string(),
        &["subject.toml", "voxels = 2001", "2000 values"],
    );

    // A session mask of another size: refused before the session starts…
    let f = edited(&[], &[]);
    let tmp = tempfile::tempdir().unwrap();
    let mask_path = tmp.path().join("mask.nii.gz");
    let grid = boldstream::types::volume::Grid::centred([20, 10, 10], [3.0; 3]);
    let mut mask = boldstream::types::volume::Volume::zeros(grid);
    for v in mask.values_mut().iter_mut().take(1500) {
        *v = 1.0;
    }
    boldstream::formats::nifti::write_volume(&mask_path, &mask, &Default::default()).unwrap();
    let config = DecodeConfig {
        model: Some(f.model.clone()),
        subject: Some(f.subject.clone()),
        ..Default::default()
    };
    let e = config.preflight(Some(&mask_path)).unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::VoxelCount {
                adapter: 2000,
                mask: 1500,
                ..
            }
        ),
        "{e}"
    );
    // …and a beta of the wrong length is an error, not a panic.
    let mut set = load(&f).unwrap();
    let e = set.fast.run(&vec![0.0; 1500]).unwrap_err();
    assert!(
        matches!(e, ModelError::VoxelCount { mask: 1500, .. }),
        "{e}"
    );
}

#[test]
fn adapter_and_backbone_must_agree() {
    let f = edited(&[], &[("[1, 64]", "[1, 63]")]);
    let e = load(&f).unwrap_err();
    contains_all(
        &e.to_string(),
        &["adapter.output", "[1, 63]", "backbone.input"],
    );
}

#[test]
fn missing_and_unloadable_graphs_are_named() {
    let f = edited(
        &[(r#"file = "prior.onnx""#, r#"file = "priors.onnx""#)],
        &[],
    );
    contains_all(
        &err_text(&f),
        &["prior.file", "priors.onnx", "no such file"],
    );

    let f = edited(&[], &[]);
    std::fs::write(f.model.join("prior.onnx"), b"not a protobuf at all").unwrap();
    let e = load(&f).unwrap_err();
    assert!(matches!(e, ModelError::Graph { role: "prior", .. }), "{e}");
    contains_all(&e.to_string(), &["prior.onnx", "not a loadable ONNX graph"]);
}

#[test]
fn a_graph_in_the_wrong_role_is_caught() {
    // The backbone graph given as the prior: its input is not `x_t`.
    let f = edited(
        &[(r#"file = "prior.onnx""#, r#"file = "backbone.onnx""#)],
        &[],
    );
    let e = load(&f).unwrap_err();
    assert!(
        matches!(e, ModelError::Mismatch { role: "prior", .. }),
        "{e}"
    );
    contains_all(&e.to_string(), &["input `x_t`", "`latent`"]);
}

#[test]
fn a_graph_needing_an_input_the_manifest_does_not_feed_is_caught() {
    // The prior (x_t, t, cond) given as a one-pass decoder fed only x_t.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("demo");
    copy_dir(&demo(), &root);
    let text = std::fs::read_to_string(root.join("model_onepass.toml")).unwrap();
    let start = text.find("[decoder]").unwrap();
    let end = text[start..]
        .find("[retrieval]")
        .map_or(text.len(), |i| start + i);
    let decoder = "[decoder]\nkind = \"onepass\"\nfile = \"prior.onnx\"\ninput = \"x_t\"\noutput = \"x0\"\nimage = { shape = [1, 3, 64, 64] }\n\n";
    std::fs::write(
        root.join("model.toml"),
        format!("{}{decoder}{}", &text[..start], &text[end..]),
    )
    .unwrap();
    let e = ModelSet::load(&runtime(), &root, &root.join("subject-sim01"), None).unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::Mismatch {
                role: "decoder",
                ..
            }
        ),
        "{e}"
    );
    contains_all(&e.to_string(), &["input `t`", "does not feed"]);
}

#[test]
fn manifest_typos_and_versions_are_refused_with_the_field() {
    let f = edited(&[(r#"prediction = "x0""#, r#"predicton = "x0""#)], &[]);
    contains_all(&err_text(&f), &["model.toml", "predicton"]);
    let f = edited(&[("format = 1", "format = 2")], &[]);
    contains_all(&err_text(&f), &["format = 2", "format 1"]);
    let f = edited(
        &[(
            r#"kind = "ddim", steps = 20"#,
            r#"kind = "ddim", steps = 2000"#,
        )],
        &[],
    );
    contains_all(
        &err_text(&f),
        &["prior.sampler", "2000 steps", "1000 training steps"],
    );
}

#[test]
fn a_bank_that_does_not_fit_is_refused() {
    let f = edited(&[], &[]);
    let ids = f.model.join("bank/ids.txt");
    let text = std::fs::read_to_string(&ids).unwrap();
    let fewer: Vec<&str> = text.lines().skip(1).collect();
    std::fs::write(&ids, fewer.join("\n")).unwrap();
    let e = load(&f).unwrap_err();
    assert!(matches!(e, ModelError::Bank { .. }), "{e}");
    contains_all(&e.to_string(), &["ids.txt", "149 ids for 150"]);

    let f = edited(&[], &[]);
    let first = std::fs::read_to_string(f.model.join("bank/ids.txt"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    std::fs::remove_file(f.model.join(format!("bank/images/{first}.png"))).unwrap();
    contains_all(&err_text(&f), &[&format!("{first}.png")]);
}

#[test]
fn a_missing_or_foreign_onnxruntime_says_what_to_do() {
    let missing = RuntimeConfig {
        onnxruntime: Some("/nonexistent/libonnxruntime.so".into()),
        ..cpu()
    };
    let e = Runtime::new(&missing).unwrap_err();
    assert!(matches!(e, RuntimeError::NotFound { .. }), "{e}");
    contains_all(
        &e.to_string(),
        &["/nonexistent", "pip install onnxruntime==1.31.1"],
    );

    let tmp = tempfile::tempdir().unwrap();
    let empty = RuntimeConfig {
        onnxruntime: Some(tmp.path().to_path_buf()),
        ..cpu()
    };
    contains_all(
        &Runtime::new(&empty).unwrap_err().to_string(),
        &["no libonnxruntime.so* in it"],
    );
}

fn npy(path: &Path) -> (Vec<f32>, usize, usize) {
    let (v, r, c) = boldstream::formats::npy::decode_2d(&std::fs::read(path).unwrap()).unwrap();
    (v.iter().map(|&x| x as f32).collect(), r, c)
}

fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (
        a.iter().map(|&v| v as f64).sum::<f64>() / n,
        b.iter().map(|&v| v as f64).sum::<f64>() / n,
    );
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt()
}

#[test]
fn held_out_betas_retrieve_and_reconstruct_their_stimuli() {
    let f = edited(&[], &[]);
    let (betas, n, v) = npy(&f.subject.join("test_betas.npy"));
    let ids: Vec<String> = std::fs::read_to_string(f.subject.join("test_ids.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), n);
    let mut set = load(&f).unwrap();
    let bank_ids = set.fast.bank().unwrap().ids().to_vec();
    let recon = set.recon.as_mut().unwrap();
    let (mut top1, mut top5) = (0, 0);
    let mut images = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let out = set.fast.run(&betas[i * v..(i + 1) * v]).unwrap();
        assert_eq!(out.top.len(), 5);
        top1 += usize::from(out.top[0].id == *id);
        top5 += usize::from(out.top.iter().any(|c| c.id == *id));
        images.push(recon.run(&out.tokens).unwrap().image);
    }
    let stimulus = |id: &str| {
        boldstream::formats::png::read_png(&f.model.join(format!("bank/images/{id}.png")))
            .unwrap()
            .0
    };
    // Two-way identification: the reconstruction correlates more with its
    // own stimulus than with another held-out trial's stimulus.
    let stims: Vec<Vec<f32>> = ids.iter().map(|id| stimulus(id)).collect();
    let (mut wins, mut pairs, mut own) = (0, 0, 0.0);
    for (i, img) in images.iter().enumerate() {
        let c_own = pearson(img, &stims[i]);
        own += c_own / n as f64;
        for (j, s) in stims.iter().enumerate() {
            if j != i {
                pairs += 1;
                wins += usize::from(c_own > pearson(img, s));
            }
        }
    }
    let two_way = wins as f64 / pairs as f64;
    println!(
        "{n} held-out trials, bank of {}: top-1 {top1}/{n}, top-5 {top5}/{n}; \
         reconstructions: mean pixel r with own stimulus {own:.3}, two-way identification {two_way:.3}",
        bank_ids.len()
    );
    // Chance: top-1 1/150, top-5 5/150, two-way 0.5.
    assert!(top1 * 4 >= n, "top-1 {top1}/{n}");
    assert!(top5 * 10 >= n * 7, "top-5 {top5}/{n}");
    assert!(two_way >= 0.85, "two-way identification {two_way}");
    assert!(own >= 0.3, "mean own-stimulus correlation {own}");
}

#[test]
fn reconstructions_are_deterministic_per_seed_and_record_it() {
    let f = edited(&[], &[]);
    let mut a = load(&f).unwrap();
    let tokens = a.fast.run(&vec![0.5; 2000]).unwrap().tokens;
    let r1 = a.recon.as_mut().unwrap().run(&tokens).unwrap();
    let r2 = a.recon.as_mut().unwrap().run(&tokens).unwrap();
    assert_eq!(r1.image, r2.image);
    assert_eq!((r1.prior_seed, r1.decoder_seed), (0, 0));
    assert_eq!(r1.prior_steps.len(), 20);
    assert_eq!(r1.decoder_steps.len(), 12);
    let mut b = ModelSet::load(&runtime(), &f.model, &f.subject, Some(7)).unwrap();
    let r3 = b.recon.as_mut().unwrap().run(&tokens).unwrap();
    assert_eq!((r3.prior_seed, r3.decoder_seed), (7, 7));
    assert_ne!(r1.image, r3.image);
    // The one-pass decoder variant decodes too.
    let one = ModelSet::load(
        &runtime(),
        &f.model.join("model_onepass.toml"),
        &f.subject,
        None,
    );
    let r4 = one.unwrap().recon.unwrap().run(&tokens).unwrap();
    assert_eq!(r4.image.len(), 3 * 64 * 64);
    assert_eq!(r4.decoder_steps.len(), 1);
}

fn beta(run: u32, trial: usize, voxels: &[f32], stim: &str) -> TrialBeta {
    let v: Arc<[f32]> = Arc::from(voxels);
    TrialBeta {
        run,
        trial,
        event: boldstream::types::events::Event {
            onset: trial as f64 * 4.0,
            duration: 3.0,
            trial_type: "image".into(),
            stim_id: Some(stim.into()),
            modulation: 1.0,
        },
        trigger: VolumeKey { run, index: 0 },
        frames: 20,
        regressors: 10,
        delayed: false,
        warmup: false,
        raw: v.clone(),
        z: v.clone(),
        decode: v,
        presentations: 1,
        compute_seconds: 0.0,
        trigger_seen: None,
        ready: Instant::now(),
        ready_wall: SystemTime::now(),
    }
}

/// Five betas handled back to back, then the input ends. The stage learns
/// that the worker finished only when it processes the worker's message, so
/// without a `done` in between the worker counts as busy for all five:
/// which trials each policy keeps is deterministic.
fn policy_run(policy: ReconPolicy, max_queue: usize) -> (Vec<usize>, Vec<(usize, String)>) {
    let config = DecodeConfig {
        model: Some(demo()),
        subject: Some(demo().join("subject-sim01")),
        onnxruntime: None,
        device: DeviceChoice::Cpu,
        threads: 1,
        policy,
        max_queue,
        warmup_calls: 0,
        ..Default::default()
    };
    let mut stage = DecodeStage::start(&config).unwrap();
    let (betas, _, v) = npy(&demo().join("subject-sim01/test_betas.npy"));
    // Through an outlet, as in the pipeline: its tally is the one count.
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut outlet = Outlet::new("decode").to("test", tx, Delivery::Reliable);
    let counts = outlet.tally();
    let mut emit = |e: PipelineEvent| outlet.send(e);
    stage.announce(&mut emit);
    for t in 1..=5 {
        let b = beta(1, t, &betas[t * v..(t + 1) * v], "x");
        stage.handle(PipelineEvent::Beta(Box::new(b)), &mut emit);
    }
    stage.finish(&mut emit);
    let events: Vec<PipelineEvent> = rx.try_iter().collect();
    let mut decoded = 0;
    let mut recon = Vec::new();
    let mut skipped = Vec::new();
    let mut ready = 0;
    for e in &events {
        match e {
            PipelineEvent::DecoderReady(_) => ready += 1,
            PipelineEvent::Decoded(_) => decoded += 1,
            PipelineEvent::Reconstructed(r) => {
                assert_eq!(r.chw, (3, 64, 64));
                assert_eq!(r.prior_steps.len(), 20);
                recon.push(r.trial);
            }
            PipelineEvent::DecodeSkipped {
                trial,
                what,
                reason,
                ..
            } => {
                assert_eq!(*what, "reconstruction");
                skipped.push((*trial, reason.clone()));
            }
            _ => {}
        }
    }
    assert_eq!(ready, 1);
    assert_eq!(
        decoded, 5,
        "every beta gets its fast decode whatever the policy"
    );
    assert_eq!(
        recon.len() + skipped.len(),
        5,
        "every trial is reconstructed or reported"
    );
    assert_eq!(counts.get("reconstructed") as usize, recon.len());
    assert_eq!(counts.get("decode_skipped") as usize, skipped.len());
    (recon, skipped)
}

#[test]
fn queue_policy_reconstructs_every_trial_in_order() {
    let (recon, skipped) = policy_run(ReconPolicy::Queue, 16);
    assert_eq!(recon, vec![1, 2, 3, 4, 5]);
    assert!(skipped.is_empty());
}

#[test]
fn a_full_queue_drops_the_oldest_and_says_so() {
    let (recon, skipped) = policy_run(ReconPolicy::Queue, 2);
    assert_eq!(recon, vec![1, 4, 5]);
    let trials: Vec<usize> = skipped.iter().map(|s| s.0).collect();
    assert_eq!(trials, vec![2, 3]);
    assert!(skipped.iter().all(|s| s.1.contains("queue was full")));
}

#[test]
fn keep_latest_reconstructs_the_newest_and_reports_the_superseded() {
    let (recon, skipped) = policy_run(ReconPolicy::KeepLatest, 16);
    assert_eq!(recon, vec![1, 5]);
    let trials: Vec<usize> = skipped.iter().map(|s| s.0).collect();
    assert_eq!(trials, vec![2, 3, 4]);
    assert!(skipped.iter().all(|s| s.1.contains("superseded")));
}

#[test]
fn skip_policy_reports_every_trial_that_found_the_worker_busy() {
    let (recon, skipped) = policy_run(ReconPolicy::Skip, 16);
    assert_eq!(recon, vec![1]);
    let trials: Vec<usize> = skipped.iter().map(|s| s.0).collect();
    assert_eq!(trials, vec![2, 3, 4, 5]);
    assert!(skipped.iter().all(|s| s.1.contains("busy")));
}

#[derive(serde::Deserialize)]
struct Expected {
    top_k: usize,
    trial: Vec<ExpectedTrial>,
}

#[derive(serde::Deserialize)]
struct ExpectedTrial {
    id: String,
    rank: usize,
    top: Vec<String>,
}

#[test]
fn retrieval_ranks_equal_the_float64_reference() {
    // onnx/build_demo.py ranks the same betas through the same graphs in
    // float64; every top-k gap there is ≥ 2.5e-3, far above float32 error.
    let dir = demo().join("subject-sim01");
    let expected: Expected =
        toml::from_str(&std::fs::read_to_string(dir.join("test_expected.toml")).unwrap()).unwrap();
    let (betas, n, v) = npy(&dir.join("test_betas.npy"));
    assert_eq!(expected.trial.len(), n);
    let f = edited(&[], &[]);
    let mut set = load(&f).unwrap();
    for (i, t) in expected.trial.iter().enumerate() {
        let out = set.fast.run(&betas[i * v..(i + 1) * v]).unwrap();
        let ids: Vec<&str> = out.top.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids.len(), expected.top_k);
        assert_eq!(ids, t.top, "trial {i} ({})", t.id);
        let bank = set.fast.bank().unwrap();
        assert_eq!(
            bank.rank_of(&out.query, &t.id),
            Some(t.rank + 1),
            "trial {i}"
        );
        assert!(out.top.windows(2).all(|w| w[0].score >= w[1].score));
    }
}

/// A reconstruction graph too big for CPU (here: any size, limit 0 GB)
/// that lands on CPU stops the start with its name; allowing it loads.
#[test]
fn a_big_decoder_on_cpu_is_refused_unless_allowed() {
    let config = DecodeConfig {
        model: Some(demo()),
        subject: Some(demo().join("subject-sim01")),
        device: DeviceChoice::Cpu,
        threads: 1,
        cpu_decoder_limit_gb: 0.0,
        warmup_calls: 0,
        ..Default::default()
    };
    let e = match boldstream::decode::stage::load_and_warm(&config) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a decoder over the CPU limit was loaded"),
    };
    assert!(
        e.contains("would run on CPU") && e.contains("allow_cpu_decoder"),
        "{e}"
    );
    let allowed = DecodeConfig {
        allow_cpu_decoder: true,
        ..config
    };
    let warmed = boldstream::decode::stage::load_and_warm(&allowed)
        .expect("allowed")
        .expect("a model is configured");
    assert!(warmed.recon.is_some());
}

/// The GPU settings parse from `[decode.tensorrt]` and `[decode.cuda]`
/// and reach the runtime's options; a typo is refused by name.
#[test]
fn gpu_settings_parse_and_reach_the_runtime() {
    let text = r#"
        device = "tensorrt"
        [tensorrt]
        fp16 = true
        engine_cache = "/var/cache/boldstream/trt"
        max_workspace_gb = 8
        [cuda]
        memory_limit_gb = 40
        conv_algorithm_search = "heuristic"
        tf32 = false
    "#;
    let c: DecodeConfig = toml::from_str(text).expect("parses");
    let rt = c.runtime();
    assert!(rt.tensorrt.fp16);
    assert_eq!(
        rt.tensorrt.cache_dir(),
        PathBuf::from("/var/cache/boldstream/trt")
    );
    assert_eq!(rt.cuda.memory_limit_gb, Some(40.0));
    assert_eq!(rt.cuda.tf32, Some(false));
    let bad = toml::from_str::<DecodeConfig>("[tensorrt]\nfp61 = true\n").unwrap_err();
    assert!(bad.to_string().contains("fp61"), "{bad}");
}
