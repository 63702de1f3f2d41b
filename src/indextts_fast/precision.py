"""Precision at load time: the modules a plan swaps in, and `apply_plan`, the one place a plan is applied.

What each stage runs in is decided by `plan.make_plan` (modes, `auto`, per-CPU validation: see plan.py).
`apply_plan(plan, gpt=..., s2mel=..., ...)` converts freshly loaded models for it, in place: module swaps
first, then bf16 weight casts. Engine, fidelity, the benches, profile and parity all call it; the models in
models/ know nothing of precision.

How each stage mode is done:
- GPT: the GPT-2 projections (`Conv1D`) and `mel_head` are swapped for modules of the same contract (fp32 in,
  fp32 out). `Fp32Linear` (fp32, exact: decode rows through our row GEMVs where they beat oneMKL on this tier),
  `BF16Linear` (bf16 weights, bf16 GEMM), `Int8Linear` (weight-only int8, per-output-channel scales: on x86
  with AVX2 our kernel, fp32 rows as int16 with exact int32 sums; many rows on native-bf16 CPUs a bf16 GEMM
  of the dequantised weight; elsewhere `torch._weight_int8pack_mm`), `DynamicInt8Linear` (int8 weights and
  activations: 1-GEMV_ROWS rows through our AVX-512 VNNI GEMV, many rows through oneDNN's int8 GEMM; without VNNI
  fbgemm with 7-bit activations, as 8-bit ones saturate there). A whole decode step is ONE kernel call for
  int8dyn (`fused_int8_decode`, kernels/gpt_step.c, bf16 KV cache) and for int8 on an fp32 KV cache
  (`fused_w8_decode`, kernels/avx2.c). Reduced-precision GPTs keep their KV cache in bf16 where our AVX-512
  decode attention reads it (VNNI tiers, GPUs), else in fp32; the logits processors stay fp32.
- s2mel, vocoder, conditioning in bf16: `torch.autocast(device_type, bfloat16)` around the stage, with the
  stage's Linear/Conv weights stored in bf16 once (`cast_weights_`: the same rounding autocast applies per
  call): matmuls, convs and SDPA in bf16, norms/softmax/reductions in fp32; outputs cast back to fp32.
- s2mel int8dyn: the bf16 stage above with the DiT's large products as oneDNN int8 GEMMs (int8gemm.py);
  s2mel int8: the same products with fp32 outputs in an fp32 stage (CPUs without native bf16).
Measured agreement with fp32: `indextts-fast fidelity`; speed: `indextts-fast profile --precision ...`,
`bench gpt|s2mel|vocoder --precision ...`; what runs natively here: `indextts-fast doctor`.
Threads: the engine's `threads` (profile/bench default 2 = the physical cores of such a box).
"""

from __future__ import annotations

import contextlib
import ctypes
import warnings
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .cpu import CpuCaps, detect
from .errors import OptionError
from .int8gemm import onednn_prepack, quantize_activations, quantize_int8
from .kernels import ops
from .plan import STAGE_CHOICES, STAGES, PrecisionPlan  # noqa: F401  (STAGES re-exported)

AMX_ROWS = 5     # int8 products of this many rows or more on AMX tiles (fewer: VPDPBUSD is as fast or faster,
#                  `python -m indextts_fast.kernels`; kernels/gpt_step.c has the same threshold)
GEMV_ROWS = 64  # the row-wise decode kernels serve up to this many rows (the beams of every request in a batched
#                decode step: a row's result must not depend on how many rows share the call); more rows: a GEMM


BF16_STAGE = ("bf16", "int8dyn")   # stage modes that run under bf16 autocast (an S2Mel int8dyn: int8 products inside)


def autocast(device: Union[str, torch.device], mode: str):
    """The context a bf16 stage runs in (autocast to bfloat16); a no-op context for fp32 stages (fp32, and
    S2Mel's int8: int8 products with fp32 outputs)."""
    if mode in ("fp32", "int8"):
        return contextlib.nullcontext()
    if mode not in ("bf16", "int8dyn"):   # an int8dyn S2Mel is a bf16 stage with int8 products inside
        raise OptionError(f"stage precision {mode!r} has no autocast form (use fp32, bf16 or an S2Mel int8dyn)")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


AUTOCAST_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d)


def cast_weights_(module: nn.Module, mode: str) -> nn.Module:
    """Store the weights and biases of `module`'s Linear/Conv layers in bf16 ahead of time, for a stage run
    under bf16 autocast: autocast would round them to bf16 on every call (the same rounding, so results are
    bit-identical) — on a DiT step that re-cast costs more than the bf16 matrix products it feeds. Norms,
    embeddings and buffers keep their dtype. fp32 changes nothing. In place; returns the module."""
    if mode not in BF16_STAGE:
        return module
    for m in module.modules():
        if isinstance(m, AUTOCAST_LAYERS):
            for name in ("weight", "bias"):
                p = getattr(m, name, None)
                if isinstance(p, torch.Tensor) and p.is_floating_point():
                    setattr(m, name, nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False))
    return module


def prepare_s2mel_(cfm: nn.Module, mode: str) -> nn.Module:
    """An S2Mel flow matching (`S2Mel.cfm`) for `mode`: int8dyn swaps its DiT's large products for int8 GEMMs
    with bf16 outputs (a bf16 stage), int8 for int8 GEMMs with fp32 outputs (an fp32 stage: CPUs without
    native bf16); both quantise from the fp32 weights (int8gemm.convert_dit_, before `cast_weights_`). fp32
    and bf16 change nothing here. In place, once; returns the module."""
    if mode not in STAGE_CHOICES["s2mel"]:
        raise OptionError(f"S2Mel precision {mode!r}: choose one of {', '.join(STAGE_CHOICES['s2mel'])}")
    if mode in ("int8", "int8dyn") and getattr(cfm.estimator, "precision", None) != mode:
        from .int8gemm import convert_dit_

        convert_dit_(cfm.estimator, torch.bfloat16 if mode == "int8dyn" else torch.float32)
    return cfm


def prepare_vocoder_(vocoder: nn.Module, mode: str) -> nn.Module:
    """Make a BigVGAN safe to run under bf16 autocast: its anti-aliased activations write into
    preallocated fp32 buffers with `out=` products (which autocast does not cover), so they run in fp32
    with autocast off (the activation is elementwise + small resampling products; the convolutions around
    it stay bf16), as one C pass per channel row when the native kernels are available (the torch
    formulation is thousands of small ops per call). Done per instance; fp32 changes nothing."""
    if mode == "fp32":
        return vocoder
    from . import kernels

    native = kernels.load() if next(vocoder.parameters()).device.type == "cpu" else None
    for m in vocoder.modules():
        if hasattr(m, "padded") and not getattr(m, "_fp32_padded", False):
            m.padded = _fp32_method(m.padded)
            m._fp32_padded = True
            m.native = native   # the activation as one C pass per channel (fp32 arithmetic), when available
    return vocoder


def _fp32_method(method):
    def run(x: torch.Tensor, *args, **kwargs):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return method(x.float(), *args, **kwargs)
    return run


# ---- linear layers of the GPT ------------------------------------------------------------------------

def _2d(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


class BF16Linear(nn.Module):
    """y = x·Wᵀ + b with W held in bf16 (out, in); x is cast to bf16, y returned in fp32 (bias in fp32)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)
        return y if self.bias is None else y + self.bias


class Int8Linear(nn.Module):
    """Weight-only int8 (per-output-channel scales), result fp32.

    On x86 CPUs with AVX2 (our kernels): every row count through kernels/avx2.c (`ops.gemv_w8`: the packed
    int8 weight read once per 4 outputs for all rows, each fp32 row taken as int16 with its own scale, exact
    int32 sums, no saturation), except many rows (prefill, latent pass) on CPUs with native bf16 (AMX,
    AVX512-BF16), which dequantise to bf16 for one bf16 GEMM. Without our kernels: 1-8 rows through
    `torch._weight_int8pack_mm` with bf16 activations (CPU, MPS), more rows dequantised to bf16.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], caps: Optional[CpuCaps] = None):
        super().__init__()
        q, scale = quantize_int8(weight)
        self.out_features = q.shape[0]
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.register_buffer("scale_f32", scale.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        packed = ops.pack_w8(q) if weight.device.type == "cpu" else None
        self.register_buffer("packed", packed)
        caps = caps or detect()
        self.kernel_rows = GEMV_ROWS if caps.native_bf16 else None   # rows the kernel takes (None: any)
        if packed is not None and self.kernel_rows is None:
            self.qweight = None   # every row count takes the packed copy: one int8 copy of the weights, not two

    @property
    def batch_rows(self) -> int:
        """Rows one call may take with every row's result independent of the others (decoding.batch_rows)."""
        return GEMV_ROWS if self.packed is not None else 0

    def dequantized(self) -> torch.Tensor:
        return self.qweight.to(torch.bfloat16) * self.scale[:, None]

    def step_bytes(self) -> int:
        """Weight bytes one decode step reads through this layer (the packed copy where the kernel runs)."""
        parts = (self.packed, self.scale_f32) if self.packed is not None else (self.qweight, self.scale)
        return sum(t.numel() * t.element_size() for t in (*parts, self.bias) if t is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = _2d(x)
        if self.packed is not None and (self.kernel_rows is None or x2.shape[0] <= self.kernel_rows):
            y = ops.gemv_w8(x2.float().contiguous(), self.packed, self.out_features, self.scale_f32, self.bias,
                            max_rows=x2.shape[0])
            return y.to(x.dtype).reshape(*x.shape[:-1], -1)
        x2 = x2.to(torch.bfloat16)
        if x2.shape[0] <= GEMV_ROWS and x2.device.type in ("cpu", "mps"):
            y = torch._weight_int8pack_mm(x2.contiguous(), self.qweight, self.scale)
        else:
            y = F.linear(x2, self.dequantized())
        y = y.to(x.dtype).reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


class Fp32Linear(nn.Module):
    """The exact fp32 product y = x·Wᵀ + b with W held (out, in) contiguous, swapped in for the GPT's
    projections by the fp32 plan on the CPU. 1-GEMV_ROWS rows (decode steps: the beams of one request, or of
    every request in a batched step) go through `ops.gemm_f32_rows` on every x86 CPU from AVX2: every weight
    read once for all rows on both cores (oneMKL's one-row sgemv uses one core, its AVX2 path drops to ~60 %
    of the read bandwidth at 2-3 rows), and each row summed in one fixed order whatever the other rows, so a
    request's logits do not depend on its batch. Everything else: F.linear. Same float products, summed in
    another order (the GPT goldens and e2e parity pass with it)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], caps: Optional[CpuCaps] = None):
        super().__init__()
        self.register_buffer("weight", weight.detach().float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        caps = caps or detect()
        on_cpu = weight.device.type == "cpu"
        self.rows = GEMV_ROWS if on_cpu and caps.at_least("avx2") and caps.tier != "neon" else 0

    @property
    def batch_rows(self) -> int:
        """Rows one call may take with every row's result independent of the others: the row kernel's."""
        return self.rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = _2d(x)
        if 0 < x2.shape[0] <= self.rows and x.dtype == torch.float32:
            x2 = x2.contiguous()
            y = ops.gemm_f32_rows(x2, self.weight, self.bias)
            if y is not None:
                return y.reshape(*x.shape[:-1], -1)
        return F.linear(x, self.weight, self.bias)


def pack_vnni(q: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
    """int8 (N, K) weights -> the layout of kernels/native.c: groups of 64 outputs, per group K/4 steps of
    4 blocks x 16 outputs x 4 consecutive k (one 64-byte VNNI operand per block); per-output Σw, scale and
    bias padded to whole groups."""
    n, k = q.shape
    groups, k4 = -(-n // 64), -(-k // 4)
    padded = torch.zeros(groups * 64, k4 * 4, dtype=torch.int8)
    padded[:n, :k] = q
    out = {"vnni": padded.view(groups, 4, 16, k4, 4).permute(0, 3, 1, 2, 4).contiguous(),
           "wsum": torch.zeros(groups * 64, dtype=torch.int32), "wscale": torch.zeros(groups * 64),
           "wbias": torch.zeros(groups * 64)}
    out["wsum"][:n] = q.int().sum(dim=1)
    out["wscale"][:n] = scale
    if bias is not None:
        out["wbias"][:n] = bias.detach().float()
    return out


def fbgemm_prepack(q: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor]):
    """fbgemm's packed int8 weight (per-channel scales, fp32 bias) for `quantized::linear_dynamic`."""
    with warnings.catch_warnings():  # "quantize_per_channel is deprecated" (torch.ao migration notice)
        warnings.simplefilter("ignore")
        qw = torch.quantize_per_channel(q.float() * scale[:, None], scale.double(),
                                        torch.zeros(q.shape[0], dtype=torch.long), 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(qw, bias)


class DynamicInt8Linear(nn.Module):
    """int8 weights (per output channel) x int8 activations quantised on the fly, fp32 result with the fp32
    bias added inside the kernel (CPU only).

    1-GEMV_ROWS rows (a decode step: a row per beam of each request in it): the VNNI GEMV of `kernels/native.c` when it is available
    (activations per row, asymmetric uint8; every weight byte read once for all rows). More rows (prefill,
    latent pass), or no kernel: oneDNN's int8 GEMM (`onednn::qlinear_pointwise`, AMX where the CPU has it;
    activations per tensor, asymmetric uint8) — 1.3-3x fbgemm's — else fbgemm's `quantized::linear_dynamic`.
    Two copies of the weights are kept (int8: ~0.5 GB each for the full-size GPT). One kernel call per
    forward."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        super().__init__()
        from . import kernels

        if weight.device.type != "cpu":
            raise OptionError("int8dyn (dynamic int8 activations) runs on the CPU only; use int8 on other devices")
        q, scale = quantize_int8(weight)
        self.out_features, self.in_features = q.shape
        self.bias_f32 = None if bias is None else bias.detach().float().contiguous()
        # Without VNNI, oneDNN's and fbgemm's u8 x s8 products go through vpmaddubsw, whose int16 pair sums
        # saturate (relative error 0.02-0.07 measured): fbgemm with 7-bit activations (reduce_range) instead.
        self.reduce_range = not detect().vnni
        self.onednn = None if self.reduce_range else onednn_prepack(q)
        self.packed = None
        if self.onednn is not None:
            self.register_buffer("onednn_scale", scale.float().contiguous())
            self.register_buffer("onednn_zp", torch.zeros(q.shape[0], dtype=torch.long))
        else:
            self.packed = fbgemm_prepack(q, scale, self.bias_f32)
        self.kernel = kernels.load()
        if self.kernel is not None:
            for name, t in pack_vnni(q, scale, bias).items():
                self.register_buffer(name, t)

    @property
    def batch_rows(self) -> int:
        """Rows one call may take with every row's result independent of the others (the VNNI/AMX GEMV:
        activations quantised per row)."""
        return GEMV_ROWS if self.kernel is not None else 0

    def gemm(self, x: torch.Tensor) -> torch.Tensor:
        """Any number of contiguous fp32 rows: oneDNN (activations per tensor), else fbgemm."""
        if self.onednn is None:
            return torch.ops.quantized.linear_dynamic(x, self.packed, self.reduce_range)
        xq, scale, zp = quantize_activations(x, self.kernel)
        return torch.ops.onednn.qlinear_pointwise(xq, scale, zp, self.onednn, self.onednn_scale, self.onednn_zp,
                                                  self.bias_f32, 1.0, 0, torch.float32, "none", [], "")

    def gemv_ok(self, x: torch.Tensor) -> bool:
        """Whether x takes the VNNI GEMV: 1-GEMV_ROWS contiguous fp32 rows on the CPU, kernel available."""
        return (self.kernel is not None and x.dim() == 2 and 0 < x.shape[0] <= GEMV_ROWS
                and x.dtype == torch.float32 and x.is_contiguous() and x.device.type == "cpu")

    def gemv(self, x: torch.Tensor, ln: Optional[nn.LayerNorm] = None, residual: Optional[torch.Tensor] = None,
             gelu: bool = False, amx: Optional[bool] = None) -> torch.Tensor:
        """The VNNI GEMV (x must pass `gemv_ok`) with what may be fused around it: a LayerNorm of x before
        the product, then after bias either GPT-2's tanh GELU or `+ residual` (rows, out_features). From
        AMX_ROWS rows on AMX tiles where the CPU has them (the same bits); amx=True/False forces one or the
        other (benchmarks, tests)."""
        y = torch.empty(x.shape[0], self.out_features)
        if residual is not None:
            residual = residual.contiguous()
            if residual.shape != y.shape or residual.dtype != torch.float32:
                raise OptionError(f"residual must be fp32 {tuple(y.shape)}, got {residual.dtype} {tuple(residual.shape)}")
        if self.kernel.itf_gemv_s8(x.data_ptr(), x.shape[0], self.in_features,
                                   ln.weight.data_ptr() if ln is not None else None,
                                   ln.bias.data_ptr() if ln is not None else None, ln.eps if ln is not None else 0.0,
                                   self.vnni.data_ptr(), self.wsum.data_ptr(), self.wscale.data_ptr(),
                                   self.wbias.data_ptr(), self.out_features,
                                   residual.data_ptr() if residual is not None else None, int(gelu), y.data_ptr(),
                                   int(self.kernel.amx_int8 and (x.shape[0] >= AMX_ROWS if amx is None else amx))):
            raise MemoryError("int8 GEMV kernel: no scratch memory")
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gemv_ok(x):
            return self.gemv(x)
        if x.dim() == 2 and x.dtype == torch.float32 and x.is_contiguous():
            return self.gemm(x)
        return self.forward(_2d(x).float().contiguous()).to(x.dtype).reshape(*x.shape[:-1], -1)

    def step_bytes(self) -> int:
        """Weight bytes one decode step reads through this layer."""
        if self.kernel is not None:
            return sum(t.numel() * t.element_size() for name, t in self.named_buffers() if not name.startswith("onednn"))
        return self.out_features * self.in_features + 4 * self.out_features


class _BlockWeights(ctypes.Structure):
    """kernels/gpt_step.c's itf_block_t: a block's LayerNorms and its four int8 projections (c_attn,
    attn.c_proj, mlp.c_fc, mlp.c_proj) as packed by pack_vnni."""
    _fields_ = [(name, ctypes.c_void_p) for name in ("ln1_w", "ln1_b", "ln2_w", "ln2_b")] + \
               [(name, ctypes.c_void_p * 4) for name in ("w", "wsum", "ws", "bias")]


def _fill_block_table(model: nn.Module, entry_type, qualifies, fill):
    """One ctypes struct per GPT-2 block (LayerNorms + the four projections c_attn, attn.c_proj, mlp.c_fc,
    mlp.c_proj, pointing at the model's own tensors; built once), or None when a projection does not
    `qualify` or the LayerNorm eps differ. `fill(entry, i, module)` sets projection i's pointers."""
    blocks = model.gpt.h
    linears = [(b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj) for b in blocks]
    if not all(qualifies(m) for four in linears for m in four) or \
            len({b.ln_1.eps for b in blocks} | {b.ln_2.eps for b in blocks}) != 1:
        return None
    table = (entry_type * len(blocks))()
    for entry, block, four in zip(table, blocks, linears):
        entry.ln1_w, entry.ln1_b = block.ln_1.weight.data_ptr(), block.ln_1.bias.data_ptr()
        entry.ln2_w, entry.ln2_b = block.ln_2.weight.data_ptr(), block.ln_2.bias.data_ptr()
        for i, m in enumerate(four):
            fill(entry, i, m)
    return table


def _block_table(model: nn.Module):
    """The itf_block_t array of an int8dyn GPT whose projections all have the VNNI kernel, or None."""
    def fill(entry, i, m):
        entry.w[i], entry.wsum[i] = m.vnni.data_ptr(), m.wsum.data_ptr()
        entry.ws[i], entry.bias[i] = m.wscale.data_ptr(), m.wbias.data_ptr()

    return _fill_block_table(model, _BlockWeights, lambda m: isinstance(m, DynamicInt8Linear) and m.kernel is not None,
                             fill)


class _Group(ctypes.Structure):
    """kernels.h's itf_group_t: one request's rows in a batched decode step, with its own KV cache."""
    _fields_ = [("rows", ctypes.c_int), ("lo", ctypes.c_int), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p),
                ("layer_stride", ctypes.c_long), ("head_stride", ctypes.c_long), ("keys", ctypes.c_void_p),
                ("n_keys", ctypes.c_int)]


def _groups(caches) -> ctypes.Array:
    """The itf_group_t array of a step's caches (decoding.KVCache, begin_step done): rows, where the new
    keys go, the cache buffers and the positions each row attends."""
    table = (_Group * len(caches))()
    for g, c in zip(table, caches):
        g.rows, g.lo = c.rows, c.prefix + c.length * c.rows
        g.k, g.v, g.layer_stride, g.head_stride = c.k.data_ptr(), c.v.data_ptr(), c.k.stride(0), c.k.stride(1)
        g.keys, g.n_keys = (None if c.keys is None else c.keys.data_ptr()), c.n_keys
    return table


def _fused_step(fn, model: nn.Module, x: torch.Tensor, caches, table, *extra) -> Optional[torch.Tensor]:
    blocks, c = model.gpt.h, caches[0]
    x = x.contiguous().clone()
    rc = fn(x.data_ptr(), x.shape[0], x.shape[1], len(blocks), ctypes.addressof(table), blocks[0].ln_1.eps,
            len(caches), _groups(caches), c.heads, c.head_dim, c.head_dim ** -0.5, *extra)
    if rc == -2:
        return None
    if rc:
        raise MemoryError(f"int8 GPT decode step kernel failed ({rc})")
    return model.gpt.ln_f(x)


def fused_int8_decode(model: nn.Module, x: torch.Tensor, caches) -> Optional[torch.Tensor]:
    """Every GPT-2 block of an int8dyn decode step in ONE kernel call (kernels/gpt_step.c: the VNNI GEMVs
    with their fused LayerNorm / GELU / residual around the bf16-cache attention, keys and values written to
    the cache, all in one parallel region) for the rows of one or more requests (x: their rows in the order of
    `caches`, one decoding.KVCache each) -> the backbone's output ln_f(x), (rows, D); None when x or a cache
    do not qualify (the blocks then run one by one). Same arithmetic as the per-projection kernel calls; a
    row's result does not depend on the other requests in the call."""
    from .kernels import load

    table = model.__dict__.get("_int8_block_table")
    lib = load()
    if table is None or lib is None or not all(c.kernel for c in caches) or \
            not (x.dim() == 2 and x.dtype == torch.float32 and x.device.type == "cpu"):
        return None
    return _fused_step(lib.itf_gpt_step, model, x, caches, table, int(lib.amx_int8))


class _BlockW8(ctypes.Structure):
    """kernels/avx2.c's itf_block_w8_t: a block's LayerNorms and its four Int8Linear projections (packed)."""
    _fields_ = [(name, ctypes.c_void_p) for name in ("ln1_w", "ln1_b", "ln2_w", "ln2_b")] + \
               [(name, ctypes.c_void_p * 4) for name in ("w", "ws", "bias")]


def _w8_block_table(model: nn.Module):
    """The itf_block_w8_t array of an int8 (weight-only) GPT whose projections all run on our kernel, or None."""
    def fill(entry, i, m):
        entry.w[i], entry.ws[i], entry.bias[i] = m.packed.data_ptr(), m.scale_f32.data_ptr(), m.bias.data_ptr()

    return _fill_block_table(model, _BlockW8, lambda m: isinstance(m, Int8Linear) and m.packed is not None
                             and m.bias is not None, fill)


def fused_w8_decode(model: nn.Module, x: torch.Tensor, caches) -> Optional[torch.Tensor]:
    """Every GPT-2 block of an int8 (weight-only) decode step in ONE kernel call (kernels/avx2.c
    itf_gpt_step_w8: the products of `Int8Linear` around an fp32-cache attention, one parallel region) for the
    rows of one or more requests (as `fused_int8_decode`) -> ln_f(x), (rows, D); None when x or a cache do not
    qualify (the blocks then run one by one)."""
    from .kernels import portable

    table = model.__dict__.get("_w8_block_table")
    lib = portable()
    if table is None or lib is None or not (x.dim() == 2 and x.dtype == torch.float32) or any(
            c.dtype != torch.float32 or c.k.device.type != "cpu" for c in caches):
        return None
    return _fused_step(lib.itf_gpt_step_w8, model, x, caches, table)


LINEARS = {"fp32": Fp32Linear, "bf16": BF16Linear, "int8": Int8Linear, "int8dyn": DynamicInt8Linear}


def _out_in_weight(module: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    from .models.gpt import Conv1D

    if isinstance(module, Conv1D):
        return module.weight.detach().t(), module.bias   # HF Conv1D stores (in, out)
    return module.weight.detach(), module.bias


def convert_gpt_(model: nn.Module, mode: str, caps: Optional[CpuCaps] = None) -> nn.Module:
    """Swap the GPT-2 projections and mel_head of a loaded UnifiedVoice for `mode` linears, in place, once.

    fp32 swaps in `Fp32Linear` (same values, our row kernels for decode steps where they pay). The conditioning
    encoders, embeddings and norms stay fp32. Reduced-precision GPTs keep their KV cache in bf16 where our
    AVX-512 decode attention reads it (VNNI tiers, GPUs), else in fp32.
    """
    from .models.gpt import Conv1D

    if mode not in STAGE_CHOICES["gpt"]:
        raise OptionError(f"GPT precision {mode!r}: choose one of {', '.join(STAGE_CHOICES['gpt'])}")
    if getattr(model, "precision", None) is not None:
        raise OptionError(f"this GPT was already converted to {model.precision}; load a fresh one")
    caps = caps or detect()
    cls = LINEARS[mode]
    targets = [(name, m) for name, m in model.gpt.named_modules() if isinstance(m, Conv1D)]
    for name, m in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.gpt.get_submodule(parent_name) if parent_name else model.gpt
        setattr(parent, attr, _linear(cls, m, caps))
    model.mel_head = _linear(cls, model.mel_head, caps)
    model.precision = mode
    if mode != "fp32" and (caps.vnni or model.final_norm.weight.device.type != "cpu"):
        model.kv_dtype = torch.bfloat16  # decoding.KVCache keeps keys/values in bf16 (native.c's attention reads it)
    if mode == "int8dyn":   # decoding.decode_step tries it first (decode rows only)
        model._int8_block_table = _block_table(model)
        model.fused_decode = fused_int8_decode if model._int8_block_table is not None else None
    if mode == "int8" and getattr(model, "kv_dtype", torch.float32) == torch.float32:
        model._w8_block_table = _w8_block_table(model)
        model.fused_decode = fused_w8_decode if model._w8_block_table is not None else None
    return model


def _linear(cls, module: nn.Module, caps: CpuCaps) -> nn.Module:
    weight, bias = _out_in_weight(module)
    return cls(weight, bias, caps) if cls in (Fp32Linear, Int8Linear) else cls(weight, bias)


def gpt_weight_bytes(model: nn.Module) -> int:
    """Bytes a decode step reads: backbone, final_norm and mel_head (parameters, buffers, packed int8)."""
    total = 0
    for part in (model.gpt, model.final_norm, model.mel_head):
        for m in part.modules():
            if isinstance(m, (DynamicInt8Linear, Int8Linear)):
                total += m.step_bytes()
            else:
                total += sum(t.numel() * t.element_size()
                             for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)))
    return total


# ---- the one place a plan is applied ----------------------------------------------------------------------

def apply_plan(plan: PrecisionPlan, *, gpt: Optional[nn.Module] = None, w2v: Optional[nn.Module] = None,
               codec: Optional[nn.Module] = None, campplus: Optional[nn.Module] = None,
               s2mel: Optional[nn.Module] = None, vocoder: Optional[nn.Module] = None,
               caps: Optional[CpuCaps] = None) -> None:
    """Convert freshly loaded models for `plan`, in place, in the one order that is right: module swaps first
    (the GPT's linears; S2Mel's int8 DiT products, quantised from the fp32 weights), then bf16 weight casts of
    the stages that run under bf16 autocast. Engine, fidelity, the benches, profile and parity all call this;
    pass whichever models you loaded. Modules two stages share (the semantic codec, S2Mel's length regulator)
    are cast only when neither stage is fp32, as the engine runs them under both."""
    caps = caps or detect()
    cond = plan.conditioning
    shared = "bf16" if cond in BF16_STAGE and plan.s2mel in BF16_STAGE else "fp32"
    if gpt is not None:
        convert_gpt_(gpt, plan.gpt, caps)
        for part in (gpt.conditioning_encoder, gpt.perceiver_encoder, gpt.emo_conditioning_encoder,
                     gpt.emo_perceiver_encoder, gpt.emovec_layer, gpt.emo_layer):
            cast_weights_(part, cond)
    for module in (w2v, campplus):
        if module is not None:
            cast_weights_(module, cond)
    if codec is not None:
        cast_weights_(codec, shared)
    if s2mel is not None:
        prepare_s2mel_(s2mel.cfm, plan.s2mel)
        cast_weights_(s2mel.cfm, plan.s2mel)
        cast_weights_(s2mel.gpt_layer, plan.s2mel)
        cast_weights_(s2mel.length_regulator, shared)
    if vocoder is not None:
        prepare_vocoder_(vocoder, plan.vocoder)
        cast_weights_(vocoder, plan.vocoder)
