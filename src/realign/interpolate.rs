//! Interpolator: trilinear sampling of a voxel image at fractional indices.
//!
//! In: an [`Image`] (values x-fastest) and voxel coordinates. Out: the
//! interpolated value, or `None` outside the image.

/// A bare voxel image: dimensions and values in file order (x fastest).
#[derive(Debug, Clone)]
pub struct Image {
    /// Voxels along i, j, k.
    pub dims: [usize; 3],
    /// Values, index `i + nx*(j + ny*k)`.
    pub data: Vec<f32>,
}

/// A borrowed voxel image (what the interpolator reads).
#[derive(Debug, Clone, Copy)]
pub struct ImageRef<'a> {
    /// Voxels along i, j, k.
    pub dims: [usize; 3],
    /// Values, index `i + nx*(j + ny*k)`.
    pub data: &'a [f32],
}

impl Image {
    /// Borrow as an [`ImageRef`].
    pub fn view(&self) -> ImageRef<'_> {
        ImageRef {
            dims: self.dims,
            data: &self.data,
        }
    }
}

impl ImageRef<'_> {
    /// Value at integer voxel (i, j, k); caller guarantees bounds.
    #[inline]
    pub fn at(&self, i: usize, j: usize, k: usize) -> f32 {
        self.data[i + self.dims[0] * (j + self.dims[1] * k)]
    }
}

/// Split a coordinate into a base index and fraction such that `base + 1` is
/// still inside `0..n` (the last voxel is reached with fraction 1).
#[inline(always)]
fn split(x: f32, n: usize) -> (usize, f32) {
    let last = (n - 1) as f32;
    let b = x.floor().min(last - 1.0).max(0.0);
    (b as usize, x - b)
}

/// Trilinear interpolation at voxel coordinates `(x, y, z)`.
///
/// Returns `None` when the point lies outside `[0, n-1]` on any axis (with a
/// 1e-4 voxel tolerance so that exact grid points on the border count).
/// Every axis must have at least two voxels.
#[inline]
pub fn trilinear(img: ImageRef<'_>, x: f32, y: f32, z: f32) -> Option<f32> {
    const EPS: f32 = 1e-4;
    let [nx, ny, nz] = img.dims;
    if !(x >= -EPS && y >= -EPS && z >= -EPS)
        || x > (nx - 1) as f32 + EPS
        || y > (ny - 1) as f32 + EPS
        || z > (nz - 1) as f32 + EPS
    {
        return None;
    }
    Some(trilinear_inside(img, x, y, z))
}

/// Trilinear interpolation for a point known to be inside (or on the border
/// of) the image; coordinates are clamped, never out of bounds.
#[inline(always)]
pub fn trilinear_inside(img: ImageRef<'_>, x: f32, y: f32, z: f32) -> f32 {
    let [nx, ny, nz] = img.dims;
    let (i, fx) = split(x, nx);
    let (j, fy) = split(y, ny);
    let (k, fz) = split(z, nz);
    let sx = 1;
    let sy = nx;
    let sz = nx * ny;
    let base = i + nx * (j + ny * k);
    let d = &img.data;
    let c000 = d[base];
    let c100 = d[base + sx];
    let c010 = d[base + sy];
    let c110 = d[base + sx + sy];
    let c001 = d[base + sz];
    let c101 = d[base + sx + sz];
    let c011 = d[base + sy + sz];
    let c111 = d[base + sx + sy + sz];
    let c00 = c000 + (c100 - c000) * fx;
    let c10 = c010 + (c110 - c010) * fx;
    let c01 = c001 + (c101 - c001) * fx;
    let c11 = c011 + (c111 - c011) * fx;
    let c0 = c00 + (c10 - c00) * fy;
    let c1 = c01 + (c11 - c01) * fy;
    c0 + (c1 - c0) * fz
}

/// Trilinear interpolation without bounds handling, for points the caller
/// has checked lie in `[0, n-1)` on every axis (the hot resampling path).
#[inline(always)]
pub fn trilinear_interior(img: ImageRef<'_>, x: f32, y: f32, z: f32) -> f32 {
    let [nx, ny, _] = img.dims;
    // Truncation is floor for the non-negative coordinates guaranteed here.
    let (i, j, k) = (x as usize, y as usize, z as usize);
    let (fx, fy, fz) = (x - i as f32, y - j as f32, z - k as f32);
    let (sy, sz) = (nx, nx * ny);
    let base = i + nx * (j + ny * k);
    // One bounds check for the whole 2×2×2 neighbourhood.
    let d = &img.data[base..base + sz + sy + 2];
    let c00 = d[0] + (d[1] - d[0]) * fx;
    let c10 = d[sy] + (d[sy + 1] - d[sy]) * fx;
    let c01 = d[sz] + (d[sz + 1] - d[sz]) * fx;
    let c11 = d[sy + sz] + (d[sy + sz + 1] - d[sy + sz]) * fx;
    let c0 = c00 + (c10 - c00) * fy;
    let c1 = c01 + (c11 - c01) * fy;
    c0 + (c1 - c0) * fz
}

/// Sampling for resampling output: like MCFLIRT's "extraslice" rule, points
/// up to one voxel beyond the border take the border value (so a slab that
/// moves by a fraction of a slice keeps its edge slices), farther points are
/// `fill`.
#[inline]
pub fn trilinear_extrapolating(img: ImageRef<'_>, x: f32, y: f32, z: f32, fill: f32) -> f32 {
    let [nx, ny, nz] = img.dims;
    let inside = |v: f32, n: usize| v >= -1.0 && v <= n as f32;
    if !(inside(x, nx) && inside(y, ny) && inside(z, nz)) {
        return fill;
    }
    let c = |v: f32, n: usize| v.clamp(0.0, (n - 1) as f32);
    trilinear_inside(img, c(x, nx), c(y, ny), c(z, nz))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> Image {
        // f(i,j,k) = i + 10 j + 100 k: trilinear reproduces it exactly.
        let dims = [4, 3, 5];
        let mut data = Vec::new();
        for k in 0..5 {
            for j in 0..3 {
                for i in 0..4 {
                    data.push(i as f32 + 10.0 * j as f32 + 100.0 * k as f32);
                }
            }
        }
        Image { dims, data }
    }

    #[test]
    fn reproduces_linear_functions_and_grid_values() {
        let img = ramp();
        let v = trilinear(img.view(), 1.25, 0.5, 2.75).unwrap();
        assert!((v - (1.25 + 5.0 + 275.0)).abs() < 1e-3);
        assert_eq!(
            trilinear(img.view(), 3.0, 2.0, 4.0),
            Some(3.0 + 20.0 + 400.0)
        );
        assert_eq!(trilinear(img.view(), 0.0, 0.0, 0.0), Some(0.0));
    }

    #[test]
    fn outside_is_none_and_extrapolation_clamps_one_voxel() {
        let img = ramp();
        assert_eq!(trilinear(img.view(), -0.1, 0.0, 0.0), None);
        assert_eq!(trilinear(img.view(), 0.0, 2.1, 0.0), None);
        assert_eq!(
            trilinear_extrapolating(img.view(), -0.5, 0.0, 0.0, -1.0),
            0.0
        );
        assert_eq!(
            trilinear_extrapolating(img.view(), -1.5, 0.0, 0.0, -1.0),
            -1.0
        );
        assert_eq!(
            trilinear_extrapolating(img.view(), 0.0, 0.0, 4.9, -1.0),
            400.0
        );
    }
}
