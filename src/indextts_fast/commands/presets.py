"""List the named presets with every value they set."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from ..presets import PRESETS, presets_table

    if args.json:
        print(json.dumps({n: {"description": d, **s.as_dict()} for n, (s, d) in PRESETS.items()}, indent=2))
    else:
        print(presets_table())
    return 0
