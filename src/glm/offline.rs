//! Offline single-trial betas: the live GLM run over a recorded series.
//!
//! In: a realigned 4-D series, its mask, motion parameters (`.par`) and an
//! events table. Out: every trial's beta, estimated at the same moment and
//! from the same frames as the live daemon would — the frames arrive one by
//! one through [`RunGlm`]. The parity script compares these with nilearn.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::design::DesignSpec;
use super::hrf::HrfModel;
use super::model::{ModelSpec, NoiseModel, SignalScaling};
use super::run::{RunGlm, Schedule, TrialOutcome};
use crate::events::read_events;
use crate::formats::nifti;
use crate::mask::SessionMask;
use crate::sinks::npy::NpyAppender;

/// `boldstream glm` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct GlmArgs {
    /// Realigned 4-D series (.nii / .nii.gz).
    #[arg(long)]
    pub data: PathBuf,
    /// Mask on the series' grid (voxels in np.where order).
    #[arg(long)]
    pub mask: PathBuf,
    /// BIDS events table.
    #[arg(long)]
    pub events: PathBuf,
    /// Motion parameters, MCFLIRT `.par` (one row per volume).
    #[arg(long)]
    pub motion: PathBuf,
    /// Repetition time, seconds.
    #[arg(long)]
    pub tr: f64,
    /// ols or ar1.
    #[arg(long, default_value = "ar1")]
    pub noise_model: String,
    /// percent (nilearn's default) or none.
    #[arg(long, default_value = "percent")]
    pub signal_scaling: String,
    /// glover or spm.
    #[arg(long, default_value = "glover")]
    pub hrf: String,
    /// Cosine drift cut-off, Hz.
    #[arg(long, default_value_t = 0.01)]
    pub high_pass: f64,
    /// nilearn's slice_time_ref.
    #[arg(long, default_value_t = 0.0)]
    pub slice_time_ref: f64,
    /// Seconds after onset at which a trial is estimated.
    #[arg(long, default_value_t = 7.5)]
    pub delay: f64,
    /// Residual degrees of freedom required.
    #[arg(long, default_value_t = 5)]
    pub min_dof: usize,
    /// Frames the design is built for (default: the series length).
    #[arg(long)]
    pub planned: Option<usize>,
    /// Output betas (float32 .npy, one row per estimated trial).
    #[arg(long)]
    pub out: PathBuf,
    /// Output index table (TSV).
    #[arg(long)]
    pub index: PathBuf,
}

/// Parse a noise model name.
pub fn parse_noise(s: &str) -> anyhow::Result<NoiseModel> {
    match s {
        "ols" => Ok(NoiseModel::Ols),
        "ar1" => Ok(NoiseModel::Ar1),
        other => anyhow::bail!("noise model '{other}': expected ols or ar1"),
    }
}

/// Parse a signal-scaling name.
pub fn parse_scaling(s: &str) -> anyhow::Result<SignalScaling> {
    match s {
        "percent" => Ok(SignalScaling::Percent),
        "none" => Ok(SignalScaling::None),
        other => anyhow::bail!("signal scaling '{other}': expected percent or none"),
    }
}

/// Parse an HRF name.
pub fn parse_hrf(s: &str) -> anyhow::Result<HrfModel> {
    match s {
        "glover" => Ok(HrfModel::Glover),
        "spm" => Ok(HrfModel::Spm),
        other => anyhow::bail!("HRF '{other}': expected glover or spm"),
    }
}

/// Read an MCFLIRT `.par` file.
pub fn read_par(path: &Path) -> anyhow::Result<Vec<[f64; 6]>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Vec<f64> = l
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .with_context(|| format!("{}:{}: not six numbers", path.display(), i + 1))?;
            <[f64; 6]>::try_from(v).map_err(|v| {
                anyhow::anyhow!(
                    "{}:{}: {} values, expected 6",
                    path.display(),
                    i + 1,
                    v.len()
                )
            })
        })
        .collect()
}

/// Run the GLM over the series; returns every trial's outcome, in order.
pub fn run(args: &GlmArgs) -> anyhow::Result<Vec<TrialOutcome>> {
    let series = nifti::read_series(&args.data)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.data.display()))?;
    let mask_vol = nifti::read_volume(&args.mask)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.mask.display()))?;
    let first = series
        .volumes
        .first()
        .with_context(|| format!("{}: no volumes", args.data.display()))?;
    let mask = SessionMask::from_image(&mask_vol, first.grid())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.mask.display()))?;
    let events = read_events(&args.events)?;
    let motion = read_par(&args.motion)?;
    anyhow::ensure!(
        motion.len() >= series.volumes.len(),
        "{}: {} rows for {} volumes",
        args.motion.display(),
        motion.len(),
        series.volumes.len()
    );
    let spec = ModelSpec {
        design: DesignSpec {
            tr: args.tr,
            slice_time_ref: args.slice_time_ref,
            hrf: parse_hrf(&args.hrf)?,
            high_pass: args.high_pass,
            ..DesignSpec::default()
        },
        noise: parse_noise(&args.noise_model)?,
        scaling: parse_scaling(&args.signal_scaling)?,
        ar_bins: 100,
    };
    let schedule = Schedule {
        delay: args.delay,
        min_dof: args.min_dof,
        ..Schedule::default()
    };
    let planned = args.planned.unwrap_or(series.volumes.len());
    let mut glm = RunGlm::new(spec, planned, mask.len(), schedule, &events);
    let mut out = Vec::new();
    let mut frames: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
    for (t, vol) in series.volumes.iter().enumerate() {
        let mut masked = Vec::new();
        mask.gather_into(vol.values(), &mut masked);
        frames.insert(t, masked);
        out.extend(glm.frame(t, &frames[&t], motion[t], false, &frames));
    }
    out.extend(glm.finish());
    out.sort_by_key(|o| o.trial);
    Ok(out)
}

/// `boldstream glm`: run and write the betas and their index.
pub fn run_cli(args: &GlmArgs) -> anyhow::Result<()> {
    let outcomes = run(args)?;
    let voxels = outcomes
        .iter()
        .find_map(|o| o.result.as_ref().ok().map(|e| e.beta.len()))
        .unwrap_or(0);
    let mut npy = NpyAppender::create(&args.out, voxels)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut index = std::fs::File::create(&args.index)
        .with_context(|| format!("creating {}", args.index.display()))?;
    writeln!(
        index,
        "row\ttrial\tonset\tduration\ttrial_type\tstim_id\ttrigger\tframes\tregressors\tcompute_ms\tcolumns\tstatus"
    )?;
    for o in &outcomes {
        let e = &o.event;
        let common = format!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            o.trial,
            e.onset,
            e.duration,
            e.trial_type,
            e.stim_id.as_deref().unwrap_or("n/a"),
            o.trigger
        );
        match &o.result {
            Ok(est) => {
                let row = npy.rows();
                npy.append(&est.beta)?;
                writeln!(
                    index,
                    "{row}\t{common}\t{}\t{}\t{:.3}\t{}\tok",
                    est.frames,
                    est.regressors,
                    o.compute_seconds * 1e3,
                    est.columns.join(",")
                )?;
            }
            Err(reason) => writeln!(index, "n/a\t{common}\tn/a\tn/a\tn/a\tn/a\t{reason}")?,
        }
    }
    Ok(())
}
