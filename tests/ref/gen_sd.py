#!/usr/bin/python3
"""Writes tests/ref/sd/tiny_seed1.safetensors: reference outputs of a tiny Stable Diffusion 1.x model,
for tests/test_sd_models.c.

The model is the one `alignprop init --config tiny --seed 1` writes. By default this script makes it
itself in a temporary folder by running <repo>/build/alignprop (build the project first with `make`);
or pass an existing diffusers folder with --model DIR (and the --seed it was made with, which is only
recorded). It reads the diffusers folder as a diffusers user would: the components' config.json files
and their safetensors weights (parsed here with struct + json), and runs the networks written below in
PyTorch, NCHW, from the facts in shared/spec/SD_FACTS.md (sections 1, 2, 3 and 6), not from the C code:

  * the CLIP text transformer on two fixed token sequences: "" and "a photo of a cat" (ids from the
    spec's test vectors, padded with 49407 to 77);
  * one UNet call on a batch of two (the uncond and cond embeddings, two random latents, two
    timesteps);
  * a VAE decode of a fixed latent batch and a VAE encode (the moments) of a fixed image;
  * a 3-step DDIM sample (eta 0, leading spacing, steps_offset 1, the SD1.5 schedule) with
    classifier-free guidance 7.5 ([uncond; cond] batched through one UNet call per step) from
    torch.randn initial latents drawn as diffusers does (a CPU generator seeded with the seed), and the
    decoded image.

The networks run in float64 (the weights are f32, converted exactly); the outputs are stored as f32.
The schedule is diffusers' f32 one. Shapes are deliberately not square, so a transposed H and W shows.

Run from the repository root with Debian's python3-torch (the `make fixtures` target does this):
    /usr/bin/python3 tests/ref/gen_sd.py [--model DIR] [--seed N] [--alignprop BIN]

Output: one safetensors file (written with the small writer below). Tensors keep PyTorch's NCHW
layout; the C test permutes. Its __metadata__ holds the seed, the settings, and per component a
CRC-32 of the weights (every tensor of the component's safetensors file, in sorted name order: the
UTF-8 name, then the raw little-endian f32 bytes), so the test can check that the model it makes
in memory holds the same weights.
"""
import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "tests", "ref", "sd")
DT = torch.float64

# SD_FACTS 3.3 test vector, and the empty prompt; SD1.x pads with <|endoftext|> = 49407.
COND_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]
UNCOND_IDS = [49406, 49407]
COND_PROMPT = "a photo of a cat"

# ------------------------------------------------------------------ safetensors


def st_read(path):
    """name -> (dtype string, shape, raw bytes), and the metadata dict."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        out[name] = (info["dtype"], list(info["shape"]), data[base + b:base + e])
    return out, meta


def st_tensors(path):
    raw, _ = st_read(path)
    w = {}
    for name, (dt, shape, buf) in raw.items():
        if dt != "F32":
            sys.exit(f"gen_sd: {path}: tensor {name} is {dt}; make the model with f32 weights")
        w[name] = torch.from_numpy(np.frombuffer(buf, dtype="<f4").copy()).reshape(shape).to(DT)
    return w, raw


def weights_crc(raw):
    crc = 0
    for name in sorted(raw):
        crc = zlib.crc32(name.encode("utf-8"), crc)
        crc = zlib.crc32(raw[name][2], crc)
    return crc


def st_write(path, tensors, meta):
    """tensors: name -> numpy array (float32 or int64), written in sorted name order."""
    header = {"__metadata__": meta}
    blobs = []
    off = 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dt = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}[a.dtype]
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# ------------------------------------------------------------------ building blocks (NCHW)


class Params:
    def __init__(self, w, prefix=""):
        self.w, self.prefix = w, prefix

    def __getitem__(self, name):
        return self.w[self.prefix + name]

    def has(self, name):
        return (self.prefix + name) in self.w

    def sub(self, prefix):
        return Params(self.w, self.prefix + prefix)


def conv(p, x, stride=1, padding=1):
    return F.conv2d(x, p["weight"], p["bias"], stride=stride, padding=padding)


def linear(p, x, bias=True):
    w = p["weight"]
    if w.dim() == 4:  # a 1x1 conv weight [out, in, 1, 1] used on tokens
        w = w[:, :, 0, 0]
    return F.linear(x, w, p["bias"] if bias else None)


def group_norm(p, x, groups, eps):
    return F.group_norm(x, groups, p["weight"], p["bias"], eps)


def layer_norm(p, x, eps):
    return F.layer_norm(x, (x.shape[-1],), p["weight"], p["bias"], eps)


def attention(q, k, v, heads, causal=False):
    """q [B,T,C], k, v [B,S,C]; head h uses channels h*d .. h*d+d-1; softmax over keys."""
    B, T, C = q.shape
    S = k.shape[1]
    d = C // heads
    q = q.reshape(B, T, heads, d).transpose(1, 2)
    k = k.reshape(B, S, heads, d).transpose(1, 2)
    v = v.reshape(B, S, heads, d).transpose(1, 2)
    s = q @ k.transpose(-1, -2) * (d ** -0.5)
    if causal:
        mask = torch.ones(T, S, dtype=torch.bool).triu(1)  # key j > query i is hidden
        s = s.masked_fill(mask, float("-inf"))
    a = torch.softmax(s, dim=-1)
    return (a @ v).transpose(1, 2).reshape(B, T, C)


def resnet(p, x, groups, eps, temb=None):
    """ResnetBlock2D: norm1, SiLU, conv1, (+ time_emb_proj(SiLU(temb))), norm2, SiLU, conv2; skip."""
    h = conv(p.sub("conv1."), F.silu(group_norm(p.sub("norm1."), x, groups, eps)))
    if temb is not None:
        h = h + linear(p.sub("time_emb_proj."), F.silu(temb))[:, :, None, None]
    h = conv(p.sub("conv2."), F.silu(group_norm(p.sub("norm2."), h, groups, eps)))
    cin, cout = x.shape[1], h.shape[1]
    if cin != cout:
        skip = conv(p.sub("conv_shortcut."), x, padding=0)
    else:
        assert not p.has("conv_shortcut.weight")
        skip = x
    return skip + h


def to_tokens(x):
    B, C, H, W = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, H * W, C)  # token = y*W + x


def from_tokens(t, H, W):
    B, _, C = t.shape
    return t.reshape(B, H, W, C).permute(0, 3, 1, 2)


# ------------------------------------------------------------------ UNet (SD_FACTS section 1)


def timestep_embedding(t, dim):
    """[cos | sin], f_i = exp(-ln(10000) i / half) (flip_sin_to_cos True, freq_shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=DT) / half)
    a = t.to(DT)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=1)


def spatial_transformer(p, x, ctx, heads, groups, linear_proj):
    B, C, H, W = x.shape
    h = group_norm(p.sub("norm."), x, groups, 1e-6)
    if linear_proj:
        h = linear(p.sub("proj_in."), to_tokens(h))
    else:
        h = to_tokens(conv(p.sub("proj_in."), h, padding=0))
    b = p.sub("transformer_blocks.0.")
    # self-attention
    n = layer_norm(b.sub("norm1."), h, 1e-5)
    a = b.sub("attn1.")
    o = attention(linear(a.sub("to_q."), n, False), linear(a.sub("to_k."), n, False),
                  linear(a.sub("to_v."), n, False), heads)
    h = h + linear(a.sub("to_out.0."), o)
    # cross-attention on the text
    n = layer_norm(b.sub("norm2."), h, 1e-5)
    a = b.sub("attn2.")
    o = attention(linear(a.sub("to_q."), n, False), linear(a.sub("to_k."), ctx, False),
                  linear(a.sub("to_v."), ctx, False), heads)
    h = h + linear(a.sub("to_out.0."), o)
    # GEGLU feed-forward: first half value, second half gate
    n = layer_norm(b.sub("norm3."), h, 1e-5)
    pr = linear(b.sub("ff.net.0.proj."), n)
    Fi = pr.shape[-1] // 2
    u = pr[..., :Fi] * F.gelu(pr[..., Fi:])
    h = h + linear(b.sub("ff.net.2."), u)
    if linear_proj:
        h = from_tokens(linear(p.sub("proj_out."), h), H, W)
    else:
        h = conv(p.sub("proj_out."), from_tokens(h, H, W), padding=0)
    return h + x


def unet_forward(w, cfg, x, t, ctx):
    P = Params(w)
    G, eps = cfg["norm_num_groups"], cfg["norm_eps"]
    # SD1.x: attention_head_dim is the number of heads when num_attention_heads is unset
    heads = cfg.get("num_attention_heads") or cfg["attention_head_dim"]
    linear_proj = cfg.get("use_linear_projection", False)
    nlev = len(cfg["block_out_channels"])
    layers = cfg["layers_per_block"]
    C0 = cfg["block_out_channels"][0]
    temb = timestep_embedding(t, C0)
    temb = linear(P.sub("time_embedding.linear_2."), F.silu(linear(P.sub("time_embedding.linear_1."), temb)))
    h = conv(P.sub("conv_in."), x)
    skips = [h]
    for l, kind in enumerate(cfg["down_block_types"]):
        for j in range(layers):
            h = resnet(P.sub(f"down_blocks.{l}.resnets.{j}."), h, G, eps, temb)
            if kind.startswith("CrossAttn"):
                h = spatial_transformer(P.sub(f"down_blocks.{l}.attentions.{j}."), h, ctx, heads, G, linear_proj)
            skips.append(h)
        if l < nlev - 1:
            h = conv(P.sub(f"down_blocks.{l}.downsamplers.0.conv."), h, stride=2, padding=1)
            skips.append(h)
    h = resnet(P.sub("mid_block.resnets.0."), h, G, eps, temb)
    h = spatial_transformer(P.sub("mid_block.attentions.0."), h, ctx, heads, G, linear_proj)
    h = resnet(P.sub("mid_block.resnets.1."), h, G, eps, temb)
    for i, kind in enumerate(cfg["up_block_types"]):
        for j in range(layers + 1):
            h = torch.cat([h, skips.pop()], dim=1)  # current first, skip second
            h = resnet(P.sub(f"up_blocks.{i}.resnets.{j}."), h, G, eps, temb)
            if kind.startswith("CrossAttn"):
                h = spatial_transformer(P.sub(f"up_blocks.{i}.attentions.{j}."), h, ctx, heads, G, linear_proj)
        if i < nlev - 1:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = conv(P.sub(f"up_blocks.{i}.upsamplers.0.conv."), h)
    assert not skips
    h = F.silu(group_norm(P.sub("conv_norm_out."), h, G, eps))
    return conv(P.sub("conv_out."), h)


# ------------------------------------------------------------------ VAE (SD_FACTS section 2)


def vae_attention(p, x, groups):
    """Single-head mid-block attention with biases, residual; GroupNorm eps 1e-6."""
    B, C, H, W = x.shape
    h = to_tokens(group_norm(p.sub("group_norm."), x, groups, 1e-6))
    o = attention(linear(p.sub("to_q."), h), linear(p.sub("to_k."), h), linear(p.sub("to_v."), h), 1)
    return x + from_tokens(linear(p.sub("to_out.0."), o), H, W)


def vae_mid(p, h, G):
    h = resnet(p.sub("mid_block.resnets.0."), h, G, 1e-6)
    h = vae_attention(p.sub("mid_block.attentions.0."), h, G)
    return resnet(p.sub("mid_block.resnets.1."), h, G, 1e-6)


def vae_decode(w, cfg, latent):
    """latent (scaled by scaling_factor) -> image in about [-1, 1]."""
    P = Params(w)
    G = cfg["norm_num_groups"]
    nlev = len(cfg["block_out_channels"])
    z = latent / cfg["scaling_factor"]
    h = conv(P.sub("post_quant_conv."), z, padding=0)
    D = P.sub("decoder.")
    h = conv(D.sub("conv_in."), h)
    h = vae_mid(D, h, G)
    for i in range(nlev):  # diffusers up_blocks are in execution order
        for j in range(cfg["layers_per_block"] + 1):
            h = resnet(D.sub(f"up_blocks.{i}.resnets.{j}."), h, G, 1e-6)
        if i < nlev - 1:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = conv(D.sub(f"up_blocks.{i}.upsamplers.0.conv."), h)
    h = F.silu(group_norm(D.sub("conv_norm_out."), h, G, 1e-6))
    return conv(D.sub("conv_out."), h)


def vae_encode_moments(w, cfg, image):
    """image [-1, 1] -> moments (mean, logvar) before sampling and scaling."""
    P = Params(w)
    G = cfg["norm_num_groups"]
    nlev = len(cfg["block_out_channels"])
    E = P.sub("encoder.")
    h = conv(E.sub("conv_in."), image)
    for i in range(nlev):
        for j in range(cfg["layers_per_block"]):
            h = resnet(E.sub(f"down_blocks.{i}.resnets.{j}."), h, G, 1e-6)
        if i < nlev - 1:  # pad right and bottom by one, then stride 2 without padding
            h = conv(E.sub(f"down_blocks.{i}.downsamplers.0.conv."), F.pad(h, (0, 1, 0, 1)), stride=2, padding=0)
    h = vae_mid(E, h, G)
    h = F.silu(group_norm(E.sub("conv_norm_out."), h, G, 1e-6))
    h = conv(E.sub("conv_out."), h)
    return conv(P.sub("quant_conv."), h, padding=0)


# ------------------------------------------------------------------ CLIP text (SD_FACTS section 3)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def clip_text_forward(w, cfg, ids):
    P = Params(w, "text_model.")
    T = ids.shape[1]
    eps = cfg["layer_norm_eps"]
    heads = cfg["num_attention_heads"]
    act = quick_gelu if cfg.get("hidden_act", "quick_gelu") == "quick_gelu" else F.gelu
    h = P["embeddings.token_embedding.weight"][ids] + P["embeddings.position_embedding.weight"][:T][None]
    for L in range(cfg["num_hidden_layers"]):
        p = P.sub(f"encoder.layers.{L}.")
        n = layer_norm(p.sub("layer_norm1."), h, eps)
        a = p.sub("self_attn.")
        o = attention(linear(a.sub("q_proj."), n), linear(a.sub("k_proj."), n), linear(a.sub("v_proj."), n),
                      heads, causal=True)
        h = h + linear(a.sub("out_proj."), o)
        n = layer_norm(p.sub("layer_norm2."), h, eps)
        h = h + linear(p.sub("mlp.fc2."), act(linear(p.sub("mlp.fc1."), n)))
    return layer_norm(P.sub("final_layer_norm."), h, eps)


# ------------------------------------------------------------------ DDIM (SD_FACTS section 6)


def sd15_alphas_cumprod(sched):
    assert sched["beta_schedule"] == "scaled_linear"
    n = sched["num_train_timesteps"]
    # diffusers builds these on the CPU in float32
    betas = torch.linspace(sched["beta_start"] ** 0.5, sched["beta_end"] ** 0.5, n, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(n_train, steps, offset):
    ratio = n_train // steps
    return [k * ratio + offset for k in range(steps)][::-1]  # "leading"


def ddim_step(acp, n_train, steps, t, x, eps, set_alpha_to_one=False):
    """eta 0: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, epsilon prediction, no clipping."""
    prev = t - n_train // steps
    a_t = float(acp[t])
    a_prev = float(acp[prev]) if prev >= 0 else (1.0 if set_alpha_to_one else float(acp[0]))
    x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps


# ------------------------------------------------------------------ main


def padded(ids, n=77):
    return ids + [49407] * (n - len(ids))


def make_model(alignprop, seed):
    if not os.access(alignprop, os.X_OK):
        sys.exit(f"gen_sd: {alignprop} not found: build the project first (make), or pass --model DIR")
    d = tempfile.mkdtemp(prefix="gen_sd_")
    subprocess.run([alignprop, "init", "--config", "tiny", "--seed", str(seed), "--dtype", "f32", "-o", d],
                   check=True, stdout=subprocess.DEVNULL)
    return d


def load_json(path):
    with open(path) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="an existing diffusers folder of the tiny config (default: make one)")
    ap.add_argument("--seed", type=int, default=1, help="the init seed of the model (default 1)")
    ap.add_argument("--alignprop", default=os.path.join(ROOT, "build", "alignprop"))
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()

    tmp = None
    model = args.model
    if not model:
        model = tmp = make_model(args.alignprop, args.seed)
    try:
        ucfg = load_json(os.path.join(model, "unet", "config.json"))
        vcfg = load_json(os.path.join(model, "vae", "config.json"))
        tcfg = load_json(os.path.join(model, "text_encoder", "config.json"))
        scfg = load_json(os.path.join(model, "scheduler", "scheduler_config.json"))
        uw, uraw = st_tensors(os.path.join(model, "unet", "diffusion_pytorch_model.safetensors"))
        vw, vraw = st_tensors(os.path.join(model, "vae", "diffusion_pytorch_model.safetensors"))
        tw, traw = st_tensors(os.path.join(model, "text_encoder", "model.safetensors"))
    finally:
        if tmp:
            shutil.rmtree(tmp)

    torch.set_grad_enabled(False)
    gen = torch.Generator().manual_seed(20240601)
    out = {}
    meta = {
        "generator": "tests/ref/gen_sd.py",
        "torch": torch.__version__,
        "config": "tiny",
        "seed": str(args.seed),
        "crc_unet": "%08x" % weights_crc(uraw),
        "crc_vae": "%08x" % weights_crc(vraw),
        "crc_text_encoder": "%08x" % weights_crc(traw),
        "params_unet": str(sum(v.numel() for v in uw.values())),
        "params_vae": str(sum(v.numel() for v in vw.values())),
        "params_text_encoder": str(sum(v.numel() for v in tw.values())),
    }

    # text encoder: row 0 uncond (""), row 1 cond, as diffusers concatenates them for guidance
    ids = torch.tensor([padded(UNCOND_IDS), padded(COND_IDS)], dtype=torch.int64)
    ctx = clip_text_forward(tw, tcfg, ids)
    out["text.ids"] = ids.numpy()
    out["text.out"] = ctx.float().numpy()

    # one UNet call on a batch of two: uncond and cond contexts, two latents and timesteps
    lat_c = ucfg["in_channels"]
    x = torch.randn(2, lat_c, 16, 12, generator=gen, dtype=torch.float32)
    t = torch.tensor([801.0, 281.0], dtype=torch.float32)
    # the context is text.out as stored (rounded to f32), which is what the C test feeds
    ctx32 = ctx.float()
    out["unet.x"] = x.numpy()
    out["unet.t"] = t.numpy()
    out["unet.out"] = unet_forward(uw, ucfg, x.to(DT), t, ctx32.to(DT)).float().numpy()

    # VAE decode of a fixed latent batch, and the encoder's moments of a fixed image
    z = torch.randn(2, vcfg["latent_channels"], 10, 6, generator=gen, dtype=torch.float32)
    out["vae.dec.latent"] = z.numpy()
    out["vae.dec.image"] = vae_decode(vw, vcfg, z.to(DT)).float().numpy()
    img = torch.rand(1, vcfg["in_channels"], 16, 12, generator=gen, dtype=torch.float32) * 2 - 1
    out["vae.enc.image"] = img.numpy()
    out["vae.enc.moments"] = vae_encode_moments(vw, vcfg, img.to(DT)).float().numpy()

    # DDIM, 3 steps, guidance 7.5, from diffusers' initial latents for the seed
    steps, scale, n_train = 3, 7.5, scfg["num_train_timesteps"]
    sample_seed, H, W = 42, 32, 24  # image H x W; latents H/f x W/f
    f = 2 ** (len(vcfg["block_out_channels"]) - 1)
    acp = sd15_alphas_cumprod(scfg)
    ts = ddim_timesteps(n_train, steps, scfg["steps_offset"])
    lat = torch.randn(1, lat_c, H // f, W // f, generator=torch.Generator().manual_seed(sample_seed),
                      dtype=torch.float32)
    out["ddim.init"] = lat.numpy()
    xk = lat.to(DT)
    per_step = []
    for t_k in ts:
        eps2 = unet_forward(uw, ucfg, torch.cat([xk, xk]), torch.tensor([float(t_k)] * 2), ctx)
        eu, ec = eps2.chunk(2)
        e = eu + scale * (ec - eu)
        xk = ddim_step(acp, n_train, steps, t_k, xk, e, scfg.get("set_alpha_to_one", False))
        per_step.append(xk)
    out["ddim.latents"] = torch.stack(per_step).float().numpy()  # [steps, 1, C, h, w]
    out["ddim.image"] = vae_decode(vw, vcfg, xk).float().numpy()
    out["ddim.timesteps"] = np.array(ts, dtype=np.int64)
    meta.update({
        "ddim.steps": str(steps), "ddim.cfg": str(scale), "ddim.eta": "0", "ddim.seed": str(sample_seed),
        "ddim.width": str(W), "ddim.height": str(H), "ddim.prompt": COND_PROMPT, "ddim.negative": "",
    })

    os.makedirs(OUT_DIR, exist_ok=True)
    path = args.output or os.path.join(OUT_DIR, f"tiny_seed{args.seed}.safetensors")
    st_write(path, out, meta)
    for k in sorted(out):
        a = out[k]
        print(f"  {k:18s} {str(list(a.shape)):22s} max|x| {float(np.abs(a).max()):.4g}")
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
