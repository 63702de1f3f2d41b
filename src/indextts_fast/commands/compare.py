"""Speak the same texts (one per line) in the same voices with several presets or option sets, the same
seeds for each text; write every clip, manifest.json with per-clip measures (duration, RTF, codes, cut at
max_mel_tokens, silence, clipping, loudness; with the `eval` extra also speaker similarity, DNSMOS and
English WER), a summary table per variant and a plot. Rate the clips blind with `indextts-fast listen OUT`.

Variants: --presets a,b,... and/or --variant NAME=PRESET[:field=value,...] (repeatable), e.g.
--variant steps8=aggressive:diffusion_steps=8. Field overrides such as --max-mel-tokens apply to all."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import add_engine_arguments, add_settings_arguments, open_engine, settings_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_engine_arguments(p)
    p.add_argument("--presets", default="", help="comma-separated preset names, e.g. baseline,aggressive")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=PRESET[:field=value,...]",
                   help="an option set to compare (repeatable)")
    p.add_argument("--text-file", required=True, metavar="FILE", help="texts, one per line (any language)")
    p.add_argument("--voice", action="append", required=True, metavar="AUDIO", help="a prompt clip (repeatable)")
    p.add_argument("--out", required=True, metavar="DIR", help="new folder for clips, manifest.json, summary.png")
    p.add_argument("--seed", type=int, default=0, help="text i uses seed+i for every voice and variant")
    p.add_argument("--no-extras", action="store_true",
                   help="skip speaker similarity, DNSMOS and WER even where the eval extra is installed")
    p.add_argument("--warmup", type=int, default=1, help="untimed syntheses before the first measured clip")
    p.add_argument("--no-plot", action="store_true")
    add_settings_arguments(p)
    p.set_defaults(preset=None)


def run(args: argparse.Namespace) -> int:
    from ..compare import format_table, plot, read_texts, run_compare, variants_from
    from ..errors import OptionError

    if args.preset is not None:
        raise OptionError("compare takes --presets a,b,... (or --variant), not --preset")
    variants = variants_from([n.strip() for n in args.presets.split(",") if n.strip()], args.variant)
    common = settings_overrides(args)
    for v in variants:
        v.settings(common)  # validate before loading the model
    texts = read_texts(args.text_file)
    out = Path(args.out)
    engine = open_engine(args)
    manifest = run_compare(engine, texts, args.voice, variants, out, seed=args.seed, common=common,
                           extras=not args.no_extras, model_dir=args.model_dir, warmup=args.warmup)
    print(format_table(manifest))
    n = len(manifest["clips"])
    print(f"wrote {n} clips and {out / 'manifest.json'}", file=sys.stderr)
    if not args.no_plot:
        print(f"wrote {plot(manifest, out / 'summary.png')}", file=sys.stderr)
    print(f"rate them blind: indextts-fast listen {out}", file=sys.stderr)
    return 0
