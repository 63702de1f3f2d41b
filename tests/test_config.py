import json
import shutil

import pytest

from indextts_fast.config import ModelFolder, Overrides
from indextts_fast.errors import ModelFolderError


def test_reads_tiny_folder_with_overrides(tiny_dir):
    folder = ModelFolder(tiny_dir)
    overrides = json.loads((tiny_dir / "tiny_overrides.json").read_text())
    assert folder.overrides.gpt_conditioning_input_dim == overrides["gpt_conditioning_input_dim"]
    assert folder.overrides.s2mel_gpt_layer.out_features == overrides["s2mel_gpt_layer"]["out_features"]
    assert folder.config.gpt.stop_mel_token == 8193
    assert folder.gpt_checkpoint.is_file() and folder.aux("bigvgan").is_dir()
    assert folder.aux("w2v_bert").joinpath("config.json").is_file()


def test_real_config_uses_real_hardcoded_values(assets_dir, tmp_path):
    shutil.copy(assets_dir / "config.yaml", tmp_path / "config.yaml")
    folder = ModelFolder(tmp_path)
    assert folder.config.gpt.model_dim == 1280 and folder.config.gpt.layers == 24
    assert folder.overrides == Overrides()
    assert folder.overrides.gpt_conditioning_input_dim == 1024
    assert folder.overrides.s2mel_gpt_layer.in_features == 1280
    assert folder.config.s2mel.preprocess_params.spect_params.fmax_hz is None
    with pytest.raises(ModelFolderError, match="gpt.pth not found.*GPT weights"):
        folder.gpt_checkpoint
    with pytest.raises(ModelFolderError, match="semantic_codec"):
        folder.aux("semantic_codec")


def test_hf_snapshot_layout_is_found(assets_dir, tmp_path):
    shutil.copy(assets_dir / "config.yaml", tmp_path / "config.yaml")
    snap = tmp_path / "hf_cache" / "models--funasr--campplus" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "campplus_cn_common.bin").write_bytes(b"x")
    assert ModelFolder(tmp_path).aux("campplus") == snap / "campplus_cn_common.bin"


@pytest.mark.parametrize("content, match", [
    (None, "config.yaml not found"),
    ("gpt: [unclosed", "not valid YAML"),
    ("- a list", "mapping"),
    ("dataset: {}\ngpt: {model_dim: -1}\n", "malformed.*gpt"),
])
def test_bad_config_is_named(tmp_path, content, match):
    if content is not None:
        (tmp_path / "config.yaml").write_text(content)
    with pytest.raises(ModelFolderError, match=match):
        ModelFolder(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="model folder not found"):
        ModelFolder(tmp_path / "nope")


def test_bad_overrides_file(tiny_dir, tmp_path):
    shutil.copy(tiny_dir / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "tiny_overrides.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="tiny_overrides.json is not valid JSON"):
        ModelFolder(tmp_path)


def test_fingerprint_changes_with_weights(tiny_dir, tmp_path):
    shutil.copy(tiny_dir / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "gpt.pth").write_bytes(b"a" * 100)
    first = ModelFolder(tmp_path).fingerprint()
    (tmp_path / "gpt.pth").write_bytes(b"b" * 100)
    assert ModelFolder(tmp_path).fingerprint() != first
