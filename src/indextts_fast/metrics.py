"""Objective measures of a synthesised clip, for comparing presets (`compare`) and checking runs (`soak`).

Signal measures (numpy only, exact definitions below): duration, peak, RMS, silence ratio, longest
internal silence, clipping, integrated loudness (ITU-R BS.1770-4: K-weighting, 400 ms blocks with 75 %
overlap, absolute gate -70 LUFS, relative gate -10 LU). Model measures need the optional `eval` extra
(`pip install 'indextts-fast[eval]'`): speaker similarity to the prompt (resemblyzer), a DNSMOS estimate
(speechmos) and English word error rate (pocketsphinx). Without the extra they raise `Unavailable` with
the reason; callers record the reason, never a made-up value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

SILENCE_DB = -50.0  # a 20 ms frame whose RMS is below this (dBFS) is silent
FRAME_S = 0.020
CLIP_LEVEL = 0.99  # |x| at or above this (of full scale) is at the ceiling
CLIP_RUN = 3  # ...and a run of this many consecutive equal samples there is clipping
EVAL_HINT = "pip install 'indextts-fast[eval]'"


class Unavailable(RuntimeError):
    """A measure that cannot be computed here (missing optional package, or not applicable)."""


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] (channels averaged) and the sample rate."""
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return x.mean(axis=1).astype(np.float32), int(sr)


def _db(power: float) -> float:
    return 10.0 * math.log10(power) if power > 0 else float("-inf")


def peak_dbfs(x: np.ndarray) -> float:
    return 20.0 * math.log10(float(np.max(np.abs(x)))) if len(x) and np.any(x) else float("-inf")


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dB relative to a full-scale square wave (a full-scale sine reads -3.01 dBFS)."""
    return _db(float(np.mean(np.square(x, dtype=np.float64)))) if len(x) else float("-inf")


def silent_frames(x: np.ndarray, sr: int, threshold_db: float = SILENCE_DB, frame_s: float = FRAME_S) -> np.ndarray:
    """One boolean per whole frame of `frame_s` seconds: its RMS is below `threshold_db` dBFS."""
    n = int(round(frame_s * sr))
    frames = len(x) // n
    if frames == 0:
        return np.zeros(0, dtype=bool)
    power = np.mean(np.square(x[: frames * n].reshape(frames, n), dtype=np.float64), axis=1)
    return power < 10.0 ** (threshold_db / 10.0)


def silence_ratio(x: np.ndarray, sr: int, threshold_db: float = SILENCE_DB) -> float:
    """Share of 20 ms frames that are silent (leading and trailing silence included); 1.0 for no frames."""
    s = silent_frames(x, sr, threshold_db)
    return float(s.mean()) if len(s) else 1.0


def longest_internal_silence(x: np.ndarray, sr: int, threshold_db: float = SILENCE_DB) -> float:
    """Seconds of the longest run of silent frames between the first and the last non-silent frame
    (leading/trailing silence is not counted; 20 ms resolution). 0.0 when there is no such run."""
    s = silent_frames(x, sr, threshold_db)
    loud = np.flatnonzero(~s)
    if len(loud) < 2:
        return 0.0
    gaps = np.diff(loud) - 1  # silent frames between consecutive loud frames
    return float(gaps.max()) * FRAME_S


def clipped_fraction(x: np.ndarray, level: float = CLIP_LEVEL, min_run: int = CLIP_RUN, tol: float = 1e-6) -> float:
    """Share of samples in flat tops: runs of >= `min_run` consecutive equal samples (within `tol`) at
    or beyond +-`level` of full scale, the signature of a waveform clamped at its ceiling. An unclipped
    sine touching full scale has no such run (its samples near the peak differ)."""
    if len(x) < 2:
        return 0.0
    x = np.asarray(x, dtype=np.float64)
    high = np.abs(x) >= level
    flat = high[1:] & high[:-1] & (np.abs(np.diff(x)) <= tol)  # pair (n-1, n) is one flat step
    if not flat.any():
        return 0.0
    edges = np.diff(np.concatenate([[0], flat.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    samples = stops - starts + 1  # a run of k flat steps covers k + 1 samples
    return float(samples[samples >= min_run].sum()) / len(x)


# ---- loudness (ITU-R BS.1770-4) -----------------------------------------------------------------------

def k_weighting(sr: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two K-weighting biquads (b, a) at sample rate `sr`: a high shelf (+4 dB above ~1.7 kHz, the
    head's acoustic effect) then an RLB high-pass (~38 Hz). BS.1770 tabulates them at 48 kHz only; here
    they come from their analogue prototypes via the bilinear transform with prewarping, which gives the
    tabulated coefficients at 48 kHz (tests check) and the same response at any other rate."""
    # stage 1: high shelf
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = math.tan(math.pi * f0 / sr)
    vh = 10.0 ** (gain_db / 20.0)
    vb = vh ** 0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf_b = np.array([vh + vb * k / q + k * k, 2.0 * (k * k - vh), vh - vb * k / q + k * k]) / a0
    shelf_a = np.array([a0, 2.0 * (k * k - 1.0), 1.0 - k / q + k * k]) / a0
    # stage 2: high-pass (numerator 1, -2, 1 unnormalised, as in the standard)
    f0, q = 38.13547087602444, 0.5003270373238773
    k = math.tan(math.pi * f0 / sr)
    a0 = 1.0 + k / q + k * k
    hp_b = np.array([1.0, -2.0, 1.0])
    hp_a = np.array([a0, 2.0 * (k * k - 1.0), 1.0 - k / q + k * k]) / a0
    return [(shelf_b, shelf_a), (hp_b, hp_a)]


def k_weighting_gain_db(freq: float, sr: int) -> float:
    """Gain of the K-weighting filter at `freq` Hz (|H(e^jw)| of both stages, in dB)."""
    z = np.exp(-1j * 2.0 * math.pi * freq / sr) ** np.arange(3)
    h = 1.0
    for b, a in k_weighting(sr):
        h *= np.dot(b, z) / np.dot(a, z)
    return 20.0 * math.log10(abs(h))


def _k_filter(x: np.ndarray, sr: int) -> np.ndarray:
    from scipy.signal import lfilter

    y = x.astype(np.float64)
    for b, a in k_weighting(sr):
        y = lfilter(b, a, y)
    return y


def loudness_lufs(x: np.ndarray, sr: int) -> Optional[float]:
    """Integrated loudness of a mono clip in LUFS (channel weight 1), BS.1770-4 gating.

    L = -0.691 + 10 log10(mean square of the K-weighted signal over the gated 400 ms blocks); a 0 dBFS
    1 kHz sine reads -3.01 LUFS. None when the clip is shorter than one block or every block is below
    the -70 LUFS absolute gate (silence)."""
    block, step = int(round(0.4 * sr)), int(round(0.1 * sr))
    if len(x) < block:
        return None
    y = _k_filter(x, sr) ** 2
    csum = np.concatenate([[0.0], np.cumsum(y)])
    starts = np.arange(0, len(y) - block + 1, step)
    z = (csum[starts + block] - csum[starts]) / block  # mean square per block
    with np.errstate(divide="ignore"):
        lj = -0.691 + 10.0 * np.log10(z)
    kept = z[lj > -70.0]
    if len(kept) == 0:
        return None
    relative_gate = -0.691 + 10.0 * math.log10(kept.mean()) - 10.0
    with np.errstate(divide="ignore"):
        kept = kept[-0.691 + 10.0 * np.log10(kept) > relative_gate]
    return -0.691 + 10.0 * math.log10(kept.mean())


# ---- words ------------------------------------------------------------------------------------------

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def is_english(text: str) -> bool:
    """True for text written only in Latin script (ASCII letters; digits and punctuation allowed)."""
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and all(c.isascii() for c in letters)


def words(text: str) -> list[str]:
    """Lower-case words for WER: letters, digits and inner apostrophes; other punctuation dropped."""
    return re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", text.lower())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, by word-level edit distance."""
    ref, hyp = words(reference), words(hypothesis)
    if not ref:
        raise ValueError("the reference text has no words")
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1] / len(ref)


def syllable_estimate(text: str) -> int:
    """Rough spoken length of a text: one per CJK character, vowel groups per Latin word (>= 1)."""
    n = len(_CJK.findall(text))
    for w in re.findall(r"[A-Za-z]+", text):
        n += max(1, len(re.findall(r"[aeiouy]+", w.lower())) - (w.lower().endswith("e") and len(w) > 3))
    n += len(re.findall(r"\d", text))
    return n


# ---- optional model measures ------------------------------------------------------------------------

def _resample(x: np.ndarray, sr: int, to: int) -> np.ndarray:
    import soxr

    return x.astype(np.float32) if sr == to else soxr.resample(x.astype(np.float32), sr, to).astype(np.float32)


@lru_cache(maxsize=1)
def _voice_encoder():
    try:
        from resemblyzer import VoiceEncoder
    except ImportError as exc:
        raise Unavailable(f"speaker similarity needs resemblyzer ({EVAL_HINT}): {exc}") from None
    return VoiceEncoder(device="cpu", verbose=False)


def speaker_embedding(x: np.ndarray, sr: int) -> np.ndarray:
    """resemblyzer's 256-d utterance embedding (unit norm) of a clip, after its own VAD trimming."""
    encoder = _voice_encoder()
    from resemblyzer import preprocess_wav

    wav = preprocess_wav(_resample(x, sr, 16000), source_sr=16000)
    if len(wav) < 1600:
        raise Unavailable("speaker similarity: less than 0.1 s of voiced audio")
    return encoder.embed_utterance(wav)


def speaker_similarity(x: np.ndarray, sr: int, prompt: np.ndarray, prompt_sr: int) -> float:
    """Cosine similarity of the resemblyzer embeddings of a clip and its prompt (1 = same voice)."""
    a, b = speaker_embedding(x, sr), speaker_embedding(prompt, prompt_sr)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def dnsmos(x: np.ndarray, sr: int) -> dict[str, float]:
    """DNSMOS P.835 estimates (ovrl, sig, bak; 1-5) and P.808 MOS of a clip, via speechmos's bundled
    ONNX models at 16 kHz (clips shorter than 9 s are repeated to 9 s, as DNSMOS does)."""
    try:
        from speechmos import dnsmos as _dnsmos
    except ImportError as exc:
        raise Unavailable(f"DNSMOS needs speechmos, onnxruntime and librosa ({EVAL_HINT}): {exc}") from None
    if len(x) == 0 or not np.any(x):
        raise Unavailable("DNSMOS: the clip is empty or silent")
    y = np.clip(_resample(x, sr, 16000), -1.0, 1.0)
    out = _dnsmos.run(y, 16000)
    return {"ovrl": float(out["ovrl_mos"]), "sig": float(out["sig_mos"]), "bak": float(out["bak_mos"]),
            "p808": float(out["p808_mos"])}


@lru_cache(maxsize=1)
def _asr_decoder():
    try:
        from pocketsphinx import Decoder
    except ImportError as exc:
        raise Unavailable(f"ASR word error needs pocketsphinx ({EVAL_HINT}): {exc}") from None
    return Decoder(samprate=16000, loglevel="FATAL")


def transcribe(x: np.ndarray, sr: int) -> str:
    """English transcript by pocketsphinx's bundled en-us model (a weak recogniser: compare WERs
    between presets, do not read them as absolute intelligibility)."""
    decoder = _asr_decoder()
    pcm = (np.clip(_resample(x, sr, 16000), -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr if hyp is not None else ""


def asr_wer(x: np.ndarray, sr: int, text: str) -> tuple[float, str]:
    """(word error rate, transcript) of an English clip against the text it should say."""
    if not is_english(text):
        raise Unavailable("ASR word error: English texts only (pocketsphinx en-us)")
    hyp = transcribe(x, sr)
    return word_error_rate(text, hyp), hyp


@dataclass(frozen=True)
class ExtraStatus:
    speaker_similarity: Optional[str]
    dnsmos: Optional[str]
    asr: Optional[str]


def extras_status() -> ExtraStatus:
    """Why each optional measure is unavailable (None = available), without loading any model."""
    import importlib.util

    def need(*mods: str) -> Optional[str]:
        missing = [m for m in mods if importlib.util.find_spec(m) is None]
        return f"needs {', '.join(missing)} ({EVAL_HINT})" if missing else None

    return ExtraStatus(need("resemblyzer"), need("speechmos", "onnxruntime", "librosa"), need("pocketsphinx"))


def signal_measures(x: np.ndarray, sr: int) -> dict:
    """Every numpy-only measure of a clip, JSON-ready (None where undefined, e.g. loudness of silence)."""
    finite = bool(np.all(np.isfinite(x)))
    if not finite:
        return {"duration_s": len(x) / sr, "finite": False}
    pk, rms = peak_dbfs(x), rms_dbfs(x)
    return {
        "duration_s": len(x) / sr,
        "finite": True,
        "peak_dbfs": pk if math.isfinite(pk) else None,
        "rms_dbfs": rms if math.isfinite(rms) else None,
        "silence_ratio": silence_ratio(x, sr),
        "longest_silence_s": longest_internal_silence(x, sr),
        "clipped_fraction": clipped_fraction(x),
        "loudness_lufs": loudness_lufs(x, sr),
    }
