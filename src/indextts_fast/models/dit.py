"""The DiT velocity estimator of S2Mel's flow matching (SPEC-s2mel.md 4.11, 4.13).

Official source: `indextts/s2mel/modules/diffusion_transformer.py` (DiT), `gpt_fast/model.py` (its
transformer) and `wavenet.py` (WN head). State-dict keys are exactly the official `cfm.estimator.*` ones,
weight-normed layers included (`checkpoint.weight_norm_layout`; folded after loading).

Only the configuration the official inference runs is built: continuous content (`cond_projection`),
style concatenated to the input, a WaveNet final layer, long skip, U-ViT skips (optional), no time/style
token, non-causal. Parameters the forward never uses are still created so that the shipped file loads
strictly: `x_embedder` (weight-normed Linear), `cond_embedder` (content_codebook_size × D),
`content_mask_embedder`, and the persistent buffer `input_pos` (0..16383).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import weight_norm_layout
from ..config import S2MelSettings
from ..errors import ModelFolderError, OptionError
from ..kernels import ops
from .timemajor import conv1d_time_major

BLOCK_SIZE = 16384  # official DiT hard-codes the RoPE table length and input_pos (config block_size ignored)


def _find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


def sequence_mask(lengths: Tensor, max_length: int) -> Tensor:
    """(B,) lengths -> (B, max_length) bool, True for valid frames."""
    return torch.arange(max_length, device=lengths.device) < lengths[:, None]


class TimestepEmbedder(nn.Module):
    """t -> [cos(1000·t·f), sin(1000·t·f)] (256) -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden: int, frequency_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        half = frequency_dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half))

    def forward(self, t: Tensor) -> Tensor:
        args = 1000 * t[:, None].float() * self.freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


def rms_normalize(x: Tensor, eps: float) -> Tensor:
    """x·rsqrt(mean(x²) + eps) computed in float32 (official: x.float(), then cast back). torch's kernel
    computes a bf16 input in float32 and rounds once, so a bf16 x skips both copies (same result)."""
    if x.dtype == torch.bfloat16:
        return F.rms_norm(x, (x.shape[-1],), eps=eps)
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_normalize(x, self.eps) * self.weight


class AdaptiveRMSNorm(nn.Module):
    """Official `AdaptiveLayerNorm`: [w, b] = Linear(c); w ⊙ RMSNorm(x) + b."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.project_layer = nn.Linear(dim, 2 * dim)
        self.norm = RMSNorm(dim, eps)

    def forward(self, x: Tensor, c: Tensor, projected: Optional[Tensor] = None) -> Tensor:
        """`projected`: project_layer(c) when the caller computed it already (Transformer._modulations)."""
        weight, bias = (self.project_layer(c) if projected is None else projected).chunk(2, dim=-1)  # (B, 1, D)
        # fewer passes over (B, T, D) than the official op chain: γ is folded into the per-sample scale
        # (w·γ is B·D multiplies) and the affine part is one addcmul; same math, other rounding order.
        # In a bf16 stage the scale is rounded to bf16 so that the (B, T, D) pass stays bf16, and with the C
        # kernels the norm and the affine part are one pass (the normalised x is not rounded in between).
        out = ops.adaln_rms_bf16(x, weight * self.norm.weight, bias, self.norm.eps) if weight.shape[1] == 1 else None
        if out is not None:
            return out
        normalized = rms_normalize(x, self.norm.eps)
        return torch.addcmul(bias, (weight * self.norm.weight).to(normalized.dtype), normalized)


def rope_table(n_positions: int, head_dim: int, base: float = 10000.0) -> Tensor:
    """(n_positions, head_dim/2, 2) [cos, sin], built in float32 as the official setup_caches does."""
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, device="cpu")[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(n_positions, device="cpu"), freqs)
    cis = torch.polar(torch.ones_like(angles), angles)
    return torch.stack([cis.real, cis.imag], dim=-1)


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """Rotate interleaved pairs (2m, 2m+1) of x (..., T, d) by the (T, d/2, 2) [cos, sin] table, in float32:
    (x0·cos − x1·sin, x1·cos + x0·sin), i.e. one complex multiplication per pair. The result is contiguous
    in x's logical order (so a transposed view comes out in (B, heads, T, d) layout for the attention)."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    out = torch.empty(xc.shape, dtype=xc.dtype, device=xc.device)
    torch.mul(xc, torch.view_as_complex(rope), out=out)
    return torch.view_as_real(out).flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, rope: Tensor, mask: Optional[Tensor], keep_from: int = 0) -> Tensor:
        """(B, T, D) -> the attention output of query rows keep_from..T-1 (every row is a key)."""
        B, T, D = x.shape
        H = self.n_heads
        qkv = self.wqkv(x).view(B, T, 3 * H, self.head_dim)
        lowp = ops.bf16_ready(qkv)
        heads = [qkv[:, :, i * H:(i + 1) * H].transpose(1, 2) for i in range(3)]   # (B, H, T, d) strided views
        # bf16 with our attention kernel: q and k rotated as the kernel reads them (no separate pass)
        y = native_attention(*heads, mask, rope) if lowp and ops.attention_paths() else None
        if y is not None:
            y = y[:, keep_from:]
        else:
            # bf16: the rotation straight from the strided q|k of qkv, one pass; else q and k rotated together
            qk = ops.rope_bf16(qkv, rope, 2 * H, self.head_dim) if lowp else None
            if qk is None:
                qk = apply_rope(qkv[:, :, : 2 * H].transpose(1, 2), rope)  # (B, 2H, T, d)
            q, k, v = qk[:, :H], qk[:, H:], heads[2]
            # SDPA is faster on contiguous heads
            y = F.scaled_dot_product_attention(q[:, :, keep_from:], k, v.contiguous(), attn_mask=mask).transpose(1, 2)
        return self.wo(y.reshape(B, T - keep_from, D))


def native_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], rope: Optional[Tensor] = None,
                     path: Optional[str] = None) -> Optional[Tensor]:
    """softmax(q·kᵀ/√d, valid keys)·v in kernels/attention.c (kernels.ops.attention_bf16: AMX tiles, else
    AVX512-BF16 dot products; `path` forces one) -> (B, T, H, d), the layout wo reads; None when the kernel
    does not take it (no such CPU, head width other than 64) and SDPA must run.
    q, k, v: (B, H, T, d) bf16 views, d contiguous (v read straight from the strided qkv). mask: None or the
    DiT's (B, 1, 1, T) key mask, always a prefix (sequence_mask), so it is passed as lengths. rope: None, or
    the (T, d/2, 2) fp32 table q and k are rotated by as the kernel reads them (apply_rope's pairs, rounded
    to bf16 once: the same values as rotating them first)."""
    B, H, T, d = q.shape
    if mask is not None and mask.shape != (B, 1, 1, T):
        return None
    lengths = None if mask is None else mask.reshape(B, T).sum(-1, dtype=torch.int32)
    return ops.attention_bf16(q, k, v, lengths, rope, path)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w1(x), self.w3(x)
        if ops.silu_mul_bf16_(gate, up):   # bf16 stage: one pass, in place
            return self.w2(gate)
        return self.w2(F.silu(gate, inplace=True).mul_(up))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, ffn_dim: int, uvit_skip: bool):
        super().__init__()
        self.attention = Attention(dim, n_heads)
        self.feed_forward = FeedForward(dim, ffn_dim)
        self.ffn_norm = AdaptiveRMSNorm(dim)
        self.attention_norm = AdaptiveRMSNorm(dim)
        if uvit_skip:  # every layer owns one, even those that never receive a skip
            self.skip_in_linear = nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor, c: Tensor, rope: Tensor, mask: Optional[Tensor], skip: Optional[Tensor],
                mods: Optional[dict] = None, keep_from: int = 0) -> Tensor:
        """-> the rows keep_from.. of the block's output (all rows still serve as the attention's keys)."""
        if skip is not None:
            x = self.skip_in_linear(torch.cat([x, skip], dim=-1))
        mods = mods or {}
        a = self.attention(self.attention_norm(x, c, mods.get(self.attention_norm)), rope, mask, keep_from)
        h = (x[:, keep_from:] if keep_from else x) + a
        return h + self.feed_forward(self.ffn_norm(h, c, mods.get(self.ffn_norm)))


class Transformer(nn.Module):
    """gpt-fast transformer, non-causal, AdaLN-conditioned on c, with U-ViT skips:
    layers i < n//2 push their output, layers i > n//2 pop one (SPEC 4.11 step 5)."""

    def __init__(self, dim: int, n_heads: int, depth: int, uvit_skip: bool):
        super().__init__()
        ffn_dim = _find_multiple(int(2 * (4 * dim) / 3), 256)
        self.layers = nn.ModuleList(TransformerBlock(dim, n_heads, ffn_dim, uvit_skip) for _ in range(depth))
        self.norm = AdaptiveRMSNorm(dim)
        self.uvit_skip = uvit_skip
        # Not in the checkpoint (official setup_caches builds it): float32 RoPE table for BLOCK_SIZE positions.
        self.register_buffer("rope", rope_table(BLOCK_SIZE, dim // n_heads), persistent=False)

    def forward(self, x: Tensor, c: Tensor, mask: Optional[Tensor], keep_from: int = 0) -> Tensor:
        """-> rows keep_from..T-1 of the output: the last block computes only those (DiT.forward's tail)."""
        T = x.shape[1]
        if T > BLOCK_SIZE:
            raise OptionError(f"sequence of {T} frames exceeds the DiT's {BLOCK_SIZE}-position RoPE table")
        rope = self.rope[:T]
        n = len(self.layers)
        mods = self._modulations(c)
        skips: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            skip = skips.pop() if self.uvit_skip and i > n // 2 else None
            x = layer(x, c, rope, mask, skip, mods, keep_from if i == n - 1 else 0)
            if self.uvit_skip and i < n // 2:
                skips.append(x)
        return self.norm(x, c, mods.get(self.norm) if mods else None)

    def _modulations(self, c: Tensor) -> Optional[dict]:
        """bf16 weights: the 2·depth + 1 AdaLN projections of c as ONE product (their weights concatenated
        once, kept while unchanged) instead of 27 small ones, {norm: projected}; fp32: None (each on its own,
        the exact path)."""
        norms = [m for layer in self.layers for m in (layer.attention_norm, layer.ffn_norm)] + [self.norm]
        weights = [m.project_layer.weight for m in norms]
        if weights[0].dtype != torch.bfloat16:
            return None
        key = tuple(w.data_ptr() for w in weights)
        if getattr(self, "_modulation_key", None) != key:
            self._modulation_w = torch.cat(weights)
            self._modulation_b = torch.cat([m.project_layer.bias for m in norms])
            self._modulation_key = key
        projected = F.linear(c, self._modulation_w, self._modulation_b).split(weights[0].shape[0], dim=-1)
        return dict(zip(norms, projected))


# ---- WaveNet head ----------------------------------------------------------------------------------
def reflect_pad(x: Tensor, left: int, right: int) -> Tensor:
    """Official `pad1d(mode="reflect")`: inputs too short to reflect get zeros appended first."""
    if left == 0 and right == 0:
        return x
    extra = max(left, right) - x.shape[-1] + 1 if x.shape[-1] <= max(left, right) else 0
    if extra:
        x = F.pad(x, (0, extra))
    padded = F.pad(x, (left, right), mode="reflect")
    return padded[..., : padded.shape[-1] - extra] if extra else padded


class _Holder(nn.Module):
    """Gives the official `conv.conv.*` nesting of SConv1d -> NormConv1d -> Conv1d."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv


class ReflectConv1d(nn.Module):
    """Official `SConv1d(norm="weight_norm")`, non-causal, stride 1: reflect padding of (k-1)·dilation
    split evenly (any `padding` argument given in the official code is silently ignored)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__()
        self.conv = _Holder(weight_norm_layout(nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)))
        total = (kernel_size - 1) * dilation
        self.pad = (total - total // 2, total // 2)
        self.int8: Optional[nn.Module] = None   # int8gemm.convert_dit_: the same conv as an int8 GEMM (time-major)

    def forward(self, x: Tensor, time_major: bool = False) -> Tensor:
        """x (B, C, T) -> (B, C', T); `time_major`: (B, T, C) -> (B, T, C') (needs T > the padding)."""
        conv = self.conv.conv
        if self.int8 is not None and not time_major and x.shape[-1] > max(self.pad):   # int8 products (fp32 stage)
            return self.forward(x.transpose(1, 2), time_major=True).transpose(1, 2)
        if conv.kernel_size[0] == 1:  # a batched matrix product (torch's 1×1 conv path is slow on CPU)
            if time_major:
                return F.linear(x, conv.weight[:, :, 0], conv.bias) if self.int8 is None else self.int8(x)
            if x.shape[-1] == 1:  # one frame (the global condition): a plain GEMV, no per-sample weight copy
                return F.linear(x[..., 0], conv.weight[:, :, 0], conv.bias).unsqueeze(-1)
            return torch.baddbmm(conv.bias[:, None], conv.weight[:, :, 0].expand(x.shape[0], -1, -1), x)
        if not time_major:
            return conv(reflect_pad(x, *self.pad))
        # the reflection as one gather along time, then a time-major (channels-last) conv: no reorders
        T, (left, right) = x.shape[1], self.pad
        index = torch.cat([torch.arange(left, 0, -1), torch.arange(T), torch.arange(T - 2, T - 2 - right, -1)])
        if self.int8 is not None:
            return self.int8.conv_time_major(x[:, index])
        return conv1d_time_major(conv, x[:, index], padding=0)


class WaveNet(nn.Module):
    """Official `WN` with a global condition g (B, gin, 1): gated tanh·sigmoid residual/skip layers."""

    def __init__(self, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int, gin_channels: int):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ModelFolderError(f"s2mel.wavenet.kernel_size must be odd (official assert), got {kernel_size}")
        self.hidden, self.n_layers = hidden, n_layers
        self.cond_layer = ReflectConv1d(gin_channels, 2 * hidden * n_layers, 1)
        self.in_layers = nn.ModuleList(
            ReflectConv1d(hidden, 2 * hidden, kernel_size, dilation_rate ** i) for i in range(n_layers))
        self.res_skip_layers = nn.ModuleList(
            ReflectConv1d(hidden, 2 * hidden if i < n_layers - 1 else hidden, 1) for i in range(n_layers))

    def time_major_ok(self, x: Tensor) -> bool:
        """Whether x (B, T, H) can take the time-major path: a bf16 CPU stage with the C kernels (the gate) and
        T longer than every padding (shorter inputs need the official zero-append quirk: channel-major)."""
        return ops.bf16_ready(x, whole_vectors=False) and \
            x.shape[1] > max(max(layer.pad) for layer in self.in_layers)

    def forward(self, x: Tensor, mask: Optional[Tensor], g: Tensor, time_major: bool = False) -> Tensor:
        """x (B, H, T), mask (B, 1, T) or None -> (B, H, T). `time_major` (`time_major_ok`): x (B, T, H), mask
        (B, T, 1) -> (B, T, H): channels-last convolutions and the gate as one C pass (bf16 stages)."""
        H = self.hidden
        g = self.cond_layer(g)
        channels = (lambda t, lo, hi: t[..., lo:hi]) if time_major else (lambda t, lo, hi: t[:, lo:hi])
        output: Optional[Tensor] = None
        for i, (in_layer, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            acts = self._gate(in_layer(x, time_major), g[:, 2 * i * H: 2 * (i + 1) * H], time_major)
            rs = res_skip(acts, time_major)
            skip = channels(rs, H, 2 * H) if i < self.n_layers - 1 else rs
            output = skip if output is None else output + skip  # official starts from zeros: 0 + a == a
            if i < self.n_layers - 1:
                x = x + channels(rs, 0, H)
                if mask is not None:
                    x = x * mask
        return output if mask is None else output * mask

    def _gate(self, a: Tensor, gi: Tensor, time_major: bool) -> Tensor:
        """tanh(a1 + g1)·sigmoid(a2 + g2) of the two channel halves; gi (B, 2H, 1)."""
        H = self.hidden
        if time_major:   # kernels/native.c: (B, T, 2H) -> (B, T, H), fp32 inside, rounded once
            return ops.wavenet_gate_bf16(a, gi[..., 0], H)
        a.add_(gi)
        return a[:, :H].tanh_().mul_(a[:, H:].sigmoid_())  # in place


class FinalLayer(nn.Module):
    """[shift, scale] = Linear(SiLU(c)); LayerNorm(no affine, eps 1e-6)(x)·(1 + scale) + shift; WN Linear."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = weight_norm_layout(nn.Linear(hidden, hidden))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(self.norm_final(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1))


# ---- the estimator -----------------------------------------------------------------------------------
class DiT(nn.Module):
    """forward(x, prompt_x, x_lens, t, style, mu) -> velocity (B', 80, T); shapes in SPEC-s2mel.md 4.11."""

    def __init__(self, cfg: S2MelSettings):
        super().__init__()
        d, wn = cfg.DiT, cfg.wavenet
        unsupported = [name for name, ok in [
            ("final_layer_type 'wavenet'", d.final_layer_type == "wavenet"),
            ("style_condition true", d.style_condition and wn.style_condition),
            ("long_skip_connection true", d.long_skip_connection),
            ("time_as_token false", not d.time_as_token), ("style_as_token false", not d.style_as_token),
            ("is_causal false", not d.is_causal), ("dit_type 'DiT'", cfg.dit_type == "DiT"),
        ] if not ok]
        if unsupported:
            raise ModelFolderError("config.yaml s2mel: only the official inference configuration is supported; "
                                   "needs " + ", ".join(unsupported))
        if wn.hidden_dim != d.hidden_dim:
            raise ModelFolderError(f"s2mel.wavenet.hidden_dim ({wn.hidden_dim}) must equal s2mel.DiT.hidden_dim "
                                   f"({d.hidden_dim}): the official final layer is fed the DiT time embedding")
        if d.hidden_dim % d.num_heads or (d.hidden_dim // d.num_heads) % 2:
            raise ModelFolderError(f"s2mel.DiT.hidden_dim {d.hidden_dim} / num_heads {d.num_heads} must be an "
                                   "even integer (RoPE rotates pairs)")
        D, C, style_dim = d.hidden_dim, d.in_channels, cfg.style_encoder.dim
        self.in_channels = C
        self.transformer = Transformer(D, d.num_heads, d.depth, d.uvit_skip_connection)
        self.x_embedder = weight_norm_layout(nn.Linear(C, D))  # unused
        self.cond_embedder = nn.Embedding(d.content_codebook_size, D)  # unused
        self.cond_projection = nn.Linear(d.content_dim, D)
        self.t_embedder = TimestepEmbedder(D)
        self.register_buffer("input_pos", torch.arange(BLOCK_SIZE))  # unused (positions are 0..T-1)
        self.t_embedder2 = TimestepEmbedder(wn.hidden_dim)
        self.conv1 = nn.Linear(D, wn.hidden_dim)
        self.conv2 = nn.Conv1d(wn.hidden_dim, C, 1)
        self.wavenet = WaveNet(wn.hidden_dim, wn.kernel_size, wn.dilation_rate, wn.num_layers, wn.hidden_dim)
        self.final_layer = FinalLayer(wn.hidden_dim)
        self.res_projection = nn.Linear(D, wn.hidden_dim)
        self.content_mask_embedder = nn.Embedding(1, D)  # unused
        self.skip_linear = nn.Linear(D + C, D)
        self.cond_x_merge_linear = nn.Linear(D + 2 * C + style_dim, D)

    def head_context(self) -> int:
        """Frames of left context the WaveNet head reads (the sum of its convolutions' left paddings): its
        output at frame j depends on its input from frame j - head_context() on."""
        return sum(layer.pad[0] for layer in self.wavenet.in_layers)

    def forward(self, x: Tensor, prompt_x: Tensor, x_lens: Tensor, t: Tensor, style: Tensor, mu: Tensor,
                from_frame: int = 0) -> Tensor:
        """Velocity (B', 80, T - from_frame) of frames from_frame..T-1. The flow matching discards the
        prompt's frames, so it asks only for the rest: every frame still goes through the transformer (all
        are keys of its attention), but its last block's outputs (attention rows, FFN) and the part after it,
        which is position-wise or local (long skip, WaveNet head, final layer), are computed for frames from
        `from_frame - head_context()` on only: enough context for the frames returned to be computed from the
        same inputs by the same operations as in a full call (the official one computes all)."""
        B, _, T = x.shape
        if not 0 <= from_frame <= T:
            raise OptionError(f"from_frame must be in 0..{T}, got {from_frame}")
        t1 = self.t_embedder(t)
        xt = x.transpose(1, 2)
        h = torch.cat([xt, prompt_x.transpose(1, 2), self.cond_projection(mu), style[:, None, :].expand(B, T, -1)], -1)
        h = self.cond_x_merge_linear(h)
        # Key mask from x_lens (official: a (1, 1, T, T) boolean mask). All-valid -> no mask at all.
        valid = sequence_mask(x_lens, T) if bool((x_lens < T).any()) else None
        first = max(0, from_frame - self.head_context())   # the tail (and the last block) runs on frames first..
        h = self.transformer(h, t1.unsqueeze(1), None if valid is None else valid[:, None, None, :], first)
        if first:
            xt, valid = xt[:, first:], None if valid is None else valid[:, first:]
        x_res = self.skip_linear(torch.cat([h, xt], dim=-1))
        y = self.conv1(x_res)   # (B', T, H): time-major
        g = self.t_embedder2(t).unsqueeze(2)
        if self.wavenet.time_major_ok(y):
            y = self.wavenet(y, None if valid is None else valid[:, :, None].to(y.dtype), g, time_major=True)
        else:
            wn_mask = None if valid is None else valid[:, None, :].to(y.dtype)
            y = self.wavenet(y.transpose(1, 2), wn_mask, g).transpose(1, 2)
        y = y + self.res_projection(x_res)
        y = self.final_layer(y, t1)
        # conv2 is a 1×1 Conv1d: applied as a Linear on the time-major y, then viewed as (B', 80, T)
        return F.linear(y[:, from_frame - first:], self.conv2.weight[:, :, 0], self.conv2.bias).transpose(1, 2)
