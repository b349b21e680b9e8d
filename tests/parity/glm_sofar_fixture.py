#!/usr/bin/env python3
"""nilearn betas the way real-time MindEye computes them, for tests/glm_parity.rs.

Real-time MindEye (brainiak/rtcloud-projects, mindeye/) refits nilearn's
FirstLevelModel on the frames of the run so far at every trial, so each
trial's cosine drift basis is nilearn's for *those* frames (N = frames so
far), not the whole run's basis cut to them. This script takes the committed
GLM fixture (tests/fixtures/glm: masked frames, motion, events, settings, and
the frames and columns each trial used) and writes, next to it,

    nilearn_{ols,ar1}_sofar.npy   (trials, voxels) probe effect sizes
    nilearn_{ols,ar1}_sofar.tsv   trial, frames, columns

where every trial's design is make_first_level_design_matrix(frame_times of
its frames, all events, glover, cosine, high_pass, motion confounds), with the
columns that are zero over those frames dropped (boldstream drops them;
nilearn's pinv gives them a zero coefficient, so the probe is unchanged), and
FirstLevelModel fits it. Run from the repository root with the parity venv:

    .venv/bin/python tests/parity/glm_sofar_fixture.py
"""

import pathlib
import tomllib

import nibabel as nib
import numpy as np
import pandas as pd
from nilearn.glm.first_level import FirstLevelModel, make_first_level_design_matrix
from nilearn.masking import apply_mask

FX = pathlib.Path("tests/fixtures/glm")
MOTION = ["rx", "ry", "rz", "tx", "ty", "tz"]


def main():
    s = tomllib.loads((FX / "settings.toml").read_text())
    data = np.load(FX / "masked.npy").astype(np.float64)  # (frames, voxels)
    frames, voxels = data.shape
    motion = np.loadtxt(FX / "motion.par")[:, :6]
    events = pd.read_csv(FX / "events.tsv", sep="\t")
    # Voxels as a (V, 1, 1) image with a full mask: apply_mask keeps their order.
    # float64, as the data were when the Run-basis fixture was fitted: a float32
    # image makes nilearn scale to percent in float32 (1e-3 relative error).
    img = nib.Nifti1Image(data.T.reshape(voxels, 1, 1, frames), np.eye(4))
    mask = nib.Nifti1Image(np.ones((voxels, 1, 1), np.uint8), np.eye(4))
    for noise in ("ols", "ar1"):
        index = pd.read_csv(FX / f"nilearn_{noise}.tsv", sep="\t")
        betas, rows = [], []
        for _, row in index.iterrows():
            k, n = int(row["trial"]), int(row["frames"])
            ft = np.linspace(s["slice_time_ref"] * s["tr"], (n - 1 + s["slice_time_ref"]) * s["tr"], n)
            ev = events[["onset", "duration"]].copy()
            ev["trial_type"] = ["probe" if i == k else "reference" for i in range(len(events))]
            dm = make_first_level_design_matrix(
                ft, ev, hrf_model=s["hrf"], drift_model="cosine", high_pass=s["high_pass"],
                add_regs=motion[:n], add_reg_names=MOTION, min_onset=-24, oversampling=50)
            keep = [c for c in dm.columns
                    if not (c in ("reference", *MOTION) and np.abs(dm[c].to_numpy()).max() <= 1e-12)]
            dm = dm[keep]
            model = FirstLevelModel(
                t_r=s["tr"], slice_time_ref=s["slice_time_ref"], noise_model=noise,
                signal_scaling=0 if s["signal_scaling"] == "percent" else False,
                mask_img=mask, minimize_memory=True, standardize=False, n_jobs=1)
            model.fit(img.slicer[..., :n], design_matrices=[dm])
            beta = apply_mask(model.compute_contrast("probe", output_type="effect_size"), mask)
            betas.append(beta.astype(np.float64))
            rows.append((k, n, ",".join(keep)))
        np.save(FX / f"nilearn_{noise}_sofar.npy", np.array(betas))
        pd.DataFrame(rows, columns=["trial", "frames", "columns"]).to_csv(
            FX / f"nilearn_{noise}_sofar.tsv", sep="\t", index=False)
        print(f"{noise}: {len(rows)} trials x {voxels} voxels; drift columns per trial:",
              sorted({r[2].count("drift_") for r in rows}))


if __name__ == "__main__":
    main()
