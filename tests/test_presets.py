import pytest

from indextts_fast.errors import OptionError
from indextts_fast.presets import FIELD_NAMES, PRESETS, Settings, presets_table, resolve


def test_baseline_is_the_official_default():
    s = resolve("baseline")
    assert (s.num_beams, s.do_sample, s.top_p, s.top_k, s.temperature) == (3, True, 0.8, 30, 0.8)
    assert (s.repetition_penalty, s.length_penalty, s.max_mel_tokens) == (10.0, 0.0, 1500)
    assert (s.diffusion_steps, s.cfg_rate, s.max_text_tokens_per_segment) == (25, 0.7, 120)


def test_named_presets():
    assert resolve("conservative").num_beams == 1 and resolve("conservative").top_k == 20
    assert resolve("conservative").temperature == 0.9 and resolve("conservative").diffusion_steps == 15
    assert resolve("aggressive").do_sample and resolve("aggressive").top_k == 10
    assert resolve("aggressive").diffusion_steps == 10
    assert not resolve("extreme").do_sample and resolve("extreme").diffusion_steps == 5


def test_overrides_apply_and_none_is_ignored():
    s = resolve("extreme", {"diffusion_steps": 8, "top_k": None})
    assert s.diffusion_steps == 8 and s.top_k == PRESETS["extreme"][0].top_k


@pytest.mark.parametrize("field, value", [
    ("num_beams", 0), ("top_p", 1.5), ("top_p", -0.1), ("temperature", 0.0), ("top_k", -1),
    ("diffusion_steps", 0), ("cfg_rate", -0.1), ("max_mel_tokens", 0), ("max_text_tokens_per_segment", 0),
    ("num_beams", 2.5), ("do_sample", "yes"),
])
def test_out_of_range_is_rejected_with_the_field_named(field, value):
    with pytest.raises(OptionError, match=field):
        resolve("baseline", {field: value})


def test_unknown_preset_and_field():
    with pytest.raises(OptionError, match="unknown preset 'fastest'.*baseline"):
        resolve("fastest")
    with pytest.raises(OptionError, match="unknown setting"):
        resolve("baseline", {"beams": 2})


def test_settings_are_immutable():
    with pytest.raises(Exception):
        Settings().num_beams = 2  # type: ignore[misc]


def test_table_lists_every_value():
    table = presets_table()
    for name in PRESETS:
        assert name in table
    for field in FIELD_NAMES:
        assert field in table
