//! `boldstream simulate --replay DIR` on a folder of real DICOM files: the
//! scanner's names and bytes come out, with the NIfTI path's faults
//! applied to them.

mod support;

use std::process::Command;

use boldstream::formats::dicom::{self, Decoded, DicomError};

use support::{dcm_files, shared, voxel_diff};

#[test]
fn replay_of_a_dicom_folder_keeps_names_and_bytes_and_injects_faults() {
    let Some(dir) = shared("dicom/siemens-xa30-bold/In/7_func-bold_task-fa_run-1") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    let status = Command::new(env!("CARGO_BIN_EXE_boldstream"))
        .args(["simulate", "--fast", "--replay"])
        .arg(&dir)
        .arg("--out")
        .arg(&out)
        .args([
            "--faults",
            "drop=0;dup=1:copy;corrupt=2:nan,3:dims,4:truncated,5:garbage",
            "--dup-delay",
            "1",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let source = dcm_files(&dir);
    let written = dcm_files(&out);
    let name = |p: &std::path::Path| p.file_name().unwrap().to_string_lossy().into_owned();
    // 20 files, one dropped, one copy added.
    assert_eq!(
        written.len(),
        20,
        "{:?}",
        written.iter().map(|p| name(p)).collect::<Vec<_>>()
    );
    assert!(!out.join(name(&source[0])).exists());
    let dup = out.join(name(&source[1]).replace(".dcm", "_dup.dcm"));
    assert_eq!(
        std::fs::read(&dup).unwrap(),
        std::fs::read(&source[1]).unwrap()
    );
    for (i, src) in source.iter().enumerate().skip(6) {
        assert_eq!(
            std::fs::read(out.join(name(src))).unwrap(),
            std::fs::read(src).unwrap(),
            "file {i} changed"
        );
    }
    let read = |i: usize| dicom::read_file(&out.join(name(&source[i])));
    let e = read(2).unwrap_err();
    assert!(e.to_string().contains("Rescale Slope \"NaN\""), "{e}");
    let Ok(Decoded::Volume { volume, .. }) = read(3) else {
        panic!("dims: a valid file on another grid")
    };
    let Ok(Decoded::Volume { volume: orig, .. }) = dicom::read_file(&source[3]) else {
        panic!()
    };
    assert_eq!(volume.grid().pixdim[0], 3.5);
    assert_eq!(voxel_diff(&volume, &orig), 0.0);
    assert!(read(4).unwrap_err().may_be_incomplete());
    assert!(matches!(read(5), Err(DicomError::NotDicom { .. })));
    let truth = std::fs::read_to_string(tmp.path().join("export_truth/faults.tsv")).unwrap();
    assert_eq!(truth.lines().count(), 7, "{truth}");
}
