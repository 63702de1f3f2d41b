"""Parity with the official implementation: run a reference folder's goldens against our code.

A reference folder (like ../shared/reference/tiny) holds `goldens/<stage>.json` manifests and
`goldens/<stage>.safetensors` tensors; a text folder holds `cases.jsonl` and `goldens/text.jsonl`.
Each stage has a checker module in this package with `check(ref_dir) -> Iterable[CaseResult]`.
"""

from __future__ import annotations

import importlib
import json
import math
import traceback
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Optional

from typing import TYPE_CHECKING

from ..errors import IndexTTSFastError

if TYPE_CHECKING:
    import torch

# stage name -> checker module (inside this package); order = the order stages run in.
STAGES = {
    "text": "text",
    "gpt": "gpt",
    "frontend": "frontend",
    "s2mel": "s2mel",
    "vocoder": "vocoder",
    "e2e": "e2e",
}


@dataclass(frozen=True)
class CaseResult:
    stage: str
    name: str
    max_abs_error: float
    tolerance: float
    passed: bool
    detail: str = ""

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        err = f"{self.max_abs_error:.3g}" if math.isfinite(self.max_abs_error) else str(self.max_abs_error)
        tail = f"  {self.detail}" if self.detail else ""
        return f"{status}  {self.stage:<8} {self.name:<48} max_abs_err={err:<10} tol={self.tolerance:.3g}{tail}"


def compare(stage: str, name: str, got, want, atol: float = 0.0, rtol: float = 0.0) -> CaseResult:
    """Compare two tensors (or nested lists / numbers): exact when atol == rtol == 0.

    The check is |got - want| <= atol + rtol * |want| elementwise, NaN/inf must sit in the same places
    with the same sign (so -inf patterns of logits processors compare exactly).
    """
    import torch

    got_t = torch.as_tensor(got).detach().cpu()
    want_t = torch.as_tensor(want).detach().cpu()
    if tuple(got_t.shape) != tuple(want_t.shape):
        return CaseResult(stage, name, math.inf, atol, False,
                          f"shape {tuple(got_t.shape)} != golden {tuple(want_t.shape)}")
    if got_t.numel() == 0:
        return CaseResult(stage, name, 0.0, atol, True)
    g, w = got_t.double(), want_t.double()
    finite = torch.isfinite(w)
    same_nonfinite = bool(torch.equal(g[~finite].nan_to_num(0.0, 1.0, -1.0), w[~finite].nan_to_num(0.0, 1.0, -1.0))) \
        and bool(torch.isfinite(g[finite]).all())
    diff = (g[finite] - w[finite]).abs()
    max_err = float(diff.max()) if diff.numel() else 0.0
    bound = atol + rtol * w[finite].abs()
    passed = same_nonfinite and bool((diff <= bound).all())
    detail = "" if same_nonfinite else "non-finite values differ"
    if not passed and atol == 0 and rtol == 0 and diff.numel():
        mismatch = int((diff > 0).sum())
        detail = (detail + "; " if detail else "") + f"{mismatch} of {diff.numel()} elements differ"
    return CaseResult(stage, name, max_err, atol, passed, detail)


def check_fact(stage: str, name: str, ok: bool, detail: str = "") -> CaseResult:
    """A yes/no check (an exact equality of non-tensor data, a warning that must be raised...)."""
    return CaseResult(stage, name, 0.0 if ok else math.inf, 0.0, ok, "" if ok else detail)


class Goldens:
    """One stage's manifest and tensors of a reference folder."""

    def __init__(self, ref_dir: str | Path, stage: str):
        self.ref_dir = Path(ref_dir)
        self.stage = stage
        self.manifest_path = self.ref_dir / "goldens" / f"{stage}.json"
        self.tensor_path = self.ref_dir / "goldens" / f"{stage}.safetensors"
        if not self.manifest_path.is_file():
            raise IndexTTSFastError(f"{self.manifest_path} not found: not a reference folder for stage {stage}")

    @cached_property
    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    @cached_property
    def tensors(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.tensor_path))

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.tensor_path.name} has no tensor {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.tensors


def available_stages(ref_dir: str | Path) -> list[str]:
    """Stages whose goldens exist in the folder, in run order."""
    ref = Path(ref_dir)
    present = []
    for stage in STAGES:
        if stage == "text":
            if (ref / "goldens" / "text.jsonl").is_file() and (ref / "cases.jsonl").is_file():
                present.append(stage)
        elif (ref / "goldens" / f"{stage}.json").is_file():
            present.append(stage)
    return present


def _checker(stage: str) -> Callable[[Path], Iterable[CaseResult]]:
    module = importlib.import_module(f"{__name__}.{STAGES[stage]}")
    return module.check


def run(ref_dir: str | Path, stages: Optional[Iterable[str]] = None,
        emit: Callable[[str], None] = print) -> tuple[int, int]:
    """Run the checkers, emit one line per case and the summary; return (passed, failed)."""
    ref = Path(ref_dir)
    if not ref.is_dir():
        raise IndexTTSFastError(f"reference folder not found: {ref}")
    present = available_stages(ref)
    wanted = list(stages) if stages else present
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise IndexTTSFastError(f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGES)}")
    missing = [s for s in wanted if s not in present]
    if missing:
        raise IndexTTSFastError(f"{ref} has no goldens for stage(s) {', '.join(missing)} (found: {', '.join(present) or 'none'})")
    if not wanted:
        raise IndexTTSFastError(f"{ref} holds no goldens (expected goldens/<stage>.json or cases.jsonl + goldens/text.jsonl)")
    passed = failed = 0
    for stage in wanted:
        try:
            for r in _checker(stage)(ref):  # checkers are generators: lines appear as cases finish
                emit(r.line())
                passed += r.passed
                failed += not r.passed
        except Exception as exc:  # a crash fails the stage, reported, never hidden
            traceback.print_exc()
            emit(CaseResult(stage, "<stage crashed>", math.inf, 0.0, False, f"{type(exc).__name__}: {exc}").line())
            failed += 1
    emit(f"{passed} passed, {failed} failed")
    return passed, failed
