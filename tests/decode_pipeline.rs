//! The whole demo on a small scale: a simulated subject is calibrated, a
//! later session (head moved) is followed live by the daemon, every trial
//! after the warm-up run is retrieved and reconstructed, and the report is
//! written from it.

use std::path::PathBuf;

use boldstream::tools::demo::{DemoOptions, run_demo};

#[test]
fn demo_calibrates_decodes_every_trial_and_writes_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = DemoOptions {
        out: tmp.path().to_path_buf(),
        calibration_runs: 3,
        runs: 2,
        images_per_run: 30,
        blank_trials: 2,
        test_images: 20,
        speed: 40.0,
        // Faults change which frames exist, and with them the betas; this
        // test wants the same numbers every time.
        no_faults: true,
        model: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("onnx/demo"),
        // A port of its own: a fixed one may be in use beside the tests.
        http: "127.0.0.1:0".into(),
        ..DemoOptions::default()
    };
    let base = tmp.path().join("demo");
    let r = run_demo(&opts, &base).unwrap();
    println!(
        "calibration {} trials, {} of {} voxels selected, cv R² {:.3}; session {:?}; curve {:?}; cross-session error {:?}",
        r.calibration_trials,
        r.calibration.selected,
        r.calibration.region_voxels,
        r.calibration.cv_r2,
        r.session,
        r.learning_curve
            .iter()
            .map(|(l, n, m)| (l.clone(), *n, m.top1, m.two_way_pixcorr))
            .collect::<Vec<_>>(),
        r.cross_session_error
    );

    // The live session was served on the loopback address asked for.
    assert!(
        r.dashboard
            .is_some_and(|a| a.ip().is_loopback() && a.port() != 0),
        "{:?}",
        r.dashboard
    );

    // Calibration: every image trial of the calibration runs has a beta.
    assert_eq!(r.calibration_trials, 3 * 30);
    assert_eq!(r.calibration.region_voxels, 2 * 2000);

    // The head moved between sessions; the registration found where.
    let (deg, mm) = r
        .cross_session_error
        .expect("cross-session registration ran");
    assert!(deg < 0.2 && mm < 0.2, "{deg} deg, {mm} mm");

    // Every image trial of the decoded run: a beta, a retrieval and a
    // reconstruction; nothing skipped.
    assert_eq!(r.image_trials, 30);
    assert_eq!(r.betas, r.image_trials);
    assert_eq!(r.decoded, r.image_trials);
    assert_eq!(r.reconstructed, r.decoded);
    assert_eq!(r.skipped, 0);

    // Decoding beats chance among the session's 20 held-out images.
    let s = &r.session;
    assert_eq!(s.candidates, 20);
    assert_eq!(s.trials, r.decoded);
    assert!((s.chance - 0.05).abs() < 1e-12);
    assert!(s.top1 >= 2.0 * s.chance, "top-1 {}", s.top1);
    assert!(s.two_way_pixcorr > 0.6, "two-way {}", s.two_way_pixcorr);

    // The learning curve: three fits on growing shares of the calibration.
    let n: Vec<usize> = r.learning_curve.iter().map(|(_, n, _)| *n).collect();
    assert_eq!(n.len(), 3);
    assert!(
        n[0] < n[1] && n[1] < n[2] && n[2] == r.calibration_trials,
        "{n:?}"
    );

    // The report: one row per trial, its images copied beside the page,
    // and the metrics table.
    let html = std::fs::read_to_string(&r.report).unwrap();
    let dir = r.report.parent().unwrap();
    let rows = html.matches("<tr><td>2</td><td>").count();
    assert_eq!(rows, r.decoded, "one row per trial of run 2");
    let imgs = std::fs::read_dir(dir.join("img")).unwrap().count();
    // Each trial's reconstruction plus its stimulus and candidates.
    assert!(imgs >= r.reconstructed + 20, "{imgs} images");
    let tsv = std::fs::read_to_string(dir.join("metrics.tsv")).unwrap();
    // Header, run 2, the session, three learning-curve points.
    assert_eq!(tsv.lines().count(), 6, "{tsv}");
    assert!(html.contains("<svg"), "the motion plot");

    // The session store has every output, row for row.
    let store = r.pipeline.session_dir.join("decode");
    let count = |f: &str| {
        std::fs::read_to_string(store.join(f))
            .unwrap()
            .lines()
            .count()
            - 1
    };
    assert_eq!(count("retrieval.tsv"), r.decoded);
    assert_eq!(count("recon.tsv"), r.reconstructed);
    assert_eq!(count("skipped.tsv"), 0);
    assert!(r.pipeline.session_dir.join("cross_session.tsv").is_file());
    let subject = r.calibration.dir.clone();
    for f in [
        "subject.toml",
        "adapter.onnx",
        "mask.nii.gz",
        "reference.nii.gz",
        "zscore.npy",
        "voxels.tsv",
        "calibration.toml",
    ] {
        assert!(subject.join(f).is_file(), "{f} in the subject folder");
    }
}
