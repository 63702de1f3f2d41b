"""The emotion-vector path of infer_v2 (`emo_vector=[8 weights]`): SPEC-gpt.md §5.3.

Eight weights (happy, angry, sad, afraid, disgusted, melancholic, surprised, calm) pick one row per emotion
group of the folder's emotion matrix (feat2.pt), the row whose speaker-style row (feat1.pt) is nearest by
cosine to the CAMPPlus style of the speaker (or a random one), and mix them:
emovec = Σ w_k·row_k + (1 − Σ w_k)·merge_emovec(spk, spk, 1.0).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .checkpoint import load_torch_file
from .config import ModelFolder
from .errors import ModelFolderError, OptionError

EMOTIONS = ("happy", "angry", "sad", "afraid", "disgusted", "melancholic", "surprised", "calm")


@dataclass(frozen=True)
class EmotionMatrices:
    """feat1.pt (speaker-style rows, (R, 192)) and feat2.pt (emotion rows, (R, D)), grouped by `emo_num`."""

    spk_matrix: torch.Tensor
    emo_matrix: torch.Tensor
    emo_num: tuple[int, ...]

    def __post_init__(self):
        rows = sum(self.emo_num)
        if len(self.emo_num) != len(EMOTIONS) or min(self.emo_num) < 1:
            raise ModelFolderError(f"emo_num must be {len(EMOTIONS)} positive group sizes, got {list(self.emo_num)}")
        for name, m in (("spk_matrix", self.spk_matrix), ("emo_matrix", self.emo_matrix)):
            if not isinstance(m, torch.Tensor) or m.dim() != 2 or m.shape[0] != rows:
                got = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
                raise ModelFolderError(f"{name} must be a ({rows}, N) tensor (emo_num sums to {rows}), got {got}")

    @classmethod
    def from_folder(cls, folder: Union[ModelFolder, str, Path]) -> "EmotionMatrices":
        folder = folder if isinstance(folder, ModelFolder) else ModelFolder(folder)
        # The official files are leaf tensors saved with requires_grad=True: detach them.
        spk = load_torch_file(folder.spk_matrix)
        emo = load_torch_file(folder.emo_matrix)
        return cls(_tensor(spk, folder.spk_matrix), _tensor(emo, folder.emo_matrix), tuple(folder.config.emo_num))

    def groups(self, matrix: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(matrix, list(self.emo_num))


def _tensor(obj: object, path: Path) -> torch.Tensor:
    if not isinstance(obj, torch.Tensor):
        raise ModelFolderError(f"{path} should hold one tensor, found {type(obj).__name__}")
    return obj.detach().float()


def scale_weights(weights: Sequence[float], alpha: float) -> list[float]:
    """infer_v2's emo_alpha on a vector: s = clamp(alpha, 0, 1); if s != 1 each w := int(w·s·10000) / 10000
    (Python float products, truncation toward zero, e.g. 0.35·0.7 -> 0.2449)."""
    s = max(0.0, min(1.0, float(alpha)))
    if s == 1.0:
        return [float(w) for w in weights]
    return [int(float(w) * s * 10000) / 10000 for w in weights]


@dataclass(frozen=True)
class EmotionMix:
    """The result of the row selection. Unpacks as `(emovec_mat, total)` for `mat + (1 - total)·base`."""

    emovec_mat: torch.Tensor      # (1, D) float32: Σ w_k·row_k
    total: torch.Tensor           # 0-dim float32: Σ w_k (summed as the official float32 tensor)
    weights: torch.Tensor         # (8,) float32 after alpha scaling
    indices: tuple[int, ...]      # selected row per group (index inside the group)
    similarities: Optional[torch.Tensor]  # (R,) cosine similarities of every style row (None when random)
    rows: torch.Tensor            # (8, D) selected emotion rows

    def __iter__(self):
        return iter((self.emovec_mat, self.total))

    def apply(self, base_emovec: torch.Tensor) -> torch.Tensor:
        """emovec_mat + (1 − Σw)·base, with base = merge_emovec(spk, spk-as-emotion, alpha=1.0)."""
        return self.emovec_mat + (1 - self.total) * base_emovec


def emovec_from_weights(weights8: Sequence[float], style: torch.Tensor, matrices: EmotionMatrices,
                        alpha: float = 1.0, use_random: bool = False,
                        rng: Optional[random.Random] = None) -> EmotionMix:
    """Select one emotion row per group and mix them with the (alpha-scaled) weights.

    style: (1, 192) CAMPPlus style of the speaker audio. Default selection: argmax of the cosine similarity
    (eps 1e-8, first index on ties) between `style` and the group's speaker-style rows; `use_random`: one
    `rng.randint(0, n_k − 1)` per group in order (Python's global `random` when rng is None, as infer_v2).
    """
    try:
        raw = [float(w) for w in weights8]
    except (TypeError, ValueError):
        raise OptionError(f"emotion weights must be {len(EMOTIONS)} numbers, got {weights8!r}") from None
    if len(raw) != len(EMOTIONS) or not all(torch.isfinite(torch.tensor(raw))):
        raise OptionError(f"emotion weights must be {len(EMOTIONS)} finite numbers ({', '.join(EMOTIONS)}), got {raw}")
    weights = torch.tensor(scale_weights(raw, alpha), dtype=torch.float32)
    emo_rows = matrices.groups(matrices.emo_matrix)
    similarities = None
    if use_random:
        r = rng if rng is not None else random
        indices = tuple(r.randint(0, n - 1) for n in matrices.emo_num)
    else:
        if not isinstance(style, torch.Tensor) or tuple(style.shape) != (1, matrices.spk_matrix.shape[1]):
            got = tuple(style.shape) if isinstance(style, torch.Tensor) else type(style).__name__
            raise OptionError(f"style must be a (1, {matrices.spk_matrix.shape[1]}) tensor, got {got}")
        sims = [F.cosine_similarity(style.float().to(group.device), group.float(), dim=1) for group in matrices.groups(matrices.spk_matrix)]
        indices = tuple(int(torch.argmax(s)) for s in sims)
        similarities = torch.cat(sims)
    rows = torch.stack([group[i] for group, i in zip(emo_rows, indices)])
    weights = weights.to(rows.device)
    emovec_mat = (weights.unsqueeze(1) * rows).sum(0).unsqueeze(0)
    return EmotionMix(emovec_mat, torch.sum(weights), weights, indices, similarities, rows)
