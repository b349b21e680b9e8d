#!/usr/bin/env python3
"""MindEye2's sampling loops, ported to PyTorch, run on the --tiny modules, and
saved as the fixtures tests/mindeye2_sampling.rs replays in Rust.

The port follows the published code's arithmetic (read, not copied):
  * the prior: dalle2-pytorch 1.15.6 `DiffusionPrior.p_sample_loop_ddim`, as
    MindEye2's `BrainDiffusionPrior.p_sample_loop(..., timesteps=20,
    cond_scale=1.)` calls it: float32 `linspace(-1, T, 21)[:-1]`, truncated,
    reversed (19 calls at t = 94, 89, ..., 4); the update's alphas are the
    float32 `alphas_cumprod_prev` buffer, the predicted noise uses
    `sqrt_recip_alphas_cumprod` / `sqrt_recipm1_alphas_cumprod` at t; eta = 1,
    fresh noise after every call whose next time is > 0 (18 draws);
  * the unCLIP: MindEye2 `utils.unclip_recon` (z, the fresh-noise
    unconditional tokens, the start noise, the 0.04 offset scalar, drawn in
    that order; noised_z = (z + sigma0 * noise) / sqrt(1 + sigma0^2)) then
    sgm's `EulerEDMSampler` with `LegacyDDPMDiscretization` (38 steps, the
    sqrt(1 + sigma0^2) of `prepare_sampling_loop`, gamma = 0) and
    `VanillaCFG` (scale 5, batch [uncond; cond], x_u + s (x_c - x_u) on the
    denoised output), then the first-stage decode (the vae_decoder graph).

The random-weight tiny prior is chaotic (a 1e-6 relative change of its
start noise moves its final sample by ~3e-3), which no two float32
implementations survive; the script therefore also saves the sample given to
each prior call and the network's answer, so that the loop arithmetic can be
checked on its own with the answers replayed.

The graphs are the PyTorch modules the committed ONNX files were exported
from: `onnx/export_mindeye2.py --tiny --seed 0` builds them from the seed,
and this script first checks that they reproduce the committed reference
outputs (tests/fixtures/mindeye2_tiny/reference), so the fixtures belong to
those graphs. The noise comes from numpy (seed 20261204), saved with the
results: the Rust test feeds the same values in the same order.

    python tests/parity/mindeye2_sampling.py      # needs torch (onnx/requirements-export.txt)

writes tests/fixtures/mindeye2_tiny/sampling/*.npy; rerunning writes the
same files.
"""

import pathlib
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "onnx"))
import export_mindeye2 as X  # noqa: E402
import mindeye2_modules as M  # noqa: E402

FIX = ROOT / "tests/fixtures/mindeye2_tiny"
OUT = FIX / "sampling"
PRIOR_STEPS = 20          # recon_inference: p_sample_loop(..., timesteps=20)
UNCLIP_STEPS = 38         # recon_inference: sampler num_steps = 38
GUIDANCE = 5.0            # unclip6.yaml VanillaCFG scale
OFFSET = 0.04             # unclip_recon offset_noise_level


def modules():
    torch.manual_seed(0)  # what export_mindeye2.py --tiny --seed 0 does before build_all
    cfg = M.tiny_config()
    mods = X.build_all(cfg)
    g = {n: X.graph_module(n, mods, cfg).eval() for n in ("backbone", "prior", "unclip_step", "vae_decoder")}
    ref = FIX / "reference"
    load = lambda n: torch.from_numpy(np.load(ref / f"{n}.npy"))
    with torch.no_grad():
        checks = {
            "prior": (g["prior"](load("prior_x_t"), load("prior_t"), load("prior_cond")), load("prior_x0")),
            "unclip_step": (g["unclip_step"](load("unclip_step_x"), load("unclip_step_sigma"),
                                             load("unclip_step_context")), load("unclip_step_denoised")),
            "vae_decoder": (g["vae_decoder"](load("vae_decoder_latent")), load("vae_decoder_image")),
        }
    for n, (got, want) in checks.items():
        err = (got - want).abs().max().item() / want.abs().max().item()
        if err > 1e-6:
            sys.exit(f"{n}: the rebuilt module is not the committed export (relative error {err:.2e})")
    return cfg, g


class Draws:
    """Standard-normal float32 draws, recorded in the order they are taken."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.taken = []

    def randn(self, *shape):
        v = self.rng.standard_normal(shape, dtype=np.float32)
        self.taken.append(v.ravel())
        return torch.from_numpy(v)

    def all(self):
        return np.concatenate(self.taken).astype(np.float32)


def prior_ddim(step, scheduler, cond, draws, timesteps=PRIOR_STEPS, eta=1.0, record=None):
    total = scheduler.alphas_cumprod.shape[0]
    alphas = scheduler.alphas_cumprod_prev
    times = torch.linspace(-1.0, total, steps=timesteps + 1)[:-1]
    times = list(reversed(times.int().tolist()))
    x = draws.randn(*cond.shape)
    for time, time_next in zip(times[:-1], times[1:]):
        alpha, alpha_next = alphas[time], alphas[time_next]
        t = torch.full((cond.shape[0],), time, dtype=torch.long)
        x_start = step(x, t, cond)
        if record is not None:
            record.append((x.clone(), x_start.clone()))
        pred_noise = ((scheduler.sqrt_recip_alphas_cumprod[time] * x - x_start)
                      / scheduler.sqrt_recipm1_alphas_cumprod[time])
        if time_next < 0:
            x = x_start
            continue
        c1 = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
        c2 = ((1 - alpha_next) - torch.square(c1)).sqrt()
        noise = draws.randn(*x.shape) if time_next > 0 else 0.0
        x = x_start * alpha_next.sqrt() + c1 * noise + c2 * pred_noise
    return x, len(times) - 1


def unclip_recon(cfg, denoiser, cond, draws, record=None):
    L = cfg.latent_hw
    z = draws.randn(1, 4, L, L)
    uc = draws.randn(*cond.shape)                     # fresh N(0,1) unconditional tokens
    noise = draws.randn(1, 4, L, L)
    sigmas = M.sampler_sigmas(cfg, UNCLIP_STEPS)       # 38 descending, then 0 (float32)
    sigma0 = sigmas[0]
    noise = noise + OFFSET * draws.randn(1)[:, None, None, None]
    noised_z = z + noise * sigma0
    noised_z = noised_z / torch.sqrt(1.0 + sigma0 ** 2.0)
    x = noised_z * torch.sqrt(1.0 + sigmas[0] ** 2.0)  # sgm prepare_sampling_loop
    s_in = x.new_ones([1])
    for i in range(len(sigmas) - 1):
        sigma, next_sigma = s_in * sigmas[i], s_in * sigmas[i + 1]
        d_all = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([uc, cond]))
        if record is not None:
            record.append((x.clone(), d_all.clone()))
        d_u, d_c = d_all.chunk(2)
        denoised = d_u + GUIDANCE * (d_c - d_u)
        d = (x - denoised) / sigma[:, None, None, None]
        x = x + (next_sigma - sigma)[:, None, None, None] * d
    return x, len(sigmas) - 1


def main():
    cfg, g = modules()
    cond = torch.from_numpy(np.load(FIX / "reference/backbone_tokens.npy"))
    prior_draws, unclip_draws = Draws(20261204), Draws(20261205)
    calls = []
    with torch.no_grad():
        prior_out, prior_calls = prior_ddim(g["prior"], g["prior"].prior.noise_scheduler, cond, prior_draws,
                                            record=calls)
        steps = []
        latent, unclip_calls = unclip_recon(cfg, g["unclip_step"], prior_out, unclip_draws, record=steps)
        image = g["vae_decoder"](latent)
    OUT.mkdir(parents=True, exist_ok=True)
    files = {
        "cond.npy": cond.numpy(),
        "prior_noise.npy": prior_draws.all(),
        "prior_out.npy": prior_out.numpy(),
        "prior_calls_x.npy": torch.stack([c[0] for c in calls]).numpy(),
        "prior_calls_x0.npy": torch.stack([c[1] for c in calls]).numpy(),
        "unclip_noise.npy": unclip_draws.all(),
        "latent.npy": latent.numpy(),
        "unclip_calls_x.npy": torch.stack([c[0] for c in steps]).numpy(),
        "unclip_calls_denoised.npy": torch.stack([c[1] for c in steps]).numpy(),
        "image.npy": image.numpy(),
    }
    for name, v in files.items():
        np.save(OUT / name, v.astype(np.float32))
    lines = [
        "# MindEye2's sampling on the --tiny graphs (PyTorch port)", "",
        "Written by `python tests/parity/mindeye2_sampling.py` (see its docstring for what it ports).",
        f"Prior: {prior_calls} calls (dalle2 DDIM grid, eta 1), {prior_draws.all().size} noise values "
        "(start, then one sample per call whose next time is > 0).",
        "prior_calls_x / prior_calls_x0: the sample given to each prior call and the network's x0 for it "
        "(the random-weight tiny prior amplifies a 1e-6 change of its start noise to ~3e-3 of its output, "
        "so the Rust test also replays these outputs to check the loop's arithmetic on its own); "
        "unclip_calls_x / unclip_calls_denoised: the same for the unCLIP steps ([uncond; cond] outputs).",
        f"unCLIP: {unclip_calls} Euler steps over the LegacyDDPM grid, guidance {GUIDANCE} batched "
        f"[uncond; cond], offset noise {OFFSET}; {unclip_draws.all().size} noise values "
        "(z, unconditional tokens, start noise, offset scalar).", "",
        "| file | shape |", "| --- | --- |",
    ]
    lines += [f"| {n} | {list(v.shape)} |" for n, v in files.items()]
    (OUT / "README.md").write_text("\n".join(lines) + "\n")
    print(f"prior {prior_calls} calls, |x0| max {prior_out.abs().max():.4f}; unCLIP {unclip_calls} steps, "
          f"|latent| max {latent.abs().max():.4f}; image mean {image.mean():.4f} -> {OUT}")


if __name__ == "__main__":
    main()
