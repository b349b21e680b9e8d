//! The BIDS-derivatives sink: a live session leaves fMRIPrep-style
//! confounds in `<session>/derivatives`, and pandas and nilearn read them
//! back equal to the session store (tests/parity/bids_compare.py, run with
//! the project's virtual environment: `make parity-ci` installs numpy,
//! pandas and nilearn into .venv; `make test` does it first).
//!
//! Waits are on the pipeline's own events; no sleeps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use boldstream::config::Config;
use boldstream::ingest::IngestConfig;
use boldstream::pipeline::{Pipeline, PipelineOptions};
use boldstream::sinks::bids::COLUMNS;
use boldstream::tools::simulate::faults::FaultPlan;
use boldstream::tools::simulate::synth::{SynthSeries, SynthSpec};
use boldstream::tools::simulate::writer::{Pace, ScanWriter, TruthLocation, WriterOptions};
use boldstream::types::messages::{IngestEvent, PipelineEvent};

const GUARD: Duration = Duration::from_secs(120);

fn python() -> PathBuf {
    std::env::var_os("BOLDSTREAM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

/// Run two short runs (one volume dropped) through the daemon; return the
/// session folder and each run's realigned parameters in arrival order.
fn session(tmp: &Path) -> (PathBuf, BTreeMap<u32, Vec<[f64; 6]>>) {
    let export = tmp.join("export");
    std::fs::create_dir_all(&export).unwrap();
    let mut ingest = IngestConfig::new(&export);
    ingest.volumes_per_run = Some(20);
    ingest.gap_timeout = 1.0;
    ingest.retry_interval = 0.02;
    ingest.poll_interval = 0.05;
    let session = tmp.join("session-bids01");
    let cfg = Config::embedded(ingest, &session);
    let series = SynthSeries::new(SynthSpec {
        runs: 2,
        volumes_per_run: 20,
        seed: 11,
        ..SynthSpec::default()
    })
    .unwrap();
    let plan = FaultPlan::parse("drop=5").unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let pipeline = Pipeline::start(&cfg, "# test\n", PipelineOptions::observed_by(tx))
        .expect("pipeline starts");
    let opts = WriterOptions {
        pace: Pace::Interval(Duration::from_millis(20)),
        truth: TruthLocation::Dir(tmp.join("truth")),
        ..WriterOptions::default()
    };
    let mut params: BTreeMap<u32, Vec<[f64; 6]>> = BTreeMap::new();
    std::thread::scope(|s| {
        let writer = s.spawn(|| ScanWriter::new(&export, opts).run(&series, &plan));
        let deadline = Instant::now() + GUARD;
        let mut ended = 0;
        while ended < 2 {
            let ev = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("both runs end within the guard");
            match ev {
                PipelineEvent::Ingest(IngestEvent::RunEnded { .. }) => ended += 1,
                PipelineEvent::Realigned(r) => {
                    params.entry(r.key.run).or_default().push(r.params.0)
                }
                _ => {}
            }
        }
        writer.join().unwrap().expect("simulation ran");
    });
    let summary = pipeline.stop();
    assert_eq!(summary.store_errors, 0);
    (session, params)
}

#[test]
fn a_session_leaves_fmriprep_style_confounds_that_pandas_and_nilearn_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (session, params) = session(tmp.path());
    let root = session.join("derivatives");
    let desc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("dataset_description.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(desc["DatasetType"], "derivative");
    assert_eq!(params.len(), 2);
    for (run, want) in &params {
        let tsv = root.join(format!(
            "sub-sessionbids01/func/sub-sessionbids01_run-{run:02}_desc-confounds_timeseries.tsv"
        ));
        let text =
            std::fs::read_to_string(&tsv).unwrap_or_else(|e| panic!("{}: {e}", tsv.display()));
        let mut lines = text.lines();
        assert_eq!(lines.next().unwrap(), COLUMNS.join("\t"));
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
        assert_eq!(
            rows.len(),
            want.len(),
            "run {run}: one row per realigned volume"
        );
        assert_eq!(&rows[0][6..], ["n/a", "n/a", "n/a"], "run {run}: first row");
        for (i, (row, p)) in rows.iter().zip(want).enumerate() {
            let v: Vec<f64> = row[..6].iter().map(|c| c.parse().unwrap()).collect();
            // fMRIPrep order: translations, then rotations; MCFLIRT's is the reverse.
            let mcflirt = [v[3], v[4], v[5], v[0], v[1], v[2]];
            for (a, b) in mcflirt.iter().zip(p) {
                assert!(
                    (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                    "run {run} row {i}: {a} vs {b}"
                );
            }
            if i > 0 {
                for c in &row[6..] {
                    assert!(
                        c.parse::<f64>().is_ok_and(f64::is_finite),
                        "run {run} row {i}: {row:?}"
                    );
                }
            }
        }
        assert!(tsv.with_extension("json").is_file());
    }
    // The run with the dropped volume has one row fewer.
    assert_eq!(params[&1].len() + 1, params[&2].len());

    let py = python();
    let out = std::process::Command::new(&py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/bids_compare.py"))
        .arg(&session)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}: run `make parity-ci` (numpy, pandas, nilearn in .venv) or set BOLDSTREAM_PYTHON", py.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "pandas/nilearn read-back failed (needs numpy, pandas, nilearn: `make parity-ci`):\n{text}"
    );
    assert!(text.contains("BIDS derivatives agree"), "{text}");
}
