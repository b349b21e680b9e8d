//! Realign: rigid (6-DOF) motion correction of each volume to the session reference.
//!
//! In: [`IngestEvent`]s (decoded volumes in order, plus gaps, duplicates…).
//! Out: [`PipelineEvent`]s — each volume's MCFLIRT-convention motion
//! parameters, framewise displacement, DVARS and its voxels resampled once
//! onto the output grid and gathered in the session mask's `np.where` order;
//! non-volume events pass through in order.
//!
//! Split the way ITK splits registration: [`transform`] (rigid maps and the
//! `.par` convention), [`interpolate`] (trilinear), [`metric`] (least
//! squares with a gain, inverse compositional), [`optimizer`] (Gauss–Newton),
//! with [`pyramid`] for coarse-to-fine, [`register`] tying them together and
//! [`resample`] for the single output interpolation.

pub mod interpolate;
pub mod metric;
pub mod optimizer;
pub mod pyramid;
pub mod register;
pub mod resample;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use nalgebra::Matrix4;

use crate::formats::nifti;
use crate::types::mask::SessionMask;
use crate::types::messages::{
    CrossSession, IngestEvent, IngestedVolume, PipelineEvent, RealignedVolume,
};
use crate::types::transform::{MotionParams, framewise_displacement, par_from_ref_to_volume};
use crate::types::volume::Volume;
use register::{Registration, RegistrationOptions};
use resample::Resampler;

/// Why a volume could not be realigned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RealignError {
    /// Too little of the reference falls inside the volume to register.
    #[error("volume barely overlaps the reference ({:.0}% of reference samples inside)", overlap * 100.0)]
    NoOverlap {
        /// Fraction of reference samples inside the moving volume.
        overlap: f64,
    },
    /// The Gauss–Newton system was singular (e.g. a flat image).
    #[error("registration is degenerate (no image structure to align)")]
    Degenerate,
    /// The reference has no voxels above background.
    #[error("reference volume is empty (no voxels above background)")]
    EmptyReference,
    /// The reference contains NaN or infinite voxels.
    #[error("reference volume has NaN/Inf voxels")]
    NonFiniteReference,
    /// An axis has fewer than two voxels.
    #[error("grid {0} is too small to register (each axis needs at least 2 voxels)")]
    TooSmall(String),
    /// A configured file could not be used.
    #[error("{0}")]
    Setup(String),
}

/// Realign settings (`[realign]` in the config file).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealignConfig {
    /// Reference image; default: the first volume of the session.
    pub reference: Option<PathBuf>,
    /// Session mask on the output grid; default: nilearn-style EPI mask of
    /// the reference (or of the target image when one is given).
    pub mask: Option<PathBuf>,
    /// An image whose grid is the output grid (e.g. the calibration
    /// session's reference); default: the reference grid.
    pub target_grid: Option<PathBuf>,
    /// World (RAS mm) transform from the target grid's frame to the
    /// reference's, row-major 4×4; default identity (same scanner frame).
    pub target_to_reference: Option<[[f64; 4]; 4]>,
    /// Register the target image (the calibration session's reference)
    /// to the session reference once, when the reference is set, and use
    /// that as `target_to_reference`: the head sits differently in a new
    /// session, and the subject's mask and voxel order live on the
    /// calibration grid.
    pub register_target: bool,
    /// Sphere radius for framewise displacement (Power et al.: 50 mm).
    pub fd_radius_mm: f64,
    /// FD above which a volume is flagged in logs and the QC table.
    pub fd_threshold_mm: f64,
    /// Registration tuning.
    pub registration: RegistrationOptions,
}

impl Default for RealignConfig {
    fn default() -> Self {
        RealignConfig {
            reference: None,
            mask: None,
            target_grid: None,
            target_to_reference: None,
            register_target: false,
            fd_radius_mm: 50.0,
            fd_threshold_mm: 0.5,
            registration: RegistrationOptions::default(),
        }
    }
}

struct Session {
    registration: Registration,
    resampler: Resampler,
    mask: SessionMask,
    /// Mean masked intensity of the reference on the output grid.
    reference_mean: f64,
    reference: Arc<Volume>,
    source: String,
    cross_session: Option<CrossSession>,
    announced: bool,
}

/// Register `target` (e.g. the calibration session's reference) to the
/// session reference prepared in `registration` (whose grid is
/// `reference`'s). Returns the world map from the target's frame to the
/// reference's, ready for [`Resampler::onto_grid`], with its parameters.
pub fn register_across_sessions(
    registration: &Registration,
    reference: &crate::types::volume::Grid,
    target: &Volume,
) -> Result<(Matrix4<f64>, MotionParams), RealignError> {
    let reg = registration.register(target, &registration.world_init(target.grid()))?;
    let inv = |m: Matrix4<f64>, what: &str| {
        m.try_inverse()
            .ok_or_else(|| RealignError::Setup(format!("{what} is singular")))
    };
    // reference FSL mm → target FSL mm, taken to world coordinates on both
    // sides.
    let ref_world_to_target_world = target.grid().affine
        * inv(
            target.grid().vox_to_fsl(),
            "the target's voxel → FSL matrix",
        )?
        * reg.ref_to_volume
        * reference.vox_to_fsl()
        * inv(reference.affine, "the reference affine")?;
    let target_to_reference = inv(ref_world_to_target_world, "the cross-session transform")?;
    let params = par_from_ref_to_volume(&reg.ref_to_volume, registration.centre());
    Ok((target_to_reference, params))
}

struct RunState {
    last_params: MotionParams,
    last_transform: Matrix4<f64>,
    last_masked: Arc<[f32]>,
}

/// A run's last in-sequence volume, as a resumed session stored it.
#[derive(Debug, Clone)]
pub struct LastVolume {
    /// Run number.
    pub run: u32,
    /// Its parameters (full precision).
    pub params: MotionParams,
    /// Its reference → volume map (full precision): the next volume's start.
    pub ref_to_volume: Matrix4<f64>,
    /// Its masked voxels (for DVARS).
    pub masked: Arc<[f32]>,
}

/// Realign's state from a stored session: reference and mask as stored
/// (not picked again), and each run's last volume.
#[derive(Debug, Clone)]
pub struct ResumedRealign {
    /// The session reference, on its exact grid.
    pub reference: Volume,
    /// The session mask image (output grid).
    pub mask: Volume,
    /// Where the reference came from, for the log.
    pub source: String,
    /// Per run, the last volume that was not late.
    pub runs: Vec<LastVolume>,
}

/// The realign stage's state: the prepared reference and, per run, what
/// the previous volume looked like (for FD, DVARS and a warm start).
pub struct Realigner {
    config: RealignConfig,
    configured_reference: Option<Volume>,
    session: Option<Session>,
    runs: HashMap<u32, RunState>,
}

impl Realigner {
    /// Load configured files (reference, target grid, mask) up front so a
    /// wrong path fails at start-up, not mid-run.
    pub fn new(config: RealignConfig) -> Result<Realigner, RealignError> {
        let configured_reference = match &config.reference {
            Some(p) => Some(
                nifti::read_volume(p)
                    .map_err(|e| RealignError::Setup(format!("reference {}: {e}", p.display())))?,
            ),
            None => None,
        };
        let mut r = Realigner {
            config,
            configured_reference,
            session: None,
            runs: HashMap::new(),
        };
        if let Some(reference) = r.configured_reference.take() {
            let source = r
                .config
                .reference
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            r.set_reference(&reference, source, None)?;
        }
        Ok(r)
    }

    /// Continue a stored session: its reference and mask (already
    /// announced to the store), and each run where it stopped, so the next
    /// volume is registered, measured and compared exactly as without the
    /// interruption.
    pub fn resume(config: RealignConfig, state: ResumedRealign) -> Result<Realigner, RealignError> {
        let mut r = Realigner {
            config,
            configured_reference: None,
            session: None,
            runs: HashMap::new(),
        };
        r.set_reference(&state.reference, state.source, Some(&state.mask))?;
        if let Some(s) = r.session.as_mut() {
            s.announced = true;
        }
        for last in state.runs {
            r.runs.insert(
                last.run,
                RunState {
                    last_params: last.params,
                    last_transform: last.ref_to_volume,
                    last_masked: last.masked,
                },
            );
        }
        Ok(r)
    }

    /// The `ReferenceReady` event for the session reference, once it is set.
    pub fn reference_ready(&self) -> Option<PipelineEvent> {
        self.session
            .as_ref()
            .map(|s| PipelineEvent::ReferenceReady {
                source: s.source.clone(),
                mask_voxels: s.mask.len(),
                reference: s.reference.clone(),
                mask: Arc::new(s.mask.clone()),
                cross_session: s.cross_session.clone(),
            })
    }

    /// Whether the session reference is prepared.
    pub fn has_reference(&self) -> bool {
        self.session.is_some()
    }

    /// The session mask, once the reference is set.
    pub fn mask(&self) -> Option<&SessionMask> {
        self.session.as_ref().map(|s| &s.mask)
    }

    /// The cross-session registration, when `register_target` made one.
    pub fn cross_session(&self) -> Option<&CrossSession> {
        self.session.as_ref().and_then(|s| s.cross_session.as_ref())
    }

    /// Centre of rotation of the `.par` parameters, once the reference is set.
    pub fn centre(&self) -> Option<nalgebra::Vector3<f64>> {
        self.session.as_ref().map(|s| s.registration.centre())
    }

    /// `stored_mask`: a resumed session's mask image, used instead of the
    /// configured or computed one.
    fn set_reference(
        &mut self,
        reference: &Volume,
        source: String,
        stored_mask: Option<&Volume>,
    ) -> Result<usize, RealignError> {
        let registration = Registration::new(reference, self.config.registration.clone())?;
        let mut cross_session = None;
        let (resampler, target_image) = match &self.config.target_grid {
            Some(p) => {
                let target = nifti::read_volume(p).map_err(|e| {
                    RealignError::Setup(format!("target grid {}: {e}", p.display()))
                })?;
                let x = if self.config.register_target {
                    let start = Instant::now();
                    let (x, params) =
                        register_across_sessions(&registration, reference.grid(), &target)
                            .map_err(|e| {
                                RealignError::Setup(format!(
                                    "registering the target {} to the session reference: {e}",
                                    p.display()
                                ))
                            })?;
                    cross_session = Some(CrossSession {
                        target: p.display().to_string(),
                        target_to_reference: std::array::from_fn(|r| {
                            std::array::from_fn(|c| x[(r, c)])
                        }),
                        params,
                        seconds: start.elapsed().as_secs_f64(),
                    });
                    x
                } else {
                    self.config
                        .target_to_reference
                        .map(|m| Matrix4::from_fn(|r, c| m[r][c]))
                        .unwrap_or_else(Matrix4::identity)
                };
                (
                    Resampler::onto_grid(target.grid(), reference.grid(), &x),
                    Some(target),
                )
            }
            None => {
                if self.config.register_target {
                    return Err(RealignError::Setup(
                        "register_target needs a target_grid image to register".into(),
                    ));
                }
                (Resampler::onto_reference(reference.grid()), None)
            }
        };
        let mask = match (&self.config.mask, stored_mask) {
            (_, Some(m)) => SessionMask::from_image(m, resampler.target())
                .map_err(|e| RealignError::Setup(format!("stored session mask: {e}")))?,
            (Some(p), None) => {
                let m = nifti::read_volume(p)
                    .map_err(|e| RealignError::Setup(format!("mask {}: {e}", p.display())))?;
                SessionMask::from_image(&m, resampler.target())
                    .map_err(|e| RealignError::Setup(format!("mask {}: {e}", p.display())))?
            }
            (None, None) => SessionMask::compute_epi(target_image.as_ref().unwrap_or(reference))
                .map_err(|e| RealignError::Setup(format!("computed mask: {e}")))?,
        };
        let on_target = resampler.resample(reference, &registration.world_init(reference.grid()));
        let mut masked = Vec::new();
        mask.gather_into(on_target.values(), &mut masked);
        let reference_mean =
            masked.iter().map(|&v| v as f64).sum::<f64>() / masked.len().max(1) as f64;
        let n = mask.len();
        self.session = Some(Session {
            registration,
            resampler,
            mask,
            reference_mean,
            reference: Arc::new(reference.clone()),
            source,
            cross_session,
            announced: false,
        });
        Ok(n)
    }

    /// Say once which reference and mask the session uses.
    fn announce(&mut self, emit: &mut dyn FnMut(PipelineEvent)) {
        let mut announce = false;
        if let Some(s) = self.session.as_mut()
            && !s.announced
        {
            announce = true;
            s.announced = true;
            tracing::info!(
                "session reference: {}, mask {} voxels",
                s.source,
                s.mask.len()
            );
            if let Some(c) = &s.cross_session {
                let p = c.params.0;
                tracing::info!(
                    "calibration reference {} registered to this session's in {:.0} ms: rotations {:.2} {:.2} {:.2} deg, translations {:.2} {:.2} {:.2} mm",
                    c.target,
                    c.seconds * 1e3,
                    p[0].to_degrees(),
                    p[1].to_degrees(),
                    p[2].to_degrees(),
                    p[3],
                    p[4],
                    p[5]
                );
            }
        }
        if let Some(ev) = announce.then(|| self.reference_ready()).flatten() {
            emit(ev);
        }
    }

    fn handle_volume(&mut self, v: IngestedVolume, emit: &mut dyn FnMut(PipelineEvent)) {
        if self.session.is_none() {
            let source = format!("{} ({})", v.path.display(), v.key);
            if let Err(e) = self.set_reference(&v.volume, source, None) {
                // Not fatal: the next good volume gets its chance to be
                // the reference.
                tracing::error!(
                    "{}: cannot serve as the session reference: {e}",
                    v.path.display()
                );
                emit(PipelineEvent::RealignFailed {
                    key: v.key,
                    path: v.path,
                    reason: format!("cannot serve as the session reference: {e}"),
                });
                return;
            }
        }
        self.announce(emit);
        match self.realign(&v) {
            Ok(r) => emit(PipelineEvent::Realigned(Box::new(r))),
            Err(e) => {
                tracing::error!("{}: {}: realignment failed: {e}", v.path.display(), v.key);
                emit(PipelineEvent::RealignFailed {
                    key: v.key,
                    path: v.path,
                    reason: e.to_string(),
                });
            }
        }
    }

    /// Register, resample and measure one volume.
    pub fn realign(&mut self, v: &IngestedVolume) -> Result<RealignedVolume, RealignError> {
        let start = Instant::now();
        let session = self.session.as_ref().ok_or(RealignError::EmptyReference)?;
        let run = self.runs.get(&v.key.run);
        let init = match run {
            Some(r) if v.volume.grid().matches(session.registration.grid(), 1e-3) => {
                r.last_transform
            }
            _ => session.registration.world_init(v.volume.grid()),
        };
        let reg = session.registration.register(&v.volume, &init)?;
        let params = par_from_ref_to_volume(&reg.ref_to_volume, session.registration.centre());
        let mut masked = Vec::with_capacity(session.mask.len());
        session.resampler.resample_masked(
            &v.volume,
            &reg.ref_to_volume,
            &session.mask,
            &mut masked,
        );
        let masked: Arc<[f32]> = masked.into();
        let realign_seconds = start.elapsed().as_secs_f64();
        // A late volume is out of sequence: comparing it with whatever came
        // last would not be a frame-to-frame figure.
        let (fd, dvars) = match run.filter(|_| !v.late) {
            Some(prev) => {
                let fd =
                    framewise_displacement(&prev.last_params, &params, self.config.fd_radius_mm);
                let ss: f64 = masked
                    .iter()
                    .zip(prev.last_masked.iter())
                    .map(|(&a, &b)| ((a - b) as f64).powi(2))
                    .sum();
                (Some(fd), Some((ss / masked.len().max(1) as f64).sqrt()))
            }
            None => (None, None),
        };
        let dvars_pct = dvars.map(|d| 100.0 * d / session.reference_mean.max(f64::MIN_POSITIVE));
        let gain = reg.levels.last().map_or(1.0, |l| l.gain);
        if !v.late {
            self.runs.insert(
                v.key.run,
                RunState {
                    last_params: params,
                    last_transform: reg.ref_to_volume,
                    last_masked: masked.clone(),
                },
            );
        }
        tracing::debug!(
            key = %v.key,
            decode_ms = v.timing.decode_seconds * 1e3,
            wait_ms = v.timing.released.saturating_duration_since(v.timing.decoded).as_secs_f64() * 1e3,
            realign_ms = realign_seconds * 1e3,
            iterations = ?reg.levels.iter().map(|l| l.iterations).collect::<Vec<_>>(),
            fd = ?fd,
            "realigned"
        );
        if let Some(fd) = fd
            && fd > self.config.fd_threshold_mm
        {
            tracing::warn!("{}: framewise displacement {fd:.2} mm", v.key);
        }
        Ok(RealignedVolume {
            key: v.key,
            path: v.path.clone(),
            late: v.late,
            params,
            ref_to_volume: reg.ref_to_volume,
            fd,
            dvars,
            dvars_pct,
            masked,
            ingest: v.timing,
            realigned_at: Instant::now(),
            realign_seconds,
            iterations: reg.levels.iter().map(|l| l.iterations).collect(),
            gain,
        })
    }
}

/// Offline realignment of a series to its first volume (or `reference`):
/// the same code as the live path, for the `realign` subcommand, the
/// benchmarks and the comparison with other tools. Returns each volume's
/// parameters and registration+resampling time in seconds.
pub fn realign_series(
    volumes: &[Volume],
    reference: Option<&Volume>,
    options: RegistrationOptions,
) -> Result<Vec<(MotionParams, f64)>, RealignError> {
    let first = volumes.first().ok_or(RealignError::EmptyReference)?;
    let reference = reference.unwrap_or(first);
    let registration = Registration::new(reference, options)?;
    let resampler = Resampler::onto_reference(reference.grid());
    let mut t = registration.world_init(first.grid());
    let mut out = Vec::with_capacity(volumes.len());
    let mut buf = Vec::new();
    for v in volumes {
        let start = Instant::now();
        let reg = registration.register(v, &t)?;
        resampler.resample_into(v, &reg.ref_to_volume, &mut buf);
        let secs = start.elapsed().as_secs_f64();
        t = reg.ref_to_volume;
        out.push((par_from_ref_to_volume(&t, registration.centre()), secs));
    }
    Ok(out)
}

impl crate::stage::Stage for Realigner {
    type Input = IngestEvent;
    type Output = PipelineEvent;
    type Summary = ();
    const NAME: &'static str = "realign";

    /// One ingest event: volumes are realigned, the rest passed on.
    fn handle(&mut self, event: IngestEvent, emit: &mut crate::stage::Emit<'_, PipelineEvent>) {
        self.announce(emit);
        match event {
            IngestEvent::Volume(v) => self.handle_volume(*v, emit),
            other => emit(PipelineEvent::Ingest(other)),
        }
    }

    fn finish(self, _emit: &mut crate::stage::Emit<'_, PipelineEvent>) {}
}
