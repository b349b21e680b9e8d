//! Running as a systemd service: the unit file verifies, the daemon says
//! READY=1 once started and WATCHDOG=1 from the pipeline's heartbeat, and a
//! stuck stage stops the heartbeat (so the watchdog would restart it).
//!
//! The notify socket is a Unix datagram socket of the test's own, as
//! systemd would pass in `NOTIFY_SOCKET`. Waits are reads with deadlines.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use boldstream::config::Config;
use boldstream::ingest::IngestConfig;
use boldstream::pipeline::{Pipeline, PipelineOptions};
use boldstream::tools::simulate::faults::FaultPlan;
use boldstream::tools::simulate::synth::{SynthSeries, SynthSpec};
use boldstream::tools::simulate::writer::{Pace, ScanWriter, TruthLocation, WriterOptions};
use boldstream::types::messages::PipelineEvent;

const BIN: &str = env!("CARGO_BIN_EXE_boldstream");
const UNIT: &str = include_str!("../systemd/boldstream.service");

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.exists(),
        "systemd-analyze is missing (Debian package systemd); the unit cannot be verified"
    );
    // verify checks that ExecStart's binary exists: point it at the one
    // just built, everything else as shipped.
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("boldstream.service");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/boldstream", BIN)).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("boldstream.service"),
        "warnings about the unit: {stderr}"
    );
    let line = |key: &str| {
        UNIT.lines()
            .find(|l| l.starts_with(&format!("{key}=")))
            .map(|l| l[key.len() + 1..].trim().to_string())
    };
    assert_eq!(line("Type").as_deref(), Some("notify"));
    assert_eq!(line("Restart").as_deref(), Some("on-failure"));
    assert_eq!(line("ProtectSystem").as_deref(), Some("strict"));
    assert_eq!(line("NoNewPrivileges").as_deref(), Some("yes"));
    assert_eq!(line("User").as_deref(), Some("boldstream"));
    assert!(line("WatchdogSec").is_some_and(|s| s.parse::<u32>().is_ok_and(|n| n > 0)));
    assert!(line("ReadWritePaths").is_some());
    let exec = line("ExecStart").unwrap();
    assert!(
        exec.ends_with("run --config /etc/boldstream/boldstream.toml"),
        "{exec}"
    );
}

fn recv_until(sock: &UnixDatagram, want: &str, deadline: Instant, seen: &mut Vec<String>) -> bool {
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10)),
        ))
        .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.lines().any(|l| l == want);
                seen.push(msg);
                if hit {
                    return true;
                }
            }
            Err(_) => break,
        }
    }
    false
}

#[test]
fn the_daemon_notifies_ready_then_feeds_the_watchdog_then_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    let config = tmp.path().join("boldstream.toml");
    std::fs::write(
        &config,
        "[session]\ndir = \"session\"\n[ingest]\nwatch_dir = \"export\"\nnaming = \"bids\"\nmode = \"poll\"\npoll_interval = 0.05\n[console]\nenabled = false\n",
    )
    .unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "4000000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    assert!(
        recv_until(&sock, "READY=1", deadline, &mut seen),
        "no READY=1: {seen:?}"
    );
    let ready = seen.last().cloned().unwrap_or_default();
    assert!(ready.contains("STATUS=watching"), "{ready}");
    // With no volumes at all, the heartbeat alone keeps the watchdog fed.
    for _ in 0..3 {
        assert!(
            recv_until(&sock, "WATCHDOG=1", deadline, &mut seen),
            "the watchdog was not fed: {seen:?}"
        );
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        recv_until(&sock, "STOPPING=1", deadline, &mut seen),
        "no STOPPING=1: {seen:?}"
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config(export: &Path, session: &Path) -> Config {
    let mut ingest = IngestConfig::new(export);
    ingest.naming = "bids".into();
    ingest.volumes_per_run = Some(12);
    ingest.poll_interval = 0.05;
    ingest.retry_interval = 0.02;
    Config::embedded(ingest, session)
}

#[test]
fn a_stuck_stage_stops_the_heartbeat_and_it_resumes_when_unstuck() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    // An observer that takes one event and then is not read: the end of the
    // pipeline blocks on it, as on a hung disk or a wedged device call.
    let (obs_tx, obs_rx) = crossbeam_channel::bounded::<PipelineEvent>(1);
    let pipeline = Pipeline::start(
        &config(&export, &tmp.path().join("session")),
        "# test\n",
        PipelineOptions::observed_by(obs_tx),
    )
    .unwrap();
    let beats = pipeline.heartbeats();
    let guard = Duration::from_secs(60);
    beats
        .recv_timeout(guard)
        .expect("heartbeats cross an idle pipeline");

    let series = SynthSeries::new(SynthSpec {
        volumes_per_run: 12,
        seed: 7,
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
    let deadline = Instant::now() + guard;
    while !obs_rx.is_full() {
        assert!(Instant::now() < deadline, "the observer never filled");
        std::thread::yield_now();
    }
    // The end of the pipeline blocks on its next event: heartbeats already
    // past it drain, then nothing more comes. (One that slipped through
    // before the block gets another try; a pipeline that never blocks would
    // deliver one every second and fail all three.)
    let stuck = (0..3).any(|_| {
        while beats.try_recv().is_ok() {}
        beats.recv_timeout(Duration::from_secs(4)).is_err()
    });
    assert!(stuck, "heartbeats kept crossing a stuck pipeline");

    // Unstuck: read everything; the heartbeat comes back.
    let mut realigned = 0;
    let back = loop {
        match obs_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(PipelineEvent::Realigned(_)) => realigned += 1,
            Ok(_) => {}
            Err(_) => {}
        }
        if let Ok(t) = beats.try_recv() {
            break t;
        }
        assert!(
            Instant::now() < deadline + guard,
            "the heartbeat never came back"
        );
    };
    assert!(back.elapsed() < guard);
    while realigned < 12 {
        match obs_rx.recv_timeout(guard) {
            Ok(PipelineEvent::Realigned(_)) => realigned += 1,
            Ok(_) => {}
            Err(_) => panic!("only {realigned} of 12 volumes came through"),
        }
    }
    drop(obs_rx);
    let summary = pipeline.stop();
    assert_eq!(summary.realigned, 12);
}
