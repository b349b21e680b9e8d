//! The ingest stage end to end: NIfTI files written into a temporary folder,
//! events read back from the stage's channel.
//!
//! Tests synchronise only on the event channel (with a generous timeout as a
//! failure guard) or on the stage's counters; sleeps appear only where a test
//! plays a slow writer.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use boldstream::formats::nifti::{WriteOptions, encode_volume};
use boldstream::ingest::{self, EventSource, IngestConfig, IngestHandle, IngestStats, WatchMode};
use boldstream::types::messages::{IngestEvent, IngestedVolume, MissingReason};
use boldstream::types::volume::{Grid, Volume};
use crossbeam_channel::Receiver;

/// How long any single expected event may take before the test fails.
const GUARD: Duration = Duration::from_secs(15);

fn grid(nz: usize) -> Grid {
    Grid::centred([16, 16, nz], [3.0, 3.0, 3.0])
}

/// A 16×16×8 volume whose voxels identify it.
fn vol(seed: u32) -> Volume {
    vol_on(grid(8), seed)
}

fn vol_on(g: Grid, seed: u32) -> Volume {
    let n = g.len();
    let values = (0..n).map(|i| (seed * 10_000) as f32 + i as f32).collect();
    Volume::from_file_order(g, values).expect("sizes agree")
}

fn bytes(v: &Volume, gzip: bool) -> Vec<u8> {
    encode_volume(
        v,
        &WriteOptions {
            gzip,
            ..Default::default()
        },
    )
    .expect("encode")
}

struct Fixture {
    _tmp: tempfile::TempDir,
    watch: PathBuf,
    quarantine: PathBuf,
    rx: Receiver<IngestEvent>,
    handle: Option<IngestHandle>,
}

fn config(watch: &Path, quarantine: &Path) -> IngestConfig {
    let mut c = IngestConfig::new(watch);
    c.mode = WatchMode::Events;
    c.naming = "bids".into();
    c.partial_timeout = 0.3;
    c.retry_interval = 0.02;
    // Most tests let the window, not the clock, declare gaps.
    c.gap_timeout = 60.0;
    c.quarantine_dir = Some(quarantine.to_path_buf());
    c
}

impl Fixture {
    fn new(edit: impl FnOnce(&mut IngestConfig)) -> Fixture {
        Fixture::with_files(edit, |_| {})
    }

    /// `before` writes files into the folder before the stage starts.
    fn with_files(edit: impl FnOnce(&mut IngestConfig), before: impl FnOnce(&Path)) -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let watch = tmp.path().join("export");
        let quarantine = tmp.path().join("quarantine");
        std::fs::create_dir(&watch).expect("mkdir");
        before(&watch);
        let mut cfg = config(&watch, &quarantine);
        edit(&mut cfg);
        let (tx, rx) = crossbeam_channel::bounded(64);
        let handle = ingest::spawn(cfg, tx).expect("spawn");
        Fixture {
            _tmp: tmp,
            watch,
            quarantine,
            rx,
            handle: Some(handle),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.watch.join(name)
    }

    fn write(&self, name: &str, v: &Volume) -> PathBuf {
        let gz = name.ends_with(".gz");
        let p = self.path(name);
        std::fs::write(&p, bytes(v, gz)).expect("write");
        p
    }

    fn write_raw(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, data).expect("write");
        p
    }

    fn next(&self) -> IngestEvent {
        match next_event(&self.rx) {
            Ok(e) => e,
            Err(e) => panic!(
                "no ingest event within {GUARD:?} ({e}); stats {:?}",
                self.stats()
            ),
        }
    }

    /// Receive exactly these events, in this order.
    fn expect(&self, want: &[&str]) -> Vec<IngestEvent> {
        let mut got = Vec::new();
        let mut words = Vec::new();
        for w in want {
            let e = self.next();
            words.push(describe(&e));
            got.push(e);
            assert_eq!(
                &words.last().map(String::as_str),
                &Some(*w),
                "events so far: {words:?}"
            );
        }
        got
    }

    fn stats(&self) -> IngestStats {
        self.handle.as_ref().map(|h| h.stats()).unwrap_or_default()
    }

    /// Wait for a counter condition (the stage has no event for "seen").
    fn wait_for(&self, what: &str, cond: impl Fn(&IngestStats) -> bool) {
        let until = Instant::now() + GUARD;
        while !cond(&self.stats()) {
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}: {:?}",
                self.stats()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stop the stage; returns the events the stop flushed and the counters.
    fn stop(&mut self) -> (Vec<String>, IngestStats) {
        let h = self.handle.take().expect("running");
        let stats = h.stop().expect("clean stop");
        let rest = self
            .rx
            .try_iter()
            .filter(|e| !matches!(e, IngestEvent::Heartbeat(_)))
            .map(|e| describe(&e))
            .collect();
        (rest, stats)
    }
}

/// The next event that is not a heartbeat (those come about once a
/// second whatever happens; the pipeline tests cover them).
fn next_event(
    rx: &crossbeam_channel::Receiver<IngestEvent>,
) -> Result<IngestEvent, crossbeam_channel::RecvTimeoutError> {
    let until = Instant::now() + GUARD;
    loop {
        match rx.recv_deadline(until)? {
            IngestEvent::Heartbeat(_) => continue,
            e => return Ok(e),
        }
    }
}

fn describe(e: &IngestEvent) -> String {
    match e {
        IngestEvent::Heartbeat(_) => "heartbeat".into(),
        IngestEvent::RunStarted { run, .. } => format!("start {run}"),
        IngestEvent::RunEnded { run } => format!("end {run}"),
        IngestEvent::Volume(v) => format!(
            "vol {}/{}{}",
            v.key.run,
            v.key.index,
            if v.late { " late" } else { "" }
        ),
        IngestEvent::Missing { key, reason } => match reason {
            MissingReason::NotReceived => format!("missing {}/{}", key.run, key.index),
            MissingReason::Quarantined(_) => {
                format!("missing {}/{} quarantined", key.run, key.index)
            }
            MissingReason::StillIncomplete => {
                format!("missing {}/{} incomplete", key.run, key.index)
            }
        },
        IngestEvent::Duplicate { key, path } => format!(
            "dup {}/{} {}",
            key.run,
            key.index,
            path.file_name().unwrap_or_default().to_string_lossy()
        ),
        IngestEvent::Quarantined { key, .. } => match key {
            Some(k) => format!("quarantined {}/{}", k.run, k.index),
            None => "quarantined ?".into(),
        },
        IngestEvent::Notice(_) => "notice".into(),
    }
}

fn volume_of(e: &IngestEvent) -> &IngestedVolume {
    match e {
        IngestEvent::Volume(v) => v,
        other => panic!("expected a volume, got {other:?}"),
    }
}

/// Rewrite a file in place and date it a second later than before, as a
/// re-export would be (within a few ms, a coarse mtime could stay equal).
fn rewrite(path: &Path, data: &[u8]) {
    let before = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("mtime");
    std::fs::write(path, data).expect("rewrite");
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    file.set_modified(before + Duration::from_secs(1))
        .expect("set mtime");
}

fn bids(run: u32, index: u32) -> String {
    format!("run-{run:02}_vol-{index:04}.nii")
}

#[test]
fn in_order_volumes_are_delivered_in_order_with_timings() {
    let mut f = Fixture::new(|_| {});
    for i in 0..4 {
        f.write(&bids(1, i), &vol(i));
    }
    let evs = f.expect(&["start 1", "vol 1/0", "vol 1/1", "vol 1/2", "vol 1/3"]);
    for (i, e) in evs[1..].iter().enumerate() {
        let v = volume_of(e);
        assert_eq!(v.volume.values(), vol(i as u32).values());
        assert_eq!(v.path, f.path(&bids(1, i as u32)));
        let t = v.timing;
        assert!(t.attempts >= 1);
        assert!(t.decoded >= t.first_seen && t.released >= t.decoded);
        assert!(t.decode_seconds >= 0.0 && t.decode_seconds < 5.0);
    }
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 1"]);
    assert_eq!((stats.received, stats.released, stats.missing), (4, 4, 0));
    assert!(!stats.polling);
}

#[test]
fn out_of_order_within_the_window_is_reordered() {
    let mut f = Fixture::new(|_| {});
    f.write(&bids(1, 0), &vol(0));
    f.expect(&["start 1", "vol 1/0"]);
    f.write(&bids(1, 2), &vol(2));
    f.write(&bids(1, 1), &vol(1));
    let evs = f.expect(&["vol 1/1", "vol 1/2"]);
    assert_eq!(volume_of(&evs[1]).volume.values(), vol(2).values());
    assert_eq!(f.stop().0, vec!["end 1"]);
}

#[test]
fn a_missing_volume_is_reported_and_a_late_one_still_delivered() {
    let mut f = Fixture::new(|_| {});
    for i in [0, 1, 3, 4] {
        f.write(&bids(1, i), &vol(i));
    }
    f.expect(&[
        "start 1",
        "vol 1/0",
        "vol 1/1",
        "missing 1/2",
        "vol 1/3",
        "vol 1/4",
    ]);
    f.write(&bids(1, 5), &vol(5));
    f.expect(&["vol 1/5"]);
    // Volume 2 turns up after its gap was declared: processed, flagged late.
    f.write(&bids(1, 2), &vol(2));
    let evs = f.expect(&["vol 1/2 late"]);
    assert_eq!(volume_of(&evs[0]).volume.values(), vol(2).values());
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 1"]);
    assert_eq!((stats.released, stats.late, stats.missing), (6, 1, 1));
}

#[test]
fn a_gap_is_declared_after_gap_timeout_when_the_window_does_not_fill() {
    let mut f = Fixture::new(|c| {
        c.reorder_window = 5;
        c.gap_timeout = 0.2;
    });
    f.write(&bids(1, 0), &vol(0));
    f.write(&bids(1, 2), &vol(2));
    f.expect(&["start 1", "vol 1/0", "missing 1/1", "vol 1/2"]);
    assert_eq!(f.stop().0, vec!["end 1"]);
}

#[test]
fn duplicates_by_second_name_and_by_rewrite_are_reported_not_processed() {
    let mut f = Fixture::new(|_| {});
    let first = f.write(&bids(1, 0), &vol(0));
    f.expect(&["start 1", "vol 1/0"]);
    f.write("run-01_vol-0000_dup.nii", &vol(100));
    f.expect(&["dup 1/0 run-01_vol-0000_dup.nii"]);
    // Rewritten in place with other voxels (a while later, as a real
    // re-export would be: mtimes are coarse, so the test dates it).
    rewrite(&first, &bytes(&vol(200), false));
    f.expect(&["dup 1/0 run-01_vol-0000.nii"]);
    f.write(&bids(1, 1), &vol(1));
    f.expect(&["vol 1/1"]);
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 1"]);
    assert_eq!((stats.duplicates, stats.released), (2, 2));
}

#[test]
fn rewriting_a_taken_file_with_the_same_voxels_is_not_a_duplicate() {
    let mut f = Fixture::new(|_| {});
    let first = f.write(&bids(1, 0), &vol(0));
    f.expect(&["start 1", "vol 1/0"]);
    rewrite(&first, &bytes(&vol(0), false));
    // Counted as received again once the change is noticed: at least once,
    // and once more when the write and the mtime change are noticed apart.
    f.wait_for("the rewrite to be noticed", |s| s.received >= 2);
    f.write(&bids(1, 1), &vol(1));
    f.expect(&["vol 1/1"]);
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 1"]);
    assert_eq!(stats.duplicates, 0);
}

#[test]
fn a_slowly_written_file_is_taken_only_when_complete() {
    let mut f = Fixture::new(|_| {});
    f.write(&bids(1, 0), &vol(0));
    f.expect(&["start 1", "vol 1/0"]);
    for (index, gzip) in [(1u32, false), (2, true)] {
        let name = if gzip {
            "run-01_vol-0002.nii.gz".to_string()
        } else {
            bids(1, index)
        };
        let data = bytes(&vol(index), gzip);
        let path = f.path(&name);
        // A writer on a slow share: chunks with pauses longer than the retry
        // interval (the file is attempted while partial) but shorter than
        // the partial timeout.
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::File::create(&path).expect("create");
            for chunk in data.chunks(700) {
                file.write_all(chunk).expect("write");
                file.flush().expect("flush");
                std::thread::sleep(Duration::from_millis(60));
            }
        });
        let want = format!("vol 1/{index}");
        let evs = f.expect(&[want.as_str()]);
        writer.join().expect("writer");
        let v = volume_of(&evs[0]);
        assert_eq!(v.volume.values(), vol(index).values(), "voxels of {name}");
        assert!(
            v.timing.attempts > 1,
            "{name} was read while partial: {:?}",
            v.timing
        );
    }
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 1"]);
    assert_eq!(stats.quarantined, 0);
}

fn reason_file(q: &Path, name: &str) -> String {
    let p = q.join(format!("{name}.reason.txt"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn quarantine_reason(e: &IngestEvent) -> (&Path, &Path, &str) {
    match e {
        IngestEvent::Quarantined {
            path,
            moved_to,
            reason,
            ..
        } => (path, moved_to, reason),
        other => panic!("expected a quarantine, got {other:?}"),
    }
}

#[test]
fn truncated_and_garbage_files_are_quarantined_and_the_run_goes_on() {
    let mut f = Fixture::new(|_| {});
    f.write(&bids(1, 0), &vol(0));
    f.expect(&["start 1", "vol 1/0"]);
    let full = bytes(&vol(1), false);
    let truncated = f.write_raw(&bids(1, 1), &full[..full.len() / 2]);
    let garbage: Vec<u8> = (0..9000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let junk = f.write_raw(&bids(1, 2), &garbage);
    f.write(&bids(1, 3), &vol(3));
    f.write(&bids(1, 4), &vol(4));
    let evs = f.expect(&[
        "quarantined 1/1",
        "missing 1/1 quarantined",
        "quarantined 1/2",
        "missing 1/2 quarantined",
        "vol 1/3",
        "vol 1/4",
    ]);
    for (e, src) in [(&evs[0], &truncated), (&evs[2], &junk)] {
        let (path, moved_to, reason) = quarantine_reason(e);
        assert_eq!(path, src.as_path());
        assert!(
            !src.exists(),
            "{} still in the export folder",
            src.display()
        );
        assert!(moved_to.starts_with(&f.quarantine) && moved_to.exists());
        assert!(reason.contains("unchanged for"), "{reason}");
        let name = src.file_name().unwrap().to_string_lossy().into_owned();
        let text = reason_file(&f.quarantine, &name);
        assert!(text.contains(&format!("reason: {reason}")), "{text}");
        assert!(text.contains("run: 1\n"), "{text}");
    }
    match &evs[1] {
        IngestEvent::Missing {
            reason: MissingReason::Quarantined(r),
            ..
        } => assert!(r.starts_with("run-01_vol-0001.nii: "), "{r}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(volume_of(&evs[5]).volume.values(), vol(4).values());
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 1"]);
    assert_eq!(
        (stats.quarantined, stats.missing, stats.released),
        (2, 2, 3)
    );
}

#[test]
fn an_empty_file_is_quarantined_after_the_partial_timeout() {
    let mut f = Fixture::new(|_| {});
    f.write(&bids(1, 0), &vol(0));
    f.expect(&["start 1", "vol 1/0"]);
    let t0 = Instant::now();
    f.write_raw(&bids(1, 1), &[]);
    let evs = f.expect(&["quarantined 1/1", "missing 1/1 quarantined"]);
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    let (_, moved_to, reason) = quarantine_reason(&evs[0]);
    assert!(reason.contains("0 bytes"), "{reason}");
    assert_eq!(std::fs::metadata(moved_to).map(|m| m.len()).ok(), Some(0));
    f.write(&bids(1, 2), &vol(2));
    f.expect(&["vol 1/2"]);
    assert_eq!(f.stop().0, vec!["end 1"]);
}

#[test]
fn a_wrong_grid_and_nan_voxels_are_quarantined_with_those_reasons() {
    let mut f = Fixture::new(|_| {});
    f.write(&bids(1, 0), &vol(0));
    f.expect(&["start 1", "vol 1/0"]);
    f.write(&bids(1, 1), &vol_on(grid(9), 1));
    let evs = f.expect(&["quarantined 1/1", "missing 1/1 quarantined"]);
    assert_eq!(
        quarantine_reason(&evs[0]).2,
        "grid 16x16x9 voxels of 3x3x3 mm differs from run 1's 16x16x8 voxels of 3x3x3 mm"
    );
    let mut nan = vol(2);
    for (i, j, k) in [(12, 4, 7), (2, 3, 4), (5, 15, 0)] {
        let at = nan.linear_index(i, j, k);
        nan.values_mut()[at] = if k == 0 { f32::INFINITY } else { f32::NAN };
    }
    f.write(&bids(1, 2), &nan);
    let evs = f.expect(&["quarantined 1/2", "missing 1/2 quarantined"]);
    assert_eq!(
        quarantine_reason(&evs[0]).2,
        "3 NaN/Inf voxels, first at (2, 3, 4)"
    );
    let text = reason_file(&f.quarantine, &bids(1, 2));
    assert!(text.contains("reason: 3 NaN/Inf voxels"), "{text}");
    f.write(&bids(1, 3), &vol(3));
    f.expect(&["vol 1/3"]);
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 1"]);
    assert_eq!(stats.quarantined, 2);
}

#[test]
fn a_second_quarantine_of_the_same_name_does_not_overwrite_the_first() {
    let mut f = Fixture::new(|_| {});
    f.write(&bids(1, 0), &vol(0));
    f.expect(&["start 1", "vol 1/0"]);
    f.write_raw(&bids(1, 1), b"not a nifti at all");
    let a = f.expect(&["quarantined 1/1", "missing 1/1 quarantined"]);
    f.write_raw(&bids(1, 1), b"still not a nifti");
    let b = f.expect(&["quarantined 1/1"]);
    let (_, first, _) = quarantine_reason(&a[0]);
    let (_, second, _) = quarantine_reason(&b[0]);
    assert_ne!(first, second);
    assert_eq!(
        std::fs::read(first).ok(),
        Some(b"not a nifti at all".to_vec())
    );
    assert_eq!(
        std::fs::read(second).ok(),
        Some(b"still not a nifti".to_vec())
    );
    // Then a good copy: taken normally, late since the index was given up.
    f.write(&bids(1, 1), &vol(1));
    f.expect(&["vol 1/1 late"]);
    assert_eq!(f.stop().0, vec!["end 1"]);
}

#[test]
fn a_quarantine_that_cannot_move_the_file_still_reports_it_once() {
    let mut f = Fixture::new(|c| {
        // A folder below a regular file cannot be created.
        let blocker = c.watch_dir.parent().expect("parent").join("blocker");
        std::fs::write(&blocker, b"").expect("write");
        c.quarantine_dir = Some(blocker.join("q"));
    });
    f.write(&bids(1, 0), &vol(0));
    f.expect(&["start 1", "vol 1/0"]);
    let bad = f.write_raw(&bids(1, 1), b"garbage");
    let evs = f.expect(&["quarantined 1/1", "missing 1/1 quarantined"]);
    let (path, moved_to, reason) = quarantine_reason(&evs[0]);
    assert_eq!((path, moved_to), (bad.as_path(), bad.as_path()));
    assert!(reason.contains("left in place"), "{reason}");
    assert!(bad.exists());
    // Not retried: the next event is the next volume's.
    f.write(&bids(1, 2), &vol(2));
    f.expect(&["vol 1/2"]);
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 1"]);
    assert_eq!(stats.quarantined, 1);
}

#[test]
fn a_file_removed_before_it_could_be_read_is_counted_not_quarantined() {
    let mut f = Fixture::new(|c| c.partial_timeout = 60.0);
    f.write(&bids(1, 0), &vol(0));
    f.expect(&["start 1", "vol 1/0"]);
    let full = bytes(&vol(1), false);
    let doomed = f.write_raw(&bids(1, 1), &full[..400]);
    f.wait_for("the partial file to be seen", |s| s.received == 2);
    std::fs::remove_file(&doomed).expect("remove");
    f.wait_for("the removal to be noticed", |s| s.removed == 1);
    f.write(&bids(1, 2), &vol(2));
    f.write(&bids(1, 3), &vol(3));
    f.expect(&["missing 1/1", "vol 1/2", "vol 1/3"]);
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 1"]);
    assert_eq!((stats.removed, stats.quarantined), (1, 0));
    assert!(!f.quarantine.join(bids(1, 1)).exists());
}

#[test]
fn stop_releases_held_volumes_and_declares_the_gaps() {
    let mut f = Fixture::new(|c| c.reorder_window = 5);
    f.write(&bids(1, 0), &vol(0));
    f.expect(&["start 1", "vol 1/0"]);
    f.write(&bids(1, 2), &vol(2));
    f.write(&bids(1, 4), &vol(4));
    f.wait_for("both files to be seen", |s| s.received == 3);
    let (rest, stats) = f.stop();
    assert_eq!(
        rest,
        vec!["missing 1/1", "vol 1/2", "missing 1/3", "vol 1/4", "end 1"]
    );
    assert_eq!((stats.released, stats.missing), (3, 2));
}

#[test]
fn files_present_at_start_up_are_taken_in_order_and_others_ignored() {
    let mut f = Fixture::with_files(
        |_| {},
        |dir| {
            for i in [3u32, 0, 2, 1] {
                std::fs::write(dir.join(bids(1, i)), bytes(&vol(i), false)).expect("write");
            }
            std::fs::write(dir.join("notes.txt"), b"hello").expect("write");
            std::fs::write(dir.join("localizer.nii"), b"x").expect("write");
        },
    );
    f.expect(&["start 1", "vol 1/0", "vol 1/1", "vol 1/2", "vol 1/3"]);
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 1"]);
    assert_eq!((stats.ignored, stats.quarantined), (2, 0));
}

#[test]
fn polling_mode_delivers_every_volume() {
    let mut f = Fixture::with_files(
        |c| {
            c.mode = WatchMode::Poll;
            c.poll_interval = 0.05;
        },
        |dir| {
            std::fs::write(dir.join("run-01_vol-0000.nii.gz"), bytes(&vol(0), true))
                .expect("write");
        },
    );
    f.expect(&["start 1", "vol 1/0"]);
    for i in 1..4 {
        f.write(&bids(1, i), &vol(i));
    }
    f.expect(&["vol 1/1", "vol 1/2", "vol 1/3"]);
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 1"]);
    assert!(stats.polling);
}

#[test]
fn events_mode_uses_native_events() {
    let mut f = Fixture::new(|c| c.mode = WatchMode::Events);
    for i in 0..3 {
        f.write(&format!("run-01_vol-{i:04}.nii.gz"), &vol(i));
    }
    f.expect(&["start 1", "vol 1/0", "vol 1/1", "vol 1/2"]);
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 1"]);
    assert!(!stats.polling);
}

#[test]
fn auto_mode_with_working_events_stays_on_events() {
    let mut f = Fixture::new(|c| {
        c.mode = WatchMode::Auto;
        c.scan_interval = 0.05;
        c.events_grace = 1.0;
    });
    for i in 0..3 {
        f.write(&bids(1, i), &vol(i));
    }
    f.expect(&["start 1", "vol 1/0", "vol 1/1", "vol 1/2"]);
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 1"], "no notice expected");
    assert!(!stats.polling);
}

#[test]
fn auto_mode_on_a_share_without_events_switches_to_polling() {
    let mut f = Fixture::new(|c| {
        c.mode = WatchMode::Auto;
        c.event_source = EventSource::Silent;
        c.scan_interval = 0.05;
        c.events_grace = 0.2;
        c.poll_interval = 0.05;
    });
    for i in 0..3 {
        f.write(&bids(1, i), &vol(i));
    }
    // The periodic listing takes the files while the watcher is judged, so
    // the notice may come before, between or after them.
    let mut seen = Vec::new();
    let mut notices = Vec::new();
    while seen.len() < 4 || notices.is_empty() {
        match f.next() {
            IngestEvent::Notice(n) => notices.push(n),
            e => seen.push(describe(&e)),
        }
    }
    assert_eq!(seen, vec!["start 1", "vol 1/0", "vol 1/1", "vol 1/2"]);
    assert_eq!(notices.len(), 1);
    assert!(notices[0].contains("switched to polling"), "{}", notices[0]);
    assert!(f.stats().polling);
    // From now on the poll watcher finds new files.
    for i in 3..5 {
        f.write(&bids(1, i), &vol(i));
    }
    f.expect(&["vol 1/3", "vol 1/4"]);
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 1"]);
    assert_eq!(stats.released, 5);
}

#[test]
fn a_native_watcher_that_cannot_start_falls_back_to_polling() {
    let mut f = Fixture::new(|c| {
        c.mode = WatchMode::Events;
        c.event_source = EventSource::Broken;
        c.poll_interval = 0.05;
    });
    let evs = f.expect(&["notice"]);
    match &evs[0] {
        IngestEvent::Notice(n) => assert!(n.contains("polling every 50 ms"), "{n}"),
        other => panic!("{other:?}"),
    }
    for i in 0..2 {
        f.write(&bids(1, i), &vol(i));
    }
    f.expect(&["start 1", "vol 1/0", "vol 1/1"]);
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 1"]);
    assert!(stats.polling);
}

#[test]
fn siemens_names_start_at_volume_one() {
    let mut f = Fixture::new(|c| c.naming = "siemens".into());
    for i in [1u32, 3, 4] {
        f.write(&format!("001_000005_{i:06}.nii"), &vol(i));
    }
    f.expect(&["start 5", "vol 5/1", "missing 5/2", "vol 5/3", "vol 5/4"]);
    assert_eq!(f.stop().0, vec!["end 5"]);
}

#[test]
fn auto_naming_takes_siemens_names_too() {
    let mut f = Fixture::new(|c| c.naming = "auto".into());
    f.write("001_000007_000001.nii", &vol(1));
    f.write("001_000007_000002.nii", &vol(2));
    f.expect(&["start 7", "vol 7/1", "vol 7/2"]);
    assert_eq!(f.stop().0, vec!["end 7"]);
}

#[test]
fn a_second_run_ends_the_first_and_stragglers_are_late() {
    let mut f = Fixture::new(|_| {});
    for i in 0..3 {
        f.write(&bids(1, i), &vol(i));
    }
    f.expect(&["start 1", "vol 1/0", "vol 1/1", "vol 1/2"]);
    f.write(&bids(2, 0), &vol(10));
    f.write(&bids(2, 1), &vol(11));
    let evs = f.expect(&["end 1", "start 2", "vol 2/0", "vol 2/1"]);
    assert_eq!(volume_of(&evs[3]).volume.values(), vol(11).values());
    f.write(&bids(1, 3), &vol(3));
    f.expect(&["vol 1/3 late"]);
    let (rest, stats) = f.stop();
    assert_eq!(rest, vec!["end 2"]);
    assert_eq!(stats.late, 1);
}

#[test]
fn volumes_per_run_ends_the_run_without_waiting() {
    let mut f = Fixture::new(|c| c.volumes_per_run = Some(3));
    for i in 0..3 {
        f.write(&bids(1, i), &vol(i));
    }
    f.expect(&["start 1", "vol 1/0", "vol 1/1", "vol 1/2", "end 1"]);
    assert!(f.stop().0.is_empty());
}

#[test]
fn a_full_output_channel_delays_but_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let watch = tmp.path().join("export");
    std::fs::create_dir(&watch).expect("mkdir");
    for i in 0..6u32 {
        std::fs::write(watch.join(bids(1, i)), bytes(&vol(i), false)).expect("write");
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    let handle = ingest::spawn(config(&watch, &tmp.path().join("q")), tx).expect("spawn");
    // Let the stage fill the channel and block before anything is read.
    let until = Instant::now() + GUARD;
    while !rx.is_full() {
        assert!(Instant::now() < until, "the stage never sent anything");
        std::thread::sleep(Duration::from_millis(5));
    }
    let got: Vec<String> = (0..7)
        .map(|_| describe(&next_event(&rx).expect("event")))
        .collect();
    assert_eq!(
        got,
        vec![
            "start 1", "vol 1/0", "vol 1/1", "vol 1/2", "vol 1/3", "vol 1/4", "vol 1/5"
        ]
    );
    let stop = std::thread::spawn(move || handle.stop());
    assert_eq!(describe(&next_event(&rx).expect("end")), "end 1");
    let stats = stop.join().expect("join").expect("stop");
    assert_eq!(stats.released, 6);
}

#[test]
fn bad_configurations_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tx, _rx) = crossbeam_channel::bounded(1);
    let missing = tmp.path().join("nowhere");
    let err = ingest::spawn(IngestConfig::new(&missing), tx.clone()).unwrap_err();
    assert!(err.to_string().contains("nowhere"), "{err}");
    let mut c = IngestConfig::new(tmp.path());
    c.quarantine_dir = Some(tmp.path().to_path_buf());
    let err = ingest::spawn(c, tx.clone()).unwrap_err();
    assert!(err.to_string().contains("quarantine_dir"), "{err}");
    let mut c = IngestConfig::new(tmp.path());
    c.naming = "no groups".into();
    assert!(ingest::spawn(c, tx).is_err());
}
