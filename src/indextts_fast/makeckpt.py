"""Write a random-weight IndexTTS2 model folder in the official on-disk layout (config.yaml, gpt.pth,
s2mel.pth, hf_cache/..., the real small files of the release). Full size is for timing: the audio of a
random model is noise, and timings do not depend on weight values."""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Callable

import yaml


ASSETS = "indextts2"  # package data: the small files of the real release (with its licence)
SMALL_FILES = ["bpe.model", "MODEL_LICENSE.txt"]

# Each stage writes its own files: module path -> function(folder: ModelFolder, seed: int) -> None.
# A writer builds our module from the folder's config, randomises it (checkpoint.randomize_) and saves it in the
# official format. Listed in the order they are written.
WRITERS: dict[str, str] = {
    "gpt": "indextts_fast.models.gpt:write_random_checkpoint",
    "semantic_codec": "indextts_fast.models.codec:write_random_checkpoint",
    "campplus": "indextts_fast.models.campplus:write_random_checkpoint",
    "w2v_bert": "indextts_fast.features:write_random_checkpoint",
    "s2mel": "indextts_fast.models.s2mel:write_random_checkpoint",
    "bigvgan": "indextts_fast.models.bigvgan:write_random_checkpoint",
}

# Sizes of the tiny model (everything else as in the real config). Widths the official code hard-codes
# go to tiny_overrides.json, exactly as in the reference sets.
TINY_CONFIG = {
    "gpt": {"model_dim": 64, "heads": 4, "layers": 2,
            "condition_module": {"output_size": 16, "linear_units": 48, "attention_heads": 2, "num_blocks": 2},
            "emo_condition_module": {"output_size": 16, "linear_units": 32, "attention_heads": 1, "num_blocks": 1,
                                     "perceiver_mult": 0.05}},
    "semantic_codec": {"hidden_size": 32, "vocos_dim": 32, "vocos_intermediate_dim": 64, "vocos_num_layers": 2},
    "s2mel": {"length_regulator": {"channels": 40, "in_channels": 32, "content_codebook_size": 64},
              "DiT": {"hidden_dim": 64, "num_heads": 4, "depth": 3, "content_dim": 40, "content_codebook_size": 64},
              "wavenet": {"hidden_dim": 64, "num_layers": 3}},
}
TINY_OVERRIDES = {
    "gpt_conditioning_input_dim": 32,
    "s2mel_gpt_layer": {"in_features": 64, "hidden": [256, 128], "out_features": 32},
    "campplus_ctor": {"feat_dim": 80, "embedding_size": 192, "growth_rate": 4, "bn_size": 2, "init_channels": 16},
    "w2v_bert_hidden_layer_used": 17,
}


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def asset(name: str) -> Path:
    return Path(str(resources.files("indextts_fast") / "assets" / ASSETS / name))


def make_checkpoint(out: str | Path, size: str = "tiny", seed: int = 0,
                    only: list[str] | None = None, progress: Callable[[str], None] = print) -> Path:
    """Write a complete random model folder at `out` and return its path."""
    import torch

    from .config import ModelFolder
    from .errors import OptionError

    if size not in ("tiny", "full"):
        raise OptionError(f"size must be 'tiny' or 'full', not {size!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(asset("config.yaml").read_text(encoding="utf-8"))
    if size == "tiny":
        config = _merge(config, TINY_CONFIG)
        (out / "tiny_overrides.json").write_text(json.dumps(
            {**TINY_OVERRIDES, "note": "made by indextts-fast make-checkpoint --size tiny"}, indent=2) + "\n")
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    for name in SMALL_FILES:
        shutil.copyfile(asset(name), out / name)
    folder = ModelFolder(out)
    gen = torch.Generator().manual_seed(seed)
    if size == "full":
        for name in ("feat1.pt", "feat2.pt", "wav2vec2bert_stats.pt"):
            shutil.copyfile(asset(name), out / name)
    else:  # the real matrices have the real widths; a tiny model gets random ones of its own width
        dim, width = folder.config.gpt.model_dim, folder.overrides.gpt_conditioning_input_dim
        rows = sum(folder.config.emo_num)
        torch.save(torch.randn(rows, 192, generator=gen), out / folder.config.spk_matrix)
        torch.save(torch.randn(rows, dim, generator=gen), out / folder.config.emo_matrix)
        torch.save({"mean": 0.1 * torch.randn(width, generator=gen), "var": 0.5 + torch.rand(width, generator=gen)},
                   out / folder.config.w2v_stat)
    (out / "hf_cache").mkdir(exist_ok=True)
    for i, (stage, target) in enumerate(WRITERS.items()):
        if only and stage not in only:
            continue
        module_name, func = target.split(":")
        progress(f"[{i + 1}/{len(WRITERS)}] {stage} ...")
        writer = getattr(importlib.import_module(module_name), func)
        writer(folder, seed + 1000 * (i + 1))
    progress(f"wrote {size} random model folder {out}")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="folder to write (created if needed)")
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", action="append", choices=list(WRITERS), help="write only these stages' weights")


def run(args: argparse.Namespace) -> int:
    make_checkpoint(args.out, args.size, args.seed, args.only)
    return 0
