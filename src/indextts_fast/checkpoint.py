"""Reading official checkpoint files and loading them strictly into our modules."""

from __future__ import annotations

import math
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


# ---- weight norm (the official files use torch's old `weight_norm`, dim 0) -----------------------------
def weight_norm_layout(module: nn.Module) -> nn.Module:
    """Give `module` the on-disk layout of `torch.nn.utils.weight_norm(module)`: `weight` is replaced by
    `weight_g` (the norm over every axis but the first, shape (out, 1, ...)) and `weight_v` (the direction).
    The module can only be loaded/saved in this state; `fold_weight_norm` turns it back into a plain one."""
    w = module._parameters.pop("weight")
    g = torch.norm_except_dim(w.detach(), 2, 0)
    module.register_parameter("weight_g", nn.Parameter(g))
    module.register_parameter("weight_v", nn.Parameter(w.detach()))
    return module


def fold_weight_norm(root: nn.Module) -> nn.Module:
    """Replace every (`weight_g`, `weight_v`) pair under `root` by the plain `weight` = g·v/‖v‖, computed
    exactly as torch's `remove_weight_norm` does (`torch._weight_norm(v, g, 0)`)."""
    for module in root.modules():
        if "weight_g" in module._parameters and "weight_v" in module._parameters:
            g, v = module._parameters.pop("weight_g"), module._parameters.pop("weight_v")
            with torch.no_grad():
                w = torch._weight_norm(v, g, 0)
            module.register_parameter("weight", nn.Parameter(w, requires_grad=False))
    return root


def randomize_(module, seed: int) -> None:
    """Seeded random values like the reference sets': weights ~N(0, 1/fan_in), 1-D scales 1 ± 0.1,
    biases ~0.1·N(0, 1), embeddings ~0.5·N(0, 1). Buffers (positional tables, BN statistics) are kept."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if p.dim() <= 1:
                is_scale = leaf in ("weight", "gamma", "g", "scale") or "norm" in name
                p.copy_(1.0 + 0.1 * noise if is_scale and leaf != "bias" else 0.1 * noise)
            elif "emb" in name and p.dim() == 2:
                p.copy_(0.5 * noise)
            else:
                fan_in = p[0].numel()
                p.copy_(noise / math.sqrt(max(fan_in, 1)))
