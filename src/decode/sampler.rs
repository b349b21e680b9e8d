//! Diffusion samplers: the loops around a one-step denoising graph.
//!
//! In: a denoiser (any function from noisy sample, timestep or σ, and
//! conditioning to a prediction), the conditioning, a schedule, and a noise
//! source. Out: the sample. DDIM, DDPM (with skipped steps) and Karras et
//! al.'s Euler, with classifier-free guidance, exactly as `onnx/README.md`
//! writes them; `tests/parity/samplers.py` is the reference they are
//! tested against.
//!
//! Vectors are float32 (what the graphs take); every coefficient is
//! computed in float64 so the only rounding is the storage of the sample.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::manifest::{DiscreteKind, EulerGrid, Prediction, ScheduleKind, ScheduleSpec};

/// Standard-normal noise, in the order the samplers ask for it.
pub trait NoiseSource {
    /// Fill `out` with independent N(0, 1) draws.
    fn fill(&mut self, out: &mut [f32]);
}

/// ChaCha8 seeded: the same seed gives the same draws on every machine.
#[derive(Debug, Clone)]
pub struct SeededNoise(ChaCha8Rng);

impl SeededNoise {
    /// A stream for `seed`.
    pub fn new(seed: u64) -> SeededNoise {
        SeededNoise(ChaCha8Rng::seed_from_u64(seed))
    }
}

impl NoiseSource for SeededNoise {
    fn fill(&mut self, out: &mut [f32]) {
        for v in out {
            *v = StandardNormal.sample(&mut self.0);
        }
    }
}

/// Noise read from a prepared sequence (reference fixtures).
#[derive(Debug, Clone)]
pub struct ReplayNoise {
    values: Vec<f32>,
    at: usize,
}

impl ReplayNoise {
    /// Draws come from `values` in order.
    pub fn new(values: Vec<f32>) -> ReplayNoise {
        ReplayNoise { values, at: 0 }
    }

    /// Draws used so far.
    pub fn used(&self) -> usize {
        self.at
    }
}

impl NoiseSource for ReplayNoise {
    fn fill(&mut self, out: &mut [f32]) {
        // Running past the end is a fixture bug; NaN makes it impossible to miss.
        for v in out.iter_mut() {
            *v = self.values.get(self.at).copied().unwrap_or(f32::NAN);
            self.at += 1;
        }
    }
}

/// What the denoiser is told about the noise level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Level {
    /// A discrete timestep.
    Timestep(i64),
    /// A continuous σ.
    Sigma(f64),
}

/// A guided denoiser evaluation: `(sample, level, cond, uncond, out, out_uncond)`.
/// `out` receives the raw model output (x̂₀, ε̂ or v̂) for `cond`; when
/// `uncond` is given (classifier-free guidance) `out_uncond` receives it
/// for `uncond`, in the same call when the graph takes both as a batch of
/// two. Use [`one_pass`] to build one from a single-pass denoiser.
pub type Denoise<'a, E> = dyn FnMut(&[f32], Level, &[f32], Option<&[f32]>, &mut Vec<f32>, &mut Vec<f32>) -> Result<(), E>
    + 'a;

/// A [`Denoise`] from a single-pass `(sample, level, cond, out)` denoiser:
/// a guided step is two calls, conditional first.
// The return type spells out Denoise's signature: an alias of an `impl
// FnMut` is not expressible in stable Rust.
#[allow(clippy::type_complexity)]
pub fn one_pass<E>(
    mut f: impl FnMut(&[f32], Level, &[f32], &mut Vec<f32>) -> Result<(), E>,
) -> impl FnMut(&[f32], Level, &[f32], Option<&[f32]>, &mut Vec<f32>, &mut Vec<f32>) -> Result<(), E>
{
    move |x, level, cond, uncond, out, out_u| {
        f(x, level, cond, out)?;
        if let Some(u) = uncond {
            f(x, level, u, out_u)?;
        }
        Ok(())
    }
}

/// What a guided step's unconditional pass is given.
#[derive(Debug, Clone, PartialEq)]
pub enum Uncond {
    /// All zeros (a graph trained with zeroed conditioning dropout).
    Zeros,
    /// Fresh N(0, 1) values each reconstruction, from the sampler's noise
    /// stream (MindEye2's unCLIP: `torch.randn_like(tokens)`).
    Noise,
    /// A fixed tensor (a learned null embedding), as many values as the
    /// conditioning.
    Tensor(std::sync::Arc<[f32]>),
}

/// ᾱ over the training steps of a discrete schedule.
#[derive(Debug, Clone)]
pub struct DiscreteSchedule {
    alpha_bar: Vec<f64>,
}

impl DiscreteSchedule {
    /// Build from the manifest's schedule.
    pub fn new(spec: &ScheduleSpec) -> DiscreteSchedule {
        let t = spec.train_steps;
        let betas: Vec<f64> = match spec.kind {
            ScheduleKind::Linear => (0..t)
                .map(|i| {
                    if t == 1 {
                        spec.beta_start
                    } else {
                        spec.beta_start
                            + (spec.beta_end - spec.beta_start) * i as f64 / (t - 1) as f64
                    }
                })
                .collect(),
            ScheduleKind::Cosine => {
                let f = |i: usize| {
                    let s = (i as f64 / t as f64 + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2;
                    s.cos().powi(2)
                };
                (0..t).map(|i| (1.0 - f(i + 1) / f(i)).min(0.999)).collect()
            }
        };
        DiscreteSchedule::from_betas(&betas)
    }

    /// Stable Diffusion's "scaled linear" βs (√β evenly spaced), which sgm's
    /// `LegacyDDPMDiscretization` and MindEye2's unCLIP use.
    pub fn scaled_linear(
        train_steps: usize,
        linear_start: f64,
        linear_end: f64,
    ) -> DiscreteSchedule {
        let (a, b) = (linear_start.sqrt(), linear_end.sqrt());
        let betas: Vec<f64> = (0..train_steps)
            .map(|i| {
                let f = if train_steps > 1 {
                    i as f64 / (train_steps - 1) as f64
                } else {
                    0.0
                };
                (a + f * (b - a)).powi(2)
            })
            .collect();
        DiscreteSchedule::from_betas(&betas)
    }

    fn from_betas(betas: &[f64]) -> DiscreteSchedule {
        let mut acc = 1.0;
        let alpha_bar = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        DiscreteSchedule { alpha_bar }
    }

    /// ᾱ at `t`; 1 before the first step.
    pub fn alpha_bar(&self, t: i64) -> f64 {
        if t < 0 {
            1.0
        } else {
            self.alpha_bar[(t as usize).min(self.alpha_bar.len() - 1)]
        }
    }

    /// Training steps T.
    pub fn train_steps(&self) -> usize {
        self.alpha_bar.len()
    }

    /// The `steps` inference timesteps, descending: tₙ = (N−1−n)·(T div N).
    pub fn timesteps(&self, steps: usize) -> Vec<i64> {
        let k = (self.train_steps() / steps.max(1)) as i64;
        (0..steps as i64).rev().map(|n| n * k).collect()
    }

    /// The σ = √((1−ᾱ)/ᾱ) of sgm's `LegacyDDPMDiscretization` for `steps`
    /// steps: timesteps `linspace(T−1, 0, N, endpoint=False)` truncated to
    /// integers, descending, then 0 (N + 1 values).
    pub fn legacy_ddpm_sigmas(&self, steps: usize) -> Vec<f64> {
        let t = self.train_steps();
        let mut ts: Vec<usize> = if steps < t {
            let (start, step) = ((t - 1) as f64, -((t - 1) as f64) / steps as f64);
            (0..steps)
                .map(|i| (i as f64 * step + start) as usize)
                .collect()
        } else {
            (0..t).rev().collect()
        };
        ts.sort_unstable_by(|a, b| b.cmp(a));
        let mut s: Vec<f64> = ts
            .iter()
            .map(|&i| {
                let ab = self.alpha_bar[i];
                ((1.0 - ab) / ab).sqrt()
            })
            .collect();
        s.push(0.0);
        s
    }
}

/// Which ᾱ a DDIM step's coefficients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAlphas {
    /// ᾱ at t and at the next timestep (Song et al.).
    Standard,
    /// ᾱ at t − 1 and at next − 1 (`alphas_cumprod_prev`), as dalle2-pytorch's
    /// prior DDIM loop does; ε̂ still uses ᾱ at t. MindEye2's prior was
    /// sampled this way, so reproducing it needs it.
    Previous,
}

/// The (timestep, next timestep) pairs of a discrete run; a negative next
/// timestep ends at x̂₀.
pub fn even_pairs(schedule: &DiscreteSchedule, steps: usize) -> Vec<(i64, i64)> {
    let k = (schedule.train_steps() / steps.max(1)) as i64;
    schedule
        .timesteps(steps)
        .into_iter()
        .map(|t| (t, t - k))
        .collect()
}

/// dalle2-pytorch's DDIM grid for `steps`: `linspace(−1, T, N+1)[:−1]` in
/// float32, truncated, reversed, consecutive pairs: N − 1 model calls (19 at
/// t = 94, 89, …, 4 for N = 20, T = 100).
pub fn dalle2_pairs(train_steps: usize, steps: usize) -> Vec<(i64, i64)> {
    let n = steps + 1;
    let (start, stop) = (-1.0f32, train_steps as f32);
    let step = (stop - start) / (n - 1) as f32;
    let mut times: Vec<i64> = (0..steps)
        .map(|i| (start + i as f32 * step) as i64)
        .collect();
    times.reverse();
    times.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Pairs from an explicit descending list of timesteps; the last one ends
/// at x̂₀.
pub fn list_pairs(timesteps: &[i64]) -> Vec<(i64, i64)> {
    timesteps
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, timesteps.get(i + 1).copied().unwrap_or(-1)))
        .collect()
}

/// x̂₀ = p·x + q·m for a model output m at ᾱ (every prediction type is
/// linear in the sample and the output).
fn x0_coefficients(prediction: Prediction, ab: f64) -> (f64, f64) {
    let (sa, s1) = (ab.sqrt(), (1.0 - ab).sqrt());
    match prediction {
        Prediction::X0 => (0.0, 1.0),
        Prediction::Eps => (1.0 / sa, -s1 / sa),
        Prediction::V => (sa, -s1),
    }
}

/// One step's update, `x ← a·x + b·m (+ c·z)`, with the coefficients worked
/// out in float64 once per step. Every sampler here is linear in the sample,
/// the model output and the noise, so a step is one pass over memory
/// (vectorised float32) instead of several: on a GPU, where the graphs are
/// fast, this pass is most of the daemon's own time per step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepUpdate {
    /// Weight of the current sample.
    pub a: f64,
    /// Weight of the (guided) model output.
    pub b: f64,
    /// Weight of the step's noise (0: no draw).
    pub c: f64,
}

impl StepUpdate {
    /// Apply to `x` with conditional output `m`, and with guidance `g` the
    /// unconditional output `u` (m̃ = u + g·(m − u) = g·m + (1 − g)·u).
    fn apply(&self, x: &mut [f32], m: &[f32], guided: Option<(&[f32], f64)>, z: &[f32]) {
        let a = self.a as f32;
        match (guided, self.c != 0.0) {
            (None, false) => {
                let b = self.b as f32;
                for (xv, &mv) in x.iter_mut().zip(m) {
                    *xv = a * *xv + b * mv;
                }
            }
            (None, true) => {
                let (b, c) = (self.b as f32, self.c as f32);
                for ((xv, &mv), &zv) in x.iter_mut().zip(m).zip(z) {
                    *xv = a * *xv + b * mv + c * zv;
                }
            }
            (Some((u, g)), with_noise) => {
                let (bm, bu) = ((self.b * g) as f32, (self.b * (1.0 - g)) as f32);
                let c = if with_noise { self.c as f32 } else { 0.0 };
                if with_noise {
                    for (((xv, &mv), &uv), &zv) in x.iter_mut().zip(m).zip(u).zip(z) {
                        *xv = a * *xv + bm * mv + bu * uv + c * zv;
                    }
                } else {
                    for ((xv, &mv), &uv) in x.iter_mut().zip(m).zip(u) {
                        *xv = a * *xv + bm * mv + bu * uv;
                    }
                }
            }
        }
    }
}

/// The update of the discrete step from timestep `t` to `next` (negative:
/// the last step, which returns x̂₀).
pub fn discrete_update(
    run: &DiscreteRun,
    schedule: &DiscreteSchedule,
    t: i64,
    next: i64,
    last: bool,
) -> StepUpdate {
    let ab_model = schedule.alpha_bar(t);
    let (p, q) = x0_coefficients(run.prediction, ab_model);
    if next < 0 {
        return StepUpdate { a: p, b: q, c: 0.0 };
    }
    match run.kind {
        DiscreteKind::Ddim => {
            let (ab_t, ab_p) = match run.alphas {
                StepAlphas::Standard => (ab_model, schedule.alpha_bar(next)),
                StepAlphas::Previous => (schedule.alpha_bar(t - 1), schedule.alpha_bar(next - 1)),
            };
            // ε̂ = (x − √ᾱₜ·x̂₀)/√(1−ᾱₜ) = r·x + u·m, at the model's ᾱ.
            let (sa, s1) = (ab_model.sqrt(), (1.0 - ab_model).sqrt());
            let (r, u) = ((1.0 - sa * p) / s1, -sa * q / s1);
            let sigma = run.eta
                * ((1.0 - ab_p) / (1.0 - ab_t)).sqrt()
                * (1.0 - ab_t / ab_p).max(0.0).sqrt();
            let (c0, ce) = (ab_p.sqrt(), (1.0 - ab_p - sigma * sigma).max(0.0).sqrt());
            StepUpdate {
                a: c0 * p + ce * r,
                b: c0 * q + ce * u,
                c: sigma,
            }
        }
        DiscreteKind::Ddpm => {
            let ab_t = ab_model;
            let ab_p = schedule.alpha_bar(next);
            let alpha = ab_t / ab_p;
            let beta = 1.0 - alpha;
            let c0 = ab_p.sqrt() * beta / (1.0 - ab_t);
            let cx = alpha.sqrt() * (1.0 - ab_p) / (1.0 - ab_t);
            StepUpdate {
                a: c0 * p + cx,
                b: c0 * q,
                c: if last {
                    0.0
                } else {
                    (beta * (1.0 - ab_p) / (1.0 - ab_t)).sqrt()
                },
            }
        }
    }
}

/// Settings of a discrete-time sampling run.
#[derive(Debug, Clone)]
pub struct DiscreteRun {
    /// DDIM or DDPM.
    pub kind: DiscreteKind,
    /// (timestep, next timestep) of each model call, in order.
    pub pairs: Vec<(i64, i64)>,
    /// Which ᾱ the DDIM coefficients use.
    pub alphas: StepAlphas,
    /// DDIM's η.
    pub eta: f64,
    /// Guidance scale.
    pub guidance: f64,
    /// The unconditional input of guided steps.
    pub uncond: Uncond,
    /// What the model predicts.
    pub prediction: Prediction,
}

/// Buffers and the guided model evaluation shared by the samplers.
struct Loop<'d, 'a, E> {
    denoise: &'d mut Denoise<'a, E>,
    guidance: f64,
    uncond: Option<Vec<f32>>,
    cond_out: Vec<f32>,
    uncond_out: Vec<f32>,
    z: Vec<f32>,
}

impl<'d, 'a, E> Loop<'d, 'a, E> {
    /// Set up; a guided run's fresh-noise unconditional input is drawn here.
    fn new(
        denoise: &'d mut Denoise<'a, E>,
        guidance: f64,
        uncond: &Uncond,
        len: usize,
        cond_len: usize,
        noise: &mut dyn NoiseSource,
    ) -> Self {
        let guided = guidance != 1.0;
        let uncond = guided.then(|| match uncond {
            Uncond::Zeros => vec![0.0; cond_len],
            Uncond::Noise => {
                let mut u = vec![0.0; cond_len];
                noise.fill(&mut u);
                u
            }
            Uncond::Tensor(t) => t.to_vec(),
        });
        Loop {
            denoise,
            guidance,
            uncond,
            cond_out: Vec::with_capacity(len),
            uncond_out: Vec::with_capacity(if guided { len } else { 0 }),
            z: Vec::new(),
        }
    }

    /// Evaluate the model (both passes with guidance) and apply `update` to `x`.
    fn step(
        &mut self,
        x: &mut [f32],
        level: Level,
        cond: &[f32],
        update: StepUpdate,
        noise: &mut dyn NoiseSource,
    ) -> Result<(), E> {
        (self.denoise)(
            x,
            level,
            cond,
            self.uncond.as_deref(),
            &mut self.cond_out,
            &mut self.uncond_out,
        )?;
        if update.c != 0.0 {
            self.z.resize(x.len(), 0.0);
            noise.fill(&mut self.z);
        }
        let u = self
            .uncond
            .is_some()
            .then_some((self.uncond_out.as_slice(), self.guidance));
        update.apply(x, &self.cond_out, u, &self.z);
        Ok(())
    }
}

/// DDIM or DDPM from pure noise. `len` is the sample's element count.
/// Noise order: the start (`len` draws), the unconditional input when it
/// is fresh noise (guided runs), then one `len` draw per step that adds
/// noise (DDIM with σ > 0; DDPM except at the last step).
pub fn sample_discrete<E>(
    run: &DiscreteRun,
    schedule: &DiscreteSchedule,
    len: usize,
    cond: &[f32],
    noise: &mut dyn NoiseSource,
    denoise: &mut Denoise<'_, E>,
) -> Result<Vec<f32>, E> {
    let mut x = vec![0f32; len];
    noise.fill(&mut x);
    let mut l = Loop::new(denoise, run.guidance, &run.uncond, len, cond.len(), noise);
    for (n, &(t, next)) in run.pairs.iter().enumerate() {
        let update = discrete_update(run, schedule, t, next, n + 1 == run.pairs.len());
        l.step(&mut x, Level::Timestep(t), cond, update, noise)?;
    }
    Ok(x)
}

/// Karras et al.'s σ schedule: N values from σmax to σmin, then 0.
pub fn karras_sigmas(steps: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let (a, b) = (sigma_max.powf(1.0 / rho), sigma_min.powf(1.0 / rho));
    let mut s: Vec<f64> = (0..steps)
        .map(|i| {
            let f = if steps > 1 {
                i as f64 / (steps - 1) as f64
            } else {
                0.0
            };
            (a + f * (b - a)).powf(rho)
        })
        .collect();
    s.push(0.0);
    s
}

/// The σs of a checked Euler grid: N + 1 values, the last 0.
pub fn euler_sigmas(grid: &EulerGrid) -> Vec<f64> {
    match grid {
        EulerGrid::Sigmas(list) => {
            let mut out = list.clone();
            out.push(0.0);
            out
        }
        EulerGrid::Karras {
            steps,
            sigma_min,
            sigma_max,
            rho,
        } => karras_sigmas(*steps, *sigma_min, *sigma_max, *rho),
        EulerGrid::LegacyDdpm {
            steps,
            linear_start,
            linear_end,
            train_steps,
        } => DiscreteSchedule::scaled_linear(*train_steps, *linear_start, *linear_end)
            .legacy_ddpm_sigmas(*steps),
    }
}

/// How an Euler run's first sample is made from the noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EulerStart {
    /// x = σ₀·(n + o·s) (EDM).
    #[default]
    Sigma,
    /// x = z + σ₀·(n + o·s): MindEye2's `unclip_recon` noises a random
    /// latent z to σ₀ (its division by √(1+σ₀²) is undone by sgm's
    /// sampler, so neither appears here).
    Unclip,
}

/// Settings of an Euler (EDM) run.
#[derive(Debug, Clone)]
pub struct EulerRun {
    /// σ₀ > σ₁ > … > 0, the last one 0: one model call per step between
    /// consecutive values.
    pub sigmas: Vec<f64>,
    /// Guidance scale.
    pub guidance: f64,
    /// The unconditional input of guided steps.
    pub uncond: Uncond,
    /// How the start is made.
    pub start: EulerStart,
    /// Offset noise o: one N(0, 1) value per sample, times o, added to the
    /// start's noise (0: none, no draw).
    pub offset_noise: f64,
    /// What the model predicts (`x0` or `eps`).
    pub prediction: Prediction,
}

impl EulerRun {
    /// Karras σs, zeros unconditional, no offset: the EDM defaults.
    pub fn karras(
        steps: usize,
        sigma_min: f64,
        sigma_max: f64,
        rho: f64,
        guidance: f64,
        prediction: Prediction,
    ) -> EulerRun {
        EulerRun {
            sigmas: karras_sigmas(steps, sigma_min, sigma_max, rho),
            guidance,
            uncond: Uncond::Zeros,
            start: EulerStart::Sigma,
            offset_noise: 0.0,
            prediction,
        }
    }

    /// Model calls per trial (guided steps count once).
    pub fn steps(&self) -> usize {
        self.sigmas.len().saturating_sub(1)
    }
}

/// Deterministic Euler. Noise order: z (an `Unclip` start), the
/// unconditional input when it is fresh noise (guided runs), n, then the
/// offset value when `offset_noise` > 0; the steps draw nothing.
pub fn sample_euler<E>(
    run: &EulerRun,
    len: usize,
    cond: &[f32],
    noise: &mut dyn NoiseSource,
    denoise: &mut Denoise<'_, E>,
) -> Result<Vec<f32>, E> {
    let sigmas = &run.sigmas;
    let mut x = vec![0f32; len];
    if run.start == EulerStart::Unclip {
        noise.fill(&mut x);
    }
    let mut l = Loop::new(denoise, run.guidance, &run.uncond, len, cond.len(), noise);
    let mut n = vec![0f32; len];
    noise.fill(&mut n);
    let offset = if run.offset_noise != 0.0 {
        let mut s = [0f32; 1];
        noise.fill(&mut s);
        run.offset_noise * s[0] as f64
    } else {
        0.0
    };
    let s0 = sigmas.first().copied().unwrap_or(0.0);
    for (xv, &nv) in x.iter_mut().zip(&n) {
        *xv = (*xv as f64 + s0 * (nv as f64 + offset)) as f32;
    }
    for w in sigmas.windows(2) {
        let (s, h) = (w[0], w[1] - w[0]);
        // d = (x − D)/σ; x ← x + h·d. D = m (x0) or x − σ·m (eps).
        let update = match run.prediction {
            Prediction::Eps => StepUpdate {
                a: 1.0,
                b: h,
                c: 0.0,
            },
            _ => StepUpdate {
                a: 1.0 + h / s,
                b: -h / s,
                c: 0.0,
            },
        };
        l.step(&mut x, Level::Sigma(s), cond, update, noise)?;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_descend_by_t_div_n() {
        let s = DiscreteSchedule::new(&ScheduleSpec {
            kind: ScheduleKind::Linear,
            train_steps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
        });
        let ts = s.timesteps(20);
        assert_eq!(ts.len(), 20);
        assert_eq!(ts[0], 950);
        assert_eq!(ts[19], 0);
        assert!(s.alpha_bar(999) < s.alpha_bar(0));
        assert_eq!(s.alpha_bar(-1), 1.0);
    }

    #[test]
    fn seeded_noise_repeats_and_differs_by_seed() {
        let mut a = vec![0f32; 64];
        let mut b = vec![0f32; 64];
        SeededNoise::new(7).fill(&mut a);
        SeededNoise::new(7).fill(&mut b);
        assert_eq!(a, b);
        SeededNoise::new(8).fill(&mut b);
        assert_ne!(a, b);
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / 64.0;
        assert!(mean.abs() < 0.5, "mean {mean}");
    }

    #[test]
    fn karras_sigmas_span_the_range() {
        let s = karras_sigmas(10, 0.002, 80.0, 7.0);
        assert_eq!(s.len(), 11);
        assert!((s[0] - 80.0).abs() < 1e-9);
        assert!((s[9] - 0.002).abs() < 1e-12);
        assert_eq!(s[10], 0.0);
        assert!(s.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn legacy_ddpm_sigmas_are_sgms_38_step_grid() {
        // sgm's LegacyDDPMDiscretization, 38 steps (MindEye2's unCLIP): the
        // grid runs t = 999, 972, …, 26 (t = 0 is not on it), then 0.
        let s = DiscreteSchedule::scaled_linear(1000, 0.00085, 0.012).legacy_ddpm_sigmas(38);
        assert_eq!(s.len(), 39);
        assert!((s[0] - 14.614641).abs() < 1e-5, "{}", s[0]);
        assert!((s[1] - 12.444417).abs() < 1e-5, "{}", s[1]);
        assert!((s[37] - 0.15797043).abs() < 1e-6, "{}", s[37]);
        assert_eq!(s[38], 0.0);
        assert!(s.windows(2).all(|w| w[0] > w[1]));
        // Karras σs over the same range are not this grid.
        let k = karras_sigmas(38, s[37], s[0], 7.0);
        let worst = s[..38]
            .iter()
            .zip(&k)
            .map(|(a, b)| (a - b).abs() / a)
            .fold(0.0, f64::max);
        assert!(worst > 0.2, "{worst}");
    }

    #[test]
    fn dalle2_grid_is_19_calls_from_94_to_4() {
        let pairs = dalle2_pairs(100, 20);
        assert_eq!(pairs.len(), 19);
        assert_eq!(pairs[0], (94, 89));
        assert_eq!(pairs[1], (89, 84));
        assert_eq!(pairs[17], (9, 4));
        assert_eq!(pairs[18], (4, -1));
        assert_eq!(list_pairs(&[9, 4]), vec![(9, 4), (4, -1)]);
    }

    #[test]
    fn previous_alphas_shift_the_ddim_coefficients_by_one_step() {
        let sched = DiscreteSchedule::new(&ScheduleSpec {
            kind: ScheduleKind::Cosine,
            train_steps: 100,
            beta_start: 1e-4,
            beta_end: 0.02,
        });
        let mut run = DiscreteRun {
            kind: DiscreteKind::Ddim,
            pairs: dalle2_pairs(100, 20),
            alphas: StepAlphas::Previous,
            eta: 1.0,
            guidance: 1.0,
            uncond: Uncond::Zeros,
            prediction: Prediction::X0,
        };
        // dalle2's first step: c1 = 0.82826334, √ᾱ_prev[89] = 0.17059128
        // (x0 weight), c2 = 0.53374010 (ε̂ weight), from its float32 buffers.
        let u = discrete_update(&run, &sched, 94, 89, false);
        assert!((u.c - 0.828_263_34).abs() < 1e-6, "{}", u.c);
        let ab = sched.alpha_bar(94);
        let (sa, s1) = (ab.sqrt(), (1.0 - ab).sqrt());
        let (x_w, m_w) = (0.533_740_10 / s1, 0.170_591_28 - 0.533_740_10 * sa / s1);
        assert!((u.a - x_w).abs() < 1e-5 * x_w.abs(), "{} vs {x_w}", u.a);
        assert!((u.b - m_w).abs() < 1e-5, "{} vs {m_w}", u.b);
        // The last pair returns x̂₀ whatever the convention.
        assert_eq!(
            discrete_update(&run, &sched, 4, -1, true),
            StepUpdate {
                a: 0.0,
                b: 1.0,
                c: 0.0
            }
        );
        run.alphas = StepAlphas::Standard;
        assert!((discrete_update(&run, &sched, 94, 89, false).c - u.c).abs() > 1e-3);
    }

    #[test]
    fn guided_euler_draws_uncond_noise_and_offset_in_order() {
        // Record the draws: the denoiser sees the uncond tokens drawn from the stream.
        let values: Vec<f32> = (0..64).map(|i| i as f32 * 0.01).collect();
        let mut noise = ReplayNoise::new(values.clone());
        let run = EulerRun {
            sigmas: vec![2.0, 1.0, 0.0],
            guidance: 3.0,
            uncond: Uncond::Noise,
            start: EulerStart::Unclip,
            offset_noise: 0.5,
            prediction: Prediction::X0,
        };
        let (len, cond) = (4, vec![9.0f32; 3]);
        let mut seen_uncond = Vec::new();
        let mut first_x = None;
        let mut d = |x: &[f32],
                     _: Level,
                     _: &[f32],
                     u: Option<&[f32]>,
                     out: &mut Vec<f32>,
                     out_u: &mut Vec<f32>| {
            first_x.get_or_insert_with(|| x.to_vec());
            seen_uncond = u.map(<[f32]>::to_vec).unwrap_or_default();
            out.clear();
            out.extend(x.iter().map(|v| v * 0.5));
            out_u.clear();
            out_u.extend(x.iter().map(|v| v * 0.25));
            Ok::<(), ()>(())
        };
        sample_euler(&run, len, &cond, &mut noise, &mut d).unwrap();
        // z = draws 0..4, uncond = 4..7, n = 7..11, offset = draw 11.
        assert_eq!(seen_uncond, values[4..7].to_vec());
        let offset = 0.5 * values[11] as f64;
        let x0 = first_x.unwrap();
        for i in 0..len {
            let want = values[i] as f64 + 2.0 * (values[7 + i] as f64 + offset);
            assert!(
                (x0[i] as f64 - want).abs() < 1e-6,
                "{i}: {} vs {want}",
                x0[i]
            );
        }
        assert_eq!(noise.used(), 12);
    }
}
