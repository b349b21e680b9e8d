//! `boldstream glm`: offline betas over a recorded series, written as
//! `.npy` plus an index table (what the parity script compares with
//! nilearn).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::formats::npy::NpyAppender;
use crate::glm::hrf::HrfModel;
use crate::glm::model::{NoiseModel, SignalScaling};
use crate::glm::offline::{self, OfflineInputs};
use crate::glm::spec::GlmConfig;

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
    pub noise_model: NoiseModel,
    /// percent (nilearn's default) or none.
    #[arg(long, default_value = "percent")]
    pub signal_scaling: SignalScaling,
    /// glover or spm.
    #[arg(long, default_value = "glover")]
    pub hrf: HrfModel,
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

impl GlmArgs {
    /// The GLM spec these arguments give (the live defaults otherwise).
    pub fn spec(&self) -> GlmConfig {
        GlmConfig {
            tr: Some(self.tr),
            slice_time_ref: self.slice_time_ref,
            hrf: self.hrf,
            high_pass: self.high_pass,
            noise_model: self.noise_model,
            signal_scaling: self.signal_scaling,
            delay: self.delay,
            min_dof: self.min_dof,
            ..GlmConfig::default()
        }
    }
}

/// Run and write the betas and their index.
pub fn run(args: &GlmArgs) -> anyhow::Result<()> {
    let inputs = OfflineInputs {
        data: args.data.clone(),
        mask: args.mask.clone(),
        events: args.events.clone(),
        motion: args.motion.clone(),
        planned: args.planned,
    };
    let outcomes = offline::run(&inputs, &args.spec())?;
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
