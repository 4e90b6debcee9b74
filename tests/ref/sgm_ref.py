#!/usr/bin/python3
"""A PyTorch re-implementation of the SDXL model code of Stability-AI/generative-models (`sgm`).

Written from a reading of sgm/modules/diffusionmodules/{openaimodel,util,model}.py,
sgm/modules/attention.py, sgm/modules/encoders/modules.py, sgm/models/autoencoder.py and
sgm/modules/autoencoding/regularizers (DiagonalGaussianDistribution as in ldm/sgm distributions.py),
checked against /work/shared/reference/sdxl-facts.md. It is the reference the C code (ldmc) is
compared with: the module tree and attribute names are sgm's, so state_dict keys (and their order)
are those of the official checkpoints once prefixed with "model.diffusion_model." (UNet),
"first_stage_model." (VAE) or "conditioner.embedders.N." (embedders).

Semantics kept from sgm: GroupNorm32 (32 groups, eps 1e-5, computed in float32) in the UNet
ResBlocks and output head; GroupNorm(32, eps 1e-6) in SpatialTransformer and the whole VAE;
LayerNorm eps 1e-5 in the transformer blocks; zero-initialised out_layers conv, proj_out and
output conv; [cos | sin] timestep embedding in float32; no scale-shift norm, no resblock up/down,
dropout 0. Differences that change no numbers: no gradient checkpointing, no xformers/SDPA
(attention is written as softmax(q k^T * d^-0.5) v), every module takes device=/dtype= so the
full-size models can be built on device="meta".

Runs with Debian's PyTorch 1.13: /usr/bin/python3 tests/ref/sgm_ref.py (a small self-test).
Tensors are NCHW here (ldmc itself is channels-last).
"""
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

# Widths of the vector-conditioning parts (ldmc's YAML names). pooled_text is special (pooled_dim).
VECTOR_SCALARS = {"original_size": 2, "crop_coords": 2, "target_size": 2, "aesthetic_score": 1}
VECTOR_FOURIER_DIM = 256


def _fk(device, dtype):
    return {"device": device, "dtype": dtype}


def zero_module(module):
    """Zero a module's parameters in place and return it (sgm util.zero_module)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


# ----------------------------------------------------------------------------------------------
# Timestep embedding (sgm/modules/diffusionmodules/util.py)
# ----------------------------------------------------------------------------------------------

def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding of a 1-D tensor t: [cos(t f_i) | sin(t f_i)], f_i = exp(-ln(P) i/half).

    Computed in float32 as in sgm; an odd dim gets one zero column at the end."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    freqs = freqs.to(device=t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class Timestep(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        return timestep_embedding(t, self.dim)


# ----------------------------------------------------------------------------------------------
# UNet building blocks (openaimodel.py, attention.py)
# ----------------------------------------------------------------------------------------------

class GroupNorm32(nn.GroupNorm):
    """sgm util.normalization(): GroupNorm(32, c), default eps 1e-5, evaluated in float32
    (x.float(), then cast back). A float64 input stays float64 (sgm would fail there: its weights
    would not match the float32 input), so the reference can also run in double precision."""

    def forward(self, x):
        xc = x if x.dtype == torch.float64 else x.float()
        return super().forward(xc).type(x.dtype)


def normalization(channels, device=None, dtype=None):
    return GroupNorm32(32, channels, **_fk(device, dtype))


class TimestepEmbedSequential(nn.Sequential):
    """Calls each child with (x, emb) if it is a ResBlock, (x, context) if a SpatialTransformer,
    else (x)."""

    def forward(self, x, emb, context=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class Downsample(nn.Module):
    """conv_resample=True: Conv3x3, stride 2, padding 1, key `op`."""

    def __init__(self, channels, out_channels=None, padding=1, device=None, dtype=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.op = nn.Conv2d(self.channels, self.out_channels, 3, stride=2, padding=padding,
                            **_fk(device, dtype))

    def forward(self, x):
        assert x.shape[1] == self.channels
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2, then Conv3x3 padding 1, key `conv`."""

    def __init__(self, channels, out_channels=None, padding=1, device=None, dtype=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.conv = nn.Conv2d(self.channels, self.out_channels, 3, padding=padding,
                              **_fk(device, dtype))

    def forward(self, x):
        assert x.shape[1] == self.channels
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x)


class ResBlock(nn.Module):
    """sgm ResBlock with use_scale_shift_norm=False, up=down=False, kernel 3.

    h = in_layers(x) = conv3x3(SiLU(GN32(x))); h = h + emb_layers(emb)[..., None, None];
    h = out_layers(h) = zero_conv3x3(Dropout(SiLU(GN32(h)))); return skip(x) + h."""

    def __init__(self, channels, emb_channels, dropout=0.0, out_channels=None, use_conv=False,
                 device=None, dtype=None):
        super().__init__()
        fk = _fk(device, dtype)
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            normalization(channels, **fk),
            nn.SiLU(),
            nn.Conv2d(channels, self.out_channels, 3, padding=1, **fk),
        )
        # sgm registers h_upd / x_upd (Identity here: no parameters) between in_layers and emb_layers.
        self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, self.out_channels, **fk),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels, **fk),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1, **fk)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 3, padding=1, **fk)
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1, **fk)

    def forward(self, x, emb):
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        while emb_out.dim() < h.dim():
            emb_out = emb_out[..., None]
        h = h + emb_out
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class GEGLU(nn.Module):
    """proj: Linear(dim_in, 2*dim_out); the first half is the value, the second the gate."""

    def __init__(self, dim_in, dim_out, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, **_fk(device, dtype))

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """glu=True (gated_ff): net = [GEGLU(dim, 4 dim), Dropout, Linear(4 dim, dim)]."""

    def __init__(self, dim, dim_out=None, mult=4, glu=True, dropout=0.0, device=None, dtype=None):
        super().__init__()
        fk = _fk(device, dtype)
        inner_dim = int(dim * mult)
        dim_out = dim_out if dim_out is not None else dim
        if glu:
            project_in = GEGLU(dim, inner_dim, **fk)
        else:
            project_in = nn.Sequential(nn.Linear(dim, inner_dim, **fk), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner_dim, dim_out, **fk))

    def forward(self, x):
        return self.net(x)


class CrossAttention(nn.Module):
    """Multi-head attention; to_q/to_k/to_v without bias, to_out = [Linear with bias, Dropout].
    context None -> self-attention. Scale dim_head^-0.5 (the SDPA / xformers default in sgm)."""

    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0,
                 device=None, dtype=None):
        super().__init__()
        fk = _fk(device, dtype)
        inner_dim = dim_head * heads
        context_dim = context_dim if context_dim is not None else query_dim
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False, **fk)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False, **fk)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False, **fk)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim, **fk), nn.Dropout(dropout))

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b, h, d = x.shape[0], self.heads, self.dim_head
        # "b n (h d) -> b h n d"
        q, k, v = (t.reshape(b, t.shape[1], h, d).permute(0, 2, 1, 3) for t in (q, k, v))
        sim = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        attn = sim.softmax(dim=-1)
        out = torch.matmul(attn, v)
        out = out.permute(0, 2, 1, 3).reshape(b, out.shape[2], h * d)
        return self.to_out(out)


class BasicTransformerBlock(nn.Module):
    """x += attn1(norm1(x)); x += attn2(norm2(x), context); x += ff(norm3(x)).

    Registration order is sgm's (attn1, ff, attn2, norm1, norm2, norm3): it fixes the state_dict
    key order."""

    def __init__(self, dim, n_heads, d_head, dropout=0.0, context_dim=None, gated_ff=True,
                 disable_self_attn=False, device=None, dtype=None):
        super().__init__()
        fk = _fk(device, dtype)
        self.disable_self_attn = disable_self_attn
        self.attn1 = CrossAttention(dim, context_dim=context_dim if disable_self_attn else None,
                                    heads=n_heads, dim_head=d_head, dropout=dropout, **fk)
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff, **fk)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head,
                                    dropout=dropout, **fk)
        self.norm1 = nn.LayerNorm(dim, **fk)
        self.norm2 = nn.LayerNorm(dim, **fk)
        self.norm3 = nn.LayerNorm(dim, **fk)

    def forward(self, x, context=None):
        x = self.attn1(self.norm1(x), context=context if self.disable_self_attn else None) + x
        x = self.attn2(self.norm2(x), context=context) + x
        x = self.ff(self.norm3(x)) + x
        return x


def Normalize(in_channels, num_groups=32, device=None, dtype=None):
    """GroupNorm(32, c, eps 1e-6, affine) of attention.py / model.py (not float32-forced)."""
    return nn.GroupNorm(num_groups=num_groups, num_channels=in_channels, eps=1e-6, affine=True,
                        **_fk(device, dtype))


class SpatialTransformer(nn.Module):
    """norm (GN eps 1e-6) -> (B, HW, C) -> proj_in -> transformer_blocks -> zero proj_out -> + x.

    use_linear=True is SDXL's (proj_in/proj_out Linear, applied after/before the reshape);
    use_linear=False uses 1x1 convs before/after the reshape. context_dim may be an int, None or a
    homogeneous list (sgm's per-block list, as in the refiner's config)."""

    def __init__(self, in_channels, n_heads, d_head, depth=1, dropout=0.0, context_dim=None,
                 disable_self_attn=False, use_linear=True, device=None, dtype=None):
        super().__init__()
        fk = _fk(device, dtype)
        if context_dim is not None and not isinstance(context_dim, (list, tuple)):
            context_dim = [context_dim]
        if context_dim is not None:
            if len(context_dim) != depth:
                assert all(c == context_dim[0] for c in context_dim)
                context_dim = depth * [context_dim[0]]
        else:
            context_dim = [None] * depth
        self.in_channels = in_channels
        inner_dim = n_heads * d_head
        self.norm = Normalize(in_channels, **fk)
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim, **fk)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, 1, **fk)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout,
                                  context_dim=context_dim[d], disable_self_attn=disable_self_attn,
                                  **fk)
            for d in range(depth)
        ])
        if use_linear:
            self.proj_out = zero_module(nn.Linear(inner_dim, in_channels, **fk))
        else:
            self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, 1, **fk))
        self.use_linear = use_linear

    def forward(self, x, context=None):
        if not isinstance(context, list):
            context = [context]
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, x.shape[1]).contiguous()
        if self.use_linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            x = block(x, context=context[i if len(context) > 1 else 0])
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, x.shape[-1]).permute(0, 3, 1, 2).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class UNetModel(nn.Module):
    """sgm UNetModel restricted to 2-D, conv_resample=True, use_scale_shift_norm=False,
    resblock_updown=False, no disable_self_attentions / num_attention_blocks.

    attention_resolutions are downsample factors ds (1 at level 0, 2 at level 1, ...); a
    SpatialTransformer follows every ResBlock of a level whose ds is listed. The middle block is
    always ResBlock + SpatialTransformer + ResBlock (unless disable_middle_transformer).
    transformer_depth: int or per-level list; transformer_depth_middle defaults to its last entry.
    num_classes: None or "sequential" (label_emb = Sequential(Sequential(Linear, SiLU, Linear)),
    input adm_in_channels)."""

    def __init__(self, in_channels, model_channels, out_channels, num_res_blocks,
                 attention_resolutions, dropout=0.0, channel_mult=(1, 2, 4, 8), num_classes=None,
                 num_heads=-1, num_head_channels=-1, transformer_depth=1,
                 transformer_depth_middle=None, context_dim=None, disable_middle_self_attn=False,
                 disable_middle_transformer=False, use_linear_in_transformer=True,
                 adm_in_channels=None, device=None, dtype=None):
        super().__init__()
        fk = _fk(device, dtype)
        assert num_heads != -1 or num_head_channels != -1, "set num_heads or num_head_channels"
        channel_mult = list(channel_mult)
        if isinstance(transformer_depth, int):
            transformer_depth = len(channel_mult) * [transformer_depth]
        transformer_depth = list(transformer_depth)
        assert len(transformer_depth) == len(channel_mult)
        if transformer_depth_middle is None:
            transformer_depth_middle = transformer_depth[-1]
        if isinstance(num_res_blocks, int):
            num_res_blocks = len(channel_mult) * [num_res_blocks]
        assert len(num_res_blocks) == len(channel_mult)

        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = list(attention_resolutions)
        self.channel_mult = channel_mult
        self.num_classes = num_classes
        self.transformer_depth = transformer_depth
        self.transformer_depth_middle = transformer_depth_middle

        def heads_for(ch):
            if num_head_channels == -1:
                return num_heads, ch // num_heads
            assert ch % num_head_channels == 0
            return ch // num_head_channels, num_head_channels

        def st(ch, depth, disable_sa=False):
            n_heads, d_head = heads_for(ch)
            return SpatialTransformer(ch, n_heads, d_head, depth=depth, dropout=dropout,
                                      context_dim=context_dim, disable_self_attn=disable_sa,
                                      use_linear=use_linear_in_transformer, **fk)

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim, **fk),
            nn.SiLU(),
            nn.Linear(time_embed_dim, time_embed_dim, **fk),
        )
        if num_classes is not None:
            if num_classes != "sequential":
                raise ValueError("only num_classes=None or 'sequential' is implemented")
            assert adm_in_channels is not None
            self.label_emb = nn.Sequential(nn.Sequential(
                nn.Linear(adm_in_channels, time_embed_dim, **fk),
                nn.SiLU(),
                nn.Linear(time_embed_dim, time_embed_dim, **fk),
            ))

        self.input_blocks = nn.ModuleList([
            TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1, **fk))
        ])
        input_block_chans = [model_channels]
        ch = model_channels
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks[level]):
                layers = [ResBlock(ch, time_embed_dim, dropout, out_channels=mult * model_channels,
                                   **fk)]
                ch = mult * model_channels
                if ds in self.attention_resolutions:
                    layers.append(st(ch, transformer_depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, out_channels=ch, **fk)))
                input_block_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, time_embed_dim, dropout, out_channels=ch, **fk),
            st(ch, transformer_depth_middle, disable_middle_self_attn)
            if not disable_middle_transformer else nn.Identity(),
            ResBlock(ch, time_embed_dim, dropout, **fk),
        )

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks[level] + 1):
                ich = input_block_chans.pop()
                layers = [ResBlock(ch + ich, time_embed_dim, dropout,
                                   out_channels=model_channels * mult, **fk)]
                ch = model_channels * mult
                if ds in self.attention_resolutions:
                    layers.append(st(ch, transformer_depth[level]))
                if level and i == num_res_blocks[level]:
                    layers.append(Upsample(ch, out_channels=ch, **fk))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch, **fk),
            nn.SiLU(),
            zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1, **fk)),
        )

    def forward(self, x, timesteps, context=None, y=None):
        assert (y is not None) == (self.num_classes is not None), \
            "y must be given if and only if the model has label_emb"
        t_emb = timestep_embedding(timesteps, self.model_channels)
        # sgm feeds the float32 embedding straight in (under autocast); cast to the weights' dtype
        # so the reference also runs in float64/float16 without autocast (a no-op in float32).
        t_emb = t_emb.to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(t_emb)
        if self.num_classes is not None:
            assert y.shape[0] == x.shape[0]
            emb = emb + self.label_emb(y)
        hs = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)
            h = module(h, emb, context)
        h = h.type(x.dtype)
        return self.out(h)


# ----------------------------------------------------------------------------------------------
# Conditioning embedders (sgm/modules/encoders/modules.py)
# ----------------------------------------------------------------------------------------------

class ClassEmbedder(nn.Module):
    """nn.Embedding(n_classes, embed_dim) at `embedding`; add_sequence_dim gives (B, 1, embed_dim)."""

    def __init__(self, embed_dim, n_classes=1000, add_sequence_dim=True, device=None, dtype=None):
        super().__init__()
        self.embedding = nn.Embedding(n_classes, embed_dim, **_fk(device, dtype))
        self.n_classes = n_classes
        self.add_sequence_dim = add_sequence_dim

    def forward(self, c):
        c = self.embedding(c)
        if self.add_sequence_dim:
            c = c[:, None, :]
        return c


class ConcatTimestepEmbedderND(nn.Module):
    """Each scalar of a (B, k) input -> timestep_embedding(., outdim); per sample the k embeddings
    are concatenated in input order -> (B, k*outdim). A (B,) input is treated as (B, 1)."""

    def __init__(self, outdim=VECTOR_FOURIER_DIM):
        super().__init__()
        self.timestep = Timestep(outdim)
        self.outdim = outdim

    def forward(self, x):
        if x.dim() == 1:
            x = x[:, None]
        assert x.dim() == 2
        b, dims = x.shape
        emb = self.timestep(x.reshape(b * dims))       # "b d -> (b d)"
        return emb.reshape(b, dims * self.outdim)      # "(b d) d2 -> b (d d2)"


# ----------------------------------------------------------------------------------------------
# VAE (sgm/modules/diffusionmodules/model.py, sgm/models/autoencoder.py)
# ----------------------------------------------------------------------------------------------

def nonlinearity(x):
    return x * torch.sigmoid(x)  # swish


class VAEUpsample(nn.Module):
    def __init__(self, in_channels, with_conv=True, device=None, dtype=None):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, 3, stride=1, padding=1,
                                  **_fk(device, dtype))

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.with_conv:
            x = self.conv(x)
        return x


class VAEDownsample(nn.Module):
    """Pad (left 0, right 1, top 0, bottom 1) with zeros, then Conv3x3 stride 2 padding 0."""

    def __init__(self, in_channels, with_conv=True, device=None, dtype=None):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=0,
                                  **_fk(device, dtype))

    def forward(self, x):
        if self.with_conv:
            x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0)
            return self.conv(x)
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    """norm1, swish, conv1, norm2, swish, dropout, conv2; nin_shortcut (1x1) when channels change.
    temb_channels = 0 in the VAE: no temb_proj."""

    def __init__(self, *, in_channels, out_channels=None, conv_shortcut=False, dropout=0.0,
                 temb_channels=0, device=None, dtype=None):
        super().__init__()
        fk = _fk(device, dtype)
        self.in_channels = in_channels
        out_channels = in_channels if out_channels is None else out_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut
        self.norm1 = Normalize(in_channels, **fk)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, **fk)
        if temb_channels > 0:
            self.temb_proj = nn.Linear(temb_channels, out_channels, **fk)
        self.norm2 = Normalize(out_channels, **fk)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, **fk)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1,
                                               **fk)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=1, padding=0,
                                              **fk)

    def forward(self, x, temb=None):
        h = nonlinearity(self.norm1(x))
        h = self.conv1(h)
        if temb is not None:
            h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]
        h = nonlinearity(self.norm2(h))
        h = self.dropout(h)
        h = self.conv2(h)
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions: norm, q, k, v, proj_out (1x1 convs),
    scale C^-0.5, residual. (sgm picks MemoryEfficientAttnBlock / SDPA: same parameters and math.)"""

    def __init__(self, in_channels, device=None, dtype=None):
        super().__init__()
        fk = _fk(device, dtype)
        self.in_channels = in_channels
        self.norm = Normalize(in_channels, **fk)
        self.q = nn.Conv2d(in_channels, in_channels, 1, stride=1, padding=0, **fk)
        self.k = nn.Conv2d(in_channels, in_channels, 1, stride=1, padding=0, **fk)
        self.v = nn.Conv2d(in_channels, in_channels, 1, stride=1, padding=0, **fk)
        self.proj_out = nn.Conv2d(in_channels, in_channels, 1, stride=1, padding=0, **fk)

    def attention(self, h_):
        h_ = self.norm(h_)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        q, k, v = (t.reshape(b, c, h * w).transpose(1, 2) for t in (q, k, v))  # b (hw) c
        attn = (torch.matmul(q, k.transpose(1, 2)) * (c ** -0.5)).softmax(dim=-1)
        out = torch.matmul(attn, v)
        return out.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x):
        return x + self.proj_out(self.attention(x))


def make_attn(in_channels, attn_type="vanilla", device=None, dtype=None):
    if attn_type == "none":
        return nn.Identity()
    return AttnBlock(in_channels, device=device, dtype=dtype)


class Encoder(nn.Module):
    def __init__(self, *, ch, out_ch=None, ch_mult=(1, 2, 4, 8), num_res_blocks, attn_resolutions=(),
                 dropout=0.0, resamp_with_conv=True, in_channels, resolution=256, z_channels,
                 double_z=True, attn_type="vanilla", device=None, dtype=None, **ignore):
        super().__init__()
        fk = _fk(device, dtype)
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.conv_in = nn.Conv2d(in_channels, ch, 3, stride=1, padding=1, **fk)
        curr_res = resolution
        in_ch_mult = (1,) + tuple(ch_mult)
        self.in_ch_mult = in_ch_mult
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out,
                                         temb_channels=self.temb_ch, dropout=dropout, **fk))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(make_attn(block_in, attn_type, **fk))
            down = nn.Module()
            down.block = block
            down.attn = attn
            if i_level != self.num_resolutions - 1:
                down.downsample = VAEDownsample(block_in, resamp_with_conv, **fk)
                curr_res = curr_res // 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in,
                                       temb_channels=self.temb_ch, dropout=dropout, **fk)
        self.mid.attn_1 = make_attn(block_in, attn_type, **fk)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in,
                                       temb_channels=self.temb_ch, dropout=dropout, **fk)
        self.norm_out = Normalize(block_in, **fk)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3,
                                  stride=1, padding=1, **fk)

    def forward(self, x):
        temb = None
        hs = [self.conv_in(x)]
        for i_level in range(self.num_resolutions):
            for i_block in range(self.num_res_blocks):
                h = self.down[i_level].block[i_block](hs[-1], temb)
                if len(self.down[i_level].attn) > 0:
                    h = self.down[i_level].attn[i_block](h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                hs.append(self.down[i_level].downsample(hs[-1]))
        h = hs[-1]
        h = self.mid.block_1(h, temb)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h, temb)
        h = nonlinearity(self.norm_out(h))
        return self.conv_out(h)


class Decoder(nn.Module):
    def __init__(self, *, ch, out_ch, ch_mult=(1, 2, 4, 8), num_res_blocks, attn_resolutions=(),
                 dropout=0.0, resamp_with_conv=True, in_channels=None, resolution=256, z_channels,
                 give_pre_end=False, tanh_out=False, attn_type="vanilla", device=None, dtype=None,
                 **ignore):
        super().__init__()
        fk = _fk(device, dtype)
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out
        block_in = ch * ch_mult[self.num_resolutions - 1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, z_channels, curr_res, curr_res)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, stride=1, padding=1, **fk)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in,
                                       temb_channels=self.temb_ch, dropout=dropout, **fk)
        self.mid.attn_1 = make_attn(block_in, attn_type, **fk)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in,
                                       temb_channels=self.temb_ch, dropout=dropout, **fk)
        # Built from the last level down, stored so that up[i] is level i (sgm: insert(0, up)).
        ups = []
        for i_level in reversed(range(self.num_resolutions)):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out,
                                         temb_channels=self.temb_ch, dropout=dropout, **fk))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(make_attn(block_in, attn_type, **fk))
            up = nn.Module()
            up.block = block
            up.attn = attn
            if i_level != 0:
                up.upsample = VAEUpsample(block_in, resamp_with_conv, **fk)
                curr_res = curr_res * 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = Normalize(block_in, **fk)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, stride=1, padding=1, **fk)

    def forward(self, z):
        temb = None
        h = self.conv_in(z)
        h = self.mid.block_1(h, temb)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h, temb)
        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = self.up[i_level].block[i_block](h, temb)
                if len(self.up[i_level].attn) > 0:
                    h = self.up[i_level].attn[i_block](h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        if self.give_pre_end:
            return h
        h = nonlinearity(self.norm_out(h))
        h = self.conv_out(h)
        if self.tanh_out:
            h = torch.tanh(h)
        return h


class DiagonalGaussianDistribution:
    """moments (B, 2C, H, W) -> mean, logvar (clamped to [-30, 20]) on the channel axis."""

    def __init__(self, parameters, deterministic=False):
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self, noise):
        """mean + std * noise; the standard-normal noise is passed in (sgm draws it itself)."""
        assert noise.shape == self.mean.shape
        return self.mean + self.std * noise.to(self.mean.dtype)

    def mode(self):
        return self.mean

    def kl(self):
        """KL(q || N(0, I)) per sample, summed over C, H, W."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], dtype=self.mean.dtype, device=self.mean.device)
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])

    def nll(self, sample, dims=(1, 2, 3)):
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], dtype=self.mean.dtype, device=self.mean.device)
        return 0.5 * torch.sum(math.log(2.0 * math.pi) + self.logvar
                               + (sample - self.mean).pow(2) / self.var, dim=list(dims))


class AutoencoderKL(nn.Module):
    """sgm AutoencoderKL (AutoencodingEngineLegacy + DiagonalGaussianRegularizer).

    Registration order (= state_dict order): encoder, decoder, quant_conv, post_quant_conv
    (sgm's loss = Identity and regularization hold no parameters)."""

    def __init__(self, ddconfig, embed_dim, scale_factor=0.13025, device=None, dtype=None):
        super().__init__()
        fk = _fk(device, dtype)
        self.encoder = Encoder(**ddconfig, **fk)
        self.decoder = Decoder(**ddconfig, **fk)
        mult = 1 + int(bool(ddconfig["double_z"]))
        self.quant_conv = nn.Conv2d(mult * ddconfig["z_channels"], mult * embed_dim, 1, **fk)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1, **fk)
        self.embed_dim = embed_dim
        self.scale_factor = scale_factor

    def encode_moments(self, x):
        return self.quant_conv(self.encoder(x))

    def encode(self, x):
        """x (B, 3, H, W) in [-1, 1] -> the posterior DiagonalGaussianDistribution."""
        return DiagonalGaussianDistribution(self.encode_moments(x))

    def decode(self, z):
        """Unscaled latent -> image."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x, noise=None):
        """As sgm AutoencodingEngine.forward: returns (z, dec, {"kl_loss"}). z is the posterior
        sample mean + std*noise when noise is given (sgm's training path), else its mode; kl_loss
        = sum of the per-sample KL / B (DiagonalGaussianRegularizer)."""
        posterior = self.encode(x)
        z = posterior.sample(noise) if noise is not None else posterior.mode()
        kl = posterior.kl()
        reg_log = {"kl_loss": torch.sum(kl) / kl.shape[0]}
        return z, self.decode(z), reg_log


# ----------------------------------------------------------------------------------------------
# Builders from ldmc's YAML schema (configs/*.yaml)
# ----------------------------------------------------------------------------------------------

def load_config(path):
    import yaml
    with open(path) as f:
        return yaml.safe_load(f)


def _section(cfg, name):
    if isinstance(cfg, str):
        cfg = load_config(cfg)
    return cfg[name] if name in cfg else cfg


def vector_width(cfg_unet):
    """Width of the vector conditioning described by cfg_unet["vector"] (0 when absent)."""
    width = 0
    for part in cfg_unet.get("vector") or []:
        if part == "pooled_text":
            width += int(cfg_unet["pooled_dim"])
        elif part in VECTOR_SCALARS:
            width += VECTOR_SCALARS[part] * VECTOR_FOURIER_DIM
        else:
            raise ValueError(f"unknown vector part {part!r}")
    return width


def unet_from_config(cfg_unet, device=None, dtype=None):
    """Builds the UNetModel (and the ClassEmbedder when class_embed is set) from the `unet:`
    section of an ldmc config (the full config dict or a path are accepted too).
    Returns the UNetModel, or (UNetModel, ClassEmbedder)."""
    c = _section(cfg_unet, "unet")
    vector = c.get("vector")
    num_classes, adm = None, None
    if vector:
        adm = vector_width(c)
        if "adm_in_channels" in c:
            assert int(c["adm_in_channels"]) == adm, \
                f"adm_in_channels {c['adm_in_channels']} != vector width {adm}"
        num_classes = "sequential"
    else:
        assert "adm_in_channels" not in c, "adm_in_channels without a vector"
    ce = c.get("class_embed")
    context_dim = c.get("context_dim")
    if ce is not None and context_dim is not None:
        assert int(ce["dim"]) == int(context_dim), "class_embed.dim must equal context_dim"
    unet = UNetModel(
        in_channels=c["in_channels"], model_channels=c["model_channels"],
        out_channels=c["out_channels"], num_res_blocks=c["num_res_blocks"],
        attention_resolutions=c["attention_resolutions"], channel_mult=c["channel_mult"],
        num_classes=num_classes, num_head_channels=c["num_head_channels"],
        transformer_depth=c.get("transformer_depth", 1),
        transformer_depth_middle=c.get("transformer_depth_middle"),
        context_dim=context_dim, use_linear_in_transformer=True, adm_in_channels=adm,
        device=device, dtype=dtype)
    if ce is None:
        return unet
    emb = ClassEmbedder(int(ce["dim"]), n_classes=int(ce["n_classes"]), add_sequence_dim=True,
                        device=device, dtype=dtype)
    return unet, emb


def vae_from_config(cfg_vae, device=None, dtype=None):
    """Builds AutoencoderKL from the `vae:` section of an ldmc config (attention only in the mid
    blocks, as SDXL's attn_resolutions: [])."""
    c = _section(cfg_vae, "vae")
    ddconfig = dict(double_z=bool(c.get("double_z", True)), z_channels=int(c["z_channels"]),
                    resolution=256, in_channels=int(c["in_channels"]),
                    out_ch=int(c["out_channels"]), ch=int(c["ch"]), ch_mult=list(c["ch_mult"]),
                    num_res_blocks=int(c["num_res_blocks"]), attn_resolutions=[], dropout=0.0)
    return AutoencoderKL(ddconfig, int(c["embed_dim"]), scale_factor=float(c["scale_factor"]),
                         device=device, dtype=dtype)


def vector_from_parts(cfg_unet, parts):
    """Assembles the vector conditioning y in the config's order: pooled_text (B, pooled_dim) as is,
    the scalar parts ((B, k) or (B,) tensors: original_size (h, w), crop_coords (top, left),
    target_size (h, w), aesthetic_score) through ConcatTimestepEmbedderND(256), in float32."""
    c = _section(cfg_unet, "unet")
    embed = ConcatTimestepEmbedderND(VECTOR_FOURIER_DIM)
    out = []
    for part in c.get("vector") or []:
        v = parts[part]
        if part == "pooled_text":
            assert v.dim() == 2 and v.shape[1] == int(c["pooled_dim"])
            out.append(v.float())
        else:
            v = v if v.dim() == 2 else v[:, None]
            assert v.shape[1] == VECTOR_SCALARS[part], f"{part}: {tuple(v.shape)}"
            out.append(embed(v))
    return torch.cat(out, dim=1)


def count_params(module):
    return sum(p.numel() for p in module.parameters())


CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs")


def config_path(name):
    return os.path.normpath(os.path.join(CONFIG_DIR, name + ".yaml"))


# ----------------------------------------------------------------------------------------------
# Self-test: tiny configs on the CPU
# ----------------------------------------------------------------------------------------------

def _random_parts(cfg_unet, batch, gen):
    c = _section(cfg_unet, "unet")
    parts = {}
    for part in c.get("vector") or []:
        if part == "pooled_text":
            parts[part] = torch.randn(batch, int(c["pooled_dim"]), generator=gen)
        elif part == "aesthetic_score":
            parts[part] = torch.rand(batch, generator=gen) * 10.0
        else:
            parts[part] = torch.randint(0, 1025, (batch, VECTOR_SCALARS[part]), generator=gen).float()
    return parts


def _selftest():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    B = 2

    cfg = load_config(config_path("tiny_unet_text"))["unet"]
    unet = unet_from_config(cfg).eval()
    x = torch.randn(B, cfg["in_channels"], 8, 8, generator=gen)
    t = torch.tensor([999, 10])
    ctx = torch.randn(B, 5, cfg["context_dim"], generator=gen)
    y = vector_from_parts(cfg, _random_parts(cfg, B, gen))
    with torch.no_grad():
        out = unet(x, t, context=ctx, y=y)
    print(f"tiny_unet_text: params {count_params(unet):,}; y {tuple(y.shape)}; "
          f"out {tuple(out.shape)}")
    assert out.shape == x.shape and y.shape[1] == cfg["adm_in_channels"]

    cfg = load_config(config_path("tiny_unet_class"))["unet"]
    unet, cemb = unet_from_config(cfg)
    unet.eval()
    x = torch.randn(B, cfg["in_channels"], 8, 8, generator=gen)
    labels = torch.tensor([3, 7])
    y = vector_from_parts(cfg, _random_parts(cfg, B, gen))
    with torch.no_grad():
        ctx = cemb(labels)
        out = unet(x, t, context=ctx, y=y)
    print(f"tiny_unet_class: params {count_params(unet):,} + class embedder "
          f"{count_params(cemb):,}; context {tuple(ctx.shape)}; y {tuple(y.shape)}; "
          f"out {tuple(out.shape)}")
    assert out.shape == x.shape and ctx.shape == (B, 1, cfg["class_embed"]["dim"])

    cfg = load_config(config_path("tiny_vae"))["vae"]
    vae = vae_from_config(cfg).eval()
    img = torch.rand(B, cfg["in_channels"], 16, 16, generator=gen) * 2 - 1
    with torch.no_grad():
        post = vae.encode(img)
        noise = torch.randn(post.mean.shape, generator=gen)
        z, dec, log = vae(img, noise=noise)
    print(f"tiny_vae: params {count_params(vae):,}; moments {tuple(post.parameters.shape)}; "
          f"z {tuple(z.shape)}; dec {tuple(dec.shape)}; kl_loss {log['kl_loss'].item():.4f}")
    assert dec.shape == img.shape

    # timestep embedding spot checks: cos first, odd dim padded with a zero column
    e = timestep_embedding(torch.tensor([0.0, 1.0]), 5)
    assert torch.allclose(e[0], torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]))
    assert abs(e[1, 0].item() - math.cos(1.0)) < 1e-6 and e[1, 4].item() == 0.0
    print("ok")


if __name__ == "__main__":
    _selftest()
