//! NIfTI-1 and NIfTI-2 reading and writing.
//!
//! In: `.nii` / `.nii.gz` files (or their bytes). Out: [`Volume`]s with
//! scl_slope/scl_inter applied and the affine from sform, else qform, else
//! pixdim; or a [`ReadError`] that says what is wrong.
//!
//! SKELETON: a minimal NIfTI-1-only version through the `nifti` crate so the
//! other stages can be built against the API. The full reader (NIfTI-2, typed
//! errors for truncation, datatypes, speed) replaces it.

use std::path::Path;

use nifti::{IntoNdArray, NiftiHeader, NiftiObject, NiftiType, ReaderOptions};

use crate::volume::{Grid, Volume};

/// Why a file could not be turned into a volume.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Anything the skeleton reader reports.
    #[error("{0}")]
    Other(String),
}

impl ReadError {
    /// True when more bytes arriving could fix the problem (empty, truncated,
    /// compressed stream cut short): the file is probably still being written.
    pub fn may_be_incomplete(&self) -> bool {
        true
    }
}

/// Sample type written by [`encode_volume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputType {
    /// 32-bit float.
    F32,
    /// 16-bit signed integer, as scanners export (rounded, clamped).
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

fn grid_of(h: &NiftiHeader) -> Grid {
    let px = |v: f32| if v == 0.0 { 1.0 } else { v.abs() as f64 };
    Grid {
        dims: [
            h.dim[1] as usize,
            h.dim[2].max(1) as usize,
            h.dim[3].max(1) as usize,
        ],
        pixdim: [px(h.pixdim[1]), px(h.pixdim[2]), px(h.pixdim[3])],
        affine: h.affine::<f64>(),
    }
}

/// Read every volume of a 3-D or 4-D file.
pub fn read_series(path: &Path) -> Result<Series, ReadError> {
    let obj = ReaderOptions::new()
        .read_file(path)
        .map_err(|e| ReadError::Other(e.to_string()))?;
    let h = obj.header().clone();
    let grid = grid_of(&h);
    let arr = obj
        .into_volume()
        .into_ndarray::<f32>()
        .map_err(|e| ReadError::Other(e.to_string()))?;
    let nt = if h.dim[0] >= 4 {
        h.dim[4].max(1) as usize
    } else {
        1
    };
    let [nx, ny, nz] = grid.dims;
    if arr.ndim() < 3 && nt > 1 {
        return Err(ReadError::Other("unexpected dimensionality".into()));
    }
    let mut volumes = Vec::with_capacity(nt);
    for t in 0..nt {
        let mut vals = Vec::with_capacity(grid.len());
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    let v = if arr.ndim() >= 4 {
                        arr.get(&[i, j, k, t][..])
                    } else if arr.ndim() == 3 {
                        arr.get(&[i, j, k][..])
                    } else {
                        arr.get(&[i, j][..])
                    };
                    vals.push(*v.ok_or_else(|| ReadError::Other("index out of range".into()))?);
                }
            }
        }
        volumes.push(
            Volume::from_file_order(grid.clone(), vals)
                .ok_or_else(|| ReadError::Other("size mismatch".into()))?,
        );
    }
    let tr = (h.dim[0] >= 4 && h.pixdim[4] > 0.0).then_some(h.pixdim[4] as f64);
    Ok(Series { volumes, tr })
}

/// Read one 3-D volume from a `.nii` or `.nii.gz` file.
pub fn read_volume(path: &Path) -> Result<Volume, ReadError> {
    let mut s = read_series(path)?;
    if s.volumes.len() != 1 {
        return Err(ReadError::Other(format!(
            "expected one 3-D volume, found {}",
            s.volumes.len()
        )));
    }
    s.volumes
        .pop()
        .ok_or_else(|| ReadError::Other("no volume".into()))
}

/// The complete bytes of a NIfTI-1 file holding `vol`.
pub fn encode_volume(vol: &Volume, opts: &WriteOptions) -> std::io::Result<Vec<u8>> {
    encode_series(std::slice::from_ref(vol), opts)
}

/// The complete bytes of a 4-D NIfTI-1 file holding `vols` (all on one grid).
pub fn encode_series(vols: &[Volume], opts: &WriteOptions) -> std::io::Result<Vec<u8>> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ext = if opts.gzip { "nii.gz" } else { "nii" };
    let tmp = std::env::temp_dir().join(format!("boldstream-enc-{}-{n}.{ext}", std::process::id()));
    write_series(&tmp, vols, opts)?;
    let bytes = std::fs::read(&tmp);
    let _ = std::fs::remove_file(&tmp);
    bytes
}

/// Write one volume to `path`.
pub fn write_volume(path: &Path, vol: &Volume, opts: &WriteOptions) -> std::io::Result<()> {
    write_series(path, std::slice::from_ref(vol), opts)
}

/// Write volumes as a 4-D file (3-D when there is one).
pub fn write_series(path: &Path, vols: &[Volume], opts: &WriteOptions) -> std::io::Result<()> {
    let first = vols
        .first()
        .ok_or_else(|| std::io::Error::other("no volumes to write"))?;
    let g = first.grid();
    let [nx, ny, nz] = g.dims;
    let nt = vols.len();
    let mut h = NiftiHeader::default();
    h.set_affine(&g.affine);
    h.pixdim[1] = g.pixdim[0] as f32;
    h.pixdim[2] = g.pixdim[1] as f32;
    h.pixdim[3] = g.pixdim[2] as f32;
    h.pixdim[4] = opts.tr.unwrap_or(0.0) as f32;
    h.xyzt_units = 2 | 8;
    let shape = if nt > 1 {
        vec![nx, ny, nz, nt]
    } else {
        vec![nx, ny, nz]
    };
    let dyn_shape = ndarray::IxDyn(&shape);
    let mut all: Vec<f32> = Vec::with_capacity(nx * ny * nz * nt);
    for v in vols {
        all.extend_from_slice(v.values());
    }
    use ndarray::ShapeBuilder;
    let arr = ndarray::ArrayD::from_shape_vec(dyn_shape.f(), all).map_err(std::io::Error::other)?;
    let w = nifti::writer::WriterOptions::new(path)
        .reference_header(&h)
        .compress(opts.gzip);
    let res = match opts.dtype {
        OutputType::F32 => w.write_nifti(&arr),
        OutputType::I16 => {
            let a = arr.mapv(|v| v.round().clamp(-32768.0, 32767.0) as i16);
            w.write_nifti_with_type(&a, NiftiType::Int16)
        }
    };
    res.map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skeleton_round_trip_keeps_order_and_affine() {
        let mut grid = Grid::centred([5, 4, 3], [2.0, 2.5, 3.0]);
        grid.affine[(0, 3)] += 7.0;
        let vals: Vec<f32> = (0..60).map(|v| v as f32 * 1.5).collect();
        let vol = Volume::from_file_order(grid.clone(), vals).unwrap();
        let dir = std::env::temp_dir().join(format!("bs-nifti-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for gzip in [false, true] {
            let path = dir.join(if gzip { "a.nii.gz" } else { "a.nii" });
            let opts = WriteOptions {
                gzip,
                ..Default::default()
            };
            write_volume(&path, &vol, &opts).unwrap();
            let back = read_volume(&path).unwrap();
            assert_eq!(back.values(), vol.values());
            assert!(back.grid().matches(&grid, 1e-5), "{:?}", back.grid());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
