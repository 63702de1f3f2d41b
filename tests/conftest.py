"""Shared fixtures. Golden-parity tests read the reference sets in ../shared/reference (or
$INDEXTTS_FAST_REFERENCE) and fail loudly when they are absent: parity is how we know we are right."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import indextts_fast  # noqa: F401  (first: it sets up oneMKL before torch loads; see mkl_vendor.py)
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("INDEXTTS_FAST_REFERENCE", REPO.parent / "shared" / "reference"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"reference data missing: {path} (set INDEXTTS_FAST_REFERENCE to the shared/reference folder)",
                    pytrace=False)
    return path


@pytest.fixture(scope="session")
def reference_root() -> Path:
    return _require(REFERENCE)


@pytest.fixture(scope="session")
def tiny_dir(reference_root) -> Path:
    """The public tiny reference set (a model folder in the official layout, with goldens)."""
    return _require(reference_root / "tiny")


@pytest.fixture(scope="session")
def text_ref_dir(reference_root) -> Path:
    return _require(reference_root / "text")


@pytest.fixture(scope="session")
def assets_dir(reference_root) -> Path:
    return _require(reference_root / "indextts2-assets")


@pytest.fixture(scope="session")
def frontend_manifest(tiny_dir) -> dict:
    return json.loads((tiny_dir / "goldens" / "frontend.json").read_text())


@pytest.fixture(scope="session")
def frontend_goldens(tiny_dir) -> dict:
    return load_file(str(tiny_dir / "goldens" / "frontend.safetensors"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is as fast and immune to the stalls of a busy shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL server for this session (tests/test_speakers_pg.py, tests/test_ray.py): Debian's
    binaries, initdb'd in a temporary folder, started with pg_ctl on 127.0.0.1 (a free port, trust auth, fsync off)
    as the `postgres` OS user when run as root, stopped and deleted at the end. Yields its URL without a database name (postgresql://postgres@host:port)."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        pytest.skip("needs a PostgreSQL server's binaries (/usr/lib/postgresql/*/bin/initdb, pg_ctl): "
                    "apt-get install postgresql")
    bindir = Path(initdb[-1]).parent  # the newest installed major version
    base = Path(tempfile.mkdtemp(prefix="indextts-fast-pg-"))  # not under pytest's tmp: that is private to root
    sockets, data, log = base / "sockets", base / "data", base / "server.log"
    sockets.mkdir()
    as_postgres = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, but there is no `postgres` OS user to run the server as (apt-get install "
                        "postgresql creates it)")
        for path in (base, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_postgres, *map(str, args)], cwd=base, capture_output=True, text=True, timeout=120)

    started = False
    try:
        out = run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale",
                  "--no-sync")
        assert out.returncode == 0, f"initdb failed: {out.stdout}{out.stderr}"
        for _ in range(3):  # (a free port can be taken before the server binds it)
            port = free_port()
            out = run(bindir / "pg_ctl", "start", "-w", "-t", "60", "-D", data, "-l", log, "-o",
                      f"-h 127.0.0.1 -p {port} -k {sockets} -F -c max_connections=200")
            if out.returncode == 0:
                break
        started = out.returncode == 0
        assert started, f"pg_ctl start failed: {out.stdout}{out.stderr}{log.read_text() if log.exists() else ''}"
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        if started:
            run(bindir / "pg_ctl", "stop", "-m", "immediate", "-D", data)
        shutil.rmtree(base, ignore_errors=True)
