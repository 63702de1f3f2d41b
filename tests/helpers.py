"""Small helpers shared by the test modules."""

import torch


def corrupt_state(state: dict, corruption: str, key: str, extra_key: str) -> str:
    """Make a state dict unloadable in one of three ways and return the key the loader must name:
    "missing" deletes `key`, "extra" adds `extra_key`, "reshaped" drops the last row/column of `key`."""
    if corruption == "missing":
        del state[key]
        return key
    if corruption == "extra":
        state[extra_key] = torch.zeros(2)
        return extra_key
    if corruption == "reshaped":
        t = state[key]
        state[key] = (t[..., :-1] if t.dim() > 1 else t[:-1]).contiguous()
        return key
    raise ValueError(corruption)
