"""Shared fixtures. Golden-parity tests read the reference sets in ../shared/reference (or
$INDEXTTS_FAST_REFERENCE) and fail loudly when they are absent: parity is how we know we are right."""

from __future__ import annotations

import os
from pathlib import Path

import json

import indextts_fast  # noqa: F401  (first: it sets up oneMKL before torch loads; see mkl_vendor.py)
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("INDEXTTS_FAST_REFERENCE", REPO.parent / "shared" / "reference"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"reference data missing: {path} (set INDEXTTS_FAST_REFERENCE to the shared/reference folder)",
                    pytrace=False)
    return path


@pytest.fixture(scope="session")
def reference_root() -> Path:
    return _require(REFERENCE)


@pytest.fixture(scope="session")
def tiny_dir(reference_root) -> Path:
    """The public tiny reference set (a model folder in the official layout, with goldens)."""
    return _require(reference_root / "tiny")


@pytest.fixture(scope="session")
def text_ref_dir(reference_root) -> Path:
    return _require(reference_root / "text")


@pytest.fixture(scope="session")
def assets_dir(reference_root) -> Path:
    return _require(reference_root / "indextts2-assets")


@pytest.fixture(scope="session")
def frontend_manifest(tiny_dir) -> dict:
    return json.loads((tiny_dir / "goldens" / "frontend.json").read_text())


@pytest.fixture(scope="session")
def frontend_goldens(tiny_dir) -> dict:
    return load_file(str(tiny_dir / "goldens" / "frontend.safetensors"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is as fast and immune to the stalls of a busy shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
