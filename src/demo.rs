//! The demo: the simulator feeding the daemon, end to end, with no input.
//!
//! In: [`DemoOptions`] (all defaulted). Out: a live console of motion and QC
//! per volume while a synthetic session with injected faults is written into
//! an export folder and followed by the real pipeline, then a summary that
//! compares the estimated motion with the simulator's truth.
//!
//! With the committed demo model folder (`onnx/demo`) and ONNX Runtime at
//! hand, the simulated subject also sees images from the model's bank: each
//! trial adds the demo subject's response to its image (`sim_responses.npy`)
//! to a 2,000-voxel region, the session mask is that region (the subject's
//! voxel order), and the daemon retrieves and reconstructs every trial of
//! the runs after the warm-up run; the summary scores retrieval against the
//! images shown.

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
    #[arg(long, default_value_t = 80)]
    pub volumes: usize,
    /// Time compression: 1 is real time (TR 1.5 s), 8 writes a volume every 0.19 s.
    #[arg(long, default_value_t = 8.0)]
    pub speed: f64,
    /// Inject no faults (by default a dropped, a re-ordered, a duplicated,
    /// a late, two slowly written and a truncated file).
    #[arg(long)]
    pub no_faults: bool,
    /// Seed of the synthetic session.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Model folder for decoding (its `subject-sim01` is the simulated
    /// subject); decoding is skipped, with a note, when it is missing or
    /// ONNX Runtime cannot be found.
    #[arg(long, default_value = "onnx/demo")]
    pub model: PathBuf,
    /// Do not decode.
    #[arg(long)]
    pub no_decode: bool,
    /// Signal change per unit of the subject's response to an image.
    #[arg(long, default_value_t = 0.015)]
    pub pattern_amplitude: f64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            out: PathBuf::from("demo-out"),
            runs: 2,
            volumes: 80,
            speed: 8.0,
            no_faults: false,
            seed: 1,
            model: PathBuf::from("onnx/demo"),
            no_decode: false,
            pattern_amplitude: 0.015,
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
    /// Decoding, when it was on.
    pub decode: Option<DecodeReport>,
}

/// How decoding went in the demo.
#[derive(Debug, Clone)]
pub struct DecodeReport {
    /// Trials retrieved (fast path).
    pub decoded: usize,
    /// Of those, trials whose image was the best candidate.
    pub top1: usize,
    /// … among the best five.
    pub top5: usize,
    /// Candidates in the bank.
    pub bank: usize,
    /// Reconstructions written.
    pub reconstructed: usize,
    /// Trials not decoded or reconstructed (each reported).
    pub skipped: usize,
    /// Trigger volume seen → retrieval, ms: p50, p95, max.
    pub retrieval_ms: (f64, f64, f64),
    /// Trigger volume seen → reconstruction, ms: p50, p95, max.
    pub reconstruction_ms: (f64, f64, f64),
}

/// What decoding in the demo needs: the model, its simulated subject, the
/// subject's responses to the bank images, and a usable ONNX Runtime.
struct DecodeSetup {
    model: PathBuf,
    subject: PathBuf,
    /// Bank ids, held-out test ids first.
    ids: Vec<String>,
    responses: std::collections::HashMap<String, Vec<f32>>,
    voxels: usize,
}

fn decode_setup(opts: &DemoOptions) -> Result<DecodeSetup, String> {
    let subject = opts.model.join("subject-sim01");
    let manifest =
        crate::decode::manifest::SubjectManifest::load(&subject).map_err(|e| e.to_string())?;
    crate::decode::runtime::Runtime::new(&Default::default()).map_err(|e| e.to_string())?;
    let read =
        |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()));
    let bank: Vec<String> = read(opts.model.join("bank/ids.txt"))?
        .lines()
        .map(str::to_string)
        .collect();
    let test: Vec<String> = read(subject.join("test_ids.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    let path = subject.join("sim_responses.npy");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (values, rows, cols) =
        crate::sinks::npy::decode_2d(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if rows != bank.len() || cols != manifest.voxels {
        return Err(format!(
            "{}: {rows}x{cols}, expected {}x{} (bank x voxels)",
            path.display(),
            bank.len(),
            manifest.voxels
        ));
    }
    let responses = bank
        .iter()
        .enumerate()
        .map(|(r, id)| {
            let row = values[r * cols..(r + 1) * cols]
                .iter()
                .map(|&v| v as f32)
                .collect();
            (id.clone(), row)
        })
        .collect();
    let mut ids: Vec<String> = test.iter().filter(|t| bank.contains(t)).cloned().collect();
    ids.extend(bank.iter().filter(|b| !test.contains(b)).cloned());
    Ok(DecodeSetup {
        model: opts.model.clone(),
        subject,
        ids,
        responses,
        voxels: manifest.voxels,
    })
}

/// Give the design's images bank ids: the warm-up run gets training images,
/// later runs the held-out ones first; a repeated image keeps its id.
fn bank_events(
    series: &SynthSeries,
    runs: usize,
    ids: &[String],
    n_test: usize,
) -> Vec<Vec<crate::events::Event>> {
    let mut map = std::collections::HashMap::<String, String>::new();
    let (mut next_test, mut next_train) = (0usize, n_test);
    (1..=runs as u32)
        .map(|run| {
            series
                .events(run)
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    if let Some(id) = &e.stim_id {
                        let mapped = map.entry(id.clone()).or_insert_with(|| {
                            let pick = if run > 1 && next_test < n_test {
                                next_test += 1;
                                next_test - 1
                            } else {
                                next_train += 1;
                                next_train - 1
                            };
                            ids[pick % ids.len()].clone()
                        });
                        e.stim_id = Some(mapped.clone());
                    }
                    e
                })
                .collect()
        })
        .collect()
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
    let truth = base.join("truth");
    std::fs::create_dir_all(&truth).with_context(|| format!("creating {}", truth.display()))?;
    let decode = if opts.no_decode {
        None
    } else {
        match decode_setup(opts) {
            Ok(d) => Some(d),
            Err(e) => {
                println!("decoding off for this demo: {e}");
                None
            }
        }
    };
    let mut series = SynthSeries::new(spec.clone()).context("building the synthetic session")?;
    let mut decode_mask = None;
    if let Some(d) = &decode {
        let n_test = d.ids.len().min(20);
        let events = bank_events(&series, opts.runs, &d.ids, n_test);
        series = SynthSeries::new(SynthSpec {
            events: Some(events),
            ..spec
        })
        .context("building the synthetic session")?;
        let (mask, order) = crate::simulate::patterns::pick_region(
            &series.clean_volume(0),
            &series.brain_map(),
            &series.task_map(),
            d.voxels,
        )?;
        let patterns = crate::simulate::patterns::StimulusPatterns::new(
            order,
            d.responses.clone(),
            opts.pattern_amplitude,
        )?;
        series = series.with_patterns(patterns)?;
        let path = truth.join("decode_mask.nii.gz");
        crate::formats::nifti::write_volume(
            &path,
            &mask,
            &crate::formats::nifti::WriteOptions {
                gzip: true,
                ..Default::default()
            },
        )?;
        decode_mask = Some(path);
    }
    let series = series;
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
        realign: crate::realign::RealignConfig {
            // The subject's voxel order is the pattern region's.
            mask: decode_mask,
            ..Default::default()
        },
        buffer: Default::default(),
        glm,
        decode: match &decode {
            Some(d) => crate::decode::DecodeConfig {
                model: Some(d.model.clone()),
                subject: Some(d.subject.clone()),
                ..Default::default()
            },
            None => Default::default(),
        },
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
    let mut decoded = Vec::new();
    let mut recons = Vec::new();
    let mut skipped = 0usize;
    while ended < opts.runs {
        let left = deadline.saturating_duration_since(Instant::now());
        match obs_rx.recv_timeout(left) {
            Ok(PipelineEvent::Ingest(IngestEvent::RunEnded { .. })) => ended += 1,
            Ok(PipelineEvent::Realigned(r)) => realigned.push(r),
            Ok(PipelineEvent::Beta(b)) => betas.push(b),
            Ok(PipelineEvent::Decoded(d)) => decoded.push(d),
            Ok(PipelineEvent::Reconstructed(r)) => recons.push(r),
            Ok(PipelineEvent::DecodeSkipped { .. }) => skipped += 1,
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
            PipelineEvent::Decoded(d) => decoded.push(d),
            PipelineEvent::Reconstructed(r) => recons.push(r),
            PipelineEvent::DecodeSkipped { .. } => skipped += 1,
            _ => {}
        }
    }
    let decode_report = decode.as_ref().map(|_| DecodeReport {
        decoded: decoded.len(),
        top1: decoded.iter().filter(|d| d.true_rank == Some(1)).count(),
        top5: decoded
            .iter()
            .filter(|d| d.true_rank.is_some_and(|r| r <= 5))
            .count(),
        bank: decoded.first().map_or(0, |d| d.bank_size),
        reconstructed: recons.len(),
        skipped,
        retrieval_ms: percentiles(
            decoded
                .iter()
                .filter_map(|d| d.since_trigger.map(|s| s * 1e3))
                .collect(),
        ),
        reconstruction_ms: percentiles(
            recons
                .iter()
                .filter_map(|r| r.since_trigger.map(|s| s * 1e3))
                .collect(),
        ),
    });

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
        decode: decode_report,
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
    if let Some(d) = &r.decode {
        let pct = |n: usize| 100.0 * n as f64 / d.decoded.max(1) as f64;
        println!(
            "decoding: {} trials retrieved, image shown ranked first in {} ({:.0} %, chance {:.1} %), in the top 5 in {} ({:.0} %, chance {:.1} %) among {} candidates",
            d.decoded,
            d.top1,
            pct(d.top1),
            100.0 / d.bank.max(1) as f64,
            d.top5,
            pct(d.top5),
            500.0 / d.bank.max(1) as f64,
            d.bank
        );
        println!(
            "  trigger volume seen -> retrieval p50 {:.1} ms, p95 {:.1} ms; -> reconstruction p50 {:.1} ms, p95 {:.1} ms; {} reconstructions in {}, {} trials skipped",
            d.retrieval_ms.0,
            d.retrieval_ms.1,
            d.reconstruction_ms.0,
            d.reconstruction_ms.1,
            d.reconstructed,
            s.session_dir.join("decode/recon").display(),
            d.skipped
        );
    }
    println!("session folder: {}", s.session_dir.display());
    println!("simulator truth: {}", base.join("truth").display());
}
