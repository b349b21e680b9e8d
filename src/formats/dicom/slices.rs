//! One slice per file: decoding a slice, stacking slices into a volume, and
//! grouping a stream of slice files into volumes.
//!
//! In: single-slice files (or the frames of an enhanced file), each with
//! its position, orientation and acquisition time. Out: volumes on
//! dcm2niix's grid — slices sorted along the normal `row × column`, spacing
//! from the positions — with their slice timing.
//!
//! [`SliceAssembler`] groups files by series and volume number (temporal
//! position, else acquisition number). A volume is complete when it holds
//! as many slices as the header says (Images in Acquisition or a vendor
//! equivalent) or, when no header says, as many as the series' previous
//! volume had; the first volume of such a series completes when a slice of
//! a later volume arrives (or at [`SliceAssembler::finish_all`]). A second
//! file for a position already filled is a duplicate: reported, not used.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use nalgebra::Vector3;

use super::affine::{self, Plane};
use super::{DicomError, DicomInfo, Header, Rescale, float, seconds_of_day, tags, text};
use crate::types::volume::Volume;

/// One decoded slice.
#[derive(Debug, Clone)]
pub struct Slice {
    /// Rows of the image.
    pub rows: usize,
    /// Columns of the image.
    pub cols: usize,
    /// Orientation and pixel spacing.
    pub plane: Plane,
    /// Image Position (Patient): the first stored pixel, LPS mm.
    pub position: Vector3<f64>,
    /// Spacing Between Slices, else Slice Thickness (used for one-slice
    /// volumes only).
    pub thickness: Option<f64>,
    /// Acquisition time, seconds (any origin common to the volume).
    pub time: Option<f64>,
    /// Scaled pixel values, columns fastest, rows bottom-up (dcm2niix's
    /// in-plane order).
    pub values: Vec<f32>,
}

impl Slice {
    /// Distance along `normal` (LPS mm).
    fn along(&self, normal: &Vector3<f64>) -> f64 {
        self.position.dot(normal)
    }
}

/// Read the pixel rows of image `frame` (of a file with several) bottom-up.
pub(crate) fn rows_bottom_up(
    h: &Header,
    frame: usize,
    rows: usize,
    cols: usize,
    frames: usize,
    scale: Rescale,
) -> Result<Vec<f32>, DicomError> {
    let samples = h.samples(rows * cols * frames)?;
    let mut values = Vec::with_capacity(rows * cols);
    let base = frame * rows * cols;
    for j in 0..rows {
        samples.push_row(base + (rows - 1 - j) * cols, cols, scale, &mut values);
    }
    Ok(values)
}

/// Decode a single-slice file.
pub(super) fn decode(h: &Header) -> Result<Slice, DicomError> {
    let o = h.obj;
    let (rows, cols) = h.rows_cols()?;
    let plane = Plane::new(
        &h.required_floats(o, tags::IMAGE_ORIENTATION, "Image Orientation (Patient)")?,
        &h.required_floats(o, tags::PIXEL_SPACING, "Pixel Spacing")?,
    )?;
    let position =
        position_of(&h.required_floats(o, tags::IMAGE_POSITION, "Image Position (Patient)")?)?;
    let values = rows_bottom_up(h, 0, rows, cols, 1, Rescale::of(o)?)?;
    Ok(Slice {
        rows,
        cols,
        plane,
        position,
        thickness: float(o, tags::SPACING_BETWEEN_SLICES)
            .filter(|v| *v > 0.0)
            .or_else(|| float(o, tags::SLICE_THICKNESS).filter(|v| *v > 0.0)),
        time: text(o, tags::ACQUISITION_TIME).and_then(|t| seconds_of_day(&t)),
        values,
    })
}

pub(crate) fn position_of(v: &[f64]) -> Result<Vector3<f64>, DicomError> {
    let [x, y, z] = <[f64; 3]>::try_from(v).map_err(|_| DicomError::Invalid {
        what: format!("Image Position (Patient) has {} values, not 3", v.len()),
    })?;
    Ok(Vector3::new(x, y, z))
}

/// Stack slices of one volume (any order) into a volume and its slice
/// timing (seconds from the earliest slice, in k order; `None` when a
/// slice has no time).
pub fn stack(mut slices: Vec<Slice>) -> Result<(Volume, Option<Vec<f64>>), DicomError> {
    let Some(first) = slices.first() else {
        return Err(DicomError::Invalid {
            what: "a volume with no slices".into(),
        });
    };
    let (rows, cols, plane) = (first.rows, first.cols, first.plane);
    if let Some((i, s)) = slices
        .iter()
        .enumerate()
        .find(|(_, s)| s.rows != rows || s.cols != cols || !s.plane.same_as(&plane))
    {
        return Err(DicomError::Invalid {
            what: format!(
                "slice {i} is {}x{} pixels at {:?}/{:?}, unlike the first slice's {cols}x{rows} at {:?}/{:?}",
                s.cols, s.rows, s.plane.row_dir, s.plane.col_dir, plane.row_dir, plane.col_dir
            ),
        });
    }
    let normal = plane.normal();
    slices.sort_by(|a, b| a.along(&normal).total_cmp(&b.along(&normal)));
    let n = slices.len();
    let pos: Vec<f64> = slices.iter().map(|s| s.along(&normal)).collect();
    let dz = if n > 1 {
        let dz = (pos[n - 1] - pos[0]) / (n - 1) as f64;
        let tol = (0.01 * dz).max(0.01);
        if let Some(w) = pos.windows(2).find(|w| (w[1] - w[0] - dz).abs() > tol) {
            return Err(DicomError::Invalid {
                what: if (w[1] - w[0]).abs() <= tol {
                    format!(
                        "two slices at the same position ({:.3} mm along the normal)",
                        w[0]
                    )
                } else {
                    format!(
                        "slices are unevenly spaced: {:.3} mm where the volume averages {dz:.3} mm",
                        w[1] - w[0]
                    )
                },
            });
        }
        dz
    } else {
        slices[0].thickness.unwrap_or(1.0)
    };
    let grid = affine::grid(
        &plane.normalized(),
        [cols, rows, n],
        slices[0].position,
        normal * dz,
        dz,
    )?;
    let times: Option<Vec<f64>> = slices.iter().map(|s| s.time).collect();
    let timing = times.map(|t| {
        let t0 = t.iter().copied().fold(f64::INFINITY, f64::min);
        t.iter().map(|x| x - t0).collect()
    });
    let mut values = Vec::with_capacity(rows * cols * n);
    for s in &slices {
        values.extend_from_slice(&s.values);
    }
    let volume = Volume::from_file_order(grid, values).ok_or_else(|| DicomError::Invalid {
        what: "voxel count does not match the slices".into(),
    })?;
    Ok((volume, timing))
}

/// Which volume a slice belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId {
    /// Series Number (0 when absent).
    pub series: u32,
    /// Volume number within the series (0 when the header has none).
    pub volume: u32,
}

impl VolumeId {
    /// The volume a single-slice file belongs to, by its header.
    pub fn of(info: &DicomInfo) -> VolumeId {
        VolumeId {
            series: info.series_number.unwrap_or(0),
            volume: info.volume_number().unwrap_or(0),
        }
    }
}

/// What adding a slice did.
#[derive(Debug)]
pub enum Added {
    /// Kept; the volume still waits for `expected - have` slices (or for a
    /// later volume, when `expected` is unknown).
    Waiting {
        /// Slices in hand.
        have: usize,
        /// Slices the volume needs, when known.
        expected: Option<usize>,
    },
    /// A file for a slice position the volume already holds; not used.
    /// `identical` when its pixels equal the held slice's.
    Duplicate {
        /// The file that filled that position first.
        first: PathBuf,
        /// Same pixel values.
        identical: bool,
    },
}

/// A volume the assembler finished.
#[derive(Debug)]
pub struct Assembled {
    /// Its series and volume number.
    pub id: VolumeId,
    /// Its files, in name order.
    pub paths: Vec<PathBuf>,
    /// The volume and the header facts of its first file (with the
    /// volume's slice timing), or why the slices do not make a volume.
    pub result: Result<(Volume, DicomInfo), DicomError>,
}

#[derive(Debug, Default)]
struct Group {
    slices: Vec<(PathBuf, Slice)>,
    info: Option<DicomInfo>,
    expected: Option<usize>,
}

/// Groups single-slice files into volumes.
#[derive(Debug, Default)]
pub struct SliceAssembler {
    groups: BTreeMap<VolumeId, Group>,
    /// Slices per volume learned from a finished volume of each series.
    learned: HashMap<u32, usize>,
    done: Vec<Assembled>,
}

/// Positions closer than this along the normal are the same slice.
const SAME_POSITION_MM: f64 = 1e-3;

impl SliceAssembler {
    /// Nothing held.
    pub fn new() -> SliceAssembler {
        SliceAssembler::default()
    }

    /// Add the slice decoded from `path`. Volumes this completes are
    /// collected by [`SliceAssembler::take_finished`]. An error means the
    /// slice cannot belong to its volume (its shape differs).
    pub fn add(
        &mut self,
        path: PathBuf,
        slice: Slice,
        info: DicomInfo,
    ) -> Result<Added, DicomError> {
        let id = VolumeId::of(&info);
        // A slice of a later volume completes earlier volumes of the same
        // series whose size was unknown.
        let earlier: Vec<VolumeId> = self
            .groups
            .iter()
            .filter(|(g, grp)| {
                g.series == id.series
                    && g.volume < id.volume
                    && grp.expected.is_none()
                    && !self.learned.contains_key(&g.series)
            })
            .map(|(g, _)| g.clone())
            .collect();
        for g in earlier {
            self.finish(&g);
        }
        let expected = info
            .images_in_acquisition
            .map(|n| n as usize)
            .or_else(|| self.learned.get(&id.series).copied());
        let grp = self.groups.entry(id.clone()).or_default();
        if let Some((p, _)) = grp.slices.first() {
            let s0 = &grp.slices[0].1;
            if s0.rows != slice.rows || s0.cols != slice.cols || !s0.plane.same_as(&slice.plane) {
                return Err(DicomError::Invalid {
                    what: format!(
                        "a {}x{} slice does not fit series {} volume {}, whose first file {} is {}x{}",
                        slice.cols,
                        slice.rows,
                        id.series,
                        id.volume,
                        p.display(),
                        s0.cols,
                        s0.rows
                    ),
                });
            }
        }
        let normal = slice.plane.normal();
        if let Some((p, held)) = grp
            .slices
            .iter()
            .find(|(_, s)| (s.along(&normal) - slice.along(&normal)).abs() < SAME_POSITION_MM)
        {
            return Ok(Added::Duplicate {
                first: p.clone(),
                identical: held.values == slice.values,
            });
        }
        grp.slices.push((path, slice));
        if grp.info.is_none() {
            grp.info = Some(info);
        }
        grp.expected = grp.expected.or(expected);
        let (have, expected) = (grp.slices.len(), grp.expected);
        if expected.is_some_and(|e| have >= e) {
            self.finish(&id);
        }
        Ok(Added::Waiting { have, expected })
    }

    fn finish(&mut self, id: &VolumeId) {
        let Some(grp) = self.groups.remove(id) else {
            return;
        };
        let mut paths: Vec<PathBuf> = grp.slices.iter().map(|(p, _)| p.clone()).collect();
        paths.sort();
        let n = grp.slices.len();
        let result = stack(grp.slices.into_iter().map(|(_, s)| s).collect()).and_then(|(v, t)| {
            let mut info = grp.info.ok_or_else(|| DicomError::Invalid {
                what: "a volume without header".into(),
            })?;
            info.slice_timing = t;
            Ok((v, info))
        });
        if result.is_ok() {
            self.learned.entry(id.series).or_insert(n);
        }
        self.done.push(Assembled {
            id: id.clone(),
            paths,
            result,
        });
    }

    /// Volumes completed since the last call.
    pub fn take_finished(&mut self) -> Vec<Assembled> {
        std::mem::take(&mut self.done)
    }

    /// How many slices volume `id` holds and needs, if it is still open.
    pub fn progress(&self, id: &VolumeId) -> Option<(usize, Option<usize>)> {
        self.groups.get(id).map(|g| {
            (
                g.slices.len(),
                g.expected.or_else(|| self.learned.get(&id.series).copied()),
            )
        })
    }

    /// Give up on volume `id`: its files, and how many slices it had of how many.
    pub fn abandon(&mut self, id: &VolumeId) -> Option<(Vec<PathBuf>, usize, Option<usize>)> {
        let g = self.groups.remove(id)?;
        let n = g.slices.len();
        Some((
            g.slices.into_iter().map(|(p, _)| p).collect(),
            n,
            g.expected,
        ))
    }

    /// The volumes still open.
    pub fn open(&self) -> Vec<VolumeId> {
        self.groups.keys().cloned().collect()
    }

    /// Finish every open volume with the slices it has (a folder read to
    /// its end), plus those completed earlier and not yet taken.
    pub fn finish_all(&mut self) -> Vec<Assembled> {
        let ids: Vec<VolumeId> = self.groups.keys().cloned().collect();
        for id in ids {
            let short = self
                .groups
                .get(&id)
                .and_then(|g| g.expected.map(|e| (g.slices.len(), e)))
                .filter(|(have, e)| have < e);
            if let Some((have, e)) = short {
                let g = self.groups.remove(&id).unwrap_or_default();
                self.done.push(Assembled {
                    id: id.clone(),
                    paths: g.slices.into_iter().map(|(p, _)| p).collect(),
                    result: Err(DicomError::Truncated {
                        what: format!(
                            "series {} volume {}: only {have} of its {e} slices arrived",
                            id.series, id.volume
                        ),
                    }),
                });
            } else {
                self.finish(&id);
            }
        }
        self.take_finished()
    }
}
