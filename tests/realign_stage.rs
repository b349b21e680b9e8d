//! The realign stage as configured: a given reference image, and output on
//! another grid (the calibration session's) through a fixed world transform,
//! reached in one resampling.

use std::path::PathBuf;

use boldstream::formats::nifti::{WriteOptions, write_volume};
use boldstream::realign::resample::Resampler;
use boldstream::realign::{RealignConfig, Realigner};
use boldstream::stage::Stage;
use boldstream::tools::simulate::motion::MotionModel;
use boldstream::tools::simulate::synth::{SynthSeries, SynthSpec};
use boldstream::types::mask::SessionMask;
use boldstream::types::messages::{IngestEvent, IngestedVolume, PipelineEvent, VolumeKey};
use boldstream::types::transform::ref_to_volume_from_par;
use boldstream::types::volume::Volume;
use nalgebra::Matrix4;

fn ingested(i: u32, volume: Volume) -> IngestEvent {
    IngestEvent::Volume(Box::new(IngestedVolume::now(
        VolumeKey { run: 1, index: i },
        PathBuf::from(format!("vol-{i}.nii")),
        volume,
    )))
}

fn run(realigner: &mut Realigner, events: Vec<IngestEvent>) -> Vec<PipelineEvent> {
    let mut out = Vec::new();
    for e in events {
        realigner.handle(e, &mut |p| out.push(p));
    }
    out
}

#[test]
fn a_configured_reference_and_target_grid_are_used_in_one_resampling() {
    let d = 1.5f64.to_radians();
    let spec = SynthSpec {
        volumes_per_run: 3,
        noise: 0.0,
        motion: MotionModel::Explicit(vec![
            [0.0; 6],
            [d, -d, 0.5 * d, 1.2, -0.8, 0.6],
            [0.0, 0.0, d, -1.0, 0.0, 0.0],
        ]),
        ..SynthSpec::default()
    };
    let series = SynthSeries::new(spec).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let reference_path = tmp.path().join("reference.nii");
    write_volume(&reference_path, &series.volume(0), &WriteOptions::default()).unwrap();
    // The "calibration" grid: coarser voxels, shifted and differently sized,
    // and a world transform of 4 mm along y between the two sessions.
    let target = Volume::zeros(boldstream::types::volume::Grid {
        dims: [50, 52, 30],
        pixdim: [3.5, 3.5, 3.5],
        affine: Matrix4::new(
            3.5, 0.0, 0.0, -86.0, 0.0, 3.5, 0.0, -90.0, 0.0, 0.0, 3.5, -50.0, 0.0, 0.0, 0.0, 1.0,
        ),
    });
    let target_path = tmp.path().join("calibration_ref.nii");
    write_volume(&target_path, &target, &WriteOptions::default()).unwrap();
    let mut x = [[0.0; 4]; 4];
    for (a, row) in x.iter_mut().enumerate() {
        row[a] = 1.0;
    }
    x[1][3] = 4.0;
    // Mask: a block in the middle of the target grid.
    let mut inside = vec![false; 50 * 52 * 30];
    for k in 8..22 {
        for j in 10..40 {
            for i in 12..38 {
                inside[i + 50 * (j + 52 * k)] = true;
            }
        }
    }
    let mask = SessionMask::from_file_order(target.grid().clone(), &inside).unwrap();
    let mask_path = tmp.path().join("mask.nii");
    write_volume(&mask_path, &mask.to_volume(), &WriteOptions::default()).unwrap();

    let mut realigner = Realigner::new(RealignConfig {
        reference: Some(reference_path.clone()),
        mask: Some(mask_path),
        target_grid: Some(target_path),
        target_to_reference: Some(x),
        ..RealignConfig::default()
    })
    .unwrap();
    let out = run(
        &mut realigner,
        (0..3)
            .map(|i| ingested(i as u32, series.volume(i)))
            .collect(),
    );

    match &out[0] {
        PipelineEvent::ReferenceReady {
            source,
            mask_voxels,
            ..
        } => {
            assert!(source.contains("reference.nii"), "{source}");
            assert_eq!(*mask_voxels, mask.len());
        }
        other => panic!("first event should announce the reference, got {other:?}"),
    }
    let realigned: Vec<_> = out
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Realigned(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(realigned.len(), 3);
    let centre = realigner.centre().unwrap();
    let world = Matrix4::from_fn(|r, c| x[r][c]);
    let direct = Resampler::onto_grid(target.grid(), series.grid(), &world);
    for (i, r) in realigned.iter().enumerate() {
        // Motion is estimated against the configured reference...
        let truth = series.truth(i).0;
        for a in 0..3 {
            assert!(
                (r.params.0[a] - truth[a]).to_degrees().abs() < 0.05,
                "vol {i} rot {a}"
            );
            assert!(
                (r.params.0[a + 3] - truth[a + 3]).abs() < 0.05,
                "vol {i} trans {a}"
            );
        }
        // ...and the output is the one-step resampling onto the target grid
        // at the true motion (to interpolation accuracy), in mask order.
        let mut want = Vec::new();
        direct.resample_masked(
            &series.volume(i),
            &ref_to_volume_from_par(&series.truth(i), centre),
            &mask,
            &mut want,
        );
        assert_eq!(r.masked.len(), want.len());
        let rms = (r
            .masked
            .iter()
            .zip(&want)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / want.len() as f64)
            .sqrt();
        let scale = want.iter().map(|&v| v.abs() as f64).sum::<f64>() / want.len() as f64;
        assert!(scale > 100.0, "mask should cover the head");
        assert!(
            rms < 0.01 * scale,
            "vol {i}: RMS difference {rms} vs mean {scale}"
        );
    }
}

#[test]
fn a_reference_file_that_does_not_exist_fails_at_start() {
    let err = Realigner::new(RealignConfig {
        reference: Some(PathBuf::from("/nonexistent/ref.nii")),
        ..RealignConfig::default()
    })
    .err()
    .expect("must fail");
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/ref.nii"), "{msg}");
}
