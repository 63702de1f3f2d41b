"""The speech server: OpenAI's /v1/audio/speech (whole or streamed: chunked audio or SSE), voices on the
speaker registry, models, health, readiness and Prometheus metrics, errors in OpenAI's shape.

One process owns one Engine and one batcher.Batcher over it (continuous batching: the admitted requests'
GPT decode steps share one model call per step, their flow matchings and vocoders take turns at step
boundaries; a seeded request gives the same audio whatever else runs). The scheduler admits at most
`max_batch` running requests and `queue_size` waiting ones, in arrival order; past that a request gets 429
with Retry-After. A streamed request whose client goes away (or that runs past its deadline) leaves the
batch at the next round and frees its place; `drain()` (SIGTERM) makes new requests 503 while the admitted
ones finish.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from .schemas import FORMATS, ApiError, SpeechRequest

log = logging.getLogger("indextts_fast.server")
MAX_UPLOAD = 10 * 1024 * 1024      # a voice sample
MAX_BODY = 1024 * 1024             # any other request body


class Scheduler:
    """Admission and the worker threads (module doc)."""

    def __init__(self, max_batch: int = 8, queue_size: int = 8):
        self.workers, self.queue_size = max_batch, queue_size
        # one thread per admitted request, moving its chunks from the batcher to the response
        self.pool = ThreadPoolExecutor(max_workers=max_batch + queue_size, thread_name_prefix="tts-feed")
        self.admitted = 0
        self.lock = threading.Lock()
        self.draining = False

    def admit(self) -> None:
        with self.lock:
            if self.draining:
                raise ApiError(503, "the server is shutting down", code="shutting_down")
            if self.admitted >= self.workers + self.queue_size:
                raise ApiError(429, f"the queue is full ({self.queue_size} waiting); retry shortly", code="queue_full",
                               headers={"Retry-After": "1"})
            self.admitted += 1

    def release(self) -> None:
        with self.lock:
            self.admitted -= 1

    @property
    def queue_depth(self) -> int:
        return max(0, self.admitted - self.workers)

    def drain(self, grace_s: float = 30.0) -> bool:
        """Refuse new requests; wait up to grace_s for the admitted ones. True when all finished."""
        self.draining = True
        deadline = time.monotonic() + grace_s
        while self.admitted and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.admitted == 0


def _metrics():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

    reg = CollectorRegistry()
    ProcessCollector(registry=reg)   # process_resident_memory_bytes etc. (bench serve reads the RSS)
    return reg, {
        "requests": Counter("tts_requests", "HTTP requests by route and status", ["route", "status"], registry=reg),
        "queue": Gauge("tts_queue_depth", "requests admitted but waiting for a worker", registry=reg),
        "ttfa": Histogram("tts_time_to_first_audio_seconds", "request start to its first audio bytes", registry=reg),
        "latency": Histogram("tts_request_seconds", "request start to its last audio bytes", registry=reg),
        "stage": Counter("tts_stage_seconds", "seconds spent per pipeline stage", ["stage"], registry=reg),
        "audio": Counter("tts_audio_seconds", "seconds of audio produced", registry=reg),
        "batch": Gauge("tts_batch_total", "the batcher's counts since start: rounds, decode_calls, decode_rows "
                       "(rows over those calls), codes, dit_steps", ["count"], registry=reg),
        "batch_active": Gauge("tts_batch_active", "requests in the batch now", registry=reg),
    }


def create_app(engine, *, model_names: tuple[str, ...] = ("indextts2", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"),
               api_key: Optional[str] = None, max_batch: int = 8, queue_size: int = 8,
               max_input_chars: int = 4096, request_timeout_s: float = 600.0) -> FastAPI:
    app = FastAPI(title="indextts-fast", docs_url=None, redoc_url=None)
    from ..batcher import Batcher

    sched = Scheduler(max_batch, queue_size)
    batcher = Batcher(engine, max_active=max_batch)
    app.state.batcher = batcher
    registry, m = _metrics()
    app.state.scheduler = sched

    @app.middleware("http")
    async def around(request: Request, call_next):
        rid = uuid.uuid4().hex[:16]
        request.state.rid = rid
        size = request.headers.get("content-length", "")
        limit = MAX_UPLOAD + 65536 if request.url.path == "/v1/audio/voices" else MAX_BODY
        if size and (not size.isdigit() or int(size) > limit):
            response = _error(ApiError(413, f"request body over {limit} bytes", code="body_too_large"))
        elif api_key and request.url.path.startswith("/v1/") and \
                request.headers.get("authorization", "") != f"Bearer {api_key}":
            response = _error(ApiError(401, "missing or wrong API key (Authorization: Bearer ...)",
                                       code="invalid_api_key"))
        else:
            response = await call_next(request)
        response.headers["x-request-id"] = rid
        route = request.scope.get("route")
        m["requests"].labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return _error(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "malformed body"}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return _error(ApiError(422, f"{param or 'body'}: {first.get('msg')}", param, "invalid_body"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return _error(ApiError(e.status_code, str(e.detail)))

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception):
        log.exception("request %s failed", getattr(request.state, "rid", "?"))
        return _error(ApiError(500, f"internal error (request {getattr(request.state, 'rid', '?')})"))

    # ---- speech ----------------------------------------------------------------------------------
    @app.post("/v1/audio/speech")
    async def speech(body: SpeechRequest, request: Request):
        qwen = engine.folder.config.qwen_emo_path
        body.check(max_input_chars, model_names, bool(qwen) and (engine.folder.root / qwen / "config.json").is_file())
        _known_voice(engine, body.voice_id, "voice")
        sched.admit()
        m["queue"].set(sched.queue_depth)
        started = time.monotonic()
        try:
            chunks = _start(engine, batcher, body)
        except BaseException:
            sched.release()
            raise
        from ..results import SAMPLE_RATE
        from .encode import StreamEncoder

        encoder = StreamEncoder(body.response_format, SAMPLE_RATE)
        feed = _Feed(sched, chunks, encoder, lambda stage, s: m["stage"].labels(stage).inc(s),
                     started + request_timeout_s)
        loop = asyncio.get_running_loop()
        sched.pool.submit(feed.run, loop)
        first = await feed.queue.get()   # the first segment's audio, or why there is none: a real status code
        if first[0] == "error":
            feed.stop()
            raise _failure(first[1], request)
        media = "text/event-stream" if body.stream_format == "sse" else FORMATS[body.response_format]
        return StreamingResponse(_respond(feed, first, body, m, started), media_type=media)

    # ---- voices ----------------------------------------------------------------------------------
    @app.post("/v1/audio/voices")
    async def create_voice(name: str = Form(...), audio_sample: UploadFile = File(...)):
        data = await audio_sample.read(MAX_UPLOAD + 1)
        if len(data) > MAX_UPLOAD:
            raise ApiError(413, f"audio_sample is over {MAX_UPLOAD} bytes", "audio_sample", "file_too_large")
        suffix = Path(audio_sample.filename or "").suffix[:8] or ".audio"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"sample{suffix}"
            path.write_bytes(data)
            _check_audio(path)
            record = await asyncio.get_running_loop().run_in_executor(None, _register, engine, name, path)
        return _voice(record)

    @app.get("/v1/audio/voices")
    async def list_voices():
        return {"object": "list", "data": [_voice(r) for r in engine.store.list()]}

    @app.get("/v1/audio/voices/{voice_id}")
    async def get_voice(voice_id: str):
        return _voice(_known_voice(engine, voice_id, "voice_id"))

    @app.delete("/v1/audio/voices/{voice_id}")
    async def delete_voice(voice_id: str):
        _known_voice(engine, voice_id, "voice_id")
        engine.store.remove(voice_id)
        return {"object": "audio.voice.deleted", "id": voice_id, "deleted": True}

    # ---- the rest --------------------------------------------------------------------------------
    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "indextts-fast"}
                                           for n in model_names]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if sched.draining:
            raise ApiError(503, "the server is shutting down", code="shutting_down")
        return {"status": "ready", "queue_depth": sched.queue_depth, "running": min(sched.admitted, sched.workers)}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import generate_latest

        m["queue"].set(sched.queue_depth)
        st = batcher.stats
        for name, value in (("rounds", st.rounds), ("decode_calls", st.decode_calls), ("decode_rows", st.decode_rows),
                            ("codes", st.codes), ("dit_steps", st.dit_steps)):
            m["batch"].labels(name).set(value)
        m["batch_active"].set(batcher.load[0])
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")

    return app


def _failure(e: BaseException, request: Request) -> ApiError:
    """What a client is told of a request that failed before its first audio: our own errors (a voice made by
    another model, a bad option) as 400 with their message, anything else as 500 with the request id."""
    from ..errors import IndexTTSFastError

    if isinstance(e, ApiError):
        return e
    if isinstance(e, IndexTTSFastError):
        return ApiError(400, str(e).splitlines()[0][:500])
    log.error("request %s failed: %r", getattr(request.state, "rid", "?"), e)
    return ApiError(500, f"synthesis failed (request {getattr(request.state, 'rid', '?')})")


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _known_voice(engine, voice_id: str, param: str):
    from ..speakers import SpeakerIdError, UnknownSpeakerError

    if engine.store is None:
        raise ApiError(404, f"voice {voice_id!r} not found: this server has no voice registry", param)
    try:
        return engine.store.show(voice_id)
    except (UnknownSpeakerError, SpeakerIdError):
        raise ApiError(404, f"voice {voice_id!r} not found; register it with POST /v1/audio/voices", param,
                       "voice_not_found") from None


def _check_audio(path: Path) -> None:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:   # noqa: BLE001  (libsndfile's errors vary by format)
        raise ApiError(415, "audio_sample is not audio this server can read (wav, flac, ogg, mp3, ...)",
                       "audio_sample", "unsupported_audio") from None
    if info.frames < 1600:
        raise ApiError(415, "audio_sample is shorter than 0.1 s", "audio_sample", "audio_too_short")


def _register(engine, name: str, path: Path):
    from ..speakers import SpeakerExistsError, SpeakerIdError

    try:
        engine.register_speaker(name, path)
    except SpeakerIdError as e:
        raise ApiError(400, str(e), "name") from None
    except SpeakerExistsError:
        raise ApiError(409, f"a voice named {name!r} exists; delete it first", "name", "voice_exists") from None
    return engine.store.show(name)


def _voice(record) -> dict:
    return {"object": "audio.voice", "id": record.speaker_id, "name": record.speaker_id,
            "created_at": int(record.created.timestamp())}


def _start(engine, batcher, body: SpeechRequest):
    from ..errors import OptionError
    from ..results import Emotion

    try:
        emotion = Emotion(vector=body.emotion.vector, alpha=body.emotion.alpha) if body.emotion else \
            Emotion(from_text=True, text=body.instructions) if body.instructions else None
        return batcher.stream(body.input, speaker_id=body.voice_id, emotion=emotion, preset=body.preset,
                              seed=body.seed, first_segment_tokens=body.first_segment_tokens, **body.overrides())
    except OptionError as e:
        raise ApiError(400, str(e)) from None


class _Feed:
    """Moves one request's chunks (a batcher Ticket) to the event loop's queue, encoded, on a pool thread. Once
    `cancel` is set (the client went away) or the deadline passed, the ticket is closed: the request leaves the
    batch at the next round. Frees the admission slot when done."""

    def __init__(self, sched: Scheduler, chunks, encoder, count_stage, deadline: float):
        self.sched, self.chunks, self.encoder, self.count_stage = sched, chunks, encoder, count_stage
        self.deadline = deadline   # time.monotonic() past which the request stops at its next segment
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.audio_s, self.codes, self.text_tokens = 0.0, 0, 0

    def stop(self) -> None:
        """The client is gone (or the stream ended): the request leaves the batch at the next round."""
        self.cancel.set()
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()

    def run(self, loop) -> None:
        put = lambda item: loop.call_soon_threadsafe(self.queue.put_nowait, item)   # noqa: E731
        header = self.encoder.start()   # sent with the first audio, so that an early failure gets a status
        try:
            for chunk in self.chunks:
                self.audio_s += len(chunk.audio) / chunk.sample_rate
                self.codes += int(chunk.segment.codes.shape[1])
                self.text_tokens += len(chunk.segment.text_ids)
                for stage, seconds in chunk.seconds.items():
                    self.count_stage(stage, seconds)
                put(("bytes", header + self.encoder.piece(chunk.audio, chunk.last)))
                header = b""
                if self.cancel.is_set():
                    break
                if time.monotonic() > self.deadline and not chunk.last:
                    raise TimeoutError("the request ran past its deadline")
            put(("done", None))
        except BaseException as e:   # noqa: BLE001  (sent to the response, which logs it)
            put(("error", e))
        finally:
            self.stop()
            self.sched.release()


async def _respond(feed: _Feed, head: tuple, body: SpeechRequest, m: dict, started: float):
    first = True
    try:
        while True:
            kind, item = head if head is not None else await feed.queue.get()
            head = None
            if kind == "error":
                log.error("synthesis failed: %s", item)
                if body.stream_format == "sse":
                    yield _sse({"type": "error", "error": ApiError(500, "synthesis failed").body()["error"]})
                return
            if kind == "done":
                m["latency"].observe(time.monotonic() - started)
                m["audio"].inc(feed.audio_s)
                if body.stream_format == "sse":
                    usage = {"input_tokens": feed.text_tokens, "output_tokens": feed.codes,
                             "total_tokens": feed.text_tokens + feed.codes}
                    yield _sse({"type": "speech.audio.done", "usage": usage})
                return
            if not item:
                continue
            if first:
                m["ttfa"].observe(time.monotonic() - started)
                first = False
            yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(item).decode()}) \
                if body.stream_format == "sse" else item
    finally:
        feed.stop()   # the client is gone (or the stream ended): it leaves the batch at the next round


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()
