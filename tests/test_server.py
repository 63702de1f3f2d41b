"""The speech server against the official `openai` client, on a real uvicorn server on 127.0.0.1."""

import base64
import io
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

openai = pytest.importorskip("openai")

from indextts_fast.localhost import ThreadedServer  # noqa: E402
from indextts_fast.pipeline import Engine  # noqa: E402
from indextts_fast.server.app import create_app  # noqa: E402
from indextts_fast.speakers import SpeakerStore  # noqa: E402

SMALL = {"max_mel_tokens": 12, "diffusion_steps": 2, "preset": "extreme"}


class Served:
    """create_app(engine, **options) on 127.0.0.1:<free port> (localhost.ThreadedServer) with an openai client."""

    def __init__(self, engine, **options):
        self.app = create_app(engine, **options)
        self.server = ThreadedServer(self.app).start()
        self.url = self.server.url.rstrip("/")

    def client(self, key="none"):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def stop(self):
        self.server.stop()
        self.server.thread.join(timeout=30)


@pytest.fixture(scope="module")
def engine(tiny_dir, tmp_path_factory):
    return Engine(tiny_dir, store=SpeakerStore(tmp_path_factory.mktemp("voices")))


@pytest.fixture(scope="module")
def prompt_wav(tiny_dir):
    return tiny_dir / json.loads((tiny_dir / "goldens" / "e2e.json").read_text())["prompt"]["file"]


@pytest.fixture(scope="module")
def served(engine, prompt_wav):
    s = Served(engine)
    with open(prompt_wav, "rb") as f:
        r = httpx.post(s.url + "/v1/audio/voices", data={"name": "alice"}, files={"audio_sample": ("a.wav", f)})
    assert r.status_code == 200, r.text
    yield s
    s.stop()


def speak(client, fmt, **extra):
    return client.audio.speech.create(model="indextts2", voice="alice", input="Hello there.", response_format=fmt,
                                      extra_body={**SMALL, "seed": 3, **extra})


@pytest.mark.parametrize("fmt,rate", [("wav", 22050), ("flac", 22050), ("mp3", 22050), ("opus", 48000)])
def test_every_format_decodes(served, fmt, rate):
    data = speak(served.client(), fmt).content
    audio, sr = sf.read(io.BytesIO(data), dtype="float32")
    assert sr == rate and len(audio) > 0.05 * sr and np.isfinite(audio).all()


def test_pcm_is_openais_24k_16bit(served):
    wav = sf.read(io.BytesIO(speak(served.client(), "wav").content), dtype="float32")[0]
    pcm = np.frombuffer(speak(served.client(), "pcm").content, dtype="<i2")
    assert abs(len(pcm) - len(wav) * 24000 / 22050) <= 48


def test_streamed_audio_is_the_whole_audio(served):
    whole = speak(served.client(), "wav").content
    with served.client().audio.speech.with_streaming_response.create(
            model="indextts2", voice="alice", input="Hello there.", response_format="wav",
            extra_body={**SMALL, "seed": 3}) as response:
        streamed = b"".join(response.iter_bytes())
    assert streamed[44:] == sf.read(io.BytesIO(whole), dtype="int16")[0].astype("<i2").tobytes()


def test_sse_events_decode_to_the_audio(served):
    r = httpx.post(served.url + "/v1/audio/speech", json={"model": "indextts2", "voice": {"id": "alice"},
                   "input": "Hello there.", "response_format": "pcm", "stream_format": "sse", "seed": 3, **SMALL},
                   timeout=120)
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["output_tokens"] > 0
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert pcm == speak(served.client(), "pcm").content


def test_voices_over_http(served, prompt_wav):
    c = served.client()
    with open(prompt_wav, "rb") as f:
        r = httpx.post(served.url + "/v1/audio/voices", data={"name": "bob"}, files={"audio_sample": ("b.wav", f)})
    voice = r.json()
    assert r.status_code == 200 and voice["object"] == "audio.voice" and voice["id"] == "bob"
    ids = [v["id"] for v in httpx.get(served.url + "/v1/audio/voices").json()["data"]]
    assert {"alice", "bob"} <= set(ids)
    assert httpx.get(served.url + "/v1/audio/voices/bob").json()["id"] == "bob"
    with open(prompt_wav, "rb") as f:
        again = httpx.post(served.url + "/v1/audio/voices", data={"name": "bob"}, files={"audio_sample": ("b.wav", f)})
    assert again.status_code == 409 and again.json()["error"]["code"] == "voice_exists"
    with open(prompt_wav, "rb") as f:
        bad = httpx.post(served.url + "/v1/audio/voices", data={"name": "no spaces!"}, files={"audio_sample": ("b.wav", f)})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
    assert httpx.delete(served.url + "/v1/audio/voices/bob").json()["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        c.audio.speech.create(model="indextts2", voice="bob", input="Hi.", response_format="wav")


@pytest.mark.parametrize("body,status,param", [
    ({"response_format": "aac"}, 400, "response_format"),
    ({"speed": 1.5}, 400, "speed"),
    ({"instructions": "cheerful"}, 400, "instructions"),
    ({"voice": "nobody"}, 404, "voice"),
    ({"top_k": -1}, 400, "top_k"),
    ({"seed": 2 ** 70}, 400, "seed"),
    ({"input": "x" * 5000}, 400, "input"),
    ({"model": "whisper-1"}, 400, "model"),
    ({"unknown_field": 1}, 422, "unknown_field"),
    ({"voice": None}, 422, "voice"),
])
def test_errors_in_openais_shape(served, body, status, param):
    full = {"model": "indextts2", "voice": "alice", "input": "Hello.", "response_format": "wav", **body}
    r = httpx.post(served.url + "/v1/audio/speech", json=full, timeout=60)
    err = r.json()["error"]
    assert r.status_code == status and set(err) == {"message", "type", "param", "code"}
    assert param in (err["param"] or "") and "Traceback" not in r.text and r.headers["x-request-id"]


def test_uploads_too_large_or_unreadable(served):
    r = httpx.post(served.url + "/v1/audio/voices", data={"name": "x"},
                   files={"audio_sample": ("x.wav", b"not audio at all" * 100)})
    assert r.status_code == 415 and r.json()["error"]["param"] == "audio_sample"
    r = httpx.post(served.url + "/v1/audio/voices", data={"name": "x"},
                   files={"audio_sample": ("x.wav", b"\0" * (11 * 1024 * 1024))})
    assert r.status_code == 413
    r = httpx.post(served.url + "/v1/audio/speech", content=b"{" * (2 * 1024 * 1024),
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 300


def test_models_health_ready_metrics(served):
    assert {m.id for m in served.client().models.list().data} >= {"indextts2", "tts-1"}
    assert httpx.get(served.url + "/health").json() == {"status": "ok"}
    assert httpx.get(served.url + "/ready").json()["status"] == "ready"
    text = httpx.get(served.url + "/metrics").text
    assert 'tts_requests_total{route="/v1/audio/speech",status="200"}' in text and "tts_audio_seconds_total" in text
    assert 'tts_stage_seconds_total{stage="s2mel"}' in text and "process_resident_memory_bytes" in text


def test_api_key(engine):
    s = Served(engine, api_key="sesame")
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        assert [m.id for m in s.client("sesame").models.list().data]
        assert httpx.get(s.url + "/health").status_code == 200   # liveness needs no key
    finally:
        s.stop()


def test_a_full_queue_gives_429_and_a_drain_gives_503(engine):
    s = Served(engine, max_batch=1, queue_size=0)
    try:
        sched = s.app.state.scheduler
        sched.admit()                      # the one worker busy
        r = httpx.post(s.url + "/v1/audio/speech", json={"model": "indextts2", "voice": "alice", "input": "Hi.",
                                                         "response_format": "wav", **SMALL}, timeout=30)
        assert r.status_code == 429 and r.headers["retry-after"] and r.json()["error"]["code"] == "queue_full"
        sched.release()
        assert sched.drain(grace_s=1)
        assert httpx.get(s.url + "/ready").status_code == 503
        r = httpx.post(s.url + "/v1/audio/speech", json={"model": "indextts2", "voice": "alice", "input": "Hi.",
                                                         "response_format": "wav", **SMALL}, timeout=30)
        assert r.status_code == 503
    finally:
        s.stop()


def test_a_client_that_hangs_up_frees_its_slot(engine):
    s = Served(engine, max_batch=1, queue_size=0)
    try:
        body = {"model": "indextts2", "voice": "alice", "input": "Hello there. " * 6, "response_format": "pcm",
                "seed": 1, "max_text_tokens_per_segment": 8, **SMALL}
        with httpx.stream("POST", s.url + "/v1/audio/speech", json=body, timeout=60) as r:
            next(r.iter_bytes())           # the first segment's audio, then hang up
        deadline = time.monotonic() + 60
        while s.app.state.scheduler.admitted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.app.state.scheduler.admitted == 0
        r = httpx.post(s.url + "/v1/audio/speech", json={**body, "input": "Hi."}, timeout=60)
        assert r.status_code == 200
    finally:
        s.stop()


def test_sigterm_drains_the_real_command(tiny_dir, tmp_path, prompt_wav):
    """`indextts-fast serve` as a process: SIGTERM lets the request in flight finish, refuses new ones, exits 0."""
    import os
    import signal
    import subprocess
    import sys

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "indextts_fast.cli", "serve", "--model-dir", str(tiny_dir),
                             "--port", str(port), "--store", str(tmp_path / "store")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with open(prompt_wav, "rb") as f:
            assert httpx.post(url + "/v1/audio/voices", data={"name": "alice"},
                              files={"audio_sample": ("a.wav", f)}, timeout=60).status_code == 200
        body = {"model": "indextts2", "voice": "alice", "input": "Hello there. " * 4, "response_format": "wav",
                "max_text_tokens_per_segment": 8, **SMALL}
        got = {}

        def long_request():
            got["response"] = httpx.post(url + "/v1/audio/speech", json=body, timeout=120)

        t = threading.Thread(target=long_request)
        t.start()
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(0.2)
        try:
            late = httpx.post(url + "/v1/audio/speech", json=body, timeout=10).status_code
        except httpx.HTTPError:
            late = "refused"               # already closed: also not served
        t.join(timeout=120)
        assert got["response"].status_code == 200 and len(got["response"].content) > 44
        assert late in (503, "refused")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_request_past_its_deadline_stops_at_the_next_segment(engine):
    s = Served(engine, request_timeout_s=0.001)
    try:
        body = {"model": "indextts2", "voice": "alice", "input": "Hello there. " * 6, "response_format": "pcm",
                "seed": 1, "max_text_tokens_per_segment": 8, **SMALL}
        cut = httpx.post(s.url + "/v1/audio/speech", json=body, timeout=60).content
        whole = speak_pcm(engine, body)
        assert 0 < len(cut) < len(whole)                      # the first segment only
        assert s.app.state.scheduler.admitted == 0
    finally:
        s.stop()


def speak_pcm(engine, body):
    s = Served(engine)
    try:
        return httpx.post(s.url + "/v1/audio/speech", json=body, timeout=60).content
    finally:
        s.stop()


def test_a_failure_before_the_first_audio_gets_a_status(engine, monkeypatch):
    """The engine failing on the first segment: a 500 in OpenAI's shape with the request id, not a 200 with an
    empty body; the slot is freed."""
    s = Served(engine)
    try:
        def broken(*args, **kwargs):
            raise RuntimeError("boom: the internals")

        monkeypatch.setattr(engine, "flow", lambda *a, **k: (broken() for _ in [0]))   # fails when iterated
        r = httpx.post(s.url + "/v1/audio/speech", json={"model": "indextts2", "voice": "alice", "input": "Hi.",
                                                         "response_format": "wav", **SMALL}, timeout=60)
        assert r.status_code == 500 and r.headers["x-request-id"] in r.json()["error"]["message"]
        deadline = time.monotonic() + 10
        while s.app.state.scheduler.admitted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "boom" not in r.text and s.app.state.scheduler.admitted == 0
    finally:
        s.stop()


def test_concurrent_requests_are_batched_and_give_their_audio_alone(served, engine):
    """Continuous batching behind the API: 4 different seeded requests at once return the bytes each returns
    alone, and their decode steps shared model calls (80 codes each: decoding long enough to overlap)."""
    texts = ["Hello there.", "A second voice request.", "Third one, a little longer than the others.", "Four."]
    alone = [served.client().audio.speech.create(model="indextts2", voice="alice", input=t, response_format="wav",
                                                 extra_body={**SMALL, "max_mel_tokens": 80, "seed": 20 + i}).content
             for i, t in enumerate(texts)]
    batcher = served.app.state.batcher
    before = (batcher.stats.decode_calls, batcher.stats.decode_rows)
    together = [None] * len(texts)

    def run(i):
        together[i] = served.client().audio.speech.create(
            model="indextts2", voice="alice", input=texts[i], response_format="wav",
            extra_body={**SMALL, "max_mel_tokens": 80, "seed": 20 + i}).content

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert together == alone
    calls, rows = batcher.stats.decode_calls - before[0], batcher.stats.decode_rows - before[1]
    assert rows > calls                      # some decode calls held several requests' rows
    metrics = httpx.get(served.url + "/metrics").text
    assert 'tts_batch_total{count="decode_rows"}' in metrics and "tts_batch_active" in metrics
