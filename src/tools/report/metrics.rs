//! Image and retrieval metrics, MindEye2's evaluation conventions.
//!
//! In: channel-major `[C, H, W]` images in [0, 1] (as
//! [`crate::formats::png::read_png`] gives them), score matrices, query and
//! candidate embeddings, latency samples. Out: PixCorr, SSIM, two-way
//! identification, top-1 retrieval counts and p50/p95/max, as plain numbers.
//!
//! PixCorr is the Pearson correlation of the flattened images (all
//! channels). SSIM follows scikit-image's `structural_similarity(...,
//! gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
//! data_range=1.0)` on `rgb2gray` images; tests/report.rs checks both against
//! scikit-image (fixtures from tests/parity/ssim_fixtures.py).

/// Gaussian window of SSIM: σ = 1.5 truncated at 3.5σ, as scipy's
/// `gaussian_filter` builds it (radius `int(3.5 * 1.5 + 0.5)` = 5).
const SIGMA: f64 = 1.5;
const TRUNCATE: f64 = 3.5;
const RADIUS: usize = (TRUNCATE * SIGMA + 0.5) as usize;
const TAPS: usize = 2 * RADIUS + 1;
const K1: f64 = 0.01;
const K2: f64 = 0.03;
/// Both metrics are on [0, 1] images (`data_range=1.0`).
const DATA_RANGE: f64 = 1.0;

/// skimage's `rgb2gray` weights (ITU-R BT.709 luma).
const GREY: [f64; 3] = [0.2125, 0.7154, 0.0721];

/// Pearson correlation of two equally long arrays, in f64. NaN when the
/// lengths differ, they are empty, or either is constant (as numpy's
/// `corrcoef` gives for a constant array).
pub fn pixcorr(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::NAN;
    }
    let n = a.len() as f64;
    let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt()
}

/// Greyscale `[H, W]` of a `[C, H, W]` image: skimage's `rgb2gray` for three
/// channels (or more: the first three), the image itself for one. Empty when
/// `image` is shorter than `C * H * W`.
pub fn to_grey(image: &[f32], (c, h, w): (usize, usize, usize)) -> Vec<f32> {
    let plane = h * w;
    if c == 0 || image.len() < c * plane {
        return Vec::new();
    }
    if c < 3 {
        return image[..plane].to_vec();
    }
    let (r, rest) = image.split_at(plane);
    let (g, rest) = rest.split_at(plane);
    let b = &rest[..plane];
    r.iter()
        .zip(g)
        .zip(b)
        .map(|((&r, &g), &b)| (GREY[0] * r as f64 + GREY[1] * g as f64 + GREY[2] * b as f64) as f32)
        .collect()
}

// The decoder blends its low-level image with it too, so it lives there.
pub use crate::decode::image::resize_bilinear;

fn window() -> [f64; TAPS] {
    let mut k = [0.0; TAPS];
    for (i, v) in k.iter_mut().enumerate() {
        let x = i as f64 - RADIUS as f64;
        *v = (-0.5 / (SIGMA * SIGMA) * x * x).exp();
    }
    let sum: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    k
}

/// Gaussian-filtered `x` (`[h, w]`) on the interior only: the pixels at
/// least `RADIUS` from every edge, `[h - 2R, w - 2R]`.
///
/// skimage filters the whole image with scipy's 'reflect' padding and then
/// crops `(win_size - 1) / 2` = `RADIUS` pixels from every side before
/// averaging, so the cropped pixels are exactly those whose window never
/// reaches the padding: computing the interior alone gives the same numbers
/// whatever the padding mode, at a fraction of the cost.
fn filter_interior(x: &[f64], h: usize, w: usize, k: &[f64; TAPS]) -> Vec<f64> {
    filter_rows(h, w, k, |y, row| {
        for (t, &kt) in k.iter().enumerate() {
            let src = &x[(y + t) * w..(y + t + 1) * w];
            for (o, &s) in row.iter_mut().zip(src) {
                *o += kt * s;
            }
        }
    })
}

/// [`filter_interior`] of the product `a * b`, without materialising it.
fn filter_interior_product(a: &[f64], b: &[f64], h: usize, w: usize, k: &[f64; TAPS]) -> Vec<f64> {
    filter_rows(h, w, k, |y, row| {
        for (t, &kt) in k.iter().enumerate() {
            let range = (y + t) * w..(y + t + 1) * w;
            for ((o, &p), &q) in row.iter_mut().zip(&a[range.clone()]).zip(&b[range]) {
                *o += kt * p * q;
            }
        }
    })
}

/// The separable filter one output row at a time: `vertical(y, row)` adds
/// the column pass (axis 0 first, as scipy goes) for interior row `y` into a
/// zeroed full-width `row`; the row pass follows. One row of scratch keeps
/// the column pass in cache for the row pass.
fn filter_rows(
    h: usize,
    w: usize,
    k: &[f64; TAPS],
    mut vertical: impl FnMut(usize, &mut [f64]),
) -> Vec<f64> {
    let (oh, ow) = (h - 2 * RADIUS, w - 2 * RADIUS);
    let mut row = vec![0.0; w];
    let mut out = vec![0.0; oh * ow];
    for (y, out_row) in out.chunks_exact_mut(ow).enumerate() {
        row.fill(0.0);
        vertical(y, &mut row);
        for (o, xo) in out_row.iter_mut().zip(0..) {
            *o = k.iter().zip(&row[xo..xo + TAPS]).map(|(a, b)| a * b).sum();
        }
    }
    out
}

/// One greyscale image with the filtered moments SSIM needs from it alone,
/// so that an image compared with many others is filtered once.
#[derive(Debug, Clone)]
pub struct SsimImage {
    h: usize,
    w: usize,
    x: Vec<f64>,
    /// Local mean on the interior.
    mu: Vec<f64>,
    /// Local mean of the square on the interior.
    sq: Vec<f64>,
}

impl SsimImage {
    /// `None` when `grey` is not `h * w` long or the image is smaller than
    /// the 11-pixel window (scikit-image refuses those too).
    pub fn new(grey: &[f32], h: usize, w: usize) -> Option<SsimImage> {
        if grey.len() != h * w || h < TAPS || w < TAPS {
            return None;
        }
        let k = window();
        let x: Vec<f64> = grey.iter().map(|&v| v as f64).collect();
        let mu = filter_interior(&x, h, w, &k);
        let squares: Vec<f64> = x.iter().map(|v| v * v).collect();
        let sq = filter_interior(&squares, h, w, &k);
        Some(SsimImage { h, w, x, mu, sq })
    }

    /// Mean SSIM of `self` and `other` (symmetric); NaN when their sizes
    /// differ.
    pub fn ssim(&self, other: &SsimImage) -> f64 {
        if (self.h, self.w) != (other.h, other.w) {
            return f64::NAN;
        }
        let k = window();
        let xy = filter_interior_product(&self.x, &other.x, self.h, self.w, &k);
        let c1 = (K1 * DATA_RANGE).powi(2);
        let c2 = (K2 * DATA_RANGE).powi(2);
        let mut sum = 0.0;
        let moments = self
            .mu
            .iter()
            .zip(&self.sq)
            .zip(other.mu.iter().zip(&other.sq));
        for (&xy, ((&ux, &sx), (&uy, &sy))) in xy.iter().zip(moments) {
            let vx = sx - ux * ux;
            let vy = sy - uy * uy;
            let vxy = xy - ux * uy;
            let a = (2.0 * ux * uy + c1) * (2.0 * vxy + c2);
            let d = (ux * ux + uy * uy + c1) * (vx + vy + c2);
            sum += a / d;
        }
        sum / xy.len() as f64
    }
}

/// Mean SSIM of two greyscale `[h, w]` images, scikit-image's conventions
/// (see the module doc). NaN when either is not `h * w` long or the image
/// is smaller than 11 × 11.
pub fn ssim(a_grey: &[f32], b_grey: &[f32], h: usize, w: usize) -> f64 {
    match (SsimImage::new(a_grey, h, w), SsimImage::new(b_grey, h, w)) {
        (Some(a), Some(b)) => a.ssim(&b),
        _ => f64::NAN,
    }
}

/// Per trial `i`, the fraction of the other trials `j` (those for which
/// `same(i, j)` is false) with `scores[i][i] > scores[i][j]`; `None` for a
/// trial with nothing to compare against. `scores[i][j]` is
/// metric(recon_i, stim_j). A NaN score compares false, as in numpy.
pub fn two_way_rows(scores: &[Vec<f64>], same: impl Fn(usize, usize) -> bool) -> Vec<Option<f64>> {
    let n = scores.len();
    (0..n)
        .map(|i| {
            let row = &scores[i];
            let own = *row.get(i)?;
            let (mut wins, mut total) = (0usize, 0usize);
            for j in (0..n).filter(|&j| j != i && !same(i, j)) {
                total += 1;
                if row.get(j).is_some_and(|&other| own > other) {
                    wins += 1;
                }
            }
            (total > 0).then(|| wins as f64 / total as f64)
        })
        .collect()
}

/// Two-way identification: [`two_way_rows`] averaged over the trials that
/// have something to compare against (chance 0.5); NaN when none has.
pub fn two_way(scores: &[Vec<f64>], same: impl Fn(usize, usize) -> bool) -> f64 {
    mean(two_way_rows(scores, same).into_iter().flatten())
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

/// Cosine similarity; NaN when the lengths differ or either vector is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::NAN;
    }
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt()
}

/// Per query, whether the candidate with the highest cosine similarity is
/// `truth[q]` (on a tie, the first candidate wins). A query whose
/// similarities are all NaN (a NaN query, a length mismatch) is wrong, and
/// so is a truth index outside `candidates`.
pub fn top1_hits(queries: &[Vec<f32>], truth: &[usize], candidates: &[Vec<f32>]) -> Vec<bool> {
    queries
        .iter()
        .zip(truth)
        .map(|(q, &t)| {
            let mut best: Option<(usize, f64)> = None;
            for (k, c) in candidates.iter().enumerate() {
                let s = cosine(q, c);
                if s.is_finite() && best.is_none_or(|(_, b)| s > b) {
                    best = Some((k, s));
                }
            }
            best.is_some_and(|(k, _)| k == t)
        })
        .collect()
}

/// Top-1 retrieval among `candidates`: (correct, number of queries scored).
/// See [`top1_hits`]; only `min(queries, truth)` pairs are scored.
pub fn top1_among(
    queries: &[Vec<f32>],
    truth: &[usize],
    candidates: &[Vec<f32>],
) -> (usize, usize) {
    let hits = top1_hits(queries, truth, candidates);
    (hits.iter().filter(|&&h| h).count(), hits.len())
}

/// (p50, p95, max) of the finite samples by nearest rank on the sorted
/// values (index `round((n - 1) q)`, as the demo's summary does); NaN for
/// all three when there is none.
pub fn percentiles(samples: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95), at(1.0))
}
