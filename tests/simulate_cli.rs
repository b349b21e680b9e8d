//! The `boldstream simulate` command line.

use std::path::Path;
use std::process::Command;

fn boldstream() -> Command {
    Command::new(env!("CARGO_BIN_EXE_boldstream"))
}

fn visible(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn simulate_writes_volumes_truth_and_faults() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("incoming");
    let status = boldstream()
        .args(["simulate", "--fast", "--volumes", "6", "--runs", "2"])
        .args(["--dims", "16x18x12", "--voxel-mm", "9", "--seed", "5"])
        .args([
            "--faults",
            "drop=2;corrupt=7:empty",
            "--naming",
            "siemens",
            "--gzip",
        ])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let files = visible(&out);
    assert_eq!(files.len(), 11, "{files:?}");
    assert!(!files.contains(&"001_000001_000003.nii.gz".to_string()));
    assert!(files.contains(&"001_000002_000002.nii.gz".to_string()));
    let truth = dir.path().join("incoming_truth");
    let faults = std::fs::read_to_string(truth.join("faults.tsv")).unwrap();
    assert_eq!(faults.lines().count(), 3);
    let par = std::fs::read_to_string(truth.join("motion_truth.par")).unwrap();
    assert_eq!(par.lines().count(), 12);
    assert!(truth.join("run-02_events.tsv").exists());
}

#[test]
fn write_4d_and_events_file() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("ev.tsv");
    std::fs::write(
        &events,
        "onset\tduration\ttrial_type\tstim_id\n3\t3\tstimulus\tx\n",
    )
    .unwrap();
    let file = dir.path().join("series.nii");
    let status = boldstream()
        .args([
            "simulate",
            "--volumes",
            "5",
            "--dims",
            "16x18x12",
            "--voxel-mm",
            "9",
        ])
        .arg("--events")
        .arg(&events)
        .arg("--write-4d")
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    let s = boldstream::formats::nifti::read_series(&file).unwrap();
    assert_eq!(s.volumes.len(), 5);
    let truth = dir.path().join("series_truth");
    let ev = std::fs::read_to_string(truth.join("run-01_events.tsv")).unwrap();
    assert!(ev.contains("3\t3\tstimulus\tx"));
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let bad_events = dir.path().join("bad.tsv");
    std::fs::write(&bad_events, "onset\tduration\n1\t2\nx\t3\n").unwrap();
    let out = dir.path().join("o");
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (vec!["--faults".into(), "drop=1;late=x".into()], "late=x"),
        (
            vec!["--events".into(), bad_events.clone().into()],
            "bad.tsv:3:",
        ),
        (vec!["--dims".into(), "64x64".into()], "64x64"),
        (
            vec!["--replay".into(), dir.path().join("none.nii").into()],
            "none.nii",
        ),
    ];
    for (args, needle) in cases {
        let res = boldstream()
            .args(["simulate", "--fast", "--volumes", "3", "--out"])
            .arg(&out)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success(), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let res = boldstream().args(["simulate", "--fast"]).output().unwrap();
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("--out"));
}
