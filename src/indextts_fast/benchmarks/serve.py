"""Load on the speech server: N requests per concurrency level from async httpx clients, bounded in requests
and time. Reports per level p50/p95/p99 latency, time to first audio, audio-seconds per second, errors, and
the server's resident memory before and after (from its /metrics).

`--url URL` loads a running `indextts-fast serve`; without it the bench starts one in this process on
127.0.0.1 over `--model-dir` (default: the reference tiny model), registers `--voice` (a clip) as "bench",
and stops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from .common import machine, table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="a running server (default: start one here, 127.0.0.1)")
    p.add_argument("--model-dir", default=None, help="model folder of the server started here")
    p.add_argument("--voice", default=None, help="a clip registered as voice 'bench' (default: the folder's prompt)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    p.add_argument("--requests", type=int, default=100, help="requests per concurrency level (default 100)")
    p.add_argument("--text", default="The quick brown fox jumps over the lazy dog.")
    p.add_argument("--format", default="wav")
    p.add_argument("--stream", action="store_true", help="stream_format sse instead of chunked audio")
    p.add_argument("--codes", type=int, default=None, help="max_mel_tokens per segment (random models never stop)")
    p.add_argument("--steps", type=int, default=None, help="diffusion_steps")
    p.add_argument("--preset", default="extreme")
    p.add_argument("--first-segment-tokens", type=int, default=0)
    p.add_argument("--segment-tokens", type=int, default=None, help="max_text_tokens_per_segment")
    p.add_argument("--queue-size", type=int, default=64, help="queue of the server started here (default 64)")
    p.add_argument("--precision", default="fp32", help="precision of the server started here (e.g. auto)")
    p.add_argument("--time-limit", type=float, default=1800, help="stop a level after this many seconds")
    p.add_argument("--plot", default=None, help="write a plot of latency and throughput per level")


def _body(args) -> dict:
    body = {"model": "indextts2", "voice": "bench", "input": args.text, "response_format": args.format,
            "preset": args.preset, "seed": 1, "first_segment_tokens": args.first_segment_tokens}
    if args.stream:
        body["stream_format"] = "sse"
    if args.codes:
        body["max_mel_tokens"] = args.codes
    if args.steps:
        body["diffusion_steps"] = args.steps
    if args.segment_tokens:
        body["max_text_tokens_per_segment"] = args.segment_tokens
    return body


async def _level(url: str, body: dict, concurrency: int, n: int, limit_s: float) -> dict:
    import httpx

    lat, ttfa, audio_bytes, errors = [], [], [], []
    header = 44 if body.get("response_format") == "wav" and body.get("stream_format") != "sse" else 0
    todo = iter(range(n))
    deadline = time.monotonic() + limit_s

    async def client(http):
        for _ in todo:
            if time.monotonic() > deadline:
                return
            t0 = time.monotonic()
            first, size = None, 0
            try:
                async with http.stream("POST", url + "/v1/audio/speech", json=body) as r:
                    async for piece in r.aiter_bytes():
                        size += len(piece)
                        if first is None and size > header:   # audio, not just a wav header
                            first = time.monotonic()
                    if r.status_code != 200:
                        errors.append(r.status_code)
                        continue
            except Exception as e:   # noqa: BLE001  (counted, not fatal)
                errors.append(type(e).__name__)
                continue
            lat.append(time.monotonic() - t0)
            ttfa.append((first or time.monotonic()) - t0)
            audio_bytes.append(size)

    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    wall = time.monotonic() - t0
    q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] if len(xs) >= 2 else (xs[0] if xs else None)  # noqa: E731
    return {"concurrency": concurrency, "requests": len(lat) + len(errors), "ok": len(lat), "errors": len(errors),
            "error_kinds": sorted({str(e) for e in errors}), "wall_s": wall,
            "p50_s": q(lat, 50), "p95_s": q(lat, 95), "p99_s": q(lat, 99), "ttfa_p50_s": q(ttfa, 50),
            "requests_per_s": len(lat) / wall, "bytes": sum(audio_bytes)}


def _rss(url: str):
    import httpx

    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except Exception:   # noqa: BLE001
        return None
    line = next((x for x in text.splitlines() if x.startswith("process_resident_memory_bytes ")), None)
    return float(line.split()[1]) if line else None


def run(args: argparse.Namespace) -> dict:
    import httpx

    served = None
    url = args.url
    if url is None:
        served, url = _serve_here(args)
    body = _body(args)
    # audio seconds of one response (every request is the same seeded one)
    probe = httpx.post(url + "/v1/audio/speech", json={**body, "stream_format": "audio", "response_format": "pcm"},
                       timeout=600)
    if probe.status_code != 200:
        raise SystemExit(f"bench serve: the server answered {probe.status_code}: {probe.text[:300]}")
    audio_s = len(probe.content) / 2 / 24000
    rss_start = _rss(url)
    levels = []
    for c in args.concurrency:
        print(f"concurrency {c}: {args.requests} requests...", file=sys.stderr, flush=True)
        lv = asyncio.run(_level(url, body, c, args.requests, args.time_limit))
        lv["audio_s_per_s"] = lv["ok"] * audio_s / lv["wall_s"]
        levels.append(lv)
    rss_end = _rss(url)
    if served is not None:
        served.stop()
    result = {"bench": "serve", "machine": machine(), "url": url if args.url else "in-process 127.0.0.1",
              "body": body, "audio_s_per_request": audio_s, "levels": levels, "rss_start_bytes": rss_start,
              "rss_end_bytes": rss_end,
              "rss_growth": (rss_end / rss_start - 1) if rss_start and rss_end else None}
    print(f"{len(levels)} levels, {audio_s:.2f} s of audio per request; server RSS "
          f"{(rss_start or 0) / 2**20:.0f} -> {(rss_end or 0) / 2**20:.0f} MiB")
    print(table(levels, [("concurrency", "c", "d"), ("ok", "ok", "d"), ("errors", "errors", "d"),
                         ("p50_s", "p50 s", ".3f"), ("p95_s", "p95 s", ".3f"), ("p99_s", "p99 s", ".3f"),
                         ("ttfa_p50_s", "first audio p50 s", ".3f"), ("requests_per_s", "req/s", ".2f"),
                         ("audio_s_per_s", "audio s/s", ".2f")]))
    if args.plot:
        _plot(levels, args.plot)
        print(f"wrote {args.plot}")
    return result


def _serve_here(args):
    from pathlib import Path
    import tempfile

    from ..localhost import ThreadedServer
    from ..pipeline import Engine
    from ..speakers import SpeakerStore
    from ..server.app import create_app
    from .common import reference_tiny

    folder = Path(args.model_dir) if args.model_dir else reference_tiny()
    engine = Engine(folder, store=SpeakerStore(tempfile.mkdtemp(prefix="bench-serve-")), precision=args.precision)
    voice = args.voice or _folder_prompt(folder)
    engine.register_speaker("bench", voice)
    served = ThreadedServer(create_app(engine, queue_size=args.queue_size)).start()
    return served, served.url.rstrip("/")


def _folder_prompt(folder):
    import json

    manifest = folder / "goldens" / "e2e.json"
    if manifest.is_file():
        return folder / json.loads(manifest.read_text())["prompt"]["file"]
    from ..audio import synthetic_prompt
    from ..paths import default_store_dir

    return synthetic_prompt(default_store_dir() / "prompts" / "synthetic-4.1s.wav", 4.1)


def _plot(levels: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [lv["concurrency"] for lv in levels]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("p50_s", "p50"), ("p95_s", "p95"), ("p99_s", "p99"), ("ttfa_p50_s", "first audio p50")):
        a.plot(c, [lv[key] for lv in levels], marker="o", label=label)
    a.set(xscale="log", xlabel="concurrent clients", ylabel="seconds", title="latency")
    a.legend()
    b.plot(c, [lv["audio_s_per_s"] for lv in levels], marker="o")
    b.set(xscale="log", xlabel="concurrent clients", ylabel="audio seconds per second", title="throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
