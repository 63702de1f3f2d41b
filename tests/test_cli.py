"""The command line: `--help` and every command's own arguments parse without importing torch, and bad
arguments are refused with one line and exit code 2 before anything heavy happens."""

import subprocess
import sys

import pytest

from indextts_fast.cli import COMMANDS

# the stage benches are torch programs from their first line (their arguments include torch dtypes)
TORCH_FREE = [c for c in COMMANDS if c != "bench"]


def _modules_after(argv: list) -> str:
    code = ("import sys\nfrom indextts_fast.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "sys.stdout = sys.__stdout__\nprint('torch' in sys.modules)" % argv)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_top_level_help_imports_no_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "indextts_fast.cli", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "synthesize" in out.stdout
    assert not [line for line in out.stderr.splitlines() if line.rstrip().endswith("| torch")]
    assert _modules_after(["--help"]) == "False"


@pytest.mark.parametrize("command", TORCH_FREE)
def test_every_command_help_imports_no_torch(command):
    assert _modules_after([command, "--help"]) == "False"


# ---- bad requests: one line, exit 2, before any model loads, nothing written ---------------------------------

@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a model starts loading (every check must come first)."""
    from indextts_fast import pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(pipeline.Engine, "__init__", refuse)


def synthesize(tmp_path, *extra, text=("--text", "Hello there.")):
    voice = tmp_path / "voice.wav"
    if not voice.exists():
        import numpy as np
        import soundfile as sf

        sf.write(voice, np.zeros(1600, dtype=np.float32), 16000)
    return ["synthesize", "--model-dir", str(tmp_path / "no-model"), "--voice", str(voice), *text, *extra]


def refused(argv, capsys, *words):
    from indextts_fast.cli import main

    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err + captured.out, err
    for word in words:
        assert word in err, (word, err)
    return err


def test_unsupported_or_missing_extension(tmp_path, capsys, no_model):
    refused(synthesize(tmp_path, "--out", str(tmp_path / "x.mp3")), capsys, "x.mp3", ".wav")
    refused(synthesize(tmp_path, "--out", str(tmp_path / "x")), capsys, "no extension")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voice.wav"]


def test_output_under_a_file_or_onto_a_folder(tmp_path, capsys, no_model):
    (tmp_path / "file.txt").write_text("x")
    refused(synthesize(tmp_path, "--out", str(tmp_path / "file.txt" / "deeper" / "x.wav")), capsys, "is a file")
    (tmp_path / "folder.wav").mkdir()
    refused(synthesize(tmp_path, "--out", str(tmp_path / "folder.wav")), capsys, "is a folder")
    assert (tmp_path / "file.txt").read_text() == "x" and not any((tmp_path / "folder.wav").iterdir())


def test_output_in_an_unwritable_folder(tmp_path, capsys, no_model):
    import os
    from pathlib import Path

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:   # root may write into any mode-555 folder; /proc/sys is read-only even for root
        target = next((p for p in (locked, Path("/proc/sys")) if p.is_dir() and not os.access(p, os.W_OK)), None)
        if target is None:
            pytest.skip("no folder this user cannot write to")
        refused(synthesize(tmp_path, "--out", str(target / "x.wav")), capsys, "no permission")
        assert not (target / "x.wav").exists()
    finally:
        locked.chmod(0o755)


def test_a_gbk_text_file_is_named_with_its_likely_encoding(tmp_path, capsys, no_model):
    story = tmp_path / "story.txt"
    story.write_bytes("你好，欢迎使用。".encode("gbk"))
    refused(synthesize(tmp_path, "--out", str(tmp_path / "o.wav"), text=("--text-file", str(story))), capsys,
            "story.txt", "not UTF-8", "GB18030")
    refused(synthesize(tmp_path, "--out", str(tmp_path / "o.wav"), text=("--text-file", str(tmp_path / "nope.txt"))),
            capsys, "nope.txt")


@pytest.mark.parametrize("seed", ["99999999999999999999999", "-1"])
def test_out_of_range_seeds(tmp_path, capsys, no_model, seed):
    refused(synthesize(tmp_path, "--out", str(tmp_path / "o.wav"), "--seed", seed), capsys, "seed", seed)


@pytest.mark.parametrize("extra,words", [(["--top-k", "-3"], ["top_k"]), (["--preset", "fastest"], ["fastest"]),
                                         (["--precision", "fp8"], ["fp8"]), (["--emotion-vector", "1,2"], ["8"]),
                                         (["--emotion-alpha", "2"], ["alpha"])])
def test_bad_settings_are_refused_before_loading(tmp_path, capsys, no_model, extra, words):
    refused(synthesize(tmp_path, "--out", str(tmp_path / "o.wav"), *extra), capsys, *words)


def test_a_missing_voice_file(tmp_path, capsys, no_model):
    argv = synthesize(tmp_path, "--out", str(tmp_path / "o.wav"))
    argv[argv.index("--voice") + 1] = str(tmp_path / "nobody.wav")
    refused(argv, capsys, "nobody.wav")


def test_serve_refuses_an_open_address_without_a_key(tmp_path, capsys, no_model, monkeypatch):
    monkeypatch.delenv("INDEXTTS_FAST_API_KEY", raising=False)
    refused(["serve", "--model-dir", str(tmp_path), "--host", "0.0.0.0"], capsys, "--api-key", "--allow-open")
    refused(["serve", "--model-dir", str(tmp_path), "--port", "70000"], capsys, "port")
