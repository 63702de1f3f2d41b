"""`indextts-fast doctor`: this machine's tier, kernels, native/emulated per mode, and auto's choice."""

import json

from indextts_fast.cli import main
from indextts_fast.cpu import detect
from indextts_fast.plan import MODES, STAGES, make_plan


def test_doctor_prints_and_writes_what_this_machine_runs(tmp_path, capsys):
    out = tmp_path / "doctor.json"
    assert main(["doctor", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    caps = detect()
    assert report["cpu"]["tier"] == caps.tier and f"tier       {caps.tier}" in text
    assert report["auto"] == make_plan("auto").as_dict()
    assert "auto       " + ", ".join(f"{s}={m}" for s, m in report["auto"].items()) in text
    assert set(report["modes"]) == set(MODES)
    for mode, stages in report["modes"].items():
        assert list(stages) == list(STAGES)
        for stage, verdict in stages.items():   # native exactly where the plan accepts the mode unforced
            assert (verdict == "native") == (not make_plan({stage: MODES[mode][stage]}, force=True).emulated)
    if not caps.native_bf16:
        assert "EMULATED: no AVX512-BF16 or AMX-BF16" in text
