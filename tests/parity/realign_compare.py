#!/usr/bin/env python3
"""Realignment: boldstream next to SimpleITK on the same simulated series.

For each grid size the script
  1. asks `boldstream simulate --write-4d` for a synthetic 4-D series with
     known motion (MCFLIRT-convention truth, realistic noise: SNR 50);
  2. realigns it with `boldstream realign` (the live path's code, one thread);
  3. realigns it with SimpleITK (ITK's registration framework, one thread):
     Euler3DTransform about the same centre, mean squares, regular-step
     gradient descent with physical-shift scales, a 4-2-1 pyramid with
     2-1-0 voxel smoothing, linear interpolation, each volume started from
     the previous volume's result (as boldstream does), then one linear
     resampling onto the reference grid — once with every voxel in the
     metric and once with a 10 % random sample (a common speed setting);
  4. converts SimpleITK's transforms to MCFLIRT's `.par` convention and
     compares both tools with the truth: RMS and max error of the rotations
     (degrees) and translations (mm), and median time per volume.

Conventions. SimpleITK is given the voxel arrays with spacing = voxel size,
origin 0 and identity direction, after mirroring x for images FSL treats as
neurological: its physical space is then exactly FSL's "scaled mm" frame,
so no LPS/RAS conversion is involved. ITK's Euler3DTransform maps reference
points to volume points, T(x) = R(x - c) + c + t; MCFLIRT's matrix is the
inverse (volume -> reference), decomposed about the reference's centre of
gravity with R = Rx(rx)·Ry(ry)·Rz(rz) in FSL's sign convention.

Usage: python tests/parity/realign_compare.py --boldstream target/release/boldstream
Requirements: tests/parity/requirements.txt (numpy, nibabel, SimpleITK).
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np
import SimpleITK as sitk


# --- MCFLIRT's parameter convention ----------------------------------------

def fsl_euler_to_rotation(rx, ry, rz):
    """FSL's R = Rx·Ry·Rz, each elementary rotation transposed w.r.t. the textbook one."""
    ca, sa = np.cos(rx), np.sin(rx)
    cb, sb = np.cos(ry), np.sin(ry)
    cc, sc = np.cos(rz), np.sin(rz)
    rxm = np.array([[1, 0, 0], [0, ca, sa], [0, -sa, ca]])
    rym = np.array([[cb, 0, -sb], [0, 1, 0], [sb, 0, cb]])
    rzm = np.array([[cc, sc, 0], [-sc, cc, 0], [0, 0, 1]])
    return rxm @ rym @ rzm


def rotation_to_fsl_euler(r):
    ry = np.arcsin(np.clip(-r[0, 2], -1, 1))
    rz = np.arctan2(r[0, 1], r[0, 0])
    rx = np.arctan2(r[1, 2], r[2, 2])
    return rx, ry, rz


def par_from_matrix(m, centre):
    """MCFLIRT .par row of a volume->reference matrix about `centre`."""
    r = m[:3, :3]
    a = m[:3, 3]
    rx, ry, rz = rotation_to_fsl_euler(r)
    t = a + r @ centre - centre
    return np.array([rx, ry, rz, *t])


def matrix_from_par(p, centre):
    r = fsl_euler_to_rotation(*p[:3])
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = centre + p[3:] - r @ centre
    return m


def fsl_flips_x(affine):
    return np.linalg.det(affine[:3, :3]) > 0


def read_par(path):
    return np.loadtxt(path, ndmin=2)


# --- SimpleITK ---------------------------------------------------------------

def to_sitk(vol, zooms, flip):
    """A volume as a SimpleITK image whose physical frame is FSL scaled mm."""
    if flip:
        vol = vol[::-1, :, :]
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.transpose(2, 1, 0)).astype(np.float32))
    img.SetSpacing([float(z) for z in zooms])
    img.SetOrigin((0.0, 0.0, 0.0))
    return img


def sitk_realign(data, zooms, flip, centre, sampling=None):
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    fixed = to_sitk(data[..., 0], zooms, flip)
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(c) for c in centre])
    params, times = [], []
    for i in range(data.shape[3]):
        moving = to_sitk(data[..., i], zooms, flip)
        start = time.perf_counter()
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMeanSquares()
        if sampling is not None:
            reg.SetMetricSamplingStrategy(reg.RANDOM)
            reg.SetMetricSamplingPercentage(sampling, seed=1)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=200, relaxationFactor=0.5
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([4, 2, 1])
        reg.SetSmoothingSigmasPerLevel([2, 1, 0])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        init = sitk.Euler3DTransform(transform)
        reg.SetInitialTransform(init, inPlace=False)
        result = reg.Execute(fixed, moving)
        sitk.Resample(moving, fixed, result, sitk.sitkLinear, 0.0)
        times.append(time.perf_counter() - start)
        euler = sitk.Euler3DTransform(sitk.CompositeTransform(result).GetNthTransform(0))
        transform = euler
        r = np.array(euler.GetMatrix()).reshape(3, 3)
        c = np.array(euler.GetCenter())
        t = np.array(euler.GetTranslation())
        ref_to_vol = np.eye(4)
        ref_to_vol[:3, :3] = r
        ref_to_vol[:3, 3] = t + c - r @ c
        params.append(par_from_matrix(np.linalg.inv(ref_to_vol), centre))
    return np.array(params), np.array(times)


# --- comparison ----------------------------------------------------------------

def errors(est, truth):
    d = est - truth
    rot = np.degrees(d[:, :3])
    tr = d[:, 3:]
    return {
        "rms_deg": float(np.sqrt(np.mean(rot ** 2))),
        "rms_mm": float(np.sqrt(np.mean(tr ** 2))),
        "max_deg": float(np.max(np.abs(rot))),
        "max_mm": float(np.max(np.abs(tr))),
    }


def run_case(exe, work, label, dims, voxel, volumes, seed):
    series = work / f"{label}.nii"
    truth_dir = work / f"{label}_truth"
    subprocess.run(
        [exe, "simulate", "--write-4d", str(series), "--truth", str(truth_dir),
         "--volumes", str(volumes), "--dims", dims, "--voxel-mm", voxel, "--seed", str(seed),
         "--noise", "0.02"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    truth = read_par(truth_dir / "motion_truth.par")
    tsv = np.genfromtxt(truth_dir / "truth.tsv", names=True, dtype=None, encoding="utf-8")
    centre = np.array([tsv["cx"][0], tsv["cy"][0], tsv["cz"][0]], dtype=float)

    ours_par = work / f"{label}_ours.par"
    ours_t = work / f"{label}_ours_times.tsv"
    subprocess.run([exe, "realign", str(series), "--out", str(ours_par), "--timing", str(ours_t)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ours = read_par(ours_par)
    ours_times = np.loadtxt(ours_t, skiprows=1, ndmin=2)[:, 1]

    img = nib.load(str(series))
    data = np.asarray(img.dataobj, dtype=np.float32)
    zooms = img.header.get_zooms()[:3]
    flip = fsl_flips_x(img.affine)
    theirs, sitk_times = sitk_realign(data, zooms, flip, centre)
    sampled, sampled_times = sitk_realign(data, zooms, flip, centre, sampling=0.1)

    # Volume 0 is the reference for both: skip it in timing (no motion to find).
    return {
        "case": label,
        "volumes": int(volumes),
        "truth_max_deg": float(np.degrees(np.abs(truth[:, :3]).max())),
        "truth_max_mm": float(np.abs(truth[:, 3:]).max()),
        "boldstream": {**errors(ours, truth), "ms_per_volume": float(np.median(ours_times[1:]) * 1e3)},
        "simpleitk": {**errors(theirs, truth), "ms_per_volume": float(np.median(sitk_times[1:]) * 1e3)},
        "simpleitk_10pct": {**errors(sampled, truth), "ms_per_volume": float(np.median(sampled_times[1:]) * 1e3)},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boldstream", default="target/release/boldstream")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--quick", action="store_true", help="fewer volumes")
    args = ap.parse_args()
    exe = str(pathlib.Path(args.boldstream).resolve())
    n_small, n_large = (12, 6) if args.quick else (40, 20)
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        results = [
            run_case(exe, work, "64x64x36_3mm", "64x64x36", "3", n_small, 21),
            run_case(exe, work, "104x104x72_2mm", "104x104x72", "2", n_large, 22),
        ]
    print(f"SimpleITK {sitk.Version.VersionString()}; noise SNR 50; one thread each; ms = median per volume (register + resample)")
    print("| series | tool | RMS rot (deg) | RMS trans (mm) | max rot (deg) | max trans (mm) | ms/volume | time ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ours = r["boldstream"]
        for name, e in (
            ("boldstream", ours),
            ("SimpleITK, all voxels", r["simpleitk"]),
            ("SimpleITK, 10% random samples", r["simpleitk_10pct"]),
        ):
            ratio = e["ms_per_volume"] / ours["ms_per_volume"]
            print(
                f"| {r['case']} ({r['volumes']} vols, motion up to {r['truth_max_deg']:.2f} deg / {r['truth_max_mm']:.2f} mm) "
                f"| {name} | {e['rms_deg']:.4f} | {e['rms_mm']:.4f} | {e['max_deg']:.4f} | {e['max_mm']:.4f} "
                f"| {e['ms_per_volume']:.1f} | {ratio:.1f}x |"
            )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
