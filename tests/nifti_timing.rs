//! Decode timings on a realistic EPI-sized volume (104×104×72). Ignored by
//! default because timings mean something only in a release build:
//!
//! `cargo test --release --test nifti_timing -- --ignored --nocapture`

use std::time::{Duration, Instant};

use boldstream::formats::nifti::{
    OutputType, WriteOptions, decode_volume, encode_volume, read_volume,
};
use boldstream::types::volume::{Grid, Volume};

/// Brain-like intensities: a bright ellipsoid with noise on a dark
/// background, so gzip sees data about as compressible as a real EPI.
fn epi_like() -> Volume {
    let dims = [104, 104, 72];
    let grid = Grid::centred(dims, [2.0, 2.0, 2.0]);
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut values = Vec::with_capacity(grid.len());
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let noise = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                let r2 = ((i as f32 - 52.0) / 40.0).powi(2)
                    + ((j as f32 - 52.0) / 45.0).powi(2)
                    + ((k as f32 - 36.0) / 30.0).powi(2);
                let v = if r2 < 1.0 {
                    900.0 + 80.0 * noise
                } else {
                    20.0 * (noise + 0.5)
                };
                values.push(v.round());
            }
        }
    }
    Volume::from_file_order(grid, values).unwrap()
}

fn time(bytes: &[u8], runs: usize) -> (Duration, Duration) {
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let v = decode_volume(bytes).unwrap();
            let el = start.elapsed();
            std::hint::black_box(v);
            el
        })
        .collect();
    t.sort();
    (t[0], t[runs / 2])
}

#[test]
#[ignore = "timing; run in release with --ignored --nocapture"]
fn decode_timings_104x104x72() {
    let vol = epi_like();
    let dir = tempfile::tempdir().unwrap();
    for (label, dtype, gzip) in [
        ("int16 .nii   ", OutputType::I16, false),
        ("int16 .nii.gz", OutputType::I16, true),
        ("f32   .nii   ", OutputType::F32, false),
        ("f32   .nii.gz", OutputType::F32, true),
    ] {
        let opts = WriteOptions {
            dtype,
            gzip,
            tr: Some(1.5),
        };
        let start = Instant::now();
        let bytes = encode_volume(&vol, &opts).unwrap();
        let enc = start.elapsed();
        // Values are integral and in range, so both types round-trip exactly.
        assert_eq!(decode_volume(&bytes).unwrap().values(), vol.values());
        let (min, median) = time(&bytes, 101);
        let path = dir.path().join("v.nii");
        std::fs::write(&path, &bytes).unwrap();
        let file_times: Vec<Duration> = (0..21)
            .map(|_| {
                let s = Instant::now();
                std::hint::black_box(read_volume(&path).unwrap());
                s.elapsed()
            })
            .collect();
        let mut ft = file_times;
        ft.sort();
        let mut rt: Vec<Duration> = (0..21)
            .map(|_| {
                let s = Instant::now();
                std::hint::black_box(std::fs::read(&path).unwrap());
                s.elapsed()
            })
            .collect();
        rt.sort();
        println!(
            "{label}: {:>8} bytes  decode min {:>6.2} ms median {:>6.2} ms  read_volume (page cache) median {:>6.2} ms (fs::read alone {:>6.2} ms)  encode {:>6.2} ms",
            bytes.len(),
            min.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e3,
            ft[ft.len() / 2].as_secs_f64() * 1e3,
            rt[rt.len() / 2].as_secs_f64() * 1e3,
            enc.as_secs_f64() * 1e3,
        );
    }
}
