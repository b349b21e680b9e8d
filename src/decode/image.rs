//! Image helpers shared by the decoder and the report.
//!
//! In: `[C, H, W]` float images. Out: the same, resampled.

/// Resample a `[C, H, W]` image to `[C, h, w]` bilinearly with half-pixel
/// centres (torch's `align_corners=False` without antialiasing). The report
/// compares a stimulus with its reconstruction at the reconstruction's size;
/// the decoder resizes MindEye2's blurry image to the reconstruction's
/// before blending them.
pub fn resize_bilinear(
    image: &[f32],
    (c, ih, iw): (usize, usize, usize),
    h: usize,
    w: usize,
) -> Vec<f32> {
    if image.len() < c * ih * iw || ih == 0 || iw == 0 {
        return Vec::new();
    }
    if (ih, iw) == (h, w) {
        return image[..c * h * w].to_vec();
    }
    // Source coordinate, the two neighbours and the weight of the second.
    let axis = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        let scale = n_in as f64 / n_out as f64;
        (0..n_out)
            .map(|o| {
                let s = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, (s - i0 as f64) as f32)
            })
            .collect()
    };
    let (ys, xs) = (axis(ih, h), axis(iw, w));
    let mut out = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        let src = &image[ch * ih * iw..(ch + 1) * ih * iw];
        for &(y0, y1, fy) in &ys {
            for &(x0, x1, fx) in &xs {
                let top = src[y0 * iw + x0] * (1.0 - fx) + src[y0 * iw + x1] * fx;
                let bot = src[y1 * iw + x0] * (1.0 - fx) + src[y1 * iw + x1] * fx;
                out.push(top * (1.0 - fy) + bot * fy);
            }
        }
    }
    out
}
