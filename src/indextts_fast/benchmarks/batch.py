"""Continuous batching on the engine alone (no HTTP): c requests at once through batcher.Batcher, per level c.

Reports per level GPT codes per second (codes generated per request over the batcher's prefill + decode
seconds), DiT steps per second, end-to-end audio-seconds per second (audio over wall time) and where the time
went (prefill, decode, s2mel = the Euler steps, flows = latent pass, vocoder, text and conditioning), and
each level's ratio to c = 1 measured in the same run. Full-size random model (`--model-dir`, else the one
`profile` makes); `--codes` forces every segment to that many codes (random weights never stop).
"""

from __future__ import annotations

import argparse
import time

from .common import find_model_dir, machine, table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", default=None, help="model folder (default: the full-size random model)")
    p.add_argument("--voice", default=None, help="reference clip (default: a synthetic 4.1 s prompt, as profile uses)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--precision", default="auto")
    p.add_argument("--preset", default="baseline")
    p.add_argument("--codes", type=int, default=150, help="codes forced per segment (default 150)")
    p.add_argument("--text", default="The quick brown fox jumps over the lazy dog.")
    p.add_argument("--plot", default=None, help="write a plot of the rates per level")
    p.add_argument("--gpt-only", action="store_true",
                   help="time only the GPT: c searches prefilled and stepped together (decoding.step_all) to the "
                        "forced codes, levels interleaved --repeat times, the best run of each level kept")
    p.add_argument("--repeat", type=int, default=3, help="runs per level with --gpt-only (default 3)")
    p.add_argument("--newcomer", action="store_true",
                   help="latency under load instead: a request's time to first audio alone, then arriving while "
                        "c - 1 others (c = the largest --concurrency) are in their flow matching")


def run(args: argparse.Namespace) -> dict:
    from ..batcher import Batcher
    from ..pipeline import Engine
    from .serve import _folder_prompt

    folder = find_model_dir(args.model_dir, "gpt.pth", "the GPT")
    voice = args.voice or _folder_prompt(folder)
    engine = Engine(folder, precision=args.precision, force_precision=args.force_precision)
    if args.gpt_only:
        return _gpt_only(engine, voice, args)
    if args.newcomer:
        return _newcomer(engine, voice, args)
    kw = dict(voice=voice, preset=args.preset, forced_codes=args.codes)
    list(engine.stream(args.text, seed=0, **kw))        # warm-up: conditioning cached, kernels built
    levels = []
    for c in args.concurrency:
        batcher = Batcher(engine, max_active=c)
        t0 = time.perf_counter()
        tickets = [batcher.stream(args.text, seed=1 + i, **kw) for i in range(c)]
        audio = sum(len(chunk.audio) / chunk.sample_rate for t in tickets for chunk in t)
        wall = time.perf_counter() - t0
        batcher.close()
        st = batcher.stats
        gpt_s = st.seconds["prefill"] + st.seconds["decode"]
        levels.append({"concurrency": c, "wall_s": wall, "audio_s": audio, "codes": st.codes,
                       "codes_per_s": st.codes / gpt_s, "dit_steps_per_s": st.dit_steps / st.seconds["s2mel"],
                       "audio_s_per_s": audio / wall, "rows_per_call": st.decode_rows / max(1, st.decode_calls),
                       "seconds": dict(st.seconds)})
        print(f"c={c}: {audio:.1f} s of audio in {wall:.1f} s", flush=True)
    base = levels[0]
    for lv in levels:
        for key in ("codes_per_s", "dit_steps_per_s", "audio_s_per_s"):
            lv[key + "_x"] = lv[key] / base[key]
        lv.update({f"{k}_s": v for k, v in lv["seconds"].items()})
    print(table(levels, [("concurrency", "c", "d"), ("codes_per_s", "GPT codes/s", ".1f"),
                         ("codes_per_s_x", "x c=1", ".2f"), ("rows_per_call", "rows/call", ".1f"),
                         ("dit_steps_per_s", "DiT steps/s", ".2f"), ("dit_steps_per_s_x", "x c=1", ".2f"),
                         ("audio_s_per_s", "audio s/s", ".3f"), ("audio_s_per_s_x", "x c=1", ".2f"),
                         ("prefill_s", "prefill s", ".1f"), ("decode_s", "decode s", ".1f"),
                         ("s2mel_s", "s2mel s", ".1f"), ("flows_s", "flows s", ".1f"), ("wall_s", "wall s", ".1f")]))
    if args.plot:
        _plot(levels, args.plot)
        print(f"wrote {args.plot}")
    return {"machine": machine(), "model_dir": str(folder), "precision": engine.precision, "preset": args.preset,
            "codes": args.codes, "levels": levels}


def _gpt_only(engine, voice, args) -> dict:
    """c searches with their own generators, prefilled one after another and stepped together to the forced codes."""
    import torch

    from .. import stages
    from ..decoding import step_all
    from ..presets import resolve
    from ..results import Emotion

    m = engine.models
    spk = engine.speaker(voice)
    emovec = engine.emotion_vector(spk, Emotion())
    ids = stages.text_segments(m, args.text, 120)[0]
    options = resolve(args.preset, {}).decoding(args.codes)
    best: dict[int, float] = {}
    for rep in range(args.repeat):
        for c in args.concurrency:
            searches = [stages.code_search(m, spk, ids, emovec, options, torch.Generator().manual_seed(i))
                        for i in range(c)]
            with torch.inference_mode():
                t0 = time.perf_counter()
                for s in searches:
                    s.start()
                while not all(s.done for s in searches):
                    step_all(m.gpt, [s for s in searches if not s.done])
                wall = time.perf_counter() - t0
            best[c] = min(best.get(c, wall), wall)
            print(f"run {rep + 1}, c={c}: {c * args.codes / wall:.1f} codes/s", flush=True)
    base = args.codes / best[args.concurrency[0]] / args.concurrency[0]
    levels = [{"concurrency": c, "wall_s": best[c], "codes_per_s": c * args.codes / best[c],
               "codes_per_s_x": c * args.codes / best[c] / base} for c in args.concurrency]
    print(table(levels, [("concurrency", "c", "d"), ("wall_s", "best s", ".2f"), ("codes_per_s", "GPT codes/s", ".1f"),
                         ("codes_per_s_x", "x c=1", ".2f")]))
    return {"machine": machine(), "precision": engine.precision, "preset": args.preset, "codes": args.codes,
            "gpt_only": True, "repeat": args.repeat, "levels": levels}


def _newcomer(engine, voice, args) -> dict:
    """One request's time to first audio alone, then when it arrives while c - 1 others are diffusing."""
    from ..batcher import Batcher

    kw = dict(voice=voice, preset=args.preset, forced_codes=args.codes)
    others = max(args.concurrency) - 1
    batcher = Batcher(engine, max_active=others + 1)

    def first_audio() -> float:
        ticket = batcher.stream(args.text, seed=1, **kw)
        t0 = time.perf_counter()
        next(ticket)
        seconds = time.perf_counter() - t0
        list(ticket)
        return seconds

    list(engine.stream(args.text, seed=0, **kw))        # warm-up
    alone = first_audio()
    start = batcher.stats.dit_steps
    background = [batcher.stream(f"Background request number {i}.", seed=10 + i, **kw) for i in range(others)]
    while batcher.stats.dit_steps - start < others:     # they started together: all are in their flow matching
        time.sleep(0.02)
    loaded = first_audio()
    for ticket in background:
        list(ticket)
    batcher.close()
    print(f"first audio alone {alone:.2f} s; arriving while {others} others diffuse {loaded:.2f} s "
          f"({loaded / alone:.2f}x)")
    return {"machine": machine(), "precision": engine.precision, "preset": args.preset, "codes": args.codes,
            "others": others, "first_audio_alone_s": alone, "first_audio_loaded_s": loaded}


def _plot(levels: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [lv["concurrency"] for lv in levels]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("codes_per_s_x", "GPT codes/s"), ("dit_steps_per_s_x", "DiT steps/s"),
                       ("audio_s_per_s_x", "audio s/s")):
        ax.plot(c, [lv[key] for lv in levels], marker="o", label=label)
    ax.plot(c, c, ls=":", color="grey", label="linear")
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("rate / rate at c = 1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
