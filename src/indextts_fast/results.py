"""What a request gives and gets: speaker conditioning, emotion control, per-segment and whole results.

Plain data (torch tensors, numpy audio); no models. `SynthesisResult.save` writes whole files only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import OptionError
from .presets import Settings
from .profiling import Timings

SAMPLE_RATE = 22050
PCM_SCALE = 32767.0


@dataclass
class SpeakerConditioning:
    """Everything the pipeline derives from one reference clip (what the speaker registry stores)."""

    spk_cond_emb: torch.Tensor  # (1, T, W) w2v-bert features, speaker path (22.05 kHz load -> 16 kHz)
    emo_cond_emb: torch.Tensor  # (1, T', W) the same clip through the emotion path (16 kHz load)
    semantic_codes: torch.Tensor  # (1, T) codec codes of spk_cond_emb
    S_ref: torch.Tensor  # (1, T, W) codec vectors of those codes
    ref_mel: torch.Tensor  # (1, 80, T_ref) prompt mel
    style: torch.Tensor  # (1, 192) CAMPPlus style
    prompt_condition: torch.Tensor  # (1, T_ref, C) length-regulated semantic prompt
    spk_latent: torch.Tensor  # (1, 32, D) GPT speaker conditioning latent

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.__dict__.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], device: torch.device | str = "cpu"):
        missing = [k for k in cls.__dataclass_fields__ if k not in tensors]
        if missing:
            raise KeyError(f"speaker conditioning lacks {', '.join(missing)}")
        return cls(**{k: tensors[k].to(device) for k in cls.__dataclass_fields__})


@dataclass
class Emotion:
    """Emotion control of a request: an emotion clip with alpha, or an 8-value vector (happy, angry, sad,
    afraid, disgusted, melancholic, surprised, calm), or emotion from text (`from_text`: the folder's
    emotion classifier reads `text`, default the text being spoken), or none of them (the speaker clip is
    the emotion)."""

    audio: Optional[str | Path] = None
    alpha: float = 1.0
    vector: Optional[Sequence[float]] = None
    use_random: bool = False  # random rows of the emotion matrix instead of the nearest style
    from_text: bool = False
    text: Optional[str] = None

    def __post_init__(self) -> None:
        if sum([self.audio is not None, self.vector is not None, self.from_text]) > 1:
            # Official behaviour: a vector or text wins and the emotion clip is discarded; we say so instead.
            raise OptionError("give one of an emotion clip, an emotion vector or emotion from text")
        if self.text is not None and not self.from_text:
            raise OptionError("an emotion text is only used with from_text=True")
        if self.vector is not None:
            vec = list(self.vector)
            if len(vec) != 8 or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in vec):
                raise OptionError(f"an emotion vector has 8 finite numbers, got {self.vector!r}")
            if any(v < 0 for v in vec):
                raise OptionError(f"emotion vector weights must be >= 0, got {vec}")
        if not 0.0 <= self.alpha <= 1.0:
            raise OptionError(f"emotion alpha={self.alpha} is out of range: expected in [0, 1]")


@dataclass
class SegmentResult:
    text_ids: list[int]
    codes: torch.Tensor  # (1, N) after stop-code trimming
    hit_max_mel_tokens: bool
    wav_pcm: torch.Tensor  # (1, samples) float32 in 16-bit PCM scale, as the official code produces


@dataclass
class AudioChunk:
    """One segment of a streamed request (`Engine.stream`): its audio (float32 mono in [-1, 1], led by the
    silence between segments after the first), its place, and what made it."""
    index: int
    count: int              # segments in the request
    audio: np.ndarray
    sample_rate: int
    seed: int
    segment: SegmentResult
    seconds: dict = field(default_factory=dict)   # stage -> seconds spent on this chunk (the first: also text, conditioning)

    @property
    def last(self) -> bool:
        return self.index == self.count - 1


@dataclass
class SynthesisResult:
    audio: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    timings: Timings
    settings: Settings
    seed: int
    segments: list[SegmentResult] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    def save(self, path: str | Path) -> Path:
        """Write wav (16-bit PCM, as the official code), flac (16-bit) or ogg (vorbis), by extension."""
        import os
        import tempfile

        import soundfile as sf

        from .checks import AUDIO_FORMATS, check_output_path

        path = check_output_path(path)
        fmt, subtype = AUDIO_FORMATS[path.suffix.lower()]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:   # written beside the target, then renamed: never a partial file under the name asked for
            with os.fdopen(fd, "wb") as f:
                sf.write(f, self.audio, self.sample_rate, format=fmt, subtype=subtype)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
