//! Registration of one volume to the session reference (coarse to fine).
//!
//! In: the reference volume once, then each moving volume with a starting
//! transform. Out: the reference → volume rigid map in FSL mm, from which the
//! MCFLIRT-convention parameters follow.

use nalgebra::{Matrix4, Vector3};

use super::RealignError;
use super::interpolate::{Image, ImageRef};
use super::metric::ReferenceLevel;
use super::optimizer::{GaussNewton, LevelReport};
use super::pyramid::{LevelGeometry, downsample, level_factors, smooth_binomial};
use crate::types::volume::{Grid, Volume};

/// Tuning of the registration; the defaults are what the accuracy tests and
/// benchmarks in docs/results.md were measured with.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationOptions {
    /// Pyramid levels (1 = full resolution only).
    pub levels: usize,
    /// Cap on reference samples per level (strongest gradients kept).
    pub max_samples: usize,
    /// Iteration cap at coarse levels.
    pub coarse_iterations: usize,
    /// Iteration cap at full resolution.
    pub fine_iterations: usize,
    /// Convergence tolerance at full resolution, mm on a 50 mm sphere.
    pub tolerance_mm: f64,
    /// Passes of [1,2,1]/4 smoothing of both images at full resolution
    /// (see [`smooth_binomial`](super::pyramid::smooth_binomial)); each
    /// pass adds σ ≈ 0.7 voxel. 0 registers the raw voxels.
    pub fine_smoothing: u32,
    /// Place reference samples at jittered sub-voxel positions (see
    /// [`metric`](super::metric)) instead of voxel centres.
    pub jitter: bool,
}

impl Default for RegistrationOptions {
    fn default() -> Self {
        RegistrationOptions {
            levels: 3,
            max_samples: 60_000,
            coarse_iterations: 30,
            fine_iterations: 20,
            tolerance_mm: 1e-3,
            fine_smoothing: 1,
            jitter: true,
        }
    }
}

/// The reference, prepared once per session.
#[derive(Debug, Clone)]
pub struct Registration {
    grid: Grid,
    centre: Vector3<f64>,
    /// Coarsest first.
    levels: Vec<ReferenceLevel>,
    options: RegistrationOptions,
}

/// What registering one volume produced.
#[derive(Debug, Clone)]
pub struct Registered {
    /// Reference FSL mm → volume FSL mm.
    pub ref_to_volume: Matrix4<f64>,
    /// Per level, coarsest first.
    pub levels: Vec<LevelReport>,
}

/// Fraction of the robust maximum above which a voxel counts as head.
const HEAD_FRACTION: f32 = 0.1;

fn robust_max(values: &[f32]) -> f32 {
    let mut v: Vec<f32> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    let k = ((v.len() - 1) as f64 * 0.98) as usize;
    let (_, kth, _) = v.select_nth_unstable_by(k, f32::total_cmp);
    *kth
}

/// Voxels above `threshold`, grown by one voxel (6-neighbourhood) so that
/// the head's outer edge — where the gradient is — is included.
fn head_mask(img: ImageRef<'_>, threshold: f32) -> Vec<bool> {
    let [nx, ny, nz] = img.dims;
    let above: Vec<bool> = img.data.iter().map(|&v| v > threshold).collect();
    let mut out = above.clone();
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let idx = i + nx * (j + ny * k);
                if above[idx] {
                    continue;
                }
                let n = |di: isize, dj: isize, dk: isize| -> bool {
                    let (a, b, c) = (i as isize + di, j as isize + dj, k as isize + dk);
                    a >= 0
                        && b >= 0
                        && c >= 0
                        && (a as usize) < nx
                        && (b as usize) < ny
                        && (c as usize) < nz
                        && above[a as usize + nx * (b as usize + ny * c as usize)]
                };
                out[idx] = n(-1, 0, 0)
                    || n(1, 0, 0)
                    || n(0, -1, 0)
                    || n(0, 1, 0)
                    || n(0, 0, -1)
                    || n(0, 0, 1);
            }
        }
    }
    out
}

/// The block-averaged image for `factor`, or at full resolution the
/// smoothed image, or `None` (the volume's own voxels, read without a copy).
fn level_image(vol: &Volume, factor: [usize; 3], passes: u32) -> Option<Image> {
    if factor != [1, 1, 1] {
        return Some(downsample(vol, factor));
    }
    let mut img: Option<Image> = None;
    for _ in 0..passes {
        let src = img.as_ref().map_or(vol.values(), |i| &i.data[..]);
        img = Some(smooth_binomial(src, vol.grid().dims));
    }
    img
}

fn full_view(vol: &Volume) -> ImageRef<'_> {
    ImageRef {
        dims: vol.grid().dims,
        data: vol.values(),
    }
}

impl Registration {
    /// Prepare `reference` (pyramid, samples, steepest-descent vectors).
    pub fn new(
        reference: &Volume,
        options: RegistrationOptions,
    ) -> Result<Registration, RealignError> {
        let grid = reference.grid().clone();
        if grid.dims.iter().any(|&n| n < 2) {
            return Err(RealignError::TooSmall(grid.describe()));
        }
        if reference.first_non_finite().is_some() {
            return Err(RealignError::NonFiniteReference);
        }
        let centre = reference.fsl_centre_of_gravity();
        let threshold = HEAD_FRACTION * robust_max(reference.values());
        let mut levels = Vec::new();
        for factor in level_factors(&grid, options.levels.max(1))
            .into_iter()
            .rev()
        {
            let geometry = LevelGeometry::new(&grid, factor);
            let image = level_image(reference, factor, options.fine_smoothing);
            let image = image
                .as_ref()
                .map_or_else(|| full_view(reference), Image::view);
            let head = head_mask(image, threshold);
            let level = ReferenceLevel::new(
                image,
                geometry,
                &head,
                centre,
                options.max_samples,
                options.jitter,
            );
            if level.len() < 64 {
                // Too coarse to say anything (tiny head or empty image).
                continue;
            }
            levels.push(level);
        }
        if levels.is_empty() {
            return Err(RealignError::EmptyReference);
        }
        Ok(Registration {
            grid,
            centre,
            levels,
            options,
        })
    }

    /// The reference grid.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// Centre of rotation (reference centre of gravity, FSL mm): the centre
    /// `.par` parameters are decomposed about.
    pub fn centre(&self) -> Vector3<f64> {
        self.centre
    }

    /// The transform that aligns `moving`'s grid with the reference through
    /// their affines alone (identity for volumes on the reference grid).
    pub fn world_init(&self, moving: &Grid) -> Matrix4<f64> {
        let ref_fsl_to_world = self.grid.affine
            * self
                .grid
                .vox_to_fsl()
                .try_inverse()
                .unwrap_or_else(Matrix4::identity);
        let world_to_mov_fsl = moving.vox_to_fsl()
            * moving
                .affine
                .try_inverse()
                .unwrap_or_else(Matrix4::identity);
        world_to_mov_fsl * ref_fsl_to_world
    }

    /// Register `moving`, starting from `init` (reference FSL mm → moving FSL mm).
    pub fn register(
        &self,
        moving: &Volume,
        init: &Matrix4<f64>,
    ) -> Result<Registered, RealignError> {
        let mut t = *init;
        let mut reports = Vec::with_capacity(self.levels.len());
        let mut scratch = Vec::new();
        let finest = self.levels.len() - 1;
        for (n, level) in self.levels.iter().enumerate() {
            let geometry = LevelGeometry::new(moving.grid(), level.geometry.factor);
            let owned = level_image(moving, level.geometry.factor, self.options.fine_smoothing);
            let image = owned
                .as_ref()
                .map_or_else(|| full_view(moving), Image::view);
            let fine = n == finest;
            let spacing = geometry.spacing.iter().cloned().fold(0.0, f64::max);
            let gn = GaussNewton {
                max_iterations: if fine {
                    self.options.fine_iterations
                } else {
                    self.options.coarse_iterations
                },
                tolerance_mm: if fine {
                    self.options.tolerance_mm
                } else {
                    // Coarse levels only need to land within the capture
                    // range of the next one.
                    0.05 * spacing
                },
                radius_mm: 50.0,
                max_step_mm: 2.0 * spacing,
            };
            let report = gn.optimise(
                level,
                image,
                &geometry.fsl_to_vox,
                &mut t,
                self.centre,
                &mut scratch,
            )?;
            reports.push(report);
        }
        Ok(Registered {
            ref_to_volume: t,
            levels: reports,
        })
    }
}
