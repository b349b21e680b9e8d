//! A small decoding session on simulated data with the demo model, shared
//! by `tests/serve_protocol.rs` and `benches/serve.rs`.
//!
//! In: how many runs and images per run. Out: a [`Config`] for the daemon
//! (watching `<tmp>/export`, session in `<tmp>/session`, the session mask a
//! 2,000-voxel region as the demo subject's adapter expects, the same region
//! as a neurofeedback ROI, MindEye's trial design over the demo bank's
//! images) and the simulated series to write into the export folder.
//!
//! No calibration: the demo subject's adapter decodes whatever the region
//! holds, so retrievals are not meaningful; every trial still gets a beta,
//! a retrieval and a reconstruction, which is what the feed is tested on.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use boldstream::config::{Config, ConsoleConfig, SessionConfig};
use boldstream::formats::events_tsv::write_events;
use boldstream::formats::nifti::{WriteOptions, write_volume};
use boldstream::glm::feedback::{FeedbackConfig, RoiConfig};
use boldstream::glm::spec::GlmConfig;
use boldstream::ingest::IngestConfig;
use boldstream::tools::simulate::events::{MindEyeDesign, mindeye_run, mindeye_volumes};
use boldstream::tools::simulate::faults::FaultPlan;
use boldstream::tools::simulate::patterns::pick_region;
use boldstream::tools::simulate::synth::{SynthSeries, SynthSpec};
use boldstream::tools::simulate::writer::{Pace, ScanWriter, TruthLocation, WriterOptions};
use boldstream::types::events::Event;
use rand::SeedableRng;

/// The demo model folder.
pub fn demo_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("onnx/demo")
}

/// A session ready to run.
pub struct DecodingSession {
    /// The daemon's configuration (serve left at its defaults).
    pub config: Config,
    /// What the scanner writes.
    pub series: SynthSeries,
    /// Volumes per run.
    pub volumes: usize,
    /// Runs.
    pub runs: usize,
    /// Image trials per run (each is decoded and reconstructed).
    pub images_per_run: usize,
    /// The export folder.
    pub export: PathBuf,
    /// The bank's image ids.
    pub bank: Vec<String>,
}

/// Build a session of `runs` runs of `images_per_run` images (plus one
/// blank trial each) under `dir`.
pub fn decoding_session(dir: &Path, runs: usize, images_per_run: usize) -> DecodingSession {
    let model = demo_model();
    let bank: Vec<String> = std::fs::read_to_string(model.join("bank/ids.txt"))
        .expect("the demo bank's ids")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let design = MindEyeDesign {
        images_per_run,
        blank_trials_per_run: 1,
        ..MindEyeDesign::default()
    };
    let volumes = mindeye_volumes(&design, images_per_run + 1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let events: Vec<Vec<Event>> = (0..runs)
        .map(|r| {
            let images: Vec<String> = bank
                .iter()
                .cycle()
                .skip(r * images_per_run)
                .take(images_per_run)
                .cloned()
                .collect();
            mindeye_run(&design, &images, &mut rng)
        })
        .collect();
    let series = SynthSeries::new(SynthSpec {
        runs,
        volumes_per_run: volumes,
        tr: design.tr,
        seed: 9,
        events: Some(events.clone()),
        ..SynthSpec::default()
    })
    .expect("the simulated session");
    let export = dir.join("export");
    std::fs::create_dir_all(&export).expect("export folder");
    let (mask, _) = pick_region(
        &series.clean_volume(0),
        &series.brain_map(),
        &series.task_map(),
        2000,
    )
    .expect("a 2,000-voxel region");
    let mask_path = dir.join("region_mask.nii.gz");
    write_volume(
        &mask_path,
        &mask,
        &WriteOptions {
            gzip: true,
            ..Default::default()
        },
    )
    .expect("writing the mask");
    let mut tables = Vec::new();
    for (r, ev) in events.iter().enumerate() {
        let path = dir.join(format!("run-{:02}_events.tsv", r + 1));
        write_events(&path, ev).expect("writing an events table");
        tables.push(path);
    }
    let mut ingest = IngestConfig::new(&export);
    ingest.naming = "bids".into();
    ingest.volumes_per_run = Some(volumes as u32);
    ingest.poll_interval = 0.05;
    ingest.retry_interval = 0.02;
    let realign = boldstream::realign::RealignConfig {
        mask: Some(mask_path.clone()),
        ..Default::default()
    };
    let config = Config {
        session: SessionConfig {
            dir: Some(dir.join("session")),
            ..Default::default()
        },
        ingest,
        realign,
        buffer: Default::default(),
        glm: GlmConfig {
            tr: Some(design.tr),
            events: tables,
            skip_trial_types: vec!["blank".into()],
            feedback: FeedbackConfig {
                rois: vec![RoiConfig {
                    name: "visual".into(),
                    mask: mask_path,
                }],
                ..Default::default()
            },
            ..GlmConfig::default()
        },
        decode: boldstream::decode::DecodeConfig {
            model: Some(model.clone()),
            subject: Some(model.join("subject-sim01")),
            ..Default::default()
        },
        console: ConsoleConfig { enabled: false },
        serve: Default::default(),
    };
    DecodingSession {
        config,
        series,
        volumes,
        runs,
        images_per_run,
        export,
        bank,
    }
}

impl DecodingSession {
    /// Every volume, in order, one per `interval`.
    pub fn write(&self, interval: Duration) {
        let opts = WriterOptions {
            pace: Pace::Interval(interval),
            truth: TruthLocation::Nowhere,
            ..WriterOptions::default()
        };
        ScanWriter::new(&self.export, opts)
            .run(&self.series, &FaultPlan::none())
            .expect("the simulated scan");
    }

    /// Volumes in the session.
    pub fn total_volumes(&self) -> usize {
        self.volumes * self.runs
    }

    /// Image trials in the session.
    pub fn total_trials(&self) -> usize {
        self.images_per_run * self.runs
    }
}
