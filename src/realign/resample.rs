//! The single resampling of each volume onto the output grid.
//!
//! In: a moving volume and its reference → volume transform. Out: the volume
//! on the output grid — the session reference grid, or another grid (the
//! calibration session's reference) reached through a fixed world-space
//! transform composed into the same step, so voxels are interpolated once.

use nalgebra::{Matrix4, Vector3};

use super::interpolate::{ImageRef, trilinear_extrapolating, trilinear_interior};
use crate::types::mask::SessionMask;
use crate::types::volume::{Grid, Volume};

/// Maps output voxels to reference FSL mm once; per volume only the motion
/// transform is composed in.
#[derive(Debug, Clone)]
pub struct Resampler {
    target: Grid,
    /// Output voxel → reference FSL mm.
    target_vox_to_ref_fsl: Matrix4<f64>,
}

impl Resampler {
    /// Output on the reference grid itself.
    pub fn onto_reference(reference: &Grid) -> Resampler {
        Resampler {
            target: reference.clone(),
            target_vox_to_ref_fsl: reference.vox_to_fsl(),
        }
    }

    /// Output on `target`, whose world coordinates map to the reference's
    /// world coordinates by `target_to_reference_world` (identity when both
    /// share the scanner's frame).
    pub fn onto_grid(
        target: &Grid,
        reference: &Grid,
        target_to_reference_world: &Matrix4<f64>,
    ) -> Resampler {
        let ref_world_to_vox = reference
            .affine
            .try_inverse()
            .unwrap_or_else(Matrix4::identity);
        Resampler {
            target: target.clone(),
            target_vox_to_ref_fsl: reference.vox_to_fsl()
                * ref_world_to_vox
                * target_to_reference_world
                * target.affine,
        }
    }

    /// The output grid.
    pub fn target(&self) -> &Grid {
        &self.target
    }

    /// Output voxel → moving voxel for `ref_to_volume` (FSL mm).
    pub fn voxel_map(&self, moving: &Grid, ref_to_volume: &Matrix4<f64>) -> Matrix4<f64> {
        let mov_fsl_to_vox = moving
            .vox_to_fsl()
            .try_inverse()
            .unwrap_or_else(Matrix4::identity);
        mov_fsl_to_vox * ref_to_volume * self.target_vox_to_ref_fsl
    }

    /// Resample the whole output grid into `out` (resized as needed).
    /// Points more than one voxel outside the moving volume become 0.
    pub fn resample_into(&self, moving: &Volume, ref_to_volume: &Matrix4<f64>, out: &mut Vec<f32>) {
        let map = self.voxel_map(moving.grid(), ref_to_volume);
        let img = ImageRef {
            dims: moving.grid().dims,
            data: moving.values(),
        };
        let [nx, ny, nz] = self.target.dims;
        out.clear();
        out.reserve(nx * ny * nz);
        let col = |c: usize| Vector3::new(map[(0, c)], map[(1, c)], map[(2, c)]);
        let (di, dj, dk, o) = (col(0), col(1), col(2), col(3));
        let step = [di.x as f32, di.y as f32, di.z as f32];
        let dims = img.dims;
        for k in 0..nz {
            for j in 0..ny {
                // Walk each output row incrementally: start in f64, steps in
                // f32 — exact enough, and no matrix product per voxel.
                let s = o + dj * j as f64 + dk * k as f64;
                let start = [s.x as f32, s.y as f32, s.z as f32];
                let (lo, hi) = interior_span(start, step, dims, nx);
                let at = |i: usize| {
                    let f = i as f32;
                    [
                        start[0] + step[0] * f,
                        start[1] + step[1] * f,
                        start[2] + step[2] * f,
                    ]
                };
                for i in 0..lo {
                    let [x, y, z] = at(i);
                    out.push(trilinear_extrapolating(img, x, y, z, 0.0));
                }
                for i in lo..hi {
                    let [x, y, z] = at(i);
                    out.push(trilinear_interior(img, x, y, z));
                }
                for i in hi.max(lo)..nx {
                    let [x, y, z] = at(i);
                    out.push(trilinear_extrapolating(img, x, y, z, 0.0));
                }
            }
        }
    }

    /// Resample only the voxels of `mask` (on the output grid) into `out`, in
    /// the mask's `np.where` order — what the ring buffers and the GLM use,
    /// at a fraction of the cost of the whole grid. Values equal those of
    /// [`Resampler::resample_into`] at the same voxels.
    pub fn resample_masked(
        &self,
        moving: &Volume,
        ref_to_volume: &Matrix4<f64>,
        mask: &SessionMask,
        out: &mut Vec<f32>,
    ) {
        let map = self.voxel_map(moving.grid(), ref_to_volume);
        let img = ImageRef {
            dims: moving.grid().dims,
            data: moving.values(),
        };
        let m: [f32; 12] = std::array::from_fn(|n| map[(n / 4, n % 4)] as f32);
        let [nx, ny, nz] = img.dims;
        let inside = |v: f32, n: usize| v >= 1e-3 && v <= n as f32 - 1.0 - 1e-3;
        out.clear();
        out.resize(mask.len(), 0.0);
        // Visit voxels in file order so the moving image is read roughly
        // sequentially; write each value to its np.where position.
        for v in mask.file_order() {
            let (i, j, k) = (v.ijk[0] as f32, v.ijk[1] as f32, v.ijk[2] as f32);
            let x = m[0] * i + m[1] * j + m[2] * k + m[3];
            let y = m[4] * i + m[5] * j + m[6] * k + m[7];
            let z = m[8] * i + m[9] * j + m[10] * k + m[11];
            let value = if inside(x, nx) && inside(y, ny) && inside(z, nz) {
                trilinear_interior(img, x, y, z)
            } else {
                trilinear_extrapolating(img, x, y, z, 0.0)
            };
            out[v.position as usize] = value;
        }
    }

    /// Resample onto the output grid as a new volume.
    pub fn resample(&self, moving: &Volume, ref_to_volume: &Matrix4<f64>) -> Volume {
        let mut vals = Vec::new();
        self.resample_into(moving, ref_to_volume, &mut vals);
        Volume::from_file_order(self.target.clone(), vals)
            .unwrap_or_else(|| Volume::zeros(self.target.clone()))
    }
}

/// The range of row positions `i` whose sample point `start + i·step` lies
/// safely inside the image on every axis (so the fast interpolation path
/// needs no bounds checks); `(0, 0)` when there is none.
fn interior_span(start: [f32; 3], step: [f32; 3], dims: [usize; 3], n: usize) -> (usize, usize) {
    // A margin keeps `floor(x) + 1` inside despite f32 rounding.
    const MARGIN: f32 = 1e-3;
    let (mut lo, mut hi) = (0.0f64, n as f64);
    for a in 0..3 {
        let (s, d) = (start[a] as f64, step[a] as f64);
        let (min, max) = (MARGIN as f64, dims[a] as f64 - 1.0 - MARGIN as f64);
        if d.abs() < 1e-12 {
            if s < min || s > max {
                return (0, 0);
            }
            continue;
        }
        let (t0, t1) = ((min - s) / d, (max - s) / d);
        let (t0, t1) = if t0 <= t1 { (t0, t1) } else { (t1, t0) };
        lo = lo.max(t0.ceil());
        hi = hi.min(t1.floor() + 1.0);
    }
    if hi <= lo {
        return (0, 0);
    }
    // Shrink by one on each side against rounding in the f32 walk.
    let lo = (lo as usize + 1).min(n);
    let hi = (hi as usize).saturating_sub(1).max(lo);
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::transform::{MotionParams, ref_to_volume_from_par};

    fn ramp_volume(grid: &Grid) -> Volume {
        let [nx, ny, nz] = grid.dims;
        let mut v = Vec::new();
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    v.push((2 * i + 3 * j + 5 * k) as f32);
                }
            }
        }
        Volume::from_file_order(grid.clone(), v).unwrap()
    }

    #[test]
    fn fast_and_checked_paths_agree_under_rotation() {
        use crate::realign::interpolate::trilinear_extrapolating;
        let grid = Grid::centred([23, 19, 11], [2.0, 2.0, 3.0]);
        let vals: Vec<f32> = (0..grid.len())
            .map(|n| ((n * 7919) % 1000) as f32)
            .collect();
        let vol = Volume::from_file_order(grid.clone(), vals).unwrap();
        let p = MotionParams([0.1, -0.15, 0.2, 1.3, -2.1, 0.7]);
        let t = ref_to_volume_from_par(&p, Vector3::new(20.0, 18.0, 15.0));
        let r = Resampler::onto_reference(&grid);
        let out = r.resample(&vol, &t);
        let map = r.voxel_map(&grid, &t);
        let img = ImageRef {
            dims: grid.dims,
            data: vol.values(),
        };
        let mut n = 0;
        for k in 0..11 {
            for j in 0..19 {
                for i in 0..23 {
                    let u = map * nalgebra::Vector4::new(i as f64, j as f64, k as f64, 1.0);
                    let want =
                        trilinear_extrapolating(img, u.x as f32, u.y as f32, u.z as f32, 0.0);
                    let got = out.values()[n];
                    assert!((got - want).abs() < 1e-2, "({i},{j},{k}): {got} vs {want}");
                    n += 1;
                }
            }
        }
    }

    #[test]
    fn masked_resampling_equals_the_full_grid_at_mask_voxels() {
        let grid = Grid::centred([17, 13, 9], [2.0, 2.0, 3.0]);
        let vals: Vec<f32> = (0..grid.len()).map(|n| ((n * 7919) % 997) as f32).collect();
        let vol = Volume::from_file_order(grid.clone(), vals).unwrap();
        let inside: Vec<bool> = (0..grid.len()).map(|n| n % 3 != 0).collect();
        let mask = SessionMask::from_file_order(grid.clone(), &inside).unwrap();
        let t = ref_to_volume_from_par(
            &MotionParams([0.05, -0.1, 0.08, 0.9, -1.4, 2.2]),
            Vector3::new(16.0, 12.0, 12.0),
        );
        let r = Resampler::onto_reference(&grid);
        let full = r.resample(&vol, &t);
        let mut want = Vec::new();
        mask.gather_into(full.values(), &mut want);
        let mut got = Vec::new();
        r.resample_masked(&vol, &t, &mask, &mut got);
        assert_eq!(got.len(), want.len());
        for (n, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-2, "voxel {n}: {a} vs {b}");
        }
    }

    #[test]
    fn identity_resampling_returns_the_volume() {
        let grid = Grid::centred([8, 7, 6], [2.0, 2.0, 3.0]);
        let vol = ramp_volume(&grid);
        let out = Resampler::onto_reference(&grid).resample(&vol, &Matrix4::identity());
        assert_eq!(out.values(), vol.values());
    }

    #[test]
    fn a_whole_voxel_translation_shifts_the_values() {
        let grid = Grid::centred([8, 7, 6], [2.0, 2.0, 3.0]);
        let vol = ramp_volume(&grid);
        // The volume moved by +1 voxel in FSL y (2 mm): MCFLIRT's matrix
        // (volume → reference) translates by −2 mm.
        let p = MotionParams([0.0, 0.0, 0.0, 0.0, -2.0, 0.0]);
        let t = ref_to_volume_from_par(&p, Vector3::zeros());
        let out = Resampler::onto_reference(&grid).resample(&vol, &t);
        // Output (i, j, k) reads the volume at (i, j+1, k): ramp + 3.
        let (i, j, k) = (3, 2, 1);
        let idx = i + 8 * (j + 7 * k);
        assert!((out.values()[idx] - (vol.values()[idx] + 3.0)).abs() < 1e-4);
    }

    #[test]
    fn another_grid_is_reached_in_one_step() {
        let reference = Grid::centred([8, 8, 8], [2.0, 2.0, 2.0]);
        let vol = ramp_volume(&reference);
        // The target grid is the reference grid shifted by one voxel (2 mm)
        // in world x: target voxel i sits on reference voxel i+1.
        let mut target = reference.clone();
        target.affine[(0, 3)] += 2.0;
        let r = Resampler::onto_grid(&target, &reference, &Matrix4::identity());
        let out = r.resample(&vol, &Matrix4::identity());
        let idx = 2 + 8 * (3 + 8 * 4);
        assert!((out.values()[idx] - (vol.values()[idx] + 2.0)).abs() < 1e-4);
    }
}
