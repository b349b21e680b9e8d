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

use super::manifest::{DiscreteKind, Prediction, ScheduleKind, ScheduleSpec};

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

/// A one-step denoiser: `(sample, level, cond, out)`; `out` receives the
/// raw model output (x̂₀, ε̂ or v̂).
pub type Denoise<'a, E> = dyn FnMut(&[f32], Level, &[f32], &mut Vec<f32>) -> Result<(), E> + 'a;

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
            self.alpha_bar[t as usize]
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

/// The update of discrete step `n` (timestep t, previous timestep t − k).
pub fn discrete_update(
    run: &DiscreteRun,
    schedule: &DiscreteSchedule,
    t: i64,
    k: i64,
    last: bool,
) -> StepUpdate {
    let ab_t = schedule.alpha_bar(t);
    let ab_p = schedule.alpha_bar(t - k);
    let (sa, s1) = (ab_t.sqrt(), (1.0 - ab_t).sqrt());
    let (p, q) = x0_coefficients(run.prediction, ab_t);
    match run.kind {
        DiscreteKind::Ddim => {
            // ε̂ = (x − √ᾱₜ·x̂₀)/√(1−ᾱₜ) = r·x + u·m
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
#[derive(Debug, Clone, Copy)]
pub struct DiscreteRun {
    /// DDIM or DDPM.
    pub kind: DiscreteKind,
    /// Inference steps.
    pub steps: usize,
    /// DDIM's η.
    pub eta: f64,
    /// Guidance scale.
    pub guidance: f64,
    /// What the model predicts.
    pub prediction: Prediction,
}

/// Buffers and the guided model evaluation shared by the samplers.
struct Loop<'d, 'a, E> {
    denoise: &'d mut Denoise<'a, E>,
    guidance: f64,
    zeros: Vec<f32>,
    cond_out: Vec<f32>,
    uncond_out: Vec<f32>,
    z: Vec<f32>,
}

impl<'d, 'a, E> Loop<'d, 'a, E> {
    fn new(denoise: &'d mut Denoise<'a, E>, guidance: f64, len: usize, cond_len: usize) -> Self {
        let guided = guidance != 1.0;
        Loop {
            denoise,
            guidance,
            zeros: if guided {
                vec![0.0; cond_len]
            } else {
                Vec::new()
            },
            cond_out: Vec::with_capacity(len),
            uncond_out: Vec::with_capacity(if guided { len } else { 0 }),
            z: Vec::new(),
        }
    }

    /// Evaluate the model (twice with guidance) and apply `update` to `x`.
    fn step(
        &mut self,
        x: &mut [f32],
        level: Level,
        cond: &[f32],
        update: StepUpdate,
        noise: &mut dyn NoiseSource,
    ) -> Result<(), E> {
        (self.denoise)(x, level, cond, &mut self.cond_out)?;
        let guided = self.guidance != 1.0;
        if guided {
            (self.denoise)(x, level, &self.zeros, &mut self.uncond_out)?;
        }
        if update.c != 0.0 {
            self.z.resize(x.len(), 0.0);
            noise.fill(&mut self.z);
        }
        let u = guided.then_some((self.uncond_out.as_slice(), self.guidance));
        update.apply(x, &self.cond_out, u, &self.z);
        Ok(())
    }
}

/// DDIM or DDPM from pure noise. `len` is the sample's element count.
/// Noise order: the start (`len` draws), then one `len` draw per step that
/// adds noise (DDIM with σ > 0; DDPM except at the last step).
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
    let mut l = Loop::new(denoise, run.guidance, len, cond.len());
    let ts = schedule.timesteps(run.steps);
    let k = (schedule.train_steps() / run.steps.max(1)) as i64;
    for (n, &t) in ts.iter().enumerate() {
        let update = discrete_update(run, schedule, t, k, n + 1 == ts.len());
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

/// Settings of an Euler (EDM) run.
#[derive(Debug, Clone, Copy)]
pub struct EulerRun {
    /// Steps.
    pub steps: usize,
    /// Smallest σ.
    pub sigma_min: f64,
    /// Largest σ.
    pub sigma_max: f64,
    /// Curvature.
    pub rho: f64,
    /// Guidance scale.
    pub guidance: f64,
    /// What the model predicts (`x0` or `eps`).
    pub prediction: Prediction,
}

/// Deterministic Euler from x = σ₀·z. Noise order: the start only.
pub fn sample_euler<E>(
    run: &EulerRun,
    len: usize,
    cond: &[f32],
    noise: &mut dyn NoiseSource,
    denoise: &mut Denoise<'_, E>,
) -> Result<Vec<f32>, E> {
    let sigmas = karras_sigmas(run.steps, run.sigma_min, run.sigma_max, run.rho);
    let mut x = vec![0f32; len];
    noise.fill(&mut x);
    for v in &mut x {
        *v = (*v as f64 * sigmas[0]) as f32;
    }
    let mut l = Loop::new(denoise, run.guidance, len, cond.len());
    for i in 0..run.steps {
        let (s, h) = (sigmas[i], sigmas[i + 1] - sigmas[i]);
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
}
