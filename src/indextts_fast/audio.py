"""Reference audio: loading, resampling, the S2Mel mel spectrogram and the Kaldi fbank of CAMPPlus.

Everything here reproduces what the official IndexTTS2 inference does with librosa and torchaudio
(SPEC-s2mel.md sections 4.1-4.4 and 4.6), without either library:

- `load_audio(path, sr)` is `librosa.load(path, sr=sr)` + the 15 s cut: a float32 soundfile read, the
  float32 mean over channels, soxr "HQ" resampling when the file rate differs (length fixed to
  ceil(n * sr / file_rate) as librosa does), then the first 15 s.
- `resample(wav, orig, new)` is `torchaudio.transforms.Resample(orig, new)` (windowed sinc, Hann window,
  6 zero crossings, roll-off 0.99), including its float32-rounded output length.
- `load_reference(path)` is the speaker path of infer_v2 (22.05 kHz load, torchaudio 22050 -> 16000);
  `load_emotion_audio(path)` is its emotion path (loaded at 16 kHz directly by soxr).
- `mel_spectrogram(wav22k, spect_params)` is S2Mel's log-mel (reflect pad, periodic Hann STFT, Slaney mel).
- `kaldi_fbank(wav16k)` is `torchaudio.compliance.kaldi.fbank(..., num_mel_bins=80, dither=0)` minus its
  time mean, as infer_v2 feeds CAMPPlus.

Files are decoded by soundfile (libsndfile): wav, flac, ogg (vorbis/opus), mp3 (libsndfile >= 1.1), aiff, ...
at any rate and channel count. Unusable audio (missing, unreadable, empty, shorter than MIN_SECONDS, silent,
NaN/inf samples) raises AudioError naming the file and the problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import AudioError

SPEAKER_RATE = 22050  # librosa.load's default rate: the rate of the speaker path and of S2Mel
FEATURE_RATE = 16000  # w2v-bert, Kaldi fbank, CAMPPlus
MAX_SECONDS = 15  # infer_v2 cuts every reference clip to its first 15 s
# A reference clip must hold at least this much audio. The official code frames anything longer than one
# 25 ms window, but a clip this short carries no usable voice (a syllable at most), and the per-bin
# statistics of the w2v-bert feature extractor and CAMPPlus's pooling degenerate on a handful of frames.
MIN_SECONDS = 0.25
# Peak amplitude below which a clip counts as silent (-80 dBFS, about 3 steps of 16-bit PCM).
SILENCE_PEAK = 1e-4
# Only the first MAX_SECONDS + READ_MARGIN seconds of a file are decoded: librosa decodes and resamples the
# whole file and then cuts, but soxr's output up to the cut depends on a few ms of input after it only, so
# the kept samples are identical (tests/test_audio.py compares with a full decode).
READ_MARGIN = 1.0


@dataclass(frozen=True)
class ReferenceAudio:
    """The two waveforms of infer_v2's speaker path: (1, N22) at 22.05 kHz and (1, N16) at 16 kHz."""

    wav22k: torch.Tensor
    wav16k: torch.Tensor


# ---- loading --------------------------------------------------------------------------------------------
def read_audio(path: str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a file with soundfile: float32 samples (frames, channels) and the file's rate. With
    `max_seconds`, only the first max_seconds + READ_MARGIN seconds are decoded (see READ_MARGIN)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    if path.stat().st_size == 0:
        raise AudioError(f"{path} is an empty file, not audio")
    try:
        with sf.SoundFile(str(path)) as f:
            frames = -1 if max_seconds is None else int(math.ceil((max_seconds + READ_MARGIN) * f.samplerate))
            data, rate = f.read(frames=frames, dtype="float32", always_2d=True), f.samplerate
    except Exception as exc:  # soundfile.LibsndfileError, RuntimeError, TypeError...
        hint = ""
        if path.suffix.lower() == ".mp3" and "MP3" not in sf.available_formats():
            hint = " (this libsndfile has no MP3 support: convert the file to wav or flac)"
        raise AudioError(f"cannot decode {path} as audio{hint}: {exc}") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{path} holds no audio samples")
    return data, int(rate)


def check_samples(data: np.ndarray, rate: int, source: str) -> None:
    """Refuse non-finite or too short audio, naming the problem."""
    if not np.isfinite(data).all():
        raise AudioError(f"{source} contains NaN or infinite samples")
    seconds = data.shape[0] / rate
    if seconds < MIN_SECONDS:
        raise AudioError(f"{source} is {seconds:.3f} s long; a reference clip needs at least {MIN_SECONDS} s of audio")


def check_not_silent(wav: torch.Tensor, source: str) -> None:
    """Refuse a clip (as it will be used: mixed to mono and cut) whose peak is below SILENCE_PEAK."""
    if float(wav.abs().max()) < SILENCE_PEAK:
        raise AudioError(f"{source} is silent (peak amplitude below {SILENCE_PEAK:g} in the part that is used)")


def load_audio(path: str | Path, sr: int | None = SPEAKER_RATE,
               max_seconds: float | None = MAX_SECONDS) -> torch.Tensor:
    """`librosa.load(path, sr=sr)` (mono, float32, soxr_hq) cut to `max_seconds`: a (1, N) float32 tensor.
    `sr=None` keeps the file's rate (as librosa), `max_seconds=None` keeps the whole clip."""
    import soxr

    data, rate = read_audio(path, max_seconds)
    check_samples(data, rate, str(path))
    sr = rate if sr is None else int(sr)
    # librosa: the (channels, frames) view averaged over channels in float32.
    mono = np.mean(data.T, axis=0) if data.shape[1] > 1 else data[:, 0]
    if rate != sr:
        n_out = int(np.ceil(mono.shape[-1] * (float(sr) / rate)))  # librosa's rule, ratio first
        y = soxr.resample(mono, rate, sr, quality="soxr_hq")
        # librosa's fix_length: zero-pad or cut to exactly ceil(n * sr / rate) samples
        y = y[:n_out] if y.shape[-1] >= n_out else np.pad(y, (0, n_out - y.shape[-1]))
        mono = y
    wav = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32)).unsqueeze(0)
    wav = wav if max_seconds is None else wav[:, : int(max_seconds * sr)]
    check_not_silent(wav, str(path))
    return wav


def load_reference(path: str | Path) -> ReferenceAudio:
    """infer_v2's speaker path: the clip at 22.05 kHz (cut to 15 s) and torchaudio's 16 kHz resampling of it.
    (infer_v2 also applies Resample(22050, 22050), which is the identity.)"""
    wav22k = load_audio(path, SPEAKER_RATE)
    return ReferenceAudio(wav22k, resample(wav22k, SPEAKER_RATE, FEATURE_RATE))


def load_emotion_audio(path: str | Path) -> torch.Tensor:
    """infer_v2's emotion path: loaded at 16 kHz directly (soxr, no torchaudio), cut to 15 s: (1, N16)."""
    return load_audio(path, FEATURE_RATE)


# ---- torchaudio's sinc resampler ---------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, zeros: int = 6, rolloff: float = 0.99) -> tuple[torch.Tensor, int]:
    """Polyphase kernel (new, 1, 2*width + orig) of torchaudio's `sinc_interp_hann` for reduced rates."""
    base = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / base)
    taps = torch.arange(-width, width + orig, dtype=torch.float64) / orig
    # torchaudio quirk: the phase offsets j/new are computed in float32 (arange with the default dtype),
    # then added to the float64 tap positions.
    phases = torch.arange(0, -new, -1, dtype=torch.float32)[:, None, None] / new
    t = ((phases + taps[None, None]) * base).clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones((), dtype=t.dtype), t.sin() / t)
    return (sinc * (window * (base / orig))).to(torch.float32), width


def resample(wav: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """`torchaudio.transforms.Resample(orig, new)(wav)` for a (..., N) float32 tensor; equal rates return `wav`."""
    if orig == new:
        return wav
    g = math.gcd(int(orig), int(new))
    o, n = int(orig) // g, int(new) // g
    kernel, width = _sinc_kernel(o, n)
    shape = wav.shape
    x = F.pad(wav.reshape(-1, shape[-1]), (width, width + o))
    y = F.conv1d(x[:, None], kernel.to(wav.device, wav.dtype), stride=o)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)
    # torchaudio quirk: the length n*N/o is rounded to float32 before the ceiling (one sample short
    # of exact arithmetic for some N above ~65k output samples).
    length = int(math.ceil(float(np.float32(n * shape[-1] / o))))
    return y[:, :length].reshape(*shape[:-1], -1)


# ---- S2Mel mel spectrogram ----------------------------------------------------------------------------------
# librosa's Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (step ln(6.4)/27).
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel_slaney(f: float) -> float:
    return _MIN_LOG_MEL + np.log(f / _MIN_LOG_HZ) / _LOGSTEP if f >= _MIN_LOG_HZ else f / _F_SP


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    hz = _F_SP * m
    log_region = m >= _MIN_LOG_MEL
    hz[log_region] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (m[log_region] - _MIN_LOG_MEL))
    return hz


@lru_cache(maxsize=8)
def slaney_mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> torch.Tensor:
    """`librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)` (Slaney scale and area
    normalisation) as float32 (n_mels, 1 + n_fft // 2)."""
    fmax = sr / 2.0 if fmax is None else float(fmax)
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):  # librosa stores each triangle in float32, then scales it (float64 op, float32 out)
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    weights *= (2.0 / (mel_f[2: n_mels + 2] - mel_f[:n_mels]))[:, None]
    return torch.from_numpy(weights)


def mel_spectrogram(wav22k: torch.Tensor, spect_params, sr: int = SPEAKER_RATE) -> torch.Tensor:
    """S2Mel's log-mel spectrogram of a (B, N) waveform: (B, n_mels, N // hop).

    `spect_params` is config.yaml's `s2mel.preprocess_params.spect_params` (SpectParams); official rule for
    fmax: the string "None" means no limit (sr / 2), any other value means 8000 Hz.
    """
    n_fft, hop, win = spect_params.n_fft, spect_params.hop_length, spect_params.win_length
    basis = slaney_mel_basis(sr, n_fft, spect_params.n_mels, float(spect_params.fmin), spect_params.fmax_hz)
    pad = int((n_fft - hop) / 2)
    y = F.pad(wav22k.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    window = torch.hann_window(win, device=wav22k.device, dtype=wav22k.dtype)  # periodic Hann
    spec = torch.stft(y, n_fft, hop_length=hop, win_length=win, window=window, center=False,
                      normalized=False, onesided=True, return_complex=True)
    mag = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)
    return torch.log(torch.clamp(torch.matmul(basis.to(mag.device), mag), min=1e-5))


# ---- Kaldi fbank (torchaudio.compliance.kaldi.fbank) ----------------------------------------------------------
FBANK_FRAME = 400  # 25 ms at 16 kHz
FBANK_SHIFT = 160  # 10 ms
FBANK_FFT = 512


@lru_cache(maxsize=4)
def kaldi_mel_banks(n_mels: int = 80, sr: float = 16000.0, fft: int = FBANK_FFT,
                    low: float = 20.0, high: float = 0.0) -> torch.Tensor:
    """torchaudio's Kaldi mel banks (float32, triangles in mel space, no normalisation) padded with a zero
    column for the Nyquist bin: (n_mels, fft // 2 + 1)."""
    nyquist = 0.5 * sr
    high = high + nyquist if high <= 0.0 else high
    mel_low, mel_high = 1127.0 * math.log(1.0 + low / 700.0), 1127.0 * math.log(1.0 + high / 700.0)
    delta = (mel_high - mel_low) / (n_mels + 1)
    b = torch.arange(n_mels).unsqueeze(1)
    left, center, right = mel_low + b * delta, mel_low + (b + 1.0) * delta, mel_low + (b + 2.0) * delta
    mel = 1127.0 * (1.0 + (sr / fft) * torch.arange(fft / 2) / 700.0).log()
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    banks = torch.max(torch.zeros(1), torch.min(up, down))
    return F.pad(banks, (0, 1))


def kaldi_fbank_raw(wav16k: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """`torchaudio.compliance.kaldi.fbank(wav, num_mel_bins=n_mels, dither=0, sample_frequency=16000)` with the
    other defaults (channel 0, snip_edges, DC removal, pre-emphasis 0.97, Povey window, power, log with the
    float32-epsilon floor). The waveform stays in [-1, 1] as infer_v2 passes it. (T, n_mels)."""
    x = wav16k[0] if wav16k.dim() == 2 else wav16k
    n = x.shape[-1]
    if n < FBANK_FRAME:
        raise AudioError(f"{n} samples at 16 kHz is shorter than one 25 ms fbank frame")
    frames = x.as_strided((1 + (n - FBANK_FRAME) // FBANK_SHIFT, FBANK_FRAME), (FBANK_SHIFT * x.stride(0), x.stride(0)))
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = F.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)[:, :-1]  # x[-1] := x[0]
    frames = frames - 0.97 * previous
    povey = torch.hann_window(FBANK_FRAME, periodic=False, dtype=x.dtype, device=x.device).pow(0.85)
    frames = F.pad((frames * povey).unsqueeze(0), (0, FBANK_FFT - FBANK_FRAME)).squeeze(0)
    power = torch.fft.rfft(frames).abs().pow(2.0)
    energies = torch.mm(power, kaldi_mel_banks(n_mels).to(x.device, x.dtype).T)
    return torch.max(energies, torch.tensor(torch.finfo(x.dtype).eps, device=x.device, dtype=x.dtype)).log()


def kaldi_fbank(wav16k: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """CAMPPlus's input as infer_v2 makes it: the Kaldi fbank minus its mean over time, (T, n_mels)."""
    feat = kaldi_fbank_raw(wav16k, n_mels)
    return feat - feat.mean(dim=0, keepdim=True)


def synthetic_prompt(path: Path, seconds: float, sr: int = 22050) -> Path:
    """A deterministic speech-like clip (voiced harmonics with a moving pitch, syllable-rate envelope,
    a little noise): enough for timing; the features of a random model do not depend on it."""
    import numpy as np
    import soundfile as sf

    if path.exists():
        return path
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t)) ** 2
    noise = np.random.default_rng(0).normal(0, 0.05, t.shape)
    wav = 0.25 * envelope * voiced + noise * envelope
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.9 * wav / np.abs(wav).max()).astype(np.float32), sr, subtype="PCM_16")
    return path
