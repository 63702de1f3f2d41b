"""w2v-bert features: the feature extractor bit for bit, hidden states and spk/emo_cond_emb against the frontend_goldens,
strict loading, random checkpoints, and the whole front-end parity command."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from indextts_fast import features
from indextts_fast.config import ModelFolder
from indextts_fast.errors import CheckpointError
from helpers import corrupt_state


@pytest.fixture(scope="module")
def w2v(tiny_dir):
    return features.SemanticFeatures.from_folder(ModelFolder(tiny_dir))


def tolerance(frontend_manifest, case_id, quantity):
    return next(c for c in frontend_manifest["cases"] if c["id"] == case_id)["tolerance"][quantity]["atol"]


def max_err(a, b):
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a.double() - b.double()).abs().max().item()


def test_feature_extractor_is_bit_exact(w2v, frontend_manifest, frontend_goldens):
    for prompt in frontend_manifest["prompts"]:
        p = prompt["prompt"]
        for src, feats_name, mask_name in ((f"{p}.audio_16k", f"{p}.input_features", f"{p}.attention_mask"),
                                           (f"{p}.emo_audio_16k", f"{p}.emo_input_features", f"{p}.emo_attention_mask")):
            feats, mask = w2v.features(frontend_goldens[src])
            assert torch.equal(feats, frontend_goldens[feats_name]), feats_name
            assert mask.dtype == torch.int32 and torch.equal(mask, frontend_goldens[mask_name]), mask_name
        assert frontend_goldens[f"{p}.input_features"].shape[1] == prompt["n_w2v_frames"]
        if prompt["n_w2v_raw_frames_odd_padded"]:  # last row: one real frame + padding 1.0, mask 0
            feats = frontend_goldens[f"{p}.input_features"]
            assert torch.all(feats[0, -1, 80:] == 1.0) and frontend_goldens[f"{p}.attention_mask"][0, -1] == 0


def test_feature_extractor_matches_transformers(tiny_dir, w2v):
    from transformers import SeamlessM4TFeatureExtractor

    reference = SeamlessM4TFeatureExtractor.from_pretrained(str(tiny_dir / "hf_cache" / "w2v-bert-2.0"),
                                                            local_files_only=True)
    rng = np.random.default_rng(7)
    for n in (4000, 4161, 4321, 17123, 48000):  # 23, 24, 25, 105, 298 frames: odd and even counts
        wav = torch.from_numpy((0.2 * rng.standard_normal(n)).astype(np.float32))[None]
        want = reference(wav, sampling_rate=16000, return_tensors="pt")
        feats, mask = w2v.extractor(wav)
        assert torch.equal(feats, want["input_features"]) and torch.equal(mask, want["attention_mask"]), n


def test_hidden_states_and_embeddings(w2v, frontend_manifest, frontend_goldens):
    spk_tol = tolerance(frontend_manifest, "b.w2v_bert", "spk_cond_emb")
    emo_tol = tolerance(frontend_manifest, "b.emo_path", "emo_cond_emb")
    for prompt in frontend_manifest["prompts"]:
        p = prompt["prompt"]
        feats, mask = frontend_goldens[f"{p}.input_features"], frontend_goldens[f"{p}.attention_mask"]
        hidden = w2v.hidden_states(feats, mask)
        assert len(hidden) == w2v.model.config.num_hidden_layers + 1
        for name in (n for n in frontend_goldens if n.startswith(f"{p}.w2v_hidden_states_")):
            assert max_err(hidden[int(name.rsplit("_", 1)[1])], frontend_goldens[name]) <= spk_tol, name
        assert max_err(w2v.embed(feats, mask), frontend_goldens[f"{p}.spk_cond_emb"]) <= spk_tol
        assert max_err(w2v(frontend_goldens[f"{p}.audio_16k"]), frontend_goldens[f"{p}.spk_cond_emb"]) <= spk_tol
        emo = w2v.embed(frontend_goldens[f"{p}.emo_input_features"], frontend_goldens[f"{p}.emo_attention_mask"])
        assert max_err(emo, frontend_goldens[f"{p}.emo_cond_emb"]) <= emo_tol


def test_only_the_used_layers_are_built(tiny_dir, w2v, frontend_goldens, frontend_manifest):
    from transformers import Wav2Vec2BertModel

    folder = ModelFolder(tiny_dir)
    layer = folder.overrides.w2v_bert_hidden_layer_used
    assert len(w2v.model.encoder.layers) == layer
    full = Wav2Vec2BertModel.from_pretrained(str(folder.aux("w2v_bert")), local_files_only=True,
                                             attn_implementation="eager").eval()
    assert len(full.encoder.layers) > layer
    p = frontend_manifest["prompts"][0]["prompt"]
    with torch.no_grad():
        want = full(input_features=frontend_goldens[f"{p}.input_features"], attention_mask=frontend_goldens[f"{p}.attention_mask"],
                    output_hidden_states=True).hidden_states[layer]
    got = w2v.model(input_features=frontend_goldens[f"{p}.input_features"],
                    attention_mask=frontend_goldens[f"{p}.attention_mask"]).last_hidden_state
    assert torch.equal(got, want)


def _copy_folder(src, dst):
    for name in ("config.yaml", "tiny_overrides.json", "wav2vec2bert_stats.pt"):
        shutil.copy(src / name, dst / name)
    shutil.copytree(src / "hf_cache" / "w2v-bert-2.0", dst / "hf_cache" / "w2v-bert-2.0")
    return dst / "hf_cache" / "w2v-bert-2.0" / "model.safetensors"


@pytest.mark.parametrize("corruption", ["missing", "extra", "reshaped"])
def test_loader_is_strict(tiny_dir, tmp_path, corruption):
    weights = _copy_folder(tiny_dir, tmp_path)
    state = load_file(str(weights))
    key = corrupt_state(state, corruption, "encoder.layers.0.self_attn.linear_q.weight",
                        "encoder.extra_projection.weight")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        features.SemanticFeatures.from_folder(ModelFolder(tmp_path))


def test_random_checkpoint_tiny_roundtrip(tmp_path):
    from indextts_fast.makeckpt import make_checkpoint

    make_checkpoint(tmp_path, "tiny", seed=3, only=["w2v_bert"], progress=lambda s: None)
    folder = ModelFolder(tmp_path)
    model = features.SemanticFeatures.from_folder(folder)
    cfg = json.loads((tmp_path / "hf_cache" / "w2v-bert-2.0" / "config.json").read_text())
    assert cfg["hidden_size"] == folder.overrides.gpt_conditioning_input_dim
    assert cfg["num_hidden_layers"] > folder.overrides.w2v_bert_hidden_layer_used
    wav = 0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    out = model(wav)
    assert out.shape == (1, 49, cfg["hidden_size"]) and torch.isfinite(out).all()  # 98 frames, pairs


def _listing(path):
    rows = [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {k: tuple(json.loads(shape)) for k, shape, _ in rows}


def test_full_size_writer_matches_the_real_layout(assets_dir, reference_root):
    from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

    config = features.w2v_config_dict(ModelFolder(assets_dir))  # the real folder: no tiny_overrides.json
    with torch.device("meta"):
        model = Wav2Vec2BertModel(Wav2Vec2BertConfig(**config))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _listing(reference_root / "state_dict_real_w2v_bert.txt")


def test_check_parity_frontend_reports_no_failures(tiny_dir, capsys):
    from indextts_fast import cli

    rc = cli.main(["check-parity", str(tiny_dir), "--stage", "frontend"])
    out = capsys.readouterr().out
    assert rc == 0 and out.strip().endswith(" 0 failed"), out[-2000:]


def test_embed_together_matches_one_by_one(w2v):
    g = torch.Generator().manual_seed(8)
    a, b, c = (0.1 * torch.randn(1, n, generator=g) for n in (16000, 16000, 12000))
    with torch.inference_mode():
        alone = [w2v(x) for x in (a, b, c)]
        same_length = w2v.embed_together(a, b)          # one batch
        mixed = w2v.embed_together(a, c)                # different lengths: one by one
    for got, want in zip(same_length + mixed, [alone[0], alone[1], alone[0], alone[2]]):
        assert got.shape == want.shape and max_err(got, want) <= 1e-4 * float(want.abs().max())
