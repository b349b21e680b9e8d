//! Retrieval against a precomputed candidate bank.
//!
//! In: the bank (`(N, E)` embeddings `.npy`, N ids, optional `<id>.png`
//! images) and a query embedding. Out: the top-k candidates by cosine
//! similarity, best first, ties broken by bank order so a ranking is
//! reproducible.
//!
//! At MindEye2's size (425,984 values per candidate) scoring is a pass over
//! hundreds of MB per trial, so it is memory-bound: the bank may be kept in
//! float16 (half the bytes; converted with F16C where the CPU has it),
//! products are accumulated in float32 lanes the compiler vectorises, each
//! block of 4,096 is summed into float64, and large banks are split across
//! cores.

use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::error::ModelError;
use super::manifest::{BankPrecision, RetrievalSpec};
use crate::formats::npy::Elem;

/// One retrieved candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Its image id.
    pub id: String,
    /// Row in the bank.
    pub index: usize,
    /// Cosine similarity to the query.
    pub score: f32,
}

/// How the bank's rows are kept in memory.
#[derive(Debug, Clone)]
enum Rows {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// The candidate bank, rows L2-normalised once at load.
#[derive(Debug, Clone)]
pub struct Bank {
    rows: Rows,
    dim: usize,
    ids: Vec<String>,
    images: Option<PathBuf>,
    threads: usize,
}

/// Values per block: one block of converted f16 fits in L1 beside the query's.
const BLOCK: usize = 4096;
/// Banks smaller than this are scored on one thread (spawning costs more).
const PARALLEL_BYTES: usize = 8 << 20;

/// Σ a·b with float32 lanes per block, blocks summed in float64.
fn dot_f32(a: &[f32], b: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
        return unsafe { simd::dot_f32(a, b) };
    }
    let mut total = 0.0f64;
    for (ab, bb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        total += dot_block(ab, bb) as f64;
    }
    total
}

fn dot_block(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

fn dot_f16(a: &[f16], b: &[f32], buf: &mut [f32; BLOCK]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: as in dot_f32.
        return unsafe { simd::dot_f16(a, b) };
    }
    let mut total = 0.0f64;
    for (ab, bb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let conv = &mut buf[..ab.len()];
        ab.convert_to_f32_slice(conv);
        total += dot_block(conv, bb) as f64;
    }
    total
}

/// AVX2 kernels, chosen at run time: the portable loops above vectorise
/// only to the build's baseline (SSE2), and without F16C the float16
/// conversion, not memory, sets the speed (4× the time of one read of the
/// bank, measured by `benches/retrieval.rs`).
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use half::f16;

    use super::BLOCK;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 f32, an unaligned store is allowed.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes.iter().sum()
    }

    /// Σ load(i)·b[i] over blocks of [`BLOCK`], 4 × 8 lanes at a time,
    /// each block summed into float64; `load(at)` gives the 8 values of `a`
    /// from `at` and `scalar(k)` one, for the tail.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C (all kernels need the same
    /// set, so the loads inline into this loop).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn blocks(
        n: usize,
        b: &[f32],
        load: impl Fn(usize) -> __m256,
        scalar: impl Fn(usize) -> f32,
    ) -> f64 {
        let mut total = 0f64;
        let mut i = 0;
        while i < n {
            let end = (i + BLOCK).min(n);
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut j = i;
            while j + 32 <= end {
                for (k, acc) in acc.iter_mut().enumerate() {
                    let at = j + 8 * k;
                    // SAFETY: at + 8 ≤ end ≤ n ≤ b.len().
                    let y = unsafe { _mm256_loadu_ps(b.as_ptr().add(at)) };
                    *acc = _mm256_fmadd_ps(load(at), y, *acc);
                }
                j += 32;
            }
            let mut block = hsum(_mm256_add_ps(
                _mm256_add_ps(acc[0], acc[1]),
                _mm256_add_ps(acc[2], acc[3]),
            ));
            for (k, y) in b.iter().enumerate().take(end).skip(j) {
                block += scalar(k) * y;
            }
            total += block as f64;
            i = end;
        }
        total
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f64 {
        let n = a.len().min(b.len());
        // SAFETY: blocks() loads 8 values at `at` only when at + 8 ≤ n, on
        // a CPU with the features this function requires.
        unsafe { blocks(n, b, |at| _mm256_loadu_ps(a.as_ptr().add(at)), |k| a[k]) }
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(a: &[f16], b: &[f32]) -> f64 {
        let n = a.len().min(b.len());
        // SAFETY: as in dot_f32; 8 f16 are one unaligned 128-bit load.
        unsafe {
            blocks(
                n,
                b,
                |at| _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(at).cast())),
                |k| f16::to_f32(a[k]),
            )
        }
    }
}

fn normalise(row: &[f64]) -> Result<Vec<f64>, ()> {
    let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(());
    }
    Ok(row.iter().map(|v| v / norm).collect())
}

impl Bank {
    /// Build from normalisable rows (tests, generated benches), kept in float32.
    pub fn from_rows(rows: Vec<f32>, dim: usize, ids: Vec<String>) -> Result<Bank, String> {
        Bank::build(rows.iter().map(|&v| v as f64), dim, ids, false)
    }

    /// As [`Bank::from_rows`], kept in float16.
    pub fn from_rows_f16(rows: Vec<f32>, dim: usize, ids: Vec<String>) -> Result<Bank, String> {
        Bank::build(rows.iter().map(|&v| v as f64), dim, ids, true)
    }

    fn build(
        values: impl ExactSizeIterator<Item = f64>,
        dim: usize,
        ids: Vec<String>,
        half: bool,
    ) -> Result<Bank, String> {
        if dim == 0 || values.len() != dim * ids.len() {
            return Err(format!(
                "{} values for {} ids of dimension {dim}",
                values.len(),
                ids.len()
            ));
        }
        let n = ids.len();
        let mut f32s = Vec::new();
        let mut f16s = Vec::new();
        if half {
            f16s.reserve_exact(n * dim);
        } else {
            f32s.reserve_exact(n * dim);
        }
        let mut row = Vec::with_capacity(dim);
        let mut values = values;
        for (r, id) in ids.iter().enumerate() {
            row.clear();
            row.extend(values.by_ref().take(dim));
            let unit =
                normalise(&row).map_err(|()| format!("row {r} ({id}) is zero or not finite"))?;
            if half {
                f16s.extend(unit.iter().map(|&v| f16::from_f64(v)));
            } else {
                f32s.extend(unit.iter().map(|&v| v as f32));
            }
        }
        let rows = if half {
            Rows::F16(f16s)
        } else {
            Rows::F32(f32s)
        };
        let bytes = n * dim * if half { 2 } else { 4 };
        let threads = if bytes < PARALLEL_BYTES {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |p| p.get().min(16))
        };
        Ok(Bank {
            rows,
            dim,
            ids,
            images: None,
            threads,
        })
    }

    /// Score on at most `threads` threads (1: the caller's only).
    pub fn with_threads(mut self, threads: usize) -> Bank {
        self.threads = threads.max(1);
        self
    }

    /// Bytes the rows take in memory (what one scoring pass reads).
    pub fn bytes(&self) -> usize {
        match &self.rows {
            Rows::F32(r) => r.len() * 4,
            Rows::F16(r) => r.len() * 2,
        }
    }

    /// Whether the rows are kept in float16.
    pub fn is_f16(&self) -> bool {
        matches!(self.rows, Rows::F16(_))
    }

    /// Load the bank a manifest names; `dim` is the query length.
    pub fn load(spec: &RetrievalSpec, dim: usize) -> Result<Bank, ModelError> {
        let bank_err = |path: &Path, message: String| ModelError::Bank {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(&spec.embeddings).map_err(|source| ModelError::Io {
            path: spec.embeddings.clone(),
            source,
        })?;
        let raw =
            crate::formats::npy::decode_raw(&bytes).map_err(|m| bank_err(&spec.embeddings, m))?;
        let (n, e) = (raw.rows, raw.cols);
        if e != dim {
            return Err(bank_err(
                &spec.embeddings,
                format!("embeddings have {e} columns but the query (retrieval head) has {dim}"),
            ));
        }
        let text = std::fs::read_to_string(&spec.ids).map_err(|source| ModelError::Io {
            path: spec.ids.clone(),
            source,
        })?;
        let ids: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if ids.len() != n {
            return Err(bank_err(
                &spec.ids,
                format!(
                    "{} ids for {n} embedding rows in {}",
                    ids.len(),
                    spec.embeddings.display()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
            return Err(bank_err(&spec.ids, format!("id {dup} appears twice")));
        }
        if let Some(dir) = &spec.images
            && let Some(missing) = ids
                .iter()
                .find(|id| !dir.join(format!("{id}.png")).is_file())
        {
            return Err(bank_err(
                dir,
                format!("no image {missing}.png for bank id {missing}"),
            ));
        }
        let half = match spec.precision {
            Some(BankPrecision::Float16) => true,
            Some(BankPrecision::Float32) => false,
            None => raw.elem == Elem::F16,
        };
        let values = raw.values();
        let mut bank =
            Bank::build(values, dim, ids, half).map_err(|m| bank_err(&spec.embeddings, m))?;
        bank.images = spec.images.clone();
        Ok(bank)
    }

    /// Candidates in the bank.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The ids, in bank order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Where a candidate's image is, when the bank has images.
    pub fn image_path(&self, id: &str) -> Option<PathBuf> {
        self.images.as_ref().map(|d| d.join(format!("{id}.png")))
    }

    /// Row of an id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.ids.iter().position(|i| i == id)
    }

    /// Cosine similarity of `query` to every row, in bank order.
    pub fn scores(&self, query: &[f32]) -> Vec<f32> {
        let qn = dot_f32(query, query).sqrt();
        let inv = if qn > 0.0 && qn.is_finite() {
            1.0 / qn
        } else {
            0.0
        };
        let n = self.ids.len();
        let mut out = vec![0f32; n];
        if query.len() != self.dim || n == 0 {
            return out;
        }
        let threads = self.threads.min(n).max(1);
        let per = n.div_ceil(threads);
        let score = |first: usize, out: &mut [f32]| {
            let mut buf = [0f32; BLOCK];
            for (k, o) in out.iter_mut().enumerate() {
                let r = first + k;
                let span = r * self.dim..(r + 1) * self.dim;
                let dot = match &self.rows {
                    Rows::F32(rows) => dot_f32(&rows[span], query),
                    Rows::F16(rows) => dot_f16(&rows[span], query, &mut buf),
                };
                *o = (dot * inv) as f32;
            }
        };
        if threads == 1 {
            score(0, &mut out);
        } else {
            std::thread::scope(|s| {
                for (c, chunk) in out.chunks_mut(per).enumerate() {
                    let score = &score;
                    s.spawn(move || score(c * per, chunk));
                }
            });
        }
        out
    }

    /// The `k` best candidates, best first (ties: lower bank index first).
    /// A query that is zero or not finite scores 0 everywhere and so
    /// returns the first `k` rows with score 0, never NaN rankings.
    pub fn top_k(&self, query: &[f32], k: usize) -> Vec<Candidate> {
        self.top_k_of(&self.scores(query), k)
    }

    /// [`Bank::top_k`] from scores already computed ([`Bank::scores`]): at
    /// MindEye2's width one scoring pass reads the whole bank, so a trial
    /// scores once and ranks from that.
    pub fn top_k_of(&self, scores: &[f32], k: usize) -> Vec<Candidate> {
        let mut ranked: Vec<(usize, f32)> = scores
            .iter()
            .map(|&s| if s.is_finite() { s } else { 0.0 })
            .enumerate()
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked
            .into_iter()
            .take(k)
            .map(|(index, score)| Candidate {
                id: self.ids[index].clone(),
                index,
                score,
            })
            .collect()
    }

    /// 1-based rank of `id` for `query` (None when not in the bank).
    pub fn rank_of(&self, query: &[f32], id: &str) -> Option<usize> {
        self.rank_in(&self.scores(query), id)
    }

    /// [`Bank::rank_of`] from scores already computed.
    pub fn rank_in(&self, scores: &[f32], id: &str) -> Option<usize> {
        let target = self.index_of(id)?;
        let s = *scores.get(target)?;
        Some(
            1 + scores
                .iter()
                .enumerate()
                .filter(|&(i, &v)| v > s || (v == s && i < target))
                .count(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bank() -> Bank {
        // Four 3-D candidates at distinct angles from the x axis.
        let rows = vec![
            1.0, 0.0, 0.0, //
            0.0, 2.0, 0.0, //
            3.0, 3.0, 0.0, //
            1.0, 0.2, 0.0,
        ];
        Bank::from_rows(rows, 3, ["a", "b", "c", "d"].map(String::from).to_vec()).unwrap()
    }

    #[test]
    fn ranks_by_cosine_not_by_length() {
        let b = bank();
        let top = b.top_k(&[10.0, 0.0, 0.0], 4);
        let ids: Vec<&str> = top.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "d", "c", "b"]);
        assert!((top[0].score - 1.0).abs() < 1e-6);
        assert!((top[2].score - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(b.rank_of(&[10.0, 0.0, 0.0], "c"), Some(3));
        assert_eq!(b.rank_of(&[0.0, 1.0, 0.0], "b"), Some(1));
    }

    #[test]
    fn ties_keep_bank_order_and_zero_queries_do_not_nan() {
        let b = bank();
        let top = b.top_k(&[0.0, 0.0, 1.0], 4);
        let ids: Vec<&str> = top.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
        let top = b.top_k(&[f32::NAN, 0.0, 0.0], 2);
        assert!(top.iter().all(|c| c.score == 0.0));
        assert_eq!(top.len(), 2);
    }

    #[test]
    fn rejects_zero_rows_and_bad_sizes() {
        assert!(Bank::from_rows(vec![0.0; 3], 3, vec!["z".into()]).is_err());
        assert!(Bank::from_rows(vec![1.0; 4], 3, vec!["z".into()]).is_err());
    }

    fn random_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect()
    }

    fn exact_cosines(rows: &[f32], dim: usize, q: &[f32]) -> Vec<f64> {
        let qn = q.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        rows.chunks(dim)
            .map(|r| {
                let rn = r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
                let d: f64 = r.iter().zip(q).map(|(&a, &b)| a as f64 * b as f64).sum();
                d / rn / qn
            })
            .collect()
    }

    #[test]
    fn float32_lanes_match_float64_at_mindeye2_width() {
        // 425,984 = 256 × 1,664 values: the width where a naive f32 sum drifts.
        let dim = 256 * 1664;
        let rows = random_rows(3, dim, 1);
        let q = random_rows(1, dim, 2);
        let exact = exact_cosines(&rows, dim, &q);
        let ids: Vec<String> = (0..3).map(|i| i.to_string()).collect();
        let got = Bank::from_rows(rows, dim, ids).unwrap().scores(&q);
        for (g, e) in got.iter().zip(&exact) {
            assert!((*g as f64 - e).abs() < 1e-6, "{g} vs {e}");
        }
    }

    #[test]
    fn float16_bank_keeps_the_ranking_and_threads_change_nothing() {
        let (n, dim) = (40, 5000);
        let rows = random_rows(n, dim, 3);
        // The query is a noisy copy of row 17: a clear winner, a spread below it.
        let mut q: Vec<f32> = rows[17 * dim..18 * dim].to_vec();
        for (v, e) in q.iter_mut().zip(random_rows(1, dim, 4)) {
            *v += e;
        }
        let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        let exact = exact_cosines(&rows, dim, &q);
        let b32 = Bank::from_rows(rows.clone(), dim, ids.clone()).unwrap();
        let b16 = Bank::from_rows_f16(rows, dim, ids).unwrap();
        assert!(b16.is_f16() && !b32.is_f16());
        assert_eq!(b16.bytes() * 2, b32.bytes());
        let s16 = b16.scores(&q);
        for (g, e) in s16.iter().zip(&exact) {
            // f16 storage: ~3 significant digits per value, averaged over 5,000.
            assert!((*g as f64 - e).abs() < 1e-3, "{g} vs {e}");
        }
        assert_eq!(b16.top_k(&q, 1)[0].id, "c17");
        let one = b16.clone().with_threads(1).scores(&q);
        let four = b16.with_threads(4).scores(&q);
        assert_eq!(one, four);
        assert_eq!(b32.clone().with_threads(3).scores(&q), b32.scores(&q));
    }
}
