"""BigVGAN: golden parity, the polyphase anti-aliased activation against the official op sequence, strict
loading, the real layout, random checkpoints."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from indextts_fast.config import ModelFolder
from indextts_fast.errors import CheckpointError, ModelFolderError
from indextts_fast.models.bigvgan import (REAL_CONFIG, AntiAliasedActivation, BigVGAN, BigVGANConfig,
                                          _write_blocks, kaiser_sinc_filter, write_random_checkpoint)
from indextts_fast.parity import run
from test_s2mel import read_listing


pytestmark = pytest.mark.usefixtures("one_thread")


def official_activation(act: AntiAliasedActivation, x):
    """SPEC-s2mel.md 4.14, op by op: replicate pad 5, 2·conv_transpose1d stride 2, crop 15, SnakeBeta,
    replicate pad (5, 6), conv1d stride 2."""
    C = x.shape[1]
    up = 2 * F.conv_transpose1d(F.pad(x, (5, 5), mode="replicate"), act.upsample.filter.expand(C, -1, -1),
                                stride=2, groups=C)[..., 15:-15]
    alpha, beta = torch.exp(act.act.alpha)[:, None], torch.exp(act.act.beta)[:, None]
    z = up + (1.0 / (beta + 1e-9)) * torch.sin(up * alpha) ** 2
    return F.conv1d(F.pad(z, (5, 6), mode="replicate"), act.downsample.lowpass.filter.expand(C, -1, -1),
                    stride=2, groups=C)


@pytest.mark.parametrize("T", [1, 2, 3, 4, 7, 64])
def test_polyphase_activation_equals_official_ops(T):
    gen = torch.Generator().manual_seed(T)
    act = AntiAliasedActivation(5, beta=True, logscale=True)
    with torch.no_grad():
        act.act.alpha.copy_(0.5 * torch.randn(5, generator=gen))
        act.act.beta.copy_(0.5 * torch.randn(5, generator=gen))
        x = 3 * torch.randn(2, 5, T, generator=gen)
        got, want = act(x), official_activation(act, x)
    assert got.shape == want.shape == (2, 5, T)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # same products, summed in another order


@pytest.mark.parametrize("L, n_blocks, block, left, right", [
    (1, 1, 16, 3, 3), (13, 1, 16, 3, 3), (16, 2, 16, 3, 3), (45, 3, 16, 3, 3), (64, 4, 32, 5, 5), (7, 3, 4, 3, 3)])
def test_blocks_with_halos_replicate_the_edges(L, n_blocks, block, left, right):
    x = torch.randn(3, L)
    want = F.pad(x[:, None], (left, n_blocks * block - L + right), mode="replicate")[:, 0]
    want = want.unfold(-1, left + block + right, block)
    got = _write_blocks(torch.full((3, n_blocks, left + block + right), float("nan")), x, left, right)
    assert torch.equal(got, want)  # every entry written (a nan left over would poison a whole matrix row)


def test_padded_activation_is_the_activation_then_zeros():
    act = AntiAliasedActivation(4, beta=True, logscale=True)
    x = torch.randn(2, 4, 29)
    with torch.no_grad():
        padded = act.padded(x)
    assert padded.shape[-1] >= 29 + 3 and bool((padded[..., 29:] == 0).all())
    assert torch.equal(padded[..., :29], act(x))


def test_filters_match_the_stored_ones(tiny_dir):
    sd = torch.load(tiny_dir / "hf_cache/bigvgan/bigvgan_generator.pt", weights_only=True)["generator"]
    filters = [v for k, v in sd.items() if k.endswith("filter")]
    assert filters and all(torch.equal(f, kaiser_sinc_filter(0.25, 0.3, 12)) for f in filters)


def test_parity_every_case(tiny_dir):
    lines = []
    _, failed = run(tiny_dir, ["vocoder"], emit=lines.append)
    assert failed == 0, "\n".join(lines)


def test_real_layout_matches_official_listing(reference_root):
    with torch.device("meta"):
        model = BigVGAN(BigVGANConfig.model_validate(REAL_CONFIG))
    ours = {f"generator.{k}": (tuple(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict().items()}
    assert ours == read_listing(reference_root / "state_dict_real_bigvgan.txt")
    assert model.hop_length == 256


def copy_bigvgan(tiny_dir, tmp_path):
    shutil.copy(tiny_dir / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "hf_cache").mkdir()
    shutil.copytree(tiny_dir / "hf_cache" / "bigvgan", tmp_path / "hf_cache" / "bigvgan")
    return ModelFolder(tmp_path)


@pytest.mark.parametrize("damage, message", [
    ("missing", "missing key conv_pre.bias"),
    ("extra", "unexpected key conv_post.bias"),
    ("shape", "key ups.0.0.weight_v: checkpoint shape"),
])
def test_strict_loading_refuses_bad_checkpoints(tiny_dir, tmp_path, damage, message):
    folder = copy_bigvgan(tiny_dir, tmp_path)
    path = folder.aux("bigvgan") / "bigvgan_generator.pt"
    path.chmod(0o644)
    sd = torch.load(path, weights_only=True)["generator"]
    if damage == "missing":
        del sd["conv_pre.bias"]
    elif damage == "extra":
        sd["conv_post.bias"] = torch.zeros(1)
    else:
        sd["ups.0.0.weight_v"] = sd["ups.0.0.weight_v"][:, :-1]
    torch.save({"generator": sd}, path)
    with pytest.raises(CheckpointError, match=message):
        BigVGAN.from_folder(folder)


def test_checkpoint_without_weight_norm_is_accepted(tiny_dir, tmp_path):
    """The official fallback: a file saved after remove_weight_norm loads too (same weights, same audio)."""
    reference = BigVGAN.from_folder(ModelFolder(tiny_dir))
    folder = copy_bigvgan(tiny_dir, tmp_path)
    path = folder.aux("bigvgan") / "bigvgan_generator.pt"
    path.chmod(0o644)
    torch.save({"generator": reference.state_dict()}, path)
    mel = torch.randn(1, 80, 6)
    assert torch.equal(BigVGAN.from_folder(folder)(mel), reference(mel))


def test_unsupported_config_is_refused(tiny_dir, tmp_path):
    folder = copy_bigvgan(tiny_dir, tmp_path)
    cfg = folder.aux("bigvgan") / "config.json"
    cfg.chmod(0o644)
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "resblock": "2"}))
    with pytest.raises(ModelFolderError, match="resblock"):
        BigVGAN.from_folder(folder)


def test_random_checkpoint_has_the_official_layout(tiny_dir, tmp_path):
    shutil.copy(tiny_dir / "config.yaml", tmp_path / "config.yaml")
    shutil.copy(tiny_dir / "tiny_overrides.json", tmp_path / "tiny_overrides.json")
    folder = ModelFolder(tmp_path)
    write_random_checkpoint(folder, seed=1)
    ours = torch.load(tmp_path / "hf_cache/bigvgan/bigvgan_generator.pt", weights_only=True)
    official = torch.load(tiny_dir / "hf_cache/bigvgan/bigvgan_generator.pt", weights_only=True)
    assert list(ours) == ["generator"]
    assert {k: v.shape for k, v in ours["generator"].items()} == {k: v.shape for k, v in official["generator"].items()}
    model = BigVGAN.from_folder(folder)
    wav = model(torch.randn(1, 80, 5))
    assert wav.shape == (1, 1, 5 * model.hop_length) and float(wav.abs().max()) <= 1.0
