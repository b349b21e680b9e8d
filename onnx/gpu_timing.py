#!/usr/bin/env python3
"""Time one MindEye2 trial on the GPU, in plain torch fp16 at the real sizes, random weights.

    python onnx/gpu_timing.py [--tiny] [--budget-s 4.0] [--hidden 1024] [--trials 3]
                              [--no-compile] [--deadline-s 330] [--json out.json]

Builds the modules of onnx/mindeye2_modules.py directly on the device (random
init, fp16 weights with float32 norms, fused SDPA attention; no ONNX, no
weights needed) and times, per trial:

    ridge + backbone   1 call            voxels [1,8627] -> tokens, clip_voxels, blurry latent
    prior             19 calls, batch 1  dalle2 DDIM grid t = 94 ... 4, eta 1 (the sampler math included)
    unCLIP denoiser   38 calls, batch 2  [uncond; cond], Euler on the LegacyDDPM sigmas, CFG 5
    VAE decoder        1 call            [1,4,96,96] -> [1,3,768,768] (float32, as MindEye2)
    blurry decoder     1 call            [1,4,28,28] -> [1,3,224,224]

with warm-up and the median over --trials, eager and then with torch.compile
(each stage compiled only while the --deadline-s budget allows; the whole script
is meant to finish within 6 minutes on an H200). Prints ms per call and per trial
and whether a trial fits in --budget-s (a trial every 4 s at TR 1.5 s ~ every
third volume). CUDA only, except --tiny, which runs the narrow configuration on
the CPU (float32) as a smoke test.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mindeye2_modules as M  # noqa: E402


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev, trials, warmup=2):
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    for _ in range(trials):
        t = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def prior_alphas(T=100):
    betas = M.cosine_betas(T)
    ac = torch.cumprod(1 - betas, 0)
    acp = torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
    return ac.float(), acp.float()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--budget-s", type=float, default=4.0)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--deadline-s", type=float, default=330.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    start = time.time()

    if torch.cuda.is_available():
        dev = torch.device("cuda")
    elif args.tiny:
        dev = torch.device("cpu")
    else:
        raise SystemExit("no CUDA device: run with --tiny for the CPU smoke test")
    half = dev.type == "cuda"
    dtype = torch.float16 if half else torch.float32
    M.ATTENTION["sdpa"] = True
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = M.tiny_config() if args.tiny else M.Config(hidden=args.hidden)
    torch.manual_seed(0)

    t0 = time.time()
    with torch.device(dev):
        ridge = M.AdapterGraph(M.RidgeRegression(cfg.voxels, cfg.hidden))
        backbone = M.BackboneGraph(M.BrainNetwork(cfg))
        prior = M.PriorStep(M.BrainDiffusionPrior(cfg))
        unclip = M.UnclipDenoiser(M.UnclipWrapper(cfg), cfg)
        vae = M.VaeDecode(M.FirstStage(cfg), cfg.unclip_scale_factor, 0.8, 0.2)
        low = M.VaeDecode(M.LowlevelVae(cfg), cfg.low_scale_factor, 0.5, 0.5)
    mods = [ridge, backbone, prior, unclip, vae, low]
    for m in mods:
        m.to(dev).eval().requires_grad_(False)
    if half:
        for m in (ridge, backbone, prior, unclip):     # the VAEs stay float32 (unclip6: no autocast)
            M.to_half(m)
    counts = {"ridge": M.count(ridge), "backbone": M.count(backbone), "prior": M.unique_count(prior),
              "unclip UNet": M.count(unclip), "VAE decoder": M.count(vae), "blurry decoder": M.count(low)}
    build_s = time.time() - t0
    print(f"device {dev} ({torch.cuda.get_device_name() if half else 'cpu'}), torch {torch.__version__}, "
          f"dtype {dtype}, hidden {cfg.hidden}; built in {build_s:.1f} s")
    for k, v in counts.items():
        print(f"  params {k:15s} {v:>15,d}")
    if half:
        print(f"  GPU memory after build: {torch.cuda.memory_allocated() / 2**30:.1f} GiB")

    T, D, L = cfg.tokens, cfg.width, cfg.latent_hw
    g = torch.Generator(device=dev).manual_seed(0)

    def randn(*s):
        return torch.randn(*s, generator=g, device=dev)

    voxels = randn(1, cfg.voxels)
    ac, acp = (a.to(dev) for a in prior_alphas(cfg.prior_timesteps))
    ac, acp = ac.to(dev), acp.to(dev)
    times = torch.linspace(-1.0, cfg.prior_timesteps, 21)[:-1].int().tolist()[::-1]
    pairs = list(zip(times[:-1], times[1:]))
    sig = M.sampler_sigmas(cfg, 38).tolist()
    img_lat = randn(1, 4, L, L)
    blur_lat = randn(1, 4, cfg.blurry_hw_out, cfg.blurry_hw_out)

    def stage_backbone(fns):
        out = fns["backbone"](fns["ridge"](voxels))
        return out

    def stage_prior(fns, cond):
        x = randn(1, T, D)
        for t, tn in pairs:
            x0 = fns["prior"](x, torch.tensor([t], device=dev), cond)
            a, an = acp[t], acp[tn] if tn >= 0 else None
            if tn < 0:
                x = x0
                break
            eps = (x / ac[t].sqrt() - x0) / (1 / ac[t] - 1).sqrt()
            c1 = ((1 - a / an) * (1 - an) / (1 - a)).sqrt()
            c2 = ((1 - an) - c1 ** 2).sqrt()
            x = x0 * an.sqrt() + c1 * randn(1, T, D) + c2 * eps
        return x

    def stage_unclip(fns, tokens):
        ctx = torch.cat([randn(1, T, D), tokens], 0)
        x = randn(1, 4, L, L) + sig[0] * (randn(1, 4, L, L) + 0.04 * randn(1, 1, 1, 1))
        for i in range(len(sig) - 1):
            s = torch.full((2,), sig[i], device=dev)
            d = fns["unclip"](torch.cat([x, x], 0), s, ctx)
            d = d[:1] + 5.0 * (d[1:] - d[:1])
            x = x + (sig[i + 1] - sig[i]) * (x - d) / sig[i]
        return x

    def run_mode(fns, label):
        res = {}
        with torch.inference_mode():
            cond = randn(1, T, D)
            tok = randn(1, T, D)
            spec = [
                ("ridge + backbone", 1, lambda: stage_backbone(fns)),
                ("prior (19 calls)", 19, lambda: stage_prior(fns, cond)),
                ("unCLIP (38 x batch 2)", 38, lambda: stage_unclip(fns, tok)),
                ("VAE decoder", 1, lambda: fns["vae"](img_lat)),
                ("blurry decoder", 1, lambda: fns["low"](blur_lat)),
            ]
            for name, calls, fn in spec:
                med, all_t = timed(fn, dev, args.trials)
                res[name] = {"calls": calls, "ms_trial": med * 1e3, "ms_call": med * 1e3 / calls,
                             "all_ms": [x * 1e3 for x in all_t]}
                print(f"  [{label}] {name:24s} {med * 1e3:9.1f} ms/trial  {med * 1e3 / calls:8.2f} ms/call", flush=True)

            def whole():
                bb = stage_backbone(fns)
                p = stage_prior(fns, bb[0])
                z = stage_unclip(fns, p)
                fns["vae"](z)
                if cfg.blurry:
                    fns["low"](bb[2])
            med, all_t = timed(whole, dev, args.trials)
            res["whole trial"] = {"calls": 1, "ms_trial": med * 1e3, "ms_call": med * 1e3,
                                  "all_ms": [x * 1e3 for x in all_t]}
            print(f"  [{label}] {'whole trial (chained)':24s} {med * 1e3:9.1f} ms/trial", flush=True)
        return res

    eager = {"ridge": ridge, "backbone": backbone, "prior": prior, "unclip": unclip, "vae": vae, "low": low}
    print("eager (torch.compile off):")
    results = {"eager": run_mode(eager, "eager")}

    if not args.no_compile:
        compiled, notes = dict(eager), {}
        # compile in the order of payoff; each only while the deadline allows
        est = {"unclip": 120, "prior": 40, "vae": 40, "backbone": 30, "low": 20, "ridge": 10}
        for key in ["unclip", "prior", "vae", "backbone", "low", "ridge"]:
            left = args.deadline_s - (time.time() - start)
            if left < est[key] + 30:
                notes[key] = "skipped (deadline)"
                continue
            try:
                compiled[key] = torch.compile(eager[key])
                notes[key] = "compiled"
            except Exception as e:  # noqa: BLE001
                notes[key] = f"compile failed: {type(e).__name__}"
        print("torch.compile (default mode): " + ", ".join(f"{k} {v}" for k, v in notes.items()))
        try:
            t1 = time.time()
            results["compiled"] = run_mode(compiled, "compiled")
            results["compile_notes"] = notes
            print(f"  (compiled run incl. compilation took {time.time() - t1:.0f} s)")
        except Exception as e:  # noqa: BLE001
            print(f"torch.compile run failed: {type(e).__name__}: {str(e)[:300]}")
            results["compile_error"] = f"{type(e).__name__}: {str(e)[:300]}"

    print()
    print(f"{'stage':26s} {'calls':>5s} | {'eager ms/call':>13s} {'ms/trial':>10s} | {'compiled ms/call':>16s} {'ms/trial':>10s}")
    for name, r in results["eager"].items():
        c = results.get("compiled", {}).get(name)
        cs = f"{c['ms_call']:16.2f} {c['ms_trial']:10.1f}" if c else f"{'-':>16s} {'-':>10s}"
        print(f"{name:26s} {r['calls']:5d} | {r['ms_call']:13.2f} {r['ms_trial']:10.1f} | {cs}")
    for mode in ("eager", "compiled"):
        if mode in results:
            w = results[mode]["whole trial"]["ms_trial"] / 1e3
            verdict = "fits" if w <= args.budget_s else "does NOT fit"
            print(f"{mode:9s}: one trial {w:.2f} s -> {verdict} in {args.budget_s:.1f} s "
                  f"({args.budget_s / 1.5:.1f} TRs of 1.5 s); {w / 1.5:.2f} TRs of compute")
    if half:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"total script time {time.time() - start:.0f} s")
    if args.json:
        results["params"] = counts
        results["device"] = str(dev) + (" " + torch.cuda.get_device_name() if half else "")
        results["torch"] = torch.__version__
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
