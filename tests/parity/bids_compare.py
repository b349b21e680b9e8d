"""Read boldstream's BIDS derivatives back with pandas and nilearn.

    python tests/parity/bids_compare.py SESSION_DIR

For every `*_desc-confounds_timeseries.tsv` under SESSION_DIR/derivatives:
- pandas reads it (`n/a` as missing); the columns are fMRIPrep's names;
  the first row's FD, DVARS and std_dvars are missing, no other is;
- trans_*/rot_* equal the session store's float64 parameters (params.npy,
  MCFLIRT order rx ry rz tx ty tz) and FD/DVARS equal qc.tsv (to the
  precision qc.tsv prints);
- std_dvars (relative to its largest value) equals Nipype's `compute_dvars` definition computed here with
  numpy from the stored masked voxels (masked.npy): per-voxel robust SD
  (IQR / 1.349) and lag-1 Yule-Walker autocorrelation of the demeaned
  series, DVARS / mean(sqrt(2 (1 - ar1)) * sd);
- nilearn's `load_confounds(strategy=("motion", "scrub"))` loads it through
  the fMRIPrep file naming and JSON sidecar, and its motion columns are the
  file's.
Prints one line per run and exits non-zero on any disagreement.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from nilearn.interfaces.fmriprep import load_confounds

COLUMNS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
           "framewise_displacement", "dvars", "std_dvars"]


def nipype_std_dvars(masked):
    func = masked.astype(np.float64).T  # voxels x time
    sd = (np.percentile(func, 75, axis=1) - np.percentile(func, 25, axis=1)) / 1.349
    d = func - func.mean(axis=1, keepdims=True)
    r0 = (d * d).sum(axis=1)
    r1 = (d[:, :-1] * d[:, 1:]).sum(axis=1)
    keep = r0 > 0
    ar1 = r1[keep] / r0[keep]
    diff_sd_mean = (np.sqrt(np.clip(2 * (1 - ar1), 0, None)) * sd[keep]).mean()
    dvars = np.sqrt(np.square(np.diff(func, axis=1)).mean(axis=0))
    return dvars / diff_sd_mean


def main(session):
    root = session / "derivatives"
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative", desc
    assert desc["GeneratedBy"][0]["Name"] == "boldstream", desc
    files = sorted(root.glob("sub-*/func/*_desc-confounds_timeseries.tsv"))
    assert files, f"no confounds files under {root}"
    worst = {"params": 0.0, "fd": 0.0, "dvars": 0.0, "std_dvars": 0.0}
    for tsv in files:
        run = int(tsv.name.split("_run-")[1][:2])
        df = pd.read_csv(tsv, sep="\t")
        assert list(df.columns) == COLUMNS, list(df.columns)
        first = df.iloc[0]
        assert first[["framewise_displacement", "dvars", "std_dvars"]].isna().all(), first
        assert not df.iloc[1:].isna().any().any(), df[df.iloc[:, :].isna().any(axis=1)]
        rundir = session / f"run-{run:02d}"
        params = np.load(rundir / "params.npy")[:, :6]
        masked = np.load(rundir / "masked.npy")
        assert len(params) == len(df) == len(masked), (len(params), len(df), len(masked))
        mine = df[["rot_x", "rot_y", "rot_z", "trans_x", "trans_y", "trans_z"]].to_numpy()
        worst["params"] = max(worst["params"], float(np.abs(mine - params).max()))
        qc = pd.read_csv(rundir / "qc.tsv", sep="\t")
        qc = qc[qc["status"] != "missing"].reset_index(drop=True)
        for col, name in [("framewise_displacement", "fd"), ("dvars", "dvars")]:
            a = df[col].to_numpy()[1:]
            b = qc[name].to_numpy()[1 : len(df)].astype(float)
            worst[name] = max(worst[name], float(np.abs(a - b).max()))
        want = nipype_std_dvars(masked)
        got = df["std_dvars"].to_numpy()[1:]
        worst["std_dvars"] = max(worst["std_dvars"], float(np.abs(got - want).max() / want.max()))
        img = str(tsv).replace("_desc-confounds_timeseries.tsv", "_desc-preproc_bold.nii.gz")
        conf, sample_mask = load_confounds(
            img, strategy=("motion", "scrub"), motion="basic", scrub=0,
            fd_threshold=0.5, std_dvars_threshold=1.5, demean=False,
        )
        assert set(conf.columns) == set(COLUMNS[:6]), list(conf.columns)
        assert np.allclose(conf[COLUMNS[:6]].to_numpy(), df[COLUMNS[:6]].to_numpy()), "motion"
        kept = len(df) if sample_mask is None else len(sample_mask)
        print(f"{tsv.name}: {len(df)} rows; nilearn load_confounds keeps {kept} "
              f"of {len(df)} volumes (FD > 0.5 mm or std_dvars > 1.5 scrubbed)")
    print("max differences: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    # qc.tsv prints FD with 4 decimals and DVARS with 3: half its last digit.
    tol = {"params": 1e-9, "fd": 0.5e-4 + 1e-9, "dvars": 0.5e-3 + 1e-9, "std_dvars": 1e-5}
    bad = [k for k, v in worst.items() if not v <= tol[k]]
    if bad:
        print(f"FAILED: {bad} above {tol}")
        return 1
    print("BIDS derivatives agree")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
