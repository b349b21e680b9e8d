//! Shared helpers of the DICOM tests: where the real scanner files are, and
//! single-slice DICOM files made from a real mosaic.
//!
//! The real files live beside the project (`../shared/data`, see its
//! README), or where `BOLDSTREAM_SHARED_DATA` points. When they are absent
//! a test fails naming the folder — CI has them, so a silent pass would
//! hide a broken checkout — unless `BOLDSTREAM_ALLOW_MISSING_SHARED=1` says
//! skipping is intended, in which case it says so on stderr.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use boldstream::types::volume::Volume;
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};

/// `../shared/data/<sub>`, or `None` (after saying so) when it is absent and
/// skipping is allowed. Panics, naming the folder, when it is absent and
/// skipping is not allowed.
pub fn shared(sub: &str) -> Option<PathBuf> {
    let root = std::env::var_os("BOLDSTREAM_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let dir = root.join(sub);
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var_os("BOLDSTREAM_ALLOW_MISSING_SHARED").is_some_and(|v| v == "1") {
        eprintln!(
            "SKIPPED: {} is absent and BOLDSTREAM_ALLOW_MISSING_SHARED=1",
            dir.display()
        );
        return None;
    }
    panic!(
        "{} is absent: this test needs the real scanner files of ../shared/data (see its README). \
         Point BOLDSTREAM_SHARED_DATA at them, or set BOLDSTREAM_ALLOW_MISSING_SHARED=1 to skip.",
        dir.display()
    );
}

/// Every `.dcm` file of `dir`, in name order.
pub fn dcm_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    v.sort();
    v
}

/// Largest absolute difference between two affines.
pub fn affine_diff(a: &nalgebra::Matrix4<f64>, b: &nalgebra::Matrix4<f64>) -> f64 {
    (a - b).abs().max()
}

/// Largest absolute voxel difference.
pub fn voxel_diff(a: &Volume, b: &Volume) -> f64 {
    assert_eq!(a.grid().dims, b.grid().dims);
    a.values()
        .iter()
        .zip(b.values())
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .fold(0.0, f64::max)
}

/// Split the classic mosaic `mosaic_file` (whose decoded volume is `vol`)
/// into one single-slice DICOM file per slice, as other vendors export
/// them: same header minus the Siemens private groups, each slice's own
/// position, instance number and acquisition time. `images_in_acquisition`
/// writes (0020,1002) when given. Returns the files' bytes, slice 0 first.
pub fn split_mosaic(
    mosaic_file: &Path,
    vol: &Volume,
    volume_number: u32,
    images_in_acquisition: Option<u16>,
    slice_times: &[f64],
) -> Vec<Vec<u8>> {
    let base = dicom_object::open_file(mosaic_file).unwrap();
    let [nx, ny, nz] = vol.grid().dims;
    let a = vol.grid().affine;
    let mut out = Vec::with_capacity(nz);
    for k in 0..nz {
        let mut obj = base.clone();
        obj.retain(|e| !matches!(e.header().tag.group(), 0x0019 | 0x0029 | 0x0051));
        // RAS of voxel (0, ny-1, k) — the first stored pixel — back to LPS.
        let p = a * nalgebra::Vector4::new(0.0, (ny - 1) as f64, k as f64, 1.0);
        let ipp = format!("{:.6}\\{:.6}\\{:.6}", -p.x, -p.y, p.z);
        let put_str = |o: &mut dicom_object::DefaultDicomObject, tag: Tag, vr: VR, s: &str| {
            o.put(DataElement::new(tag, vr, PrimitiveValue::from(s)));
        };
        put_str(
            &mut obj,
            Tag(0x0008, 0x0008),
            VR::CS,
            "ORIGINAL\\PRIMARY\\M\\ND",
        );
        put_str(&mut obj, Tag(0x0020, 0x0032), VR::DS, &ipp);
        put_str(
            &mut obj,
            Tag(0x0020, 0x0013),
            VR::IS,
            &(k as u32 + 1 + (volume_number - 1) * nz as u32).to_string(),
        );
        put_str(
            &mut obj,
            Tag(0x0020, 0x0012),
            VR::IS,
            &volume_number.to_string(),
        );
        let t0 = 12.0 * 3600.0 + 100.0 * f64::from(volume_number);
        let t = t0 + slice_times.get(k).copied().unwrap_or(0.0);
        let (h, m, s) = ((t / 3600.0) as u32, ((t % 3600.0) / 60.0) as u32, t % 60.0);
        put_str(
            &mut obj,
            Tag(0x0008, 0x0032),
            VR::TM,
            &format!("{h:02}{m:02}{s:09.6}"),
        );
        if let Some(n) = images_in_acquisition {
            obj.put(DataElement::new(
                Tag(0x0020, 0x1002),
                VR::IS,
                PrimitiveValue::from(n.to_string().as_str()),
            ));
        } else {
            obj.remove_element(Tag(0x0020, 0x1002));
        }
        obj.put(DataElement::new(
            Tag(0x0028, 0x0010),
            VR::US,
            PrimitiveValue::from(ny as u16),
        ));
        obj.put(DataElement::new(
            Tag(0x0028, 0x0011),
            VR::US,
            PrimitiveValue::from(nx as u16),
        ));
        let mut px = Vec::with_capacity(nx * ny);
        for row in 0..ny {
            let j = ny - 1 - row;
            for i in 0..nx {
                px.push(vol.data()[[i, j, k]] as u16);
            }
        }
        obj.put(DataElement::new(
            Tag(0x7FE0, 0x0010),
            VR::OW,
            PrimitiveValue::U16(px.into()),
        ));
        let mut bytes = Vec::new();
        obj.write_all(&mut bytes).unwrap();
        out.push(bytes);
    }
    out
}

/// The same file re-encoded in implicit VR little endian.
pub fn to_implicit(file: &Path) -> Vec<u8> {
    let obj = dicom_object::open_file(file).unwrap();
    let mut meta = obj.meta().clone();
    meta.transfer_syntax = "1.2.840.10008.1.2".to_string();
    meta.update_information_group_length();
    let obj = obj.into_inner().with_exact_meta(meta);
    let mut bytes = Vec::new();
    obj.write_all(&mut bytes).unwrap();
    bytes
}
