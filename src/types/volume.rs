//! The in-memory brain volume every stage passes along.
//!
//! In: decoded voxels and the header geometry of one 3-D image.
//! Out: [`Volume`] — voxel values as `f32` (scaling already applied) on a
//! [`Grid`] that knows its dimensions, voxel sizes and voxel→world affine.
//!
//! Voxel values live in an [`ndarray::Array3`] of shape `(nx, ny, nz)` with
//! the x axis fastest in memory (Fortran order), which is the order of the
//! bytes in a NIfTI file. Logical indexing `data[[i, j, k]]` therefore means
//! the same voxel as nibabel's `img.get_fdata()[i, j, k]`, and iterating
//! `indexed_iter()` visits voxels in the order numpy's `np.where` reports them
//! (first axis slowest).

use nalgebra::{Matrix4, Vector3};
use ndarray::{Array3, ShapeBuilder};

/// Voxel grid geometry: dimensions, voxel sizes and the voxel→world affine.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Number of voxels along i, j, k.
    pub dims: [usize; 3],
    /// Voxel sizes in mm (absolute values of pixdim\[1..4\], 0 replaced by 1).
    pub pixdim: [f64; 3],
    /// Voxel (i, j, k) → world (RAS+, mm), from sform, else qform, else the
    /// pixdim scaling (NIfTI's "method 1").
    pub affine: Matrix4<f64>,
}

impl Grid {
    /// A grid with a diagonal (axis-aligned RAS) affine centred on the field of view.
    pub fn centred(dims: [usize; 3], pixdim: [f64; 3]) -> Grid {
        let mut affine = Matrix4::identity();
        for a in 0..3 {
            affine[(a, a)] = pixdim[a];
            affine[(a, 3)] = -0.5 * (dims[a] as f64 - 1.0) * pixdim[a];
        }
        Grid {
            dims,
            pixdim,
            affine,
        }
    }

    /// Total voxel count.
    pub fn len(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }

    /// True when the grid holds no voxels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether two grids are the same voxel lattice in the world: same
    /// dimensions and affines equal within `tol_mm` (entries in mm).
    pub fn matches(&self, other: &Grid, tol_mm: f64) -> bool {
        self.dims == other.dims
            && (self.affine - other.affine)
                .iter()
                .all(|d| d.abs() <= tol_mm)
    }

    /// FSL treats images whose affine has a positive determinant
    /// ("neurological" storage) as if their x axis were flipped; this says
    /// whether that applies, so motion parameters match MCFLIRT's.
    pub fn fsl_flips_x(&self) -> bool {
        self.affine.fixed_view::<3, 3>(0, 0).determinant() > 0.0
    }

    /// Voxel index → FSL "scaled mm" coordinates: `(i·dx, j·dy, k·dz)`, with i
    /// mirrored (`nx-1-i`) for neurological images. No origin, no rotation:
    /// the frame MCFLIRT's matrices and `.par` files are expressed in.
    pub fn vox_to_fsl(&self) -> Matrix4<f64> {
        let mut m = Matrix4::identity();
        m[(0, 0)] = self.pixdim[0];
        m[(1, 1)] = self.pixdim[1];
        m[(2, 2)] = self.pixdim[2];
        if self.fsl_flips_x() {
            m[(0, 0)] = -self.pixdim[0];
            m[(0, 3)] = (self.dims[0] as f64 - 1.0) * self.pixdim[0];
        }
        m
    }

    /// Human-readable summary for error messages.
    pub fn describe(&self) -> String {
        format!(
            "{}x{}x{} voxels of {:.3}x{:.3}x{:.3} mm",
            self.dims[0],
            self.dims[1],
            self.dims[2],
            self.pixdim[0],
            self.pixdim[1],
            self.pixdim[2]
        )
    }

    /// Apply a 4×4 affine to a point.
    pub fn apply(m: &Matrix4<f64>, p: Vector3<f64>) -> Vector3<f64> {
        (m * p.push(1.0)).xyz()
    }
}

/// One 3-D image: voxel values on a grid.
#[derive(Debug, Clone)]
pub struct Volume {
    // Private so that every volume is built x-fastest (Fortran order): the hot
    // loops read `values()` as raw file-order memory.
    data: Array3<f32>,
    grid: Grid,
}

impl Volume {
    /// Wrap voxel values given in file order (x fastest) on `grid`.
    ///
    /// Returns `None` when the number of values does not match the grid.
    pub fn from_file_order(grid: Grid, values: Vec<f32>) -> Option<Volume> {
        let [nx, ny, nz] = grid.dims;
        let data = Array3::from_shape_vec((nx, ny, nz).f(), values).ok()?;
        Some(Volume { data, grid })
    }

    /// A volume of zeros on `grid`.
    pub fn zeros(grid: Grid) -> Volume {
        let [nx, ny, nz] = grid.dims;
        Volume {
            data: Array3::zeros((nx, ny, nz).f()),
            grid,
        }
    }

    /// Voxel values, shape `(nx, ny, nz)`; `data()[[i, j, k]]` is nibabel's `[i, j, k]`.
    pub fn data(&self) -> &Array3<f32> {
        &self.data
    }

    /// Where the voxels are in the world.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// Replace the geometry (same dimensions) — e.g. a header-only fix-up.
    ///
    /// Returns `false` and leaves the volume untouched when dimensions differ.
    pub fn set_grid(&mut self, grid: Grid) -> bool {
        if grid.dims != self.grid.dims {
            return false;
        }
        self.grid = grid;
        true
    }

    /// The voxel values in file order (x fastest).
    pub fn values(&self) -> &[f32] {
        self.data
            .as_slice_memory_order()
            .expect("Volume data is always contiguous")
    }

    /// Mutable voxel values in file order (x fastest).
    pub fn values_mut(&mut self) -> &mut [f32] {
        self.data
            .as_slice_memory_order_mut()
            .expect("Volume data is always contiguous")
    }

    /// Index into [`Volume::values`] of voxel (i, j, k).
    #[inline]
    pub fn linear_index(&self, i: usize, j: usize, k: usize) -> usize {
        let [nx, ny, _] = self.grid.dims;
        i + nx * (j + ny * k)
    }

    /// Position of the first voxel that is NaN or infinite, if any.
    pub fn first_non_finite(&self) -> Option<[usize; 3]> {
        self.data
            .indexed_iter()
            .find(|(_, v)| !v.is_finite())
            .map(|((i, j, k), _)| [i, j, k])
    }

    /// Centre of gravity in FSL scaled-mm coordinates, with the minimum
    /// subtracted first — the centre MCFLIRT decomposes `.par` parameters
    /// about (see [`Grid::vox_to_fsl`]). Falls back to the field-of-view
    /// centre for a constant image.
    pub fn fsl_centre_of_gravity(&self) -> Vector3<f64> {
        let min = self
            .values()
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(f32::INFINITY, f32::min);
        let [nx, ny, nz] = self.grid.dims;
        let (mut sw, mut si, mut sj, mut sk) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        let vals = self.values();
        for k in 0..nz {
            for j in 0..ny {
                let row = &vals[nx * (j + ny * k)..nx * (j + ny * k + 1)];
                let mut rw = 0.0f64;
                let mut ri = 0.0f64;
                for (i, &v) in row.iter().enumerate() {
                    if v.is_finite() {
                        let w = (v - min) as f64;
                        rw += w;
                        ri += w * i as f64;
                    }
                }
                sw += rw;
                si += ri;
                sj += rw * j as f64;
                sk += rw * k as f64;
            }
        }
        let centre_vox = if sw > 1e-5 {
            Vector3::new(si / sw, sj / sw, sk / sw)
        } else {
            Vector3::new(
                0.5 * (nx as f64 - 1.0),
                0.5 * (ny as f64 - 1.0),
                0.5 * (nz as f64 - 1.0),
            )
        };
        Grid::apply(&self.grid.vox_to_fsl(), centre_vox)
    }

    /// Count of non-finite voxels.
    pub fn count_non_finite(&self) -> usize {
        self.values().iter().filter(|v| !v.is_finite()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_order_is_x_fastest_and_logical_index_matches_numpy() {
        let grid = Grid::centred([2, 3, 4], [1.0, 1.0, 1.0]);
        let values: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let vol = Volume::from_file_order(grid, values).unwrap();
        // In the file, voxel (i,j,k) sits at i + 2*(j + 3*k).
        assert_eq!(vol.data[[1, 0, 0]], 1.0);
        assert_eq!(vol.data[[0, 1, 0]], 2.0);
        assert_eq!(vol.data[[0, 0, 1]], 6.0);
        assert_eq!(vol.linear_index(1, 2, 3), 1 + 2 * (2 + 3 * 3));
        // indexed_iter is logical C order: the last axis fastest, as np.where.
        let order: Vec<_> = vol.data.indexed_iter().take(3).map(|(ix, _)| ix).collect();
        assert_eq!(order, vec![(0, 0, 0), (0, 0, 1), (0, 0, 2)]);
    }

    #[test]
    fn fsl_frame_flips_x_only_for_neurological_affines() {
        let ras = Grid::centred([10, 10, 10], [2.0, 2.0, 3.0]);
        assert!(ras.fsl_flips_x());
        let m = ras.vox_to_fsl();
        let p = Grid::apply(&m, Vector3::new(0.0, 1.0, 1.0));
        assert_eq!(p, Vector3::new(18.0, 2.0, 3.0));
        let mut las = ras.clone();
        las.affine[(0, 0)] = -2.0;
        assert!(!las.fsl_flips_x());
        let p = Grid::apply(&las.vox_to_fsl(), Vector3::new(0.0, 1.0, 1.0));
        assert_eq!(p, Vector3::new(0.0, 2.0, 3.0));
    }

    #[test]
    fn centre_of_gravity_subtracts_the_minimum() {
        let mut grid = Grid::centred([4, 1, 1], [2.0, 1.0, 1.0]);
        grid.affine[(0, 0)] = -2.0; // radiological: no flip
        let vol = Volume::from_file_order(grid, vec![10.0, 10.0, 10.0, 14.0]).unwrap();
        let c = vol.fsl_centre_of_gravity();
        assert!((c.x - 6.0).abs() < 1e-12, "{c:?}");
    }

    #[test]
    fn grid_match_tolerates_rounding_only() {
        let a = Grid::centred([4, 4, 4], [2.0, 2.0, 2.0]);
        let mut b = a.clone();
        b.affine[(0, 3)] += 1e-6;
        assert!(a.matches(&b, 1e-4));
        b.affine[(0, 3)] += 0.5;
        assert!(!a.matches(&b, 1e-4));
        let c = Grid::centred([4, 4, 5], [2.0, 2.0, 2.0]);
        assert!(!a.matches(&c, 1e-4));
    }
}
