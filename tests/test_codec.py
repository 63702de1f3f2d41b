"""MaskGCT semantic codec: exact codes and embeddings against the frontend_goldens, strict loading, random checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from indextts_fast.config import ModelFolder
from indextts_fast.errors import CheckpointError
from indextts_fast.models.codec import SemanticCodec
from helpers import corrupt_state

WEIGHTS = "hf_cache/semantic_codec_model.safetensors"


@pytest.fixture(scope="module")
def codec(tiny_dir):
    return SemanticCodec.from_folder(ModelFolder(tiny_dir))


def case_atol(frontend_manifest, case_id, quantity=None):
    tol = next(c for c in frontend_manifest["cases"] if c["id"] == case_id)["tolerance"]
    return tol["atol"] if quantity is None else tol[quantity]["atol"]


def max_err(a, b):
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a.double() - b.double()).abs().max().item()


def test_quantize_goldens(codec, frontend_manifest, frontend_goldens):
    tol = case_atol(frontend_manifest, "c.codec_quantize", "S_ref")
    for prompt in frontend_manifest["prompts"]:
        p = prompt["prompt"]
        spk = frontend_goldens[f"{p}.spk_cond_emb"]
        assert max_err(codec.encode(spk), frontend_goldens[f"{p}.codec_encoder_out"]) <= tol
        codes, s_ref = codec.quantize(spk)
        assert codes.dtype == torch.int64 and torch.equal(codes, frontend_goldens[f"{p}.S_ref_codes"])  # exact
        assert len(codes.unique()) == prompt["S_ref_distinct_codes"]
        assert max_err(s_ref, frontend_goldens[f"{p}.S_ref"]) <= tol
        # S_ref is the embedding of its own codes, up to the straight-through rounding
        emb = codec.vq2emb(codes).transpose(1, 2)
        assert max_err(emb, s_ref) <= max(prompt["max_abs_S_ref_minus_vq2emb_of_its_codes"], 1e-6)


def test_vq2emb_golden(codec, frontend_manifest, frontend_goldens):
    out = codec.vq2emb(frontend_goldens["vq2emb.codes"])
    assert max_err(out, frontend_goldens["vq2emb.out"]) <= case_atol(frontend_manifest, "c.vq2emb")


def test_vq2emb_batches_row_by_row(codec, frontend_goldens):
    codes = frontend_goldens["vq2emb.codes"]
    both = codec.vq2emb(torch.cat([codes, codes.flip(1)]))
    # (batched convolutions may round differently: equal up to float32 noise)
    assert max_err(both[:1], codec.vq2emb(codes)) < 1e-6 and max_err(both[1:], codec.vq2emb(codes.flip(1))) < 1e-6


def _corrupt_copy(tiny_dir, tmp_path, corruption):
    shutil.copy(tiny_dir / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "hf_cache").mkdir()
    state = load_file(str(tiny_dir / WEIGHTS))
    key = corrupt_state(state, corruption, "quantizer.quantizers.0.codebook.weight", "encoder.0.extra.weight")
    save_file(state, str(tmp_path / WEIGHTS))
    return key


@pytest.mark.parametrize("corruption", ["missing", "extra", "reshaped"])
def test_loader_is_strict(tiny_dir, tmp_path, corruption):
    key = _corrupt_copy(tiny_dir, tmp_path, corruption)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        SemanticCodec.from_folder(ModelFolder(tmp_path))


def test_random_checkpoint_roundtrip(tmp_path):
    from indextts_fast.makeckpt import make_checkpoint

    make_checkpoint(tmp_path, "tiny", seed=5, only=["semantic_codec"], progress=lambda s: None)
    folder = ModelFolder(tmp_path)
    written = load_file(str(tmp_path / WEIGHTS))
    codec = SemanticCodec.from_folder(folder)
    width = folder.config.semantic_codec.hidden_size
    feats = torch.randn(1, 40, width, generator=torch.Generator().manual_seed(1))
    codes, s_ref = codec.quantize(feats)
    assert codes.shape == (1, 40) and s_ref.shape == (1, 40, width)
    assert int(codes.max()) < folder.config.semantic_codec.codebook_size
    assert any(k.startswith("decoder.") for k in written)  # the file keeps the official (unused) decoder


def _listing(path):
    rows = [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {k: tuple(json.loads(shape)) for k, shape, _ in rows}


def test_full_size_layout_matches_the_real_file(assets_dir, reference_root):
    with torch.device("meta"):
        model = SemanticCodec(ModelFolder(assets_dir).config.semantic_codec)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _listing(reference_root / "state_dict_real_semantic_codec.txt")
