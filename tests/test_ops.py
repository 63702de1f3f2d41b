"""kernels/ops.py: the typed kernel entry points, on whatever tier this machine (or INDEXTTS_FAST_CPU_TIER) is.

The AVX2 kernels run on every x86 tier from AVX2 up (they are in both libraries); the AVX-512 one-row fp32
GEMV only where the CPU has AVX-512 VNNI."""

import pytest
import torch
import torch.nn.functional as F

from indextts_fast import kernels
from indextts_fast.int8gemm import quantize_int8
from indextts_fast.kernels import ops
from indextts_fast.precision import GEMV_ROWS, Fp32Linear, Int8Linear

needs_avx2 = pytest.mark.skipif(kernels.portable() is None, reason="no AVX2 kernels here (CPU below AVX2, or no C compiler)")


def exact_w8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias):
    """The int8 weight-only product as the kernel defines it, in float64: each row as int16 (max |x| -> 32767,
    rounded to nearest even), exact integer dot products, then the row's and the output's scales and bias."""
    xs = x.abs().amax(dim=1, keepdim=True).double() / 32767
    xs[xs == 0] = 1.0
    xq = torch.round(x.double() / xs.float().double()).clamp(-32767, 32767)
    y = (xq @ q.double().t()) * xs.float().double() * scale.double()
    return y if bias is None else y + bias.double()


@needs_avx2
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, GEMV_ROWS, 17])
@pytest.mark.parametrize("n,k", [(64, 64), (70, 128), (5, 1280), (9, 5120)])   # partial blocks; K > one flush
def test_w8_product_is_the_exact_integer_product(rows, n, k):
    g = torch.Generator().manual_seed(rows * 1000 + n + k)
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    x = torch.randn(rows, k, generator=g)
    q, scale = quantize_int8(w)
    packed = ops.pack_w8(q)
    got = ops.gemv_w8(x, packed, n, scale, b, max_rows=rows)
    assert got.shape == (rows, n) and got.dtype == torch.float32
    want = exact_w8(x, q, scale, b)
    # int32 sums are exact; what remains is fp32 rounding of the partial sums' conversion and the scaling
    assert float((got.double() - want).abs().max()) <= 1e-5 * float(want.abs().max())
    # and the int16 rows cost nothing next to the int8 weights: as F.linear on the dequantised weights
    deq = F.linear(x.double(), q.double() * scale.double()[:, None], b.double())
    assert float((got.double() - deq).norm() / deq.norm()) < 1e-4
    assert ops.gemv_w8(x, packed, n, scale, b, max_rows=rows - 1) is None    # more rows than allowed: caller's GEMM


@needs_avx2
def test_w8_cannot_saturate_or_overflow():
    """The worst case of vpmaddubsw-style kernels: every weight ±127 with the sign of a full-scale input over a
    long row. Here the int16 x int8 pair sums are exact and the int32 lanes are flushed before they can wrap."""
    k, n = 5120 * 4, 8
    x = torch.ones(1, k)
    x[0, ::2] = -1.0
    q = torch.full((n, k), 127, dtype=torch.int8)
    q[:, ::2] = -127
    scale = torch.full((n,), 1.0 / 127)
    got = ops.gemv_w8(x, ops.pack_w8(q), n, scale, None)
    # exact integer sums; only the two scales' fp32 rounding remains (a wrapped int32 lane would be off by 2^32)
    assert torch.allclose(got, torch.full((1, n), float(k)), rtol=1e-6, atol=0)


@needs_avx2
def test_w8_packing_needs_whole_groups_of_16_inputs():
    assert ops.pack_w8(torch.zeros(4, 40, dtype=torch.int8)) is None
    packed = ops.pack_w8(torch.arange(5 * 32, dtype=torch.int8).view(5, 32))
    assert packed.shape == (2, 2, 4, 16) and packed[1, 0, 1:].abs().sum() == 0   # outputs past 5: zeros
    assert torch.equal(packed[0, 1, 2], torch.arange(2 * 32 + 16, 3 * 32, dtype=torch.int8))


@needs_avx2
@pytest.mark.parametrize("rows", [1, 3, GEMV_ROWS])
@pytest.mark.parametrize("n,k", [(64, 64), (70, 128), (5, 1280), (1283, 40)])
def test_f32_rows_product_is_as_accurate_as_f_linear(rows, n, k):
    g = torch.Generator().manual_seed(rows + n + k)
    w, b, x = torch.randn(n, k, generator=g), torch.randn(n, generator=g), torch.randn(rows, k, generator=g)
    exact = F.linear(x.double(), w.double(), b.double())
    got = ops.gemm_f32_rows(x, w, b)
    assert got.shape == (rows, n) and got.dtype == torch.float32
    tol = 4 * float((F.linear(x, w, b).double() - exact).abs().max()) + 1e-6   # F.linear's own rounding
    assert float((got.double() - exact).abs().max()) <= tol
    assert torch.allclose(ops.gemm_f32_rows(x, w, None) + b, got, rtol=1e-5, atol=1e-5)   # bias optional
    assert ops.gemm_f32_rows(x, w.t().contiguous().t(), b) is None                       # (in, out) layout: no
    assert ops.gemm_f32_rows(x.repeat(GEMV_ROWS + 1, 1), w, b) is None                   # too many rows


@needs_avx2
@pytest.mark.parametrize("n,k", [(70, 128), (1283, 40), (64, 5120)])
def test_row_kernels_give_each_row_the_same_bits_whatever_the_other_rows(n, k):
    """Batch invariance of the decode products: row i of an R-row call is bit-identical to that row alone, for
    every R up to GEMV_ROWS (a request's logits must not depend on the requests batched with it)."""
    g = torch.Generator().manual_seed(n + k)
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    x = torch.randn(GEMV_ROWS, k, generator=g) * torch.logspace(-2, 2, GEMV_ROWS)[:, None]
    q, scale = quantize_int8(w)
    packed = ops.pack_w8(q) if k % 16 == 0 else None
    alone_f32 = torch.cat([ops.gemm_f32_rows(x[i:i + 1], w, b) for i in range(GEMV_ROWS)])
    alone_w8 = torch.cat([ops.gemv_w8(x[i:i + 1], packed, n, scale, b) for i in range(GEMV_ROWS)]) if packed is not None else None
    for rows in (2, 3, 5, 12, GEMV_ROWS):
        assert torch.equal(ops.gemm_f32_rows(x[:rows], w, b), alone_f32[:rows])
        if packed is not None:
            assert torch.equal(ops.gemv_w8(x[:rows], packed, n, scale, b, max_rows=rows), alone_w8[:rows])


def test_linear_modules_take_the_kernels_where_this_tier_has_them():
    """Fp32Linear and Int8Linear give F.linear's values (within their arithmetic) at every row count, through
    whichever path this machine has (kernels, or torch where there are none)."""
    g = torch.Generator().manual_seed(9)
    w, b = torch.randn(72, 256, generator=g) / 16, torch.randn(72, generator=g)
    fp32, int8 = Fp32Linear(w, b), Int8Linear(w, b)
    for rows in (1, 3, GEMV_ROWS, GEMV_ROWS + 5):
        x = torch.randn(rows, 256, generator=g)
        want = F.linear(x.double(), w.double(), b.double())
        assert float((fp32(x).double() - want).abs().max()) < 1e-5
        assert float((int8(x).double() - want).norm() / want.norm()) < 2e-2
    if kernels.portable() is not None:
        assert int8.packed is not None and fp32.rows >= 1


def test_a_cpu_without_x86_kernels_falls_back_with_one_warning(monkeypatch):
    """aarch64 (or any non-x86 CPU): no library is built, every op answers None, one warning in all."""
    import dataclasses
    import warnings

    from indextts_fast.cpu import detect

    arm = dataclasses.replace(detect(), arch="aarch64", tier="neon", native_tier="neon", flags=frozenset({"asimd"}))
    monkeypatch.setattr(kernels, "detect", lambda: arm)
    monkeypatch.setattr(kernels, "_warned", [])
    kernels.load.cache_clear()
    kernels.portable.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert kernels.load() is None and kernels.portable() is None and kernels.portable() is None
            x = torch.randn(2, 32)
            assert ops.gemm_f32_rows(x, torch.randn(8, 32), None) is None and ops.quantize_u8(x) is None
            assert ops.pack_w8(torch.zeros(8, 32, dtype=torch.int8)) is None
            assert Int8Linear(torch.randn(8, 32), None)(x).shape == (2, 8)   # torch's kernels instead
        assert [str(w.message) for w in caught if "kernels" in str(w.message)] == \
            ["native kernels are x86-64 only (aarch64): using torch's kernels"]
    finally:
        kernels.load.cache_clear()
        kernels.portable.cache_clear()
