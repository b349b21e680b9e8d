//! Real scanner DICOM → simulator replay → daemon, end to end.
//!
//! The simulator replays the real-time export of `../shared/data` (11
//! Siemens mosaics, one a re-send) into the watched folder, with faults
//! injected into the scanner's own bytes; the pipeline reads the DICOM in
//! process, realigns, and estimates betas for an events table. The live
//! motion parameters must equal an offline realignment of dcm2niix's NIfTI
//! of the same files: DICOM volumes feed realign and GLM as NIfTI ones do.
//!
//! Waits are on the pipeline's events with a guard that only fails the
//! test; no sleeps.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use boldstream::config::Config;
use boldstream::formats::events_tsv::write_events;
use boldstream::formats::nifti;
use boldstream::glm::spec::GlmConfig;
use boldstream::ingest::IngestConfig;
use boldstream::pipeline::{Pipeline, PipelineOptions, PipelineSummary};
use boldstream::realign::realign_series;
use boldstream::tools::simulate::faults::FaultPlan;
use boldstream::tools::simulate::replay::DicomReplay;
use boldstream::tools::simulate::writer::{
    Pace, ScanWriter, TruthLocation, VolumeSource, WriterOptions,
};
use boldstream::types::events::Event;
use boldstream::types::messages::{IngestEvent, PipelineEvent, RealignedVolume, VolumeKey};
use crossbeam_channel::unbounded;

use support::shared;

const GUARD: Duration = Duration::from_secs(120);

fn config(tmp: &Path, glm: GlmConfig) -> Config {
    let mut ingest = IngestConfig::new(tmp.join("export"));
    ingest.naming = "siemens".into();
    ingest.volumes_per_run = Some(10);
    ingest.partial_timeout = 0.6;
    ingest.gap_timeout = 2.0;
    ingest.retry_interval = 0.02;
    ingest.poll_interval = 0.05;
    Config {
        glm,
        ..Config::embedded(ingest, &tmp.join("session"))
    }
}

/// Replay `study` with `plan` into a live pipeline; events until the run
/// has ended and every key of `expect` is realigned.
fn run(
    study: &Path,
    plan: &FaultPlan,
    glm: GlmConfig,
    expect: &BTreeSet<VolumeKey>,
    tmp: &Path,
) -> (Vec<PipelineEvent>, PipelineSummary) {
    let export = tmp.join("export");
    std::fs::create_dir_all(&export).unwrap();
    let cfg = config(tmp, glm);
    let (tx, rx) = unbounded();
    let pipeline = Pipeline::start(&cfg, "# test\n", PipelineOptions::observed_by(tx))
        .expect("pipeline starts");
    let replay = DicomReplay::open(study, None).unwrap();
    assert_eq!(replay.len(), 11);
    assert_eq!(replay.tr(), 1.5);
    let opts = WriterOptions {
        pace: Pace::Interval(Duration::from_millis(40)),
        truth: TruthLocation::Dir(tmp.join("truth")),
        ..WriterOptions::default()
    };
    let events = std::thread::scope(|s| {
        let writer = s.spawn(|| ScanWriter::new(&export, opts).run(&replay, plan));
        let mut events = Vec::new();
        let (mut ended, mut seen) = (false, BTreeSet::new());
        let deadline = Instant::now() + GUARD;
        while !ended || !expect.is_subset(&seen) {
            let ev = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!(
                        "not everything arrived within {GUARD:?}: missing {:?}",
                        expect.difference(&seen).collect::<Vec<_>>()
                    )
                });
            match &ev {
                PipelineEvent::Ingest(IngestEvent::RunEnded { .. }) => ended = true,
                PipelineEvent::Realigned(r) => {
                    seen.insert(r.key);
                }
                _ => {}
            }
            events.push(ev);
        }
        writer.join().unwrap().expect("replay ran");
        events
    });
    let summary = pipeline.stop();
    let mut events = events;
    events.extend(rx.try_iter());
    (events, summary)
}

fn realigned(events: &[PipelineEvent]) -> Vec<&RealignedVolume> {
    events
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Realigned(r) => Some(&**r),
            _ => None,
        })
        .collect()
}

fn key(index: u32) -> VolumeKey {
    VolumeKey { run: 13, index }
}

#[test]
fn replayed_dicom_realigns_as_dcm2niix_nifti_offline_and_gives_betas() {
    let Some(dir) = shared("dicom/siemens-rt-export") else {
        return;
    };
    let study = dir.join("20190219.0219191_faceMatching.0219191_faceMatching");
    let tmp = tempfile::tempdir().unwrap();
    // Two 1.5 s trials; with ten volumes the models get their degrees of
    // freedom only at the end of the run.
    let events_path = tmp.path().join("run-13_events.tsv");
    let trials = vec![
        Event {
            onset: 0.0,
            duration: 1.5,
            trial_type: "image".into(),
            stim_id: Some("a".into()),
            modulation: 1.0,
        },
        Event {
            onset: 4.5,
            duration: 1.5,
            trial_type: "image".into(),
            stim_id: Some("b".into()),
            modulation: 1.0,
        },
    ];
    write_events(&events_path, &trials).unwrap();
    let glm = GlmConfig {
        tr: Some(1.5),
        events: vec![events_path],
        min_dof: 1,
        delay: 4.5,
        noise_model: boldstream::glm::model::NoiseModel::Ols,
        ..GlmConfig::default()
    };
    let expect: BTreeSet<VolumeKey> = (1..=10).map(key).collect();
    let (events, summary) = run(&study, &FaultPlan::none(), glm, &expect, tmp.path());

    let live = realigned(&events);
    let keys: Vec<VolumeKey> = live.iter().map(|r| r.key).collect();
    assert_eq!(keys, expect.iter().copied().collect::<Vec<_>>());
    // The re-sent volume (000000, after 000010) is dropped.
    assert_eq!(summary.ingest.duplicates, 1);
    assert_eq!((summary.ingest.quarantined, summary.realign_failed), (0, 0));

    // dcm2niix's NIfTI of the same files, realigned offline by the same
    // code: the same parameters.
    let reference =
        nifti::read_series(&dir.join("Ref/func_ses-01_task-faces_run-01_13.nii")).unwrap();
    let offline = realign_series(&reference.volumes, None, Default::default()).unwrap();
    let mut worst = 0.0f64;
    for (r, (p, _)) in live.iter().zip(&offline) {
        for a in 0..6 {
            worst = worst.max((r.params.0[a] - p.0[a]).abs());
        }
    }
    println!(
        "live DICOM vs offline dcm2niix NIfTI: largest motion parameter difference {worst:.2e}"
    );
    assert!(
        worst < 1e-9,
        "live and offline parameters differ by {worst}"
    );
    assert!(live.iter().any(|r| r.params.0.iter().any(|v| *v != 0.0)));

    // Betas for both trials, finite, one per mask voxel.
    let betas: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Beta(b) => Some(&**b),
            _ => None,
        })
        .collect();
    assert_eq!(betas.len(), 2, "one beta per trial");
    let mask_len = events
        .iter()
        .find_map(|e| match e {
            PipelineEvent::ReferenceReady { mask, .. } => Some(mask.len()),
            _ => None,
        })
        .unwrap();
    for b in &betas {
        assert_eq!(b.run, 13);
        assert_eq!(b.raw.len(), mask_len);
        assert!(b.raw.iter().all(|v| v.is_finite()));
    }
    let session = tmp.path().join("session");
    assert_eq!(
        std::fs::read_to_string(session.join("run-13/motion.par"))
            .unwrap()
            .lines()
            .count(),
        10
    );
}

#[test]
fn replayed_dicom_survives_the_simulators_faults() {
    let Some(dir) = shared("dicom/siemens-rt-export") else {
        return;
    };
    let study = dir.join("20190219.0219191_faceMatching.0219191_faceMatching");
    let tmp = tempfile::tempdir().unwrap();
    // Replay order: volumes 1..10 are indices 0..9, the re-send is 10.
    let mut plan =
        FaultPlan::parse("partial=1,6;swap=3;dup=5:copy,2:rewrite;corrupt=7:truncated,8:garbage")
            .unwrap();
    plan.partial_pause = Duration::from_millis(30);
    plan.dup_delay = 1;
    let good: BTreeSet<VolumeKey> = [1, 2, 3, 4, 5, 6, 7, 10].into_iter().map(key).collect();
    let (events, summary) = run(&study, &plan, GlmConfig::default(), &good, tmp.path());

    let live = realigned(&events);
    let keys: BTreeSet<VolumeKey> = live.iter().map(|r| r.key).collect();
    assert_eq!(keys, good);
    assert_eq!(keys.len(), live.len(), "a volume was processed twice");
    let in_order: Vec<u32> = live
        .iter()
        .filter(|r| !r.late)
        .map(|r| r.key.index)
        .collect();
    assert!(in_order.windows(2).all(|w| w[0] < w[1]), "{in_order:?}");
    let quarantined: Vec<(Option<VolumeKey>, String)> = events
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Ingest(IngestEvent::Quarantined { key, reason, .. }) => {
                Some((*key, reason.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    let reason_of = |k: u32| {
        quarantined
            .iter()
            .find(|(q, _)| *q == Some(key(k)))
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("volume {k} not quarantined: {quarantined:?}"))
    };
    assert!(
        reason_of(8).contains("incomplete or corrupt: file ends after"),
        "{}",
        reason_of(8)
    );
    assert!(
        reason_of(9).contains("not a DICOM file"),
        "{}",
        reason_of(9)
    );
    let missing: BTreeSet<VolumeKey> = events
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Ingest(IngestEvent::Missing { key, .. }) => Some(*key),
            _ => None,
        })
        .collect();
    assert_eq!(missing, [key(8), key(9)].into_iter().collect());
    // The copy of volume 6 and the folder's own re-send of 10 are dropped;
    // the same-name rewrite of volume 3 holds the same voxels.
    assert_eq!(summary.ingest.duplicates, 2);
    assert_eq!(summary.realign_failed, 0);
}
