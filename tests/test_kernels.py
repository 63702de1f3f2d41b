"""The VNNI int8 GEMV (kernels/native.c) against an exact integer reference of the same quantisation."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from indextts_fast import kernels
from indextts_fast.kernels import ops
from indextts_fast.cpu import detect
from indextts_fast.precision import GEMV_ROWS, DynamicInt8Linear, pack_vnni, quantize_int8

needs_kernel = pytest.mark.skipif(kernels.load() is None,
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
def test_kernel_zero_rows_and_many_row_path_agree():
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(96, 64, generator=g) / 8, torch.randn(96, generator=g)
    m = DynamicInt8Linear(w, b)
    x = torch.randn(GEMV_ROWS + 1, 64, generator=g)
    x[2] = 0.0
    gemm = m(x)                                              # > GEMV_ROWS rows: oneDNN (or fbgemm)
    gemv = torch.cat([m(x[i:i + 1]) for i in range(x.shape[0])])
    assert torch.allclose(gemv[2], b)                        # a zero row gives exactly the bias
    assert float((gemv - gemm).norm() / gemm.norm()) < 2e-2  # two int8 quantisations of the activations
    assert float((gemv - F.linear(x, w, b)).norm() / gemm.norm()) < 2e-2


def test_disabled_by_environment(monkeypatch):
    kernels.load.cache_clear()
    monkeypatch.setenv("INDEXTTS_FAST_KERNELS", "0")
    try:
        assert kernels.load() is None
    finally:
        kernels.load.cache_clear()


@pytest.mark.parametrize("onednn", [True, False])
def test_fallbacks_serve_every_row_count(monkeypatch, onednn):
    from indextts_fast import precision

    monkeypatch.setattr(kernels, "load", lambda: None)      # no compiler / no VNNI: oneDNN, else fbgemm
    if not onednn:
        monkeypatch.setattr(precision, "onednn_prepack", lambda q: None)
    g = torch.Generator().manual_seed(5)
    w, b = torch.randn(96, 64, generator=g) / 8, torch.randn(96, generator=g)
    m = DynamicInt8Linear(w, b)
    # without VNNI: fbgemm with 7-bit activations (oneDNN's and fbgemm's 8-bit paths saturate there)
    with_onednn = onednn and detect().vnni
    assert m.kernel is None and not hasattr(m, "vnni") and (m.onednn is None) == (not with_onednn)
    assert m.reduce_range == (not detect().vnni)
    for rows in (1, 3, GEMV_ROWS + 1):
        x = torch.randn(rows, 64, generator=g)
        assert float((m(x) - F.linear(x, w, b)).norm() / F.linear(x, w, b).norm()) < 3e-2
    assert m.step_bytes() == 96 * 64 + 4 * 96


@needs_kernel
@pytest.mark.parametrize("rows", [1, 3])
def test_fused_layer_norm_gelu_and_residual(rows):
    g = torch.Generator().manual_seed(11 + rows)
    n, k = 136, 96
    m = DynamicInt8Linear(torch.randn(n, k, generator=g) / 8, torch.randn(n, generator=g))
    ln = torch.nn.LayerNorm(k)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.1 * torch.randn(k, generator=g))
        ln.bias.copy_(0.1 * torch.randn(k, generator=g))
    x = 3 + 2 * torch.randn(rows, k, generator=g)
    with torch.inference_mode():
        plain = m.gemv(x)
        # + residual: the same fp32 sum as adding afterwards
        r = torch.randn(rows, n, generator=g)
        assert torch.equal(m.gemv(x, residual=r), plain + r)
        # GELU (tanh form) in the epilogue: our exp polynomial against torch's
        assert float((m.gemv(x, gelu=True) - F.gelu(plain, approximate="tanh")).abs().max()) <= 2e-6 * float(plain.abs().max())
        # LayerNorm before quantising: as torch's LayerNorm, up to a flipped quantisation level
        fused, apart = m.gemv(x, ln=ln), m.gemv(ln(x))
        assert float((fused - apart).norm() / apart.norm()) < 1e-3


def avx2_caps():
    """This CPU seen as an AVX2-only one (what precision.convert_gpt_ decides from: fp32 KV cache, AVX2 kernels)."""
    from indextts_fast.cpu import restrict

    caps = detect()
    return dataclasses.replace(caps, tier="avx2", flags=restrict(caps.flags, "avx2"))


@pytest.mark.parametrize("mode", ["int8dyn", "int8"])
@pytest.mark.parametrize("text,rows", [([5, 77, 310], 3), ([5, 1, 77, 0, 310], 3), ([5, 77], 1)])
def test_whole_decode_step_kernel_matches_the_block_by_block_path(tiny_dir, text, rows, mode):
    """The whole-step kernels (every block in one call: kernels/gpt_step.c for int8dyn's VNNI GEMV and bf16
    cache, avx2.c's itf_gpt_step_w8 for int8's weight-only GEMV and fp32 cache) against the same products
    called block by block from Python: the same arithmetic, so equal up to summation order; with beam
    reorders, with and without a padded prompt (ids 0/1 inside the text are dropped and the prompt
    left-padded: a key mask), 1 and 3 rows."""
    from indextts_fast.decoding import KVCache, decode_step, prefill
    from indextts_fast.models.gpt import load_gpt
    from indextts_fast.precision import convert_gpt_, fused_int8_decode, fused_w8_decode

    if (kernels.load() if mode == "int8dyn" else kernels.portable()) is None:
        pytest.skip(f"no kernels for {mode} on this CPU")
    fused_fn = fused_int8_decode if mode == "int8dyn" else fused_w8_decode
    model = convert_gpt_(load_gpt(tiny_dir), mode, None if mode == "int8dyn" else avx2_caps())
    assert model.fused_decode is fused_fn
    g = torch.Generator().manual_seed(2)
    d = model.cfg.model_dim
    spk, emo = torch.randn(1, 32, d, generator=g), 0.1 * torch.randn(1, d, generator=g)
    calls = []

    def counted(*args):
        out = fused_fn(*args)
        calls.append(out is not None)                # None would mean the block-by-block fallback ran
        return out

    def logits(fused: bool) -> torch.Tensor:
        model.fused_decode = counted if fused else None
        with torch.inference_mode():
            prompt, valid = model.prompt(spk, torch.tensor(text), emo)
            cache = KVCache(model, rows, 5)
            out = [prefill(model, prompt, valid, cache).expand(rows, -1)]
            for step in range(5):
                if rows > 1:
                    cache.reorder(torch.tensor([0, 0, 2])[:rows] if step % 2 else torch.tensor([2, 1, 1])[:rows])
                out.append(decode_step(model, cache, torch.tensor([3, 9, 27])[:rows] + step, position=step + 2))
        return torch.cat(out)

    fused, apart = logits(True), logits(False)
    assert calls == [True] * 5
    # int8: the rows' int16 rounding can flip where the C LayerNorm differs from torch's by an ulp (2^-15 steps)
    assert float((fused - apart).norm() / apart.norm()) < (1e-5 if mode == "int8dyn" else 1e-4)


@needs_kernel
@pytest.mark.parametrize("rows,heads,d,n", [(1, 4, 16, 37), (3, 20, 64, 37), (3, 20, 64, 48), (8, 2, 32, 70),
                                            (12, 2, 64, 75)])
def test_decode_attention_matches_sdpa(rows, heads, d, n):
    """Each row attends its own list of positions (its prompt and ancestry): the same as SDPA with the mask of
    those positions, and a row's result is the same bits alone as among the other rows."""
    g = torch.Generator().manual_seed(rows * 7 + d + n)
    cap = 80
    K = torch.randn(heads, cap, d, generator=g).bfloat16()
    V = torch.randn(heads, cap, d, generator=g).bfloat16()
    qkv = torch.randn(rows, 3 * heads * d, generator=g)
    L = n if rows == 1 else n * 2 // 3
    keys = None if rows == 1 else torch.stack([torch.randperm(n, generator=g)[:L].sort().values
                                               for _ in range(rows)]).int()
    lib = kernels.load()

    def attend(q, ks):
        out = torch.empty(q.shape[0], heads * d)
        assert lib.itf_attend_bf16(q.data_ptr(), q.shape[1], K.data_ptr(), V.data_ptr(), K.stride(0), L,
                                   None if ks is None else ks.data_ptr(), q.shape[0], heads, d, d ** -0.5,
                                   out.data_ptr()) == 0
        return out

    out = attend(qkv, keys)
    mask = None
    if keys is not None:
        mask = torch.full((rows, n), float("-inf")).scatter_(1, keys.long(), 0.0)
    q = qkv[:, :heads * d].view(rows, heads, d).transpose(0, 1)[None]          # (1, H, S, d)
    want = F.scaled_dot_product_attention(q, K[None, :, :n].float(), V[None, :, :n].float(),
                                          attn_mask=mask)[0].transpose(0, 1)
    assert float((out - want.reshape(rows, -1)).abs().max()) < 1e-5 * float(want.abs().max()) + 1e-6
    for r in (0, rows - 1):
        alone = attend(qkv[r:r + 1].contiguous(), None if keys is None else keys[r:r + 1].contiguous())
        assert torch.equal(alone, out[r:r + 1])
    assert lib.itf_attend_bf16(qkv.data_ptr(), qkv.shape[1], K.data_ptr(), V.data_ptr(), K.stride(0), n,
                               None, rows, heads, 12, 1.0, out.data_ptr()) == -2     # head width not / 16


@needs_kernel
@pytest.mark.parametrize("rows,d", [(2, 64), (3, 64), (3, 48), (4, 32), (5, 16), (7, 128)])
@pytest.mark.parametrize("common", [0, 15, 16, 17, 50, 69, 70])
def test_decode_attention_of_beams_sharing_keys_is_each_row_alone(rows, d, common):
    """Beams list the same leading keys (prompt, shared ancestry), then their own: the kernel takes up to three
    rows together over the common keys; every row is still the same bits as attended alone, and SDPA's."""
    heads, L, cap = 3, 70, 300
    g = torch.Generator().manual_seed(rows * 100 + common + d)
    K = torch.randn(heads, cap, d, generator=g).bfloat16()
    V = torch.randn(heads, cap, d, generator=g).bfloat16()
    qkv = torch.randn(rows, 3 * heads * d, generator=g)
    shared = torch.randperm(cap // 2, generator=g)[:common].sort().values
    own = [cap // 2 + torch.randperm(cap // 2, generator=g)[:L - common].sort().values for _ in range(rows)]
    keys = torch.stack([torch.cat([shared, o]) for o in own]).int().contiguous()
    out = ops.attend_bf16(qkv, K, V, L, keys, heads, d)
    for r in range(rows):
        alone = ops.attend_bf16(qkv[r:r + 1].contiguous(), K, V, L, keys[r:r + 1].contiguous(), heads, d)
        assert torch.equal(alone, out[r:r + 1]), r
        q = qkv[r, :heads * d].view(heads, 1, d)
        idx = keys[r].long()
        want = F.scaled_dot_product_attention(q, K[:, idx].float(), V[:, idx].float()).reshape(1, -1)
        assert float((out[r:r + 1] - want).abs().max()) < 1e-5 * float(want.abs().max()) + 1e-6


def _ulps_bf16(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest difference in units of bf16 precision (2⁻⁸ relative) of the reference's magnitude."""
    return float(((got.float() - want.float()).abs() / (want.float().abs() * 2.0 ** -8 + 1e-6)).max())


@needs_kernel
def test_dit_elementwise_kernels_match_float32_then_one_rounding():
    from indextts_fast.models.dit import apply_rope, rope_table

    lib, g = kernels.load(), torch.Generator().manual_seed(4)
    a, b = (torch.randn(2, 37, 96, generator=g) * 4).bfloat16(), torch.randn(2, 37, 96, generator=g).bfloat16()
    out = torch.empty_like(a)
    lib.itf_silu_mul_bf16(a.data_ptr(), b.data_ptr(), out.data_ptr(), a.numel())
    assert _ulps_bf16(out, F.silu(a.float()) * b.float()) <= 1.0

    B, T, H, d = 2, 29, 3, 32
    qkv = torch.randn(B, T, 3 * H, d, generator=g).bfloat16()
    table = rope_table(64, d)[:T]
    qk = torch.empty(B, 2 * H, T, d, dtype=torch.bfloat16)
    lib.itf_rope_bf16(qkv.data_ptr(), qkv.stride(0), qkv.stride(1), qkv.stride(2), B, T, 2 * H, d,
                      table.data_ptr(), qk.data_ptr())
    want = apply_rope(qkv[:, :, :2 * H].transpose(1, 2).float(), table)
    assert _ulps_bf16(qk, want) <= 1.0

    x = torch.randn(2, T, 64, generator=g).bfloat16()
    scale, shift = torch.randn(2, 1, 64, generator=g).bfloat16(), torch.randn(2, 1, 64, generator=g).bfloat16()
    y = torch.empty_like(x)
    lib.itf_adaln_rms_bf16(x.data_ptr(), scale.data_ptr(), shift.data_ptr(), 64, 1e-5, 2, T, 64, y.data_ptr())
    want = shift.float() + scale.float() * F.rms_norm(x.float(), (64,), eps=1e-5)
    assert float((y.float() - want).abs().max()) <= 2.0 ** -8 * float(want.abs().max())


@needs_kernel
def test_wavenet_gate_kernel_including_a_partial_vector():
    lib, g = kernels.load(), torch.Generator().manual_seed(6)
    B, H, T = 2, 40, 37                                           # H % 16 != 0: masked tail
    a = (torch.randn(B, T, 2 * H, generator=g) * 3).bfloat16()   # time-major
    cond = torch.randn(B, 5 * H, generator=g).bfloat16()[:, H:3 * H]   # a strided slice, as WaveNet's
    out = torch.empty(B, T, H, dtype=torch.bfloat16)
    lib.itf_wavenet_gate_bf16(a.data_ptr(), cond.data_ptr(), cond.stride(0), B, H, T, out.data_ptr())
    x = a.float() + cond.float()[:, None]
    assert _ulps_bf16(out, torch.tanh(x[..., :H]) * torch.sigmoid(x[..., H:])) <= 1.0


@needs_kernel
@pytest.mark.parametrize("T,lengths", [(37, None), (37, [37, 20]), (3, None)])   # T 3: too short to reflect
def test_wavenet_time_major_path_matches_the_channel_major_one(T, lengths):
    from indextts_fast.checkpoint import fold_weight_norm
    from indextts_fast.models.dit import WaveNet

    torch.manual_seed(T)
    wn = fold_weight_norm(WaveNet(hidden=32, kernel_size=5, dilation_rate=2, n_layers=3, gin_channels=32))
    wn = wn.to(torch.bfloat16)
    x = torch.randn(2, T, 32).bfloat16()
    g = torch.randn(2, 32, 1).bfloat16()
    valid = None if lengths is None else (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).bfloat16()
    with torch.inference_mode():
        want = wn(x.transpose(1, 2), None if valid is None else valid[:, None], g).transpose(1, 2)
        assert wn.time_major_ok(x) == (T > 8)                    # the last layer (dilation 4) pads 8 per side
        if T > 8:
            got = wn(x, None if valid is None else valid[..., None], g, time_major=True)
            assert got.shape == want.shape
            assert float((got.float() - want.float()).norm() / want.float().norm()) < 2e-2   # bf16 rounding


@needs_kernel
@pytest.mark.parametrize("channels,T,beta,logscale", [(8, 37, True, True), (5, 200, False, False), (3, 1, True, True),
                                                      (4, 2, True, False)])
def test_anti_aliased_snake_kernel_matches_the_torch_formulation(channels, T, beta, logscale):
    from indextts_fast.models.bigvgan import AntiAliasedActivation

    g = torch.Generator().manual_seed(T)
    m = AntiAliasedActivation(channels, beta, logscale)
    with torch.no_grad():
        m.act.alpha.copy_(0.5 * torch.randn(channels, generator=g) + (0 if logscale else 1))
        if m.act.beta is not None:
            m.act.beta.copy_(0.5 * torch.randn(channels, generator=g) + (0 if logscale else 1))
    x = 3 * torch.randn(2, channels, T, generator=g)
    want = m.padded(x)
    m.native = kernels.load()
    got = m.padded(x)
    assert got.shape == want.shape and torch.equal(got[..., T:], torch.zeros_like(got[..., T:]))
    assert float((got - want).abs().max()) <= 1e-6 * float(want.abs().max())   # fp32, other summation order


@needs_kernel
@pytest.mark.parametrize("channels,T", [(16, 37), (24, 300), (5, 3)])   # channel tail; T shorter than a tap span
def test_time_major_snake_kernel_matches_the_channel_row_kernel(channels, T):
    """Same fp32 sums in the same order on a bf16 input: equal up to the final bf16 rounding."""
    from indextts_fast.models.bigvgan import AntiAliasedActivation

    g = torch.Generator().manual_seed(channels + T)
    m = AntiAliasedActivation(channels, True, True)
    with torch.no_grad():
        m.act.alpha.copy_(0.5 * torch.randn(channels, generator=g))
        m.act.beta.copy_(0.5 * torch.randn(channels, generator=g))
    x = (3 * torch.randn(2, channels, T, generator=g)).bfloat16()
    m.native = kernels.load()
    want = m.padded(x.float())[..., :T]                                     # fp32, channel rows
    got = m.time_major(x.transpose(1, 2).contiguous())
    assert got.dtype == torch.bfloat16 and got.shape == (2, T, channels)
    assert torch.equal(got.transpose(1, 2), want.bfloat16())


@needs_kernel
def test_bigvgan_time_major_path_matches_the_channel_major_one(tiny_dir):
    from indextts_fast.config import ModelFolder
    from indextts_fast.models.bigvgan import BigVGAN
    from indextts_fast.precision import autocast, cast_weights_, prepare_vocoder_

    voc = prepare_vocoder_(BigVGAN.from_folder(ModelFolder(tiny_dir)), "bf16")
    cast_weights_(voc, "bf16")
    mel = torch.randn(1, 80, 40, generator=torch.Generator().manual_seed(0)) - 4
    assert voc.time_major_ok(mel)
    with torch.inference_mode(), autocast(torch.device("cpu"), "bf16"):
        got = voc(mel).float()
        voc.time_major_ok = lambda m: False
        want = voc(mel).float()
    assert got.shape == want.shape
    snr = 10 * torch.log10(want.pow(2).sum() / (got - want).pow(2).sum())
    assert snr > 35, f"time-major vs channel-major bf16 vocoder: {snr:.1f} dB"


def test_a_failing_compiler_falls_back_with_a_warning(monkeypatch, tmp_path):
    if not detect().at_least("avx2"):
        pytest.skip("no kernels are built below AVX2")
    monkeypatch.setenv("INDEXTTS_FAST_HOME", str(tmp_path))   # nothing built there yet
    monkeypatch.setenv("CC", "false")                          # a "compiler" that always fails
    monkeypatch.setattr(kernels, "_warned", [])
    kernels.load.cache_clear()
    kernels.portable.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="native kernels unavailable") as caught:
            assert kernels.load() is None and kernels.portable() is None   # the tier's library (AVX-512 or AVX2)
        assert len([w for w in caught if "native kernels" in str(w.message)]) == 1   # one warning, not one per library
        assert not list((tmp_path / "kernels").glob("*.so")) and not list((tmp_path / "kernels").glob(".*tmp"))
    finally:
        kernels.load.cache_clear()
        kernels.portable.cache_clear()


def kernel_path(monkeypatch, path):
    """Force the attention kernel's path (the AVX512-BF16 one runs on AMX CPUs too)."""
    from indextts_fast.kernels.ops import attention_paths

    lib = kernels.load()
    if path not in attention_paths():
        pytest.skip(f"this CPU has no {path} path for the attention kernel (SDPA is used where it has neither)")
    monkeypatch.setattr(lib, "amx", path == "amx")
    return lib


@pytest.mark.parametrize("path", ["amx", "dot"])
@pytest.mark.parametrize("B,H,T,lengths", [(2, 8, 611, None), (2, 3, 45, [45, 17]), (1, 2, 5, [3]),
                                           (1, 1, 32, None), (2, 2, 70, [1, 70])])
def test_attention_kernel_matches_float32_sdpa(monkeypatch, path, B, H, T, lengths):
    from indextts_fast.models.dit import native_attention

    kernel_path(monkeypatch, path)
    g = torch.Generator().manual_seed(B * 100 + T)
    qkv = (torch.randn(B, T, 3 * H, 64, generator=g) * 2).bfloat16()           # the DiT's fused projection
    q = qkv[:, :, :H].transpose(1, 2).contiguous()
    k = qkv[:, :, H:2 * H].transpose(1, 2).contiguous()
    v = qkv[:, :, 2 * H:].transpose(1, 2)                                       # strided, as the DiT passes it
    mask = None if lengths is None else (torch.arange(T)[None] < torch.tensor(lengths)[:, None])[:, None, None]
    got = native_attention(q, k, v, mask)
    assert got.shape == (B, T, H, 64) and got.dtype == torch.bfloat16
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).transpose(1, 2)
    # P is rounded to bf16 before P·v and the output once more: a few bf16 steps at most, ~1e-3 overall
    assert float((got.float() - want).abs().max()) <= 2.0 ** -6 * float(want.abs().max())
    assert float((got.float() - want).norm() / want.norm()) < 3e-3
    assert native_attention(q[..., :32], k[..., :32], v[..., :32], None) is None   # head width 32: SDPA's
    # RoPE applied as the kernel reads q and k: the same values as rotating them first with the RoPE kernel
    from indextts_fast.models.dit import rope_table

    rope = rope_table(T + 5, 64)[:T].contiguous()
    rotated = ops.rope_bf16(qkv, rope, 2 * H, 64)
    first = native_attention(rotated[:, :H], rotated[:, H:], v, mask)
    fused = native_attention(qkv[:, :, :H].transpose(1, 2), qkv[:, :, H:2 * H].transpose(1, 2), v, mask, rope)
    assert torch.equal(fused, first)


@pytest.mark.parametrize("path", ["amx", "dot"])
def test_dit_attention_takes_the_kernel_and_agrees_with_sdpa(monkeypatch, path):
    from indextts_fast.models import dit

    lib = kernel_path(monkeypatch, path)
    torch.manual_seed(3)
    layer = dit.Attention(128, 2).to(torch.bfloat16)                            # head width 64
    x = torch.randn(2, 50, 128).bfloat16()
    rope = dit.rope_table(64, 64)[:50]
    mask = (torch.arange(50)[None] < torch.tensor([50, 31])[:, None])[:, None, None]
    calls = []
    real = dit.native_attention
    monkeypatch.setattr(dit, "native_attention", lambda *a: calls.append(1) or real(*a))
    with torch.inference_mode():
        got = layer(x, rope, mask)
        monkeypatch.setattr(lib, "amx", False)
        monkeypatch.setattr(lib, "bf16_dot", False)
        want = layer(x, rope, mask)   # SDPA
    assert calls == [1]
    assert float((got.float() - want.float()).norm() / want.float().norm()) < 1e-2




@needs_kernel
@pytest.mark.skipif(kernels.load() is None or not kernels.load().amx_int8, reason="needs AMX-INT8 (TDPBUSD)")
@pytest.mark.parametrize("rows", [4, 12, 17, 40])
def test_amx_int8_products_are_the_same_bits_as_vnni(rows):
    """The int8 product of 4+ rows on AMX tiles sums exactly like VPDPBUSD, so a row's result does not depend on
    which of the two the row count picked (batch invariance across the AMX threshold)."""
    g = torch.Generator().manual_seed(rows)
    m = DynamicInt8Linear(torch.randn(200, 128, generator=g), torch.randn(200, generator=g))
    x = torch.randn(rows, 128, generator=g) * 3
    out = {amx: m.gemv(x, amx=bool(amx)) for amx in (0, 1)}
    assert torch.equal(out[0], out[1])
    assert torch.equal(m.gemv(x[:1].contiguous()), out[1][:1])       # one row (VNNI) = that row among many
