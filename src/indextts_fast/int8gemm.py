"""int8 matrix products on the CPU, and the int8 DiT (S2Mel stage precision `int8dyn`).

- `quantize_int8`: symmetric per-output-channel int8 weights; `quantize_activations`: per-tensor asymmetric
  uint8 activations (fp32 or bf16; one C pass, kernels/native.c, else torch ops); `onednn_prepack`:
  oneDNN's packed weight for `onednn::qlinear_pointwise` (VNNI / AMX int8 GEMM).
- `Int8GemmLinear`: a bf16 stage's Linear, or a time-major 1-D convolution as im2col, as ONE oneDNN int8
  GEMM: activations quantised per tensor on the fly, fp32 bias inside the kernel, bf16 out. On a 2-core
  AMD EPYC (Zen 4, AVX-512 VNNI, no AMX) oneDNN's int8 GEMM runs at ~2x its bf16 one on the DiT's shapes
  (1222x512x1536: 5.2 -> 2.6 ms; 548x2560x1024: 7.3 -> 3.7 ms).
- `convert_dit_`: swaps the DiT's large products for it: per transformer block q|k|v, the attention output,
  the three SwiGLU projections and the U-ViT skip input; the content projection; every WaveNet convolution
  (in_layers as im2col, res_skip). What stays bf16: the attention itself (softmax(q·kᵀ)·v), the
  AdaLN/time-embedding products (a row or two per sample), the input merge, the long skip, `conv1`, the
  residual projection, the final linear and `conv2` (see DIT_PRODUCTS), norms and gates.
  The WaveNet convolutions take int8 only on the time-major path (bf16 CPU stage with the C kernels).
Measured divergence from fp32: `indextts-fast fidelity --precision s2mel=int8dyn`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .errors import OptionError


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: W (out, in) ≈ q · scale[:, None], q in [-127, 127]."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


def onednn_prepack(q: torch.Tensor):
    """oneDNN's packed int8 weight for `qlinear_pointwise` (AMX/VNNI int8 GEMM), or None where torch has no
    oneDNN quantized ops."""
    try:
        return torch.ops.onednn.qlinear_prepack(q, None)
    except (AttributeError, RuntimeError, NotImplementedError):
        return None


def quantize_activations(x: torch.Tensor, kernel=None, qmax: int = 255) -> tuple[torch.Tensor, float, int]:
    """Contiguous fp32/bf16 x -> (uint8 x in [0, qmax], scale, zero point): x ≈ (q - zp)·scale per tensor, 0
    exact. qmax 127 on CPUs without VNNI: their u8 x s8 products (vpmaddubsw) add pairs in int16, which 8-bit
    activations can saturate (relative error 0.015-0.02 per product measured, 2e-2 on the tiny model's mel)
    and 7-bit ones cannot. `kernel`: any of our kernel libraries (kernels.load() or kernels.portable()) for one
    C pass where one takes x (kernels.ops.quantize_u8), or None for torch ops (same formula)."""
    if kernel is not None:
        from .kernels import ops

        got = ops.quantize_u8(x, qmax)
        if got is not None:
            return got
    lo, hi = float(x.min().clamp(max=0)), float(x.max().clamp(min=0))
    scale = (hi - lo) / qmax if hi > lo else 1.0
    zp = int(min(max(round(-lo / scale), 0), qmax))
    return torch.clamp(torch.round(x.float() * (1.0 / scale)) + zp, 0, qmax).to(torch.uint8), scale, zp


def activation_levels() -> int:
    """The largest activation level this CPU's u8 x s8 GEMMs take without saturating: 255 with VNNI, else 127."""
    from .cpu import detect

    return 255 if detect().vnni else 127


class Int8GemmLinear(nn.Module):
    """y = x·Wᵀ + b as one oneDNN int8 GEMM (module doc); any (..., in) fp32/bf16 x -> (..., out) `out_dtype`
    (bf16 in a bf16 stage, fp32 in an fp32 one). `conv_time_major` applies the same weights as a 1-D
    convolution (built by `from_conv`)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], out_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        from . import kernels

        if weight.device.type != "cpu":
            raise OptionError("int8dyn (dynamic int8 activations) runs on the CPU only")
        q, scale = quantize_int8(weight)
        self.packed = onednn_prepack(q)
        if self.packed is None:
            raise OptionError("int8dyn for S2Mel needs oneDNN's int8 GEMM (torch.ops.onednn, x86 CPU builds)")
        self.out_features, self.in_features = q.shape
        self.register_buffer("scale", scale.float().contiguous())
        self.register_buffer("zero_points", torch.zeros(q.shape[0], dtype=torch.long))
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.kernel = kernels.portable()   # the activation quantiser (AVX-512 or AVX2 library)
        self.qmax = activation_levels()
        self.out_dtype = out_dtype
        self.kernel_size = self.dilation = 1

    @classmethod
    def from_conv(cls, conv: nn.Conv1d, out_dtype: torch.dtype = torch.bfloat16) -> "Int8GemmLinear":
        """A stride-1 Conv1d (out, in, k) as the product of its im2col rows: W[o, j·in + c] = w[o, c, j]."""
        w = conv.weight.detach()
        module = cls(w.permute(0, 2, 1).reshape(w.shape[0], -1), conv.bias, out_dtype)
        module.kernel_size, module.dilation = conv.kernel_size[0], conv.dilation[0]
        return module

    def _gemm(self, xq: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
        return torch.ops.onednn.qlinear_pointwise(xq, scale, zp, self.packed, self.scale, self.zero_points,
                                                  self.bias, 1.0, 0, self.out_dtype, "none", [], "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        return self._gemm(*quantize_activations(x2, self.kernel, self.qmax)).reshape(*x.shape[:-1], self.out_features)

    def conv_time_major(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution, no padding, of a time-major x (B, Tp, in) -> (B, Tp - (k-1)·dilation, out):
        x quantised once, then its im2col rows (uint8, k·in wide) through the GEMM."""
        B, Tp, C = x.shape
        T = Tp - (self.kernel_size - 1) * self.dilation
        xq, scale, zp = quantize_activations(x.contiguous(), self.kernel, self.qmax)
        cols = xq.as_strided((B, T, self.kernel_size, C), (Tp * C, C, self.dilation * C, 1))
        return self._gemm(cols.reshape(B * T, self.kernel_size * C), scale, zp).view(B, T, self.out_features)


TRANSFORMER_PRODUCTS = ("attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2",
                        "feed_forward.w3", "skip_in_linear")
# Only the content projection of the products outside the transformer: they are ~1.5 % of a step's work, and
# in int8 they cost most of the error. The input merge's input is the concatenation [x, prompt mel, content,
# style], whose parts have unrelated ranges, so one per-tensor scale loses the small ones (full-size random
# model, 25 steps: mel rel err vs fp32 5.2e-2 in bf16, 7.5e-2 with that product alone in int8); the long
# skip (whose input concatenates the transformer output and x), the residual projection and the final
# linear write the velocity almost directly (tiny model: 3.4e-3 in bf16, 4.8-5.2e-3 with any one of them
# in int8, 3.4-3.6e-3 with any transformer product or the content projection).
DIT_PRODUCTS = ("cond_projection",)


def convert_dit_(estimator: nn.Module, out_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Swap the large products of a loaded DiT for int8 GEMMs (module doc), in place; call it before the
    stage's bf16 cast so the weights are quantised from fp32. `out_dtype` bf16: S2Mel `int8dyn` (a bf16 stage;
    fp32: S2Mel `int8` (an fp32 stage for CPUs without native bf16). The WaveNet convolutions are int8 GEMMs
    of their im2col rows in both (time-major). Returns the estimator."""
    def swap(owner: nn.Module, path: str) -> None:
        parent_name, _, attr = path.rpartition(".")
        parent = owner.get_submodule(parent_name) if parent_name else owner
        linear = getattr(parent, attr, None)
        if isinstance(linear, nn.Linear):
            setattr(parent, attr, Int8GemmLinear(linear.weight, linear.bias, out_dtype))

    for layer in estimator.transformer.layers:
        for path in TRANSFORMER_PRODUCTS:
            swap(layer, path)
    for path in DIT_PRODUCTS:
        swap(estimator, path)
    wavenet = estimator.wavenet
    for layer in [*wavenet.in_layers, *wavenet.res_skip_layers]:
        layer.int8 = Int8GemmLinear.from_conv(layer.conv.conv, out_dtype)
    estimator.precision = "int8dyn" if out_dtype == torch.bfloat16 else "int8"
    return estimator
