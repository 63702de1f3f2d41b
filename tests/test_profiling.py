import pytest

from indextts_fast.profiling import STAGES, StageTimer, Timings, run_statistics


def test_stage_timer_accumulates_per_stage_and_segment():
    timer = StageTimer()
    with timer.stage("text"):
        pass
    for _ in range(2):
        timer.new_segment()
        with timer.stage("gpt_gen"):
            sum(range(20000))
    t = timer.finish(audio_seconds=2.0, codes=10)
    assert len(t.segments) == 2
    assert t.stages["gpt_gen"] == pytest.approx(sum(s["gpt_gen"] for s in t.segments))
    assert t.stages["gpt_gen"] > 0 and t.total >= sum(t.stages.values())
    assert t.rtf == pytest.approx(t.total / 2.0)
    with pytest.raises(KeyError):
        with timer.stage("nope"):
            pass


def test_run_statistics():
    runs = []
    for total, gen in ((2.0, 1.0), (4.0, 3.0)):
        t = Timings()
        t.stages["gpt_gen"] = gen
        t.total, t.audio_seconds, t.codes = total, 1.0, 50
        runs.append(t)
    s = run_statistics(runs)
    assert s["runs"] == 2 and s["total"]["mean"] == 3.0
    assert s["stages"]["gpt_gen"] == {"mean": 2.0, "min": 1.0, "max": 3.0, "share": pytest.approx(2 / 3)}
    assert s["rtf"] == 3.0 and set(s["stages"]) == set(STAGES)
