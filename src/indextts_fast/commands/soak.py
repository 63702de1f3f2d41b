"""Stability soak: N consecutive generations over built-in varied texts (mixed zh/en, short and long)
and voices; flags exceptions, NaN/Inf, silent or clipped output, duration outliers for the text length,
runs cut at max_mel_tokens, long internal silences and memory (RSS) growth. Writes a JSON report and a
summary; exits 1 when any anomaly of a kind not given in --allow occurred (a random-weight model such as
the tiny reference set is always cut and noisy: --allow cut,outlier,long_silence,clipped)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import add_engine_arguments, add_settings_arguments, data_folder, open_engine, settings_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..soak import KINDS, Limits

    add_engine_arguments(p)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--voice", action="append", default=[], metavar="AUDIO",
                   help="prompt clip (repeatable; default: the model folder's reference/*.wav, else a synthetic one)")
    p.add_argument("--report", required=True, metavar="FILE", help="JSON report to write")
    p.add_argument("--allow", default="", metavar="KIND,...",
                   help=f"anomaly kinds that do not fail the soak: {', '.join(KINDS)}")
    p.add_argument("--seed", type=int, default=0, help="run i uses seed+i")
    lim = p.add_argument_group("anomaly limits")
    d = Limits()
    lim.add_argument("--silent-db", type=float, default=d.silent_db, help="RMS below this (dBFS) is silent")
    lim.add_argument("--long-silence", type=float, default=d.long_silence_s, metavar="SECONDS")
    lim.add_argument("--clipped", type=float, default=d.clipped, metavar="SHARE", help="clipped share of samples")
    lim.add_argument("--rss-growth-mib", type=float, default=d.rss_growth_mib)
    lim.add_argument("--warmup", type=int, default=None, help="runs left out of the memory trend")
    add_settings_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..errors import OptionError
    from ..presets import resolve
    from ..soak import Limits, default_voices, format_summary, parse_allow, run_soak, write_report

    if args.runs < 1:
        raise OptionError("--runs must be >= 1")
    allow = parse_allow(args.allow)
    settings = resolve(args.preset, settings_overrides(args))
    voices = [Path(v) for v in args.voice] or default_voices(args.model_dir, data_folder(args))
    for v in voices:
        if not v.is_file():
            raise OptionError(f"voice file not found: {v}")
    limits = Limits(silent_db=args.silent_db, clipped=args.clipped, long_silence_s=args.long_silence,
                    rss_growth_mib=args.rss_growth_mib, warmup=args.warmup)
    engine = open_engine(args)
    report = run_soak(engine, args.runs, voices, settings, seed=args.seed, allow=allow, limits=limits)
    report["model_dir"] = str(args.model_dir)
    report["preset"] = args.preset
    path = write_report(report, args.report)
    print(format_summary(report))
    print(f"wrote {path}", file=sys.stderr)
    return 0 if report["ok"] else 1
