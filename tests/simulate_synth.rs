//! The synthetic series: exact truth, contrast, noise level, task and drift.

use boldstream::tools::simulate::{
    DriftSpec, MotionModel, MotionSpec, SynthSeries, SynthSpec, Tissue, read_motion_par,
};
use boldstream::types::transform::MotionParams;
use boldstream::types::volume::{Grid, Volume};
use nalgebra::{Matrix4, Vector3};

/// A small, quick session: 32×36×24 voxels of 5 mm.
fn small() -> SynthSpec {
    SynthSpec {
        dims: [32, 36, 24],
        voxel_mm: [5.0, 5.0, 5.0],
        volumes_per_run: 6,
        ..SynthSpec::default()
    }
}

/// Noise, drift and task off: the image is the moved phantom alone.
fn clean(motion: MotionModel) -> SynthSpec {
    SynthSpec {
        noise: 0.0,
        activation: 0.0,
        drift: DriftSpec::none(),
        motion,
        ..small()
    }
}

/// `f(p)` at every voxel, with `p` the voxel's FSL mm coordinate mapped by `m`.
fn expected(series: &SynthSeries, m: &Matrix4<f64>) -> Vec<f32> {
    let g = series.grid();
    let v2f = g.vox_to_fsl();
    let [nx, ny, nz] = g.dims;
    let mut out = Vec::with_capacity(g.len());
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let p = Grid::apply(&v2f, Vector3::new(i as f64, j as f64, k as f64));
                out.push(series.reference_intensity(Grid::apply(m, p)) as f32);
            }
        }
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn generation_is_deterministic_and_seeded() {
    let a = SynthSeries::new(small()).unwrap();
    let b = SynthSeries::new(small()).unwrap();
    assert_eq!(a.volume(3).values(), b.volume(3).values());
    assert_eq!(a.trajectory(), b.trajectory());
    let c = SynthSeries::new(SynthSpec { seed: 2, ..small() }).unwrap();
    assert_ne!(a.volume(3).values(), c.volume(3).values());
    assert_ne!(a.trajectory(), c.trajectory());
    // The head itself does not depend on the seed.
    let p = Vector3::new(40.0, 50.0, 30.0);
    assert_eq!(a.reference_intensity(p), c.reference_intensity(p));
}

#[test]
fn phantom_has_epi_contrast_on_the_grid() {
    let s = SynthSeries::new(small()).unwrap();
    let fsl_from_head = s.head_from_fsl().try_inverse().unwrap();
    let at = |t| {
        let q = s.phantom().sample_point(t);
        s.reference_intensity(Grid::apply(&fsl_from_head, q))
    };
    let c = *s.phantom().contrast();
    let (bg, skull, scalp) = (at(Tissue::Background), at(Tissue::Skull), at(Tissue::Scalp));
    let (csf, gm, wm, deep) = (
        at(Tissue::Ventricle),
        at(Tissue::Grey),
        at(Tissue::White),
        at(Tissue::DeepGrey),
    );
    assert!(bg.abs() < 1e-3, "background {bg}");
    assert!(csf > gm && gm > wm && wm > skull, "{csf} {gm} {wm} {skull}");
    assert!(scalp > skull && deep > wm);
    assert!((wm - c.white).abs() < 0.05 * c.white, "{wm}");
    assert!((gm - c.grey).abs() < 0.08 * c.grey, "{gm}");
    // The head fills the field of view without touching its edges.
    let v0 = s.clean_volume(0);
    let [nx, ny, nz] = s.grid().dims;
    let edge_max = v0
        .data()
        .indexed_iter()
        .filter(|((i, j, k), _)| {
            *i == 0 || *j == 0 || *k == 0 || *i == nx - 1 || *j == ny - 1 || *k == nz - 1
        })
        .map(|(_, v)| *v)
        .fold(0.0f32, f32::max);
    assert!(edge_max < 1.0, "{edge_max}");
    // The task region is in the image and covers part of the cortex only.
    let task = s.task_map();
    let active = task.values().iter().filter(|w| **w > 0.5).count();
    assert!(active > 5 && active < task.values().len() / 50, "{active}");
}

#[test]
fn volume_zero_has_zero_motion_and_defines_the_centre() {
    let s = SynthSeries::new(small()).unwrap();
    assert_eq!(s.truth(0).0, [0.0; 6]);
    assert!(s.truth(0).0.iter().all(|v| v.is_sign_positive()));
    assert_eq!(s.matrix(0), Matrix4::identity());
    assert_eq!(s.centre(), s.volume(0).fsl_centre_of_gravity());
    // Without noise, volume 0 is the phantom sampled on the grid.
    let c = SynthSeries::new(clean(MotionModel::default())).unwrap();
    let v0 = c.volume(0);
    let diff = max_abs_diff(v0.values(), &expected(&c, &Matrix4::identity()));
    assert!(diff < 1e-3, "{diff}");
    assert!(s.trajectory()[1..].iter().any(|p| p.0 != [0.0; 6]));
}

#[test]
fn pure_translation_samples_the_phantom_at_shifted_points() {
    let t = [2.5, -1.25, 0.7];
    let s = SynthSeries::new(clean(MotionModel::Explicit(vec![
        [0.0; 6],
        [0.0, 0.0, 0.0, t[0], t[1], t[2]],
        [0.0; 6],
        [0.0; 6],
        [0.0; 6],
        [0.0; 6],
    ])))
    .unwrap();
    let mut shift = Matrix4::identity();
    for a in 0..3 {
        shift[(a, 3)] = t[a];
    }
    // A pure translation is the same matrix whatever the centre.
    assert!((s.matrix(1) - shift).abs().max() < 1e-12);
    let v1 = s.volume(1);
    let want = expected(&s, &shift);
    let diff = max_abs_diff(v1.values(), &want);
    assert!(diff < 1e-3, "{diff}");
    // And it is not simply volume 0 again.
    assert!(max_abs_diff(v1.values(), s.volume(0).values()) > 100.0);
}

#[test]
fn rotated_volumes_follow_the_matrix_about_the_centre() {
    let p = [0.03, -0.02, 0.025, 1.0, 0.5, -1.5];
    let mut rows = vec![[0.0; 6]; 6];
    rows[2] = p;
    let s = SynthSeries::new(clean(MotionModel::Explicit(rows))).unwrap();
    let m = MotionParams(p).to_matrix(s.centre());
    assert_eq!(s.matrix(2), m);
    let diff = max_abs_diff(s.volume(2).values(), &expected(&s, &m));
    assert!(diff < 1e-3, "{diff}");
}

#[test]
fn truth_round_trips_through_motion_params_and_par_files() {
    let s = SynthSeries::new(SynthSpec {
        runs: 2,
        volumes_per_run: 30,
        motion: MotionModel::Random(MotionSpec {
            jerks_per_run: 4,
            ..MotionSpec::default()
        }),
        ..small()
    })
    .unwrap();
    let c = s.centre();
    for i in 0..s.len() {
        let back = MotionParams::from_matrix(&s.matrix(i), c);
        for (a, b) in back.0.iter().zip(&s.truth(i).0) {
            assert!(
                (a - b).abs() < 1e-12,
                "volume {i}: {back:?} vs {:?}",
                s.truth(i)
            );
        }
    }
    // Limits hold (2 mm, 2°) and the motion is not trivial.
    let max_rot = 2f64.to_radians();
    assert!(s.trajectory().iter().all(|p| {
        p.rotations().iter().all(|r| r.abs() <= max_rot)
            && p.translations().iter().all(|t| t.abs() <= 2.0)
    }));
    // The .par file written for the session holds exactly these numbers.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let truth = dir.path().join("truth");
    let opts = boldstream::tools::simulate::WriterOptions {
        pace: boldstream::tools::simulate::Pace::Fast,
        truth: boldstream::tools::simulate::TruthLocation::Dir(truth.clone()),
        ..Default::default()
    };
    let plan = boldstream::tools::simulate::FaultPlan::none();
    boldstream::tools::simulate::ScanWriter::new(&out, opts)
        .run(&s, &plan)
        .unwrap();
    let par = read_motion_par(&truth.join("motion_truth.par")).unwrap();
    assert_eq!(par, s.trajectory());
    // truth.tsv: one row per volume with run, index and the centre.
    let tsv = std::fs::read_to_string(truth.join("truth.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = tsv
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len(), 60);
    assert_eq!(rows[35][1..3], ["2", "5"]);
    assert_eq!(rows[35][4], "run-02_vol-0005.nii");
    let cx: f64 = rows[35][12].parse().unwrap();
    assert_eq!(cx, c.x);
    let rx: f64 = rows[35][6].parse().unwrap();
    assert_eq!(rx, s.truth(35).0[0]);
}

#[test]
fn motion_continues_across_runs() {
    let s = SynthSeries::new(SynthSpec {
        runs: 3,
        volumes_per_run: 10,
        ..small()
    })
    .unwrap();
    assert_eq!(s.len(), 30);
    let k = s.key(10);
    assert_eq!((k.run, k.index), (2, 0));
    assert_eq!(s.session_index(k), Some(10));
    // Only the session's first volume is the reference.
    assert_ne!(s.truth(10).0, [0.0; 6]);
    assert_ne!(s.truth(20).0, [0.0; 6]);
    // Each run has its own events; times restart at each run.
    assert!(!s.events(1).is_empty() || s.spec().volumes_per_run as f64 * s.tr() < 25.0);
    assert_eq!(s.frame(10).time_s, 0.0);
}

/// Rician noise: σ measured on background (Rayleigh) and in bright brain
/// (≈ Gaussian) matches `noise × brain mean`.
#[test]
fn noise_sigma_matches_the_request() {
    let spec = SynthSpec {
        dims: [48, 56, 36],
        voxel_mm: [4.0, 4.0, 4.0],
        motion: MotionModel::Still,
        activation: 0.0,
        drift: DriftSpec::none(),
        noise: 0.02,
        ..small()
    };
    let s = SynthSeries::new(spec).unwrap();
    let sigma = s.noise_sigma();
    assert!((sigma / s.brain_mean() - 0.02).abs() < 1e-12);
    let clean = s.clean_volume(2);
    let noisy = s.volume(2);
    let (mut bg_sq, mut bg_n) = (0.0f64, 0usize);
    let (mut res_sq, mut res_sum, mut res_n) = (0.0f64, 0.0f64, 0usize);
    for (c, n) in clean.values().iter().zip(noisy.values()) {
        let (c, n) = (*c as f64, *n as f64);
        if c == 0.0 {
            bg_sq += n * n;
            bg_n += 1;
        } else if c > 20.0 * sigma {
            res_sum += n - c;
            res_sq += (n - c) * (n - c);
            res_n += 1;
        }
    }
    assert!(bg_n > 10_000 && res_n > 5_000, "{bg_n} {res_n}");
    // Rayleigh: E[m²] = 2σ².
    let bg_sigma = (bg_sq / bg_n as f64 / 2.0).sqrt();
    assert!(
        (bg_sigma / sigma - 1.0).abs() < 0.03,
        "{bg_sigma} vs {sigma}"
    );
    let mean = res_sum / res_n as f64;
    let brain_sigma = (res_sq / res_n as f64 - mean * mean).sqrt();
    assert!(
        (brain_sigma / sigma - 1.0).abs() < 0.03,
        "{brain_sigma} vs {sigma}"
    );
    // Different volumes get different noise.
    assert_ne!(s.volume(3).values(), noisy.values());
}

#[test]
fn task_and_drift_scale_the_phantom_exactly() {
    let spec = SynthSpec {
        noise: 0.0,
        motion: MotionModel::Still,
        volumes_per_run: 40,
        tr: 1.0,
        activation: 0.02,
        events: Some(vec![vec![boldstream::tools::simulate::Event {
            onset: 2.0,
            duration: 3.0,
            trial_type: "stimulus".into(),
            stim_id: Some("img-0001".into()),
            modulation: 1.0,
        }]]),
        ..small()
    };
    let s = SynthSeries::new(spec).unwrap();
    let i = (0..40)
        .max_by(|a, b| s.frame(*a).bold.total_cmp(&s.frame(*b).bold))
        .unwrap();
    let f = s.frame(i);
    assert!(f.bold > 0.9 && f.bold <= 1.0, "{}", f.bold);
    assert!(f.drift > 1.0);
    let v0 = s.volume(0);
    let vi = s.volume(i);
    let task: Volume = s.task_map();
    let mut checked = 0;
    for ((a, b), w) in v0.values().iter().zip(vi.values()).zip(task.values()) {
        if *a > 100.0 {
            let ratio = (*b as f64) / (*a as f64) / f.drift;
            let want = 1.0 + 0.02 * (*w as f64) * f.bold;
            assert!((ratio - want).abs() < 1e-5, "{ratio} vs {want}");
            if *w > 0.5 {
                checked += 1;
            }
        }
    }
    assert!(checked > 5, "{checked}");
}

#[test]
fn any_grid_and_storage_order_works() {
    // LAS storage (radiological): FSL does not flip x, the head is still
    // the right way round in the world.
    let mut spec = SynthSpec {
        dims: [20, 22, 16],
        voxel_mm: [7.0, 7.0, 7.5],
        ..small()
    };
    let mut aff = [[0.0; 4]; 4];
    aff[0] = [-7.0, 0.0, 0.0, 66.5];
    aff[1] = [0.0, 7.0, 0.0, -73.5];
    aff[2] = [0.0, 0.0, 7.5, -56.25];
    aff[3] = [0.0, 0.0, 0.0, 1.0];
    spec.affine = Some(aff);
    let las = SynthSeries::new(spec.clone()).unwrap();
    assert!(!las.grid().fsl_flips_x());
    spec.affine = None;
    let ras = SynthSeries::new(spec).unwrap();
    // Same world, mirrored storage: the noise-free images are mirror images.
    let a = las.clean_volume(0);
    let b = ras.clean_volume(0);
    let [nx, ny, nz] = a.grid().dims;
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let d = a.data()[[i, j, k]] - b.data()[[nx - 1 - i, j, k]];
                assert!(d.abs() < 1e-3, "{i} {j} {k}: {d}");
            }
        }
    }
}

/// The truth maps volume → reference: the head's centre of gravity seen in
/// volume i, mapped by M_i, lands on the reference's centre of gravity.
#[test]
fn truth_direction_is_volume_to_reference() {
    let p = [0.02, -0.03, 0.015, 2.0, -1.5, 1.0];
    let mut rows = vec![[0.0; 6]; 6];
    rows[3] = p;
    let s = SynthSeries::new(SynthSpec {
        dims: [48, 56, 40],
        voxel_mm: [4.0, 4.0, 4.0],
        ..clean(MotionModel::Explicit(rows))
    })
    .unwrap();
    let c0 = s.volume(0).fsl_centre_of_gravity();
    let c3 = s.volume(3).fsl_centre_of_gravity();
    let mapped = Grid::apply(&s.matrix(3), c3);
    assert!((mapped - c0).norm() < 0.1, "{mapped:?} vs {c0:?}");
    // The inverse direction would be off by about the motion itself.
    let wrong = Grid::apply(&s.matrix(3).try_inverse().unwrap(), c3);
    assert!((wrong - c0).norm() > 2.0);
}
