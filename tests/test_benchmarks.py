"""The stage benches run end to end on the tiny folder and report every precision side by side."""

import json

import pytest

from indextts_fast.cli import main
from indextts_fast.cpu import detect


@pytest.mark.parametrize("bench,extra", [("s2mel", ["--codes", "6", "--steps", "1", "--repeat", "1"]),
                                         ("vocoder", ["--seconds", "0.2", "--repeat", "1"])])
def test_stage_bench_reports_fp32_and_bf16(tiny_dir, tmp_path, capsys, bench, extra):
    out = tmp_path / f"{bench}.json"
    # bf16 is emulated on CPUs without AVX512-BF16/AMX: refused there unless forced (then a small peak probe)
    force = [] if detect().native_bf16 else ["--force-precision"]
    assert main(["bench", bench, "--model-dir", str(tiny_dir), "--threads", "1", *extra, "--precision", "fp32,bf16",
                 *force, "--json", str(out)]) == 0
    cases = json.loads(out.read_text())["cases"]
    assert [c["precision"] for c in cases] == ["fp32", "bf16"]
    assert cases[0]["vs_fp32"] == 1.0 and cases[1]["vs_fp32"] > 0
    assert "bf16" in capsys.readouterr().out


def test_stage_bench_rejects_an_unknown_precision(tiny_dir, capsys):
    assert main(["bench", "s2mel", "--model-dir", str(tiny_dir), "--precision", "int4"]) != 0
    assert "--precision 'int4'" in capsys.readouterr().err


def test_stage_bench_refuses_an_emulated_mode_unless_forced(tiny_dir, capsys):
    if detect().native_bf16:
        pytest.skip("bf16 is native here")
    assert main(["bench", "vocoder", "--model-dir", str(tiny_dir), "--precision", "bf16"]) == 2
    assert "AVX512-BF16" in capsys.readouterr().err


def test_s2mel_bench_times_the_int8_dit_against_its_own_peak(tiny_dir, tmp_path):
    out = tmp_path / "s2mel.json"
    force = [] if detect().native_bf16 and detect().vnni else ["--force-precision"]
    assert main(["bench", "s2mel", "--model-dir", str(tiny_dir), "--threads", "1", "--codes", "6", "--steps", "1",
                 "--repeat", "1", "--precision", "int8dyn,fp32", *force, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    cases = result["cases"]
    assert [c["precision"] for c in cases] == ["fp32", "int8dyn"]          # fp32 first, whatever the order given
    assert cases[0]["gflop_per_step"] == cases[1]["gflop_per_step"] > 0   # counted once on the fp32 model
    assert result["matmul_peak_gflops"]["int8dyn"] > 0 and 0 < cases[1]["fraction_of_peak"]


def test_serve_bench_runs_bounded_levels_with_no_errors(tiny_dir, tmp_path):
    out = tmp_path / "serve.json"
    assert main(["bench", "serve", "--model-dir", str(tiny_dir), "--concurrency", "1", "3", "--requests", "4",
                 "--codes", "8", "--steps", "2", "--json", str(out), "--plot", str(tmp_path / "serve.png")]) == 0
    result = json.loads(out.read_text())
    assert [lv["concurrency"] for lv in result["levels"]] == [1, 3]
    assert all(lv["ok"] == 4 and lv["errors"] == 0 and lv["p50_s"] > 0 for lv in result["levels"])
    assert result["rss_start_bytes"] > 0 and (tmp_path / "serve.png").stat().st_size > 1000


def test_batch_bench_reports_every_level_and_mode(tiny_dir, tmp_path):
    """bench batch on the tiny model: the batcher levels (rates and ratios to c = 1 from the same run, seconds per
    phase), the GPT alone, and the newcomer's first audio under load."""
    out = tmp_path / "batch.json"
    common = ["bench", "batch", "--model-dir", str(tiny_dir), "--threads", "1", "--precision", "fp32",
              "--preset", "extreme", "--codes", "12"]
    assert main([*common, "--concurrency", "1", "3", "--json", str(out), "--plot", str(tmp_path / "b.png")]) == 0
    levels = json.loads(out.read_text())["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 3] and levels[0]["codes_per_s_x"] == 1.0
    assert levels[1]["codes"] == 3 * 12 and levels[1]["rows_per_call"] > 1          # the 3 shared decode calls
    assert all(lv["audio_s_per_s"] > 0 and lv["decode_s"] > 0 and lv["s2mel_s"] > 0 for lv in levels)
    assert main([*common, "--concurrency", "1", "2", "--gpt-only", "--repeat", "1", "--json", str(out)]) == 0
    assert [lv["codes_per_s"] > 0 for lv in json.loads(out.read_text())["levels"]] == [True, True]
    assert main([*common, "--concurrency", "3", "--newcomer", "--json", str(out)]) == 0
    late = json.loads(out.read_text())
    assert late["others"] == 2 and 0 < late["first_audio_alone_s"] and 0 < late["first_audio_loaded_s"]


def test_sampling_bench_times_both_ways_and_checks_the_picks(tmp_path, capsys):
    """bench sampling: torch's chain against ours per preset, from the same seeds; the picks and the generator
    states agree (the bench exits with an error otherwise), and a greedy preset is refused by name."""
    out = tmp_path / "sampling.json"
    assert main(["bench", "sampling", "--steps", "4", "--vocab", "600", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["presets"]
    assert [r["preset"] for r in rows] == ["baseline", "aggressive", "conservative"]
    assert all(r["same"] and r["torch_us"] > 0 and r["ours_us"] > 0 for r in rows)
    with pytest.raises(SystemExit, match="'extreme' does not sample"):
        main(["bench", "sampling", "--steps", "2", "--presets", "extreme"])
