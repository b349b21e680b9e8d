//! The `boldstream` binary: subcommands over the library.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use boldstream::config::Config;
use boldstream::formats::nifti;
use boldstream::pipeline::{Pipeline, PipelineOptions};
use boldstream::realign::realign_series;

#[derive(Debug, Parser)]
#[command(name = "boldstream", version, about = "Real-time fMRI decoding daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: watch the export folder and process volumes live
    /// until interrupted (Ctrl-C / SIGTERM).
    Run {
        /// Configuration file (TOML); see systemd/boldstream.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Pre-flight: validate the config, folders and permissions, models and
    /// subject (voxel count vs mask), ONNX Runtime and GPU, and print what
    /// `run` will do.
    Check {
        /// Configuration file (TOML); see systemd/boldstream.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// The simulator feeding the daemon end to end, with no input needed:
    /// live motion and QC per volume, then a summary against the truth.
    #[cfg(feature = "tools")]
    Demo(boldstream::tools::demo::DemoOptions),
    /// Simulate a scanner: write synthetic (or replayed) volumes into a
    /// folder, with known truth and injected faults.
    #[cfg(feature = "tools")]
    Simulate(Box<boldstream::tools::simulate::SimulateArgs>),
    /// Realign a 4-D NIfTI offline with the live path's code and write
    /// MCFLIRT-convention parameters.
    Realign {
        /// 4-D series (.nii / .nii.gz).
        input: PathBuf,
        /// Output `.par` file.
        #[arg(long)]
        out: PathBuf,
        /// Reference image (default: the first volume).
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Also write per-volume registration+resampling times (seconds).
        #[arg(long)]
        timing: Option<PathBuf>,
        /// Also write the realigned series (reference grid) here.
        #[arg(long)]
        resampled: Option<PathBuf>,
        /// Also write the session mask (nilearn-style EPI mask of the reference) here.
        #[arg(long)]
        mask_out: Option<PathBuf>,
    },
    /// Single-trial betas offline: the live GLM over a realigned 4-D series.
    Glm(Box<boldstream::cli::glm::GlmArgs>),
    /// Calibrate a new subject from a calibration session (runs + events):
    /// write a subject folder with masks, voxel order, normalisation
    /// statistics and a ridge adapter the decoder loads.
    Calibrate(Box<boldstream::cli::calibrate::CalibrateArgs>),
    /// Model folders for the decode stage.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Validate a model folder (and a subject folder) against its manifest,
    /// warm the graphs up, and print per-graph latency.
    Check {
        /// Model folder (holding model.toml) or a manifest file.
        model: PathBuf,
        /// Subject folder (holding subject.toml); default: the model
        /// folder's only `subject-*` folder.
        #[arg(long)]
        subject: Option<PathBuf>,
        /// libonnxruntime.so* (file or folder).
        #[arg(long)]
        onnxruntime: Option<PathBuf>,
        /// auto, cpu, cuda or tensorrt.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Timed calls per graph after the warm-up call.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
    },
}

fn models_check(
    model: PathBuf,
    subject: Option<PathBuf>,
    onnxruntime: Option<PathBuf>,
    device: &str,
    repeats: usize,
) -> anyhow::Result<()> {
    let device = match device {
        "auto" => boldstream::decode::runtime::DeviceChoice::Auto,
        "cpu" => boldstream::decode::runtime::DeviceChoice::Cpu,
        "cuda" => boldstream::decode::runtime::DeviceChoice::Cuda,
        "tensorrt" => boldstream::decode::runtime::DeviceChoice::Tensorrt,
        other => anyhow::bail!("--device {other}: expected auto, cpu, cuda or tensorrt"),
    };
    let subject = match subject {
        Some(s) => s,
        None => {
            let dir = if model.is_dir() {
                model.clone()
            } else {
                model.parent().map(Path::to_path_buf).unwrap_or_default()
            };
            let found: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("subject.toml").is_file())
                .collect();
            match found.as_slice() {
                [one] => one.clone(),
                [] => anyhow::bail!("no subject folder in {}; give --subject", dir.display()),
                _ => anyhow::bail!(
                    "several subject folders in {}; give --subject",
                    dir.display()
                ),
            }
        }
    };
    let config = boldstream::decode::DecodeConfig {
        model: Some(model),
        subject: Some(subject),
        onnxruntime,
        device,
        warmup_calls: repeats,
        ..Default::default()
    };
    boldstream::decode::check::run(&config, &mut std::io::stdout())?;
    Ok(())
}

/// Logs: stderr at `RUST_LOG` or `stderr_level`, plus the session's
/// `boldstream.log` (info, and boldstream's debug events: per-volume stage
/// timings) when a session folder is given.
///
/// Under systemd (`JOURNAL_STREAM` set: stderr is the journal) lines carry
/// no colours and no timestamp, since journald stamps each line itself;
/// the level stays first, so `journalctl` shows `WARN …`. Elsewhere,
/// timestamps, and colours on a terminal.
fn init_logging(stderr_level: &str, session_dir: Option<&Path>) -> anyhow::Result<()> {
    let stderr_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(stderr_level));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(!journald && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let stderr = if journald {
        stderr.without_time().boxed()
    } else {
        stderr.boxed()
    }
    .with_filter(stderr_filter);
    let file = match session_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join("boldstream.log");
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(Arc::new(f))
                    .with_ansi(false)
                    // Per-volume stage timings are debug events: in the
                    // session's log, not on the operator's terminal.
                    .with_filter(EnvFilter::new("info,boldstream=debug")),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init()?;
    Ok(())
}

/// SIGINT and SIGTERM, caught from [`Shutdown::install`] on: a stop
/// requested while the pipeline starts (models loading, a session being
/// resumed) is a clean shutdown once it has started, not a kill.
struct Shutdown {
    rt: tokio::runtime::Runtime,
    signals: [tokio::signal::unix::Signal; 2],
}

impl Shutdown {
    fn install() -> anyhow::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the signal runtime")?;
        let signals = rt
            .block_on(async {
                Ok::<_, std::io::Error>([
                    signal(SignalKind::interrupt())?,
                    signal(SignalKind::terminate())?,
                ])
            })
            .context("installing the SIGINT/SIGTERM handlers")?;
        Ok(Shutdown { rt, signals })
    }

    /// Block until SIGINT or SIGTERM (at once if one came already).
    fn wait(self) {
        let Shutdown {
            rt,
            signals: [mut int, mut term],
        } = self;
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
    }
}

fn run(config_path: &Path) -> anyhow::Result<()> {
    let (mut config, text) = Config::load(config_path)?;
    let session_dir = config.session_dir();
    config.session.dir = Some(session_dir.clone());
    Pipeline::preflight(&config)?;
    init_logging("info", Some(&session_dir))?;
    let shutdown = Shutdown::install()?;
    let pipeline = Pipeline::start(&config, &text, PipelineOptions::default())?;
    let mut status = format!(
        "watching {}; session {}",
        config.ingest.watch_dir.display(),
        session_dir.display()
    );
    if let Some(a) = pipeline.http_addr() {
        status.push_str(&format!("; dashboard http://{a}/"));
    }
    if let Some(a) = pipeline.feedback_addr() {
        status.push_str(&format!("; feedback tcp {a}"));
    }
    tracing::info!("{status} ({:?} mode)", config.ingest.mode);
    // Models are loaded and warm, every stage is running: ready.
    boldstream::service::ready(&status);
    let watchdog = boldstream::service::watch(pipeline.heartbeats(), None);
    shutdown.wait();
    boldstream::service::stopping();
    tracing::info!("shutting down: draining the pipeline");
    let s = pipeline.stop();
    if let Some(w) = watchdog {
        let _ = w.join();
    }
    tracing::info!(
        "stopped: {} volumes realigned, {} missing, {} late, {} duplicates, {} quarantined, {} realign failures, {} store errors",
        s.realigned,
        s.ingest.missing,
        s.ingest.late,
        s.ingest.duplicates,
        s.ingest.quarantined,
        s.realign_failed,
        s.store_errors
    );
    Ok(())
}

/// Where `boldstream realign` writes.
struct RealignOutputs<'a> {
    par: &'a Path,
    timing: Option<&'a Path>,
    resampled: Option<&'a Path>,
    mask: Option<&'a Path>,
}

fn realign_offline(
    input: &Path,
    reference: Option<&Path>,
    outputs: RealignOutputs<'_>,
) -> anyhow::Result<()> {
    let RealignOutputs {
        par: out,
        timing,
        resampled,
        mask,
    } = outputs;
    let series =
        nifti::read_series(input).map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    let reference = reference
        .map(|p| nifti::read_volume(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display())))
        .transpose()?;
    let results = realign_series(&series.volumes, reference.as_ref(), Default::default())
        .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    let mut par = String::new();
    let mut times = String::from("volume\tseconds\n");
    for (i, (p, secs)) in results.iter().enumerate() {
        par.push_str(&boldstream::formats::par::line(Some(p)));
        par.push('\n');
        times.push_str(&format!("{i}\t{secs:.6}\n"));
    }
    std::fs::write(out, par).with_context(|| format!("writing {}", out.display()))?;
    if let Some(t) = timing {
        std::fs::write(t, times).with_context(|| format!("writing {}", t.display()))?;
    }
    let reference = reference.as_ref().or(series.volumes.first());
    if let (Some(path), Some(reference)) = (resampled, reference) {
        let centre =
            boldstream::realign::register::Registration::new(reference, Default::default())
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .centre();
        let resampler = boldstream::realign::resample::Resampler::onto_reference(reference.grid());
        let vols: Vec<_> = series
            .volumes
            .iter()
            .zip(&results)
            .map(|(v, (p, _))| {
                resampler.resample(
                    v,
                    &boldstream::types::transform::ref_to_volume_from_par(p, centre),
                )
            })
            .collect();
        let opts = nifti::WriteOptions {
            gzip: path.to_string_lossy().ends_with(".gz"),
            tr: series.tr,
            ..Default::default()
        };
        nifti::write_series(path, &vols, &opts)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let (Some(path), Some(reference)) = (mask, reference) {
        let m = boldstream::types::mask::SessionMask::compute_epi(reference)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let opts = nifti::WriteOptions {
            gzip: path.to_string_lossy().ends_with(".gz"),
            ..Default::default()
        };
        nifti::write_volume(path, &m.to_volume(), &opts)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The error and its causes on one line each, without repeating a cause
/// that the message above it already quotes.
fn report(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(&format!("\n  caused by: {c}"));
        }
    }
    text
}

fn main() -> std::process::ExitCode {
    match dispatch() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boldstream: {}", report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run { config } => run(&config),
        #[cfg(feature = "tools")]
        Command::Demo(opts) => {
            // The console sink is the demo's output (it shows every gap,
            // duplicate and quarantine); the full log goes to the session
            // folder, stderr carries only errors.
            let base = opts.new_base();
            init_logging("error", Some(&base.join("session")))?;
            boldstream::tools::demo::run_demo(&opts, &base).map(|_| ())
        }
        Command::Check { config } => {
            // Warnings are part of the report; the log would repeat them.
            init_logging("error", None)?;
            boldstream::cli::check::run_cli(&config)
        }
        Command::Calibrate(args) => {
            init_logging("warn", None)?;
            boldstream::cli::calibrate::run(&args)
        }
        #[cfg(feature = "tools")]
        Command::Simulate(args) => {
            init_logging("info", None)?;
            boldstream::tools::simulate::run_simulate(&args)
        }
        Command::Realign {
            input,
            out,
            reference,
            timing,
            resampled,
            mask_out,
        } => {
            init_logging("info", None)?;
            realign_offline(
                &input,
                reference.as_deref(),
                RealignOutputs {
                    par: &out,
                    timing: timing.as_deref(),
                    resampled: resampled.as_deref(),
                    mask: mask_out.as_deref(),
                },
            )
        }
        Command::Glm(args) => {
            init_logging("info", None)?;
            boldstream::cli::glm::run(&args)
        }
        Command::Models {
            command:
                ModelsCommand::Check {
                    model,
                    subject,
                    onnxruntime,
                    device,
                    repeats,
                },
        } => {
            init_logging("warn", None)?;
            models_check(model, subject, onnxruntime, &device, repeats)
        }
    }
}
