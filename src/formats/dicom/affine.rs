//! DICOM patient geometry → the voxel grid dcm2niix writes.
//!
//! In: the in-plane directions (Image Orientation (Patient)), pixel
//! spacing, the position of the first stored pixel of the first slice, and
//! the step from one output slice to the next, all in DICOM's LPS mm.
//! Out: a [`Grid`] whose affine maps voxel (i, j, k) to RAS+ mm.
//!
//! dcm2niix's voxel order, which this reproduces: i runs along a row (the
//! column index), j runs up the image (the row index flipped, so row
//! `rows-1` is j = 0), k runs through the slices in the order the caller
//! stacked them. LPS becomes RAS by negating the first two world axes.

use nalgebra::{Matrix4, Vector3};

use crate::types::volume::Grid;

use super::DicomError;

/// In-plane geometry shared by every slice of a volume.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plane {
    /// Direction of increasing column index (first triplet of IOP), unit.
    pub row_dir: Vector3<f64>,
    /// Direction of increasing row index (second triplet of IOP), unit.
    pub col_dir: Vector3<f64>,
    /// Spacing between columns (along `row_dir`), mm: PixelSpacing\[1\].
    pub col_spacing: f64,
    /// Spacing between rows (along `col_dir`), mm: PixelSpacing\[0\].
    pub row_spacing: f64,
}

impl Plane {
    /// From Image Orientation (Patient) and Pixel Spacing, both checked.
    pub fn new(iop: &[f64], pixel_spacing: &[f64]) -> Result<Plane, DicomError> {
        let [a, b, c, d, e, f] = <[f64; 6]>::try_from(iop).map_err(|_| DicomError::Invalid {
            what: format!(
                "Image Orientation (Patient) has {} values, not 6",
                iop.len()
            ),
        })?;
        let [rs, cs] = <[f64; 2]>::try_from(pixel_spacing).map_err(|_| DicomError::Invalid {
            what: format!("Pixel Spacing has {} values, not 2", pixel_spacing.len()),
        })?;
        let row_dir = Vector3::new(a, b, c);
        let col_dir = Vector3::new(d, e, f);
        let unit =
            |v: Vector3<f64>| v.iter().all(|x| x.is_finite()) && (v.norm() - 1.0).abs() < 1e-2;
        if !unit(row_dir) || !unit(col_dir) || row_dir.dot(&col_dir).abs() > 1e-2 {
            return Err(DicomError::Invalid {
                what: format!(
                    "Image Orientation (Patient) {iop:?} is not two orthogonal unit vectors"
                ),
            });
        }
        if !(rs.is_finite() && rs > 0.0 && cs.is_finite() && cs > 0.0) {
            return Err(DicomError::Invalid {
                what: format!("Pixel Spacing {pixel_spacing:?} is not two positive numbers"),
            });
        }
        Ok(Plane {
            // As written: see `normalized`.
            row_dir,
            col_dir,
            col_spacing: cs,
            row_spacing: rs,
        })
    }

    /// The directions scaled to unit length. dcm2niix normalises them for
    /// slice stacks but its mosaic origin follows the header's 6-decimal
    /// values: each choice is 2e-5 mm from its output where the other is
    /// 3e-5 to 6e-5 mm.
    pub fn normalized(&self) -> Plane {
        Plane {
            row_dir: self.row_dir.normalize(),
            col_dir: self.col_dir.normalize(),
            ..*self
        }
    }

    /// Unit normal `row_dir × col_dir`.
    pub fn normal(&self) -> Vector3<f64> {
        self.row_dir.cross(&self.col_dir).normalize()
    }

    /// Whether two slices share this orientation and spacing (within
    /// rounding of the header's decimal strings).
    pub fn same_as(&self, o: &Plane) -> bool {
        (self.row_dir - o.row_dir).norm() < 1e-4
            && (self.col_dir - o.col_dir).norm() < 1e-4
            && (self.col_spacing - o.col_spacing).abs() < 1e-4
            && (self.row_spacing - o.row_spacing).abs() < 1e-4
    }
}

/// The grid of `cols × rows × slices` voxels whose stored pixel (column 0,
/// row 0) of slice 0 sits at `first` (LPS), with `slice_step` (LPS, mm)
/// from one slice to the next; `thickness` is the voxel size reported along
/// k (its length, or the slice thickness for a single slice).
pub fn grid(
    plane: &Plane,
    dims: [usize; 3],
    first: Vector3<f64>,
    slice_step: Vector3<f64>,
    thickness: f64,
) -> Result<Grid, DicomError> {
    let [_, rows, _] = dims;
    let u = plane.row_dir * plane.col_spacing;
    let v = plane.col_dir * plane.row_spacing;
    // j = rows-1-row: the origin is the first pixel of the last row.
    let origin = first + v * (rows.saturating_sub(1) as f64);
    let mut lps = Matrix4::identity();
    for r in 0..3 {
        lps[(r, 0)] = u[r];
        lps[(r, 1)] = -v[r];
        lps[(r, 2)] = slice_step[r];
        lps[(r, 3)] = origin[r];
    }
    let mut affine = lps;
    for c in 0..4 {
        affine[(0, c)] = -lps[(0, c)];
        affine[(1, c)] = -lps[(1, c)];
    }
    if affine.iter().any(|x| !x.is_finite()) || affine.fixed_view::<3, 3>(0, 0).determinant() == 0.0
    {
        return Err(DicomError::Invalid {
            what: format!("the geometry gives a degenerate affine: {affine:?}"),
        });
    }
    Ok(Grid {
        dims,
        pixdim: [plane.col_spacing, plane.row_spacing, thickness],
        affine,
    })
}
