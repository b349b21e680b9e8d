//! Replaying recorded data, and exporting synthetic data for offline tools.
//!
//! In: a 4-D NIfTI file or a folder of scanner DICOM files (replay), or a
//! [`SynthSeries`] (export). Out: a [`ReplaySeries`] the writer streams as
//! 3-D files one TR apart, or a [`DicomReplay`] it streams as the scanner's
//! own files (same names and bytes, one file per volume, faults applied to
//! those bytes); or the clean (fault-free) synthetic session as one 4-D
//! NIfTI per run plus its truth folder, to compare other registration tools
//! (MCFLIRT, …) against the same truth.

use std::path::{Path, PathBuf};

use super::SimError;
use super::faults::CorruptKind;
use super::synth::SynthSeries;
use super::truth::write_truth;
use super::writer::{Schedule, VolumeSource};
use crate::formats::dicom::{self, Decoded};
use crate::formats::nifti::{WriteOptions, read_series, write_series};
use crate::types::messages::VolumeKey;
use crate::types::volume::Volume;

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

/// A folder of scanner DICOM files (one volume per file: classic mosaic or
/// enhanced), replayed in acquisition order: by series, then the header's
/// volume number, then name. Each file keeps its name and bytes; copies
/// the folder already holds (a re-sent volume) are replayed too, after
/// their original, as the scanner sent them.
#[derive(Debug, Clone)]
pub struct DicomReplay {
    files: Vec<(PathBuf, VolumeKey)>,
    tr: f64,
}

impl DicomReplay {
    /// Read the headers of every DICOM file in `dir`; the TR is `tr` when
    /// given, else the first file's.
    pub fn open(dir: &Path, tr: Option<f64>) -> Result<DicomReplay, SimError> {
        let entries = std::fs::read_dir(dir).map_err(|error| SimError::Io {
            path: dir.to_path_buf(),
            error,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        let mut files = Vec::new();
        let mut header_tr = None;
        for p in paths {
            let bytes = std::fs::read(&p).map_err(|error| SimError::Io {
                path: p.clone(),
                error,
            })?;
            if !dicom::looks_like_dicom(&bytes) {
                continue;
            }
            let bad = |what: String| SimError::Spec(format!("{}: {what}", p.display()));
            let info = match dicom::decode(&bytes).map_err(|e| bad(e.to_string()))? {
                Decoded::Volume { info, .. } => info,
                Decoded::Slice { .. } => {
                    return Err(bad(
                        "a single-slice file; replay writes one file per volume (mosaic or enhanced)"
                            .into(),
                    ));
                }
            };
            let (Some(run), Some(index)) = (info.series_number, info.volume_number()) else {
                return Err(bad("no Series Number or volume number in the header".into()));
            };
            header_tr = header_tr.or(info.repetition_time);
            files.push((p, VolumeKey { run, index }));
        }
        if files.is_empty() {
            return Err(SimError::Spec(format!(
                "nothing to replay: no DICOM file in {}",
                dir.display()
            )));
        }
        files.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        let tr = tr.or(header_tr).ok_or_else(|| {
            SimError::Spec(format!(
                "{}: the headers have no Repetition Time; give one with --tr",
                dir.display()
            ))
        })?;
        if !(tr.is_finite() && tr > 0.0) {
            return Err(SimError::Spec(format!("TR {tr} must be positive")));
        }
        Ok(DicomReplay { files, tr })
    }

    /// The files in replay order.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }
}

impl VolumeSource for DicomReplay {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn key(&self, i: usize) -> VolumeKey {
        self.files
            .get(i)
            .map_or(VolumeKey { run: 0, index: 0 }, |f| f.1)
    }
    fn tr(&self) -> f64 {
        self.tr
    }
    fn volume(&self, i: usize) -> Result<Volume, SimError> {
        let (p, _) = self
            .files
            .get(i)
            .ok_or_else(|| SimError::Spec(format!("no file {i} to replay")))?;
        match dicom::read_file(p) {
            Ok(Decoded::Volume { volume, .. }) => Ok(volume),
            Ok(Decoded::Slice { .. }) => Err(SimError::Spec(format!(
                "{}: a single-slice file",
                p.display()
            ))),
            Err(e) => Err(SimError::Spec(format!("{}: {e}", p.display()))),
        }
    }
    fn file_name(&self, i: usize, duplicate: bool) -> Option<String> {
        let name = self
            .files
            .get(i)?
            .0
            .file_name()?
            .to_string_lossy()
            .into_owned();
        if !duplicate {
            return Some(name);
        }
        // `_dup` before the extension: the copy is still DICOM to ingest,
        // and its name no longer claims a volume.
        Some(match name.rfind('.') {
            Some(dot) if !name[dot + 1..].bytes().all(|b| b.is_ascii_digit()) => {
                format!("{}_dup{}", &name[..dot], &name[dot..])
            }
            _ => format!("{name}_dup"),
        })
    }
    fn file_bytes(&self, i: usize) -> Option<Result<Vec<u8>, SimError>> {
        let (p, _) = self.files.get(i)?;
        Some(std::fs::read(p).map_err(|error| SimError::Io {
            path: p.clone(),
            error,
        }))
    }
}

/// The content faults that need a valid file, on DICOM bytes: `nan` sets
/// Rescale Slope to NaN (a header no reader may use), `dims` changes Pixel
/// Spacing (a valid file on another grid) — at the top level and in every
/// functional group that has them, as enhanced files keep them there. The
/// other kinds are byte-level and apply to any file.
pub(crate) fn corrupt_dicom(bytes: &[u8], kind: CorruptKind) -> Result<Vec<u8>, String> {
    use dicom_core::Tag;
    let mut obj = dicom_object::OpenFileOptions::new()
        .from_reader(bytes)
        .map_err(|e| format!("cannot re-encode: {e}"))?;
    let (tag, value) = match kind {
        CorruptKind::Nan => (Tag(0x0028, 0x1053), "NaN"),
        CorruptKind::Dims => (Tag(0x0028, 0x0030), "3.5\\3.5"),
        other => return Err(format!("{} is not an edit of a valid file", other.name())),
    };
    set_everywhere(&mut obj, tag, value, true);
    let mut out = Vec::with_capacity(bytes.len() + 16);
    obj.write_all(&mut out)
        .map_err(|e| format!("cannot re-encode: {e}"))?;
    Ok(out)
}

/// Set decimal-string `tag` to `value` in `obj` (when `top` or already
/// present) and in every nested item that has it.
fn set_everywhere(
    obj: &mut dicom_object::InMemDicomObject,
    tag: dicom_core::Tag,
    value: &str,
    top: bool,
) {
    use dicom_core::value::PrimitiveValue;
    use dicom_core::{DataElement, VR};
    if top || obj.get(tag).is_some() {
        obj.put(DataElement::new(tag, VR::DS, PrimitiveValue::from(value)));
    }
    let nested: Vec<dicom_core::Tag> = obj
        .iter()
        .filter(|e| e.items().is_some())
        .map(|e| e.header().tag)
        .collect();
    for t in nested {
        obj.update_value(t, |v| {
            if let Some(items) = v.items_mut() {
                for it in items.iter_mut() {
                    set_everywhere(it, tag, value, false);
                }
            }
        });
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
