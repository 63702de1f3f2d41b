"""Run an ASGI app on this machine only (127.0.0.1), in a thread of this process."""

from __future__ import annotations

import socket
import threading
import time
from typing import Optional

from .errors import OptionError

HOST = "127.0.0.1"  # never anything else


class ThreadedServer:
    """An ASGI app under uvicorn on 127.0.0.1:`port` (0 = any free port) in a background thread; stops by
    `stop()` or on its own after `lifetime` seconds. Used by the listening page, `bench serve` and tests."""

    def __init__(self, app, port: int = 0, lifetime: Optional[float] = None):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((HOST, port))
        except OSError as exc:
            self.sock.close()
            raise OptionError(f"cannot listen on {HOST}:{port}: {exc}") from exc
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}/"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.timer = threading.Timer(lifetime, self.stop) if lifetime else None

    def start(self, timeout: float = 20.0) -> "ThreadedServer":
        self.thread.start()
        if self.timer:
            self.timer.daemon = True
            self.timer.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {HOST}:{self.port} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.timer:
            self.timer.cancel()

    def wait(self) -> None:
        while self.thread.is_alive():
            self.thread.join(0.5)

    def __enter__(self) -> "ThreadedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.thread.join(10)
        self.sock.close()
