//! NIfTI-1 and NIfTI-2 reading and writing.
//!
//! In: `.nii` / `.nii.gz` files or their bytes (gzip is recognised by its
//! `1f 8b` magic, not by the file name), NIfTI-1 (348-byte header) or NIfTI-2
//! (540-byte header), either byte order. Out: [`Volume`]s whose values and
//! affine equal what nibabel's `img.get_fdata()` / `img.affine` give for the
//! same file, or a [`ReadError`] saying precisely what is wrong — and, through
//! [`ReadError::may_be_incomplete`], whether waiting for more bytes could help.
//!
//! This is the ingest hot path (a file must be in memory within 5 ms of being
//! complete), so voxels are decoded straight from the byte buffer in one pass
//! with no per-voxel allocation. Everything taken from the file is treated as
//! hostile: sizes are computed with checked arithmetic and no buffer is sized
//! from the header before the header's claims have been compared with the
//! bytes actually available.
//!
//! The writer produces single-file NIfTI-1 (`n+1`), little endian, float32 or
//! int16, with sform and qform both set (code 1, scanner anatomical).

use std::io::{self, Read, Write};
use std::path::Path;

use flate2::Compression;
use flate2::bufread::MultiGzDecoder;
use flate2::write::GzEncoder;
use nalgebra::{Matrix3, Matrix4};

use crate::types::volume::{Grid, Volume};

const NIFTI1_HEADER_BYTES: usize = 348;
const NIFTI2_HEADER_BYTES: usize = 540;
const NIFTI1_MAGIC: &[u8; 4] = b"n+1\0";
const NIFTI1_PAIR_MAGIC: &[u8; 4] = b"ni1\0";
const NIFTI2_MAGIC: &[u8; 8] = b"n+2\0\r\n\x1a\n";
const NIFTI2_PAIR_MAGIC: &[u8; 8] = b"ni2\0\r\n\x1a\n";
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Largest voxel payload (and vox_offset) accepted. No fMRI file comes near
/// it; a header claiming more is garbage, and saying so is better than
/// reporting "truncated" and having ingest wait for bytes that never come.
const MAX_DATA_BYTES: u64 = 1 << 34;

/// Deflate cannot expand input by more than about 1032:1, so this bounds how
/// much a gzip stream can really produce: pre-allocating beyond it would be
/// trusting the header over the bytes.
const MAX_DEFLATE_RATIO: usize = 1032;

/// Largest up-front reservation for decompressed bytes (larger volumes grow
/// the buffer as they inflate).
const RESERVE_CAP: usize = 32 << 20;

/// After the voxel data, how many decompressed bytes we read looking for the
/// end of the gzip stream (whose CRC proves the data intact) before giving up
/// and ignoring the rest.
const MAX_GZIP_TRAILING_BYTES: usize = 64 * 1024;

/// Why a file could not be turned into volumes. Messages never include the
/// path: the caller knows it and adds it.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file has no bytes at all (just created).
    #[error("file is empty (0 bytes)")]
    Empty,
    /// The header region holds only zero bytes: a preallocated file whose
    /// header has not been written yet.
    #[error("the first {len} bytes are all zero: the header has not been written yet")]
    HeaderAllZero {
        /// How many leading zero bytes were examined.
        len: usize,
    },
    /// The file (or decompressed stream) ends inside the header.
    #[error("{} ends after {got} bytes, inside the {needed}-byte NIfTI header", stream_name(*.decompressed))]
    TruncatedHeader {
        /// Header size.
        needed: u64,
        /// Bytes available.
        got: u64,
        /// Whether the counts are of decompressed gzip content.
        decompressed: bool,
    },
    /// The file (or decompressed stream) ends before the voxel data does.
    #[error("{} ends after {got} bytes; header says the voxel data runs to byte {needed}", stream_name(*.decompressed))]
    Truncated {
        /// vox_offset plus the size of all voxel data.
        needed: u64,
        /// Bytes available.
        got: u64,
        /// Whether the counts are of decompressed gzip content.
        decompressed: bool,
    },
    /// The gzip stream stops before its end, or is corrupt (which is also
    /// what a file being filled out of order looks like).
    #[error("gzip stream {problem} after {decompressed} decompressed bytes")]
    CompressedStreamCut {
        /// Decompressed bytes obtained before the problem.
        decompressed: u64,
        /// What went wrong ("ends early", "is corrupt (…)").
        problem: String,
    },
    /// Not a NIfTI file at all (wrong sizeof_hdr or magic).
    #[error("not a NIfTI file: {found}")]
    NotNifti {
        /// What was found instead.
        found: String,
    },
    /// A NIfTI file this reader does not handle (datatype, dimensionality,
    /// no voxels, absurd size, header/image pair, several volumes where one
    /// was expected).
    #[error("unsupported NIfTI file: {what}")]
    Unsupported {
        /// The feature or value.
        what: String,
    },
    /// A header field whose value makes no sense (negative dimension,
    /// vox_offset inside the header, non-finite geometry, invalid quaternion).
    #[error("invalid NIfTI header: {what}")]
    InvalidHeader {
        /// The field and its value.
        what: String,
    },
    /// The file disappeared between being seen and being read.
    #[error("file vanished before it could be read")]
    Removed,
    /// Any other I/O failure.
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
}

fn stream_name(decompressed: bool) -> &'static str {
    if decompressed {
        "decompressed stream"
    } else {
        "file"
    }
}

impl ReadError {
    /// True when more bytes arriving could fix the problem (empty, truncated,
    /// compressed stream cut short or not yet consistent, header still zero):
    /// the file is probably still being written and is worth retrying.
    pub fn may_be_incomplete(&self) -> bool {
        matches!(
            self,
            ReadError::Empty
                | ReadError::HeaderAllZero { .. }
                | ReadError::TruncatedHeader { .. }
                | ReadError::Truncated { .. }
                | ReadError::CompressedStreamCut { .. }
        )
    }

    fn invalid(what: impl Into<String>) -> ReadError {
        ReadError::InvalidHeader { what: what.into() }
    }

    fn unsupported(what: impl Into<String>) -> ReadError {
        ReadError::Unsupported { what: what.into() }
    }

    fn from_io(e: io::Error) -> ReadError {
        if e.kind() == io::ErrorKind::NotFound {
            ReadError::Removed
        } else {
            ReadError::Io(e)
        }
    }
}

/// Sample type written by [`encode_volume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputType {
    /// 32-bit float.
    F32,
    /// 16-bit signed integer, as scanners export (rounded, clamped; a
    /// scl_slope is chosen when the values exceed the int16 range).
    I16,
}

/// How [`encode_volume`] writes a file.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Sample type.
    pub dtype: OutputType,
    /// gzip the whole file (`.nii.gz`).
    pub gzip: bool,
    /// Repetition time in seconds stored in pixdim\[4\].
    pub tr: Option<f64>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            dtype: OutputType::F32,
            gzip: false,
            tr: None,
        }
    }
}

/// A 3-D or 4-D file as a list of volumes.
#[derive(Debug, Clone)]
pub struct Series {
    /// Volumes in time order.
    pub volumes: Vec<Volume>,
    /// Repetition time in seconds, when the header has one.
    pub tr: Option<f64>,
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Read every volume of a 3-D or 4-D `.nii` / `.nii.gz` file.
pub fn read_series(path: &Path) -> Result<Series, ReadError> {
    let bytes = std::fs::read(path).map_err(ReadError::from_io)?;
    decode_series(&bytes)
}

/// Read one 3-D volume from a `.nii` or `.nii.gz` file. A 4-D file is
/// accepted only when it holds exactly one volume.
pub fn read_volume(path: &Path) -> Result<Volume, ReadError> {
    let bytes = std::fs::read(path).map_err(ReadError::from_io)?;
    decode_volume(&bytes)
}

/// Decode every volume of the bytes of a 3-D or 4-D NIfTI file (gzipped or not).
pub fn decode_series(bytes: &[u8]) -> Result<Series, ReadError> {
    decode(bytes, Want::Series)
}

/// Decode the bytes of a NIfTI file holding one 3-D volume (gzipped or not).
pub fn decode_volume(bytes: &[u8]) -> Result<Volume, ReadError> {
    let series = decode(bytes, Want::OneVolume)?;
    // Want::OneVolume has already rejected nt > 1, so there is exactly one.
    series
        .volumes
        .into_iter()
        .next()
        .ok_or_else(|| ReadError::unsupported("file holds no volume"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    OneVolume,
    Series,
}

fn decode(bytes: &[u8], want: Want) -> Result<Series, ReadError> {
    if bytes.is_empty() {
        return Err(ReadError::Empty);
    }
    if bytes.starts_with(&GZIP_MAGIC) {
        let plain = inflate(bytes, want)?;
        decode_plain(&plain, want, true)
    } else {
        decode_plain(bytes, want, false)
    }
}

fn decode_plain(b: &[u8], want: Want, decompressed: bool) -> Result<Series, ReadError> {
    let h = parse_header(b, decompressed)?;
    let lay = layout(&h, want)?;
    // Geometry errors are as permanent as layout errors, so both come before
    // the truncation check: a bad header must not be retried as "incomplete".
    let grid = geometry(&h, lay.dims)?;
    if (b.len() as u64) < lay.end {
        return Err(ReadError::Truncated {
            needed: lay.end,
            got: b.len() as u64,
            decompressed,
        });
    }
    let nvox = grid.len();
    // nt * volume_bytes <= b.len() was just checked, so these allocations are
    // bounded by the bytes really present.
    let mut volumes = Vec::with_capacity(lay.nt);
    for t in 0..lay.nt {
        let start = lay.vox_offset + t * lay.volume_bytes;
        let raw = b
            .get(start..start + lay.volume_bytes)
            .ok_or(ReadError::Truncated {
                needed: lay.end,
                got: b.len() as u64,
                decompressed,
            })?;
        let mut values = Vec::with_capacity(nvox);
        convert(raw, lay.dtype, h.big_endian, lay.scaling, &mut values);
        let vol = Volume::from_file_order(grid.clone(), values)
            .ok_or_else(|| ReadError::invalid("voxel count does not match the dimensions"))?;
        volumes.push(vol);
    }
    Ok(Series {
        volumes,
        tr: tr_seconds(&h),
    })
}

/// Decompress just enough of a gzip stream to hold the header and the voxel
/// data it describes, then make sure the stream ends properly.
fn inflate(gz: &[u8], want: Want) -> Result<Vec<u8>, ReadError> {
    let mut dec = MultiGzDecoder::new(gz);
    let mut buf = Vec::with_capacity(NIFTI2_HEADER_BYTES);
    fill(&mut dec, &mut buf, NIFTI2_HEADER_BYTES)?;
    // Reject bad headers before inflating megabytes behind them.
    let h = parse_header(&buf, true)?;
    let lay = layout(&h, want)?;
    geometry(&h, lay.dims)?;
    // lay.end <= MAX_DATA_BYTES + MAX_DATA_BYTES, which fits in usize on
    // 64-bit targets; on 32-bit ones a saturated value just fails below.
    let end = usize::try_from(lay.end).unwrap_or(usize::MAX);
    // Reserve what the header promises, but never more than the compressed
    // size could expand to, nor more than RESERVE_CAP up front: beyond that
    // the buffer grows with bytes actually decompressed (a gzip bomb that
    // claims gigabytes costs only what it really inflates to).
    let plausible = gz.len().saturating_mul(MAX_DEFLATE_RATIO);
    buf.reserve(
        end.min(plausible)
            .min(RESERVE_CAP)
            .saturating_sub(buf.len()),
    );
    fill(&mut dec, &mut buf, end)?;
    if buf.len() < end {
        return Err(ReadError::Truncated {
            needed: lay.end,
            got: buf.len() as u64,
            decompressed: true,
        });
    }
    finish_stream(&mut dec, buf.len())?;
    Ok(buf)
}

/// Read from `r` until `buf` holds `upto` bytes or the stream ends cleanly.
fn fill<R: Read>(r: &mut R, buf: &mut Vec<u8>, upto: usize) -> Result<(), ReadError> {
    let want = upto.saturating_sub(buf.len()) as u64;
    if want == 0 {
        return Ok(());
    }
    // read_to_end keeps what it read before an error, so buf.len() is the
    // progress to report.
    match r.by_ref().take(want).read_to_end(buf) {
        Ok(_) => Ok(()),
        Err(e) => Err(gzip_error(&e, buf.len())),
    }
}

/// The voxel data is complete, but only the end of the gzip stream (CRC and
/// length check) shows it is intact and fully written.
fn finish_stream<R: Read>(r: &mut R, decompressed: usize) -> Result<(), ReadError> {
    let mut scratch = [0u8; 8192];
    let mut extra = 0usize;
    loop {
        match r.read(&mut scratch) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                extra += n;
                if extra > MAX_GZIP_TRAILING_BYTES {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(gzip_error(&e, decompressed + extra)),
        }
    }
}

fn gzip_error(e: &io::Error, decompressed: usize) -> ReadError {
    let problem = if e.kind() == io::ErrorKind::UnexpectedEof {
        "ends early".to_string()
    } else {
        format!("is corrupt ({e})")
    };
    ReadError::CompressedStreamCut {
        decompressed: decompressed as u64,
        problem,
    }
}

// ---------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------

/// The header fields this reader uses, widened to NIfTI-2's types so one code
/// path serves both versions.
#[derive(Debug, Clone)]
struct Header {
    version: u8,
    big_endian: bool,
    dim: [i64; 8],
    datatype: i16,
    pixdim: [f64; 8],
    vox_offset: f64,
    scl_slope: f64,
    scl_inter: f64,
    xyzt_units: i32,
    qform_code: i32,
    sform_code: i32,
    quatern: [f64; 3],
    qoffset: [f64; 3],
    srow: [[f64; 4]; 3],
}

impl Header {
    fn size(&self) -> usize {
        if self.version == 1 {
            NIFTI1_HEADER_BYTES
        } else {
            NIFTI2_HEADER_BYTES
        }
    }
}

/// Fixed-offset field access in a byte order. Out-of-range reads give zero
/// instead of panicking; callers check the length first anyway.
struct Fields<'a> {
    b: &'a [u8],
    big: bool,
}

impl Fields<'_> {
    fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        self.b
            .get(off..off + N)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .unwrap_or([0; N])
    }
    fn i16(&self, off: usize) -> i16 {
        let b = self.bytes::<2>(off);
        if self.big {
            i16::from_be_bytes(b)
        } else {
            i16::from_le_bytes(b)
        }
    }
    fn i32(&self, off: usize) -> i32 {
        let b = self.bytes::<4>(off);
        if self.big {
            i32::from_be_bytes(b)
        } else {
            i32::from_le_bytes(b)
        }
    }
    fn i64(&self, off: usize) -> i64 {
        let b = self.bytes::<8>(off);
        if self.big {
            i64::from_be_bytes(b)
        } else {
            i64::from_le_bytes(b)
        }
    }
    fn f64(&self, off: usize) -> f64 {
        let b = self.bytes::<8>(off);
        if self.big {
            f64::from_be_bytes(b)
        } else {
            f64::from_le_bytes(b)
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_header(b: &[u8], decompressed: bool) -> Result<Header, ReadError> {
    let head = b.get(..NIFTI1_HEADER_BYTES).unwrap_or(b);
    if !head.is_empty() && head.iter().all(|&x| x == 0) {
        return Err(ReadError::HeaderAllZero { len: head.len() });
    }
    let truncated = |needed: usize| ReadError::TruncatedHeader {
        needed: needed as u64,
        got: b.len() as u64,
        decompressed,
    };
    let first: [u8; 4] = b
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| truncated(NIFTI1_HEADER_BYTES))?;
    // sizeof_hdr (348 or 540) tells both the version and the byte order
    // unambiguously; no valid header reads as the other in swapped order.
    let (version, big) = match (i32::from_le_bytes(first), i32::from_be_bytes(first)) {
        (348, _) => (1, false),
        (_, 348) => (1, true),
        (540, _) => (2, false),
        (_, 540) => (2, true),
        _ => {
            return Err(ReadError::NotNifti {
                found: format!(
                    "the first 4 bytes (sizeof_hdr) are {}, which is neither 348 (NIfTI-1) nor 540 (NIfTI-2) in either byte order",
                    hex(&first)
                ),
            });
        }
    };
    let size = if version == 1 {
        NIFTI1_HEADER_BYTES
    } else {
        NIFTI2_HEADER_BYTES
    };
    let Some(hb) = b.get(..size) else {
        return Err(truncated(size));
    };
    let f = Fields { b: hb, big };
    if version == 1 {
        parse_nifti1(hb, &f)
    } else {
        parse_nifti2(&f)
    }
}

fn check_dim0(dim0: i64) -> Result<(), ReadError> {
    if (1..=7).contains(&dim0) {
        Ok(())
    } else {
        Err(ReadError::invalid(format!(
            "dim[0] (number of dimensions) is {dim0}; it must be 1 to 7"
        )))
    }
}

fn parse_nifti1(hb: &[u8], f: &Fields) -> Result<Header, ReadError> {
    let magic = f.bytes::<4>(344);
    if &magic == NIFTI1_PAIR_MAGIC {
        return Err(ReadError::unsupported(
            "magic \"ni1\" marks the header of a .hdr/.img pair; only single-file .nii is read",
        ));
    }
    if &magic != NIFTI1_MAGIC {
        let hint = if magic == [0; 4] {
            " (an Analyze 7.5 header?)"
        } else {
            ""
        };
        return Err(ReadError::NotNifti {
            found: format!(
                "sizeof_hdr is 348 (NIfTI-1) but the magic at byte 344 is {} instead of \"n+1\\0\"{hint}",
                hex(&magic)
            ),
        });
    }
    // The nifti crate guesses the byte order from dim[0] > 7; with dim[0] in
    // 1..=7 its guess agrees with the sizeof_hdr-based one on any host.
    check_dim0(i64::from(f.i16(40)))?;
    let h = nifti::NiftiHeader::from_reader(hb).map_err(|e| ReadError::NotNifti {
        found: format!("the NIfTI-1 header could not be parsed: {e}"),
    })?;
    if h.sizeof_hdr != NIFTI1_HEADER_BYTES as i32 {
        return Err(ReadError::invalid(
            "byte order of the NIfTI-1 header is inconsistent",
        ));
    }
    let mut dim = [0i64; 8];
    for (d, &v) in dim.iter_mut().zip(&h.dim) {
        // The crate stores dims as u16; NIfTI-1 defines them as int16.
        *d = i64::from(v as i16);
    }
    let mut pixdim = [0f64; 8];
    for (p, &v) in pixdim.iter_mut().zip(&h.pixdim) {
        *p = f64::from(v);
    }
    let row = |r: &[f32; 4]| r.map(f64::from);
    Ok(Header {
        version: 1,
        big_endian: f.big,
        dim,
        datatype: h.datatype,
        pixdim,
        vox_offset: f64::from(h.vox_offset),
        scl_slope: f64::from(h.scl_slope),
        scl_inter: f64::from(h.scl_inter),
        xyzt_units: i32::from(h.xyzt_units),
        qform_code: i32::from(h.qform_code),
        sform_code: i32::from(h.sform_code),
        quatern: [h.quatern_b, h.quatern_c, h.quatern_d].map(f64::from),
        qoffset: [h.quatern_x, h.quatern_y, h.quatern_z].map(f64::from),
        srow: [row(&h.srow_x), row(&h.srow_y), row(&h.srow_z)],
    })
}

/// NIfTI-2 (the `nifti` crate reads only NIfTI-1). Offsets from nifti2.h.
fn parse_nifti2(f: &Fields) -> Result<Header, ReadError> {
    let magic = f.bytes::<8>(4);
    if &magic == NIFTI2_PAIR_MAGIC {
        return Err(ReadError::unsupported(
            "magic \"ni2\" marks the header of a .hdr/.img pair; only single-file .nii is read",
        ));
    }
    if &magic != NIFTI2_MAGIC {
        return Err(ReadError::NotNifti {
            found: format!(
                "sizeof_hdr is 540 (NIfTI-2) but the magic at byte 4 is {} instead of \"n+2\\0\\r\\n\\x1a\\n\"",
                hex(&magic)
            ),
        });
    }
    let mut dim = [0i64; 8];
    for (i, d) in dim.iter_mut().enumerate() {
        *d = f.i64(16 + 8 * i);
    }
    check_dim0(dim[0])?;
    let mut pixdim = [0f64; 8];
    for (i, p) in pixdim.iter_mut().enumerate() {
        *p = f.f64(104 + 8 * i);
    }
    let row = |off: usize| [0, 1, 2, 3].map(|i| f.f64(off + 8 * i));
    Ok(Header {
        version: 2,
        big_endian: f.big,
        dim,
        datatype: f.i16(12),
        pixdim,
        // An int64 in NIfTI-2; f64 holds every value we accept exactly.
        vox_offset: f.i64(168) as f64,
        scl_slope: f.f64(176),
        scl_inter: f.f64(184),
        xyzt_units: f.i32(500),
        qform_code: f.i32(344),
        sform_code: f.i32(348),
        quatern: [f.f64(352), f.f64(360), f.f64(368)],
        qoffset: [f.f64(376), f.f64(384), f.f64(392)],
        srow: [row(400), row(432), row(464)],
    })
}

// ---------------------------------------------------------------------------
// Layout: where the voxels are and how to read them
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DType {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl DType {
    fn from_code(code: i16) -> Result<DType, ReadError> {
        Ok(match code {
            2 => DType::U8,
            4 => DType::I16,
            8 => DType::I32,
            16 => DType::F32,
            64 => DType::F64,
            256 => DType::I8,
            512 => DType::U16,
            768 => DType::U32,
            1024 => DType::I64,
            1280 => DType::U64,
            _ => {
                let name = match code {
                    0 => "unknown",
                    1 => "binary (1 bit per voxel)",
                    32 => "complex64",
                    128 => "RGB24",
                    1536 => "float128",
                    1792 => "complex128",
                    2048 => "complex256",
                    2304 => "RGBA32",
                    _ => {
                        return Err(ReadError::unsupported(format!(
                            "datatype code {code} is not a NIfTI datatype"
                        )));
                    }
                };
                return Err(ReadError::unsupported(format!(
                    "datatype {code} ({name}) is not supported; only integer and real types are read"
                )));
            }
        })
    }

    fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::I16 | DType::U16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 => 8,
        }
    }
}

#[derive(Debug, Clone)]
struct Layout {
    dims: [usize; 3],
    nt: usize,
    dtype: DType,
    vox_offset: usize,
    volume_bytes: usize,
    /// Byte just past the voxel data: the file must be at least this long.
    end: u64,
    /// (slope, intercept) when the header asks for scaling.
    scaling: Option<(f64, f64)>,
}

fn layout(h: &Header, want: Want) -> Result<Layout, ReadError> {
    let ndim = h.dim[0];
    check_dim0(ndim)?;
    let mut n = [1u64; 8];
    for (i, (slot, &d)) in n
        .iter_mut()
        .zip(&h.dim)
        .enumerate()
        .take(ndim as usize + 1)
        .skip(1)
    {
        if d < 0 {
            return Err(ReadError::invalid(format!("dim[{i}] is negative ({d})")));
        }
        if d == 0 {
            return Err(ReadError::unsupported(format!(
                "dim[{i}] is 0: the image has no voxels"
            )));
        }
        *slot = d as u64;
    }
    if let Some(i) = (5..=ndim as usize).find(|&i| n[i] != 1) {
        return Err(ReadError::unsupported(format!(
            "{ndim}-D image with dim[{i}] = {}; only 3-D and 4-D images are read",
            n[i]
        )));
    }
    let nt = n[4];
    if want == Want::OneVolume && nt != 1 {
        return Err(ReadError::unsupported(format!(
            "4-D file with {nt} volumes; expected one 3-D volume per file"
        )));
    }
    let dtype = DType::from_code(h.datatype)?;
    let too_big = || {
        ReadError::unsupported(format!(
            "header says the image is {}x{}x{}x{} voxels of {} bytes, more than the {} bytes this reader accepts",
            n[1],
            n[2],
            n[3],
            nt,
            dtype.size(),
            MAX_DATA_BYTES
        ))
    };
    let volume_bytes = n[1]
        .checked_mul(n[2])
        .and_then(|v| v.checked_mul(n[3]))
        .and_then(|v| v.checked_mul(dtype.size() as u64))
        .ok_or_else(too_big)?;
    let data_bytes = volume_bytes.checked_mul(nt).ok_or_else(too_big)?;
    if data_bytes > MAX_DATA_BYTES {
        return Err(too_big());
    }

    let vo = h.vox_offset;
    let min_offset = (h.size() + 4) as f64;
    if !vo.is_finite() || vo < 0.0 {
        return Err(ReadError::invalid(format!("vox_offset is {vo}")));
    }
    // NIfTI requires the data of a single file to start after the header and
    // the 4 extension-flag bytes. nibabel refuses lower offsets except 0,
    // which it takes literally (decoding the header as voxels); we read 0 as
    // niftilib (FSL, AFNI) does: "right after the header".
    let vox_offset = if vo == 0.0 {
        min_offset
    } else if vo < min_offset {
        return Err(ReadError::invalid(format!(
            "vox_offset {vo} points inside the {}-byte header; single-file NIfTI-{} data starts at byte {min_offset} or later",
            h.size(),
            h.version
        )));
    } else if vo > MAX_DATA_BYTES as f64 {
        return Err(ReadError::unsupported(format!(
            "vox_offset {vo} is beyond the {MAX_DATA_BYTES} bytes this reader accepts"
        )));
    } else {
        // nibabel truncates a fractional NIfTI-1 offset the same way.
        vo.trunc()
    } as u64;
    let end = vox_offset + data_bytes;

    let (slope, inter) = (h.scl_slope, h.scl_inter);
    let scaling = if slope == 0.0 || !slope.is_finite() {
        None
    } else if !inter.is_finite() {
        return Err(ReadError::invalid(format!(
            "scl_slope is {slope} but scl_inter is {inter}"
        )));
    } else if slope == 1.0 && inter == 0.0 {
        None
    } else {
        Some((slope, inter))
    };

    // Every size is <= 2 * MAX_DATA_BYTES here, which fits usize on 64-bit
    // targets; the conversions only fail on 32-bit ones.
    let usize_of = |v: u64| usize::try_from(v).map_err(|_| too_big());
    Ok(Layout {
        dims: [usize_of(n[1])?, usize_of(n[2])?, usize_of(n[3])?],
        nt: usize_of(nt)?,
        dtype,
        vox_offset: usize_of(vox_offset)?,
        volume_bytes: usize_of(volume_bytes)?,
        end,
        scaling,
    })
}

/// Repetition time in seconds from pixdim\[4\] and the time unit. Used for
/// 4-D files, and for 3-D ones only when a time unit is set explicitly (as
/// our writer does), because nibabel leaves pixdim\[4\] = 1 in 3-D files.
fn tr_seconds(h: &Header) -> Option<f64> {
    let p = h.pixdim[4];
    if !(p.is_finite() && p > 0.0) {
        return None;
    }
    // A NIfTI-1 pixdim is an f32: read it as the decimal it was written from
    // (0.8, not 0.800000011920929), so TRs compare equal to configured ones.
    let p = if h.version == 1 {
        (p as f32).to_string().parse::<f64>().unwrap_or(p)
    } else {
        p
    };
    let unit = h.xyzt_units & 0x38;
    if h.dim[0] < 4 && unit == 0 {
        return None;
    }
    match unit {
        0 | 8 => Some(p),
        16 => Some(p / 1e3),
        24 => Some(p / 1e6),
        // Hz, ppm, rad/s: the fourth axis is not time.
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Geometry (matches nibabel's Nifti1Header.get_best_affine after check_fix)
// ---------------------------------------------------------------------------

/// nibabel resets xform codes it does not know (outside 0..=5) to 0 on load.
fn xform_code_valid(code: i32) -> bool {
    (1..=5).contains(&code)
}

fn geometry(h: &Header, dims: [usize; 3]) -> Result<Grid, ReadError> {
    let mut pixdim = [1.0f64; 3];
    for (a, p) in pixdim.iter_mut().enumerate() {
        let v = h.pixdim[a + 1];
        if !v.is_finite() {
            return Err(ReadError::invalid(format!("pixdim[{}] is {v}", a + 1)));
        }
        // nibabel's header check does this on load, before any affine is made.
        *p = if v == 0.0 { 1.0 } else { v.abs() };
    }
    let (affine, source) = if xform_code_valid(h.sform_code) {
        (sform_affine(h), "sform")
    } else if xform_code_valid(h.qform_code) {
        (qform_affine(h, pixdim)?, "qform")
    } else {
        (fallback_affine(h, dims, pixdim), "pixdim-based")
    };
    if let Some(bad) = affine.iter().find(|v| !v.is_finite()) {
        return Err(ReadError::invalid(format!(
            "the {source} affine has a non-finite entry ({bad})"
        )));
    }
    Ok(Grid {
        dims,
        pixdim,
        affine,
    })
}

fn sform_affine(h: &Header) -> Matrix4<f64> {
    let [x, y, z] = h.srow;
    #[rustfmt::skip]
    let m = Matrix4::new(
        x[0], x[1], x[2], x[3],
        y[0], y[1], y[2], y[3],
        z[0], z[1], z[2], z[3],
        0.0, 0.0, 0.0, 1.0,
    );
    m
}

/// nibabel's `get_qform`: rotation from the quaternion (w filled in as the
/// positive root), zooms from pixdim with qfac on the last axis.
fn qform_affine(h: &Header, pixdim: [f64; 3]) -> Result<Matrix4<f64>, ReadError> {
    let [b, c, d] = h.quatern;
    // nibabel's threshold scales with the precision the quaternion is stored in.
    let thresh = if h.version == 1 {
        3.0 * f64::from(f32::EPSILON)
    } else {
        3.0 * f64::EPSILON
    };
    let w2 = 1.0 - (b * b + c * c + d * d);
    let w = if w2.abs() < thresh {
        0.0
    } else if w2 < 0.0 {
        return Err(ReadError::invalid(format!(
            "qform quaternion (b, c, d) = ({b}, {c}, {d}) has length > 1"
        )));
    } else {
        w2.sqrt()
    };
    let r = quat_to_mat(w, b, c, d);
    // nibabel sets an invalid qfac to 1 on load.
    let p0 = h.pixdim[0];
    let qfac = if p0 == 1.0 || p0 == -1.0 { p0 } else { 1.0 };
    let zooms = [pixdim[0], pixdim[1], pixdim[2] * qfac];
    let mut m = Matrix4::identity();
    for row in 0..3 {
        for col in 0..3 {
            m[(row, col)] = r[(row, col)] * zooms[col];
        }
        m[(row, 3)] = h.qoffset[row];
    }
    Ok(m)
}

/// nibabel's `quat2mat`.
fn quat_to_mat(w: f64, x: f64, y: f64, z: f64) -> Matrix3<f64> {
    let nq = w * w + x * x + y * y + z * z;
    if nq < f64::EPSILON {
        return Matrix3::identity();
    }
    let s = 2.0 / nq;
    let (xs, ys, zs) = (x * s, y * s, z * s);
    let (wx, wy, wz) = (w * xs, w * ys, w * zs);
    let (xx, xy, xz) = (x * xs, x * ys, x * zs);
    let (yy, yz, zz) = (y * ys, y * zs, z * zs);
    Matrix3::new(
        1.0 - (yy + zz),
        xy - wz,
        xz + wy,
        xy + wz,
        1.0 - (xx + zz),
        yz - wx,
        xz - wy,
        yz + wx,
        1.0 - (xx + yy),
    )
}

/// nibabel's `get_base_affine` (`shape_zoom_affine` with x flipped): what
/// `img.affine` is when neither sform nor qform is set. Axes beyond dim\[0\]
/// get size 1 and zoom 1, as nibabel pads them.
fn fallback_affine(h: &Header, dims: [usize; 3], pixdim: [f64; 3]) -> Matrix4<f64> {
    let ndim = h.dim[0];
    let mut m = Matrix4::identity();
    for a in 0..3 {
        let zoom = if (a as i64) < ndim { pixdim[a] } else { 1.0 };
        let zoom = if a == 0 { -zoom } else { zoom };
        let origin = (dims[a] as f64 - 1.0) / 2.0;
        m[(a, a)] = zoom;
        m[(a, 3)] = -origin * zoom;
    }
    m
}

// ---------------------------------------------------------------------------
// Voxel conversion (the hot loop)
// ---------------------------------------------------------------------------

/// Decode every sample of `raw` into `out`. Monomorphised per type, byte
/// order and scaling so that each loop is branch-free and vectorisable.
fn convert(
    raw: &[u8],
    dtype: DType,
    big_endian: bool,
    scaling: Option<(f64, f64)>,
    out: &mut Vec<f32>,
) {
    macro_rules! run {
        ($t:ty) => {{
            const N: usize = std::mem::size_of::<$t>();
            // chunks_exact(N) yields N-byte slices, so the conversion to an
            // array never fails; the fallback only avoids an unwrap.
            let samples = raw
                .chunks_exact(N)
                .map(|c| <[u8; N]>::try_from(c).unwrap_or([0; N]));
            match (big_endian, scaling) {
                (false, None) => out.extend(samples.map(|b| <$t>::from_le_bytes(b) as f32)),
                (true, None) => out.extend(samples.map(|b| <$t>::from_be_bytes(b) as f32)),
                // Scaling in f64 as nibabel does, then one rounding to f32.
                (false, Some((s, i))) => {
                    out.extend(samples.map(|b| (<$t>::from_le_bytes(b) as f64 * s + i) as f32))
                }
                (true, Some((s, i))) => {
                    out.extend(samples.map(|b| (<$t>::from_be_bytes(b) as f64 * s + i) as f32))
                }
            }
        }};
    }
    match dtype {
        DType::U8 => run!(u8),
        DType::I8 => run!(i8),
        DType::I16 => run!(i16),
        DType::U16 => run!(u16),
        DType::I32 => run!(i32),
        DType::U32 => run!(u32),
        DType::I64 => run!(i64),
        DType::U64 => run!(u64),
        DType::F32 => run!(f32),
        DType::F64 => run!(f64),
    }
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// The complete bytes of a NIfTI-1 file holding `vol`.
pub fn encode_volume(vol: &Volume, opts: &WriteOptions) -> io::Result<Vec<u8>> {
    encode_series(std::slice::from_ref(vol), opts)
}

/// The complete bytes of a 4-D NIfTI-1 file holding `vols` (3-D when there is
/// one). All volumes must have the same dimensions; the geometry is the
/// first volume's.
pub fn encode_series(vols: &[Volume], opts: &WriteOptions) -> io::Result<Vec<u8>> {
    let first = vols
        .first()
        .ok_or_else(|| invalid_input("no volumes to write".to_string()))?;
    let grid = first.grid();
    if grid.is_empty() {
        return Err(invalid_input(format!(
            "grid {} has no voxels",
            grid.describe()
        )));
    }
    if let Some((i, v)) = vols
        .iter()
        .enumerate()
        .find(|(_, v)| v.grid().dims != grid.dims)
    {
        return Err(invalid_input(format!(
            "volume {i} is {} but volume 0 is {}",
            v.grid().describe(),
            grid.describe()
        )));
    }
    let slope = match opts.dtype {
        OutputType::F32 => 1.0,
        OutputType::I16 => i16_slope(vols),
    };
    let header = encode_header(grid, vols.len(), opts, slope)?;
    let sample_bytes = match opts.dtype {
        OutputType::F32 => 4,
        OutputType::I16 => 2,
    };
    let data_bytes = grid.len() * vols.len() * sample_bytes;
    if opts.gzip {
        // fast(): these files are written during the scan, where time matters
        // more than the few percent that stronger levels save on noisy data.
        let mut enc = GzEncoder::new(
            Vec::with_capacity((header.len() + data_bytes) / 2),
            Compression::fast(),
        );
        enc.write_all(&header)?;
        write_samples(&mut enc, vols, opts.dtype, slope)?;
        enc.finish()
    } else {
        let mut out = Vec::with_capacity(header.len() + data_bytes);
        out.extend_from_slice(&header);
        write_samples(&mut out, vols, opts.dtype, slope)?;
        Ok(out)
    }
}

/// Write one volume to `path` (gzipped if `opts.gzip`, whatever the name).
pub fn write_volume(path: &Path, vol: &Volume, opts: &WriteOptions) -> io::Result<()> {
    write_series(path, std::slice::from_ref(vol), opts)
}

/// Write volumes to `path` as a 4-D file (3-D when there is one).
pub fn write_series(path: &Path, vols: &[Volume], opts: &WriteOptions) -> io::Result<()> {
    let bytes = encode_series(vols, opts)?;
    std::fs::write(path, bytes)
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// 1 when every finite value rounds into the int16 range; otherwise the
/// smallest slope that brings the extremes into it.
fn i16_slope(vols: &[Volume]) -> f32 {
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for v in vols {
        for &x in v.values() {
            if x.is_finite() {
                lo = lo.min(f64::from(x));
                hi = hi.max(f64::from(x));
            }
        }
    }
    if lo >= -32768.5 && hi < 32767.5 {
        return 1.0;
    }
    (hi / 32767.0).max(lo / -32768.0) as f32
}

fn write_samples<W: Write>(
    w: &mut W,
    vols: &[Volume],
    dtype: OutputType,
    slope: f32,
) -> io::Result<()> {
    // Staged in a small buffer so gzip output needs no full-size copy.
    let mut stage = Vec::with_capacity(64 * 1024);
    let inv = 1.0 / f64::from(slope);
    for v in vols {
        for chunk in v.values().chunks(16 * 1024) {
            stage.clear();
            match dtype {
                OutputType::F32 => {
                    for &x in chunk {
                        stage.extend_from_slice(&x.to_le_bytes());
                    }
                }
                OutputType::I16 => {
                    for &x in chunk {
                        // `as` saturates and sends NaN to 0.
                        let q = (f64::from(x) * inv).round().clamp(-32768.0, 32767.0) as i16;
                        stage.extend_from_slice(&q.to_le_bytes());
                    }
                }
            }
            w.write_all(&stage)?;
        }
    }
    Ok(())
}

/// Quaternion (b, c, d), qfac and zooms for the qform, as nibabel's
/// `set_qform` derives them: zooms are the column norms, a negative
/// determinant goes into qfac, and shear is removed by taking the nearest
/// rotation (polar decomposition).
fn qform_from_affine(affine: &Matrix4<f64>) -> Option<([f64; 3], f64)> {
    let rzs: Matrix3<f64> = affine.fixed_view::<3, 3>(0, 0).into_owned();
    let mut r = rzs;
    for col in 0..3 {
        let zoom = rzs.column(col).norm();
        if !(zoom.is_finite() && zoom > 0.0) {
            return None;
        }
        r.column_mut(col).unscale_mut(zoom);
    }
    let qfac = if r.determinant() > 0.0 {
        1.0
    } else {
        r.column_mut(2).neg_mut();
        -1.0
    };
    // Bounded iterations: nalgebra's plain svd() loops until convergence.
    let svd = r.try_svd(true, true, 1e-15, 1000)?;
    let pr = svd.u? * svd.v_t?;
    let m = |i: usize, j: usize| pr[(i, j)];
    let tr = m(0, 0) + m(1, 1) + m(2, 2);
    let (w, x, y, z) = if tr > 0.0 {
        let s = (tr + 1.0).sqrt() * 2.0;
        (
            s / 4.0,
            (m(2, 1) - m(1, 2)) / s,
            (m(0, 2) - m(2, 0)) / s,
            (m(1, 0) - m(0, 1)) / s,
        )
    } else if m(0, 0) > m(1, 1) && m(0, 0) > m(2, 2) {
        let s = (1.0 + m(0, 0) - m(1, 1) - m(2, 2)).sqrt() * 2.0;
        (
            (m(2, 1) - m(1, 2)) / s,
            s / 4.0,
            (m(0, 1) + m(1, 0)) / s,
            (m(0, 2) + m(2, 0)) / s,
        )
    } else if m(1, 1) > m(2, 2) {
        let s = (1.0 + m(1, 1) - m(0, 0) - m(2, 2)).sqrt() * 2.0;
        (
            (m(0, 2) - m(2, 0)) / s,
            (m(0, 1) + m(1, 0)) / s,
            s / 4.0,
            (m(1, 2) + m(2, 1)) / s,
        )
    } else {
        let s = (1.0 + m(2, 2) - m(0, 0) - m(1, 1)).sqrt() * 2.0;
        (
            (m(1, 0) - m(0, 1)) / s,
            (m(0, 2) + m(2, 0)) / s,
            (m(1, 2) + m(2, 1)) / s,
            s / 4.0,
        )
    };
    // Readers rebuild w as the positive root, so store the w >= 0 sign.
    let sign = if w < 0.0 { -1.0 } else { 1.0 };
    let q = [x * sign, y * sign, z * sign];
    q.iter().all(|v| v.is_finite()).then_some((q, qfac))
}

/// The 352 bytes before the voxel data: the NIfTI-1 header plus an empty
/// extension flag. Hand-written because the `nifti` crate writes only to
/// paths; its qform setter also leaves qform_code 0.
fn encode_header(grid: &Grid, nt: usize, opts: &WriteOptions, slope: f32) -> io::Result<Vec<u8>> {
    let affine = &grid.affine;
    if affine.iter().any(|v| !v.is_finite()) {
        return Err(invalid_input(format!(
            "affine has non-finite entries: {affine:?}"
        )));
    }
    let (quat, qfac) = qform_from_affine(affine).ok_or_else(|| {
        invalid_input(format!(
            "affine is degenerate (a zero axis); no qform can represent it: {affine:?}"
        ))
    })?;
    let dim_i16 = |v: usize, what: &str| {
        i16::try_from(v).map_err(|_| {
            invalid_input(format!(
                "{what} = {v} does not fit NIfTI-1's int16 dimensions"
            ))
        })
    };
    let [nx, ny, nz] = grid.dims;
    let dim: [i16; 8] = [
        if nt > 1 { 4 } else { 3 },
        dim_i16(nx, "nx")?,
        dim_i16(ny, "ny")?,
        dim_i16(nz, "nz")?,
        dim_i16(nt, "number of volumes")?,
        1,
        1,
        1,
    ];
    let (datatype, bitpix): (i16, i16) = match opts.dtype {
        OutputType::F32 => (16, 32),
        OutputType::I16 => (4, 16),
    };
    let pixdim: [f32; 8] = [
        qfac as f32,
        grid.pixdim[0] as f32,
        grid.pixdim[1] as f32,
        grid.pixdim[2] as f32,
        opts.tr.unwrap_or(0.0) as f32,
        1.0,
        1.0,
        1.0,
    ];

    let mut h = vec![0u8; NIFTI1_HEADER_BYTES + 4];
    let mut put = |off: usize, bytes: &[u8]| h[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &(NIFTI1_HEADER_BYTES as i32).to_le_bytes());
    put(38, b"r");
    for (i, d) in dim.iter().enumerate() {
        put(40 + 2 * i, &d.to_le_bytes());
    }
    put(70, &datatype.to_le_bytes());
    put(72, &bitpix.to_le_bytes());
    for (i, p) in pixdim.iter().enumerate() {
        put(76 + 4 * i, &p.to_le_bytes());
    }
    put(108, &((NIFTI1_HEADER_BYTES + 4) as f32).to_le_bytes());
    put(112, &slope.to_le_bytes());
    put(116, &0.0f32.to_le_bytes());
    // mm and seconds
    put(123, &[2 | 8]);
    put(148, b"boldstream");
    put(252, &1i16.to_le_bytes());
    put(254, &1i16.to_le_bytes());
    for (i, q) in quat.iter().enumerate() {
        put(256 + 4 * i, &(*q as f32).to_le_bytes());
    }
    for row in 0..3 {
        put(268 + 4 * row, &(affine[(row, 3)] as f32).to_le_bytes());
        for col in 0..4 {
            put(
                280 + 16 * row + 4 * col,
                &(affine[(row, col)] as f32).to_le_bytes(),
            );
        }
    }
    put(344, NIFTI1_MAGIC);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(ax: f64, ay: f64, az: f64) -> Matrix3<f64> {
        let rx = Matrix3::new(
            1.0,
            0.0,
            0.0,
            0.0,
            ax.cos(),
            -ax.sin(),
            0.0,
            ax.sin(),
            ax.cos(),
        );
        let ry = Matrix3::new(
            ay.cos(),
            0.0,
            ay.sin(),
            0.0,
            1.0,
            0.0,
            -ay.sin(),
            0.0,
            ay.cos(),
        );
        let rz = Matrix3::new(
            az.cos(),
            -az.sin(),
            0.0,
            az.sin(),
            az.cos(),
            0.0,
            0.0,
            0.0,
            1.0,
        );
        rz * ry * rx
    }

    /// The qform we write must rebuild the affine we were given (for
    /// rotations near 180 degrees too, where w is near 0).
    #[test]
    fn written_qform_reproduces_the_affine() {
        for (angles, flip) in [
            ((0.3, -0.2, 0.5), false),
            ((0.3, -0.2, 0.5), true),
            ((3.1, 0.1, -0.2), false),
            ((0.0, 3.0, 0.0), true),
            ((0.0, 0.0, 0.0), true),
        ] {
            let r = rotation(angles.0, angles.1, angles.2);
            let zooms = [2.0, 2.5, if flip { -3.0 } else { 3.0 }];
            let mut a = Matrix4::identity();
            for i in 0..3 {
                for j in 0..3 {
                    a[(i, j)] = r[(i, j)] * zooms[j];
                }
            }
            a[(0, 3)] = 10.0;
            a[(1, 3)] = -20.0;
            a[(2, 3)] = 5.0;
            let (q, qfac) = qform_from_affine(&a).unwrap();
            let h = Header {
                version: 2,
                big_endian: false,
                dim: [3, 2, 2, 2, 1, 1, 1, 1],
                datatype: 16,
                pixdim: [qfac, 2.0, 2.5, 3.0, 0.0, 0.0, 0.0, 0.0],
                vox_offset: 544.0,
                scl_slope: 0.0,
                scl_inter: 0.0,
                xyzt_units: 0,
                qform_code: 1,
                sform_code: 0,
                quatern: q,
                qoffset: [10.0, -20.0, 5.0],
                srow: [[0.0; 4]; 3],
            };
            let back = qform_affine(&h, [2.0, 2.5, 3.0]).unwrap();
            assert!(
                (back - a).abs().max() < 1e-9,
                "{angles:?} {flip}: {back} vs {a}"
            );
        }
    }

    #[test]
    fn i16_slope_is_one_in_range_and_fits_extremes_otherwise() {
        let grid = Grid::centred([3, 1, 1], [1.0, 1.0, 1.0]);
        let v = Volume::from_file_order(grid.clone(), vec![-32768.0, 0.0, 32767.4]).unwrap();
        assert_eq!(i16_slope(std::slice::from_ref(&v)), 1.0);
        let v = Volume::from_file_order(grid, vec![-1000.0, f32::NAN, 100000.0]).unwrap();
        let s = i16_slope(std::slice::from_ref(&v));
        assert!((f64::from(s) - 100000.0 / 32767.0).abs() < 1e-3, "{s}");
    }
}
