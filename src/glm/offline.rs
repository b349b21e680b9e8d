//! Offline single-trial betas: the live GLM run over a recorded series.
//!
//! In: a realigned 4-D series, its mask, motion parameters (`.par`), an
//! events table and the GLM spec ([`GlmConfig`], the same type the live
//! stage and calibration use). Out: every trial's beta, estimated at the
//! same moment and from the same frames as the live daemon would — the
//! frames arrive one by one through [`RunGlm`]. The parity script compares
//! these with nilearn.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::run::{RunGlm, TrialOutcome};
use super::spec::GlmConfig;
use crate::formats::events_tsv::{EventsError, read_events};
use crate::formats::nifti;
use crate::formats::par::{self, ParError};
use crate::types::mask::SessionMask;

/// What the offline GLM reads.
#[derive(Debug, Clone)]
pub struct OfflineInputs {
    /// Realigned 4-D series (.nii / .nii.gz).
    pub data: PathBuf,
    /// Mask on the series' grid (voxels in np.where order).
    pub mask: PathBuf,
    /// BIDS events table.
    pub events: PathBuf,
    /// Motion parameters, MCFLIRT `.par` (one row per volume).
    pub motion: PathBuf,
    /// Frames the design is built for (default: the series length).
    pub planned: Option<usize>,
}

/// Why the offline GLM could not run.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// An input file is unusable.
    #[error("{}: {message}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The events table.
    #[error(transparent)]
    Events(#[from] EventsError),
    /// The motion parameters.
    #[error(transparent)]
    Par(#[from] ParError),
    /// The spec has no TR.
    #[error("the GLM needs a repetition time (tr)")]
    NoTr,
}

/// Run the GLM over the series; returns every trial's outcome, in order.
pub fn run(inputs: &OfflineInputs, spec: &GlmConfig) -> Result<Vec<TrialOutcome>, OfflineError> {
    let input = |path: &PathBuf| {
        let path = path.clone();
        move |e: nifti::ReadError| OfflineError::Input {
            path,
            message: e.to_string(),
        }
    };
    let series = nifti::read_series(&inputs.data).map_err(input(&inputs.data))?;
    let mask_vol = nifti::read_volume(&inputs.mask).map_err(input(&inputs.mask))?;
    let first = series.volumes.first().ok_or_else(|| OfflineError::Input {
        path: inputs.data.clone(),
        message: "no volumes".into(),
    })?;
    let mask =
        SessionMask::from_image(&mask_vol, first.grid()).map_err(|e| OfflineError::Input {
            path: inputs.mask.clone(),
            message: e.to_string(),
        })?;
    let events = read_events(&inputs.events)?;
    let motion = par::read(&inputs.motion)?;
    if motion.len() < series.volumes.len() {
        return Err(OfflineError::Input {
            path: inputs.motion.clone(),
            message: format!("{} rows for {} volumes", motion.len(), series.volumes.len()),
        });
    }
    let model = spec.model_spec().ok_or(OfflineError::NoTr)?;
    let planned = inputs.planned.unwrap_or(series.volumes.len());
    let mut glm = RunGlm::new(model, planned, mask.len(), spec.schedule(), &events);
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
