//! Betas equal nilearn's FirstLevelModel (OLS and AR(1)) on the committed
//! fixture that tests/parity/glm_compare.py produced: a simulated run
//! realigned by boldstream, masked, with nilearn's beta for every trial
//! computed on the frames and design columns that trial used.
//!
//! Relative error of a beta b (ours a): |a − b| / max(|b|, 1e-3·rms(b)),
//! below 1e-4 for OLS and 1e-3 for AR(1) — the tolerances (the
//! measured error is ~6e-8, float32 output rounding).

use std::path::{Path, PathBuf};

use boldstream::formats::events_tsv::read_events;
use boldstream::glm::design::DesignSpec;
use boldstream::glm::model::{DriftBasis, ModelSpec, NoiseModel};
use boldstream::glm::run::{NotEstimated, RunGlm, Schedule};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/glm")
}

/// A minimal reader for the fixtures' little-endian 2-D .npy files.
fn npy(path: &Path) -> (Vec<f64>, usize, usize) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + hlen]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let dims: Vec<usize> = shape
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data = &bytes[start + hlen..];
    let values: Vec<f64> = if header.contains("'<f4'") {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect()
    } else {
        assert!(header.contains("'<f8'"), "{header}");
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    assert_eq!(values.len(), dims[0] * dims[1]);
    (values, dims[0], dims[1])
}

type Fixture = (RunGlm, Vec<f64>, usize, usize, Vec<[f64; 6]>);

/// The fixture's run model, data and motion.
fn setup(noise: NoiseModel, drift_basis: DriftBasis) -> Fixture {
    let settings: toml::Table = std::fs::read_to_string(dir().join("settings.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let f = |k: &str| settings[k].as_float().unwrap();
    let (data, frames, voxels) = npy(&dir().join("masked.npy"));
    let motion = boldstream::formats::par::read(&dir().join("motion.par")).unwrap();
    let events = read_events(&dir().join("events.tsv")).unwrap();
    let spec = ModelSpec {
        design: DesignSpec {
            tr: f("tr"),
            slice_time_ref: f("slice_time_ref"),
            hrf: settings["hrf"].as_str().unwrap().parse().unwrap(),
            high_pass: f("high_pass"),
            ..DesignSpec::default()
        },
        noise,
        scaling: settings["signal_scaling"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
        ar_bins: 100,
        drift_basis,
    };
    let schedule = Schedule {
        delay: f("delay"),
        min_dof: settings["min_dof"].as_integer().unwrap() as usize,
        ..Schedule::default()
    };
    let glm = RunGlm::new(spec, frames, voxels, schedule, &events);
    (glm, data, frames, voxels, motion)
}

fn check(noise: NoiseModel, drift_basis: DriftBasis, name: &str, tol: f64) {
    let (mut glm, data, frames, voxels, motion) = setup(noise, drift_basis);
    let mut outcomes = Vec::new();
    let mut held: std::collections::BTreeMap<usize, Vec<f32>> = Default::default();
    for t in 0..frames {
        let frame: Vec<f32> = data[t * voxels..(t + 1) * voxels]
            .iter()
            .map(|&v| v as f32)
            .collect();
        held.insert(t, frame);
        outcomes.extend(glm.frame(t, &held[&t], motion[t], false, &held));
    }
    outcomes.extend(glm.finish());

    let (want, trials, nv) = npy(&dir().join(format!("nilearn_{name}.npy")));
    assert_eq!(nv, voxels);
    let index = std::fs::read_to_string(dir().join(format!("nilearn_{name}.tsv"))).unwrap();
    let rows: Vec<(usize, usize, String)> = index
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (
                c[0].parse().unwrap(),
                c[1].parse().unwrap(),
                c[2].to_string(),
            )
        })
        .collect();
    assert_eq!(rows.len(), trials);
    assert!(trials >= 15, "fixture has only {trials} trials");
    let mut worst = 0.0f64;
    for (r, (trial, n_frames, columns)) in rows.iter().enumerate() {
        let o = outcomes
            .iter()
            .find(|o| o.trial == *trial)
            .unwrap_or_else(|| panic!("trial {trial} not estimated"));
        let est = o
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("trial {trial}: {e}"));
        assert_eq!(est.frames, *n_frames, "trial {trial}: frames used");
        assert_eq!(
            est.columns.join(","),
            *columns,
            "trial {trial}: design columns"
        );
        let b = &want[r * voxels..(r + 1) * voxels];
        let rms = (b.iter().map(|v| v * v).sum::<f64>() / voxels as f64).sqrt();
        for (v, (&a, &bv)) in est.beta.iter().zip(b).enumerate() {
            let rel = (a as f64 - bv).abs() / bv.abs().max(1e-3 * rms);
            worst = worst.max(rel);
            assert!(
                rel < tol,
                "{name} trial {trial} voxel {v}: ours {a}, nilearn {bv} (rel {rel:e})"
            );
        }
    }
    eprintln!("{name}: {trials} trials x {voxels} voxels, max relative error {worst:.2e}");
}

#[test]
fn ols_betas_equal_nilearn() {
    check(NoiseModel::Ols, DriftBasis::Run, "ols", 1e-4);
}

/// Real-time MindEye's betas: nilearn refitted on the frames so far, with
/// its own cosine basis for them (tests/parity/glm_sofar_fixture.py).
#[test]
fn frames_so_far_ols_betas_equal_nilearn_refitted_per_trial() {
    check(NoiseModel::Ols, DriftBasis::FramesSoFar, "ols_sofar", 1e-4);
}

#[test]
fn frames_so_far_ar1_betas_equal_nilearn_refitted_per_trial() {
    check(NoiseModel::Ar1, DriftBasis::FramesSoFar, "ar1_sofar", 1e-4);
}

/// The two drift bases differ once a trial's model has drift columns, so
/// the option changes what is computed (and the fixture tells them apart).
#[test]
fn the_run_basis_does_not_match_the_per_trial_refit() {
    let (want, _, _) = npy(&dir().join("nilearn_ols_sofar.npy"));
    let (run, _, _) = npy(&dir().join("nilearn_ols.npy"));
    let worst = want
        .iter()
        .zip(&run)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
        .fold(0.0, f64::max);
    assert!(worst > 1e-2, "the two fixtures agree to {worst:e}");
}

#[test]
fn ar1_betas_equal_nilearn() {
    check(NoiseModel::Ar1, DriftBasis::Run, "ar1", 1e-3);
}

/// A run cut short reports its unestimated trials with a typed reason (the
/// stage decides "the run was cut short" from it, not from the message).
#[test]
fn a_run_cut_short_says_so_in_a_typed_reason() {
    let (mut glm, data, frames, voxels, motion) = setup(NoiseModel::Ols, DriftBasis::Run);
    let cut = frames / 2;
    let mut held: std::collections::BTreeMap<usize, Vec<f32>> = Default::default();
    let mut estimated = 0;
    for t in 0..cut {
        let frame: Vec<f32> = data[t * voxels..(t + 1) * voxels]
            .iter()
            .map(|&v| v as f32)
            .collect();
        held.insert(t, frame);
        estimated += glm
            .frame(t, &held[&t], motion[t], false, &held)
            .iter()
            .filter(|o| o.result.is_ok())
            .count();
    }
    let left = glm.finish();
    assert!(
        estimated > 0 && !left.is_empty(),
        "{estimated} estimated, {} left",
        left.len()
    );
    for o in &left {
        match &o.result {
            Err(NotEstimated::RunEnded {
                last_frame,
                trigger,
                ..
            }) => {
                assert_eq!(*last_frame, Some(cut - 1));
                assert!(*trigger >= cut, "trial {} due at {trigger}", o.trial);
                let text = o.result.as_ref().unwrap_err().to_string();
                assert!(
                    text.contains(&format!("the run ended at frame {}", cut - 1)),
                    "{text}"
                );
            }
            other => panic!("trial {}: {other:?}", o.trial),
        }
    }
}
