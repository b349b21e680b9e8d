//! Scanner simulator: synthetic fMRI with exact truth, replay of recorded
//! data, and an exporter that injects the faults real export folders show.
//!
//! In: a [`SynthSpec`] (grid, TR, runs, noise, motion limits, task events,
//! seed) or a recorded 4-D NIfTI ([`ReplaySeries`]); a [`FaultPlan`]; and
//! [`WriterOptions`] (naming, gzip, pacing, truth folder).
//! Out: one 3-D NIfTI file per volume appearing in an output folder, paced
//! by TR or as fast as possible, written atomically unless a fault says
//! otherwise; a truth folder (default `<out>_truth`) with the exact motion
//! (`motion_truth.par`, MCFLIRT convention), per-volume truth
//! (`truth.tsv`), the injected faults (`faults.tsv`) and the events of each
//! run; and a [`SimulationReport`] listing every file written.
//!
//! The pieces:
//! - [`phantom`]: the analytic head (EPI contrast, smooth edges, asymmetric
//!   structure, a task region);
//! - [`motion`]: drift-and-jerk trajectories, zero at the first volume;
//! - [`hrf`] and [`events`]: Glover HRF, BIDS `events.tsv`, a default design
//!   and real-time MindEye's;
//! - [`synth`]: renders volume `i` exactly from the truth (optionally with
//!   physiological noise and a session head pose);
//! - [`visual`] and [`patterns`]: simulated subjects whose visual cortex
//!   answers each image with its own voxel pattern;
//! - [`faults`], [`naming`], [`writer`], [`truth`]: the exporter;
//! - [`replay`]: replaying 4-D files and exporting clean 4-D series.
//!
//! Everything is deterministic given the seed; [`simulate`] runs a whole
//! session and can be called from a test thread next to the daemon.

pub mod events;
pub mod faults;
pub mod hrf;
pub mod motion;
pub mod naming;
pub mod patterns;
pub mod phantom;
pub mod replay;
pub mod synth;
pub mod truth;
pub mod visual;
pub mod writer;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

pub use events::{
    Event, MindEyeDesign, mindeye_run, mindeye_session, mindeye_volumes, read_events, write_events,
};
pub use faults::{CorruptKind, DupMode, Fault, FaultPlan, VolumeFaults};
pub use motion::{MotionModel, MotionSpec};
pub use naming::{Naming, ParsedName};
pub use patterns::StimulusPatterns;
pub use phantom::{Contrast, Phantom, Tissue};
pub use replay::{DicomReplay, ReplaySeries, write_4d};
pub use synth::{DriftSpec, FrameTruth, PhysioSpec, SynthSeries, SynthSpec};
pub use truth::read_motion_par;
pub use visual::{Prf, PrfLayout, SubjectProfile, VisualCortex, load_images};
pub use writer::{
    FaultRecord, Pace, ScanWriter, SimulationReport, Timing, TruthLocation, VolumeSource,
    WriterOptions, WrittenFile, simulate,
};

use crate::formats::nifti::{OutputType, ReadError};

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Reading or writing a file failed.
    // The cause is part of the message (not a `source`), so a one-line
    // `to_string()` says everything and anyhow chains do not repeat it.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// An events table could not be used.
    #[error(transparent)]
    Events(#[from] crate::formats::events_tsv::EventsError),
    /// A text input (`.par`) has a bad line.
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A fault spec string is malformed.
    #[error("fault spec {0}")]
    FaultSpec(String),
    /// The simulation parameters are inconsistent.
    #[error("simulation spec: {0}")]
    Spec(String),
    /// A NIfTI file to replay could not be read.
    #[error("{}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The reader's error.
        error: ReadError,
    },
}

/// SplitMix64 of `seed` and `tag`: independent streams for motion, noise,
/// events and faults from one user seed.
pub(crate) fn mix_seed(seed: u64, tag: u64) -> u64 {
    let mut z = seed ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn parse_triple<T: std::str::FromStr + Copy>(s: &str, what: &str) -> Result<[T; 3], String> {
    let parts: Vec<&str> = s.split(['x', 'X', ',']).map(str::trim).collect();
    let vals: Vec<T> = parts
        .iter()
        .map(|p| {
            p.parse::<T>()
                .map_err(|_| format!("'{p}' is not a valid {what}"))
        })
        .collect::<Result<_, _>>()?;
    match vals.as_slice() {
        [v] => Ok([*v; 3]),
        [a, b, c] => Ok([*a, *b, *c]),
        _ => Err(format!(
            "expected one value or three (e.g. 64x64x36), got '{s}'"
        )),
    }
}

fn parse_dims(s: &str) -> Result<[usize; 3], String> {
    let d: [usize; 3] = parse_triple(s, "dimension")?;
    if d.contains(&0) {
        return Err("dimensions must be at least 1".into());
    }
    Ok(d)
}

fn parse_voxel(s: &str) -> Result<[f64; 3], String> {
    let v: [f64; 3] = parse_triple(s, "voxel size")?;
    if v.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
        return Err("voxel sizes must be positive".into());
    }
    Ok(v)
}

/// `boldstream simulate`: stream a synthetic (or replayed) session into a
/// folder the daemon watches, with faults, and write the truth.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Folder to write volumes into (the scanner's export folder).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replay this 4-D NIfTI instead of synthesising, or a folder of
    /// scanner DICOM files (one per volume: their names and bytes, in
    /// series and volume order; --naming, --gzip and --int16 do not apply).
    #[arg(long, value_name = "FILE|DIR")]
    pub replay: Option<PathBuf>,
    /// Number of runs (motion continues across them).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Volumes per run.
    #[arg(long, default_value_t = 200)]
    pub volumes: usize,
    /// Repetition time in seconds (default: 1.5, or the replayed header's).
    #[arg(long)]
    pub tr: Option<f64>,
    /// Write as fast as possible instead of one volume per TR.
    #[arg(long)]
    pub fast: bool,
    /// Pace at this many times real time (e.g. 10 for a quick demo).
    #[arg(long, default_value_t = 1.0, conflicts_with = "fast")]
    pub speed: f64,
    /// Grid dimensions, e.g. 64x64x36.
    #[arg(long, value_parser = parse_dims, default_value = "64x64x36")]
    pub dims: [usize; 3],
    /// Voxel size in mm: one value (isotropic) or three, e.g. 3 or 2x2x2.5.
    #[arg(long, value_parser = parse_voxel, default_value = "3")]
    pub voxel_mm: [f64; 3],
    /// Rician noise σ as a fraction of the mean brain intensity (0.02 = SNR 50).
    #[arg(long, default_value_t = 0.02)]
    pub noise: f64,
    /// Largest translation in mm.
    #[arg(long, default_value_t = 2.0)]
    pub motion_mm: f64,
    /// Largest rotation in degrees.
    #[arg(long, default_value_t = 2.0)]
    pub motion_deg: f64,
    /// Sudden jerks per run.
    #[arg(long, default_value_t = 3)]
    pub jerks: usize,
    /// BIDS events.tsv: once for all runs, or once per run in order.
    #[arg(long, value_name = "FILE")]
    pub events: Vec<PathBuf>,
    /// File naming: bids (run-01_vol-0012.nii) or siemens (001_000001_000013.nii).
    #[arg(long, value_enum, default_value_t = Naming::Bids)]
    pub naming: Naming,
    /// Write .nii.gz.
    #[arg(long)]
    pub gzip: bool,
    /// Write int16 samples, as scanners do (default float32).
    #[arg(long)]
    pub int16: bool,
    /// Faults, e.g. "drop=5,12;dup=7;swap=10;late=15:3;partial=all;corrupt=20:garbage,21:truncated".
    #[arg(long, value_name = "SPEC")]
    pub faults: Option<String>,
    /// Chunks of a partial write.
    #[arg(long, default_value_t = 4)]
    pub partial_chunks: usize,
    /// Pause between chunks of a partial write, in ms.
    #[arg(long, default_value_t = 200)]
    pub partial_pause_ms: u64,
    /// Volumes between a volume and its duplicate.
    #[arg(long, default_value_t = 2)]
    pub dup_delay: usize,
    /// Seed for motion, noise, events and faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Truth folder (default: OUT_truth next to the output folder OUT).
    #[arg(long, value_name = "DIR")]
    pub truth: Option<PathBuf>,
    /// Do not write a truth folder.
    #[arg(long, conflicts_with = "truth")]
    pub no_truth: bool,
    /// Also write the clean (fault-free) series as 4-D NIfTI (one file per
    /// run) with its truth in STEM_truth next to it (or --truth without --out).
    #[arg(long = "write-4d", value_name = "FILE")]
    pub write_4d: Option<PathBuf>,
    /// Task response in % signal change.
    #[arg(long, default_value_t = 2.0)]
    pub activation_pct: f64,
    /// Linear scanner drift over a run, in %.
    #[arg(long, default_value_t = 1.0)]
    pub drift_pct: f64,
    /// Pause between runs in seconds (paced mode).
    #[arg(long, default_value_t = 0.0)]
    pub run_gap: f64,
    /// Session number in Siemens names.
    #[arg(long, default_value_t = 1)]
    pub session: u32,
    /// Threads to render with (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl SimulateArgs {
    /// The synthetic session these arguments describe.
    pub fn spec(&self) -> anyhow::Result<SynthSpec> {
        let events = if self.events.is_empty() {
            None
        } else {
            Some(
                self.events
                    .iter()
                    .map(|p| read_events(p))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let motion = MotionModel::within(self.motion_mm, self.motion_deg, self.jerks);
        Ok(SynthSpec {
            dims: self.dims,
            voxel_mm: self.voxel_mm,
            tr: self.tr.unwrap_or(1.5),
            runs: self.runs,
            volumes_per_run: self.volumes,
            noise: self.noise,
            motion,
            activation: self.activation_pct / 100.0,
            drift: DriftSpec {
                linear: self.drift_pct / 100.0,
                ..DriftSpec::default()
            },
            events,
            seed: self.seed,
            threads: self.threads,
            ..SynthSpec::default()
        })
    }

    /// The fault plan these arguments describe.
    pub fn fault_plan(&self) -> anyhow::Result<FaultPlan> {
        let mut plan = match &self.faults {
            Some(s) => FaultPlan::parse(s)?,
            None => FaultPlan::none(),
        }
        .with_seed(self.seed);
        plan.partial_chunks = self.partial_chunks.max(1);
        plan.partial_pause = Duration::from_millis(self.partial_pause_ms);
        plan.dup_delay = self.dup_delay.max(1);
        Ok(plan)
    }

    /// Writer options; `tr` is the session's (for `--speed`).
    fn writer_options(&self, tr: f64) -> anyhow::Result<WriterOptions> {
        if !(self.run_gap.is_finite() && self.run_gap >= 0.0) {
            bail!(
                "--run-gap {} must be a non-negative number of seconds",
                self.run_gap
            );
        }
        if !(self.speed.is_finite() && self.speed > 0.0) {
            bail!("--speed {} must be a positive factor", self.speed);
        }
        let pace = if self.fast {
            Pace::Fast
        } else if self.speed == 1.0 {
            Pace::Realtime
        } else {
            Pace::Interval(Duration::from_secs_f64(tr / self.speed))
        };
        Ok(WriterOptions {
            naming: self.naming,
            gzip: self.gzip,
            dtype: if self.int16 {
                OutputType::I16
            } else {
                OutputType::F32
            },
            pace,
            session: self.session,
            run_gap: Duration::from_secs_f64(self.run_gap / self.speed),
            truth: match (&self.truth, self.no_truth) {
                (_, true) => TruthLocation::Nowhere,
                (Some(d), false) => TruthLocation::Dir(d.clone()),
                (None, false) => TruthLocation::Sibling,
            },
            notify: None,
            stop: None,
        })
    }
}

fn log_report(r: &SimulationReport) {
    tracing::info!(
        files = r.written.len(),
        volumes = r.volumes,
        faults = r.faults.len(),
        elapsed_s = format!("{:.2}", r.elapsed.as_secs_f64()),
        generate_mean_ms = format!("{:.1}", r.generate.mean().as_secs_f64() * 1e3),
        generate_max_ms = format!("{:.1}", r.generate.max.as_secs_f64() * 1e3),
        encode_mean_ms = format!("{:.1}", r.encode.mean().as_secs_f64() * 1e3),
        max_lag_ms = format!("{:.1}", r.max_lag.as_secs_f64() * 1e3),
        out = %r.out_dir.display(),
        truth = %r.truth_dir.as_ref().map_or("none".into(), |d| d.display().to_string()),
        "simulation finished"
    );
}

/// Run `boldstream simulate`.
pub fn run_simulate(args: &SimulateArgs) -> anyhow::Result<()> {
    if args.out.is_none() && args.write_4d.is_none() {
        bail!("nothing to do: give --out DIR to stream volumes and/or --write-4d FILE");
    }
    let plan = args.fault_plan()?;

    if let Some(file) = &args.replay {
        if args.write_4d.is_some() {
            bail!("--write-4d exports synthetic data; --replay input is already 4-D");
        }
        let out = args.out.as_ref().context("--replay needs --out DIR")?;
        if file.is_dir() {
            let src = DicomReplay::open(file, args.tr)?;
            tracing::info!(dir = %file.display(), files = src.len(), tr = src.tr(), "replaying DICOM");
            let opts = args.writer_options(src.tr())?;
            let report = ScanWriter::new(out, opts).run(&src, &plan)?;
            log_report(&report);
            return Ok(());
        }
        let src = ReplaySeries::open(file, args.tr)?;
        tracing::info!(file = %file.display(), volumes = src.len(), tr = src.tr(), "replaying");
        let opts = args.writer_options(src.tr())?;
        let report = ScanWriter::new(out, opts).run(&src, &plan)?;
        log_report(&report);
        return Ok(());
    }

    let t0 = std::time::Instant::now();
    let series = SynthSeries::new(args.spec()?)?;
    let c = series.centre();
    tracing::info!(
        grid = %series.grid().describe(),
        volumes = series.len(),
        tr = series.tr(),
        brain_mean = format!("{:.1}", series.brain_mean()),
        noise_sigma = format!("{:.2}", series.noise_sigma()),
        centre_mm = format!("({:.2}, {:.2}, {:.2})", c.x, c.y, c.z),
        setup_ms = t0.elapsed().as_millis() as u64,
        "synthetic session ready"
    );

    if let Some(file) = &args.write_4d {
        let truth_dir = if args.no_truth {
            None
        } else if let (Some(t), None) = (&args.truth, &args.out) {
            Some(t.clone())
        } else {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = name
                .strip_suffix(".nii.gz")
                .or_else(|| name.strip_suffix(".nii"))
                .unwrap_or(&name);
            Some(file.with_file_name(format!("{stem}_truth")))
        };
        let files = write_4d(&series, file, truth_dir.as_deref())?;
        tracing::info!(
            files = ?files,
            truth = ?truth_dir,
            "wrote the clean series as 4-D NIfTI"
        );
    }
    if let Some(out) = &args.out {
        let opts = args.writer_options(series.tr())?;
        let report = ScanWriter::new(out, opts).run(&series, &plan)?;
        log_report(&report);
    }
    Ok(())
}
