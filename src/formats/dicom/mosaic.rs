//! Classic Siemens mosaic: every slice of a volume tiled into one image.
//!
//! In: a parsed header whose image is a mosaic. Out: the volume on
//! dcm2niix's grid and the slice timing.
//!
//! - Slice count: CSA `NumberOfImagesInMosaic`, else the private
//!   (0019,xx0A) of "SIEMENS MR HEADER" (real-time exports often carry only
//!   the CSA header); tiles per side `ceil(sqrt(n))`, filled row by row.
//! - Image Position (Patient) is that of the whole mosaic's corner; the
//!   first slice's corner is half the unused tiles further in, along both
//!   in-plane axes.
//! - Slice direction: CSA `SliceNormalVector`, else `row × column`;
//!   spacing: Spacing Between Slices, else Slice Thickness.
//! - Mosaics stored head to foot ("H>>F", CSA `ProtocolSliceNumber` of the
//!   first tile > 1) are reversed so k still increases along the normal as
//!   dcm2niix writes them; their slice times are reversed with them.
//! - Slice times: CSA `MosaicRefAcqTimes` (ms), else (0019,xx29).

use dicom_core::Tag;
use dicom_object::InMemDicomObject;
use nalgebra::Vector3;

use super::affine::{self, Plane};
use super::csa::Csa;
use super::{DicomError, Header, Rescale, float, numbers, private_block, tags};
use crate::types::volume::Volume;

const CSA_CREATOR: &str = "SIEMENS CSA HEADER";
const MR_CREATOR: &str = "SIEMENS MR HEADER";

/// The CSA image header, when the file has one.
pub fn csa_image(o: &InMemDicomObject) -> Result<Option<Csa>, DicomError> {
    let Some(block) = private_block(o, 0x0029, CSA_CREATOR) else {
        return Ok(None);
    };
    let Some(e) = o.get(Tag(0x0029, (block << 8) | 0x10)) else {
        return Ok(None);
    };
    let bytes = e.to_bytes().map_err(|err| DicomError::Invalid {
        what: format!("CSA image header is not bytes: {err}"),
    })?;
    Csa::parse(&bytes)
        .map(Some)
        .map_err(|why| DicomError::Invalid {
            what: format!("CSA image header: {why}"),
        })
}

fn siemens_private(o: &InMemDicomObject, element: u8) -> Option<Tag> {
    let b = private_block(o, 0x0019, MR_CREATOR)?;
    Some(Tag(0x0019, (b << 8) | u16::from(element)))
}

/// Slices in the mosaic per the CSA header, else (0019,xx0A).
pub fn slice_count(o: &InMemDicomObject) -> Result<Option<usize>, DicomError> {
    Ok(slice_count_with(o, csa_image(o)?.as_ref()))
}

fn slice_count_with(o: &InMemDicomObject, csa: Option<&Csa>) -> Option<usize> {
    let from_csa = csa.and_then(|c| c.float("NumberOfImagesInMosaic"));
    let n = from_csa.or_else(|| {
        siemens_private(o, 0x0A)
            .and_then(|t| numbers(o, t, 2))
            .and_then(|v| v.first().copied())
    });
    n.filter(|v| *v >= 1.0 && v.fract() == 0.0 && *v <= 10_000.0)
        .map(|v| v as usize)
}

pub(super) fn decode(h: &Header) -> Result<(Volume, Option<Vec<f64>>), DicomError> {
    let o = h.obj;
    let csa = csa_image(o)?.unwrap_or_default();
    let n = slice_count_with(o, Some(&csa)).ok_or_else(|| DicomError::Unsupported {
        what: "mosaic without a slice count: no CSA NumberOfImagesInMosaic and no (0019,xx0A)"
            .into(),
    })?;
    let (rows, cols) = h.rows_cols()?;
    let m = (1..=n).find(|k| k * k >= n).unwrap_or(n);
    if rows % m != 0 || cols % m != 0 {
        return Err(DicomError::Invalid {
            what: format!("a {cols}x{rows} mosaic cannot hold {n} slices in {m}x{m} equal tiles"),
        });
    }
    let (r, c) = (rows / m, cols / m);
    let samples = h.samples(rows * cols)?;
    let plane = Plane::new(
        &h.required_floats(o, tags::IMAGE_ORIENTATION, "Image Orientation (Patient)")?,
        &h.required_floats(o, tags::PIXEL_SPACING, "Pixel Spacing")?,
    )?;
    let ipp = h.required_floats(o, tags::IMAGE_POSITION, "Image Position (Patient)")?;
    let [x, y, z] = <[f64; 3]>::try_from(ipp.as_slice()).map_err(|_| DicomError::Invalid {
        what: format!("Image Position (Patient) has {} values, not 3", ipp.len()),
    })?;
    let normal = match csa.floats("SliceNormalVector").as_deref() {
        Some([a, b, cc]) if Vector3::new(*a, *b, *cc).norm() > 0.5 => {
            Vector3::new(*a, *b, *cc).normalize()
        }
        _ => plane.normal(),
    };
    let dz = float(o, tags::SPACING_BETWEEN_SLICES)
        .filter(|v| *v > 0.0)
        .or_else(|| float(o, tags::SLICE_THICKNESS).filter(|v| *v > 0.0))
        .ok_or_else(|| DicomError::Invalid {
            what: "neither Spacing Between Slices nor Slice Thickness is a positive number".into(),
        })?;
    let reversed = csa.float("ProtocolSliceNumber").is_some_and(|p| p > 1.0);
    let corner = Vector3::new(x, y, z)
        + plane.row_dir * (plane.col_spacing * (cols - c) as f64 / 2.0)
        + plane.col_dir * (plane.row_spacing * (rows - r) as f64 / 2.0);
    let (first, step) = if reversed {
        (corner + normal * (dz * (n - 1) as f64), -normal * dz)
    } else {
        (corner, normal * dz)
    };
    let grid = affine::grid(&plane, [c, r, n], first, step, dz)?;
    let scale = Rescale::of(o)?;
    let mut values = Vec::with_capacity(r * c * n);
    for k in 0..n {
        let tile = if reversed { n - 1 - k } else { k };
        let (tr, tc) = (tile / m, tile % m);
        for j in 0..r {
            let row = tr * r + (r - 1 - j);
            samples.push_row(row * cols + tc * c, c, scale, &mut values);
        }
    }
    let volume = Volume::from_file_order(grid, values).ok_or_else(|| DicomError::Invalid {
        what: "voxel count does not match the mosaic".into(),
    })?;
    let times = csa
        .floats("MosaicRefAcqTimes")
        .or_else(|| siemens_private(o, 0x29).and_then(|t| numbers(o, t, 8)))
        .filter(|t| t.len() >= n)
        .map(|t| {
            let mut s: Vec<f64> = t[..n].iter().map(|ms| ms / 1000.0).collect();
            if reversed {
                s.reverse();
            }
            s
        });
    Ok((volume, times))
}
