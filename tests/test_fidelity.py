"""`indextts-fast fidelity` on the tiny model: the bf16 and int8 modes stay within the documented limits
of fp32 (fidelity.THRESHOLDS), fp32 compares nothing, and the measures themselves are right."""

import json
import math

import pytest
import torch

from indextts_fast.cli import main
from indextts_fast.fidelity import THRESHOLDS, cosine, fidelity, rel_err, snr_db

# force: these check each mode's arithmetic, also on CPUs that can only emulate it (the plan refuses it there)
STAGE_OF = {"gpt_logits_rel_err": "gpt", "s2mel_mel_rel_err": "s2mel", "vocoder_snr_db": "vocoder"}
SMALL = dict(codes=24, text_tokens=12, mel_codes=40, prompt_codes=24, steps=10, force=True)


def test_measures():
    a = torch.tensor([3.0, 4.0])
    assert rel_err(a, a) == 0.0 and cosine(a, a) == pytest.approx(1.0)
    assert rel_err(torch.tensor([3.0, 4.5]), a) == pytest.approx(0.1)
    assert snr_db(a, a) == math.inf
    assert snr_db(a + torch.tensor([0.05, 0.0]), a) == pytest.approx(10 * math.log10(25 / 0.0025))


@pytest.fixture(scope="module")
def bf16(tiny_dir):
    return fidelity(tiny_dir, "bf16", **SMALL)


@pytest.fixture(scope="module")
def int8(tiny_dir):
    return fidelity(tiny_dir, {"gpt": "int8"}, **SMALL)


def test_bf16_dit_mel_within_threshold(bf16):
    s = bf16["s2mel"]
    assert s["mel_rel_err"] <= THRESHOLDS["s2mel_mel_rel_err"]
    assert s["mel_cosine"] > 0.9999
    assert s["frames"] > 0


def test_bf16_vocoder_snr_within_threshold(bf16):
    assert bf16["vocoder"]["snr_db"] >= THRESHOLDS["vocoder_snr_db"]


def test_bf16_gpt_logits_within_threshold(bf16):
    assert bf16["gpt"]["logits_rel_err"] <= THRESHOLDS["gpt_logits_rel_err"]
    assert all(bf16["within_thresholds"].values())


def test_int8dyn_dit_mel_within_threshold(tiny_dir):
    s = fidelity(tiny_dir, {"s2mel": "int8dyn"}, **SMALL)["s2mel"]
    assert s["mode"] == "int8dyn" and s["mel_rel_err"] <= THRESHOLDS["s2mel_mel_rel_err"]
    assert s["mel_cosine"] > 0.9999


def test_int8_dit_in_an_fp32_stage_within_threshold(tiny_dir):
    """S2Mel int8 (auto's choice without native bf16): without VNNI the activations are 7-bit so that int16
    pair sums cannot saturate; either way within the threshold."""
    s = fidelity(tiny_dir, {"s2mel": "int8"}, **{**SMALL, "force": False})["s2mel"]
    assert s["mode"] == "int8" and s["mel_rel_err"] <= THRESHOLDS["s2mel_mel_rel_err"]


def test_int8_gpt_logits_within_threshold(int8):
    g = int8["gpt"]
    assert g["mode"] == "int8" and g["codes"] == SMALL["codes"]
    assert g["logits_rel_err"] <= THRESHOLDS["gpt_logits_rel_err"]
    assert 0.0 <= g["top1_agreement"] <= 1.0 and 0.0 <= g["greedy_code_agreement"] <= 1.0
    assert "s2mel" not in int8 and "vocoder" not in int8   # fp32 stages are exact: nothing to compare


def test_fp32_compares_nothing(tiny_dir):
    report = fidelity(tiny_dir, "fp32", **SMALL)
    assert not {"gpt", "s2mel", "vocoder"} & set(report) and report["within_thresholds"] == {}


def test_command_writes_json(tiny_dir, tmp_path, capsys):
    out = tmp_path / "f.json"
    rc = main(["fidelity", "--model-dir", str(tiny_dir), "--precision", "gpt=int8", "--codes", "8",
               "--text-tokens", "6", "--threads", "1", "--json", str(out)])
    assert rc == 0 and out.exists()
    assert "gpt    int8" in capsys.readouterr().out
    assert json.loads(out.read_text())["modes"]["gpt=int8"]["precision"]["gpt"] == "int8"


def test_command_refuses_an_emulated_mode_unless_forced(tiny_dir, capsys):
    from indextts_fast.cpu import detect

    if detect().native_bf16:
        pytest.skip("this CPU runs bf16 natively: nothing is refused")
    assert main(["fidelity", "--model-dir", str(tiny_dir), "--precision", "s2mel=bf16"]) == 2
    assert "AVX512-BF16" in capsys.readouterr().err


def test_auto_is_within_every_threshold(tiny_dir):
    report = fidelity(tiny_dir, "auto", **{**SMALL, "force": False})
    assert report["plan"].startswith("auto") and all(report["within_thresholds"].values())
    assert set(report["within_thresholds"]) == {k for k, v in THRESHOLDS.items()
                                                if report["precision"][STAGE_OF[k]] != "fp32"}


def test_fidelity_measures_the_engines_code_path(tiny_dir):
    """fidelity's reduced-precision models are the engine's: same module classes in the same places, same
    parameter and buffer dtypes and values, for `auto` on this machine."""
    from indextts_fast.fidelity import lowp_models
    from indextts_fast.pipeline import Engine

    engine = Engine(tiny_dir, precision="auto")
    for stage, model in (("gpt", engine.gpt), ("s2mel", engine.s2mel), ("vocoder", engine.vocoder)):
        ours = lowp_models(engine.plan, engine.folder, "cpu", stage)
        assert [(n, type(m)) for n, m in ours.named_modules()] == [(n, type(m)) for n, m in model.named_modules()]
        a, b = dict(ours.state_dict()), dict(model.state_dict())
        assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a), stage
        assert getattr(ours, "kv_dtype", None) == getattr(model, "kv_dtype", None)


def test_nudge_is_one_rounding_step():
    from indextts_fast.fidelity import nudged

    x = torch.linspace(-3, 3, 101)
    y = nudged(x, seed=0)
    ratio = (y[x != 0] / x[x != 0]).double()
    assert torch.all((ratio - 1).abs() <= 2.0 ** -23) and torch.all(y != x)     # every value moved, by 1 ulp


def test_sensitivity_of_fp32_itself(tiny_dir):
    report = fidelity(tiny_dir, {"s2mel": "bf16", "vocoder": "bf16"}, stages={"gpt": False}, sensitivity=True,
                      **SMALL)
    s, v = report["s2mel"], report["vocoder"]
    # the tiny model is calm: one rounding step of input moves fp32 far less than bf16 does
    assert 0.0 < s["fp32_sensitivity_rel_err"] < s["mel_rel_err"] / 10
    assert v["fp32_sensitivity_snr_db"] > v["snr_db"] + 20
