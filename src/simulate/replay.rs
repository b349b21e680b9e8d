//! Replaying recorded data, and exporting synthetic data for offline tools.
//!
//! In: a 4-D NIfTI file (replay), or a [`SynthSeries`] (export). Out: a
//! [`ReplaySeries`] the writer streams as 3-D files one TR apart; or the
//! clean (fault-free) synthetic session as one 4-D NIfTI per run plus its
//! truth folder, to compare other registration tools (MCFLIRT, …) against
//! the same truth.

use std::path::{Path, PathBuf};

use super::SimError;
use super::synth::SynthSeries;
use super::truth::write_truth;
use super::writer::{Schedule, VolumeSource};
use crate::formats::nifti::{WriteOptions, read_series, write_series};
use crate::messages::VolumeKey;
use crate::volume::Volume;

/// Volumes read from a recorded 4-D file, exported as run 1.
#[derive(Debug, Clone)]
pub struct ReplaySeries {
    volumes: Vec<Volume>,
    tr: f64,
}

impl ReplaySeries {
    /// Read `path`; the TR is `tr` when given, else the header's.
    pub fn open(path: &Path, tr: Option<f64>) -> Result<ReplaySeries, SimError> {
        let series = read_series(path).map_err(|error| SimError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let tr = tr.or(series.tr).ok_or_else(|| {
            SimError::Spec(format!(
                "{}: the header has no TR; give one with --tr",
                path.display()
            ))
        })?;
        ReplaySeries::from_volumes(series.volumes, tr)
    }

    /// Replay volumes held in memory.
    pub fn from_volumes(volumes: Vec<Volume>, tr: f64) -> Result<ReplaySeries, SimError> {
        if volumes.is_empty() {
            return Err(SimError::Spec("nothing to replay: no volumes".into()));
        }
        if !(tr.is_finite() && tr > 0.0) {
            return Err(SimError::Spec(format!("TR {tr} must be positive")));
        }
        Ok(ReplaySeries { volumes, tr })
    }
}

impl VolumeSource for ReplaySeries {
    fn len(&self) -> usize {
        self.volumes.len()
    }
    fn key(&self, i: usize) -> VolumeKey {
        VolumeKey {
            run: 1,
            index: i as u32,
        }
    }
    fn tr(&self) -> f64 {
        self.tr
    }
    fn volume(&self, i: usize) -> Result<Volume, SimError> {
        self.volumes
            .get(i)
            .cloned()
            .ok_or_else(|| SimError::Spec(format!("no volume {i} to replay")))
    }
}

/// The per-run file name for a 4-D export: `path` itself for one run,
/// else `_run-NN` inserted before the extension.
pub fn run_path(path: &Path, run: u32, runs: usize) -> PathBuf {
    if runs <= 1 {
        return path.to_path_buf();
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stem, ext) = if let Some(s) = name.strip_suffix(".nii.gz") {
        (s, ".nii.gz")
    } else if let Some(s) = name.strip_suffix(".nii") {
        (s, ".nii")
    } else {
        (name.as_str(), "")
    };
    path.with_file_name(format!("{stem}_run-{run:02}{ext}"))
}

/// Write the clean session as 4-D files (one per run, see [`run_path`]) and
/// the truth folder `truth_dir` (whose `file` column names the 4-D file).
/// Returns the files written.
pub fn write_4d(
    series: &SynthSeries,
    path: &Path,
    truth_dir: Option<&Path>,
) -> Result<Vec<PathBuf>, SimError> {
    let gzip = path.to_string_lossy().ends_with(".gz");
    let opts = WriteOptions {
        gzip,
        tr: Some(series.tr()),
        ..WriteOptions::default()
    };
    let runs = series.spec().runs;
    let per = series.spec().volumes_per_run;
    let mut written = Vec::new();
    let mut files = Vec::with_capacity(series.len());
    for run in 1..=runs {
        let out = run_path(path, run as u32, runs);
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|error| SimError::Io {
                path: parent.to_path_buf(),
                error,
            })?;
        }
        let first = (run - 1) * per;
        let vols: Vec<Volume> = (first..first + per).map(|i| series.volume(i)).collect();
        write_series(&out, &vols, &opts).map_err(|error| SimError::Io {
            path: out.clone(),
            error,
        })?;
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.extend((0..per).map(|_| (name.clone(), "ok".to_string())));
        written.push(out);
    }
    if let Some(dir) = truth_dir {
        write_truth(dir, series, &Schedule::offline(files), &opts)?;
    }
    Ok(written)
}
