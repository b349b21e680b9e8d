#!/usr/bin/env python3
"""Export MindEye2 (real, random or tiny weights) as a boldstream model folder + subject folder.

    python onnx/export_mindeye2.py OUT_DIR --tiny [--seed 0] [--check] [--reference DIR]
    python onnx/export_mindeye2.py OUT_DIR --random-weights [--hidden 1024|4096] [--voxels 8627]
                                   [--graphs adapter,backbone,prior,unclip,vae,lowlevel] [--count-only]
    python onnx/export_mindeye2.py OUT_DIR --checkpoint last.pth --unclip unclip6_epoch0_step110000.ckpt
                                   [--vae sdxl_vae.pt] --blurry-vae sd_image_var_autoenc.pth
                                   --bank-embeddings bank.npy --bank-ids ids.txt
    python onnx/export_mindeye2.py --compare-keys REF_CHECKOUT_DIR   (state-dict names vs the public code)

Writes OUT_DIR/model/ (model.toml, backbone.onnx, prior.onnx, unclip_step.onnx,
vae_decoder.onnx, lowlevel_decoder.onnx when the checkpoint has the blurry
branch, bank/embeddings.npy + bank/ids.txt) and OUT_DIR/subject/ (subject.toml,
adapter.onnx). See onnx/README.md for the folder contract; the [prior]
schedule/sampler, [decoder] sampler and uncond settings written to model.toml
are MindEye2's own (see the comments written into it).

Graphs (opset 17, batch sizes fixed):
  adapter       voxels [1,V] -> latent [1,H]                         ridge.linears.0
  backbone      latent [1,H] -> tokens [1,256,1664], retrieval [1,256,1664]
                (clip_voxels), lowlevel [1,4,28,28] (blurry SD-VAE latent, x0.18215 scaled)
  prior         x_t [1,256,1664], t [1] int64, cond [1,256,1664] -> x0 [1,256,1664]
                (all-zero cond -> the learned null_brain_embeds)
  unclip_step   x [2,4,96,96], sigma [2], context [2,256,1664] -> denoised [2,4,96,96]
                (sgm DiscreteDenoiser + EpsScaling; sigma quantised to the nearest of the
                1000 LegacyDDPM sigmas, as sgm does (absolute distance); vector conditioning
                (original_size 768x768, crop 0,0) baked in: closed form, the same for every weights)
  vae_decoder   latent [1,4,96,96] -> image [1,3,768,768]: clamp(0.8*decode(z/0.13025)+0.2, 0, 1)
                (MindEye2's unclip_recon mapping); float32 body (the SDXL VAE overflows in fp16
                and unclip6.yaml disables autocast for it)
  lowlevel_decoder latent [1,4,28,28] -> image [1,3,224,224]: clamp(decode(z/0.18215)/2+0.5, 0, 1)
                float32 body.

--tiny: the same graphs, names, ranks and roles at narrow widths (tokens [1,16,32],
hidden 64, voxels 50, UNet 16 channels x 2 levels, latent 16x16, images 32x32 / 16x16,
bank of 20), float32, deterministic for --seed; a few MB.
--random-weights: MindEye2's real sizes, random init, fp16 bodies (float32 inputs
and outputs), external data (<graph>.onnx.data) for every graph above 1.5 GB.
Sizes (fp16): adapter 17.7 MB, backbone 0.9 GB (H=1024) / 3.5 GB (H=4096), prior
0.5 GB, unclip_step ~5 GB, vae_decoder 0.2 GB (fp32), lowlevel 0.2 GB (fp32).
Memory/time on a 2-core 24 GB machine (measured): --count-only takes seconds;
--random-weights --graphs adapter,backbone,prior,vae_decoder,lowlevel_decoder
(H=1024) 3 min, 15.4 GB peak RSS; --graphs unclip_step 22.5 min (the fp16 forward
that the tracer runs on the CPU is slow), 13.8 GB peak RSS, 5.0 GB written.
Real weights: the same as --random-weights, loading the checkpoints with
load_state_dict(strict=True).

--check runs every graph in onnxruntime (CPU) on the exported inputs and prints
max|ort - torch| / max|torch| per graph (the fp16 graphs run on CPU onnxruntime
too, slowly: one real-size prior step takes ~3 s on 2 cores).
--reference DIR saves <graph>_<tensor>.npy inputs and PyTorch outputs (+ README.md).
"""

import argparse
import gc
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mindeye2_modules as M  # noqa: E402

OPSET = 17
EXTERNAL_ABOVE = 1_500_000_000   # bytes of initializers


# --------------------------------------------------------------------------
# building modules


def build_all(cfg, device="cpu"):
    """The nn.Modules of every graph, random init, in a fixed order (deterministic per seed)."""
    with torch.device(device):
        mods = {
            "ridge": M.RidgeRegression(cfg.voxels, cfg.hidden),
            "backbone": M.BrainNetwork(cfg),
            "prior": M.BrainDiffusionPrior(cfg),
            "unclip": M.UnclipWrapper(cfg),
            "first_stage": M.FirstStage(cfg),
        }
        if cfg.blurry:
            mods["lowlevel"] = M.LowlevelVae(cfg)
    return mods


def graph_module(name, mods, cfg):
    if name == "adapter":
        return M.AdapterGraph(mods["ridge"])
    if name == "backbone":
        return M.BackboneGraph(mods["backbone"])
    if name == "prior":
        return M.PriorStep(mods["prior"])
    if name == "unclip_step":
        return M.UnclipDenoiser(mods["unclip"], cfg)
    if name == "vae_decoder":
        return M.VaeDecode(mods["first_stage"], cfg.unclip_scale_factor, 0.8, 0.2)
    if name == "lowlevel_decoder":
        return M.VaeDecode(mods["lowlevel"], cfg.low_scale_factor, 0.5, 0.5)
    raise KeyError(name)


def graph_io(name, cfg, gen):
    """(inputs {name: tensor}, output names) for a graph, the inputs random but fixed by gen."""
    T, D, H, L = cfg.tokens, cfg.width, cfg.hidden, cfg.latent_hw

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    if name == "adapter":
        return {"voxels": randn(1, cfg.voxels)}, ["latent"]
    if name == "backbone":
        return {"latent": randn(1, H)}, ["tokens", "retrieval"] + (["lowlevel"] if cfg.blurry else [])
    if name == "prior":
        return {"x_t": randn(1, T, D), "t": torch.tensor([94], dtype=torch.int64),
                "cond": randn(1, T, D)}, ["x0"]
    if name == "unclip_step":
        s = M.sampler_sigmas(cfg, 38)
        sigma = torch.stack([s[0], s[10]])
        return {"x": randn(2, 4, L, L) * sigma[:, None, None, None], "sigma": sigma,
                "context": randn(2, T, D)}, ["denoised"]
    if name == "vae_decoder":
        return {"latent": randn(1, 4, L, L)}, ["image"]
    if name == "lowlevel_decoder":
        b = cfg.blurry_hw_out
        return {"latent": randn(1, 4, b, b) * cfg.low_scale_factor}, ["image"]
    raise KeyError(name)


GRAPH_FILES = {
    "adapter": "subject/adapter.onnx",
    "backbone": "model/backbone.onnx",
    "prior": "model/prior.onnx",
    "unclip_step": "model/unclip_step.onnx",
    "vae_decoder": "model/vae_decoder.onnx",
    "lowlevel_decoder": "model/lowlevel_decoder.onnx",
}
FP32_BODIES = {"vae_decoder", "lowlevel_decoder"}


def graph_names(cfg):
    names = ["adapter", "backbone", "prior", "unclip_step", "vae_decoder"]
    return names + (["lowlevel_decoder"] if cfg.blurry else [])


# --------------------------------------------------------------------------
# real checkpoints


def _torch_load(path):
    """A checkpoint's dict, memory-mapped where the file format allows."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(str(path))
    for kw in ({"mmap": True, "weights_only": False}, {"weights_only": False}, {}):
        try:
            return torch.load(path, map_location="cpu", **kw)
        except (TypeError, RuntimeError):
            continue
    raise RuntimeError(f"cannot load {path}")


def _sub(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def config_from_checkpoint(sd, base):
    w = sd["ridge.linears.0.weight"]
    return M.replace(base, hidden=w.shape[0], voxels=w.shape[1],
                     blurry="backbone.blin1.weight" in sd,
                     n_blocks=len({k.split(".")[2] for k in sd if k.startswith("backbone.mixer_blocks1.")}))


def diffusers_vae_names(sd):
    """Old diffusers attention names (query/key/value/proj_attn) -> to_q/to_k/to_v/to_out.0."""
    ren = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
    out = {}
    for k, v in sd.items():
        for a, b in ren.items():
            k = k.replace(a, b)
        out[k] = v
    return out


def load_real(args, cfg_base):
    me = _torch_load(args.checkpoint)
    me = me.get("model_state_dict", me)
    cfg = config_from_checkpoint(me, cfg_base)
    # built on the meta device, then the checkpoint tensors are assigned (no second copy);
    # the only non-persistent buffer (the prior's relative-position buckets) is rebuilt
    mods = build_all(cfg, device="meta")
    kw = {"strict": True, "assign": True}
    mods["backbone"].load_state_dict(_sub(me, "backbone."), **kw)
    mods["ridge"].load_state_dict(_sub(me, "ridge."), **kw)
    mods["prior"].load_state_dict(_sub(me, "diffusion_prior."), **kw)
    mods["prior"].net.causal_transformer.rel_pos_bias.buckets = M.rel_pos_buckets(2 * cfg.tokens + 1, 2 * cfg.tokens + 2)
    del me
    un = _torch_load(args.unclip)
    un = un.get("state_dict", un)
    if any(k.startswith("model_ema.") for k in un):
        print("note: the unCLIP checkpoint has model_ema.* weights; MindEye2 samples inside ema_scope(), "
              "but its DiffusionEngine is built with use_ema False, so model.diffusion_model.* is what it uses")
    mods["unclip"].diffusion_model.load_state_dict(_sub(un, "model.diffusion_model."), **kw)
    fs = _sub(un, "first_stage_model.")
    del un
    if args.vae:
        fs = _torch_load(args.vae)
        fs = fs.get("state_dict", fs)
    fs = {k: v for k, v in fs.items() if k.startswith(("decoder.", "post_quant_conv."))}
    mods["first_stage"].load_state_dict(fs, **kw)
    if cfg.blurry:
        if not args.blurry_vae:
            raise SystemExit("the checkpoint has a blurry branch: give --blurry-vae sd_image_var_autoenc.pth")
        low = diffusers_vae_names(_torch_load(args.blurry_vae))
        low = {k: v for k, v in low.items() if k.startswith(("decoder.", "post_quant_conv."))}
        mods["lowlevel"].load_state_dict(low, **kw)
    return cfg, mods


# --------------------------------------------------------------------------
# ONNX writing


def export_graph(module, inputs, outputs, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    import onnx
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        tmp_path = pathlib.Path(tmp) / path.name
        with torch.no_grad():
            torch.onnx.export(module, tuple(inputs.values()), str(tmp_path), dynamo=False,
                              opset_version=OPSET, input_names=list(inputs), output_names=outputs,
                              do_constant_folding=True)
        model = onnx.load(str(tmp_path), load_external_data=True)
    size = sum(t.ByteSize() for t in model.graph.initializer)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    model.producer_name = "boldstream onnx/export_mindeye2.py"
    if size > EXTERNAL_ABOVE:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        os.chmod(data, 0o644)
    else:
        onnx.save_model(model, str(path))
    return size


def ort_run(path, inputs):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {k: v.numpy() for k, v in inputs.items()}
    return sess.run(None, feed)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# --------------------------------------------------------------------------
# manifests


def fmt_shape(s):
    return "[" + ", ".join(str(int(x)) for x in s) + "]"


def write_manifests(out, cfg, name, bank_n, bank_dtype, note):
    T, D, H, L = cfg.tokens, cfg.width, cfg.hidden, cfg.latent_hw
    E = T * D
    img = cfg.image_hw
    lines = [
        "# MindEye2 for boldstream, written by onnx/export_mindeye2.py",
        f"# {note}",
        "format = 1",
        f'name = "{name}"',
        "",
        "[backbone]",
        'file = "backbone.onnx"',
        f'input = {{ name = "latent", shape = {fmt_shape([1, H])}, dtype = "float32" }}',
        f'tokens = {{ name = "tokens", shape = {fmt_shape([1, T, D])}, dtype = "float32" }}',
        "# clip_voxels, compared by cosine similarity after flattening to " + str(E),
        f'retrieval = {{ name = "retrieval", shape = {fmt_shape([1, T, D])}, dtype = "float32" }}',
    ]
    if cfg.blurry:
        b = cfg.blurry_hw_out
        lines.append("# the blurry branch: an SD-VAE latent already multiplied by 0.18215 (the lowlevel decoder divides)")
        lines.append(f'lowlevel = {{ name = "lowlevel", shape = {fmt_shape([1, 4, b, b])}, dtype = "float32" }}')
    lines += [
        "",
        "[prior]",
        'file = "prior.onnx"',
        f'sample = {{ name = "x_t", shape = {fmt_shape([1, T, D])}, dtype = "float32" }}',
        'timestep = { name = "t", shape = [1], dtype = "int64" }',
        f'cond = {{ name = "cond", shape = {fmt_shape([1, T, D])}, dtype = "float32" }}',
        f'output = {{ name = "x0", shape = {fmt_shape([1, T, D])}, dtype = "float32" }}',
        'prediction = "x0"',
        f'schedule = {{ kind = "cosine", train_steps = {cfg.prior_timesteps} }}',
        "# dalle2-pytorch p_sample_loop_ddim: 19 calls at t = 94, 89, ..., 4; its DDIM update uses",
        "# alphas_cumprod_prev[t] as alpha_t (see onnx/README.md / the exporter's notes)",
        'sampler = { kind = "ddim", steps = 20, eta = 1.0, grid = "dalle2", guidance = 1.0, seed = 0 }',
        "# an all-zero cond makes the graph use the learned null_brain_embeds (unused at guidance 1)",
        'uncond = "zeros"',
        "",
        "[decoder]",
        'kind = "diffusion"',
        f'latent = {{ name = "x", shape = {fmt_shape([1, 4, L, L])}, dtype = "float32" }}',
        "# the step graph takes batch 2: [uncond; cond] in one call",
        'denoiser = { file = "unclip_step.onnx", sample = "x", noise = "sigma", cond = "context", output = "denoised", prediction = "x0", batch = 2 }',
        'latent_decoder = { file = "vae_decoder.onnx", input = "latent", output = "image" }',
        f"image = {{ shape = {fmt_shape([1, 3, img, img])} }}",
        f'sampler = {{ kind = "euler", discretization = "legacy_ddpm", start = "unclip", steps = 38, guidance = 5.0, offset_noise = 0.04, '
        f'seed = 0, linear_start = {cfg.linear_start}, linear_end = {cfg.linear_end}, train_steps = {cfg.train_steps} }}',
        "# MindEye2's unCLIP: the unconditional context is fresh N(0,1) tokens each trial",
        'uncond = "noise"',
        "",
    ]
    if cfg.blurry:
        li = cfg.low_image_hw
        lines += [
            "[lowlevel]",
            'latent_decoder = { file = "lowlevel_decoder.onnx", input = "latent", output = "image" }',
            f"image = {{ shape = {fmt_shape([1, 3, li, li])} }}",
            "# MindEye2 final_evaluations: recon*0.75 + blurry*0.25",
            "blend = 0.25",
            "",
        ]
    lines += [
        "[retrieval]",
        f"# {bank_n} candidates x {E} ({bank_dtype}), unit rows",
        'embeddings = "bank/embeddings.npy"',
        'ids = "bank/ids.txt"',
        "top_k = 5",
        "",
    ]
    (out / "model").mkdir(parents=True, exist_ok=True)
    (out / "model" / "model.toml").write_text("\n".join(lines))
    (out / "subject").mkdir(parents=True, exist_ok=True)
    (out / "subject" / "subject.toml").write_text("\n".join([
        "# MindEye2 ridge adapter, written by onnx/export_mindeye2.py",
        "format = 1",
        f'subject = "{name}-subject"',
        f"voxels = {cfg.voxels}",
        "",
        "[adapter]",
        'file = "adapter.onnx"',
        f'input = {{ name = "voxels", shape = {fmt_shape([1, cfg.voxels])}, dtype = "float32" }}',
        f'output = {{ name = "latent", shape = {fmt_shape([1, H])}, dtype = "float32" }}',
        "",
    ]))


def write_bank(out, emb, ids):
    bank = out / "model" / "bank"
    bank.mkdir(parents=True, exist_ok=True)
    np.save(bank / "embeddings.npy", emb)
    (bank / "ids.txt").write_text("".join(f"{i}\n" for i in ids))


def random_bank(n, e, seed, plant=None):
    rng = np.random.default_rng(seed + 7)
    out = np.empty((n, e), dtype="<f2")
    for i in range(n):
        row = rng.standard_normal(e).astype(np.float32)
        out[i] = row / np.linalg.norm(row)
    if plant is not None:
        idx, vec = plant
        vec = np.asarray(vec, np.float32).reshape(-1)
        out[idx] = vec / np.linalg.norm(vec)
    return out


# --------------------------------------------------------------------------
# state-dict key comparison against the public code


class _StubModule(type(sys)):
    """A module whose every attribute is a dummy class (for imports the reference code
    makes but the compared classes never use)."""

    def __init__(self, name):
        super().__init__(name)
        self.__path__ = []

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return type(attr, (), {"__init__": lambda self, *a, **k: None})


def _import_file(name, path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _package(name, path):
    pkg = type(sys)(name)
    pkg.__path__ = [str(path)]
    sys.modules[name] = pkg
    return pkg


def load_references(ref):
    """Import MindEye2's models.py (with dalle2-pytorch 1.15.6 from the checkout and
    diffusers 0.23 from the environment) and sgm's UNet/denoiser/decoder modules.

    REF_CHECKOUT_DIR holds MindEyeV2/ (the MedARC-AI/MindEyeV2 tree, src/ inside) and
    DALLE2-pytorch/ (lucidrains/DALLE2-pytorch, dalle2_pytorch/ inside)."""
    for name in ["torchvision", "torchvision.transforms", "kornia", "kornia.filters", "kornia.augmentation",
                 "resize_right", "x_clip", "coca_pytorch", "clip", "webdataset", "matplotlib",
                 "matplotlib.pyplot", "utils", "dalle2_pytorch.tokenizer", "dalle2_pytorch.vqgan_vae",
                 "dalle2_pytorch.train_configs"]:
        sys.modules[name] = _StubModule(name)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    pkg = _package("dalle2_pytorch", ref / "DALLE2-pytorch" / "dalle2_pytorch")
    d2 = _import_file("dalle2_pytorch.dalle2_pytorch", ref / "DALLE2-pytorch" / "dalle2_pytorch" / "dalle2_pytorch.py")
    pkg.dalle2_pytorch, pkg.DiffusionPrior = d2, d2.DiffusionPrior
    src = ref / "MindEyeV2" / "src"
    models = _import_file("mindeye2_models", src / "models.py")
    gm = src / "generative_models" / "sgm"
    _package("sgm", gm)
    _package("sgm.modules", gm / "modules")
    _package("sgm.modules.diffusionmodules", gm / "modules" / "diffusionmodules")
    import importlib
    sgm = {k: importlib.import_module("sgm.modules.diffusionmodules." + k)
           for k in ["openaimodel", "denoiser", "model", "wrappers", "discretizer", "denoiser_scaling"]}
    return models, sgm, d2


def _key_report(label, mine, theirs):
    a = {k: tuple(v.shape) for k, v in mine.items()}
    b = {k: tuple(v.shape) for k, v in theirs.items()}
    same = [k for k in a if k in b and a[k] == b[k]]
    print(f"{label:44s} keys matched {len(same)}/{len(b)} (mine {len(a)})"
          + ("" if len(same) == len(a) == len(b) else "  MISMATCH"))
    for k in sorted(set(a) ^ set(b))[:10]:
        print("   only in", "mine  " if k in a else "theirs", k, a.get(k, b.get(k)))
    for k in [k for k in a if k in b and a[k] != b[k]][:10]:
        print("   shape", k, a[k], b[k])
    return len(same) == len(a) == len(b)


def _num_report(label, mine, theirs):
    e = rel_err(mine.detach().numpy(), theirs.detach().numpy())
    print(f"{label:44s} max rel err {e:.2e}")
    return e


def compare_keys(ref):
    """State-dict names/shapes of these modules vs the reference classes (real sizes, built on
    the meta device), then outputs of both on the same random weights (small sizes)."""
    ref = pathlib.Path(ref)
    models, sgm, d2 = load_references(ref)
    ok = True
    unclip_net = dict(adm_in_channels=1024, num_classes="sequential", use_checkpoint=False, in_channels=4,
                      out_channels=4, model_channels=320, attention_resolutions=[4, 2], num_res_blocks=2,
                      channel_mult=[1, 2, 4], num_head_channels=64, use_linear_in_transformer=True,
                      transformer_depth=[1, 2, 10], context_dim=1664, spatial_transformer_attn_type="softmax")
    ddconfig = dict(attn_type="vanilla", double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3,
                    ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    from diffusers import AutoencoderKL
    low_kw = dict(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                  block_out_channels=[128, 256, 512, 512], layers_per_block=2, sample_size=256)

    def ref_prior(dim, depth, dim_head, heads, tokens):
        net = models.PriorNetwork(dim=dim, depth=depth, dim_head=dim_head, heads=heads, causal=False,
                                  num_tokens=tokens, learned_query_mode="pos_emb")
        return models.BrainDiffusionPrior(net=net, image_embed_dim=dim, condition_on_text_encodings=False,
                                          timesteps=100, cond_drop_prob=0.2, image_embed_scale=None)

    print("== real sizes (meta device) ==")
    for hidden in (1024, 4096):
        cfg = M.Config(hidden=hidden)
        with torch.device("meta"):
            theirs = models.BrainNetwork(h=hidden, in_dim=hidden, seq_len=1, clip_size=1664, out_dim=1664 * 256)
            mine = M.BrainNetwork(cfg)
            ridge = M.RidgeRegression(8627, hidden)
        ok &= _key_report(f"BrainNetwork h={hidden} (blurry)", mine.state_dict(), theirs.state_dict())
        ridge_ref = {"linears.0.weight": torch.empty(hidden, 8627), "linears.0.bias": torch.empty(hidden)}
        ok &= _key_report(f"RidgeRegression V=8627 h={hidden}", ridge.state_dict(), ridge_ref)
    with torch.device("meta"):
        cfg = M.Config(hidden=1024, blurry=False)
        mine = M.BrainNetwork(cfg)
        theirs = models.BrainNetwork(h=1024, in_dim=1024, seq_len=1, clip_size=1664, out_dim=1664 * 256,
                                     blurry_recon=False)
    ok &= _key_report("BrainNetwork h=1024 (rt-MindEye, no blurry)", mine.state_dict(), theirs.state_dict())
    cfg = M.Config()
    with torch.device("meta"):
        ok &= _key_report("BrainDiffusionPrior (PriorNetwork d=1664)", M.BrainDiffusionPrior(cfg).state_dict(),
                          ref_prior(1664, 6, 52, 32, 256).state_dict())
        theirs = sgm["openaimodel"].UNetModel(**unclip_net)
        mine = M.UNetModel(cfg)
    n_theirs = sum(p.numel() for p in theirs.parameters())
    ok &= _key_report("unCLIP UNetModel (unclip6.yaml)", mine.state_dict(), theirs.state_dict())
    print(f"   UNet parameters: mine {M.count(mine):,d}, sgm {n_theirs:,d}")
    with torch.device("meta"):
        theirs = sgm["model"].Decoder(**ddconfig)
        mine = M.SgmDecoder(128, (1, 2, 4, 4), 2, 32)
    ok &= _key_report("SDXL VAE Decoder (first_stage ddconfig)", mine.state_dict(), theirs.state_dict())
    with torch.device("meta"):
        theirs = AutoencoderKL(**low_kw)
        mine = M.LowlevelVae(cfg)
    th = {k: v for k, v in theirs.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}
    ok &= _key_report("SD VAE (diffusers 0.23) decoder+post_quant", mine.state_dict(), th)

    print("== outputs on shared random weights (small sizes, float32) ==")
    torch.manual_seed(0)
    worst = 0.0
    # backbone with the real blurry branch sizes, narrow h / tokens
    cfg = M.Config(hidden=64, tokens=16, width=32)
    theirs = models.BrainNetwork(h=64, in_dim=64, seq_len=1, clip_size=32, out_dim=32 * 16).eval()
    mine = M.BrainNetwork(cfg).eval()
    mine.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 64)
    with torch.no_grad():
        b0, c0, (bl0, _) = theirs(x[:, None])
        b1, c1, bl1 = mine(x)
    worst = max(worst, _num_report("BrainNetwork backbone", b1, b0), _num_report("BrainNetwork clip_voxels", c1, c0),
                _num_report("BrainNetwork blurry latent", bl1, bl0))
    # prior (partial rotary: dim_head 40 > 32)
    theirs = ref_prior(64, 2, 40, 2, 16).eval()
    mine = M.BrainDiffusionPrior(M.Config(width=64, tokens=16, prior_depth=2, prior_dim_head=40, prior_heads=2)).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))          # non-trivial gains
    mine.load_state_dict(theirs.state_dict(), strict=True)
    xt, cond, t = torch.randn(2, 16, 64), torch.randn(2, 16, 64), torch.tensor([94, 9])
    with torch.no_grad():
        p0 = theirs.net(xt, t, text_embed=cond)
        p1 = mine.net(xt, t, cond)
        n0 = theirs.net(xt, t, text_embed=cond, brain_cond_drop_prob=1.0)
        n1 = M.PriorStep(mine)(xt, t, torch.zeros_like(cond))
    worst = max(worst, _num_report("PriorNetwork x0 prediction", p1, p0),
                _num_report("PriorNetwork, zero cond = null_brain_embeds", n1, n0))
    # UNet + DiscreteDenoiser, 32 channels (sgm's GroupNorm has 32 groups), 2 levels
    small = dict(unclip_net, model_channels=32, channel_mult=[1, 2], attention_resolutions=[2],
                 num_res_blocks=1, transformer_depth=[1, 2], context_dim=32, num_head_channels=16, adm_in_channels=32)
    theirs = sgm["openaimodel"].UNetModel(**small).eval()
    cfg = M.Config(width=32, tokens=16, unet_channels=32, unet_mult=(1, 2), unet_attn_res=(2,), unet_res_blocks=1,
                   unet_depth=(1, 2), unet_head_channels=16, vector_outdim=8, latent_hw=16)
    wrap = M.UnclipWrapper(cfg).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    wrap.diffusion_model.load_state_dict(theirs.state_dict(), strict=True)
    disc = {"target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"}
    den = sgm["denoiser"].DiscreteDenoiser(
        scaling_config={"target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"},
        num_idx=1000, discretization_config=disc)
    sig = M.sampler_sigmas(cfg, 38)
    sigma = torch.stack([sig[3], sig[3] * 1.01])
    x = torch.randn(2, 4, 16, 16) * sigma[:, None, None, None]
    ctx = torch.randn(2, 16, 32)
    vec = M.vector_suffix(cfg).expand(2, -1)
    ts = sgm["openaimodel"].Timestep(8)
    vec_ref = torch.cat([ts(torch.tensor([768.0, 768.0])).reshape(1, -1),
                         ts(torch.tensor([0.0, 0.0])).reshape(1, -1)], dim=1)
    with torch.no_grad():
        d0 = den(sgm["wrappers"].OpenAIWrapper(theirs), x, sigma, {"crossattn": ctx, "vector": vec_ref.expand(2, -1)})
        d1 = M.UnclipDenoiser(wrap, cfg)(x, sigma, ctx)
        u0 = theirs(x, torch.tensor([5, 900]), ctx, vec)
        u1 = wrap.diffusion_model(x, torch.tensor([5, 900]), ctx, vec)
    worst = max(worst, _num_report("vector_suffix (ConcatTimestepEmbedderND)", vec[:1], vec_ref),
                _num_report("UNetModel eps", u1, u0), _num_report("DiscreteDenoiser denoised", d1, d0))
    sg = sgm["discretizer"].LegacyDDPMDiscretization()
    worst = max(worst, _num_report("sampler sigmas (38 steps + 0)", M.sampler_sigmas(cfg, 38), sg(38)),
                _num_report("denoiser sigma table (1000)", M.legacy_ddpm_sigmas(cfg), den.sigmas))
    # decoders
    theirs = sgm["model"].Decoder(**dict(ddconfig, ch=32, ch_mult=[1, 2], num_res_blocks=1)).eval()
    mine = M.SgmDecoder(32, (1, 2), 1, 32).eval()
    mine.load_state_dict(theirs.state_dict(), strict=True)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        worst = max(worst, _num_report("SDXL-VAE Decoder", mine(z), theirs(z)))
    theirs = AutoencoderKL(**dict(low_kw, block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                                  up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1)).eval()
    mine = M.LowlevelVae(M.Config(low_channels=(32, 64), low_layers=1)).eval()
    mine.load_state_dict({k: v for k, v in theirs.state_dict().items()
                          if k.startswith(("decoder.", "post_quant_conv."))}, strict=True)
    with torch.no_grad():
        a = theirs.decode(z / 0.18215).sample / 2 + 0.5
        b = mine.decoder(mine.post_quant_conv(z / 0.18215)) / 2 + 0.5
    worst = max(worst, _num_report("SD-VAE (diffusers) decode", b, a))
    print(f"keys all matched: {bool(ok)}; worst output rel err {worst:.2e}")


# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", type=pathlib.Path)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true")
    mode.add_argument("--random-weights", action="store_true")
    ap.add_argument("--checkpoint")
    ap.add_argument("--unclip")
    ap.add_argument("--vae")
    ap.add_argument("--blurry-vae")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--voxels", type=int, default=8627)
    ap.add_argument("--no-blurry", action="store_true", help="random weights without the blurry branch (rt-MindEye)")
    ap.add_argument("--bank-embeddings")
    ap.add_argument("--bank-ids")
    ap.add_argument("--bank-size", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--graphs", default=None, help="comma-separated subset of graphs to write")
    ap.add_argument("--count-only", action="store_true", help="build on the meta device, print parameter counts, stop")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--reference", type=pathlib.Path)
    ap.add_argument("--compare-keys", metavar="REF_CHECKOUT_DIR")
    args = ap.parse_args()

    if args.compare_keys:
        compare_keys(pathlib.Path(args.compare_keys))
        return
    torch.manual_seed(args.seed)

    real = bool(args.checkpoint or args.unclip)
    if args.tiny:
        cfg = M.tiny_config()
        name, half = "mindeye2-tiny", False
    else:
        cfg = M.Config(hidden=args.hidden, voxels=args.voxels, blurry=not args.no_blurry)
        name, half = "mindeye2-random" if args.random_weights else "mindeye2", True

    if args.count_only:
        mods = build_all(cfg, device="meta")
        print_counts(mods)
        return
    if args.out is None:
        ap.error("OUT_DIR is required")

    t0 = time.time()
    if not real and not (args.tiny or args.random_weights):
        ap.error("give --tiny, --random-weights, or real weights (--checkpoint and --unclip)")
    if not real:
        mods = build_all(cfg)
        note = ("tiny widths, random weights (seed %d), float32" % args.seed if args.tiny else
                "MindEye2 sizes, random weights (seed %d), fp16 bodies" % args.seed)
    else:
        if not (args.checkpoint and args.unclip):
            ap.error("real weights need --checkpoint and --unclip (or use --tiny / --random-weights)")
        cfg, mods = load_real(args, cfg)   # --tiny with checkpoints: tiny widths (tests)
        name = "mindeye2-tiny" if args.tiny else "mindeye2"
        note = "MindEye2 weights from %s and %s, fp16 bodies" % (os.path.basename(args.checkpoint),
                                                                   os.path.basename(args.unclip))
    print_counts(mods)
    for m in mods.values():
        m.eval()

    out = args.out
    names = graph_names(cfg)
    if args.graphs:
        names = [n for n in names if n in args.graphs.split(",")]
    gen = torch.Generator().manual_seed(args.seed + 1)
    io = {n: graph_io(n, cfg, gen) for n in graph_names(cfg)}
    results, ref_out = {}, {}
    for n in names:
        g = graph_module(n, mods, cfg).eval()
        if half and n not in FP32_BODIES:
            M.to_half(g)
        inputs, outputs = io[n]
        t1 = time.time()
        if args.check or args.reference or n == "backbone":
            with torch.no_grad():
                torch_out = g(*inputs.values())
            torch_out = torch_out if isinstance(torch_out, tuple) else (torch_out,)
            ref_out[n] = dict(zip(outputs, torch_out))
        size = export_graph(g, inputs, outputs, out / GRAPH_FILES[n])
        print(f"{n:17s} {size / 1e6:10.1f} MB  exported in {time.time() - t1:6.1f} s")
        if args.check:
            got = ort_run(out / GRAPH_FILES[n], inputs)
            errs = [rel_err(a, b.numpy()) for a, b in zip(got, torch_out)]
            results[n] = errs
            print(f"  check {n}: " + ", ".join(f"{o} rel err {e:.2e}" for o, e in zip(outputs, errs)))
        del g
        gc.collect()

    # bank
    E = cfg.tokens * cfg.width
    if args.bank_embeddings:
        emb = np.load(args.bank_embeddings, mmap_mode="r")
        ids = pathlib.Path(args.bank_ids).read_text().split()
        assert emb.shape[1] == E and len(ids) == emb.shape[0], (emb.shape, len(ids))
        emb = np.asarray(emb)
        emb = (emb / np.linalg.norm(emb.astype(np.float32), axis=1, keepdims=True)).astype(emb.dtype)
    else:
        n_bank = args.bank_size or (20 if args.tiny else 250)
        plant = None
        if "backbone" in ref_out:
            plant = (7 % n_bank, ref_out["backbone"]["retrieval"].numpy())
        emb = random_bank(n_bank, E, args.seed, plant)
        ids = [f"cand-{i:04d}" for i in range(n_bank)]
    write_bank(out, emb, ids)
    write_manifests(out, cfg, name, emb.shape[0], str(emb.dtype), note)

    if args.reference:
        write_reference(args.reference, io, ref_out, names, cfg)
    if args.check:
        worst = max(max(e) for e in results.values())
        print(f"max relative error over all graphs: {worst:.2e}")
    print(f"done in {time.time() - t0:.1f} s -> {out}")


def print_counts(mods):
    total = 0
    for k, m in mods.items():
        n = M.unique_count(m)
        total += n
        print(f"params {k:12s} {n:>15,d}")
    print(f"params {'total':12s} {total:>15,d}")


def write_reference(ref, io, ref_out, names, cfg):
    ref.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in names:
        inputs, _ = io[n]
        for k, v in inputs.items():
            np.save(ref / f"{n}_{k}.npy", v.numpy())
            rows.append((f"{n}_{k}.npy", "input", list(v.shape), str(v.numpy().dtype)))
        for k, v in ref_out[n].items():
            np.save(ref / f"{n}_{k}.npy", v.numpy().astype(np.float32))
            rows.append((f"{n}_{k}.npy", "output", list(v.shape), "float32"))
    lines = ["# Reference tensors for tests/fixtures/mindeye2_tiny", "",
             "Written by `python onnx/export_mindeye2.py tests/fixtures/mindeye2_tiny --tiny --seed 0 "
             "--check --reference tests/fixtures/mindeye2_tiny/reference`.", "",
             "For each graph, its fixed random inputs and the PyTorch module's outputs on them "
             "(float32, except int64 timesteps). Graph files: subject/adapter.onnx, "
             "model/{backbone,prior,unclip_step,vae_decoder,lowlevel_decoder}.onnx. "
             "ONNX Runtime (CPU) reproduces every output within 1e-4 relative error "
             "(max|ort - torch| / max|torch|).", "",
             "Bank row 7 of model/bank/embeddings.npy (float16) is the normalised flattened "
             "`backbone_retrieval.npy`: a retrieval from `backbone_latent.npy` ranks cand-0007 first.", "",
             "| file | role | shape | dtype |", "| --- | --- | --- | --- |"]
    lines += [f"| {f} | {r} | {s} | {d} |" for f, r, s, d in rows]
    (ref / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
