//! Ridge regression from calibration betas to the model's targets, with the
//! penalty chosen per target by grouped K-fold cross-validation.
//!
//! In: betas `x` (N trials × V voxels, row-major f32), targets `y` (N × L),
//! one group id per row (the image shown: all presentations of an image
//! stay in one fold) and [`RidgeOptions`]. Out: a [`RidgeFit`] (weights
//! V × L, bias, chosen penalties, held-out R²), or just the held-out scores
//! ([`cv_score`]) so a caller can compare voxel selections.
//!
//! All arithmetic is f64. Each fold costs one symmetric eigendecomposition
//! whatever the number of penalties: of the N×N Gram matrix XXᵀ in the dual
//! form (W = Xᵀ(XXᵀ + λI)⁻¹Y, used when voxels outnumber trials) or of the
//! V×V XᵀX in the primal form. Held-out predictions for every penalty are
//! then `ȳ + A·diag(1/(s + λ))·B` with A and B fixed per fold.

use nalgebra::{DMatrix, SymmetricEigen};

/// Default number of cross-validation folds.
pub const DEFAULT_FOLDS: usize = 5;

/// Default seed of the fold shuffle (any fixed value: it only has to make
/// the same session give the same folds every time).
pub const DEFAULT_SEED: u64 = 0x5eed_b01d_0000_0005;

/// The default penalty grid: 20 values log-spaced from 1e-3 to 1e4,
/// relative to the penalty scale (see [`RidgeOptions::lambdas`]).
///
/// With the scale defined as the mean squared (centred) row norm, a
/// relative penalty is the noise-to-signal variance ratio of a Gaussian
/// weight prior spread evenly over the voxels, so the grid spans targets
/// that are almost noiseless (1e-3) to almost pure noise (1e4, where the
/// predictions shrink to the mean).
pub fn default_lambdas() -> Vec<f64> {
    let (lo, hi, k) = (-3.0f64, 4.0f64, 20);
    (0..k)
        .map(|i| 10f64.powf(lo + (hi - lo) * i as f64 / (k - 1) as f64))
        .collect()
}

/// Which matrix is decomposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Decompose the V×V XᵀX (cheaper when trials outnumber voxels).
    Primal,
    /// Decompose the N×N Gram matrix XXᵀ (cheaper when voxels outnumber
    /// trials, the usual case).
    Dual,
}

impl Form {
    /// The automatic choice: the smaller of the two matrices.
    pub fn auto(rows: usize, voxels: usize) -> Form {
        if voxels > rows {
            Form::Dual
        } else {
            Form::Primal
        }
    }
}

/// Cross-validation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RidgeOptions {
    /// Candidate penalties, relative to the penalty scale of each fit:
    /// trace(XcᵀXc)/rows, the mean squared norm of a centred row (≈ V for
    /// z-scored betas). Relative rather than absolute so one grid suits
    /// any number of voxels; the absolute penalty of a fit is
    /// `relative × scale` with the scale of that fit's own training rows.
    pub lambdas: Vec<f64>,
    /// Number of folds (≥ 2).
    pub folds: usize,
    /// `None`: dual when voxels outnumber rows, else primal.
    pub form: Option<Form>,
    /// Seed of the shuffle that assigns groups to folds.
    pub seed: u64,
}

impl Default for RidgeOptions {
    fn default() -> Self {
        RidgeOptions {
            lambdas: default_lambdas(),
            folds: DEFAULT_FOLDS,
            form: None,
            seed: DEFAULT_SEED,
        }
    }
}

/// Why a ridge fit could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RidgeError {
    /// A slice has the wrong number of values.
    #[error("{what}: expected {expected} values, found {found}")]
    Length {
        /// Which input.
        what: &'static str,
        /// What its declared shape implies.
        expected: usize,
        /// What was passed.
        found: usize,
    },
    /// A dimension is zero or the sizes overflow.
    #[error("{what}: bad size ({rows} × {cols})")]
    Size {
        /// Which input.
        what: &'static str,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// NaN or infinity in the data.
    #[error("non-finite value {value} in {matrix} at row {row}, column {col}")]
    NonFinite {
        /// `"x"` (betas) or `"y"` (targets).
        matrix: &'static str,
        /// Row (trial).
        row: usize,
        /// Column (voxel or target).
        col: usize,
        /// The value.
        value: f32,
    },
    /// Fewer rows than folds.
    #[error("{rows} rows cannot be split into {folds} folds")]
    TooFewRows {
        /// Rows given.
        rows: usize,
        /// Folds asked for.
        folds: usize,
    },
    /// Fewer distinct groups than folds.
    #[error(
        "only {groups} distinct groups for {folds} folds: every fold needs at least one \
         whole group (all presentations of an image stay in one fold)"
    )]
    TooFewGroups {
        /// Distinct groups.
        groups: usize,
        /// Folds asked for.
        folds: usize,
    },
    /// A setting is out of range.
    #[error("invalid ridge option: {0}")]
    Option(String),
    /// The eigensolver gave up (only on pathological input).
    #[error("eigendecomposition of the {size}×{size} {what} did not converge")]
    Decomposition {
        /// Which matrix.
        what: &'static str,
        /// Its size.
        size: usize,
    },
}

/// A fitted linear map from betas to targets.
#[derive(Debug, Clone, PartialEq)]
pub struct RidgeFit {
    /// V × L row-major: `weights[v * targets + l]`.
    pub weights: Vec<f32>,
    /// L values: ȳ − x̄·W.
    pub bias: Vec<f32>,
    /// The absolute penalty used for each target in the final fit.
    pub lambdas: Vec<f64>,
    /// Per target, the pooled held-out R² at the chosen penalty (empty for
    /// [`fit_ridge`], which runs no cross-validation). Slightly optimistic:
    /// the same folds chose the penalty.
    pub cv_r2: Vec<f64>,
    /// The form the final fit used.
    pub form: Form,
    /// V.
    pub voxels: usize,
    /// L.
    pub targets: usize,
    /// The penalty scale of the final fit (absolute = relative × scale).
    pub lambda_scale: f64,
}

impl RidgeFit {
    /// Targets for one row of betas (V values).
    pub fn predict(&self, x_row: &[f32]) -> Result<Vec<f32>, RidgeError> {
        if x_row.len() != self.voxels {
            return Err(RidgeError::Length {
                what: "x_row",
                expected: self.voxels,
                found: x_row.len(),
            });
        }
        let l = self.targets;
        let mut out: Vec<f64> = self.bias.iter().map(|&b| b as f64).collect();
        for (xv, w) in x_row.iter().zip(self.weights.chunks_exact(l)) {
            let xv = *xv as f64;
            for (o, &wl) in out.iter_mut().zip(w) {
                *o += xv * wl as f64;
            }
        }
        Ok(out.into_iter().map(|o| o as f32).collect())
    }
}

/// Held-out scores of a grouped cross-validation.
#[derive(Debug, Clone, PartialEq)]
pub struct CvScore {
    /// The relative penalty grid, sorted ascending without duplicates (what
    /// `chosen` indexes).
    pub lambdas: Vec<f64>,
    /// Pooled held-out R², `r2[k * targets + l]` for penalty k and target l.
    pub r2: Vec<f64>,
    /// Per target, the index in `lambdas` of the penalty with the smallest
    /// held-out squared error (the larger penalty on ties).
    pub chosen: Vec<usize>,
    /// Per target, the held-out R² at the chosen penalty.
    pub best_r2: Vec<f64>,
    /// N × L held-out predictions at the chosen penalties.
    pub predictions: Vec<f32>,
    /// The fold of each row.
    pub folds: Vec<usize>,
    /// L.
    pub targets: usize,
}

impl CvScore {
    /// Mean over targets of the held-out R² at the chosen penalties.
    pub fn mean_r2(&self) -> f64 {
        if self.best_r2.is_empty() {
            return 0.0;
        }
        self.best_r2.iter().sum::<f64>() / self.best_r2.len() as f64
    }
}

fn check_len(what: &'static str, rows: usize, cols: usize, found: usize) -> Result<(), RidgeError> {
    let expected = rows
        .checked_mul(cols)
        .filter(|_| rows > 0 && cols > 0)
        .ok_or(RidgeError::Size { what, rows, cols })?;
    if found != expected {
        return Err(RidgeError::Length {
            what,
            expected,
            found,
        });
    }
    Ok(())
}

fn check_finite(matrix: &'static str, data: &[f32], cols: usize) -> Result<(), RidgeError> {
    match data.iter().position(|a| !a.is_finite()) {
        None => Ok(()),
        Some(i) => Err(RidgeError::NonFinite {
            matrix,
            row: i / cols,
            col: i % cols,
            value: data[i],
        }),
    }
}

/// Check the shape and values of a betas matrix alone.
pub(crate) fn check_x(x: &[f32], n: usize, v: usize) -> Result<(), RidgeError> {
    check_len("x", n, v, x.len())?;
    check_finite("x", x, v)
}

/// Check shapes and values of a regression problem (groups may be empty
/// when the caller has no folds to make).
pub(crate) fn check_problem(
    x: &[f32],
    n: usize,
    v: usize,
    y: &[f32],
    l: usize,
    groups: Option<&[usize]>,
) -> Result<(), RidgeError> {
    check_len("x", n, v, x.len())?;
    check_len("y", n, l, y.len())?;
    if let Some(g) = groups
        && g.len() != n
    {
        return Err(RidgeError::Length {
            what: "groups",
            expected: n,
            found: g.len(),
        });
    }
    check_finite("x", x, v)?;
    check_finite("y", y, l)?;
    Ok(())
}

fn check_lambdas(lambdas: &[f64], what: &str) -> Result<(), RidgeError> {
    if lambdas.is_empty() {
        return Err(RidgeError::Option(format!("no {what} penalties")));
    }
    if let Some(bad) = lambdas.iter().find(|a| !(a.is_finite() && **a > 0.0)) {
        return Err(RidgeError::Option(format!(
            "{what} penalty {bad} is not a positive finite number"
        )));
    }
    Ok(())
}

/// splitmix64: a fixed, documented generator, so fold assignments do not
/// change when a dependency's RNG changes its stream.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The fold of each row: the distinct group ids, sorted, are shuffled with
/// `seed` and dealt to the folds in turn, so every presentation of a group
/// lands in the same fold and every fold has at least one group.
pub fn group_folds(groups: &[usize], folds: usize, seed: u64) -> Result<Vec<usize>, RidgeError> {
    if folds < 2 {
        return Err(RidgeError::Option(format!(
            "folds = {folds}; cross-validation needs at least 2"
        )));
    }
    if groups.len() < folds {
        return Err(RidgeError::TooFewRows {
            rows: groups.len(),
            folds,
        });
    }
    let mut distinct: Vec<usize> = groups.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < folds {
        return Err(RidgeError::TooFewGroups {
            groups: distinct.len(),
            folds,
        });
    }
    let mut state = seed;
    for i in (1..distinct.len()).rev() {
        // Multiply-shift maps the 64-bit draw onto 0..=i without the bias
        // of a modulo.
        let j = ((splitmix64(&mut state) as u128 * (i as u128 + 1)) >> 64) as usize;
        distinct.swap(i, j);
    }
    let fold_of: std::collections::HashMap<usize, usize> = distinct
        .iter()
        .enumerate()
        .map(|(pos, &g)| (g, pos % folds))
        .collect();
    Ok(groups.iter().map(|g| fold_of[g]).collect())
}

/// Training and test rows of each fold.
pub(crate) fn fold_rows(folds: &[usize], k: usize) -> Vec<(Vec<usize>, Vec<usize>)> {
    (0..k)
        .map(|f| {
            let (test, train): (Vec<usize>, Vec<usize>) =
                (0..folds.len()).partition(|&i| folds[i] == f);
            (train, test)
        })
        .collect()
}

/// Betas and targets in f64, betas centred on the mean of all rows.
///
/// Centring on all rows is only a shift for numerical safety (raw Gram
/// entries of uncentred data would cancel catastrophically when each fold
/// re-centres on its training rows); every fit still centres on its own
/// training rows, and the results do not depend on the shift.
pub(crate) struct Prepared {
    /// N × V, shifted.
    pub x: DMatrix<f64>,
    /// The shift: the mean of each column over all rows.
    pub shift: Vec<f64>,
    /// N × L.
    pub y: DMatrix<f64>,
}

impl Prepared {
    pub(crate) fn new(x: &[f32], n: usize, v: usize, y: &[f32], l: usize) -> Prepared {
        let mut xm = DMatrix::from_row_iterator(n, v, x.iter().map(|&a| a as f64));
        let mut shift = Vec::with_capacity(v);
        for mut col in xm.column_iter_mut() {
            let mean = col.sum() / n as f64;
            col.add_scalar_mut(-mean);
            shift.push(mean);
        }
        let ym = DMatrix::from_row_iterator(n, l, y.iter().map(|&a| a as f64));
        Prepared {
            x: xm,
            shift,
            y: ym,
        }
    }
}

/// X Xᵀ for an N × V matrix (through the blocked matrix product).
pub(crate) fn gram(x: &DMatrix<f64>) -> DMatrix<f64> {
    x * x.transpose()
}

fn eigen(m: DMatrix<f64>, what: &'static str) -> Result<(DMatrix<f64>, Vec<f64>), RidgeError> {
    let size = m.nrows();
    // A cap far above the ~2 sweeps per eigenvalue QR needs, so bad input
    // is an error rather than an endless loop.
    let e = SymmetricEigen::try_new(m, f64::EPSILON, 100 * size + 1000)
        .ok_or(RidgeError::Decomposition { what, size })?;
    // Rounding can leave the zero eigenvalues of a rank-deficient Gram
    // matrix slightly negative; (s + λ) must stay positive.
    let s = e.eigenvalues.iter().map(|&a| a.max(0.0)).collect();
    Ok((e.eigenvectors, s))
}

/// One fold, ready for every penalty: held-out predictions are
/// `y_mean + a · diag(1/(s + λ)) · b`.
pub(crate) struct Spectrum {
    a: DMatrix<f64>,
    s: Vec<f64>,
    b: DMatrix<f64>,
    y_mean: Vec<f64>,
    /// trace(XcᵀXc) / training rows.
    scale: f64,
}

fn mean_rows(y: &DMatrix<f64>, rows: &[usize]) -> Vec<f64> {
    let k = rows.len() as f64;
    (0..y.ncols())
        .map(|c| rows.iter().map(|&r| y[(r, c)]).sum::<f64>() / k)
        .collect()
}

fn centred_rows(y: &DMatrix<f64>, rows: &[usize], mean: &[f64]) -> DMatrix<f64> {
    DMatrix::from_fn(rows.len(), y.ncols(), |i, c| y[(rows[i], c)] - mean[c])
}

/// A fold in the dual form from the (shifted) Gram matrix of all rows:
/// centring on the training mean μ is done on the Gram entries,
/// (xᵢ − μ)·(xⱼ − μ) = Gᵢⱼ − aᵢ − aⱼ + m with aᵢ = mean over training k of
/// Gᵢₖ and m the mean of a over the training rows, so the N×N×V product
/// is paid once for all folds.
pub(crate) fn dual_fold(
    g: &DMatrix<f64>,
    y: &DMatrix<f64>,
    train: &[usize],
    test: &[usize],
) -> Result<Spectrum, RidgeError> {
    let ntr = train.len() as f64;
    let a: Vec<f64> = (0..g.nrows())
        .map(|i| train.iter().map(|&k| g[(i, k)]).sum::<f64>() / ntr)
        .collect();
    let m = train.iter().map(|&k| a[k]).sum::<f64>() / ntr;
    let k_tr = DMatrix::from_fn(train.len(), train.len(), |i, j| {
        g[(train[i], train[j])] - a[train[i]] - a[train[j]] + m
    });
    let k_te = DMatrix::from_fn(test.len(), train.len(), |i, j| {
        g[(test[i], train[j])] - a[test[i]] - a[train[j]] + m
    });
    let scale = k_tr.trace() / ntr;
    let y_mean = mean_rows(y, train);
    let yc = centred_rows(y, train, &y_mean);
    let (u, s) = eigen(k_tr, "training Gram matrix")?;
    Ok(Spectrum {
        a: k_te * &u,
        b: u.transpose() * yc,
        s,
        y_mean,
        scale,
    })
}

/// A fold in the primal form from the betas of the voxels in use (N × V').
pub(crate) fn primal_fold(
    x: &DMatrix<f64>,
    y: &DMatrix<f64>,
    train: &[usize],
    test: &[usize],
) -> Result<Spectrum, RidgeError> {
    let x_mean = mean_rows(x, train);
    let xc = centred_rows(x, train, &x_mean);
    let xte = centred_rows(x, test, &x_mean);
    let y_mean = mean_rows(y, train);
    let yc = centred_rows(y, train, &y_mean);
    let xct = xc.transpose();
    let c = &xct * &xc;
    let scale = c.trace() / train.len() as f64;
    let (q, s) = eigen(c, "training XᵀX")?;
    Ok(Spectrum {
        a: xte * &q,
        b: q.transpose() * (xct * yc),
        s,
        y_mean,
        scale,
    })
}

/// Pools held-out predictions over folds for every penalty.
pub(crate) struct CvAccum {
    lambdas: Vec<f64>,
    n: usize,
    l: usize,
    /// `[k][row][target]`.
    preds: Vec<f64>,
}

impl CvAccum {
    pub(crate) fn new(lambdas: &[f64], n: usize, l: usize) -> CvAccum {
        CvAccum {
            lambdas: lambdas.to_vec(),
            n,
            l,
            preds: vec![0.0; lambdas.len() * n * l],
        }
    }

    pub(crate) fn add(&mut self, sp: &Spectrum, test: &[usize]) {
        let (n, l) = (self.n, self.l);
        for (k, &rel) in self.lambdas.iter().enumerate() {
            let lambda = rel * sp.scale;
            let mut b = sp.b.clone();
            for (i, mut row) in b.row_iter_mut().enumerate() {
                row *= 1.0 / (sp.s[i] + lambda);
            }
            let p = &sp.a * b;
            for (t, &r) in test.iter().enumerate() {
                let base = (k * n + r) * l;
                for c in 0..l {
                    self.preds[base + c] = sp.y_mean[c] + p[(t, c)];
                }
            }
        }
    }

    pub(crate) fn finish(self, y: &DMatrix<f64>, folds: Vec<usize>) -> CvScore {
        let (n, l) = (self.n, self.l);
        let nk = self.lambdas.len();
        let ss_tot: Vec<f64> = (0..l)
            .map(|c| {
                let col = y.column(c);
                let mean = col.sum() / n as f64;
                col.iter().map(|v| (v - mean).powi(2)).sum()
            })
            .collect();
        let mut sse = vec![0.0; nk * l];
        for k in 0..nk {
            for r in 0..n {
                let base = (k * n + r) * l;
                for c in 0..l {
                    sse[k * l + c] += (y[(r, c)] - self.preds[base + c]).powi(2);
                }
            }
        }
        // A target that does not vary has nothing to explain: R² is 0 by
        // convention rather than NaN, which would poison the mean.
        let r2_of = |e: f64, c: usize| {
            if ss_tot[c] > 0.0 {
                1.0 - e / ss_tot[c]
            } else {
                0.0
            }
        };
        let r2: Vec<f64> = (0..nk * l).map(|i| r2_of(sse[i], i % l)).collect();
        let chosen: Vec<usize> = (0..l)
            .map(|c| {
                let mut best = 0;
                for k in 1..nk {
                    // `<=`: on ties the larger penalty (the grid ascends
                    // once sorted) is the safer choice.
                    if sse[k * l + c] <= sse[best * l + c] {
                        best = k;
                    }
                }
                best
            })
            .collect();
        let best_r2 = (0..l).map(|c| r2[chosen[c] * l + c]).collect();
        let mut predictions = vec![0f32; n * l];
        for r in 0..n {
            for c in 0..l {
                predictions[r * l + c] = self.preds[(chosen[c] * n + r) * l + c] as f32;
            }
        }
        CvScore {
            lambdas: self.lambdas,
            r2,
            chosen,
            best_r2,
            predictions,
            folds,
            targets: l,
        }
    }
}

/// The grid sorted ascending (so ties resolve to the larger penalty).
pub(crate) fn sorted_grid(opts: &RidgeOptions) -> Result<Vec<f64>, RidgeError> {
    check_lambdas(&opts.lambdas, "relative")?;
    let mut grid = opts.lambdas.clone();
    grid.sort_by(f64::total_cmp);
    grid.dedup();
    Ok(grid)
}

/// Grouped cross-validation on prepared data with fixed folds.
fn cv_prepared(
    p: &Prepared,
    folds: Vec<usize>,
    opts: &RidgeOptions,
    grid: &[f64],
) -> Result<CvScore, RidgeError> {
    let (n, v, l) = (p.x.nrows(), p.x.ncols(), p.y.ncols());
    let form = opts.form.unwrap_or(Form::auto(n, v));
    let mut acc = CvAccum::new(grid, n, l);
    let g = match form {
        Form::Dual => Some(gram(&p.x)),
        Form::Primal => None,
    };
    for (train, test) in fold_rows(&folds, opts.folds) {
        let sp = match &g {
            Some(g) => dual_fold(g, &p.y, &train, &test)?,
            None => primal_fold(&p.x, &p.y, &train, &test)?,
        };
        acc.add(&sp, &test);
    }
    Ok(acc.finish(&p.y, folds))
}

/// Grouped K-fold cross-validation over the penalty grid, without the final
/// fit: held-out R² per penalty and target, the chosen penalties and the
/// held-out predictions at them.
pub fn cv_score(
    x: &[f32],
    n: usize,
    v: usize,
    y: &[f32],
    l: usize,
    groups: &[usize],
    opts: &RidgeOptions,
) -> Result<CvScore, RidgeError> {
    check_problem(x, n, v, y, l, Some(groups))?;
    let grid = sorted_grid(opts)?;
    let folds = group_folds(groups, opts.folds, opts.seed)?;
    let p = Prepared::new(x, n, v, y, l);
    cv_prepared(&p, folds, opts, &grid)
}

/// The fit on all rows with one absolute penalty per target, or one
/// relative penalty per target when `relative` (scaled by this fit's own
/// penalty scale).
fn fit_prepared(
    p: &Prepared,
    penalties: &[f64],
    relative: bool,
    form: Form,
) -> Result<RidgeFit, RidgeError> {
    let (n, v, l) = (p.x.nrows(), p.x.ncols(), p.y.ncols());
    let all: Vec<usize> = (0..n).collect();
    let x_mean = mean_rows(&p.x, &all);
    let xc = centred_rows(&p.x, &all, &x_mean);
    let y_mean = mean_rows(&p.y, &all);
    let yc = centred_rows(&p.y, &all, &y_mean);
    let xct = xc.transpose();
    let (vecs, s, mut b, scale) = match form {
        Form::Dual => {
            let k = &xc * &xct;
            let scale = k.trace() / n as f64;
            let (u, s) = eigen(k, "Gram matrix")?;
            let b = u.transpose() * &yc;
            (u, s, b, scale)
        }
        Form::Primal => {
            let c = &xct * &xc;
            let scale = c.trace() / n as f64;
            let (q, s) = eigen(c, "XᵀX")?;
            let b = q.transpose() * (&xct * &yc);
            (q, s, b, scale)
        }
    };
    let lambdas: Vec<f64> = (0..l)
        .map(|c| {
            let pen = if penalties.len() == 1 {
                penalties[0]
            } else {
                penalties[c]
            };
            if relative { pen * scale } else { pen }
        })
        .collect();
    for (c, mut col) in b.column_iter_mut().enumerate() {
        for (i, e) in col.iter_mut().enumerate() {
            *e /= s[i] + lambdas[c];
        }
    }
    let w = match form {
        // W = Xcᵀ U diag(1/(s+λ)) Uᵀ Yc
        Form::Dual => xct * (vecs * b),
        // W = Q diag(1/(d+λ)) Qᵀ Xcᵀ Yc
        Form::Primal => vecs * b,
    };
    let mut weights = vec![0f32; v * l];
    for r in 0..v {
        for c in 0..l {
            weights[r * l + c] = w[(r, c)] as f32;
        }
    }
    // The bias is for the caller's betas, so x̄ is the shifted mean plus
    // the shift.
    let bias = (0..l)
        .map(|c| {
            let xw: f64 = (0..v).map(|r| (x_mean[r] + p.shift[r]) * w[(r, c)]).sum();
            (y_mean[c] - xw) as f32
        })
        .collect();
    Ok(RidgeFit {
        weights,
        bias,
        lambdas,
        cv_r2: Vec::new(),
        form,
        voxels: v,
        targets: l,
        lambda_scale: scale,
    })
}

/// Ridge with the penalty per target chosen by grouped K-fold
/// cross-validation (smallest pooled held-out squared error over
/// `opts.lambdas`), then refitted on all rows.
pub fn fit_ridge_cv(
    x: &[f32],
    n: usize,
    v: usize,
    y: &[f32],
    l: usize,
    groups: &[usize],
    opts: &RidgeOptions,
) -> Result<RidgeFit, RidgeError> {
    check_problem(x, n, v, y, l, Some(groups))?;
    let grid = sorted_grid(opts)?;
    let folds = group_folds(groups, opts.folds, opts.seed)?;
    let t0 = std::time::Instant::now();
    let p = Prepared::new(x, n, v, y, l);
    let cv = cv_prepared(&p, folds, opts, &grid)?;
    let rel: Vec<f64> = cv.chosen.iter().map(|&k| grid[k]).collect();
    let form = opts.form.unwrap_or(Form::auto(n, v));
    let mut fit = fit_prepared(&p, &rel, true, form)?;
    tracing::debug!(
        n,
        v,
        l,
        ?form,
        folds = opts.folds,
        penalties = grid.len(),
        mean_cv_r2 = cv.mean_r2(),
        seconds = t0.elapsed().as_secs_f64(),
        "ridge fitted"
    );
    fit.cv_r2 = cv.best_r2;
    Ok(fit)
}

/// Ridge on all rows with given absolute penalties (one for all targets, or
/// one per target) and no cross-validation.
pub fn fit_ridge(
    x: &[f32],
    n: usize,
    v: usize,
    y: &[f32],
    l: usize,
    lambdas: &[f64],
    form: Form,
) -> Result<RidgeFit, RidgeError> {
    check_problem(x, n, v, y, l, None)?;
    check_lambdas(lambdas, "absolute")?;
    if lambdas.len() != 1 && lambdas.len() != l {
        return Err(RidgeError::Length {
            what: "lambdas (one, or one per target)",
            expected: l,
            found: lambdas.len(),
        });
    }
    let p = Prepared::new(x, n, v, y, l);
    fit_prepared(&p, lambdas, false, form)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    fn normal(rng: &mut ChaCha8Rng, k: usize) -> Vec<f32> {
        (0..k)
            .map(|_| StandardNormal.sample(rng))
            .map(|a: f64| a as f32)
            .collect()
    }

    /// (XcᵀXc + λI)⁻¹ XcᵀYc by Cholesky: the textbook solution, with no
    /// eigendecomposition or Gram-matrix centring shared with the code
    /// under test.
    fn normal_equations(x: &[f32], n: usize, v: usize, y: &[f32], l: usize, lam: f64) -> Vec<f64> {
        let mut xm = DMatrix::from_row_iterator(n, v, x.iter().map(|&a| a as f64));
        let mut ym = DMatrix::from_row_iterator(n, l, y.iter().map(|&a| a as f64));
        for m in [&mut xm, &mut ym] {
            for mut c in m.column_iter_mut() {
                let mean = c.mean();
                c.add_scalar_mut(-mean);
            }
        }
        let a = xm.transpose() * &xm + DMatrix::identity(v, v) * lam;
        let w = a.cholesky().unwrap().solve(&(xm.transpose() * ym));
        (0..v * l).map(|i| w[(i / l, i % l)]).collect()
    }

    fn max_rel(a: &[f32], b: &[f64]) -> f64 {
        if a.iter().any(|v| !v.is_finite()) {
            return f64::INFINITY;
        }
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
        a.iter()
            .zip(b)
            .fold(0f64, |m, (&p, &q)| m.max((p as f64 - q).abs()))
            / scale
    }

    #[test]
    fn both_forms_solve_the_normal_equations() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (n, v) in [(40, 7), (25, 60)] {
            let l = 3;
            let mut x = normal(&mut rng, n * v);
            // An offset per voxel: the fit must centre, and the bias must
            // bring the offset back.
            for (i, a) in x.iter_mut().enumerate() {
                *a += (i % v) as f32;
            }
            let y = normal(&mut rng, n * l);
            let lam = 3.7;
            let want = normal_equations(&x, n, v, &y, l, lam);
            for form in [Form::Primal, Form::Dual] {
                let fit = fit_ridge(&x, n, v, &y, l, &[lam], form).unwrap();
                assert!(max_rel(&fit.weights, &want) < 1e-5, "{form:?} n={n} v={v}");
                // Fitted values average to ȳ: the bias is right.
                for c in 0..l {
                    let mut mean_pred = 0.0;
                    let mut mean_y = 0.0;
                    for r in 0..n {
                        mean_pred += fit.predict(&x[r * v..(r + 1) * v]).unwrap()[c] as f64;
                        mean_y += y[r * l + c] as f64;
                    }
                    assert!((mean_pred - mean_y).abs() / (n as f64) < 1e-4);
                }
            }
        }
    }

    #[test]
    fn fold_predictions_equal_a_fit_on_the_training_rows() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (n, l) = (36, 2);
        let groups: Vec<usize> = (0..n).map(|i| i / 2).collect();
        for (v, form) in [(50, Form::Dual), (9, Form::Primal)] {
            let mut x = normal(&mut rng, n * v);
            for a in x.iter_mut() {
                *a += 5.0;
            }
            let y = normal(&mut rng, n * l);
            let rel = 0.3;
            let opts = RidgeOptions {
                lambdas: vec![rel],
                folds: 4,
                form: Some(form),
                seed: 9,
            };
            let cv = cv_score(&x, n, v, &y, l, &groups, &opts).unwrap();
            for f in 0..4 {
                let train: Vec<usize> = (0..n).filter(|&r| cv.folds[r] != f).collect();
                let xt: Vec<f32> = train
                    .iter()
                    .flat_map(|&r| x[r * v..(r + 1) * v].to_vec())
                    .collect();
                let yt: Vec<f32> = train
                    .iter()
                    .flat_map(|&r| y[r * l..(r + 1) * l].to_vec())
                    .collect();
                // The fold's absolute penalty: relative × its own scale.
                let k = train.len();
                let mut scale = 0.0;
                for c in 0..v {
                    let mean = train.iter().map(|&r| x[r * v + c] as f64).sum::<f64>() / k as f64;
                    scale += train
                        .iter()
                        .map(|&r| (x[r * v + c] as f64 - mean).powi(2))
                        .sum::<f64>();
                }
                scale /= k as f64;
                let fit = fit_ridge(&xt, k, v, &yt, l, &[rel * scale], Form::Primal).unwrap();
                for r in (0..n).filter(|&r| cv.folds[r] == f) {
                    let p = fit.predict(&x[r * v..(r + 1) * v]).unwrap();
                    for (got, want) in cv.predictions[r * l..(r + 1) * l].iter().zip(&p) {
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{form:?} fold {f} row {r}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn folds_keep_groups_whole_and_are_reproducible() {
        let groups: Vec<usize> = (0..50).map(|i| (i * 7) % 19).collect();
        let a = group_folds(&groups, 5, 1).unwrap();
        assert_eq!(a, group_folds(&groups, 5, 1).unwrap());
        assert_ne!(a, group_folds(&groups, 5, 2).unwrap());
        for i in 0..groups.len() {
            for j in 0..groups.len() {
                if groups[i] == groups[j] {
                    assert_eq!(a[i], a[j]);
                }
            }
        }
        for f in 0..5 {
            assert!(a.contains(&f));
        }
        assert_eq!(
            group_folds(&[1, 1, 2, 2, 3, 3], 4, 0),
            Err(RidgeError::TooFewGroups {
                groups: 3,
                folds: 4
            })
        );
        assert!(matches!(
            group_folds(&[1, 2, 3], 1, 0),
            Err(RidgeError::Option(_))
        ));
    }
}
