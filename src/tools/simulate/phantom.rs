//! An analytic head phantom: EPI (T2*-weighted) intensity as a continuous
//! function of position.
//!
//! In: a point in *head coordinates* (mm, RAS orientation, origin at the
//! centre of the head). Out: the noise-free image intensity there and the
//! weight (0..1) of the task-responsive region.
//!
//! Structure, from the outside in: scalp, skull, a CSF shell, cortical grey
//! matter with a gyral-like texture (intensity and GM/WM boundary modulated by
//! a fixed sum of plane waves), white matter, and off-centre deep structures
//! (lateral ventricles of unequal size, thalamus-like blobs, a left-only
//! putamen-like blob, a small right posterior cyst). Every boundary is a
//! logistic edge of scale `edge_mm`, so the function is smooth and images
//! sampled from it are band-limited enough to interpolate. Nothing about it
//! is symmetric about the head centre, so all six rigid parameters are
//! identifiable from the image.
//!
//! The head is an ellipsoid whose semi-axes default to adult proportions but
//! shrink to fit the field of view ([`Phantom::fitted`]); layer thicknesses
//! and the texture stay in mm, deep structures scale with the brain.

use nalgebra::Vector3;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Scalp semi-axes (mm, x = left–right, y = posterior–anterior, z =
/// inferior–superior) of the full-size phantom.
pub const REFERENCE_HEAD_MM: [f64; 3] = [74.0, 94.0, 82.0];

/// The head fills at most this fraction of the field of view along each
/// axis, leaving room for a few mm / degrees of motion.
pub const FOV_FILL: f64 = 0.85;

/// Layer thicknesses in mm: scalp, skull, CSF shell, cortex.
const SCALP_MM: f64 = 6.0;
const SKULL_MM: f64 = 7.0;
const CSF_MM: f64 = 4.0;
const CORTEX_MM: f64 = 6.0;
/// Depth of the brain surface below the scalp surface.
const BRAIN_DEPTH: f64 = SCALP_MM + SKULL_MM + CSF_MM;
/// Amplitude (mm) of the gyral displacement of the GM/WM boundary.
const GYRAL_MM: f64 = 2.0;
/// Texture seed: fixed, so that every simulation sees the same head.
const TEXTURE_SEED: u64 = 0xB01D_57EA;
/// Beyond this many edge scales a logistic membership is < 1e-5 and is
/// treated as 0 or 1; keeps background voxels cheap.
const CUTOFF: f64 = 12.0;

/// Tissue intensities (arbitrary scanner units) of the EPI contrast.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Contrast {
    /// Air around the head.
    pub background: f64,
    /// Skin and muscle (fat is suppressed in EPI).
    pub scalp: f64,
    /// Bone: almost no signal.
    pub skull: f64,
    /// Cerebrospinal fluid: the longest T2*, brightest.
    pub csf: f64,
    /// Cortical grey matter (mean; the texture modulates it by a few %).
    pub grey: f64,
    /// White matter.
    pub white: f64,
    /// Deep grey nuclei (thalamus-, putamen-like blobs).
    pub deep_grey: f64,
}

impl Default for Contrast {
    fn default() -> Self {
        Contrast {
            background: 0.0,
            scalp: 350.0,
            skull: 40.0,
            csf: 1000.0,
            grey: 760.0,
            white: 560.0,
            deep_grey: 680.0,
        }
    }
}

/// Tissue classes, for picking points and describing the phantom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tissue {
    /// Outside the head.
    Background,
    /// Scalp.
    Scalp,
    /// Skull.
    Skull,
    /// CSF in the lateral ventricles (the thick, pure-CSF structure).
    Ventricle,
    /// Cortical grey matter.
    Grey,
    /// White matter.
    White,
    /// Deep grey matter.
    DeepGrey,
}

/// An ellipsoid with an approximate signed distance (mm, negative inside).
#[derive(Debug, Clone)]
struct Ellipsoid {
    centre: Vector3<f64>,
    semi: Vector3<f64>,
    inv_semi: Vector3<f64>,
    inv_semi2: Vector3<f64>,
}

impl Ellipsoid {
    fn new(centre: Vector3<f64>, semi: Vector3<f64>) -> Ellipsoid {
        let semi = semi.map(|s| s.max(0.5));
        Ellipsoid {
            centre,
            semi,
            inv_semi: semi.map(|s| 1.0 / s),
            inv_semi2: semi.map(|s| 1.0 / (s * s)),
        }
    }

    /// First-order signed distance `f/|∇f|` with `f = |u| − 1`, `u = d/semi`:
    /// exact on the surface and monotonic, which is all a smooth edge needs.
    #[inline]
    fn dist(&self, q: &Vector3<f64>) -> f64 {
        let d = q - self.centre;
        let r = d.component_mul(&self.inv_semi).norm();
        let g = d.component_mul(&self.inv_semi2).norm();
        if g < 1e-12 {
            -self.semi.min()
        } else {
            (r - 1.0) * r / g
        }
    }
}

#[derive(Debug, Clone)]
struct Blob {
    shape: Ellipsoid,
    value: f64,
}

/// The analytic head (see the module documentation).
#[derive(Debug, Clone)]
pub struct Phantom {
    head: Ellipsoid,
    brain_scale: Vector3<f64>,
    contrast: Contrast,
    edge_mm: f64,
    /// Plane waves `(k, phase)` of the cortical texture.
    waves: Vec<(Vector3<f64>, f64)>,
    blobs: Vec<Blob>,
    task: Ellipsoid,
}

#[inline]
fn logistic(x: f64) -> f64 {
    if x > CUTOFF {
        1.0
    } else if x < -CUTOFF {
        0.0
    } else {
        1.0 / (1.0 + (-x).exp())
    }
}

#[inline]
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    a + (b - a) * t
}

impl Phantom {
    /// A phantom whose scalp has semi-axes `head_semi_mm`, tissue edges of
    /// logistic scale `edge_mm` (10–90 % rise over about 4.4 × that), and
    /// the default [`Contrast`].
    pub fn new(head_semi_mm: [f64; 3], edge_mm: f64) -> Phantom {
        Phantom::with_contrast(head_semi_mm, edge_mm, Contrast::default())
    }

    /// Like [`Phantom::new`] with explicit tissue intensities.
    pub fn with_contrast(head_semi_mm: [f64; 3], edge_mm: f64, contrast: Contrast) -> Phantom {
        // A head too small to hold all layers would lose its brain; keep a
        // minimal brain so the function stays well defined.
        let semi = Vector3::from(head_semi_mm).map(|s| s.max(BRAIN_DEPTH + CORTEX_MM + 8.0));
        let reference = Vector3::from(REFERENCE_HEAD_MM);
        let brain_scale = (semi - Vector3::repeat(BRAIN_DEPTH))
            .component_div(&(reference - Vector3::repeat(BRAIN_DEPTH)));
        let head = Ellipsoid::new(Vector3::zeros(), semi);

        // Deep structures, designed for the full-size head (brain semi-axes
        // 57 × 77 × 65 mm) and scaled with the brain.
        let scaled = |c: [f64; 3], s: [f64; 3]| {
            Ellipsoid::new(
                Vector3::from(c).component_mul(&brain_scale),
                Vector3::from(s).component_mul(&brain_scale),
            )
        };
        let c = contrast;
        let blobs = vec![
            // Thalamus-like pair, unequal and not mirror images.
            Blob {
                shape: scaled([-11.0, -12.0, 2.0], [8.0, 11.0, 8.0]),
                value: c.deep_grey,
            },
            Blob {
                shape: scaled([12.0, -15.0, 0.0], [7.0, 9.0, 7.0]),
                value: c.deep_grey + 20.0,
            },
            // Putamen-like, left hemisphere only.
            Blob {
                shape: scaled([-25.0, 8.0, -2.0], [5.0, 14.0, 9.0]),
                value: c.deep_grey - 30.0,
            },
            // Lateral ventricles: the left larger and longer.
            Blob {
                shape: scaled([-7.0, 6.0, 14.0], [5.0, 24.0, 9.0]),
                value: c.csf,
            },
            Blob {
                shape: scaled([6.0, 3.0, 12.0], [4.0, 19.0, 7.0]),
                value: c.csf,
            },
            // A small CSF cyst, right posterior inferior.
            Blob {
                shape: scaled([22.0, -42.0, -22.0], [5.0, 6.0, 5.0]),
                value: c.csf,
            },
        ];

        let mut rng = ChaCha8Rng::seed_from_u64(TEXTURE_SEED);
        let waves = (0..8)
            .map(|_| {
                let z: f64 = rng.random_range(-1.0..1.0);
                let phi: f64 = rng.random_range(0.0..std::f64::consts::TAU);
                let r = (1.0 - z * z).sqrt();
                let dir = Vector3::new(r * phi.cos(), r * phi.sin(), z);
                let wavelength: f64 = rng.random_range(10.0..18.0);
                let phase: f64 = rng.random_range(0.0..std::f64::consts::TAU);
                (dir * (std::f64::consts::TAU / wavelength), phase)
            })
            .collect();

        // "Visual cortex": centred on the mid-cortex surface, posterior, a
        // little right of the midline and above the equator.
        let dir = Vector3::new(0.18, -1.0, 0.22).normalize();
        let mid = semi - Vector3::repeat(BRAIN_DEPTH + 0.5 * CORTEX_MM);
        let task = Ellipsoid::new(mid.component_mul(&dir), Vector3::new(22.0, 14.0, 16.0));

        Phantom {
            head,
            brain_scale,
            contrast,
            edge_mm: edge_mm.max(1e-3),
            waves,
            blobs,
            task,
        }
    }

    /// The full-size phantom shrunk (per axis) to fill at most
    /// [`FOV_FILL`] of a field of view of `fov_mm` (full widths).
    pub fn fitted(fov_mm: [f64; 3], edge_mm: f64) -> Phantom {
        let semi: [f64; 3] =
            std::array::from_fn(|a| REFERENCE_HEAD_MM[a].min(0.5 * FOV_FILL * fov_mm[a]));
        Phantom::new(semi, edge_mm)
    }

    /// Scalp semi-axes in mm.
    pub fn head_semi_axes(&self) -> [f64; 3] {
        self.head.semi.into()
    }

    /// Tissue intensities.
    pub fn contrast(&self) -> &Contrast {
        &self.contrast
    }

    /// Logistic edge scale in mm.
    pub fn edge_mm(&self) -> f64 {
        self.edge_mm
    }

    /// Texture with unit RMS: a fixed sum of plane waves of 10–18 mm
    /// wavelength, the scale of gyri.
    #[inline]
    fn texture(&self, q: &Vector3<f64>) -> f64 {
        let s: f64 = self.waves.iter().map(|(k, ph)| (k.dot(q) + ph).sin()).sum();
        s * (2.0 / self.waves.len() as f64).sqrt()
    }

    /// Noise-free intensity at `q` (head coordinates, mm).
    pub fn intensity(&self, q: Vector3<f64>) -> f64 {
        self.eval(&q, false).0
    }

    /// Weight (0..1) of the task-responsive region at `q`: a smooth
    /// ellipsoidal patch of posterior cortex, grey matter only.
    pub fn task_weight(&self, q: Vector3<f64>) -> f64 {
        self.eval(&q, true).1
    }

    /// Brain membership (0..1, grey and white matter and what they
    /// enclose) at `q`: the mask "mean brain intensity" is taken over.
    pub fn brain_weight(&self, q: &Vector3<f64>) -> f64 {
        logistic(-(self.head.dist(q) + BRAIN_DEPTH) / self.edge_mm)
    }

    /// Intensity and (when `want_task`) task weight at `q` in one pass.
    #[inline]
    pub fn eval(&self, q: &Vector3<f64>, want_task: bool) -> (f64, f64) {
        let c = &self.contrast;
        let s = self.edge_mm;
        let d0 = self.head.dist(q);
        let inside = |depth: f64| logistic(-(d0 + depth) / s);
        let m_head = inside(0.0);
        if m_head == 0.0 {
            return (c.background, 0.0);
        }
        let mut v = lerp(c.background, c.scalp, m_head);
        v = lerp(v, c.skull, inside(SCALP_MM));
        v = lerp(v, c.csf, inside(SCALP_MM + SKULL_MM));
        let m_gm = inside(BRAIN_DEPTH);
        if m_gm == 0.0 {
            return (v, 0.0);
        }
        let tex = self.texture(q);
        v = lerp(v, c.grey * (1.0 + 0.06 * tex), m_gm);
        let gyral = GYRAL_MM * (0.6 * tex).tanh();
        let m_wm = inside(BRAIN_DEPTH + CORTEX_MM + gyral);
        v = lerp(v, c.white * (1.0 + 0.02 * tex), m_wm);
        for b in &self.blobs {
            let m = logistic(-b.shape.dist(q) / s);
            if m > 0.0 {
                v = lerp(v, b.value, m);
            }
        }
        let w = if want_task {
            let in_task = logistic(-self.task.dist(q) / 2.0);
            if in_task > 0.0 {
                // Normalised so mid-cortex weighs 1.
                let mid = logistic(0.5 * CORTEX_MM / s);
                (in_task * m_gm * (1.0 - m_wm) / (mid * mid)).min(1.0)
            } else {
                0.0
            }
        } else {
            0.0
        };
        (v, w)
    }

    /// A point (head coordinates) well inside the given tissue, where the
    /// intensity is close to that tissue's contrast value.
    pub fn sample_point(&self, tissue: Tissue) -> Vector3<f64> {
        let a = self.head.semi;
        let bs = self.brain_scale;
        match tissue {
            Tissue::Background => Vector3::new(a.x + 12.0 * self.edge_mm + 5.0, 0.0, 0.0),
            // Along the y axis the approximate distance is exact, and the
            // layers are thickest relative to the edges.
            Tissue::Scalp => Vector3::new(0.0, a.y - 0.5 * SCALP_MM, 0.0),
            Tissue::Skull => Vector3::new(0.0, a.y - SCALP_MM - 0.5 * SKULL_MM, 0.0),
            Tissue::Ventricle => Vector3::new(-7.0 * bs.x, 6.0 * bs.y, 14.0 * bs.z),
            Tissue::Grey => {
                // Mid-cortex under the anterior pole, where the approximate
                // distance is exact, at the spot with the least gyral shift.
                let y = a.y - BRAIN_DEPTH - 0.45 * CORTEX_MM;
                let mut best = Vector3::new(0.0, y, 0.0);
                let mut best_t = f64::INFINITY;
                for ix in -12..=12 {
                    for iz in -12..=12 {
                        let p = Vector3::new(0.5 * ix as f64, y, 0.5 * iz as f64);
                        let t = self.texture(&p).abs();
                        if t < best_t {
                            best_t = t;
                            best = p;
                        }
                    }
                }
                best
            }
            Tissue::White => Vector3::new(-30.0 * bs.x, 30.0 * bs.y, 30.0 * bs.z),
            Tissue::DeepGrey => Vector3::new(-11.0 * bs.x, -12.0 * bs.y, 2.0 * bs.z),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_smooth() {
        let a = Phantom::new(REFERENCE_HEAD_MM, 1.0);
        let b = Phantom::new(REFERENCE_HEAD_MM, 1.0);
        for p in [
            Vector3::new(1.0, 2.0, 3.0),
            Vector3::new(-40.0, 60.0, 10.0),
            Vector3::new(0.0, -76.0, 5.0),
        ] {
            assert_eq!(a.intensity(p), b.intensity(p));
        }
        // Smooth: a 0.05 mm step never changes the value by more than a few
        // % of the CSF level, even across the steepest edge.
        let mut prev = a.intensity(Vector3::new(0.0, 0.0, 0.0));
        for i in 1..2000 {
            let p = Vector3::new(0.0, i as f64 * 0.05, 0.0);
            let v = a.intensity(p);
            assert!((v - prev).abs() < 0.02 * 1000.0, "jump at {p:?}");
            prev = v;
        }
    }

    #[test]
    fn epi_contrast_order() {
        let ph = Phantom::new(REFERENCE_HEAD_MM, 1.0);
        let at = |t| ph.intensity(ph.sample_point(t));
        let c = *ph.contrast();
        assert!(at(Tissue::Background).abs() < 1e-6);
        assert!((at(Tissue::Ventricle) - c.csf).abs() < 0.03 * c.csf);
        assert!((at(Tissue::White) - c.white).abs() < 0.05 * c.white);
        assert!((at(Tissue::Grey) - c.grey).abs() < 0.08 * c.grey);
        assert!(at(Tissue::Ventricle) > at(Tissue::Grey));
        assert!(at(Tissue::Grey) > at(Tissue::White));
        assert!(at(Tissue::Skull) < 0.3 * at(Tissue::White));
        assert!(at(Tissue::Scalp) > at(Tissue::Skull));
    }

    #[test]
    fn task_region_is_posterior_cortex() {
        let ph = Phantom::new(REFERENCE_HEAD_MM, 1.0);
        let centre = ph.task.centre;
        assert!(centre.y < -50.0);
        assert!(ph.task_weight(centre) > 0.3, "{}", ph.task_weight(centre));
        assert_eq!(ph.task_weight(Vector3::zeros()), 0.0);
        assert_eq!(ph.task_weight(-centre), 0.0);
    }

    #[test]
    fn not_symmetric() {
        // Mirror images about each axis differ clearly inside the brain, so
        // no rotation by 180° or reflection looks the same.
        let ph = Phantom::new(REFERENCE_HEAD_MM, 1.0);
        for axis in 0..3 {
            let (mut diff, mut n) = (0.0, 0);
            for x in (-40..=40).step_by(4) {
                for y in (-60..=60).step_by(4) {
                    for z in (-40..=40).step_by(4) {
                        let p = Vector3::new(x as f64, y as f64, z as f64);
                        let mut m = p;
                        m[axis] = -m[axis];
                        diff += (ph.intensity(p) - ph.intensity(m)).abs();
                        n += 1;
                    }
                }
            }
            assert!(diff / n as f64 > 10.0, "axis {axis}: {}", diff / n as f64);
        }
        let putamen = Vector3::new(-25.0, 8.0, -2.0);
        assert!(ph.intensity(putamen) - ph.intensity(Vector3::new(25.0, 8.0, -2.0)) > 50.0);
    }
}
