//! DICOM file → volume in memory, per volume, one thread, on the real
//! scanner files of `../shared/data/dicom`.
//!
//! Prints, per kind of file, the median and 90th percentile of reading the
//! file and decoding it (what ingest does once a file is complete), the
//! decode alone from bytes already in memory, and the ratio of the median
//! to the design budget (5 ms from file complete to volume in memory).
//! Also writes the medians to `target/dicom-bench.tsv`, which
//! `tests/parity/dicom_compare.py` puts next to dcm2niix (as a subprocess,
//! as other real-time tools run it) and nibabel's DICOM reader on the same
//! files. The machine is shared and noisy: read medians and ratios.
//!
//! `cargo bench --bench dicom` (`BOLDSTREAM_SHARED_DATA` to point elsewhere)

use std::path::{Path, PathBuf};
use std::time::Instant;

use boldstream::formats::dicom;

const BUDGET_MS: f64 = 5.0;
const PASSES: usize = 30;

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn dcm_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    v.sort();
    v
}

struct Row {
    label: &'static str,
    files: usize,
    dims: [usize; 3],
    read_decode_ms: f64,
    decode_ms: f64,
}

fn bench(label: &'static str, files: &[PathBuf]) -> Row {
    assert!(!files.is_empty(), "{label}: no files");
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("read"))
        .collect();
    let dims = match dicom::decode(&bytes[0]) {
        Ok(dicom::Decoded::Volume { volume, .. }) => volume.grid().dims,
        Ok(_) => panic!("{label}: not one volume per file"),
        Err(e) => panic!("{}: {e}", files[0].display()),
    };
    let (mut full, mut dec) = (Vec::new(), Vec::new());
    for _ in 0..PASSES {
        for (f, b) in files.iter().zip(&bytes) {
            let t0 = Instant::now();
            let from_disk = dicom::read_file(f);
            let t1 = Instant::now();
            let in_memory = dicom::decode(b);
            let t2 = Instant::now();
            assert!(from_disk.is_ok() && in_memory.is_ok());
            full.push((t1 - t0).as_secs_f64() * 1e3);
            dec.push((t2 - t1).as_secs_f64() * 1e3);
        }
    }
    let med = pct(&mut full, 0.5);
    println!(
        "{label:<34} {:>2} files x {PASSES} | read + decode p50 {med:>5.2} ms p90 {:>5.2} ms (p50 / 5 ms budget = {:.2}) | decode from memory p50 {:>5.2} ms | {}x{}x{}",
        files.len(),
        pct(&mut full, 0.9),
        med / BUDGET_MS,
        pct(&mut dec, 0.5),
        dims[0],
        dims[1],
        dims[2],
    );
    Row {
        label,
        files: files.len(),
        dims,
        read_decode_ms: med,
        decode_ms: pct(&mut dec, 0.5),
    }
}

fn main() {
    let root = std::env::var_os("BOLDSTREAM_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
        .join("dicom");
    if !root.is_dir() {
        eprintln!(
            "{} is absent: the DICOM benchmark needs the real scanner files (see ../shared/data/README.md)",
            root.display()
        );
        std::process::exit(2);
    }
    println!(
        "DICOM file -> volume in memory, per volume, one thread (boldstream {})",
        env!("CARGO_PKG_VERSION")
    );
    let rt = dcm_files(
        &root.join("siemens-rt-export/20190219.0219191_faceMatching.0219191_faceMatching"),
    );
    let mut prisma = Vec::new();
    let mut series: Vec<PathBuf> = std::fs::read_dir(root.join("siemens-mosaic/In"))
        .expect("siemens-mosaic/In")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    series.sort();
    for s in series {
        prisma.extend(dcm_files(&s));
    }
    let xa = dcm_files(&root.join("siemens-xa30-bold/In/7_func-bold_task-fa_run-1"));
    let rows = [
        bench("rt-export mosaic (Skyra, CSA only)", &rt),
        bench("dcm_qa mosaics (Prisma, 8 series)", &prisma),
        bench("XA30 enhanced multi-frame", &xa),
    ];
    let mut tsv = String::from("series\tfiles\tdims\tread_decode_ms\tdecode_ms\n");
    for r in &rows {
        tsv.push_str(&format!(
            "{}\t{}\t{}x{}x{}\t{:.4}\t{:.4}\n",
            r.label, r.files, r.dims[0], r.dims[1], r.dims[2], r.read_decode_ms, r.decode_ms
        ));
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dicom-bench.tsv");
    match std::fs::write(&out, tsv) {
        Ok(()) => println!("medians written to {}", out.display()),
        Err(e) => eprintln!("could not write {}: {e}", out.display()),
    }
}
