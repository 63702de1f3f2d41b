"""Reading official checkpoint files and loading them strictly into our modules."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .errors import CheckpointError


def load_torch_file(path: str | Path) -> object:
    """torch.load with weights_only (the official files hold only tensors and containers)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, not a torch file...
        raise CheckpointError(f"cannot read {path} as a torch checkpoint: {exc}") from exc


def load_safetensors_file(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} as safetensors: {exc}") from exc


def state_dict_mismatches(module: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable list of missing, unexpected and mis-shaped keys (empty when they match)."""
    own = module.state_dict()
    problems = [f"missing key {k} {tuple(v.shape)}" for k, v in own.items() if k not in state]
    problems += [f"unexpected key {k}" for k in state if k not in own]
    problems += [
        f"key {k}: checkpoint shape {tuple(state[k].shape)} but the model needs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    return problems


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> nn.Module:
    """Copy `state` into `module`, refusing any missing, extra or mis-shaped key (naming it)."""
    problems = state_dict_mismatches(module, state)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} problems)" if len(problems) > 8 else "")
        raise CheckpointError(f"{source} does not fit the model built from the config: {shown}")
    own = module.state_dict()
    converted = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    # A module built on the meta device takes the loaded tensors as they are (no second copy in memory).
    on_meta = any(t.is_meta for t in own.values())
    module.load_state_dict(converted, strict=True, assign=on_meta)
    return module
