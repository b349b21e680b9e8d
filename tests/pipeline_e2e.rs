//! Simulator → daemon, end to end, through the real export folder.
//!
//! The simulator writes a synthetic session with every fault it knows
//! (slow non-atomic writes, drops, duplicates by copy and by rewrite,
//! swaps, late files and five kinds of corrupt file); the daemon follows
//! it live. The daemon's outputs — events, ring buffers and the session
//! store — must hold every good volume once, in order, with the bad ones
//! quarantined with a reason and their indices marked missing.
//!
//! Waits are on the pipeline's own events, with a generous guard that
//! only fails the test; no sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use boldstream::config::Config;
use boldstream::ingest::IngestConfig;
use boldstream::pipeline::{Pipeline, PipelineOptions, PipelineSummary};
use boldstream::realign::realign_series;
use boldstream::tools::simulate::faults::FaultPlan;
use boldstream::tools::simulate::naming::Naming;
use boldstream::tools::simulate::replay::ReplaySeries;
use boldstream::tools::simulate::synth::{SynthSeries, SynthSpec};
use boldstream::tools::simulate::writer::{
    Pace, ScanWriter, TruthLocation, VolumeSource, WriterOptions,
};
use boldstream::types::messages::{IngestEvent, PipelineEvent, RealignedVolume, VolumeKey};
use crossbeam_channel::{Receiver, unbounded};

const GUARD: Duration = Duration::from_secs(120);

fn config(export: &Path, session: &Path, volumes_per_run: u32, naming: &str) -> Config {
    let mut ingest = IngestConfig::new(export);
    ingest.naming = naming.into();
    ingest.volumes_per_run = Some(volumes_per_run);
    ingest.partial_timeout = 0.6;
    ingest.gap_timeout = 1.0;
    ingest.retry_interval = 0.02;
    ingest.poll_interval = 0.05;
    Config::embedded(ingest, session)
}

struct Outcome {
    events: Vec<PipelineEvent>,
    summary: PipelineSummary,
}

impl Outcome {
    fn realigned(&self) -> Vec<&RealignedVolume> {
        self.events
            .iter()
            .filter_map(|e| match e {
                PipelineEvent::Realigned(r) => Some(&**r),
                _ => None,
            })
            .collect()
    }
}

/// Run the pipeline while `src` is written with `plan`; stop once every
/// run has ended and every key in `expect` has been realigned.
fn run(
    src: &dyn VolumeSource,
    plan: &FaultPlan,
    naming: Naming,
    naming_cfg: &str,
    runs: usize,
    volumes_per_run: u32,
    expect: &BTreeSet<VolumeKey>,
) -> (Outcome, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    let cfg = config(
        &export,
        &tmp.path().join("session"),
        volumes_per_run,
        naming_cfg,
    );
    let (tx, rx): (_, Receiver<PipelineEvent>) = unbounded();
    let pipeline = Pipeline::start(&cfg, "# test\n", PipelineOptions::observed_by(tx))
        .expect("pipeline starts");
    let opts = WriterOptions {
        naming,
        pace: Pace::Interval(Duration::from_millis(40)),
        truth: TruthLocation::Dir(tmp.path().join("truth")),
        ..WriterOptions::default()
    };
    let report = std::thread::scope(|s| {
        let writer = s.spawn(|| ScanWriter::new(&export, opts).run(src, plan));
        let mut events = Vec::new();
        let mut ended = 0;
        let mut seen = BTreeSet::new();
        let deadline = Instant::now() + GUARD;
        while ended < runs || !expect.is_subset(&seen) {
            let ev = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!(
                        "pipeline did not deliver everything within {GUARD:?}: missing {:?}",
                        expect.difference(&seen).collect::<Vec<_>>()
                    )
                });
            match &ev {
                PipelineEvent::Ingest(IngestEvent::RunEnded { .. }) => ended += 1,
                PipelineEvent::Realigned(r) => {
                    seen.insert(r.key);
                }
                _ => {}
            }
            events.push(ev);
        }
        let report = writer.join().unwrap().expect("simulation ran");
        (report, events)
    });
    let (_report, mut events) = report;
    let summary = pipeline.stop();
    events.extend(rx.try_iter());
    (Outcome { events, summary }, tmp)
}

fn read_par(path: &Path) -> Vec<[f64; 6]> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Vec<f64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
            [v[0], v[1], v[2], v[3], v[4], v[5]]
        })
        .collect()
}

#[test]
fn every_good_volume_survives_every_fault_in_order() {
    // 2 runs x 30 volumes, 64x64x36 at 3 mm, SNR 50.
    let spec = SynthSpec {
        runs: 2,
        volumes_per_run: 30,
        seed: 3,
        ..SynthSpec::default()
    };
    let series = SynthSeries::new(spec).unwrap();
    // Session indices (run 2 starts at 30).
    let mut plan = FaultPlan::parse(
        "partial=2,33,47;drop=5,40;dup=8:copy,38:rewrite;swap=11,51;late=15:3,44:3;\
         corrupt=20:garbage,24:truncated,35:empty,42:nan,55:dims",
    )
    .unwrap();
    plan.partial_pause = Duration::from_millis(30);
    plan.dup_delay = 1;
    let dropped = [5usize, 40];
    let corrupt: BTreeMap<usize, &str> = [
        (20, "not a NIfTI file"),
        (24, "ends after"),
        (35, "empty"),
        (42, "NaN"),
        (55, "grid"),
    ]
    .into();
    let key = |i: usize| series.key(i);
    let bad: BTreeSet<usize> = dropped
        .iter()
        .copied()
        .chain(corrupt.keys().copied())
        .collect();
    let good: BTreeSet<VolumeKey> = (0..series.len())
        .filter(|i| !bad.contains(i))
        .map(key)
        .collect();

    let (out, tmp) = run(&series, &plan, Naming::Bids, "bids", 2, 30, &good);
    let session = tmp.path().join("session");

    // 1. Every good volume realigned exactly once; nothing else realigned.
    let realigned = out.realigned();
    let keys: Vec<VolumeKey> = realigned.iter().map(|r| r.key).collect();
    let unique: BTreeSet<VolumeKey> = keys.iter().copied().collect();
    assert_eq!(
        unique.len(),
        keys.len(),
        "a volume was processed twice: {keys:?}"
    );
    assert_eq!(unique, good);

    // 2. In order: within a run, volumes not flagged late come in index order.
    for run in 1..=2 {
        let idx: Vec<u32> = realigned
            .iter()
            .filter(|r| r.key.run == run && !r.late)
            .map(|r| r.key.index)
            .collect();
        assert!(
            idx.windows(2).all(|w| w[0] < w[1]),
            "run {run} out of order: {idx:?}"
        );
    }

    // 3. Bad indices are reported missing; corrupt files are quarantined
    //    with a reason naming the problem, and moved with a reason file.
    let missing: BTreeSet<VolumeKey> = out
        .events
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Ingest(IngestEvent::Missing { key, .. }) => Some(*key),
            _ => None,
        })
        .collect();
    for &i in &bad {
        assert!(missing.contains(&key(i)), "{} not reported missing", key(i));
    }
    let quarantined: Vec<(Option<VolumeKey>, String)> = out
        .events
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Ingest(IngestEvent::Quarantined { key, reason, .. }) => {
                Some((*key, reason.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(quarantined.len(), corrupt.len(), "{quarantined:?}");
    for (&i, phrase) in &corrupt {
        let (_, reason) = quarantined
            .iter()
            .find(|(k, _)| *k == Some(key(i)))
            .unwrap_or_else(|| panic!("{} not quarantined", key(i)));
        assert!(
            reason.contains(phrase),
            "{}: reason {reason:?} lacks {phrase:?}",
            key(i)
        );
    }
    let reasons = std::fs::read_dir(session.join("quarantine"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".reason.txt")
        })
        .count();
    assert_eq!(reasons, corrupt.len());

    // 4. Duplicates detected (a copy and a rewrite with new content… the
    //    rewrite has identical voxels, so only the copy must be reported).
    assert!(
        out.summary.ingest.duplicates >= 1,
        "{:?}",
        out.summary.ingest
    );

    // 5. Ring buffers: one frame per index, in order, holes exactly at the
    //    bad indices, voxels equal to what realign produced.
    for run in 1..=2u32 {
        let rb = out.summary.buffers.run(run).expect("run kept");
        let frames: Vec<_> = rb.frames().collect();
        let idx: Vec<u32> = frames.iter().map(|f| f.index).collect();
        assert_eq!(idx, (0..30).collect::<Vec<u32>>(), "run {run} frames");
        for f in frames {
            let k = VolumeKey {
                run,
                index: f.index,
            };
            assert_eq!(f.present, good.contains(&k), "{k}: present flag");
            if f.present {
                let r = realigned.iter().find(|r| r.key == k).unwrap();
                assert_eq!(&f.data[..], &r.masked[..], "{k}: buffered voxels");
            }
        }
    }

    // 6. Session store: motion.par has a row per index in order, NaN rows
    //    exactly at the bad indices, the realigned parameters elsewhere, and
    //    they match the simulator's truth.
    let (mut se_r, mut se_t, mut n) = (0.0, 0.0, 0);
    for run in 1..=2u32 {
        let par = read_par(&session.join(format!("run-{run:02}/motion.par")));
        assert_eq!(par.len(), 30, "run {run} motion.par rows");
        for (index, row) in par.iter().enumerate() {
            let k = VolumeKey {
                run,
                index: index as u32,
            };
            if good.contains(&k) {
                let r = realigned.iter().find(|r| r.key == k).unwrap();
                for (a, (got, want)) in row.iter().zip(r.params.0).enumerate() {
                    assert!((got - want).abs() < 1e-6, "{k} par column {a}");
                }
                let truth = series.truth(series.session_index(k).unwrap()).0;
                for a in 0..3 {
                    se_r += (row[a] - truth[a]).to_degrees().powi(2);
                    se_t += (row[a + 3] - truth[a + 3]).powi(2);
                }
                n += 3;
            } else {
                assert!(
                    row.iter().all(|v| v.is_nan()),
                    "{k}: expected a NaN row, got {row:?}"
                );
            }
        }
        let qc = std::fs::read_to_string(session.join(format!("run-{run:02}/qc.tsv"))).unwrap();
        for index in 0..30u32 {
            let k = VolumeKey { run, index };
            assert!(
                qc.lines()
                    .skip(1)
                    .any(|l| l.split('\t').next() == Some(&index.to_string())),
                "{k}: no QC row"
            );
        }
    }
    let (rms_deg, rms_mm) = ((se_r / n as f64).sqrt(), (se_t / n as f64).sqrt());
    assert!(
        rms_deg < 0.1 && rms_mm < 0.1,
        "motion RMS error {rms_deg} deg, {rms_mm} mm"
    );

    // 7. Counters agree with the events.
    assert_eq!(out.summary.realigned as usize, good.len());
    assert_eq!(out.summary.ingest.quarantined as usize, corrupt.len());
    assert_eq!(out.summary.realign_failed, 0);
    assert_eq!(out.summary.store_errors, 0);
    assert!(session.join("reference.nii.gz").exists() && session.join("mask.nii.gz").exists());
}

#[test]
fn a_replayed_4d_series_with_siemens_names_realigns_as_offline() {
    // Record a series as a 4-D file, replay it through the export folder
    // under Siemens real-time names, and check the live parameters equal
    // the offline realignment of the same file (same code, same numbers).
    let spec = SynthSpec {
        runs: 1,
        volumes_per_run: 12,
        seed: 9,
        ..SynthSpec::default()
    };
    let synth = SynthSeries::new(spec).unwrap();
    let tmp4d = tempfile::tempdir().unwrap();
    let path = tmp4d.path().join("series.nii.gz");
    boldstream::tools::simulate::replay::write_4d(&synth, &path, None).unwrap();
    let replay = ReplaySeries::open(&path, None).unwrap();
    let vols = boldstream::formats::nifti::read_series(&path)
        .unwrap()
        .volumes;
    let offline = realign_series(&vols, None, Default::default()).unwrap();

    // Siemens real-time names number volumes from 1; keys keep the
    // exporter's numbering.
    let good: BTreeSet<VolumeKey> = (1..=12u32)
        .map(|i| VolumeKey { run: 1, index: i })
        .collect();
    let (out, _tmp) = run(
        &replay,
        &FaultPlan::none(),
        Naming::Siemens,
        "siemens",
        1,
        12,
        &good,
    );
    let realigned = out.realigned();
    assert_eq!(realigned.len(), 12);
    for (i, r) in realigned.iter().enumerate() {
        assert_eq!(r.key.index as usize, i + 1);
        for a in 0..6 {
            assert!(
                (r.params.0[a] - offline[i].0.0[a]).abs() < 1e-9,
                "volume {i} param {a}: live {} offline {}",
                r.params.0[a],
                offline[i].0.0[a]
            );
        }
    }
}
