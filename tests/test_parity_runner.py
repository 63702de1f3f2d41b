import math

import pytest
import torch

from indextts_fast.errors import IndexTTSFastError
from indextts_fast.parity import available_stages, compare, run


def test_compare_exact_and_tolerance():
    assert compare("s", "c", torch.tensor([1, 2]), torch.tensor([1, 2])).passed
    r = compare("s", "c", torch.tensor([1, 3]), torch.tensor([1, 2]))
    assert not r.passed and r.max_abs_error == 1 and "1 of 2" in r.detail
    assert compare("s", "c", torch.tensor([1.0]), torch.tensor([1.00005]), atol=1e-4).passed
    assert not compare("s", "c", torch.tensor([1.0]), torch.tensor([1.001]), atol=1e-4).passed
    assert not compare("s", "c", torch.zeros(2), torch.zeros(3)).passed


def test_compare_nonfinite_pattern_must_match():
    inf = math.inf
    assert compare("s", "c", torch.tensor([-inf, 1.0]), torch.tensor([-inf, 1.0])).passed
    assert not compare("s", "c", torch.tensor([0.0, 1.0]), torch.tensor([-inf, 1.0]), atol=1).passed
    assert not compare("s", "c", torch.tensor([-inf, 1.0]), torch.tensor([0.0, 1.0]), atol=1).passed
    assert not compare("s", "c", torch.tensor([inf]), torch.tensor([-inf])).passed


def test_runner_discovers_stages(tiny_dir, text_ref_dir):
    assert {"gpt", "frontend", "s2mel", "vocoder", "e2e"} <= set(available_stages(tiny_dir))
    assert available_stages(text_ref_dir) == ["text"]


def test_runner_errors(tmp_path, tiny_dir):
    with pytest.raises(IndexTTSFastError, match="not found"):
        run(tmp_path / "missing")
    with pytest.raises(IndexTTSFastError, match="holds no goldens"):
        run(tmp_path)
    with pytest.raises(IndexTTSFastError, match="no goldens for stage"):
        run(tiny_dir, ["text"])
