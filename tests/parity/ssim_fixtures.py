#!/usr/bin/env python3
"""Fixtures for the report's image metrics: scikit-image SSIM and PixCorr the
way MindEye2's evaluation notebook computes them, on a handful of
deterministic image pairs, so tests/report.rs checks boldstream's metrics
against them without Python.

Run from the repository root with numpy, scikit-image and pillow installed:
    python tests/parity/ssim_fixtures.py

Conventions (MindEye2 final_evaluations):
  PixCorr  Pearson correlation of the flattened images, all channels;
  SSIM     on rgb2gray images (0.2125 R + 0.7154 G + 0.0721 B) with
           structural_similarity(rec, im, gaussian_weights=True, sigma=1.5,
           use_sample_covariance=False, data_range=1.0).
Images are the 8-bit PNGs as written here, read back as uint8 / 255 in
float64, which is what boldstream's read_png gives (in f32).

Writes into tests/fixtures/ssim/:
  stim_K.png, recon_K.png   RGB pairs, K = 0..5, all 40x33 (non-square, so a
                            transposed image cannot pass)
  grey_stim.png, grey_recon.png
                            a greyscale pair, 27x31
  expected.tsv              per pair: name, pixcorr, ssim
  two_way.tsv               over the RGB pairs as trials (recon_K shown stim_K):
                            two-way identification by PixCorr and by SSIM
                            (for each trial i, the fraction of j != i with
                            metric(recon_i, stim_i) > metric(recon_i, stim_j),
                            averaged), and the mean PixCorr and SSIM
"""

import pathlib

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

out = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "ssim"
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(20240517)
H, W = 40, 33


def smooth(h, w, c, s):
    """Blurred noise stretched to [0, 1]: image-like structure at scale s."""
    x = gaussian_filter(rng.standard_normal((h, w, c)), sigma=(s, s, 0))
    x -= x.min()
    return x / x.max()


def q8(x):
    return np.clip(np.round(np.clip(x, 0, 1) * 255), 0, 255).astype(np.uint8)


def save(name, x):
    Image.fromarray(x).save(out / name)
    # What the Rust side reads back.
    return np.asarray(Image.open(out / name), dtype=np.float64) / 255.0


def pixcorr(a, b):
    return np.corrcoef(a.reshape(-1), b.reshape(-1))[0][1]


def ssim(rec, im):
    g = lambda x: rgb2gray(x) if x.ndim == 3 else x
    return structural_similarity(
        g(rec), g(im), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1.0,
    )


stims = [smooth(H, W, 3, s) for s in (2.0, 3.0, 1.5, 2.5, 4.0, 1.0)]
recons = [
    stims[0] + 0.15 * rng.standard_normal((H, W, 3)),          # noisy
    gaussian_filter(stims[1], sigma=(2, 2, 0)),                 # blurred
    np.roll(stims[2], (3, -2), axis=(0, 1)),                    # shifted
    smooth(H, W, 3, 2.0),                                       # unrelated
    1.0 - stims[4],                                             # inverted
    0.6 * stims[5] + 0.2 + 0.05 * rng.standard_normal((H, W, 3)),  # dimmed
]

rows = []
S, R = [], []
for k, (s, r) in enumerate(zip(stims, recons)):
    S.append(save(f"stim_{k}.png", q8(s)))
    R.append(save(f"recon_{k}.png", q8(r)))
    rows.append((f"{k}", pixcorr(S[k], R[k]), ssim(R[k], S[k])))

gs = save("grey_stim.png", q8(smooth(27, 31, 1, 2.0)[..., 0]))
gr = save("grey_recon.png", q8(gs + 0.1 * rng.standard_normal(gs.shape)))
rows.append(("grey", pixcorr(gs, gr), ssim(gr, gs)))

with open(out / "expected.tsv", "w") as f:
    f.write("pair\tpixcorr\tssim\n")
    for name, p, s in rows:
        f.write(f"{name}\t{p:.12f}\t{s:.12f}\n")


def two_way(scores):
    n = len(scores)
    per = [np.mean([scores[i][i] > scores[i][j] for j in range(n) if j != i]) for i in range(n)]
    return float(np.mean(per))


n = len(S)
pc = [[pixcorr(R[i], S[j]) for j in range(n)] for i in range(n)]
ss = [[ssim(R[i], S[j]) for j in range(n)] for i in range(n)]
with open(out / "two_way.tsv", "w") as f:
    f.write("two_way_pixcorr\ttwo_way_ssim\tmean_pixcorr\tmean_ssim\n")
    f.write(
        f"{two_way(pc):.12f}\t{two_way(ss):.12f}\t"
        f"{np.mean([pc[i][i] for i in range(n)]):.12f}\t{np.mean([ss[i][i] for i in range(n)]):.12f}\n"
    )
print(f"wrote {out}")
