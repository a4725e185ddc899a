#!/usr/bin/python3
"""Writes the fixtures of tests/test_clip_rewards.c under tests/ref/clip_rewards/:

  clip-vit-large-patch14/  a tiny CLIP vision tower in Hugging Face transformers layout
                        (model.safetensors + config.json, vision only, projection to
                        768 so that the real aesthetic head applies)
  HPS_v2.1_compressed.pt  a tiny OpenCLIP model (vision + text) as HPSv2 ships it: a torch
                        zip with a {'state_dict': ...} wrapper, fused attention in_proj,
                        visual.proj / text_projection as [width, out], f16 storage
  PickScore_v1/         a tiny CLIPModel in transformers layout (pytorch_model.bin +
                        config.json), with its logit_scale
  refs.safetensors      inputs and reference outputs (names below); metadata 'prompts'
                        holds the prompts (JSON list)

Reference outputs are computed here, in float64, by an independent PyTorch
implementation of the towers and rewards written from shared/spec/SD_FACTS.md
sections 4 and 5 (no transformers / open_clip / torchvision here: their
semantics are restated below), and the preprocessing is torchvision's
Resize(S) (shorter side to S, longer to int(S*long/short), F.interpolate with
align_corners=False) + CenterCrop(S) (offsets int(round((len-S)/2))) +
Normalize(CLIP mean, std), after clamp(x/2+1/2, 0, 1).

The zip entries of the .pt/.bin files are deflate-compressed after torch.save
(the token embeddings [49408, width] are zero outside the rows the test prompts
use, so they compress to almost nothing); the C reader handles both.

Run with Debian's python3-torch: /usr/bin/python3 tests/ref/gen_clip_rewards.py
(or `make fixtures`). The real LAION head is read from
../shared/data/sac+logos+ava1-l14-linearMSE.pth (or assets/aesthetic/).

refs.safetensors tensors (NHWC images, f32 unless said):
  pre.<k>.x [N,H,W,3], pre.<k>.y [N,S,S,3], pre.<k>.gx [N,H,W,3], pre.<k>.R [N,S,S,3],
  pre.<k>.cfg  i64 [S, mode (0 bilinear, 1 bicubic), antialias]
      preprocessing cases; gx = d sum(y * R) / dx
  head.emb [K,768], head.score [K]     the real head on fixed unit embeddings
  images [2,40,36,3], R [2]            the reward inputs and the cotangent of the
                                       gradients below
  aesthetic.r [2], aesthetic.gx        each reward and d sum(r * R) / d images
  hps.r, hps.gx, pickscore.r, pickscore.gx
  (the rewards use the default preprocessing: bilinear with antialias)
"""
import importlib.util
import io
import json
import math
import os
import struct
import sys
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(HERE, "clip_rewards")
DT = torch.float64
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
PROMPTS = ["a photo of a cat", "An astronaut riding a horse on the moon."]

spec = importlib.util.spec_from_file_location("gen_tokenizer", os.path.join(HERE, "gen_tokenizer.py"))
gen_tokenizer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen_tokenizer)
TOK = gen_tokenizer.Tokenizer(os.path.join(ROOT, "assets", "clip", "bpe_simple_vocab_16e6.txt.gz"))
EOT = 49407


# ------------------------------------------------------------------ files
def st_write(path, tensors, meta=None):
    """name -> numpy array (f32, f16 or i64), sorted by name."""
    header = {"__metadata__": meta} if meta else {}
    blobs, off = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dt = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}[a.dtype]
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def torch_save_deflated(obj, path):
    """torch.save, then every entry deflated (the reader takes compressed entries too)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():  # fixed timestamps: the same bytes on every run
            zi = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(zi, src.read(info.filename))


# ------------------------------------------------------------------ towers (float64, HF names)
class Rand:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def u(self, *shape, scale=1.0):
        return ((torch.rand(shape, generator=self.g, dtype=DT) * 2 - 1) * scale)


def make_layers(r, w, prefix, width, mlp, layers):
    s = 1 / math.sqrt(width)
    for i in range(layers):
        p = f"{prefix}.encoder.layers.{i}."
        for n in ("q", "k", "v", "out"):
            w[p + f"self_attn.{n}_proj.weight"] = r.u(width, width, scale=s)
            w[p + f"self_attn.{n}_proj.bias"] = r.u(width, scale=0.1)
        for n in ("layer_norm1", "layer_norm2"):
            w[p + n + ".weight"] = 1 + r.u(width, scale=0.2)
            w[p + n + ".bias"] = r.u(width, scale=0.1)
        w[p + "mlp.fc1.weight"] = r.u(mlp, width, scale=s)
        w[p + "mlp.fc1.bias"] = r.u(mlp, scale=0.1)
        w[p + "mlp.fc2.weight"] = r.u(width, mlp, scale=1 / math.sqrt(mlp))
        w[p + "mlp.fc2.bias"] = r.u(width, scale=0.1)


def make_vision(r, cfg):
    W, P, S = cfg["width"], cfg["patch"], cfg["image"]
    g = S // P
    w = {
        "vision_model.embeddings.class_embedding": r.u(W, scale=0.5),
        "vision_model.embeddings.patch_embedding.weight": r.u(W, 3, P, P, scale=1 / math.sqrt(3 * P * P)),
        "vision_model.embeddings.position_embedding.weight": r.u(1 + g * g, W, scale=0.5),
        "vision_model.pre_layrnorm.weight": 1 + r.u(W, scale=0.2),
        "vision_model.pre_layrnorm.bias": r.u(W, scale=0.1),
        "vision_model.post_layernorm.weight": 1 + r.u(W, scale=0.2),
        "vision_model.post_layernorm.bias": r.u(W, scale=0.1),
        "visual_projection.weight": r.u(cfg["proj"], W, scale=1 / math.sqrt(W)),
    }
    make_layers(r, w, "vision_model", W, cfg["mlp"], cfg["layers"])
    return w


def make_text(r, cfg, used_ids):
    W = cfg["width"]
    tok = torch.zeros(49408, W, dtype=DT)
    for i in sorted(used_ids):
        tok[i] = r.u(W, scale=0.5)
    w = {
        "text_model.embeddings.token_embedding.weight": tok,
        "text_model.embeddings.position_embedding.weight": r.u(77, W, scale=0.2),
        "text_model.final_layer_norm.weight": 1 + r.u(W, scale=0.2),
        "text_model.final_layer_norm.bias": r.u(W, scale=0.1),
        "text_projection.weight": r.u(cfg["proj"], W, scale=1 / math.sqrt(W)),
    }
    make_layers(r, w, "text_model", W, cfg["mlp"], cfg["layers"])
    return w


def act_fn(x, kind):
    return x * torch.sigmoid(1.702 * x) if kind == "quick_gelu" else F.gelu(x)


def encoder(w, prefix, x, cfg, causal):
    W, H = cfg["width"], cfg["heads"]
    d = W // H
    B, T, _ = x.shape
    for i in range(cfg["layers"]):
        p = f"{prefix}.encoder.layers.{i}."
        lin = lambda n, t: t @ w[p + n + ".weight"].T + w[p + n + ".bias"]
        h = F.layer_norm(x, (W,), w[p + "layer_norm1.weight"], w[p + "layer_norm1.bias"], 1e-5)
        q, k, v = (lin(f"self_attn.{n}_proj", h).view(B, T, H, d).transpose(1, 2) for n in "qkv")
        s = q @ k.transpose(-1, -2) / math.sqrt(d)
        if causal:
            s = s + torch.triu(torch.full((T, T), float("-inf"), dtype=DT), 1)
        o = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, W)
        x = x + lin("self_attn.out_proj", o)
        h = F.layer_norm(x, (W,), w[p + "layer_norm2.weight"], w[p + "layer_norm2.bias"], 1e-5)
        x = x + lin("mlp.fc2", act_fn(lin("mlp.fc1", h), cfg["act"]))
    return x


def vision_forward(w, cfg, px):
    """px NCHW normalised pixels -> image embeds [B, proj]."""
    W, P = cfg["width"], cfg["patch"]
    x = F.conv2d(px, w["vision_model.embeddings.patch_embedding.weight"], stride=P)  # [B,W,g,g]
    x = x.flatten(2).transpose(1, 2)  # patch tokens row-major over the grid
    cls = w["vision_model.embeddings.class_embedding"].expand(x.shape[0], 1, W)
    x = torch.cat([cls, x], 1) + w["vision_model.embeddings.position_embedding.weight"]
    x = F.layer_norm(x, (W,), w["vision_model.pre_layrnorm.weight"], w["vision_model.pre_layrnorm.bias"], 1e-5)
    x = encoder(w, "vision_model", x, cfg, False)
    x = F.layer_norm(x[:, 0], (W,), w["vision_model.post_layernorm.weight"], w["vision_model.post_layernorm.bias"], 1e-5)
    return x @ w["visual_projection.weight"].T


def text_forward(w, cfg, ids):
    """ids [B,77] -> text embeds [B, proj]: final-LN feature at argmax(ids)."""
    W = cfg["width"]
    x = w["text_model.embeddings.token_embedding.weight"][ids] + w["text_model.embeddings.position_embedding.weight"]
    x = encoder(w, "text_model", x, cfg, True)
    x = F.layer_norm(x, (W,), w["text_model.final_layer_norm.weight"], w["text_model.final_layer_norm.bias"], 1e-5)
    pooled = x[torch.arange(x.shape[0]), ids.argmax(-1)]
    return pooled @ w["text_projection.weight"].T


# ------------------------------------------------------------------ preprocessing (torchvision semantics)
def preprocess(x_nhwc, S, mode="bilinear", antialias=True):
    x = x_nhwc.permute(0, 3, 1, 2)
    u = (x / 2 + 0.5).clamp(0, 1)
    H, W = u.shape[-2:]
    if H <= W:
        oh, ow = S, int(S * W / H)
    else:
        oh, ow = int(S * H / W), S
    if (oh, ow) != (H, W):
        u = F.interpolate(u, size=(oh, ow), mode=mode, align_corners=False, antialias=antialias)
    top, left = int(round((oh - S) / 2.0)), int(round((ow - S) / 2.0))
    u = u[:, :, top:top + S, left:left + S]
    mean = torch.tensor(MEAN, dtype=u.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=u.dtype).view(1, 3, 1, 1)
    return (u - mean) / std


# ------------------------------------------------------------------ OpenCLIP names
def to_openclip(w, vcfg, tcfg):
    o = {
        "visual.class_embedding": w["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": w["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": w["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": w["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": w["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": w["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": w["vision_model.post_layernorm.bias"],
        "visual.proj": w["visual_projection.weight"].T.contiguous(),
        "token_embedding.weight": w["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": w["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": w["text_model.final_layer_norm.weight"],
        "ln_final.bias": w["text_model.final_layer_norm.bias"],
        "text_projection": w["text_projection.weight"].T.contiguous(),
        "logit_scale": w["logit_scale"],
    }
    for src, dst, cfg in (("vision_model", "visual.transformer", vcfg), ("text_model", "transformer", tcfg)):
        for i in range(cfg["layers"]):
            p, q = f"{src}.encoder.layers.{i}.", f"{dst}.resblocks.{i}."
            o[q + "attn.in_proj_weight"] = torch.cat([w[p + f"self_attn.{n}_proj.weight"] for n in "qkv"], 0)
            o[q + "attn.in_proj_bias"] = torch.cat([w[p + f"self_attn.{n}_proj.bias"] for n in "qkv"], 0)
            for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                o[q + b + ".weight"] = w[p + a + ".weight"]
                o[q + b + ".bias"] = w[p + a + ".bias"]
    return o


def hf_config(vcfg, tcfg, proj):
    c = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": proj,
         "vision_config": {"hidden_size": vcfg["width"], "num_attention_heads": vcfg["heads"],
                           "num_hidden_layers": vcfg["layers"], "intermediate_size": vcfg["mlp"],
                           "image_size": vcfg["image"], "patch_size": vcfg["patch"], "hidden_act": vcfg["act"],
                           "layer_norm_eps": 1e-5, "projection_dim": proj}}
    if tcfg:
        c["text_config"] = {"hidden_size": tcfg["width"], "num_attention_heads": tcfg["heads"],
                            "num_hidden_layers": tcfg["layers"], "intermediate_size": tcfg["mlp"],
                            "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": tcfg["act"],
                            "layer_norm_eps": 1e-5, "projection_dim": proj}
    return c


def round_f16(w):
    return {k: v.to(torch.float16).to(DT) for k, v in w.items()}


def f32(t):
    return t.detach().to(torch.float32).numpy()


# ------------------------------------------------------------------ main
def main():
    os.makedirs(OUT, exist_ok=True)
    refs = {}
    gen = torch.Generator().manual_seed(5)

    # preprocessing: (N, H, W, S, mode, antialias)
    # 37 -> 16 is about 512 -> 224; W > H, H > W, upscaling, no resize (30x41: only a crop)
    cases = [(1, 37, 37, 16, "bilinear", True), (2, 23, 31, 16, "bilinear", True), (1, 35, 25, 8, "bicubic", True),
             (1, 23, 31, 16, "bilinear", False), (1, 35, 25, 8, "bicubic", False), (1, 10, 10, 16, "bicubic", True),
             (1, 17, 16, 16, "bilinear", True), (1, 16, 21, 16, "bicubic", True), (1, 19, 21, 14, "bicubic", False)]
    for k, (N, H, W, S, mode, aa) in enumerate(cases):
        x = (torch.rand((N, H, W, 3), generator=gen, dtype=DT) * 2.4 - 1.2).to(torch.float32).to(DT)
        R = (torch.rand((N, S, S, 3), generator=gen, dtype=DT) * 2 - 1).to(torch.float32).to(DT)
        xg = x.clone().requires_grad_(True)
        y = preprocess(xg, S, mode, aa).permute(0, 2, 3, 1)
        (y * R).sum().backward()
        refs[f"pre.{k}.x"], refs[f"pre.{k}.R"] = f32(x), f32(R)
        refs[f"pre.{k}.y"], refs[f"pre.{k}.gx"] = f32(y), f32(xg.grad)
        refs[f"pre.{k}.cfg"] = np.array([S, mode == "bicubic", int(aa)], dtype=np.int64)

    # the real aesthetic head
    pth = os.path.join(ROOT, "..", "shared", "data", "sac+logos+ava1-l14-linearMSE.pth")
    if not os.path.exists(pth):
        pth = os.path.join(ROOT, "assets", "aesthetic", "sac+logos+ava1-l14-linearMSE.pth")
    sd = torch.load(pth, map_location="cpu")
    mlp = torch.nn.Sequential(torch.nn.Linear(768, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                              torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                              torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))
    mlp.load_state_dict({k[len("layers."):]: v for k, v in sd.items()})
    mlp = mlp.to(DT).eval()
    emb = torch.rand((4, 768), generator=gen, dtype=DT) - 0.5
    emb[0] = 1 / math.sqrt(768)
    emb = emb / emb.norm(dim=-1, keepdim=True)
    emb = emb.to(torch.float32).to(DT)
    with torch.no_grad():
        head_score = mlp(emb)[:, 0]
    refs["head.emb"], refs["head.score"] = f32(emb), f32(head_score)
    head = lambda e: mlp(e)[:, 0]

    # reward inputs
    images = (torch.rand((2, 40, 36, 3), generator=gen, dtype=DT) * 2.2 - 1.1).to(torch.float32).to(DT)
    R = torch.tensor([1.0, -0.75], dtype=DT)
    refs["images"], refs["R"] = f32(images), f32(R)

    def grad_of(fn):
        xg = images.clone().requires_grad_(True)
        r = fn(xg)
        (r * R).sum().backward()
        return r.detach(), xg.grad

    # aesthetic: tiny ViT (HF, vision only, quick_gelu, 2 heads) projecting to 768
    avcfg = {"width": 32, "patch": 6, "image": 30, "layers": 2, "heads": 2, "mlp": 64, "act": "quick_gelu",
             "proj": 768}
    aw = make_vision(Rand(11), avcfg)
    adir = os.path.join(OUT, "clip-vit-large-patch14")
    os.makedirs(adir, exist_ok=True)
    st_write(os.path.join(adir, "model.safetensors"), {k: f32(v) for k, v in aw.items()}, {"format": "pt"})
    with open(os.path.join(adir, "config.json"), "w") as f:
        json.dump(hf_config(avcfg, None, 768), f, indent=1)

    def aesthetic(x):
        e = vision_forward(aw, avcfg, preprocess(x, 30))
        return head(e / e.norm(dim=-1, keepdim=True))

    refs["aesthetic.r"], refs["aesthetic.gx"] = map(f32, grad_of(aesthetic))

    # prompts' token ids (the tiny token tables are zero elsewhere)
    oc_ids = torch.tensor([TOK.sequence(p.encode(), 1, 0) for p in PROMPTS])      # OpenCLIP: unescape, pad 0
    hf_ids = torch.tensor([TOK.sequence(p.encode(), 0, EOT) for p in PROMPTS])    # HF CLIPTokenizer
    used = set(oc_ids.flatten().tolist()) | set(hf_ids.flatten().tolist())

    def score(w, vcfg, tcfg, ids, scale):
        t = text_forward(w, tcfg, ids)
        t = t / t.norm(dim=-1, keepdim=True)

        def fn(x):
            e = vision_forward(w, vcfg, preprocess(x, 30))
            return scale * ((e / e.norm(dim=-1, keepdim=True)) * t).sum(-1)
        return fn

    # hps: OpenCLIP layout, GELU; widths multiple of 64 so that the loader's
    # default of width/64 heads is right (the file has no config)
    hvcfg = {"width": 64, "patch": 6, "image": 30, "layers": 2, "heads": 1, "mlp": 96, "act": "gelu", "proj": 32}
    htcfg = {"width": 64, "layers": 2, "heads": 1, "mlp": 96, "act": "gelu", "proj": 32}
    r = Rand(12)
    hw = make_vision(r, hvcfg)
    hw.update(make_text(r, htcfg, used))
    hw["logit_scale"] = torch.tensor(math.log(100.0), dtype=DT)
    hw = round_f16(hw)  # the "compressed" HPS files hold f16
    oc = to_openclip(hw, hvcfg, htcfg)
    torch_save_deflated({"state_dict": {k: v.to(torch.float16) for k, v in oc.items()}},
                        os.path.join(OUT, "HPS_v2.1_compressed.pt"))
    refs["hps.r"], refs["hps.gx"] = map(f32, grad_of(score(hw, hvcfg, htcfg, oc_ids, 1.0)))

    # pickscore: transformers layout (pytorch_model.bin + config.json), GELU, its logit scale
    pvcfg = {"width": 32, "patch": 6, "image": 30, "layers": 2, "heads": 2, "mlp": 64, "act": "gelu", "proj": 24}
    ptcfg = {"width": 16, "layers": 2, "heads": 2, "mlp": 48, "act": "gelu", "proj": 24}
    r = Rand(13)
    pw = make_vision(r, pvcfg)
    pw.update(make_text(r, ptcfg, used))
    pw["logit_scale"] = torch.tensor(3.0, dtype=DT)  # exp(3) = 20.09
    pw = {k: v.to(torch.float32).to(DT) for k, v in pw.items()}
    pdir = os.path.join(OUT, "PickScore_v1")
    os.makedirs(pdir, exist_ok=True)
    bin_sd = {k: v.to(torch.float32) for k, v in pw.items()}
    bin_sd["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)  # as older HF files carry
    torch_save_deflated(bin_sd, os.path.join(pdir, "pytorch_model.bin"))
    with open(os.path.join(pdir, "config.json"), "w") as f:
        json.dump(hf_config(pvcfg, ptcfg, 24), f, indent=1)
    refs["pickscore.r"], refs["pickscore.gx"] = map(
        f32, grad_of(score(pw, pvcfg, ptcfg, hf_ids, math.exp(pw["logit_scale"].item()))))

    st_write(os.path.join(OUT, "refs.safetensors"), refs, {"prompts": json.dumps(PROMPTS)})
    for k in ("aesthetic", "hps", "pickscore"):
        print(f"{k}: r = {refs[k + '.r'].tolist()}")
    print("head scores:", refs["head.score"].tolist())


if __name__ == "__main__":
    main()
