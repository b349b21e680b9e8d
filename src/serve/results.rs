//! Per-trial result files, for stimulus programs that poll a folder
//! (PsychoPy-style) instead of holding a socket.
//!
//! In: a trial's decode, reconstruction or skip. Out: in the results folder,
//! per trial `run-01_trial-003.json` and, once reconstructed,
//! `run-01_trial-003.png`:
//!
//! ```json
//! {"key": "run-01_trial-003", "run": 1, "trial": 3, "image_id": "shared0042",
//!  "status": "reconstructed", "top": [{"id": "shared0042", "score": 0.41}, …],
//!  "value": 0.41, "true_rank": 1, "reconstruction": "/…/run-01_trial-003.png",
//!  "skipped": null}
//! ```
//!
//! `status` goes `decoded` → `reconstructed` (or `skipped`, with the
//! reason). Every file is written whole through a temporary name and a
//! rename, and the PNG lands before the JSON that names it: a poller never
//! reads half a file nor a path that does not exist yet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::feed::{Candidate, FeedMessage, recon_file_name};
use crate::types::key::TrialKey;
use crate::types::messages::PipelineEvent;

/// One trial's result file.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TrialResult {
    /// `run-01_trial-003`: the file stem.
    pub key: String,
    /// Run number.
    pub run: u32,
    /// Trial number within the run.
    pub trial: usize,
    /// The image shown, when known.
    pub image_id: Option<String>,
    /// `decoded`, `reconstructed` or `skipped`.
    pub status: &'static str,
    /// Top-k candidates, best first.
    pub top: Vec<Candidate>,
    /// The decoded value.
    pub value: Option<f32>,
    /// Rank of the image shown.
    pub true_rank: Option<usize>,
    /// The reconstruction PNG, once written.
    pub reconstruction: Option<String>,
    /// Why a step was skipped.
    pub skipped: Option<String>,
}

/// The results folder and what has been written to it.
pub struct ResultFiles {
    dir: PathBuf,
    trials: HashMap<TrialKey, TrialResult>,
    errors: u64,
}

impl ResultFiles {
    /// Create (or reuse) the folder.
    pub fn create(dir: &Path) -> std::io::Result<ResultFiles> {
        std::fs::create_dir_all(dir)?;
        Ok(ResultFiles {
            dir: dir.to_path_buf(),
            trials: HashMap::new(),
            errors: 0,
        })
    }

    /// Files that could not be written so far.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    fn entry(&mut self, run: u32, trial: usize, image_id: &Option<String>) -> &mut TrialResult {
        let r = self
            .trials
            .entry(TrialKey::new(run, trial))
            .or_insert_with(|| TrialResult {
                key: recon_file_name(run, trial)
                    .trim_end_matches(".png")
                    .to_string(),
                run,
                trial,
                status: "decoded",
                ..Default::default()
            });
        if r.image_id.is_none() {
            r.image_id.clone_from(image_id);
        }
        r
    }

    fn write_json(&mut self, run: u32, trial: usize) -> std::io::Result<()> {
        let Some(r) = self.trials.get(&TrialKey::new(run, trial)) else {
            return Ok(());
        };
        let json = serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?;
        crate::formats::atomic_write(&self.dir.join(format!("{}.json", r.key)), &json)
    }

    /// Write what `ev` (whose feed message is `message`) adds to a trial's
    /// files; `on_error` is called for each file that failed (it is logged).
    pub fn record(&mut self, ev: &PipelineEvent, message: &FeedMessage, on_error: impl Fn()) {
        let result = match (ev, message) {
            (
                PipelineEvent::Decoded(_),
                FeedMessage::Trial {
                    run,
                    trial,
                    image_id,
                    top,
                    value,
                    true_rank,
                    ..
                },
            ) => {
                let r = self.entry(*run, *trial, image_id);
                r.top.clone_from(top);
                r.value = Some(*value);
                r.true_rank = *true_rank;
                self.write_json(*run, *trial)
            }
            (
                PipelineEvent::Reconstructed(rec),
                FeedMessage::Reconstruction {
                    run,
                    trial,
                    image_id,
                    path,
                    ..
                },
            ) => {
                let png = self.dir.join(recon_file_name(*run, *trial));
                match crate::formats::png::write_png(&png, &rec.image, rec.chw) {
                    Ok(()) => {
                        let r = self.entry(*run, *trial, image_id);
                        r.status = "reconstructed";
                        r.reconstruction = Some(path.clone());
                        self.write_json(*run, *trial)
                    }
                    Err(e) => Err(e),
                }
            }
            (
                PipelineEvent::DecodeSkipped { .. } | PipelineEvent::TrialSkipped { .. },
                FeedMessage::Skipped {
                    run,
                    trial,
                    image_id,
                    what,
                    reason,
                },
            ) => {
                let r = self.entry(*run, *trial, image_id);
                // A trial whose retrieval arrived keeps it; only the missing
                // step is reported.
                if r.status != "reconstructed" {
                    r.status = "skipped";
                }
                r.skipped = Some(format!("no {what}: {reason}"));
                self.write_json(*run, *trial)
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            on_error();
            tracing::error!("result file in {}: {e}", self.dir.display());
        }
    }
}
