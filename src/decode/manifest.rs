//! The model folder's `model.toml` and the subject folder's `subject.toml`.
//!
//! In: the two folders. Out: [`ModelManifest`] and [`SubjectManifest`] with
//! every path resolved and the manifest's own consistency checked (shapes
//! that must agree between roles do). Agreement with the graphs themselves
//! is checked by [`super::models`] once they are loaded. The format is
//! documented in `onnx/README.md`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::ModelError;
use super::tensor::{Dtype, TensorSpec, shape_str, shapes_agree};

/// The manifest versions this build reads.
pub const FORMAT: u32 = 1;

/// Where a graph names one of its tensors by name only, or in full.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TensorRef {
    /// Just the name; shape and dtype follow from the role.
    Name(String),
    /// Name, shape and dtype (they must agree with the role's).
    Spec(TensorSpec),
}

impl TensorRef {
    fn resolve(
        &self,
        expected: &[i64],
        dtype: Dtype,
        field: &str,
        manifest: &Path,
    ) -> Result<TensorSpec, ModelError> {
        match self {
            TensorRef::Name(n) => Ok(TensorSpec {
                name: n.clone(),
                shape: expected.to_vec(),
                dtype,
            }),
            TensorRef::Spec(s) => {
                if !shapes_agree(&s.shape, expected) {
                    return Err(manifest_err(
                        manifest,
                        format!(
                            "{field}: shape {} but it must be {}",
                            shape_str(&s.shape),
                            shape_str(expected)
                        ),
                    ));
                }
                if s.dtype != dtype {
                    return Err(manifest_err(
                        manifest,
                        format!("{field}: dtype {} but it must be {dtype}", s.dtype),
                    ));
                }
                Ok(s.clone())
            }
        }
    }
}

impl TensorRef {
    /// Resolve against a full spec (shape and dtype), naming the manifest.
    pub fn resolve_for(
        &self,
        expected: &TensorSpec,
        field: &str,
        m: &ModelManifest,
    ) -> Result<TensorSpec, ModelError> {
        self.resolve(&expected.shape, expected.dtype, field, &m.path)
    }
}

fn manifest_err(path: &Path, message: String) -> ModelError {
    ModelError::Manifest {
        path: path.to_path_buf(),
        message,
    }
}

/// `[backbone]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneSpec {
    /// The graph.
    pub file: PathBuf,
    /// Shared latent in.
    pub input: TensorSpec,
    /// Embedding tokens out.
    pub tokens: TensorSpec,
    /// Retrieval embedding out (optional head).
    #[serde(default)]
    pub retrieval: Option<TensorSpec>,
    /// Low-level latent out (optional head).
    #[serde(default)]
    pub lowlevel: Option<TensorSpec>,
}

/// What a denoiser predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    /// The clean sample.
    X0,
    /// The noise.
    Eps,
    /// Velocity (Salimans & Ho).
    V,
}

/// A discrete noise schedule.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// `linear` or `cosine`.
    pub kind: ScheduleKind,
    /// Training timesteps T.
    pub train_steps: usize,
    /// First β of a linear schedule.
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    /// Last β of a linear schedule.
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
}

fn default_beta_start() -> f64 {
    1e-4
}
fn default_beta_end() -> f64 {
    0.02
}

/// Discrete schedule shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// βs evenly spaced.
    Linear,
    /// Nichol & Dhariwal's cosine ᾱ.
    Cosine,
}

/// A discrete-time sampler's settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscreteSampler {
    /// `ddim` or `ddpm`.
    pub kind: DiscreteKind,
    /// Inference steps.
    pub steps: usize,
    /// Which timesteps the steps visit (default `even`).
    #[serde(default)]
    pub grid: Grid,
    /// Explicit descending timesteps (one model call each); overrides `grid`
    /// and must have `steps` values.
    #[serde(default)]
    pub timesteps: Option<Vec<i64>>,
    /// DDIM's η (0 = deterministic).
    #[serde(default)]
    pub eta: f64,
    /// Classifier-free guidance scale (1 = none).
    #[serde(default = "one")]
    pub guidance: f64,
    /// Noise seed.
    #[serde(default)]
    pub seed: u64,
}

fn one() -> f64 {
    1.0
}

/// A discrete sampler's timestep grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grid {
    /// tₙ = (N−1−n)·(T div N): N calls down to t = 0.
    #[default]
    Even,
    /// dalle2-pytorch's prior DDIM loop: `linspace(−1, T, N+1)` truncated,
    /// N − 1 calls (t = 94 … 4 for N = 20, T = 100), with its
    /// `alphas_cumprod_prev` coefficients. MindEye2's prior.
    Dalle2,
}

/// The unconditional input of guided steps.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum UncondSpec {
    /// `"zeros"` or `"noise"` (fresh N(0, 1) each reconstruction).
    Named(UncondKind),
    /// `{ file = "null_embed.npy" }`: a fixed float `.npy`, as many values
    /// as the conditioning.
    File {
        /// The `.npy` (relative to the model folder).
        file: PathBuf,
    },
}

impl Default for UncondSpec {
    fn default() -> Self {
        UncondSpec::Named(UncondKind::Zeros)
    }
}

/// Named unconditional inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UncondKind {
    /// All zeros.
    Zeros,
    /// Fresh standard-normal values per reconstruction.
    Noise,
}

/// Discrete samplers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscreteKind {
    /// Song et al. 2021.
    Ddim,
    /// Ho et al. 2020 (with skipped steps).
    Ddpm,
}

/// `[prior]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorSpec {
    /// The one-step graph.
    pub file: PathBuf,
    /// Noisy sample in.
    pub sample: TensorSpec,
    /// Timestep in (`[1]`, int64 or float32).
    pub timestep: TensorSpec,
    /// Conditioning in (the backbone's tokens).
    pub cond: TensorSpec,
    /// Prediction out.
    pub output: TensorSpec,
    /// What the output is.
    pub prediction: Prediction,
    /// The training schedule.
    pub schedule: ScheduleSpec,
    /// How to sample.
    pub sampler: DiscreteSampler,
    /// What guided steps give the unconditional pass (default zeros).
    #[serde(default)]
    pub uncond: UncondSpec,
}

/// `[decoder]`: one pass or a diffusion.
// Parsed once per session: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DecoderSpec {
    /// Embedding → image in one graph.
    Onepass {
        /// The graph.
        file: PathBuf,
        /// Tokens in.
        input: TensorRef,
        /// Image out.
        output: TensorRef,
        /// The image's shape `[1, 3, H, W]` (default: `output`'s, when
        /// given in full).
        #[serde(default)]
        image: Option<ImageSpec>,
    },
    /// A denoising step plus a latent decoder.
    Diffusion {
        /// The latent's shape and dtype (the name is informational).
        latent: TensorSpec,
        /// The one-step denoiser.
        denoiser: DenoiserSpec,
        /// Latent → image.
        latent_decoder: LatentDecoderSpec,
        /// The image's shape.
        image: ImageSpec,
        /// How to sample.
        sampler: DecoderSampler,
        /// What guided steps give the unconditional pass (default zeros).
        #[serde(default)]
        uncond: UncondSpec,
    },
}

/// The decoded image's shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// `[1, C, H, W]` with C = 1 or 3.
    pub shape: Vec<i64>,
}

/// The diffusion decoder's one-step graph.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenoiserSpec {
    /// The graph.
    pub file: PathBuf,
    /// Noisy latent in.
    pub sample: TensorRef,
    /// σ (Euler, float32 `[1]`) or timestep (DDIM, int64 `[1]`) in.
    pub noise: TensorRef,
    /// Conditioning in.
    pub cond: TensorRef,
    /// Prediction out.
    pub output: TensorRef,
    /// What the output is.
    pub prediction: Prediction,
    /// 2: the graph takes the unconditional and the conditional pass of a
    /// guided step as one batch (unconditional first, as sgm's guider
    /// concatenates them); 1 (default): one pass per call.
    #[serde(default = "one_usize")]
    pub batch: usize,
}

fn one_usize() -> usize {
    1
}

/// The latent decoder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentDecoderSpec {
    /// The graph.
    pub file: PathBuf,
    /// Latent in.
    pub input: TensorRef,
    /// Image out.
    pub output: TensorRef,
}

/// The diffusion decoder's sampler.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DecoderSampler {
    /// Deterministic Euler (EDM) over a σ grid.
    Euler {
        /// Steps (model calls; guided steps count once).
        steps: usize,
        /// Where the σs come from (default `karras`).
        #[serde(default)]
        discretization: Discretization,
        /// Smallest σ (`karras`).
        #[serde(default)]
        sigma_min: Option<f64>,
        /// Largest σ (`karras`).
        #[serde(default)]
        sigma_max: Option<f64>,
        /// Schedule curvature (`karras`).
        #[serde(default = "default_rho")]
        rho: f64,
        /// First β of the scaled-linear schedule (`legacy_ddpm`).
        #[serde(default = "default_linear_start")]
        linear_start: f64,
        /// Last β of the scaled-linear schedule (`legacy_ddpm`).
        #[serde(default = "default_linear_end")]
        linear_end: f64,
        /// Training steps of that schedule (`legacy_ddpm`).
        #[serde(default = "default_train_steps")]
        train_steps: usize,
        /// Explicit descending σs, `steps` of them (0 is appended); overrides
        /// `discretization`.
        #[serde(default)]
        sigmas: Option<Vec<f64>>,
        /// How the start is made: `sigma` (x = σ₀·n) or `unclip` (x = z + σ₀·n,
        /// MindEye2's `unclip_recon`).
        #[serde(default)]
        start: StartKind,
        /// Offset noise: one N(0, 1) value per sample times this, added to
        /// the start's noise (MindEye2: 0.04).
        #[serde(default)]
        offset_noise: f64,
        /// Guidance scale.
        #[serde(default = "one")]
        guidance: f64,
        /// Noise seed.
        #[serde(default)]
        seed: u64,
    },
    /// DDIM over a discrete schedule.
    Ddim {
        /// Steps.
        steps: usize,
        /// η.
        #[serde(default)]
        eta: f64,
        /// Guidance scale.
        #[serde(default = "one")]
        guidance: f64,
        /// Noise seed.
        #[serde(default)]
        seed: u64,
        /// The training schedule.
        schedule: ScheduleSpec,
    },
}

impl DecoderSampler {
    /// The guidance scale.
    pub fn guidance(&self) -> f64 {
        match self {
            DecoderSampler::Euler { guidance, .. } | DecoderSampler::Ddim { guidance, .. } => {
                *guidance
            }
        }
    }

    /// An Euler sampler's σ grid, checked (the values are
    /// [`crate::decode::sampler::euler_sigmas`]).
    pub fn euler_grid(&self) -> Result<EulerGrid, String> {
        let DecoderSampler::Euler {
            steps,
            discretization,
            sigma_min,
            sigma_max,
            rho,
            linear_start,
            linear_end,
            train_steps,
            sigmas,
            ..
        } = self
        else {
            return Err("not an Euler sampler".into());
        };
        let steps = *steps;
        if let Some(list) = sigmas {
            if list.len() != steps {
                return Err(format!(
                    "sigmas has {} values for steps = {steps}",
                    list.len()
                ));
            }
            if !list.iter().all(|s| s.is_finite() && *s > 0.0)
                || !list.windows(2).all(|w| w[0] > w[1])
            {
                return Err("sigmas must be positive and strictly descending".into());
            }
            return Ok(EulerGrid::Sigmas(list.clone()));
        }
        match discretization {
            Discretization::Karras => match (*sigma_min, *sigma_max) {
                (Some(lo), Some(hi)) if lo > 0.0 && lo < hi && *rho > 0.0 && steps >= 1 => {
                    Ok(EulerGrid::Karras {
                        steps,
                        sigma_min: lo,
                        sigma_max: hi,
                        rho: *rho,
                    })
                }
                _ => Err(format!(
                    "karras needs 0 < sigma_min < sigma_max and rho > 0, got {sigma_min:?}, {sigma_max:?}, {rho}"
                )),
            },
            Discretization::LegacyDdpm => {
                if !(*linear_start > 0.0 && linear_start <= linear_end && *linear_end < 1.0)
                    || *train_steps == 0
                    || steps == 0
                    || steps > *train_steps
                {
                    return Err(format!(
                        "legacy_ddpm needs 0 < linear_start ≤ linear_end < 1 and 1 ≤ steps ≤ train_steps, got {linear_start}, {linear_end}, {steps} of {train_steps}"
                    ));
                }
                Ok(EulerGrid::LegacyDdpm {
                    steps,
                    linear_start: *linear_start,
                    linear_end: *linear_end,
                    train_steps: *train_steps,
                })
            }
        }
    }
}

/// A checked Euler σ grid, as the manifest gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum EulerGrid {
    /// Explicit descending σs (0 is appended).
    Sigmas(Vec<f64>),
    /// Karras et al.'s ρ-spaced σs.
    Karras {
        /// Steps.
        steps: usize,
        /// Smallest σ.
        sigma_min: f64,
        /// Largest σ.
        sigma_max: f64,
        /// Curvature.
        rho: f64,
    },
    /// sgm's legacy-DDPM σs of a scaled-linear schedule.
    LegacyDdpm {
        /// Steps.
        steps: usize,
        /// First β.
        linear_start: f64,
        /// Last β.
        linear_end: f64,
        /// Training steps.
        train_steps: usize,
    },
}

/// Where an Euler sampler's σs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discretization {
    /// Karras et al.'s ρ-spaced σs between `sigma_min` and `sigma_max`.
    #[default]
    Karras,
    /// sgm's `LegacyDDPMDiscretization`: the σs of a scaled-linear DDPM
    /// schedule at evenly spaced timesteps (MindEye2's unCLIP: 38 steps,
    /// σ 14.61 → 0.158).
    LegacyDdpm,
}

/// How an Euler sampler's start is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartKind {
    /// x = σ₀·n.
    #[default]
    Sigma,
    /// x = z + σ₀·n.
    Unclip,
}

fn default_linear_start() -> f64 {
    0.00085
}
fn default_linear_end() -> f64 {
    0.012
}
fn default_train_steps() -> usize {
    1000
}

fn default_rho() -> f64 {
    7.0
}

/// `[lowlevel]`: the blurry reconstruction of MindEye2.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LowlevelSpec {
    /// The backbone's low-level latent → image `[1, C, h, w]` in [0, 1].
    pub latent_decoder: LatentDecoderSpec,
    /// The blurry image's shape.
    pub image: ImageSpec,
    /// Weight of the (resized) blurry image in the final one:
    /// `(1 − blend)·recon + blend·blurry` (MindEye2's evaluation: 0.25).
    #[serde(default = "default_blend")]
    pub blend: f64,
}

fn default_blend() -> f64 {
    0.25
}

/// `[retrieval]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrievalSpec {
    /// `(N, E)` float `.npy`.
    pub embeddings: PathBuf,
    /// N ids, one per line.
    pub ids: PathBuf,
    /// Folder of `<id>.png` (optional).
    #[serde(default)]
    pub images: Option<PathBuf>,
    /// Candidates reported per trial.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// How the rows are kept in memory (default: as the file stores them).
    /// `float16` halves the bytes a trial's scoring reads.
    #[serde(default)]
    pub precision: Option<BankPrecision>,
}

/// Element type of the retrieval bank in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BankPrecision {
    /// IEEE half.
    Float16,
    /// IEEE single.
    Float32,
}

fn default_top_k() -> usize {
    5
}

/// `[targets]`: how calibration obtains what a new subject's adapter is
/// fitted to — one target per calibration image, in the adapter's output
/// space (the backbone's input).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TargetsSpec {
    /// An encoder graph applied to each calibration image (`<images>/<id>.png`).
    Encoder {
        /// The graph.
        file: PathBuf,
        /// Image in: `[1, C, H, W]` float32 in [0, 1].
        input: TensorSpec,
        /// Target out, shaped like the backbone's input.
        output: TensorSpec,
        /// Folder of `<id>.png` calibration images.
        images: PathBuf,
    },
    /// Precomputed targets: an `(N, D)` float `.npy` with one row per id.
    Table {
        /// The `.npy`.
        file: PathBuf,
        /// N ids, one per line, naming the rows.
        ids: PathBuf,
    },
}

/// A parsed, self-consistent `model.toml` with absolute paths.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// Manifest version (1).
    pub format: u32,
    /// The model's name.
    pub name: String,
    /// The backbone.
    pub backbone: BackboneSpec,
    /// The diffusion prior (optional: without it the decoder is conditioned
    /// on the backbone's tokens).
    #[serde(default)]
    pub prior: Option<PriorSpec>,
    /// The image decoder (optional: retrieval only without it).
    #[serde(default)]
    pub decoder: Option<DecoderSpec>,
    /// The retrieval bank (optional).
    #[serde(default)]
    pub retrieval: Option<RetrievalSpec>,
    /// Calibration targets (optional: without them `boldstream calibrate`
    /// needs an adapter fitted elsewhere).
    #[serde(default)]
    pub targets: Option<TargetsSpec>,
    /// MindEye2's low-level branch (optional): the backbone's `lowlevel`
    /// latent decoded to a blurry image and blended into the reconstruction.
    #[serde(default)]
    pub lowlevel: Option<LowlevelSpec>,
    /// The manifest file.
    #[serde(skip)]
    pub path: PathBuf,
}

/// The decoder's tensors once names are resolved against the roles.
// Built once per session, like DecoderSpec.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum DecoderIo {
    /// One pass.
    Onepass {
        /// The graph.
        file: PathBuf,
        /// Tokens in.
        input: TensorSpec,
        /// Image out.
        output: TensorSpec,
    },
    /// Denoiser plus latent decoder.
    Diffusion {
        /// The denoiser graph.
        file: PathBuf,
        /// Noisy latent in.
        sample: TensorSpec,
        /// σ or timestep in.
        noise: TensorSpec,
        /// Conditioning in.
        cond: TensorSpec,
        /// Prediction out.
        output: TensorSpec,
        /// What it predicts.
        prediction: Prediction,
        /// The latent decoder graph.
        latent_file: PathBuf,
        /// Latent in.
        latent_in: TensorSpec,
        /// Image out.
        image_out: TensorSpec,
        /// The sampler.
        sampler: DecoderSampler,
        /// The unconditional input of guided steps.
        uncond: UncondSpec,
        /// 1, or 2 when a guided step is one batched call.
        batch: usize,
    },
}

fn read_text(path: &Path) -> Result<String, ModelError> {
    std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = read_text(path)?;
    toml::from_str(&text).map_err(|e| manifest_err(path, e.to_string().trim_end().to_string()))
}

fn check_format(path: &Path, format: u32) -> Result<(), ModelError> {
    if format == FORMAT {
        Ok(())
    } else {
        Err(manifest_err(
            path,
            format!("format = {format}, but this build reads format {FORMAT}"),
        ))
    }
}

fn resolve_file(
    dir: &Path,
    file: &mut PathBuf,
    field: &str,
    manifest: &Path,
) -> Result<(), ModelError> {
    if file.is_relative() {
        *file = dir.join(&*file);
    }
    if file.is_file() {
        Ok(())
    } else {
        Err(manifest_err(
            manifest,
            format!("{field} = {}: no such file", file.display()),
        ))
    }
}

fn check_spec(spec: &TensorSpec, field: &str, manifest: &Path) -> Result<(), ModelError> {
    if spec.name.is_empty() {
        return Err(manifest_err(manifest, format!("{field}: empty name")));
    }
    if spec.shape.is_empty() || spec.shape.iter().any(|&d| d == 0 || d < -1) {
        return Err(manifest_err(
            manifest,
            format!(
                "{field}: shape {} (dimensions are positive, or -1 for a free one)",
                shape_str(&spec.shape)
            ),
        ));
    }
    Ok(())
}

fn check_float(spec: &TensorSpec, field: &str, manifest: &Path) -> Result<(), ModelError> {
    check_spec(spec, field, manifest)?;
    if spec.dtype != Dtype::Float32 {
        return Err(manifest_err(
            manifest,
            format!("{field}: dtype {} but it must be float32", spec.dtype),
        ));
    }
    Ok(())
}

fn must_agree(
    a: &TensorSpec,
    af: &str,
    b: &TensorSpec,
    bf: &str,
    manifest: &Path,
) -> Result<(), ModelError> {
    if shapes_agree(&a.shape, &b.shape) {
        Ok(())
    } else {
        Err(manifest_err(
            manifest,
            format!(
                "{af} has shape {} but {bf} has {}; they must be equal",
                shape_str(&a.shape),
                shape_str(&b.shape)
            ),
        ))
    }
}

fn check_schedule(
    s: &ScheduleSpec,
    steps: usize,
    field: &str,
    manifest: &Path,
) -> Result<(), ModelError> {
    if steps == 0 || s.train_steps < steps {
        return Err(manifest_err(
            manifest,
            format!(
                "{field}: {steps} steps over a schedule of {} training steps (need 1 ≤ steps ≤ train_steps)",
                s.train_steps
            ),
        ));
    }
    if s.kind == ScheduleKind::Linear
        && !(s.beta_start > 0.0 && s.beta_start <= s.beta_end && s.beta_end < 1.0)
    {
        return Err(manifest_err(
            manifest,
            format!(
                "{field}.schedule: need 0 < beta_start ≤ beta_end < 1, got {} and {}",
                s.beta_start, s.beta_end
            ),
        ));
    }
    Ok(())
}

fn check_guidance(g: f64, seed_field: &str, manifest: &Path) -> Result<(), ModelError> {
    if g.is_finite() && g >= 0.0 {
        Ok(())
    } else {
        Err(manifest_err(
            manifest,
            format!("{seed_field}.guidance = {g}: must be a finite number ≥ 0"),
        ))
    }
}

/// An image tensor's shape: `[1, C, H, W]` with C = 1 or 3.
fn check_image_shape(s: &[i64], field: &str, manifest: &Path) -> Result<(), ModelError> {
    if s.len() != 4 || s[0] != 1 || !(s[1] == 1 || s[1] == 3) || s[2] < 1 || s[3] < 1 {
        return Err(manifest_err(
            manifest,
            format!(
                "{field} = {}: must be [1, C, H, W] with C = 1 or 3",
                shape_str(s)
            ),
        ));
    }
    Ok(())
}

fn check_index_input(spec: &TensorSpec, field: &str, manifest: &Path) -> Result<(), ModelError> {
    check_spec(spec, field, manifest)?;
    if spec.len() != 1 {
        return Err(manifest_err(
            manifest,
            format!(
                "{field}: shape {} but a timestep is one value ([1])",
                shape_str(&spec.shape)
            ),
        ));
    }
    Ok(())
}

impl ModelManifest {
    /// Read `model.toml` (or the given `.toml`) from a model folder.
    pub fn load(path: &Path) -> Result<ModelManifest, ModelError> {
        let file = if path.is_dir() {
            path.join("model.toml")
        } else {
            path.to_path_buf()
        };
        let mut m: ModelManifest = parse(&file)?;
        m.path = file.clone();
        check_format(&file, m.format)?;
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        m.resolve(&dir)?;
        m.check()?;
        Ok(m)
    }

    fn resolve(&mut self, dir: &Path) -> Result<(), ModelError> {
        let mf = self.path.clone();
        resolve_file(dir, &mut self.backbone.file, "backbone.file", &mf)?;
        if let Some(p) = &mut self.prior {
            resolve_file(dir, &mut p.file, "prior.file", &mf)?;
            if let UncondSpec::File { file } = &mut p.uncond {
                resolve_file(dir, file, "prior.uncond.file", &mf)?;
            }
        }
        match &mut self.decoder {
            Some(DecoderSpec::Onepass { file, .. }) => {
                resolve_file(dir, file, "decoder.file", &mf)?;
            }
            Some(DecoderSpec::Diffusion {
                denoiser,
                latent_decoder,
                uncond,
                ..
            }) => {
                resolve_file(dir, &mut denoiser.file, "decoder.denoiser.file", &mf)?;
                if let UncondSpec::File { file } = uncond {
                    resolve_file(dir, file, "decoder.uncond.file", &mf)?;
                }
                resolve_file(
                    dir,
                    &mut latent_decoder.file,
                    "decoder.latent_decoder.file",
                    &mf,
                )?;
            }
            None => {}
        }
        if let Some(l) = &mut self.lowlevel {
            resolve_file(
                dir,
                &mut l.latent_decoder.file,
                "lowlevel.latent_decoder.file",
                &mf,
            )?;
        }
        if let Some(r) = &mut self.retrieval {
            resolve_file(dir, &mut r.embeddings, "retrieval.embeddings", &mf)?;
            resolve_file(dir, &mut r.ids, "retrieval.ids", &mf)?;
            if let Some(images) = &mut r.images {
                if images.is_relative() {
                    *images = dir.join(&*images);
                }
                if !images.is_dir() {
                    return Err(manifest_err(
                        &mf,
                        format!("retrieval.images = {}: no such folder", images.display()),
                    ));
                }
            }
        }
        match &mut self.targets {
            Some(TargetsSpec::Encoder { file, images, .. }) => {
                resolve_file(dir, file, "targets.file", &mf)?;
                if images.is_relative() {
                    *images = dir.join(&*images);
                }
                if !images.is_dir() {
                    return Err(manifest_err(
                        &mf,
                        format!("targets.images = {}: no such folder", images.display()),
                    ));
                }
            }
            Some(TargetsSpec::Table { file, ids }) => {
                resolve_file(dir, file, "targets.file", &mf)?;
                resolve_file(dir, ids, "targets.ids", &mf)?;
            }
            None => {}
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ModelError> {
        let mf = &self.path;
        let b = &self.backbone;
        check_float(&b.input, "backbone.input", mf)?;
        check_float(&b.tokens, "backbone.tokens", mf)?;
        if let Some(r) = &b.retrieval {
            check_float(r, "backbone.retrieval", mf)?;
        }
        if let Some(l) = &b.lowlevel {
            check_float(l, "backbone.lowlevel", mf)?;
        }
        if let Some(p) = &self.prior {
            check_float(&p.sample, "prior.sample", mf)?;
            check_float(&p.cond, "prior.cond", mf)?;
            check_float(&p.output, "prior.output", mf)?;
            check_index_input(&p.timestep, "prior.timestep", mf)?;
            must_agree(&p.sample, "prior.sample", &b.tokens, "backbone.tokens", mf)?;
            must_agree(&p.cond, "prior.cond", &b.tokens, "backbone.tokens", mf)?;
            must_agree(&p.output, "prior.output", &b.tokens, "backbone.tokens", mf)?;
            check_schedule(&p.schedule, p.sampler.steps, "prior.sampler", mf)?;
            check_guidance(p.sampler.guidance, "prior.sampler", mf)?;
            if !(p.sampler.eta >= 0.0 && p.sampler.eta.is_finite()) {
                return Err(manifest_err(mf, "prior.sampler.eta must be ≥ 0".into()));
            }
            if let Some(ts) = &p.sampler.timesteps {
                let t = p.schedule.train_steps as i64;
                if ts.len() != p.sampler.steps
                    || !ts.windows(2).all(|w| w[0] > w[1])
                    || ts.iter().any(|&v| v < 0 || v >= t)
                {
                    return Err(manifest_err(
                        mf,
                        format!(
                            "prior.sampler.timesteps: need {} strictly descending values in 0..{t}, got {ts:?}",
                            p.sampler.steps
                        ),
                    ));
                }
            }
            if p.sampler.grid == Grid::Dalle2 && p.sampler.steps < 2 {
                return Err(manifest_err(
                    mf,
                    "prior.sampler.grid = \"dalle2\" needs steps ≥ 2 (it makes steps − 1 calls)"
                        .into(),
                ));
            }
        }
        if self.decoder.is_some() {
            self.decoder_io()?;
        }
        if let Some(l) = &self.lowlevel {
            if b.lowlevel.is_none() {
                return Err(manifest_err(
                    mf,
                    "[lowlevel] decodes the backbone's low-level latent, but [backbone] has no lowlevel output".into(),
                ));
            }
            if self.decoder.is_none() {
                return Err(manifest_err(
                    mf,
                    "[lowlevel] is blended into the reconstruction: it needs a [decoder]".into(),
                ));
            }
            if !(0.0..=1.0).contains(&l.blend) {
                return Err(manifest_err(
                    mf,
                    format!("lowlevel.blend = {}: must be in [0, 1]", l.blend),
                ));
            }
            check_image_shape(&l.image.shape, "lowlevel.image.shape", mf)?;
        }
        if let Some(TargetsSpec::Encoder { input, output, .. }) = &self.targets {
            check_float(input, "targets.input", mf)?;
            check_float(output, "targets.output", mf)?;
            check_image_shape(&input.shape, "targets.input.shape", mf)?;
            if output.len() != b.input.len() {
                return Err(manifest_err(
                    mf,
                    format!(
                        "targets.output has {} values but the backbone's input (what an adapter produces) has {}",
                        output.len(),
                        b.input.len()
                    ),
                ));
            }
        }
        if let Some(r) = &self.retrieval
            && r.top_k == 0
        {
            return Err(manifest_err(
                mf,
                "retrieval.top_k must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The shape of the tokens that condition the decoder (the prior's
    /// output, which has the backbone's token shape).
    pub fn token_shape(&self) -> &[i64] {
        &self.backbone.tokens.shape
    }

    /// The query the retrieval bank is searched with: the retrieval head
    /// when there is one, else the flattened tokens.
    pub fn query_len(&self) -> usize {
        self.backbone
            .retrieval
            .as_ref()
            .map_or(self.backbone.tokens.len(), TensorSpec::len)
    }

    /// The decoder's tensors with names resolved to full specs.
    pub fn decoder_io(&self) -> Result<Option<DecoderIo>, ModelError> {
        let mf = &self.path;
        let tokens = self.token_shape();
        let Some(d) = &self.decoder else {
            return Ok(None);
        };
        let check_image =
            |image: &ImageSpec| check_image_shape(&image.shape, "decoder.image.shape", mf);
        Ok(Some(match d {
            DecoderSpec::Onepass {
                file,
                input,
                output,
                image,
            } => {
                let image = onepass_image(image.as_ref(), output, mf)?;
                check_image(&image)?;
                let input = input.resolve(tokens, Dtype::Float32, "decoder.input", mf)?;
                let output = output.resolve(&image.shape, Dtype::Float32, "decoder.output", mf)?;
                DecoderIo::Onepass {
                    file: file.clone(),
                    input,
                    output,
                }
            }
            DecoderSpec::Diffusion {
                latent,
                denoiser,
                latent_decoder,
                image,
                sampler,
                uncond,
            } => {
                check_image(image)?;
                check_float(latent, "decoder.latent", mf)?;
                let batch = denoiser.batch;
                if !(batch == 1 || batch == 2) {
                    return Err(manifest_err(
                        mf,
                        format!("decoder.denoiser.batch = {batch}: must be 1 or 2"),
                    ));
                }
                if batch == 2 && sampler.guidance() == 1.0 {
                    return Err(manifest_err(
                        mf,
                        "decoder.denoiser.batch = 2 batches the two passes of guidance, but decoder.sampler.guidance is 1 (no guidance)".into(),
                    ));
                }
                let batched = |shape: &[i64]| -> Vec<i64> {
                    let mut s = shape.to_vec();
                    if let Some(first) = s.first_mut() {
                        *first *= batch as i64;
                    }
                    s
                };
                let noise_dtype = match sampler {
                    DecoderSampler::Euler { guidance, .. } => {
                        sampler
                            .euler_grid()
                            .map_err(|m| manifest_err(mf, format!("decoder.sampler: {m}")))?;
                        check_guidance(*guidance, "decoder.sampler", mf)?;
                        if denoiser.prediction == Prediction::V {
                            return Err(manifest_err(
                                mf,
                                "decoder.denoiser.prediction = \"v\": the Euler sampler takes x0 or eps".into(),
                            ));
                        }
                        Dtype::Float32
                    }
                    DecoderSampler::Ddim {
                        steps,
                        guidance,
                        schedule,
                        ..
                    } => {
                        check_schedule(schedule, *steps, "decoder.sampler", mf)?;
                        check_guidance(*guidance, "decoder.sampler", mf)?;
                        Dtype::Int64
                    }
                };
                let sample = denoiser.sample.resolve(
                    &batched(&latent.shape),
                    Dtype::Float32,
                    "decoder.denoiser.sample",
                    mf,
                )?;
                let noise = denoiser.noise.resolve(
                    &[batch as i64],
                    noise_dtype,
                    "decoder.denoiser.noise",
                    mf,
                )?;
                let cond = denoiser.cond.resolve(
                    &batched(tokens),
                    Dtype::Float32,
                    "decoder.denoiser.cond",
                    mf,
                )?;
                let output = denoiser.output.resolve(
                    &batched(&latent.shape),
                    Dtype::Float32,
                    "decoder.denoiser.output",
                    mf,
                )?;
                let latent_in = latent_decoder.input.resolve(
                    &latent.shape,
                    Dtype::Float32,
                    "decoder.latent_decoder.input",
                    mf,
                )?;
                let image_out = latent_decoder.output.resolve(
                    &image.shape,
                    Dtype::Float32,
                    "decoder.latent_decoder.output",
                    mf,
                )?;
                DecoderIo::Diffusion {
                    file: denoiser.file.clone(),
                    sample,
                    noise,
                    cond,
                    output,
                    prediction: denoiser.prediction,
                    latent_file: latent_decoder.file.clone(),
                    latent_in,
                    image_out,
                    sampler: sampler.clone(),
                    uncond: uncond.clone(),
                    batch,
                }
            }
        }))
    }

    /// The decoded image's `(channels, height, width)`.
    pub fn image_chw(&self) -> Option<(usize, usize, usize)> {
        let shape = match &self.decoder {
            Some(DecoderSpec::Onepass { image, output, .. }) => {
                onepass_image(image.as_ref(), output, &self.path)
                    .ok()?
                    .shape
            }
            Some(DecoderSpec::Diffusion { image, .. }) => image.shape.clone(),
            None => return None,
        };
        Some((shape[1] as usize, shape[2] as usize, shape[3] as usize))
    }
}

fn onepass_image(
    image: Option<&ImageSpec>,
    output: &TensorRef,
    mf: &Path,
) -> Result<ImageSpec, ModelError> {
    match (image, output) {
        (Some(i), _) => Ok(i.clone()),
        (None, TensorRef::Spec(s)) => Ok(ImageSpec {
            shape: s.shape.clone(),
        }),
        (None, TensorRef::Name(_)) => Err(manifest_err(
            mf,
            "decoder: give output as { name, shape, dtype } or image = { shape = [1, C, H, W] }"
                .into(),
        )),
    }
}

/// `[adapter]` of a subject folder.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterSpec {
    /// The graph.
    pub file: PathBuf,
    /// Voxels in.
    pub input: TensorSpec,
    /// Shared latent out.
    pub output: TensorSpec,
}

/// `subject.toml`, one type both ways: calibration writes it
/// ([`SubjectManifest::write`], paths relative to the folder) and the
/// decoder reads it ([`SubjectManifest::load`], paths made absolute).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectManifest {
    /// Manifest version (1).
    pub format: u32,
    /// Subject id.
    pub subject: String,
    /// Voxels the adapter takes, in the subject's voxel order.
    pub voxels: usize,
    /// The adapter.
    pub adapter: AdapterSpec,
    /// The subject's mask on the session reference grid, whose voxels in
    /// `np.where` order are the adapter's input order (optional; the
    /// calibration session writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<PathBuf>,
    /// The calibration session's reference volume: the grid the mask lives
    /// on. A live session registers it to its own reference once and
    /// resamples every volume onto it (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<PathBuf>,
    /// Beta normalisation statistics from calibration: a `(2, voxels)`
    /// `.npy` of per-voxel mean and standard deviation (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zscore: Option<PathBuf>,
    /// The manifest file.
    #[serde(skip)]
    pub path: PathBuf,
}

impl SubjectManifest {
    /// Write this as `dir/subject.toml` (atomically); its paths are written
    /// as they are, so give them relative to `dir`.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, ModelError> {
        let file = dir.join("subject.toml");
        let text = toml::to_string(self).map_err(|e| ModelError::Manifest {
            path: file.clone(),
            message: format!("cannot be written: {e}"),
        })?;
        crate::formats::atomic_write(&file, text.as_bytes()).map_err(|source| ModelError::Io {
            path: file.clone(),
            source,
        })?;
        Ok(file)
    }

    /// Read `subject.toml` (or the given `.toml`) from a subject folder.
    pub fn load(path: &Path) -> Result<SubjectManifest, ModelError> {
        let file = if path.is_dir() {
            path.join("subject.toml")
        } else {
            path.to_path_buf()
        };
        let mut s: SubjectManifest = parse(&file)?;
        s.path = file.clone();
        check_format(&file, s.format)?;
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        resolve_file(&dir, &mut s.adapter.file, "adapter.file", &file)?;
        if let Some(m) = &mut s.mask {
            resolve_file(&dir, m, "mask", &file)?;
        }
        if let Some(m) = &mut s.reference {
            resolve_file(&dir, m, "reference", &file)?;
        }
        if let Some(m) = &mut s.zscore {
            resolve_file(&dir, m, "zscore", &file)?;
        }
        check_float(&s.adapter.input, "adapter.input", &file)?;
        check_float(&s.adapter.output, "adapter.output", &file)?;
        if s.voxels == 0 {
            return Err(manifest_err(&file, "voxels must be at least 1".into()));
        }
        if s.adapter.input.len() != s.voxels {
            return Err(manifest_err(
                &file,
                format!(
                    "adapter.input has shape {} ({} values) but voxels = {}",
                    shape_str(&s.adapter.input.shape),
                    s.adapter.input.len(),
                    s.voxels
                ),
            ));
        }
        Ok(s)
    }

    /// Check the adapter's output against the backbone's input.
    pub fn check_against(&self, model: &ModelManifest) -> Result<(), ModelError> {
        must_agree(
            &self.adapter.output,
            "adapter.output",
            &model.backbone.input,
            &format!("the model's backbone.input ({})", model.path.display()),
            &self.path,
        )
    }
}

/// A float32 spec for names given only as strings (used by tests and the
/// benchmark's generated folders).
pub fn float_spec(name: &str, shape: &[i64]) -> TensorSpec {
    TensorSpec::float(name, shape)
}
