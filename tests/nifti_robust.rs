//! Hostile input: the reader must never panic and never size a buffer from
//! a header's claims beyond what the bytes can back. A counting allocator
//! records the largest single allocation made on the test's thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::Path;

use boldstream::formats::nifti::{ReadError, decode_series, decode_volume};

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: the allocator may run while thread-locals are torn down.
    let _ = LARGEST.try_with(|m| {
        if size > m.get() {
            m.set(size);
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Run `f` and return its result with the largest allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|m| m.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/nifti")
            .join(name),
    )
    .unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A valid NIfTI-1 header (from a fixture) claiming `dims` of int16.
fn header_claiming(dims: [i16; 8]) -> Vec<u8> {
    let mut b = fixture("dtype_i16.nii");
    b.truncate(352);
    for (i, d) in dims.iter().enumerate() {
        b[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    b
}

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

#[test]
fn absurd_claims_allocate_only_what_the_bytes_back() {
    // 2000^3 int16 = 16 GB: within the accepted maximum, so the verdict is
    // "truncated", but nothing near 16 GB may be allocated.
    let huge = header_claiming([3, 2000, 2000, 2000, 1, 1, 1, 1]);
    let (r, most) = largest_allocation(|| decode_series(&huge));
    assert!(
        matches!(r, Err(ReadError::Truncated { needed, got: 352, .. }) if needed == 352 + 16_000_000_000),
        "{r:?}"
    );
    assert!(
        most < 64 * KIB,
        "plain header: largest allocation {most} bytes"
    );

    let gz = gzip(&huge);
    let (r, most) = largest_allocation(|| decode_series(&gz));
    assert!(matches!(r, Err(ReadError::Truncated { .. })), "{r:?}");
    assert!(
        most < MIB,
        "gzipped header: largest allocation {most} bytes"
    );

    // The same claim followed by 8 MB that compress to almost nothing:
    // buffers may grow with the real decompressed bytes, not with the claim.
    let mut bomb = huge.clone();
    bomb.resize(352 + 8 * MIB, 0);
    let gz = gzip(&bomb);
    assert!(gz.len() < 100 * KIB);
    let (r, most) = largest_allocation(|| decode_series(&gz));
    assert!(
        matches!(r, Err(ReadError::Truncated { got, decompressed: true, .. }) if got == bomb.len() as u64),
        "{r:?}"
    );
    assert!(
        most < 40 * MIB,
        "gzip bomb: largest allocation {most} bytes"
    );

    // Beyond the maximum: refused outright, equally cheaply.
    let absurd = header_claiming([4, 32767, 32767, 32767, 32767, 1, 1, 1]);
    let (r, most) = largest_allocation(|| decode_series(&absurd));
    assert!(matches!(r, Err(ReadError::Unsupported { .. })), "{r:?}");
    assert!(most < 64 * KIB, "{most}");

    // A 4-D claim of many volumes must not reserve a Vec<Volume> for them.
    let many = header_claiming([4, 1, 1, 1, 32767, 1, 1, 1]);
    let (r, most) = largest_allocation(|| decode_series(&many));
    assert!(matches!(r, Err(ReadError::Truncated { .. })), "{r:?}");
    assert!(most < 64 * KIB, "{most}");
}

/// xorshift64: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Offsets and widths of the NIfTI-1 fields that drive sizes and geometry.
const NIFTI1_FIELDS: &[(usize, usize)] = &[
    (0, 4),   // sizeof_hdr
    (40, 2),  // dim[0]
    (42, 2),  // dim[1]
    (44, 2),  // dim[2]
    (46, 2),  // dim[3]
    (48, 2),  // dim[4]
    (50, 2),  // dim[5]
    (70, 2),  // datatype
    (76, 4),  // pixdim[0]
    (80, 4),  // pixdim[1]
    (92, 4),  // pixdim[4]
    (108, 4), // vox_offset
    (112, 4), // scl_slope
    (116, 4), // scl_inter
    (123, 1), // xyzt_units
    (252, 2), // qform_code
    (254, 2), // sform_code
    (256, 4), // quatern_b
    (264, 4), // quatern_d
    (280, 4), // srow_x[0]
    (344, 4), // magic
];

const NIFTI2_FIELDS: &[(usize, usize)] = &[
    (0, 4),   // sizeof_hdr
    (4, 8),   // magic
    (12, 2),  // datatype
    (16, 8),  // dim[0]
    (24, 8),  // dim[1]
    (40, 8),  // dim[3]
    (48, 8),  // dim[4]
    (104, 8), // pixdim[0]
    (112, 8), // pixdim[1]
    (168, 8), // vox_offset
    (176, 8), // scl_slope
    (184, 8), // scl_inter
    (344, 4), // qform_code
    (348, 4), // sform_code
    (352, 8), // quatern_b
    (400, 8), // srow_x[0]
    (500, 4), // xyzt_units
];

fn interesting(rng: &mut Rng, width: usize) -> Vec<u8> {
    let v: u64 = match rng.below(8) {
        0 => 0,
        1 => u64::MAX,
        2 => 1u64 << (8 * width as u32 - 1), // most negative
        3 => rng.below(8) as u64,
        4 => (1u64 << (8 * width as u32 - 1)) - 1, // most positive
        5 => match width {
            4 => u64::from(f32::NAN.to_bits()),
            8 => f64::INFINITY.to_bits(),
            _ => 7,
        },
        6 => match width {
            4 => u64::from(1e30f32.to_bits()),
            8 => (-1e300f64).to_bits(),
            _ => 2,
        },
        _ => rng.next(),
    };
    v.to_le_bytes()[..width].to_vec()
}

#[test]
fn mutated_headers_never_panic_or_overallocate() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut outcomes = [0usize; 2];
    for (name, fields) in [
        ("dtype_i16.nii", NIFTI1_FIELDS),
        ("dtype_u8.nii", NIFTI1_FIELDS),
        ("series_4d_nt1.nii", NIFTI1_FIELDS),
        ("qform_only.nii", NIFTI1_FIELDS),
        ("nifti2_f32.nii", NIFTI2_FIELDS),
        ("nifti2_qform_only.nii", NIFTI2_FIELDS),
    ] {
        let original = fixture(name);
        for round in 0..3000 {
            let mut b = original.clone();
            for _ in 0..1 + rng.below(4) {
                if rng.below(4) == 0 {
                    let at = rng.below(b.len().min(560));
                    b[at] = rng.next() as u8;
                } else {
                    let (off, width) = fields[rng.below(fields.len())];
                    let v = interesting(&mut rng, width);
                    b[off..off + width].copy_from_slice(&v);
                }
            }
            if round % 5 == 0 {
                b.truncate(rng.below(b.len() + 1));
            }
            let (r, most) = largest_allocation(|| (decode_series(&b), decode_volume(&b)));
            outcomes[usize::from(r.0.is_ok())] += 1;
            // Decoded voxels are f32 and the samples at least one byte: at
            // most 4x the input, plus small bookkeeping.
            assert!(
                most <= 4 * b.len() + 64 * KIB,
                "{name} round {round}: allocated {most} for {} bytes",
                b.len()
            );
            if round % 7 == 0 {
                let gz = gzip(&b);
                let (_, most) = largest_allocation(|| decode_series(&gz));
                assert!(
                    most <= 4 * b.len() + 2 * MIB,
                    "{name} round {round} gz: {most}"
                );
            }
        }
    }
    // Mutations must reach both outcomes, or the test is not exercising the
    // decoder past the header checks.
    assert!(outcomes[0] > 1000 && outcomes[1] > 100, "{outcomes:?}");
}

#[test]
fn corrupted_gzip_streams_never_panic() {
    let mut rng = Rng(12345);
    for name in [
        "dtype_i16.nii.gz",
        "series_4d.nii.gz",
        "be_f64.nii.gz",
        "nifti2_i16_scaled.nii.gz",
    ] {
        let original = fixture(name);
        for _ in 0..2000 {
            let mut b = original.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(b.len());
                b[at] ^= 1 << rng.below(8);
            }
            match decode_series(&b) {
                // A flip in an unused gzip header byte (mtime, OS) is harmless.
                Ok(s) => assert!(!s.volumes.is_empty()),
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
    }
}
