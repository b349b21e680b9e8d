//! The exporter: each fault produces exactly the files its manifest says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use boldstream::formats::nifti::{WriteOptions, encode_volume, read_volume};
use boldstream::tools::simulate::{
    CorruptKind, DupMode, Fault, FaultPlan, Naming, Pace, ReplaySeries, ScanWriter,
    SimulationReport, SynthSeries, SynthSpec, TruthLocation, VolumeSource, WriterOptions, simulate,
    write_4d,
};
use boldstream::types::messages::VolumeKey;

fn spec(volumes: usize) -> SynthSpec {
    SynthSpec {
        dims: [20, 24, 16],
        voxel_mm: [7.0, 7.0, 7.0],
        volumes_per_run: volumes,
        ..SynthSpec::default()
    }
}

fn fast(truth: &Path) -> WriterOptions {
    WriterOptions {
        pace: Pace::Fast,
        truth: TruthLocation::Dir(truth.to_path_buf()),
        ..WriterOptions::default()
    }
}

/// Visible files in `dir` (what a watcher would consider).
fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn valid_bytes(s: &SynthSeries, i: usize, gzip: bool) -> Vec<u8> {
    let opts = WriteOptions {
        gzip,
        tr: Some(s.tr()),
        ..WriteOptions::default()
    };
    encode_volume(&s.volume(i), &opts).unwrap()
}

/// `faults.tsv` rows as (index, fault, file).
fn manifest(truth: &Path) -> Vec<(usize, String, String)> {
    std::fs::read_to_string(truth.join("faults.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].parse().unwrap(), f[3].to_string(), f[4].to_string())
        })
        .collect()
}

fn positions(r: &SimulationReport) -> BTreeMap<String, Vec<usize>> {
    let mut m: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (pos, w) in r.written.iter().enumerate() {
        let name = w.path.file_name().unwrap().to_string_lossy().into_owned();
        m.entry(name).or_default().push(pos);
    }
    m
}

#[test]
fn every_fault_produces_exactly_the_manifested_files() {
    let dir = tempfile::tempdir().unwrap();
    let (out, truth) = (dir.path().join("export"), dir.path().join("truth"));
    let series = SynthSeries::new(spec(30)).unwrap();
    let mut plan = FaultPlan::parse(
        "drop=5,12;dup=7;dup=8:rewrite;dup=9:both;swap=10;late=15:3;partial=3,4,7;\
         corrupt=20:garbage,21:truncated,22:empty,23:nan,24:dims",
    )
    .unwrap()
    .with_seed(4);
    plan.partial_pause = Duration::from_millis(1);
    plan.partial_chunks = 5;
    let report = ScanWriter::new(&out, fast(&truth))
        .run(&series, &plan)
        .unwrap();
    assert!(!report.stopped);

    // What is on disk is exactly what the report says was written: no
    // temporary files left, nothing else.
    let on_disk = listing(&out);
    let reported: BTreeSet<String> = positions(&report).into_keys().collect();
    assert_eq!(on_disk, reported);
    assert!(on_disk.iter().all(|n| !n.starts_with('.')));

    // Manifest = report, and it names each injected fault.
    let m = manifest(&truth);
    assert_eq!(m.len(), report.faults.len());
    for (row, f) in m.iter().zip(&report.faults) {
        assert_eq!((row.0, &row.1, &row.2), (f.index, &f.fault, &f.file));
    }
    let faults_of = |i: usize| -> Vec<&str> {
        m.iter()
            .filter(|r| r.0 == i)
            .map(|r| r.1.as_str())
            .collect()
    };
    assert_eq!(faults_of(5), ["drop"]);
    assert_eq!(faults_of(7), ["duplicate", "partial"]);
    assert_eq!(faults_of(9), ["duplicate", "duplicate"]);
    assert_eq!(faults_of(0), Vec::<&str>::new());

    let name = |i: usize| Naming::Bids.file_name(1, series.key(i), false, false);
    let pos = positions(&report);

    // drop: never written, under any name.
    for i in [5, 12] {
        assert!(!out.join(name(i)).exists());
        assert!(report.written.iter().all(|w| w.index != i));
    }
    // Clean volumes decode to the series' volumes and come in order.
    for i in [0, 1, 2, 6, 11, 29] {
        let v = read_volume(&out.join(name(i))).unwrap();
        assert_eq!(v.values(), series.volume(i).values(), "volume {i}");
    }
    // duplicate copy: two files that parse to the same run/index, same bytes.
    let dup7 = Naming::Bids.file_name(1, series.key(7), true, false);
    assert_eq!(
        Naming::parse(&dup7).unwrap().key,
        Naming::parse(&name(7)).unwrap().key
    );
    assert_eq!(
        std::fs::read(out.join(&dup7)).unwrap(),
        std::fs::read(out.join(name(7))).unwrap()
    );
    assert!(pos[&dup7][0] > pos[&name(9)][0]);
    // duplicate rewrite: the same name written twice, a few volumes apart.
    assert_eq!(pos[&name(8)].len(), 2);
    // (slot 10 writes nothing of its own: volume 10 is swapped after 11)
    assert!(pos[&name(8)][1] > pos[&name(9)][0]);
    assert!(pos[&name(8)][1] < pos[&name(11)][0]);
    assert!(
        !out.join(Naming::Bids.file_name(1, series.key(8), true, false))
            .exists()
    );
    // both.
    assert_eq!(pos[&name(9)].len(), 2);
    assert!(
        out.join(Naming::Bids.file_name(1, series.key(9), true, false))
            .exists()
    );
    // swap: 10 after 11; late by 3: 15 after 18 (and before 19).
    assert!(pos[&name(10)][0] > pos[&name(11)][0]);
    assert!(pos[&name(15)][0] > pos[&name(18)][0]);
    assert!(pos[&name(15)][0] < pos[&name(19)][0]);
    assert_eq!(
        std::fs::read(out.join(name(15))).unwrap(),
        valid_bytes(&series, 15, false)
    );

    // corrupt kinds: the expected bytes.
    let garbage = std::fs::read(out.join(name(20))).unwrap();
    let valid20 = valid_bytes(&series, 20, false);
    assert_eq!(garbage.len(), valid20.len());
    assert_ne!(garbage, valid20);
    assert!(read_volume(&out.join(name(20))).is_err());
    let valid21 = valid_bytes(&series, 21, false);
    assert_eq!(
        std::fs::read(out.join(name(21))).unwrap(),
        valid21[..valid21.len() / 2]
    );
    assert_eq!(std::fs::metadata(out.join(name(22))).unwrap().len(), 0);
    let nan = read_volume(&out.join(name(23))).unwrap();
    let [nx, ny, nz] = series.grid().dims;
    assert_eq!(nan.count_non_finite(), nx * ny);
    let good = series.volume(23);
    let k = nz / 2;
    assert_eq!(
        nan.values()[..nx * ny * k],
        good.values()[..nx * ny * k],
        "only the middle slice is NaN"
    );
    let dims = read_volume(&out.join(name(24))).unwrap();
    assert_eq!(dims.grid().dims, [nx, ny, nz - 1]);
    assert_eq!(
        dims.values(),
        &series.volume(24).values()[..nx * ny * (nz - 1)]
    );
    for w in &report.written {
        assert_eq!(w.valid, !(20..=24).contains(&w.index), "{:?}", w.path);
    }

    // partial: written in place, complete in the end.
    for i in [3, 4, 7] {
        assert!(report.written.iter().any(|w| w.index == i && w.partial));
        assert_eq!(
            std::fs::read(out.join(name(i))).unwrap(),
            valid_bytes(&series, i, false)
        );
    }
    assert!(report.written.iter().filter(|w| w.partial).count() >= 4);

    // truth.tsv lists each volume's primary file and fault.
    let tsv = std::fs::read_to_string(truth.join("truth.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = tsv
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len(), 30);
    assert_eq!(rows[5][4..6], ["n/a", "drop"]);
    assert_eq!(rows[15][4..6], ["run-01_vol-0015.nii", "late:3"]);
    assert_eq!(rows[23][5], "corrupt:nan");
    assert_eq!(rows[1][5], "ok");
}

#[test]
fn siemens_names_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rt");
    let series = SynthSeries::new(SynthSpec { runs: 2, ..spec(3) }).unwrap();
    let opts = WriterOptions {
        naming: Naming::Siemens,
        gzip: true,
        session: 4,
        truth: TruthLocation::Nowhere,
        pace: Pace::Fast,
        ..WriterOptions::default()
    };
    let plan = FaultPlan::none().with(4, Fault::Duplicate(DupMode::Copy));
    let report = ScanWriter::new(&out, opts).run(&series, &plan).unwrap();
    assert!(report.truth_dir.is_none());
    let names = listing(&out);
    let want: BTreeSet<String> = [
        "004_000001_000001.nii.gz",
        "004_000001_000002.nii.gz",
        "004_000001_000003.nii.gz",
        "004_000002_000001.nii.gz",
        "004_000002_000002.nii.gz",
        "004_000002_000002_dup.nii.gz",
        "004_000002_000003.nii.gz",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, want);
    let p = Naming::parse("004_000002_000002_dup.nii.gz").unwrap();
    assert_eq!(p.key, VolumeKey { run: 2, index: 1 });
    assert!(p.duplicate && p.gzip);
    let v = read_volume(&out.join("004_000002_000001.nii.gz")).unwrap();
    assert_eq!(v.values(), series.volume(3).values());
    // Nothing was written next to the output folder.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn default_truth_goes_next_to_the_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("watched");
    let plan = FaultPlan::parse("drop=1").unwrap();
    let report = simulate(&spec(3), &plan, &out, Pace::Fast).unwrap();
    let truth = dir.path().join("watched_truth");
    assert_eq!(report.truth_dir.as_deref(), Some(truth.as_path()));
    for f in [
        "truth.tsv",
        "faults.tsv",
        "motion_truth.par",
        "run-01_events.tsv",
        "spec.toml",
        "task_weight.nii",
        "reference_clean.nii",
    ] {
        assert!(truth.join(f).exists(), "{f}");
    }
    // The watched folder holds volumes only.
    assert!(listing(&out).iter().all(|n| Naming::parse(n).is_some()));
    assert_eq!(listing(&out).len(), 2);
}

#[test]
fn notifications_and_stop_work_from_another_thread() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let (tx, rx) = crossbeam_channel::unbounded();
    let opts = WriterOptions {
        notify: Some(tx),
        ..fast(&dir.path().join("truth"))
    };
    let plan = FaultPlan::parse("late=1:2").unwrap();
    let handle = std::thread::spawn(move || {
        let series = SynthSeries::new(spec(5)).unwrap();
        ScanWriter::new(&out, opts).run(&series, &plan)
    });
    // Each notice arrives once its file is complete on disk.
    let got: Vec<_> = rx.iter().collect();
    let report = handle.join().unwrap().unwrap();
    assert_eq!(got, report.written);
    let order: Vec<usize> = got.iter().map(|w| w.index).collect();
    assert_eq!(order, [0, 2, 3, 1, 4]);
    for w in &got {
        assert_eq!(std::fs::metadata(&w.path).unwrap().len() as usize, w.bytes);
    }

    let stop = Arc::new(AtomicBool::new(true));
    let out2 = dir.path().join("stopped");
    let opts = WriterOptions {
        stop: Some(stop),
        ..fast(&dir.path().join("truth2"))
    };
    let series = SynthSeries::new(spec(5)).unwrap();
    let r = ScanWriter::new(&out2, opts)
        .run(&series, &FaultPlan::none())
        .unwrap();
    assert!(r.stopped && r.written.is_empty());
    assert!(listing(&out2).is_empty());
}

#[test]
fn rate_faults_match_their_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let (out, truth) = (dir.path().join("export"), dir.path().join("truth"));
    let series = SynthSeries::new(spec(40)).unwrap();
    let plan = FaultPlan::none()
        .with_rate(Fault::Drop, 0.2)
        .with_corrupt_rate(0.2)
        .with_seed(11);
    let report = ScanWriter::new(&out, fast(&truth))
        .run(&series, &plan)
        .unwrap();
    let m = manifest(&truth);
    let dropped: BTreeSet<usize> = m.iter().filter(|r| r.1 == "drop").map(|r| r.0).collect();
    let corrupt: BTreeSet<usize> = m.iter().filter(|r| r.1 == "corrupt").map(|r| r.0).collect();
    assert!(!dropped.is_empty() && !corrupt.is_empty());
    assert!(dropped.is_disjoint(&corrupt));
    assert_eq!(listing(&out).len(), 40 - dropped.len());
    for w in &report.written {
        assert!(!dropped.contains(&w.index));
        assert_eq!(w.valid, !corrupt.contains(&w.index));
    }
    // Same seed, same faults.
    assert_eq!(plan.resolve(40), plan.clone().resolve(40));
    assert!(
        plan.resolve(40)
            .iter()
            .filter_map(|v| v.fault)
            .all(|f| matches!(f, Fault::Drop | Fault::Corrupt(_)))
    );
    let kinds: BTreeSet<CorruptKind> = plan
        .resolve(200)
        .iter()
        .filter_map(|v| match v.fault {
            Some(Fault::Corrupt(k)) => Some(k),
            _ => None,
        })
        .collect();
    assert_eq!(kinds.len(), CorruptKind::ALL.len());
}

#[test]
fn replay_streams_a_4d_file_and_4d_export_splits_runs() {
    let dir = tempfile::tempdir().unwrap();
    let series = SynthSeries::new(SynthSpec { runs: 2, ..spec(4) }).unwrap();
    let file = dir.path().join("clean.nii.gz");
    let truth4d = dir.path().join("clean_truth");
    let files = write_4d(&series, &file, Some(&truth4d)).unwrap();
    assert_eq!(
        files,
        [
            dir.path().join("clean_run-01.nii.gz"),
            dir.path().join("clean_run-02.nii.gz")
        ]
    );
    let tsv = std::fs::read_to_string(truth4d.join("truth.tsv")).unwrap();
    assert!(tsv.lines().nth(6).unwrap().contains("clean_run-02.nii.gz"));

    let replay = ReplaySeries::open(&files[1], None).unwrap();
    assert_eq!(replay.len(), 4);
    assert_eq!(replay.tr(), series.tr());
    let out = dir.path().join("replayed");
    let truth = dir.path().join("replayed_truth");
    let plan = FaultPlan::none().with(2, Fault::Drop);
    ScanWriter::new(&out, fast(&truth))
        .run(&replay, &plan)
        .unwrap();
    assert_eq!(listing(&out).len(), 3);
    let v = read_volume(&out.join("run-01_vol-0003.nii")).unwrap();
    assert_eq!(v.values(), series.volume(7).values());
    // Replayed data has no motion truth.
    assert!(!truth.join("motion_truth.par").exists());
    let rows = std::fs::read_to_string(truth.join("truth.tsv")).unwrap();
    assert!(rows.lines().nth(1).unwrap().ends_with("n/a"));

    assert!(ReplaySeries::open(&dir.path().join("missing.nii"), None).is_err());
}

#[test]
fn a_paced_writer_stops_while_waiting_for_the_next_slot() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let (tx, rx) = crossbeam_channel::unbounded();
    let stop = Arc::new(AtomicBool::new(false));
    let opts = WriterOptions {
        // Slots an hour apart: only stopping ends this run.
        pace: Pace::Interval(Duration::from_secs(3600)),
        notify: Some(tx),
        stop: Some(stop.clone()),
        truth: TruthLocation::Nowhere,
        ..WriterOptions::default()
    };
    let handle = std::thread::spawn(move || {
        let series = SynthSeries::new(spec(3)).unwrap();
        ScanWriter::new(&out, opts).run(&series, &FaultPlan::none())
    });
    let first = rx.recv().unwrap();
    assert_eq!(first.index, 0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = handle.join().unwrap().unwrap();
    assert!(report.stopped);
    assert_eq!(report.written, [first]);
}
