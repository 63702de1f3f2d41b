"""Time every stage over N runs (after a warm-up), presets side by side, with each preset's speed-up
over the first one. Table in the terminal, --json and --plot (a stacked bar per preset).

Without --model-dir a full-size RANDOM model folder is used (made once with make-checkpoint and cached
in the data folder): its timings are real, its audio is noise. Random weights never emit the stop code,
so every segment then generates a fixed number of codes: CODES_PER_TOKEN per text token (documented
rule, override with --codes N; with a real model --codes is off unless given).

--precision fp32,bf16,int8 profiles every precision mode side by side (one engine per mode, loaded in
turn; columns are named preset@mode then). A mode is a per-stage mix (see precision.py): bf16 = every
stage bf16, int8 = GPT int8 weight-only + s2mel/vocoder/conditioning bf16, int8dyn = GPT int8 weights and
activations + the rest bf16; gpt=int8+s2mel=bf16 names a mix directly. The per-stage speed-up of every
column over the first is printed and written to --json."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import add_precision_argument, add_settings_arguments, add_store_argument, check_precisions, data_folder, settings_overrides

DEFAULT_TEXT = ("The morning train was late again, so she walked along the river and "
                "watched the boats drift slowly past the old stone bridge.")
CODES_PER_TOKEN = 6  # ~50 codes per second of speech, ~8 text tokens per second


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", metavar="DIR", help="model folder (default: a cached full-size random model)")
    p.add_argument("--presets", default="baseline", help="comma-separated preset names, e.g. baseline,extreme")
    p.add_argument("--runs", type=int, default=3, help="timed runs per preset (after --warmup)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per preset first")
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument("--voice", metavar="AUDIO", help="reference clip (default: a synthetic clip of --prompt-seconds)")
    p.add_argument("--prompt-seconds", type=float, default=4.1)
    p.add_argument("--codes", type=int, default=None, help="generate exactly N codes per segment")
    p.add_argument("--keep-denormals", action="store_true",
                   help="do not flush float32 denormals to zero (random weights produce many; trained ones few)")
    p.add_argument("--cached-speaker", action="store_true",
                   help="keep the speaker conditioning cached between runs (default: extract it every run)")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--plot", metavar="FILE", help="stacked-bar plot (png/svg/pdf)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    add_precision_argument(p, many=True)
    add_store_argument(p)
    add_settings_arguments(p)
    p.set_defaults(preset=None)


def default_random_model(store_dir: Path) -> Path:
    """The cached full-size random model folder, made on first use."""
    from ..makeckpt import make_checkpoint

    folder = store_dir / "random-full-seed0"
    if not (folder / ".complete").exists():
        print(f"making a full-size random model in {folder} (once; several GB, a few minutes)...", file=sys.stderr)
        make_checkpoint(folder, size="full", seed=0, progress=lambda m: print(m, file=sys.stderr))
        (folder / ".complete").write_text("ok\n")
    return folder


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..errors import OptionError
    from ..pipeline import Engine
    from ..presets import resolve
    from ..profiling import STAGES, run_statistics

    if args.runs < 1 or args.warmup < 0:
        raise OptionError("--runs must be >= 1 and --warmup >= 0")
    presets = [n.strip() for n in args.presets.split(",") if n.strip()]
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    plans = dict(zip(precisions, check_precisions(args)))  # validated against this CPU before loading
    plain = precisions == ["fp32"]  # the original behaviour: columns are preset names
    columns = [(pre, prec, pre if plain else f"{pre}@{prec}") for prec in precisions for pre in presets]
    names = [c[2] for c in columns]
    all_settings = {name: resolve(pre, settings_overrides(args)) for pre, _, name in columns}
    store_dir = data_folder(args)
    random_model = args.model_dir is None
    torch.set_flush_denormal(not args.keep_denormals)  # as bench s2mel/vocoder: changes values < 1.2e-38 only
    model_dir = default_random_model(store_dir) if random_model else Path(args.model_dir)
    from ..audio import synthetic_prompt

    voice = Path(args.voice) if args.voice else synthetic_prompt(
        store_dir / "prompts" / f"synthetic-{args.prompt_seconds:g}s.wav", args.prompt_seconds)
    engine = Engine(model_dir, device=args.device, threads=args.threads, store=None, precision=plans[precisions[0]])
    n_tokens = sum(len(s) for s in engine.text.segments_for_synthesis(args.text, 10**6))
    codes = args.codes if args.codes is not None else (CODES_PER_TOKEN * n_tokens if random_model else None)
    if random_model:
        print(f"RANDOM full-size model {model_dir}: timings are real, the audio is noise; "
              f"{codes} codes per segment forced ({'--codes' if args.codes else f'{CODES_PER_TOKEN} per text token'}).",
              file=sys.stderr)
    results, per_preset = {}, {}
    bar = tqdm(total=len(names) * (args.runs + args.warmup), desc="profile", unit="run", file=sys.stderr)
    for _, prec, name in columns:
        if engine.plan != plans[prec]:
            engine = None  # free the previous mode's weights first
            engine = Engine(model_dir, device=args.device, threads=args.threads, store=None, precision=plans[prec])
        runs = []
        for i in range(args.warmup + args.runs):
            if not args.cached_speaker:
                engine.clear_caches()
            r = engine.synthesize(args.text, voice=str(voice), settings=all_settings[name], seed=args.seed + i,
                                  profile=True, forced_codes=codes)
            if i >= args.warmup:
                runs.append(r.timings)
            bar.set_postfix(preset=name, rtf=f"{r.timings.rtf:.2f}")
            bar.update()
        per_preset[name] = run_statistics(runs)
        results[name] = {"settings": all_settings[name].as_dict(), "precision": dict(engine.precision),
                         "plan": engine.plan.describe(),
                         **per_preset[name],
                         "runs_detail": [t.as_dict() for t in runs]}
    bar.close()
    base = per_preset[names[0]]["total"]["mean"]
    for name in names:
        results[name]["speedup_vs_" + names[0]] = base / per_preset[name]["total"]["mean"]
        results[name]["stage_speedup_vs_" + names[0]] = stage_speedups(per_preset, names[0], name, STAGES)
    print(format_table(per_preset, names, STAGES))
    if len(names) > 1:
        print(format_speedups(per_preset, names, STAGES))
    report = {"model_dir": str(model_dir), "random_model": random_model, "text": args.text, "voice": str(voice),
              "forced_codes": codes, "runs": args.runs, "warmup": args.warmup,
              "speaker_cache": "kept between runs" if args.cached_speaker else "cleared before every run",
              "machine": _machine(), "presets": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(per_preset, names, STAGES, args.plot, title=f"{'random full-size' if random_model else model_dir.name}, "
             f"{args.runs} runs, {args.threads} threads, CPU tier {report['machine']['capabilities']['tier']}")
        print(f"wrote {args.plot}")
    return 0


def _machine() -> dict:
    from ..benchmarks.common import machine

    return machine()


def format_table(stats: dict, names: list[str], stages) -> str:
    col = max(16, *(len(n) + 2 for n in names))
    lines = ["stage (mean s, share)".ljust(22) + "".join(n.rjust(col) for n in names)]
    lines.append("-" * len(lines[0]))
    for stage in stages:
        lines.append(stage.ljust(22) + "".join(
            f"{stats[n]['stages'][stage]['mean']:.3f} {stats[n]['stages'][stage]['share']:>4.0%}".rjust(col)
            for n in names))
    lines.append("-" * len(lines[0]))
    rows = [("total mean s", lambda s: f"{s['total']['mean']:.3f}"),
            ("total min..max s", lambda s: f"{s['total']['min']:.2f}..{s['total']['max']:.2f}"),
            ("audio s", lambda s: f"{s['audio_seconds']:.2f}"),
            ("RTF", lambda s: f"{s['rtf']:.3f}"),
            ("codes", lambda s: f"{s['codes']:.0f}"),
            (f"speed-up vs {names[0]}", lambda s: f"{stats[names[0]]['total']['mean'] / s['total']['mean']:.2f}x")]
    for label, fmt in rows:
        lines.append(label.ljust(22) + "".join(fmt(stats[n]).rjust(col) for n in names))
    return "\n".join(lines)


def stage_speedups(stats: dict, base: str, name: str, stages) -> dict:
    """Per stage (and total): base mean seconds / this column's mean seconds (None where a time is 0)."""
    out = {}
    for stage in (*stages, "total"):
        b = stats[base]["total"]["mean"] if stage == "total" else stats[base]["stages"][stage]["mean"]
        v = stats[name]["total"]["mean"] if stage == "total" else stats[name]["stages"][stage]["mean"]
        out[stage] = b / v if v > 0 else None
    return out


def format_speedups(stats: dict, names: list[str], stages) -> str:
    col = max(16, *(len(n) + 2 for n in names))
    lines = [f"speed-up vs {names[0]}".ljust(22) + "".join(n.rjust(col) for n in names)]
    lines.append("-" * len(lines[0]))
    ups = {n: stage_speedups(stats, names[0], n, stages) for n in names}
    for stage in (*stages, "total"):
        lines.append(stage.ljust(22) + "".join(
            (f"{ups[n][stage]:.2f}x" if ups[n][stage] is not None else "-").rjust(col) for n in names))
    return "\n".join(lines)


def plot(stats: dict, names: list[str], stages, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3, 4.5))
    bottoms = [0.0] * len(names)
    for stage in stages:
        values = [stats[n]["stages"][stage]["mean"] for n in names]
        ax.bar(names, values, bottom=bottoms, label=stage)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    for i, n in enumerate(names):
        ax.text(i, bottoms[i], f"{stats[n]['total']['mean']:.2f} s\nRTF {stats[n]['rtf']:.2f}",
                ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("seconds per request (mean)")
    ax.set_title(title or "stage breakdown")
    ax.set_ylim(0, max(bottoms) * 1.2)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
