//! Visual-cortex model for simulated subjects: what a voxel of visual
//! cortex would answer to an image.
//!
//! In: a voxel count, a [`PrfLayout`] and a seed ([`VisualCortex::new`]),
//! then images, channel-major `[C, H, W]` in 0..1 as
//! [`crate::formats::png::read_png`] gives them ([`load_images`] reads a
//! bank folder). Out: each voxel's noise-free response to each image
//! ([`VisualCortex::response`]), or to a whole image set standardised per
//! voxel ([`VisualCortex::responses`]), ready for
//! [`super::patterns::StimulusPatterns`]; and [`SubjectProfile`], simulated
//! subjects ("sim-01", "sim-02", "sim-03") that bundle a cortex with their
//! noise, motion and head position.
//!
//! The model is the population-receptive-field (pRF) model with feature
//! tuning: every voxel pools, with a Gaussian window (its pRF: centre and
//! size), seven feature maps of the image — luminance, red–green and
//! blue–yellow opponency, and oriented energy at 0°, 45°, 90° and 135°
//! (quadrature Gabor pairs at the image's own resolution) — and weighs a few
//! of them by its tuning. pRF centres crowd the centre of the visual field
//! and sizes grow with eccentricity, as in early visual cortex.
//!
//! Visual-field coordinates: origin at the image centre, x to the right,
//! y downwards (image rows), both in units of half the image's shorter side,
//! so 1 is the edge of the inscribed circle whatever the resolution.

use std::collections::HashMap;
use std::path::Path;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::patterns::StimulusPatterns;
use super::synth::{PhysioSpec, SynthSpec};
use super::{MotionModel, SimError, mix_seed};

/// Number of feature channels.
pub const N_FEATURES: usize = 7;

/// Names of the feature channels, in tuning order.
pub const FEATURES: [&str; N_FEATURES] = [
    "luminance",
    "red-green",
    "blue-yellow",
    "orientation-0",
    "orientation-45",
    "orientation-90",
    "orientation-135",
];

/// Gain of each channel's map. Raw channels differ in spread (luminance
/// varies more across the bank than fine oriented energy); these gains,
/// measured once on the demo bank with mid-size pRFs, make each channel's
/// pooled value vary about equally, so tuning weights mean the same for all.
const FEATURE_GAIN: [f32; N_FEATURES] = [1.0, 1.0, 1.1, 25.0, 25.0, 25.0, 25.0];

const TAG_PRF: u64 = 21;
const TAG_TUNING: u64 = 22;

/// Gabor carrier wavelength and envelope σ in pixels, and kernel radius.
const GABOR_LAMBDA: f32 = 4.0;
const GABOR_SIGMA: f32 = 1.5;
const GABOR_RADIUS: usize = 3;
/// A pRF is pooled on the coarsest pyramid level where its σ still spans
/// this many pixels: finer levels add cost, not accuracy.
const MIN_SIGMA_PX: f64 = 1.0;
/// Gaussian windows are cut at this many σ.
const SUPPORT_SIGMAS: f64 = 2.5;

/// How pRFs and tuning are laid out over a simulated visual area.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrfLayout {
    /// Largest pRF eccentricity (visual-field units: 1 = edge of the
    /// image's inscribed circle).
    pub max_eccentricity: f64,
    /// Eccentricity is `max × u^power`, u uniform: above 1, voxels crowd the
    /// centre (cortical magnification).
    pub eccentricity_power: f64,
    /// pRF size (Gaussian σ) at the centre of the visual field.
    pub size_min: f64,
    /// Growth of the pRF size per unit of eccentricity.
    pub size_slope: f64,
    /// Largest pRF size.
    pub size_max: f64,
    /// Log-normal scatter of sizes around the trend (sd of ln size).
    pub size_jitter: f64,
    /// Feature channels each voxel is tuned to (1..=7).
    pub channels_per_voxel: usize,
    /// Relative chance of each channel ([`FEATURES`] order) being one of a
    /// voxel's channels.
    pub channel_preference: [f64; N_FEATURES],
    /// Fraction of tuning weights that are positive.
    pub positive_fraction: f64,
}

impl Default for PrfLayout {
    fn default() -> Self {
        PrfLayout {
            max_eccentricity: 1.0,
            eccentricity_power: 1.6,
            size_min: 0.06,
            size_slope: 0.3,
            size_max: 0.6,
            size_jitter: 0.2,
            channels_per_voxel: 3,
            channel_preference: [2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            positive_fraction: 0.75,
        }
    }
}

impl PrfLayout {
    fn validate(&self) -> Result<(), SimError> {
        let bad = |m: &str| Err(SimError::Spec(format!("pRF layout: {m}")));
        let pos = |v: f64| v.is_finite() && v > 0.0;
        if !pos(self.max_eccentricity) || !pos(self.eccentricity_power) {
            return bad("eccentricity range and power must be positive");
        }
        if !pos(self.size_min) || !pos(self.size_max) || self.size_min > self.size_max {
            return bad("sizes must be positive with size_min ≤ size_max");
        }
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        if !(non_negative(self.size_slope) && non_negative(self.size_jitter)) {
            return bad("size slope and jitter must be non-negative");
        }
        if !(1..=N_FEATURES).contains(&self.channels_per_voxel) {
            return bad("channels_per_voxel must be between 1 and 7");
        }
        let p = &self.channel_preference;
        if p.iter().any(|v| !(v.is_finite() && *v >= 0.0))
            || p.iter().filter(|v| **v > 0.0).count() < self.channels_per_voxel
        {
            return bad("channel preferences must be ≥ 0, enough of them positive");
        }
        if !(0.0..=1.0).contains(&self.positive_fraction) {
            return bad("positive_fraction must be within 0..1");
        }
        Ok(())
    }
}

/// A population receptive field (visual-field units).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prf {
    /// Centre, rightwards from the image centre.
    pub x: f64,
    /// Centre, downwards from the image centre.
    pub y: f64,
    /// Gaussian σ.
    pub size: f64,
}

/// A simulated visual area: per voxel a pRF and feature tuning.
#[derive(Debug, Clone)]
pub struct VisualCortex {
    prfs: Vec<Prf>,
    /// Per voxel, one weight per channel ([`FEATURES`] order); 0 = not tuned.
    tuning: Vec<[f32; N_FEATURES]>,
}

impl VisualCortex {
    /// `voxels` voxels with pRFs and tuning drawn from `layout`; the same
    /// seed gives the same cortex.
    pub fn new(voxels: usize, layout: &PrfLayout, seed: u64) -> Result<VisualCortex, SimError> {
        layout.validate()?;
        // Separate streams: changing the tuning knobs leaves the map alone.
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(seed, TAG_PRF));
        let prfs = (0..voxels)
            .map(|_| {
                let u: f64 = rng.random_range(0.0..1.0);
                let ecc = layout.max_eccentricity * u.powf(layout.eccentricity_power);
                let angle: f64 = rng.random_range(0.0..std::f64::consts::TAU);
                let jitter: f64 = StandardNormal.sample(&mut rng);
                let size = ((layout.size_min + layout.size_slope * ecc)
                    * (layout.size_jitter * jitter).exp())
                .clamp(layout.size_min, layout.size_max);
                Prf {
                    x: ecc * angle.cos(),
                    y: ecc * angle.sin(),
                    size,
                }
            })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(seed, TAG_TUNING));
        let tuning = (0..voxels)
            .map(|_| {
                let mut t = [0.0f32; N_FEATURES];
                let mut pref = layout.channel_preference;
                for _ in 0..layout.channels_per_voxel {
                    // Weighted draw without replacement.
                    let total: f64 = pref.iter().sum();
                    let mut r: f64 = rng.random_range(0.0..total);
                    let mut f = pref.iter().rposition(|p| *p > 0.0).unwrap_or(0);
                    for (c, p) in pref.iter().enumerate() {
                        if *p > 0.0 && r < *p {
                            f = c;
                            break;
                        }
                        r -= p;
                    }
                    pref[f] = 0.0;
                    let magnitude: f64 = rng.random_range(0.5..1.5);
                    let sign = if rng.random_bool(layout.positive_fraction) {
                        1.0
                    } else {
                        -1.0
                    };
                    t[f] = (sign * magnitude) as f32;
                }
                t
            })
            .collect();
        Ok(VisualCortex { prfs, tuning })
    }

    /// A cortex with given pRFs and tuning (one weight per channel, in
    /// [`FEATURES`] order), e.g. to probe the model with known voxels.
    pub fn from_parts(
        prfs: Vec<Prf>,
        tuning: Vec<[f32; N_FEATURES]>,
    ) -> Result<VisualCortex, SimError> {
        if prfs.len() != tuning.len() {
            return Err(SimError::Spec(format!(
                "{} pRFs for {} tuning vectors",
                prfs.len(),
                tuning.len()
            )));
        }
        if let Some(v) = prfs.iter().position(|p| {
            !(p.x.is_finite() && p.y.is_finite() && p.size.is_finite() && p.size > 0.0)
        }) {
            return Err(SimError::Spec(format!(
                "voxel {v}: a pRF needs a finite centre and a positive size"
            )));
        }
        if let Some(v) = tuning.iter().position(|t| t.iter().any(|w| !w.is_finite())) {
            return Err(SimError::Spec(format!("voxel {v}: tuning must be finite")));
        }
        Ok(VisualCortex { prfs, tuning })
    }

    /// Number of voxels.
    pub fn voxels(&self) -> usize {
        self.prfs.len()
    }

    /// Voxel `v`'s pRF.
    pub fn prf(&self, v: usize) -> Option<Prf> {
        self.prfs.get(v).copied()
    }

    /// Voxel `v`'s tuning weights ([`FEATURES`] order).
    pub fn tuning(&self, v: usize) -> Option<[f32; N_FEATURES]> {
        self.tuning.get(v).copied()
    }

    /// The noise-free response of every voxel to one image:
    /// Σ over channels of tuning × (pRF-weighted mean of the channel's map).
    pub fn response(
        &self,
        image: &[f32],
        chw: (usize, usize, usize),
    ) -> Result<Vec<f32>, SimError> {
        let weights = PrfWeights::build(&self.prfs, chw.1, chw.2);
        let pyramid = Pyramid::new(&features(image, chw)?);
        Ok(self.apply(&weights, &pyramid))
    }

    /// Every image's response, standardised per voxel over the given set
    /// (mean 0, standard deviation 1), so a pattern amplitude means "signal
    /// change per standard deviation of the image-driven response". A voxel
    /// that answers all images alike gets zeros. Needs two distinct ids.
    pub fn responses(&self, images: &[LoadedImage]) -> Result<HashMap<String, Vec<f32>>, SimError> {
        if images.len() < 2 {
            return Err(SimError::Spec(
                "standardising responses needs at least two images".into(),
            ));
        }
        let mut sizes: Vec<(usize, usize)> = images.iter().map(|(_, _, c)| (c.1, c.2)).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let weights: Vec<((usize, usize), PrfWeights)> = sizes
            .into_iter()
            .map(|(h, w)| ((h, w), PrfWeights::build(&self.prfs, h, w)))
            .collect();
        let one = |(id, image, chw): &LoadedImage| -> Result<Vec<f32>, SimError> {
            let maps = features(image, *chw).map_err(|e| match e {
                SimError::Spec(m) => SimError::Spec(format!("image {id}: {m}")),
                e => e,
            })?;
            let w = weights
                .iter()
                .find(|(k, _)| *k == (chw.1, chw.2))
                .map(|(_, w)| w)
                .ok_or_else(|| SimError::Spec(format!("image {id}: no pooling weights")))?;
            Ok(self.apply(w, &Pyramid::new(&maps)))
        };
        // Images are independent: spread them over the cores; each result
        // goes to its own slot, so the numbers do not depend on the split.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, images.len());
        let per = images.len().div_ceil(threads);
        let mut raw: Vec<Result<Vec<f32>, SimError>> = Vec::with_capacity(images.len());
        std::thread::scope(|scope| {
            let handles: Vec<_> = images
                .chunks(per)
                .map(|chunk| scope.spawn(move || chunk.iter().map(one).collect::<Vec<_>>()))
                .collect();
            for h in handles {
                match h.join() {
                    Ok(r) => raw.extend(r),
                    Err(_) => raw.push(Err(SimError::Spec("a response worker failed".into()))),
                }
            }
        });
        let mut raw: Vec<Vec<f32>> = raw.into_iter().collect::<Result<_, _>>()?;
        let n = raw.len() as f64;
        for v in 0..self.voxels() {
            let mean = raw.iter().map(|r| r[v] as f64).sum::<f64>() / n;
            let var = raw
                .iter()
                .map(|r| (r[v] as f64 - mean).powi(2))
                .sum::<f64>()
                / n;
            let sd = var.sqrt();
            // Below float noise relative to the mean there is no signal.
            let scale = if sd > 1e-6 * mean.abs().max(1e-12) {
                1.0 / sd
            } else {
                0.0
            };
            for r in &mut raw {
                r[v] = ((r[v] as f64 - mean) * scale) as f32;
            }
        }
        let mut out = HashMap::with_capacity(images.len());
        for ((id, _, _), r) in images.iter().zip(raw) {
            if out.insert(id.clone(), r).is_some() {
                return Err(SimError::Spec(format!("image id {id} is given twice")));
            }
        }
        Ok(out)
    }

    fn apply(&self, weights: &PrfWeights, pyramid: &Pyramid) -> Vec<f32> {
        self.tuning
            .iter()
            .zip(&weights.voxels)
            .map(|(t, vw)| {
                let level = &pyramid.levels[vw.level];
                let (gx, gy) = (
                    &weights.gx[vw.gx..vw.gx + vw.nc],
                    &weights.gy[vw.gy..vw.gy + vw.nr],
                );
                let mut total = 0.0f32;
                for (f, &w) in t.iter().enumerate() {
                    if w == 0.0 {
                        continue;
                    }
                    let map = level.channel(f);
                    let mut s = 0.0f32;
                    for (dr, &wy) in gy.iter().enumerate() {
                        let row = &map[(vw.r0 + dr) * level.w + vw.c0..][..vw.nc];
                        let inner: f32 = row.iter().zip(gx).map(|(a, b)| a * b).sum();
                        s += wy * inner;
                    }
                    total += w * FEATURE_GAIN[f] * s;
                }
                total
            })
            .collect()
    }
}

/// Feature maps of one image (or pyramid level): [`N_FEATURES`] planes of
/// `h × w`.
#[derive(Debug, Clone)]
struct Maps {
    h: usize,
    w: usize,
    data: Vec<f32>,
}

impl Maps {
    fn channel(&self, f: usize) -> &[f32] {
        let plane = self.h * self.w;
        &self.data[f * plane..(f + 1) * plane]
    }

    /// 2×2 box average; a last odd row or column averages what it has.
    fn halve(&self) -> Maps {
        let (h, w) = (self.h.div_ceil(2), self.w.div_ceil(2));
        let mut data = vec![0.0f32; N_FEATURES * h * w];
        for f in 0..N_FEATURES {
            let src = self.channel(f);
            let dst = &mut data[f * h * w..(f + 1) * h * w];
            for r in 0..h {
                for c in 0..w {
                    let (mut s, mut n) = (0.0f32, 0.0f32);
                    for sr in 2 * r..(2 * r + 2).min(self.h) {
                        for sc in 2 * c..(2 * c + 2).min(self.w) {
                            s += src[sr * self.w + sc];
                            n += 1.0;
                        }
                    }
                    dst[r * w + c] = s / n;
                }
            }
        }
        Maps { h, w, data }
    }
}

/// The feature maps at full resolution and successive halvings.
struct Pyramid {
    levels: Vec<Maps>,
}

impl Pyramid {
    fn new(base: &Maps) -> Pyramid {
        let mut levels = vec![base.clone()];
        while let Some(last) = levels.last() {
            if last.h.min(last.w) <= 2 {
                break;
            }
            let next = last.halve();
            levels.push(next);
        }
        Pyramid { levels }
    }
}

/// Level dimensions of the pyramid of an `h × w` image.
fn pyramid_dims(h: usize, w: usize) -> Vec<(usize, usize)> {
    let mut dims = vec![(h, w)];
    while let Some(&(h, w)) = dims.last() {
        if h.min(w) <= 2 {
            break;
        }
        dims.push((h.div_ceil(2), w.div_ceil(2)));
    }
    dims
}

/// The seven feature maps of an image.
fn features(image: &[f32], (c, h, w): (usize, usize, usize)) -> Result<Maps, SimError> {
    if c == 0 || h == 0 || w == 0 {
        return Err(SimError::Spec(format!(
            "image of shape {c}×{h}×{w} is empty"
        )));
    }
    if image.len() != c * h * w {
        return Err(SimError::Spec(format!(
            "image has {} values, not {c}×{h}×{w}",
            image.len()
        )));
    }
    if image.iter().any(|v| !v.is_finite()) {
        return Err(SimError::Spec("image has non-finite values".into()));
    }
    let plane = h * w;
    let mut data = vec![0.0f32; N_FEATURES * plane];
    {
        let (lum, rest) = data.split_at_mut(plane);
        let (rg, rest) = rest.split_at_mut(plane);
        let by = &mut rest[..plane];
        if c >= 3 {
            let (r, g, b) = (
                &image[..plane],
                &image[plane..2 * plane],
                &image[2 * plane..3 * plane],
            );
            for p in 0..plane {
                lum[p] = (r[p] + g[p] + b[p]) / 3.0;
                rg[p] = r[p] - g[p];
                by[p] = b[p] - 0.5 * (r[p] + g[p]);
            }
        } else {
            // Grey (or grey + alpha): no colour contrast.
            lum.copy_from_slice(&image[..plane]);
        }
    }
    let (lum, rest) = data.split_at_mut(plane);
    let oriented = &mut rest[2 * plane..];
    let gabor = Gabor::new();
    gabor.energy(lum, h, w, oriented);
    // A second, coarser scale (one octave down) for stripes and edges wider
    // than the fine carrier, replicated back onto the full grid.
    if h.min(w) >= 4 * (2 * GABOR_RADIUS + 1) {
        let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
        let mut half = vec![0.0f32; h2 * w2];
        for r in 0..h2 {
            for c in 0..w2 {
                let (mut s, mut n) = (0.0f32, 0.0f32);
                for sr in 2 * r..(2 * r + 2).min(h) {
                    for sc in 2 * c..(2 * c + 2).min(w) {
                        s += lum[sr * w + sc];
                        n += 1.0;
                    }
                }
                half[r * w2 + c] = s / n;
            }
        }
        let mut coarse = vec![0.0f32; 4 * h2 * w2];
        gabor.energy(&half, h2, w2, &mut coarse);
        for o in 0..4 {
            let (src, dst) = (
                &coarse[o * h2 * w2..(o + 1) * h2 * w2],
                &mut oriented[o * plane..(o + 1) * plane],
            );
            for r in 0..h {
                for c in 0..w {
                    dst[r * w + c] += src[(r / 2) * w2 + c / 2];
                }
            }
        }
    }
    Ok(Maps { h, w, data })
}

/// Quadrature Gabor pairs at 0°, 45°, 90° and 135°. A Gabor with an
/// isotropic envelope is separable as a complex filter, `a(x)·b(y)` with
/// `a(x) = G(x)·e^(i·kx·x)`, so each orientation costs two 1-D complex
/// passes instead of a 2-D pass per phase. The even (real) part is made
/// zero-mean by subtracting the envelope times its DC gain, so flat regions
/// give exactly nothing; both parts are scaled so a unit-amplitude grating
/// at the carrier and the preferred orientation gives an energy of 1.
/// A complex number as (re, im).
type Complex = (f32, f32);

struct Gabor {
    /// Per orientation: row taps `a` and column taps `b`.
    taps: Vec<(Vec<Complex>, Vec<Complex>)>,
    /// Real envelope taps (for the DC correction).
    env: Vec<f32>,
    /// Per orientation: DC gain of the even part, and the even and odd
    /// normalisations.
    norm: Vec<(f32, f32, f32)>,
}

impl Gabor {
    fn new() -> Gabor {
        let r = GABOR_RADIUS as isize;
        let k = std::f32::consts::TAU / GABOR_LAMBDA;
        let env: Vec<f32> = (-r..=r)
            .map(|d| (-((d * d) as f32) / (2.0 * GABOR_SIGMA * GABOR_SIGMA)).exp())
            .collect();
        let mut taps = Vec::new();
        let mut norm = Vec::new();
        for o in 0..4 {
            let theta = o as f32 * std::f32::consts::FRAC_PI_4;
            // Direction of luminance change; y (rows) points down, so 45°
            // points to the upper right of the picture.
            let (ux, uy) = (theta.cos(), -theta.sin());
            let one = |u: f32| -> Vec<Complex> {
                (-r..=r)
                    .zip(&env)
                    .map(|(d, g)| {
                        let ph = k * u * d as f32;
                        (g * ph.cos(), g * ph.sin())
                    })
                    .collect()
            };
            // The 2-D kernel, only to compute the constants.
            let (mut even_sum, mut env_sum) = (0.0f32, 0.0f32);
            let mut kernel = Vec::new();
            for dy in -r..=r {
                for dx in -r..=r {
                    let g = env[(dy + r) as usize] * env[(dx + r) as usize];
                    let ph = k * (ux * dx as f32 + uy * dy as f32);
                    even_sum += g * ph.cos();
                    env_sum += g;
                    kernel.push((g, ph));
                }
            }
            let dc = even_sum / env_sum;
            let (mut ge, mut go) = (0.0f32, 0.0f32);
            for (g, ph) in &kernel {
                ge += (g * ph.cos() - dc * g) * ph.cos();
                go += g * ph.sin() * ph.sin();
            }
            taps.push((one(ux), one(uy)));
            norm.push((dc, ge, go));
        }
        Gabor { taps, env, norm }
    }

    /// Energy maps (4 planes of `h × w`) of `lum`, edges replicated.
    fn energy(&self, lum: &[f32], h: usize, w: usize, out: &mut [f32]) {
        let rad = GABOR_RADIUS;
        let taps = 2 * rad + 1;
        // Padded copy (edges replicated): the passes then need no bounds
        // logic and run tap by tap over whole rows, which vectorises.
        let (ph, pw) = (h + 2 * rad, w + 2 * rad);
        let mut pad = vec![0.0f32; ph * pw];
        for r in 0..ph {
            let sr = r.saturating_sub(rad).min(h - 1);
            for c in 0..pw {
                pad[r * pw + c] = lum[sr * w + c.saturating_sub(rad).min(w - 1)];
            }
        }
        // Row pass over every padded row, giving `ph × w` outputs.
        let row_pass = |weights: &[f32], dst: &mut [f32]| {
            for r in 0..ph {
                let out = &mut dst[r * w..(r + 1) * w];
                out.fill(0.0);
                for (t, &g) in weights.iter().enumerate() {
                    let src = &pad[r * pw + t..r * pw + t + w];
                    for (o, v) in out.iter_mut().zip(src) {
                        *o += g * v;
                    }
                }
            }
        };
        let mut rows = vec![0.0f32; ph * w];
        row_pass(&self.env, &mut rows);
        // Envelope blur of the image, for the even part's DC correction.
        let mut blur = vec![0.0f32; h * w];
        for r in 0..h {
            let out = &mut blur[r * w..(r + 1) * w];
            for (t, &g) in self.env.iter().enumerate() {
                for (o, v) in out.iter_mut().zip(&rows[(r + t) * w..(r + t + 1) * w]) {
                    *o += g * v;
                }
            }
        }
        let (mut re, mut im) = (vec![0.0f32; ph * w], vec![0.0f32; ph * w]);
        let (mut x, mut y) = (vec![0.0f32; w], vec![0.0f32; w]);
        for (o, ((a, b), &(dc, ge, go))) in self.taps.iter().zip(&self.norm).enumerate() {
            let ar: Vec<f32> = a.iter().map(|v| v.0).collect();
            let ai: Vec<f32> = a.iter().map(|v| v.1).collect();
            row_pass(&ar, &mut re);
            row_pass(&ai, &mut im);
            let plane = &mut out[o * h * w..(o + 1) * h * w];
            for r in 0..h {
                x.fill(0.0);
                y.fill(0.0);
                for (t, &(br, bi)) in b.iter().enumerate().take(taps) {
                    let (pr, pi) = (
                        &re[(r + t) * w..(r + t + 1) * w],
                        &im[(r + t) * w..(r + t + 1) * w],
                    );
                    for c in 0..w {
                        x[c] += br * pr[c] - bi * pi[c];
                        y[c] += br * pi[c] + bi * pr[c];
                    }
                }
                let dst = &mut plane[r * w..(r + 1) * w];
                let bl = &blur[r * w..(r + 1) * w];
                for c in 0..w {
                    let even = (x[c] - dc * bl[c]) / ge;
                    let odd = y[c] / go;
                    dst[c] = even * even + odd * odd;
                }
            }
        }
    }
}

/// One voxel's separable pooling window on one pyramid level.
#[derive(Debug, Clone)]
struct VoxelWindow {
    level: usize,
    r0: usize,
    c0: usize,
    nr: usize,
    nc: usize,
    /// Offsets into the shared weight arrays.
    gx: usize,
    gy: usize,
}

/// Every voxel's pRF window for images of one size. A Gaussian is
/// separable, so each window is a row profile times a column profile,
/// normalised to sum to 1 over the part inside the image.
#[derive(Debug, Clone)]
struct PrfWeights {
    voxels: Vec<VoxelWindow>,
    gx: Vec<f32>,
    gy: Vec<f32>,
}

impl PrfWeights {
    fn build(prfs: &[Prf], h: usize, w: usize) -> PrfWeights {
        let dims = pyramid_dims(h, w);
        let unit = 0.5 * h.min(w) as f64;
        // Visual-field coordinate of each level's pixel centres: a level
        // pixel covers a block of full-resolution pixels (short at an odd
        // edge), so its centre is the block's centre.
        let centres = |n: usize, full: usize, level: usize| -> Vec<f64> {
            let block = 1usize << level;
            (0..n)
                .map(|i| {
                    let a = (i * block) as f64;
                    let b = ((i + 1) * block).min(full) as f64;
                    (0.5 * (a + b) - 0.5 * full as f64) / unit
                })
                .collect()
        };
        let coords: Vec<(Vec<f64>, Vec<f64>)> = dims
            .iter()
            .enumerate()
            .map(|(l, &(lh, lw))| (centres(lw, w, l), centres(lh, h, l)))
            .collect();
        let mut out = PrfWeights {
            voxels: Vec::with_capacity(prfs.len()),
            gx: Vec::new(),
            gy: Vec::new(),
        };
        for p in prfs {
            let sigma_px0 = p.size * unit;
            let mut level = 0;
            while level + 1 < dims.len()
                && sigma_px0 / (1usize << (level + 1)) as f64 >= MIN_SIGMA_PX
            {
                level += 1;
            }
            let (xs, ys) = &coords[level];
            let (c0, gx) = profile(xs, p.x, p.size);
            let (r0, gy) = profile(ys, p.y, p.size);
            out.voxels.push(VoxelWindow {
                level,
                r0,
                c0,
                nr: gy.len(),
                nc: gx.len(),
                gx: out.gx.len(),
                gy: out.gy.len(),
            });
            out.gx.extend(gx);
            out.gy.extend(gy);
        }
        out
    }
}

/// Normalised 1-D Gaussian weights over the pixel centres `xs` within
/// [`SUPPORT_SIGMAS`] of `centre`: (first index, weights). A pRF whose
/// window misses the image entirely pools the nearest edge pixel.
fn profile(xs: &[f64], centre: f64, sigma: f64) -> (usize, Vec<f32>) {
    let reach = SUPPORT_SIGMAS * sigma;
    let first = xs.iter().position(|x| *x >= centre - reach);
    let last = xs.iter().rposition(|x| *x <= centre + reach);
    let (a, b) = match (first, last) {
        (Some(a), Some(b)) if a <= b => (a, b),
        _ => {
            let nearest = if centre < xs[0] { 0 } else { xs.len() - 1 };
            (nearest, nearest)
        }
    };
    let mut g: Vec<f64> = xs[a..=b]
        .iter()
        .map(|x| (-0.5 * ((x - centre) / sigma).powi(2)).exp())
        .collect();
    let sum: f64 = g.iter().sum();
    if sum > 0.0 {
        for v in &mut g {
            *v /= sum;
        }
    } else {
        g.iter_mut().for_each(|v| *v = 1.0 / (b - a + 1) as f64);
    }
    (a, g.into_iter().map(|v| v as f32).collect())
}

/// An image as [`load_images`] gives it: id, values (`[C, H, W]`, 0..1)
/// and shape.
pub type LoadedImage = (String, Vec<f32>, (usize, usize, usize));

/// Read `<dir>/<id>.png` for each id, in order.
pub fn load_images(dir: &Path, ids: &[String]) -> Result<Vec<LoadedImage>, SimError> {
    ids.iter()
        .map(|id| {
            let path = dir.join(format!("{id}.png"));
            let (values, chw) = crate::formats::png::read_png(&path)
                .map_err(|error| SimError::Io { path, error })?;
            Ok((id.clone(), values, chw))
        })
        .collect()
}

/// A simulated subject: a visual cortex with its own layout, noise, head
/// motion and, for a later session, a different head position.
///
/// "sim-01" is the demo's default subject: moderate motion, low noise and a
/// response large enough to decode from single trials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectProfile {
    /// Subject name, e.g. "sim-01".
    pub name: String,
    /// Voxels of the visual region.
    pub voxels: usize,
    /// pRF layout and tuning of those voxels.
    pub layout: PrfLayout,
    /// Trial-to-trial noise sd, in units of the standardised response.
    pub response_noise: f64,
    /// Thermal (Rician) noise, as [`SynthSpec::noise`].
    pub thermal_noise: f64,
    /// Physiological-like noise.
    pub physio: PhysioSpec,
    /// Largest translation in mm.
    pub motion_mm: f64,
    /// Largest rotation in degrees.
    pub motion_deg: f64,
    /// Sudden jerks per run.
    pub jerks: usize,
    /// Fractional signal change per unit of standardised response at one
    /// event's peak.
    pub amplitude: f64,
    /// Head position in a later session relative to calibration (rx, ry, rz
    /// in radians, tx, ty, tz in mm), as [`SynthSpec::head_pose`].
    pub session_pose: [f64; 6],
    /// Seed of the subject's cortex (pRFs and tuning).
    pub seed: u64,
}

impl SubjectProfile {
    /// Names [`SubjectProfile::preset`] knows.
    pub const PRESETS: [&'static str; 3] = ["sim-01", "sim-02", "sim-03"];

    /// A built-in subject: "sim-01" (the demo's default subject), "sim-02"
    /// (more voxels, larger pRFs, noisier, more colour-driven, a larger
    /// session shift) or "sim-03" (fewer voxels, small orientation-tuned
    /// pRFs, the most motion).
    pub fn preset(name: &str) -> Option<SubjectProfile> {
        let deg = std::f64::consts::PI / 180.0;
        let p = match name {
            "sim-01" => SubjectProfile {
                name: name.into(),
                voxels: 2000,
                layout: PrfLayout {
                    // Mostly luminance and colour: the linear image content
                    // a ridge adapter can read out.
                    channels_per_voxel: 2,
                    channel_preference: [3.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.5],
                    size_min: 0.05,
                    size_slope: 0.25,
                    ..PrfLayout::default()
                },
                response_noise: 0.2,
                thermal_noise: 0.02,
                physio: PhysioSpec {
                    respiration: 0.003,
                    cardiac: 0.002,
                    low_freq: 0.004,
                    ..PhysioSpec::default()
                },
                motion_mm: 1.0,
                motion_deg: 1.0,
                jerks: 2,
                amplitude: 0.04,
                // |rotation| ≈ 1.4°, |translation| ≈ 2.4 mm.
                session_pose: [1.1 * deg, -0.7 * deg, 0.5 * deg, 1.6, -1.4, 1.2],
                seed: 101,
            },
            "sim-02" => SubjectProfile {
                name: name.into(),
                voxels: 2500,
                layout: PrfLayout {
                    eccentricity_power: 1.3,
                    size_min: 0.1,
                    size_slope: 0.4,
                    size_max: 0.8,
                    channels_per_voxel: 2,
                    channel_preference: [1.5, 2.0, 2.0, 0.5, 0.5, 0.5, 0.5],
                    ..PrfLayout::default()
                },
                response_noise: 0.5,
                thermal_noise: 0.025,
                physio: PhysioSpec {
                    respiration: 0.005,
                    cardiac: 0.003,
                    low_freq: 0.006,
                    ..PhysioSpec::default()
                },
                motion_mm: 1.5,
                motion_deg: 1.5,
                jerks: 3,
                amplitude: 0.02,
                session_pose: [-1.5 * deg, 1.2 * deg, -deg, -2.5, 2.0, -1.5],
                seed: 202,
            },
            "sim-03" => SubjectProfile {
                name: name.into(),
                voxels: 1500,
                layout: PrfLayout {
                    eccentricity_power: 2.0,
                    size_min: 0.04,
                    size_slope: 0.25,
                    size_max: 0.45,
                    channels_per_voxel: 4,
                    channel_preference: [1.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0],
                    positive_fraction: 0.65,
                    ..PrfLayout::default()
                },
                response_noise: 0.4,
                thermal_noise: 0.03,
                physio: PhysioSpec {
                    respiration: 0.004,
                    cardiac: 0.004,
                    low_freq: 0.005,
                    ..PhysioSpec::default()
                },
                motion_mm: 2.5,
                motion_deg: 2.0,
                jerks: 5,
                amplitude: 0.03,
                session_pose: [2.0 * deg, 0.8 * deg, 1.5 * deg, 1.0, 3.0, 2.5],
                seed: 303,
            },
            _ => return None,
        };
        Some(p)
    }

    /// The subject's visual cortex.
    pub fn cortex(&self) -> Result<VisualCortex, SimError> {
        VisualCortex::new(self.voxels, &self.layout, self.seed)
    }

    /// `base` with this subject's noise, physiology and motion; a
    /// `later_session` also gets the subject's session pose (a calibration
    /// session is at pose zero). The session seed stays `base`'s.
    pub fn spec(&self, base: SynthSpec, later_session: bool) -> SynthSpec {
        let motion = MotionModel::within(self.motion_mm, self.motion_deg, self.jerks);
        SynthSpec {
            noise: self.thermal_noise,
            physio: self.physio.clone(),
            motion,
            head_pose: if later_session {
                self.session_pose
            } else {
                [0.0; 6]
            },
            ..base
        }
    }

    /// Stimulus patterns of this subject over `voxels` (calibration-grid
    /// indices, one per cortex voxel): the standardised `responses`, the
    /// subject's amplitude and trial-to-trial noise. The noise is drawn from
    /// `session_seed`, so two sessions do not share it.
    pub fn patterns(
        &self,
        voxels: Vec<usize>,
        responses: HashMap<String, Vec<f32>>,
        session_seed: u64,
    ) -> Result<StimulusPatterns, SimError> {
        StimulusPatterns::new(voxels, responses, self.amplitude)?
            .with_response_noise(self.response_noise, mix_seed(session_seed, self.seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3×h×w image from a function of (row, col) → rgb.
    fn image(h: usize, w: usize, f: impl Fn(usize, usize) -> [f32; 3]) -> Vec<f32> {
        let mut out = vec![0.0; 3 * h * w];
        for r in 0..h {
            for c in 0..w {
                let v = f(r, c);
                for (ch, x) in v.iter().enumerate() {
                    out[ch * h * w + r * w + c] = *x;
                }
            }
        }
        out
    }

    fn one_channel(f: usize) -> [f32; N_FEATURES] {
        let mut t = [0.0; N_FEATURES];
        t[f] = 1.0;
        t
    }

    #[test]
    fn a_luminance_voxel_sees_light_in_its_prf() {
        let left = Prf {
            x: -0.5,
            y: 0.0,
            size: 0.15,
        };
        let right = Prf { x: 0.5, ..left };
        let cortex = VisualCortex::from_parts(vec![left, right], vec![one_channel(0); 2]).unwrap();
        let chw = (3, 64, 64);
        let bright_left = image(64, 64, |_, c| [if c < 32 { 0.9 } else { 0.1 }; 3]);
        let bright_right = image(64, 64, |_, c| [if c < 32 { 0.1 } else { 0.9 }; 3]);
        let a = cortex.response(&bright_left, chw).unwrap();
        let b = cortex.response(&bright_right, chw).unwrap();
        assert!(a[0] > b[0] + 0.5, "left voxel: {} vs {}", a[0], b[0]);
        assert!(b[1] > a[1] + 0.5, "right voxel: {} vs {}", b[1], a[1]);
    }

    #[test]
    fn colour_and_orientation_channels_respond_to_their_feature() {
        let centre = Prf {
            x: 0.0,
            y: 0.0,
            size: 0.3,
        };
        let cortex = VisualCortex::from_parts(
            vec![centre; N_FEATURES],
            (0..N_FEATURES).map(one_channel).collect(),
        )
        .unwrap();
        let chw = (3, 64, 64);
        let red = cortex
            .response(&image(64, 64, |_, _| [0.8, 0.2, 0.2]), chw)
            .unwrap();
        let green = cortex
            .response(&image(64, 64, |_, _| [0.2, 0.8, 0.2]), chw)
            .unwrap();
        let blue = cortex
            .response(&image(64, 64, |_, _| [0.2, 0.2, 0.8]), chw)
            .unwrap();
        assert!(red[1] > 0.5 && green[1] < -0.5, "{} {}", red[1], green[1]);
        assert!(blue[2] > 0.5 && red[2] < 0.0, "{} {}", blue[2], red[2]);
        // Flat images carry no oriented energy.
        assert!(red[3..].iter().all(|v| v.abs() < 1e-4), "{:?}", &red[3..]);
        // Luminance varying left–right (vertical stripes, period 4 px)
        // drives 0°, varying top–bottom drives 90°.
        let grating = |along_x: bool| {
            image(64, 64, move |r, c| {
                let u = if along_x { c } else { r } as f32;
                [0.5 + 0.4 * (std::f32::consts::TAU * u / 4.0).cos(); 3]
            })
        };
        let vertical = cortex.response(&grating(true), chw).unwrap();
        let horizontal = cortex.response(&grating(false), chw).unwrap();
        assert!(vertical[3] > 4.0 * vertical[5], "{:?}", &vertical[3..]);
        assert!(
            horizontal[5] > 4.0 * horizontal[3],
            "{:?}",
            &horizontal[3..]
        );
        // Unit-amplitude gratings give an energy of about 1 (0.4² here).
        let energy = vertical[3] / FEATURE_GAIN[3];
        assert!((energy - 0.16).abs() < 0.03, "{energy}");
        // The diagonals sit in between.
        assert!(vertical[4] < vertical[3] && vertical[4] > vertical[5]);
    }

    #[test]
    fn pooling_on_the_pyramid_matches_full_resolution() {
        let cortex = VisualCortex::new(300, &PrfLayout::default(), 4).unwrap();
        let (h, w) = (64, 64);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let images: Vec<Vec<f32>> = (0..12)
            .map(|_| {
                // Random blobs: smooth enough for pooling to matter.
                let (cx, cy): (f32, f32) =
                    (rng.random_range(0.0..64.0), rng.random_range(0.0..64.0));
                let col: [f32; 3] = [
                    rng.random_range(0.0..1.0),
                    rng.random_range(0.0..1.0),
                    rng.random_range(0.0..1.0),
                ];
                image(h, w, |r, c| {
                    let d2 = (r as f32 - cy).powi(2) + (c as f32 - cx).powi(2);
                    let m = (-d2 / 200.0).exp();
                    col.map(|v| 0.2 + m * v * 0.7)
                })
            })
            .collect();
        let unit = 0.5 * 64.0;
        let mut worst = 1.0f64;
        for v in 0..cortex.voxels() {
            let p = cortex.prf(v).unwrap();
            let t = cortex.tuning(v).unwrap();
            let (mut fast, mut exact) = (Vec::new(), Vec::new());
            for img in &images {
                fast.push(cortex.response(img, (3, h, w)).unwrap()[v] as f64);
                let maps = features(img, (3, h, w)).unwrap();
                let (mut num, mut den) = ([0.0f64; N_FEATURES], 0.0);
                for r in 0..h {
                    for c in 0..w {
                        let x = (c as f64 + 0.5 - 32.0) / unit;
                        let y = (r as f64 + 0.5 - 32.0) / unit;
                        let g =
                            (-0.5 * ((x - p.x).powi(2) + (y - p.y).powi(2)) / p.size.powi(2)).exp();
                        den += g;
                        for (f, acc) in num.iter_mut().enumerate() {
                            *acc += g * maps.channel(f)[r * w + c] as f64;
                        }
                    }
                }
                exact.push(
                    (0..N_FEATURES)
                        .map(|f| t[f] as f64 * FEATURE_GAIN[f] as f64 * num[f] / den)
                        .sum(),
                );
            }
            worst = worst.min(correlation(&fast, &exact));
        }
        assert!(worst > 0.98, "worst correlation {worst}");
    }

    fn bank() -> (std::path::PathBuf, Vec<String>) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx/demo/bank");
        let ids = std::fs::read_to_string(dir.join("ids.txt"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        (dir.join("images"), ids)
    }

    #[test]
    fn bank_responses_are_standardised_and_image_specific() {
        let (dir, ids) = bank();
        let images = load_images(&dir, &ids).unwrap();
        assert_eq!(images.len(), ids.len());
        let cortex = VisualCortex::new(500, &PrfLayout::default(), 11).unwrap();
        let resp = cortex.responses(&images).unwrap();
        assert_eq!(resp.len(), ids.len());
        let n = ids.len() as f64;
        let live = (0..cortex.voxels())
            .filter(|&v| {
                let col: Vec<f64> = ids.iter().map(|id| resp[id][v] as f64).collect();
                let mean = col.iter().sum::<f64>() / n;
                let sd = (col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
                assert!(mean.abs() < 1e-4, "voxel {v}: mean {mean}");
                assert!(sd == 0.0 || (sd - 1.0).abs() < 1e-4, "voxel {v}: sd {sd}");
                sd > 0.0
            })
            .count();
        assert_eq!(live, cortex.voxels(), "every voxel sees the bank vary");
        // Different images evoke different patterns: image–image
        // correlations spread out instead of all being near ±1.
        let pattern = |id: &String| resp[id].iter().map(|&x| x as f64).collect::<Vec<_>>();
        let (p0, p1, p2) = (pattern(&ids[0]), pattern(&ids[1]), pattern(&ids[2]));
        assert!(correlation(&p0, &p1).abs() < 0.9 && correlation(&p0, &p2).abs() < 0.9);
        // The same image loaded again gives the same raw response.
        let (_, img, chw) = &images[3];
        assert_eq!(
            cortex.response(img, *chw).unwrap(),
            cortex.response(img, *chw).unwrap()
        );
    }

    #[test]
    fn a_missing_image_is_named_and_bad_sets_are_refused() {
        let (dir, _) = bank();
        let err = load_images(&dir, &["no-such-image".to_string()]).unwrap_err();
        assert!(err.to_string().contains("no-such-image.png"), "{err}");
        let cortex = VisualCortex::new(10, &PrfLayout::default(), 1).unwrap();
        let img = (String::from("a"), vec![0.5f32; 3 * 8 * 8], (3, 8, 8));
        assert!(cortex.responses(std::slice::from_ref(&img)).is_err());
        assert!(cortex.responses(&[img.clone(), img.clone()]).is_err());
        assert!(cortex.response(&img.1, (3, 8, 9)).is_err());
        let bad = PrfLayout {
            channels_per_voxel: 0,
            ..PrfLayout::default()
        };
        assert!(VisualCortex::new(10, &bad, 1).is_err());
    }

    #[test]
    fn layout_is_retinotopic_and_seeded() {
        let layout = PrfLayout::default();
        let a = VisualCortex::new(2000, &layout, 7).unwrap();
        let b = VisualCortex::new(2000, &layout, 7).unwrap();
        let c = VisualCortex::new(2000, &layout, 8).unwrap();
        assert_eq!(a.prfs, b.prfs);
        assert_eq!(a.tuning, b.tuning);
        assert_ne!(a.prfs, c.prfs);
        assert_ne!(a.tuning, c.tuning);
        let ecc: Vec<f64> = a.prfs.iter().map(|p| p.x.hypot(p.y)).collect();
        let size: Vec<f64> = a.prfs.iter().map(|p| p.size).collect();
        // Uniform over the disc would put a quarter within half the radius.
        let central = ecc
            .iter()
            .filter(|e| **e < 0.5 * layout.max_eccentricity)
            .count();
        assert!(central as f64 > 0.4 * ecc.len() as f64, "{central}");
        assert!(ecc.iter().all(|e| *e <= layout.max_eccentricity + 1e-12));
        assert!(
            correlation(&ecc, &size) > 0.5,
            "{}",
            correlation(&ecc, &size)
        );
        assert!(
            size.iter()
                .all(|s| (layout.size_min..=layout.size_max).contains(s))
        );
        for t in &a.tuning {
            assert_eq!(
                t.iter().filter(|w| **w != 0.0).count(),
                layout.channels_per_voxel
            );
        }
    }

    #[test]
    fn presets_differ() {
        let subjects: Vec<SubjectProfile> = SubjectProfile::PRESETS
            .iter()
            .map(|n| SubjectProfile::preset(n).unwrap())
            .collect();
        assert!(SubjectProfile::preset("sim-99").is_none());
        for (i, a) in subjects.iter().enumerate() {
            for b in &subjects[i + 1..] {
                assert_ne!(a.voxels, b.voxels);
                assert_ne!(a.layout, b.layout);
                assert_ne!(a.thermal_noise, b.thermal_noise);
                assert_ne!(a.response_noise, b.response_noise);
                assert_ne!((a.motion_mm, a.jerks), (b.motion_mm, b.jerks));
                assert_ne!(a.session_pose, b.session_pose);
                assert_ne!(a.seed, b.seed);
            }
            let cortex = a.cortex().unwrap();
            assert_eq!(cortex.voxels(), a.voxels);
        }
        let s1 = &subjects[0];
        assert!(s1.amplitude > 0.0 && s1.amplitude < 0.1, "{}", s1.amplitude);
        let rot = s1.session_pose[..3]
            .iter()
            .map(|r| r * r)
            .sum::<f64>()
            .sqrt()
            .to_degrees();
        let shift = s1.session_pose[3..]
            .iter()
            .map(|t| t * t)
            .sum::<f64>()
            .sqrt();
        assert!((1.0..=2.0).contains(&rot), "{rot}");
        assert!((2.0..=3.0).contains(&shift), "{shift}");
        // A later session is posed, calibration is not; the base spec's
        // session settings survive.
        let base = SynthSpec {
            runs: 3,
            seed: 42,
            ..SynthSpec::default()
        };
        let cal = s1.spec(base.clone(), false);
        let live = s1.spec(base, true);
        assert_eq!(cal.head_pose, [0.0; 6]);
        assert_eq!(live.head_pose, s1.session_pose);
        assert_eq!((live.runs, live.seed), (3, 42));
        assert_eq!(live.noise, s1.thermal_noise);
        assert_eq!(live.physio, s1.physio);
    }

    fn correlation(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        cov / (va * vb).sqrt()
    }
}
