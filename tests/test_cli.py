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
