"""Command-line commands over the Python API (one module per command: add_arguments + run)."""

from __future__ import annotations

import argparse

from ..presets import FIELD_NAMES, Settings


def add_settings_arguments(p: argparse.ArgumentParser) -> None:
    """--preset plus one --<field> override per Settings field."""
    p.add_argument("--preset", default="baseline", help="named preset (see `indextts-fast presets`)")
    g = p.add_argument_group("overrides (any preset field)")
    defaults = Settings()
    for name in FIELD_NAMES:
        kind = type(getattr(defaults, name))
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            g.add_argument(flag, dest=name, type=_parse_bool, default=None, metavar="true|false")
        else:
            g.add_argument(flag, dest=name, type=kind, default=None)
    g.add_argument("--cfg", dest="cfg_rate", type=float, default=None, help="alias of --cfg-rate")


def settings_overrides(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in FIELD_NAMES if getattr(args, name, None) is not None}


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def add_store_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="DIR", default=None,
                   help="data folder of the speaker registry and caches (default: $INDEXTTS_FAST_HOME, "
                        "else the user's cache dir), or a postgresql://user@host/db URL to keep them in "
                        "PostgreSQL, shared by several machines (pip install 'indextts-fast[postgres]')")


def add_engine_arguments(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    p.add_argument("--model-dir", required=model_required, metavar="DIR", help="an IndexTTS2 model folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_precision_argument(p)
    add_store_argument(p)


def add_precision_argument(p: argparse.ArgumentParser, default: str = "fp32", many: bool = False) -> None:
    # Names as in plan.MODES / STAGES (plan.py is torch-free: parsing needs no torch).
    what = "comma-separated modes" if many else "a mode"
    p.add_argument("--precision", default=default, metavar="MODE" + ("[,MODE...]" if many else ""),
                   help=f"{what}: fp32 (exact parity, default), auto (per stage the fastest mode this CPU runs "
                        "natively within the fidelity thresholds: `indextts-fast doctor` shows it), bf16, int8 (GPT "
                        "int8 weights + the rest bf16), int8dyn (GPT int8 weights and activations + the rest bf16), "
                        "int8max (int8dyn with the S2Mel DiT's products in int8 too), or per stage "
                        "(gpt/s2mel/vocoder/conditioning) as STAGE=P joined by '+', e.g. gpt=int8+s2mel=bf16")
    p.add_argument("--force-precision", action="store_true",
                   help="run a mode this CPU can only emulate (e.g. bf16 without AVX512-BF16/AMX) instead of refusing it")


def parse_precision(text: str):
    """'bf16' -> 'bf16'; 'gpt=int8+s2mel=bf16' -> {'gpt': 'int8', 's2mel': 'bf16'} (plan.parse_precision)."""
    from ..plan import parse_precision as parse

    return parse(text)


def check_precisions(args: argparse.Namespace) -> list:
    """--precision (comma-separated) validated against this machine before anything loads: the plans."""
    from ..plan import make_plan

    device = getattr(args, "device", "cpu")
    return [make_plan(parse_precision(m), device=device, force=args.force_precision)
            for m in args.precision.split(",") if m.strip()]


def data_folder(args: argparse.Namespace):
    """Where a command keeps files (prompts, random models): --store when it is a folder, else the default data
    folder (a postgresql:// --store holds the registry only)."""
    from pathlib import Path

    from ..paths import default_store_dir

    store = getattr(args, "store", None)
    return Path(store) if store and "://" not in str(store) else default_store_dir()


def open_store(args: argparse.Namespace):
    from ..speakers import open_store as open_speaker_store

    return open_speaker_store(args.store)


def open_engine(args: argparse.Namespace, model_dir=None):
    from ..pipeline import Engine

    return Engine(model_dir or args.model_dir, device=args.device, threads=args.threads, store=open_store(args),
                  precision=parse_precision(getattr(args, "precision", "fp32")),
                  force_precision=getattr(args, "force_precision", False))
