"""Serve an OpenAI-compatible speech API (POST /v1/audio/speech, voices, models, health, metrics) over one
engine, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import os

from . import add_engine_arguments

KEY_ENV = "INDEXTTS_FAST_API_KEY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_engine_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (default: ${KEY_ENV})")
    p.add_argument("--allow-open", action="store_true",
                   help="allow binding a non-loopback address without an API key")
    p.add_argument("--max-batch", type=int, default=8,
                   help="requests synthesised at once, batched step by step (default 8)")
    p.add_argument("--queue-size", type=int, default=8, help="requests waiting before 429 (default 8)")
    p.add_argument("--max-input-chars", type=int, default=4096)
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds after which a request stops at its next segment (default 600)")
    r = p.add_argument_group("Ray Serve (pip install -e \".[ray]\"): many replicas behind one endpoint")
    r.add_argument("--ray", action="store_true", help="serve through Ray Serve instead of one process")
    r.add_argument("--replicas", type=int, default=1, help="replicas, each with its own engine (default 1)")
    r.add_argument("--autoscale", metavar="MIN..MAX", default=None,
                   help="scale between MIN and MAX replicas on ongoing requests instead of --replicas")
    r.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (e.g. ray://head:10001 or auto; default: start one here)")


def check(args: argparse.Namespace) -> str:
    """The arguments, checked before the model loads; returns the API key (or "")."""
    from ..errors import OptionError

    key = args.api_key or os.environ.get(KEY_ENV, "")
    if not 0 < args.port <= 65535:
        raise OptionError(f"--port {args.port} is not a port number")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not key and not args.allow_open:
        raise OptionError(f"binding {args.host} exposes the server to the network: set --api-key (or ${KEY_ENV}), "
                          "or pass --allow-open to do it without one")
    if (args.replicas != 1 or args.autoscale or args.ray_address) and not args.ray:
        raise OptionError("--replicas, --autoscale and --ray-address need --ray")
    if args.replicas < 1:
        raise OptionError(f"--replicas {args.replicas} must be >= 1")
    if args.autoscale:
        from ..server.ray_app import parse_autoscale

        parse_autoscale(args.autoscale)
    if args.ray and args.store is None:
        raise OptionError("--ray needs --store (a postgresql:// URL, or a folder every replica's machine shares): "
                          "a voice registered through one replica must reach the others")
    if not args.request_timeout > 0:
        raise OptionError(f"--request-timeout {args.request_timeout} must be > 0")
    for flag in ("max_batch", "queue_size", "max_input_chars"):
        if getattr(args, flag) < (0 if flag == "queue_size" else 1):
            raise OptionError(f"--{flag.replace('_', '-')} {getattr(args, flag)} is out of range")
    return key


def run(args: argparse.Namespace) -> int:
    import signal

    import uvicorn

    from . import open_engine
    from ..server.app import create_app

    key = check(args)
    if args.ray:
        return _run_ray(args, key)
    engine = open_engine(args)
    app = create_app(engine, api_key=key or None, max_batch=args.max_batch, queue_size=args.queue_size,
                     max_input_chars=args.max_input_chars, request_timeout_s=args.request_timeout)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info"))

    def drain(signum, frame):   # new requests 503, admitted ones finish (30 s grace), then stop
        import threading

        def stop():
            app.state.scheduler.drain()
            server.should_exit = True
        threading.Thread(target=stop, daemon=True).start()

    server.install_signal_handlers = lambda: None
    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    server.run()
    return 0


def _run_ray(args: argparse.Namespace, key: str) -> int:
    """Every replica builds its own engine from these options (server/ray_app.py); this process only deploys
    and waits for SIGTERM / Ctrl-C."""
    try:
        import ray  # noqa: F401
    except ImportError:
        from ..errors import OptionError

        raise OptionError('--ray needs Ray Serve: pip install -e ".[ray]"') from None
    from ..server.ray_app import ServeOptions, parse_autoscale, run
    from . import check_precisions

    check_precisions(args)   # on this machine, before anything is deployed
    opts = ServeOptions(model_dir=str(args.model_dir), store=args.store, precision=args.precision,
                        force_precision=args.force_precision, threads=args.threads or 1, api_key=key or None,
                        max_batch=args.max_batch, queue_size=args.queue_size, max_input_chars=args.max_input_chars,
                        request_timeout_s=args.request_timeout, replicas=args.replicas,
                        autoscale=parse_autoscale(args.autoscale) if args.autoscale else None)
    run(opts, host=args.host, port=args.port, address=args.ray_address)
    return 0
