"""The emotion-vector path (SPEC-gpt §5.3): alpha truncation, row selection (cosine or random), the mix."""

import random

import pytest
import torch

from indextts_fast.emotion import EmotionMatrices, emovec_from_weights, scale_weights
from indextts_fast.errors import ModelFolderError, OptionError


def test_alpha_scaling_truncates_to_four_decimals():
    assert scale_weights([0.35, 0.1, 0.25, 0.05], 0.7) == [0.2449, 0.0699, 0.175, 0.0349]
    assert scale_weights([0.35], 1.0) == [0.35] and scale_weights([0.35], 3.0) == [0.35]   # clamped to 1
    assert scale_weights([0.35], -1.0) == [0.0]


@pytest.fixture(scope="module")
def matrices(tiny_dir):
    return EmotionMatrices.from_folder(tiny_dir)


def test_nearest_rows_and_mix(matrices):
    style = matrices.spk_matrix[3 + 5].unsqueeze(0) * 2.0      # group 1 (angry), row 5: cosine 1
    weights = [0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25]
    mix = emovec_from_weights(weights, style, matrices)
    assert mix.indices[1] == 5 and mix.similarities.shape == (sum(matrices.emo_num),)
    assert torch.allclose(mix.emovec_mat, 0.5 * matrices.emo_matrix[8] + 0.25 * mix.rows[7])
    mat, total = mix
    base = torch.randn(1, matrices.emo_matrix.shape[1])
    assert torch.allclose(mix.apply(base), mat + (1 - total) * base) and float(total) == 0.75


def test_random_rows_use_the_given_rng(matrices):
    a = emovec_from_weights([0.1] * 8, None, matrices, use_random=True, rng=random.Random(4))
    b = emovec_from_weights([0.1] * 8, None, matrices, use_random=True, rng=random.Random(4))
    assert a.indices == b.indices and a.similarities is None
    assert all(0 <= i < n for i, n in zip(a.indices, matrices.emo_num))


def test_bad_inputs(matrices):
    with pytest.raises(OptionError, match="8 finite numbers"):
        emovec_from_weights([0.1] * 7, torch.zeros(1, 192), matrices)
    with pytest.raises(OptionError, match="style must be"):
        emovec_from_weights([0.1] * 8, torch.zeros(192), matrices)
    with pytest.raises(ModelFolderError, match="emo_matrix"):
        EmotionMatrices(matrices.spk_matrix, matrices.emo_matrix[:5], matrices.emo_num)
