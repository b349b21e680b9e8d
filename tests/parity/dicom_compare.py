#!/usr/bin/env python3
"""Per-volume DICOM decode time: boldstream in process vs dcm2niix run as a
subprocess on one file (what other real-time tools do, followed by loading
its NIfTI back) vs nibabel's DICOM wrappers, on the same real scanner files
(../shared/data/dicom).

boldstream's medians come from `cargo bench --bench dicom`, which writes
target/dicom-bench.tsv (run it first; `make bench` does). Every figure is a
median over files x repeats, one process at a time on the same machine.

    python tests/parity/dicom_compare.py [--data ../shared/data/dicom] \
        [--ours target/dicom-bench.tsv] [--repeats 3]
"""

import argparse
import csv
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

GROUPS = [
    ("rt-export mosaic (Skyra, CSA only)",
     ["siemens-rt-export/20190219.0219191_faceMatching.0219191_faceMatching"]),
    ("dcm_qa mosaics (Prisma, 8 series)", ["siemens-mosaic/In/*"]),
    ("XA30 enhanced multi-frame", ["siemens-xa30-bold/In/7_func-bold_task-fa_run-1"]),
]


def files_of(data, patterns):
    out = []
    for pat in patterns:
        for d in sorted(data.glob(pat)):
            out.extend(sorted(d.glob("*.dcm")))
    return out


def time_dcm2niix(dcm2niix, files, repeats):
    """Seconds per file: the subprocess alone, and with loading its output."""
    import nibabel as nib
    import numpy as np

    run, run_load = [], []
    for _ in range(repeats):
        for f in files:
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                subprocess.run(
                    [dcm2niix, "-s", "y", "-b", "n", "-z", "n", "-f", "vol", "-o", out, str(f)],
                    check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                t1 = time.perf_counter()
                nii = next(Path(out).glob("*.nii"))
                img = nib.load(nii)
                np.asanyarray(img.dataobj).astype(np.float32)
                img.affine
                t2 = time.perf_counter()
            run.append(t1 - t0)
            run_load.append(t2 - t0)
    return statistics.median(run), statistics.median(run_load)


def time_nibabel(files, repeats):
    """Seconds per file through nibabel.nicom's wrappers (pydicom underneath)."""
    from nibabel.nicom import dicomwrappers

    times = []
    for _ in range(repeats):
        for f in files:
            t0 = time.perf_counter()
            w = dicomwrappers.wrapper_from_file(str(f))
            w.get_data()
            w.affine
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/dicom")
    ap.add_argument("--ours", type=Path, default=ROOT / "target/dicom-bench.tsv")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dcm2niix", default=shutil.which("dcm2niix"))
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data} is absent: see ../shared/data/README.md")
    warnings.filterwarnings("ignore")
    import nibabel
    import pydicom

    ours = {}
    if args.ours.is_file():
        with open(args.ours) as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                ours[row["series"]] = float(row["read_decode_ms"]) / 1e3
    else:
        print(f"({args.ours} missing: run `cargo bench --bench dicom` first for boldstream's column)")
    version = "absent"
    if args.dcm2niix:
        r = subprocess.run([args.dcm2niix, "-v"], capture_output=True, text=True)
        version = (r.stdout + r.stderr).strip().splitlines()[-1]
    print(f"dcm2niix {version}, nibabel {nibabel.__version__}, pydicom {pydicom.__version__}; "
          f"medians per volume over files x {args.repeats}")
    print()
    print("| series | volumes | boldstream (read + decode) | nibabel wrappers | ratio "
          "| dcm2niix subprocess | ratio | dcm2niix + load NIfTI | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, patterns in GROUPS:
        files = files_of(args.data, patterns)
        mine = ours.get(label)
        try:
            nib_s = time_nibabel(files, args.repeats)
            nib = f"{nib_s * 1e3:.1f} ms"
        except Exception as e:  # noqa: BLE001 - report, do not hide
            nib_s, nib = None, f"fails ({type(e).__name__}: {e})"
        if args.dcm2niix:
            d_s, dl_s = time_dcm2niix(args.dcm2niix, files, args.repeats)
        else:
            d_s = dl_s = None

        def ms(s):
            return "n/a" if s is None else f"{s * 1e3:.1f} ms"

        def ratio(s):
            return "n/a" if s is None or mine is None else f"{s / mine:.0f}x"

        print(f"| {label} | {len(files)} | {ms(mine) if mine else 'n/a'} | {nib} | {ratio(nib_s)} "
              f"| {ms(d_s)} | {ratio(d_s)} | {ms(dl_s)} | {ratio(dl_s)} |")


if __name__ == "__main__":
    main()
