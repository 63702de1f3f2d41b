"""Time one stage on a full-size random model and print a table (and JSON with --json).

Benchmarks report what this machine can do next to what the code achieves (memory-bandwidth floor for
the GPT decode step, fraction of measured fp32 matmul peak for the DiT and vocoder), so a figure can be
judged on its own. Compare speeds only as ratios measured in the same run: these machines are noisy."""

from __future__ import annotations

import argparse
import importlib

# bench name -> module in this package with add_arguments(parser) and run(args) -> dict
BENCHES = {
    "gpt": "gpt",
    "s2mel": "s2mel",
    "vocoder": "vocoder",
    "text": "text",
    "serve": "serve",
    "batch": "batch",
    "sampling": "sampling",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="STAGE", required=True)
    for name, module_name in BENCHES.items():
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module_name}":
                raise
            continue  # not written yet
        q = sub.add_parser(name, help=(module.__doc__ or name).strip().splitlines()[0],
                           description=(module.__doc__ or name).strip())
        q.add_argument("--json", metavar="FILE", help="also write the results as JSON")
        q.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
        q.add_argument("--force-precision", action="store_true",
                       help="time modes this CPU can only emulate too (refused otherwise; see `indextts-fast doctor`)")
        module.add_arguments(q)
        q.set_defaults(_bench=module.run)


def run(args: argparse.Namespace) -> int:
    import torch

    from .common import write_json

    torch.set_num_threads(args.threads)
    result = args._bench(args)
    if args.json:
        write_json(args.json, result)
    return 0
