//! The in-process DICOM reader against dcm2niix, on real scanner files.
//!
//! Every series of `../shared/data/dicom` (Siemens classic mosaics of both
//! storage orders, with and without the (0019,xxxx) private tags; Siemens
//! XA enhanced multi-frame) must give dcm2niix's voxels exactly and its
//! affine to 1e-4 mm, and its `SliceTiming`. Half-written files must read
//! as incomplete at every cut, compressed ones as unsupported, and a
//! single-slice series made from a real mosaic must stack back into it.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use boldstream::formats::dicom::{
    self, Decoded, DicomError, Flavour, SliceAssembler, slices::Added,
};
use boldstream::formats::nifti;
use boldstream::types::volume::Volume;

use support::{affine_diff, dcm_files, shared, voxel_diff};

fn volume_of(d: Decoded) -> (Volume, dicom::DicomInfo) {
    match d {
        Decoded::Volume { volume, info } => (volume, info),
        Decoded::Slice { .. } => panic!("expected a whole volume"),
    }
}

fn slice_timing(json: &Path) -> Vec<f64> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    v["SliceTiming"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Decode `files` (one volume each, in volume order) and compare with
/// dcm2niix's 4-D `reference`; returns (max voxel diff, max affine diff,
/// max slice-timing diff).
fn compare(files: &[std::path::PathBuf], reference: &Path, flavour: Flavour) -> (f64, f64, f64) {
    let refs = nifti::read_series(reference).unwrap();
    assert_eq!(refs.volumes.len(), files.len(), "{}", reference.display());
    let timing = slice_timing(&reference.with_extension("json"));
    let (mut vox, mut aff, mut tim) = (0.0f64, 0.0f64, 0.0f64);
    for (i, (f, want)) in files.iter().zip(&refs.volumes).enumerate() {
        let (got, info) =
            volume_of(dicom::read_file(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())));
        assert_eq!(info.flavour, flavour, "{}", f.display());
        assert_eq!(info.volume_number(), Some(i as u32 + 1), "{}", f.display());
        assert_eq!(got.grid().dims, want.grid().dims, "{}", f.display());
        vox = vox.max(voxel_diff(&got, want));
        aff = aff.max(affine_diff(&got.grid().affine, &want.grid().affine));
        let t = info.slice_timing.expect("slice timing");
        assert_eq!(t.len(), timing.len());
        // dcm2niix reports the first volume's times (later volumes of the
        // XA run jitter by up to 2.5 ms in their headers).
        if i == 0 {
            tim = t
                .iter()
                .zip(&timing)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
        }
        if let Some(tr) = refs.tr {
            assert!((info.repetition_time.unwrap() - tr).abs() < 1e-6);
        }
    }
    (vox, aff, tim)
}

#[test]
fn siemens_mosaics_match_dcm2niix() {
    let Some(dir) = shared("dicom/siemens-mosaic") else {
        return;
    };
    let mut refs: Vec<_> = std::fs::read_dir(dir.join("Ref"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "nii"))
        .collect();
    refs.sort();
    assert_eq!(refs.len(), 8);
    for r in refs {
        let stem = r.file_stem().unwrap().to_string_lossy().into_owned();
        let (series, name) = stem.split_once('_').unwrap();
        let files = dcm_files(&dir.join("In").join(format!("{name}_{series}")));
        let (vox, aff, tim) = compare(&files, &r, Flavour::Mosaic);
        println!(
            "{stem}: {} volumes, max voxel diff {vox}, max affine diff {aff:.2e} mm, max slice-timing diff {tim:.1e} s",
            files.len()
        );
        assert_eq!(vox, 0.0, "{stem}");
        assert!(aff < 1e-4, "{stem}: affine differs by {aff}");
        assert!(tim < 1e-4, "{stem}: slice timing differs by {tim}");
    }
}

#[test]
fn siemens_xa_enhanced_matches_dcm2niix() {
    let Some(dir) = shared("dicom/siemens-xa30-bold") else {
        return;
    };
    let files = dcm_files(&dir.join("In/7_func-bold_task-fa_run-1"));
    assert_eq!(files.len(), 20);
    let (vox, aff, tim) = compare(
        &files,
        &dir.join("Ref/7_func-bold_task-fa_run-1.nii"),
        Flavour::Enhanced,
    );
    println!(
        "xa30 enhanced: 20 volumes, max voxel diff {vox}, max affine diff {aff:.2e} mm, max slice-timing diff {tim:.1e} s"
    );
    assert_eq!(vox, 0.0);
    assert!(aff < 1e-4, "affine differs by {aff}");
    assert!(tim < 1e-4, "slice timing differs by {tim}");
}

#[test]
fn rt_export_without_private_tags_matches_dcm2niix_and_shows_its_duplicate() {
    let Some(dir) = shared("dicom/siemens-rt-export") else {
        return;
    };
    let study = dir.join("20190219.0219191_faceMatching.0219191_faceMatching");
    let files = dcm_files(&study);
    assert_eq!(files.len(), 11);
    // 000000 re-sends 000010: same SOP instance, same header volume number.
    let (v0, i0) = volume_of(dicom::read_file(&files[0]).unwrap());
    let (v10, i10) = volume_of(dicom::read_file(&files[10]).unwrap());
    assert_eq!(i0.sop_instance_uid, i10.sop_instance_uid);
    assert_eq!((i0.series_number, i0.volume_number()), (Some(13), Some(10)));
    assert_eq!(voxel_diff(&v0, &v10), 0.0);
    let (vox, aff, tim) = compare(
        &files[1..],
        &dir.join("Ref/func_ses-01_task-faces_run-01_13.nii"),
        Flavour::Mosaic,
    );
    println!(
        "rt-export: 10 volumes, max voxel diff {vox}, max affine diff {aff:.2e} mm, max slice-timing diff {tim:.1e} s"
    );
    assert_eq!(vox, 0.0);
    assert!(aff < 1e-4, "affine differs by {aff}");
    assert!(tim < 1e-4);
    // The folder reader orders by header and keeps both copies for the
    // caller (ingest) to drop one.
    let all = dicom::read_folder(&study).unwrap();
    let nums: Vec<_> = all
        .iter()
        .map(|v| v.info.volume_number().unwrap())
        .collect();
    assert_eq!(nums, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10]);
}

#[test]
fn half_written_files_are_incomplete_at_every_cut() {
    let Some(dir) = shared("dicom/siemens-rt-export/partial") else {
        return;
    };
    let whole = std::fs::read(dir.join("001_000013_000005.dcm")).unwrap();
    assert!(dicom::decode(&whole).is_ok());
    let cut = std::fs::read(dir.join("trunc_001_000013_000005.dcm")).unwrap();
    assert_eq!(cut.len(), 307_200);
    let e = dicom::decode(&cut).unwrap_err();
    assert!(e.may_be_incomplete(), "{e}");
    assert_eq!(
        e.to_string(),
        "file ends after 307200 bytes; element (7FE0,0010) at byte 162106 runs to byte 457030"
    );
    // Every length a writer can leave behind, header and pixels alike.
    let step = 487;
    for n in (0..whole.len())
        .step_by(step)
        .chain([131, 132, 133, whole.len() - 1])
    {
        match dicom::decode(&whole[..n]) {
            Ok(_) => panic!("{n} bytes of {} decoded", whole.len()),
            Err(e) => assert!(e.may_be_incomplete(), "cut at {n}: {e}"),
        }
    }
}

#[test]
fn implicit_vr_reads_the_same_and_compressed_syntaxes_are_refused() {
    let Some(dir) = shared("dicom/siemens-mosaic/In/ep2d_Int_HF_5") else {
        return;
    };
    let file = dir.join("IM-0004-0003.dcm");
    let (want, _) = volume_of(dicom::read_file(&file).unwrap());
    let implicit = support::to_implicit(&file);
    let (got, info) = volume_of(dicom::decode(&implicit).unwrap());
    assert_eq!(info.transfer_syntax, "1.2.840.10008.1.2");
    assert_eq!(voxel_diff(&got, &want), 0.0);
    assert_eq!(got.grid(), want.grid());
    assert_eq!(info.slice_timing.unwrap().len(), 36);

    // The same bytes labelled RLE (a same-length UID): refused by name.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(20)
        .position(|w| w == b"1.2.840.10008.1.2.1\0")
        .unwrap();
    bytes[at..at + 20].copy_from_slice(b"1.2.840.10008.1.2.5\0");
    let e = dicom::decode(&bytes).unwrap_err();
    assert!(!e.may_be_incomplete());
    assert_eq!(
        e.to_string(),
        "unsupported transfer syntax 1.2.840.10008.1.2.5 (RLE Lossless); export uncompressed (explicit or implicit VR little endian)"
    );
}

#[test]
fn garbage_and_empty_files_give_clear_errors() {
    assert!(matches!(dicom::decode(&[]), Err(DicomError::Empty)));
    let e = dicom::decode(&[7u8; 600]).unwrap_err();
    assert!(!e.may_be_incomplete());
    assert!(e.to_string().starts_with("not a DICOM file"), "{e}");
    let nii = nifti::encode_volume(
        &Volume::zeros(boldstream::types::volume::Grid::centred(
            [4, 4, 4],
            [1.0; 3],
        )),
        &Default::default(),
    )
    .unwrap();
    assert!(
        dicom::decode(&nii)
            .unwrap_err()
            .to_string()
            .starts_with("not a DICOM file")
    );
}

#[test]
fn single_slice_files_stack_back_into_the_mosaic() {
    let Some(dir) = shared("dicom/siemens-rt-export") else {
        return;
    };
    let study = dir.join("20190219.0219191_faceMatching.0219191_faceMatching");
    let reference =
        nifti::read_series(&dir.join("Ref/func_ses-01_task-faces_run-01_13.nii")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut assembler = SliceAssembler::new();
    let mut expected = BTreeMap::new();
    let mut done_ids = Vec::new();
    // Volumes 1..3: the first does not say how many slices make a volume
    // (it completes when the next volume begins), the second does, the
    // third does not (the count is learned). Slices arrive shuffled, and
    // one is sent twice.
    for v in 1..=3u32 {
        let file = study.join(format!("001_000013_{v:06}.dcm"));
        let (vol, info) = volume_of(dicom::read_file(&file).unwrap());
        let timing = info.slice_timing.clone().unwrap();
        let count = (v == 2).then_some(27u16);
        let files = support::split_mosaic(&file, &vol, v, count, &timing);
        let mut order: Vec<usize> = (0..files.len()).collect();
        order.reverse();
        order.swap(3, 20);
        for (n, k) in order.into_iter().enumerate() {
            let p = tmp.path().join(format!("v{v}_s{k:02}.dcm"));
            std::fs::write(&p, &files[k]).unwrap();
            let Decoded::Slice { slice, info } = dicom::read_file(&p).unwrap() else {
                panic!("{} is not a single slice", p.display());
            };
            assert_eq!(info.flavour, Flavour::Slice);
            let added = assembler
                .add(p.clone(), slice.clone(), info.clone())
                .unwrap();
            assert!(matches!(added, Added::Waiting { .. }), "{added:?}");
            if k == 5 {
                let again = assembler
                    .add(p.with_extension("again"), slice, info)
                    .unwrap();
                assert!(
                    matches!(
                        again,
                        Added::Duplicate {
                            identical: true,
                            ..
                        }
                    ),
                    "{again:?}"
                );
            }
            let finished: Vec<u32> = assembler
                .take_finished()
                .iter()
                .map(|a| a.id.volume)
                .collect();
            let want: Vec<u32> = match (v, n) {
                // Volume 1 ends when volume 2 starts; 2 and 3 by count.
                (2, 0) => vec![1],
                (2 | 3, 26) => vec![v],
                _ => vec![],
            };
            assert_eq!(finished, want, "after slice {n} of volume {v}");
            if !want.is_empty() {
                // Put them back for the checks below (already taken).
                done_ids.extend(want);
            }
        }
        expected.insert(v, (vol, timing));
    }
    assert_eq!(done_ids, vec![1, 2, 3]);
    let done = rebuild(&tmp, &mut SliceAssembler::new());
    assert_eq!(done.len(), 3);
    for a in done {
        let (vol, info) = a.result.unwrap();
        let (want, timing) = &expected[&a.id.volume];
        assert_eq!(a.paths.len(), 27);
        assert_eq!(voxel_diff(&vol, want), 0.0, "volume {}", a.id.volume);
        let d = affine_diff(&vol.grid().affine, &reference.volumes[0].grid().affine);
        assert!(
            d < 1e-4,
            "volume {}: affine differs from dcm2niix's by {d}",
            a.id.volume
        );
        let t = info.slice_timing.unwrap();
        let dt = t
            .iter()
            .zip(timing)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(dt < 1e-5, "slice timing off by {dt}");
    }
}

/// Every slice file of `dir` (not the re-sent copy) through a fresh
/// assembler, in name order: the volumes it makes.
fn rebuild(dir: &tempfile::TempDir, a: &mut SliceAssembler) -> Vec<dicom::slices::Assembled> {
    for p in dcm_files(dir.path()) {
        let Decoded::Slice { slice, info } = dicom::read_file(&p).unwrap() else {
            panic!("not a slice");
        };
        a.add(p, slice, info).unwrap();
    }
    a.finish_all()
}

#[test]
fn a_mosaic_without_csa_header_reads_from_the_0019_tags() {
    let Some(dir) = shared("dicom/siemens-mosaic") else {
        return;
    };
    let file = dir.join("In/ep2d_Asc_2/IM-0001-0002.dcm");
    let (want, want_info) = volume_of(dicom::read_file(&file).unwrap());
    let mut obj = dicom_object::open_file(&file).unwrap();
    obj.retain(|e| e.header().tag.group() != 0x0029);
    let mut bytes = Vec::new();
    obj.write_all(&mut bytes).unwrap();
    let (got, info) = volume_of(dicom::decode(&bytes).unwrap());
    assert_eq!(got.grid().dims, [64, 64, 36]);
    assert_eq!(voxel_diff(&got, &want), 0.0);
    // The slice normal is row × column instead of the CSA's (equal to 1e-6).
    let d = affine_diff(&got.grid().affine, &want.grid().affine);
    assert!(d < 1e-4, "affine differs by {d}");
    assert_eq!(info.slice_timing, want_info.slice_timing);
}

#[test]
fn mutated_headers_give_errors_or_volumes_never_panics() {
    let Some(dir) = shared("dicom") else {
        return;
    };
    for file in [
        dir.join("siemens-rt-export/partial/001_000013_000005.dcm"),
        dir.join("siemens-xa30-bold/In/7_func-bold_task-fa_run-1/0003_1.3.12.2.1107.5.2.43.67093.2022071112090821453403334.dcm"),
    ] {
        let whole = std::fs::read(&file).unwrap();
        let Some(pixels) = whole.windows(4).rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00]) else {
            panic!("no pixel data tag in {}", file.display());
        };
        let (mut ok, mut err) = (0, 0);
        // Every byte of the meta group and first elements, then a sparse
        // sweep over the rest of the header (lengths, VRs, CSA counts).
        let positions = (128..400).chain((400..pixels + 12).step_by(401));
        for at in positions {
            for v in [0xFFu8, 0x7F] {
                let mut b = whole.clone();
                if b[at] == v {
                    continue;
                }
                b[at] = v;
                match dicom::decode(&b) {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        assert!(!e.to_string().is_empty());
                        err += 1;
                    }
                }
            }
        }
        println!("{}: {ok} mutations still decode, {err} give errors", file.display());
        assert!(err > 0 && ok > 0);
    }
}
