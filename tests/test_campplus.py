"""CAMPPlus style vector: golden parity, strict loading (BatchNorm counters included), random checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from indextts_fast.config import ModelFolder
from indextts_fast.errors import CheckpointError
from indextts_fast.models.campplus import CAMPPlus
from helpers import corrupt_state

WEIGHTS = "hf_cache/campplus_cn_common.bin"


@pytest.fixture(scope="module")
def manifest(tiny_dir):
    return json.loads((tiny_dir / "goldens" / "frontend.json").read_text())


def test_style_goldens(tiny_dir, manifest):
    goldens = load_file(str(tiny_dir / "goldens" / "frontend.safetensors"))
    tol = next(c for c in manifest["cases"] if c["id"] == "d.campplus")["tolerance"]["atol"]
    model = CAMPPlus.from_folder(ModelFolder(tiny_dir))
    for prompt in manifest["prompts"]:
        p = prompt["prompt"]
        style = model(goldens[f"{p}.fbank"].unsqueeze(0))
        want = goldens[f"{p}.style"]
        assert style.shape == want.shape == (1, 192)
        assert (style - want).abs().max().item() <= tol


def test_constructor_comes_from_the_overrides(tiny_dir):
    folder = ModelFolder(tiny_dir)
    args = folder.overrides.campplus_ctor
    model = CAMPPlus.from_folder(folder)
    state = model.state_dict()
    assert state["xvector.tdnn.linear.weight"].shape[0] == args.init_channels
    assert state["xvector.block1.tdnnd1.linear1.weight"].shape[0] == args.bn_size * args.growth_rate
    assert state["xvector.block1.tdnnd1.cam_layer.linear_local.weight"].shape[0] == args.growth_rate
    # segments of 100 frames: a clip longer than one segment, and one frame count that leaves a partial one
    fbank = torch.randn(1, 257, args.feat_dim, generator=torch.Generator().manual_seed(0))
    assert model(fbank).shape == (1, args.embedding_size)


@pytest.mark.parametrize("corruption", ["missing", "extra", "reshaped"])
def test_loader_is_strict(tiny_dir, tmp_path, corruption):
    shutil.copy(tiny_dir / "config.yaml", tmp_path / "config.yaml")
    shutil.copy(tiny_dir / "tiny_overrides.json", tmp_path / "tiny_overrides.json")
    (tmp_path / "hf_cache").mkdir()
    state = torch.load(tiny_dir / WEIGHTS, weights_only=True)
    key = "xvector.dense.linear.weight" if corruption == "reshaped" else \
        "xvector.block2.tdnnd3.nonlinear1.batchnorm.num_batches_tracked"
    key = corrupt_state(state, corruption, key, "xvector.block2.tdnnd3.extra.weight")
    torch.save(state, tmp_path / WEIGHTS)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        CAMPPlus.from_folder(ModelFolder(tmp_path))


def test_random_checkpoint_roundtrip(tmp_path):
    from indextts_fast.makeckpt import make_checkpoint

    make_checkpoint(tmp_path, "tiny", seed=9, only=["campplus"], progress=lambda s: None)
    state = torch.load(tmp_path / WEIGHTS, weights_only=True)
    assert state["head.bn1.num_batches_tracked"].dtype == torch.int64
    model = CAMPPlus.from_folder(ModelFolder(tmp_path))
    style = model(torch.randn(1, 120, 80, generator=torch.Generator().manual_seed(2)))
    assert style.shape == (1, 192) and torch.isfinite(style).all()


def _listing(path):
    rows = [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {k: tuple(json.loads(shape)) for k, shape, _ in rows}


def test_full_size_layout_matches_the_real_file(assets_dir, reference_root):
    with torch.device("meta"):
        model = CAMPPlus(ModelFolder(assets_dir).overrides.campplus_ctor)  # real values: no tiny_overrides.json
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _listing(reference_root / "state_dict_real_campplus.txt")
