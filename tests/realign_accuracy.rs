//! Realignment accuracy against the simulator's known motion.
//!
//! Noise level: Rician thermal noise with σ = 2 % of the mean brain
//! intensity (SNR 50, `SynthSpec::noise = 0.02`), plus 1 % linear scanner
//! drift, a slow 0.3 % wobble and 2 % task activation — a realistic 3 T BOLD
//! series. Motion: random drift plus sudden jerks, limited to 2 mm / 2° per
//! axis (three jerks per run), and to 4 mm / 4° (five jerks) in the last test.

use boldstream::realign::realign_series;
use boldstream::realign::register::RegistrationOptions;
use boldstream::tools::simulate::motion::{MotionModel, MotionSpec};
use boldstream::tools::simulate::synth::{SynthSeries, SynthSpec};

struct Errors {
    rms_deg: f64,
    rms_mm: f64,
    max_deg: f64,
    max_mm: f64,
    truth_max_deg: f64,
    truth_max_mm: f64,
}

fn measure(spec: SynthSpec) -> Errors {
    let series = SynthSeries::new(spec).expect("valid spec");
    let volumes: Vec<_> = (0..series.len()).map(|i| series.volume(i)).collect();
    let est = realign_series(&volumes, None, RegistrationOptions::default()).expect("realigns");
    let (mut sr, mut st, mut mr, mut mt, mut tr, mut tt) =
        (0.0, 0.0, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (i, (p, _)) in est.iter().enumerate() {
        let truth = series.truth(i).0;
        for a in 0..3 {
            let e = (p.0[a] - truth[a]).to_degrees();
            sr += e * e;
            mr = mr.max(e.abs());
            tr = tr.max(truth[a].to_degrees().abs());
            let e = p.0[a + 3] - truth[a + 3];
            st += e * e;
            mt = mt.max(e.abs());
            tt = tt.max(truth[a + 3].abs());
        }
    }
    let n = (3 * est.len()) as f64;
    Errors {
        rms_deg: (sr / n).sqrt(),
        rms_mm: (st / n).sqrt(),
        max_deg: mr,
        max_mm: mt,
        truth_max_deg: tr,
        truth_max_mm: tt,
    }
}

fn check(label: &str, e: &Errors) {
    eprintln!(
        "{label}: RMS error {:.4} deg, {:.4} mm (max {:.4} deg, {:.4} mm) on motion up to {:.2} deg, {:.2} mm",
        e.rms_deg, e.rms_mm, e.max_deg, e.max_mm, e.truth_max_deg, e.truth_max_mm
    );
    // The motion must be real for the test to mean anything.
    assert!(
        e.truth_max_mm > 0.5 && e.truth_max_deg > 0.5,
        "{label}: trajectory too small"
    );
    assert!(
        e.rms_deg < 0.1,
        "{label}: rotation RMS error {} deg",
        e.rms_deg
    );
    assert!(
        e.rms_mm < 0.1,
        "{label}: translation RMS error {} mm",
        e.rms_mm
    );
}

#[test]
fn rms_error_below_a_tenth_at_3mm_snr50() {
    let spec = SynthSpec {
        volumes_per_run: 60,
        seed: 7,
        ..SynthSpec::default()
    };
    check("64x64x36 @3 mm, SNR 50", &measure(spec));
}

#[test]
fn rms_error_below_a_tenth_at_2mm_snr50() {
    let spec = SynthSpec {
        dims: [104, 104, 72],
        voxel_mm: [2.0, 2.0, 2.0],
        volumes_per_run: 16,
        seed: 11,
        ..SynthSpec::default()
    };
    check("104x104x72 @2 mm, SNR 50", &measure(spec));
}

#[test]
fn rms_error_below_a_tenth_with_large_motion_and_jerks() {
    // Up to 4 mm / 4 degrees with five sudden jerks per run: the pyramid has
    // to recapture after each jerk.
    let spec = SynthSpec {
        volumes_per_run: 60,
        seed: 5,
        motion: MotionModel::Random(MotionSpec {
            max_mm: 4.0,
            max_deg: 4.0,
            jerks_per_run: 5,
            ..MotionSpec::default()
        }),
        ..SynthSpec::default()
    };
    let e = measure(spec);
    check("64x64x36 @3 mm, SNR 50, large motion", &e);
    assert!(
        e.truth_max_deg > 1.5 || e.truth_max_mm > 1.5,
        "motion not large"
    );
}
