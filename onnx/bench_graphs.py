#!/usr/bin/env python3
"""Random-weight graphs at MindEye2's real shapes, for benchmarking the decode stage.

    python onnx/bench_graphs.py OUT_DIR [--check] [--seed N]

Writes (nothing of it is committed; regenerate it where the benchmark runs):

    OUT_DIR/model/model.toml             manifest per onnx/README.md (onepass decoder)
    OUT_DIR/model/backbone.onnx          latent [1,1024] -> tokens [1,256,1664], retrieval [1,768]
    OUT_DIR/model/prior.onnx             x_t [1,256,1664], t [1] int64, cond [1,256,1664] -> x0 [1,256,1664]
    OUT_DIR/model/decoder_onepass.onnx   tokens [1,256,1664] -> image [1,3,64,64]
    OUT_DIR/model/*.onnx.data            their weights (ONNX external data)
    OUT_DIR/model/bank/embeddings.npy    1000 x 768 float32, unit rows; bank/ids.txt
    OUT_DIR/subject/subject.toml         8627 voxels
    OUT_DIR/subject/adapter.onnx(.data)  voxels [1,8627] -> latent [1,1024]

The graphs (opset 17, float32, batch 1, weights uniform with the variance of
1/fan_in, biases and LayerNorm parameters random too; deterministic for a seed):

* adapter: MatMul + Add, 8,627 -> 1,024 (MindEye2's shared-subject ridge).
* backbone: LayerNorm, a residual MLP block at width 1,024 (Linear, GELU,
  Linear), LayerNorm, then Linear 1,024 -> 256*1,664 (1.7 GB of weights alone)
  reshaped to tokens, and a retrieval head Linear 1,024 -> 768, L2-normalised.
* prior: one denoising step, prediction x0: h = x_t + cond @ Wc + pos +
  temb[t] (Wc has no bias, so an all-zero cond adds nothing: unconditional),
  then 6 pre-LayerNorm transformer layers of width 1,664 (self-attention with
  26 heads of 64, MLP x4 with GELU, residuals), a final LayerNorm and a
  Linear 1,664 -> 1,664.
* decoder_onepass: mean over tokens, Linear 1,664 -> 3*64*64, Sigmoid.

About 2.7 GB in all (backbone 1.76 GB, prior 0.83 GB, decoder 82 MB,
adapter 35 MB). Weights are generated and written in chunks of at most
16 M values, so memory stays small whatever the tensor: on a 2-core machine
generation takes 5 to 12 s with a peak of 230 MB resident. The .onnx files
name their .data files relatively, so load them from their path (not from
bytes in memory).

--check then loads each graph in onnxruntime (CPU provider), runs it twice on
random inputs and prints the load and run times (2 cores: about 10 s in all,
3.5 GB resident; one prior step 0.6 to 1.3 s).
"""

import argparse
import math
import pathlib
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOXELS, LATENT = 8627, 1024
TOKENS, WIDTH, HEADS = 256, 1664, 26
LAYERS, MLP = 6, 4
RETRIEVAL, BANK = 768, 1000
IMAGE = 64
TRAIN_STEPS = 1000
OPSET, IR_VERSION = 17, 8
CHUNK = 16 * 1024 * 1024          # values generated and written at a time
ALIGN = 64 * 1024                 # external data offsets (allows memory mapping)
F32 = TensorProto.FLOAT


class Weights:
    """Initializers written straight into one external data file, chunk by chunk."""

    def __init__(self, path, rng):
        self.path, self.rng, self.file = path, rng, open(path, "wb")
        self.inits = []

    def add(self, name, shape, scale, offset=0.0):
        """A tensor of values uniform in offset +- scale*sqrt(3) (variance scale^2)."""
        pos = self.file.tell()
        if pos % ALIGN:
            self.file.write(b"\0" * (ALIGN - pos % ALIGN))
            pos = self.file.tell()
        count = math.prod(shape)
        half = scale * math.sqrt(3.0)
        for start in range(0, count, CHUNK):
            block = self.rng.random(min(CHUNK, count - start), dtype=np.float32)
            block *= 2 * half
            block += offset - half
            self.file.write(block.tobytes())
        t = TensorProto(name=name, dims=shape, data_type=F32, data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.path.name), ("offset", str(pos)), ("length", str(count * 4))):
            t.external_data.add(key=key, value=value)
        self.inits.append(t)
        return name

    def close(self):
        self.file.close()


class Graph:
    """A small builder: nodes with generated output names, shared weight file."""

    def __init__(self, weights):
        self.w, self.nodes, self.consts, self.count = weights, [], {}, 0

    def op(self, op_type, *inputs, **attrs):
        self.count += 1
        out = f"{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(self, name, value):
        """A small initializer held in the .onnx file itself (made once per name)."""
        self.consts.setdefault(name, numpy_helper.from_array(np.asarray(value), name))
        return name

    def linear(self, x, name, fan_in, fan_out, bias=True):
        y = self.op("MatMul", x, self.w.add(f"{name}.weight", [fan_in, fan_out], 1 / math.sqrt(fan_in)))
        return self.op("Add", y, self.w.add(f"{name}.bias", [fan_out], 0.02)) if bias else y

    def layer_norm(self, x, name, width):
        return self.op("LayerNormalization", x, self.w.add(f"{name}.weight", [width], 0.02, 1.0),
                       self.w.add(f"{name}.bias", [width], 0.02), axis=-1, epsilon=1e-5)

    def gelu(self, x):
        """x * 0.5 * (1 + erf(x / sqrt(2))) (ONNX Runtime fuses this into one Gelu kernel)."""
        e = self.op("Erf", self.op("Div", x, self.const("sqrt2", np.float32(math.sqrt(2.0)))))
        return self.op("Mul", self.op("Mul", x, self.const("half", np.float32(0.5))),
                       self.op("Add", e, self.const("one", np.float32(1.0))))

    def output(self, x, name):
        self.nodes.append(helper.make_node("Identity", [x], [name]))

    def save(self, path, inputs, outputs, doc):
        graph = helper.make_graph(self.nodes, path.stem, inputs, outputs, self.w.inits + list(self.consts.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="boldstream onnx/bench_graphs.py", producer_version="1",
                                  doc_string=doc)
        model.ir_version = IR_VERSION
        self.w.close()
        path.write_bytes(model.SerializeToString())
        onnx.checker.check_model(str(path), full_check=True)


def tensor(name, shape, dtype=F32):
    return helper.make_tensor_value_info(name, dtype, shape)


def new_graph(path, rng):
    return Graph(Weights(path.with_name(path.name + ".data"), rng))


def adapter(path, rng):
    g = new_graph(path, rng)
    g.output(g.linear("voxels", "adapter", VOXELS, LATENT), "latent")
    g.save(path, [tensor("voxels", [1, VOXELS])], [tensor("latent", [1, LATENT])],
           "ridge adapter voxels [1,8627] -> latent [1,1024] (random weights)")


def backbone(path, rng):
    g = new_graph(path, rng)
    h = g.layer_norm("latent", "ln_in", LATENT)
    h = g.linear(g.gelu(g.linear(h, "mlp.fc1", LATENT, LATENT)), "mlp.fc2", LATENT, LATENT)
    h = g.layer_norm(g.op("Add", "latent", h), "ln_out", LATENT)
    tokens = g.linear(h, "to_tokens", LATENT, TOKENS * WIDTH)
    g.output(g.op("Reshape", tokens, g.const("token_shape", np.array([1, TOKENS, WIDTH], np.int64))), "tokens")
    r = g.linear(h, "retrieval", LATENT, RETRIEVAL)
    norm = g.op("Sqrt", g.op("ReduceSumSquare", r, axes=[-1], keepdims=1))
    g.output(g.op("Div", r, g.op("Max", norm, g.const("eps", np.float32(1e-12)))), "retrieval")
    g.save(path, [tensor("latent", [1, LATENT])],
           [tensor("tokens", [1, TOKENS, WIDTH]), tensor("retrieval", [1, RETRIEVAL])],
           "backbone latent [1,1024] -> tokens [1,256,1664], retrieval [1,768] (random weights)")


def prior(path, rng):
    g = new_graph(path, rng)
    head = WIDTH // HEADS
    temb = g.op("Gather", g.w.add("time_embedding", [TRAIN_STEPS, WIDTH], 0.02), "t")      # [1, W]
    h = g.op("Add", "x_t", g.linear("cond", "cond_proj", WIDTH, WIDTH, bias=False))
    h = g.op("Add", g.op("Add", h, g.w.add("position_embedding", [TOKENS, WIDTH], 0.02)), temb)
    heads_shape = g.const("heads_shape", np.array([1, TOKENS, HEADS, head], np.int64))
    tokens_shape = g.const("tokens_shape", np.array([1, TOKENS, WIDTH], np.int64))
    split = g.const("qkv_split", np.array([WIDTH] * 3, np.int64))
    scale = g.const("attn_scale", np.float32(1 / math.sqrt(head)))
    for i in range(LAYERS):
        p = f"layers.{i}"
        qkv = g.linear(g.layer_norm(h, f"{p}.ln_attn", WIDTH), f"{p}.attn.qkv", WIDTH, 3 * WIDTH)
        q, k, v = (f"{p}.{x}" for x in "qkv")
        g.nodes.append(helper.make_node("Split", [qkv, split], [q, k, v], axis=-1))
        q, v = (g.op("Transpose", g.op("Reshape", x, heads_shape), perm=[0, 2, 1, 3]) for x in (q, v))
        k = g.op("Transpose", g.op("Reshape", k, heads_shape), perm=[0, 2, 3, 1])
        att = g.op("Softmax", g.op("Mul", g.op("MatMul", q, k), scale), axis=-1)
        o = g.op("Reshape", g.op("Transpose", g.op("MatMul", att, v), perm=[0, 2, 1, 3]), tokens_shape)
        h = g.op("Add", h, g.linear(o, f"{p}.attn.out", WIDTH, WIDTH))
        m = g.gelu(g.linear(g.layer_norm(h, f"{p}.ln_mlp", WIDTH), f"{p}.mlp.fc1", WIDTH, MLP * WIDTH))
        h = g.op("Add", h, g.linear(m, f"{p}.mlp.fc2", MLP * WIDTH, WIDTH))
    g.output(g.linear(g.layer_norm(h, "ln_out", WIDTH), "out", WIDTH, WIDTH), "x0")
    g.save(path, [tensor("x_t", [1, TOKENS, WIDTH]), tensor("t", [1], TensorProto.INT64),
                  tensor("cond", [1, TOKENS, WIDTH])],
           [tensor("x0", [1, TOKENS, WIDTH])],
           "prior step (x0 prediction), 6-layer transformer width 1664 (random weights)")


def decoder(path, rng):
    g = new_graph(path, rng)
    pooled = g.op("ReduceMean", "tokens", axes=[1], keepdims=0)
    pix = g.op("Sigmoid", g.linear(pooled, "to_pixels", WIDTH, 3 * IMAGE * IMAGE))
    g.output(g.op("Reshape", pix, g.const("image_shape", np.array([1, 3, IMAGE, IMAGE], np.int64))), "image")
    g.save(path, [tensor("tokens", [1, TOKENS, WIDTH])], [tensor("image", [1, 3, IMAGE, IMAGE])],
           "one-pass decoder tokens -> image [1,3,64,64] (random weights)")


def spec(name, shape, dtype="float32"):
    return f'{{ name = "{name}", shape = [{", ".join(map(str, shape))}], dtype = "{dtype}" }}'


MODEL_TOML = f"""format = 1
name = "boldstream-bench-mindeye2-shapes"

[backbone]
file = "backbone.onnx"
input = {spec("latent", [1, LATENT])}
tokens = {spec("tokens", [1, TOKENS, WIDTH])}
retrieval = {spec("retrieval", [1, RETRIEVAL])}

[prior]
file = "prior.onnx"
sample = {spec("x_t", [1, TOKENS, WIDTH])}
timestep = {spec("t", [1], "int64")}
cond = {spec("cond", [1, TOKENS, WIDTH])}
output = {spec("x0", [1, TOKENS, WIDTH])}
prediction = "x0"
schedule = {{ kind = "linear", train_steps = {TRAIN_STEPS}, beta_start = 0.0001, beta_end = 0.02 }}
sampler = {{ kind = "ddim", steps = 20, eta = 0.0, guidance = 1.0, seed = 0 }}

[decoder]
kind = "onepass"
file = "decoder_onepass.onnx"
input = {spec("tokens", [1, TOKENS, WIDTH])}
output = {spec("image", [1, 3, IMAGE, IMAGE])}

[retrieval]
embeddings = "bank/embeddings.npy"
ids = "bank/ids.txt"
top_k = 5
"""

SUBJECT_TOML = f"""format = 1
subject = "bench-01"
voxels = {VOXELS}

[adapter]
file = "adapter.onnx"
input = {spec("voxels", [1, VOXELS])}
output = {spec("latent", [1, LATENT])}
"""


def generate(out, seed):
    model, subject = out / "model", out / "subject"
    (model / "bank").mkdir(parents=True, exist_ok=True)
    subject.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for build, path in ((adapter, subject / "adapter.onnx"), (backbone, model / "backbone.onnx"),
                        (prior, model / "prior.onnx"), (decoder, model / "decoder_onepass.onnx")):
        t0 = time.perf_counter()
        build(path, rng)
        size = path.stat().st_size + path.with_name(path.name + ".data").stat().st_size
        print(f"wrote {path.relative_to(out)} (+ .data): {size / 1e6:9.1f} MB in {time.perf_counter() - t0:5.1f} s")
    bank = rng.standard_normal((BANK, RETRIEVAL), dtype=np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    np.save(model / "bank" / "embeddings.npy", bank)
    (model / "bank" / "ids.txt").write_text("".join(f"bench-{i + 1:04d}\n" for i in range(BANK)))
    (model / "model.toml").write_text(MODEL_TOML)
    (subject / "subject.toml").write_text(SUBJECT_TOML)


def check(out):
    """Load each graph in onnxruntime (CPU), run it once on random inputs, print the times."""
    import onnxruntime as ort
    rng = np.random.default_rng(0)
    feeds = {
        "subject/adapter.onnx": {"voxels": rng.standard_normal((1, VOXELS), dtype=np.float32)},
        "model/backbone.onnx": {"latent": rng.standard_normal((1, LATENT), dtype=np.float32)},
        "model/prior.onnx": {"x_t": rng.standard_normal((1, TOKENS, WIDTH), dtype=np.float32),
                             "t": np.array([500], np.int64),
                             "cond": rng.standard_normal((1, TOKENS, WIDTH), dtype=np.float32)},
        "model/decoder_onepass.onnx": {"tokens": rng.standard_normal((1, TOKENS, WIDTH), dtype=np.float32)},
    }
    for rel, feed in feeds.items():
        t0 = time.perf_counter()
        sess = ort.InferenceSession(str(out / rel), providers=["CPUExecutionProvider"])
        t1 = time.perf_counter()
        outs = sess.run(None, feed)
        t2 = time.perf_counter()
        sess.run(None, feed)
        t3 = time.perf_counter()
        shapes = ", ".join(f"{o.name} {list(a.shape)}" for o, a in zip(sess.get_outputs(), outs))
        assert all(np.isfinite(a).all() for a in outs), rel
        print(f"{rel:28s} load {t1 - t0:6.2f} s   first run {1e3 * (t2 - t1):8.1f} ms   "
              f"second run {1e3 * (t3 - t2):8.1f} ms   -> {shapes}")
        del sess


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=pathlib.Path)
    ap.add_argument("--check", action="store_true", help="load and run every graph once in onnxruntime")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    generate(args.out_dir, args.seed)
    print(f"generated {args.out_dir} in {time.perf_counter() - t0:.1f} s")
    if args.check:
        check(args.out_dir)


if __name__ == "__main__":
    main()
