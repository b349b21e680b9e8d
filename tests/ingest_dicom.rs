//! The ingest stage on real scanner DICOM (`../shared/data/dicom`): run and
//! volume from the header, the real-time export's re-sent volume dropped
//! with a log line, the half-written file retried (never half-read) and
//! quarantined when it never completes, XA files with UID names, and a
//! single-slice series grouped into volumes.
//!
//! Synchronisation is on the stage's event channel (with a guard that only
//! fails the test); log lines are read from a capturing subscriber.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use boldstream::formats::dicom::{self, Decoded};
use boldstream::ingest::{self, IngestConfig, IngestHandle, WatchMode};
use boldstream::types::messages::{IngestEvent, MissingReason};
use crossbeam_channel::Receiver;

use support::{dcm_files, shared, voxel_diff};

const GUARD: Duration = Duration::from_secs(20);

/// Every log line of this test binary (tests filter by their own paths).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines_about(needle: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

struct Fixture {
    tmp: tempfile::TempDir,
    watch: PathBuf,
    rx: Receiver<IngestEvent>,
    handle: Option<IngestHandle>,
}

impl Fixture {
    fn new(before: impl FnOnce(&Path), edit: impl FnOnce(&mut IngestConfig)) -> Fixture {
        logs();
        let tmp = tempfile::tempdir().unwrap();
        let watch = tmp.path().join("export");
        std::fs::create_dir(&watch).unwrap();
        before(&watch);
        let mut c = IngestConfig::new(&watch);
        c.mode = WatchMode::Events;
        c.partial_timeout = 0.5;
        c.retry_interval = 0.02;
        c.gap_timeout = 60.0;
        c.quarantine_dir = Some(tmp.path().join("quarantine"));
        edit(&mut c);
        let (tx, rx) = crossbeam_channel::bounded(256);
        let handle = ingest::spawn(c, tx).unwrap();
        Fixture {
            tmp,
            watch,
            rx,
            handle: Some(handle),
        }
    }

    /// The next event that is not a heartbeat (those come about once a
    /// second whatever happens).
    fn next(&self) -> IngestEvent {
        let until = Instant::now() + GUARD;
        loop {
            match self.rx.recv_deadline(until) {
                Ok(IngestEvent::Heartbeat(_)) => continue,
                Ok(e) => return e,
                Err(e) => panic!("no ingest event within {GUARD:?} ({e})"),
            }
        }
    }

    /// Events until (and including) the first one `done` accepts.
    fn until(&self, done: impl Fn(&IngestEvent) -> bool) -> Vec<IngestEvent> {
        let mut out = Vec::new();
        loop {
            let e = self.next();
            let stop = done(&e);
            out.push(e);
            if stop {
                return out;
            }
        }
    }

    fn stop(&mut self) -> (Vec<IngestEvent>, ingest::IngestStats) {
        let stats = self.handle.take().unwrap().stop().unwrap();
        let rest = self
            .rx
            .try_iter()
            .filter(|e| !matches!(e, IngestEvent::Heartbeat(_)))
            .collect();
        (rest, stats)
    }
}

fn describe(e: &IngestEvent) -> String {
    match e {
        IngestEvent::Heartbeat(_) => "heartbeat".into(),
        IngestEvent::RunStarted { run, first_index } => format!("start {run} from {first_index}"),
        IngestEvent::RunEnded { run } => format!("end {run}"),
        IngestEvent::Volume(v) => {
            format!(
                "vol {}/{}{}",
                v.key.run,
                v.key.index,
                if v.late { " late" } else { "" }
            )
        }
        IngestEvent::Missing { key, reason } => match reason {
            MissingReason::Quarantined(_) => {
                format!("missing {}/{} quarantined", key.run, key.index)
            }
            _ => format!("missing {}/{}", key.run, key.index),
        },
        IngestEvent::Duplicate { key, path } => format!(
            "dup {}/{} {}",
            key.run,
            key.index,
            path.file_name().unwrap().to_string_lossy()
        ),
        IngestEvent::Quarantined { key, .. } => match key {
            Some(k) => format!("quarantined {}/{}", k.run, k.index),
            None => "quarantined ?".into(),
        },
        IngestEvent::Notice(_) => "notice".into(),
    }
}

fn rt_study() -> Option<PathBuf> {
    shared("dicom/siemens-rt-export")
        .map(|d| d.join("20190219.0219191_faceMatching.0219191_faceMatching"))
}

fn copy(from: &Path, to_dir: &Path) -> PathBuf {
    let to = to_dir.join(from.file_name().unwrap());
    // Atomic, as the scanner's exporter (or a copy tool) renames into place.
    let tmp = to_dir.join(format!(
        ".{}.tmp",
        from.file_name().unwrap().to_string_lossy()
    ));
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, &to).unwrap();
    to
}

#[test]
fn rt_export_volumes_come_from_the_header_and_the_resent_one_is_dropped() {
    let Some(study) = rt_study() else { return };
    let files = dcm_files(&study);
    let mut f = Fixture::new(|_| {}, |c| c.volumes_per_run = Some(10));
    // Real-time order: volumes 1..10, then the re-sent copy named 000000.
    for p in &files[1..] {
        copy(p, &f.watch);
    }
    let mut events = f.until(|e| matches!(e, IngestEvent::RunEnded { .. }));
    copy(&files[0], &f.watch);
    events.extend(f.until(|e| matches!(e, IngestEvent::Duplicate { .. })));
    let mut words: Vec<String> = events.iter().map(describe).collect();
    let (rest, stats) = f.stop();
    words.extend(rest.iter().map(describe));
    let mut want: Vec<String> = vec!["start 13 from 1".into()];
    want.extend((1..=10).map(|i| format!("vol 13/{i}")));
    want.push("end 13".into());
    want.push("dup 13/10 001_000013_000000.dcm".into());
    assert_eq!(words, want);
    assert_eq!(
        (stats.released, stats.duplicates, stats.quarantined),
        (10, 1, 0)
    );
    // Volumes are the reader's, with slice timing kept.
    for e in &events {
        if let IngestEvent::Volume(v) = e {
            let name = format!("001_000013_{:06}.dcm", v.key.index);
            assert_eq!(v.path.file_name().unwrap().to_string_lossy(), name);
            let Decoded::Volume { volume, info } = dicom::read_file(&study.join(&name)).unwrap()
            else {
                panic!()
            };
            assert_eq!(voxel_diff(&v.volume, &volume), 0.0);
            assert_eq!(v.volume.grid(), volume.grid());
            assert_eq!(v.slice_timing.as_deref(), info.slice_timing.as_deref());
        }
    }
    let dup = log_lines_about(&f.watch.join("001_000013_000000.dcm").display().to_string());
    let text = dup.join("\n");
    assert!(
        text.contains(
            "the name says run 13 volume 0 but the header says run 13 volume 10; using the header"
        ),
        "{text}"
    );
    assert!(
        text.contains("a second file for run 13 volume 10 (pixel-identical to 001_000013_000010.dcm, SOP instance"),
        "{text}"
    );
    assert!(text.contains("duplicate dropped"), "{text}");
    drop(f.tmp);
}

#[test]
fn a_folder_read_at_once_keeps_one_copy_of_the_resent_volume() {
    let Some(study) = rt_study() else { return };
    let mut f = Fixture::new(
        |w| {
            for p in dcm_files(&study) {
                copy(&p, w);
            }
        },
        |c| c.volumes_per_run = Some(10),
    );
    let events = f.until(|e| matches!(e, IngestEvent::RunEnded { .. }));
    let (rest, stats) = f.stop();
    let vols: Vec<u32> = events
        .iter()
        .chain(&rest)
        .filter_map(|e| match e {
            IngestEvent::Volume(v) => Some(v.key.index),
            _ => None,
        })
        .collect();
    assert_eq!(vols, (1..=10).collect::<Vec<_>>());
    assert_eq!((stats.duplicates, stats.quarantined), (1, 0));
}

#[test]
fn a_half_written_file_is_retried_until_complete_and_never_half_read() {
    let Some(study) = rt_study() else { return };
    let Some(partial) = shared("dicom/siemens-rt-export/partial") else {
        return;
    };
    let files = dcm_files(&study);
    let mut f = Fixture::new(|_| {}, |c| c.partial_timeout = 30.0);
    for p in &files[1..5] {
        copy(p, &f.watch);
    }
    // Volume 5 as a half-written export looks: the first 307,200 bytes.
    let target = f.watch.join("001_000013_000005.dcm");
    let cut = std::fs::read(partial.join("trunc_001_000013_000005.dcm")).unwrap();
    std::fs::write(&target, &cut).unwrap();
    copy(&files[6], &f.watch);
    let got: Vec<String> = f
        .until(|e| matches!(e, IngestEvent::Volume(v) if v.key.index == 4))
        .iter()
        .map(describe)
        .collect();
    assert_eq!(
        got,
        [
            "start 13 from 1",
            "vol 13/1",
            "vol 13/2",
            "vol 13/3",
            "vol 13/4"
        ]
    );
    // The stage has tried the cut file and found it incomplete.
    let deadline = std::time::Instant::now() + GUARD;
    let about = target.display().to_string();
    while !log_lines_about(&about)
        .iter()
        .any(|l| l.contains("not complete yet"))
    {
        assert!(std::time::Instant::now() < deadline, "volume 5 never tried");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Volume 6 waits behind the incomplete 5; the rest of 5 arrives.
    let whole = std::fs::read(partial.join("001_000013_000005.dcm")).unwrap();
    let mut h = std::fs::OpenOptions::new()
        .append(true)
        .open(&target)
        .unwrap();
    h.write_all(&whole[cut.len()..]).unwrap();
    drop(h);
    let e = f.next();
    let IngestEvent::Volume(v5) = &e else {
        panic!("expected volume 5, got {}", describe(&e))
    };
    assert_eq!((v5.key.index, v5.late), (5, false));
    assert!(
        v5.timing.attempts > 1,
        "decoded at first sight? {:?}",
        v5.timing
    );
    let Decoded::Volume { volume, .. } = dicom::decode(&whole).unwrap() else {
        panic!()
    };
    assert_eq!(voxel_diff(&v5.volume, &volume), 0.0);
    assert_eq!(describe(&f.next()), "vol 13/6");
    let (_, stats) = f.stop();
    assert_eq!((stats.quarantined, stats.missing), (0, 0));
}

#[test]
fn a_file_that_never_completes_is_quarantined_with_the_reason() {
    let Some(study) = rt_study() else { return };
    let Some(partial) = shared("dicom/siemens-rt-export/partial") else {
        return;
    };
    let files = dcm_files(&study);
    let mut f = Fixture::new(|_| {}, |c| c.reorder_window = 1);
    for p in &files[1..5] {
        copy(p, &f.watch);
    }
    std::fs::copy(
        partial.join("trunc_001_000013_000005.dcm"),
        f.watch.join("001_000013_000005.dcm"),
    )
    .unwrap();
    copy(&files[6], &f.watch);
    let events = f.until(|e| matches!(e, IngestEvent::Volume(v) if v.key.index == 6));
    let words: Vec<String> = events.iter().map(describe).collect();
    assert_eq!(
        words,
        [
            "start 13 from 1",
            "vol 13/1",
            "vol 13/2",
            "vol 13/3",
            "vol 13/4",
            "quarantined 13/5",
            "missing 13/5 quarantined",
            "vol 13/6"
        ]
    );
    let IngestEvent::Quarantined {
        reason, moved_to, ..
    } = &events[5]
    else {
        panic!()
    };
    assert!(
        reason.starts_with(
            "incomplete or corrupt: file ends after 307200 bytes; element (7FE0,0010) at byte 162106 runs to byte 457030 (unchanged for"
        ),
        "{reason}"
    );
    assert!(moved_to.exists());
    let why = std::fs::read_to_string(format!("{}.reason.txt", moved_to.display())).unwrap();
    assert!(why.contains("run: 13\nvolume: 5\n"), "{why}");
    let attempts: u32 = why
        .lines()
        .find_map(|l| l.strip_prefix("attempts: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(attempts > 1, "retried before giving up: {why}");
    f.stop();
}

#[test]
fn xa_enhanced_files_with_uid_names_and_no_extension_are_keyed_by_header() {
    let Some(dir) = shared("dicom/siemens-xa30-bold") else {
        return;
    };
    let files = dcm_files(&dir.join("In/7_func-bold_task-fa_run-1"));
    // The name without its series prefix: a UID, with or without `.dcm`.
    let place = |i: usize, p: &Path, dir: &Path, staging: &Path| {
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        let name = name.split_once('_').unwrap().1.to_string();
        let to = if i.is_multiple_of(2) {
            name
        } else {
            format!("{name}.dcm")
        };
        std::fs::copy(p, staging).unwrap();
        std::fs::rename(staging, dir.join(to)).unwrap();
    };
    let staging_dir = tempfile::tempdir().unwrap();
    let staging = staging_dir.path().join("staging");
    // Volumes 1..10 are there at start-up (newest first on disk, names in
    // no useful order); 11..20 arrive one after another.
    let mut f = Fixture::new(
        |w| {
            for (i, p) in files.iter().enumerate().take(10).rev() {
                place(i, p, w, &staging);
            }
        },
        |c| c.volumes_per_run = Some(20),
    );
    for (i, p) in files.iter().enumerate().skip(10) {
        place(i, p, &f.watch, &staging);
    }
    std::fs::write(f.watch.join("notes.txt"), "operator notes").unwrap();
    let events = f.until(|e| matches!(e, IngestEvent::RunEnded { .. }));
    let vols: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            IngestEvent::Volume(v) => (!v.late).then_some(v.key.index),
            _ => None,
        })
        .collect();
    let (_, stats) = f.stop();
    assert_eq!(
        vols,
        (1..=20).collect::<Vec<_>>(),
        "{:?}",
        events.iter().map(describe).collect::<Vec<_>>()
    );
    assert!(matches!(
        events[0],
        IngestEvent::RunStarted {
            run: 7,
            first_index: 1
        }
    ));
    assert_eq!(
        (stats.released, stats.late, stats.ignored, stats.quarantined),
        (20, 0, 1, 0)
    );
}

#[test]
fn single_slice_files_are_grouped_into_volumes() {
    let Some(study) = rt_study() else { return };
    let mut slices = Vec::new();
    for v in 1..=4u32 {
        let file = study.join(format!("001_000013_{v:06}.dcm"));
        let Decoded::Volume { volume, info } = dicom::read_file(&file).unwrap() else {
            panic!()
        };
        let t = info.slice_timing.clone().unwrap();
        slices.push((
            volume.clone(),
            support::split_mosaic(&file, &volume, v, Some(27), &t),
        ));
    }
    let mut f = Fixture::new(|_| {}, |c| c.volumes_per_run = Some(4));
    for (v, (_, files)) in slices.iter().enumerate() {
        // Slices in reverse order; volume 3 loses slice 7; slice 2 of
        // volume 1 is sent twice.
        for (k, bytes) in files.iter().enumerate().rev() {
            if v == 2 && k == 7 {
                continue;
            }
            std::fs::write(f.watch.join(format!("IM_{:04}.dcm", v * 27 + k + 1)), bytes).unwrap();
            if v == 0 && k == 2 {
                std::fs::write(f.watch.join("IM_0003_again.dcm"), bytes).unwrap();
            }
        }
    }
    let events = f.until(|e| matches!(e, IngestEvent::RunEnded { .. }));
    let (_, stats) = f.stop();
    let mut words: Vec<String> = events.iter().map(describe).collect();
    // The re-sent slice is dropped whether it comes before volume 1 is
    // complete (same position already held) or after (volume taken).
    let dup = words.iter().position(|w| w == "dup 13/1 IM_0003_again.dcm");
    words.remove(dup.expect("the re-sent slice is reported"));
    assert_eq!(
        words,
        [
            "start 13 from 1",
            "vol 13/1",
            "vol 13/2",
            "missing 13/3 quarantined",
            "vol 13/4",
            "end 13"
        ]
    );
    for e in &events {
        if let IngestEvent::Volume(v) = e {
            let want = &slices[v.key.index as usize - 1].0;
            assert_eq!(voxel_diff(&v.volume, want), 0.0);
            assert!(support::affine_diff(&v.volume.grid().affine, &want.grid().affine) < 1e-4);
            assert_eq!(v.slice_timing.as_ref().unwrap().len(), 27);
        }
        if let IngestEvent::Missing {
            reason: MissingReason::Quarantined(r),
            ..
        } = e
        {
            assert!(r.starts_with("only 26 of 27 slices arrived"), "{r}");
        }
    }
    assert_eq!((stats.released, stats.duplicates), (3, 1));
}

#[test]
fn a_series_restarted_under_a_new_number_is_a_new_run() {
    let Some(study) = rt_study() else { return };
    let files = dcm_files(&study);
    let mut f = Fixture::new(|_| {}, |_| {});
    for p in &files[1..4] {
        copy(p, &f.watch);
    }
    let first: Vec<String> = f
        .until(|e| matches!(e, IngestEvent::Volume(v) if v.key.index == 3))
        .iter()
        .map(describe)
        .collect();
    assert_eq!(
        first,
        ["start 13 from 1", "vol 13/1", "vol 13/2", "vol 13/3"]
    );
    // The operator stops the scan and restarts it: series 14, numbered
    // from 1 again. The names here do not say it; the headers do.
    for (i, p) in files[1..3].iter().enumerate() {
        let mut obj = dicom_object::open_file(p).unwrap();
        obj.put(dicom_core::DataElement::new(
            dicom_core::Tag(0x0020, 0x0011),
            dicom_core::VR::IS,
            dicom_core::value::PrimitiveValue::from("14"),
        ));
        let mut bytes = Vec::new();
        obj.write_all(&mut bytes).unwrap();
        std::fs::write(f.watch.join(format!("restart_{}.dcm", i + 1)), bytes).unwrap();
    }
    let next: Vec<String> = f
        .until(|e| matches!(e, IngestEvent::Volume(v) if v.key.run == 14 && v.key.index == 2))
        .iter()
        .map(describe)
        .collect();
    assert_eq!(next, ["end 13", "start 14 from 1", "vol 14/1", "vol 14/2"]);
    let (_, stats) = f.stop();
    assert_eq!((stats.released, stats.duplicates), (5, 0));
}
