//! `boldstream run --config FILE`: the daemon as a process, fed by the
//! simulator, stopped by SIGTERM, leaving a complete session folder.
//!
//! Synchronisation is on the daemon's own console output (read line by
//! line from its stdout), never on sleeps.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use boldstream::tools::simulate::faults::FaultPlan;
use boldstream::tools::simulate::synth::{SynthSeries, SynthSpec};
use boldstream::tools::simulate::writer::{Pace, ScanWriter, TruthLocation, WriterOptions};

const BIN: &str = env!("CARGO_BIN_EXE_boldstream");

#[test]
fn run_follows_the_export_folder_and_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    let config = tmp.path().join("boldstream.toml");
    std::fs::write(
        &config,
        "[session]\ndir = \"session\"\n\n[ingest]\nwatch_dir = \"export\"\nnaming = \"bids\"\nvolumes_per_run = 8\nmode = \"poll\"\npoll_interval = 0.05\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let series = SynthSeries::new(SynthSpec {
        volumes_per_run: 8,
        seed: 4,
        ..SynthSpec::default()
    })
    .unwrap();
    let opts = WriterOptions {
        pace: Pace::Fast,
        truth: TruthLocation::Nowhere,
        ..WriterOptions::default()
    };
    ScanWriter::new(&export, opts)
        .run(&series, &FaultPlan::none())
        .unwrap();

    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("daemon never ended run 1; output so far: {lines:#?}"));
        let done = line.starts_with("== run 1 ended");
        lines.push(line);
        if done {
            break;
        }
    }
    let volume_lines = lines.iter().filter(|l| l.starts_with("run  1 vol")).count();
    assert_eq!(volume_lines, 8, "{lines:#?}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let session = tmp.path().join("session");
    let par = std::fs::read_to_string(session.join("run-01/motion.par")).unwrap();
    assert_eq!(par.lines().count(), 8);
    let qc = std::fs::read_to_string(session.join("run-01/qc.tsv")).unwrap();
    assert_eq!(qc.lines().count(), 9, "header + 8 rows");
    let log = std::fs::read_to_string(session.join("boldstream.log")).unwrap();
    assert!(log.contains("stopped: 8 volumes realigned"), "{log}");
    assert!(session.join("session.toml").exists());
}

/// Run the daemon on a config that must be refused; return its stderr and
/// the temp folder (to check nothing was created).
fn refused(name: &str, text: &str) -> (String, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join(name);
    std::fs::write(&config, text).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bad config was accepted");
    (String::from_utf8_lossy(&out.stderr).into_owned(), tmp)
}

#[test]
fn a_bad_config_is_a_clear_error_naming_the_file_and_line() {
    let (err, _tmp) = refused(
        "bad.toml",
        "[ingest]\nwatch_dir = \"x\"\nmode = \"sometimes\"\n",
    );
    assert!(
        err.contains("bad.toml") && err.contains("line 3") && err.contains("sometimes"),
        "{err}"
    );
}

#[test]
fn a_missing_watch_folder_is_refused_before_anything_is_written() {
    let (err, tmp) = refused(
        "c.toml",
        "[session]\ndir = \"s\"\n[ingest]\nwatch_dir = \"does-not-exist\"\n",
    );
    assert!(err.contains("does-not-exist"), "{err}");
    assert!(
        !tmp.path().join("s").exists(),
        "a session folder was created"
    );
}

#[test]
fn a_malformed_events_table_is_refused_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("export")).unwrap();
    std::fs::write(
        tmp.path().join("run-01_events.tsv"),
        "onset\tduration\ttrial_type\n6\t3\timage\n13\tthree\timage\n",
    )
    .unwrap();
    let config = tmp.path().join("c.toml");
    std::fs::write(
        &config,
        "[session]\ndir = \"s\"\n[ingest]\nwatch_dir = \"export\"\n[glm]\ntr = 1.5\nevents = [\"run-01_events.tsv\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run-01_events.tsv:3") && err.contains("duration 'three'"),
        "{err}"
    );
    assert!(
        !tmp.path().join("s").exists(),
        "a session folder was created"
    );
}
