#!/usr/bin/env python3
"""Reference samplers for the decode stage, in numpy, and the fixtures the Rust
sampler tests check against.

The algorithms are written straight from onnx/README.md ("Samplers"), which
cites the papers: DDIM (Song et al. 2021) with eta = 0 and eta > 0, DDPM (Ho et
al. 2020, with skipped steps), both over a linear or cosine (Nichol & Dhariwal)
discrete schedule with x0, eps or v predictions, and the deterministic Euler
sampler of EDM (Karras et al. 2022) with x0 or eps predictions; classifier-free
guidance on the raw model output, the unconditional pass giving the model an
all-zero conditioning.

Used two ways:
  * as a module (onnx/build_demo.py imports it for its self-check): the model
    is any callable model(x, noise_input, cond) -> output;
  * as a script, from the repository root, with only numpy installed:
        python tests/parity/samplers.py
    writes one TOML file per case into tests/fixtures/samplers/ (format in
    tests/fixtures/samplers/README.md). Every case uses the analytic model
        out = (a0 + a1 * u) * x + b * cond + c
    with u = t / train_steps for the discrete samplers and u = 1 / (1 + sigma^2)
    for Euler, and saves the initial noise and every per-step noise draw, so the
    Rust test injects the same noise. Rerunning writes identical files.
"""

import math
import pathlib

import numpy as np


# --- schedules -------------------------------------------------------------

def alphas_cumprod(kind, train_steps, beta_start=None, beta_end=None):
    """abar_i for i = 0 .. train_steps-1 (float64) of a `linear` or `cosine` schedule."""
    T = train_steps
    if kind == "linear":
        betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    elif kind == "cosine":
        f = lambda t: math.cos(((t / T + 0.008) / 1.008) * math.pi / 2) ** 2
        betas = np.array([min(1.0 - f(i + 1) / f(i), 0.999) for i in range(T)])
    else:
        raise ValueError(f"unknown schedule kind {kind!r}")
    return np.cumprod(1.0 - betas)


def inference_timesteps(train_steps, steps):
    """Descending timesteps t_n = (N-1-n)*k, k = T div N, and the step k."""
    k = train_steps // steps
    return [(steps - 1 - n) * k for n in range(steps)], k


def karras_sigmas(steps, sigma_min, sigma_max, rho):
    """sigma_0 .. sigma_{N-1} of EDM's schedule, then sigma_N = 0 (N + 1 values)."""
    if steps < 2:
        raise ValueError("the Euler schedule needs at least 2 steps (i / (N - 1))")
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    s = [(hi + i / (steps - 1) * (lo - hi)) ** rho for i in range(steps)]
    return np.array(s + [0.0])


# --- one guided model evaluation ------------------------------------------

def guided(model, x, noise_input, cond, guidance):
    """out_uncond + g * (out_cond - out_uncond); just out_cond when g == 1."""
    out = model(x, noise_input, cond)
    if guidance == 1.0:
        return out
    unc = model(x, noise_input, np.zeros_like(cond))
    return unc + guidance * (out - unc)


def x0_eps(pred, prediction, x, abar):
    """(x0_hat, eps_hat) from a discrete model's output at cumulative alpha abar."""
    if prediction == "x0":
        x0 = pred
    elif prediction == "eps":
        x0 = (x - math.sqrt(1.0 - abar) * pred) / math.sqrt(abar)
    elif prediction == "v":
        x0 = math.sqrt(abar) * x - math.sqrt(1.0 - abar) * pred
    else:
        raise ValueError(f"unknown prediction {prediction!r}")
    eps = (x - math.sqrt(abar) * x0) / math.sqrt(1.0 - abar)
    return x0, eps


# --- samplers --------------------------------------------------------------
# Each returns (final sample, list of the sample after every step).

def ddim(model, cond, z, step_noise, abar, steps, prediction, eta, guidance):
    """DDIM: x_p = sqrt(abar_p) x0 + sqrt(1 - abar_p - s^2) eps + s z_n.

    z: initial noise; step_noise[n]: the z of step n (unused, may be None, when eta == 0).
    The model's noise input is the integer timestep t.
    """
    ts, k = inference_timesteps(len(abar), steps)
    x, traj = z, []
    for n, t in enumerate(ts):
        a_t = abar[t]
        a_p = abar[t - k] if t - k >= 0 else 1.0
        x0, eps = x0_eps(guided(model, x, t, cond, guidance), prediction, x, a_t)
        s = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
        x = math.sqrt(a_p) * x0 + math.sqrt(max(1 - a_p - s * s, 0.0)) * eps
        if eta != 0.0:
            x = x + s * step_noise[n]
        traj.append(x)
    return x, traj


def ddpm(model, cond, z, step_noise, abar, steps, prediction, guidance):
    """DDPM posterior step with skipped timesteps; no noise at the last step."""
    ts, k = inference_timesteps(len(abar), steps)
    x, traj = z, []
    for n, t in enumerate(ts):
        a_t = abar[t]
        a_p = abar[t - k] if t - k >= 0 else 1.0
        x0, _ = x0_eps(guided(model, x, t, cond, guidance), prediction, x, a_t)
        alpha = a_t / a_p
        beta = 1.0 - alpha
        x_new = (math.sqrt(a_p) * beta / (1 - a_t)) * x0 + (math.sqrt(alpha) * (1 - a_p) / (1 - a_t)) * x
        if n < steps - 1:
            x_new = x_new + math.sqrt(beta * (1 - a_p) / (1 - a_t)) * step_noise[n]
        x = x_new
        traj.append(x)
    return x, traj


def euler(model, cond, z, sigmas, prediction, guidance):
    """Deterministic Euler (EDM): x = sigma_0 z; x += (s_{i+1} - s_i)(x - D)/s_i.

    The model's noise input is sigma_i; `eps` models give D = x - sigma_i eps_hat.
    """
    x, traj = sigmas[0] * z, []
    for i in range(len(sigmas) - 1):
        s = sigmas[i]
        out = guided(model, x, s, cond, guidance)
        if prediction == "x0":
            d_hat = out
        elif prediction == "eps":
            d_hat = x - s * out
        else:
            raise ValueError(f"Euler takes x0 or eps predictions, not {prediction!r}")
        x = x + (sigmas[i + 1] - s) * (x - d_hat) / s
        traj.append(x)
    return x, traj


# --- fixtures --------------------------------------------------------------

SHAPE = (1, 4, 3)

# name, sampler, settings. Discrete cases: schedule (kind, train_steps, beta_start,
# beta_end), steps, prediction, eta (ddim), guidance. Euler: steps, sigma_min,
# sigma_max, rho, prediction, guidance. Model coefficients (a0, a1, b, c).
LIN = ("linear", 1000, 0.0001, 0.02)
COS = ("cosine", 1000, None, None)
CASES = [
    ("ddim_linear_x0_eta0_g1", "ddim", dict(schedule=LIN, steps=20, prediction="x0", eta=0.0, guidance=1.0), (0.5, 0.3, 0.4, 0.05)),
    ("ddim_linear_eps_eta0_g1", "ddim", dict(schedule=LIN, steps=20, prediction="eps", eta=0.0, guidance=1.0), (0.2, 0.6, 0.3, -0.02)),
    ("ddim_linear_v_eta0_g1", "ddim", dict(schedule=LIN, steps=20, prediction="v", eta=0.0, guidance=1.0), (0.3, 0.4, 0.5, 0.01)),
    ("ddim_cosine_eps_eta0_g1", "ddim", dict(schedule=COS, steps=25, prediction="eps", eta=0.0, guidance=1.0), (0.1, 0.7, 0.2, 0.0)),
    ("ddim_linear_x0_eta0_g2.5", "ddim", dict(schedule=LIN, steps=20, prediction="x0", eta=0.0, guidance=2.5), (0.5, 0.3, 0.4, 0.05)),
    ("ddim_linear_eps_eta0.5_g1", "ddim", dict(schedule=LIN, steps=20, prediction="eps", eta=0.5, guidance=1.0), (0.2, 0.6, 0.3, -0.02)),
    ("ddim_cosine_v_eta1_g3", "ddim", dict(schedule=COS, steps=10, prediction="v", eta=1.0, guidance=3.0), (0.3, 0.4, 0.5, 0.01)),
    ("ddim_linear_x0_eta0_g1_1step", "ddim", dict(schedule=LIN, steps=1, prediction="x0", eta=0.0, guidance=1.0), (0.5, 0.3, 0.4, 0.05)),
    ("ddpm_linear_eps_g1", "ddpm", dict(schedule=LIN, steps=50, prediction="eps", guidance=1.0), (0.2, 0.6, 0.3, -0.02)),
    ("ddpm_linear_x0_g2", "ddpm", dict(schedule=LIN, steps=20, prediction="x0", guidance=2.0), (0.5, 0.3, 0.4, 0.05)),
    ("ddpm_cosine_v_g1", "ddpm", dict(schedule=COS, steps=20, prediction="v", guidance=1.0), (0.3, 0.4, 0.5, 0.01)),
    ("ddpm_linear_eps_g1.5_7steps", "ddpm", dict(schedule=LIN, steps=7, prediction="eps", guidance=1.5), (0.2, 0.6, 0.3, -0.02)),
    ("euler_x0_g1", "euler", dict(steps=12, sigma_min=0.002, sigma_max=80.0, rho=7.0, prediction="x0", guidance=1.0), (0.0, 1.0, 0.4, 0.05)),
    ("euler_eps_g1", "euler", dict(steps=12, sigma_min=0.002, sigma_max=80.0, rho=7.0, prediction="eps", guidance=1.0), (0.0, 0.9, 0.3, -0.02)),
    ("euler_x0_g1.5", "euler", dict(steps=12, sigma_min=0.002, sigma_max=80.0, rho=7.0, prediction="x0", guidance=1.5), (0.0, 1.0, 0.4, 0.05)),
    ("euler_eps_g2_rho3_5steps", "euler", dict(steps=5, sigma_min=0.01, sigma_max=20.0, rho=3.0, prediction="eps", guidance=2.0), (0.05, 0.8, 0.3, 0.0)),
]


def analytic_model(coef, train_steps=None):
    """out = (a0 + a1 u) x + b cond + c; u = t / train_steps, or 1 / (1 + sigma^2) for Euler."""
    a0, a1, b, c = coef

    def model(x, noise_input, cond):
        u = noise_input / train_steps if train_steps else 1.0 / (1.0 + noise_input * noise_input)
        return (a0 + a1 * u) * x + b * cond + c
    return model


def run_case(sampler, cfg, coef, cond, z, step_noise, dtype):
    """Final sample and trajectory of one fixture case, every array and scalar in `dtype`."""
    cast = lambda a: None if a is None else np.asarray(a, dtype=dtype)
    cond, z, step_noise = cast(cond), cast(z), cast(step_noise)
    coef = tuple(dtype(v) for v in coef)
    if sampler == "euler":
        sig = karras_sigmas(cfg["steps"], cfg["sigma_min"], cfg["sigma_max"], cfg["rho"]).astype(dtype)
        return euler(_typed(analytic_model(coef), dtype), cond, z, sig, cfg["prediction"], cfg["guidance"])
    kind, T, b0, b1 = cfg["schedule"]
    abar = alphas_cumprod(kind, T, b0, b1).astype(dtype)
    model = _typed(analytic_model(coef, dtype(T)), dtype)
    if sampler == "ddim":
        return ddim(model, cond, z, step_noise, abar, cfg["steps"], cfg["prediction"], cfg["eta"], cfg["guidance"])
    return ddpm(model, cond, z, step_noise, abar, cfg["steps"], cfg["prediction"], cfg["guidance"])


def _typed(model, dtype):
    """The model with its noise input and output held in `dtype`."""
    return lambda x, s, cond: np.asarray(model(x, dtype(s), cond), dtype=dtype)


def toml_floats(a):
    """A flat TOML array of float64 numbers that round-trip exactly (C order)."""
    return "[" + ", ".join(repr(float(v)) for v in np.asarray(a, dtype=np.float64).ravel()) + "]"


def write_fixtures(out_dir):
    """Write one <case>.toml per entry of CASES into out_dir; return the case names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for idx, (name, sampler, cfg, coef) in enumerate(CASES):
        rng = np.random.default_rng(1000 + idx)
        cond = rng.standard_normal(SHAPE)
        z = rng.standard_normal(SHAPE)
        stochastic = sampler == "ddpm" or (sampler == "ddim" and cfg["eta"] != 0.0)
        step_noise = rng.standard_normal((cfg["steps"],) + SHAPE) if stochastic else None
        final, traj = run_case(sampler, cfg, coef, cond, z, step_noise, np.float64)
        final32, _ = run_case(sampler, cfg, coef, cond, z, step_noise, np.float32)
        dev32 = float(np.max(np.abs(final32.astype(np.float64) - final)))
        scale = float(np.max(np.abs(final)))

        lines = ["# Sampler fixture, written by tests/parity/samplers.py; format in README.md.",
                 f'name = "{name}"', f'sampler = "{sampler}"', f'prediction = "{cfg["prediction"]}"',
                 f"steps = {cfg['steps']}", f"guidance = {cfg['guidance']!r}"]
        if sampler == "ddim":
            lines.append(f"eta = {cfg['eta']!r}")
        if sampler == "euler":
            lines += [f"sigma_min = {cfg['sigma_min']!r}", f"sigma_max = {cfg['sigma_max']!r}",
                      f"rho = {cfg['rho']!r}",
                      f"sigmas = {toml_floats(karras_sigmas(cfg['steps'], cfg['sigma_min'], cfg['sigma_max'], cfg['rho']))}"]
        else:
            kind, T, b0, b1 = cfg["schedule"]
            ts, _ = inference_timesteps(T, cfg["steps"])
            abar = alphas_cumprod(kind, T, b0, b1)
            sched = f'kind = "{kind}", train_steps = {T}'
            if kind == "linear":
                sched += f", beta_start = {b0!r}, beta_end = {b1!r}"
            lines += [f"schedule = {{ {sched} }}", f"timesteps = [{', '.join(map(str, ts))}]",
                      f"alphas_cumprod = {toml_floats([abar[t] for t in ts])}"]
        a0, a1, b, c = coef
        u = "t / train_steps" if sampler != "euler" else "1 / (1 + sigma^2)"
        lines += [f'model = {{ a0 = {a0!r}, a1 = {a1!r}, b = {b!r}, c = {c!r}, u = "{u}" }}',
                  f"shape = [{', '.join(map(str, SHAPE))}]",
                  f"cond = {toml_floats(cond)}",
                  f"init_noise = {toml_floats(z)}"]
        if step_noise is not None:
            lines.append("step_noise = [\n" + "".join(f"  {toml_floats(r)},\n" for r in step_noise) + "]")
        lines += ["trajectory = [\n" + "".join(f"  {toml_floats(r)},\n" for r in traj) + "]",
                  f"final = {toml_floats(final)}",
                  f"final_max_abs = {scale!r}",
                  f"float32_max_abs_deviation = {dev32!r}"]
        (out_dir / f"{name}.toml").write_text("\n".join(lines) + "\n")
        names.append((name, scale, dev32))
    return names


if __name__ == "__main__":
    out = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "samplers"
    for name, scale, dev in write_fixtures(out):
        print(f"{name:34s} max|final| {scale:9.4f}   float32 run deviates by {dev:.2e}")
