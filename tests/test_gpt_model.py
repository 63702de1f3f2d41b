"""UnifiedVoice: official state-dict keys/shapes, strict loading of both file layouts, random checkpoints,
conditioning quirks and input validation. Golden parity of the outputs is in test_parity_gpt.py."""

import shutil

import pytest
import torch

from indextts_fast.config import ModelFolder
from indextts_fast.errors import CheckpointError, ModelFolderError, OptionError
from indextts_fast.models.conformer import sinusoid_table
from indextts_fast.models.gpt import build_gpt, load_gpt, write_random_checkpoint


def _real_listing(tiny_dir):
    keys, aliases = [], []
    for line in (tiny_dir / "state_dict_real.txt").read_text().splitlines():
        if line.startswith("#   ") and "\t" in line:                      # post_init alias keys (excluded)
            aliases.append(line[4:].split("\t")[0])
        elif line and not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            keys.append((key, tuple(int(s) for s in shape.strip("[]").split(",") if s.strip()), dtype))
    return keys, aliases


def test_real_config_state_dict_matches_official_listing(tiny_dir, assets_dir):
    model = build_gpt(ModelFolder(assets_dir), "meta")       # real config.yaml, no overrides -> W = 1024
    listing, aliases = _real_listing(tiny_dir)
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert ours == listing                                   # same keys, same order, shapes and dtypes
    assert len(ours) == 665 and not set(aliases) & {k for k, _, _ in ours}
    buffers = {k for k, _ in model.named_buffers()}
    assert buffers == {"conditioning_encoder.embed.pos_enc.pe", "emo_conditioning_encoder.embed.pos_enc.pe"}


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return load_gpt(tiny_dir)


def test_loads_tiny_strictly_and_round_trips(tiny_dir, tiny_model):
    state = torch.load(tiny_dir / "gpt.pth", map_location="cpu", weights_only=True)
    ours = tiny_model.state_dict()
    assert list(ours) == list(state)
    for k, v in state.items():                               # the fast layout keeps the official view
        assert ours[k].shape == v.shape and torch.equal(ours[k], v), k
    w = tiny_model.gpt.h[0].attn.c_attn.weight
    assert w.t().is_contiguous() and tuple(w.shape) == (64, 192)
    assert not tiny_model.training


def _folder_copy(tiny_dir, tmp_path, state):
    for name in ("config.yaml", "tiny_overrides.json"):
        shutil.copy(tiny_dir / name, tmp_path / name)
    torch.save(state, tmp_path / "gpt.pth")
    return tmp_path


def test_model_layout_and_alias_keys_load(tiny_dir, tmp_path, tiny_model):
    state = torch.load(tiny_dir / "gpt.pth", map_location="cpu", weights_only=True)
    with_aliases = dict(state)
    with_aliases["gpt.wte.weight"] = state["mel_embedding.weight"]
    with_aliases["inference_model.lm_head.1.weight"] = state["mel_head.weight"]
    model = load_gpt(_folder_copy(tiny_dir, tmp_path, {"model": with_aliases}))
    assert torch.equal(model.mel_head.bias, tiny_model.mel_head.bias)


def test_strict_loading_names_bad_keys(tiny_dir, tmp_path):
    state = torch.load(tiny_dir / "gpt.pth", map_location="cpu", weights_only=True)
    missing = {k: v for k, v in state.items() if k != "final_norm.bias"}
    with pytest.raises(CheckpointError, match="final_norm.bias"):
        load_gpt(_folder_copy(tiny_dir, tmp_path, missing))
    extra = dict(state, unknown_thing=torch.zeros(1))
    with pytest.raises(CheckpointError, match="unknown_thing"):
        load_gpt(_folder_copy(tiny_dir, tmp_path, extra))
    wrong = dict(state, **{"mel_head.bias": torch.zeros(5)})
    with pytest.raises(CheckpointError, match="mel_head.bias"):
        load_gpt(_folder_copy(tiny_dir, tmp_path, wrong))


def test_missing_checkpoint_file(tiny_dir, tmp_path):
    for name in ("config.yaml", "tiny_overrides.json"):
        shutil.copy(tiny_dir / name, tmp_path / name)
    with pytest.raises(ModelFolderError, match="gpt.pth"):
        load_gpt(tmp_path)


def test_write_random_checkpoint_tiny(tiny_dir, tmp_path):
    for name in ("config.yaml", "tiny_overrides.json"):
        shutil.copy(tiny_dir / name, tmp_path / name)
    folder = ModelFolder(tmp_path)
    write_random_checkpoint(folder, seed=3)
    first = torch.load(tmp_path / "gpt.pth", weights_only=True)
    official = torch.load(tiny_dir / "gpt.pth", weights_only=True)
    assert list(first) == list(official)
    assert all(first[k].shape == v.shape and first[k].is_contiguous() for k, v in official.items())
    pe = first["conditioning_encoder.embed.pos_enc.pe"]
    assert torch.equal(pe, official["conditioning_encoder.embed.pos_enc.pe"])
    assert torch.equal(pe, sinusoid_table(pe.shape[1], pe.shape[2]))
    model = load_gpt(folder)                                 # loads strictly
    write_random_checkpoint(folder, seed=3)
    assert torch.equal(torch.load(tmp_path / "gpt.pth", weights_only=True)["mel_head.weight"], first["mel_head.weight"])
    assert model.speaker_latent(torch.randn(1, 40, 32)).shape == (1, 32, 64)


def test_conditioning_length_is_feature_width(tiny_model):
    """Official quirk: the conditioning length is the feature width W (32 here), not the frame count."""
    x = torch.randn(1, 120, 32)
    _, _, mask = tiny_model.speaker_conditioning(x, torch.tensor([32]))
    assert int(mask.sum()) == (32 - 1) // 2                  # 15 valid subsampled frames of 59
    _, _, mask100 = tiny_model.speaker_conditioning(x, torch.tensor([100]))
    assert mask100.shape == (1, 1, 59) and int(mask100.sum()) == 49
    assert torch.equal(tiny_model.speaker_latent(x), tiny_model.speaker_conditioning(x, torch.tensor([32]))[0])
    assert not torch.allclose(tiny_model.speaker_latent(x), tiny_model.speaker_latent(x, length=120))


def test_latent_pass_quirks(tiny_model):
    torch.manual_seed(0)
    spk, emo = torch.randn(1, 32, 64), torch.randn(1, 64)
    codes = torch.randint(0, 8192, (1, 7))
    out = tiny_model.latents(spk, torch.tensor([5, 9, 33], dtype=torch.int32), codes, emo)
    assert out.shape == (1, 7, 64)
    # text ids 0/1 are kept in the latent pass (they change the result), unlike generation
    kept = tiny_model.latents(spk, torch.tensor([5, 0, 9, 33]), codes, emo)
    assert not torch.allclose(out, kept)
    assert tiny_model.latents(spk, torch.tensor([5]), codes[:, :0], emo).shape == (1, 0, 64)


def test_public_api_rejects_bad_inputs(tiny_model):
    spk, emo = torch.randn(1, 32, 64), torch.randn(1, 64)
    with pytest.raises(OptionError, match="spk_cond_emb"):
        tiny_model.speaker_latent(torch.randn(120, 32))              # wrong rank
    with pytest.raises(OptionError, match=r"\(B, T, 32\)"):
        tiny_model.speaker_latent(torch.randn(1, 120, 1024))         # wrong feature width
    with pytest.raises(OptionError, match="emotion features"):
        tiny_model.merge_emovec(torch.randn(1, 50, 32), torch.randn(1, 50), 0.5)
    with pytest.raises(OptionError, match="text_ids is empty"):
        tiny_model.latents(spk, torch.tensor([], dtype=torch.long), torch.tensor([[3]]), emo)
    with pytest.raises(OptionError, match="text_ids must be a 1-D integer"):
        tiny_model.latents(spk, torch.tensor([[3, 4], [5, 6]]), torch.tensor([[3]]), emo)
    with pytest.raises(OptionError, match="outside"):
        tiny_model.latents(spk, torch.tensor([3, 12001]), torch.tensor([[3]]), emo)
    with pytest.raises(OptionError, match="spk_latent must have shape"):
        tiny_model.latents(torch.randn(1, 31, 64), torch.tensor([3]), torch.tensor([[3]]), emo)
    with pytest.raises(OptionError, match="emovec must have shape"):
        tiny_model.latents(spk, torch.tensor([3]), torch.tensor([[3]]), torch.randn(64))
