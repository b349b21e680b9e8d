#!/usr/bin/env python3
"""The decode benchmark's reference: the same model folder run the way a
Python real-time pipeline runs it (onnxruntime's Python API, a numpy DDIM
loop, numpy retrieval), timed the same way as `cargo bench --bench decode`:
per-graph time inside `InferenceSession.run`, and per trial the rest of the
wall time (the pipeline's own overhead) as a share of the trial.

    python tests/parity/decode_reference.py MODEL_DIR SUBJECT_DIR [--trials N]

It reads the manifests with tomllib and supports what the benchmark folder
uses: adapter, backbone (tokens + retrieval head), a DDIM prior (x0, eps or
v), a one-pass decoder, a retrieval bank.
"""

import argparse
import pathlib
import statistics
import time
import tomllib

import numpy as np
import onnxruntime as ort


def linear_abar(spec):
    betas = np.linspace(spec["beta_start"], spec["beta_end"], spec["train_steps"], dtype=np.float64)
    return np.cumprod(1.0 - betas)


class Timed:
    """An InferenceSession whose run() time is added to a list."""

    def __init__(self, path, log):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # CUDA when this onnxruntime has it (onnxruntime-gpu), as the daemon's
        # `auto`; never the Azure provider the CPU wheel lists first.
        wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.sess = ort.InferenceSession(str(path), opts, providers=wanted)
        self.log = log

    def run(self, outputs, feeds):
        t0 = time.perf_counter()
        out = self.sess.run(outputs, feeds)
        self.log.append(time.perf_counter() - t0)
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=pathlib.Path)
    ap.add_argument("subject", type=pathlib.Path)
    ap.add_argument("--trials", type=int, default=5)
    a = ap.parse_args()
    m = tomllib.loads((a.model / "model.toml").read_text())
    s = tomllib.loads((a.subject / "subject.toml").read_text())
    log = {k: [] for k in ("adapter", "backbone", "prior", "decoder")}
    t0 = time.perf_counter()
    adapter = Timed(a.subject / s["adapter"]["file"], log["adapter"])
    backbone = Timed(a.model / m["backbone"]["file"], log["backbone"])
    prior = Timed(a.model / m["prior"]["file"], log["prior"])
    decoder = Timed(a.model / m["decoder"]["file"], log["decoder"])
    bank = np.load(a.model / m["retrieval"]["embeddings"]).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    ids = (a.model / m["retrieval"]["ids"]).read_text().split()
    p = m["prior"]
    abar = linear_abar(p["schedule"])
    steps = p["sampler"]["steps"]
    k = p["schedule"]["train_steps"] // steps
    ts = [(steps - 1 - n) * k for n in range(steps)]
    tok_shape = tuple(m["backbone"]["tokens"]["shape"])
    rng = np.random.default_rng(0)
    # Warm-up: one call per graph, as the daemon does before it is ready.
    vox = np.zeros((1, s["voxels"]), np.float32)
    lat = adapter.run(None, {s["adapter"]["input"]["name"]: vox})[0]
    tok = backbone.run(None, {m["backbone"]["input"]["name"]: lat})[0]
    prior.run(None, {p["sample"]["name"]: tok, p["timestep"]["name"]: np.array([0], np.int64), p["cond"]["name"]: tok})
    decoder.run(None, {m["decoder"]["input"]["name"]: tok})
    for v in log.values():
        v.clear()
    print(f"decode reference (Python onnxruntime {ort.__version__}, {prior.sess.get_providers()[0]}): "
          f"loaded and warmed up in {time.perf_counter() - t0:.1f} s")

    walls, graph_times, overheads = [], [], []
    for trial in range(a.trials):
        beta = rng.uniform(-1.5, 1.5, (1, s["voxels"])).astype(np.float32)
        before = sum(len(v) for v in log.values())
        start = time.perf_counter()
        g0 = sum(sum(v) for v in log.values())
        lat = adapter.run(None, {s["adapter"]["input"]["name"]: beta})[0]
        outs = backbone.run(None, {m["backbone"]["input"]["name"]: lat})
        tokens, query = outs[0], outs[1].ravel()
        scores = bank @ (query / np.linalg.norm(query))
        top = [ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
        x = rng.standard_normal(tok_shape).astype(np.float32)
        for n, t in enumerate(ts):
            a_t, a_p = abar[t], (abar[t - k] if t - k >= 0 else 1.0)
            x0 = prior.run(None, {p["sample"]["name"]: x, p["timestep"]["name"]: np.array([t], np.int64),
                                  p["cond"]["name"]: tokens})[0]
            if p["prediction"] == "eps":
                x0 = (x - np.sqrt(1 - a_t) * x0) / np.sqrt(a_t)
            elif p["prediction"] == "v":
                x0 = np.sqrt(a_t) * x - np.sqrt(1 - a_t) * x0
            eps = (x - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
            x = (np.sqrt(a_p) * x0 + np.sqrt(1 - a_p) * eps).astype(np.float32)
        image = decoder.run(None, {m["decoder"]["input"]["name"]: x})[0]
        png = (np.clip(image[0].transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
        wall = time.perf_counter() - start
        g = sum(sum(v) for v in log.values()) - g0
        calls = sum(len(v) for v in log.values()) - before
        walls.append(wall)
        graph_times.append(g)
        overheads.append(wall - g)
        print(f"  trial {trial + 1}: {wall * 1e3:.1f} ms, of which ONNX Runtime {g * 1e3:.1f} ms ({calls} calls), "
              f"Python {(wall - g) * 1e3:.3f} ms ({100 * (wall - g) / wall:.3f} %); top-1 {top[0]}, image {png.shape}")
    med = statistics.median
    print("per graph (median ms):")
    for name in ("adapter", "backbone", "prior", "decoder"):
        label = "prior step" if name == "prior" else name
        print(f"  {label:<12} {med(log[name]) * 1e3:>10.3f}")
    ratio = med([o / w for o, w in zip(overheads, walls)])
    print(f"per trial (median): wall {med(walls) * 1e3:.1f} ms, ONNX Runtime {med(graph_times) * 1e3:.1f} ms, "
          f"Python overhead {med(overheads) * 1e3:.3f} ms = {100 * ratio:.3f} % of the trial")


if __name__ == "__main__":
    main()
