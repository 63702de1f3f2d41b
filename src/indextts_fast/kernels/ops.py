"""Typed entry points to the C kernels: tensors in, a tensor (or None where the kernel cannot take them) out.

Callers never touch ctypes or data pointers: they ask here, and fall back to torch when the answer is None.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from . import portable

ROWS = 8   # the row-wise products below serve decode steps (one row per beam); more rows go to a GEMM


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


def gemv_f32(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """x·wᵀ + bias for ONE fp32 row (1, K), K % 16 == 0, and a contiguous fp32 w (N, K) on every core: native.c's
    AVX-512 GEMV (AVX-512 VNNI tiers; oneMKL's one-row sgemv uses one core). None where it does not qualify."""
    from . import load

    lib = load()
    if lib is None or not _rows_ok(x, w.shape[1]) or x.shape[0] != 1 or x.shape[1] % 16 or w.dtype != torch.float32 \
            or not w.is_contiguous() or (bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous())):
        return None
    y = torch.empty(1, w.shape[0])
    if lib.itf_gemv_f32(x.data_ptr(), x.shape[1], w.data_ptr(), None if bias is None else bias.data_ptr(),
                        w.shape[0], y.data_ptr()):
        return None
    return y


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
