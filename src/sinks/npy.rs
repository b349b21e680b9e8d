//! An append-only `.npy` matrix: one row per append, readable by
//! `numpy.load` at any moment; and a reader for the float matrices
//! calibration and decoders hand us.
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

/// A float32 matrix file that grows by rows.
#[derive(Debug)]
pub struct NpyAppender {
    file: File,
    cols: usize,
    rows: usize,
}

fn header(rows: usize, cols: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
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

impl NpyAppender {
    /// Create (truncate) `path` for rows of `cols` values.
    pub fn create(path: &Path, cols: usize) -> std::io::Result<NpyAppender> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        file.write_all(&header(0, cols))?;
        Ok(NpyAppender {
            file,
            cols,
            rows: 0,
        })
    }

    /// Append one row (must have `cols` values).
    pub fn append(&mut self, row: &[f32]) -> std::io::Result<()> {
        if row.len() != self.cols {
            return Err(std::io::Error::other(format!(
                "row of {} values for a matrix of {} columns",
                row.len(),
                self.cols
            )));
        }
        let mut bytes = Vec::with_capacity(row.len() * 4);
        for v in row {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.file.seek(SeekFrom::Start(
            (HEADER_LEN + self.rows * self.cols * 4) as u64,
        ))?;
        self.file.write_all(&bytes)?;
        self.rows += 1;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&header(self.rows, self.cols))?;
        Ok(())
    }

    /// Rows written.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// Decode a little-endian float32/float64 `.npy` holding a 1-D or 2-D
/// C-order array into `(values as f64, rows, cols)` (1-D as one row).
pub fn decode_2d(bytes: &[u8]) -> Result<(Vec<f64>, usize, usize), String> {
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
    let size = if header.contains("'<f4'") {
        4
    } else if header.contains("'<f8'") {
        8
    } else {
        return Err(format!(
            "dtype must be '<f4' or '<f8' (header: {})",
            header.trim()
        ));
    };
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .ok_or("no shape in the .npy header")?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape '{shape}'"))
        })
        .collect::<Result<_, _>>()?;
    let (rows, cols) = match dims.as_slice() {
        [n] => (1, *n),
        [r, c] => (*r, *c),
        _ => return Err(format!("expected a 1-D or 2-D array, shape ({shape})")),
    };
    let data = &bytes[start + hlen..];
    let need = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(size))
        .ok_or("shape too large")?;
    if data.len() < need {
        return Err(format!("data has {} bytes, shape needs {need}", data.len()));
    }
    let values = if size == 4 {
        data[..need]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect()
    } else {
        data[..need]
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    };
    Ok((values, rows, cols))
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
