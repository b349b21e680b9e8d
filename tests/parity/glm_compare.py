#!/usr/bin/env python3
"""Single-trial betas: boldstream next to nilearn's FirstLevelModel.

On the simulator's output (a synthetic run with a rapid event-related design,
motion, drift and noise), realigned by boldstream:
  1. `boldstream glm` estimates every trial as the live daemon does (LSS:
     probe + reference + six motion confounds + cosine drift + constant,
     estimated `delay` seconds after onset from the frames in by then);
  2. for each trial, nilearn builds the same design itself
     (make_first_level_design_matrix on the run's frame times, events with
     the trial as "probe" and every other as "reference", the motion
     parameters as confounds), keeps the frames and drift columns the trial
     used, and FirstLevelModel (OLS, then AR(1)) fits it; the probe's effect
     size is the beta;
  3. every beta is compared. Relative error of a voxel's beta b (ours a):
     |a - b| / max(|b|, 1e-3 * rms(b over the trial's voxels)) — the floor
     only matters for betas a thousand times smaller than typical.
It also times nilearn's fit for one beta, for the benchmark.

With --fixtures DIR it writes a small self-contained problem (masked data,
motion, events, settings, nilearn's betas for OLS and AR(1), and the frames
and columns each trial used) for tests/glm_parity.rs.

Usage: python tests/parity/glm_compare.py --boldstream target/release/boldstream
Requirements: tests/parity/requirements.txt (numpy, nibabel, nilearn, pandas).
"""

import os

# One thread, as boldstream's GLM: numpy's BLAS would otherwise use every core.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib
import subprocess
import sys
import tempfile
import time
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
from nilearn.glm.first_level import FirstLevelModel, make_first_level_design_matrix
from nilearn.image import index_img
from nilearn.masking import apply_mask

warnings.filterwarnings("ignore")
MOTION = ["rx", "ry", "rz", "tx", "ty", "tz"]


def run(cmd):
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def drift_order(n, dt, high_pass):
    return min(n - 1, int(np.floor(2 * n * high_pass * dt)))


def nilearn_design(events, k, frame_times, motion, n_frames, args):
    """nilearn's design for trial k, restricted to the frames and drift terms it used."""
    ev = events[["onset", "duration"]].copy()
    ev["trial_type"] = ["probe" if i == k else "reference" for i in range(len(events))]
    if "modulation" in events:
        ev["modulation"] = events["modulation"]
    dm = make_first_level_design_matrix(
        frame_times, ev, hrf_model=args.hrf, drift_model="cosine", high_pass=args.high_pass,
        add_regs=motion, add_reg_names=MOTION, min_onset=-24, oversampling=50,
    )
    dm = dm.iloc[:n_frames]
    order = drift_order(n_frames, args.tr, args.high_pass)
    keep = []
    for c in dm.columns:
        if c.startswith("drift_") and int(c.split("_")[1]) > order:
            continue
        if c in ("reference", *MOTION) and np.abs(dm[c].to_numpy()).max() <= 1e-12:
            continue
        keep.append(c)
    return dm[keep]


def nilearn_betas(img, mask, events, motion, index, noise_model, args, times):
    n_total = img.shape[3]
    frame_times = np.linspace(args.slice_time_ref * args.tr,
                              (n_total - 1) * args.tr + args.slice_time_ref * args.tr, n_total)
    out = {}
    for _, row in index.iterrows():
        if row["status"] != "ok":
            continue
        k, n_k = int(row["trial"]), int(row["frames"])
        dm = nilearn_design(events, k, frame_times, motion, n_k, args)
        assert list(dm.columns) == row["columns"].split(","), (k, list(dm.columns), row["columns"])
        start = time.perf_counter()
        model = FirstLevelModel(
            t_r=args.tr, slice_time_ref=args.slice_time_ref, noise_model=noise_model,
            signal_scaling=0 if args.signal_scaling == "percent" else False,
            mask_img=mask, minimize_memory=True, standardize=False, n_jobs=1,
        )
        model.fit(index_img(img, slice(0, n_k)), design_matrices=[dm])
        beta = model.compute_contrast("probe", output_type="effect_size")
        times.append((n_k, time.perf_counter() - start))
        out[k] = apply_mask(beta, mask)
    return out


def compare(ours, theirs, index):
    worst, worst_abs, count = 0.0, 0.0, 0
    rows = index[index["status"] == "ok"]
    for _, row in rows.iterrows():
        k = int(row["trial"])
        a = ours[int(row["row"])].astype(np.float64)
        b = theirs[k]
        rms = np.sqrt(np.mean(b ** 2))
        rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-3 * rms)
        worst = max(worst, float(rel.max()))
        worst_abs = max(worst_abs, float(np.abs(a - b).max() / rms))
        count += b.size
    return worst, worst_abs, count, len(rows)


def simulate(exe, work, dims, voxel, volumes, seed):
    series = work / "series.nii"
    run([exe, "simulate", "--write-4d", series, "--truth", work / "truth", "--volumes", volumes,
         "--dims", dims, "--voxel-mm", voxel, "--seed", seed])
    run([exe, "realign", series, "--out", work / "motion.par", "--resampled", work / "realigned.nii",
         "--mask-out", work / "mask.nii.gz"])
    return work / "realigned.nii", work / "mask.nii.gz", work / "motion.par", work / "truth" / "run-01_events.tsv"


def ours(exe, work, paths, noise_model, args):
    data, mask, motion, events = paths
    out, index = work / f"ours_{noise_model}.npy", work / f"ours_{noise_model}.tsv"
    run([exe, "glm", "--data", data, "--mask", mask, "--events", events, "--motion", motion,
         "--tr", args.tr, "--noise-model", noise_model, "--signal-scaling", args.signal_scaling,
         "--hrf", args.hrf, "--high-pass", args.high_pass, "--slice-time-ref", args.slice_time_ref,
         "--delay", args.delay, "--min-dof", args.min_dof, "--out", out, "--index", index])
    return np.load(out), pd.read_csv(index, sep="\t", keep_default_na=False, dtype={"row": str, "columns": str})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boldstream", default="target/release/boldstream")
    ap.add_argument("--dims", default="64x64x36")
    ap.add_argument("--voxel-mm", default="3")
    ap.add_argument("--volumes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--tr", type=float, default=1.5)
    ap.add_argument("--hrf", default="glover")
    ap.add_argument("--high-pass", type=float, default=0.01)
    ap.add_argument("--slice-time-ref", type=float, default=0.0)
    ap.add_argument("--delay", type=float, default=7.5)
    ap.add_argument("--min-dof", type=int, default=5)
    ap.add_argument("--signal-scaling", default="percent")
    ap.add_argument("--fixtures", help="write a small test problem and nilearn's betas here")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    exe = pathlib.Path(args.boldstream).resolve()
    if args.fixtures:
        args.dims, args.voxel_mm, args.volumes = "24x24x14", "8", 120
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        paths = simulate(exe, work, args.dims, args.voxel_mm, args.volumes, args.seed)
        raw, mask = nib.load(str(paths[0])), nib.load(str(paths[1]))
        # Same voxel values, held as float64: nilearn otherwise does its
        # percent scaling in float32, where 100·(y/mean − 1) keeps only
        # ~5 significant digits — its own error, not a difference in method.
        img = nib.Nifti1Image(np.asarray(raw.dataobj, dtype=np.float64), raw.affine)
        motion = np.loadtxt(paths[2], ndmin=2)
        events = pd.read_csv(paths[3], sep="\t")
        n_vox = int(np.asarray(mask.dataobj).astype(bool).sum())
        for noise_model in ("ols", "ar1"):
            betas, index = ours(exe, work, paths, noise_model, args)
            times = []
            theirs = nilearn_betas(img, mask, events, motion, index, noise_model, args, times)
            worst, worst_abs, count, trials = compare(betas, theirs, index)
            results[noise_model] = {
                "trials": trials, "betas": count, "voxels": n_vox, "volumes": args.volumes,
                "max_rel_error": worst, "max_abs_error_over_rms": worst_abs,
                "nilearn_seconds_by_frames": times,
            }
            if args.fixtures:
                fx = pathlib.Path(args.fixtures)
                fx.mkdir(parents=True, exist_ok=True)
                ok = index[index["status"] == "ok"]
                np.save(fx / f"nilearn_{noise_model}.npy",
                        np.ascontiguousarray(np.stack([theirs[int(k)] for k in ok["trial"]]), dtype=np.float64))
                ok[["trial", "frames", "columns"]].to_csv(fx / f"nilearn_{noise_model}.tsv", sep="\t", index=False)
        if args.fixtures:
            fx = pathlib.Path(args.fixtures)
            data = apply_mask(raw, mask).astype(np.float32)  # (frames, voxels), np.where order
            np.save(fx / "masked.npy", np.ascontiguousarray(data))
            (fx / "motion.par").write_text(paths[2].read_text())
            (fx / "events.tsv").write_text(paths[3].read_text())
            (fx / "settings.toml").write_text(
                f"tr = {args.tr}\nhrf = \"{args.hrf}\"\nhigh_pass = {args.high_pass}\n"
                f"slice_time_ref = {args.slice_time_ref}\ndelay = {args.delay}\nmin_dof = {args.min_dof}\n"
                f"signal_scaling = \"{args.signal_scaling}\"\nframes = {args.volumes}\n"
            )
    for nm, r in results.items():
        t = np.array([s for _, s in r["nilearn_seconds_by_frames"]])
        print(f"{nm.upper():4} {r['trials']} trials x {r['voxels']} voxels ({r['betas']} betas), {r['volumes']} volumes: "
              f"max relative error {r['max_rel_error']:.2e}, max |error|/rms {r['max_abs_error_over_rms']:.2e}; "
              f"nilearn median {np.median(t) * 1e3:.0f} ms per beta")
    for nm, r in results.items():
        parts = []
        for target in (50, 150, 300):
            near = [sec for f, sec in r["nilearn_seconds_by_frames"] if abs(f - target) <= 12]
            if near:
                parts.append(f"{target} volumes {np.median(near) * 1e3:.0f} ms (n={len(near)})")
        if parts:
            print(f"nilearn {nm.upper()} time per beta, one thread: " + "; ".join(parts))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    tol = {"ols": 1e-4, "ar1": 1e-3}
    bad = [nm for nm, r in results.items() if r["max_rel_error"] >= tol[nm]]
    if bad:
        print("PARITY FAILED:", ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
