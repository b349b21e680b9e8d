//! Rigid transforms and MCFLIRT's motion-parameter convention.
//!
//! In: 4×4 rigid matrices in FSL "scaled mm" coordinates (see
//! [`Grid::vox_to_fsl`](crate::types::volume::Grid::vox_to_fsl)).
//! Out: [`MotionParams`] as MCFLIRT writes them to `.par` files, and back.
//!
//! The convention, as FSL's `construct_rotmat_euler`/`rotmat2euler` define it:
//! - the matrix `M` maps a point of the *volume* to the *reference* (FLIRT's
//!   input→reference direction);
//! - `M(x) = R·(x − c) + c + t`, with `c` the centre of rotation (MCFLIRT uses
//!   the reference's centre of gravity in scaled-mm coordinates) and
//!   `t = (tx, ty, tz)` in mm;
//! - `R = Rx(rx)·Ry(ry)·Rz(rz)`, each elementary rotation in FSL's sign
//!   convention (`Rz(θ) = [[cos θ, sin θ, 0], [−sin θ, cos θ, 0], [0, 0, 1]]`,
//!   i.e. the transpose of the textbook right-handed rotation).
//!
//! Internally the registration estimates the opposite direction (reference →
//! volume, the map used for resampling); [`par_from_ref_to_volume`] converts.

use nalgebra::{Matrix3, Matrix4, Vector3};

/// The six numbers of one `.par` row: `[rx, ry, rz]` in radians, then
/// `[tx, ty, tz]` in mm.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MotionParams(pub [f64; 6]);

impl MotionParams {
    /// Rotations in radians.
    pub fn rotations(&self) -> [f64; 3] {
        [self.0[0], self.0[1], self.0[2]]
    }

    /// Translations in mm.
    pub fn translations(&self) -> [f64; 3] {
        [self.0[3], self.0[4], self.0[5]]
    }

    /// The rigid matrix (volume → reference, FSL mm) these parameters describe
    /// about `centre`.
    pub fn to_matrix(&self, centre: Vector3<f64>) -> Matrix4<f64> {
        let r = fsl_euler_to_rotation(self.0[0], self.0[1], self.0[2]);
        let t = Vector3::new(self.0[3], self.0[4], self.0[5]);
        let a = centre + t - r * centre;
        rigid(r, a)
    }

    /// Decompose a rigid matrix (volume → reference, FSL mm) about `centre`.
    pub fn from_matrix(m: &Matrix4<f64>, centre: Vector3<f64>) -> MotionParams {
        let r: Matrix3<f64> = m.fixed_view::<3, 3>(0, 0).into_owned();
        let a = Vector3::new(m[(0, 3)], m[(1, 3)], m[(2, 3)]);
        let [rx, ry, rz] = fsl_rotation_to_euler(&r);
        let t = a + r * centre - centre;
        MotionParams([rx, ry, rz, t.x, t.y, t.z])
    }
}

/// Power et al. (2012) framewise displacement between two parameter sets:
/// rotations turned into arc length on a sphere of `radius_mm`, plus the
/// translations, all as absolute differences.
pub fn framewise_displacement(prev: &MotionParams, cur: &MotionParams, radius_mm: f64) -> f64 {
    let rot: f64 = (0..3).map(|i| (cur.0[i] - prev.0[i]).abs()).sum();
    let trans: f64 = (3..6).map(|i| (cur.0[i] - prev.0[i]).abs()).sum();
    rot * radius_mm + trans
}

/// `.par` parameters from the registration's reference → volume map `t`.
pub fn par_from_ref_to_volume(t: &Matrix4<f64>, centre: Vector3<f64>) -> MotionParams {
    MotionParams::from_matrix(&rigid_inverse(t), centre)
}

/// The reference → volume map for `.par` parameters (inverse of
/// [`par_from_ref_to_volume`]).
pub fn ref_to_volume_from_par(p: &MotionParams, centre: Vector3<f64>) -> Matrix4<f64> {
    rigid_inverse(&p.to_matrix(centre))
}

/// Assemble `[r | a]`.
pub fn rigid(r: Matrix3<f64>, a: Vector3<f64>) -> Matrix4<f64> {
    let mut m = Matrix4::identity();
    m.fixed_view_mut::<3, 3>(0, 0).copy_from(&r);
    m[(0, 3)] = a.x;
    m[(1, 3)] = a.y;
    m[(2, 3)] = a.z;
    m
}

/// Inverse of a rigid (orthonormal-rotation) matrix without a general solve.
pub fn rigid_inverse(m: &Matrix4<f64>) -> Matrix4<f64> {
    let rt = m.fixed_view::<3, 3>(0, 0).transpose();
    let a = Vector3::new(m[(0, 3)], m[(1, 3)], m[(2, 3)]);
    rigid(rt, -(rt * a))
}

/// Textbook right-handed rotation about `axis` (unit) by `angle`, via
/// Rodrigues' formula; used for the optimiser's small incremental rotations.
pub fn rotation_from_vector(w: Vector3<f64>) -> Matrix3<f64> {
    let theta = w.norm();
    if theta < 1e-15 {
        return Matrix3::identity();
    }
    let k = w / theta;
    let kx = Matrix3::new(0.0, -k.z, k.y, k.z, 0.0, -k.x, -k.y, k.x, 0.0);
    Matrix3::identity() + kx * theta.sin() + kx * kx * (1.0 - theta.cos())
}

/// FSL's `R = Rx(rx)·Ry(ry)·Rz(rz)` with FSL's elementary-rotation signs.
pub fn fsl_euler_to_rotation(rx: f64, ry: f64, rz: f64) -> Matrix3<f64> {
    let (sa, ca) = rx.sin_cos();
    let (sb, cb) = ry.sin_cos();
    let (sc, cc) = rz.sin_cos();
    let rxm = Matrix3::new(1.0, 0.0, 0.0, 0.0, ca, sa, 0.0, -sa, ca);
    let rym = Matrix3::new(cb, 0.0, -sb, 0.0, 1.0, 0.0, sb, 0.0, cb);
    let rzm = Matrix3::new(cc, sc, 0.0, -sc, cc, 0.0, 0.0, 0.0, 1.0);
    rxm * rym * rzm
}

/// Inverse of [`fsl_euler_to_rotation`].
///
/// With `R = Rx·Ry·Rz` in FSL's signs: `R[0][2] = −sin ry`,
/// `R[0][1]/R[0][0] = tan rz`, `R[1][2]/R[2][2] = tan rx`. Near gimbal lock
/// (|cos ry| tiny) rz is set to 0 and rx absorbs the remaining rotation.
pub fn fsl_rotation_to_euler(r: &Matrix3<f64>) -> [f64; 3] {
    let sy = (-r[(0, 2)]).clamp(-1.0, 1.0);
    let ry = sy.asin();
    let cy = ry.cos();
    if cy.abs() > 1e-9 {
        let rz = r[(0, 1)].atan2(r[(0, 0)]);
        let rx = r[(1, 2)].atan2(r[(2, 2)]);
        [rx, ry, rz]
    } else {
        // rz := 0 → R = Rx·Ry: R[1][0] = sa·sb, R[1][1] = ca.
        let rx = (r[(1, 0)] * sy.signum()).atan2(r[(1, 1)]);
        [rx, ry, 0.0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < tol)
    }

    #[test]
    fn fsl_elementary_rotations_are_transposed_textbook_ones() {
        // FSL's Rz(θ) maps the x axis to (cos θ, −sin θ): clockwise seen from +z.
        let r = fsl_euler_to_rotation(0.0, 0.0, 0.3);
        let x = r * Vector3::x();
        assert!((x.y + 0.3f64.sin()).abs() < 1e-12);
        let textbook = rotation_from_vector(Vector3::new(0.0, 0.0, 0.3));
        assert!((r - textbook.transpose()).norm() < 1e-12);
        // R = Rx·Ry·Rz: order matters and is checked against explicit products.
        let (a, b, c) = (0.1, -0.2, 0.3);
        let expected = rotation_from_vector(Vector3::new(a, 0.0, 0.0)).transpose()
            * rotation_from_vector(Vector3::new(0.0, b, 0.0)).transpose()
            * rotation_from_vector(Vector3::new(0.0, 0.0, c)).transpose();
        assert!((fsl_euler_to_rotation(a, b, c) - expected).norm() < 1e-12);
    }

    #[test]
    fn params_round_trip_through_matrices() {
        let centre = Vector3::new(60.0, 70.0, 40.0);
        for p in [
            [0.01, -0.02, 0.03, 1.5, -2.0, 0.7],
            [-0.3, 0.25, -0.1, -5.0, 3.0, 10.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ] {
            let m = MotionParams(p).to_matrix(centre);
            let back = MotionParams::from_matrix(&m, centre);
            assert!(close(&back.0, &p, 1e-12), "{p:?} -> {:?}", back.0);
            let t = ref_to_volume_from_par(&MotionParams(p), centre);
            assert!(close(&par_from_ref_to_volume(&t, centre).0, &p, 1e-12));
        }
    }

    #[test]
    fn translation_is_about_the_centre() {
        // A pure rotation about the centre leaves the centre fixed and reports
        // zero translation; the same matrix seen about another centre does not.
        let centre = Vector3::new(10.0, 20.0, 30.0);
        let m = MotionParams([0.1, 0.0, 0.0, 0.0, 0.0, 0.0]).to_matrix(centre);
        let moved = (m * centre.push(1.0)).xyz();
        assert!((moved - centre).norm() < 1e-12);
        let other = MotionParams::from_matrix(&m, Vector3::zeros());
        assert!(other.0[4].abs() > 0.1);
    }

    #[test]
    fn gimbal_lock_still_reproduces_the_rotation() {
        let r = fsl_euler_to_rotation(0.4, std::f64::consts::FRAC_PI_2, 0.2);
        let [a, b, c] = fsl_rotation_to_euler(&r);
        assert!((fsl_euler_to_rotation(a, b, c) - r).norm() < 1e-9);
    }

    #[test]
    fn framewise_displacement_follows_power() {
        let a = MotionParams([0.0; 6]);
        let b = MotionParams([0.01, -0.01, 0.0, 0.1, -0.2, 0.3]);
        let fd = framewise_displacement(&a, &b, 50.0);
        assert!((fd - (0.02 * 50.0 + 0.6)).abs() < 1e-12);
    }
}
