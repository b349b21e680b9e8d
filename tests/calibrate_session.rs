//! Calibration end to end on a small simulated session: betas through the
//! live path's realignment and GLM, an adapter fitted by ridge with
//! reliability-based voxel selection, and the subject folder it writes —
//! checked file by file against what was simulated and against each other
//! (voxel order, normalisation statistics, betas, the adapter as ONNX
//! Runtime runs it). Then recovery of a known linear map from synthetic
//! betas, and the errors bad input gets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use boldstream::calibrate::ridge::{self, RidgeOptions};
use boldstream::calibrate::{
    BetaSettings, CalTrial, CalibrateError, FitOptions, FitReport, RunInput, RunVolumes,
    SessionBetas, estimate_betas, estimate_betas_from, fit_subject, targets_for,
};
use boldstream::decode::manifest::{ModelManifest, SubjectManifest};
use boldstream::decode::runtime::{Graph, Input, Runtime};
use boldstream::formats::nifti::{WriteOptions, read_volume, write_volume};
use boldstream::tools::simulate::events::{MindEyeDesign, mindeye_run, mindeye_volumes};
use boldstream::tools::simulate::patterns::{StimulusPatterns, pick_region};
use boldstream::tools::simulate::{MotionModel, MotionSpec, SynthSeries, SynthSpec};
use boldstream::types::events::Event;
use boldstream::types::mask::SessionMask;
use boldstream::types::volume::{Grid, Volume};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("onnx/demo")
}

fn bank_ids() -> Vec<String> {
    std::fs::read_to_string(model_dir().join("bank/ids.txt"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn model() -> ModelManifest {
    ModelManifest::load(&model_dir()).unwrap()
}

/// The model's targets for `ids`, and their width.
fn targets(ids: &[String]) -> (HashMap<String, Vec<f32>>, usize) {
    targets_for(&model(), ids, None).unwrap()
}

fn normal(rng: &mut ChaCha8Rng, k: usize) -> Vec<f64> {
    (0..k).map(|_| StandardNormal.sample(rng)).collect()
}

/// `(values, rows, cols)` of a 2-D `.npy`, checking the header says 2-D.
fn npy(path: &Path) -> (Vec<f64>, usize, usize) {
    let bytes = std::fs::read(path).unwrap();
    let header = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).to_string();
    let (v, r, c) = boldstream::formats::npy::decode_2d(&bytes).unwrap();
    assert!(
        header.contains(&format!("'shape': ({r}, {c})")),
        "{}: header {header:?}",
        path.display()
    );
    (v, r, c)
}

/// Header and rows of a TSV file.
fn tsv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let split = |l: &str| l.split('\t').map(String::from).collect::<Vec<_>>();
    let header = split(lines.next().unwrap());
    let rows: Vec<Vec<String>> = lines.filter(|l| !l.is_empty()).map(split).collect();
    for r in &rows {
        assert_eq!(r.len(), header.len(), "{}: row {r:?}", path.display());
    }
    (header, rows)
}

/// Non-zero voxels (file order) of an image.
fn nonzero(v: &Volume) -> Vec<usize> {
    v.values()
        .iter()
        .enumerate()
        .filter(|(_, x)| **x != 0.0)
        .map(|(i, _)| i)
        .collect()
}

/// The subject folder's adapter, loaded as the decoder loads it.
fn adapter(dir: &Path) -> (SubjectManifest, Graph) {
    let m = SubjectManifest::load(dir).unwrap();
    let rt = Runtime::new(&Default::default()).unwrap();
    let g = rt
        .load_graph(
            "adapter",
            &m.adapter.file,
            vec![m.adapter.input.clone()],
            vec![m.adapter.output.clone()],
        )
        .unwrap();
    (m, g)
}

fn run(g: &mut Graph, x: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    g.run(&[Input::F32(x)], &mut [&mut out]).unwrap();
    out
}

/// z-score a raw beta with the `(2, V)` statistics of `zscore.npy`.
fn zscore(beta: &[f32], z: &[f64]) -> Vec<f32> {
    let v = beta.len();
    beta.iter()
        .enumerate()
        .map(|(j, &b)| {
            let (m, s) = (z[j], z[v + j]);
            if s > 1e-12 {
                ((b as f64 - m) / s) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// Pooled R² of `pred` against `truth` (both N × L row-major), around each
/// column's mean.
fn r2(truth: &[f32], pred: &[f32], l: usize) -> f64 {
    let n = truth.len() / l;
    let mut mean = vec![0.0f64; l];
    for r in 0..n {
        for c in 0..l {
            mean[c] += truth[r * l + c] as f64 / n as f64;
        }
    }
    let (mut sse, mut sst) = (0.0, 0.0);
    for r in 0..n {
        for c in 0..l {
            let t = truth[r * l + c] as f64;
            sse += (t - pred[r * l + c] as f64).powi(2);
            sst += (t - mean[c]).powi(2);
        }
    }
    1.0 - sse / sst
}

/// The `selected` column of `voxels.tsv`.
fn selected(dir: &Path) -> Vec<bool> {
    let (h, rows) = tsv(&dir.join("voxels.tsv"));
    let c = h.iter().position(|x| x == "selected").unwrap();
    rows.iter().map(|r| r[c] == "1").collect()
}

// ---------------------------------------------------------------------
// A small simulated calibration session.
// ---------------------------------------------------------------------

const RUNS: usize = 2;
const IMAGES_PER_RUN: usize = 20;
const BLANKS_PER_RUN: usize = 2;
/// Distinct images: each shown about three times over the session.
const POOL: usize = 13;
const PATTERN_VOXELS: usize = 150;
const REGION_VOXELS: usize = 240;

struct Session {
    /// Each run's events.
    events: Vec<Vec<Event>>,
    /// The session with stimulus patterns.
    series: SynthSeries,
    volumes_per_run: usize,
    /// The region mask (a file on the calibration grid) and its voxels in
    /// `np.where` order.
    region_path: PathBuf,
    region: Volume,
    region_order: Vec<usize>,
    pattern_order: Vec<usize>,
}

/// Two MindEye runs of 20 bank images (13 distinct, repeated), rendered in
/// memory; each image evokes `W · target(image)` over 150 voxels near the
/// phantom's visual area, inside a 240-voxel region whose other voxels
/// carry no image-specific signal.
fn simulate_session(dir: &Path) -> Session {
    let me = MindEyeDesign {
        images_per_run: IMAGES_PER_RUN,
        blank_trials_per_run: BLANKS_PER_RUN,
        ..MindEyeDesign::default()
    };
    let volumes_per_run = mindeye_volumes(&me, IMAGES_PER_RUN + BLANKS_PER_RUN);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut bank = bank_ids();
    bank.shuffle(&mut rng);
    let pool: Vec<String> = bank[..POOL].to_vec();
    // Every image before any repeats, each pass reshuffled.
    let mut order: Vec<String> = Vec::new();
    while order.len() < RUNS * IMAGES_PER_RUN {
        let mut pass = pool.clone();
        pass.shuffle(&mut rng);
        order.extend(pass);
    }
    let events: Vec<Vec<Event>> = (0..RUNS)
        .map(|r| {
            mindeye_run(
                &me,
                &order[r * IMAGES_PER_RUN..(r + 1) * IMAGES_PER_RUN],
                &mut rng,
            )
        })
        .collect();
    let spec = SynthSpec {
        dims: [32, 32, 20],
        voxel_mm: [6.0, 6.0, 6.0],
        // Tissue edges as smooth as a voxel: at 6 mm the default 1 mm
        // edges alias and realignment would add its own error.
        edge_mm: 6.0,
        tr: me.tr,
        runs: RUNS,
        volumes_per_run,
        noise: 0.01,
        activation: 0.01,
        motion: MotionModel::Random(MotionSpec {
            max_mm: 0.5,
            max_deg: 0.5,
            jerks_per_run: 0,
            ..MotionSpec::default()
        }),
        events: Some(events.clone()),
        seed: 3,
        ..SynthSpec::default()
    };
    let plain = SynthSeries::new(spec).unwrap();
    let reference = plain.clean_volume(0);
    let (brain, task) = (plain.brain_map(), plain.task_map());
    let (_, pattern_order) = pick_region(&reference, &brain, &task, PATTERN_VOXELS).unwrap();
    let (region, region_order) = pick_region(&reference, &brain, &task, REGION_VOXELS).unwrap();
    // The nearest 150 are among the nearest 240.
    assert!(pattern_order.iter().all(|v| region_order.contains(v)));

    // Responses: a random linear map of the standardised targets,
    // standardised per voxel over the images.
    let (t, width) = targets(&pool);
    let std_targets: HashMap<&String, Vec<f64>> = {
        let n = pool.len() as f64;
        let mean: Vec<f64> = (0..width)
            .map(|c| pool.iter().map(|i| t[i][c] as f64).sum::<f64>() / n)
            .collect();
        let sd: Vec<f64> = (0..width)
            .map(|c| {
                (pool
                    .iter()
                    .map(|i| (t[i][c] as f64 - mean[c]).powi(2))
                    .sum::<f64>()
                    / n)
                    .sqrt()
                    .max(1e-9)
            })
            .collect();
        pool.iter()
            .map(|i| {
                (
                    i,
                    (0..width)
                        .map(|c| (t[i][c] as f64 - mean[c]) / sd[c])
                        .collect(),
                )
            })
            .collect()
    };
    let w = normal(&mut rng, PATTERN_VOXELS * width);
    let mut responses: HashMap<String, Vec<f32>> = pool
        .iter()
        .map(|i| {
            let s = &std_targets[i];
            let r = (0..PATTERN_VOXELS)
                .map(|v| (0..width).map(|c| w[v * width + c] * s[c]).sum::<f64>() as f32)
                .collect();
            (i.clone(), r)
        })
        .collect();
    for v in 0..PATTERN_VOXELS {
        let n = pool.len() as f64;
        let m = responses.values().map(|r| r[v] as f64).sum::<f64>() / n;
        let s = (responses
            .values()
            .map(|r| (r[v] as f64 - m).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        for r in responses.values_mut() {
            r[v] = ((r[v] as f64 - m) / s) as f32;
        }
    }
    let patterns = StimulusPatterns::new(pattern_order.clone(), responses, 0.03)
        .unwrap()
        .with_response_noise(0.2, 5)
        .unwrap();
    let series = plain.with_patterns(patterns).unwrap();
    let region_path = dir.join("region_mask.nii.gz");
    write_volume(
        &region_path,
        &region,
        &WriteOptions {
            gzip: true,
            ..Default::default()
        },
    )
    .unwrap();
    Session {
        events,
        series,
        volumes_per_run,
        region_path,
        region,
        region_order,
        pattern_order,
    }
}

fn session_runs<'a>(
    s: &'a Session,
) -> impl Iterator<Item = Result<RunVolumes<'a>, CalibrateError>> + 'a {
    (0..RUNS).map(move |r| {
        let series = &s.series;
        let n = s.volumes_per_run;
        Ok(RunVolumes {
            label: PathBuf::from(format!("calibration run {}", r + 1)),
            events: s.events[r].clone(),
            tr: Some(series.tr()),
            planned: Some(n),
            volumes: Box::new((0..n).map(move |i| Ok(series.volume(r * n + i)))),
        })
    })
}

#[test]
fn calibration_writes_a_consistent_subject_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let s = simulate_session(tmp.path());
    let t0 = std::time::Instant::now();
    let betas = estimate_betas_from(
        session_runs(&s),
        &BetaSettings {
            region: Some(s.region_path.clone()),
            ..BetaSettings::default()
        },
    )
    .unwrap();
    let stimulus_events: usize = s
        .events
        .iter()
        .map(|e| e.iter().filter(|e| e.stim_id.is_some()).count())
        .sum();
    println!(
        "betas: {} trials ({} skipped) from {} volumes in {:.1} s (realign {:.1} s, GLM {:.1} s); region {} voxels",
        betas.trials.len(),
        betas.skipped.len(),
        betas.volumes,
        t0.elapsed().as_secs_f64(),
        betas.seconds.1,
        betas.seconds.2,
        betas.region.len()
    );
    assert_eq!(stimulus_events, RUNS * IMAGES_PER_RUN);
    assert_eq!(betas.trials.len() + betas.skipped.len(), stimulus_events);
    assert!(
        betas.skipped.is_empty(),
        "every trial has a beta: {:?}",
        betas.skipped
    );
    assert_eq!(betas.volumes, RUNS * s.volumes_per_run);
    assert_eq!(betas.motion.len(), RUNS);
    let region_idx: Vec<usize> = betas.region.indices().iter().map(|&i| i as usize).collect();
    assert_eq!(
        region_idx, s.region_order,
        "the betas cover the given region"
    );
    assert!(betas.trials.iter().all(|t| t.beta.len() == REGION_VOXELS));
    // Trials in session order, images as the design said.
    let shown: Vec<&str> = s
        .events
        .iter()
        .flatten()
        .filter_map(|e| e.stim_id.as_deref())
        .collect();
    let got: Vec<&str> = betas.trials.iter().map(|t| t.stim_id.as_str()).collect();
    assert_eq!(got, shown);

    let out = tmp.path().join("subject");
    let opts = FitOptions {
        subject: "sim-test".into(),
        ..FitOptions::default()
    };
    let report: FitReport = fit_subject(&betas, &model_dir(), &out, &opts).unwrap();
    boldstream::calibrate::print_fit(&report);
    assert_eq!(report.trials, betas.trials.len());
    assert_eq!(report.images, POOL);
    assert_eq!(report.voxels, REGION_VOXELS);
    assert!(report.selected >= 1 && report.selected <= REGION_VOXELS);

    // subject.toml: loads, fits the model.
    let manifest = SubjectManifest::load(&out).unwrap();
    manifest.check_against(&model()).unwrap();
    assert_eq!(manifest.subject, "sim-test");
    assert_eq!(manifest.voxels, REGION_VOXELS);
    assert_eq!(manifest.adapter.input.len(), REGION_VOXELS);
    assert_eq!(manifest.adapter.output.len(), 64);
    for (what, p) in [
        ("mask", &manifest.mask),
        ("reference", &manifest.reference),
        ("zscore", &manifest.zscore),
    ] {
        let p = p
            .as_ref()
            .unwrap_or_else(|| panic!("subject.toml names no {what}"));
        assert!(p.is_file(), "{what}: {}", p.display());
    }
    for f in [
        "reference.nii.gz",
        "brain_mask.nii.gz",
        "region_mask.nii.gz",
        "mask.nii.gz",
        "voxels.tsv",
        "zscore.npy",
        "betas.npy",
        "betas.tsv",
        "adapter.onnx",
        "subject.toml",
        "calibration.toml",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }

    // The reference is the first volume of the first run; the brain mask
    // is its EPI mask; mask and region mask are the region, voxel for voxel.
    let reference = read_volume(&out.join("reference.nii.gz")).unwrap();
    let grid = s.series.grid();
    assert!(reference.grid().matches(grid, 1e-4));
    assert_eq!(reference.values(), s.series.volume(0).values());
    let brain = read_volume(&out.join("brain_mask.nii.gz")).unwrap();
    let brain_idx: Vec<usize> = SessionMask::compute_epi(&reference)
        .unwrap()
        .indices()
        .iter()
        .map(|&i| i as usize)
        .collect();
    let mut brain_sorted = brain_idx.clone();
    brain_sorted.sort();
    assert_eq!(nonzero(&brain), brain_sorted);
    let want = nonzero(&s.region);
    assert_eq!(want.len(), REGION_VOXELS);
    for f in ["mask.nii.gz", "region_mask.nii.gz"] {
        let m = read_volume(&out.join(f)).unwrap();
        assert!(m.grid().matches(grid, 1e-4), "{f} grid");
        assert_eq!(nonzero(&m), want, "{f} differs from the region mask");
    }

    // voxels.tsv: every mask voxel once, in np.where order, and the mask
    // file read back on the reference grid gives the same sequence.
    let mask_file = read_volume(&out.join("mask.nii.gz")).unwrap();
    let mask = SessionMask::from_image(&mask_file, reference.grid()).unwrap();
    assert_eq!(mask.len(), REGION_VOXELS);
    let (header, rows) = tsv(&out.join("voxels.tsv"));
    assert_eq!(
        header,
        ["column", "i", "j", "k", "selected", "reliability"].map(String::from)
    );
    assert_eq!(rows.len(), REGION_VOXELS);
    let mut ijks: Vec<[usize; 3]> = Vec::new();
    for (n, r) in rows.iter().enumerate() {
        assert_eq!(r[0].parse::<usize>().unwrap(), n);
        let ijk = [1, 2, 3].map(|c| r[c].parse::<usize>().unwrap());
        assert_eq!(Some(ijk), betas.region.voxel(n), "row {n}");
        assert_eq!(Some(ijk), mask.voxel(n), "row {n} vs mask.nii.gz");
        assert!(r[4] == "0" || r[4] == "1", "selected {:?}", r[4]);
        assert!(r[5] == "n/a" || r[5].parse::<f64>().is_ok_and(|x| (-1.0..=1.0).contains(&x)));
        ijks.push(ijk);
    }
    // np.where order: i slowest, k fastest — strictly increasing, so no
    // voxel is listed twice.
    assert!(ijks.windows(2).all(|w| w[0] < w[1]));
    let sel = selected(&out);
    let n_sel = sel.iter().filter(|&&x| x).count();
    assert_eq!(n_sel, report.selected);

    // Selection: the voxels carrying image patterns are kept more often
    // than the region's other voxels.
    let is_pattern: Vec<bool> = s
        .region_order
        .iter()
        .map(|v| s.pattern_order.contains(v))
        .collect();
    let frac = |want: bool| {
        let (k, n) = sel
            .iter()
            .zip(&is_pattern)
            .filter(|(_, p)| **p == want)
            .fold((0, 0), |(k, n), (s, _)| (k + usize::from(*s), n + 1));
        k as f64 / n as f64
    };
    println!(
        "selected {n_sel} of {REGION_VOXELS} voxels (threshold {:?}): {:.2} of pattern voxels, {:.2} of the others; selection scores {:?}",
        report.threshold,
        frac(true),
        frac(false),
        report.selection_scores
    );
    assert!(
        n_sel < REGION_VOXELS,
        "reliability selection dropped no voxel"
    );
    assert!(frac(true) > frac(false), "selection did not favour signal");

    // zscore.npy: (2, V), the betas' own mean and sd.
    let (z, zr, zc) = npy(&out.join("zscore.npy"));
    assert_eq!((zr, zc), (2, REGION_VOXELS));
    let (b, br, bc) = npy(&out.join("betas.npy"));
    assert_eq!((br, bc), (betas.trials.len(), REGION_VOXELS));
    for (r, t) in betas.trials.iter().enumerate() {
        for (j, &x) in t.beta.iter().enumerate() {
            assert_eq!(b[r * bc + j], x as f64, "betas.npy row {r} col {j}");
        }
    }
    for j in 0..bc {
        let col: Vec<f64> = (0..br).map(|r| b[r * bc + j]).collect();
        let mean = col.iter().sum::<f64>() / br as f64;
        let sd = (col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / br as f64).sqrt();
        assert!(sd > 0.0);
        assert!(
            (z[j] - mean).abs() <= 1e-4 * sd.max(mean.abs()),
            "mean of voxel {j}: {} vs {mean}",
            z[j]
        );
        assert!(
            (z[bc + j] - sd).abs() <= 1e-4 * sd,
            "sd of voxel {j}: {} vs {sd}",
            z[bc + j]
        );
    }

    // betas.tsv: one row per trial, in order.
    let (h, rows) = tsv(&out.join("betas.tsv"));
    assert_eq!(
        h,
        ["row", "run", "trial", "onset", "stim_id"].map(String::from)
    );
    assert_eq!(rows.len(), betas.trials.len());
    for (r, (row, t)) in rows.iter().zip(&betas.trials).enumerate() {
        assert_eq!(row[0].parse::<usize>().unwrap(), r);
        assert_eq!(row[1].parse::<u32>().unwrap(), t.run);
        assert_eq!(row[2].parse::<usize>().unwrap(), t.trial);
        assert!((row[3].parse::<f64>().unwrap() - t.onset).abs() < 1e-9);
        assert_eq!(row[4], t.stim_id);
    }

    // calibration.toml agrees with the report.
    let cal: toml::Table = std::fs::read_to_string(out.join("calibration.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let int = |k: &str| cal[k].as_integer().unwrap_or_else(|| panic!("{k}")) as usize;
    assert_eq!(int("trials"), betas.trials.len());
    assert_eq!(int("images"), POOL);
    assert_eq!(int("runs"), RUNS);
    assert_eq!(int("volumes"), RUNS * s.volumes_per_run);
    assert_eq!(int("region_voxels"), REGION_VOXELS);
    assert_eq!(int("selected_voxels"), n_sel);

    // The adapter, as ONNX Runtime runs it, is the ridge fit on the z-scored
    // betas of the selected voxels, recomputed here from the files alone.
    let (m, mut g) = adapter(&out);
    assert_eq!(m.adapter.input.len(), REGION_VOXELS);
    let ids: Vec<String> = rows.iter().map(|r| r[4].clone()).collect();
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    let groups: Vec<usize> = ids.iter().map(|i| uniq.binary_search(i).unwrap()).collect();
    let (tgt, width) = targets(&uniq);
    assert_eq!(width, 64);
    let y: Vec<f32> = ids.iter().flat_map(|i| tgt[i].iter().copied()).collect();
    let cols: Vec<usize> = (0..bc).filter(|&c| sel[c]).collect();
    let zrows: Vec<Vec<f32>> = (0..br)
        .map(|r| {
            let raw: Vec<f32> = (0..bc).map(|j| b[r * bc + j] as f32).collect();
            zscore(&raw, &z)
        })
        .collect();
    let xs: Vec<f32> = zrows
        .iter()
        .flat_map(|row| cols.iter().map(|&c| row[c]))
        .collect();
    let fit = ridge::fit_ridge_cv(
        &xs,
        br,
        cols.len(),
        &y,
        width,
        &groups,
        &RidgeOptions::default(),
    )
    .unwrap();
    let mut worst = 0.0f64;
    let mut scale = 0.0f64;
    for row in zrows.iter().take(5) {
        let out = run(&mut g, row);
        assert_eq!(out.len(), 64);
        assert!(out.iter().all(|v| v.is_finite()));
        let xr: Vec<f32> = cols.iter().map(|&c| row[c]).collect();
        let want = fit.predict(&xr).unwrap();
        for (a, w) in out.iter().zip(&want) {
            worst = worst.max((a - w).abs() as f64);
            scale = scale.max(w.abs() as f64);
        }
    }
    println!(
        "adapter vs ridge refitted from the files: max difference {worst:.2e} (largest output {scale:.3}); cv R² {:.3}",
        report.cv_r2
    );
    assert!(
        worst <= 1e-3 * scale.max(1.0),
        "adapter {worst} off the ridge fit"
    );

    // Unselected voxels do not matter; a selected one does.
    let base = zrows[0].clone();
    let y0 = run(&mut g, &base);
    let mut poked = base.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for (c, &on) in sel.iter().enumerate() {
        if !on {
            poked[c] = 50.0 * normal(&mut rng, 1)[0] as f32;
        }
    }
    assert_eq!(
        run(&mut g, &poked),
        y0,
        "unselected voxels changed the output"
    );
    let c = sel.iter().position(|&s| s).unwrap();
    let mut poked = base.clone();
    poked[c] += 50.0;
    let y1 = run(&mut g, &poked);
    assert!(
        y1.iter().zip(&y0).any(|(a, b)| (a - b).abs() > 1e-4),
        "a selected voxel changed nothing"
    );
}

// ---------------------------------------------------------------------
// A known linear map, no fMRI.
// ---------------------------------------------------------------------

const SIGNAL_VOXELS: usize = 160;
const NOISE_VOXELS: usize = 40;
const HELD_OUT: usize = 30;

/// Synthetic calibration betas `B = T·Wᵀ + noise` over a region whose last
/// (in `np.where` order) `NOISE_VOXELS` voxels carry only noise; the
/// training images are each shown twice, in two "runs". Returns the betas
/// and a function to draw a fresh trial's beta for any bank image.
struct Synthetic {
    betas: SessionBetas,
    held_out: Vec<String>,
    w: Vec<f64>,
    targets: HashMap<String, Vec<f32>>,
    width: usize,
    noise: f64,
}

fn synthetic(seed: u64) -> Synthetic {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ids = bank_ids();
    ids.shuffle(&mut rng);
    let held_out = ids[..HELD_OUT].to_vec();
    let train = ids[HELD_OUT..].to_vec();
    let (targets, width) = targets(&ids);
    // Signal per voxel: W maps the targets; scale it to unit variance.
    let w: Vec<f64> = normal(&mut rng, SIGNAL_VOXELS * width)
        .into_iter()
        .map(|x| x / (width as f64).sqrt())
        .collect();
    let v = SIGNAL_VOXELS + NOISE_VOXELS;
    let sd_signal = {
        // sd of the first voxel's clean signal over the training images.
        let s: Vec<f64> = train
            .iter()
            .map(|i| (0..width).map(|c| w[c] * targets[i][c] as f64).sum())
            .collect();
        let m = s.iter().sum::<f64>() / s.len() as f64;
        (s.iter().map(|x| (x - m).powi(2)).sum::<f64>() / s.len() as f64).sqrt()
    };
    let noise = 0.1 * sd_signal;
    // Region: a 10×5×4 block; np.where order puts i slowest, so the voxels
    // with the largest i are the last columns: the noise voxels.
    let grid = Grid::centred([12, 8, 6], [3.0, 3.0, 3.0]);
    let [nx, ny, _] = grid.dims;
    let mut inside = vec![false; grid.len()];
    for i in 1..11 {
        for j in 1..6 {
            for k in 1..5 {
                inside[i + nx * (j + ny * k)] = true;
            }
        }
    }
    let region = SessionMask::from_file_order(grid.clone(), &inside).unwrap();
    assert_eq!(region.len(), v);
    let reference = Volume::from_file_order(
        grid.clone(),
        (0..grid.len()).map(|n| 100.0 + (n % 17) as f32).collect(),
    )
    .unwrap();
    let brain = SessionMask::from_file_order(grid.clone(), &vec![true; grid.len()]).unwrap();
    let mut trials = Vec::new();
    for run in 1..=2u32 {
        let mut order = train.clone();
        order.shuffle(&mut rng);
        for (trial, id) in order.iter().enumerate() {
            let beta = beta_for(&w, &targets[id], width, v, noise, &mut rng);
            trials.push(CalTrial {
                run,
                trial,
                stim_id: id.clone(),
                onset: 6.0 + 4.0 * trial as f64,
                beta,
            });
        }
    }
    Synthetic {
        betas: SessionBetas {
            reference,
            brain,
            region,
            trials,
            skipped: Vec::new(),
            motion: vec![vec![[0.0; 6]; 10]; 2],
            volumes: 20,
            seconds: (0.0, 0.0, 0.0),
        },
        held_out,
        w,
        targets,
        width,
        noise,
    }
}

/// One trial's beta: `W·t + noise` on the signal voxels, noise alone (at
/// the signal's scale) on the rest.
fn beta_for(
    w: &[f64],
    t: &[f32],
    width: usize,
    v: usize,
    noise: f64,
    rng: &mut ChaCha8Rng,
) -> Vec<f32> {
    let e = normal(rng, v);
    (0..v)
        .map(|j| {
            if j < SIGNAL_VOXELS {
                let s: f64 = (0..width).map(|c| w[j * width + c] * t[c] as f64).sum();
                (s + noise * e[j]) as f32
            } else {
                (10.0 * noise * e[j]) as f32
            }
        })
        .collect()
}

/// R² of the subject folder's adapter on fresh betas of the held-out images.
fn held_out_r2(dir: &Path, s: &Synthetic, seed: u64) -> f64 {
    let (z, _, _) = npy(&dir.join("zscore.npy"));
    let (_, mut g) = adapter(dir);
    let v = SIGNAL_VOXELS + NOISE_VOXELS;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut truth, mut pred) = (Vec::new(), Vec::new());
    for id in &s.held_out {
        let beta = beta_for(&s.w, &s.targets[id], s.width, v, s.noise, &mut rng);
        pred.extend(run(&mut g, &zscore(&beta, &z)));
        truth.extend_from_slice(&s.targets[id]);
    }
    r2(&truth, &pred, s.width)
}

#[test]
fn fitted_adapter_recovers_a_known_linear_map() {
    let s = synthetic(21);
    assert_eq!(s.width, 64);
    let tmp = tempfile::tempdir().unwrap();

    // All voxels.
    let plain = tmp.path().join("plain");
    let r = fit_subject(
        &s.betas,
        &model_dir(),
        &plain,
        &FitOptions {
            thresholds: Vec::new(),
            ..FitOptions::default()
        },
    )
    .unwrap();
    let r2_plain = held_out_r2(&plain, &s, 1);
    println!(
        "no selection: {} trials, {} images, {} voxels, cv R² {:.3}, held-out R² {r2_plain:.4} on {} images",
        r.trials, r.images, r.selected, r.cv_r2, HELD_OUT
    );
    assert_eq!(r.selected, SIGNAL_VOXELS + NOISE_VOXELS);
    assert!(r.threshold.is_none());
    assert!(selected(&plain).iter().all(|&x| x));
    assert!(r2_plain > 0.9, "held-out R² {r2_plain}");
    // The held-out figure is not an artefact of the scoring: shuffled
    // images score far lower.
    {
        let (z, _, _) = npy(&plain.join("zscore.npy"));
        let (_, mut g) = adapter(&plain);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let v = SIGNAL_VOXELS + NOISE_VOXELS;
        let (mut truth, mut pred) = (Vec::new(), Vec::new());
        for (k, id) in s.held_out.iter().enumerate() {
            let other = &s.held_out[(k + 1) % HELD_OUT];
            let beta = beta_for(&s.w, &s.targets[other], s.width, v, s.noise, &mut rng);
            pred.extend(run(&mut g, &zscore(&beta, &z)));
            truth.extend_from_slice(&s.targets[id]);
        }
        let shuffled = r2(&truth, &pred, s.width);
        println!("mismatched images: R² {shuffled:.3}");
        assert!(shuffled < 0.5, "{shuffled}");
    }

    // With reliability selection: the noise voxels are dropped.
    let sel_dir = tmp.path().join("selected");
    let r = fit_subject(&s.betas, &model_dir(), &sel_dir, &FitOptions::default()).unwrap();
    let sel = selected(&sel_dir);
    let (h, rows) = tsv(&sel_dir.join("voxels.tsv"));
    let rc = h.iter().position(|x| x == "reliability").unwrap();
    let rel: Vec<f64> = rows.iter().map(|r| r[rc].parse().unwrap()).collect();
    let min_signal = rel[..SIGNAL_VOXELS]
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min);
    let max_noise = rel[SIGNAL_VOXELS..]
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max);
    let r2_sel = held_out_r2(&sel_dir, &s, 1);
    println!(
        "selection: threshold {:?}, {} voxels kept ({} signal, {} noise); reliability: signal ≥ {min_signal:.3}, noise ≤ {max_noise:.3}; scores {:?}; held-out R² {r2_sel:.4}",
        r.threshold,
        r.selected,
        sel[..SIGNAL_VOXELS].iter().filter(|&&x| x).count(),
        sel[SIGNAL_VOXELS..].iter().filter(|&&x| x).count(),
        r.selection_scores
    );
    assert!(r.threshold.is_some(), "a threshold was chosen");
    assert!(
        sel[SIGNAL_VOXELS..].iter().all(|&x| !x),
        "noise voxels selected"
    );
    assert!(
        sel[..SIGNAL_VOXELS].iter().all(|&x| x),
        "signal voxels dropped"
    );
    assert_eq!(r.selected, SIGNAL_VOXELS);
    assert!(min_signal > 0.9 && max_noise < 0.5);
    assert!(r2_sel > 0.9, "held-out R² with selection {r2_sel}");
}

// ---------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------

#[test]
fn bad_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();

    // No runs.
    let none: Vec<Result<RunVolumes<'static>, CalibrateError>> = Vec::new();
    let e = estimate_betas_from(none, &BetaSettings::default()).unwrap_err();
    println!("no runs: {e}");
    assert!(e.to_string().contains("no calibration runs"), "{e}");
    let e = estimate_betas(&[], &BetaSettings::default()).unwrap_err();
    assert!(e.to_string().contains("no calibration runs"), "{e}");

    // An events table that is not there (the run's data is).
    let data = tmp.path().join("run-01_bold.nii.gz");
    let series = SynthSeries::new(SynthSpec {
        dims: [16, 16, 10],
        voxel_mm: [6.0, 6.0, 6.0],
        volumes_per_run: 3,
        motion: MotionModel::Still,
        ..SynthSpec::default()
    })
    .unwrap();
    let vols: Vec<Volume> = (0..3).map(|i| series.volume(i)).collect();
    boldstream::formats::nifti::write_series(
        &data,
        &vols,
        &WriteOptions {
            gzip: true,
            tr: Some(1.5),
            ..Default::default()
        },
    )
    .unwrap();
    let missing = tmp.path().join("no-such-run-01_events.tsv");
    let e = estimate_betas(
        &[RunInput {
            data: data.clone(),
            events: missing.clone(),
        }],
        &BetaSettings::default(),
    )
    .unwrap_err();
    println!("missing events: {e}");
    assert!(
        e.to_string().contains("no-such-run-01_events.tsv"),
        "the message does not name the file: {e}"
    );
    // And a run whose data is not there names the data.
    let events = tmp.path().join("run-01_events.tsv");
    boldstream::formats::events_tsv::write_events(
        &events,
        &[Event {
            onset: 1.5,
            duration: 3.0,
            trial_type: "stimulus".into(),
            stim_id: Some("stim-0001".into()),
            modulation: 1.0,
        }],
    )
    .unwrap();
    let e = estimate_betas(
        &[RunInput {
            data: tmp.path().join("no-such-run_bold.nii.gz"),
            events: events.clone(),
        }],
        &BetaSettings::default(),
    )
    .unwrap_err();
    println!("missing data: {e}");
    assert!(e.to_string().contains("no-such-run_bold.nii.gz"), "{e}");

    // A fraction outside (0, 1], refused before anything is written.
    let s = synthetic(4);
    for f in [0.0, -0.5, 1.5, f64::NAN] {
        let out = tmp.path().join(format!("subject-{f}"));
        let e = fit_subject(
            &s.betas,
            &model_dir(),
            &out,
            &FitOptions {
                fraction: f,
                ..FitOptions::default()
            },
        )
        .unwrap_err();
        if f == 0.0 {
            println!("fraction 0: {e}");
        }
        assert!(e.to_string().contains("fraction"), "{e}");
        assert!(!out.exists(), "{} was written", out.display());
    }
    // A model folder that is not there names it.
    let e = fit_subject(
        &s.betas,
        &tmp.path().join("no-such-model"),
        &tmp.path().join("subject"),
        &FitOptions::default(),
    )
    .unwrap_err();
    println!("missing model: {e}");
    assert!(e.to_string().contains("no-such-model"), "{e}");
}
