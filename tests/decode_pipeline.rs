//! Decoding through the whole daemon: the demo's simulated subject sees
//! images from the demo model's bank, the simulator writes the scans, and
//! ingest → realign → GLM → decode → store retrieve and reconstruct every
//! trial after the warm-up run. Needs the ONNX Runtime `make test` installs.

use std::path::PathBuf;

use boldstream::demo::{DemoOptions, run_demo};

#[test]
fn the_daemon_retrieves_the_images_the_simulated_subject_saw() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = DemoOptions {
        out: tmp.path().to_path_buf(),
        runs: 2,
        volumes: 80,
        speed: 40.0,
        // Faults change which frames exist, and with them the betas; this
        // test wants the same numbers every time.
        no_faults: true,
        model: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("onnx/demo"),
        ..DemoOptions::default()
    };
    let base = tmp.path().join("demo");
    let report = run_demo(&opts, &base).unwrap();
    let d = report.decode.clone().expect("decoding was on");
    println!("{d:?}");
    assert!(
        report.trials >= 10,
        "only {} trials after warm-up",
        report.trials
    );
    assert_eq!(report.betas, report.trials);
    assert_eq!(
        d.decoded, report.trials,
        "every non-warm-up trial is retrieved"
    );
    assert_eq!(
        d.reconstructed, d.decoded,
        "and reconstructed (policy queue)"
    );
    assert_eq!(d.skipped, 0);
    assert_eq!(d.bank, 150);
    // Chance is 1/150 for top-1 and 5/150 for top-5.
    assert!(d.top1 * 5 >= d.decoded, "top-1 {} of {}", d.top1, d.decoded);
    assert!(d.top5 * 2 >= d.decoded, "top-5 {} of {}", d.top5, d.decoded);

    // The session store has every output, row for row.
    let dir = report.pipeline.session_dir.join("decode");
    let rows = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .lines()
            .count()
            - 1
    };
    assert_eq!(rows("retrieval.tsv"), d.decoded);
    assert_eq!(rows("recon.tsv"), d.reconstructed);
    assert_eq!(rows("steps.tsv"), d.reconstructed * (20 + 12 + 1));
    assert_eq!(rows("models.tsv"), 5);
    assert_eq!(rows("skipped.tsv"), 0);
    let pngs = std::fs::read_dir(dir.join("recon")).unwrap().count();
    assert_eq!(pngs, d.reconstructed);
    let (_, n, e) =
        boldstream::sinks::npy::decode_2d(&std::fs::read(dir.join("query.npy")).unwrap()).unwrap();
    assert_eq!((n, e), (d.decoded, 64));
    let recon = std::fs::read_to_string(dir.join("recon.tsv")).unwrap();
    for line in recon.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(&f[4..6], ["0", "0"], "seeds recorded: {line}");
        let (img, chw) = boldstream::sinks::image::read_png(&dir.join(f[3])).unwrap();
        assert_eq!(chw, (3, 64, 64));
        assert!(img.iter().any(|&v| v > 0.0));
    }
}
