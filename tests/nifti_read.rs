//! The NIfTI reader against nibabel on committed fixtures (made by
//! tests/fixtures/nifti/make_fixtures.py), the typed errors for broken files,
//! and writer → reader round trips.

use std::path::{Path, PathBuf};

use boldstream::formats::nifti::{
    self, OutputType, ReadError, WriteOptions, decode_series, decode_volume, encode_series,
    encode_volume, read_series, read_volume,
};
use boldstream::types::volume::{Grid, Volume};
use nalgebra::Matrix4;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nifti")
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// nibabel's reading of one fixture (see make_fixtures.py for the format).
#[derive(Debug)]
struct Expected {
    shape: [usize; 4],
    tr: Option<f64>,
    exact: bool,
    affine: Matrix4<f64>,
    values: Vec<f64>,
}

fn parse_expected(text: &str) -> Expected {
    let mut shape = None;
    let mut tr = None;
    let mut exact = None;
    let mut affine = None;
    let mut values = Vec::new();
    let mut in_values = false;
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if in_values {
            values.push(line.parse::<f64>().expect("value"));
            continue;
        }
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "version" => {}
            "shape" => {
                let v: Vec<usize> = rest.split(' ').map(|s| s.parse().unwrap()).collect();
                shape = Some([v[0], v[1], v[2], v[3]]);
            }
            "tr" => tr = Some((rest != "none").then(|| rest.parse::<f64>().unwrap())),
            "exact" => exact = Some(rest == "1"),
            "affine" => {
                let v: Vec<f64> = rest.split(' ').map(|s| s.parse().unwrap()).collect();
                affine = Some(Matrix4::from_row_slice(&v));
            }
            "values" => in_values = true,
            other => panic!("unknown key {other}"),
        }
    }
    Expected {
        shape: shape.expect("shape"),
        tr: tr.expect("tr"),
        exact: exact.expect("exact"),
        affine: affine.expect("affine"),
        values,
    }
}

/// Compare one fixture with nibabel's reading; returns a description of the
/// first difference.
fn check_fixture(name: &str) -> Result<(), String> {
    let path = fixture_dir().join(name);
    let text = std::fs::read_to_string(fixture_dir().join(format!("{name}.expected")))
        .map_err(|e| e.to_string())?;
    let exp = parse_expected(&text);
    let series = read_series(&path).map_err(|e| format!("read_series failed: {e}"))?;
    let [nx, ny, nz, nt] = exp.shape;
    if series.volumes.len() != nt {
        return Err(format!("{} volumes, nibabel {nt}", series.volumes.len()));
    }
    if exp.values.len() != nx * ny * nz * nt {
        return Err("expected file has the wrong number of values".into());
    }
    if series.tr != exp.tr {
        return Err(format!("TR {:?}, nibabel {:?}", series.tr, exp.tr));
    }
    for (t, vol) in series.volumes.iter().enumerate() {
        let g = vol.grid();
        if g.dims != [nx, ny, nz] {
            return Err(format!("volume {t}: dims {:?}", g.dims));
        }
        let diff = (g.affine - exp.affine).abs().max();
        if diff > 1e-5 {
            return Err(format!(
                "affine {} differs from nibabel's {}",
                g.affine, exp.affine
            ));
        }
        let want = &exp.values[t * nx * ny * nz..(t + 1) * nx * ny * nz];
        for (i, (&got, &want)) in vol.values().iter().zip(want).enumerate() {
            let want32 = want as f32;
            let ok = if want32.is_nan() {
                got.is_nan()
            } else if exp.exact || want32.is_infinite() {
                got == want32
            } else {
                (f64::from(got) - want).abs() <= 1e-6 * want.abs() + 1e-12
            };
            if !ok {
                return Err(format!("volume {t} voxel {i}: {got}, nibabel {want}"));
            }
        }
    }
    // The bytes API and the path API must agree, and read_volume must accept
    // exactly the one-volume files.
    let again = decode_series(&std::fs::read(&path).unwrap()).map_err(|e| e.to_string())?;
    let same = again.volumes.iter().zip(&series.volumes).all(|(a, b)| {
        a.values()
            .iter()
            .zip(b.values())
            .all(|(x, y)| x.to_bits() == y.to_bits())
    });
    if !same {
        return Err("decode_series differs from read_series".into());
    }
    match (nt, read_volume(&path)) {
        (1, Ok(v)) if v.values().len() == nx * ny * nz => {}
        (1, other) => return Err(format!("read_volume: {other:?}")),
        (_, Err(ReadError::Unsupported { what })) => {
            let want = format!("4-D file with {nt} volumes; expected one 3-D volume per file");
            if what != want {
                return Err(format!("read_volume said {what:?}"));
            }
        }
        (_, other) => return Err(format!("read_volume of a 4-D file: {other:?}")),
    }
    Ok(())
}

/// Every fixture the script is meant to produce; the test fails if any is
/// missing, so coverage cannot silently shrink.
const REQUIRED: &[&str] = &[
    "dtype_u8.nii",
    "dtype_i8.nii",
    "dtype_i16.nii",
    "dtype_u16.nii",
    "dtype_i32.nii",
    "dtype_u32.nii",
    "dtype_i64.nii",
    "dtype_u64.nii",
    "dtype_f32.nii",
    "dtype_f64.nii",
    "dtype_i16.nii.gz",
    "scaled_i16.nii",
    "scaled_u8.nii",
    "scaled_f32.nii",
    "slope_zero_i16.nii",
    "slope_nan_i16.nii",
    "be_i16.nii",
    "be_f64.nii.gz",
    "nifti2_f32.nii",
    "nifti2_i16_scaled.nii.gz",
    "nifti2_be_u16.nii",
    "nifti2_qform_only.nii",
    "sform_only.nii",
    "qform_only.nii",
    "qform_near_180deg.nii",
    "qform_odd_pixdim.nii",
    "sform_code_invalid.nii",
    "no_xform.nii",
    "no_xform_odd_pixdim.nii.gz",
    "extension_u16.nii",
    "series_4d.nii.gz",
    "series_4d_nt1.nii",
];

#[test]
fn every_fixture_matches_nibabel() {
    let mut names: Vec<String> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".expected").map(str::to_string)
        })
        .collect();
    names.sort();
    for r in REQUIRED {
        assert!(names.iter().any(|n| n == r), "fixture {r} is missing");
    }
    let failures: Vec<String> = names
        .iter()
        .filter_map(|n| check_fixture(n).err().map(|e| format!("{n}: {e}")))
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn fixtures_exercise_what_they_claim() {
    // Guards against a fixture script bug making the comparisons vacuous.
    let s = read_series(&fixture_dir().join("series_4d.nii.gz")).unwrap();
    assert_eq!(s.volumes.len(), 3);
    assert_eq!(s.tr, Some(2.0), "pixdim[4] = 2000 ms");
    assert_ne!(s.volumes[0].values(), s.volumes[1].values());

    let q = read_volume(&fixture_dir().join("qform_only.nii")).unwrap();
    assert!(!q.grid().fsl_flips_x(), "qfac -1 flips the determinant");
    let q = read_volume(&fixture_dir().join("no_xform.nii")).unwrap();
    assert_eq!(q.grid().affine[(0, 0)], -2.0, "fallback flips x");
    assert_eq!(q.grid().pixdim, [2.0, 3.0, 4.0]);

    let scaled = read_volume(&fixture_dir().join("scaled_i16.nii")).unwrap();
    let raw = read_volume(&fixture_dir().join("slope_zero_i16.nii")).unwrap();
    // Same generator, different data, but the scaled one must show the 0.5
    // slope: its range is about half of int16's.
    let max = scaled.values().iter().fold(f32::MIN, |a, &b| a.max(b));
    assert!((max - (32767.0 * 0.5 - 10.0)).abs() < 1e-3, "{max}");
    assert!(raw.values().contains(&32767.0));

    let be = read_volume(&fixture_dir().join("dtype_u64.nii")).unwrap();
    assert!(be.values().iter().any(|&v| v > 1e18));
}

// --- errors -----------------------------------------------------------------

fn err_of(bytes: &[u8]) -> ReadError {
    match decode_series(bytes) {
        Ok(s) => panic!("decoded {} volumes from bad input", s.volumes.len()),
        Err(e) => e,
    }
}

#[test]
fn empty_file_is_empty_and_may_be_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.nii");
    std::fs::write(&path, b"").unwrap();
    let e = read_volume(&path).unwrap_err();
    assert!(matches!(e, ReadError::Empty), "{e:?}");
    assert!(e.may_be_incomplete());
    assert_eq!(e.to_string(), "file is empty (0 bytes)");
}

#[test]
fn truncated_nii_says_how_much_is_missing() {
    let full = fixture_bytes("dtype_i16.nii");
    assert_eq!(full.len(), 352 + 60 * 2);

    let e = err_of(&full[..352]);
    assert!(
        matches!(
            e,
            ReadError::Truncated {
                needed: 472,
                got: 352,
                decompressed: false
            }
        ),
        "{e:?}"
    );
    assert!(e.may_be_incomplete());
    assert_eq!(
        e.to_string(),
        "file ends after 352 bytes; header says the voxel data runs to byte 472"
    );

    let e = err_of(&full[..352 + 60]);
    assert!(matches!(e, ReadError::Truncated { got: 412, .. }), "{e:?}");
    assert!(e.may_be_incomplete());

    let e = err_of(&full[..200]);
    assert!(
        matches!(
            e,
            ReadError::TruncatedHeader {
                needed: 348,
                got: 200,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.may_be_incomplete());
    assert_eq!(
        e.to_string(),
        "file ends after 200 bytes, inside the 348-byte NIfTI header"
    );
}

#[test]
fn every_prefix_of_every_fixture_is_reported_incomplete() {
    // What a file being written looks like at each moment: never decoded,
    // never a permanent error.
    for name in REQUIRED {
        let full = fixture_bytes(name);
        for len in 0..full.len() {
            match decode_series(&full[..len]) {
                Ok(_) => panic!("{name}: prefix of {len} bytes decoded"),
                Err(e) => assert!(
                    e.may_be_incomplete(),
                    "{name}: prefix of {len}/{} bytes: {e}",
                    full.len()
                ),
            }
        }
        decode_series(&full).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn truncated_nii_gz_is_a_cut_stream() {
    let full = fixture_bytes("dtype_i16.nii.gz");
    let e = err_of(&full[..full.len() / 2]);
    assert!(
        matches!(e, ReadError::CompressedStreamCut { ref problem, .. } if problem == "ends early"),
        "{e:?}"
    );
    assert!(e.may_be_incomplete());
    assert!(
        e.to_string().starts_with("gzip stream ends early after "),
        "{e}"
    );

    // All voxels present, but the CRC/length trailer not yet written.
    let e = err_of(&full[..full.len() - 4]);
    assert!(matches!(e, ReadError::CompressedStreamCut { .. }), "{e:?}");
}

#[test]
fn corrupt_gzip_is_reported_as_such() {
    let mut bytes = fixture_bytes("dtype_i16.nii.gz");
    let n = bytes.len();
    // Flip bits in the CRC: the data inflates but does not check out.
    bytes[n - 6] ^= 0xff;
    let e = err_of(&bytes);
    assert!(
        matches!(e, ReadError::CompressedStreamCut { ref problem, .. } if problem.starts_with("is corrupt")),
        "{e:?}"
    );
}

#[test]
fn complete_gzip_of_a_truncated_nii_is_truncated() {
    use std::io::Write;
    let full = fixture_bytes("dtype_i16.nii");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&full[..400]).unwrap();
    let gz = enc.finish().unwrap();
    let e = err_of(&gz);
    assert!(
        matches!(
            e,
            ReadError::Truncated {
                needed: 472,
                got: 400,
                decompressed: true
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("decompressed stream ends after 400 bytes")
    );
}

/// Deterministic junk without depending on rand's API.
fn xorshift_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

#[test]
fn random_garbage_is_not_nifti() {
    for seed in 1..50 {
        let junk = xorshift_bytes(seed, 1000);
        let e = err_of(&junk);
        assert!(matches!(e, ReadError::NotNifti { .. }), "{e:?}");
        assert!(!e.may_be_incomplete());
        assert!(e.to_string().contains("sizeof_hdr"), "{e}");
    }
}

#[test]
fn all_zero_header_is_a_file_not_yet_written() {
    let e = err_of(&vec![0u8; 4096]);
    assert!(matches!(e, ReadError::HeaderAllZero { len: 348 }), "{e:?}");
    assert!(e.may_be_incomplete());
}

#[test]
fn missing_path_is_removed_and_errors_never_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.nii");
    let e = read_volume(&path).unwrap_err();
    assert!(matches!(e, ReadError::Removed), "{e:?}");
    assert!(!e.may_be_incomplete());

    let dir_str = dir.path().to_string_lossy().to_string();
    let full = fixture_bytes("dtype_i16.nii");
    for (name, bytes) in [
        ("e.nii", Vec::new()),
        ("t.nii", full[..400].to_vec()),
        ("g.nii", xorshift_bytes(7, 600)),
        ("z.nii", vec![0; 600]),
        ("gone.nii", Vec::new()),
    ] {
        let p = dir.path().join(name);
        if name != "gone.nii" {
            std::fs::write(&p, &bytes).unwrap();
        }
        let msg = read_volume(&p).unwrap_err().to_string();
        assert!(!msg.contains(&dir_str) && !msg.contains(name), "{msg}");
    }
}

/// dtype_i16.nii with header fields overwritten (little endian NIfTI-1).
fn patched(edits: &[(usize, &[u8])]) -> Vec<u8> {
    let mut b = fixture_bytes("dtype_i16.nii");
    for (off, bytes) in edits {
        b[*off..*off + bytes.len()].copy_from_slice(bytes);
    }
    b
}

fn dims_bytes(d: [i16; 8]) -> Vec<u8> {
    d.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn garbage_headers_give_precise_permanent_errors() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "absurd dims",
            patched(&[(40, &dims_bytes([4, 32767, 32767, 32767, 32767, 1, 1, 1]))]),
            "unsupported NIfTI file: header says the image is 32767x32767x32767x32767 voxels",
        ),
        (
            "negative dim",
            patched(&[(40, &dims_bytes([3, 5, -4, 3, 1, 1, 1, 1]))]),
            "invalid NIfTI header: dim[2] is negative (-4)",
        ),
        (
            "zero dim",
            patched(&[(40, &dims_bytes([3, 5, 0, 3, 1, 1, 1, 1]))]),
            "unsupported NIfTI file: dim[2] is 0: the image has no voxels",
        ),
        (
            "dim0 out of range",
            patched(&[(40, &dims_bytes([0, 5, 4, 3, 1, 1, 1, 1]))]),
            "invalid NIfTI header: dim[0] (number of dimensions) is 0; it must be 1 to 7",
        ),
        (
            "5-D",
            patched(&[(40, &dims_bytes([5, 5, 4, 3, 1, 2, 1, 1]))]),
            "unsupported NIfTI file: 5-D image with dim[5] = 2; only 3-D and 4-D images are read",
        ),
        (
            "complex",
            patched(&[(70, &32i16.to_le_bytes())]),
            "unsupported NIfTI file: datatype 32 (complex64) is not supported",
        ),
        (
            "unknown datatype",
            patched(&[(70, &77i16.to_le_bytes())]),
            "unsupported NIfTI file: datatype code 77 is not a NIfTI datatype",
        ),
        (
            "huge vox_offset",
            patched(&[(108, &1e30f32.to_le_bytes())]),
            "unsupported NIfTI file: vox_offset 1000000015047466200000000000000 is beyond",
        ),
        (
            "NaN vox_offset",
            patched(&[(108, &f32::NAN.to_le_bytes())]),
            "invalid NIfTI header: vox_offset is NaN",
        ),
        (
            "vox_offset inside header",
            patched(&[(108, &100f32.to_le_bytes())]),
            "invalid NIfTI header: vox_offset 100 points inside the 348-byte header",
        ),
        (
            "bad magic",
            patched(&[(344, b"xyz\0")]),
            "not a NIfTI file: sizeof_hdr is 348 (NIfTI-1) but the magic at byte 344 is 78 79 7a 00",
        ),
        (
            "analyze",
            patched(&[(344, b"\0\0\0\0")]),
            "(an Analyze 7.5 header?)",
        ),
        (
            "pair",
            patched(&[(344, b"ni1\0")]),
            "unsupported NIfTI file: magic \"ni1\" marks the header of a .hdr/.img pair",
        ),
        (
            "quaternion longer than 1",
            patched(&[
                (252, &1i16.to_le_bytes()),
                (254, &0i16.to_le_bytes()),
                (256, &0.9f32.to_le_bytes()),
                (260, &0.9f32.to_le_bytes()),
            ]),
            "invalid NIfTI header: qform quaternion (b, c, d) = (0.8999999761581421, 0.8999999761581421",
        ),
        (
            "NaN sform",
            patched(&[(280, &f32::NAN.to_le_bytes())]),
            "invalid NIfTI header: the sform affine has a non-finite entry (NaN)",
        ),
        (
            "infinite pixdim",
            patched(&[(80, &f32::INFINITY.to_le_bytes())]),
            "invalid NIfTI header: pixdim[1] is inf",
        ),
        (
            "slope with infinite intercept",
            patched(&[
                (112, &2f32.to_le_bytes()),
                (116, &f32::INFINITY.to_le_bytes()),
            ]),
            "invalid NIfTI header: scl_slope is 2 but scl_inter is inf",
        ),
    ];
    for (what, bytes, want) in cases {
        let e = err_of(&bytes);
        assert!(!e.may_be_incomplete(), "{what}: {e:?} should be permanent");
        let msg = e.to_string();
        assert!(msg.contains(want), "{what}: got {msg:?}, want {want:?}");
        // Cut to the header alone: the header's verdict still comes first,
        // so a broken file is not retried as "incomplete".
        let cut = err_of(&bytes[..352]);
        assert!(
            !cut.may_be_incomplete() && cut.to_string() == msg,
            "{what}: header alone gave {cut:?}"
        );
    }
}

#[test]
fn vox_offset_zero_means_right_after_the_header() {
    let original = decode_volume(&fixture_bytes("dtype_i16.nii")).unwrap();
    let zero = decode_volume(&patched(&[(108, &0f32.to_le_bytes())])).unwrap();
    assert_eq!(zero.values(), original.values());
}

#[test]
fn nifti2_garbage_dims_overflow_cleanly() {
    let mut b = fixture_bytes("nifti2_f32.nii");
    for (i, d) in [4i64, i64::MAX, i64::MAX, 3, 7, 1, 1, 1].iter().enumerate() {
        b[16 + 8 * i..24 + 8 * i].copy_from_slice(&d.to_le_bytes());
    }
    let e = err_of(&b);
    assert!(matches!(e, ReadError::Unsupported { .. }), "{e:?}");
    assert!(e.to_string().contains("9223372036854775807x"), "{e}");

    let mut b = fixture_bytes("nifti2_f32.nii");
    b[168..176].copy_from_slice(&(-5i64).to_le_bytes());
    let e = err_of(&b);
    assert_eq!(e.to_string(), "invalid NIfTI header: vox_offset is -5");
}

#[test]
fn read_volume_refuses_a_multi_volume_file_before_reading_its_data() {
    // Header of a 3-volume file and nothing else: the verdict is permanent.
    let full = fixture_bytes("series_4d.nii.gz");
    let plain = {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&full[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    let e = decode_volume(&plain[..352]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unsupported NIfTI file: 4-D file with 3 volumes; expected one 3-D volume per file"
    );
    assert!(!e.may_be_incomplete());
}

// --- writer → reader --------------------------------------------------------

fn oblique_grid(dims: [usize; 3]) -> Grid {
    let mut g = Grid::centred(dims, [2.0, 2.5, 3.0]);
    let (c, s) = (0.3f64.cos(), 0.3f64.sin());
    let rot = nalgebra::Matrix3::new(c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0);
    let lin = rot * g.affine.fixed_view::<3, 3>(0, 0);
    g.affine.fixed_view_mut::<3, 3>(0, 0).copy_from(&lin);
    g.affine[(0, 3)] = -31.5;
    g.affine[(1, 3)] = 12.0;
    g.affine[(2, 3)] = 7.25;
    g
}

fn volume(grid: &Grid, f: impl Fn(usize) -> f32) -> Volume {
    Volume::from_file_order(grid.clone(), (0..grid.len()).map(f).collect()).unwrap()
}

#[test]
fn f32_round_trip_is_exact_gz_or_not() {
    let grid = oblique_grid([7, 6, 5]);
    let vol = volume(&grid, |i| (i as f32 * 0.37).sin() * 1234.5 - 17.0);
    for gzip in [false, true] {
        let opts = WriteOptions {
            dtype: OutputType::F32,
            gzip,
            tr: Some(1.5),
        };
        let bytes = encode_volume(&vol, &opts).unwrap();
        assert_eq!(bytes.starts_with(&[0x1f, 0x8b]), gzip);
        let back = decode_volume(&bytes).unwrap();
        assert_eq!(back.values(), vol.values(), "gzip {gzip}");
        assert!(back.grid().matches(&grid, 1e-5), "{:?}", back.grid());
        assert_eq!(back.grid().pixdim, grid.pixdim);
        let s = decode_series(&bytes).unwrap();
        assert_eq!(s.tr, Some(1.5));
    }
}

/// scl_slope and scl_inter of an uncompressed NIfTI-1 file we wrote.
fn slope_inter(bytes: &[u8]) -> (f32, f32) {
    let f = |o: usize| f32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    (f(112), f(116))
}

#[test]
fn i16_round_trip_rounds_in_range_values() {
    let grid = oblique_grid([6, 5, 4]);
    let vol = volume(&grid, |i| (i as f32 * 0.71).cos() * 30000.0 + 0.4);
    for gzip in [false, true] {
        let opts = WriteOptions {
            dtype: OutputType::I16,
            gzip,
            tr: None,
        };
        let bytes = encode_volume(&vol, &opts).unwrap();
        if !gzip {
            assert_eq!(slope_inter(&bytes), (1.0, 0.0));
            assert_eq!(bytes.len(), 352 + grid.len() * 2);
        }
        let back = decode_volume(&bytes).unwrap();
        for (&a, &b) in back.values().iter().zip(vol.values()) {
            assert_eq!(a, b.round(), "gzip {gzip}");
        }
        assert!(back.grid().matches(&grid, 1e-5));
        assert_eq!(decode_series(&bytes).unwrap().tr, None);
    }
}

#[test]
fn i16_round_trip_scales_values_beyond_int16() {
    let grid = oblique_grid([6, 5, 4]);
    let vol = volume(&grid, |i| match i {
        0 => 1.0e6,
        1 => -2.5e5,
        _ => (i as f32 * 0.53).sin() * 4.0e5,
    });
    for gzip in [false, true] {
        let opts = WriteOptions {
            dtype: OutputType::I16,
            gzip,
            tr: Some(2.0),
        };
        let bytes = encode_volume(&vol, &opts).unwrap();
        let slope = 1.0e6 / 32767.0;
        if !gzip {
            let (s, inter) = slope_inter(&bytes);
            assert!((f64::from(s) - slope).abs() < 1e-3, "slope {s}");
            assert_eq!(inter, 0.0);
        }
        let back = decode_volume(&bytes).unwrap();
        assert!(
            (back.values()[0] - 1.0e6).abs() < 1.0,
            "{}",
            back.values()[0]
        );
        for (&a, &b) in back.values().iter().zip(vol.values()) {
            assert!(
                f64::from((a - b).abs()) <= slope / 2.0 + 1e-3,
                "{a} vs {b} (gzip {gzip})"
            );
        }
    }
}

#[test]
fn series_round_trip_through_files() {
    let dir = tempfile::tempdir().unwrap();
    let grid = oblique_grid([5, 4, 3]);
    let vols: Vec<Volume> = (0..3)
        .map(|t| volume(&grid, |i| (i * 10 + t) as f32))
        .collect();
    for (gzip, dtype) in [(true, OutputType::I16), (false, OutputType::F32)] {
        let opts = WriteOptions {
            dtype,
            gzip,
            tr: Some(0.8),
        };
        let path = dir.path().join(if gzip { "s.nii.gz" } else { "s.nii" });
        nifti::write_series(&path, &vols, &opts).unwrap();
        let s = read_series(&path).unwrap();
        assert_eq!(s.tr, Some(0.8));
        assert_eq!(s.volumes.len(), 3);
        for (a, b) in s.volumes.iter().zip(&vols) {
            assert_eq!(a.values(), b.values());
            assert!(a.grid().matches(&grid, 1e-5));
        }
        let one = dir.path().join("one.nii");
        nifti::write_volume(&one, &vols[2], &opts).unwrap();
        assert_eq!(read_volume(&one).unwrap().values(), vols[2].values());
    }
}

#[test]
fn writer_rejects_what_it_cannot_represent() {
    let grid = oblique_grid([5, 4, 3]);
    let a = volume(&grid, |i| i as f32);
    let b = volume(&Grid::centred([5, 4, 4], [1.0; 3]), |i| i as f32);
    let opts = WriteOptions::default();
    let e = encode_series(&[a.clone(), b], &opts).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("volume 1 is 5x4x4 voxels"), "{e}");
    assert!(encode_series(&[], &opts).is_err());
    let empty = Volume::zeros(Grid::centred([5, 0, 3], [1.0; 3]));
    let e = encode_volume(&empty, &opts).unwrap_err();
    assert!(e.to_string().contains("no voxels"), "{e}");
    let mut flat = grid.clone();
    flat.affine[(0, 0)] = 0.0;
    flat.affine[(1, 0)] = 0.0;
    flat.affine[(2, 0)] = 0.0;
    let mut v = a;
    assert!(v.set_grid(flat));
    let e = encode_volume(&v, &opts).unwrap_err();
    assert!(e.to_string().contains("degenerate"), "{e}");
}

/// Not a test of its own: writes files from our writer, with our reader's
/// view of them, for `make_fixtures.py --check-ours DIR` to compare with
/// nibabel. Run by hand:
/// `BOLDSTREAM_NIFTI_EXPORT=/tmp/ours cargo test --test nifti_read -- --ignored`
#[test]
#[ignore = "writes files for the nibabel cross-check; needs BOLDSTREAM_NIFTI_EXPORT"]
fn export_for_nibabel() {
    let dir = PathBuf::from(
        std::env::var("BOLDSTREAM_NIFTI_EXPORT").expect("set BOLDSTREAM_NIFTI_EXPORT"),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let grid = oblique_grid([7, 6, 5]);
    let mut flipped = grid.clone();
    flipped.affine[(0, 0)] *= -1.0;
    flipped.affine[(1, 0)] *= -1.0;
    flipped.affine[(2, 0)] *= -1.0;
    let smooth = |g: &Grid| volume(g, |i| (i as f32 * 0.37).sin() * 1234.5 - 17.0);
    let big = |g: &Grid| volume(g, |i| (i as f32 * 0.53).sin() * 4.0e5);
    let cases: Vec<(&str, Vec<Volume>, WriteOptions)> = vec![
        ("ours_f32.nii", vec![smooth(&grid)], WriteOptions::default()),
        (
            "ours_f32_flipped.nii.gz",
            vec![smooth(&flipped)],
            WriteOptions {
                gzip: true,
                ..Default::default()
            },
        ),
        (
            "ours_i16.nii",
            vec![smooth(&grid)],
            WriteOptions {
                dtype: OutputType::I16,
                ..Default::default()
            },
        ),
        (
            "ours_i16_scaled.nii.gz",
            vec![big(&grid)],
            WriteOptions {
                dtype: OutputType::I16,
                gzip: true,
                tr: None,
            },
        ),
        (
            "ours_series_i16.nii.gz",
            vec![smooth(&grid), big(&grid), smooth(&grid)],
            WriteOptions {
                dtype: OutputType::I16,
                gzip: true,
                tr: Some(1.5),
            },
        ),
    ];
    for (name, vols, opts) in cases {
        let path = dir.join(name);
        nifti::write_series(&path, &vols, &opts).unwrap();
        let s = read_series(&path).unwrap();
        let g = s.volumes[0].grid();
        let mut text = format!(
            "# written and read back by boldstream\nversion 1\nshape {} {} {} {}\ntr {}\nexact 0\naffine",
            g.dims[0],
            g.dims[1],
            g.dims[2],
            s.volumes.len(),
            s.tr.map_or("none".to_string(), |t| t.to_string())
        );
        for r in 0..4 {
            for c in 0..4 {
                text.push_str(&format!(" {:?}", g.affine[(r, c)]));
            }
        }
        text.push_str("\nvalues\n");
        for v in &s.volumes {
            for x in v.values() {
                text.push_str(&format!("{x:?}\n"));
            }
        }
        std::fs::write(dir.join(format!("{name}.expected")), text).unwrap();
    }
}
