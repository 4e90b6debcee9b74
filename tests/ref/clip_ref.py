#!/usr/bin/python3
"""PyTorch re-implementations of SDXL's two text encoders, the reference for ldmc's C encoders.

Written from /work/shared/reference/clip-text.md (§2 CLIP ViT-L/14 = HF CLIPTextModel, §3 OpenCLIP
ViT-bigG/14 text tower as sgm's FrozenOpenCLIPEmbedder2 uses it, §4 attention details). The module
trees and attribute names are those of the originals, so state_dict() keys (and their order) are
the checkpoints' keys once prefixed:
- HFTextModel (layout "hf"): transformers' CLIPTextModel, keys "text_model.…"; in SDXL under
  "conditioner.embedders.0.transformer.". Separate q/k/v/out projections (registered k, v, q, out as
  in HF), pre-LN blocks, quick_gelu (or gelu), final_layer_norm. No pooled output (SDXL's CLIP-L has
  none). The optional int64 buffer "text_model.embeddings.position_ids" is not registered.
- OpenCLIPText (layout "open_clip"): open_clip's CLIP with `visual` deleted, as sgm holds it; in SDXL
  under "conditioner.embedders.1.model." (base) / "conditioner.embedders.0.model." (refiner). Packed
  attn.in_proj_weight [3W, W] (rows q, k, v) as nn.MultiheadAttention, mlp.c_fc/c_proj, ln_final,
  text_projection [W, P] used as x @ P, logit_scale (0-d, unused).

Both: token embedding + position embedding, causal mask (key j <= query i), softmax(q k^T * hd^-0.5),
LayerNorm eps 1e-5, no padding mask. forward(ids) returns (context, pooled):
- context = the hidden state after `hidden_layer` blocks (0 = the embeddings), with NO final norm;
- pooled (open_clip with projection_dim > 0 only) = ln_final(output of ALL blocks) at row
  argmax(ids) (the first maximal id: the EOS) @ text_projection; None otherwise.
Only the blocks needed are run, so unused parameters get no gradient.

Configs: the entries of `text_encoders:` in ldmc's YAML (layout, vocab_size, context_length, width,
heads, layers, mlp_width, activation quick_gelu | gelu, hidden_layer, projection_dim);
encoder_from_config() builds one (device="meta" for the full-size key lists).

Run with Debian's PyTorch 1.13: /usr/bin/python3 tests/ref/clip_ref.py (a self-test: the packed
attention against torch.nn.MultiheadAttention, and open_clip vs the HF module loaded through the
diffusers name mapping).
"""
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-5

# SDXL's encoders (clip-text.md §2, §3).
CLIP_L = dict(layout="hf", vocab_size=49408, context_length=77, width=768, heads=12, layers=12,
              mlp_width=3072, activation="quick_gelu", hidden_layer=11)
CLIP_G = dict(layout="open_clip", vocab_size=49408, context_length=77, width=1280, heads=20, layers=32,
              mlp_width=5120, activation="gelu", hidden_layer=31, projection_dim=1280)


def _fk(device, dtype):
    return {"device": device, "dtype": dtype}


def activation(name):
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return lambda x: F.gelu(x)  # exact erf GELU (approximate='none')
    raise ValueError(f"unknown activation {name!r}")


def causal_attention(q, k, v, heads):
    """q, k, v: (B, T, W) already projected. Heads are contiguous head_dim slices of W."""
    B, T, W = q.shape
    hd = W // heads
    q = q.view(B, T, heads, hd).transpose(1, 2)
    k = k.view(B, T, heads, hd).transpose(1, 2)
    v = v.view(B, T, heads, hd).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) * hd ** -0.5
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(mask, float("-inf"))
    out = scores.softmax(dim=-1) @ v
    return out.transpose(1, 2).reshape(B, T, W)


# ----------------------------------------------------------------------------------------------
# Layout "hf": transformers' CLIPTextModel
# ----------------------------------------------------------------------------------------------

class CLIPAttention(nn.Module):
    def __init__(self, width, heads, device=None, dtype=None):
        super().__init__()
        fk = _fk(device, dtype)
        self.heads = heads
        # Registration order as in HF modeling_clip: k, v, q, out.
        self.k_proj = nn.Linear(width, width, **fk)
        self.v_proj = nn.Linear(width, width, **fk)
        self.q_proj = nn.Linear(width, width, **fk)
        self.out_proj = nn.Linear(width, width, **fk)

    def forward(self, x):
        return self.out_proj(causal_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads))


class CLIPMLP(nn.Module):
    def __init__(self, width, mlp_width, act, device=None, dtype=None):
        super().__init__()
        self.act = activation(act)
        self.fc1 = nn.Linear(width, mlp_width, **_fk(device, dtype))
        self.fc2 = nn.Linear(mlp_width, width, **_fk(device, dtype))

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, width, heads, mlp_width, act, device=None, dtype=None):
        super().__init__()
        fk = _fk(device, dtype)
        self.self_attn = CLIPAttention(width, heads, **fk)
        self.layer_norm1 = nn.LayerNorm(width, eps=LN_EPS, **fk)
        self.mlp = CLIPMLP(width, mlp_width, act, **fk)
        self.layer_norm2 = nn.LayerNorm(width, eps=LN_EPS, **fk)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, vocab_size, context_length, width, device=None, dtype=None):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width, **_fk(device, dtype))
        self.position_embedding = nn.Embedding(context_length, width, **_fk(device, dtype))

    def forward(self, ids):
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]]


class CLIPEncoder(nn.Module):
    def __init__(self, layers, width, heads, mlp_width, act, device=None, dtype=None):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(width, heads, mlp_width, act, device, dtype)
                                     for _ in range(layers)])


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg, device=None, dtype=None):
        super().__init__()
        fk = _fk(device, dtype)
        self.embeddings = CLIPTextEmbeddings(cfg["vocab_size"], cfg["context_length"], cfg["width"], **fk)
        self.encoder = CLIPEncoder(cfg["layers"], cfg["width"], cfg["heads"], cfg["mlp_width"],
                                   cfg["activation"], **fk)
        self.final_layer_norm = nn.LayerNorm(cfg["width"], eps=LN_EPS, **fk)


class HFTextModel(nn.Module):
    """transformers' CLIPTextModel (keys "text_model.…"). forward -> (hidden_states[hidden_layer], None)."""

    def __init__(self, cfg, device=None, dtype=None):
        super().__init__()
        self.cfg = dict(cfg)
        self.text_model = CLIPTextTransformer(cfg, device, dtype)

    def hidden_states(self, ids, upto):
        """[h0 (embeddings), h1, …, h_upto] (HF's hidden_states, before final_layer_norm)."""
        tm = self.text_model
        h = [tm.embeddings(ids)]
        for layer in tm.encoder.layers[:upto]:
            h.append(layer(h[-1]))
        return h

    def forward(self, ids, hidden_layer=None):
        hl = self.cfg["hidden_layer"] if hidden_layer is None else hidden_layer
        assert 0 <= hl <= self.cfg["layers"]
        return self.hidden_states(ids, hl)[hl], None


# ----------------------------------------------------------------------------------------------
# Layout "open_clip": open_clip's CLIP text tower (as sgm's FrozenOpenCLIPEmbedder2 holds it)
# ----------------------------------------------------------------------------------------------

class PackedMultiheadAttention(nn.Module):
    """nn.MultiheadAttention's parameters (in_proj_weight rows q, k, v; in_proj_bias; out_proj),
    batch-first, with the causal mask."""

    def __init__(self, width, heads, device=None, dtype=None):
        super().__init__()
        fk = _fk(device, dtype)
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width, **fk))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width, **fk))
        self.out_proj = nn.Linear(width, width, **fk)

    def forward(self, x):
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return self.out_proj(causal_attention(q, k, v, self.heads))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, mlp_width, act, device=None, dtype=None):
        super().__init__()
        fk = _fk(device, dtype)
        # Registration order as in open_clip v2.20: ln_1, attn, ln_2, mlp.
        self.ln_1 = nn.LayerNorm(width, eps=LN_EPS, **fk)
        self.attn = PackedMultiheadAttention(width, heads, **fk)
        self.ln_2 = nn.LayerNorm(width, eps=LN_EPS, **fk)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(width, mlp_width, **fk)
        self.mlp.c_proj = nn.Linear(mlp_width, width, **fk)
        self.act = activation(act)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.c_proj(self.act(self.mlp.c_fc(self.ln_2(x))))


class OpenCLIPTransformer(nn.Module):
    def __init__(self, layers, width, heads, mlp_width, act, device=None, dtype=None):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, mlp_width, act, device, dtype)
                                        for _ in range(layers)])


class OpenCLIPText(nn.Module):
    """open_clip CLIP without `visual`. forward -> (context, pooled or None)."""

    def __init__(self, cfg, device=None, dtype=None):
        super().__init__()
        fk = _fk(device, dtype)
        self.cfg = dict(cfg)
        W = cfg["width"]
        # Attribute order as open_clip's CLIP (v2.20); state_dict() lists the root's own parameters
        # (positional_embedding, text_projection, logit_scale) before the submodules'.
        self.transformer = OpenCLIPTransformer(cfg["layers"], W, cfg["heads"], cfg["mlp_width"],
                                               cfg["activation"], **fk)
        self.token_embedding = nn.Embedding(cfg["vocab_size"], W, **fk)
        self.positional_embedding = nn.Parameter(torch.empty(cfg["context_length"], W, **fk))
        self.ln_final = nn.LayerNorm(W, eps=LN_EPS, **fk)
        P = int(cfg.get("projection_dim") or 0)
        if P:
            self.text_projection = nn.Parameter(torch.empty(W, P, **fk))
        else:
            self.text_projection = None
        self.logit_scale = nn.Parameter(torch.empty((), **fk))

    def forward(self, ids, hidden_layer=None):
        cfg = self.cfg
        hl = cfg["hidden_layer"] if hidden_layer is None else hidden_layer
        L = cfg["layers"]
        assert 0 <= hl <= L
        pooled_wanted = self.text_projection is not None
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        context = x if hl == 0 else None
        run = L if pooled_wanted else hl
        for i, block in enumerate(self.transformer.resblocks[:run]):
            x = block(x)
            if i + 1 == hl:
                context = x
        pooled = None
        if pooled_wanted:
            o = self.ln_final(x)
            eos = ids.argmax(dim=-1)  # first maximal id
            pooled = o[torch.arange(ids.shape[0]), eos] @ self.text_projection
        return context, pooled


def encoder_from_config(cfg, device=None, dtype=None):
    cfg = dict(cfg)
    for k in ("vocab_size", "context_length", "width", "heads", "layers", "mlp_width", "hidden_layer"):
        cfg[k] = int(cfg[k])
    cfg["projection_dim"] = int(cfg.get("projection_dim") or 0)
    assert cfg["width"] % cfg["heads"] == 0
    if cfg["layout"] == "hf":
        assert not cfg["projection_dim"], "layout hf has no pooled output"
        return HFTextModel(cfg, device, dtype)
    if cfg["layout"] == "open_clip":
        return OpenCLIPText(cfg, device, dtype)
    raise ValueError(f"unknown layout {cfg['layout']!r}")


# ----------------------------------------------------------------------------------------------
# diffusers names (clip-text.md §2, §3)
# ----------------------------------------------------------------------------------------------

def diffusers_names(layout, key):
    """The diffusers (transformers CLIPTextModel[WithProjection]) names of a key without prefix.
    hf: the key itself (text_encoder/). open_clip (text_encoder_2/): the §3 mapping; in_proj_* split
    into three names (rows q, k, v); text_projection -> text_projection.weight holding P transposed;
    logit_scale -> [] (dropped)."""
    if layout == "hf":
        return [key]
    if key == "logit_scale":
        return []
    if key == "text_projection":
        return ["text_projection.weight"]
    if key == "token_embedding.weight":
        return ["text_model.embeddings.token_embedding.weight"]
    if key == "positional_embedding":
        return ["text_model.embeddings.position_embedding.weight"]
    if key.startswith("ln_final."):
        return ["text_model.final_layer_norm." + key.split(".")[-1]]
    parts = key.split(".")
    assert parts[:2] == ["transformer", "resblocks"], key
    base = f"text_model.encoder.layers.{parts[2]}."
    rest = ".".join(parts[3:])
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = "weight" if rest.endswith("weight") else "bias"
        return [f"{base}self_attn.{p}_proj.{kind}" for p in "qkv"]
    table = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    mod, leaf = rest.rsplit(".", 1)
    return [base + table[mod] + "." + leaf]


def open_clip_to_diffusers(state_dict):
    """Converts an open_clip-layout state dict (no prefix) to diffusers names (no transform other
    than the in_proj split and the text_projection transpose)."""
    out = {}
    for key, t in state_dict.items():
        names = diffusers_names("open_clip", key)
        if len(names) == 3:
            for n, part in zip(names, t.chunk(3, dim=0)):
                out[n] = part
        elif key == "text_projection":
            out[names[0]] = t.t()
        elif names:
            out[names[0]] = t
    return out


# ----------------------------------------------------------------------------------------------
# Self-test
# ----------------------------------------------------------------------------------------------

def _selftest():
    torch.manual_seed(0)
    dt = torch.float64
    cfg = dict(layout="open_clip", vocab_size=50, context_length=77, width=32, heads=4, layers=3,
               mlp_width=64, activation="gelu", hidden_layer=2, projection_dim=24)
    g = encoder_from_config(cfg, dtype=dt)
    with torch.no_grad():
        for p in g.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() >= 2 else 0.2))
    ids = torch.randint(0, 48, (2, 77))
    ids[0, 0], ids[0, 9] = 48, 49
    ids[1, 0], ids[1, 76] = 48, 49
    ctx, pooled = g(ids)

    # 1. The packed attention equals torch.nn.MultiheadAttention with open_clip's -inf mask.
    blk = g.transformer.resblocks[0]
    mha = nn.MultiheadAttention(32, 4, dtype=dt)
    with torch.no_grad():
        mha.in_proj_weight.copy_(blk.attn.in_proj_weight)
        mha.in_proj_bias.copy_(blk.attn.in_proj_bias)
        mha.out_proj.weight.copy_(blk.attn.out_proj.weight)
        mha.out_proj.bias.copy_(blk.attn.out_proj.bias)
    x = torch.randn(2, 77, 32, dtype=dt)
    mask = torch.full((77, 77), float("-inf"), dtype=dt).triu(1)
    want = mha(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), need_weights=False,
               attn_mask=mask)[0].transpose(0, 1)
    err = (blk.attn(x) - want).abs().max().item()
    assert err < 1e-12, err

    # 2. The HF module, loaded through the diffusers mapping, gives the same context and pooled.
    h = encoder_from_config(dict(cfg, layout="hf", projection_dim=0), dtype=dt)
    sd = open_clip_to_diffusers(g.state_dict())
    proj_t = sd.pop("text_projection.weight")
    h.load_state_dict(sd, strict=True)
    hs = h.hidden_states(ids, 3)
    err_c = (hs[2] - ctx).abs().max().item()
    last = h.text_model.final_layer_norm(hs[3])
    hp = last[torch.arange(2), ids.argmax(-1)] @ proj_t.t()
    err_p = (hp - pooled).abs().max().item()
    assert err_c < 1e-12 and err_p < 1e-12, (err_c, err_p)

    # 3. Pad ids after the EOS change only the post-EOS rows; the pooled output not at all.
    ids2 = ids.clone()
    ids2[0, 10:] = 49
    ctx2, pooled2 = g(ids2)
    assert (ctx2[:, :10] - ctx[:, :10]).abs().max() < 1e-12 and (ctx2[0, 10:] - ctx[0, 10:]).abs().min() > 0
    assert (pooled2 - pooled).abs().max() < 1e-12

    # 4. Full-size counts (clip-text.md §7), on the meta device.
    n_l = sum(p.numel() for p in encoder_from_config(CLIP_L, device="meta").parameters())
    n_g = sum(p.numel() for p in encoder_from_config(CLIP_G, device="meta").parameters())
    assert (n_l, n_g) == (123_060_480, 694_659_841), (n_l, n_g)
    print(f"MHA err {err:.2e}; hf-vs-open_clip context {err_c:.2e} pooled {err_p:.2e}; "
          f"CLIP-L {n_l:,} bigG {n_g:,}")
    print("ok")


if __name__ == "__main__":
    _selftest()
