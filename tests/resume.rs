//! Crash-safe resume, through the real binary: a session killed with
//! SIGKILL mid-run and started again on the same folder ends with exactly
//! the outputs of a session that ran uninterrupted on the same input —
//! motion, QC figures, masked voxels, betas, retrieval and reconstructions
//! — with every volume processed once.
//!
//! Two runs of 30 small volumes, events with repeated images, the demo
//! model on CPU. Waits poll the session's own files with a deadline that
//! only fails the test; the SIGKILL lands wherever the daemon happens to
//! be, and the store is then torn by hand the way a crash mid-write tears
//! it, so the repair is exercised every time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use boldstream::formats::events_tsv::write_events;
use boldstream::formats::nifti;
use boldstream::tools::simulate::faults::FaultPlan;
use boldstream::tools::simulate::synth::{SynthSeries, SynthSpec};
use boldstream::tools::simulate::writer::{Pace, ScanWriter, TruthLocation, WriterOptions};
use boldstream::types::events::Event;
use boldstream::types::volume::{Grid, Volume};

const BIN: &str = env!("CARGO_BIN_EXE_boldstream");
const GUARD: Duration = Duration::from_secs(180);
const VOLUMES: u32 = 30;
const DIMS: [usize; 3] = [32, 32, 20];

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("onnx/demo")
}

/// Five trials a run, images repeated within and across runs.
fn events(run: u32) -> Vec<Event> {
    let ids = [
        "stim-0001",
        "stim-0002",
        "stim-0003",
        "stim-0001",
        "stim-0004",
    ];
    (0..5)
        .map(|i| Event {
            onset: 3.0 + 7.5 * i as f64,
            duration: 3.0,
            trial_type: "image".into(),
            stim_id: Some(ids[(i + run as usize) % ids.len()].into()),
            modulation: 1.0,
        })
        .collect()
}

/// The scan (all files, in acquisition order), events, a 2000-voxel mask
/// (the demo subject's adapter size) and the config text for `session`.
struct Scan {
    root: PathBuf,
    files: Vec<PathBuf>,
}

impl Scan {
    fn new(root: &Path) -> Scan {
        let series = SynthSeries::new(SynthSpec {
            dims: DIMS,
            runs: 2,
            volumes_per_run: VOLUMES as usize,
            seed: 21,
            threads: 1,
            events: Some(vec![events(1), events(2)]),
            ..SynthSpec::default()
        })
        .unwrap();
        let staging = root.join("staging");
        ScanWriter::new(
            &staging,
            WriterOptions {
                pace: Pace::Fast,
                truth: TruthLocation::Nowhere,
                ..WriterOptions::default()
            },
        )
        .run(&series, &FaultPlan::none())
        .unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&staging)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 2 * VOLUMES as usize);
        for run in [1, 2] {
            write_events(&root.join(format!("run-{run:02}_events.tsv")), &events(run)).unwrap();
        }
        let grid = Grid::centred(DIMS, [3.0; 3]);
        let mut mask = Volume::zeros(grid);
        let mut n = 0;
        for k in 5..15 {
            for j in 11..21 {
                for i in 6..26 {
                    let idx = mask.linear_index(i, j, k);
                    mask.values_mut()[idx] = 1.0;
                    n += 1;
                }
            }
        }
        assert_eq!(n, 2000);
        nifti::write_volume(&root.join("mask.nii.gz"), &mask, &Default::default()).unwrap();
        Scan {
            root: root.to_path_buf(),
            files,
        }
    }

    /// A config watching `export`, writing `session`.
    fn config(&self, name: &str) -> PathBuf {
        let text = format!(
            r#"[session]
dir = "session-{name}"

[ingest]
watch_dir = "export-{name}"
naming = "bids"
volumes_per_run = {VOLUMES}
mode = "poll"
poll_interval = 0.05
retry_interval = 0.02

[realign]
mask = "mask.nii.gz"

[glm]
tr = 1.5
events = ["run-01_events.tsv", "run-02_events.tsv"]
average_repeats = true

[decode]
model = "{model}"
subject = "{subject}"
device = "cpu"
threads = 1
warmup_calls = 0

[console]
enabled = false
"#,
            model = demo().display(),
            subject = demo().join("subject-sim01").display(),
        );
        let path = self.root.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        std::fs::create_dir_all(self.root.join(format!("export-{name}"))).unwrap();
        path
    }

    /// Put `files` into `export-{name}` (each whole: copied aside, renamed in).
    fn deliver(&self, name: &str, files: &[PathBuf]) {
        let export = self.root.join(format!("export-{name}"));
        for f in files {
            let to = export.join(f.file_name().unwrap());
            let tmp = export.join(".incoming");
            std::fs::copy(f, &tmp).unwrap();
            std::fs::rename(&tmp, &to).unwrap();
        }
    }
}

fn start(config: &Path) -> Child {
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the daemon starts")
}

fn data_rows(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

fn log_events(session: &Path, event: &str) -> usize {
    std::fs::read_to_string(session.join("ingest_log.tsv"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split('\t').nth(1) == Some(event))
        .count()
}

/// Poll until `done` holds; fail (with the daemon's stderr) if it exits or
/// the guard runs out.
fn wait_for(child: &mut Child, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !done() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err).unwrap();
            }
            panic!("the daemon exited ({status}) before {what}: {err}");
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then the exit must be clean.
fn terminate(child: Child) {
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
}

fn both_runs_done(session: &Path) -> bool {
    data_rows(&session.join("run-02/qc.tsv")) >= VOLUMES as usize
        && log_events(session, "run_ended") >= 2
}

/// Append bytes without a newline: what a write cut short by a crash leaves.
fn tear(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// Drop lines of `path` (after the header) for which `drop` holds.
fn drop_lines(path: &Path, drop: impl Fn(&str) -> bool) {
    let text = std::fs::read_to_string(path).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, l)| *i == 0 || !drop(l))
        .map(|(_, l)| l)
        .collect();
    std::fs::write(path, kept.join("\n") + "\n").unwrap();
}

/// The rows of a table, each reduced to the columns in `keep` (file paths
/// reduced to their names: the two sessions watch different folders).
fn table(path: &Path, keep: &[usize]) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            keep.iter()
                .map(|&i| {
                    let v = f.get(i).copied().unwrap_or("<none>");
                    if v.contains('/') {
                        Path::new(v)
                            .file_name()
                            .map_or(v.to_string(), |n| n.to_string_lossy().into_owned())
                    } else {
                        v.to_string()
                    }
                })
                .collect()
        })
        .collect()
}

fn same_bytes(a: &Path, b: &Path, rel: &str) {
    let (x, y) = (
        std::fs::read(a.join(rel)).unwrap_or_else(|e| panic!("{rel} (uninterrupted): {e}")),
        std::fs::read(b.join(rel)).unwrap_or_else(|e| panic!("{rel} (resumed): {e}")),
    );
    assert!(
        x == y,
        "{rel} differs between the uninterrupted and the resumed session"
    );
}

#[test]
fn a_session_killed_mid_run_resumes_to_the_outputs_of_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let scan = Scan::new(tmp.path());
    let n = VOLUMES as usize;

    // The reference: everything delivered, one daemon from start to end.
    let config_a = scan.config("a");
    scan.deliver("a", &scan.files);
    let mut a = start(&config_a);
    let session_a = tmp.path().join("session-a");
    wait_for(&mut a, "the uninterrupted session ends run 2", || {
        both_runs_done(&session_a)
    });
    terminate(a);

    // Interrupted: run 1 and part of run 2 delivered, SIGKILL mid-run 2.
    let config_b = scan.config("b");
    let session_b = tmp.path().join("session-b");
    scan.deliver("b", &scan.files[..n + 14]);
    let mut b = start(&config_b);
    wait_for(&mut b, "run 2 is under way", || {
        data_rows(&session_b.join("run-02/qc.tsv")) >= 6
            && data_rows(&session_b.join("decode/retrieval.tsv")) >= 3
    });
    b.kill().unwrap();
    b.wait().unwrap();
    let done_before = data_rows(&session_b.join("run-02/qc.tsv"));
    eprintln!(
        "killed after {done_before} volumes of run 2, {} betas, {} decoded",
        data_rows(&session_b.join("betas/index.tsv")),
        data_rows(&session_b.join("decode/retrieval.tsv"))
    );
    assert!(done_before < n, "the kill came after run 2 ended");

    // What a crash mid-write leaves: torn last lines and a matrix row
    // ahead of its commit.
    tear(&session_b.join("run-02/qc.tsv"), b"27\tok\tpartial");
    tear(&session_b.join("run-02/masked.npy"), &[0x55; 1000]);
    tear(&session_b.join("run-02/masked_rows.tsv"), b"99\t");
    tear(&session_b.join("ingest_log.tsv"), b"1795000000.000\tnot");
    // And a beta stored whose decode never was: drop the last trial's
    // retrieval (its query row is then ahead of its commit) and
    // reconstruction.
    let retrieval = session_b.join("decode/retrieval.tsv");
    let last = table(&retrieval, &[1, 2]).pop().unwrap();
    assert_ne!(
        last[0], "run",
        "run 1's trials were decoded before the kill"
    );
    let is_last = |l: &str| {
        l.split('\t')
            .skip(1)
            .take(2)
            .eq(last.iter().map(String::as_str))
    };
    drop_lines(&retrieval, is_last);
    let is_last_recon = |l: &str| l.split('\t').take(2).eq(last.iter().map(String::as_str));
    drop_lines(&session_b.join("decode/recon.tsv"), is_last_recon);
    drop_lines(&session_b.join("decode/steps.tsv"), is_last_recon);

    // The rest of run 2 arrives while the daemon is down; it is restarted
    // on the same folder and must finish the session.
    scan.deliver("b", &scan.files[n + 14..]);
    let mut b = start(&config_b);
    wait_for(&mut b, "the resumed session ends run 2", || {
        both_runs_done(&session_b)
    });
    terminate(b);

    let log = std::fs::read_to_string(session_b.join("boldstream.log")).unwrap();
    assert!(log.contains("resuming session"), "{log}");
    assert_eq!(log_events(&session_b, "resumed"), 1);
    assert_eq!(log_events(&session_b, "duplicate"), 0);

    for run in ["run-01", "run-02"] {
        // Every volume exactly once, in order, none lost.
        let qc = table(&session_b.join(format!("{run}/qc.tsv")), &[0, 1]);
        let expect: Vec<Vec<String>> = std::iter::once(vec!["volume".into(), "status".into()])
            .chain((0..VOLUMES).map(|i| vec![i.to_string(), "ok".into()]))
            .collect();
        assert_eq!(qc, expect, "{run}/qc.tsv volumes");
        let rows = table(
            &session_b.join(format!("{run}/masked_rows.tsv")),
            &[0, 1, 2],
        );
        assert_eq!(rows.len(), n + 1, "{run}/masked_rows.tsv");
        for (i, r) in rows.iter().skip(1).enumerate() {
            assert_eq!(r, &[i.to_string(), i.to_string(), "0".into()], "{run}");
        }

        // The same numbers as without the interruption.
        for f in ["motion.par", "masked.npy", "params.npy", "masked_rows.tsv"] {
            same_bytes(&session_a, &session_b, &format!("{run}/{f}"));
        }
        // Everything but arrival time, per-stage latencies and attempts.
        let qc_cols = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 19, 20];
        let qc_a = table(&session_a.join(format!("{run}/qc.tsv")), &qc_cols);
        assert_eq!(
            qc_a,
            table(&session_b.join(format!("{run}/qc.tsv")), &qc_cols),
            "{run}/qc.tsv"
        );
    }

    for f in [
        "betas/raw.npy",
        "betas/z.npy",
        "betas/decode.npy",
        "decode/query.npy",
        "reference.nii.gz",
        "mask.nii.gz",
    ] {
        same_bytes(&session_a, &session_b, f);
    }
    // Betas: all but the time they were ready, latency and compute time.
    let beta_cols: Vec<usize> = (0..13).chain([16]).collect();
    let betas_a = table(&session_a.join("betas/index.tsv"), &beta_cols);
    assert_eq!(
        betas_a,
        table(&session_b.join("betas/index.tsv"), &beta_cols)
    );
    assert_eq!(betas_a.len(), 1 + 2 * 5, "every trial has a beta");
    // Retrieval: all but the per-graph and end-to-end times.
    let retrieval_cols = [0, 1, 2, 3, 4, 5, 6, 7, 13];
    let retrieval_a = table(&session_a.join("decode/retrieval.tsv"), &retrieval_cols);
    assert_eq!(
        retrieval_a,
        table(&retrieval, &retrieval_cols),
        "decode/retrieval.tsv"
    );
    assert_eq!(retrieval_a.len(), 1 + 2 * 5, "every trial was decoded");
    // Reconstructions: the same images, seeds and step counts.
    let recon_cols = [0, 1, 2, 3, 4, 5, 7, 9];
    let mut recon_a = table(&session_a.join("decode/recon.tsv"), &recon_cols);
    let mut recon_b = table(&session_b.join("decode/recon.tsv"), &recon_cols);
    recon_a.sort();
    recon_b.sort();
    assert_eq!(recon_a, recon_b, "decode/recon.tsv");
    assert_eq!(recon_a.len(), 1 + 2 * 5, "every trial was reconstructed");
    for r in recon_a.iter().filter(|r| r[3].ends_with(".png")) {
        same_bytes(&session_a, &session_b, &format!("decode/recon/{}", r[3]));
    }
    for s in [&session_a, &session_b] {
        assert_eq!(data_rows(&s.join("decode/skipped.tsv")), 0);
    }
}

#[test]
fn a_session_folder_is_never_reused_against_the_policy_or_other_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    let config = tmp.path().join("c.toml");
    let base = "[session]\ndir = \"s\"\n\n[ingest]\nwatch_dir = \"export\"\nmode = \"poll\"\n";
    std::fs::write(&config, base).unwrap();
    let mut child = start(&config);
    let session = tmp.path().join("s");
    wait_for(&mut child, "the session folder", || {
        session.join("ingest_log.tsv").is_file()
    });
    terminate(child);
    let before = std::fs::read(session.join("session.toml")).unwrap();

    let refused = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let out = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "started against {text}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = refused(&format!("{base}[realign]\nfd_threshold_mm = 0.9\n"));
    assert!(
        e.contains("realign.fd_threshold_mm") && e.contains("not resumed"),
        "{e}"
    );
    let e = refused(&base.replace("dir = \"s\"", "dir = \"s\"\nresume = \"never\""));
    assert!(
        e.contains("resume = \"never\"") && e.contains("already holds"),
        "{e}"
    );
    assert_eq!(std::fs::read(session.join("session.toml")).unwrap(), before);

    // The same settings (a changed console is allowed): it resumes.
    std::fs::write(&config, format!("{base}[console]\nenabled = false\n")).unwrap();
    let mut child = start(&config);
    wait_for(&mut child, "the resume notice", || {
        log_events(&session, "resumed") == 1
    });
    terminate(child);
}
