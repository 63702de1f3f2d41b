"""The speech server on Ray Serve: many replicas of the same FastAPI app (server/app.py), one endpoint.

    indextts-fast serve --ray --model-dir DIR --store postgresql://tts@db/tts --replicas 4
    indextts-fast serve --ray --ray-address ray://head:10001 --autoscale 1..8 ...     # join a cluster
    serve deploy deploy/ray-serve.yaml                                               # Ray's own CLI, same app

Each replica (a Ray actor, one process) builds its own Engine and its own continuous-batching scheduler and
serves `create_app(engine)` through `serve.ingress`: no second copy of the HTTP layer, the same routes,
errors, metrics and streaming. Ray's proxy routes requests to replicas, replaces one that dies, and scales
between MIN and MAX replicas on ongoing requests with `--autoscale`. Replicas share the voice registry
through `--store`: a PostgreSQL URL for several machines (speakers_pg.py), or a folder for one machine
(SQLite: safe across processes, not over a network file system). Each replica answers with an
`x-served-by: host:pid` header.

`app_builder(args)` is the application builder Ray's `serve run` / `serve deploy` import (`import_path:
indextts_fast.server.ray_app:app_builder`, `args:` the ServeOptions fields).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Optional

from ..errors import OptionError


@dataclass(frozen=True)
class ServeOptions:
    """What every replica needs to build its app (plain values: they travel to the replicas)."""

    model_dir: str
    store: Optional[str] = None           # folder (SQLite) or postgresql:// URL; None: the default folder
    precision: Optional[str] = None
    force_precision: bool = False
    threads: int = 1                      # torch threads per replica (Ray reserves as many CPUs)
    api_key: Optional[str] = None
    max_batch: int = 8
    queue_size: int = 8
    max_input_chars: int = 4096
    request_timeout_s: float = 600.0
    replicas: int = 1
    autoscale: Optional[tuple[int, int]] = None   # (min, max) replicas instead of a fixed count
    name: str = "indextts"
    extra: dict = field(default_factory=dict)     # more @serve.deployment options (Ray's names)

    def __post_init__(self):
        if self.threads < 1 or self.max_batch < 1 or self.queue_size < 0 or self.replicas < 1:
            raise OptionError("threads, max_batch and replicas must be >= 1 and queue_size >= 0")
        if self.autoscale is not None:
            lo, hi = self.autoscale
            if not 0 <= lo <= hi or hi < 1:
                raise OptionError(f"autoscale {lo}..{hi}: need 0 <= MIN <= MAX and MAX >= 1")


def parse_autoscale(text: str) -> tuple[int, int]:
    """"MIN..MAX" -> (MIN, MAX)."""
    try:
        lo, hi = (int(part) for part in text.split(".."))
    except ValueError:
        raise OptionError(f"--autoscale {text!r}: write MIN..MAX, e.g. 1..4") from None
    if not 0 <= lo <= hi or hi < 1:
        raise OptionError(f"--autoscale {text!r}: need 0 <= MIN <= MAX and MAX >= 1")
    return lo, hi


def build_replica_app(opts: ServeOptions):
    """On a replica: its engine, its scheduler, the FastAPI app (what `serve.ingress` calls)."""
    import torch

    from ..pipeline import Engine
    from ..plan import parse_precision
    from ..speakers import open_store
    from .app import create_app

    torch.set_num_threads(opts.threads)
    precision = parse_precision(opts.precision) if opts.precision else None
    engine = Engine(opts.model_dir, store=open_store(opts.store), precision=precision,
                    force_precision=opts.force_precision, threads=opts.threads)
    app = create_app(engine, api_key=opts.api_key, max_batch=opts.max_batch, queue_size=opts.queue_size,
                     max_input_chars=opts.max_input_chars, request_timeout_s=opts.request_timeout_s)
    served_by = f"{socket.gethostname()}:{os.getpid()}"

    @app.middleware("http")
    async def tag(request, call_next):
        response = await call_next(request)
        response.headers["x-served-by"] = served_by
        return response

    return app


def application(opts: ServeOptions):
    """The Ray Serve application (one deployment, `opts.replicas` or autoscaled replicas)."""
    from ray import serve

    config = dict(name=opts.name, ray_actor_options={"num_cpus": opts.threads},
                  max_ongoing_requests=opts.max_batch + opts.queue_size, **opts.extra)
    if opts.autoscale is not None:
        lo, hi = opts.autoscale
        config["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi, "initial_replicas": max(lo, 1),
                                        "target_ongoing_requests": max(1, opts.max_batch // 2)}
    else:
        config["num_replicas"] = opts.replicas

    def build():
        return build_replica_app(opts)

    return serve.deployment(serve.ingress(build)(), **config).bind()


def app_builder(args: dict):
    """`serve run/deploy` entry point: `args` are ServeOptions' fields (autoscale as "MIN..MAX")."""
    args = dict(args)
    if isinstance(args.get("autoscale"), str):
        args["autoscale"] = parse_autoscale(args["autoscale"])
    return application(ServeOptions(**args))


def run(opts: ServeOptions, host: str = "127.0.0.1", port: int = 8000, address: Optional[str] = None,
        blocking: bool = True):
    """Start (or join) Ray, start Serve's HTTP proxy on host:port, deploy. Blocks until SIGTERM/SIGINT when
    `blocking`, then shuts Serve down; else returns the ingress handle."""
    import ray
    from ray import serve

    ray.init(address=address, include_dashboard=False, ignore_reinit_error=True,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("INDEXTTS_FAST_")}})
    serve.start(http_options={"host": host, "port": port})
    handle = serve.run(application(opts), name=opts.name, route_prefix="/", blocking=False)
    if not blocking:
        return handle
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
    return None


