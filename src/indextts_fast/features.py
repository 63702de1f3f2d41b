"""w2v-bert-2.0 semantic features of a 16 kHz waveform (SPEC-s2mel.md 4.5, 4.6).

`SemanticFeatures.from_folder(folder)(wav16k) -> (1, T, W)` is infer_v2's `get_emb(extract_features(wav))`:
the SeamlessM4T filter-bank features, transformers' `Wav2Vec2BertModel` (from the folder's
`hf_cache/w2v-bert-2.0`, never the hub), `hidden_states[17]`, normalised with wav2vec2bert_stats.pt.

Speed without changing a bit of the result:
- `FeatureExtractor` is the SeamlessM4T feature extractor vectorised over frames (transformers loops over
  frames in Python); every array operation is the one transformers applies per frame, so the output is
  identical to `SeamlessM4TFeatureExtractor` (checked against it and against the goldens in the tests).
- only the layers up to the one used are built and loaded (17 of 24 for the real model): hidden state k
  does not depend on later layers.
- attention runs in transformers' "eager" mode, the arithmetic of the transformers 4.52 code the official
  goldens were made with (the default SDPA path of transformers 5 moves spk_cond_emb by up to 3e-5 on the
  tiny set).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_torch_file
from .config import ModelFolder
from .errors import AudioError, CheckpointError, ModelFolderError

W2V_DIR = "w2v-bert-2.0"
# facebook/w2v-bert-2.0's preprocessor_config.json (the values infer_v2's feature extractor runs with)
PREPROCESSOR_CONFIG = {
    "feature_extractor_type": "SeamlessM4TFeatureExtractor",
    "feature_size": 80,
    "num_mel_bins": 80,
    "padding_side": "right",
    "padding_value": 1,
    "processor_class": "Wav2Vec2BertProcessor",
    "return_attention_mask": True,
    "sampling_rate": 16000,
    "stride": 2,
}
# Sizes of a tiny w2v-bert (width from tiny_overrides.json: gpt_conditioning_input_dim); layers = the
# layer used + 1 so that the used hidden state is not the last one, as in the reference sets.
TINY_W2V = {"num_attention_heads": 2, "intermediate_size_per_width": 1.5}

# ---- SeamlessM4T feature extraction ----------------------------------------------------------------------
_FRAME, _HOP, _FFT = 400, 160, 512
_MEL_FLOOR = 1.192092955078125e-07


def _kaldi_mel_filters(n_mels: int, sampling_rate: int) -> np.ndarray:
    """transformers' `mel_filter_bank(257, n_mels, 20, sr // 2, sr, norm=None, mel_scale="kaldi",
    triangularize_in_mel_space=True)`: triangles in Kaldi mel space, float64 (257, n_mels)."""
    def to_mel(f):
        return 1127.0 * np.log(1.0 + (f / 700.0))

    mel_freqs = np.linspace(to_mel(20), to_mel(sampling_rate // 2), n_mels + 2)
    fft_freqs = to_mel((sampling_rate / ((257 - 1) * 2)) * np.arange(257))
    diff = np.diff(mel_freqs)
    slopes = mel_freqs[None, :] - fft_freqs[:, None]
    down, up = -slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]
    return np.maximum(np.zeros(1), np.minimum(down, up))


def _fbank(wave: np.ndarray, mel_filters: np.ndarray) -> np.ndarray:
    """Log-mel filter bank of one clip (Kaldi-like, 16-bit scale), float32 (frames, n_mels)."""
    x = (wave * (2 ** 15)).astype(np.float64)  # the float32 product, then float64 framing
    n_frames = int(1 + np.floor((x.size - _FRAME) / _HOP))
    window = np.power(np.hanning(_FRAME), 0.85)  # Povey window (periodic=False)
    buf = np.zeros((n_frames, _FFT))
    buf[:, :_FRAME] = np.lib.stride_tricks.sliding_window_view(x, _FRAME)[::_HOP][:n_frames]
    frame = buf[:, :_FRAME]
    frame[:] = frame - frame.mean(axis=1, keepdims=True)  # DC removal per frame
    frame[:, 1:] -= 0.97 * frame[:, :-1]  # pre-emphasis (the right side is evaluated first)
    frame[:, 0] *= 1 - 0.97
    frame *= window
    spec = np.fft.rfft(buf).astype(np.complex64)  # transformers stores the FFT as complex64
    power = (np.abs(spec, dtype=np.float64) ** 2.0).T
    logmel = np.log(np.maximum(_MEL_FLOOR, np.dot(mel_filters.T, power)))
    return np.asarray(logmel, np.float32).T


class FeatureExtractor:
    """`SeamlessM4TFeatureExtractor` as infer_v2 calls it: one (1, N) clip at 16 kHz ->
    input_features (1, ceil(F / stride), 80 * stride) float32 and attention_mask (1, ceil(F / stride)) int32,
    F = 1 + (N - 400) // 160 frames."""

    def __init__(self, preprocessor: dict | None = None):
        cfg = {**PREPROCESSOR_CONFIG, **(preprocessor or {})}
        self.sampling_rate = int(cfg["sampling_rate"])
        self.n_mels = int(cfg["num_mel_bins"])
        self.stride = int(cfg["stride"])
        self.padding_value = float(cfg["padding_value"])
        if cfg.get("padding_side", "right") != "right":
            raise ModelFolderError(f"preprocessor_config.json: padding_side {cfg['padding_side']!r} is not supported")
        self.mel_filters = _kaldi_mel_filters(self.n_mels, self.sampling_rate)

    @classmethod
    def from_dir(cls, w2v_dir: str | Path) -> "FeatureExtractor":
        path = Path(w2v_dir) / "preprocessor_config.json"
        if not path.is_file():
            raise ModelFolderError(f"{path} not found: expected w2v-bert-2.0's feature-extractor settings")
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def __call__(self, wav16k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wave = wav16k.detach().to("cpu", torch.float32).numpy()
        wave = wave[0] if wave.ndim == 2 else wave  # transformers takes the first row of a 2-D clip
        if wave.ndim != 1:
            raise AudioError(f"expected a (1, N) waveform, got shape {tuple(wav16k.shape)}")
        if wave.shape[0] < _FRAME + _HOP:
            raise AudioError(f"{wave.shape[0]} samples at 16 kHz is too short for w2v-bert features (needs two frames)")
        feats = _fbank(wave, self.mel_filters)
        # zero mean, unit (unbiased) variance per mel bin, in float32 as numpy does it
        feats = (feats - np.expand_dims(feats.mean(0), 0)) / np.sqrt(np.expand_dims(feats.var(0, ddof=1), 0) + 1e-7)
        n = feats.shape[0]
        padded = -(-n // self.stride) * self.stride
        mask = np.zeros(padded, dtype=np.int32)
        mask[:n] = 1
        if padded > n:  # official quirk: the pad rows hold padding_value (1.0) and are stacked with real frames
            feats = np.concatenate([feats, np.full((padded - n, feats.shape[1]), self.padding_value, np.float32)])
        features = feats.reshape(1, padded // self.stride, feats.shape[1] * self.stride)
        mask = mask[np.arange(padded) % self.stride == 1][None]  # the mask of each group's second frame
        return torch.from_numpy(np.ascontiguousarray(features)), torch.from_numpy(mask)


# ---- the model ------------------------------------------------------------------------------------------------
def _w2v_config(w2v_dir: Path):
    from transformers import Wav2Vec2BertConfig

    path = w2v_dir / "config.json"
    if not path.is_file():
        raise ModelFolderError(f"{path} not found: expected w2v-bert-2.0's config.json")
    try:
        return Wav2Vec2BertConfig.from_json_file(str(path))
    except Exception as exc:
        raise ModelFolderError(f"{path} is not a valid Wav2Vec2Bert config: {exc}") from exc


def _read_w2v_weights(path: Path, wanted: set[str], n_layers: int) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors the truncated model needs (a `wav2vec2_bert.` prefix is stripped, as
    transformers does); layers beyond the used one are not read. Unknown keys are refused, like missing ones."""
    from safetensors import safe_open

    if not path.is_file():
        raise ModelFolderError(f"{path} not found: expected w2v-bert-2.0's weights")
    state, unknown = {}, []
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                name = key.removeprefix("wav2vec2_bert.")
                parts = name.split(".")
                if name.startswith("encoder.layers.") and int(parts[2]) >= n_layers:
                    continue  # a layer after the one used: never computed
                if name in wanted:
                    state[name] = f.get_tensor(key)
                else:
                    unknown.append(key)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read {path} as safetensors: {exc}") from exc
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" ... ({len(unknown)} keys)" if len(unknown) > 8 else "")
        raise CheckpointError(f"{path} does not fit Wav2Vec2BertModel built from config.json: unexpected key(s) {shown}")
    return state


class SemanticFeatures(nn.Module):
    """wav16k (1, N) -> spk_cond_emb / emo_cond_emb (1, T, W): w2v-bert hidden state `layer`, (h - mean) / sqrt(var)."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, var: torch.Tensor, extractor: FeatureExtractor):
        super().__init__()
        self.model = model
        self.extractor = extractor
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", torch.sqrt(var.float()))

    @classmethod
    def from_folder(cls, folder: ModelFolder) -> "SemanticFeatures":
        from transformers import Wav2Vec2BertModel

        from .checkpoint import load_strict

        w2v_dir = folder.aux("w2v_bert")
        config = _w2v_config(w2v_dir)
        layer = folder.overrides.w2v_bert_hidden_layer_used
        if not 0 <= layer <= config.num_hidden_layers:
            raise ModelFolderError(f"{w2v_dir / 'config.json'}: hidden state {layer} is used but the model has only "
                                   f"{config.num_hidden_layers} layers")
        config.num_hidden_layers = layer  # hidden_states[layer] is the output of the first `layer` layers
        config._attn_implementation = "eager"
        with torch.device("meta"):
            model = Wav2Vec2BertModel(config)
        weights = w2v_dir / "model.safetensors"
        state = _read_w2v_weights(weights, set(model.state_dict()), layer)
        load_strict(model, state, weights)
        stats = load_torch_file(folder.w2v_stat)
        if not isinstance(stats, dict) or not {"mean", "var"} <= set(stats):
            raise ModelFolderError(f"{folder.w2v_stat} should hold {{'mean', 'var'}}")
        for name in ("mean", "var"):
            if tuple(stats[name].shape) != (config.hidden_size,):
                raise CheckpointError(f"{folder.w2v_stat}: {name} has shape {tuple(stats[name].shape)}, "
                                      f"the w2v-bert width is {config.hidden_size}")
        return cls(model.eval(), stats["mean"], stats["var"], FeatureExtractor.from_dir(w2v_dir)).eval()

    @property
    def width(self) -> int:
        return self.mean.shape[0]

    def features(self, wav16k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_features (1, T, 160), attention_mask (1, T) on the model's device."""
        feats, mask = self.extractor(wav16k)
        return feats.to(self.mean.device), mask.to(self.mean.device)

    @torch.no_grad()
    def hidden_states(self, input_features: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """hidden_states[0 .. layer] of the model (0 = feature projection, k = output of layer k)."""
        out = self.model(input_features=input_features, attention_mask=attention_mask, output_hidden_states=True)
        return tuple(out.hidden_states)

    @torch.no_grad()
    def embed(self, input_features: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """infer_v2's `get_emb`: the used hidden state, normalised with the stats."""
        h = self.model(input_features=input_features, attention_mask=attention_mask).last_hidden_state
        return (h - self.mean) / self.std

    def forward(self, wav16k: torch.Tensor) -> torch.Tensor:
        return self.embed(*self.features(wav16k))

    def embed_together(self, *wavs16k: torch.Tensor) -> list[torch.Tensor]:
        """`forward` of several clips; clips of the same length run as one batch (one pass over the weights
        and position tables for all of them: ~30 % less time for two). Batching changes the GEMM row counts,
        so the result can differ from one-by-one in the last bits: the exact (fp32) path does not use it."""
        feats = [self.features(w) for w in wavs16k]
        if len({tuple(f.shape) for f, _ in feats}) != 1:
            return [self.embed(f, m) for f, m in feats]
        out = self.embed(torch.cat([f for f, _ in feats]), torch.cat([m for _, m in feats]))
        return list(out.split(1))


# ---- random checkpoints ------------------------------------------------------------------------------------------
def w2v_config_dict(folder: ModelFolder) -> dict:
    """config.json of the folder's w2v-bert: the real one (transformers' Wav2Vec2BertConfig defaults) when the
    conditioning width is the real 1024, else a tiny one of that width."""
    from transformers import Wav2Vec2BertConfig

    width = folder.overrides.gpt_conditioning_input_dim
    sizes = {}
    if width != Wav2Vec2BertConfig().hidden_size:
        sizes = {"hidden_size": width, "output_hidden_size": width,
                 "num_hidden_layers": folder.overrides.w2v_bert_hidden_layer_used + 1,
                 "num_attention_heads": TINY_W2V["num_attention_heads"],
                 "intermediate_size": int(width * TINY_W2V["intermediate_size_per_width"])}
    config = Wav2Vec2BertConfig(**sizes).to_dict()
    config = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("dtype", "transformers_version")}
    return {**config, "architectures": ["Wav2Vec2BertModel"], "model_type": "wav2vec2-bert", "torch_dtype": "float32"}


def write_random_checkpoint(folder: ModelFolder, seed: int) -> None:
    """hf_cache/w2v-bert-2.0/{config.json, preprocessor_config.json, model.safetensors} with random weights."""
    from safetensors.torch import save_file
    from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

    from .checkpoint import randomize_

    out = folder.root / "hf_cache" / W2V_DIR
    out.mkdir(parents=True, exist_ok=True)
    config_dict = w2v_config_dict(folder)
    (out / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n", encoding="utf-8")
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n", encoding="utf-8")
    config = Wav2Vec2BertConfig.from_json_file(str(out / "config.json"))
    with torch.device("meta"):
        model = Wav2Vec2BertModel(config)
    model.to_empty(device="cpu")
    randomize_(model, seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
