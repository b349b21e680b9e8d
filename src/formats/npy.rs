//! An append-only `.npy` matrix: one row per append, readable by
//! `numpy.load` at any moment; its repair and row-wise reading when a
//! session resumes; and a reader for the float matrices calibration and
//! decoders hand us.
//!
//! numpy's format has the shape in the header, so after each row the
//! fixed-size header is rewritten in place; a crash between the two writes
//! leaves a file numpy still reads (it ignores the trailing row). No crate
//! offers appending (they write whole arrays), hence this small writer.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// Header size: room for any realistic shape, a multiple of 64 as numpy wants.
const HEADER_LEN: usize = 128;

/// Element type of an appended matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// Little-endian float32 (`'<f4'`).
    F32,
    /// Little-endian float64 (`'<f8'`): for values that must round-trip
    /// exactly (motion parameters a resumed session continues from).
    F64,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::F64 => "<f8",
        }
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// A float matrix file that grows by rows.
#[derive(Debug)]
pub struct NpyAppender {
    file: File,
    cols: usize,
    rows: usize,
    dtype: Dtype,
}

fn header(rows: usize, cols: usize, dtype: Dtype) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}",
        dtype.descr()
    );
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    h.extend_from_slice(&((HEADER_LEN - 10) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    while h.len() < HEADER_LEN - 1 {
        h.push(b' ');
    }
    h.push(b'\n');
    h
}

/// What the fixed-size header of an appended `.npy` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendedHeader {
    /// Element type.
    pub dtype: Dtype,
    /// Rows the header counts.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
}

impl AppendedHeader {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols * self.dtype.size()
    }
}

/// The `'shape': (…)` of a .npy header: its text and its dimensions.
fn parse_shape(header: &str) -> Result<(&str, Vec<usize>), String> {
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .ok_or("no shape in the .npy header")?;
    let dims = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape ({shape})"))
        })
        .collect::<Result<_, _>>()?;
    Ok((shape, dims))
}

/// Parse the header of a file written by [`NpyAppender`] (version 1, a
/// 128-byte header, 2-D C-order float32/float64); anything else is an error
/// saying what is wrong.
pub fn read_appended_header(bytes: &[u8]) -> Result<AppendedHeader, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "{} bytes: shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        ));
    }
    if &bytes[..8] != b"\x93NUMPY\x01\x00"
        || u16::from_le_bytes([bytes[8], bytes[9]]) as usize != HEADER_LEN - 10
    {
        return Err("not a .npy file written by boldstream (version 1, 128-byte header)".into());
    }
    let text = std::str::from_utf8(&bytes[10..HEADER_LEN]).map_err(|_| "header is not text")?;
    let dtype = if text.contains("'descr': '<f4'") {
        Dtype::F32
    } else if text.contains("'descr': '<f8'") {
        Dtype::F64
    } else {
        return Err(format!("dtype is not '<f4' or '<f8': {}", text.trim()));
    };
    if !text.contains("'fortran_order': False") {
        return Err("not C order".into());
    }
    let (shape, dims) = parse_shape(text)?;
    match dims.as_slice() {
        [rows, cols] => Ok(AppendedHeader {
            dtype,
            rows: *rows,
            cols: *cols,
        }),
        _ => Err(format!("shape ({shape}) is not 2-D")),
    }
}

/// Make an appended `.npy` hold exactly its first `rows` rows: bytes past
/// them (a row torn by a crash, or rows whose record elsewhere never made
/// it to disk) are cut off and the header's count is rewritten. Errors when
/// fewer than `rows` whole rows are there (data the session's records
/// count on is gone).
pub fn truncate_rows(path: &Path, rows: usize) -> Result<AppendedHeader, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let h = read_appended_header(&bytes)?;
    let whole = (bytes.len() - HEADER_LEN) / h.row_bytes().max(1);
    if whole < rows {
        return Err(format!(
            "holds {whole} whole rows of {} values, the session's records need {rows}",
            h.cols
        ));
    }
    let want = (HEADER_LEN + rows * h.row_bytes()) as u64;
    if bytes.len() as u64 != want || h.rows != rows {
        let mut f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| e.to_string())?;
        f.set_len(want).map_err(|e| e.to_string())?;
        f.write_all(&header(rows, h.cols, h.dtype))
            .map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
    }
    Ok(AppendedHeader { rows, ..h })
}

impl NpyAppender {
    /// Create (truncate) `path` for rows of `cols` float32 values.
    pub fn create(path: &Path, cols: usize) -> std::io::Result<NpyAppender> {
        NpyAppender::create_typed(path, cols, Dtype::F32)
    }

    /// Create (truncate) `path` for rows of `cols` values of `dtype`.
    pub fn create_typed(path: &Path, cols: usize, dtype: Dtype) -> std::io::Result<NpyAppender> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        file.write_all(&header(0, cols, dtype))?;
        Ok(NpyAppender {
            file,
            cols,
            rows: 0,
            dtype,
        })
    }

    /// Reopen a file this writer made, to append after its rows. The file
    /// must be whole (header count and length agree, as
    /// [`truncate_rows`] leaves it), hold rows of `cols` values of `dtype`.
    pub fn open(path: &Path, cols: usize, dtype: Dtype) -> std::io::Result<NpyAppender> {
        let invalid = |m: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {m}", path.display()),
            )
        };
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut head = vec![0u8; HEADER_LEN];
        std::io::Read::read_exact(&mut file, &mut head)
            .map_err(|e| invalid(format!("reading the header: {e}")))?;
        let h = read_appended_header(&head).map_err(invalid)?;
        if h.cols != cols || h.dtype != dtype {
            return Err(invalid(format!(
                "rows of {} {:?} values, expected {cols} {dtype:?}",
                h.cols, h.dtype
            )));
        }
        let len = file.metadata()?.len();
        if len != (HEADER_LEN + h.rows * h.row_bytes()) as u64 {
            return Err(invalid(format!(
                "{len} bytes do not match the header's {} rows",
                h.rows
            )));
        }
        Ok(NpyAppender {
            file,
            cols,
            rows: h.rows,
            dtype,
        })
    }

    /// Append one float32 row (must have `cols` values).
    pub fn append(&mut self, row: &[f32]) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(row.len() * 4);
        for v in row {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.append_bytes(row.len(), Dtype::F32, &bytes)
    }

    /// Append one float64 row (must have `cols` values).
    pub fn append_f64(&mut self, row: &[f64]) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(row.len() * 8);
        for v in row {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.append_bytes(row.len(), Dtype::F64, &bytes)
    }

    fn append_bytes(&mut self, n: usize, dtype: Dtype, bytes: &[u8]) -> std::io::Result<()> {
        if n != self.cols || dtype != self.dtype {
            return Err(std::io::Error::other(format!(
                "row of {n} {dtype:?} values for a matrix of {} {:?} columns",
                self.cols, self.dtype
            )));
        }
        self.file.seek(SeekFrom::Start(
            (HEADER_LEN + self.rows * self.cols * self.dtype.size()) as u64,
        ))?;
        self.file.write_all(bytes)?;
        self.rows += 1;
        self.file.seek(SeekFrom::Start(0))?;
        self.file
            .write_all(&header(self.rows, self.cols, self.dtype))?;
        Ok(())
    }

    /// Rows written.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// Random access to the rows of a file [`NpyAppender`] wrote, without
/// reading it all (a session's masked volumes can be gigabytes).
#[derive(Debug)]
pub struct NpyRows {
    file: File,
    header: AppendedHeader,
}

impl NpyRows {
    /// Open `path`; the header must be whole and the rows it counts present.
    pub fn open(path: &Path) -> Result<NpyRows, String> {
        let mut file = File::open(path).map_err(|e| e.to_string())?;
        let mut head = vec![0u8; HEADER_LEN];
        std::io::Read::read_exact(&mut file, &mut head)
            .map_err(|e| format!("reading the header: {e}"))?;
        let header = read_appended_header(&head)?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        if len < (HEADER_LEN + header.rows * header.row_bytes()) as u64 {
            return Err(format!(
                "{len} bytes: too short for the header's {} rows",
                header.rows
            ));
        }
        Ok(NpyRows { file, header })
    }

    /// The header.
    pub fn header(&self) -> AppendedHeader {
        self.header
    }

    fn raw(&mut self, row: usize) -> std::io::Result<Vec<u8>> {
        if row >= self.header.rows {
            return Err(std::io::Error::other(format!(
                "row {row} of a file with {} rows",
                self.header.rows
            )));
        }
        let mut buf = vec![0u8; self.header.row_bytes()];
        self.file.seek(SeekFrom::Start(
            (HEADER_LEN + row * self.header.row_bytes()) as u64,
        ))?;
        std::io::Read::read_exact(&mut self.file, &mut buf)?;
        Ok(buf)
    }

    /// Row `row` of a float32 file.
    pub fn row_f32(&mut self, row: usize) -> std::io::Result<Vec<f32>> {
        if self.header.dtype != Dtype::F32 {
            return Err(std::io::Error::other("not a float32 file"));
        }
        Ok(self
            .raw(row)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Row `row` of a float64 file.
    pub fn row_f64(&mut self, row: usize) -> std::io::Result<Vec<f64>> {
        if self.header.dtype != Dtype::F64 {
            return Err(std::io::Error::other("not a float64 file"));
        }
        Ok(self
            .raw(row)?
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }
}

/// The element type of a `.npy` [`decode_raw`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// `'<f2'` (IEEE half).
    F16,
    /// `'<f4'`.
    F32,
    /// `'<f8'`.
    F64,
}

impl Elem {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Elem::F16 => 2,
            Elem::F32 => 4,
            Elem::F64 => 8,
        }
    }
}

/// A 1-D or 2-D C-order float `.npy`, its data still little-endian bytes:
/// large banks are converted once, straight to the type they are kept in.
#[derive(Debug)]
pub struct RawArray<'a> {
    /// Element type.
    pub elem: Elem,
    /// Rows (1 for a 1-D array).
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows · cols · elem.size()` bytes.
    pub data: &'a [u8],
}

/// Parse a `.npy` holding a 1-D or 2-D C-order float16/32/64 array.
pub fn decode_raw(bytes: &[u8]) -> Result<RawArray<'_>, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated .npy header")?;
    if header.contains("'fortran_order': True") {
        return Err(
            "Fortran-order arrays are not supported (save with np.ascontiguousarray)".into(),
        );
    }
    let elem = if header.contains("'<f2'") {
        Elem::F16
    } else if header.contains("'<f4'") {
        Elem::F32
    } else if header.contains("'<f8'") {
        Elem::F64
    } else {
        return Err(format!(
            "dtype must be '<f2', '<f4' or '<f8' (header: {})",
            header.trim()
        ));
    };
    let (shape, dims) = parse_shape(header)?;
    let (rows, cols) = match dims.as_slice() {
        [n] => (1, *n),
        [r, c] => (*r, *c),
        _ => return Err(format!("expected a 1-D or 2-D array, shape ({shape})")),
    };
    let data = &bytes[start + hlen..];
    let need = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(elem.size()))
        .ok_or("shape too large")?;
    if data.len() < need {
        return Err(format!("data has {} bytes, shape needs {need}", data.len()));
    }
    Ok(RawArray {
        elem,
        rows,
        cols,
        data: &data[..need],
    })
}

impl RawArray<'_> {
    /// The values as f64, one at a time (a 425,984-wide bank is never held
    /// in float64 whole).
    pub fn values(&self) -> impl ExactSizeIterator<Item = f64> + '_ {
        let size = self.elem.size();
        self.data.chunks_exact(size).map(move |c| match self.elem {
            Elem::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f64(),
            Elem::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
            Elem::F64 => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
        })
    }

    /// Every value as f64.
    pub fn to_f64(&self) -> Vec<f64> {
        self.values().collect()
    }
}

/// Decode a little-endian float16/32/64 `.npy` holding a 1-D or 2-D
/// C-order array into `(values as f64, rows, cols)` (1-D as one row).
pub fn decode_2d(bytes: &[u8]) -> Result<(Vec<f64>, usize, usize), String> {
    let raw = decode_raw(bytes)?;
    Ok((raw.to_f64(), raw.rows, raw.cols))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_numpy_v1_and_rows_follow() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        let mut a = NpyAppender::create(&p, 3).unwrap();
        a.append(&[1.0, 2.0, 3.0]).unwrap();
        a.append(&[4.0, 5.0, 6.0]).unwrap();
        assert!(a.append(&[1.0]).is_err());
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..6], b"\x93NUMPY");
        assert_eq!(bytes.len(), HEADER_LEN + 6 * 4);
        let text = String::from_utf8_lossy(&bytes[10..HEADER_LEN]);
        assert!(text.contains("'shape': (2, 3)"), "{text}");
        let last = f32::from_le_bytes(bytes[HEADER_LEN + 20..HEADER_LEN + 24].try_into().unwrap());
        assert_eq!(last, 6.0);
        let (v, r, c) = decode_2d(&bytes).unwrap();
        assert_eq!((r, c), (2, 3));
        assert_eq!(v, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert!(decode_2d(&bytes[..50]).is_err());
        assert!(decode_2d(b"garbage").is_err());
    }
}
