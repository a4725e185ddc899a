#!/usr/bin/python3
"""Writes tests/ref/clip/: tiny CLIP checkpoints in the two layouts users have, and reference outputs
of the towers, for tests/test_clip_models.c.

No transformers or open_clip here: the towers are written below in PyTorch (float64) from
shared/spec/SD_FACTS.md sections 3, 4.1 and 5.1 and nn.MultiheadAttention's conventions, not from
the C code:

  vision: conv (kernel = stride = patch, no bias) -> [class_embedding; patches] (row-major grid)
          + positional embedding -> ln_pre -> pre-LN resblocks (no mask) -> ln_post(token 0) -> @ proj
  text:   token_embedding + positional_embedding -> pre-LN resblocks (causal mask) -> ln_final
          -> feature at argmax(ids) (first maximal id) -> @ text_projection

The reference runs on the OpenCLIP state dict (fused in_proj, x @ proj); the HF file holds the same
values under transformers' names (q/k/v split, projections transposed), and this script checks that
an HF-named forward agrees with it before writing anything.

Files (all small):
  tiny_hf.safetensors   transformers CLIPModel names, plus the position_ids buffers and logit_scale
  tiny_openclip.pt      torch.save({'state_dict': {'module.' + OpenCLIP name: tensor}, 'epoch': 1})
                        (the HPSv2 checkpoints' wrapper; 'module.' as DataParallel leaves it)
  tiny_ref.safetensors  pixels [2,30,30,3] (NHWC, already normalised), image_embeds [2,16],
                        ids [2,12] (I64), text_hidden [2,12,24] (after ln_final), text_embeds [2,16],
                        logit_scale [1]

Run from the repository root: /usr/bin/python3 tests/ref/gen_clip.py
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "ref", "clip")
DT = torch.float64

# the tiny towers (ap_clip_vision_config_tiny and the test's text config)
V = dict(image=30, patch=6, width=32, layers=2, heads=4, mlp=72, act="quick_gelu", proj=16)
T = dict(vocab=600, ctx=16, width=24, layers=2, heads=3, mlp=40, act="gelu", proj=16)
EPS = 1e-5


def st_write(path, tensors, meta=None):
    header = {"__metadata__": meta or {}}
    blobs, off = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dt = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}[a.dtype]
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    os.replace(path + ".tmp", path)


# ------------------------------------------------------------------ weights (OpenCLIP names)


def make_openclip(g):
    def rnd(*shape, scale):
        return (torch.randn(*shape, generator=g, dtype=torch.float32) * scale)

    sd = {}

    def block(pre, w, mlp):
        sd[pre + "ln_1.weight"] = 1 + rnd(w, scale=0.1)
        sd[pre + "ln_1.bias"] = rnd(w, scale=0.1)
        sd[pre + "attn.in_proj_weight"] = rnd(3 * w, w, scale=w ** -0.5)
        sd[pre + "attn.in_proj_bias"] = rnd(3 * w, scale=0.1)
        sd[pre + "attn.out_proj.weight"] = rnd(w, w, scale=w ** -0.5)
        sd[pre + "attn.out_proj.bias"] = rnd(w, scale=0.1)
        sd[pre + "ln_2.weight"] = 1 + rnd(w, scale=0.1)
        sd[pre + "ln_2.bias"] = rnd(w, scale=0.1)
        sd[pre + "mlp.c_fc.weight"] = rnd(mlp, w, scale=w ** -0.5)
        sd[pre + "mlp.c_fc.bias"] = rnd(mlp, scale=0.1)
        sd[pre + "mlp.c_proj.weight"] = rnd(w, mlp, scale=mlp ** -0.5)
        sd[pre + "mlp.c_proj.bias"] = rnd(w, scale=0.1)

    w, p, grid = V["width"], V["patch"], V["image"] // V["patch"]
    sd["visual.class_embedding"] = rnd(w, scale=w ** -0.5)
    sd["visual.conv1.weight"] = rnd(w, 3, p, p, scale=(3 * p * p) ** -0.5)
    sd["visual.positional_embedding"] = rnd(1 + grid * grid, w, scale=w ** -0.5)
    sd["visual.ln_pre.weight"] = 1 + rnd(w, scale=0.1)
    sd["visual.ln_pre.bias"] = rnd(w, scale=0.1)
    for l in range(V["layers"]):
        block(f"visual.transformer.resblocks.{l}.", w, V["mlp"])
    sd["visual.ln_post.weight"] = 1 + rnd(w, scale=0.1)
    sd["visual.ln_post.bias"] = rnd(w, scale=0.1)
    sd["visual.proj"] = rnd(w, V["proj"], scale=w ** -0.5)
    w = T["width"]
    sd["token_embedding.weight"] = rnd(T["vocab"], w, scale=0.5)
    sd["positional_embedding"] = rnd(T["ctx"], w, scale=0.3)
    for l in range(T["layers"]):
        block(f"transformer.resblocks.{l}.", w, T["mlp"])
    sd["ln_final.weight"] = 1 + rnd(w, scale=0.1)
    sd["ln_final.bias"] = rnd(w, scale=0.1)
    sd["text_projection"] = rnd(w, T["proj"], scale=w ** -0.5)
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07), dtype=torch.float32)
    return sd


def to_hf(sd):
    """The same values under transformers' CLIPModel names."""
    hf = {}
    top = {
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    }
    leaf = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
            "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for k, v in sd.items():
        if k in top:
            hf[top[k]] = v
        elif k == "visual.proj":
            hf["visual_projection.weight"] = v.t().contiguous()
        elif k == "text_projection":
            hf["text_projection.weight"] = v.t().contiguous()
        else:
            tower, rest = ("vision_model", k[len("visual.transformer.resblocks."):]) if k.startswith("visual.") \
                else ("text_model", k[len("transformer.resblocks."):])
            l, name = rest.split(".", 1)
            pre = f"{tower}.encoder.layers.{l}."
            if name.startswith("attn.in_proj_"):
                kind = name[len("attn.in_proj_"):]
                for i, q in enumerate("qkv"):
                    n = v.shape[0] // 3
                    hf[pre + f"self_attn.{q}_proj.{kind}"] = v[i * n:(i + 1) * n].contiguous()
            else:
                mod, wb = name.rsplit(".", 1)
                hf[pre + leaf[mod] + "." + wb] = v
    grid = V["image"] // V["patch"]
    hf["vision_model.embeddings.position_ids"] = torch.arange(1 + grid * grid).reshape(1, -1)
    hf["text_model.embeddings.position_ids"] = torch.arange(T["ctx"]).reshape(1, -1)
    return hf


# ------------------------------------------------------------------ the towers (float64)


def act(x, kind):
    return x * torch.sigmoid(1.702 * x) if kind == "quick_gelu" else F.gelu(x)


def ln(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, EPS)


def mha(x, wqkv, bqkv, wo, bo, heads, causal):
    """nn.MultiheadAttention(batch_first) self-attention: in_proj rows [q; k; v], heads contiguous."""
    B, L, C = x.shape
    d = C // heads
    q, k, v = F.linear(x, wqkv, bqkv).split(C, dim=-1)
    q, k, v = (t.reshape(B, L, heads, d).transpose(1, 2) for t in (q, k, v))
    s = (q * d ** -0.5) @ k.transpose(-1, -2)
    if causal:
        s = s + torch.full((L, L), float("-inf"), dtype=s.dtype).triu(1)
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, L, C)
    return F.linear(o, wo, bo)


def resblock(sd, pre, x, heads, kind, causal):
    x = x + mha(ln(x, sd[pre + "ln_1.weight"], sd[pre + "ln_1.bias"]), sd[pre + "attn.in_proj_weight"],
                sd[pre + "attn.in_proj_bias"], sd[pre + "attn.out_proj.weight"], sd[pre + "attn.out_proj.bias"],
                heads, causal)
    h = ln(x, sd[pre + "ln_2.weight"], sd[pre + "ln_2.bias"])
    h = F.linear(act(F.linear(h, sd[pre + "mlp.c_fc.weight"], sd[pre + "mlp.c_fc.bias"]), kind),
                 sd[pre + "mlp.c_proj.weight"], sd[pre + "mlp.c_proj.bias"])
    return x + h


def encode_image(sd, x_nchw):
    x = F.conv2d(x_nchw, sd["visual.conv1.weight"], stride=V["patch"])  # [B,W,g,g]
    x = x.flatten(2).transpose(1, 2)  # [B,g*g,W], row-major over the grid
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + sd["visual.positional_embedding"]
    x = ln(x, sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    for l in range(V["layers"]):
        x = resblock(sd, f"visual.transformer.resblocks.{l}.", x, V["heads"], V["act"], False)
    pooled = ln(x[:, 0], sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    return pooled @ sd["visual.proj"]


def encode_text(sd, ids):
    L = ids.shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:L]
    for l in range(T["layers"]):
        x = resblock(sd, f"transformer.resblocks.{l}.", x, T["heads"], T["act"], True)
    x = ln(x, sd["ln_final.weight"], sd["ln_final.bias"])
    pooled = x[torch.arange(x.shape[0]), ids.argmax(dim=-1)]
    return x, pooled @ sd["text_projection"]


def encode_image_hf(hf, x_nchw):
    """The same tower from the HF names (separate q, k, v; Linear projection): a check of to_hf."""
    e = "vision_model.embeddings."
    x = F.conv2d(x_nchw, hf[e + "patch_embedding.weight"], stride=V["patch"]).flatten(2).transpose(1, 2)
    x = torch.cat([hf[e + "class_embedding"].expand(x.shape[0], 1, -1), x], 1) + hf[e + "position_embedding.weight"]
    x = ln(x, hf["vision_model.pre_layrnorm.weight"], hf["vision_model.pre_layrnorm.bias"])
    for l in range(V["layers"]):
        p = f"vision_model.encoder.layers.{l}."
        wqkv = torch.cat([hf[p + f"self_attn.{q}_proj.weight"] for q in "qkv"])
        bqkv = torch.cat([hf[p + f"self_attn.{q}_proj.bias"] for q in "qkv"])
        x = x + mha(ln(x, hf[p + "layer_norm1.weight"], hf[p + "layer_norm1.bias"]), wqkv, bqkv,
                    hf[p + "self_attn.out_proj.weight"], hf[p + "self_attn.out_proj.bias"], V["heads"], False)
        h = ln(x, hf[p + "layer_norm2.weight"], hf[p + "layer_norm2.bias"])
        x = x + F.linear(act(F.linear(h, hf[p + "mlp.fc1.weight"], hf[p + "mlp.fc1.bias"]), V["act"]),
                         hf[p + "mlp.fc2.weight"], hf[p + "mlp.fc2.bias"])
    pooled = ln(x[:, 0], hf["vision_model.post_layernorm.weight"], hf["vision_model.post_layernorm.bias"])
    return F.linear(pooled, hf["visual_projection.weight"])


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(20261126)
    sd = make_openclip(g)
    hf = to_hf(sd)
    sd64 = {k: v.to(DT) for k, v in sd.items()}
    hf64 = {k: v.to(DT) for k, v in hf.items() if v.is_floating_point()}

    pixels = torch.randn(2, V["image"], V["image"], 3, generator=g, dtype=torch.float32)  # NHWC, normalised
    x = pixels.to(DT).permute(0, 3, 1, 2)
    img = encode_image(sd64, x)
    img_hf = encode_image_hf(hf64, x)
    assert (img - img_hf).abs().max() < 1e-10, "the HF names do not hold the OpenCLIP values"

    # row 0: OpenCLIP-style (start, text, end = the largest id, zero padding);
    # row 1: HF-style padding with the end token (the first maximal id is the end)
    ids = torch.tensor([[598, 5, 17, 300, 42, 599, 0, 0, 0, 0, 0, 0],
                        [598, 10, 20, 30, 40, 50, 60, 70, 599, 599, 599, 599]], dtype=torch.int64)
    hidden, txt = encode_text(sd64, ids)

    st_write(os.path.join(OUT, "tiny_hf.safetensors"),
             {k: v.numpy() for k, v in hf.items()}, {"format": "pt", "made_by": "tests/ref/gen_clip.py"})
    wrapped = {"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 1}
    torch.save(wrapped, os.path.join(OUT, "tiny_openclip.pt"))
    st_write(os.path.join(OUT, "tiny_ref.safetensors"), {
        "pixels": pixels.numpy(),
        "image_embeds": img.float().numpy(),
        "ids": ids.numpy(),
        "text_hidden": hidden.float().numpy(),
        "text_embeds": txt.float().numpy(),
        "logit_scale": sd["logit_scale"].reshape(1).numpy(),
    }, {"vision": json.dumps(V), "text": json.dumps(T)})
    for f in sorted(os.listdir(OUT)):
        print(f"gen_clip: {os.path.join('tests/ref/clip', f)} ({os.path.getsize(os.path.join(OUT, f))} bytes)")


if __name__ == "__main__":
    main()
