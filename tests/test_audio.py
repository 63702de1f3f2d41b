"""Reference-audio loading, resampling, mel and fbank: golden parity (frontend.json) and bad-input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from indextts_fast import audio
from indextts_fast.config import ModelFolder
from indextts_fast.errors import AudioError


def atol(frontend_manifest, case_id, quantity):
    tol = next(c for c in frontend_manifest["cases"] if c["id"] == case_id)["tolerance"]
    return tol["atol"] if "atol" in tol else tol[quantity]["atol"]


def assert_close(got, want, tol, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != golden {tuple(want.shape)}"
    err = (got.double() - want.double()).abs().max().item()
    assert err <= tol, f"{what}: max abs error {err} > {tol}"


def test_load_reference_matches_goldens(tiny_dir, frontend_manifest, frontend_goldens):
    for prompt in frontend_manifest["prompts"]:
        p = prompt["prompt"]
        ref = audio.load_reference(tiny_dir / prompt["file"])
        assert ref.wav22k.dtype == torch.float32 and ref.wav22k.shape == (1, prompt["n_samples_22k"])
        assert ref.wav16k.shape == (1, prompt["n_samples_16k"])
        assert_close(ref.wav22k, frontend_goldens[f"{p}.audio"], atol(frontend_manifest, "a.audio", "audio"), f"{p}.audio")
        assert_close(ref.wav16k, frontend_goldens[f"{p}.audio_16k"], atol(frontend_manifest, "a.audio", "audio_16k"), f"{p}.audio_16k")


def test_resample_length_is_rounded_through_float32(frontend_manifest):
    # torchaudio computes ceil(float32(n*N/o)): for 22050 -> 16000 and N = 90569 that is 65719, not 65720
    assert audio.resample(torch.zeros(1, 90569), 22050, 16000).shape == (1, 65719)
    assert math.ceil(90569 * 320 / 441) == 65720
    for prompt in frontend_manifest["prompts"]:
        n = prompt["n_samples_22k"]
        assert audio.resample(torch.zeros(1, n), 22050, 16000).shape[-1] == prompt["n_samples_16k"]
    x = torch.randn(1, 100)
    assert audio.resample(x, 22050, 22050) is x  # equal rates: torchaudio returns the input itself


def test_native_resampling_goldens(tiny_dir, frontend_manifest, frontend_goldens):
    checked = 0
    for prompt in frontend_manifest["prompts"]:
        p = prompt["prompt"]
        if f"{p}.native_mono" not in frontend_goldens:
            continue
        sr, native = prompt["native_sr"], frontend_goldens[f"{p}.native_mono"]
        tol = atol(frontend_manifest, "a.native_resample", None)
        assert_close(audio.resample(native, sr, 22050), frontend_goldens[f"{p}.native_resampled_22k"], tol, f"{p} -> 22.05k")
        assert_close(audio.resample(native, sr, 16000), frontend_goldens[f"{p}.native_resampled_16k"], tol, f"{p} -> 16k")
        checked += 1
    assert checked >= 1


def test_mel_and_fbank_goldens(tiny_dir, frontend_manifest, frontend_goldens):
    folder = ModelFolder(tiny_dir)
    spect = folder.config.s2mel.preprocess_params.spect_params
    for prompt in frontend_manifest["prompts"]:
        p = prompt["prompt"]
        mel = audio.mel_spectrogram(frontend_goldens[f"{p}.audio"], spect)
        assert mel.shape == (1, spect.n_mels, prompt["n_mel_frames"])
        assert_close(mel, frontend_goldens[f"{p}.ref_mel"], atol(frontend_manifest, "a.audio", "ref_mel"), f"{p}.ref_mel")
        raw = audio.kaldi_fbank_raw(frontend_goldens[f"{p}.audio_16k"])
        assert raw.shape == (prompt["n_fbank_frames"], 80)
        tol = atol(frontend_manifest, "a.audio", "fbank")
        assert_close(raw, frontend_goldens[f"{p}.fbank_raw"], tol, f"{p}.fbank_raw")
        assert_close(audio.kaldi_fbank(frontend_goldens[f"{p}.audio_16k"]), frontend_goldens[f"{p}.fbank"], tol, f"{p}.fbank")


def test_emotion_audio_goldens(tiny_dir, frontend_manifest, frontend_goldens):
    for prompt in frontend_manifest["prompts"]:
        p = prompt["prompt"]
        got = audio.load_emotion_audio(tiny_dir / prompt["file"])
        assert_close(got, frontend_goldens[f"{p}.emo_audio_16k"], atol(frontend_manifest, "b.emo_path", "emo_audio_16k"), p)


def test_slaney_mel_basis_properties():
    basis = audio.slaney_mel_basis(22050, 1024, 80, 0.0, None)
    assert basis.shape == (80, 513) and basis.dtype == torch.float32
    assert (basis >= 0).all() and (basis.sum(1) > 0).all()
    # fmax rule of the official code: "None" -> no limit; anything else -> 8000 Hz (fewer bins reached)
    limited = audio.slaney_mel_basis(22050, 1024, 80, 0.0, 8000.0)
    assert limited[:, 372:].abs().sum() == 0 and basis[:, 372:].abs().sum() > 0


def _tone(rate, seconds, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    cols = [0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) + 0.01 * rng.standard_normal(t.size) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


@pytest.mark.parametrize("rate,channels", [(8000, 1), (96000, 2), (44100, 6), (22050, 2), (16000, 1)])
def test_any_rate_and_channel_count(tmp_path, rate, channels):
    data = _tone(rate, 1.3, channels)
    path = tmp_path / f"in_{rate}_{channels}.wav"
    sf.write(path, data, rate, subtype="PCM_16")
    ref = audio.load_reference(path)
    n22 = math.ceil(data.shape[0] * (22050 / rate))
    assert ref.wav22k.shape == (1, n22)
    assert ref.wav16k.shape == audio.resample(ref.wav22k, 22050, 16000).shape
    assert torch.isfinite(ref.wav16k).all() and ref.wav16k.abs().max() > 0.1
    emo = audio.load_emotion_audio(path)
    assert emo.shape == (1, math.ceil(data.shape[0] * (16000 / rate)))
    # the features of both paths can be computed
    assert audio.kaldi_fbank(ref.wav16k).shape[1] == 80
    assert audio.mel_spectrogram(ref.wav22k, _spect()).shape[1] == 80


def _spect():
    from indextts_fast.config import SpectParams

    return SpectParams(n_fft=1024, win_length=1024, hop_length=256, n_mels=80, fmin=0, fmax="None")


def test_channels_are_averaged_like_librosa(tmp_path):
    data = _tone(22050, 0.5, 3)
    sf.write(tmp_path / "x.wav", data, 22050, subtype="FLOAT")
    got = audio.load_audio(tmp_path / "x.wav")
    assert torch.equal(got[0], torch.from_numpy(np.mean(data.T, axis=0)))


@pytest.mark.parametrize("fmt,ext,subtype", [("FLAC", "flac", "PCM_16"), ("OGG", "ogg", "VORBIS"), ("MP3", "mp3", None)])
def test_compressed_formats(tmp_path, fmt, ext, subtype):
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    data = _tone(44100, 1.0, 2)
    path = tmp_path / f"x.{ext}"
    sf.write(path, data, 44100, format=fmt, subtype=subtype)
    ref = audio.load_reference(path)
    assert abs(ref.wav22k.shape[1] - 22050) < 1200  # codecs may add priming/padding samples
    assert ref.wav22k.abs().max() > 0.1


def test_cut_to_15_seconds(tmp_path):
    sf.write(tmp_path / "long.wav", _tone(22050, 16.0), 22050, subtype="PCM_16")
    assert audio.load_reference(tmp_path / "long.wav").wav22k.shape == (1, 15 * 22050)
    assert audio.load_emotion_audio(tmp_path / "long.wav").shape == (1, 15 * 16000)
    assert audio.load_audio(tmp_path / "long.wav", max_seconds=None).shape == (1, 16 * 22050)


@pytest.mark.parametrize("rate,channels", [(44100, 2), (48000, 1), (22050, 1)])
def test_long_files_are_decoded_only_as_far_as_needed(tmp_path, rate, channels):
    import soxr

    data = _tone(rate, 31.0, channels, seed=rate)
    data *= np.linspace(0.2, 1.0, data.shape[0], dtype=np.float32)[:, None]
    path = tmp_path / "long.wav"
    sf.write(path, data, rate, subtype="FLOAT")
    for sr in (22050, 16000):  # librosa: decode everything, mix, resample everything, then cut
        full = np.mean(data.T, axis=0) if channels > 1 else data[:, 0]
        if rate != sr:
            full = soxr.resample(full, rate, sr, quality="soxr_hq")
        assert torch.equal(audio.load_audio(path, sr)[0], torch.from_numpy(full[: 15 * sr]))


def _write_bad(tmp_path, kind):
    path = tmp_path / f"{kind}.wav"
    if kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "not_audio":
        path.write_text("this is not a wav file\n" * 20)
    elif kind == "no_samples":
        sf.write(path, np.zeros((0, 1), np.float32), 22050)
    elif kind == "too_short":
        sf.write(path, _tone(22050, 0.1), 22050, subtype="PCM_16")
    elif kind == "silent":
        sf.write(path, np.zeros((22050, 2), np.float32), 22050, subtype="PCM_16")
    elif kind == "channels_cancel":  # left = -right: the mono mix is silent
        tone = _tone(22050, 1.0)
        sf.write(path, np.concatenate([tone, -tone], axis=1), 22050, subtype="FLOAT")
    elif kind == "silent_first_15s":
        data = np.zeros((16 * 16000, 1), np.float32)
        data[-8000:] = _tone(16000, 0.5)  # only the last 0.5 s (after the 15 s cut) is audible
        sf.write(path, data, 16000, subtype="PCM_16")
    elif kind in ("nan", "inf"):
        data = _tone(22050, 1.0)
        data[100] = np.nan if kind == "nan" else np.inf
        sf.write(path, data, 22050, subtype="FLOAT")
    return path


@pytest.mark.parametrize("kind,message", [
    ("missing", "not found"), ("empty_file", "empty file"), ("not_audio", "cannot decode"),
    ("no_samples", "no audio samples"), ("too_short", "at least"), ("silent", "silent"),
    ("channels_cancel", "silent"), ("silent_first_15s", "silent"),
    ("nan", "NaN or infinite"), ("inf", "NaN or infinite"),
])
def test_bad_audio_is_refused(tmp_path, kind, message):
    path = tmp_path / "missing.wav" if kind == "missing" else _write_bad(tmp_path, kind)
    for load in (audio.load_reference, audio.load_emotion_audio):
        with pytest.raises(AudioError, match=message):
            load(path)


def test_minimum_length_is_accepted(tmp_path):
    n = math.ceil(audio.MIN_SECONDS * 8000)
    sf.write(tmp_path / "short.wav", _tone(8000, 1.0)[:n], 8000, subtype="PCM_16")
    ref = audio.load_reference(tmp_path / "short.wav")
    assert audio.kaldi_fbank(ref.wav16k).shape[0] >= 3
