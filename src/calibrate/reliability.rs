//! Reliability-based voxel selection for the adapter.
//!
//! In: betas (N trials × V voxels, row-major f32), the image shown on each
//! trial, and for the selection also the targets, the fold groups, the
//! candidate thresholds and the ridge options. Out: per-voxel reliability
//! (how well a voxel's response to an image repeats: the Pearson
//! correlation, over images shown at least twice, between the beta of the
//! first presentation and the mean beta of the later ones), and a
//! [`Selection`]: the threshold whose voxel set gives the best
//! cross-validated ridge fit, with the voxels it keeps.
//!
//! The selection never lets a fold's held-out rows choose its own voxels:
//! inside each fold, reliability is computed on the training rows only.

use std::collections::HashMap;

use nalgebra::DMatrix;

use super::ridge::{
    self, CvAccum, Form, Prepared, RidgeError, RidgeOptions, dual_fold, fold_rows, primal_fold,
};

/// Fewest images shown at least twice for a reliability to mean anything.
pub const MIN_REPEATED_IMAGES: usize = 5;

/// Fewest voxels a thresholded selection may keep (in every fold and on all
/// rows); thresholds that keep fewer are skipped, not scored.
pub const MIN_SELECTED_VOXELS: usize = 50;

/// Two mean R² closer than this are a tie, resolved towards more voxels.
pub const TIE_R2: f64 = 1e-9;

/// Why reliability or selection failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReliabilityError {
    /// The betas, images or targets do not fit together or hold NaN.
    #[error(transparent)]
    Ridge(#[from] RidgeError),
    /// Too few repeated images to correlate.
    #[error(
        "only {images} images shown at least twice{}; reliability needs at least {needed}",
        fold.map(|f| format!(" in the training rows of fold {f}")).unwrap_or_default()
    )]
    TooFewRepeats {
        /// Images with two or more presentations.
        images: usize,
        /// [`MIN_REPEATED_IMAGES`].
        needed: usize,
        /// The fold whose training rows were too few, if it was a fold.
        fold: Option<usize>,
    },
    /// A threshold that is not a finite number.
    #[error("reliability threshold {0} is not a finite number")]
    BadThreshold(f64),
}

/// Reliability of each voxel.
#[derive(Debug, Clone, PartialEq)]
pub struct Reliability {
    /// Per voxel, in −1..1 (0 for a voxel whose betas do not vary).
    pub per_voxel: Vec<f64>,
    /// Images shown at least twice, which the correlations are over.
    pub images: usize,
}

/// The outcome of [`select_voxels_cv`].
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// The chosen threshold (`None`: keep every voxel).
    pub threshold: Option<f64>,
    /// Kept column indices, ascending (reliability on all rows above the
    /// threshold).
    pub voxels: Vec<usize>,
    /// Reliability of every voxel on all rows.
    pub reliability: Vec<f64>,
    /// Repeated images the all-row reliability is over.
    pub images: usize,
    /// Every scored candidate: threshold, voxels it keeps on all rows, mean
    /// held-out R² over targets.
    pub scores: Vec<(Option<f64>, usize, f64)>,
    /// Thresholds not scored because they kept fewer than
    /// [`MIN_SELECTED_VOXELS`] voxels on all rows or in some fold.
    pub skipped: Vec<f64>,
}

fn check_images(images: &[String], n: usize) -> Result<(), RidgeError> {
    if images.len() != n {
        return Err(RidgeError::Length {
            what: "images",
            expected: n,
            found: images.len(),
        });
    }
    Ok(())
}

/// Reliability over the given rows (in row order, so "first presentation"
/// is the earliest row). `fold` only labels the error.
fn reliability_rows(
    x: &[f32],
    v: usize,
    images: &[String],
    rows: &[usize],
    fold: Option<usize>,
) -> Result<Reliability, ReliabilityError> {
    let mut by_image: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for &r in rows {
        let e = by_image.entry(images[r].as_str()).or_default();
        if e.is_empty() {
            order.push(images[r].as_str());
        }
        e.push(r);
    }
    let repeated: Vec<&Vec<usize>> = order
        .iter()
        .map(|im| &by_image[im])
        .filter(|p| p.len() >= 2)
        .collect();
    let m = repeated.len();
    if m < MIN_REPEATED_IMAGES {
        return Err(ReliabilityError::TooFewRepeats {
            images: m,
            needed: MIN_REPEATED_IMAGES,
            fold,
        });
    }
    // first[i][voxel], later[i][voxel]: image i's first beta and the mean
    // of its later betas.
    let mut first = vec![0f64; m * v];
    let mut later = vec![0f64; m * v];
    for (i, pres) in repeated.iter().enumerate() {
        let row = |r: usize| &x[r * v..(r + 1) * v];
        for (f, &a) in first[i * v..(i + 1) * v].iter_mut().zip(row(pres[0])) {
            *f = a as f64;
        }
        let k = (pres.len() - 1) as f64;
        let dst = &mut later[i * v..(i + 1) * v];
        for &r in &pres[1..] {
            for (d, &a) in dst.iter_mut().zip(row(r)) {
                *d += a as f64 / k;
            }
        }
    }
    let per_voxel = (0..v)
        .map(|j| {
            let (mut sa, mut sb) = (0.0, 0.0);
            for i in 0..m {
                sa += first[i * v + j];
                sb += later[i * v + j];
            }
            let (ma, mb) = (sa / m as f64, sb / m as f64);
            let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
            for i in 0..m {
                let (da, db) = (first[i * v + j] - ma, later[i * v + j] - mb);
                sab += da * db;
                saa += da * da;
                sbb += db * db;
            }
            // A voxel that does not vary carries no repeatable signal: 0
            // rather than NaN keeps it comparable to thresholds.
            if saa > 0.0 && sbb > 0.0 {
                (sab / (saa * sbb).sqrt()).clamp(-1.0, 1.0)
            } else {
                0.0
            }
        })
        .collect();
    Ok(Reliability {
        per_voxel,
        images: m,
    })
}

/// Per-voxel reliability over all rows: the Pearson correlation, across the
/// images shown at least twice, between a voxel's beta for the first
/// presentation and its mean beta over the later presentations.
pub fn voxel_reliability(
    x: &[f32],
    n: usize,
    v: usize,
    images: &[String],
) -> Result<Reliability, ReliabilityError> {
    ridge::check_x(x, n, v)?;
    check_images(images, n)?;
    let rows: Vec<usize> = (0..n).collect();
    reliability_rows(x, v, images, &rows, None)
}

/// Voxels ordered by reliability, most reliable first (ties by index, so
/// the order is deterministic), and how many exceed each threshold: with
/// this order every thresholded set is a prefix.
fn ranked(rel: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rel.len()).collect();
    order.sort_by(|&a, &b| rel[b].total_cmp(&rel[a]).then(a.cmp(&b)));
    order
}

fn count_above(rel: &[f64], t: Option<f64>) -> usize {
    match t {
        None => rel.len(),
        Some(t) => rel.iter().filter(|&&r| r > t).count(),
    }
}

/// Choose a reliability threshold by grouped cross-validation of the ridge
/// fit on the voxels above it.
///
/// The candidates are "no selection" plus each threshold. Inside each fold,
/// reliability comes from the training rows and the ridge fit (over the
/// whole penalty grid, penalty chosen per target as in
/// [`ridge::fit_ridge_cv`]) predicts the held-out rows; the candidate with
/// the best mean held-out R² wins, ties going to the one keeping more
/// voxels. The returned voxels are those above the winning threshold by the
/// reliability of all rows.
#[allow(clippy::too_many_arguments)]
pub fn select_voxels_cv(
    x: &[f32],
    n: usize,
    v: usize,
    y: &[f32],
    l: usize,
    images: &[String],
    groups: &[usize],
    thresholds: &[f64],
    opts: &RidgeOptions,
) -> Result<Selection, ReliabilityError> {
    ridge::check_problem(x, n, v, y, l, Some(groups))?;
    check_images(images, n)?;
    if let Some(&bad) = thresholds.iter().find(|t| !t.is_finite()) {
        return Err(ReliabilityError::BadThreshold(bad));
    }
    let grid = ridge::sorted_grid(opts)?;
    let folds = ridge::group_folds(groups, opts.folds, opts.seed)?;
    let all_rows: Vec<usize> = (0..n).collect();
    let overall = reliability_rows(x, v, images, &all_rows, None)?;

    // Most restrictive first, so within a fold each candidate's voxels
    // extend the previous candidate's and the Gram matrix grows in place.
    let mut ts: Vec<f64> = thresholds.to_vec();
    ts.sort_by(|a, b| b.total_cmp(a));
    ts.dedup();
    let mut candidates: Vec<Option<f64>> = Vec::new();
    let mut skipped: Vec<f64> = Vec::new();
    for &t in &ts {
        if count_above(&overall.per_voxel, Some(t)) >= MIN_SELECTED_VOXELS {
            candidates.push(Some(t));
        } else {
            skipped.push(t);
        }
    }
    candidates.push(None);

    let p = Prepared::new(x, n, v, y, l);
    let mut accums: Vec<Option<CvAccum>> = candidates
        .iter()
        .map(|_| Some(CvAccum::new(&grid, n, l)))
        .collect();
    for (f, (train, test)) in fold_rows(&folds, opts.folds).into_iter().enumerate() {
        let rel = reliability_rows(x, v, images, &train, Some(f))?.per_voxel;
        let order = ranked(&rel);
        // The dual Gram matrix of the first `in_g` voxels of `order`.
        let mut g = DMatrix::<f64>::zeros(n, n);
        let mut in_g = 0;
        for (ci, cand) in candidates.iter().enumerate() {
            let Some(acc) = accums[ci].as_mut() else {
                continue;
            };
            let count = count_above(&rel, *cand);
            if cand.is_some() && count < MIN_SELECTED_VOXELS {
                accums[ci] = None;
                continue;
            }
            let cols = &order[..count];
            let form = opts.form.unwrap_or(Form::auto(n, count));
            let sp = match form {
                Form::Dual => {
                    if count > in_g {
                        let xd = p.x.select_columns(&order[in_g..count]);
                        g.gemm(1.0, &xd, &xd.transpose(), 1.0);
                        in_g = count;
                    }
                    dual_fold(&g, &p.y, &train, &test)?
                }
                Form::Primal => primal_fold(&p.x.select_columns(cols), &p.y, &train, &test)?,
            };
            acc.add(&sp, &test);
        }
    }

    let mut scores = Vec::new();
    let mut best: Option<(Option<f64>, usize, f64)> = None;
    for (cand, acc) in candidates.iter().zip(accums) {
        let Some(acc) = acc else {
            if let Some(t) = cand {
                skipped.push(*t);
            }
            continue;
        };
        let r2 = acc.finish(&p.y, folds.clone()).mean_r2();
        let kept = count_above(&overall.per_voxel, *cand);
        scores.push((*cand, kept, r2));
        // `kept >= bk`: among equal scores the later candidate keeps at
        // least as many voxels, and "no selection" (last) wins a full tie.
        let better = match best {
            None => true,
            Some((_, bk, br)) => r2 > br + TIE_R2 || (r2 >= br - TIE_R2 && kept >= bk),
        };
        if better {
            best = Some((*cand, kept, r2));
        }
    }
    skipped.sort_by(|a, b| b.total_cmp(a));
    // "No selection" is always scored, so `best` is set.
    let threshold = best.and_then(|b| b.0);
    let voxels = (0..v)
        .filter(|&j| threshold.is_none_or(|t| overall.per_voxel[j] > t))
        .collect();
    Ok(Selection {
        threshold,
        voxels,
        reliability: overall.per_voxel,
        images: overall.images,
        scores,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows: image "a".."f" each twice plus "x" once; voxel 0 repeats
    /// exactly, voxel 1 flips sign on the repeat, voxel 2 is constant.
    fn data() -> (Vec<f32>, Vec<String>) {
        let mut x = Vec::new();
        let mut images = Vec::new();
        let first = [1.0f32, -2.0, 0.5, 3.0, -1.0, 2.5];
        for (i, &b) in first.iter().enumerate() {
            x.extend([b, b, 7.0]);
            images.push(format!("{}", (b'a' + i as u8) as char));
        }
        // The unrepeated image would spoil voxel 0's perfect correlation if
        // it were counted.
        x.extend([100.0, -100.0, 7.0]);
        images.push("x".into());
        for (i, &b) in first.iter().enumerate().rev() {
            x.extend([b, -b, 7.0]);
            images.push(format!("{}", (b'a' + i as u8) as char));
        }
        (x, images)
    }

    #[test]
    fn first_against_later_presentations() {
        let (x, images) = data();
        let r = voxel_reliability(&x, images.len(), 3, &images).unwrap();
        assert_eq!(r.images, 6);
        assert!((r.per_voxel[0] - 1.0).abs() < 1e-12, "{:?}", r.per_voxel);
        assert!((r.per_voxel[1] + 1.0).abs() < 1e-12);
        assert_eq!(r.per_voxel[2], 0.0);
    }

    #[test]
    fn later_presentations_are_averaged() {
        // Image i: first beta i, later betas i + d and i − d average to i.
        let mut x = Vec::new();
        let mut images = Vec::new();
        for rep in 0..3 {
            for i in 0..8 {
                let d = [0.0, 5.0, -5.0][rep] * if i % 2 == 0 { 1.0 } else { -1.0 };
                x.push(i as f32 + d);
                images.push(i.to_string());
            }
        }
        let r = voxel_reliability(&x, 24, 1, &images).unwrap();
        assert!((r.per_voxel[0] - 1.0).abs() < 1e-12, "{:?}", r.per_voxel);
    }

    #[test]
    fn a_threshold_that_keeps_everything_ties_with_no_selection() {
        let (n, v, l) = (60, 60, 2);
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32
        };
        let x: Vec<f32> = (0..n * v).map(|_| next()).collect();
        let y: Vec<f32> = (0..n * l).map(|_| next()).collect();
        let groups: Vec<usize> = (0..n).map(|i| i % 30).collect();
        let images: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let sel = select_voxels_cv(
            &x,
            n,
            v,
            &y,
            l,
            &images,
            &groups,
            &[-2.0],
            &RidgeOptions::default(),
        )
        .unwrap();
        assert_eq!(sel.scores.len(), 2);
        assert_eq!(sel.scores[0].2, sel.scores[1].2);
        assert_eq!(sel.threshold, None);
        assert_eq!(sel.voxels, (0..v).collect::<Vec<_>>());
    }
}
