//! The demo: the simulator feeding the daemon, end to end, with no input.
//!
//! In: [`DemoOptions`] (all defaulted). Out: a live console of motion and QC
//! per volume while a synthetic session with injected faults is written into
//! an export folder and followed by the real pipeline, then a summary that
//! compares the estimated motion with the simulator's truth.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{RecvTimeoutError, unbounded};

use crate::config::{Config, ConsoleConfig, SessionConfig};
use crate::ingest::IngestConfig;
use crate::messages::{IngestEvent, PipelineEvent};
use crate::pipeline::{Pipeline, PipelineOptions, PipelineSummary};
use crate::simulate::faults::FaultPlan;
use crate::simulate::synth::{SynthSeries, SynthSpec};
use crate::simulate::writer::{Pace, ScanWriter, TruthLocation, WriterOptions};

/// What the demo simulates and how fast.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Folder for the export, session and truth folders (a new
    /// time-stamped subfolder is made inside).
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Runs to simulate.
    #[arg(long, default_value_t = 2)]
    pub runs: usize,
    /// Volumes per run.
    #[arg(long, default_value_t = 40)]
    pub volumes: usize,
    /// Time compression: 1 is real time (TR 1.5 s), 5 writes a volume every 0.3 s.
    #[arg(long, default_value_t = 5.0)]
    pub speed: f64,
    /// Inject no faults (by default a dropped, a re-ordered, a duplicated,
    /// a late, two slowly written and a truncated file).
    #[arg(long)]
    pub no_faults: bool,
    /// Seed of the synthetic session.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            out: PathBuf::from("demo-out"),
            runs: 2,
            volumes: 40,
            speed: 5.0,
            no_faults: false,
            seed: 1,
        }
    }
}

/// How the demo went.
#[derive(Debug)]
pub struct DemoReport {
    /// The pipeline's own summary.
    pub pipeline: PipelineSummary,
    /// Volumes written by the simulator (good and bad).
    pub files_written: usize,
    /// RMS motion error against the truth (degrees, mm) over realigned volumes.
    pub rms_error: (f64, f64),
    /// First-seen → realigned latency, ms: p50, p95, max.
    pub latency_ms: (f64, f64, f64),
    /// Realign time per volume, ms: p50, p95, max.
    pub realign_ms: (f64, f64, f64),
    /// Trigger volume seen → z-scored beta, ms: p50, p95, max.
    pub beta_latency_ms: (f64, f64, f64),
    /// Trials in the schedule (non-warm-up runs).
    pub trials: usize,
    /// Betas produced in non-warm-up runs.
    pub betas: usize,
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95), at(1.0))
}

/// The default fault plan, spread over the session's volumes.
fn demo_faults(total: usize) -> FaultPlan {
    if total < 30 {
        return FaultPlan::none();
    }
    let at = |f: f64| ((total as f64 * f) as usize).max(2);
    let spec = format!(
        "drop={};swap={};dup={};late={}:3;partial={},{};corrupt={}:truncated",
        at(0.12),
        at(0.2),
        at(0.3),
        at(0.55),
        at(0.05),
        at(0.7),
        at(0.8),
    );
    FaultPlan::parse(&spec).unwrap_or_else(|_| FaultPlan::none())
}

impl DemoOptions {
    /// A new time-stamped folder under `out` for this demo's export,
    /// session and truth folders.
    pub fn new_base(&self) -> PathBuf {
        self.out.join(crate::config::timestamp())
    }
}

/// Run the demo in `base` (see [`DemoOptions::new_base`]): simulate,
/// follow live, summarise.
pub fn run_demo(opts: &DemoOptions, base: &std::path::Path) -> anyhow::Result<DemoReport> {
    anyhow::ensure!(
        opts.speed > 0.0 && opts.speed.is_finite(),
        "--speed must be positive"
    );
    anyhow::ensure!(
        opts.runs >= 1 && opts.volumes >= 3,
        "need at least 1 run of 3 volumes"
    );
    let base = base.to_path_buf();
    let export = base.join("export");
    std::fs::create_dir_all(&export).with_context(|| format!("creating {}", export.display()))?;

    let spec = SynthSpec {
        runs: opts.runs,
        volumes_per_run: opts.volumes,
        seed: opts.seed,
        ..SynthSpec::default()
    };
    let tr = spec.tr;
    let interval = Duration::from_secs_f64(tr / opts.speed);
    let series = SynthSeries::new(spec).context("building the synthetic session")?;
    let plan = if opts.no_faults {
        FaultPlan::none()
    } else {
        demo_faults(series.len())
    };

    let mut ingest = IngestConfig::new(&export);
    ingest.naming = "bids".into();
    ingest.volumes_per_run = Some(opts.volumes as u32);
    // Compressed time: the waits scale with the TR the demo plays at.
    ingest.gap_timeout = (3.0 * interval.as_secs_f64()).max(0.2);
    ingest.partial_timeout = (4.0 * interval.as_secs_f64()).max(0.5);
    ingest.poll_interval = 0.05;
    ingest.retry_interval = 0.02;
    // The trial schedule (as the stimulus program would hand it over) and,
    // for neurofeedback, the simulated visual region as a mask.
    let truth = base.join("truth");
    std::fs::create_dir_all(&truth).with_context(|| format!("creating {}", truth.display()))?;
    let mut tables = Vec::new();
    let mut trials = 0;
    for run in 1..=opts.runs as u32 {
        let path = truth.join(format!("run-{run:02}_events.tsv"));
        crate::events::write_events(&path, series.events(run))?;
        if run > 1 {
            trials += series.events(run).len();
        }
        tables.push(path);
    }
    let mut roi = series.task_map();
    for v in roi.values_mut() {
        *v = if *v > 0.5 { 1.0 } else { 0.0 };
    }
    let roi_path = truth.join("visual_roi.nii.gz");
    crate::formats::nifti::write_volume(
        &roi_path,
        &roi,
        &crate::formats::nifti::WriteOptions {
            gzip: true,
            ..Default::default()
        },
    )?;
    let glm = crate::glm::stage::GlmConfig {
        tr: Some(tr),
        events: tables,
        warmup_runs: usize::from(opts.runs > 1),
        feedback: crate::glm::feedback::FeedbackConfig {
            rois: vec![crate::glm::feedback::RoiConfig {
                name: "visual".into(),
                mask: roi_path,
            }],
            decoders: Vec::new(),
            smoothing: crate::glm::feedback::Smoothing::Ema { alpha: 0.5 },
        },
        ..Default::default()
    };
    let config = Config {
        session: SessionConfig {
            dir: Some(base.join("session")),
        },
        ingest,
        realign: Default::default(),
        buffer: Default::default(),
        glm,
        decode: Default::default(),
        console: ConsoleConfig { enabled: true },
    };
    let config_text = format!(
        "# demo: {} runs x {} volumes, TR {tr} s played {}x faster, faults: {}\n",
        opts.runs,
        opts.volumes,
        opts.speed,
        if opts.no_faults { "none" } else { "yes" }
    );

    println!(
        "boldstream demo: simulating {} runs x {} volumes (64x64x36, 3 mm, SNR 50, TR {tr} s at {}x) into {}",
        opts.runs,
        opts.volumes,
        opts.speed,
        export.display()
    );
    let (obs_tx, obs_rx) = unbounded();
    let pipeline = Pipeline::start(
        &config,
        &config_text,
        PipelineOptions {
            observers: vec![obs_tx],
            console: None,
        },
    )?;

    let writer_opts = WriterOptions {
        pace: Pace::Interval(interval),
        truth: TruthLocation::Dir(base.join("truth")),
        ..WriterOptions::default()
    };
    let writer_export = export.clone();
    let sim = std::thread::Builder::new()
        .name("simulator".into())
        .spawn(move || {
            ScanWriter::new(&writer_export, writer_opts)
                .run(&series, &plan)
                .map(|r| (r, series))
        })?;

    // Follow the pipeline until every run has ended (ingest ends a run once
    // all its volumes are accounted for), with a generous guard.
    let budget = interval * (opts.runs * opts.volumes) as u32 * 3 + Duration::from_secs(60);
    let deadline = Instant::now() + budget;
    let mut ended = 0usize;
    let mut realigned = Vec::new();
    let mut betas = Vec::new();
    while ended < opts.runs {
        let left = deadline.saturating_duration_since(Instant::now());
        match obs_rx.recv_timeout(left) {
            Ok(PipelineEvent::Ingest(IngestEvent::RunEnded { .. })) => ended += 1,
            Ok(PipelineEvent::Realigned(r)) => realigned.push(r),
            Ok(PipelineEvent::Beta(b)) => betas.push(b),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!("demo: not every run ended within {budget:?}; stopping");
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let (sim_report, series) = sim
        .join()
        .map_err(|_| anyhow::anyhow!("the simulator thread panicked"))??;
    let summary = pipeline.stop();
    while let Ok(ev) = obs_rx.try_recv() {
        match ev {
            PipelineEvent::Realigned(r) => realigned.push(r),
            PipelineEvent::Beta(b) => betas.push(b),
            _ => {}
        }
    }

    let (mut se_r, mut se_t, mut n) = (0.0, 0.0, 0usize);
    for r in &realigned {
        if let Some(i) = series.session_index(r.key) {
            let t = series.truth(i).0;
            for a in 0..3 {
                se_r += (r.params.0[a] - t[a]).to_degrees().powi(2);
                se_t += (r.params.0[a + 3] - t[a + 3]).powi(2);
            }
            n += 3;
        }
    }
    let rms = |s: f64| {
        if n > 0 {
            (s / n as f64).sqrt()
        } else {
            f64::NAN
        }
    };
    let report = DemoReport {
        files_written: sim_report.written.len(),
        rms_error: (rms(se_r), rms(se_t)),
        latency_ms: percentiles(
            realigned
                .iter()
                .map(|r| {
                    r.realigned_at
                        .saturating_duration_since(r.ingest.first_seen)
                        .as_secs_f64()
                        * 1e3
                })
                .collect(),
        ),
        realign_ms: percentiles(realigned.iter().map(|r| r.realign_seconds * 1e3).collect()),
        beta_latency_ms: percentiles(
            betas
                .iter()
                .filter_map(|b| {
                    b.trigger_seen
                        .map(|t| b.ready.saturating_duration_since(t).as_secs_f64() * 1e3)
                })
                .collect(),
        ),
        trials,
        betas: betas.iter().filter(|b| !b.warmup).count(),
        pipeline: summary,
    };
    print_report(&report, &base);
    Ok(report)
}

fn print_report(r: &DemoReport, base: &std::path::Path) {
    let s = &r.pipeline;
    println!();
    println!("== demo summary");
    println!(
        "files written {}; volumes realigned {} (late {}), missing {}, duplicates {}, quarantined {}, realign failures {}",
        r.files_written,
        s.realigned,
        s.ingest.late,
        s.ingest.missing,
        s.ingest.duplicates,
        s.ingest.quarantined,
        s.realign_failed
    );
    println!(
        "motion vs simulator truth: RMS error {:.3} deg, {:.3} mm",
        r.rms_error.0, r.rms_error.1
    );
    println!(
        "latency file seen -> realigned: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms; realign+resample p50 {:.1} ms, p95 {:.1} ms",
        r.latency_ms.0, r.latency_ms.1, r.latency_ms.2, r.realign_ms.0, r.realign_ms.1
    );
    println!(
        "betas: {} of {} trials of the non-warm-up runs ({} in all, {} trials without a beta); trigger volume seen -> z-scored beta: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        r.betas,
        r.trials,
        s.betas,
        s.trials_skipped,
        r.beta_latency_ms.0,
        r.beta_latency_ms.1,
        r.beta_latency_ms.2
    );
    for rb in s.buffers.runs() {
        println!(
            "ring buffer run {}: {} frames of {} kept (oldest {:?}, newest {:?})",
            rb.run(),
            rb.len(),
            rb.capacity(),
            rb.frames().next().map(|f| f.index),
            rb.frames().last().map(|f| f.index)
        );
    }
    println!("session folder: {}", s.session_dir.display());
    println!("simulator truth: {}", base.join("truth").display());
}
