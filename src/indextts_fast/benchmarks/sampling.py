"""The choice of codes from one decode step's logits (processors + draw), ours against torch's own operations.

Per preset: the official chain done with torch alone (repetition penalty, min-new-tokens, temperature, top-k by
torch.topk, top-p by a full sort, torch.multinomial) against sampling.process_scores + sampling.multinomial
(one selection for top-k and top-p, the draws through kernels/sampling.c), on GPT-shaped logits (beams x 8194
codes, beam modes over the flattened beams x codes as BeamSearch does), both with generators of the same seed:
microseconds per choice, the ratio measured in the same run, and whether every pick and the generators' states
agree (they must). No model needed.
"""

from __future__ import annotations

import argparse
import time

from .common import machine, table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presets", nargs="+", default=["baseline", "aggressive", "conservative"],
                   help="sampling presets (greedy ones draw nothing; default baseline aggressive conservative)")
    p.add_argument("--steps", type=int, default=200, help="choices timed per preset and way (default 200)")
    p.add_argument("--vocab", type=int, default=8194, help="codes per row (default 8194, the GPT's)")


def run(args: argparse.Namespace) -> dict:
    import torch

    from ..presets import resolve
    from ..sampling import (apply_repetition_penalty, apply_top_k, multinomial, process_scores, sort_top_p)

    def torch_only(scores, history, o, stop):
        scores = apply_repetition_penalty(scores, history, o.repetition_penalty)
        scores = scores / o.temperature if o.temperature != 1.0 else scores
        scores = apply_top_k(scores, o.top_k, o.min_tokens_to_keep) if o.top_k else scores
        return sort_top_p(scores, o.top_p, o.min_tokens_to_keep) if o.top_p < 1.0 else scores

    rows = []
    for name in args.presets:
        o = resolve(name, {}).decoding()
        if not o.do_sample or o.repetition_penalty == 1.0:
            raise SystemExit(f"preset {name!r} does not sample with a repetition penalty: nothing to compare")
        beams, stop = o.num_beams, args.vocab - 1
        gen = torch.Generator().manual_seed(0)
        logits = [torch.randn(beams, args.vocab, generator=gen) * 4 for _ in range(16)]
        history = torch.randint(0, args.vocab, (beams, 60), generator=gen)
        ways = {"torch": (lambda s: torch_only(s, history, o, stop), torch.multinomial),
                "ours": (lambda s: process_scores(s, history, o, 100, stop), multinomial)}
        picks, seconds = {}, {}
        for way, (processors, draw) in ways.items():
            g = torch.Generator().manual_seed(1)
            out, t0 = [], time.perf_counter()
            for i in range(args.steps):
                scores = processors(torch.log_softmax(logits[i % 16], dim=-1) if beams > 1 else logits[i % 16])
                if beams > 1:     # BeamSearch: 2 x beams candidates over the flattened beams x codes
                    out.append(draw(torch.softmax(scores.view(1, -1), dim=-1), 2 * beams, generator=g))
                else:
                    out.append(draw(torch.softmax(scores, dim=-1), 1, generator=g))
            seconds[way] = (time.perf_counter() - t0) / args.steps
            picks[way] = (torch.cat([p.view(-1) for p in out]), g.get_state())
        same = torch.equal(picks["torch"][0], picks["ours"][0]) and torch.equal(picks["torch"][1], picks["ours"][1])
        rows.append({"preset": name, "beams": beams, "torch_us": seconds["torch"] * 1e6,
                     "ours_us": seconds["ours"] * 1e6, "speedup": seconds["torch"] / seconds["ours"], "same": same})
        print(f"{name}: {rows[-1]['torch_us']:.0f} -> {rows[-1]['ours_us']:.0f} us per choice", flush=True)
    print(table(rows, [("preset", "preset", ""), ("beams", "beams", "d"), ("torch_us", "torch us", ".0f"),
                       ("ours_us", "ours us", ".0f"), ("speedup", "x", ".2f"), ("same", "same picks", "")]))
    if not all(r["same"] for r in rows):
        raise SystemExit("the picks differ from torch's: a bug")
    return {"machine": machine(), "steps": args.steps, "vocab": args.vocab, "presets": rows}
