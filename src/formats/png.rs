//! Reconstructions as PNG files.
//!
//! In: a channel-major `[C, H, W]` float image (C = 1 or 3), nominally in
//! [0, 1]. Out: an 8-bit PNG (grey or RGB); values are clamped and NaN is
//! written as 0, so a diverged model still gives a file to look at.

use std::path::Path;

/// Encode `image` (`[C, H, W]`) as PNG bytes.
pub fn encode_png(image: &[f32], (c, h, w): (usize, usize, usize)) -> std::io::Result<Vec<u8>> {
    if !(c == 1 || c == 3) || image.len() != c * h * w || h == 0 || w == 0 {
        return Err(std::io::Error::other(format!(
            "image of {} values is not [C, H, W] = [{c}, {h}, {w}] with C = 1 or 3",
            image.len()
        )));
    }
    let to8 = |v: f32| {
        if v.is_finite() {
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        } else {
            0
        }
    };
    let plane = h * w;
    let mut pixels = Vec::with_capacity(c * plane);
    for p in 0..plane {
        for ch in 0..c {
            pixels.push(to8(image[ch * plane + p]));
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(if c == 3 {
            png::ColorType::Rgb
        } else {
            png::ColorType::Grayscale
        });
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(&pixels)
            .map_err(std::io::Error::other)?;
    }
    Ok(out)
}

/// Write `image` to `path` atomically (a reader never sees half a file).
pub fn write_png(path: &Path, image: &[f32], chw: (usize, usize, usize)) -> std::io::Result<()> {
    crate::formats::atomic_write(path, &encode_png(image, chw)?)
}

/// Decode a PNG into `[C, H, W]` floats in [0, 1] (tests, bank images).
pub fn read_png(path: &Path) -> std::io::Result<(Vec<f32>, (usize, usize, usize))> {
    let file = std::fs::File::open(path)?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(std::io::Error::other)?;
    let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
    let info = reader.next_frame(&mut buf).map_err(std::io::Error::other)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let c = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Indexed => 3,
    };
    let keep = if c >= 3 { 3 } else { 1 };
    let plane = h * w;
    let mut out = vec![0f32; keep * plane];
    for p in 0..plane {
        for ch in 0..keep {
            out[ch * plane + p] = buf[p * c + ch] as f32 / 255.0;
        }
    }
    Ok((out, (keep, h, w)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_within_quantisation() {
        let dir = tempfile::tempdir().unwrap();
        let (c, h, w) = (3, 5, 7);
        let img: Vec<f32> = (0..c * h * w).map(|i| (i % 17) as f32 / 16.0).collect();
        let p = dir.path().join("x.png");
        write_png(&p, &img, (c, h, w)).unwrap();
        let (back, chw) = read_png(&p).unwrap();
        assert_eq!(chw, (c, h, w));
        let err = img
            .iter()
            .zip(&back)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err <= 0.5 / 255.0 + 1e-6, "max error {err}");
    }

    #[test]
    fn clamps_and_rejects_bad_shapes() {
        let img = [f32::NAN, -1.0, 2.0, 0.5];
        let bytes = encode_png(&img, (1, 2, 2)).unwrap();
        assert!(!bytes.is_empty());
        assert!(encode_png(&img, (2, 1, 2)).is_err());
        assert!(encode_png(&img, (1, 3, 2)).is_err());
    }
}
