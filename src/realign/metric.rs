//! Metric: least squares between the reference and the warped volume, with
//! a global intensity gain, in inverse-compositional form.
//!
//! In: one pyramid level of the reference (samples, their intensities and
//! steepest-descent vectors, precomputed once per session) and the moving
//! image at the same level. Out: for a candidate transform, the Gauss–Newton
//! system `H·Δ = b` of the six rigid parameters, the gain, and the cost.
//!
//! Inverse compositional (Baker & Matthews 2004): the Jacobian is taken on
//! the fixed reference, so the steepest-descent vectors and the Hessian are
//! computed once per session instead of once per iteration — the reason a
//! volume registers in a few milliseconds.

use nalgebra::{Matrix4, Matrix6, Vector3, Vector6};

use super::interpolate::{ImageRef, trilinear, trilinear_inside};
use super::pyramid::LevelGeometry;

/// The reference at one pyramid level, reduced to the voxels that carry
/// registration information.
#[derive(Debug, Clone)]
pub struct ReferenceLevel {
    /// Level geometry (voxel ↔ FSL mm).
    pub geometry: LevelGeometry,
    /// Sample positions in level voxel coordinates.
    pos: Vec<[f32; 3]>,
    /// Reference intensity at each sample.
    value: Vec<f32>,
    /// Steepest-descent vector per sample: ∇R·∂W/∂p for (ωx, ωy, ωz, tx, ty, tz).
    sd: Vec<[f32; 6]>,
    /// `Σ sd·sdᵀ` over all samples.
    hessian: Matrix6<f64>,
}

/// What one evaluation of the metric returns.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Gauss–Newton matrix over the samples that fell inside the volume.
    pub hessian: Matrix6<f64>,
    /// `Σ sd·e` with `e = moving/gain − reference`.
    pub rhs: Vector6<f64>,
    /// Fitted gain (`moving ≈ gain·reference`).
    pub gain: f64,
    /// Mean squared residual after the gain.
    pub mse: f64,
    /// Samples inside the moving volume.
    pub valid: usize,
    /// All samples.
    pub total: usize,
}

/// A sample moved off the voxel centre by a fixed pseudo-random offset of
/// up to half a voxel per axis, with the reference value and gradient
/// interpolated there.
///
/// Why: with samples exactly on grid points the reference is read without
/// interpolation while the moving image always is, and trilinear
/// interpolation smooths by an amount that depends on the sub-voxel offset —
/// so the cost prefers transforms that put samples back on grid points,
/// biasing rotations towards zero (a few % of the angle at 3 mm voxels).
/// Jittered samples interpolate both sides, decorrelating that smoothing
/// from the motion (elastix's random-coordinate sampler does the same).
fn jittered_sample(
    image: ImageRef<'_>,
    ijk: [usize; 3],
    seed: u64,
) -> (Vector3<f64>, f32, [f32; 3]) {
    // splitmix64: cheap, deterministic, well mixed.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = z;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((x ^ (x >> 31)) >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let mut p = [0.0f32; 3];
    for a in 0..3 {
        let n = image.dims[a] as f32;
        // Keep p ± 0.5 inside the image for the gradient's differences.
        p[a] = (ijk[a] as f32 + next() as f32)
            .clamp(0.5f32.min((n - 1.0) / 2.0), (n - 1.5).max((n - 1.0) / 2.0));
    }
    let at = |q: [f32; 3]| trilinear_inside(image, q[0], q[1], q[2]);
    let mut g = [0.0f32; 3];
    for a in 0..3 {
        let (mut lo, mut hi) = (p, p);
        lo[a] -= 0.5;
        hi[a] += 0.5;
        g[a] = at(hi) - at(lo);
    }
    (
        Vector3::new(p[0] as f64, p[1] as f64, p[2] as f64),
        at(p),
        g,
    )
}

impl ReferenceLevel {
    /// Prepare a level from the reference image at that level.
    ///
    /// `head` selects candidate voxels (level voxel index → true), `centre`
    /// is the centre of rotation in FSL mm, `max_samples` caps the count by
    /// keeping the strongest gradients.
    pub fn new(
        image: ImageRef<'_>,
        geometry: LevelGeometry,
        head: &[bool],
        centre: Vector3<f64>,
        max_samples: usize,
        jitter: bool,
    ) -> ReferenceLevel {
        let [nx, ny, nz] = image.dims;
        // Voxel-axis derivatives → FSL-mm gradient: ∇_fsl = L⁻ᵀ ∇_vox, with
        // L the linear part of vox_to_fsl (diagonal, possibly one flip).
        let l_inv_t = geometry
            .vox_to_fsl
            .fixed_view::<3, 3>(0, 0)
            .try_inverse()
            .unwrap_or_else(nalgebra::Matrix3::identity)
            .transpose();
        let mut cand: Vec<(usize, [f32; 3], f32)> = Vec::new();
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    let idx = i + nx * (j + ny * k);
                    if !head[idx] {
                        continue;
                    }
                    let d = |a: usize, b: usize, c: usize, axis: usize| -> f32 {
                        let n = [nx, ny, nz][axis];
                        let p = [a, b, c][axis];
                        let (lo, hi) = (p.saturating_sub(1), (p + 1).min(n - 1));
                        let mut plo = [a, b, c];
                        let mut phi = [a, b, c];
                        plo[axis] = lo;
                        phi[axis] = hi;
                        let span = (hi - lo).max(1) as f32;
                        (image.at(phi[0], phi[1], phi[2]) - image.at(plo[0], plo[1], plo[2])) / span
                    };
                    let gv = [d(i, j, k, 0), d(i, j, k, 1), d(i, j, k, 2)];
                    let g2 = gv[0] * gv[0] + gv[1] * gv[1] + gv[2] * gv[2];
                    cand.push((idx, gv, g2));
                }
            }
        }
        if cand.len() > max_samples {
            // Keep the strongest edges: they carry almost all of the
            // registration information, flat tissue adds noise and time.
            cand.select_nth_unstable_by(max_samples, |a, b| b.2.total_cmp(&a.2));
            cand.truncate(max_samples);
            cand.sort_unstable_by_key(|c| c.0);
        }
        let mut pos = Vec::with_capacity(cand.len());
        let mut value = Vec::with_capacity(cand.len());
        let mut sd = Vec::with_capacity(cand.len());
        let mut hessian = Matrix6::zeros();
        for (idx, gv, _) in cand {
            let i = idx % nx;
            let j = (idx / nx) % ny;
            let k = idx / (nx * ny);
            let (v, r, gv) = if jitter {
                jittered_sample(image, [i, j, k], idx as u64)
            } else {
                (
                    Vector3::new(i as f64, j as f64, k as f64),
                    image.data[idx],
                    gv,
                )
            };
            let x = (geometry.vox_to_fsl * v.push(1.0)).xyz();
            let g = l_inv_t * Vector3::new(gv[0] as f64, gv[1] as f64, gv[2] as f64);
            // ∂W/∂ω_k = e_k × (x − c) ⇒ ∇R·∂W/∂ω = (x − c) × ∇R.
            let rot = (x - centre).cross(&g);
            let s = Vector6::new(rot.x, rot.y, rot.z, g.x, g.y, g.z);
            hessian += s * s.transpose();
            pos.push([v.x as f32, v.y as f32, v.z as f32]);
            value.push(r);
            sd.push([
                s[0] as f32,
                s[1] as f32,
                s[2] as f32,
                s[3] as f32,
                s[4] as f32,
                s[5] as f32,
            ]);
        }
        ReferenceLevel {
            geometry,
            pos,
            value,
            sd,
            hessian,
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.pos.len()
    }

    /// True when no voxel qualified.
    pub fn is_empty(&self) -> bool {
        self.pos.is_empty()
    }

    /// Evaluate the metric for `map` (reference level voxel → moving level
    /// voxel), using `scratch` to hold the warped values.
    pub fn evaluate(
        &self,
        moving: ImageRef<'_>,
        map: &Matrix4<f64>,
        scratch: &mut Vec<f32>,
    ) -> Evaluation {
        let m: [f32; 12] = [
            map[(0, 0)] as f32,
            map[(0, 1)] as f32,
            map[(0, 2)] as f32,
            map[(0, 3)] as f32,
            map[(1, 0)] as f32,
            map[(1, 1)] as f32,
            map[(1, 2)] as f32,
            map[(1, 3)] as f32,
            map[(2, 0)] as f32,
            map[(2, 1)] as f32,
            map[(2, 2)] as f32,
            map[(2, 3)] as f32,
        ];
        scratch.clear();
        scratch.reserve(self.pos.len());
        let (mut s_mr, mut s_rr_valid) = (0.0f64, 0.0f64);
        let mut valid = 0usize;
        for (p, &r) in self.pos.iter().zip(&self.value) {
            let x = m[0] * p[0] + m[1] * p[1] + m[2] * p[2] + m[3];
            let y = m[4] * p[0] + m[5] * p[1] + m[6] * p[2] + m[7];
            let z = m[8] * p[0] + m[9] * p[1] + m[10] * p[2] + m[11];
            match trilinear(moving, x, y, z) {
                Some(v) => {
                    s_mr += v as f64 * r as f64;
                    s_rr_valid += r as f64 * r as f64;
                    valid += 1;
                    scratch.push(v);
                }
                None => scratch.push(f32::NAN),
            }
        }
        let gain = if s_rr_valid > 0.0 && s_mr > 0.0 {
            s_mr / s_rr_valid
        } else {
            1.0
        };
        let inv_gain = (1.0 / gain) as f32;
        let mut rhs = [0.0f64; 6];
        let mut sse = 0.0f64;
        // Samples that fell outside carry no information this iteration:
        // remove their share of the precomputed Hessian rather than
        // rebuilding it (usually none or few are outside).
        let mut hessian = self.hessian;
        let mut r_acc = [0.0f32; 6];
        let mut block = 0usize;
        for ((&w, &r), s) in scratch.iter().zip(&self.value).zip(&self.sd) {
            if w.is_nan() {
                let sv = Vector6::from_iterator(s.iter().map(|&v| v as f64));
                hessian -= sv * sv.transpose();
                continue;
            }
            let e = w * inv_gain - r;
            sse += (e as f64) * (e as f64);
            for q in 0..6 {
                r_acc[q] += s[q] * e;
            }
            // Flush the f32 partial sums regularly so precision holds over
            // hundreds of thousands of samples.
            block += 1;
            if block == 256 {
                for q in 0..6 {
                    rhs[q] += r_acc[q] as f64;
                    r_acc[q] = 0.0;
                }
                block = 0;
            }
        }
        for q in 0..6 {
            rhs[q] += r_acc[q] as f64;
        }
        Evaluation {
            hessian,
            rhs: Vector6::from_row_slice(&rhs),
            gain,
            mse: if valid > 0 {
                sse / valid as f64
            } else {
                f64::INFINITY
            },
            valid,
            total: self.pos.len(),
        }
    }
}
