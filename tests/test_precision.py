"""Reduced-precision building blocks: mode resolution, the bf16/int8 GPT linears against fp32, the GPT
converter, and an Engine running every mode on the tiny model (fp32 stays the exact default)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from indextts_fast.commands import parse_precision
from indextts_fast.errors import OptionError
from indextts_fast.models.gpt import Conv1D, load_gpt
from indextts_fast.pipeline import Engine
from indextts_fast.plan import MODES, STAGES, make_plan
from indextts_fast.precision import (BF16Linear, DynamicInt8Linear, Fp32Linear, Int8Linear, GEMV_ROWS, convert_gpt_,
                                     gpt_weight_bytes, quantize_int8)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_precision_modes_and_mappings():
    assert make_plan(None).as_dict() == dict.fromkeys(STAGES, "fp32")
    assert make_plan("int8", force=True).as_dict() == {"gpt": "int8", "s2mel": "bf16", "vocoder": "bf16",
                                                       "conditioning": "bf16"}
    assert make_plan({"gpt": "int8"}).as_dict() == {**dict.fromkeys(STAGES, "fp32"), "gpt": "int8"}
    assert set(MODES) >= {"fp32", "bf16", "int8"}
    for bad in ("fp16", {"dit": "bf16"}, {"s2mel": "int4"}, {"vocoder": "int8"}, 8):
        with pytest.raises(OptionError):
            make_plan(bad, force=True)


def test_parse_precision_cli_forms():
    assert parse_precision("bf16") == "bf16"
    assert parse_precision("gpt=int8+s2mel=bf16") == {"gpt": "int8", "s2mel": "bf16"}


def test_int8_quantisation_is_symmetric_per_channel():
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert torch.equal(q.abs().amax(1), torch.full((6,), 127, dtype=torch.int8))
    assert float((q.float() * scale[:, None] - w).abs().max()) <= float(scale.max()) / 2 + 1e-6


@pytest.mark.parametrize("cls,tol", [(BF16Linear, 1e-2), (Int8Linear, 2e-2), (DynamicInt8Linear, 3e-2)])
@pytest.mark.parametrize("rows", [1, 3, GEMV_ROWS + 9])
def test_linears_match_fp32(cls, tol, rows):
    g = torch.Generator().manual_seed(rows)
    w, b = torch.randn(96, 64, generator=g) / 8, torch.randn(96, generator=g)
    x = torch.randn(1, rows, 64, generator=g)
    want = F.linear(x, w, b)
    got = cls(w, b)(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert rel(got, want) < tol


def test_int8_gemv_and_gemm_paths_agree():
    g = torch.Generator().manual_seed(1)
    m = Int8Linear(torch.randn(64, 128, generator=g), None)
    x = torch.randn(GEMV_ROWS + 1, 128, generator=g)
    gemm = m(x)                                      # > GEMV_ROWS rows: dequantised bf16 GEMM
    gemv = torch.cat([m(x[i:i + 1]) for i in range(x.shape[0])])   # one row at a time: int8 kernel
    assert rel(gemv, gemm) < 1e-2


@pytest.mark.parametrize("mode,ratio", [("fp32", 1.0), ("bf16", 0.5), ("int8", 0.25), ("int8dyn", 0.25)])
def test_convert_gpt_swaps_every_projection(tiny_dir, mode, ratio):
    model = load_gpt(tiny_dir)
    fp32_bytes = gpt_weight_bytes(model)
    convert_gpt_(model, mode)
    assert not any(isinstance(m, Conv1D) for m in model.gpt.modules())
    assert not isinstance(model.mel_head, torch.nn.Linear)
    # weights shrink to about `ratio` (biases, norms and int8 scales stay small)
    assert gpt_weight_bytes(model) < fp32_bytes * (ratio + 0.1)


def test_fp32_conversion_keeps_every_value(tiny_dir):
    """fp32 swaps in Fp32Linear: the same weights, the same F.linear beyond the decode kernels' rows."""
    model, plain = load_gpt(tiny_dir), load_gpt(tiny_dir)
    convert_gpt_(model, "fp32")
    assert isinstance(model.mel_head, Fp32Linear) and isinstance(model.gpt.h[0].attn.c_attn, Fp32Linear)
    assert torch.equal(model.gpt.h[0].mlp.c_fc.weight, plain.gpt.h[0].mlp.c_fc.weight.t())
    x = torch.randn(GEMV_ROWS + 3, model.cfg.model_dim, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(model.gpt.h[0].mlp.c_fc(x), plain.gpt.h[0].mlp.c_fc(x))        # many rows: F.linear
        few = model.gpt.h[0].mlp.c_fc(x[:3])                                               # rows kernel or F.linear
        assert rel(few, plain.gpt.h[0].mlp.c_fc(x[:3])) < 1e-6
    with pytest.raises(OptionError, match="already converted"):
        convert_gpt_(model, "int8")


def test_engine_rejects_a_bad_precision_before_loading(tmp_path):
    with pytest.raises(OptionError):
        Engine(tmp_path, precision="fp8")   # tmp_path is no model folder: the option is checked first


@pytest.fixture(scope="module")
def prompt(tiny_dir):
    manifest = json.loads((tiny_dir / "goldens" / "e2e.json").read_text())
    return tiny_dir / manifest["prompt"]["file"]


def test_engine_int8_mode_speaks_like_fp32(tiny_dir, prompt):
    kwargs = dict(voice=prompt, preset="extreme", seed=1, forced_codes=12, max_mel_tokens=12)
    text = "The quick brown fox."
    ref = Engine(tiny_dir)
    assert ref.precision == dict.fromkeys(STAGES, "fp32")
    want = ref.synthesize(text, **kwargs)
    engine = Engine(tiny_dir, precision="int8", force_precision=True)   # GPT int8, the other stages bf16
    assert isinstance(engine.gpt.mel_head, Int8Linear)
    # bf16-extracted conditioning is cached apart from the exact fp32 entries of a shared store
    assert engine._cache_fingerprint != ref._cache_fingerprint and ref._cache_fingerprint == ref.fingerprint
    got = engine.synthesize(text, **kwargs)
    assert got.audio.dtype == np.float32 and np.isfinite(got.audio).all()
    assert len(got.audio) == len(want.audio)          # same forced codes -> same length


def test_bf16_conditioning_subsampling_is_as_close_as_autocast(tiny_dir):
    """cast_weights_ routes the conformer's conv2d2 subsampling through its frequency-major bf16 path."""
    from indextts_fast.precision import cast_weights_

    model = load_gpt(tiny_dir)
    x = torch.randn(1, 150, model.conditioning_input_dim, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = model.speaker_latent(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_only = model.speaker_latent(x).float()
    cast_weights_(model.conditioning_encoder, "bf16")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        cast = model.speaker_latent(x).float()
    assert rel(cast, ref) <= max(1.5 * rel(autocast_only, ref), 1e-3) and rel(cast, ref) < 2e-2
