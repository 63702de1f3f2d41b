"""The official model folder: config.yaml read into typed settings, and the files it names.

A folder is laid out as the official release leaves it (config.yaml, gpt.pth, s2mel.pth, bpe.model,
feat1.pt, feat2.pt, wav2vec2bert_stats.pt, hf_cache/...). Reference sets add `tiny_overrides.json` for the
widths the official code hard-codes for the real model; absent file or key means the real value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ModelFolderError


class _Settings(BaseModel):
    # Unknown keys are kept (the official config carries training-only keys we never read).
    model_config = ConfigDict(extra="allow", frozen=True)


class ConditionModuleSettings(_Settings):
    output_size: int = Field(gt=0)
    linear_units: int = Field(gt=0)
    attention_heads: int = Field(gt=0)
    num_blocks: int = Field(ge=0)
    input_layer: str = "conv2d2"
    perceiver_mult: float = Field(gt=0)


class GPTSettings(_Settings):
    model_dim: int = Field(gt=0)
    max_mel_tokens: int = Field(gt=0)
    max_text_tokens: int = Field(gt=0)
    heads: int = Field(gt=0)
    layers: int = Field(gt=0)
    number_text_tokens: int = Field(gt=0)
    number_mel_codes: int = Field(gt=0)
    start_mel_token: int
    stop_mel_token: int
    start_text_token: int
    stop_text_token: int
    condition_type: str = "conformer_perceiver"
    condition_module: ConditionModuleSettings
    emo_condition_module: ConditionModuleSettings


class SemanticCodecSettings(_Settings):
    codebook_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    codebook_dim: int = Field(gt=0)
    vocos_dim: int = Field(gt=0)
    vocos_intermediate_dim: int = Field(gt=0)
    vocos_num_layers: int = Field(gt=0)


class SpectParams(_Settings):
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    fmin: float = 0
    fmax: Optional[Union[str, float]] = None

    @property
    def fmax_hz(self) -> Optional[float]:
        """The official rule: the string "None" (or null) means no limit, any other value means 8000."""
        return None if self.fmax in (None, "None") else 8000.0


class PreprocessParams(_Settings):
    sr: int
    spect_params: SpectParams


class StyleEncoderSettings(_Settings):
    dim: int = 192


class LengthRegulatorSettings(_Settings):
    channels: int
    in_channels: int
    is_discrete: bool = False
    content_codebook_size: int = 2048
    sampling_ratios: list[int] = [1, 1, 1, 1]
    vector_quantize: bool = False
    n_codebooks: int = 1
    f0_condition: bool = False
    n_f0_bins: int = 512


class DiTSettings(_Settings):
    hidden_dim: int
    num_heads: int
    depth: int
    in_channels: int = 80
    style_condition: bool = True
    final_layer_type: str = "wavenet"
    content_dim: int
    content_codebook_size: int = 1024
    f0_condition: bool = False
    n_f0_bins: int = 512
    is_causal: bool = False
    long_skip_connection: bool = True
    zero_prompt_speech_token: bool = False
    time_as_token: bool = False
    style_as_token: bool = False
    uvit_skip_connection: bool = True
    add_resblock_in_transformer: bool = False
    block_size: int = 8192
    class_dropout_prob: float = 0.1


class WavenetSettings(_Settings):
    hidden_dim: int
    num_layers: int
    kernel_size: int
    dilation_rate: int = 1
    p_dropout: float = 0.0
    style_condition: bool = True


class S2MelSettings(_Settings):
    preprocess_params: PreprocessParams
    dit_type: str = "DiT"
    style_encoder: StyleEncoderSettings = StyleEncoderSettings()
    length_regulator: LengthRegulatorSettings
    DiT: DiTSettings
    wavenet: WavenetSettings


class DatasetSettings(_Settings):
    bpe_model: str = "bpe.model"


class IndexTTSConfig(_Settings):
    """config.yaml of an IndexTTS2 model folder."""

    dataset: DatasetSettings
    gpt: GPTSettings
    semantic_codec: SemanticCodecSettings
    s2mel: S2MelSettings
    gpt_checkpoint: str = "gpt.pth"
    w2v_stat: str = "wav2vec2bert_stats.pt"
    s2mel_checkpoint: str = "s2mel.pth"
    emo_matrix: str = "feat2.pt"
    spk_matrix: str = "feat1.pt"
    emo_num: list[int]
    qwen_emo_path: Optional[str] = None
    version: Optional[float] = None


class GPTLayerWidths(_Settings):
    in_features: int
    hidden: list[int]
    out_features: int


class CAMPPlusArgs(_Settings):
    feat_dim: int = 80
    embedding_size: int = 192
    growth_rate: int = 32
    bn_size: int = 4
    init_channels: int = 128


class Overrides(_Settings):
    """Widths the official code hard-codes for the real model (tiny_overrides.json; real values by default)."""

    gpt_conditioning_input_dim: int = 1024
    s2mel_gpt_layer: GPTLayerWidths = GPTLayerWidths(in_features=1280, hidden=[256, 128], out_features=1024)
    campplus_ctor: CAMPPlusArgs = CAMPPlusArgs()
    w2v_bert_hidden_layer_used: int = 17


# Auxiliary models: flat layout under hf_cache/ (what the official downloader leaves), and the
# Hugging Face repository whose old-style cache snapshot may hold them instead.
AUX_MODELS = {
    "w2v_bert": ("w2v-bert-2.0", "facebook/w2v-bert-2.0", ""),
    "semantic_codec": ("semantic_codec_model.safetensors", "amphion/MaskGCT", "semantic_codec/model.safetensors"),
    "campplus": ("campplus_cn_common.bin", "funasr/campplus", "campplus_cn_common.bin"),
    "bigvgan": ("bigvgan", "nvidia/bigvgan_v2_22khz_80band_256x", ""),
}


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFolderError(f"{path} not found: a model folder needs config.yaml (the official IndexTTS2 config)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ModelFolderError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} should hold a mapping of settings, found {type(data).__name__}")
    return data


def _validated(model: type[BaseModel], data: Any, path: Path) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ModelFolderError(f"{path} is malformed: " + "; ".join(lines)) from exc


class ModelFolder:
    """An IndexTTS2 model folder: its validated config, overrides and file paths."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ModelFolderError(f"model folder not found: {self.root}")
        self.config: IndexTTSConfig = _validated(IndexTTSConfig, _read_yaml(self.root / "config.yaml"),
                                                 self.root / "config.yaml")
        self.overrides: Overrides = self._read_overrides()

    def _read_overrides(self) -> Overrides:
        path = self.root / "tiny_overrides.json"
        if not path.exists():
            return Overrides()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelFolderError(f"{path} is not valid JSON: {exc}") from exc
        known = {k: data[k] for k in Overrides.model_fields if k in data}
        return _validated(Overrides, known, path)

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.root)!r})"

    # ---- files named by config.yaml -------------------------------------------------------------
    def file(self, relative: str, what: str) -> Path:
        """Path of a file of the folder, or a ModelFolderError naming it and what it should be."""
        path = self.root / relative
        if not path.exists():
            raise ModelFolderError(f"{path} not found: expected {what}")
        return path

    @property
    def gpt_checkpoint(self) -> Path:
        return self.file(self.config.gpt_checkpoint, "the GPT weights (config.yaml: gpt_checkpoint)")

    @property
    def s2mel_checkpoint(self) -> Path:
        return self.file(self.config.s2mel_checkpoint, "the S2Mel weights (config.yaml: s2mel_checkpoint)")

    @property
    def w2v_stat(self) -> Path:
        return self.file(self.config.w2v_stat, "w2v-bert feature statistics {'mean', 'var'} (config.yaml: w2v_stat)")

    @property
    def emo_matrix(self) -> Path:
        return self.file(self.config.emo_matrix, "the emotion matrix (config.yaml: emo_matrix)")

    @property
    def spk_matrix(self) -> Path:
        return self.file(self.config.spk_matrix, "the speaker-style matrix (config.yaml: spk_matrix)")

    @property
    def bpe_model(self) -> Path:
        return self.file(self.config.dataset.bpe_model, "the SentencePiece text model (config.yaml: dataset.bpe_model)")

    # ---- auxiliary models under hf_cache/ --------------------------------------------------------
    def aux(self, name: str) -> Path:
        """Path of an auxiliary model: `w2v_bert` (dir), `semantic_codec`, `campplus` (files), `bigvgan` (dir).

        The flat hf_cache layout first, then an old-style Hugging Face cache snapshot inside hf_cache/
        (refs/main's snapshot, else the only one). Never downloads.
        """
        flat, repo, inner = AUX_MODELS[name]
        cache = self.root / "hf_cache"
        if (cache / flat).exists():
            return cache / flat
        snapshots = cache / f"models--{repo.replace('/', '--')}" / "snapshots"
        if snapshots.is_dir():
            ref = snapshots.parent / "refs" / "main"
            found = [snapshots / ref.read_text().strip()] if ref.is_file() else sorted(snapshots.iterdir())
            target = found[0] / inner if len(found) == 1 else None
            if target is not None and target.exists():
                return target
        raise ModelFolderError(f"{cache / flat} not found: expected the {name} model ({repo}) in the hf_cache layout")

    def fingerprint(self) -> str:
        """A content hash of config.yaml and every weight file (size and first/last MiB), for caches."""
        import hashlib

        h = hashlib.sha256((self.root / "config.yaml").read_bytes())
        weights = {".pth", ".pt", ".bin", ".safetensors", ".model", ".json"}
        for path in sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix in weights
                           and "goldens" not in p.relative_to(self.root).parts):
            size = path.stat().st_size
            h.update(f"{path.relative_to(self.root).as_posix()}:{size}".encode())
            with path.open("rb") as f:
                h.update(f.read(1 << 20))
                if size > 2 << 20:
                    f.seek(-(1 << 20), 2)
                    h.update(f.read())
        return h.hexdigest()[:16]
