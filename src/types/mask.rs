//! Session mask and voxel order.
//!
//! In: a mask image, or a reference EPI volume to compute one from. Out:
//! [`SessionMask`] — the voxels that go into the ring buffers and the GLM,
//! listed in the order numpy's `np.where(mask)` gives on the array as
//! nibabel loads it (first axis slowest, last axis fastest). Decoders trained
//! in Python index voxels in exactly that order.

use crate::types::volume::{Grid, Volume};

/// Voxels of the session mask, in `np.where` order.
#[derive(Debug, Clone)]
pub struct SessionMask {
    grid: Grid,
    /// File-order linear indices (`i + nx*(j + ny*k)`), in `np.where` order.
    indices: Vec<u32>,
    /// The same voxels in file order (x fastest), each with its position in
    /// `indices`: sampling in this order reads memory sequentially.
    file_order: Vec<MaskedVoxel>,
}

/// One mask voxel in file order.
#[derive(Debug, Clone, Copy)]
pub struct MaskedVoxel {
    /// Voxel indices (i, j, k).
    pub ijk: [u16; 3],
    /// Position in the `np.where` ordering.
    pub position: u32,
}

/// Why a mask could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MaskError {
    /// The mask file's grid is not the output grid.
    #[error("mask grid {mask} differs from the output grid {output}")]
    GridMismatch {
        /// Mask grid.
        mask: String,
        /// Output grid.
        output: String,
    },
    /// No voxel is in the mask.
    #[error("mask is empty")]
    Empty,
}

impl SessionMask {
    /// Mask from a boolean per voxel in file order (x fastest).
    pub fn from_file_order(grid: Grid, inside: &[bool]) -> Result<SessionMask, MaskError> {
        let [nx, ny, nz] = grid.dims;
        if grid.dims.iter().any(|&n| n > u16::MAX as usize) {
            return Err(MaskError::GridMismatch {
                mask: grid.describe(),
                output: "a grid under 65536 voxels per axis".into(),
            });
        }
        let mut indices = Vec::new();
        for i in 0..nx {
            for j in 0..ny {
                for k in 0..nz {
                    let idx = i + nx * (j + ny * k);
                    if inside.get(idx).copied().unwrap_or(false) {
                        indices.push(idx as u32);
                    }
                }
            }
        }
        if indices.is_empty() {
            return Err(MaskError::Empty);
        }
        let mut file_order: Vec<(u32, MaskedVoxel)> = indices
            .iter()
            .enumerate()
            .map(|(pos, &idx)| {
                let idx = idx as usize;
                let ijk = [
                    (idx % nx) as u16,
                    ((idx / nx) % ny) as u16,
                    (idx / (nx * ny)) as u16,
                ];
                (
                    idx as u32,
                    MaskedVoxel {
                        ijk,
                        position: pos as u32,
                    },
                )
            })
            .collect();
        file_order.sort_unstable_by_key(|(idx, _)| *idx);
        Ok(SessionMask {
            grid,
            indices,
            file_order: file_order.into_iter().map(|(_, v)| v).collect(),
        })
    }

    /// Mask from an image on `output` grid: non-zero, finite voxels are in.
    pub fn from_image(mask: &Volume, output: &Grid) -> Result<SessionMask, MaskError> {
        if !mask.grid().matches(output, 1e-3) {
            return Err(MaskError::GridMismatch {
                mask: mask.grid().describe(),
                output: output.describe(),
            });
        }
        let inside: Vec<bool> = mask
            .values()
            .iter()
            .map(|&v| v.is_finite() && v != 0.0)
            .collect();
        SessionMask::from_file_order(output.clone(), &inside)
    }

    /// Brain mask of an EPI volume, computed as nilearn's `compute_epi_mask`
    /// does with its defaults (1-voxel-FWHM smoothing, lower/upper cutoff
    /// 0.2/0.85, opening 2, largest connected component); equal voxel for
    /// voxel to nilearn 0.14 on the fixture in `tests/fixtures/mask`.
    pub fn compute_epi(reference: &Volume) -> Result<SessionMask, MaskError> {
        let inside = compute_epi_mask(reference.values(), reference.grid().dims);
        SessionMask::from_file_order(reference.grid().clone(), &inside)
    }

    /// The grid the mask lives on.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// Number of voxels in the mask.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Always false for a constructed mask (construction rejects empty masks).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// File-order indices in `np.where` order.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// The mask voxels in file order with their `np.where` positions.
    pub fn file_order(&self) -> &[MaskedVoxel] {
        &self.file_order
    }

    /// `(i, j, k)` of the n-th masked voxel.
    pub fn voxel(&self, n: usize) -> Option<[usize; 3]> {
        let idx = *self.indices.get(n)? as usize;
        let [nx, ny, _] = self.grid.dims;
        Some([idx % nx, (idx / nx) % ny, idx / (nx * ny)])
    }

    /// Gather masked values of a file-order image into `out`.
    pub fn gather_into(&self, values: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.extend(
            self.indices
                .iter()
                .map(|&i| values.get(i as usize).copied().unwrap_or(f32::NAN)),
        );
    }

    /// The mask as an image (1 inside, 0 outside), for the session store.
    pub fn to_volume(&self) -> Volume {
        let mut v = Volume::zeros(self.grid.clone());
        let vals = v.values_mut();
        for &i in &self.indices {
            vals[i as usize] = 1.0;
        }
        v
    }
}

/// nilearn's threshold: the largest jump in the sorted intensities between
/// the 20th and 85th percentile positions.
fn epi_threshold(values: &[f32]) -> f32 {
    let mut sorted: Vec<f32> = values
        .iter()
        .map(|&v| if v.is_finite() { v } else { 0.0 })
        .collect();
    sorted.sort_unstable_by(f32::total_cmp);
    let n = sorted.len();
    if n < 3 {
        return sorted.last().copied().unwrap_or(0.0);
    }
    let lower = ((0.2 * n as f64).floor() as usize).min(n - 2);
    let upper = ((0.85 * n as f64).floor() as usize)
        .min(n - 1)
        .max(lower + 1);
    let mut best = (lower, f32::NEG_INFINITY);
    for i in lower..upper {
        let d = sorted[i + 1] - sorted[i];
        // First maximum wins, as numpy's argmax.
        if d > best.1 {
            best = (i, d);
        }
    }
    0.5 * (sorted[best.0] + sorted[best.0 + 1])
}

fn neighbours(idx: usize, dims: [usize; 3]) -> impl Iterator<Item = Option<usize>> {
    let [nx, ny, nz] = dims;
    let (i, j, k) = (idx % nx, (idx / nx) % ny, idx / (nx * ny));
    let step = move |axis: usize, up: bool| -> Option<usize> {
        let (p, n, stride) = match axis {
            0 => (i, nx, 1),
            1 => (j, ny, nx),
            _ => (k, nz, nx * ny),
        };
        if up {
            (p + 1 < n).then_some(idx + stride)
        } else {
            (p > 0).then(|| idx - stride)
        }
    };
    (0..6).map(move |q| step(q / 2, q % 2 == 1))
}

/// scipy's `binary_erosion` with the 6-neighbour cross, outside = false.
fn erode(m: &[bool], dims: [usize; 3]) -> Vec<bool> {
    (0..m.len())
        .map(|idx| m[idx] && neighbours(idx, dims).all(|n| n.is_some_and(|n| m[n])))
        .collect()
}

/// scipy's `binary_dilation` with the 6-neighbour cross.
fn dilate(m: &[bool], dims: [usize; 3]) -> Vec<bool> {
    (0..m.len())
        .map(|idx| m[idx] || neighbours(idx, dims).any(|n| n.is_some_and(|n| m[n])))
        .collect()
}

/// Keep the largest 6-connected component.
fn largest_component(m: &[bool], dims: [usize; 3]) -> Vec<bool> {
    let mut label = vec![0u32; m.len()];
    let mut sizes = vec![0usize];
    let mut stack = Vec::new();
    for seed in 0..m.len() {
        if !m[seed] || label[seed] != 0 {
            continue;
        }
        let l = sizes.len() as u32;
        sizes.push(0);
        label[seed] = l;
        stack.push(seed);
        while let Some(v) = stack.pop() {
            sizes[l as usize] += 1;
            for n in neighbours(v, dims).flatten() {
                if m[n] && label[n] == 0 {
                    label[n] = l;
                    stack.push(n);
                }
            }
        }
    }
    // First largest wins (bincount + argmax in nilearn).
    let best = sizes
        .iter()
        .enumerate()
        .skip(1)
        .fold(
            (0usize, 0usize),
            |acc, (l, &s)| if s > acc.1 { (l, s) } else { acc },
        )
        .0 as u32;
    label.iter().map(|&l| best != 0 && l == best).collect()
}

/// nilearn smooths the mean image before thresholding (`compute_mean(...,
/// smooth=1)`): a Gaussian of FWHM 1 *voxel* (it passes an identity affine),
/// i.e. σ ≈ 0.425 voxel, truncated at 4σ, scipy's `reflect` borders, one
/// float32 pass per axis. Non-finite voxels count as 0.
fn nilearn_smooth(values: &[f32], dims: [usize; 3]) -> Vec<f32> {
    let sigma = 1.0 / (8.0f64 * 2f64.ln()).sqrt();
    let radius = (4.0 * sigma + 0.5) as isize;
    let weights: Vec<f64> = (-radius..=radius)
        .map(|x| (-0.5 / (sigma * sigma) * (x * x) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let weights: Vec<f64> = weights.iter().map(|w| w / total).collect();
    let mut a: Vec<f32> = values
        .iter()
        .map(|&v| if v.is_finite() { v } else { 0.0 })
        .collect();
    let mut b = vec![0.0f32; a.len()];
    let [nx, ny, nz] = dims;
    let strides = [1, nx, nx * ny];
    for axis in 0..3 {
        let n = dims[axis] as isize;
        let stride = strides[axis];
        // scipy's "reflect": (d c b a | a b c d | d c b a).
        let reflect = |p: isize| -> usize {
            let period = 2 * n;
            let mut q = p.rem_euclid(period);
            if q >= n {
                q = period - 1 - q;
            }
            q as usize
        };
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    let pos = [i, j, k];
                    let base = i + nx * (j + ny * k) - pos[axis] * stride;
                    let p = pos[axis] as isize;
                    let acc: f64 = weights
                        .iter()
                        .enumerate()
                        .map(|(w, &wt)| {
                            wt * a[base + reflect(p + w as isize - radius) * stride] as f64
                        })
                        .sum();
                    b[i + nx * (j + ny * k)] = acc as f32;
                }
            }
        }
        std::mem::swap(&mut a, &mut b);
    }
    a
}

/// nilearn `compute_epi_mask` on one volume (defaults), file order in and out.
pub fn compute_epi_mask(values: &[f32], dims: [usize; 3]) -> Vec<bool> {
    let smoothed = nilearn_smooth(values, dims);
    let threshold = epi_threshold(&smoothed);
    let opening = 2;
    let mut m: Vec<bool> = smoothed.iter().map(|&v| v >= threshold).collect();
    for _ in 0..opening {
        m = erode(&m, dims);
    }
    if m.iter().any(|&b| b) {
        m = largest_component(&m, dims);
    }
    for _ in 0..2 * opening {
        m = dilate(&m, dims);
    }
    for _ in 0..opening {
        m = erode(&m, dims);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_numpy_where_first_axis_slowest() {
        let grid = Grid::centred([3, 2, 2], [1.0, 1.0, 1.0]);
        let mut inside = vec![false; 12];
        // Voxels (i,j,k): (2,0,0), (0,1,1), (0,0,1), (1,1,0).
        for (i, j, k) in [(2, 0, 0), (0, 1, 1), (0, 0, 1), (1, 1, 0)] {
            inside[i + 3 * (j + 2 * k)] = true;
        }
        let m = SessionMask::from_file_order(grid, &inside).unwrap();
        let order: Vec<[usize; 3]> = (0..m.len()).map(|n| m.voxel(n).unwrap()).collect();
        // np.where sorts by i, then j, then k.
        assert_eq!(order, vec![[0, 0, 1], [0, 1, 1], [1, 1, 0], [2, 0, 0]]);
    }

    #[test]
    fn empty_mask_is_an_error() {
        let grid = Grid::centred([2, 2, 2], [1.0, 1.0, 1.0]);
        assert!(matches!(
            SessionMask::from_file_order(grid, &[false; 8]),
            Err(MaskError::Empty)
        ));
    }

    #[test]
    fn epi_mask_finds_a_bright_ball_and_drops_a_speck() {
        let dims = [20, 20, 20];
        // Background varies a little, as noise does; the ball fills ~30% of
        // the field of view, as a brain does (nilearn's cutoffs assume it).
        let mut v: Vec<f32> = (0..8000).map(|n| 1.0 + (n % 7) as f32 * 0.1).collect();
        let mut inside_truth = 0;
        for k in 0..20 {
            for j in 0..20 {
                for i in 0..20 {
                    let d2 = (i as f32 - 9.5).powi(2)
                        + (j as f32 - 9.5).powi(2)
                        + (k as f32 - 9.5).powi(2);
                    if d2 < 72.0 {
                        v[i + 20 * (j + 20 * k)] = 100.0;
                        inside_truth += 1;
                    }
                }
            }
        }
        // An isolated bright voxel in a corner must not survive the opening.
        let speck = 1 + 20 * (1 + 20);
        v[speck] = 100.0;
        let m = compute_epi_mask(&v, dims);
        let count = m.iter().filter(|&&b| b).count();
        assert!(!m[speck]);
        assert!(
            (count as i32 - inside_truth).abs() < inside_truth / 5,
            "{count} vs {inside_truth}"
        );
    }
}
