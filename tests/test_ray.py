"""Ray Serve (server/ray_app.py): a local Ray instance, 2 replicas of the tiny model behind one HTTP endpoint on
127.0.0.1, driven by the official `openai` client; the voice registry shared by both (PostgreSQL when the
tests can start one, else SQLite in one folder); a replica killed mid-run is replaced and loses no request the
client retries."""

import json
import os
import signal
import threading
import time
from collections import Counter

import httpx
import pytest

ray = pytest.importorskip("ray", reason="Ray Serve is the optional extra: pip install -e '.[ray]'")
openai = pytest.importorskip("openai")

from conftest import free_port  # noqa: E402
from indextts_fast.server.ray_app import ServeOptions, app_builder, parse_autoscale, run  # noqa: E402
from indextts_fast.errors import OptionError  # noqa: E402

SMALL = {"max_mel_tokens": 12, "diffusion_steps": 2, "preset": "extreme"}


@pytest.fixture(scope="module")
def store_url(tmp_path_factory, request):
    """The registry both replicas share: a database on the throwaway PostgreSQL server (conftest.pg_server) when
    it can run here, else one SQLite folder (both replicas are on this machine)."""
    try:
        server = request.getfixturevalue("pg_server")
        import psycopg
    except (pytest.skip.Exception, ImportError):
        yield str(tmp_path_factory.mktemp("voices"))
        return
    name = "ray_voices"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield f"{server}/{name}"


@pytest.fixture(scope="module")
def endpoint(tiny_dir, store_url):
    from ray import serve

    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        run(ServeOptions(model_dir=str(tiny_dir), store=store_url, replicas=2, threads=1, queue_size=32),
            port=port, blocking=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=5, timeout=120)


def _speak(url, seed, voice="alice"):
    r = _client(url).audio.speech.with_raw_response.create(
        model="indextts2", voice=voice, input="Hello there.", response_format="wav",
        extra_body={**SMALL, "seed": seed})
    return r.headers.get("x-served-by"), r.content


def test_two_replicas_share_one_endpoint_and_one_registry(endpoint, tiny_dir):
    prompt = tiny_dir / json.loads((tiny_dir / "goldens" / "e2e.json").read_text())["prompt"]["file"]
    with open(prompt, "rb") as f:
        r = httpx.post(endpoint + "/v1/audio/voices", data={"name": "alice"}, files={"audio_sample": ("a.wav", f)},
                       timeout=120)
    assert r.status_code == 200, r.text
    registered_by = r.headers["x-served-by"]
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append((i % 3, *_speak(endpoint, i % 3)))) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    by = Counter(served for _, served, _ in results)
    assert len(results) == 16 and len(by) == 2, by           # requests spread over both replicas...
    assert any(s != registered_by for _, s, _ in results)     # ...the other one used the voice registered here
    audio = {}
    for seed, _, data in results:
        audio.setdefault(seed, set()).add(data)
    assert all(len(v) == 1 for v in audio.values())           # same seed, same bytes, whichever replica
    # a deletion through one replica is seen by every replica (no stale memory cache)
    assert httpx.delete(endpoint + "/v1/audio/voices/alice", timeout=60).status_code == 200
    for _ in range(6):
        with pytest.raises(openai.NotFoundError):
            _client(endpoint).audio.speech.create(model="indextts2", voice="alice", input="Hi.",
                                                  extra_body=SMALL)


def test_a_killed_replica_is_replaced_and_retried_requests_succeed(endpoint, tiny_dir):
    from ray import serve

    prompt = tiny_dir / json.loads((tiny_dir / "goldens" / "e2e.json").read_text())["prompt"]["file"]
    with open(prompt, "rb") as f:
        assert httpx.post(endpoint + "/v1/audio/voices", data={"name": "bob"},
                          files={"audio_sample": ("b.wav", f)}, timeout=120).status_code == 200
    pids = {int(_speak(endpoint, 1, "bob")[0].rsplit(":", 1)[1]) for _ in range(8)}
    victim = min(pids)
    results, errors = [], []

    def client(i):
        try:
            results.append(_speak(endpoint, i, "bob"))   # the openai client retries 5xx and dropped connections
        except Exception as e:   # noqa: BLE001  (counted below)
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads[:6]:
        t.start()
    time.sleep(0.5)
    os.kill(victim, signal.SIGKILL)                           # mid-run
    for t in threads[6:]:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 12
    deadline = time.monotonic() + 180                          # Ray replaces the replica
    while time.monotonic() < deadline:
        status = serve.status().applications["indextts"]
        replicas = status.deployments["indextts"].replica_states
        if status.status == "RUNNING" and replicas.get("RUNNING", 0) == 2:
            break
        time.sleep(1)
    assert replicas.get("RUNNING", 0) == 2, (status.status, replicas)
    after = {int(_speak(endpoint, 2, "bob")[0].rsplit(":", 1)[1]) for _ in range(10)}
    assert victim not in after


def test_options_are_checked_before_anything_starts():
    assert parse_autoscale("1..4") == (1, 4)
    for bad in ("4..1", "x", "1-4", "0..0"):
        with pytest.raises(OptionError, match="autoscale"):
            parse_autoscale(bad)
    with pytest.raises(OptionError):
        ServeOptions(model_dir="m", replicas=0)
    app = app_builder({"model_dir": "m", "store": "s", "autoscale": "1..3"})   # `serve deploy` builds it lazily
    assert app is not None


def test_the_config_file_is_a_valid_serve_deploy_config():
    """deploy/ray-serve.yaml passes Ray's own schema, and its import path and args build the application."""
    import importlib
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "deploy" / "ray-serve.yaml").read_text()))
    (app,) = config.applications
    module, name = app.import_path.split(":")
    assert getattr(importlib.import_module(module), name)(app.args) is not None
