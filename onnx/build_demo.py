#!/usr/bin/env python3
"""Build the demo model folder onnx/demo/ (the contract is onnx/README.md).

Run from the repository root:
    python onnx/build_demo.py [OUT_DIR]          # OUT_DIR defaults to onnx/demo
Needs numpy and onnx to build; the self-check at the end also needs
onnxruntime. The output is a pure function of the constants below: rerunning
rewrites byte-identical files.

Everything is closed form, so the graphs compute exact posterior means:

* stimuli: N_STIM procedural 64x64 RGB images (a shape, a fill texture, a
  background colour), ids stim-0001...; their PCA (L = 64 components, basis B,
  mean m, variances lam) gives each stimulus its shared latent z = B (x - m).
* backbone.onnx: latent [1,64] -> tokens [1,16,32] = reshape(Q z), Q a fixed
  random orthonormal 512x64 expansion; retrieval [1,64] = w*z / |w*z| with
  w = 1/sqrt(lam + sigma_c^2) (whitening that stops at the brain-prediction
  noise floor); lowlevel [1,3,8,8] = the 8x8 block means of m + B'z.
* prior.onnx (one step, prediction x0): the token model is x0 = Q z,
  z ~ N(0, diag lam); the conditioning is c = x0 + noise of variance
  sigma_c^2 (sigma_c^2 = the adapter's mean cross-validated squared error
  per latent coordinate); x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with the linear
  schedule (1000 steps, 1e-4..0.02). The output is E[x0 | x_t, c]: in Q
  coordinates u = Q'x_t, v = Q'c,
      z0 = (sqrt(abar)/(1-abar) u + v/sigma_c^2) / (1/lam + abar/(1-abar) + 1/sigma_c^2),
  x0 = Q z0, abar_t gathered from a table in the graph. An all-zero cond drops
  both conditioning terms (they are multiplied by max|cond| > 0).
* decoder_step.onnx (EDM denoiser over the 64 PCA coefficients, prediction
  x0): z_t = z + sigma n, conditioning tokens c = Q z + noise of variance
  SIGMA_D^2; z0 = (z_t/sigma^2 + v/SIGMA_D^2) / (1/lam + 1/sigma^2 + 1/SIGMA_D^2),
  v = Q'c, the conditioning term again dropped for an all-zero cond.
  latent_decoder.onnx: z -> image = clip(m + B'z, 0, 1). decoder_onepass.onnx:
  tokens -> clip(m + B'Q'tokens, 0, 1). The image basis is stored as float16
  (cast to float32 in the graph) to keep the folder small; m is float32.
* target_encoder.onnx: image [1,3,64,64] -> basis (flat(image) - m) [1,64],
  the shared latent of an image: the targets `boldstream calibrate` fits a
  new subject's adapter to (model.toml [targets]).
* bank/: embeddings.npy (the retrieval head of every stimulus's true latent),
  ids.txt, images/<id>.png.
* subject-sim01/: a simulated subject, V = 2000 voxels with Gaussian and
  difference-of-Gaussians receptive fields and colour tuning, responses
  G z + noise (per-voxel SNR SNR); REPS noisy presentations of each training
  stimulus; N_TEST stimuli are held out of the adapter's training and
  presented once each (test_betas.npy, test_ids.txt; test_expected.toml holds
  each trial's expected top-5 retrieval, computed in float64). Betas are z-scored per
  voxel with the training trials' statistics. adapter.onnx is a ridge
  regression voxels -> latent (one ridge penalty per latent coordinate,
  chosen by 5-fold cross-validation grouped by stimulus). sim_responses.npy
  holds the subject's noise-free response G z to every bank stimulus (bank
  order, unit signal variance per voxel): the simulator uses it to make
  scans whose betas this adapter can decode (boldstream demo).
* model.toml (diffusion decoder), model_onepass.toml (one-pass decoder),
  subject-sim01/subject.toml, README.md (with the self-check figures).

Needs numpy and onnx; the self-check also onnxruntime and pillow (it reads
the bank's PNGs back).

The self-check loads every graph with onnxruntime, checks that the manifests
name their real inputs and outputs, checks the graphs against
their numpy definitions, samples reconstructions with the reference samplers
of tests/parity/samplers.py (DDIM for the prior, Euler for the decoder, noise
from numpy seeded with the manifest's seed, not ChaCha8) and prints the
figures written into README.md.
"""

import math
import pathlib
import struct
import sys
import tomllib
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "parity"))
import samplers  # noqa: E402  (reference samplers, also used for the self-check)

SEED = 20250601
N_STIM, H, W = 150, 64, 64
L = 64                        # shared latent = PCA coefficients
TOK_T, TOK_D = 16, 32         # tokens [1, 16, 32]; 512 >= L
LOW = 8                       # lowlevel head: [1, 3, 8, 8] block means
SIGMA_D = 0.5                 # decoder's conditioning noise (PCA coefficient units)
V, REPS, N_TEST = 2000, 4, 20
SNR = 0.5                     # per-voxel single-trial signal variance / noise variance
ENCODING_WHITEN = 0.5         # voxel responses see z / lam**ENCODING_WHITEN
RIDGE_GRID = np.logspace(0, 8, 33)
SCHEDULE = dict(kind="linear", train_steps=1000, beta_start=0.0001, beta_end=0.02)
PRIOR_SAMPLER = dict(kind="ddim", steps=20, eta=0.0, guidance=1.0, seed=0)
DECODER_SAMPLER = dict(kind="euler", steps=12, sigma_min=0.002, sigma_max=80.0, rho=7.0, guidance=1.5, seed=0)
OPSET, IR_VERSION = 17, 8     # widely supported by ONNX Runtime builds

SHAPES = ["circle", "ellipse", "ring", "square", "diamond", "triangle", "cross", "bars"]
TEXTURES = ["solid", "stripes", "checker", "noise"]


# --- stimuli ---------------------------------------------------------------

def hsv_to_rgb(h, s, v):
    """One HSV colour (components in [0, 1]) as an RGB array."""
    i = int(math.floor(h * 6)) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def signed_distance(shape, x, y, r, angle):
    """Approximate signed distance (image-width units) to a shape of size r centred at 0."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    if shape == "circle":
        return np.hypot(u, v) - r
    if shape == "ellipse":
        return np.hypot(u, 2 * v) - r
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.75 * r) - 0.25 * r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.8 * r
    if shape == "diamond":
        return (np.abs(u) + np.abs(v)) / math.sqrt(2) - 0.75 * r
    if shape == "triangle":
        sides = [math.cos(a) * u + math.sin(a) * v for a in np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
        return np.maximum.reduce(sides) - 0.5 * r
    if shape == "cross":
        return np.minimum(np.maximum(np.abs(u) - r, np.abs(v) - 0.3 * r),
                          np.maximum(np.abs(u) - 0.3 * r, np.abs(v) - r))
    if shape == "bars":
        half, period = 0.85 * r, 0.85 * r * 2 / 3
        return np.maximum(np.maximum(np.abs(u), np.abs(v)) - half,
                          np.abs(np.mod(u + half, period) - period / 2) - period / 4)
    raise ValueError(shape)


def texture(kind, rng, x, y):
    """Mixing weight in [0, 1] between the fill's two colours."""
    if kind == "solid":
        return np.zeros_like(x)
    angle, period = rng.uniform(0, np.pi), rng.uniform(0.08, 0.2)
    if kind == "stripes":
        return 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * (math.cos(angle) * x + math.sin(angle) * y) / period))
    if kind == "checker":
        return np.mod(np.floor(x / period * 1.4) + np.floor(y / period * 1.4), 2)
    grid = rng.random((9, 9))           # smooth noise: bilinear 9x9 lattice over the image
    gx, gy = np.clip((x + 0.5) * 8, 0, 8 - 1e-9), np.clip((y + 0.5) * 8, 0, 8 - 1e-9)
    i, j = gy.astype(int), gx.astype(int)
    fy, fx = gy - i, gx - j
    return (grid[i, j] * (1 - fy) * (1 - fx) + grid[i + 1, j] * fy * (1 - fx)
            + grid[i, j + 1] * (1 - fy) * fx + grid[i + 1, j + 1] * fy * fx)


def stimulus(rng):
    """One image [3, H, W] in [0, 1] with its shape and texture names."""
    shape, tex = SHAPES[rng.integers(len(SHAPES))], TEXTURES[rng.integers(len(TEXTURES))]
    yy, xx = (np.mgrid[0:H, 0:W] + 0.5) / W
    cx, cy = rng.uniform(0.3, 0.7, 2)
    r, angle = rng.uniform(0.18, 0.36), rng.uniform(0, 2 * np.pi)
    x, y = xx - cx, yy - cy
    alpha = np.clip(0.5 - signed_distance(shape, x, y, r, angle) * W, 0, 1)[..., None]  # 1-px antialiasing
    hue = rng.random()
    background = hsv_to_rgb((hue + rng.uniform(0.25, 0.75)) % 1, rng.uniform(0, 0.5), rng.uniform(0.1, 0.9))
    colour = hsv_to_rgb(hue, rng.uniform(0.5, 1), rng.uniform(0.6, 1))
    mix = texture(tex, rng, x, y)[..., None]
    fill = colour * (1 - mix) + colour * rng.uniform(0.1, 0.5) * mix
    img = background * (1 - alpha) + fill * alpha
    return img.transpose(2, 0, 1), shape, tex


def png_bytes(img):
    """An 8-bit RGB PNG of an image [3, H, W] in [0, 1] (stdlib zlib, deterministic)."""
    a = np.round(np.clip(img.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in a)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", a.shape[1], a.shape[0], 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


# --- PCA, simulated subject, adapter ---------------------------------------

def pca(X, n):
    """mean, basis [n, D] (orthonormal rows, largest entry of each positive), variances [n], all variances."""
    mean = X.mean(0)
    _, s, vt = np.linalg.svd(X - mean, full_matrices=False)
    basis = vt[:n] * np.sign(vt[:n][np.arange(n), np.abs(vt[:n]).argmax(1)])[:, None]
    var = s ** 2 / len(X)
    return mean, basis, var[:n], var


def encoding_matrix(rng, basis, lam):
    """G [V, L]: voxel v's response to latent z is G[v] @ z, unit signal variance over the stimuli.

    Each voxel pools the image (minus its mean) through a Gaussian receptive field
    (every other voxel a difference of Gaussians) with a colour tuning
    (luminance plus random red-green and blue-yellow weights), seen through z/lam**ENCODING_WHITEN.
    """
    yy, xx = (np.mgrid[0:H, 0:W] + 0.5) / W
    centres = rng.uniform(0.05, 0.95, (V, 2))
    widths = np.exp(rng.uniform(math.log(0.03), math.log(0.25), V))
    opponent = np.array([[1, 1, 1], [1, -1, 0], [0.5, 0.5, -1]]) / 3
    colours = np.concatenate([np.ones((V, 1)), rng.normal(0, 0.5, (V, 2))], 1) @ opponent
    rf = np.empty((V, 3 * H * W))
    for v in range(V):
        d2 = (xx - centres[v, 0]) ** 2 + (yy - centres[v, 1]) ** 2
        g = np.exp(-d2 / (2 * widths[v] ** 2))
        k = g / g.sum()
        if v % 2:
            g2 = np.exp(-d2 / (8 * widths[v] ** 2))
            k = k - 0.5 * g2 / g2.sum()
        rf[v] = (colours[v][:, None, None] * k).ravel()
    return (rf @ basis.T) * lam ** -ENCODING_WHITEN


def ridge_cv(X, Y, groups, grid, folds=5):
    """Ridge X -> Y with one penalty per column of Y from `grid`, by grouped K-fold CV.

    Returns the weights [V, L], intercept [L], chosen penalties [L] and the
    out-of-fold mean squared error per column at the chosen penalty.
    """
    fold = np.unique(groups, return_inverse=True)[1] % folds
    sq_err = np.zeros((len(grid), Y.shape[1]))
    for f in range(folds):
        fit, held = fold != f, fold == f
        xm, ym = X[fit].mean(0), Y[fit].mean(0)
        u, s, vt = np.linalg.svd(X[fit] - xm, full_matrices=False)
        uy, xh = u.T @ (Y[fit] - ym), (X[held] - xm) @ vt.T
        for i, lam in enumerate(grid):
            pred = xh @ ((s / (s ** 2 + lam))[:, None] * uy) + ym
            sq_err[i] += ((pred - Y[held]) ** 2).sum(0)
    best = sq_err.argmin(0)
    xm, ym = X.mean(0), Y.mean(0)
    u, s, vt = np.linalg.svd(X - xm, full_matrices=False)
    uy = u.T @ (Y - ym)
    weights = vt.T @ (s[:, None] / (s[:, None] ** 2 + grid[best][None, :]) * uy)
    return weights, ym - xm @ weights, grid[best], sq_err[best, np.arange(Y.shape[1])] / len(Y)


# --- ONNX graphs -----------------------------------------------------------

F32 = TensorProto.FLOAT


def tensor(name, shape, dtype=F32):
    return helper.make_tensor_value_info(name, dtype, shape)


def const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def model(name, doc, nodes, inputs, outputs, inits):
    """A checked ModelProto (opset OPSET, IR IR_VERSION)."""
    graph = helper.make_graph(nodes, name, inputs, outputs, inits, doc_string=doc)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="boldstream onnx/build_demo.py", producer_version="1",
                          doc_string=doc)
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    return m


def n(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


def cond_nodes(cond, prefix):
    """Nodes giving <prefix>v = Q'vec(cond) [1, L] and <prefix>on = (max|cond| > 0) as float."""
    return [n("Reshape", [cond, "flat_shape"], [prefix + "flat"]),
            n("MatMul", [prefix + "flat", "Q"], [prefix + "v"]),
            n("Abs", [cond], [prefix + "abs"]),
            n("ReduceMax", [prefix + "abs"], [prefix + "max"], keepdims=0),
            n("Greater", [prefix + "max", "zero"], [prefix + "nz"]),
            n("Cast", [prefix + "nz"], [prefix + "on"], to=F32)]


def backbone_graph(Q, w_ret, low_mat, low_bias):
    nodes = [n("MatMul", ["latent", "QT"], ["tok_flat"]),
             n("Reshape", ["tok_flat", "tok_shape"], ["tokens"]),
             n("Mul", ["latent", "w_ret"], ["ret_raw"]),
             n("ReduceSumSquare", ["ret_raw"], ["ret_ss"], axes=[-1], keepdims=1),
             n("Add", ["ret_ss", "eps"], ["ret_ss_eps"]),
             n("Sqrt", ["ret_ss_eps"], ["ret_norm"]),
             n("Div", ["ret_raw", "ret_norm"], ["retrieval"]),
             n("MatMul", ["latent", "low_mat"], ["low_flat"]),
             n("Add", ["low_flat", "low_bias"], ["low_img"]),
             n("Reshape", ["low_img", "low_shape"], ["lowlevel"])]
    inits = [const("QT", Q.T), const("tok_shape", [1, TOK_T, TOK_D], np.int64),
             const("w_ret", w_ret), const("eps", 1e-12), const("low_mat", low_mat),
             const("low_bias", low_bias), const("low_shape", [1, 3, LOW, LOW], np.int64)]
    return model("backbone", "latent [1,64] -> tokens [1,16,32] = Q z; retrieval [1,64] = w z/|w z|; "
                 "lowlevel [1,3,8,8] = 8x8 block means of the PCA image", nodes,
                 [tensor("latent", [1, L])],
                 [tensor("tokens", [1, TOK_T, TOK_D]), tensor("retrieval", [1, L]),
                  tensor("lowlevel", [1, 3, LOW, LOW])], inits)


def prior_graph(Q, lam, abar, sigma_c2):
    nodes = cond_nodes("cond", "c_") + [
        n("Reshape", ["x_t", "flat_shape"], ["x_flat"]),
        n("MatMul", ["x_flat", "Q"], ["u"]),
        n("Gather", ["sample_gain", "t"], ["a"]),          # sqrt(abar)/(1-abar)
        n("Gather", ["sample_prec", "t"], ["p"]),          # abar/(1-abar)
        n("Mul", ["c_on", "cond_prec"], ["cp"]),
        n("Mul", ["u", "a"], ["num_x"]),
        n("Mul", ["c_v", "cp"], ["num_c"]),
        n("Add", ["num_x", "num_c"], ["num"]),
        n("Add", ["prior_prec", "p"], ["den_x"]),
        n("Add", ["den_x", "cp"], ["den"]),
        n("Div", ["num", "den"], ["z0"]),
        n("MatMul", ["z0", "QT"], ["x0_flat"]),
        n("Reshape", ["x0_flat", "tok_shape"], ["x0"])]
    inits = [const("Q", Q), const("QT", Q.T), const("flat_shape", [1, TOK_T * TOK_D], np.int64),
             const("tok_shape", [1, TOK_T, TOK_D], np.int64), const("zero", 0.0),
             const("sample_gain", np.sqrt(abar) / (1 - abar)), const("sample_prec", abar / (1 - abar)),
             const("prior_prec", 1 / lam), const("cond_prec", 1 / sigma_c2)]
    return model("prior", "one prior step, prediction x0: E[x0 | x_t, cond] for x0 = Q z, z ~ N(0, diag lam), "
                 "cond = x0 + N(0, sigma_c^2), linear schedule; all-zero cond = unconditional", nodes,
                 [tensor("x_t", [1, TOK_T, TOK_D]), tensor("t", [1], TensorProto.INT64),
                  tensor("cond", [1, TOK_T, TOK_D])],
                 [tensor("x0", [1, TOK_T, TOK_D])], inits)


def decoder_step_graph(Q, lam):
    nodes = cond_nodes("cond", "c_") + [
        n("Mul", ["sigma", "sigma"], ["s2"]),
        n("Reciprocal", ["s2"], ["sample_prec"]),
        n("Mul", ["c_on", "cond_prec"], ["cp"]),
        n("Mul", ["z_t", "sample_prec"], ["num_x"]),
        n("Mul", ["c_v", "cp"], ["num_c"]),
        n("Add", ["num_x", "num_c"], ["num"]),
        n("Add", ["prior_prec", "sample_prec"], ["den_x"]),
        n("Add", ["den_x", "cp"], ["den"]),
        n("Div", ["num", "den"], ["z0"])]
    inits = [const("Q", Q), const("flat_shape", [1, TOK_T * TOK_D], np.int64), const("zero", 0.0),
             const("prior_prec", 1 / lam), const("cond_prec", 1 / SIGMA_D ** 2)]
    return model("decoder_step", "EDM denoiser, prediction x0: E[z | z_t = z + sigma n, cond] for z ~ N(0, diag lam), "
                 "cond = Q z + N(0, sigma_d^2); all-zero cond = unconditional", nodes,
                 [tensor("z_t", [1, L]), tensor("sigma", [1]), tensor("cond", [1, TOK_T, TOK_D])],
                 [tensor("z0", [1, L])], inits)


def image_nodes(latent):
    """Nodes mapping a [1, L] latent to image [1, 3, H, W] = clip(mean + latent @ basis, 0, 1)."""
    return [n("Cast", ["basis_f16"], ["basis"], to=F32),
            n("MatMul", [latent, "basis"], ["pix_c"]),
            n("Add", ["pix_c", "pix_mean"], ["pix"]),
            n("Clip", ["pix", "zero", "one"], ["pix_clip"]),
            n("Reshape", ["pix_clip", "img_shape"], ["image"])]


def image_inits(mean, basis):
    return [const("basis_f16", basis, np.float16), const("pix_mean", mean), const("zero", 0.0),
            const("one", 1.0), const("img_shape", [1, 3, H, W], np.int64)]


def latent_decoder_graph(mean, basis):
    return model("latent_decoder", "PCA image decoder: z [1,64] -> clip(mean + basis' z, 0, 1) [1,3,64,64]",
                 image_nodes("z"), [tensor("z", [1, L])], [tensor("image", [1, 3, H, W])],
                 image_inits(mean, basis))


def onepass_graph(Q, mean, basis):
    nodes = [n("Reshape", ["tokens", "flat_shape"], ["tok_flat"]),
             n("MatMul", ["tok_flat", "Q"], ["z"])] + image_nodes("z")
    inits = [const("Q", Q), const("flat_shape", [1, TOK_T * TOK_D], np.int64)] + image_inits(mean, basis)
    return model("decoder_onepass", "one-pass decoder: tokens [1,16,32] -> clip(mean + basis' Q' tokens, 0, 1)",
                 nodes, [tensor("tokens", [1, TOK_T, TOK_D])], [tensor("image", [1, 3, H, W])], inits)


def target_encoder_graph(mean, basis):
    """Calibration targets: image [1,3,64,64] -> its shared latent basis (x - mean) [1,64] (float16 basis)."""
    nodes = [n("Reshape", ["image", "flat_shape"], ["flat"]),
             n("Sub", ["flat", "pix_mean"], ["centred"]),
             n("Cast", ["basis_f16"], ["basis"], to=F32),
             n("Transpose", ["basis"], ["basis_t"], perm=[1, 0]),
             n("MatMul", ["centred", "basis_t"], ["latent"])]
    inits = [const("basis_f16", basis, np.float16), const("pix_mean", mean),
             const("flat_shape", [1, 3 * H * W], np.int64)]
    return model("target_encoder", "calibration targets: image [1,3,64,64] -> basis (flat(image) - mean) [1,64]",
                 nodes, [tensor("image", [1, 3, H, W])], [tensor("latent", [1, L])], inits)


def adapter_graph(weights, bias):
    nodes = [n("MatMul", ["voxels", "W"], ["xw"]), n("Add", ["xw", "b"], ["latent"])]
    return model("adapter", "ridge adapter: voxels [1,2000] (z-scored betas) -> latent [1,64]", nodes,
                 [tensor("voxels", [1, V])], [tensor("latent", [1, L])],
                 [const("W", weights), const("b", bias)])


# --- manifests -------------------------------------------------------------

def spec(name, shape):
    return f'{{ name = "{name}", shape = [{", ".join(map(str, shape))}], dtype = "float32" }}'


def inline(d):
    return "{ " + ", ".join(f"{k} = " + (f'"{v}"' if isinstance(v, str) else repr(v)) for k, v in d.items()) + " }"


def model_toml(onepass):
    head = f"""format = 1
name = "boldstream-demo{'-onepass' if onepass else ''}"

[backbone]
file = "backbone.onnx"
input = {spec("latent", [1, L])}
tokens = {spec("tokens", [1, TOK_T, TOK_D])}
retrieval = {spec("retrieval", [1, L])}
lowlevel = {spec("lowlevel", [1, 3, LOW, LOW])}

[prior]
file = "prior.onnx"
sample = {spec("x_t", [1, TOK_T, TOK_D])}
timestep = {{ name = "t", shape = [1], dtype = "int64" }}
cond = {spec("cond", [1, TOK_T, TOK_D])}
output = {spec("x0", [1, TOK_T, TOK_D])}
prediction = "x0"
schedule = {inline(SCHEDULE)}
sampler = {inline(PRIOR_SAMPLER)}

[decoder]
"""
    if onepass:
        dec = f"""kind = "onepass"
file = "decoder_onepass.onnx"
input = {spec("tokens", [1, TOK_T, TOK_D])}
output = {spec("image", [1, 3, H, W])}
"""
    else:
        dec = f"""kind = "diffusion"
latent = {spec("z", [1, L])}
denoiser = {{ file = "decoder_step.onnx", sample = "z_t", noise = "sigma", cond = "cond", output = "z0", prediction = "x0" }}
latent_decoder = {{ file = "latent_decoder.onnx", input = "z", output = "image" }}
image = {{ shape = [1, 3, {H}, {W}] }}
sampler = {inline(DECODER_SAMPLER)}
"""
    return head + dec + """
[retrieval]
embeddings = "bank/embeddings.npy"
ids = "bank/ids.txt"
images = "bank/images"
top_k = 5

[targets]
kind = "encoder"
file = "target_encoder.onnx"
input = """ + spec("image", [1, 3, H, W]) + """
output = """ + spec("latent", [1, L]) + """
images = "bank/images"
"""


SUBJECT_TOML = f"""format = 1
subject = "sim-01"
voxels = {V}

[adapter]
file = "adapter.onnx"
input = {spec("voxels", [1, V])}
output = {spec("latent", [1, L])}
"""


# --- build -----------------------------------------------------------------

def build(out):
    rng = np.random.default_rng(SEED)
    stims = [stimulus(rng) for _ in range(N_STIM)]
    images = np.array([s[0] for s in stims])
    ids = [f"stim-{i + 1:04d}" for i in range(N_STIM)]
    X = images.reshape(N_STIM, -1)
    mean, basis, lam, var_all = pca(X, L)
    Z = (X - mean) @ basis.T                                  # true latents [N, L]

    # simulated subject: held-out test stimuli, REPS presentations of the rest
    G = encoding_matrix(rng, basis, lam)
    G /= np.sqrt(((Z @ G.T) ** 2).mean(0))[:, None]          # unit signal variance per voxel
    noise_sd = 1 / math.sqrt(SNR)
    test = np.sort(rng.permutation(N_STIM)[:N_TEST])
    train = np.setdiff1d(np.arange(N_STIM), test)
    train_trials = np.repeat(train, REPS)
    raw_train = Z[train_trials] @ G.T + noise_sd * rng.standard_normal((len(train_trials), V))
    raw_test = Z[test] @ G.T + noise_sd * rng.standard_normal((N_TEST, V))
    mu, sd = raw_train.mean(0), raw_train.std(0)
    betas_train, betas_test = (raw_train - mu) / sd, (raw_test - mu) / sd
    weights, bias, penalties, cv_mse = ridge_cv(betas_train, Z[train_trials], train_trials, RIDGE_GRID)
    sigma_c2 = float(cv_mse.mean())

    # heads and graphs
    Q = np.linalg.qr(rng.standard_normal((TOK_T * TOK_D, L)))[0]
    w_ret = 1 / np.sqrt(lam + sigma_c2)
    low_pool = block_mean_matrix()
    abar = samplers.alphas_cumprod(SCHEDULE["kind"], SCHEDULE["train_steps"], SCHEDULE["beta_start"],
                                   SCHEDULE["beta_end"])
    graphs = {
        "backbone.onnx": backbone_graph(Q, w_ret, basis @ low_pool, mean @ low_pool),
        "prior.onnx": prior_graph(Q, lam, abar, sigma_c2),
        "decoder_step.onnx": decoder_step_graph(Q, lam),
        "latent_decoder.onnx": latent_decoder_graph(mean, basis),
        "decoder_onepass.onnx": onepass_graph(Q, mean, basis),
        "target_encoder.onnx": target_encoder_graph(mean, basis),
    }
    emb = Z * w_ret
    emb /= np.sqrt((emb ** 2).sum(1, keepdims=True) + 1e-12)

    sub = out / "subject-sim01"
    (out / "bank" / "images").mkdir(parents=True, exist_ok=True)
    sub.mkdir(parents=True, exist_ok=True)
    for name, g in graphs.items():
        onnx.save(g, out / name)
    onnx.save(adapter_graph(weights, bias), sub / "adapter.onnx")
    for i, img in zip(ids, images):
        (out / "bank" / "images" / f"{i}.png").write_bytes(png_bytes(img))
    (out / "bank" / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
    np.save(out / "bank" / "embeddings.npy", emb.astype(np.float32))
    np.save(sub / "test_betas.npy", betas_test.astype(np.float32))
    np.save(sub / "sim_responses.npy", (Z @ G.T).astype(np.float32))
    (sub / "test_ids.txt").write_text("".join(f"{ids[i]}\n" for i in test))
    (out / "model.toml").write_text(model_toml(onepass=False))
    (out / "model_onepass.toml").write_text(model_toml(onepass=True))
    (sub / "subject.toml").write_text(SUBJECT_TOML)
    (sub / "test_expected.toml").write_text(
        expected_retrieval(betas_test.astype(np.float32), weights, bias, w_ret, emb.astype(np.float32), ids, test))
    return dict(images=images, Z=Z, lam=lam, var_all=var_all, Q=Q, basis=basis, test=test,
                n_train=len(train), betas_test=betas_test, weights=weights, bias=bias,
                penalties=penalties, sigma_c2=sigma_c2,
                shapes=[s[1] for s in stims], textures=[s[2] for s in stims])


def expected_retrieval(betas, weights, bias, w_ret, bank, ids, test, top_k=5):
    """TOML text: each test trial's top-k bank ids and its stimulus's rank, computed in float64."""
    latents = betas.astype(np.float64) @ weights + bias
    emb = latents * w_ret
    emb /= np.sqrt((emb ** 2).sum(1, keepdims=True) + 1e-12)
    sims = emb @ bank.T.astype(np.float64)
    ranks = (sims > sims[np.arange(len(test)), test][:, None]).sum(1)
    lines = ["# Retrieval expected from test_betas.npy through adapter.onnx and the backbone's retrieval",
             "# head against ../bank (cosine similarity, float64). rank: how many bank entries score above",
             "# the trial's own stimulus (0 = retrieved first). min_gap: the smallest difference between",
             "# consecutive similarities among the best top_k + 1, i.e. how robust the order is to rounding.",
             f"top_k = {top_k}", f"top1_accuracy = {float(np.mean(ranks == 0))!r}",
             f"top{top_k}_accuracy = {float(np.mean(ranks < top_k))!r}"]
    for i, t in enumerate(test):
        order = np.argsort(-sims[i], kind="stable")[:top_k + 1]
        lines += ["", "[[trial]]", f'id = "{ids[t]}"', f"rank = {int(ranks[i])}",
                  "top = [" + ", ".join(f'"{ids[j]}"' for j in order[:top_k]) + "]",
                  f"min_gap = {np.diff(-sims[i, order]).min():.3e}"]
    return "\n".join(lines) + "\n"


def block_mean_matrix():
    """P [3*H*W, 3*LOW*LOW]: image (C order, CHW) @ P = its LOW x LOW block means."""
    rows = np.arange(3 * H * W)
    c, y, x = rows // (H * W), rows // W % H, rows % W
    cols = (c * LOW + y // (H // LOW)) * LOW + x // (W // LOW)
    P = np.zeros((3 * H * W, 3 * LOW * LOW))
    P[rows, cols] = 1.0 / ((H // LOW) * (W // LOW))
    return P


# --- self-check ------------------------------------------------------------

def pixel_corr(a, b):
    """Pearson correlation of two images over all their pixels and channels."""
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / math.sqrt((a @ a) * (b @ b)))


def self_check(out, info):
    """Run every graph in onnxruntime; check it against numpy and measure the pipeline. Returns the figures."""
    import onnxruntime as ort
    from PIL import Image
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1   # deterministic figures
    sessions = {p.stem: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                for p in sorted(out.glob("*.onnx")) + [out / "subject-sim01" / "adapter.onnx"]}

    def run(name, **feeds):
        return sessions[name].run(None, feeds)

    f32 = lambda a: np.asarray(a, dtype=np.float32)
    Z, lam, images, test = info["Z"], info["lam"], info["images"], info["test"]
    bank = np.load(out / "bank" / "embeddings.npy")
    ids = (out / "bank" / "ids.txt").read_text().split()
    abar = samplers.alphas_cumprod(SCHEDULE["kind"], SCHEDULE["train_steps"], SCHEDULE["beta_start"],
                                   SCHEDULE["beta_end"])
    sigma_c2 = info["sigma_c2"]
    fig = {}

    # 0. the manifests name the graphs' real inputs and outputs
    def io(name):
        sess = sessions[name]
        return {t.name: (t.shape, t.type) for t in sess.get_inputs() + sess.get_outputs()}

    def declared(graph, spec):
        assert io(graph)[spec["name"]] == (spec["shape"], f"tensor({spec['dtype'].replace('32', '')})"), spec

    for manifest in ("model.toml", "model_onepass.toml"):
        m = tomllib.loads((out / manifest).read_text())
        for role, keys in (("backbone", ("input", "tokens", "retrieval", "lowlevel")),
                           ("prior", ("sample", "timestep", "cond", "output"))):
            for key in keys:
                declared(pathlib.Path(m[role]["file"]).stem, m[role][key])
        dec = m["decoder"]
        if dec["kind"] == "onepass":
            declared(pathlib.Path(dec["file"]).stem, dec["input"])
            declared(pathlib.Path(dec["file"]).stem, dec["output"])
        else:
            step, lat = pathlib.Path(dec["denoiser"]["file"]).stem, pathlib.Path(dec["latent_decoder"]["file"]).stem
            tok = m["backbone"]["tokens"]["shape"]
            assert io(step) == {dec["denoiser"]["sample"]: (dec["latent"]["shape"], "tensor(float)"),
                                dec["denoiser"]["noise"]: ([1], "tensor(float)"),
                                dec["denoiser"]["cond"]: (tok, "tensor(float)"),
                                dec["denoiser"]["output"]: (dec["latent"]["shape"], "tensor(float)")}
            assert io(lat) == {dec["latent_decoder"]["input"]: (dec["latent"]["shape"], "tensor(float)"),
                               dec["latent_decoder"]["output"]: (dec["image"]["shape"], "tensor(float)")}
        assert np.load(out / m["retrieval"]["embeddings"]).shape == (N_STIM, m["backbone"]["retrieval"]["shape"][1])
    subject = tomllib.loads((out / "subject-sim01" / "subject.toml").read_text())
    declared("adapter", subject["adapter"]["input"])
    declared("adapter", subject["adapter"]["output"])
    assert subject["adapter"]["output"] == m["backbone"]["input"] and subject["voxels"] == V

    # 1. graphs against their numpy definitions
    Q, dev = info["Q"], {}
    tok, ret, low = run("backbone", latent=f32(Z[:1]))
    dev["backbone tokens"] = np.abs(tok.reshape(1, -1) - Z[:1] @ Q.T).max() / np.abs(tok).max()
    dev["backbone retrieval vs bank"] = max(
        np.abs(run("backbone", latent=f32(Z[i:i + 1]))[1][0] - bank[i]).max() for i in range(N_STIM))
    pca0 = images.reshape(N_STIM, -1).mean(0) + Z[0] @ info["basis"]
    dev["backbone lowlevel"] = np.abs(low.ravel() - pca0.reshape(3, LOW, H // LOW, LOW, W // LOW)
                                      .mean((2, 4)).ravel()).max()
    prng = np.random.default_rng(1)
    for t in (0, 500, 999):
        x, c = f32(prng.standard_normal((1, TOK_T, TOK_D))), f32(Z[3] @ Q.T).reshape(1, TOK_T, TOK_D)
        u, v = x.reshape(1, -1) @ Q, c.reshape(1, -1) @ Q
        a = abar[t]
        for name, cc, on in (("cond", c, 1.0), ("uncond", np.zeros_like(c), 0.0)):
            want = ((math.sqrt(a) / (1 - a) * u + on * v / sigma_c2)
                    / (1 / lam + a / (1 - a) + on / sigma_c2)) @ Q.T
            got = run("prior", x_t=x, t=np.array([t], np.int64), cond=f32(cc))[0].reshape(1, -1)
            dev[f"prior t={t} {name}"] = np.abs(got - want).max() / np.abs(want).max()
    for s in (80.0, 1.0, 0.002):
        zt, c = Z[5:6] + s * prng.standard_normal((1, L)), f32(Z[5] @ Q.T).reshape(1, TOK_T, TOK_D)
        v = c.reshape(1, -1) @ Q
        for name, cc, on in (("cond", c, 1.0), ("uncond", np.zeros_like(c), 0.0)):
            want = (zt / s ** 2 + on * v / SIGMA_D ** 2) / (1 / lam + 1 / s ** 2 + on / SIGMA_D ** 2)
            got = run("decoder_step", z_t=f32(zt), sigma=f32([s]), cond=f32(cc))[0]
            dev[f"decoder_step sigma={s} {name}"] = np.abs(got - want).max() / np.abs(want).max()
    pca_images = np.array([run("latent_decoder", z=f32(Z[i:i + 1]))[0][0] for i in range(N_STIM)])
    for i, img in zip(ids, images):   # the hand-written PNGs decode to the stimuli
        png = np.asarray(Image.open(out / "bank" / "images" / f"{i}.png").convert("RGB"), np.float64)
        assert np.abs(png.transpose(2, 0, 1) / 255 - img).max() <= 0.5 / 255 + 1e-9, i
        enc = run("target_encoder", image=f32(png.transpose(2, 0, 1)[None] / 255))[0][0]
        dev["target_encoder (PNG, float16 basis) vs latent"] = max(
            dev.get("target_encoder (PNG, float16 basis) vs latent", 0.0),
            np.abs(enc - Z[ids.index(i)]).max() / np.abs(Z).max())
    betas = np.load(out / "subject-sim01" / "test_betas.npy")
    latents = np.array([run("adapter", voxels=betas[i:i + 1])[0][0] for i in range(N_TEST)])
    want = info["betas_test"] @ info["weights"] + info["bias"]
    dev["adapter"] = np.abs(latents - want).max() / np.abs(want).max()
    dev["latent_decoder vs exact PCA (float16 basis)"] = np.abs(
        pca_images - np.clip(images.reshape(N_STIM, -1).mean(0) + Z @ info["basis"], 0, 1)
        .reshape(images.shape)).max()
    for k, d in dev.items():
        print(f"  {k:46s} max deviation {d:.2e}")
    fig["f16_dev"] = dev.pop("latent_decoder vs exact PCA (float16 basis)")
    fig["enc_dev"] = dev.pop("target_encoder (PNG, float16 basis) vs latent")
    fig["max_dev"] = max(dev.values())
    assert fig["max_dev"] < 1e-5 and fig["f16_dev"] < 2e-3 and fig["enc_dev"] < 5e-3, dev

    # 2. the pipeline: prior DDIM + decoder Euler (and one-pass) reconstructions
    steps, sig = PRIOR_SAMPLER["steps"], samplers.karras_sigmas(
        DECODER_SAMPLER["steps"], DECODER_SAMPLER["sigma_min"], DECODER_SAMPLER["sigma_max"],
        DECODER_SAMPLER["rho"])

    def prior_model(x, t, c):
        return run("prior", x_t=f32(x), t=np.array([t], np.int64), cond=f32(c))[0]

    def decoder_model(z, s, c):
        return run("decoder_step", z_t=f32(z), sigma=f32([s]), cond=f32(c))[0]

    def reconstruct(latent):
        tokens, emb, _ = run("backbone", latent=f32(latent))
        rng_p = np.random.default_rng(PRIOR_SAMPLER["seed"])
        x0, _ = samplers.ddim(prior_model, tokens, rng_p.standard_normal(tokens.shape), None, abar, steps,
                              "x0", PRIOR_SAMPLER["eta"], PRIOR_SAMPLER["guidance"])
        rng_d = np.random.default_rng(DECODER_SAMPLER["seed"])
        z, _ = samplers.euler(decoder_model, x0, rng_d.standard_normal((1, L)), sig, "x0",
                              DECODER_SAMPLER["guidance"])
        return (emb[0], run("latent_decoder", z=f32(z))[0][0], run("decoder_onepass", tokens=f32(x0))[0][0])

    true = [reconstruct(Z[i:i + 1]) for i in range(N_STIM)]
    fig["pca_corr"] = np.mean([pixel_corr(pca_images[i], images[i]) for i in range(N_STIM)])
    fig["true_diff_corr"] = np.mean([pixel_corr(true[i][1], images[i]) for i in range(N_STIM)])
    fig["true_onepass_corr"] = np.mean([pixel_corr(true[i][2], images[i]) for i in range(N_STIM)])

    test_ids = (out / "subject-sim01" / "test_ids.txt").read_text().split()
    assert [ids.index(i) for i in test_ids] == list(test)
    brain = [reconstruct(latents[i:i + 1]) for i in range(N_TEST)]
    sims = np.array([bank @ brain[i][0] for i in range(N_TEST)])
    ranks = (sims > sims[np.arange(N_TEST), test][:, None]).sum(1)
    expected = tomllib.loads((out / "subject-sim01" / "test_expected.toml").read_text())
    assert [t["rank"] for t in expected["trial"]] == list(ranks)
    assert all([ids[j] for j in np.argsort(-sims[i], kind="stable")[:5]] == t["top"]
               for i, t in enumerate(expected["trial"]))
    fig["top1"], fig["top5"] = np.mean(ranks == 0), np.mean(ranks < 5)
    fig["latent_r2"] = 1 - ((latents - Z[test]) ** 2).sum() / ((Z[test] - Z[test].mean(0)) ** 2).sum()
    for k, path in ((1, "diff"), (2, "onepass")):
        corr = np.array([[pixel_corr(brain[i][k], images[j]) for j in range(N_STIM)] for i in range(N_TEST)])
        own = corr[np.arange(N_TEST), test]
        others = (corr.sum(1) - own) / (N_STIM - 1)
        fig[f"brain_{path}_own"], fig[f"brain_{path}_other"] = own.mean(), others.mean()
        fig[f"brain_{path}_2way"] = np.mean((corr < own[:, None]).sum(1) / (N_STIM - 1))
    return fig


def readme(out, info, fig):
    lam, var_all = info["lam"], info["var_all"]
    sizes = sorted((str(p.relative_to(out)), p.stat().st_size) for p in out.rglob("*")
                   if p.is_file() and p.parent.name != "images" and p.name != "README.md")
    n_png = sum(1 for _ in (out / "bank" / "images").iterdir())
    png_size = sum(p.stat().st_size for p in (out / "bank" / "images").iterdir())
    shapes = ", ".join(f"{s} {info['shapes'].count(s)}" for s in SHAPES)
    textures = ", ".join(f"{t} {info['textures'].count(t)}" for t in TEXTURES)
    rows = "\n".join(f"| `{p}` | {s:,} |" for p, s in sizes) + f"\n| `bank/images/` ({n_png} PNG) | {png_size:,} |"
    return f"""# Demo model folder

Built by `python onnx/build_demo.py` (numpy + onnx, seed {SEED}; rerunning
rewrites identical files; the self-check at the end needs onnxruntime). A
closed-form model in the shape of the decode contract (onnx/README.md): the
backbone and image decoders are linear maps and the prior and decoder steps
compute exact linear-Gaussian posterior means, so the sampling loops in Rust
can be tested end to end on a model whose right answer is known.
Details of each graph are in the script's docstring.

- `model.toml`: adapter → backbone → prior (DDIM, {PRIOR_SAMPLER['steps']} steps, x0 prediction) →
  diffusion decoder (`decoder_step.onnx`, Euler {DECODER_SAMPLER['steps']} steps, guidance
  {DECODER_SAMPLER['guidance']}) → `latent_decoder.onnx`.
- `model_onepass.toml`: the same with the one-pass decoder `decoder_onepass.onnx`.
- `bank/`: the {N_STIM} stimuli (`images/<id>.png`, 64×64 RGB; shapes: {shapes};
  textures: {textures}), `ids.txt`, `embeddings.npy` ({N_STIM}×{L} float32, the retrieval
  head of each stimulus's true latent).
- `subject-sim01/`: `subject.toml`, `adapter.onnx` (ridge, {V} voxels → {L}),
  `test_betas.npy` ({N_TEST}×{V} float32 z-scored single-trial betas of {N_TEST} stimuli
  held out of the adapter's training), `test_ids.txt` (their stimulus ids, in order)
  and `test_expected.toml` (each trial's expected top-5 bank ids and the rank of its
  own stimulus, through adapter and retrieval head in float64, with the smallest
  similarity gap so a test knows how robust the order is; retrieval involves no
  sampling, so Rust should reproduce it exactly), and `sim_responses.npy`
  ({N_STIM}×{V} float32: the simulated subject's noise-free response to each bank
  stimulus, bank order, unit signal variance per voxel; the simulator's source
  for scans this adapter can decode).

## How it was built

- Shared latent: PCA of the {N_STIM} flattened images, {L} components, explaining
  {100 * lam.sum() / var_all.sum():.1f} % of the pixel variance (first component alone
  {100 * lam[0] / var_all.sum():.1f} %; variances {lam[0]:.1f} … {lam[-1]:.2f}).
- Tokens: a fixed random orthonormal expansion Q (512×{L}) of the latent, [1, {TOK_T}, {TOK_D}].
- Simulated subject: {V} voxels with Gaussian / difference-of-Gaussians receptive fields
  and colour tuning over z/λ^{ENCODING_WHITEN}, single-trial SNR {SNR} per voxel;
  {info['n_train']} training stimuli × {REPS} presentations; ridge penalty per latent
  coordinate from {RIDGE_GRID[0]:g} … {RIDGE_GRID[-1]:g} by 5-fold cross-validation grouped
  by stimulus; {int((info['penalties'] == RIDGE_GRID[-1]).sum())} of the {L} coordinates get the largest
  penalty, i.e. are not decodable and are predicted as their training mean.
- Prior conditioning noise σ_c² = {info['sigma_c2']:.4f}: the adapter's mean
  cross-validated squared error per latent coordinate. Decoder conditioning
  noise σ_d = {SIGMA_D}.
- The PCA image basis is stored as float16 in the two image decoders (cast to
  float32 in the graph); the largest pixel difference this makes is
  {fig['f16_dev']:.1e}; the target encoder on the 8-bit PNGs is within
  {fig['enc_dev']:.1e} (relative to the largest latent) of the exact latents.

## Self-check figures

Noise for the samplers comes from numpy (seed 0 for every reconstruction), not
ChaCha8, so Rust's images differ in detail but not in these statistics.
Pixel correlation: Pearson over all 3×64×64 values of an image. A
reconstruction is a posterior sample: latent coordinates the conditioning
does not pin down (variance below σ_c²) are drawn from the prior, which shows
as a texture shared by all reconstructions made with the same seed and keeps
even true-latent reconstructions below the PCA ceiling.

| | |
| --- | --- |
| float32 graphs vs their numpy definitions (largest relative deviation) | {fig['max_dev']:.1e} |
| true latents, PCA ceiling (`latent_decoder` of the true latent) | {fig['pca_corr']:.3f} |
| true latents → prior → diffusion decoder, mean pixel correlation ({N_STIM} stimuli) | {fig['true_diff_corr']:.3f} |
| true latents → prior → one-pass decoder | {fig['true_onepass_corr']:.3f} |
| test betas → adapter: latent R² (held-out stimuli) | {fig['latent_r2']:.3f} |
| retrieval top-1 among {N_STIM} ({N_TEST} test trials; chance {1 / N_STIM:.3f}) | {fig['top1']:.2f} |
| retrieval top-5 (chance {5 / N_STIM:.3f}) | {fig['top5']:.2f} |
| diffusion path: pixel correlation with own stimulus / mean with the {N_STIM - 1} others | {fig['brain_diff_own']:.3f} / {fig['brain_diff_other']:.3f} |
| diffusion path: two-way identification (own beats a non-matching stimulus) | {fig['brain_diff_2way']:.3f} |
| one-pass path: pixel correlation own / others | {fig['brain_onepass_own']:.3f} / {fig['brain_onepass_other']:.3f} |
| one-pass path: two-way identification | {fig['brain_onepass_2way']:.3f} |

## Files

| file | bytes |
| --- | --- |
{rows}
"""


def main():
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "onnx" / "demo"
    info = build(out)
    print(f"built {out}; PCA {L} components explain {100 * info['lam'].sum() / info['var_all'].sum():.1f} % "
          f"of the pixel variance; sigma_c^2 = {info['sigma_c2']:.4f}")
    fig = self_check(out, info)
    text = readme(out, info, fig)
    (out / "README.md").write_text(text)
    print("\n".join(line for line in text.split("## Self-check figures")[1].split("## Files")[0].splitlines()
                    if line.startswith("| ") and not line.startswith(("| |", "| ---"))))


if __name__ == "__main__":
    main()
