"""Typed entry points to the C kernels: tensors in, a tensor (or None where the kernel cannot take them) out.

Callers never touch ctypes or data pointers: they ask here, and fall back to torch when the answer is None.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from . import portable

ROWS = 64   # the row-wise products below serve decode steps (a row per beam of every request in the step)


def _rows_ok(x: torch.Tensor, k: int) -> bool:
    return (x.dim() == 2 and 0 < x.shape[0] and x.shape[1] == k and x.dtype == torch.float32
            and x.device.type == "cpu" and x.is_contiguous())


def pack_w8(q: torch.Tensor) -> Optional[torch.Tensor]:
    """int8 weights (N, K) in gemv_w8's layout: blocks of 4 outputs, each (K/16, 4, 16), so that a block is one
    sequential stream (rows past N are zero); None where K is not a multiple of 16 or there are no kernels."""
    n, k = q.shape
    if k % 16 or portable() is None:
        return None
    padded = torch.zeros(-(-n // 4) * 4, k, dtype=torch.int8)
    padded[:n] = q
    return padded.view(-1, 4, k // 16, 16).permute(0, 2, 1, 3).contiguous()


def gemv_w8(x: torch.Tensor, packed: torch.Tensor, n: int, scale: torch.Tensor, bias: Optional[torch.Tensor],
            max_rows: int = ROWS) -> Optional[torch.Tensor]:
    """scale ⊙ (x·qᵀ) + bias for fp32 rows x (M, K), the int8 q (n, K) as `pack_w8` packed it, fp32 scale and
    bias (n): avx2.c's weight-only int8 product. Each row of x is taken as int16 with its own scale (relative
    error <= 2^-16 of its largest value), the sums are exact in int32: no int8 activations, no saturation.
    None when x has more than `max_rows` rows or is not contiguous fp32 on the CPU."""
    lib = portable()
    k = packed.shape[1] * 16
    if lib is None or not _rows_ok(x, k) or x.shape[0] > max_rows:
        return None
    y = torch.empty(x.shape[0], n)
    if lib.itf_gemv_w8_f32(x.data_ptr(), x.shape[0], k, packed.data_ptr(), scale.data_ptr(),
                           None if bias is None else bias.data_ptr(), n, y.data_ptr()):
        raise MemoryError("gemv_w8: no scratch memory")
    return y


def gemm_f32_rows(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor],
                  max_rows: int = ROWS) -> Optional[torch.Tensor]:
    """x·wᵀ + bias for 1..max_rows fp32 rows x (M, K) and a contiguous fp32 w (N, K) on every core (avx2.c):
    every weight read once for all rows. None when anything does not qualify (the caller uses F.linear)."""
    lib = portable()
    if lib is None or not _rows_ok(x, w.shape[1]) or x.shape[0] > max_rows or w.dtype != torch.float32 \
            or not w.is_contiguous() or (bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous())):
        return None
    y = torch.empty(x.shape[0], w.shape[0])
    if lib.itf_gemm_f32_rows(x.data_ptr(), x.shape[0], x.shape[1], w.data_ptr(), None,
                             None if bias is None else bias.data_ptr(), w.shape[0], y.data_ptr()):
        raise ValueError(f"gemm_f32_rows: bad shapes x {tuple(x.shape)}, w {tuple(w.shape)}")
    return y


def exponential_pick(probs: torch.Tensor, k: int,
                     generator: torch.Generator) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """torch.multinomial's draw without replacement (sampling.c) for contiguous fp32 probs (rows, n) on the CPU:
    (ratio, picked): ratio = probs / q where probs > 0 (else 0), q the Exp(1) draws torch would make with
    `generator`, which is advanced as torch advances it; picked (rows, k) each row's k largest ratios' columns,
    descending, or None where torch's ranking of `ratio` must decide (ties, fewer than k positive entries).
    None (the generator untouched) where the kernel does not take the input, probs is not a distribution
    torch.multinomial accepts, or a draw is one torch would turn into NaN."""
    lib = portable()
    if lib is None or probs.dtype != torch.float32 or probs.device.type != "cpu" or not probs.is_contiguous() \
            or probs.dim() != 2 or generator.device.type != "cpu" or not 0 < k <= min(64, probs.shape[1]):
        return None
    state = generator.get_state()
    ratio = torch.empty_like(probs)
    picked = torch.empty(probs.shape[0], k, dtype=torch.long)
    rc = lib.itf_exponential_ratio(state.data_ptr(), probs.data_ptr(), probs.shape[0], probs.shape[1], k,
                                   ratio.data_ptr(), picked.data_ptr())
    if rc == 1:
        return None
    generator.set_state(state)
    return ratio, (picked if rc == 0 else None)


def top_scores(x: torch.Tensor, k: int) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Each row's k largest of contiguous fp32 x (rows, n) on the CPU, descending: (values, indices) as
    torch.topk gives them, or None where their order is not unique (equal scores among a row's k, NaN) or the
    kernel does not take x (sampling.c)."""
    lib = portable()
    if lib is None or x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous() or x.dim() != 2 \
            or not 0 < k <= x.shape[1]:
        return None
    vals, idx = torch.empty(x.shape[0], k), torch.empty(x.shape[0], k, dtype=torch.long)
    return None if lib.itf_top_scores(x.data_ptr(), x.shape[0], x.shape[1], k, vals.data_ptr(), idx.data_ptr()) \
        else (vals, idx)


def quantize_u8(x: torch.Tensor, qmax: int = 255) -> Optional[tuple[torch.Tensor, float, int]]:
    """Contiguous fp32 (or, with the AVX-512 library and qmax 255, bf16) x on the CPU -> (unsigned x in
    [0, qmax], scale, zero point) per tensor in one C pass: x ≈ (q - zp)·scale, 0 exact (the formula of
    int8gemm.quantize_activations). None where no kernel takes x."""
    from . import load

    if x.device.type != "cpu" or not x.is_contiguous() or x.dtype not in (torch.float32, torch.bfloat16):
        return None
    full = load()
    xq, s, z = torch.empty(x.shape, dtype=torch.uint8), ctypes.c_float(), ctypes.c_int()
    if full is not None and qmax == 255:
        fn = full.itf_quantize_u8 if x.dtype == torch.float32 else full.itf_quantize_u8_bf16
        fn(x.data_ptr(), x.numel(), xq.data_ptr(), ctypes.byref(s), ctypes.byref(z))
        return xq, s.value, z.value
    lib = portable()
    if lib is None or x.dtype != torch.float32:
        return None
    lib.itf_quantize_u8_avx2(x.data_ptr(), x.numel(), xq.data_ptr(), ctypes.byref(s), ctypes.byref(z), qmax)
    return xq, s.value, z.value


# ---- bf16 stages (AVX-512 library): the DiT's elementwise chains and attention, BigVGAN's activation,
#      the decode attention over a bf16 KV cache ---------------------------------------------------------

def _full():
    from . import load

    return load()


def bf16_ready(x: torch.Tensor, whole_vectors: bool = True) -> bool:
    """Whether the bf16 kernels take x: contiguous bf16 on the CPU (last dim a multiple of 16 when
    `whole_vectors`), with the AVX-512 library loaded."""
    return (x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.is_contiguous()
            and not (whole_vectors and x.shape[-1] % 16) and _full() is not None)


def attention_paths() -> tuple[str, ...]:
    """The DiT attention kernel's paths on this CPU: "amx" (AMX tiles), "dot" (AVX512-BF16 dot products)."""
    lib = _full()
    return () if lib is None else tuple(p for p, ok in (("amx", lib.amx), ("dot", lib.bf16_dot)) if ok)


def adaln_rms_bf16(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> Optional[torch.Tensor]:
    """scale ⊙ RMSNorm(x) + shift for bf16 x (B, T, D) and per-sample bf16 scale/shift (B, 1, D), one pass."""
    if not bf16_ready(x):
        return None
    B, T, D = x.shape
    scale, shift = scale.to(x.dtype).contiguous(), shift.to(x.dtype).contiguous()
    out = torch.empty_like(x)
    _full().itf_adaln_rms_bf16(x.data_ptr(), scale.data_ptr(), shift.data_ptr(), D, eps, B, T, D, out.data_ptr())
    return out


def rope_bf16(qkv: torch.Tensor, rope: torch.Tensor, heads: int, head_dim: int) -> Optional[torch.Tensor]:
    """The first `heads` heads of a bf16 (B, T, ≥heads, d) qkv rotated by the (T, d/2, 2) fp32 table -> (B, heads,
    T, d), read straight from the strided qkv."""
    if not bf16_ready(qkv):
        return None
    B, T = qkv.shape[:2]
    out = torch.empty(B, heads, T, head_dim, dtype=qkv.dtype)
    _full().itf_rope_bf16(qkv.data_ptr(), qkv.stride(0), qkv.stride(1), qkv.stride(2), B, T, heads, head_dim,
                          rope.contiguous().data_ptr(), out.data_ptr())
    return out


def attention_bf16(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: Optional[torch.Tensor],
                   rope: Optional[torch.Tensor] = None, path: Optional[str] = None) -> Optional[torch.Tensor]:
    """softmax(q·kᵀ/√d, keys < lengths)·v (kernels/attention.c) for bf16 (B, H, T, 64) views with d contiguous
    -> (B, T, H, d); `rope`: the (T, d/2, 2) table q and k are rotated by as they are read; `path`: "amx" or
    "dot" (default: the best this CPU has). None where the kernel does not take it (SDPA then)."""
    paths = attention_paths()
    path = path or (paths[0] if paths else None)
    B, H, T, d = q.shape
    if path not in paths or d != 64 or q.dtype != torch.bfloat16:
        return None
    out = torch.empty(B, T, H, d, dtype=q.dtype)
    lengths = None if lengths is None else lengths.to(torch.int32).contiguous()
    rc = _full().itf_attention_bf16(q.data_ptr(), *q.stride()[:3], k.data_ptr(), *k.stride()[:3], v.data_ptr(),
                                    *v.stride()[:3], None if lengths is None else lengths.data_ptr(), B, H, T, d,
                                    d ** -0.5, out.data_ptr(), out.stride(0), out.stride(2), out.stride(1),
                                    None if rope is None else rope.contiguous().data_ptr(), int(path == "amx"))
    return None if rc else out


def silu_mul_bf16_(gate: torch.Tensor, up: torch.Tensor) -> bool:
    """gate ← silu(gate)·up in place for contiguous bf16 tensors of one shape; False where not taken."""
    if not bf16_ready(gate) or not up.is_contiguous() or up.dtype != gate.dtype or up.shape != gate.shape:
        return False
    _full().itf_silu_mul_bf16(gate.data_ptr(), up.data_ptr(), gate.data_ptr(), gate.numel())
    return True


def wavenet_gate_bf16(a: torch.Tensor, g: torch.Tensor, hidden: int) -> Optional[torch.Tensor]:
    """tanh(a[..., :H] + g[:, :H])·sigmoid(a[..., H:] + g[:, H:]) for a time-major bf16 a (B, T, 2H) and g
    (B, 2H) -> (B, T, H), fp32 inside, rounded once."""
    if not bf16_ready(a, whole_vectors=False):
        return None
    g = g.to(a.dtype)
    out = a.new_empty(a.shape[0], a.shape[1], hidden)
    _full().itf_wavenet_gate_bf16(a.data_ptr(), g.data_ptr(), g.stride(0), a.shape[0], hidden, a.shape[1],
                                  out.data_ptr())
    return out


def aa_snake(x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
             width: int) -> Optional[torch.Tensor]:
    """BigVGAN's anti-aliased Snake per channel row of fp32 x (rows, T) -> (rows, width), fp32 arithmetic; the
    per-row alpha and 1/beta, 2·the up-sampling filter, the down-sampling filter."""
    lib = _full()
    if lib is None or x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    x = x.contiguous()
    out = x.new_empty(x.shape[0], width)
    if lib.itf_aa_snake(x.data_ptr(), x.shape[0], x.shape[1], alpha.data_ptr(), inv_beta.data_ptr(), up.data_ptr(),
                        down.data_ptr(), width, out.data_ptr()):
        raise MemoryError("anti-aliased activation kernel: no scratch memory")
    return out


def aa_snake_tm_bf16(x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor, up: torch.Tensor,
                     down: torch.Tensor) -> Optional[torch.Tensor]:
    """The same on a time-major bf16 x (B, T, C), 16 channels per vector, rounded once -> (B, T, C)."""
    if not bf16_ready(x, whole_vectors=False):
        return None
    B, T, C = x.shape
    out = torch.empty_like(x)
    if _full().itf_aa_snake_tm_bf16(x.data_ptr(), B, T, C, alpha.data_ptr(), inv_beta.data_ptr(), up.data_ptr(),
                                    down.data_ptr(), out.data_ptr()):
        raise MemoryError("anti-aliased activation kernel: no scratch memory")
    return out


def attend_bf16(qkv: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_keys: int, keys: Optional[torch.Tensor],
                heads: int, head_dim: int) -> Optional[torch.Tensor]:
    """One decode step's attention (kernels/decode_attention.c): the S query rows of fp32 qkv (S, ≥D) over one
    layer's bf16 cache k, v (H, cap, d), row r attending the positions keys[r] ((S, n_keys) int32), or 0 .. n_keys-1 when
    keys is None -> (S, H·d) fp32. None where the kernel does not take it."""
    lib = _full()
    s = qkv.shape[0]
    if lib is None or not qkv.is_contiguous() or qkv.dtype != torch.float32 or k.dtype != torch.bfloat16 \
            or head_dim % 16 or head_dim > 256 or (keys is not None and (keys.dtype != torch.int32 or
                                                                        keys.shape != (s, n_keys))):
        return None
    out = torch.empty(s, heads * head_dim)
    if lib.itf_attend_bf16(qkv.data_ptr(), qkv.shape[1], k.data_ptr(), v.data_ptr(), k.stride(0), n_keys,
                           None if keys is None else keys.data_ptr(), s, heads, head_dim, head_dim ** -0.5,
                           out.data_ptr()):
        raise MemoryError("decode attention kernel: no scratch memory")
    return out
