"""The VNNI int8 GEMV (kernels/gemv_s8.c) against an exact integer reference of the same quantisation."""

import pytest
import torch
import torch.nn.functional as F

from indextts_fast import kernels
from indextts_fast.precision import GEMV_ROWS, DynamicInt8Linear, pack_vnni, quantize_int8

needs_kernel = pytest.mark.skipif(kernels.gemv_s8() is None,
                                  reason="no AVX-512 VNNI CPU or no C compiler: the fbgemm path is used instead")


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """What the kernel computes, in float64: per-row asymmetric uint8 activations (0 exact) x per-channel
    symmetric int8 weights."""
    q, scale = quantize_int8(w)
    lo, hi = x.amin(dim=1).clamp(max=0), x.amax(dim=1).clamp(min=0)
    sx = torch.where(hi > lo, (hi - lo) / 255, torch.ones_like(hi))
    zp = torch.round(-lo * (1.0 / sx)).clamp(0, 255)
    xu = (torch.round(x * (1.0 / sx)[:, None]) + zp[:, None]).clamp(0, 255)   # the kernel multiplies by 1/s
    return ((xu - zp[:, None]).double() @ q.double().t()) * sx[:, None].double() * scale[None].double() + b.double()


def test_pack_layout_puts_four_k_of_sixteen_outputs_together():
    q = torch.arange(70 * 9, dtype=torch.int32).remainder(251).sub(125).to(torch.int8).view(70, 9)
    p = pack_vnni(q, torch.ones(70), None)
    packed = p["vnni"]                                   # (groups, K/4, 4 blocks, 16, 4)
    assert packed.shape == (2, 3, 4, 16, 4)
    assert torch.equal(packed[1, 2, 0, 5, :1], q[64 + 5, 8:9])           # n = 69, k = 8 (k 9..11 padded)
    assert torch.equal(packed[1, 2, 0, 5, 1:], torch.zeros(3, dtype=torch.int8))
    assert torch.equal(packed[0, 1, 2, 3], q[2 * 16 + 3, 4:8])
    assert int(p["wsum"][69]) == int(q[69].int().sum()) and int(p["wsum"][70]) == 0


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("n,k", [(64, 128), (70, 130), (200, 37)])   # whole / partial groups, k % 4 != 0
def test_kernel_matches_the_integer_reference(rows, n, k):
    g = torch.Generator().manual_seed(rows * 1000 + n + k)
    w, b = torch.randn(n, k, generator=g) / 8, torch.randn(n, generator=g)
    x = torch.randn(rows, k, generator=g)
    x[0, :3] = 0.0
    if rows > 1:
        x[1] = F.gelu(x[1], approximate="tanh")          # a skewed row: the zero point is not mid-range
    got = DynamicInt8Linear(w, b)(x)
    want = reference(x, w, b)
    # exact integer sums; only the fp32 epilogue (scale products, bias add) rounds
    assert got.shape == (rows, n) and got.dtype == torch.float32
    assert float((got.double() - want).abs().max()) <= 1e-5 * float(want.abs().max())


@needs_kernel
def test_kernel_zero_rows_and_fbgemm_path_agree():
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(96, 64, generator=g) / 8, torch.randn(96, generator=g)
    m = DynamicInt8Linear(w, b)
    x = torch.randn(GEMV_ROWS + 1, 64, generator=g)
    x[2] = 0.0
    gemm = m(x)                                              # > GEMV_ROWS rows: fbgemm
    gemv = torch.cat([m(x[i:i + 1]) for i in range(x.shape[0])])
    assert torch.allclose(gemv[2], b)                        # a zero row gives exactly the bias
    assert float((gemv - gemm).norm() / gemm.norm()) < 2e-2  # two int8 quantisations of the activations
    assert float((gemv - F.linear(x, w, b)).norm() / gemm.norm()) < 2e-2


def test_disabled_by_environment(monkeypatch):
    kernels.gemv_s8.cache_clear()
    monkeypatch.setenv("INDEXTTS_FAST_KERNELS", "0")
    try:
        assert kernels.gemv_s8() is None
    finally:
        kernels.gemv_s8.cache_clear()


def test_fbgemm_fallback_serves_every_row_count(monkeypatch):
    monkeypatch.setattr(kernels, "gemv_s8", lambda: None)      # no compiler / no VNNI
    g = torch.Generator().manual_seed(5)
    w, b = torch.randn(96, 64, generator=g) / 8, torch.randn(96, generator=g)
    m = DynamicInt8Linear(w, b)
    assert m.kernel is None and not hasattr(m, "vnni")
    for rows in (1, 3, GEMV_ROWS + 1):
        x = torch.randn(rows, 64, generator=g)
        assert float((m(x) - F.linear(x, w, b)).norm() / F.linear(x, w, b).norm()) < 3e-2
    assert m.step_bytes() == 96 * 64 + 4 * 96
