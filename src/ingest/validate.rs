//! Checks on a fully decoded volume before it is taken.
//!
//! In: a [`Volume`] and the grid its run was set to (by the run's first
//! good volume). Out: `Ok` or the problem in words; plus a cheap checksum
//! used to tell a rewritten file from one whose mtime was merely touched.

use crate::types::volume::{Grid, Volume};

/// Why a decoded volume cannot be used, or `Ok`.
pub fn check(vol: &Volume, run: u32, run_grid: Option<&Grid>, tol_mm: f64) -> Result<(), String> {
    let bad = vol.count_non_finite();
    if bad > 0 {
        let at = vol
            .first_non_finite()
            .map(|[i, j, k]| format!(", first at ({i}, {j}, {k})"))
            .unwrap_or_default();
        return Err(format!("{bad} NaN/Inf voxels{at}"));
    }
    let mismatch = run_grid.filter(|g| !vol.grid().matches(g, tol_mm));
    if let Some(g) = mismatch {
        let mut msg = format!(
            "grid {} differs from run {run}'s {}",
            words(vol.grid()),
            words(g)
        );
        if vol.grid().dims == g.dims {
            let worst = (vol.grid().affine - g.affine)
                .iter()
                .fold(0.0f64, |m, d| m.max(d.abs()));
            msg.push_str(&format!(" (affine differs by up to {worst:.3} mm)"));
        }
        return Err(msg);
    }
    Ok(())
}

/// `64x64x30 voxels of 3x3x3.5 mm`.
pub fn words(g: &Grid) -> String {
    let mm = |v: f64| {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    format!(
        "{}x{}x{} voxels of {}x{}x{} mm",
        g.dims[0],
        g.dims[1],
        g.dims[2],
        mm(g.pixdim[0]),
        mm(g.pixdim[1]),
        mm(g.pixdim[2])
    )
}

/// A 64-bit fingerprint of the voxel values and dimensions. Four
/// independent lanes keep it well under a millisecond for a 100×100×60
/// volume; it only has to tell different data apart, not resist attack.
pub fn checksum(vol: &Volume) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut lanes = [K, K ^ 1, K ^ 2, K ^ 3];
    let vals = vol.values();
    let mut chunks = vals.chunks_exact(4);
    for c in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(c) {
            *lane = (*lane ^ u64::from(v.to_bits()))
                .wrapping_mul(K)
                .rotate_left(29);
        }
    }
    let mut h = lanes
        .iter()
        .fold(K, |h, l| (h ^ l).wrapping_mul(K).rotate_left(31));
    for v in chunks.remainder() {
        h = (h ^ u64::from(v.to_bits())).wrapping_mul(K).rotate_left(29);
    }
    for d in vol.grid().dims {
        h = (h ^ d as u64).wrapping_mul(K).rotate_left(29);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(dims: [usize; 3], pix: f64) -> Volume {
        let g = Grid::centred(dims, [pix, pix, pix]);
        let n = g.len();
        Volume::from_file_order(g, (0..n).map(|v| v as f32).collect()).unwrap()
    }

    #[test]
    fn nan_voxels_are_counted_and_located() {
        let mut v = vol([4, 4, 4], 3.0);
        let i = v.linear_index(1, 2, 3);
        v.values_mut()[i] = f32::NAN;
        let i = v.linear_index(3, 3, 3);
        v.values_mut()[i] = f32::INFINITY;
        assert_eq!(
            check(&v, 1, None, 1e-3).unwrap_err(),
            "2 NaN/Inf voxels, first at (1, 2, 3)"
        );
    }

    #[test]
    fn grid_mismatch_is_described() {
        let run = vol([64, 64, 36], 3.0);
        let v = vol([64, 64, 30], 3.0);
        assert_eq!(
            check(&v, 1, Some(run.grid()), 1e-3).unwrap_err(),
            "grid 64x64x30 voxels of 3x3x3 mm differs from run 1's 64x64x36 voxels of 3x3x3 mm"
        );
        let mut shifted = run.grid().clone();
        shifted.affine[(2, 3)] += 1.5;
        let msg = check(&run, 2, Some(&shifted), 1e-3).unwrap_err();
        assert!(msg.ends_with("(affine differs by up to 1.500 mm)"), "{msg}");
        let mut tiny = run.grid().clone();
        tiny.affine[(2, 3)] += 1e-4;
        assert!(check(&run, 1, Some(&tiny), 1e-3).is_ok());
    }

    #[test]
    fn checksum_tells_data_apart() {
        let a = vol([5, 4, 3], 2.0);
        let mut b = a.clone();
        assert_eq!(checksum(&a), checksum(&b));
        b.values_mut()[59] += 1.0;
        assert_ne!(checksum(&a), checksum(&b));
        let c = vol([4, 5, 3], 2.0);
        assert_ne!(checksum(&a), checksum(&c));
    }
}
