"""MindEye2's networks, written for export (ONNX) and timing (plain torch).

Independent re-implementations whose parameter *names and shapes* follow the
published state dicts, so that `load_state_dict(strict=True)` takes the real
checkpoints:

* MindEye2 `last.pth` (`checkpoint["model_state_dict"]`): `ridge.*`,
  `backbone.*` (BrainNetwork, with or without the blurry branch),
  `diffusion_prior.*` (BrainDiffusionPrior around PriorNetwork).
* unCLIP `unclip6_epoch0_step110000.ckpt` (`["state_dict"]`):
  `model.diffusion_model.*` (the sgm UNetModel of configs/unclip6.yaml) and
  `first_stage_model.{post_quant_conv,decoder}.*` (the SDXL VAE decoder).
* the SD VAE that decodes MindEye2's blurry latent (`sd_image_var_autoenc.pth`,
  a diffusers AutoencoderKL state dict): `post_quant_conv.*`, `decoder.*`.

Only torch is needed. Every module computes its normalisations in float32
whatever the parameter dtype (as sgm's GroupNorm32 does), so a `.half()` copy is
the "fp16 body" that the exporter writes. Attention is an explicit
softmax(q k^T) v by default (exports cleanly to opset 17); set
`ATTENTION["sdpa"] = True` to use torch's fused scaled_dot_product_attention
(gpu_timing.py does).
"""

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ATTENTION = {"sdpa": False}


def attention(q, k, v, scale):
    """softmax(q k^T * scale) v over the last two axes; the softmax in float32."""
    if ATTENTION["sdpa"]:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    w = torch.matmul(q * scale, k.transpose(-1, -2))
    w = torch.softmax(w.float(), dim=-1).to(v.dtype)
    return torch.matmul(w, v)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm evaluated in float32 (sgm's GroupNorm32 semantics)."""

    def forward(self, x):
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm evaluated in float32."""

    def forward(self, x):
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                            self.bias.float(), self.eps).to(x.dtype)


# --------------------------------------------------------------------------
# configuration


@dataclass
class Config:
    voxels: int = 8627
    hidden: int = 1024            # ridge width (rt-MindEye 1024, paper 4096)
    n_blocks: int = 4
    tokens: int = 256             # OpenCLIP bigG tokens
    width: int = 1664             # their width
    blurry: bool = True           # the paper's blurry branch (rt-MindEye has none)
    blurry_ch: int = 64           # blin1 output = blurry_ch * blurry_hw**2 (4*28*28)
    blurry_hw: int = 7
    bup_channels: tuple = (32, 64, 128)
    bup_groups: int = 32
    bmaps: int = 512
    # prior
    prior_depth: int = 6
    prior_dim_head: int = 52
    prior_heads: int = 32
    prior_timesteps: int = 100
    # unCLIP UNet (configs/unclip6.yaml network_config)
    unet_channels: int = 320
    unet_mult: tuple = (1, 2, 4)
    unet_attn_res: tuple = (4, 2)
    unet_res_blocks: int = 2
    unet_depth: tuple = (1, 2, 10)
    unet_head_channels: int = 64
    unet_groups: int = 32
    vector_outdim: int = 256      # ConcatTimestepEmbedderND outdim; adm_in_channels = 4 * this
    latent_hw: int = 96
    # SDXL VAE decoder (first_stage_config ddconfig)
    vae_ch: int = 128
    vae_mult: tuple = (1, 2, 4, 4)
    vae_res_blocks: int = 2
    vae_groups: int = 32
    # SD VAE for the blurry latent (diffusers AutoencoderKL)
    low_channels: tuple = (128, 256, 512, 512)
    low_layers: int = 2
    low_groups: int = 32
    # constants
    unclip_scale_factor: float = 0.13025
    low_scale_factor: float = 0.18215
    train_steps: int = 1000
    linear_start: float = 0.00085
    linear_end: float = 0.012

    @property
    def adm(self):
        return 4 * self.vector_outdim

    @property
    def blurry_hw_out(self):
        return self.blurry_hw * 2 ** (len(self.bup_channels) - 1)

    @property
    def image_hw(self):
        return self.latent_hw * 2 ** (len(self.vae_mult) - 1)

    @property
    def low_image_hw(self):
        return self.blurry_hw_out * 2 ** (len(self.low_channels) - 1)


def tiny_config(**kw):
    """Narrow widths, the same structure (the --tiny fixtures)."""
    c = Config(voxels=50, hidden=64, tokens=16, width=32, blurry_ch=16, blurry_hw=4,
               bup_channels=(8, 16), bup_groups=8, bmaps=32,
               prior_depth=2, prior_dim_head=8, prior_heads=4,
               unet_channels=16, unet_mult=(1, 2), unet_attn_res=(2,), unet_res_blocks=1,
               unet_depth=(1, 1), unet_head_channels=8, unet_groups=8, vector_outdim=8,
               latent_hw=16, vae_ch=16, vae_mult=(1, 2), vae_res_blocks=1, vae_groups=8,
               low_channels=(16, 32), low_layers=1, low_groups=8)
    return replace(c, **kw)


# --------------------------------------------------------------------------
# adapter + backbone (MindEye2 src/models.py BrainNetwork, notebook RidgeRegression)


class RidgeRegression(nn.Module):
    """`ridge.linears.0` : Linear(V, hidden). voxels [B, V] -> latent [B, hidden]."""

    def __init__(self, voxels, hidden):
        super().__init__()
        self.linears = nn.ModuleList([nn.Linear(voxels, hidden)])

    def forward(self, voxels):
        return self.linears[0](voxels)


def _mlp(i, o):
    return nn.Sequential(nn.Linear(i, o), nn.GELU(), nn.Dropout(0.15), nn.Linear(o, o))


class DiffusersResnet(nn.Module):
    """diffusers ResnetBlock2D without time embedding (VAE decoders)."""

    def __init__(self, cin, cout, groups):
        super().__init__()
        self.norm1 = GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = GroupNorm(groups, cout, eps=1e-6)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.conv_shortcut = nn.Conv2d(cin, cout, 1)
        else:
            self.conv_shortcut = None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class DiffusersAttention(nn.Module):
    """diffusers Attention as built from the deprecated VAE attention block: one head."""

    def __init__(self, ch, groups):
        super().__init__()
        self.group_norm = GroupNorm(groups, ch, eps=1e-6)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch), nn.Dropout(0.0)])

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
        q, k, v = self.to_q(y), self.to_k(y), self.to_v(y)
        y = attention(q[:, None], k[:, None], v[:, None], 1.0 / math.sqrt(c))[:, 0]
        y = self.to_out[0](y)
        return y.transpose(1, 2).reshape(b, c, h, w) + x


class _Upsample2D(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _UpDecoderBlock(nn.Module):
    def __init__(self, cin, cout, layers, groups, upsample):
        super().__init__()
        self.resnets = nn.ModuleList([DiffusersResnet(cin if i == 0 else cout, cout, groups)
                                      for i in range(layers)])
        self.upsamplers = nn.ModuleList([_Upsample2D(cout)]) if upsample else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class _MidBlock(nn.Module):
    def __init__(self, ch, groups):
        super().__init__()
        self.attentions = nn.ModuleList([DiffusersAttention(ch, groups)])
        self.resnets = nn.ModuleList([DiffusersResnet(ch, ch, groups), DiffusersResnet(ch, ch, groups)])

    def forward(self, x):
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class DiffusersDecoder(nn.Module):
    """diffusers.models.vae.Decoder (UpDecoderBlock2D blocks, group norm, SiLU)."""

    def __init__(self, cin, cout, channels, layers_per_block, groups):
        super().__init__()
        self.conv_in = nn.Conv2d(cin, channels[-1], 3, padding=1)
        self.mid_block = _MidBlock(channels[-1], groups)
        rev = list(reversed(channels))
        blocks, prev = [], rev[0]
        for i, ch in enumerate(rev):
            blocks.append(_UpDecoderBlock(prev, ch, layers_per_block + 1, groups, i != len(rev) - 1))
            prev = ch
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = GroupNorm(groups, channels[0], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], cout, 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for b in self.up_blocks:
            x = b(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class BrainNetwork(nn.Module):
    """MindEye2's backbone at seq_len 1: latent [B, h] -> (backbone, clip_voxels, blurry latent)."""

    def __init__(self, cfg: Config):
        super().__init__()
        h, seq = cfg.hidden, 1
        self.clip_size, self.tokens = cfg.width, cfg.tokens
        self.blurry = cfg.blurry
        self.blurry_ch, self.blurry_hw = cfg.blurry_ch, cfg.blurry_hw
        self.mixer_blocks1 = nn.ModuleList([nn.Sequential(LayerNorm(h), _mlp(h, h)) for _ in range(cfg.n_blocks)])
        self.mixer_blocks2 = nn.ModuleList([nn.Sequential(LayerNorm(seq), _mlp(seq, seq)) for _ in range(cfg.n_blocks)])
        self.backbone_linear = nn.Linear(h * seq, cfg.width * cfg.tokens)
        w = cfg.width
        self.clip_proj = nn.Sequential(LayerNorm(w), nn.GELU(), nn.Linear(w, w), LayerNorm(w), nn.GELU(),
                                       nn.Linear(w, w), LayerNorm(w), nn.GELU(), nn.Linear(w, w))
        if cfg.blurry:
            self.blin1 = nn.Linear(h * seq, cfg.blurry_ch * cfg.blurry_hw ** 2)
            self.bdropout = nn.Dropout(0.3)
            self.bnorm = GroupNorm(1, cfg.blurry_ch)
            self.bupsampler = DiffusersDecoder(cfg.blurry_ch, 4, cfg.bup_channels, 1, cfg.bup_groups)
            m = cfg.bmaps
            # feeds only a training loss; kept for its state-dict keys
            self.b_maps_projector = nn.Sequential(
                nn.Conv2d(cfg.blurry_ch, m, 1, bias=False), GroupNorm(1, m), nn.ReLU(True),
                nn.Conv2d(m, m, 1, bias=False), GroupNorm(1, m), nn.ReLU(True), nn.Conv2d(m, m, 1, bias=True))

    def forward(self, latent):
        x = latent[:, None, :]                       # [B, 1, h]
        r1, r2 = x, x.transpose(1, 2)
        for b1, b2 in zip(self.mixer_blocks1, self.mixer_blocks2):
            x = b1(x) + r1
            r1 = x
            x = b2(x.transpose(1, 2)) + r2
            r2 = x
            x = x.transpose(1, 2)
        x = x.reshape(x.shape[0], -1)
        backbone = self.backbone_linear(x).reshape(x.shape[0], self.tokens, self.clip_size)
        clip_voxels = self.clip_proj(backbone)
        if not self.blurry:
            return backbone, clip_voxels
        b = self.blin1(x).reshape(x.shape[0], self.blurry_ch, self.blurry_hw, self.blurry_hw)
        b = self.bupsampler(self.bnorm(b))
        return backbone, clip_voxels, b


# --------------------------------------------------------------------------
# prior (MindEye2 PriorNetwork / FlaggedCausalTransformer on DALLE2-pytorch blocks)


class DalleLayerNorm(nn.Module):
    """DALLE2-pytorch LayerNorm: gain only, eps 1e-5 (fp32 input) or 1e-3 (fp16), optional stable."""

    def __init__(self, dim, stable=False, eps16=1e-3):
        super().__init__()
        self.g = nn.Parameter(torch.ones(dim))
        self.stable, self.eps16 = stable, eps16

    def forward(self, x):
        eps = 1e-5 if x.dtype == torch.float32 else self.eps16
        y = x.float()
        if self.stable:
            y = y / y.amax(dim=-1, keepdim=True)
        mean = y.mean(dim=-1, keepdim=True)
        var = ((y - mean) ** 2).mean(dim=-1, keepdim=True)
        return ((y - mean) * torch.rsqrt(var + eps) * self.g.float()).to(x.dtype)


class Rotary(nn.Module):
    """rotary-embedding-torch RotaryEmbedding(dim), 'lang' frequencies, interleaved pairs."""

    def __init__(self, dim, theta=10000.0):
        super().__init__()
        self.freqs = nn.Parameter(1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim),
                                  requires_grad=False)

    def rotate(self, t):
        n = t.shape[-2]
        pos = torch.arange(n, dtype=torch.float32, device=t.device)
        f = pos[:, None] * self.freqs.float()[None, :]
        f = torch.stack((f, f), dim=-1).reshape(n, -1)           # (n r) with r = 2
        rot = f.shape[-1]
        x, rest = t[..., :rot].float(), t[..., rot:]
        pairs = x.reshape(*x.shape[:-1], rot // 2, 2)
        half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(x.shape)
        x = x * f.cos() + half * f.sin()
        return torch.cat((x.to(t.dtype), rest), dim=-1)


def rel_pos_buckets(i, j, num_buckets=32, max_distance=128):
    """T5 relative-position buckets of (k - q) for q < i, k < j, as DALLE2-pytorch RelPosBias."""
    q = np.arange(i)[:, None]
    k = np.arange(j)[None, :]
    n = np.maximum(q - k, 0)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore"):
        large = max_exact + (np.log(np.maximum(n, 1) / max_exact) / math.log(max_distance / max_exact)
                             * (num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return torch.from_numpy(np.where(n < max_exact, n, large).astype(np.int64))


class RelPosBias(nn.Module):
    def __init__(self, heads, n_tokens, num_buckets=32):
        super().__init__()
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)
        self.register_buffer("buckets", rel_pos_buckets(n_tokens, n_tokens + 1, num_buckets), persistent=False)

    def forward(self):
        return self.relative_attention_bias(self.buckets).permute(2, 0, 1)   # [h, i, j]


class DalleAttention(nn.Module):
    """Cosine-sim attention with one shared k/v head, null kv, rotary, T5 bias."""

    def __init__(self, dim, dim_head, heads, rotary):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.norm = DalleLayerNorm(dim, eps16=1e-5)         # autocast: this norm sees fp32
        self.dropout = nn.Dropout(0.0)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * 2, bias=False)
        self.rotary_emb = rotary
        self.to_out = nn.Sequential(nn.Linear(dim_head * heads, dim, bias=False), DalleLayerNorm(dim))

    def forward(self, x, bias):
        b, n, _ = x.shape
        x = self.norm(x)
        q = self.to_q(x).reshape(b, n, self.heads, self.dim_head).transpose(1, 2)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q = self.rotary_emb.rotate(q * 16.0)
        k = self.rotary_emb.rotate(k)
        nk = self.null_kv[0].to(k.dtype).expand(b, 1, self.dim_head)
        nv = self.null_kv[1].to(v.dtype).expand(b, 1, self.dim_head)
        k = torch.cat((nk, k), dim=1)
        v = torch.cat((nv, v), dim=1)
        q = F.normalize(q, dim=-1) * 4.0                    # sqrt(cosine_sim_scale = 16)
        k = F.normalize(k, dim=-1) * 4.0
        sim = torch.matmul(q, k[:, None].transpose(-1, -2)) + bias.to(q.dtype)
        attn = torch.softmax(sim.float(), dim=-1).to(sim.dtype)
        out = torch.matmul(attn, v[:, None])                # [b, h, n, d]
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        return self.to_out(out)


class _SwiGLU(nn.Module):
    def forward(self, x):
        x, gate = x.chunk(2, dim=-1)
        return x * F.silu(gate)


def dalle_feedforward(dim, mult=4):
    inner = int(mult * dim)
    return nn.Sequential(DalleLayerNorm(dim, eps16=1e-5), nn.Linear(dim, inner * 2, bias=False), _SwiGLU(),
                         nn.Identity(), nn.Dropout(0.0), nn.Linear(inner, dim, bias=False))


class FlaggedCausalTransformer(nn.Module):
    def __init__(self, dim, depth, dim_head, heads, n_tokens):
        super().__init__()
        self.init_norm = nn.Identity()
        self.rel_pos_bias = RelPosBias(heads, n_tokens)
        rotary = Rotary(min(32, dim_head))
        self.layers = nn.ModuleList([nn.ModuleList([DalleAttention(dim, dim_head, heads, rotary),
                                                    dalle_feedforward(dim)]) for _ in range(depth)])
        self.norm = DalleLayerNorm(dim, stable=True, eps16=1e-5)
        self.project_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        bias = self.rel_pos_bias()
        for attn, ff in self.layers:
            x = attn(x, bias) + x
            x = ff(x) + x
        return self.project_out(self.norm(x))


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        half = self.dim // 2
        f = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(10000) / (half - 1)))
        e = t.float()[:, None] * f[None, :]
        return torch.cat((e.sin(), e.cos()), dim=-1)


class DalleMLP(nn.Module):
    """DALLE2-pytorch MLP(dim_in, dim_out), expansion 2, depth 2, SiLU."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        h = 2 * dim_out
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim_in, h), nn.SiLU(), nn.Identity()),
                                 nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Identity()),
                                 nn.Linear(h, dim_out))

    def forward(self, x):
        return self.net(x)


class _ToTokens(nn.Module):
    def forward(self, x):
        return x[:, None, :]


class PriorNetwork(nn.Module):
    """MindEye2 PriorNetwork, learned_query_mode 'pos_emb', continuous time, causal False."""

    def __init__(self, dim, depth, dim_head, heads, num_tokens):
        super().__init__()
        self.dim, self.num_tokens = dim, num_tokens
        self.to_time_embeds = nn.Sequential(nn.Sequential(SinusoidalPosEmb(dim), DalleMLP(dim, dim)), _ToTokens())
        self.learned_query = nn.Parameter(torch.randn(num_tokens, dim) * dim ** -0.5)
        self.causal_transformer = FlaggedCausalTransformer(dim, depth, dim_head, heads, 2 * num_tokens + 1)
        self.null_brain_embeds = nn.Parameter(torch.randn(num_tokens, dim))
        self.null_image_embed = nn.Parameter(torch.randn(num_tokens, dim))

    def forward(self, image_embed, t, brain_embed):
        dtype = self.learned_query.dtype
        sin_emb, mlp = self.to_time_embeds[0][0], self.to_time_embeds[0][1]
        time_embed = mlp(sin_emb(t).to(dtype))[:, None, :]
        x = image_embed + self.learned_query.to(image_embed.dtype)[None]
        tokens = torch.cat((brain_embed, time_embed.to(x.dtype), x), dim=-2)
        return self.causal_transformer(tokens)[..., -self.num_tokens:, :]


def cosine_betas(timesteps, s=0.008):
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64, device="cpu")
    ac = torch.cos(((x / timesteps) + s) / (1 + s) * torch.pi * 0.5) ** 2
    ac = ac / ac[0]
    return torch.clip(1 - ac[1:] / ac[:-1], 0, 0.999)


class NoiseScheduler(nn.Module):
    """DALLE2-pytorch NoiseScheduler buffers (cosine), persistent as in the checkpoint."""

    def __init__(self, timesteps):
        super().__init__()
        betas = cosine_betas(timesteps)
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, dim=0)
        acp = F.pad(ac[:-1], (1, 0), value=1.0)
        pv = betas * (1.0 - acp) / (1.0 - ac)
        for name, val in [
            ("betas", betas), ("alphas_cumprod", ac), ("alphas_cumprod_prev", acp),
            ("sqrt_alphas_cumprod", ac.sqrt()), ("sqrt_one_minus_alphas_cumprod", (1 - ac).sqrt()),
            ("log_one_minus_alphas_cumprod", (1 - ac).log()), ("sqrt_recip_alphas_cumprod", (1 / ac).sqrt()),
            ("sqrt_recipm1_alphas_cumprod", (1 / ac - 1).sqrt()), ("posterior_variance", pv),
            ("posterior_log_variance_clipped", pv.clamp(min=1e-20).log()),
            ("posterior_mean_coef1", betas * acp.sqrt() / (1 - ac)),
            ("posterior_mean_coef2", (1 - acp) * alphas.sqrt() / (1 - ac)),
            ("p2_loss_weight", (1 + ac / (1 - ac)) ** -0.0),
        ]:
            self.register_buffer(name, val.to(torch.float32))


class BrainDiffusionPrior(nn.Module):
    """`diffusion_prior.net.*` + `diffusion_prior.noise_scheduler.*`."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.net = PriorNetwork(cfg.width, cfg.prior_depth, cfg.prior_dim_head, cfg.prior_heads, cfg.tokens)
        self.noise_scheduler = NoiseScheduler(cfg.prior_timesteps)


class PriorStep(nn.Module):
    """One prior call: x_t [B,T,D] f32, t [B] int64, cond [B,T,D] f32 -> x0 prediction [B,T,D] f32.

    An all-zero cond selects the network's learned null_brain_embeds (what
    PriorNetwork does for a dropped condition), so 'zeros' is the unconditional input.
    """

    def __init__(self, prior: BrainDiffusionPrior):
        super().__init__()
        self.prior = prior

    def forward(self, x_t, t, cond):
        net = self.prior.net
        dtype = net.learned_query.dtype
        is_null = (cond.abs().amax(dim=(1, 2), keepdim=True) == 0)
        cond = torch.where(is_null, net.null_brain_embeds.float()[None], cond)
        return net(x_t.to(dtype), t, cond.to(dtype)).float()


# --------------------------------------------------------------------------
# unCLIP UNet (sgm openaimodel.UNetModel + attention.SpatialTransformer)


def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    f = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    a = t.float()[:, None] * f[None]
    return torch.cat((torch.cos(a), torch.sin(a)), dim=-1)


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb, context):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ResBlock(nn.Module):
    def __init__(self, ch, emb_ch, out_ch, groups):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, out_ch))
        self.out_layers = nn.Sequential(GroupNorm(groups, out_ch), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip_connection = nn.Identity() if ch == out_ch else nn.Conv2d(ch, out_ch, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class CrossAttention(nn.Module):
    def __init__(self, dim, heads, dim_head, context_dim=None):
        super().__init__()
        inner = heads * dim_head
        cd = dim if context_dim is None else context_dim
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(cd, inner, bias=False)
        self.to_v = nn.Linear(cd, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x, context=None):
        c = x if context is None else context
        b, n, _ = x.shape
        m = c.shape[1]
        q = self.to_q(x).reshape(b, n, self.heads, self.dim_head).transpose(1, 2)
        k = self.to_k(c).reshape(b, m, self.heads, self.dim_head).transpose(1, 2)
        v = self.to_v(c).reshape(b, m, self.heads, self.dim_head).transpose(1, 2)
        out = attention(q, k, v, self.dim_head ** -0.5)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, dim_head, context_dim):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim)
        self.norm1, self.norm2, self.norm3 = LayerNorm(dim), LayerNorm(dim), LayerNorm(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """use_linear_in_transformer=True variant."""

    def __init__(self, ch, heads, dim_head, depth, context_dim, groups):
        super().__init__()
        inner = heads * dim_head
        self.norm = GroupNorm(groups, ch, eps=1e-6)
        self.proj_in = nn.Linear(ch, inner)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, dim_head, context_dim)
                                                 for _ in range(depth)])
        self.proj_out = nn.Linear(inner, ch)

    def forward(self, x, context):
        b, c, h, w = x.shape
        y = self.norm(x).reshape(b, c, h * w).transpose(1, 2)
        y = self.proj_in(y)
        for blk in self.transformer_blocks:
            y = blk(y, context)
        y = self.proj_out(y)
        return y.transpose(1, 2).reshape(b, c, h, w) + x


class UNetModel(nn.Module):
    """sgm UNetModel for unclip6.yaml (num_classes 'sequential', no resblock_updown, conv resample)."""

    def __init__(self, cfg: Config):
        super().__init__()
        mc, g = cfg.unet_channels, cfg.unet_groups
        hc, ctx = cfg.unet_head_channels, cfg.width
        self.model_channels = mc
        ted = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        self.label_emb = nn.Sequential(nn.Sequential(nn.Linear(cfg.adm, ted), nn.SiLU(), nn.Linear(ted, ted)))
        depth = list(cfg.unet_depth)

        def st(ch, level_depth):
            return SpatialTransformer(ch, ch // hc, hc, level_depth, ctx, g)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(4, mc, 3, padding=1))])
        chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.unet_mult):
            for _ in range(cfg.unet_res_blocks):
                layers = [ResBlock(ch, ted, mult * mc, g)]
                ch = mult * mc
                if ds in cfg.unet_attn_res:
                    layers.append(st(ch, depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(cfg.unet_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, ted, ch, g), st(ch, depth[-1]), ResBlock(ch, ted, ch, g))
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(cfg.unet_mult))[::-1]:
            for i in range(cfg.unet_res_blocks + 1):
                ich = chans.pop()
                layers = [ResBlock(ch + ich, ted, mc * mult, g)]
                ch = mc * mult
                if ds in cfg.unet_attn_res:
                    layers.append(st(ch, depth[level]))
                if level and i == cfg.unet_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm(g, ch), nn.SiLU(), nn.Conv2d(mc, 4, 3, padding=1))

    def forward(self, x, timesteps, context, y):
        dtype = x.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        emb = emb + self.label_emb(y.to(dtype))
        hs, h = [], x
        for m in self.input_blocks:
            h = m(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for m in self.output_blocks:
            h = m(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


class UnclipWrapper(nn.Module):
    """`model.diffusion_model.*` as in sgm's DiffusionEngine (OpenAIWrapper)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.diffusion_model = UNetModel(cfg)


def legacy_ddpm_sigmas(cfg: Config):
    """sgm LegacyDDPMDiscretization over all 1000 steps, ascending (DiscreteDenoiser.sigmas)."""
    betas = torch.linspace(cfg.linear_start ** 0.5, cfg.linear_end ** 0.5, cfg.train_steps, dtype=torch.float64,
                           device="cpu") ** 2
    ac = np.cumprod((1.0 - betas).numpy(), axis=0)
    return torch.tensor(((1 - ac) / ac) ** 0.5, dtype=torch.float32, device="cpu")


def sampler_sigmas(cfg: Config, steps=38):
    """The EulerEDMSampler's sigmas for `steps` (descending, then 0), as sgm computes them."""
    betas = torch.linspace(cfg.linear_start ** 0.5, cfg.linear_end ** 0.5, cfg.train_steps, dtype=torch.float64,
                           device="cpu") ** 2
    ac = np.cumprod((1.0 - betas).numpy(), axis=0)
    ts = np.linspace(cfg.train_steps - 1, 0, steps, endpoint=False).astype(int)[::-1]
    s = torch.tensor(((1 - ac[ts]) / ac[ts]) ** 0.5, dtype=torch.float32, device="cpu")
    return torch.cat([torch.flip(s, (0,)), torch.zeros(1, device="cpu")])


def vector_suffix(cfg: Config, size=768.0, crop=0.0):
    """The 'vector' conditioning MindEye2 computes once: ConcatTimestepEmbedderND(outdim)
    of original_size (size, size) and crop_coords_top_left (crop, crop), concatenated."""
    vals = torch.tensor([size, size, crop, crop], device="cpu")
    return timestep_embedding(vals, cfg.vector_outdim).reshape(1, -1)


class UnclipDenoiser(nn.Module):
    """sgm DiscreteDenoiser(EpsScaling) around the UNet, with the constant vector.

    x [B,4,h,w] f32 (unscaled noisy latent), sigma [B] f32, context [B,T,D] f32 -> denoised [B,4,h,w] f32.
    """

    def __init__(self, unclip: UnclipWrapper, cfg: Config):
        super().__init__()
        self.unclip = unclip
        self.register_buffer("sigmas", legacy_ddpm_sigmas(cfg), persistent=False)
        self.register_buffer("vector", vector_suffix(cfg), persistent=False)

    def forward(self, x, sigma, context):
        unet = self.unclip.diffusion_model
        dtype = unet.time_embed[0].weight.dtype
        idx = (sigma[:, None] - self.sigmas[None, :]).abs().argmin(dim=1)
        s = self.sigmas[idx][:, None, None, None]
        c_in = 1.0 / torch.sqrt(s * s + 1.0)
        y = self.vector.expand(x.shape[0], -1)
        eps = unet((x * c_in).to(dtype), idx, context.to(dtype), y.to(dtype)).float()
        return x - s * eps                          # c_out = -sigma, c_skip = 1


# --------------------------------------------------------------------------
# SDXL VAE decoder (sgm modules/diffusionmodules/model.py Decoder)


class SgmResnet(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.norm1 = GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = GroupNorm(groups, cout, eps=1e-6)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class SgmAttn(nn.Module):
    def __init__(self, ch, groups):
        super().__init__()
        self.norm = GroupNorm(groups, ch, eps=1e-6)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        y = attention(q, k, v, 1.0 / math.sqrt(c))[:, 0].transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(y)


class _Mid(nn.Module):
    def __init__(self, ch, groups):
        super().__init__()
        self.block_1 = SgmResnet(ch, ch, groups)
        self.attn_1 = SgmAttn(ch, groups)
        self.block_2 = SgmResnet(ch, ch, groups)


class _Up(nn.Module):
    def __init__(self, blocks, upsample):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList()
        if upsample is not None:
            self.upsample = upsample


class SgmDecoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, groups, z_channels=4, out_ch=3):
        super().__init__()
        self.num_res_blocks = num_res_blocks
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, groups)
        ups = []
        for level in reversed(range(len(ch_mult))):
            bout = ch * ch_mult[level]
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(SgmResnet(block_in, bout, groups))
                block_in = bout
            ups.insert(0, _Up(blocks, Upsample(block_in) if level != 0 else None))
        self.up = nn.ModuleList(ups)
        self.norm_out = GroupNorm(groups, block_in, eps=1e-6)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(range(len(self.up))):
            for blk in self.up[level].block:
                h = blk(h)
            if level != 0:
                h = self.up[level].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class FirstStage(nn.Module):
    """`first_stage_model.{post_quant_conv,decoder}` of the unCLIP (encoder omitted)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.post_quant_conv = nn.Conv2d(4, 4, 1)
        self.decoder = SgmDecoder(cfg.vae_ch, cfg.vae_mult, cfg.vae_res_blocks, cfg.vae_groups)


class VaeDecode(nn.Module):
    """latent [1,4,h,w] f32 -> image [1,3,8h,8w] in [0,1] f32: decode(z / scale) then clamp(x*mul+add)."""

    def __init__(self, stage: nn.Module, scale_factor, mul, add):
        super().__init__()
        self.stage = stage
        self.inv_scale, self.mul, self.add = 1.0 / scale_factor, mul, add

    def forward(self, latent):
        dtype = self.stage.post_quant_conv.weight.dtype
        x = self.stage.decoder(self.stage.post_quant_conv((latent * self.inv_scale).to(dtype))).float()
        return torch.clamp(x * self.mul + self.add, 0.0, 1.0)


class LowlevelVae(nn.Module):
    """diffusers AutoencoderKL decode path (`post_quant_conv.*`, `decoder.*`) for the blurry latent."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.post_quant_conv = nn.Conv2d(4, 4, 1)
        self.decoder = DiffusersDecoder(4, 3, cfg.low_channels, cfg.low_layers, cfg.low_groups)


# --------------------------------------------------------------------------
# graph-level wrappers (float32 at the edges)


class AdapterGraph(nn.Module):
    def __init__(self, ridge):
        super().__init__()
        self.ridge = ridge

    def forward(self, voxels):
        w = self.ridge.linears[0].weight
        return self.ridge(voxels.to(w.dtype)).float()


class BackboneGraph(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, latent):
        dtype = self.backbone.backbone_linear.weight.dtype
        return tuple(o.float() for o in self.backbone(latent.to(dtype)))


def to_half(module):
    """fp16 weights except normalisation gains/biases and rotary frequencies (kept float32,
    as under MindEye2's autocast); returns the module."""
    keep = (GroupNorm, LayerNorm, DalleLayerNorm, Rotary)
    for m in module.modules():
        if isinstance(m, keep):
            continue
        for name, p in m._parameters.items():
            if p is not None:
                p.data = p.data.half()
    return module


def count(module):
    return sum(p.numel() for p in module.parameters())


def unique_count(module):
    seen, n = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n
