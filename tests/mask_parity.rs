//! The session mask agrees with the field's tools: nilearn's
//! `compute_epi_mask` voxel for voxel, and numpy's `np.where` order on the
//! array as nibabel loads it. Fixtures from tests/parity/make_mask_fixtures.py.

use std::path::Path;

use boldstream::formats::nifti::read_volume;
use boldstream::types::mask::SessionMask;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mask")
        .join(name)
}

#[test]
fn epi_mask_equals_nilearn_compute_epi_mask() {
    let epi = read_volume(&fixture("epi.nii.gz")).unwrap();
    let nilearn = read_volume(&fixture("epi_mask_nilearn.nii.gz")).unwrap();
    let ours = SessionMask::compute_epi(&epi).unwrap();
    let theirs = SessionMask::from_image(&nilearn, epi.grid()).unwrap();
    assert!(
        theirs.len() > 1000,
        "fixture mask too small to mean anything"
    );
    assert_eq!(ours.len(), theirs.len(), "voxel counts differ");
    assert_eq!(ours.indices(), theirs.indices(), "masks differ");
}

#[test]
fn voxel_order_is_np_where_on_the_nibabel_array() {
    let mask = read_volume(&fixture("irregular_mask.nii.gz")).unwrap();
    let m = SessionMask::from_image(&mask, mask.grid()).unwrap();
    let expected: Vec<[usize; 3]> = std::fs::read_to_string(fixture("irregular_where.txt"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Vec<usize> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
            [v[0], v[1], v[2]]
        })
        .collect();
    let ours: Vec<[usize; 3]> = (0..m.len()).map(|n| m.voxel(n).unwrap()).collect();
    assert_eq!(ours, expected);
    // And gathering a volume in that order reads the same voxels.
    let mut out = Vec::new();
    m.gather_into(mask.values(), &mut out);
    assert!(out.iter().all(|&v| v == 1.0));
}
