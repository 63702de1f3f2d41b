"""Blind listening test of a compare run: serves a page on 127.0.0.1 only where raters score each clip
1-5 (clips unlabelled, shuffled per text and voice, served by opaque ids); scores are kept in
DIR/listening.sqlite3. With --results, print the mean opinion score per variant with a 95 % confidence
interval (Student's t, n-1 degrees of freedom) and the count."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="a folder written by `indextts-fast compare`")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--lifetime", type=float, default=None, metavar="SECONDS",
                   help="stop serving after this long (default: until Ctrl-C)")
    p.add_argument("--results", action="store_true", help="print MOS per variant instead of serving")
    p.add_argument("--json", action="store_true", help="with --results: print JSON")


def run(args: argparse.Namespace) -> int:
    from ..errors import OptionError
    from ..listening import Server, format_results, results

    if args.results:
        res = results(args.dir)
        print(json.dumps(res, indent=2) if args.json else format_results(res))
        return 0
    if not 0 <= args.port <= 65535:
        raise OptionError(f"--port {args.port} is not a port number")
    server = Server(args.dir, port=args.port, lifetime=args.lifetime).start()
    print(f"listening test at {server.url} (127.0.0.1 only); Ctrl-C to stop", flush=True)
    try:
        server.wait()
    finally:
        server.stop()
    return 0
