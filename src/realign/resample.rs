//! The single resampling of each volume onto the output grid.
//!
//! In: a moving volume and its reference → volume transform. Out: the volume
//! on the output grid — the session reference grid, or another grid (the
//! calibration session's reference) reached through a fixed world-space
//! transform composed into the same step, so voxels are interpolated once.

use nalgebra::{Matrix4, Vector3};

use super::interpolate::{ImageRef, trilinear_extrapolating};
use crate::volume::{Grid, Volume};

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
        for k in 0..nz {
            for j in 0..ny {
                // Walk each output row incrementally in f64 (start) + f32
                // (steps): exact enough, and no matrix product per voxel.
                let start = o + dj * j as f64 + dk * k as f64;
                let (sx, sy, sz) = (start.x as f32, start.y as f32, start.z as f32);
                let (ix, iy, iz) = (di.x as f32, di.y as f32, di.z as f32);
                for i in 0..nx {
                    let f = i as f32;
                    out.push(trilinear_extrapolating(
                        img,
                        sx + ix * f,
                        sy + iy * f,
                        sz + iz * f,
                        0.0,
                    ));
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realign::transform::{MotionParams, ref_to_volume_from_par};

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
