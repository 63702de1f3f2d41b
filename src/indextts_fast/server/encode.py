"""Audio for the wire: whole files and streamed pieces in wav, flac, mp3, opus (Ogg) and pcm.

Engine audio is float32 mono at 22.05 kHz. pcm is OpenAI's: 16-bit little-endian mono at 24 kHz (soxr);
opus is encoded at 48 kHz (Opus has no 22.05 kHz mode); the others keep 22.05 kHz. Streams: wav is a header
with unknown sizes then raw 16-bit samples; pcm raw samples (one soxr stream, so the pieces join seamlessly);
mp3 and opus a complete file per segment (concatenated MP3 frames / chained Ogg streams play as one); flac
is sent once whole, at the end.
"""

from __future__ import annotations

import io
import struct

import numpy as np

OPENAI_PCM_RATE = 24000
OPUS_RATE = 48000


def _pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def _soundfile(audio: np.ndarray, sr: int, fmt: str) -> bytes:
    import soundfile as sf

    kind = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"),
            "opus": ("OGG", "OPUS")}[fmt]
    if fmt == "opus":
        audio, sr = _resample(audio, sr, OPUS_RATE), OPUS_RATE
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=kind[0], subtype=kind[1])
    return buf.getvalue()


def _resample(audio: np.ndarray, sr: int, to: int) -> np.ndarray:
    import soxr

    return soxr.resample(audio, sr, to).astype(np.float32)


def encode(audio: np.ndarray, sr: int, fmt: str) -> bytes:
    """A whole response body."""
    if fmt == "pcm":
        return _pcm16(_resample(audio, sr, OPENAI_PCM_RATE))
    return _soundfile(audio, sr, fmt)


def wav_stream_header(sr: int) -> bytes:
    """A RIFF/WAVE header for 16-bit mono of unknown length (sizes 0xFFFFFFFF, as streaming servers send)."""
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sr, sr * 2, 2, 16) + b"data" + struct.pack("<I", unknown))


class StreamEncoder:
    """Turns the engine's chunks into response pieces for one format."""

    def __init__(self, fmt: str, sr: int):
        import soxr

        self.fmt, self.sr = fmt, sr
        self.held: list[np.ndarray] = []
        self.resampler = soxr.ResampleStream(sr, OPENAI_PCM_RATE, 1, dtype="float32") if fmt == "pcm" else None

    def start(self) -> bytes:
        return wav_stream_header(self.sr) if self.fmt == "wav" else b""

    def piece(self, audio: np.ndarray, last: bool) -> bytes:
        if self.fmt == "wav":
            return _pcm16(audio)
        if self.fmt == "pcm":
            return _pcm16(self.resampler.resample_chunk(audio.astype(np.float32), last=last))
        if self.fmt == "flac":
            self.held.append(audio)
            return _soundfile(np.concatenate(self.held), self.sr, "flac") if last else b""
        return _soundfile(audio, self.sr, self.fmt)
