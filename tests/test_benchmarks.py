"""The stage benches run end to end on the tiny folder and report every precision side by side."""

import json

import pytest

from indextts_fast.cli import main


@pytest.mark.parametrize("bench,extra", [("s2mel", ["--codes", "6", "--steps", "1", "--repeat", "1"]),
                                         ("vocoder", ["--seconds", "0.2", "--repeat", "1"])])
def test_stage_bench_reports_fp32_and_bf16(tiny_dir, tmp_path, capsys, bench, extra):
    out = tmp_path / f"{bench}.json"
    assert main(["bench", bench, "--model-dir", str(tiny_dir), "--threads", "1", *extra, "--json", str(out)]) == 0
    cases = json.loads(out.read_text())["cases"]
    assert [c["precision"] for c in cases] == ["fp32", "bf16"]
    assert cases[0]["vs_fp32"] == 1.0 and cases[1]["vs_fp32"] > 0
    assert "bf16" in capsys.readouterr().out


def test_stage_bench_rejects_an_unknown_precision(tiny_dir, capsys):
    assert main(["bench", "s2mel", "--model-dir", str(tiny_dir), "--precision", "int4"]) != 0
    assert "--precision 'int4'" in capsys.readouterr().err
