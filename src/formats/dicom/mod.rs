//! Siemens (and single-slice) DICOM, read in process with dcm2niix's
//! voxel grid.
//!
//! In: the bytes of one DICOM Part 10 file (`.dcm`, `.IMA` or no extension),
//! explicit or implicit VR little endian. Out: [`Decoded`] — a whole
//! [`Volume`] for a classic Siemens mosaic ([`mosaic`]) or an enhanced
//! multi-frame file ([`enhanced`]), or one [`slices::Slice`] for a
//! one-slice-per-file series (grouped into volumes by
//! [`slices::SliceAssembler`]) — plus the header facts ingest needs
//! ([`DicomInfo`]: series and volume numbers, TR, slice timing, SOP
//! instance). Or a [`DicomError`] naming what is wrong, and through
//! [`DicomError::may_be_incomplete`] whether a half-written file could still
//! become readable.
//!
//! The voxel array and affine are what dcm2niix writes for the same input
//! (RAS+; i along a row, j up the image, k along the slice normal
//! `row × column`; see [`affine`]), with Rescale Slope/Intercept applied
//! (nibabel's `get_fdata()` of dcm2niix's file). dicom-rs parses the header;
//! the element walk ([`scan`]) bounds every length first and finds the
//! pixel data, which is converted in place in one pass. The Siemens CSA
//! header ([`csa`]), mosaic tiling, frame sorting and geometry are ours.
//!
//! Compressed transfer syntaxes are refused with their name, never decoded
//! into garbage.

pub mod affine;
pub mod csa;
pub mod enhanced;
pub mod mosaic;
pub mod scan;
pub mod slices;

use std::io;
use std::path::{Path, PathBuf};

use dicom_core::{PrimitiveValue, Tag};
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions};

use crate::types::volume::Volume;

pub use slices::{Slice, SliceAssembler};

/// Why a file could not be decoded. Messages never include the path: the
/// caller knows it and adds it.
#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    /// The file has no bytes at all (just created).
    #[error("file is empty (0 bytes)")]
    Empty,
    /// The preamble region holds only zero bytes and nothing follows yet.
    #[error("the first {len} bytes are all zero: the header has not been written yet")]
    HeaderAllZero {
        /// How many leading zero bytes were examined.
        len: usize,
    },
    /// The bytes stop before the file does: more may still arrive.
    #[error("{what}")]
    Truncated {
        /// Where it ends and what was expected.
        what: String,
    },
    /// Not a DICOM Part 10 file.
    #[error("not a DICOM file: {found}")]
    NotDicom {
        /// What was found instead.
        found: String,
    },
    /// A transfer syntax this reader does not decode (compressed ones).
    #[error(
        "unsupported transfer syntax {uid} ({name}); export uncompressed (explicit or implicit VR little endian)"
    )]
    UnsupportedTransferSyntax {
        /// The UID.
        uid: String,
        /// Its name.
        name: String,
    },
    /// A DICOM file this reader does not handle (colour, several volumes
    /// in one file, no pixel data in a non-image object, …).
    #[error("unsupported DICOM file: {what}")]
    Unsupported {
        /// The feature or value.
        what: String,
    },
    /// A header value that makes no sense, or does not match the pixels.
    #[error("invalid DICOM file: {what}")]
    Invalid {
        /// The element and its value.
        what: String,
    },
    /// The file disappeared between being seen and being read.
    #[error("file vanished before it could be read")]
    Removed,
    /// Any other I/O failure.
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
}

impl DicomError {
    /// True when more bytes arriving could fix the problem: the file is
    /// probably still being written and is worth retrying.
    pub fn may_be_incomplete(&self) -> bool {
        matches!(
            self,
            DicomError::Empty | DicomError::HeaderAllZero { .. } | DicomError::Truncated { .. }
        )
    }

    fn invalid(what: impl Into<String>) -> DicomError {
        DicomError::Invalid { what: what.into() }
    }

    fn unsupported(what: impl Into<String>) -> DicomError {
        DicomError::Unsupported { what: what.into() }
    }

    fn from_io(e: io::Error) -> DicomError {
        if e.kind() == io::ErrorKind::NotFound {
            DicomError::Removed
        } else {
            DicomError::Io(e)
        }
    }
}

/// How the file stores its volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Classic Siemens mosaic: one 2-D image tiling all slices of a volume.
    Mosaic,
    /// Enhanced multi-frame (Siemens XA): one frame per slice.
    Enhanced,
    /// One slice per file.
    Slice,
}

impl Flavour {
    /// Short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Mosaic => "mosaic",
            Flavour::Enhanced => "enhanced multi-frame",
            Flavour::Slice => "single slice",
        }
    }
}

/// Header facts that travel with a decoded file.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomInfo {
    /// How the volume is stored.
    pub flavour: Flavour,
    /// Transfer syntax UID.
    pub transfer_syntax: String,
    /// SOP Instance UID: the same value twice is the same image re-sent.
    pub sop_instance_uid: Option<String>,
    /// Series Instance UID.
    pub series_instance_uid: Option<String>,
    /// Series Number (0020,0011): the run.
    pub series_number: Option<u32>,
    /// Acquisition Number (0020,0012).
    pub acquisition_number: Option<u32>,
    /// Instance Number (0020,0013).
    pub instance_number: Option<u32>,
    /// Temporal Position Index (enhanced, per frame) or Temporal Position
    /// Identifier (0020,0100).
    pub temporal_position: Option<u32>,
    /// Images in Acquisition (0020,1002), or a vendor's slices-per-volume
    /// tag: how many single-slice files make a volume.
    pub images_in_acquisition: Option<u32>,
    /// Repetition time in seconds.
    pub repetition_time: Option<f64>,
    /// Acquisition time of each slice of the volume (in the volume's k
    /// order), seconds from the first, as dcm2niix's `SliceTiming`.
    pub slice_timing: Option<Vec<f64>>,
    /// Series Description (0008,103E).
    pub series_description: Option<String>,
}

impl DicomInfo {
    /// The volume's number within its series, from the header: the
    /// temporal position for enhanced and single-slice files, else the
    /// Acquisition Number, else (one file per volume) the Instance Number.
    /// Scanners number from 1.
    pub fn volume_number(&self) -> Option<u32> {
        match self.flavour {
            Flavour::Enhanced => self
                .temporal_position
                .or(self.acquisition_number)
                .or(self.instance_number),
            Flavour::Mosaic => self.acquisition_number.or(self.instance_number),
            Flavour::Slice => self.temporal_position.or(self.acquisition_number),
        }
    }
}

/// What one file holds.
#[derive(Debug, Clone)]
pub enum Decoded {
    /// A whole volume (mosaic, enhanced).
    Volume {
        /// The voxels, on dcm2niix's grid.
        volume: Volume,
        /// Header facts.
        info: DicomInfo,
    },
    /// One slice of a volume spread over several files.
    Slice {
        /// The slice.
        slice: Slice,
        /// Header facts.
        info: DicomInfo,
    },
}

impl Decoded {
    /// The header facts.
    pub fn info(&self) -> &DicomInfo {
        match self {
            Decoded::Volume { info, .. } | Decoded::Slice { info, .. } => info,
        }
    }
}

/// Read and decode a file.
pub fn read_file(path: &Path) -> Result<Decoded, DicomError> {
    let bytes = std::fs::read(path).map_err(DicomError::from_io)?;
    decode(&bytes)
}

/// Whether `bytes` start like a DICOM Part 10 file (preamble and `DICM`).
pub fn looks_like_dicom(bytes: &[u8]) -> bool {
    (bytes.len() >= 132 && &bytes[128..132] == b"DICM") || bytes.starts_with(b"DICM")
}

/// Decode the bytes of one file.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DicomError> {
    let layout = scan::scan(bytes)?;
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Auto)
        .from_reader(&bytes[..layout.header_end])
        .map_err(|e| DicomError::invalid(format!("the header cannot be parsed: {e}")))?;
    let h = Header {
        obj: &obj,
        bytes,
        layout: &layout,
    };
    h.decode()
}

pub(crate) mod tags {
    use dicom_core::Tag;
    pub const IMAGE_TYPE: Tag = Tag(0x0008, 0x0008);
    pub const SOP_CLASS_UID: Tag = Tag(0x0008, 0x0016);
    pub const SOP_INSTANCE_UID: Tag = Tag(0x0008, 0x0018);
    pub const ACQUISITION_TIME: Tag = Tag(0x0008, 0x0032);
    pub const SERIES_DESCRIPTION: Tag = Tag(0x0008, 0x103E);
    pub const SLICE_THICKNESS: Tag = Tag(0x0018, 0x0050);
    pub const REPETITION_TIME: Tag = Tag(0x0018, 0x0080);
    pub const SPACING_BETWEEN_SLICES: Tag = Tag(0x0018, 0x0088);
    pub const FRAME_ACQUISITION_DATETIME: Tag = Tag(0x0018, 0x9074);
    pub const MR_TIMING_SEQUENCE: Tag = Tag(0x0018, 0x9112);
    pub const SERIES_INSTANCE_UID: Tag = Tag(0x0020, 0x000E);
    pub const SERIES_NUMBER: Tag = Tag(0x0020, 0x0011);
    pub const ACQUISITION_NUMBER: Tag = Tag(0x0020, 0x0012);
    pub const INSTANCE_NUMBER: Tag = Tag(0x0020, 0x0013);
    pub const IMAGE_POSITION: Tag = Tag(0x0020, 0x0032);
    pub const IMAGE_ORIENTATION: Tag = Tag(0x0020, 0x0037);
    pub const TEMPORAL_POSITION_IDENTIFIER: Tag = Tag(0x0020, 0x0100);
    pub const IMAGES_IN_ACQUISITION: Tag = Tag(0x0020, 0x1002);
    pub const FRAME_CONTENT_SEQUENCE: Tag = Tag(0x0020, 0x9111);
    pub const PLANE_POSITION_SEQUENCE: Tag = Tag(0x0020, 0x9113);
    pub const PLANE_ORIENTATION_SEQUENCE: Tag = Tag(0x0020, 0x9116);
    pub const TEMPORAL_POSITION_INDEX: Tag = Tag(0x0020, 0x9128);
    pub const SAMPLES_PER_PIXEL: Tag = Tag(0x0028, 0x0002);
    pub const NUMBER_OF_FRAMES: Tag = Tag(0x0028, 0x0008);
    pub const ROWS: Tag = Tag(0x0028, 0x0010);
    pub const COLUMNS: Tag = Tag(0x0028, 0x0011);
    pub const PIXEL_SPACING: Tag = Tag(0x0028, 0x0030);
    pub const BITS_ALLOCATED: Tag = Tag(0x0028, 0x0100);
    pub const PIXEL_REPRESENTATION: Tag = Tag(0x0028, 0x0103);
    pub const RESCALE_INTERCEPT: Tag = Tag(0x0028, 0x1052);
    pub const RESCALE_SLOPE: Tag = Tag(0x0028, 0x1053);
    pub const PIXEL_MEASURES_SEQUENCE: Tag = Tag(0x0028, 0x9110);
    pub const PIXEL_VALUE_TRANSFORMATION_SEQUENCE: Tag = Tag(0x0028, 0x9145);
    pub const SHARED_FUNCTIONAL_GROUPS: Tag = Tag(0x5200, 0x9229);
    pub const PER_FRAME_FUNCTIONAL_GROUPS: Tag = Tag(0x5200, 0x9230);
}

/// Header values by tag, tolerant of absent or malformed optional ones.
pub(crate) fn text(o: &InMemDicomObject, tag: Tag) -> Option<String> {
    let e = o.get(tag)?;
    // Private elements of an implicit-VR file arrive as raw bytes (UN).
    let s = match e.value().primitive()? {
        PrimitiveValue::U8(b) => String::from_utf8_lossy(b).into_owned(),
        _ => e.to_str().ok()?.into_owned(),
    };
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!s.is_empty()).then(|| s.to_string())
}

/// Numbers of a (private) element: its decoded values, or, when an
/// implicit-VR file left it as raw bytes, those bytes read as little-endian
/// `width`-byte values (2: US, 8: FD).
pub(crate) fn numbers(o: &InMemDicomObject, tag: Tag, width: usize) -> Option<Vec<f64>> {
    let e = o.get(tag)?;
    if let Some(PrimitiveValue::U8(b)) = e.value().primitive() {
        if b.is_empty() || b.len() % width != 0 {
            return None;
        }
        let v: Vec<f64> = match width {
            2 => b
                .chunks_exact(2)
                .map(|c| f64::from(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            8 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(<[u8; 8]>::try_from(c).unwrap_or([0; 8])))
                .collect(),
            _ => return None,
        };
        return v.iter().all(|x| x.is_finite()).then_some(v);
    }
    floats(o, tag)
}

pub(crate) fn int(o: &InMemDicomObject, tag: Tag) -> Option<i64> {
    o.get(tag)?.to_int::<i64>().ok()
}

pub(crate) fn uint(o: &InMemDicomObject, tag: Tag) -> Option<u32> {
    int(o, tag).and_then(|v| u32::try_from(v).ok())
}

pub(crate) fn floats(o: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    let e = o.get(tag)?;
    let v = match e.value().primitive()? {
        // A private decimal string of an implicit-VR file (raw bytes).
        PrimitiveValue::U8(b) => String::from_utf8_lossy(b)
            .split('\\')
            .map(|s| {
                s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                    .parse::<f64>()
                    .ok()
            })
            .collect::<Option<Vec<f64>>>()?,
        _ => e.to_multi_float64().ok()?,
    };
    (!v.is_empty() && v.iter().all(|x| x.is_finite())).then_some(v)
}

pub(crate) fn float(o: &InMemDicomObject, tag: Tag) -> Option<f64> {
    floats(o, tag)?.first().copied()
}

/// The first item of sequence `tag`.
pub(crate) fn item(o: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    o.get(tag)?.items()?.first()
}

/// The element block (0x10..=0xFF) a private creator reserved in `group`.
pub(crate) fn private_block(o: &InMemDicomObject, group: u16, creator: &str) -> Option<u16> {
    // One pass over the (few) elements present, rather than 240 lookups:
    // this runs for every frame of an enhanced file.
    o.tags()
        .filter(|t| t.group() == group && (0x10..=0xFF).contains(&t.element()))
        .find(|t| text(o, *t).is_some_and(|s| s == creator))
        .map(|t| t.element())
}

/// Seconds since midnight of a DICOM TM (`HHMMSS.frac`) or the time part
/// of a DT (`YYYYMMDDHHMMSS.frac`).
pub(crate) fn seconds_of_day(s: &str) -> Option<f64> {
    let s = s.trim();
    // Byte offsets below are only char boundaries in ASCII; a header may
    // hold anything (a non-ASCII date-time used to panic here).
    if !s.is_ascii() {
        return None;
    }
    let t = if s.len() >= 14 && s.find('.').is_none_or(|d| d >= 14) {
        &s[8..]
    } else {
        s
    };
    let (hms, frac) = match t.find('.') {
        Some(d) => (&t[..d], &t[d..]),
        None => (t, ""),
    };
    let digits = |a: usize, b: usize| -> Option<f64> { hms.get(a..b)?.parse::<f64>().ok() };
    let h = digits(0, 2)?;
    let m = if hms.len() >= 4 { digits(2, 4)? } else { 0.0 };
    let sec = if hms.len() >= 6 { digits(4, 6)? } else { 0.0 };
    let f = if frac.len() > 1 {
        frac.parse::<f64>().ok()?
    } else {
        0.0
    };
    Some(h * 3600.0 + m * 60.0 + sec + f)
}

/// Sample type of the native pixel data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SampleKind {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
}

impl SampleKind {
    fn bytes(self) -> usize {
        match self {
            SampleKind::U8 | SampleKind::I8 => 1,
            SampleKind::U16 | SampleKind::I16 => 2,
            SampleKind::U32 | SampleKind::I32 => 4,
        }
    }
}

/// Rescale Slope and Intercept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rescale {
    pub slope: f64,
    pub intercept: f64,
}

impl Rescale {
    pub(crate) fn identity() -> Rescale {
        Rescale {
            slope: 1.0,
            intercept: 0.0,
        }
    }

    /// From an object holding (0028,1053)/(0028,1052), identity when absent.
    pub(crate) fn of(o: &InMemDicomObject) -> Result<Rescale, DicomError> {
        let slope = match o.get(tags::RESCALE_SLOPE) {
            None => 1.0,
            Some(e) => e
                .to_float64()
                .ok()
                .filter(|v| v.is_finite() && *v != 0.0)
                .ok_or_else(|| {
                    DicomError::invalid(format!(
                        "Rescale Slope {:?} is not a finite non-zero number",
                        e.to_str().unwrap_or_default()
                    ))
                })?,
        };
        let intercept = match o.get(tags::RESCALE_INTERCEPT) {
            None => 0.0,
            Some(e) => e
                .to_float64()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    DicomError::invalid(format!(
                        "Rescale Intercept {:?} is not a finite number",
                        e.to_str().unwrap_or_default()
                    ))
                })?,
        };
        Ok(Rescale { slope, intercept })
    }
}

/// The native pixel data, viewed in place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Samples<'a> {
    raw: &'a [u8],
    kind: SampleKind,
}

impl Samples<'_> {
    /// Append `n` samples starting at sample `start`, scaled, to `out`.
    /// The caller has checked that the range lies within the data.
    pub(crate) fn push_row(&self, start: usize, n: usize, scale: Rescale, out: &mut Vec<f32>) {
        let w = self.kind.bytes();
        let Some(raw) = self.raw.get(start * w..(start + n) * w) else {
            return;
        };
        macro_rules! run {
            ($t:ty) => {{
                const N: usize = std::mem::size_of::<$t>();
                // chunks_exact(N) yields N-byte slices; the fallback only
                // avoids an unwrap.
                let it = raw
                    .chunks_exact(N)
                    .map(|c| <$t>::from_le_bytes(<[u8; N]>::try_from(c).unwrap_or([0; N])));
                if scale == Rescale::identity() {
                    out.extend(it.map(|v| v as f32));
                } else {
                    // In f64 then one rounding, as nibabel scales dcm2niix's file.
                    let (s, i) = (scale.slope, scale.intercept);
                    out.extend(it.map(|v| (v as f64 * s + i) as f32));
                }
            }};
        }
        match self.kind {
            SampleKind::U8 => run!(u8),
            SampleKind::I8 => run!(i8),
            SampleKind::U16 => run!(u16),
            SampleKind::I16 => run!(i16),
            SampleKind::U32 => run!(u32),
            SampleKind::I32 => run!(i32),
        }
    }
}

/// A parsed header with the file's bytes.
pub(crate) struct Header<'a> {
    pub obj: &'a InMemDicomObject,
    bytes: &'a [u8],
    layout: &'a scan::Layout,
}

impl<'a> Header<'a> {
    pub(crate) fn required_uint(&self, tag: Tag, name: &str) -> Result<u32, DicomError> {
        uint(self.obj, tag).ok_or_else(|| DicomError::invalid(format!("{name} {tag} is missing")))
    }

    pub(crate) fn required_floats(
        &self,
        o: &InMemDicomObject,
        tag: Tag,
        name: &str,
    ) -> Result<Vec<f64>, DicomError> {
        floats(o, tag)
            .ok_or_else(|| DicomError::invalid(format!("{name} {tag} is missing or not numeric")))
    }

    /// Rows and Columns, checked.
    pub(crate) fn rows_cols(&self) -> Result<(usize, usize), DicomError> {
        let rows = self.required_uint(tags::ROWS, "Rows")? as usize;
        let cols = self.required_uint(tags::COLUMNS, "Columns")? as usize;
        if rows == 0 || cols == 0 {
            return Err(DicomError::invalid(format!(
                "image is {cols}x{rows} pixels"
            )));
        }
        Ok((rows, cols))
    }

    /// The pixel data, checked to hold `count` samples.
    pub(crate) fn samples(&self, count: usize) -> Result<Samples<'a>, DicomError> {
        let spp = uint(self.obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        if spp != 1 {
            return Err(DicomError::unsupported(format!(
                "{spp} samples per pixel (colour); fMRI images have 1"
            )));
        }
        let bits = self.required_uint(tags::BITS_ALLOCATED, "Bits Allocated")?;
        let signed = uint(self.obj, tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1;
        let kind = match (bits, signed) {
            (8, false) => SampleKind::U8,
            (8, true) => SampleKind::I8,
            (16, false) => SampleKind::U16,
            (16, true) => SampleKind::I16,
            (32, false) => SampleKind::U32,
            (32, true) => SampleKind::I32,
            (b, _) => {
                return Err(DicomError::unsupported(format!(
                    "{b} bits allocated per sample (8, 16 or 32 are read)"
                )));
            }
        };
        let Some(range) = self.layout.pixels.clone() else {
            return Err(self.no_pixels());
        };
        let need = count
            .checked_mul(kind.bytes())
            .ok_or_else(|| DicomError::invalid("image size overflows"))?;
        let raw = &self.bytes[range];
        if raw.len() < need {
            return Err(DicomError::invalid(format!(
                "pixel data holds {} bytes; the header's image needs {need}",
                raw.len()
            )));
        }
        Ok(Samples {
            raw: &raw[..need],
            kind,
        })
    }

    /// No pixel data: a file cut between elements, or not an image at all.
    fn no_pixels(&self) -> DicomError {
        let class = text(self.obj, tags::SOP_CLASS_UID).unwrap_or_default();
        // MR, enhanced MR, CT, secondary capture, ... image storage classes.
        let image_class = class.starts_with("1.2.840.10008.5.1.4.1.1.")
            && !class.starts_with("1.2.840.10008.5.1.4.1.1.88")
            && !class.starts_with("1.2.840.10008.5.1.4.1.1.11")
            && !class.starts_with("1.2.840.10008.5.1.4.1.1.104");
        if image_class || class.is_empty() {
            DicomError::Truncated {
                what: format!(
                    "file ends after {} bytes, before its pixel data (7FE0,0010)",
                    self.bytes.len()
                ),
            }
        } else {
            DicomError::unsupported(format!("SOP class {class} holds no image (no pixel data)"))
        }
    }

    fn info(&self, flavour: Flavour) -> DicomInfo {
        let o = self.obj;
        DicomInfo {
            flavour,
            transfer_syntax: self.layout.transfer_syntax.clone(),
            sop_instance_uid: text(o, tags::SOP_INSTANCE_UID),
            series_instance_uid: text(o, tags::SERIES_INSTANCE_UID),
            series_number: uint(o, tags::SERIES_NUMBER),
            acquisition_number: uint(o, tags::ACQUISITION_NUMBER),
            instance_number: uint(o, tags::INSTANCE_NUMBER),
            temporal_position: uint(o, tags::TEMPORAL_POSITION_IDENTIFIER),
            images_in_acquisition: uint(o, tags::IMAGES_IN_ACQUISITION)
                // GE's LocationsInAcquisition.
                .or_else(|| {
                    private_block(o, 0x0021, "GEMS_RELA_01")
                        .and_then(|b| uint(o, Tag(0x0021, (b << 8) | 0x4F)))
                })
                .filter(|&n| n > 0),
            repetition_time: float(o, tags::REPETITION_TIME)
                .or_else(|| {
                    item(o, tags::SHARED_FUNCTIONAL_GROUPS)
                        .and_then(|s| item(s, tags::MR_TIMING_SEQUENCE))
                        .and_then(|t| float(t, tags::REPETITION_TIME))
                })
                .filter(|&ms| ms > 0.0)
                .map(|ms| ms / 1000.0),
            slice_timing: None,
            series_description: text(o, tags::SERIES_DESCRIPTION),
        }
    }

    fn decode(&self) -> Result<Decoded, DicomError> {
        let o = self.obj;
        let frames = uint(o, tags::NUMBER_OF_FRAMES).unwrap_or(1);
        let image_type = o
            .get(tags::IMAGE_TYPE)
            .and_then(|e| e.to_multi_str().ok().map(|v| v.to_vec()))
            .unwrap_or_default();
        let mosaic_type = image_type.iter().any(|s| s.trim() == "MOSAIC");
        if o.get(tags::PER_FRAME_FUNCTIONAL_GROUPS).is_some() {
            let mut info = self.info(Flavour::Enhanced);
            let out = enhanced::decode(self)?;
            info.temporal_position = out.temporal_position.or(info.temporal_position);
            info.slice_timing = out.slice_timing;
            return Ok(Decoded::Volume {
                volume: out.volume,
                info,
            });
        }
        if frames > 1 {
            return Err(DicomError::unsupported(format!(
                "{frames} frames without per-frame functional groups"
            )));
        }
        if mosaic_type || mosaic::slice_count(o)?.is_some_and(|n| n > 1) {
            let mut info = self.info(Flavour::Mosaic);
            let (volume, timing) = mosaic::decode(self)?;
            info.slice_timing = timing;
            return Ok(Decoded::Volume { volume, info });
        }
        let info = self.info(Flavour::Slice);
        let slice = slices::decode(self)?;
        Ok(Decoded::Slice { slice, info })
    }
}

/// One volume of a folder read by [`read_folder`].
#[derive(Debug, Clone)]
pub struct FolderVolume {
    /// The file(s) it came from, in name order.
    pub paths: Vec<PathBuf>,
    /// The voxels.
    pub volume: Volume,
    /// Header facts (of its first file; slice timing of the volume).
    pub info: DicomInfo,
}

/// Decode every DICOM file of a folder (not recursive) into volumes,
/// grouping single-slice files, ordered by series, then volume number,
/// then file name. Files that are not DICOM (by their first bytes) are
/// skipped; any DICOM file that fails is an error naming it.
pub fn read_folder(dir: &Path) -> Result<Vec<FolderVolume>, (PathBuf, DicomError)> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| (dir.to_path_buf(), DicomError::from_io(e)))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let mut out = Vec::new();
    let mut assembler = SliceAssembler::new();
    for p in paths {
        let bytes = std::fs::read(&p).map_err(|e| (p.clone(), DicomError::from_io(e)))?;
        if !looks_like_dicom(&bytes) {
            continue;
        }
        match decode(&bytes).map_err(|e| (p.clone(), e))? {
            Decoded::Volume { volume, info } => out.push(FolderVolume {
                paths: vec![p],
                volume,
                info,
            }),
            Decoded::Slice { slice, info } => {
                assembler
                    .add(p.clone(), slice, info)
                    .map_err(|e| (p.clone(), e))?;
            }
        }
    }
    for done in assembler.finish_all() {
        let v = done
            .result
            .map_err(|e| (done.paths.first().cloned().unwrap_or_default(), e))?;
        out.push(FolderVolume {
            paths: done.paths,
            volume: v.0,
            info: v.1,
        });
    }
    out.sort_by(|a, b| {
        (a.info.series_number, a.info.volume_number(), &a.paths).cmp(&(
            b.info.series_number,
            b.info.volume_number(),
            &b.paths,
        ))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_of_day_parse_from_tm_and_dt() {
        assert_eq!(
            seconds_of_day("124750.327500"),
            Some(12.0 * 3600.0 + 47.0 * 60.0 + 50.3275)
        );
        assert_eq!(
            seconds_of_day("20220711120905.225000"),
            Some(12.0 * 3600.0 + 9.0 * 60.0 + 5.225)
        );
        assert_eq!(seconds_of_day("1209"), Some(12.0 * 3600.0 + 9.0 * 60.0));
        assert_eq!(seconds_of_day("xx"), None);
        // Non-ASCII where the digits should be: no time, no panic, wherever
        // the multi-byte character falls (byte 8 is where the time starts).
        for bad in [
            "2022071é120905.225",
            "20220711é20905.22",
            "1247é0.3",
            "éééééééééééééé",
        ] {
            assert_eq!(seconds_of_day(bad), None, "{bad}");
        }
    }
}
