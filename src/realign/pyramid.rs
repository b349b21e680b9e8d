//! Multi-resolution pyramid: block-averaged copies of a volume.
//!
//! In: a [`Volume`]. Out: [`Image`]s at coarser levels plus each level's
//! voxel → FSL-mm map, so that a transform estimated at one level applies
//! unchanged at the next.

use nalgebra::Matrix4;

use super::interpolate::Image;
use crate::types::volume::{Grid, Volume};

/// The geometry of one pyramid level.
#[derive(Debug, Clone)]
pub struct LevelGeometry {
    /// Block size per axis (1 = full resolution).
    pub factor: [usize; 3],
    /// Level dimensions.
    pub dims: [usize; 3],
    /// Level voxel → FSL scaled-mm of the original grid.
    pub vox_to_fsl: Matrix4<f64>,
    /// Inverse of `vox_to_fsl`.
    pub fsl_to_vox: Matrix4<f64>,
    /// Level voxel size in mm.
    pub spacing: [f64; 3],
}

/// Smallest level dimension worth registering on.
const MIN_LEVEL_DIM: usize = 8;

/// Block factors per level, finest first: each level halves every axis
/// that still has at least `2·MIN_LEVEL_DIM` voxels and voxels under 8 mm.
pub fn level_factors(grid: &Grid, levels: usize) -> Vec<[usize; 3]> {
    let mut out = vec![[1, 1, 1]];
    for _ in 1..levels {
        let prev = out[out.len() - 1];
        let mut f = prev;
        let mut changed = false;
        for a in 0..3 {
            let n_next = grid.dims[a] / (prev[a] * 2);
            let spacing_next = grid.pixdim[a] * (prev[a] * 2) as f64;
            if n_next >= MIN_LEVEL_DIM && spacing_next <= 16.0 {
                f[a] = prev[a] * 2;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        out.push(f);
    }
    out
}

impl LevelGeometry {
    /// Geometry of the level with block `factor` on `grid`.
    pub fn new(grid: &Grid, factor: [usize; 3]) -> LevelGeometry {
        let dims = [
            grid.dims[0] / factor[0],
            grid.dims[1] / factor[1],
            grid.dims[2] / factor[2],
        ];
        // Level voxel I covers original voxels f·I .. f·I+f−1, centred at
        // f·I + (f−1)/2.
        let mut s = Matrix4::identity();
        for a in 0..3 {
            s[(a, a)] = factor[a] as f64;
            s[(a, 3)] = (factor[a] as f64 - 1.0) / 2.0;
        }
        let vox_to_fsl = grid.vox_to_fsl() * s;
        let fsl_to_vox = vox_to_fsl.try_inverse().unwrap_or_else(Matrix4::identity);
        let spacing = [
            grid.pixdim[0] * factor[0] as f64,
            grid.pixdim[1] * factor[1] as f64,
            grid.pixdim[2] * factor[2] as f64,
        ];
        LevelGeometry {
            factor,
            dims,
            vox_to_fsl,
            fsl_to_vox,
            spacing,
        }
    }
}

/// Block-average `vol` by `factor` (the trailing remainder on each axis is dropped).
pub fn downsample(vol: &Volume, factor: [usize; 3]) -> Image {
    let src = vol.values();
    let [nx, ny, _] = vol.grid().dims;
    downsample_raw(src, vol.grid().dims, factor, nx, ny)
}

fn downsample_raw(
    src: &[f32],
    dims: [usize; 3],
    factor: [usize; 3],
    nx: usize,
    ny: usize,
) -> Image {
    let [fx, fy, fz] = factor;
    let out_dims = [dims[0] / fx, dims[1] / fy, dims[2] / fz];
    if factor == [1, 1, 1] {
        return Image {
            dims,
            data: src.to_vec(),
        };
    }
    let [ox, oy, oz] = out_dims;
    let mut data = vec![0.0f32; ox * oy * oz];
    let scale = 1.0 / (fx * fy * fz) as f32;
    // Accumulate whole source rows into the output row so memory is read
    // sequentially; this runs on every volume.
    for k in 0..oz * fz {
        let kk = k / fz;
        for j in 0..oy * fy {
            let jj = j / fy;
            let row = &src[nx * (j + ny * k)..nx * (j + ny * k) + ox * fx];
            let out_row = &mut data[ox * (jj + oy * kk)..ox * (jj + oy * kk + 1)];
            for (o, chunk) in out_row.iter_mut().zip(row.chunks_exact(fx)) {
                *o += chunk.iter().sum::<f32>();
            }
        }
    }
    for v in &mut data {
        *v *= scale;
    }
    Image {
        dims: out_dims,
        data,
    }
}

/// Separable [1/4, 1/2, 1/4] smoothing (σ ≈ 0.7 voxel) along every axis
/// with at least three voxels; borders replicate the edge voxel.
///
/// Applied to both images at full resolution it removes the content that
/// trilinear interpolation treats differently at different sub-voxel
/// offsets, which otherwise biases the estimate towards whole-voxel shifts.
pub fn smooth_binomial(src: &[f32], dims: [usize; 3]) -> Image {
    let [nx, ny, nz] = dims;
    let mut a = src.to_vec();
    let mut b = vec![0.0f32; a.len()];
    // x: contiguous rows.
    if nx >= 3 {
        for (row_in, row_out) in a.chunks_exact(nx).zip(b.chunks_exact_mut(nx)) {
            row_out[0] = 0.75 * row_in[0] + 0.25 * row_in[1];
            for i in 1..nx - 1 {
                row_out[i] = 0.25 * (row_in[i - 1] + row_in[i + 1]) + 0.5 * row_in[i];
            }
            row_out[nx - 1] = 0.75 * row_in[nx - 1] + 0.25 * row_in[nx - 2];
        }
        std::mem::swap(&mut a, &mut b);
    }
    // y and z: combine whole rows so the inner loop stays contiguous.
    for (stride, n, outer) in [(nx, ny, nz), (nx * ny, nz, 1)] {
        if n < 3 {
            continue;
        }
        let block = stride * n;
        for o in 0..outer {
            let base = o * block;
            for p in 0..n {
                let lo = if p == 0 { 0 } else { p - 1 };
                let hi = if p + 1 == n { n - 1 } else { p + 1 };
                let (r_lo, r_mid, r_hi) =
                    (base + lo * stride, base + p * stride, base + hi * stride);
                let out = &mut b[r_mid..r_mid + stride];
                for (q, v) in out.iter_mut().enumerate() {
                    *v = 0.25 * (a[r_lo + q] + a[r_hi + q]) + 0.5 * a[r_mid + q];
                }
            }
        }
        std::mem::swap(&mut a, &mut b);
    }
    Image { dims, data: a }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::volume::Grid;
    use nalgebra::Vector3;

    #[test]
    fn level_centres_map_to_block_centres() {
        let grid = Grid::centred([64, 64, 36], [3.0, 3.0, 3.0]);
        let lv = LevelGeometry::new(&grid, [2, 2, 2]);
        assert_eq!(lv.dims, [32, 32, 18]);
        // Level voxel 0 is the centre of original voxels 0 and 1.
        let p = Grid::apply(&lv.vox_to_fsl, Vector3::zeros());
        let q = Grid::apply(&grid.vox_to_fsl(), Vector3::new(0.5, 0.5, 0.5));
        assert!((p - q).norm() < 1e-12);
    }

    #[test]
    fn factors_stop_at_small_dimensions() {
        let grid = Grid::centred([64, 64, 20], [3.0, 3.0, 3.0]);
        let f = level_factors(&grid, 3);
        assert_eq!(f, vec![[1, 1, 1], [2, 2, 2], [4, 4, 2]]);
    }

    #[test]
    fn binomial_smoothing_keeps_linear_ramps_inside_and_constants_everywhere() {
        let dims = [5, 4, 3];
        let ramp: Vec<f32> = (0..60)
            .map(|n| (n % 5) as f32 * 2.0 + (n / 20) as f32)
            .collect();
        let s = smooth_binomial(&ramp, dims);
        // Interior voxels of a linear function are unchanged.
        let idx = 2 + 5 * (1 + 4);
        assert!((s.data[idx] - ramp[idx]).abs() < 1e-5);
        let flat = smooth_binomial(&[3.0; 60], dims);
        assert!(flat.data.iter().all(|&v| (v - 3.0).abs() < 1e-6));
    }

    #[test]
    fn block_average_is_the_mean_of_each_block() {
        let grid = Grid::centred([4, 2, 2], [1.0, 1.0, 1.0]);
        let vals: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let vol = Volume::from_file_order(grid, vals.clone()).unwrap();
        let img = downsample(&vol, [2, 2, 2]);
        assert_eq!(img.dims, [2, 1, 1]);
        let mean0 = [0, 1, 4, 5, 8, 9, 12, 13]
            .iter()
            .map(|&i| vals[i])
            .sum::<f32>()
            / 8.0;
        assert!((img.data[0] - mean0).abs() < 1e-6);
    }
}
