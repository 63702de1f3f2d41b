"""Continuous batching: many requests over one Engine, stepped together on one thread.

    batcher = Batcher(engine, max_active=8)
    for chunk in batcher.stream("Hello.", speaker_id="alice", seed=1):   # Engine.stream's arguments and chunks
        play(chunk.audio)
    batcher.close()

Each request is its engine flow (`Engine.flow`: the same stage functions as `Engine.stream`, which runs a flow
alone). A flow asks for two kinds of work, a GPT code search (decoding.Search) and a flow matching
(models.s2mel.Euler); everything else it does itself when resumed. One thread runs rounds; every round:

1. admits waiting requests, first come first served, while fewer than `max_active` are active, and runs each
   until it asks for work;
2. starts (prefills) at most one new search: a newcomer delays the others by one prefill at most;
3. runs one decode step of every running search in as few model calls as the rows allow
   (`decoding.step_all`: the projections of all rows at once, so the weights are read once for all of them;
   each search's attention on its own KV cache; up to `decoding.batch_rows(model)` rows per call, one search
   per call where the GPT's products are torch's);
4. runs one Euler step (DiT with classifier-free guidance) of every running flow matching;
5. resumes the flows whose work finished (latent pass, vocoder, next segment) until they ask again.

Every active request advances every round, so a long request cannot be starved by a stream of short ones:
its rounds are the rounds it needs alone, plus at most one round per prefill waiting before its own
(`Ticket.rounds` counts them).

Batch invariance: a seeded request gives the same bits alone (`Engine.stream`) and in any batch. Its searches
take their own random draws from their own generator; the decode products are our row kernels, whose
result for a row does not depend on the other rows (exact integer sums in int8 / int8dyn, one fixed fp32 sum
order in fp32); its attention reads only its own cache; prefill, latent pass, flow matching and vocoder run
per request with the request's own shapes. Where the GPT's products are torch's (a bf16 GPT, no x86 kernels)
a GEMM may round a row differently with other rows beside it, so such searches each get their own call.
The DiT runs per request: its products are compute-bound at a request's own hundreds of frames (a larger
batch saves no weight reads on a CPU), and padding requests of other lengths together would change the
WaveNet head's reflect-padded edge frames, not only the rounding.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from . import stages
from .decoding import Search, batch_rows, step_all
from .errors import OptionError
from .models.s2mel import Euler
from .results import AudioChunk


@dataclass
class BatchStats:
    """What the batcher did since it started (bench batch / the server's metrics read it)."""

    rounds: int = 0
    prefills: int = 0
    decode_calls: int = 0      # model calls of decode steps
    decode_rows: int = 0       # rows over those calls (beams of every request in them)
    codes: int = 0             # codes generated per request (a step of a 3-beam search counts 1)
    dit_steps: int = 0         # Euler steps (DiT calls, each with its CFG pair)
    requests: int = 0          # finished requests
    seconds: dict = field(default_factory=lambda: {"prefill": 0.0, "decode": 0.0, "s2mel": 0.0, "flows": 0.0})


class _Job:
    def __init__(self, flow):
        self.flow = flow
        self.out: queue.Queue = queue.Queue()
        self.work: Optional[Search | Euler] = None
        self.cancelled = threading.Event()
        self.rounds = 0            # rounds run while this request was active
        self.waited = 0            # rounds run while it waited for admission


class Ticket:
    """One request's chunks as they come (an iterator over AudioChunk; the request's error is raised here).
    `close()` (or leaving the loop early and closing) stops the request at the next round."""

    def __init__(self, job: _Job, wake):
        self._job, self._wake, self._ended = job, wake, False

    def __iter__(self) -> Iterator[AudioChunk]:
        return self

    def __next__(self) -> AudioChunk:
        if self._ended:
            raise StopIteration
        kind, item = self._job.out.get()
        if kind == "chunk":
            return item
        self._ended = True
        if kind == "error":
            raise item
        raise StopIteration

    def close(self) -> None:
        if not self._ended:
            self._job.cancelled.set()
            self._wake()

    @property
    def rounds(self) -> int:
        """Rounds the request was active for (so far)."""
        return self._job.rounds

    @property
    def waited(self) -> int:
        """Rounds it waited for admission."""
        return self._job.waited


class Batcher:
    """Continuous batching over one Engine (module doc). Thread-safe: `stream` may be called from any thread."""

    def __init__(self, engine, max_active: int = 8):
        if isinstance(max_active, bool) or not isinstance(max_active, int) or max_active < 1:
            raise OptionError(f"max_active={max_active!r} must be an integer >= 1")
        self.engine, self.models, self.max_active = engine, engine.models, max_active
        self.rows = batch_rows(engine.models.gpt)   # rows one decode call may hold (0: one search per call)
        self.stats = BatchStats()
        self._waiting: deque[_Job] = deque()
        self._active: list[_Job] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="tts-batcher", daemon=True)
        self._thread.start()

    def stream(self, *args, **kwargs) -> Ticket:
        """`Engine.stream`'s request (same arguments, checked now) queued for the batch -> its Ticket."""
        job = _Job(self.engine.flow(*args, **kwargs))
        with self._cv:
            if self._closed:
                raise OptionError("the batcher is closed")
            self._waiting.append(job)
            self._cv.notify()
        return Ticket(job, self._wake)

    @property
    def load(self) -> tuple[int, int]:
        """(active, waiting) requests."""
        with self._cv:
            return len(self._active), len(self._waiting)

    def close(self, timeout: Optional[float] = None) -> None:
        """Take no new requests; finish the admitted and waiting ones, then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    # ---- the batching thread -------------------------------------------------------------------------
    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._closed or self._waiting or self._active):
                    self._cv.wait()
                if not (self._waiting or self._active):
                    return
                admitted = []
                while self._waiting and len(self._active) + len(admitted) < self.max_active:
                    job = self._waiting.popleft()
                    if job.cancelled.is_set():   # closed while it waited: never started
                        self._end(job, None)
                    else:
                        admitted.append(job)
                self._active.extend(admitted)
                for job in self._waiting:
                    job.waited += 1
            with torch.inference_mode():
                for job in admitted:
                    self._resume(job)
                self._round()

    def _round(self) -> None:
        st = self.stats
        st.rounds += 1
        for job in list(self._active):
            if job.cancelled.is_set():
                self._end(job, None)
            else:
                job.rounds += 1
        fresh = next((j for j in self._active if isinstance(j.work, Search) and j.work.steps == 0), None)
        if fresh is not None and self._timed("prefill", [fresh], fresh.work.start):
            st.prefills += 1
            st.codes += 1
            if fresh.work.done:
                self._resume(fresh)
        running = [j for j in self._active if isinstance(j.work, Search) and j.work.steps and not j.work.done]
        for call in self._calls(running):
            if self._timed("decode", call, lambda: step_all(self.models.gpt, [j.work for j in call])):
                st.decode_calls += 1
                st.decode_rows += sum(j.work.rows for j in call)
                st.codes += len(call)
        for job in running:
            if job in self._active and job.work.done:
                self._resume(job)
        for job in [j for j in self._active if isinstance(j.work, Euler)]:
            if self._timed("s2mel", [job], lambda: stages.s2mel_step(self.models, job.work)):
                st.dit_steps += 1
                if job.work.done:
                    self._resume(job)

    def _calls(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Running searches grouped into decode calls of at most `self.rows` rows (in admission order)."""
        calls: list[list[_Job]] = []
        rows = 0
        for job in jobs:
            if calls and self.rows and rows + job.work.rows <= self.rows:
                calls[-1].append(job)
                rows += job.work.rows
            else:
                calls.append([job])
                rows = job.work.rows
        return calls

    def _timed(self, stage: str, jobs: list[_Job], fn) -> bool:
        """Run fn; a failure ends the request(s) it was run for with that error. True when it succeeded."""
        t0 = time.perf_counter()
        try:
            fn()
            return True
        except Exception as e:   # noqa: BLE001  (handed to the request's consumer)
            for job in jobs:
                self._end(job, e)
            return False
        finally:
            self.stats.seconds[stage] += time.perf_counter() - t0

    def _resume(self, job: _Job) -> None:
        """Run a flow until it asks for work (kept as job.work) or ends; its chunks go to its consumer."""
        t0 = time.perf_counter()
        try:
            while True:
                item = job.flow.send(None)
                if isinstance(item, AudioChunk):
                    job.out.put(("chunk", item))
                    if job.cancelled.is_set():
                        self._end(job, None)
                        return
                else:
                    job.work = item
                    return
        except StopIteration:
            self.stats.requests += 1
            self._end(job, None)
        except Exception as e:   # noqa: BLE001
            self._end(job, e)
        finally:
            self.stats.seconds["flows"] += time.perf_counter() - t0

    def _end(self, job: _Job, error: Optional[BaseException]) -> None:
        if job in self._active:
            self._active.remove(job)
        job.work = None                      # frees its KV cache / flow state now
        job.flow.close()
        job.out.put(("error", error) if error is not None else ("done", None))
