"""int8 products (int8gemm.py): activation quantisation (C kernel = torch formula), the int8 GEMM linear and
its im2col convolution against fp32, the DiT converter, and an Engine in the int8max mode (tiny model)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from indextts_fast import kernels
from indextts_fast.config import ModelFolder
from indextts_fast.errors import OptionError
from indextts_fast.int8gemm import (DIT_PRODUCTS, TRANSFORMER_PRODUCTS, Int8GemmLinear, onednn_prepack,
                                    quantize_activations, quantize_int8)
from indextts_fast.models.s2mel import S2Mel
from indextts_fast.pipeline import Engine
from indextts_fast.plan import make_plan
from indextts_fast.precision import prepare_s2mel_

pytestmark = pytest.mark.skipif(onednn_prepack(quantize_int8(torch.ones(4, 4))[0]) is None,
                                reason="this torch build has no oneDNN int8 GEMM (int8dyn S2Mel is unavailable)")


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("qmax", [255, 127])   # 127: CPUs without VNNI (AVX2 kernel on every x86 tier)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shift", [0.0, 3.0, -3.0])   # zero inside the range, all positive, all negative
def test_activation_quantisation_kernel_equals_the_torch_formula(dtype, shift, qmax):
    lib = kernels.portable()
    if lib is None or (dtype == torch.bfloat16 and (kernels.load() is None or qmax != 255)):
        pytest.skip("no kernel for this input here: the torch formula is the only path")
    x = (torch.randn(37, 129, generator=torch.Generator().manual_seed(3)) + shift).to(dtype)
    q_c, s_c, z_c = quantize_activations(x, lib, qmax)
    q_t, s_t, z_t = quantize_activations(x, None, qmax)
    assert (s_c, z_c) == pytest.approx((s_t, z_t)) and torch.equal(q_c, q_t)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    assert s_t == pytest.approx((hi - lo) / qmax) and 0 <= z_t <= qmax and int(q_t.max()) <= qmax
    assert float(((q_t.float() - z_t) * s_t - x.float()).abs().max()) <= s_t / 2 + 1e-6


def test_all_zero_activations_quantise_exactly():
    q, scale, zp = quantize_activations(torch.zeros(3, 16), kernels.load())
    assert scale == 1.0 and zp == 0 and not q.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_matches_fp32(dtype):
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(96, 64, generator=g) / 8, torch.randn(96, generator=g)
    x = torch.randn(2, 50, 64, generator=g)
    got = Int8GemmLinear(w, b)(x.to(dtype))
    assert got.dtype == torch.bfloat16 and got.shape == (2, 50, 96)
    assert rel(got, F.linear(x, w, b)) < 2e-2


@pytest.mark.parametrize("kernel_size,dilation", [(5, 1), (3, 2), (1, 1)])
def test_im2col_convolution_matches_conv1d(kernel_size, dilation):
    g = torch.Generator().manual_seed(kernel_size)
    conv = torch.nn.Conv1d(24, 40, kernel_size, dilation=dilation)
    x = torch.randn(2, 24, 70, generator=g)   # channel-major; the int8 path takes it time-major
    got = Int8GemmLinear.from_conv(conv).conv_time_major(x.transpose(1, 2).to(torch.bfloat16))
    want = conv(x).detach().transpose(1, 2)
    assert got.shape == want.shape == (2, 70 - (kernel_size - 1) * dilation, 40)
    assert rel(got, want) < 2e-2


def test_convert_dit_swaps_the_large_products_only(tiny_dir):
    s2mel = S2Mel.from_folder(ModelFolder(tiny_dir))
    est = prepare_s2mel_(s2mel.cfm, "int8dyn").estimator
    assert est.precision == "int8dyn"
    for layer in est.transformer.layers:
        for path in TRANSFORMER_PRODUCTS:
            assert isinstance(layer.get_submodule(path), Int8GemmLinear), path
        assert isinstance(layer.attention_norm.project_layer, torch.nn.Linear)   # AdaLN GEMVs stay bf16
    assert all(isinstance(est.get_submodule(p), Int8GemmLinear) for p in DIT_PRODUCTS)
    for path in ("cond_x_merge_linear", "skip_linear", "final_layer.linear"):   # kept bf16: fidelity (DIT_PRODUCTS)
        assert isinstance(est.get_submodule(path), torch.nn.Linear), path
    wavenet = est.wavenet
    assert all(isinstance(m.int8, Int8GemmLinear) for m in [*wavenet.in_layers, *wavenet.res_skip_layers])
    assert wavenet.cond_layer.int8 is None
    packed = est.transformer.layers[0].attention.wqkv.packed
    prepare_s2mel_(s2mel.cfm, "int8dyn")   # converting twice changes nothing
    assert est.transformer.layers[0].attention.wqkv.packed is packed
    with pytest.raises(OptionError, match="S2Mel precision"):
        prepare_s2mel_(s2mel.cfm, "int4")
    # S2Mel int8: the same products with fp32 outputs, for an fp32 stage (CPUs without native bf16)
    fp32_stage = prepare_s2mel_(S2Mel.from_folder(ModelFolder(tiny_dir)).cfm, "int8").estimator
    assert fp32_stage.precision == "int8"
    wqkv = fp32_stage.transformer.layers[0].attention.wqkv
    assert isinstance(wqkv, Int8GemmLinear) and wqkv.out_dtype == torch.float32
    assert wqkv(torch.randn(3, wqkv.in_features)).dtype == torch.float32


@pytest.mark.parametrize("qmax", [255, 127])
def test_activation_quantiser_levels(qmax):
    """qmax 127 (CPUs without VNNI): every level <= 127, so u8 x s8 pair sums stay inside int16."""
    from indextts_fast import kernels

    x = torch.randn(37, 70, generator=torch.Generator().manual_seed(qmax)) * 3
    xq, scale, zp = quantize_activations(x, None, qmax)
    assert int(xq.max()) <= qmax and 0 <= zp <= qmax
    assert float(((xq.float() - zp) * scale - x).abs().max()) <= scale / 2 + 1e-6
    if kernels.portable() is not None:   # the C pass gives the same levels
        cq, cs, cz = quantize_activations(x, kernels.portable(), qmax)
        assert (cs, cz) == pytest.approx((scale, zp)) and int((cq.int() - xq.int()).abs().max()) <= 1


def test_engine_int8max_mode_speaks(tiny_dir):
    assert make_plan("int8max", force=True).as_dict() == {"gpt": "int8dyn", "s2mel": "int8dyn", "vocoder": "bf16",
                                            "conditioning": "bf16"}
    manifest = json.loads((tiny_dir / "goldens" / "e2e.json").read_text())
    kwargs = dict(voice=tiny_dir / manifest["prompt"]["file"], preset="extreme", seed=1, forced_codes=12,
                  max_mel_tokens=12)
    want = Engine(tiny_dir, precision="int8dyn", force_precision=True).synthesize("The quick brown fox.", **kwargs)
    engine = Engine(tiny_dir, precision="int8max", force_precision=True)
    assert isinstance(engine.s2mel.cfm.estimator.transformer.layers[0].attention.wqkv, Int8GemmLinear)
    got = engine.synthesize("The quick brown fox.", **kwargs)
    assert got.audio.dtype == np.float32 and np.isfinite(got.audio).all() and len(got.audio) == len(want.audio)
    assert 0.9 < float(np.corrcoef(got.audio, want.audio)[0, 1])   # the same speech, up to int8 noise
