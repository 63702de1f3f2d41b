"""Run every case of every manifest in a reference folder's goldens/ (or only --stage ones) against this
implementation; print one line per case and `N passed, M failed`; exit 1 on any failure."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from . import STAGES

    p.add_argument("reference_dir", metavar="REFERENCE_DIR", help="a folder laid out like shared/reference/tiny (or text/)")
    p.add_argument("--stage", action="append", choices=list(STAGES), metavar="NAME",
                   help=f"only this stage (repeatable): {', '.join(STAGES)}; default: every stage with goldens")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


def run(args: argparse.Namespace) -> int:
    import torch

    from . import run as run_parity

    if args.threads:
        torch.set_num_threads(args.threads)
    _, failed = run_parity(args.reference_dir, args.stage, emit=lambda line: print(line, flush=True))
    return 1 if failed else 0
