//! Realign + resample per volume, one thread, at two grid sizes.
//!
//! Prints medians and percentiles of per-volume time of the live path
//! (registration, then resampling of the session-mask voxels), its ratio to
//! the design budget (30 ms at 104×104×72), and for comparison the time to
//! resample the whole grid. `make bench` runs this next to SimpleITK on the same kind of
//! series (tests/parity/realign_compare.py), so the two figures come from the
//! same machine in the same minute; this machine is noisy, so read medians
//! and ratios, not single times.
//!
//! `cargo bench --bench realign`

use std::time::Instant;

use boldstream::realign::register::{Registration, RegistrationOptions};
use boldstream::realign::resample::Resampler;
use boldstream::tools::simulate::synth::{SynthSeries, SynthSpec};
use boldstream::types::mask::SessionMask;

const BUDGET_MS: f64 = 30.0;

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn bench(label: &str, spec: SynthSpec, passes: usize) {
    let n = spec.volumes_per_run;
    let series = SynthSeries::new(SynthSpec { threads: 0, ..spec }).expect("spec");
    let volumes: Vec<_> = (0..n).map(|i| series.volume(i)).collect();
    let t0 = Instant::now();
    let reg = Registration::new(&volumes[0], RegistrationOptions::default()).expect("reference");
    let prep_ms = t0.elapsed().as_secs_f64() * 1e3;
    let resampler = Resampler::onto_reference(volumes[0].grid());
    let mask = SessionMask::compute_epi(&volumes[0]).expect("mask");
    let (mut reg_ms, mut res_ms, mut total_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut full_ms, mut masked_out) = (Vec::new(), Vec::new());
    let mut iters = Vec::new();
    let mut out = Vec::new();
    for _ in 0..passes {
        let mut t = nalgebra::Matrix4::identity();
        for v in &volumes {
            let a = Instant::now();
            let r = reg.register(v, &t).expect("registers");
            let b = Instant::now();
            resampler.resample_masked(v, &r.ref_to_volume, &mask, &mut masked_out);
            let c = Instant::now();
            resampler.resample_into(v, &r.ref_to_volume, &mut out);
            full_ms.push(c.elapsed().as_secs_f64() * 1e3);
            t = r.ref_to_volume;
            reg_ms.push((b - a).as_secs_f64() * 1e3);
            res_ms.push((c - b).as_secs_f64() * 1e3);
            total_ms.push((c - a).as_secs_f64() * 1e3);
            iters.push(r.levels.iter().map(|l| l.iterations).sum::<usize>() as f64);
        }
    }
    let med = pct(&mut total_ms.clone(), 0.5);
    println!(
        "{label:<18} {:>3} vols x {passes} | register + resample mask: p50 {:>6.2} ms p90 {:>6.2} ms min {:>6.2} ms (p50 / 30 ms budget = {:.2}) | register p50 {:>5.2} ms, {:.0} GN iterations | resample {} mask voxels p50 {:>5.2} ms, whole grid p50 {:>5.2} ms | reference prep {:>5.1} ms",
        n,
        med,
        pct(&mut total_ms, 0.9),
        pct(&mut total_ms, 0.0),
        med / BUDGET_MS,
        pct(&mut reg_ms, 0.5),
        pct(&mut iters, 0.5),
        mask.len(),
        pct(&mut res_ms, 0.5),
        pct(&mut full_ms, 0.5),
        prep_ms,
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    println!(
        "realign + resample per volume, one thread (boldstream {})",
        env!("CARGO_PKG_VERSION")
    );
    bench(
        "64x64x36 @3 mm",
        SynthSpec {
            volumes_per_run: 40,
            seed: 21,
            ..SynthSpec::default()
        },
        3,
    );
    bench(
        "104x104x72 @2 mm",
        SynthSpec {
            dims: [104, 104, 72],
            voxel_mm: [2.0, 2.0, 2.0],
            volumes_per_run: 24,
            seed: 22,
            ..SynthSpec::default()
        },
        3,
    );
}
