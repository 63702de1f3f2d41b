"""Measures on synthetic signals with known answers; with the `eval` extra, on espeak-ng speech."""

from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from indextts_fast import metrics

SR = 22050


def tone(freq: float, seconds: float, peak: float = 1.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return peak * np.sin(2 * np.pi * freq * t)


# ---- clipping ----

def test_clipped_sine_is_clipping_with_the_analytic_share():
    # A sine of amplitude A clamped to +-1 sits at the ceiling for 2 acos(1/A) / pi of the time.
    x = np.clip(tone(220, 2.0, peak=1.5), -1, 1)
    assert metrics.clipped_fraction(x) == pytest.approx(2 * math.acos(1 / 1.5) / math.pi, abs=2e-3)


def test_clipping_survives_16_bit_files(tmp_path):
    sf.write(tmp_path / "c.wav", np.clip(tone(1000, 1.0, peak=2.0), -1, 1), SR, subtype="PCM_16")
    x, sr = metrics.load_audio(tmp_path / "c.wav")
    assert sr == SR and metrics.clipped_fraction(x) > 0.5


@pytest.mark.parametrize("freq", [100, 220, 1000, 5000])
def test_unclipped_sines_are_not_clipping(freq):
    assert metrics.clipped_fraction(tone(freq, 1.0, peak=1.0)) == 0.0  # touches full scale, no flat top
    assert metrics.clipped_fraction(np.clip(tone(freq, 1.0, peak=1.0), -0.5, 0.5)) == 0.0  # flat, but far below


# ---- silence ----

def test_two_second_gap_is_reported():
    x = np.concatenate([tone(300, 1.0, 0.3), np.zeros(2 * SR), tone(300, 1.0, 0.3)])
    assert metrics.longest_internal_silence(x, SR) == pytest.approx(2.0, abs=metrics.FRAME_S)
    assert metrics.silence_ratio(x, SR) == pytest.approx(0.5, abs=0.01)


def test_leading_and_trailing_silence_are_not_internal():
    x = np.concatenate([np.zeros(SR), tone(300, 1.0, 0.3), np.zeros(3 * SR)])
    assert metrics.longest_internal_silence(x, SR) == 0.0
    assert metrics.silence_ratio(x, SR) == pytest.approx(0.8, abs=0.01)


def test_quiet_noise_is_silence_and_threshold_is_in_dbfs():
    noise = np.random.default_rng(0).normal(0, 10 ** (-60 / 20), 2 * SR)  # -60 dBFS RMS
    assert metrics.silence_ratio(noise, SR) == 1.0
    assert metrics.silence_ratio(noise, SR, threshold_db=-70) == 0.0
    assert metrics.rms_dbfs(noise) == pytest.approx(-60, abs=0.1)
    assert metrics.rms_dbfs(tone(1000, 1.0)) == pytest.approx(-3.0103, abs=1e-3)
    assert metrics.peak_dbfs(tone(1000, 1.0, 0.1)) == pytest.approx(-20.0, abs=1e-3)


# ---- loudness (ITU-R BS.1770-4) ----

def test_k_weighting_reproduces_the_standard_48k_coefficients():
    (b1, a1), (b2, a2) = metrics.k_weighting(48000)
    np.testing.assert_allclose(b1, [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=1e-12)
    np.testing.assert_allclose(a1, [1.0, -1.69065929318241, 0.73248077421585], atol=1e-12)
    np.testing.assert_allclose(b2, [1.0, -2.0, 1.0])
    np.testing.assert_allclose(a2, [1.0, -1.99004745483398, 0.99007225036621], atol=1e-12)


@pytest.mark.parametrize("sr", [48000, 44100, 22050, 16000])
def test_loudness_of_a_1khz_sine_at_minus_20_dbfs_peak(sr):
    # Mean square of a sine of peak A is A^2/2; BS.1770: L = -0.691 + 10 log10(K(1 kHz)^2 * A^2 / 2).
    # K(1 kHz) is +0.691 dB at 48 kHz (by design: a full-scale 1 kHz sine reads -3.01 LUFS), so the
    # nominal answer is 20 log10(0.1) - 3.0103 = -23.01 LUFS; at other rates the bilinear transform
    # moves K(1 kHz) by a few hundredths of a dB, and the exact value follows from the filter itself.
    exact = -0.691 + 10 * math.log10(0.1**2 / 2) + metrics.k_weighting_gain_db(1000, sr)
    got = metrics.loudness_lufs(tone(1000, 5.0, 0.1, sr), sr)
    assert got == pytest.approx(exact, abs=2e-3)
    assert got == pytest.approx(-23.01, abs=0.01 if sr == 48000 else 0.06)


def test_loudness_gates_silence_and_quiet_parts():
    loud = tone(1000, 3.0, 0.1)
    ref = metrics.loudness_lufs(loud, SR)
    # 3 s of tone = 27 whole 400 ms blocks (100 ms steps); after it come 3 blocks holding 75/50/25 % of
    # the tone and then silent blocks, below the -70 LUFS absolute gate. The edge blocks pass both gates:
    # the mean energy becomes (27 + 0.75 + 0.5 + 0.25) / 30 of the tone's.
    with_edges = ref + 10 * math.log10(28.5 / 30)
    assert metrics.loudness_lufs(np.concatenate([loud, np.zeros(5 * SR)]), SR) == pytest.approx(with_edges, abs=1e-3)
    # a part 30 dB quieter is below the -10 LU relative gate: the same as silence (to 0.001 dB)
    mixed = metrics.loudness_lufs(np.concatenate([loud, tone(1000, 3.0, 0.1 * 10 ** (-30 / 20))]), SR)
    assert mixed == pytest.approx(with_edges, abs=1e-3)
    # a part 6 dB quieter passes the gates: the result is the energy mean of the two halves
    both = metrics.loudness_lufs(np.concatenate([loud, tone(1000, 3.0, 0.05)]), SR)
    assert both == pytest.approx(ref + 10 * math.log10((1 + 0.25) / 2), abs=0.05)


def test_loudness_is_undefined_for_silence_and_short_clips():
    assert metrics.loudness_lufs(np.zeros(SR), SR) is None
    assert metrics.loudness_lufs(tone(1000, 0.3), SR) is None


def test_loudness_agrees_with_pyloudnorm_where_installed():
    pyln = pytest.importorskip("pyloudnorm", reason="cross-check only; pyloudnorm is not a dependency")
    x = np.random.default_rng(1).normal(0, 0.05, 6 * SR) * np.repeat(np.linspace(0.1, 1, 6), SR)
    # pyloudnorm derives the filters slightly differently; within 0.1 LU
    assert metrics.loudness_lufs(x, SR) == pytest.approx(pyln.Meter(SR).integrated_loudness(x), abs=0.1)


# ---- words ----

def test_word_error_rate_and_language():
    assert metrics.word_error_rate("The cat sat on the mat.", "the cat sat on the mat") == 0.0
    assert metrics.word_error_rate("The cat sat.", "the bat sat down") == pytest.approx(2 / 3)
    assert metrics.word_error_rate("one two three", "") == 1.0
    assert metrics.is_english("Don't stop, it's 9 o'clock!") and not metrics.is_english("你好 world")
    assert metrics.syllable_estimate("你好，世界") == 4
    assert metrics.syllable_estimate("hello there") == 3


def test_signal_measures_flag_nonfinite():
    x = tone(440, 1.0, 0.5)
    x[100] = np.nan
    assert metrics.signal_measures(x, SR) == {"duration_s": 1.0, "finite": False}
    m = metrics.signal_measures(tone(440, 1.0, 0.5), SR)
    assert m["finite"] and m["clipped_fraction"] == 0.0 and m["loudness_lufs"] is not None


# ---- optional model measures ----

def test_missing_extras_say_so_instead_of_a_value():
    status = metrics.extras_status()
    for name, why in (("resemblyzer", status.speaker_similarity), ("pocketsphinx", status.asr)):
        try:
            __import__(name)
        except ImportError:
            assert why and "eval" in why
            with pytest.raises(metrics.Unavailable):
                if name == "resemblyzer":
                    metrics.speaker_similarity(tone(200, 1), SR, tone(200, 1), SR)
                else:
                    metrics.asr_wer(tone(200, 1), SR, "hello")
        else:
            assert why is None
    with pytest.raises(metrics.Unavailable, match="English"):
        metrics.asr_wer(tone(200, 1), SR, "你好")


def espeak(tmp_path, text: str, voice: str = "en-us", speed: int = 150):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    path = tmp_path / f"{abs(hash((text, voice, speed)))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)
    return metrics.load_audio(path)


def test_signal_measures_on_espeak_speech(tmp_path):
    x, sr = espeak(tmp_path, "The quick brown fox jumps over the lazy dog.")
    m = metrics.signal_measures(x, sr)
    assert 1.5 < m["duration_s"] < 5 and m["clipped_fraction"] == 0.0
    assert -40 < m["loudness_lufs"] < -5 and m["longest_silence_s"] < 0.5


def test_speaker_similarity_on_espeak_voices(tmp_path):
    pytest.importorskip("resemblyzer", reason="needs the eval extra")
    a, sr = espeak(tmp_path, "The quick brown fox jumps over the lazy dog.", "en-us")
    b, _ = espeak(tmp_path, "Please call Stella and ask her to bring these things.", "en-us")
    c, _ = espeak(tmp_path, "Please call Stella and ask her to bring these things.", "en-us+f3")
    same = metrics.speaker_similarity(a, sr, b, sr)
    other = metrics.speaker_similarity(a, sr, c, sr)
    assert 0.0 < other < same <= 1.0


def test_dnsmos_on_espeak_speech_and_noise(tmp_path):
    pytest.importorskip("speechmos", reason="needs the eval extra")
    x, sr = espeak(tmp_path, "The quick brown fox jumps over the lazy dog.")
    clean = metrics.dnsmos(x, sr)
    noisy = metrics.dnsmos(np.clip(x + np.random.default_rng(0).normal(0, 0.2, len(x)), -1, 1), sr)
    assert all(1.0 <= v <= 5.0 for v in clean.values())
    assert noisy["bak"] < clean["bak"] and noisy["ovrl"] < clean["ovrl"]


def test_asr_wer_on_espeak_speech(tmp_path):
    pytest.importorskip("pocketsphinx", reason="needs the eval extra")
    # pocketsphinx is a weak recogniser and espeak a robotic voice: only "better than a wrong text" holds
    text = "Hello world. How are you today?"
    x, sr = espeak(tmp_path, text, voice="en", speed=140)
    wer, transcript = metrics.asr_wer(x, sr, text)
    other, _ = metrics.asr_wer(x, sr, "please call stella and ask her to bring these things")
    assert isinstance(transcript, str) and 0.0 <= wer < other
