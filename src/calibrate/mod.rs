//! Calibration: from a calibration session to a subject folder.
//!
//! In: the session's runs (4-D NIfTI files, or folders of 3-D volumes in
//! file-name order), one BIDS events table per run, the model folder (whose
//! `[targets]` say what an adapter is fitted to) and optionally a region mask.
//! Out: a subject folder the decoder loads like any other — the session
//! reference volume, brain, region and subject masks (the subject mask's
//! `np.where` order is the adapter's input order, also listed in
//! `voxels.tsv`), beta normalisation statistics (`zscore.npy`), the
//! calibration betas (`betas.npy` + `betas.tsv`), the adapter fitted by ridge
//! regression (`adapter.onnx`), `subject.toml` and `calibration.toml`.
//!
//! Betas come from the live path's own code: each volume goes through the
//! [`Realigner`] and each run through [`RunGlm`] with the live schedule, so
//! the betas the adapter is fitted on are the betas it will see live.
//! [`estimate_betas`] does that once; [`fit_subject`] fits an adapter on all
//! or the first part of those betas (the learning curve).

pub mod onnx_graph;
pub mod reliability;
pub mod ridge;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::decode::manifest::{ModelManifest, TargetsSpec};
use crate::decode::tensor::TensorSpec;
use crate::formats::events_tsv::read_events;
use crate::formats::nifti::{self, WriteOptions};
use crate::glm::run::RunGlm;
use crate::glm::spec::GlmConfig;
use crate::realign::{RealignConfig, Realigner};
use crate::stage::Stage;
use crate::types::events::Event;
use crate::types::mask::SessionMask;
use crate::types::messages::{IngestEvent, IngestedVolume, PipelineEvent, VolumeKey};
use crate::types::volume::Volume;

/// Why calibration failed. Every message names the file or the step.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    /// An input could not be read or is unusable.
    #[error("{}: {message}", path.display())]
    Input {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A step could not be completed.
    #[error("{0}")]
    Step(String),
    /// Writing the subject folder failed.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The model folder or ONNX Runtime could not be used.
    #[error(transparent)]
    Model(#[from] crate::decode::error::ModelError),
    /// ONNX Runtime could not be found or started.
    #[error(transparent)]
    Runtime(#[from] crate::decode::error::RuntimeError),
}

fn input_err(path: &Path, message: impl Into<String>) -> CalibrateError {
    CalibrateError::Input {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> CalibrateError + '_ {
    move |source| CalibrateError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// One calibration run: its volumes and its events table.
#[derive(Debug, Clone)]
pub struct RunInput {
    /// A 4-D NIfTI file, or a folder of 3-D volumes (taken in file-name order).
    pub data: PathBuf,
    /// Its BIDS events table.
    pub events: PathBuf,
}

/// How betas are estimated (the live defaults unless said otherwise).
#[derive(Debug, Clone)]
pub struct BetaSettings {
    /// GLM settings; `tr` defaults to the data's header.
    pub glm: GlmConfig,
    /// Region mask on the reference grid (e.g. visual cortex); default:
    /// the brain (nilearn-style EPI mask of the reference).
    pub region: Option<PathBuf>,
    /// Reference volume; default: the first volume of the first run.
    pub reference: Option<PathBuf>,
}

impl Default for BetaSettings {
    fn default() -> Self {
        BetaSettings {
            glm: GlmConfig {
                skip_trial_types: vec!["blank".into()],
                ..GlmConfig::default()
            },
            region: None,
            reference: None,
        }
    }
}

/// One calibration trial's beta.
#[derive(Debug, Clone)]
pub struct CalTrial {
    /// Run number (1-based, input order).
    pub run: u32,
    /// Trial number within the run.
    pub trial: usize,
    /// The image shown.
    pub stim_id: String,
    /// Onset, seconds.
    pub onset: f64,
    /// Raw beta over the region's voxels (`np.where` order).
    pub beta: Vec<f32>,
}

/// Betas of a calibration session, ready for fitting.
#[derive(Debug, Clone)]
pub struct SessionBetas {
    /// The session reference volume (the calibration grid).
    pub reference: Volume,
    /// Brain mask of the reference.
    pub brain: SessionMask,
    /// The region whose voxels the betas cover.
    pub region: SessionMask,
    /// Stimulus trials in session order.
    pub trials: Vec<CalTrial>,
    /// Trials without a beta, with the reason.
    pub skipped: Vec<(u32, usize, String)>,
    /// Motion parameters per run (MCFLIRT convention).
    pub motion: Vec<Vec<[f64; 6]>>,
    /// Volumes realigned.
    pub volumes: usize,
    /// Seconds spent reading, realigning, estimating.
    pub seconds: (f64, f64, f64),
}

fn list_volumes(dir: &Path) -> Result<Vec<PathBuf>, CalibrateError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| input_err(dir, e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().to_string());
            n.is_some_and(|n| n.ends_with(".nii") || n.ends_with(".nii.gz"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(input_err(dir, "no .nii or .nii.gz volumes in this folder"));
    }
    Ok(files)
}

/// One run's volumes as they come (from files, or from a simulator in
/// memory), with its events.
pub struct RunVolumes<'a> {
    /// What the volumes come from (for messages).
    pub label: PathBuf,
    /// The run's events.
    pub events: Vec<Event>,
    /// Repetition time, when known from the data.
    pub tr: Option<f64>,
    /// Volumes in the run, when known in advance: the GLM's design is built
    /// for this many frames, as the live stage builds it for the run length
    /// it is told.
    pub planned: Option<usize>,
    /// Its volumes in time order.
    pub volumes: Box<dyn Iterator<Item = Result<Volume, CalibrateError>> + 'a>,
}

/// Open a run on disk: a 4-D file is read whole, a folder file by file.
pub fn open_run(input: &RunInput) -> Result<RunVolumes<'static>, CalibrateError> {
    let events = read_events(&input.events).map_err(|e| CalibrateError::Step(e.to_string()))?;
    let data = &input.data;
    if data.is_dir() {
        let files = list_volumes(data)?;
        let planned = Some(files.len());
        let first = nifti::read_volume(&files[0]).map_err(|e| input_err(&files[0], e.to_string()));
        let tr = std::fs::read(&files[0])
            .ok()
            .and_then(|b| nifti::decode_series(&b).ok())
            .and_then(|s| s.tr);
        let rest = files
            .into_iter()
            .skip(1)
            .map(|f| nifti::read_volume(&f).map_err(|e| input_err(&f, e.to_string())));
        Ok(RunVolumes {
            label: data.clone(),
            events,
            tr,
            planned,
            volumes: Box::new(std::iter::once(first).chain(rest)),
        })
    } else {
        let s = nifti::read_series(data).map_err(|e| input_err(data, e.to_string()))?;
        Ok(RunVolumes {
            label: data.clone(),
            events,
            tr: s.tr,
            planned: Some(s.volumes.len()),
            volumes: Box::new(s.volumes.into_iter().map(Ok)),
        })
    }
}

fn ingested(run: u32, index: u32, path: &Path, volume: Volume) -> IngestEvent {
    IngestEvent::Volume(Box::new(IngestedVolume::now(
        VolumeKey { run, index },
        path.to_path_buf(),
        volume,
    )))
}

/// Realign every run to one session reference and estimate each stimulus
/// trial's beta over the region, exactly as the live path would.
pub fn estimate_betas(
    runs: &[RunInput],
    settings: &BetaSettings,
) -> Result<SessionBetas, CalibrateError> {
    estimate_betas_from(runs.iter().map(open_run), settings)
}

/// [`estimate_betas`] over runs from any source.
pub fn estimate_betas_from<'a>(
    runs: impl IntoIterator<Item = Result<RunVolumes<'a>, CalibrateError>>,
    settings: &BetaSettings,
) -> Result<SessionBetas, CalibrateError> {
    let runs: Vec<_> = runs.into_iter().collect();
    if runs.is_empty() {
        return Err(CalibrateError::Step(
            "no calibration runs given (each run needs its volumes and an events table)".into(),
        ));
    }
    let mut realigner = Realigner::new(RealignConfig {
        reference: settings.reference.clone(),
        mask: settings.region.clone(),
        ..RealignConfig::default()
    })
    .map_err(|e| CalibrateError::Step(format!("preparing realignment: {e}")))?;
    // The session's grid comes with its first volume; the rest accumulate.
    let mut grid: Option<(Volume, SessionMask, SessionMask)> = None;
    let mut acc = Collected::default();
    for (r, input) in runs.into_iter().enumerate() {
        let run = r as u32 + 1;
        let input = input?;
        let events = input.events;
        let tr = settings.glm.tr.or(input.tr).ok_or_else(|| {
            input_err(&input.label, "no repetition time in the header; give --tr")
        })?;
        let spec = GlmConfig {
            tr: Some(tr),
            ..settings.glm.clone()
        }
        .model_spec()
        .ok_or_else(|| CalibrateError::Step("no TR".into()))?;
        let mut glm: Option<RunGlm> = None;
        // The design is built for the span of the events (the live stage
        // grows it if the run goes on longer).
        let planned = settings
            .glm
            .planned_volumes
            .or(input.planned)
            .or_else(|| {
                events
                    .iter()
                    .map(|e| ((e.onset + e.duration + 32.0) / tr).ceil() as usize + 1)
                    .max()
            })
            .unwrap_or(300)
            .max(10);
        let mut frames: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        let mut motion = Vec::new();
        let mut t = 0usize;
        let mut volumes = input.volumes;
        loop {
            let t0 = Instant::now();
            let Some(vol) = volumes.next() else {
                break;
            };
            let vol = vol?;
            acc.seconds.0 += t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let mut produced = Vec::new();
            realigner.handle(ingested(run, t as u32, &input.label, vol), &mut |e| {
                produced.push(e)
            });
            acc.seconds.1 += t1.elapsed().as_secs_f64();
            for e in produced {
                match e {
                    PipelineEvent::ReferenceReady {
                        reference, mask, ..
                    } if grid.is_none() => {
                        let brain = SessionMask::compute_epi(&reference).map_err(|e| {
                            CalibrateError::Step(format!("brain mask of the reference: {e}"))
                        })?;
                        grid = Some(((*reference).clone(), brain, (*mask).clone()));
                    }
                    PipelineEvent::Realigned(rv) => {
                        let t2 = Instant::now();
                        let glm = glm.get_or_insert_with(|| {
                            RunGlm::new(
                                spec.clone(),
                                planned,
                                rv.masked.len(),
                                settings.glm.schedule(),
                                &events,
                            )
                        });
                        motion.push(rv.params.0);
                        frames.insert(t, rv.masked.to_vec());
                        let done = glm.frame(t, &frames[&t], rv.params.0, false, &frames);
                        acc.collect(run, done);
                        acc.seconds.2 += t2.elapsed().as_secs_f64();
                    }
                    PipelineEvent::RealignFailed { path, reason, .. } => {
                        return Err(input_err(
                            &path,
                            format!("run {run} volume {t} could not be realigned: {reason}"),
                        ));
                    }
                    _ => {}
                }
            }
            t += 1;
        }
        if let Some(mut g) = glm {
            let done = g.finish();
            acc.collect(run, done);
        }
        acc.volumes += motion.len();
        acc.motion.push(motion);
    }
    let Some((reference, brain, region)) = grid else {
        return Err(CalibrateError::Step(
            "no volume could serve as the session reference".into(),
        ));
    };
    if acc.trials.is_empty() {
        return Err(CalibrateError::Step(format!(
            "no stimulus trial got a beta ({} skipped{})",
            acc.skipped.len(),
            acc.skipped
                .first()
                .map(|(r, t, why)| format!("; e.g. run {r} trial {t}: {why}"))
                .unwrap_or_default()
        )));
    }
    Ok(SessionBetas {
        reference,
        brain,
        region,
        trials: acc.trials,
        skipped: acc.skipped,
        motion: acc.motion,
        volumes: acc.volumes,
        seconds: acc.seconds,
    })
}

/// What [`estimate_betas_from`] gathers run by run.
#[derive(Default)]
struct Collected {
    trials: Vec<CalTrial>,
    skipped: Vec<(u32, usize, String)>,
    motion: Vec<Vec<[f64; 6]>>,
    volumes: usize,
    seconds: (f64, f64, f64),
}

impl Collected {
    /// Keep the stimulus trials the GLM just finished (blanks have no image).
    fn collect(&mut self, run: u32, done: Vec<crate::glm::run::TrialOutcome>) {
        for o in done {
            let Some(stim) = o.event.stim_id.clone() else {
                continue;
            };
            match o.result {
                Ok(est) => self.trials.push(CalTrial {
                    run,
                    trial: o.trial,
                    stim_id: stim,
                    onset: o.event.onset,
                    beta: est.beta,
                }),
                Err(why) => self.skipped.push((run, o.trial, why.to_string())),
            }
        }
    }
}

/// How the adapter is fitted.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Subject id written into `subject.toml`.
    pub subject: String,
    /// Use the first part of the session's trials (0 < f ≤ 1), in session
    /// order: the learning curve.
    pub fraction: f64,
    /// Reliability thresholds to choose from by cross-validation; empty for
    /// no voxel selection.
    pub thresholds: Vec<f64>,
    /// Ridge settings (penalty grid, folds).
    pub ridge: ridge::RidgeOptions,
    /// An adapter fitted elsewhere (e.g. a MindEye2 fine-tune) to install
    /// instead of fitting one; it must take the subject mask's voxels.
    pub adapter: Option<PathBuf>,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            subject: "subject".into(),
            fraction: 1.0,
            thresholds: vec![0.0, 0.05, 0.1, 0.15, 0.2, 0.3],
            ridge: ridge::RidgeOptions::default(),
            adapter: None,
        }
    }
}

/// What fitting produced.
#[derive(Debug, Clone)]
pub struct FitReport {
    /// The subject folder.
    pub dir: PathBuf,
    /// Trials fitted on.
    pub trials: usize,
    /// Distinct images among them.
    pub images: usize,
    /// Voxels in the region.
    pub region_voxels: usize,
    /// Voxels the adapter takes (the region's).
    pub voxels: usize,
    /// Of those, voxels with non-zero weights (the reliability selection).
    pub selected: usize,
    /// The reliability threshold chosen (None: all region voxels).
    pub threshold: Option<f64>,
    /// Cross-validated R² per threshold tried: (threshold, voxels, R²).
    pub selection_scores: Vec<(Option<f64>, usize, f64)>,
    /// Mean held-out R² over targets at the chosen penalties.
    pub cv_r2: f64,
    /// Median chosen penalty.
    pub median_lambda: f64,
    /// Primal or dual.
    pub form: String,
    /// Seconds spent computing targets and fitting.
    pub seconds: (f64, f64),
}

/// One target per image id, from the model's `[targets]`.
pub fn targets_for(
    model: &ModelManifest,
    ids: &[String],
    runtime: Option<&crate::decode::runtime::Runtime>,
) -> Result<(HashMap<String, Vec<f32>>, usize), CalibrateError> {
    let mf = &model.path;
    let spec = model.targets.as_ref().ok_or_else(|| {
        input_err(
            mf,
            "the model has no [targets] section: it does not say what a new subject's adapter is fitted to (install an adapter fitted elsewhere with --adapter)",
        )
    })?;
    match spec {
        TargetsSpec::Encoder {
            file,
            input,
            output,
            images,
        } => {
            let owned;
            let rt = match runtime {
                Some(r) => r,
                None => {
                    owned = crate::decode::runtime::Runtime::new(&Default::default())?;
                    &owned
                }
            };
            let mut graph =
                rt.load_graph("targets", file, vec![input.clone()], vec![output.clone()])?;
            let want = (
                input.shape[1] as usize,
                input.shape[2] as usize,
                input.shape[3] as usize,
            );
            let mut out = HashMap::new();
            let mut buf = Vec::new();
            for id in ids {
                let path = images.join(format!("{id}.png"));
                let (pixels, chw) = crate::formats::png::read_png(&path)
                    .map_err(|e| input_err(&path, format!("calibration image: {e}")))?;
                if chw != want {
                    return Err(input_err(
                        &path,
                        format!(
                            "image is {}x{}x{} (CxHxW); the target encoder takes {}x{}x{}",
                            chw.0, chw.1, chw.2, want.0, want.1, want.2
                        ),
                    ));
                }
                graph.run(
                    &[crate::decode::runtime::Input::F32(&pixels)],
                    &mut [&mut buf],
                )?;
                out.insert(id.clone(), buf.clone());
            }
            Ok((out, output.len()))
        }
        TargetsSpec::Table {
            file,
            ids: ids_file,
        } => {
            let bytes = std::fs::read(file).map_err(|e| input_err(file, e.to_string()))?;
            let (values, rows, cols) =
                crate::formats::npy::decode_2d(&bytes).map_err(|e| input_err(file, e))?;
            let names = std::fs::read_to_string(ids_file)
                .map_err(|e| input_err(ids_file, e.to_string()))?;
            let names: Vec<&str> = names.lines().map(str::trim).collect();
            if names.len() != rows {
                return Err(input_err(
                    ids_file,
                    format!(
                        "{} ids for {rows} target rows in {}",
                        names.len(),
                        file.display()
                    ),
                ));
            }
            let mut out = HashMap::new();
            for id in ids {
                let r = names.iter().position(|n| n == id).ok_or_else(|| {
                    input_err(ids_file, format!("no target for calibration image {id}"))
                })?;
                out.insert(
                    id.clone(),
                    values[r * cols..(r + 1) * cols]
                        .iter()
                        .map(|&v| v as f32)
                        .collect(),
                );
            }
            Ok((out, cols))
        }
    }
}

/// Per-voxel mean and standard deviation (ddof 0) of `rows`.
fn stats(rows: &[&[f32]], v: usize) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0.0f64; v];
    for r in rows {
        for (m, &x) in mean.iter_mut().zip(r.iter()) {
            *m += x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0f64; v];
    for r in rows {
        for ((s, &x), m) in var.iter_mut().zip(r.iter()).zip(&mean) {
            *s += (x as f64 - m).powi(2);
        }
    }
    (mean, var.into_iter().map(|s| (s / n).sqrt()).collect())
}

fn npy_2d(path: &Path, rows: usize, cols: usize, values: &[f32]) -> Result<(), CalibrateError> {
    let mut w = crate::formats::npy::NpyAppender::create(path, cols).map_err(write_err(path))?;
    for r in 0..rows {
        w.append(&values[r * cols..(r + 1) * cols])
            .map_err(write_err(path))?;
    }
    Ok(())
}

fn write_text(path: &Path, text: &str) -> Result<(), CalibrateError> {
    crate::formats::atomic_write(path, text.as_bytes()).map_err(write_err(path))
}

fn write_mask(path: &Path, mask: &SessionMask) -> Result<(), CalibrateError> {
    let opts = WriteOptions {
        gzip: true,
        ..Default::default()
    };
    nifti::write_volume(path, &mask.to_volume(), &opts).map_err(write_err(path))
}

/// Fit the adapter on (the first `fraction` of) the session's trials and
/// write the subject folder `out`.
pub fn fit_subject(
    betas: &SessionBetas,
    model_dir: &Path,
    out: &Path,
    opts: &FitOptions,
) -> Result<FitReport, CalibrateError> {
    if !(opts.fraction > 0.0 && opts.fraction <= 1.0) {
        return Err(CalibrateError::Step(format!(
            "fraction {} must be in (0, 1]",
            opts.fraction
        )));
    }
    let model = ModelManifest::load(model_dir)?;
    let n = ((betas.trials.len() as f64 * opts.fraction).ceil() as usize).min(betas.trials.len());
    let trials = &betas.trials[..n];
    let v_region = betas.region.len();
    let mut ids: Vec<String> = trials.iter().map(|t| t.stim_id.clone()).collect();
    ids.sort();
    ids.dedup();
    std::fs::create_dir_all(out).map_err(write_err(out))?;

    // Normalisation with the fitted trials' own statistics, as the adapter
    // will see z-scored betas live.
    let rows: Vec<&[f32]> = trials.iter().map(|t| t.beta.as_slice()).collect();
    let (mean, sd) = stats(&rows, v_region);
    let mut x = Vec::with_capacity(n * v_region);
    for r in &rows {
        x.extend(r.iter().enumerate().map(|(j, &b)| {
            if sd[j] > 1e-12 {
                ((b as f64 - mean[j]) / sd[j]) as f32
            } else {
                0.0
            }
        }));
    }
    let images: Vec<String> = trials.iter().map(|t| t.stim_id.clone()).collect();
    let group_of: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(g, id)| (id.as_str(), g))
        .collect();
    let groups: Vec<usize> = images.iter().map(|i| group_of[i.as_str()]).collect();

    let t_targets = Instant::now();
    let adapter_out: TensorSpec = model.backbone.input.clone();
    let latent = adapter_out.len();
    let (selected, threshold, scores, reliab, fit, seconds_targets) = match &opts.adapter {
        None => {
            let (targets, width) = targets_for(&model, &ids, None)?;
            if width != latent {
                return Err(input_err(
                    &model.path,
                    format!("targets have {width} values; the backbone takes {latent}"),
                ));
            }
            let mut y = Vec::with_capacity(n * latent);
            for i in &images {
                y.extend_from_slice(&targets[i]);
            }
            let seconds_targets = t_targets.elapsed().as_secs_f64();
            let repeated = {
                let mut seen: HashMap<&str, usize> = HashMap::new();
                for i in &images {
                    *seen.entry(i.as_str()).or_default() += 1;
                }
                seen.values().filter(|&&c| c >= 2).count()
            };
            // Reliability needs repeats; a short calibration (the start of
            // a learning curve) may have none, and then every voxel stays.
            if !opts.thresholds.is_empty() && repeated < reliability::MIN_REPEATED_IMAGES {
                tracing::warn!(
                    "voxel selection skipped: {repeated} images shown at least twice in the {n} trials fitted (it needs {})",
                    reliability::MIN_REPEATED_IMAGES
                );
            }
            let (selected, threshold, scores, reliab) =
                if opts.thresholds.is_empty() || repeated < reliability::MIN_REPEATED_IMAGES {
                    ((0..v_region).collect::<Vec<_>>(), None, Vec::new(), None)
                } else {
                    let sel = reliability::select_voxels_cv(
                        &x,
                        n,
                        v_region,
                        &y,
                        latent,
                        &images,
                        &groups,
                        &opts.thresholds,
                        &opts.ridge,
                    )
                    .map_err(|e| CalibrateError::Step(format!("voxel selection: {e}")))?;
                    (sel.voxels, sel.threshold, sel.scores, Some(sel.reliability))
                };
            let xs = take_columns(&x, n, v_region, &selected);
            let fit = ridge::fit_ridge_cv(&xs, n, selected.len(), &y, latent, &groups, &opts.ridge)
                .map_err(|e| CalibrateError::Step(format!("ridge regression: {e}")))?;
            (
                selected,
                threshold,
                scores,
                reliab,
                Some(fit),
                seconds_targets,
            )
        }
        Some(_) => (
            (0..v_region).collect::<Vec<_>>(),
            None,
            Vec::new(),
            None,
            None,
            0.0,
        ),
    };
    let seconds_fit = t_targets.elapsed().as_secs_f64() - seconds_targets;

    // The adapter takes every region voxel, unselected ones with zero
    // weights: subjects fitted with different selections (the learning
    // curve) share one voxel order, and so the same live betas.
    let subject_mask = betas.region.clone();
    let v = v_region;
    let opts_gz = WriteOptions {
        gzip: true,
        ..Default::default()
    };
    let p = out.join("reference.nii.gz");
    nifti::write_volume(&p, &betas.reference, &opts_gz).map_err(write_err(&p))?;
    write_mask(&out.join("brain_mask.nii.gz"), &betas.brain)?;
    write_mask(&out.join("region_mask.nii.gz"), &betas.region)?;
    write_mask(&out.join("mask.nii.gz"), &subject_mask)?;
    let mut is_selected = vec![false; v];
    for &c in &selected {
        is_selected[c] = true;
    }
    let mut tsv = String::from("column\ti\tj\tk\tselected\treliability\n");
    for (c, &sel) in is_selected.iter().enumerate() {
        let [i, j, k] = subject_mask.voxel(c).unwrap_or([0, 0, 0]);
        let r = reliab
            .as_ref()
            .and_then(|r| r.get(c))
            .map_or_else(|| "n/a".to_string(), |v| format!("{v:.4}"));
        tsv.push_str(&format!("{c}\t{i}\t{j}\t{k}\t{}\t{r}\n", u8::from(sel)));
    }
    write_text(&out.join("voxels.tsv"), &tsv)?;
    let z: Vec<f32> = mean.iter().chain(sd.iter()).map(|&x| x as f32).collect();
    npy_2d(&out.join("zscore.npy"), 2, v, &z)?;
    npy_2d(
        &out.join("betas.npy"),
        n,
        v_region,
        &trials
            .iter()
            .flat_map(|t| t.beta.iter().copied())
            .collect::<Vec<_>>(),
    )?;
    let mut index = String::from("row\trun\ttrial\tonset\tstim_id\n");
    for (r, t) in trials.iter().enumerate() {
        index.push_str(&format!(
            "{r}\t{}\t{}\t{}\t{}\n",
            t.run, t.trial, t.onset, t.stim_id
        ));
    }
    write_text(&out.join("betas.tsv"), &index)?;

    let adapter_path = out.join("adapter.onnx");
    let input_name = "voxels";
    let (form, cv_r2, median_lambda) = match (&fit, &opts.adapter) {
        (Some(fit), _) => {
            let mut weights = vec![0.0f32; v * latent];
            for (r, &c) in selected.iter().enumerate() {
                weights[c * latent..(c + 1) * latent]
                    .copy_from_slice(&fit.weights[r * latent..(r + 1) * latent]);
            }
            onnx_graph::write_linear_adapter(
                &adapter_path,
                &weights,
                &fit.bias,
                v,
                latent,
                input_name,
                &adapter_out.name,
                &format!(
                    "boldstream calibrate: ridge adapter for {} ({} trials, {} of {} voxels selected)",
                    opts.subject,
                    n,
                    selected.len(),
                    v
                ),
            )
            .map_err(|e| CalibrateError::Step(format!("writing the adapter: {e}")))?;
            let mut l = fit.lambdas.clone();
            l.sort_by(f64::total_cmp);
            let r2 = fit.cv_r2.iter().sum::<f64>() / fit.cv_r2.len().max(1) as f64;
            (
                format!("{:?}", fit.form).to_lowercase(),
                r2,
                l.get(l.len() / 2).copied().unwrap_or(f64::NAN),
            )
        }
        (None, Some(external)) => {
            std::fs::copy(external, &adapter_path)
                .map_err(|e| input_err(external, e.to_string()))?;
            ("external".to_string(), f64::NAN, f64::NAN)
        }
        (None, None) => return Err(CalibrateError::Step("nothing fitted".into())),
    };
    crate::decode::manifest::SubjectManifest {
        format: crate::decode::manifest::FORMAT,
        subject: opts.subject.clone(),
        voxels: v,
        adapter: crate::decode::manifest::AdapterSpec {
            file: "adapter.onnx".into(),
            input: TensorSpec {
                name: input_name.to_string(),
                shape: vec![1, v as i64],
                dtype: crate::decode::tensor::Dtype::Float32,
            },
            output: adapter_out.clone(),
        },
        mask: Some("mask.nii.gz".into()),
        reference: Some("reference.nii.gz".into()),
        zscore: Some("zscore.npy".into()),
        path: PathBuf::new(),
    }
    .write(out)?;
    // An external adapter must fit the subject mask: check now, not live.
    let manifest = crate::decode::manifest::SubjectManifest::load(out)?;
    manifest.check_against(&model)?;
    if opts.adapter.is_some() {
        let rt = crate::decode::runtime::Runtime::new(&Default::default())?;
        rt.load_graph(
            "adapter",
            &manifest.adapter.file,
            vec![manifest.adapter.input.clone()],
            vec![manifest.adapter.output.clone()],
        )?;
    }

    let report = FitReport {
        dir: out.to_path_buf(),
        trials: n,
        images: ids.len(),
        region_voxels: v_region,
        voxels: v,
        selected: selected.len(),
        threshold,
        selection_scores: scores,
        cv_r2,
        median_lambda,
        form,
        seconds: (seconds_targets, seconds_fit),
    };
    let mut cal = format!(
        "# boldstream calibrate\nsubject = \"{}\"\nmodel = \"{}\"\ntrials = {n}\nimages = {}\nruns = {}\nvolumes = {}\nfraction = {}\nregion_voxels = {v_region}\nvoxels = {v}\nselected_voxels = {}\nthreshold = {}\nform = \"{}\"\ncv_r2 = {}\nmedian_lambda = {}\nskipped_trials = {}\nseconds_realign = {:.3}\nseconds_glm = {:.3}\nseconds_targets = {:.3}\nseconds_fit = {:.3}\n",
        opts.subject.replace('"', "'"),
        model_dir.display().to_string().replace('\\', "/"),
        ids.len(),
        betas.motion.len(),
        betas.volumes,
        opts.fraction,
        selected.len(),
        threshold.map_or("\"none\"".to_string(), |t| t.to_string()),
        report.form,
        finite_or_nan(cv_r2),
        finite_or_nan(median_lambda),
        betas.skipped.len(),
        betas.seconds.1,
        betas.seconds.2,
        seconds_targets,
        seconds_fit
    );
    for (t, nv, r2) in &report.selection_scores {
        cal.push_str(&format!(
            "\n[[selection]]\nthreshold = {}\nvoxels = {nv}\ncv_r2 = {}\n",
            t.map_or("\"none\"".to_string(), |t| t.to_string()),
            finite_or_nan(*r2)
        ));
    }
    write_text(&out.join("calibration.toml"), &cal)?;
    Ok(report)
}

fn finite_or_nan(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "nan".into()
    }
}

fn take_columns(x: &[f32], n: usize, v: usize, cols: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * cols.len());
    for r in 0..n {
        let row = &x[r * v..(r + 1) * v];
        out.extend(cols.iter().map(|&c| row[c]));
    }
    out
}

/// One line about a fit.
pub fn print_fit(r: &FitReport) {
    println!(
        "subject folder {}: adapter on {} trials ({} images), {} of {} region voxels selected (reliability threshold {}), {} form, cross-validated R² {:.3}, median penalty {:.3e}; targets {:.1} s, fit {:.1} s",
        r.dir.display(),
        r.trials,
        r.images,
        r.selected,
        r.region_voxels,
        r.threshold
            .map_or_else(|| "none".to_string(), |t| format!("{t}")),
        r.form,
        r.cv_r2,
        r.median_lambda,
        r.seconds.0,
        r.seconds.1
    );
}
