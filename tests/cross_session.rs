//! The cross-session transform: a later session's head sits differently in
//! the scanner; the realign stage registers the calibration reference to
//! the session reference once (`register_target`) and resamples every live
//! volume onto the calibration grid, where the subject's mask lives.
//!
//! The simulator knows where the session's tissue was in calibration
//! (`calibration_from_session`), so the registered world map is checked
//! against the truth, and the realigned voxels against the calibration
//! reference itself.

use std::path::{Path, PathBuf};

use boldstream::formats::nifti::{WriteOptions, read_volume, write_volume};
use boldstream::realign::register::{Registration, RegistrationOptions};
use boldstream::realign::{RealignConfig, Realigner, register_across_sessions};
use boldstream::stage::Stage;
use boldstream::tools::simulate::{MotionModel, MotionSpec, SynthSeries, SynthSpec};
use boldstream::types::mask::SessionMask;
use boldstream::types::messages::CrossSession;
use boldstream::types::messages::{IngestEvent, IngestedVolume, PipelineEvent, VolumeKey};
use boldstream::types::volume::Volume;
use nalgebra::Matrix4;

// 3 mm voxels, and tissue edges as smooth as a voxel: the simulator samples
// the phantom at voxel centres, so with its default 1 mm edges (or 6 mm
// voxels) a sub-voxel shift changes the sampled image more than any
// interpolation of it can undo, and neither the map nor the correlation
// could be checked to the precision asked here.
const DIMS: [usize; 3] = [64, 64, 36];
const VOXEL_MM: [f64; 3] = [3.0, 3.0, 3.0];
const EDGE_MM: f64 = 3.0;
const LIVE_VOLUMES: usize = 4;

/// The later session's head pose: ~1.5° and ~2.5 mm from calibration.
fn live_pose() -> [f64; 6] {
    let d = 1.0f64.to_radians();
    [0.8 * d, -d, 0.7 * d, 1.5, -1.5, 1.2]
}

fn spec(seed: u64, head_pose: [f64; 6], volumes: usize, noise: f64) -> SynthSpec {
    SynthSpec {
        dims: DIMS,
        voxel_mm: VOXEL_MM,
        volumes_per_run: volumes,
        noise,
        activation: 0.0,
        motion: MotionModel::Random(MotionSpec {
            max_mm: 0.5,
            max_deg: 0.5,
            jerks_per_run: 0,
            ..MotionSpec::default()
        }),
        edge_mm: EDGE_MM,
        seed,
        head_pose,
        ..SynthSpec::default()
    }
}

/// The calibration session (pose zero) and a later one (moved head). The
/// later session is the same subject (the phantom does not depend on the
/// seed) with its own noise and motion: a different seed, as two real
/// sessions share no noise. `noise` is the thermal noise sd as a fraction
/// of the mean brain intensity.
fn sessions(noise: f64) -> (SynthSeries, SynthSeries) {
    let cal = SynthSeries::new(spec(11, [0.0; 6], 1, noise)).unwrap();
    let live = SynthSeries::new(spec(12, live_pose(), LIVE_VOLUMES, noise)).unwrap();
    (cal, live)
}

fn ingested(i: u32, volume: Volume) -> IngestEvent {
    IngestEvent::Volume(Box::new(IngestedVolume::now(
        VolumeKey { run: 1, index: i },
        PathBuf::from(format!("live-{i:03}.nii")),
        volume,
    )))
}

fn feed(realigner: &mut Realigner, live: &SynthSeries) -> Vec<PipelineEvent> {
    let mut out = Vec::new();
    for i in 0..live.len() {
        realigner.handle(ingested(i as u32, live.volume(i)), &mut |e| out.push(e));
    }
    out
}

fn write(path: &Path, v: &Volume) {
    write_volume(path, v, &WriteOptions::default()).unwrap();
}

fn m4(rows: &[[f64; 4]; 4]) -> Matrix4<f64> {
    Matrix4::from_fn(|r, c| rows[r][c])
}

/// The true world → world map from the calibration reference's frame to
/// this session's reference frame: both sessions share the grid, and the
/// simulator knows where the session's FSL frame sits in the calibration's.
fn truth_world(live: &SynthSeries) -> Matrix4<f64> {
    let grid = live.grid();
    let (a, f) = (grid.affine, grid.vox_to_fsl());
    let inv = |m: Matrix4<f64>| m.try_inverse().unwrap();
    a * inv(f) * inv(live.calibration_from_session()) * f * inv(a)
}

/// Residual rotation (degrees) and translation (mm) of `est⁻¹ · truth`.
fn residual(est: &Matrix4<f64>, truth: &Matrix4<f64>) -> (f64, f64) {
    let d = est.try_inverse().unwrap() * truth;
    let r = d.fixed_view::<3, 3>(0, 0).into_owned();
    let angle = ((r.trace() - 1.0) / 2.0)
        .clamp(-1.0, 1.0)
        .acos()
        .to_degrees();
    (angle, d.fixed_view::<3, 1>(0, 3).norm())
}

fn rotation_deg(m: &Matrix4<f64>) -> f64 {
    let r = m.fixed_view::<3, 3>(0, 0).into_owned();
    ((r.trace() - 1.0) / 2.0)
        .clamp(-1.0, 1.0)
        .acos()
        .to_degrees()
}

fn pearson(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n = a.len() as f64;
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt()
}

struct Setup {
    _dir: tempfile::TempDir,
    cal: SynthSeries,
    live: SynthSeries,
    target: PathBuf,
    mask: PathBuf,
}

/// Calibration volume 0 (the target grid) and its brain mask, in files.
fn setup(noise: f64) -> Setup {
    let (cal, live) = sessions(noise);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("calibration_reference.nii");
    write(&target, &cal.volume(0));
    let brain = SessionMask::compute_epi(&cal.volume(0)).unwrap();
    let mask = dir.path().join("calibration_brain.nii");
    write(&mask, &brain.to_volume());
    Setup {
        _dir: dir,
        cal,
        live,
        target,
        mask,
    }
}

#[test]
fn registration_recovers_the_session_pose() {
    // SNR 50, as the simulator's default.
    let s = setup(0.02);
    let truth = truth_world(&s.live);
    println!(
        "session pose: {:.3} deg, {:.3} mm (truth map rotation {:.3} deg)",
        {
            let p = live_pose();
            (p[0] * p[0] + p[1] * p[1] + p[2] * p[2])
                .sqrt()
                .to_degrees()
        },
        {
            let p = live_pose();
            (p[3] * p[3] + p[4] * p[4] + p[5] * p[5]).sqrt()
        },
        rotation_deg(&truth)
    );
    // The test would be empty if the sessions were aligned already.
    let (r0, t0) = residual(&Matrix4::identity(), &truth);
    assert!(
        r0 > 1.0 && t0 > 1.0,
        "identity is already {r0} deg, {t0} mm off"
    );

    let mut realigner = Realigner::new(RealignConfig {
        target_grid: Some(s.target.clone()),
        register_target: true,
        ..RealignConfig::default()
    })
    .unwrap();
    assert!(
        realigner.cross_session().is_none(),
        "nothing registered yet"
    );
    let events = feed(&mut realigner, &s.live);
    let realigned = events
        .iter()
        .filter(|e| matches!(e, PipelineEvent::Realigned(_)))
        .count();
    assert_eq!(realigned, LIVE_VOLUMES, "every live volume is realigned");
    let c: CrossSession = realigner
        .cross_session()
        .expect("register_target made a cross-session map")
        .clone();
    let announced: Vec<&Option<CrossSession>> = events
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::ReferenceReady { cross_session, .. } => Some(cross_session),
            _ => None,
        })
        .collect();
    assert_eq!(announced.len(), 1, "the reference is announced once");
    let a = announced[0]
        .as_ref()
        .expect("ReferenceReady carries the map");
    assert_eq!(a.target_to_reference, c.target_to_reference);
    assert!(
        a.target.contains("calibration_reference.nii"),
        "{}",
        a.target
    );

    let est = m4(&c.target_to_reference);
    for c in 0..4 {
        let want = if c == 3 { 1.0 } else { 0.0 };
        assert!(
            (est[(3, c)] - want).abs() < 1e-9,
            "bottom row {:?}",
            est.row(3)
        );
    }
    let (dr, dt) = residual(&est, &truth);
    let p = c.params.0;
    println!(
        "cross-session map in {:.1} ms: params rot {:.3} {:.3} {:.3} deg, trans {:.3} {:.3} {:.3} mm; \
         estimated rotation {:.3} deg; residual vs truth {dr:.4} deg, {dt:.4} mm (identity: {r0:.3} deg, {t0:.3} mm)",
        c.seconds * 1e3,
        p[0].to_degrees(),
        p[1].to_degrees(),
        p[2].to_degrees(),
        p[3],
        p[4],
        p[5],
        rotation_deg(&est),
    );
    assert!(dr < 0.1, "residual rotation {dr} deg");
    assert!(dt < 0.1, "residual translation {dt} mm");
    // The parameters describe the same rotation as the matrix.
    let angle_params = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2])
        .sqrt()
        .to_degrees();
    assert!(
        (angle_params - rotation_deg(&est)).abs() < 0.05,
        "{angle_params} vs {}",
        rotation_deg(&est)
    );

    // The public function gives the same map from the same inputs.
    let reference = s.live.volume(0);
    let registration = Registration::new(&reference, RegistrationOptions::default()).unwrap();
    let target = read_volume(&s.target).unwrap();
    let (x, _) = register_across_sessions(&registration, reference.grid(), &target).unwrap();
    let (dr2, dt2) = residual(&x, &est);
    assert!(dr2 < 1e-6 && dt2 < 1e-6, "{dr2} deg, {dt2} mm");
}

/// Live volume 0 realigned onto the calibration grid (through `config`),
/// and the calibration reference, both over the calibration brain mask.
fn realigned_volume0(s: &Setup, config: RealignConfig) -> (Vec<f32>, Vec<f32>) {
    let mut realigner = Realigner::new(config).unwrap();
    let events = feed(&mut realigner, &s.live);
    let mask = realigner.mask().expect("the reference is set").clone();
    let on_file = SessionMask::from_image(&read_volume(&s.mask).unwrap(), s.cal.grid()).unwrap();
    assert_eq!(
        mask.indices(),
        on_file.indices(),
        "the configured mask is used"
    );
    let v0 = events
        .iter()
        .find_map(|e| match e {
            PipelineEvent::Realigned(r) if r.key.index == 0 => Some(r.masked.to_vec()),
            _ => None,
        })
        .expect("volume 0 realigned");
    assert_eq!(v0.len(), mask.len());
    let mut reference = Vec::new();
    mask.gather_into(s.cal.volume(0).values(), &mut reference);
    (v0, reference)
}

#[test]
fn live_volumes_land_on_the_calibration_grid() {
    // A correlation over voxels is bounded by the thermal noise of both
    // images (at SNR 50 two perfectly aligned volumes of this phantom
    // correlate at ~0.98): SNR 200 here, so that 0.99 measures alignment.
    let s = setup(0.005);
    let base = RealignConfig {
        target_grid: Some(s.target.clone()),
        mask: Some(s.mask.clone()),
        ..RealignConfig::default()
    };
    let (registered, reference) = realigned_volume0(
        &s,
        RealignConfig {
            register_target: true,
            ..base.clone()
        },
    );
    let (unregistered, _) = realigned_volume0(
        &s,
        RealignConfig {
            register_target: false,
            target_to_reference: None,
            ..base.clone()
        },
    );
    // The ceiling: the true cross-session map given as a fixed transform.
    let truth = truth_world(&s.live);
    let (ideal, _) = realigned_volume0(
        &s,
        RealignConfig {
            register_target: false,
            target_to_reference: Some(std::array::from_fn(|r| {
                std::array::from_fn(|c| truth[(r, c)])
            })),
            ..base
        },
    );
    let r_reg = pearson(&registered, &reference);
    let r_unreg = pearson(&unregistered, &reference);
    let r_ideal = pearson(&ideal, &reference);
    let rms = |a: &[f32]| {
        (a.iter()
            .zip(&reference)
            .map(|(&x, &y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            / a.len() as f64)
            .sqrt()
    };
    println!(
        "{} mask voxels: correlation with the calibration reference {r_reg:.5} registered, \
         {r_unreg:.5} unregistered, {r_ideal:.5} through the true map; rms difference {:.2} vs \
         {:.2} (true map {:.2}; brain mean {:.1})",
        reference.len(),
        rms(&registered),
        rms(&unregistered),
        rms(&ideal),
        s.cal.brain_mean()
    );
    assert!(r_reg > 0.99, "registered correlation {r_reg}");
    assert!(
        r_reg > r_ideal - 1e-3,
        "registered {r_reg} vs the true map's {r_ideal}"
    );
    assert!(
        r_reg > r_unreg,
        "registration should help: {r_reg} vs {r_unreg}"
    );
    assert!(
        rms(&registered) < 0.75 * rms(&unregistered),
        "{} vs {}",
        rms(&registered),
        rms(&unregistered)
    );
}

#[test]
fn register_target_without_a_target_grid_is_an_error() {
    let (_, live) = sessions(0.02);
    let dir = tempfile::tempdir().unwrap();
    // A configured reference is prepared at start-up: the error comes then.
    let reference = dir.path().join("reference.nii");
    write(&reference, &live.volume(0));
    let err = Realigner::new(RealignConfig {
        reference: Some(reference),
        register_target: true,
        target_grid: None,
        ..RealignConfig::default()
    })
    .err()
    .expect("register_target without target_grid must fail");
    let msg = err.to_string();
    println!("configured reference: {msg}");
    assert!(msg.contains("target_grid"), "{msg}");

    // With the first volume as the reference, that volume is refused with
    // the same reason, and nothing is realigned.
    let mut realigner = Realigner::new(RealignConfig {
        register_target: true,
        ..RealignConfig::default()
    })
    .unwrap();
    let events = feed(&mut realigner, &live);
    let failed: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::RealignFailed { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), live.len(), "every volume is refused");
    println!("first volume as reference: {}", failed[0]);
    assert!(
        failed.iter().all(|r| r.contains("target_grid")),
        "{failed:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, PipelineEvent::Realigned(_)))
    );
    assert!(realigner.cross_session().is_none());
    assert!(!realigner.has_reference());
}
