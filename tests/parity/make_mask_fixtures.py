#!/usr/bin/env python3
"""Fixtures for the session mask: nilearn's compute_epi_mask and numpy's
np.where voxel order, written next to the inputs they were computed from so
the Rust tests (tests/mask_parity.rs) check against them without Python.

Run from the repository root with numpy, nibabel and nilearn installed:
    python tests/parity/make_mask_fixtures.py target/release/boldstream

Writes into tests/fixtures/mask/:
  epi.nii.gz           a simulated EPI volume (boldstream simulate, 40x40x24 at 4 mm)
  epi_mask_nilearn.nii.gz
                       nilearn.masking.compute_epi_mask(epi.nii.gz) with its defaults
  irregular_mask.nii.gz
                       a random mask on an odd-shaped 7x5x4 grid, LAS affine
  irregular_where.txt  np.where(mask) of it as nibabel loads it: one "i j k" per line
"""

import pathlib
import subprocess
import sys
import tempfile

import nibabel as nib
import numpy as np
from nilearn.masking import compute_epi_mask

out = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "mask"
out.mkdir(parents=True, exist_ok=True)
exe = sys.argv[1] if len(sys.argv) > 1 else "target/release/boldstream"

with tempfile.TemporaryDirectory() as tmp:
    series = pathlib.Path(tmp) / "s.nii"
    subprocess.run([exe, "simulate", "--write-4d", str(series), "--volumes", "1",
                    "--dims", "40x40x24", "--voxel-mm", "4", "--seed", "5", "--no-truth"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    img = nib.load(str(series))
    data = np.asarray(img.dataobj, dtype=np.float32)[..., 0] if img.ndim == 4 else np.asarray(img.dataobj, dtype=np.float32)
    epi = nib.Nifti1Image(data, img.affine)
    epi.header.set_data_dtype(np.float32)
    nib.save(epi, out / "epi.nii.gz")

mask = compute_epi_mask(nib.load(out / "epi.nii.gz"))
m = nib.Nifti1Image(np.asarray(mask.dataobj).astype(np.uint8), mask.affine)
nib.save(m, out / "epi_mask_nilearn.nii.gz")
print(f"nilearn mask: {int(np.asarray(mask.dataobj).sum())} voxels")

rng = np.random.default_rng(7)
irr = (rng.random((7, 5, 4)) > 0.6).astype(np.uint8)
aff = np.diag([-2.0, 2.5, 3.0, 1.0])
aff[:3, 3] = [6.0, -5.0, -4.5]
nib.save(nib.Nifti1Image(irr, aff), out / "irregular_mask.nii.gz")
loaded = np.asarray(nib.load(out / "irregular_mask.nii.gz").dataobj)
ijk = np.stack(np.where(loaded), axis=1)
np.savetxt(out / "irregular_where.txt", ijk, fmt="%d")
print(f"irregular mask: {len(ijk)} voxels")
