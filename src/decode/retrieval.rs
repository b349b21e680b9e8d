//! Retrieval against a precomputed candidate bank.
//!
//! In: the bank (`(N, E)` embeddings `.npy`, N ids, optional `<id>.png`
//! images) and a query embedding. Out: the top-k candidates by cosine
//! similarity, best first, ties broken by bank order so a ranking is
//! reproducible.

use std::path::{Path, PathBuf};

use super::error::ModelError;
use super::manifest::RetrievalSpec;

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

/// The candidate bank, rows L2-normalised once at load.
#[derive(Debug, Clone)]
pub struct Bank {
    rows: Vec<f32>,
    dim: usize,
    ids: Vec<String>,
    images: Option<PathBuf>,
}

impl Bank {
    /// Build from normalisable rows (tests, generated benches).
    pub fn from_rows(rows: Vec<f32>, dim: usize, ids: Vec<String>) -> Result<Bank, String> {
        if dim == 0 || rows.len() != dim * ids.len() {
            return Err(format!(
                "{} values for {} ids of dimension {dim}",
                rows.len(),
                ids.len()
            ));
        }
        let mut rows = rows;
        for (r, row) in rows.chunks_mut(dim).enumerate() {
            let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            if !norm.is_finite() || norm == 0.0 {
                return Err(format!("row {r} ({}) is zero or not finite", ids[r]));
            }
            row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
        }
        Ok(Bank {
            rows,
            dim,
            ids,
            images: None,
        })
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
        let (values, n, e) =
            crate::formats::npy::decode_2d(&bytes).map_err(|m| bank_err(&spec.embeddings, m))?;
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
        let rows: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        let mut bank =
            Bank::from_rows(rows, dim, ids).map_err(|m| bank_err(&spec.embeddings, m))?;
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
        let qn = query
            .iter()
            .map(|&v| (v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let inv = if qn > 0.0 && qn.is_finite() {
            1.0 / qn
        } else {
            0.0
        };
        self.rows
            .chunks(self.dim)
            .map(|row| {
                let dot: f64 = row
                    .iter()
                    .zip(query)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                (dot * inv) as f32
            })
            .collect()
    }

    /// The `k` best candidates, best first (ties: lower bank index first).
    /// A query that is zero or not finite scores 0 everywhere and so
    /// returns the first `k` rows with score 0, never NaN rankings.
    pub fn top_k(&self, query: &[f32], k: usize) -> Vec<Candidate> {
        let mut scores: Vec<(usize, f32)> = self
            .scores(query)
            .into_iter()
            .map(|s| if s.is_finite() { s } else { 0.0 })
            .enumerate()
            .collect();
        scores.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scores
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
        let target = self.index_of(id)?;
        let scores = self.scores(query);
        let s = scores[target];
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
}
