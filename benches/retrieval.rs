//! Retrieval at MindEye2's real width against the machine's memory bandwidth.
//!
//! A bank of N candidates × 425,984 values (256 tokens × 1,664, MindEye2's
//! `clip_voxels`) is scored against one query the way the fast path does it.
//! Scoring is one pass over the bank, so the yardstick is the time this
//! machine takes to read the same number of bytes once, measured in the same
//! run with the same number of threads: the ratio `score / read` says how
//! close to memory-bound the kernel is. The code it replaced (a scalar
//! float64 loop over float32 rows) runs beside it as the reference.
//!
//! `cargo bench --bench retrieval -- [CANDIDATES] [REPEATS]` (default 250, 9).

use std::time::Instant;

use boldstream::decode::retrieval::Bank;

const DIM: usize = 256 * 1664;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<F: FnMut()>(repeats: usize, mut f: F) -> f64 {
    f();
    median(
        (0..repeats)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

/// Read `words` once on `threads` threads (the bandwidth yardstick).
fn read_once(words: &[u64], threads: usize) -> u64 {
    let per = words.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = words
            .chunks(per)
            .map(|c| s.spawn(move || c.iter().fold(0u64, |a, &w| a.wrapping_add(w))))
            .collect();
        parts
            .into_iter()
            .map(|p| p.join().unwrap_or(0))
            .fold(0, u64::wrapping_add)
    })
}

/// The scorer this replaced: float64 products over float32 rows, one thread.
fn scalar_f64(rows: &[f32], q: &[f32]) -> Vec<f32> {
    let qn = q.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    rows.chunks(DIM)
        .map(|row| {
            let dot: f64 = row.iter().zip(q).map(|(&a, &b)| a as f64 * b as f64).sum();
            (dot / qn) as f32
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(250);
    let repeats: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(9);
    let cores = std::thread::available_parallelism().map_or(1, |p| p.get());
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / 16_777_216.0 - 0.5
    };
    let rows: Vec<f32> = (0..n * DIM).map(|_| next()).collect();
    let q: Vec<f32> = (0..DIM).map(|_| next()).collect();
    let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    // The reference normalises rows first too, so its figure is the loop alone.
    let unit: Vec<f32> = rows
        .chunks(DIM)
        .flat_map(|r| {
            let norm = r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            r.iter().map(move |&v| (v as f64 / norm) as f32)
        })
        .collect();
    let b32 = Bank::from_rows(rows.clone(), DIM, ids.clone()).expect("bank");
    let b16 = Bank::from_rows_f16(rows, DIM, ids).expect("bank");
    let words16 = vec![1u64; b16.bytes() / 8];
    let words32 = vec![1u64; b32.bytes() / 8];
    println!("retrieval: {n} candidates x {DIM} values, {cores} cores, median of {repeats} (ms)");
    println!(
        "bank bytes: float32 {:.0} MB, float16 {:.0} MB",
        b32.bytes() as f64 / 1e6,
        b16.bytes() as f64 / 1e6
    );
    let reference = time(repeats.min(3), || {
        std::hint::black_box(scalar_f64(&unit, &q));
    });
    println!("reference (before): scalar f64 loop, f32 rows, 1 thread  {reference:8.1}");
    for threads in [1, cores] {
        let read32 = time(repeats, || {
            std::hint::black_box(read_once(&words32, threads));
        });
        let read16 = time(repeats, || {
            std::hint::black_box(read_once(&words16, threads));
        });
        let s32 = {
            let b = b32.clone().with_threads(threads);
            time(repeats, || {
                std::hint::black_box(b.scores(&q));
            })
        };
        let s16 = {
            let b = b16.clone().with_threads(threads);
            time(repeats, || {
                std::hint::black_box(b.scores(&q));
            })
        };
        println!(
            "{threads:2} thread(s): read f32 bank once {read32:7.1} | score f32 {s32:7.1} ({:.2}x read) | \
             read f16 bank once {read16:7.1} | score f16 {s16:7.1} ({:.2}x read) | \
             bandwidth {:.1} GB/s | f16 vs reference {:.1}x faster",
            s32 / read32,
            s16 / read16,
            b16.bytes() as f64 / read16 / 1e6,
            reference / s16
        );
    }
}
