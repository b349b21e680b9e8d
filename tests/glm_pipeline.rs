//! Betas through the whole daemon: simulator → export folder → ingest →
//! realign → GLM → session store, with the schedule from an events table or
//! sent live by a stimulus program over TCP/UDP.
//!
//! Waits are on the pipeline's own events with a generous guard; no sleeps.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use boldstream::config::Config;
use boldstream::formats::events_tsv::write_events;
use boldstream::glm::spec::GlmConfig;
use boldstream::ingest::IngestConfig;
use boldstream::pipeline::{Pipeline, PipelineOptions};
use boldstream::tools::simulate::faults::FaultPlan;
use boldstream::tools::simulate::synth::{SynthSeries, SynthSpec};
use boldstream::tools::simulate::writer::{Pace, ScanWriter, TruthLocation, WriterOptions};
use boldstream::types::events::Event;
use boldstream::types::messages::{IngestEvent, PipelineEvent};
use crossbeam_channel::unbounded;

const GUARD: Duration = Duration::from_secs(180);

fn config(tmp: &Path, volumes: u32, glm: GlmConfig) -> Config {
    let mut ingest = IngestConfig::new(tmp.join("export"));
    ingest.naming = "bids".into();
    ingest.volumes_per_run = Some(volumes);
    ingest.poll_interval = 0.05;
    ingest.retry_interval = 0.02;
    Config {
        glm,
        ..Config::embedded(ingest, &tmp.join("session"))
    }
}

fn write_run(series: &SynthSeries, export: &Path) {
    let opts = WriterOptions {
        pace: Pace::Interval(Duration::from_millis(15)),
        truth: TruthLocation::Nowhere,
        ..WriterOptions::default()
    };
    ScanWriter::new(export, opts)
        .run(series, &FaultPlan::none())
        .expect("simulation");
}

/// Collect events until the run has ended.
fn until_run_ends(rx: &crossbeam_channel::Receiver<PipelineEvent>) -> Vec<PipelineEvent> {
    let deadline = Instant::now() + GUARD;
    let mut out = Vec::new();
    loop {
        let ev = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the run did not end in time");
        let end = matches!(ev, PipelineEvent::Ingest(IngestEvent::RunEnded { .. }));
        out.push(ev);
        if end {
            return out;
        }
    }
}

fn betas(events: &[PipelineEvent]) -> Vec<&boldstream::types::messages::TrialBeta> {
    events
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Beta(b) => Some(&**b),
            _ => None,
        })
        .collect()
}

fn skipped(events: &[PipelineEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::TrialSkipped { trial, reason, .. } => Some(format!("{trial}: {reason}")),
            _ => None,
        })
        .collect()
}

#[test]
fn every_trial_of_a_run_gets_a_beta_and_the_task_region_responds() {
    let volumes = 150;
    let series = SynthSeries::new(SynthSpec {
        volumes_per_run: volumes,
        seed: 12,
        activation: 0.03,
        ..SynthSpec::default()
    })
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("export")).unwrap();
    let events_path = tmp.path().join("run-01_events.tsv");
    let events: Vec<Event> = series.events(1).to_vec();
    write_events(&events_path, &events).unwrap();
    let glm = GlmConfig {
        tr: Some(1.5),
        events: vec![events_path],
        ..GlmConfig::default()
    };
    let cfg = config(tmp.path(), volumes as u32, glm);
    let (tx, rx) = unbounded();
    let pipeline = Pipeline::start(&cfg, "# test\n", PipelineOptions::observed_by(tx)).unwrap();
    write_run(&series, &tmp.path().join("export"));
    let evs = until_run_ends(&rx);
    let summary = pipeline.stop();

    let b = betas(&evs);
    assert!(events.len() >= 15, "design too small: {}", events.len());
    assert_eq!(skipped(&evs), Vec::<String>::new());
    assert_eq!(b.len(), events.len(), "one beta per trial");
    let trials: BTreeSet<usize> = b.iter().map(|b| b.trial).collect();
    assert_eq!(trials.len(), events.len());
    assert_eq!(summary.betas as usize, events.len());

    // Each beta came when its window was in: the trigger volume is the
    // first at or after onset + 7.5 s, unless the trial had to wait for
    // degrees of freedom (flagged).
    for beta in &b {
        let due = ((beta.event.onset + 7.5) / 1.5 - 1e-9).ceil() as u32;
        assert_eq!(beta.trigger.index, due, "trial {}", beta.trial);
        if !beta.delayed {
            assert_eq!(beta.frames as u32, due + 1, "trial {}", beta.trial);
        }
    }

    // The simulated task region responds: mean beta there well above the
    // rest of the brain, on average over trials.
    let mask = evs
        .iter()
        .find_map(|e| match e {
            PipelineEvent::ReferenceReady { mask, .. } => Some(mask.clone()),
            _ => None,
        })
        .unwrap();
    let mut task = Vec::new();
    mask.gather_into(series.task_map().values(), &mut task);
    let (mut inside, mut outside) = (0.0f64, 0.0f64);
    let (ni, no) = (
        task.iter().filter(|&&w| w > 0.5).count() as f64,
        task.iter().filter(|&&w| w == 0.0).count() as f64,
    );
    assert!(ni > 20.0 && no > 1000.0, "task region {ni}, rest {no}");
    for beta in &b {
        for (v, &w) in beta.raw.iter().zip(&task) {
            if w > 0.5 {
                inside += *v as f64 / ni;
            } else if w == 0.0 {
                outside += *v as f64 / no;
            }
        }
    }
    let (inside, outside) = (inside / b.len() as f64, outside / b.len() as f64);
    assert!(
        inside > 1.0 && inside > 5.0 * outside.abs(),
        "task {inside:.3} % vs rest {outside:.3} %"
    );

    // The store holds every beta: raw, z and decode arrays and the index.
    let session = tmp.path().join("session/betas");
    let index = std::fs::read_to_string(session.join("index.tsv")).unwrap();
    assert_eq!(index.lines().count(), 1 + events.len());
    assert!(index.lines().skip(1).all(|l| l.ends_with("\tok")));
    for f in ["raw.npy", "z.npy", "decode.npy"] {
        let bytes = std::fs::read(session.join(f)).unwrap();
        let (_, rows, cols) = boldstream::formats::npy::decode_2d(&bytes).unwrap();
        assert_eq!((rows, cols), (events.len(), mask.len()), "{f}");
    }
}

#[test]
fn live_trials_over_tcp_and_udp_with_garbage_in_between() {
    let volumes = 100;
    let series = SynthSeries::new(SynthSpec {
        volumes_per_run: volumes,
        seed: 13,
        ..SynthSpec::default()
    })
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("export")).unwrap();
    let glm = GlmConfig {
        tr: Some(1.5),
        live_events: Some("127.0.0.1:0".into()),
        noise_model: boldstream::glm::model::NoiseModel::Ols,
        ..GlmConfig::default()
    };
    let cfg = config(tmp.path(), volumes as u32, glm);
    let (tx, rx) = unbounded();
    let pipeline = Pipeline::start(&cfg, "# test\n", PipelineOptions::observed_by(tx)).unwrap();
    let addr = pipeline.live_addr().unwrap();
    let events: Vec<Event> = series.events(1).to_vec();
    let (tcp_events, udp_events) = events.split_at(events.len() - 3);

    // A stimulus program on TCP: trials, with garbage lines in between.
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut ask = |line: &str| -> String {
        writeln!(writer, "{line}").unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        reply
    };
    assert!(ask("hello?").contains("\"ok\":false"));
    assert!(ask(r#"{"type":"trial","onset":"soon"}"#).contains("not a trial message"));
    assert!(ask(r#"{"type":"trial","onset":5,"duration":-1}"#).contains("duration"));
    for e in tcp_events {
        let msg = serde_json::json!({
            "type": "trial", "onset": e.onset, "duration": e.duration,
            "trial_type": e.trial_type, "image_id": e.stim_id,
        });
        assert_eq!(ask(&msg.to_string()), "{\"ok\":true}\n");
    }
    // The rest fire-and-forget over UDP.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for e in udp_events {
        let msg = serde_json::json!({"type": "trial", "onset": e.onset, "duration": e.duration, "image_id": e.stim_id});
        udp.send_to(msg.to_string().as_bytes(), addr).unwrap();
    }
    // One more TCP request after the UDP ones: the daemon has read the
    // socket past them (same thread), so they are queued before the scan.
    assert_eq!(
        ask(r#"{"type":"trial","onset":1000,"duration":1}"#),
        "{\"ok\":true}\n"
    );

    write_run(&series, &tmp.path().join("export"));
    let evs = until_run_ends(&rx);
    pipeline.stop();
    let b = betas(&evs);
    let got: BTreeSet<String> = b.iter().filter_map(|b| b.event.stim_id.clone()).collect();
    let want: BTreeSet<String> = events.iter().filter_map(|e| e.stim_id.clone()).collect();
    assert_eq!(got, want, "every live trial (TCP and UDP) got a beta");
    // The trial beyond the run's end is reported, not lost silently.
    let s = skipped(&evs);
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(s[0].contains("run ended"), "{s:?}");
}
