//! Enhanced multi-frame MR (Siemens XA): one frame per slice, geometry in
//! the functional groups.
//!
//! In: a parsed header with a Per-frame Functional Groups Sequence. Out:
//! the volume (frames stacked along the normal as single slices are, see
//! [`super::slices::stack`]), its slice timing and its temporal position.
//!
//! Each frame's position, orientation, pixel spacing and rescale come from
//! its own functional groups, else the shared ones. Slice times come from
//! Siemens' per-frame "SIEMENS MR SDI 02" time after start (what dcm2niix
//! reports), else Frame Acquisition DateTime. A file whose frames span
//! several temporal positions holds several volumes, which is refused:
//! the real-time export writes one volume per file.

use dicom_core::Tag;
use dicom_object::InMemDicomObject;

use super::affine::Plane;
use super::slices::{Slice, position_of, rows_bottom_up, stack};
use super::{
    DicomError, Header, Rescale, float, floats, item, private_block, seconds_of_day, tags, text,
    uint,
};
use crate::types::volume::Volume;

const SDI_CREATOR: &str = "SIEMENS MR SDI 02";

/// The decoded volume and what the frames say about it.
pub(super) struct Enhanced {
    pub volume: Volume,
    pub slice_timing: Option<Vec<f64>>,
    pub temporal_position: Option<u32>,
}

/// The functional group `seq` of a frame: its own, else the shared one.
fn group<'a>(
    frame: &'a InMemDicomObject,
    shared: Option<&'a InMemDicomObject>,
    seq: Tag,
) -> Option<&'a InMemDicomObject> {
    item(frame, seq).or_else(|| shared.and_then(|s| item(s, seq)))
}

/// Siemens' per-frame time after start (s), nested in a private sequence.
fn siemens_frame_time(frame: &InMemDicomObject) -> Option<f64> {
    let b = private_block(frame, 0x0021, SDI_CREATOR)?;
    let inner = item(frame, Tag(0x0021, (b << 8) | 0xFE))?;
    let b2 = private_block(inner, 0x0021, SDI_CREATOR)?;
    float(inner, Tag(0x0021, (b2 << 8) | 0x04))
}

pub(super) fn decode(h: &Header) -> Result<Enhanced, DicomError> {
    let o = h.obj;
    let frames_el = o
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS)
        .and_then(|e| e.items())
        .unwrap_or(&[]);
    let n = uint(o, tags::NUMBER_OF_FRAMES).unwrap_or(1) as usize;
    if n == 0 || frames_el.len() != n {
        return Err(DicomError::Invalid {
            what: format!(
                "Number of Frames is {n} but the per-frame functional groups hold {}",
                frames_el.len()
            ),
        });
    }
    let shared = item(o, tags::SHARED_FUNCTIONAL_GROUPS);
    let (rows, cols) = h.rows_cols()?;
    // One check of the whole pixel data before any frame is read.
    h.samples(rows * cols * n)?;
    let mut temporal = Vec::with_capacity(n);
    let mut siemens_times = Vec::with_capacity(n);
    let mut slices = Vec::with_capacity(n);
    for (f, frame) in frames_el.iter().enumerate() {
        let missing = |what: &str| DicomError::Invalid {
            what: format!("frame {} has no {what}", f + 1),
        };
        let pos = group(frame, shared, tags::PLANE_POSITION_SEQUENCE)
            .and_then(|g| floats(g, tags::IMAGE_POSITION))
            .ok_or_else(|| missing("Image Position (Patient)"))?;
        let iop = group(frame, shared, tags::PLANE_ORIENTATION_SEQUENCE)
            .and_then(|g| floats(g, tags::IMAGE_ORIENTATION))
            .ok_or_else(|| missing("Image Orientation (Patient)"))?;
        let measures = group(frame, shared, tags::PIXEL_MEASURES_SEQUENCE)
            .ok_or_else(|| missing("Pixel Measures"))?;
        let spacing =
            floats(measures, tags::PIXEL_SPACING).ok_or_else(|| missing("Pixel Spacing"))?;
        let scale = match group(frame, shared, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE) {
            Some(g) => Rescale::of(g)?,
            None => Rescale::of(o)?,
        };
        let content = item(frame, tags::FRAME_CONTENT_SEQUENCE);
        temporal.push(content.and_then(|c| uint(c, tags::TEMPORAL_POSITION_INDEX)));
        siemens_times.push(siemens_frame_time(frame));
        let time = content
            .and_then(|c| text(c, tags::FRAME_ACQUISITION_DATETIME))
            .and_then(|t| seconds_of_day(&t));
        slices.push(Slice {
            rows,
            cols,
            plane: Plane::new(&iop, &spacing)?,
            position: position_of(&pos)?,
            thickness: float(measures, tags::SPACING_BETWEEN_SLICES)
                .filter(|v| *v > 0.0)
                .or_else(|| float(measures, tags::SLICE_THICKNESS).filter(|v| *v > 0.0)),
            time,
            values: rows_bottom_up(h, f, rows, cols, n, scale)?,
        });
    }
    let mut positions: Vec<u32> = temporal.iter().flatten().copied().collect();
    positions.sort_unstable();
    positions.dedup();
    if positions.len() > 1 {
        return Err(DicomError::Unsupported {
            what: format!(
                "{n} frames from {} temporal positions ({}..{}): several volumes in one file; \
                 export one volume per file",
                positions.len(),
                positions[0],
                positions[positions.len() - 1]
            ),
        });
    }
    // Siemens' own per-frame times, when every frame has one.
    if siemens_times.iter().all(Option::is_some) {
        for (s, t) in slices.iter_mut().zip(&siemens_times) {
            s.time = *t;
        }
    }
    let (volume, slice_timing) = stack(slices)?;
    Ok(Enhanced {
        volume,
        slice_timing,
        temporal_position: positions.first().copied(),
    })
}
