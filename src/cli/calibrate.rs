//! `boldstream calibrate`: a subject folder from calibration runs.

use std::path::PathBuf;

use crate::calibrate::{
    BetaSettings, FitOptions, RunInput, estimate_betas, fit_subject, print_fit,
};
use crate::glm::model::NoiseModel;

/// `boldstream calibrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct CalibrateArgs {
    /// Model folder (its `[targets]` say what the adapter is fitted to).
    #[arg(long, default_value = "onnx/demo")]
    pub model: PathBuf,
    /// Subject folder to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Subject id.
    #[arg(long, default_value = "subject")]
    pub subject: String,
    /// A run: a 4-D NIfTI file or a folder of 3-D volumes; repeat, in order.
    #[arg(long = "run", required = true)]
    pub runs: Vec<PathBuf>,
    /// The events table of each run, in the same order.
    #[arg(long = "events", required = true)]
    pub events: Vec<PathBuf>,
    /// Repetition time in seconds (default: the data's header).
    #[arg(long)]
    pub tr: Option<f64>,
    /// Region mask on the reference grid (default: the brain).
    #[arg(long)]
    pub region: Option<PathBuf>,
    /// Reference volume (default: the first volume of the first run).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Use the first part of the trials (0 < f ≤ 1), e.g. for a learning curve.
    #[arg(long, default_value_t = 1.0)]
    pub fraction: f64,
    /// No reliability-based voxel selection.
    #[arg(long)]
    pub no_selection: bool,
    /// Install this adapter (fitted elsewhere, e.g. a MindEye2 fine-tune on
    /// the exported betas) instead of fitting one.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// GLM noise model: ar1 or ols.
    #[arg(long, default_value = "ar1")]
    pub noise_model: NoiseModel,
}

/// Run `boldstream calibrate`.
pub fn run(args: &CalibrateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.runs.len() == args.events.len(),
        "{} runs but {} events tables: give one --events per --run, in the same order",
        args.runs.len(),
        args.events.len()
    );
    let runs: Vec<RunInput> = args
        .runs
        .iter()
        .zip(&args.events)
        .map(|(d, e)| RunInput {
            data: d.clone(),
            events: e.clone(),
        })
        .collect();
    let mut settings = BetaSettings {
        region: args.region.clone(),
        reference: args.reference.clone(),
        ..BetaSettings::default()
    };
    settings.glm.tr = args.tr;
    settings.glm.noise_model = args.noise_model;
    let betas = estimate_betas(&runs, &settings)?;
    println!(
        "calibration betas: {} trials from {} runs ({} volumes; realign {:.1} s, GLM {:.1} s), {} region voxels, {} trials without a beta",
        betas.trials.len(),
        betas.motion.len(),
        betas.volumes,
        betas.seconds.1,
        betas.seconds.2,
        betas.region.len(),
        betas.skipped.len()
    );
    let opts = FitOptions {
        subject: args.subject.clone(),
        fraction: args.fraction,
        thresholds: if args.no_selection {
            Vec::new()
        } else {
            FitOptions::default().thresholds
        },
        adapter: args.adapter.clone(),
        ..FitOptions::default()
    };
    let r = fit_subject(&betas, &args.model, &args.out, &opts)?;
    print_fit(&r);
    Ok(())
}
